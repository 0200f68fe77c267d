//! Package catalogs: per-layer results (kept by layer digest, so a shared base layer is
//! read once) and per-image catalogs with one row per package, which advisories are
//! matched against without reading a layer again.
//!
//! Catalogs are derived data, like verdicts: they are written without audit rows, and
//! `copy_into` does not copy them (the catalog jobs compute them again).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Row, Transaction};

use crate::{MetaStore, Result, now_micros, to_i64};

/// Packages inserted per statement: 10 parameters each stays far under both engines'
/// parameter limits.
const INSERT_BATCH: usize = 100;

/// A layer's stored result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCatalogRow {
    pub digest: String,
    pub cataloger_version: i64,
    pub partial: Option<String>,
    /// JSON, opaque here.
    pub result: String,
    pub cataloged_at: i64,
}

/// One package of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogPackage {
    pub purl: String,
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    pub source_name: Option<String>,
    pub source_version: Option<String>,
    pub arch: Option<String>,
    pub layer_digest: String,
    pub path: String,
}

/// An image's catalog: its summary and, when read back, its packages in purl order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCatalogRow {
    pub digest: String,
    /// `complete`, `partial` or `failed`.
    pub status: String,
    /// JSON, opaque here.
    pub detail: String,
    pub cataloger_version: i64,
    pub cataloged_at: i64,
    pub packages: Vec<CatalogPackage>,
}

impl MetaStore {
    pub async fn layer_catalog(&self, digest: &str) -> Result<Option<LayerCatalogRow>> {
        let row = sqlx::query(
            "SELECT digest, cataloger_version, partial, result, cataloged_at \
             FROM layer_catalogs WHERE digest = $1",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| -> Result<LayerCatalogRow> {
            Ok(LayerCatalogRow {
                digest: r.try_get(0)?,
                cataloger_version: r.try_get(1)?,
                partial: r.try_get(2)?,
                result: r.try_get(3)?,
                cataloged_at: r.try_get(4)?,
            })
        })
        .transpose()
    }

    /// The stored results of those of `digests` that were read to their end (a partial
    /// scan's result says nothing of the whole layer): digest and result JSON.
    pub async fn complete_layer_catalogs(&self, digests: &[&str]) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for chunk in digests.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT digest, result FROM layer_catalogs WHERE partial IS NULL AND digest IN ({})",
                marks.join(", ")
            );
            // Only placeholders are spliced in.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for d in chunk {
                q = q.bind(*d);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        Ok(out)
    }

    /// Stores (or replaces) a layer's result.
    pub async fn put_layer_catalog(
        &self,
        digest: &str,
        cataloger_version: i64,
        partial: Option<&str>,
        result: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO layer_catalogs (digest, cataloger_version, partial, result, cataloged_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO UPDATE SET \
             cataloger_version = excluded.cataloger_version, partial = excluded.partial, \
             result = excluded.result, cataloged_at = excluded.cataloged_at",
        )
        .bind(digest)
        .bind(cataloger_version)
        .bind(partial)
        .bind(result)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces an image's catalog and its packages in one transaction, so a reader sees
    /// the old catalog or the new one, never a mix.
    pub async fn put_image_catalog(&self, c: &ImageCatalogRow) -> Result<()> {
        let mut tx = self.write().await?;
        // The catalog row first: a second writer of the same image (two replicas, two
        // repositories) waits here for the first to commit, then reads the packages it
        // left, so the distinct packages' counts see each image's packages once.
        sqlx::query(
            "INSERT INTO image_catalogs (digest, status, detail, package_count, cataloger_version, cataloged_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (digest) DO UPDATE SET \
             status = excluded.status, detail = excluded.detail, package_count = excluded.package_count, \
             cataloger_version = excluded.cataloger_version, cataloged_at = excluded.cataloged_at",
        )
        .bind(&c.digest)
        .bind(&c.status)
        .bind(&c.detail)
        .bind(to_i64(c.packages.len() as u64))
        .bind(c.cataloger_version)
        .bind(c.cataloged_at)
        .execute(&mut *tx)
        .await?;
        let old: BTreeSet<String> =
            sqlx::query("SELECT purl FROM image_packages WHERE image_digest = $1")
                .bind(&c.digest)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
        sqlx::query("DELETE FROM image_packages WHERE image_digest = $1")
            .bind(&c.digest)
            .execute(&mut *tx)
            .await?;
        for chunk in c.packages.chunks(INSERT_BATCH) {
            let mut sql = String::from(
                "INSERT INTO image_packages (image_digest, purl, ecosystem, name, version, \
                 source_name, source_version, arch, layer_digest, path) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 10;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8,
                    b + 9,
                    b + 10
                ));
            }
            // The same purl twice in one image is one package: the first found is kept.
            sql.push_str(" ON CONFLICT (image_digest, purl) DO NOTHING");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q
                    .bind(&c.digest)
                    .bind(&p.purl)
                    .bind(&p.ecosystem)
                    .bind(&p.name)
                    .bind(&p.version)
                    .bind(p.source_name.as_deref())
                    .bind(p.source_version.as_deref())
                    .bind(p.arch.as_deref())
                    .bind(&p.layer_digest)
                    .bind(&p.path);
            }
            q.execute(&mut *tx).await?;
        }
        // The distinct packages change by what the image gained and lost; the first of a
        // purl is the one stored, as above.
        let mut delta: BTreeMap<&str, (Option<&CatalogPackage>, i64)> = BTreeMap::new();
        for p in &c.packages {
            if !old.contains(&p.purl) {
                delta.entry(p.purl.as_str()).or_insert((Some(p), 1));
            }
        }
        let kept: BTreeSet<&str> = c.packages.iter().map(|p| p.purl.as_str()).collect();
        for purl in &old {
            if !kept.contains(purl.as_str()) {
                delta.insert(purl, (None, -1));
            }
        }
        let delta: Vec<(&str, Option<&CatalogPackage>, i64)> =
            delta.into_iter().map(|(k, (p, d))| (k, p, d)).collect();
        Self::count_packages(&mut tx, &delta).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds `images` to each purl's count in `catalog_packages` (a package for a purl
    /// new to the table), then drops the purls left at zero. Rows go in purl order, so
    /// concurrent writers on PostgreSQL lock shared purls in the same order.
    async fn count_packages(
        tx: &mut Transaction<'static, sqlx::Any>,
        delta: &[(&str, Option<&CatalogPackage>, i64)],
    ) -> Result<()> {
        for chunk in delta.chunks(INSERT_BATCH) {
            let mut sql = String::from(
                "INSERT INTO catalog_packages (purl, ecosystem, name, version, source_name, \
                 source_version, images) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 7;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7
                ));
            }
            sql.push_str(
                " ON CONFLICT (purl) DO UPDATE SET images = catalog_packages.images + excluded.images",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (purl, p, d) in chunk {
                // A purl losing an image is in the table already: only its count changes.
                q = q
                    .bind(*purl)
                    .bind(p.map_or("", |p| p.ecosystem.as_str()))
                    .bind(p.map_or("", |p| p.name.as_str()))
                    .bind(p.map_or("", |p| p.version.as_str()))
                    .bind(p.and_then(|p| p.source_name.as_deref()))
                    .bind(p.and_then(|p| p.source_version.as_deref()))
                    .bind(*d);
            }
            q.execute(&mut **tx).await?;
            let lost: Vec<&str> = chunk
                .iter()
                .filter(|(_, _, d)| *d < 0)
                .map(|(purl, _, _)| *purl)
                .collect();
            if !lost.is_empty() {
                let list = (1..=lost.len())
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql =
                    format!("DELETE FROM catalog_packages WHERE images <= 0 AND purl IN ({list})");
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for purl in lost {
                    q = q.bind(purl);
                }
                q.execute(&mut **tx).await?;
            }
        }
        Ok(())
    }

    /// An image's catalog with its packages, if it was cataloged.
    pub async fn image_catalog(&self, digest: &str) -> Result<Option<ImageCatalogRow>> {
        let Some(r) = sqlx::query(
            "SELECT digest, status, detail, cataloger_version, cataloged_at \
             FROM image_catalogs WHERE digest = $1",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT purl, ecosystem, name, version, source_name, source_version, arch, layer_digest, path \
             FROM image_packages WHERE image_digest = $1 ORDER BY purl",
        )
        .bind(digest)
        .fetch_all(&self.pool)
        .await?;
        let packages = rows
            .iter()
            .map(|p| -> Result<CatalogPackage> {
                Ok(CatalogPackage {
                    purl: p.try_get(0)?,
                    ecosystem: p.try_get(1)?,
                    name: p.try_get(2)?,
                    version: p.try_get(3)?,
                    source_name: p.try_get(4)?,
                    source_version: p.try_get(5)?,
                    arch: p.try_get(6)?,
                    layer_digest: p.try_get(7)?,
                    path: p.try_get(8)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ImageCatalogRow {
            digest: r.try_get(0)?,
            status: r.try_get(1)?,
            detail: r.try_get(2)?,
            cataloger_version: r.try_get(3)?,
            cataloged_at: r.try_get(4)?,
            packages,
        }))
    }

    /// Images holding a package of `ecosystem` named `name`, or whose source package is
    /// `name` (Debian advisories name source packages): `(image digest, package)`.
    pub async fn images_with_package(
        &self,
        ecosystem: &str,
        name: &str,
        limit: u64,
    ) -> Result<Vec<(String, CatalogPackage)>> {
        let rows = sqlx::query(
            "SELECT image_digest, purl, ecosystem, name, version, source_name, source_version, arch, layer_digest, path \
             FROM image_packages WHERE ecosystem = $1 AND (name = $2 OR source_name = $2) \
             ORDER BY image_digest, purl LIMIT $3",
        )
        .bind(ecosystem)
        .bind(name)
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|p| {
                Ok((
                    p.try_get(0)?,
                    CatalogPackage {
                        purl: p.try_get(1)?,
                        ecosystem: p.try_get(2)?,
                        name: p.try_get(3)?,
                        version: p.try_get(4)?,
                        source_name: p.try_get(5)?,
                        source_version: p.try_get(6)?,
                        arch: p.try_get(7)?,
                        layer_digest: p.try_get(8)?,
                        path: p.try_get(9)?,
                    },
                ))
            })
            .collect()
    }
}

impl MetaStore {
    /// Drops catalogs of content no longer stored: images whose manifest is in no
    /// repository, layers whose blob is gone. Returns (images, layers) dropped. A catalog
    /// is keyed by digest alone, so it stays while any repository holds the content.
    pub async fn prune_catalogs(&self) -> Result<(u64, u64)> {
        let mut tx = self.write().await?;
        // The pruned images' packages leave the distinct packages' counts first.
        sqlx::query(
            "INSERT INTO catalog_packages (purl, ecosystem, name, version, source_name, \
             source_version, images) \
             SELECT purl, '', '', '', NULL, NULL, -COUNT(*) FROM image_packages p WHERE NOT EXISTS \
             (SELECT 1 FROM manifests m WHERE m.digest = p.image_digest) GROUP BY purl ORDER BY purl \
             ON CONFLICT (purl) DO UPDATE SET images = catalog_packages.images + excluded.images",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM catalog_packages WHERE images <= 0")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM image_packages WHERE NOT EXISTS \
             (SELECT 1 FROM manifests m WHERE m.digest = image_packages.image_digest)",
        )
        .execute(&mut *tx)
        .await?;
        let images = sqlx::query(
            "DELETE FROM image_catalogs WHERE NOT EXISTS \
             (SELECT 1 FROM manifests m WHERE m.digest = image_catalogs.digest)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let layers = sqlx::query(
            "DELETE FROM layer_catalogs WHERE NOT EXISTS \
             (SELECT 1 FROM blobs b WHERE b.digest = layer_catalogs.digest)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((images, layers))
    }
}
