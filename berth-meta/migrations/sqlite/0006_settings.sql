-- Settings changed at run time through the management API (managed tag rules), shared by
-- every replica. The value is JSON.
CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
