-- Signature verdicts (the policy layer).
--
-- A repository's verification epoch grows in the transaction of every change that can
-- change a verdict in it (a manifest with a subject pushed, a manifest deleted, a
-- sha256-* tag set or deleted). A stored verdict counts only while its epoch is the
-- repository's and its policy fingerprint is the trust material in force.
CREATE TABLE verify_epochs (
    repo   TEXT PRIMARY KEY,
    epoch  BIGINT NOT NULL
);

-- Grows with every epoch change and every policy change: what replicas poll (once a
-- second) when a notification was missed.
CREATE TABLE verify_counter (
    id     INTEGER PRIMARY KEY,
    value  BIGINT NOT NULL
);
INSERT INTO verify_counter (id, value) VALUES (1, 0);

CREATE TABLE verdicts (
    repo         TEXT NOT NULL,
    digest       TEXT NOT NULL,
    policy       TEXT NOT NULL,
    epoch        BIGINT NOT NULL,
    outcome      TEXT NOT NULL,
    detail       TEXT NOT NULL,
    computed_at  BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);

-- Every dry run of a rule (berth policy check): a rule is switched to enforce only after
-- one of its exact definition.
CREATE TABLE policy_dry_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule         TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    at           BIGINT NOT NULL,
    refused      BIGINT NOT NULL,
    result       TEXT NOT NULL
);
CREATE INDEX policy_dry_runs_fp ON policy_dry_runs (fingerprint, at);
