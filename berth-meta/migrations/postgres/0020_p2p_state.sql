-- Node-local sharing's state, shared by every replica so any of them can answer an agent
-- (before, one replica's memory): enrolled agents by node address, the blobs each node
-- may fetch because a manifest naming them was served to it, those manifest pulls as
-- grants an agent learns tickets from (the `id` is its cursor), and the tracker's holders.
-- Every row carries its expiry (unix seconds); expired rows are purged by `expires_at`.
CREATE TABLE p2p_nodes (
    addr        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    port        BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX p2p_nodes_expiry ON p2p_nodes(expires_at);

CREATE TABLE p2p_pulls (
    addr        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    repo        TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (addr, digest)
);
CREATE INDEX p2p_pulls_expiry ON p2p_pulls(expires_at);

CREATE TABLE p2p_grants (
    id          BIGSERIAL PRIMARY KEY,
    addr        TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    repo        TEXT NOT NULL,
    blobs       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    UNIQUE (addr, manifest)
);
CREATE INDEX p2p_grants_addr ON p2p_grants(addr, id);
CREATE INDEX p2p_grants_expiry ON p2p_grants(expires_at);

-- `announced_at` in microseconds orders holders (earlier announcers are the ones named).
CREATE TABLE p2p_holders (
    digest       TEXT NOT NULL,
    node         TEXT NOT NULL,
    host         TEXT NOT NULL,
    addr         TEXT NOT NULL,
    announced_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (digest, node)
);
CREATE INDEX p2p_holders_host ON p2p_holders(host);
CREATE INDEX p2p_holders_expiry ON p2p_holders(expires_at);
