-- When a blob's bytes were last written. An upload moves this forward before it puts its
-- bytes in place, so garbage collection never deletes bytes that a push is about to link.
ALTER TABLE blobs ADD COLUMN written_at BIGINT NOT NULL DEFAULT 0;
UPDATE blobs SET written_at = created_at;

-- Roughly when a manifest was last pulled (moved forward at most once per interval), for
-- retention policies and cache eviction.
ALTER TABLE manifests ADD COLUMN pulled_at BIGINT;

CREATE INDEX blobs_written ON blobs(written_at);
CREATE INDEX tag_history_at ON tag_history(at);

-- Leases for work that one replica at a time must do (garbage collection).
CREATE TABLE leases (
    name        TEXT COLLATE "C" PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
