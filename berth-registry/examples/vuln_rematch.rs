//! The re-match benchmark of the vulnerability issue: N stored image catalogs of ~300
//! packages over a few distinct base layers, M advisory records, then one full re-match
//! (`Registry::rematch_all`, what every import ends with), timed. Run by
//! `bench/vulns.py`; alone:
//!
//!     cargo run --release -p berth-registry --example vuln_rematch -- \
//!         [--images 10000] [--advisories 200000] [--metadata-url sqlite:/tmp/x.db] [--reuse]

use std::time::Instant;

use berth_meta::{CatalogPackage, ImageCatalogRow, MetaStore};
use berth_registry::{Registry, RegistryConfig};
use berth_storage::{BlobStore, FsStore};
use berth_vuln::Feed;
use berth_vuln::advisory::{Event, Record, Severity, Status};

const BASES: usize = 5;
const BASE_PACKAGES: usize = 250;
const APP_PACKAGES: usize = 50;
const APP_POOL: usize = 2000;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn hex64(n: u64) -> String {
    format!("sha256:{n:064x}")
}

/// A cheap deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn deb(base: usize, i: usize) -> CatalogPackage {
    let src = format!("src{i}");
    let version = format!(
        "1.{}.{}-{}+deb12u{}",
        i % 7,
        i % 13,
        1 + base % 2,
        1 + i % 3
    );
    CatalogPackage {
        purl: format!("pkg:deb/debian/lib{i}@{version}?arch=amd64&distro=debian-12&upstream={src}"),
        ecosystem: "deb".into(),
        name: format!("lib{i}"),
        version: version.clone(),
        source_name: Some(src),
        source_version: Some(version),
        arch: Some("amd64".into()),
        layer_digest: hex64(base as u64 + 1),
        path: "var/lib/dpkg/status".into(),
    }
}

fn app(j: usize, layer: u64) -> CatalogPackage {
    let (eco, name, version) = if j.is_multiple_of(2) {
        (
            "npm",
            format!("npm-pkg{}", j / 4),
            format!("{}.{}.{}", j % 3, j % 5, j % 11),
        )
    } else {
        (
            "pypi",
            format!("py-pkg{}", j / 4),
            format!("{}.{}", j % 4, j % 9),
        )
    };
    CatalogPackage {
        purl: format!("pkg:{eco}/{name}@{version}"),
        ecosystem: eco.into(),
        name,
        version,
        source_name: None,
        source_version: None,
        arch: None,
        layer_digest: hex64(layer),
        path: "app".into(),
    }
}

fn records(n: usize, rng: &mut Rng) -> Vec<Record> {
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let (eco, package, release, fixed) = match k % 2 {
            // Debian sources: the image's and many more, in two releases.
            0 => (
                "deb",
                format!("src{}", rng.below(BASE_PACKAGES * 8)),
                Some(
                    if k.is_multiple_of(4) {
                        "bookworm"
                    } else {
                        "bullseye"
                    }
                    .to_owned(),
                ),
                format!(
                    "1.{}.{}-2+deb12u{}",
                    rng.below(7),
                    rng.below(13),
                    rng.below(4)
                ),
            ),
            _ => {
                let j = rng.below(APP_POOL * 4);
                if j.is_multiple_of(2) {
                    (
                        "npm",
                        format!("npm-pkg{}", j / 4),
                        None,
                        format!("{}.{}.0", rng.below(3), rng.below(5)),
                    )
                } else {
                    (
                        "pypi",
                        format!("py-pkg{}", j / 4),
                        None,
                        format!("{}.{}", rng.below(4), rng.below(9)),
                    )
                }
            }
        };
        out.push(Record {
            id: format!("CVE-2024-{k:06}"),
            aliases: Vec::new(),
            ecosystem: eco.into(),
            package,
            release,
            ranges: vec![vec![Event::Introduced("0".into()), Event::Fixed(fixed)]],
            versions: Vec::new(),
            status: Status::Affected,
            severity: [
                Severity::Low,
                Severity::Medium,
                Severity::High,
                Severity::Critical,
            ][k % 4],
            score: None,
            summary: String::new(),
            modified: None,
        });
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let images: usize = arg("--images", "10000").parse()?;
    let advisories: usize = arg("--advisories", "200000").parse()?;
    let dir = tempfile::tempdir()?;
    let default_url = format!("sqlite:{}", dir.path().join("meta.db").display());
    let url = arg("--metadata-url", &default_url);
    let meta = MetaStore::connect(&url).await?;
    let blobs = BlobStore::Fs(FsStore::new(dir.path().join("blobs")).await?);
    let registry = Registry::new(blobs, meta, RegistryConfig::default());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // `--reuse`: the catalogs of an earlier run with the same --metadata-url are there.
    let reuse = std::env::args().any(|a| a == "--reuse");
    let t = Instant::now();
    for i in (0..images).filter(|_| !reuse) {
        let base = i % BASES;
        let mut packages: Vec<CatalogPackage> = (0..BASE_PACKAGES).map(|p| deb(base, p)).collect();
        for _ in 0..APP_PACKAGES {
            packages.push(app(rng.below(APP_POOL), 1000 + i as u64));
        }
        registry
            .meta()
            .put_image_catalog(&ImageCatalogRow {
                digest: hex64(1_000_000 + i as u64),
                status: "complete".into(),
                detail: "{}".into(),
                cataloger_version: 1,
                cataloged_at: 0,
                packages,
            })
            .await?;
    }
    eprintln!(
        "stored {images} image catalogs in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let feed = Feed {
        name: "osv:bench".into(),
        format: "osv",
        complete: true,
        records: records(advisories, &mut rng),
        withdrawn: Vec::new(),
        skipped: Vec::new(),
    };
    let t = Instant::now();
    let report = registry.import_advisories(vec![feed]).await?;
    let import = t.elapsed().as_secs_f64();
    let r = report.rematch.expect("re-matched");
    println!(
        "import of {advisories} records with its re-match: {import:.2} s (re-match {:.2} s)",
        r.millis as f64 / 1000.0
    );
    // Where a re-match spends its time: the two reads, alone.
    let t = Instant::now();
    let (_, all) = registry.meta().all_advisories().await?;
    println!(
        "  reading {} advisories: {:.2} s",
        all.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let distinct = registry.meta().distinct_packages().await?;
    println!(
        "  reading {} distinct packages: {:.2} s",
        distinct.len(),
        t.elapsed().as_secs_f64()
    );
    // The re-match alone again, as after a re-import that changed nothing.
    let mut runs = Vec::new();
    for _ in 0..3 {
        let r = registry.rematch_all().await?;
        runs.push(r.millis);
        println!(
            "re-match: {images} images, {} distinct packages, {} advisories, {} findings: {:.2} s",
            r.packages,
            r.advisories,
            r.findings,
            r.millis as f64 / 1000.0
        );
    }
    runs.sort_unstable();
    println!(
        "re-match median: {:.2} s (target < 10 s)",
        runs[1] as f64 / 1000.0
    );
    Ok(())
}
