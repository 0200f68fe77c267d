-- Web interface sessions, shared by every replica so any of them honours a session and a
-- logout on one ends it on all. The cookie's value is never stored, only its SHA-256: a
-- copy of this table opens no session. `cred` is the fingerprint of the password the
-- session was opened with: a password change ends the user's sessions.
CREATE TABLE ui_sessions (
    id_hash     TEXT PRIMARY KEY,
    subject     TEXT NOT NULL,
    cred        TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX ui_sessions_expiry ON ui_sessions(expires_at);
