-- Encryption at rest. A blob with a row here is stored sealed under its own data key,
-- wrapped by the key-encryption key `key_id` (the wrap is bound to the digest); a blob
-- without one is stored as plaintext. The state lives here, never guessed from the bytes.
CREATE TABLE blob_keys (
    digest      TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL,
    wrapped     BLOB NOT NULL,
    state       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX blob_keys_key_id ON blob_keys (key_id);

-- One value sealed under each key-encryption key when it is first used, so a wrong key
-- under a known id is refused at startup instead of failing on the first read.
CREATE TABLE kek_checks (
    key_id      TEXT PRIMARY KEY,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- A token signing key's secret sealed by this key-encryption key (NULL: stored as it is,
-- from before encryption was turned on; sealed at the next start with a keyring).
ALTER TABLE signing_keys ADD COLUMN sealed_by TEXT;
