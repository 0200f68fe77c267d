//! Vulnerabilities, offline: imported advisories and the findings of each package.
//!
//! An import is one transaction (a reader sees every feed of it or none), and bumps the
//! generation. Findings are kept per package (purl), not per image: images share their
//! base layers' packages, so re-matching after an import costs the distinct packages.
//! A package matched under an older generation is matched again before its findings are
//! read, so a crash between an import and its re-match shows nothing stale.
//!
//! Derived data from what an operator imports: no audit rows (the import is logged by the
//! caller), not copied by `copy_into`.

use sqlx::Row;

use crate::{MetaStore, Result, now_micros, to_i64};

/// Rows per multi-row insert: at most 6 parameters each.
const INSERT_BATCH: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvisoryRow {
    pub id: String,
    pub ecosystem: String,
    pub package: String,
    /// `""` for none.
    pub release: String,
    /// JSON, opaque here.
    pub record: String,
}

/// One feed of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedImport {
    pub name: String,
    pub format: String,
    /// A complete dump replaces the feed; otherwise its ids are replaced one by one.
    pub complete: bool,
    pub rows: Vec<AdvisoryRow>,
    /// OSV ids withdrawn: removed from every OSV feed.
    pub withdrawn: Vec<String>,
    pub skipped: u64,
    pub newest_modified: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    pub name: String,
    pub format: String,
    pub records: i64,
    pub skipped: i64,
    pub newest_modified: Option<String>,
    pub imported_at: i64,
}

/// A distinct package of the stored catalogs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageKey {
    pub purl: String,
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    pub source_name: Option<String>,
    pub source_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingRow {
    pub purl: String,
    pub id: String,
    pub severity: String,
    /// JSON, opaque here.
    pub finding: String,
}

fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let p: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
            format!("({})", p.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl MetaStore {
    /// Writes every feed of an import in one transaction and returns the new generation.
    pub async fn import_advisories(&self, feeds: &[FeedImport]) -> Result<i64> {
        let mut tx = self.write().await?;
        let now = now_micros();
        for f in feeds {
            if f.complete {
                sqlx::query("DELETE FROM advisories WHERE feed = $1")
                    .bind(&f.name)
                    .execute(&mut *tx)
                    .await?;
            } else {
                let mut ids: Vec<&str> = f.rows.iter().map(|r| r.id.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();
                for id in ids {
                    sqlx::query("DELETE FROM advisories WHERE feed = $1 AND id = $2")
                        .bind(&f.name)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            for id in &f.withdrawn {
                sqlx::query(
                    "DELETE FROM advisories WHERE id = $1 AND (feed = 'osv' OR feed LIKE 'osv:%')",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            for chunk in f.rows.chunks(INSERT_BATCH) {
                let sql = format!(
                    "INSERT INTO advisories (feed, id, ecosystem, package, release, record) VALUES {} \
                     ON CONFLICT (feed, id, ecosystem, package, release) DO UPDATE SET record = excluded.record",
                    placeholders(chunk.len(), 6)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for r in chunk {
                    q = q
                        .bind(&f.name)
                        .bind(&r.id)
                        .bind(&r.ecosystem)
                        .bind(&r.package)
                        .bind(&r.release)
                        .bind(&r.record);
                }
                q.execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO advisory_feeds (name, format, records, skipped, newest_modified, imported_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET \
                 format = excluded.format, records = excluded.records, skipped = excluded.skipped, \
                 newest_modified = excluded.newest_modified, imported_at = excluded.imported_at",
            )
            .bind(&f.name)
            .bind(&f.format)
            .bind(0_i64)
            .bind(to_i64(f.skipped))
            .bind(f.newest_modified.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // Counted at the end: a withdrawal can take records from a feed not imported now.
        sqlx::query(
            "UPDATE advisory_feeds SET records = \
             (SELECT COUNT(*) FROM advisories a WHERE a.feed = advisory_feeds.name)",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE vuln_state SET generation = generation + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let generation: i64 = sqlx::query("SELECT generation FROM vuln_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(generation)
    }

    pub async fn advisory_feeds(&self) -> Result<Vec<FeedRow>> {
        let rows = sqlx::query(
            "SELECT name, format, records, skipped, newest_modified, imported_at \
             FROM advisory_feeds ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FeedRow {
                    name: r.try_get(0)?,
                    format: r.try_get(1)?,
                    records: r.try_get(2)?,
                    skipped: r.try_get(3)?,
                    newest_modified: r.try_get(4)?,
                    imported_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// The generation of the advisories and when everything was last re-matched.
    pub async fn vuln_state(&self) -> Result<(i64, i64)> {
        let r = sqlx::query("SELECT generation, matched_at FROM vuln_state WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    }

    /// Every advisory record (JSON) with the generation they belong to, read in one
    /// transaction so the two agree.
    pub async fn all_advisories(&self) -> Result<(i64, Vec<String>)> {
        let mut tx = self.pool.begin().await?;
        let generation: i64 = sqlx::query("SELECT generation FROM vuln_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let rows = sqlx::query("SELECT record FROM advisories")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let records = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<Vec<String>, _>>()?;
        Ok((generation, records))
    }

    /// Every advisory as `(feed, id, record JSON)`: what an import would replace is told
    /// by its feed and id.
    pub async fn advisories_by_feed(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT feed, id, record FROM advisories")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// The advisory records (JSON) for one package name of an ecosystem.
    pub async fn advisories_for(&self, ecosystem: &str, package: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT record FROM advisories WHERE ecosystem = $1 AND package = $2")
                .bind(ecosystem)
                .bind(package)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<Vec<String>, _>>()?)
    }

    /// Every distinct package of every stored image catalog (`catalog_packages`, kept
    /// as catalogs are written and pruned).
    pub async fn distinct_packages(&self) -> Result<Vec<PackageKey>> {
        let rows = sqlx::query(
            "SELECT purl, ecosystem, name, version, source_name, source_version \
             FROM catalog_packages",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(package_key).collect()
    }

    /// An image's packages not matched under `generation` yet.
    pub async fn unmatched_packages(
        &self,
        image: &str,
        generation: i64,
    ) -> Result<Vec<PackageKey>> {
        let rows = sqlx::query(
            "SELECT p.purl, p.ecosystem, p.name, p.version, p.source_name, p.source_version \
             FROM image_packages p LEFT JOIN vuln_matched m ON m.purl = p.purl \
             WHERE p.image_digest = $1 AND (m.generation IS NULL OR m.generation < $2)",
        )
        .bind(image)
        .bind(generation)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(package_key).collect()
    }

    /// Stores the findings of `purls` as matched under `generation`, replacing what they
    /// had; with `everything`, replaces all findings (a full re-match). Nothing is written
    /// if another import moved the generation meanwhile (its own re-match is newer): says
    /// whether it was written.
    pub async fn put_findings(
        &self,
        generation: i64,
        purls: &[String],
        findings: &[FindingRow],
        everything: bool,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let current: i64 = sqlx::query("SELECT generation FROM vuln_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if current != generation {
            return Ok(false);
        }
        if everything {
            sqlx::query("DELETE FROM vuln_findings")
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM vuln_matched")
                .execute(&mut *tx)
                .await?;
        } else {
            for chunk in purls.chunks(INSERT_BATCH) {
                let list = (1..=chunk.len())
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                for table in ["vuln_findings", "vuln_matched"] {
                    let sql = format!("DELETE FROM {table} WHERE purl IN ({list})");
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for p in chunk {
                        q = q.bind(p);
                    }
                    q.execute(&mut *tx).await?;
                }
            }
        }
        for chunk in findings.chunks(INSERT_BATCH) {
            let sql = format!(
                "INSERT INTO vuln_findings (purl, id, severity, finding) VALUES {} \
                 ON CONFLICT (purl, id) DO NOTHING",
                placeholders(chunk.len(), 4)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for f in chunk {
                q = q
                    .bind(&f.purl)
                    .bind(&f.id)
                    .bind(&f.severity)
                    .bind(&f.finding);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in purls.chunks(INSERT_BATCH) {
            let sql = format!(
                "INSERT INTO vuln_matched (purl, generation) VALUES {} \
                 ON CONFLICT (purl) DO UPDATE SET generation = excluded.generation",
                placeholders(chunk.len(), 2)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q.bind(p).bind(generation);
            }
            q.execute(&mut *tx).await?;
        }
        if everything {
            sqlx::query("UPDATE vuln_state SET matched_at = $1 WHERE id = 1")
                .bind(now_micros())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The findings of an image's packages, by purl then id.
    pub async fn image_findings(&self, image: &str) -> Result<Vec<FindingRow>> {
        let rows = sqlx::query(
            "SELECT f.purl, f.id, f.severity, f.finding FROM image_packages p \
             JOIN vuln_findings f ON f.purl = p.purl WHERE p.image_digest = $1 \
             ORDER BY f.purl, f.id",
        )
        .bind(image)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FindingRow {
                    purl: r.try_get(0)?,
                    id: r.try_get(1)?,
                    severity: r.try_get(2)?,
                    finding: r.try_get(3)?,
                })
            })
            .collect()
    }
}

fn package_key(r: &sqlx::any::AnyRow) -> Result<PackageKey> {
    Ok(PackageKey {
        purl: r.try_get(0)?,
        ecosystem: r.try_get(1)?,
        name: r.try_get(2)?,
        version: r.try_get(3)?,
        source_name: r.try_get(4)?,
        source_version: r.try_get(5)?,
    })
}
