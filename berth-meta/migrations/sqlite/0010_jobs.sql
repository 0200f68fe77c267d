-- The one durable queue for background work: webhook deliveries and replication copies,
-- later scans and re-encryption. A job is written in the transaction of the change that
-- causes it (the outbox), so a committed change always has its jobs and a rolled-back one
-- never does. Finished jobs are deleted; `dead` ones (out of attempts) stay for listing
-- and redelivery.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    -- One replica at a time works a queue (job_queues holds its lease): one webhook
    -- endpoint, one replication target.
    queue           TEXT NOT NULL,
    -- Jobs of one lane (a repository) run in id order; lanes do not wait for each other.
    lane            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX jobs_pending ON jobs(queue, id) WHERE state = 'pending';
-- Finds a lane's failing head (a pending job not due yet) without reading the lane.
CREATE INDEX jobs_lanes ON jobs(queue, lane, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX jobs_dead ON jobs(queue, id) WHERE state = 'dead';

-- Per queue: which replica works it until when, and until when it rests after every
-- attempt failed (its endpoint is down). Written by the workers only, never by the
-- changes that queue jobs, so a push never waits on this row.
CREATE TABLE job_queues (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL DEFAULT '',
    lease_expires INTEGER NOT NULL DEFAULT 0,
    paused_until  INTEGER NOT NULL DEFAULT 0
);

-- Webhooks managed through the API: global (tenant NULL, admins) or a tenant's (its
-- owners). `spec` is JSON the registry reads (URL, events, repositories, secret, format,
-- timeout). Those of the configuration file are not stored.
CREATE TABLE webhooks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT REFERENCES tenants(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX webhooks_name ON webhooks((COALESCE(tenant, '')), name);
