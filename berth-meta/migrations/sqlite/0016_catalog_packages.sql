-- The distinct packages of all stored image catalogs, kept as catalogs are written and
-- pruned: a full re-match (every import) reads these instead of a DISTINCT over every
-- image's packages (millions of rows for thousands of images sharing base layers).
-- `images` counts the images whose catalog holds the purl; a row at 0 is removed.
CREATE TABLE catalog_packages (
    purl            TEXT PRIMARY KEY,
    ecosystem       TEXT NOT NULL,
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    source_name     TEXT,
    source_version  TEXT,
    images          BIGINT NOT NULL
);

-- A purl names its package's ecosystem, name, version and source, so one row per purl
-- is the same set the DISTINCT gave.
INSERT INTO catalog_packages (purl, ecosystem, name, version, source_name, source_version, images)
SELECT purl, MIN(ecosystem), MIN(name), MIN(version), MIN(source_name), MIN(source_version), COUNT(*)
FROM image_packages GROUP BY purl;
