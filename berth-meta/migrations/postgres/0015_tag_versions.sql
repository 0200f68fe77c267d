-- Tags in semver order without sorting per request: `version_key` is
-- `berth_oci::semver::version_key` of the name (byte order = semver precedence; empty for a
-- tag that is no version), written with the tag. NULL means not computed yet: rows from
-- before this migration, filled in by the next start (`tags_version_pending` finds them).
ALTER TABLE tags ADD COLUMN version_key TEXT COLLATE "C";
CREATE INDEX tags_versions ON tags(repo_id, version_key, name) WHERE version_key <> '';
CREATE INDEX tags_version_pending ON tags(repo_id) WHERE version_key IS NULL;
