-- Timestamps are microseconds since the Unix epoch; digests are their text form.
CREATE TABLE repositories (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- A blob is served from a repository only if it is linked to it.
CREATE TABLE repo_blobs (
    repo_id     BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest      TEXT NOT NULL REFERENCES blobs(digest),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs(digest);

CREATE TABLE manifests (
    repo_id       BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    content       BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_subject ON manifests(repo_id, subject) WHERE subject IS NOT NULL;

-- What a manifest needs: kind 0 = blob (config, layer), 1 = manifest (index child).
CREATE TABLE manifest_refs (
    repo_id         BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    child_digest    TEXT NOT NULL,
    kind            BIGINT NOT NULL,
    PRIMARY KEY (repo_id, manifest_digest, child_digest),
    FOREIGN KEY (repo_id, manifest_digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_refs_child ON manifest_refs(repo_id, child_digest);

CREATE TABLE tags (
    repo_id     BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    sort_key    TEXT COLLATE "C" NOT NULL,
    digest      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (repo_id, name),
    FOREIGN KEY (repo_id, digest) REFERENCES manifests(repo_id, digest)
);
CREATE INDEX tags_order ON tags(repo_id, sort_key);
CREATE INDEX tags_digest ON tags(repo_id, digest);

CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,
    repo_id     BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    size        BIGINT NOT NULL,
    hash_state  BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    repository  TEXT,
    target      TEXT,
    detail      TEXT
);
CREATE INDEX audit_log_at ON audit_log(at);
