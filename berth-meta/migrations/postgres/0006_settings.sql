-- Settings changed at run time through the management API (managed tag rules), shared by
-- every replica. The value is JSON.
CREATE TABLE settings (
    name        TEXT COLLATE "C" PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
