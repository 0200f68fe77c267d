-- The audit page reads newest first (`ORDER BY at DESC, id DESC`) under any one filter:
-- each filter needs an index that yields its rows in that order, so a page reads 100 rows
-- and stops instead of sorting every match. On SQLite an index ends in the rowid (`id`),
-- so `audit_log_at`, `audit_log_actor` and `audit_log_tenant` (0001, 0002) already serve;
-- the action and repository filters get theirs.
CREATE INDEX audit_log_action ON audit_log(action, at);
CREATE INDEX audit_log_repository ON audit_log(repository, at);

-- Dry runs of the garbage collection and of the retention policies, asked for on the
-- operations page and run by the job queue (kind `maintenance`); the row carries the
-- report, so every replica's page shows it.
CREATE TABLE maintenance_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    task         TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    finished_at  INTEGER,
    report       TEXT,
    error        TEXT
);
