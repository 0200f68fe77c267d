-- Access control: users, tenants and their members, robot accounts, token signing keys.
-- Booleans are 0/1 integers on both engines, so the same queries read them.
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin         INTEGER NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    public      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
INSERT INTO tenants (name, public, created_at) VALUES ('library', 0, 0);

CREATE TABLE members (
    tenant      TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
    username    TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role        TEXT NOT NULL,
    PRIMARY KEY (tenant, username)
);
CREATE INDEX members_user ON members(username);

CREATE TABLE robots (
    tenant        TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    actions       TEXT NOT NULL,
    repositories  TEXT NOT NULL,
    description   TEXT,
    expires_at    INTEGER,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    secret      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);

ALTER TABLE audit_log ADD COLUMN tenant TEXT;
ALTER TABLE audit_log ADD COLUMN source TEXT;
ALTER TABLE audit_log ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
CREATE INDEX audit_log_actor ON audit_log(actor, at);
CREATE INDEX audit_log_tenant ON audit_log(tenant, at);
