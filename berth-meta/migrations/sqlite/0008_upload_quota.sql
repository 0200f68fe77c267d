-- Bytes an append in flight may still write to an upload session beyond its acknowledged
-- size. Open sessions count towards their tenant's quota (size + reserved), so the bytes a
-- tenant streams are admitted before they are written, not found over the quota afterwards.
ALTER TABLE uploads ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0;
CREATE INDEX uploads_repo ON uploads(repo_id);

-- An upper bound of the tenant's content usage (distinct blobs and manifests), kept while
-- it has a quota: every quota decision that adds content holds the tenant's row lock and
-- adds to it, removals leave it alone, and a decision that would not fit under it sums the
-- usage afresh and resets it. NULL: unknown (no quota yet, or the quota just changed).
ALTER TABLE tenants ADD COLUMN content_bound INTEGER;
