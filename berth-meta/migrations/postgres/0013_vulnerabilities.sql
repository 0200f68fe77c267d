-- Vulnerabilities, offline: imported advisories, and findings per package.
--
-- A feed is one source of advisories as imported: an ecosystem's OSV dump (`osv:pypi`),
-- OSV records imported file by file (`osv`), the Debian security tracker
-- (`debian-tracker`), an Alpine secdb (`alpine:v3.19/main`).
CREATE TABLE advisory_feeds (
    name             TEXT PRIMARY KEY,
    format           TEXT NOT NULL,
    records          BIGINT NOT NULL,
    skipped          BIGINT NOT NULL,
    newest_modified  TEXT,
    imported_at      BIGINT NOT NULL
);

-- One row per advisory, affected package and release (berth_vuln::Record as JSON),
-- looked up by (ecosystem, package) when matching. `release` is '' for none.
CREATE TABLE advisories (
    feed       TEXT NOT NULL,
    id         TEXT NOT NULL,
    ecosystem  TEXT NOT NULL,
    package    TEXT NOT NULL,
    release    TEXT NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (feed, id, ecosystem, package, release)
);
CREATE INDEX advisories_package ON advisories (ecosystem, package);
CREATE INDEX advisories_id ON advisories (id);

-- Grows with every import: a package matched under an older generation is matched again
-- before its findings are read.
CREATE TABLE vuln_state (
    id          INTEGER PRIMARY KEY,
    generation  BIGINT NOT NULL,
    matched_at  BIGINT NOT NULL
);
INSERT INTO vuln_state (id, generation, matched_at) VALUES (1, 0, 0);

-- Findings per package (purl): images holding the same package share them, so
-- re-matching costs the distinct packages, not the images.
CREATE TABLE vuln_findings (
    purl      TEXT NOT NULL,
    id        TEXT NOT NULL,
    severity  TEXT NOT NULL,
    finding   TEXT NOT NULL,
    PRIMARY KEY (purl, id)
);

-- Which packages were matched, under which generation.
CREATE TABLE vuln_matched (
    purl        TEXT PRIMARY KEY,
    generation  BIGINT NOT NULL
);
