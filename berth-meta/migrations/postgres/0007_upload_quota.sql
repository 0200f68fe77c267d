-- Bytes an append in flight may still write to an upload session beyond its acknowledged
-- size. Open sessions count towards their tenant's quota (size + reserved), so the bytes a
-- tenant streams are admitted before they are written, not found over the quota afterwards.
ALTER TABLE uploads ADD COLUMN reserved BIGINT NOT NULL DEFAULT 0;
CREATE INDEX uploads_repo ON uploads(repo_id);
