-- Every change of a tag: kind is 'create', 'move', 'delete' or 'rollback'. Written in the
-- same transaction as the change, so the history is exactly what happened to the tag.
-- Digests are not foreign keys: history outlives the manifests it names.
CREATE TABLE tag_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id     INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    kind        TEXT NOT NULL,
    old_digest  TEXT,
    new_digest  TEXT,
    actor       TEXT NOT NULL,
    source      TEXT,
    at          INTEGER NOT NULL
);
CREATE INDEX tag_history_tag ON tag_history(repo_id, tag, id);
