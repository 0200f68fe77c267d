-- Node-local sharing: the keys every replica signs with, made by the first replica that
-- starts without key files. `name` is `ticket` (Ed25519, PKCS#8) or `ca` (the CA of
-- agent-to-agent TLS, ECDSA P-256, PKCS#8); `secret` is sealed by the key-encryption key
-- `sealed_by` when encryption is on.
CREATE TABLE p2p_keys (
    name        TEXT PRIMARY KEY,
    secret      BYTEA NOT NULL,
    sealed_by   TEXT,
    created_at  BIGINT NOT NULL
);
