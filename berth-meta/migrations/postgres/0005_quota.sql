-- Storage quotas: bytes a tenant's repositories may hold, each distinct blob counted once.
ALTER TABLE tenants ADD COLUMN quota_bytes BIGINT;
