-- The audit page reads newest first (`ORDER BY at DESC, id DESC`) under any one filter:
-- each filter needs an index that yields its rows in that order, so a page reads 100 rows
-- and stops instead of sorting every match. PostgreSQL indexes carry no row id, so the
-- tie-breaker is spelled out, and the indexes of 0001 and 0002 are replaced.
-- Actions compare bytewise, so a family (`user`: `user.*`) is the range between `user.`
-- and `user/` (a linguistic collation would ignore the dot).
ALTER TABLE audit_log ALTER COLUMN action TYPE TEXT COLLATE "C";
DROP INDEX audit_log_at;
DROP INDEX audit_log_actor;
DROP INDEX audit_log_tenant;
CREATE INDEX audit_log_at ON audit_log(at, id);
CREATE INDEX audit_log_actor ON audit_log(actor, at, id);
CREATE INDEX audit_log_tenant ON audit_log(tenant, at, id);
CREATE INDEX audit_log_action ON audit_log(action, at, id);
CREATE INDEX audit_log_repository ON audit_log(repository, at, id);

-- Dry runs of the garbage collection and of the retention policies, asked for on the
-- operations page and run by the job queue (kind `maintenance`); the row carries the
-- report, so every replica's page shows it.
CREATE TABLE maintenance_runs (
    id           BIGSERIAL PRIMARY KEY,
    task         TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    finished_at  BIGINT,
    report       TEXT,
    error        TEXT
);
