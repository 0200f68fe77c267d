-- Names Berth uses for itself (berth_auth::RESERVED_NAMES: the caller without credentials,
-- Berth's own work, the offline CLI) are nobody's account. Before they were reserved, an
-- unauthenticated token (sub "anonymous") resolved to a user of that name and carried its
-- roles. Each such user is renamed to <name>-renamed-<created_at> and disabled, its
-- memberships following it: an admin reviews it and re-enables it if it was legitimate,
-- and its holder logs in under the new name. Each rename is written to the audit log
-- (actor system:migration, action user.rename), and the migration logs a warning per row.
INSERT INTO users (name, password_hash, admin, disabled, created_at)
SELECT name || '-renamed-' || created_at, password_hash, admin, 1, created_at
FROM users WHERE name IN ('anonymous', 'system', 'cli');

UPDATE members
SET username = username || '-renamed-' || (SELECT u.created_at FROM users u WHERE u.name = members.username)
WHERE username IN ('anonymous', 'system', 'cli');

INSERT INTO audit_log (at, actor, action, target, detail, outcome)
SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT), 'system:migration', 'user.rename',
       name || '-renamed-' || created_at,
       'renamed from ' || name || ' and disabled: the name is reserved (Berth uses it for itself); re-enable it after review',
       'ok'
FROM users WHERE name IN ('anonymous', 'system', 'cli');

DELETE FROM users WHERE name IN ('anonymous', 'system', 'cli');
