-- What is inside every image (package catalogs, SBOMs).
--
-- Per layer digest: a base layer shared by many images is read once. `result` is the
-- layer's catalog as JSON (berth_catalog::LayerCatalog); `partial` the reason it was not
-- read to its end (a cap, a corrupt stream), NULL when it was.
CREATE TABLE layer_catalogs (
    digest             TEXT PRIMARY KEY,
    cataloger_version  BIGINT NOT NULL,
    partial            TEXT,
    result             TEXT NOT NULL,
    cataloged_at       BIGINT NOT NULL
);

-- Per image manifest digest (what is inside does not depend on the repository).
-- `status`: complete, partial (a layer over a cap, unreadable files) or failed (no
-- catalog: a layer missing or not an image); `detail` is JSON (the OS, the partial
-- layers and their reasons, the files that could not be read, or the failure).
CREATE TABLE image_catalogs (
    digest             TEXT PRIMARY KEY,
    status             TEXT NOT NULL,
    detail             TEXT NOT NULL,
    package_count      BIGINT NOT NULL,
    cataloger_version  BIGINT NOT NULL,
    cataloged_at       BIGINT NOT NULL
);

-- One row per package of an image, for matching advisories without reading a layer:
-- by (ecosystem, name), or by (ecosystem, source_name) for distributions whose
-- advisories name source packages (Debian).
CREATE TABLE image_packages (
    image_digest    TEXT NOT NULL,
    purl            TEXT NOT NULL,
    ecosystem       TEXT NOT NULL,
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    source_name     TEXT,
    source_version  TEXT,
    arch            TEXT,
    layer_digest    TEXT NOT NULL,
    path            TEXT NOT NULL,
    PRIMARY KEY (image_digest, purl)
);
CREATE INDEX image_packages_name ON image_packages (ecosystem, name);
CREATE INDEX image_packages_source ON image_packages (ecosystem, source_name);

-- Catalogs are kept per digest whatever the repository; pruning those of content no
-- repository holds any more looks manifests up by digest alone.
CREATE INDEX manifests_digest ON manifests (digest);
