//! Garbage collection on SQLite and on PostgreSQL (`BERTH_TEST_POSTGRES_URL`): the exact
//! set a crafted store loses and keeps, and a collection racing pushes and pulls.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_oci::{Digest, Reference, RepoName};
use berth_registry::fsck::NoProgress;
use berth_registry::gc::{GcOptions, GcReport};
use berth_registry::{Registry, RegistryError};
use common::{blob, image, index, push_image, put, registry, repo, sha};

async fn gc(r: &Registry, grace: u64, rollback: u64, dry_run: bool) -> GcReport {
    gc_grace(r, Duration::from_secs(grace), rollback, dry_run).await
}

async fn gc_grace(r: &Registry, grace: Duration, rollback: u64, dry_run: bool) -> GcReport {
    r.collect_garbage(
        &GcOptions {
            dry_run,
            grace,
            rollback_window: Duration::from_secs(rollback),
        },
        &|_| {},
    )
    .await
    .expect("gc")
}

fn manifests(report: &GcReport) -> BTreeSet<(String, String)> {
    report.manifests_deleted.iter().cloned().collect()
}

fn blobs(report: &GcReport) -> BTreeSet<String> {
    report
        .blobs_deleted
        .iter()
        .map(|(d, _)| d.clone())
        .collect()
}

/// Reads a blob of `repo` to the end; its length.
async fn read_all(r: &Registry, repo: &RepoName, d: &Digest) -> Result<usize, RegistryError> {
    common::read_all(r, repo, d).await.map(|b| b.len())
}

async fn exact_sweep(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = registry(dir.path(), postgres).await;
    let (a, b) = (repo("team/app"), repo("other/app"));
    let d = |m: &[u8]| (a.to_string(), sha(m).to_string());

    // Kept: a tagged image, its signature, a tagged index and its children.
    let t = push_image(&r, &a, Some("v1"), b"cfg-t", &[b"shared", b"lay-t"], None)
        .await
        .expect("t");
    push_image(&r, &a, None, b"cfg-r", &[], Some(&t))
        .await
        .expect("referrer of t");
    let c1 = push_image(&r, &a, None, b"cfg-c1", &[b"lay-c"], None)
        .await
        .expect("c1");
    let c2 = push_image(&r, &a, None, b"cfg-c2", &[b"lay-c"], None)
        .await
        .expect("c2");
    put(&r, &a, Some("multi"), &index(&[&c1, &c2]))
        .await
        .expect("index");
    // Kept while the rollback window lasts: what a tag pointed at before it moved.
    let h = push_image(&r, &a, Some("rel"), b"cfg-h", &[], None)
        .await
        .expect("h");
    push_image(&r, &a, Some("rel"), b"cfg-h2", &[], None)
        .await
        .expect("h2");
    // Garbage: an untagged image, an untagged index with its child, and the child's
    // signature; an uploaded blob no manifest uses.
    let u = push_image(&r, &a, None, b"cfg-u", &[b"shared", b"lay-u"], None)
        .await
        .expect("u");
    let k = push_image(&r, &a, None, b"cfg-k", &[b"lay-k"], None)
        .await
        .expect("k");
    let j = index(&[&k]);
    put(&r, &a, None, &j).await.expect("untagged index");
    let s = push_image(&r, &a, None, b"cfg-s", &[], Some(&k))
        .await
        .expect("signature of k");
    blob(&r, &a, b"orphan upload").await.expect("orphan");
    // Another repository needs lay-u: only team/app's link to it goes.
    let v = push_image(&r, &b, Some("v1"), b"cfg-v", &[b"shared", b"lay-u"], None)
        .await
        .expect("v");

    // Within the grace period nothing goes.
    let young = gc(&r, 3600, 0, false).await;
    assert!(
        young.manifests_deleted.is_empty() && young.blobs_deleted.is_empty(),
        "{young:?}"
    );

    let expected_manifests: BTreeSet<_> = [d(&u), d(&j), d(&k), d(&s)].into_iter().collect();
    let expected_blobs: BTreeSet<String> = [
        &b"cfg-u"[..],
        b"cfg-k",
        b"lay-k",
        b"cfg-s",
        b"orphan upload",
    ]
    .iter()
    .map(|x| sha(x).to_string())
    .collect();
    let dry = gc(&r, 0, 3600, true).await;
    assert_eq!(manifests(&dry), expected_manifests);
    assert_eq!(blobs(&dry), expected_blobs);
    let dry_bytes: u64 = [5, 5, 5, 5, 13].iter().sum();
    assert_eq!(dry.bytes_freed, dry_bytes);

    let done = gc(&r, 0, 3600, false).await;
    assert_eq!(manifests(&done), expected_manifests);
    assert_eq!(blobs(&done), expected_blobs);
    assert_eq!(done.bytes_freed, dry_bytes);
    // cfg-u, lay-u, cfg-k, lay-k, cfg-s and the orphan lose their team/app links.
    assert_eq!(done.links_removed, 6);
    for gone in &expected_blobs {
        let digest: Digest = gone.parse().expect("digest");
        assert_eq!(r.blobs().stat(&digest).await.expect("stat"), None, "{gone}");
    }
    for m in [&u, &j, &k, &s] {
        assert!(
            r.get_manifest(&a, &Reference::Digest(sha(m)))
                .await
                .is_err()
        );
    }
    // Everything kept pulls, bytes and all.
    for (rp, m) in [(&a, &t), (&a, &c1), (&a, &c2), (&a, &h), (&b, &v)] {
        r.get_manifest(rp, &Reference::Digest(sha(m)))
            .await
            .expect("kept manifest");
    }
    for (rp, data) in [
        (&a, &b"shared"[..]),
        (&a, b"lay-t"),
        (&a, b"lay-c"),
        (&a, b"cfg-r"),
        (&a, b"cfg-h"),
        (&b, b"lay-u"),
        (&b, b"shared"),
    ] {
        assert_eq!(
            read_all(&r, rp, &sha(data)).await.expect("kept blob"),
            data.len()
        );
    }
    assert!(r.fsck(&NoProgress).await.expect("fsck").is_clean());

    // The rollback window over, the old target of `rel` goes too; then nothing is left.
    let later = gc(&r, 0, 0, false).await;
    assert_eq!(manifests(&later), [d(&h)].into_iter().collect());
    assert_eq!(
        blobs(&later),
        [sha(b"cfg-h").to_string()].into_iter().collect()
    );
    let again = gc(&r, 0, 0, false).await;
    assert!(again.manifests_deleted.is_empty() && again.blobs_deleted.is_empty());
    assert!(r.fsck(&NoProgress).await.expect("fsck").is_clean());
}

#[tokio::test]
async fn exact_sweep_sqlite() {
    exact_sweep(false).await;
}

#[tokio::test]
async fn exact_sweep_postgres() {
    exact_sweep(true).await;
}

/// A collection with a grace period far shorter than a push's pause loops beside a pusher
/// whose layers keep turning into garbage and coming back, and a puller. Every push
/// succeeds and pulls back complete at once, the tags pull complete at the end, and the
/// store is consistent afterwards.
/// Longer than any push takes here, even on a loaded machine: the grace period is what
/// protects a blob between its upload and the manifest that references it. (1 s was not:
/// with SQLite's one writer shared with a collection looping without pause, a push on a
/// machine busy compiling once took longer, and its config was rightly collected.)
const GRACE: Duration = Duration::from_secs(3);

async fn race(postgres: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = registry(dir.path(), postgres).await;
    let a = repo("race/app");
    let stop = Arc::new(AtomicBool::new(false));
    let swept = Arc::new(AtomicUsize::new(0));
    let recycled_digests: BTreeSet<String> = (0..8)
        .map(|n| sha(format!("recycled {n}").as_bytes()).to_string())
        .collect();
    let recycled_swept = Arc::new(AtomicUsize::new(0));

    let collector = {
        let (r, stop, swept) = (r.clone(), Arc::clone(&stop), Arc::clone(&swept));
        let (recycled, recycled_swept) = (recycled_digests.clone(), Arc::clone(&recycled_swept));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let report = gc_grace(&r, GRACE, 0, false).await;
                recycled_swept.fetch_add(
                    blobs(&report).intersection(&recycled).count(),
                    Ordering::Relaxed,
                );
                swept.fetch_add(
                    report.manifests_deleted.len() + report.blobs_deleted.len(),
                    Ordering::Relaxed,
                );
                tokio::task::yield_now().await;
            }
        })
    };
    let puller = {
        let (r, a, stop) = (r.clone(), a.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut pulls = 0;
            while !stop.load(Ordering::Relaxed) {
                for t in ["t0", "t1"] {
                    // A tag can move and its old target go between the two steps: only a
                    // complete pull of a manifest that exists counts.
                    if let Ok(m) = r
                        .get_manifest(&a, &Reference::Tag(t.parse().expect("tag")))
                        .await
                        && read_all(&r, &a, &sha(b"base layer")).await.is_ok()
                    {
                        let _ = m;
                        pulls += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            pulls
        })
    };

    let started = Instant::now();
    let mut acknowledged = 0;
    let mut last = std::collections::HashMap::new();
    let mut i = 0u32;
    // Eight seconds, but never fewer than 24 pushes: on a loaded machine a push can take
    // long enough that a fixed time would test too few races.
    while (started.elapsed() < Duration::from_secs(8) || i < 24)
        && i < 400
        && started.elapsed() < Duration::from_secs(120)
    {
        let tag = format!("t{}", i % 2);
        let config = format!("config {i}");
        // Only the last two pushes are tagged, so of eight recycled layers six are out of
        // use at any time, each for six pauses (longer than the grace), and then pushed
        // again: the sweep of a blob races its re-upload.
        let recycled = format!("recycled {}", i % 8);
        let layers: [&[u8]; 2] = [b"base layer", recycled.as_bytes()];
        let m = push_image(&r, &a, Some(&tag), config.as_bytes(), &layers, None)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "push {i}: {e} (config {}, base {}, recycled {})",
                    sha(config.as_bytes()),
                    sha(b"base layer"),
                    sha(recycled.as_bytes())
                )
            });
        acknowledged += 1;
        // Acknowledged means pullable: the manifest and every blob, right now.
        let got = r
            .get_manifest(&a, &Reference::Tag(tag.parse().expect("tag")))
            .await
            .expect("pull after push");
        assert_eq!(got.digest, sha(&m));
        for data in [config.as_bytes(), b"base layer", recycled.as_bytes()] {
            assert_eq!(
                read_all(&r, &a, &sha(data)).await.expect("blob after push"),
                data.len()
            );
        }
        last.insert(tag, (m, config, recycled));
        i += 1;
        tokio::time::sleep(GRACE / 4).await;
    }
    stop.store(true, Ordering::Relaxed);
    collector.await.expect("collector");
    let pulls = puller.await.expect("puller");

    // Whatever the tags point at now is complete.
    for (tag, (m, config, recycled)) in &last {
        let got = r
            .get_manifest(&a, &Reference::Tag(tag.parse().expect("tag")))
            .await
            .expect("tag pulls");
        assert_eq!(got.digest, sha(m));
        for data in [config.as_bytes(), b"base layer", recycled.as_bytes()] {
            assert_eq!(
                read_all(&r, &a, &sha(data)).await.expect("blob"),
                data.len()
            );
        }
    }
    let check = r.fsck(&NoProgress).await.expect("fsck");
    assert!(check.is_clean(), "{check:?}");
    let swept = swept.load(Ordering::Relaxed);
    eprintln!(
        "race ({}): {acknowledged} pushes, {pulls} pulls, {swept} objects swept, {} of them recycled layers",
        if postgres { "postgres" } else { "sqlite" },
        recycled_swept.load(Ordering::Relaxed)
    );
    assert!(acknowledged >= 16, "only {acknowledged} pushes");
    assert!(
        swept > 0,
        "the collection never swept anything: no race was tested"
    );
    assert!(
        recycled_swept.load(Ordering::Relaxed) > 0,
        "no layer was swept and pushed again: the re-upload race was not tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_races_pushes_and_pulls_sqlite() {
    race(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_races_pushes_and_pulls_postgres() {
    race(true).await;
}

/// Writes `datas` as blobs linked to `repo` the way uploads leave them (a file at the
/// digest's path, a blob row, a link), in bulk: a test of the collection at scale should
/// not spend minutes on 100,000 uploads' fsyncs first.
async fn bulk_blobs(dir: &std::path::Path, repo: &RepoName, datas: &[String]) {
    use sqlx::Connection as _;
    let mut conn =
        sqlx::AnyConnection::connect(&format!("sqlite:{}", dir.join("meta.db").display()))
            .await
            .expect("sqlite");
    let repo_id: i64 = sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
        .bind(repo.as_str())
        .fetch_one(&mut conn)
        .await
        .expect("repository exists");
    let at = berth_meta::now_micros() - 1;
    let mut tx = conn.begin().await.expect("begin");
    for chunk in datas.chunks(400) {
        let mut blob_rows = Vec::new();
        let mut link_rows = Vec::new();
        for data in chunk {
            let d = sha(data.as_bytes());
            let path = dir.join("blobs/sha256").join(&d.hex()[..2]);
            std::fs::create_dir_all(&path).expect("shard");
            std::fs::write(path.join(d.hex()), data).expect("blob file");
            blob_rows.push(format!("('{d}', {}, {at}, {at})", data.len()));
            link_rows.push(format!("({repo_id}, '{d}', {at})"));
        }
        for sql in [
            format!(
                "INSERT INTO blobs (digest, size, created_at, written_at) VALUES {}",
                blob_rows.join(",")
            ),
            format!(
                "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES {}",
                link_rows.join(",")
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .expect("insert");
        }
    }
    tx.commit().await.expect("commit");
}

/// A store of 100,000 blobs (half of them used by 200 tagged manifests, half orphaned)
/// is collected completely: exactly the orphans go, everything used stays. Run with
/// `--release --nocapture` it is the collection benchmark (`bench/gc.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collects_a_store_of_100k_blobs() {
    const BLOBS: usize = 100_000;
    const PER_MANIFEST: usize = 250;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = registry(dir.path(), false).await;
    let a = repo("big/app");
    blob(&r, &a, b"first")
        .await
        .expect("creates the repository");
    let datas: Vec<String> = (0..BLOBS).map(|i| format!("blob {i}")).collect();
    bulk_blobs(dir.path(), &a, &datas).await;
    let used: Vec<&String> = datas.iter().step_by(2).collect();
    for (n, chunk) in used.chunks(PER_MANIFEST).enumerate() {
        let layers: Vec<&[u8]> = chunk.iter().map(|s| s.as_bytes()).collect();
        let config = format!("config {n}");
        blob(&r, &a, config.as_bytes()).await.expect("config");
        put(
            &r,
            &a,
            Some(&format!("v{n}")),
            &image(config.as_bytes(), &layers, None),
        )
        .await
        .expect("manifest");
    }
    let dry = gc(&r, 0, 0, true).await;
    let report = gc(&r, 0, 0, false).await;
    eprintln!(
        "gc of {} blobs: dry run {:.2}s, collection {:.2}s ({} blobs, {} bytes freed)",
        BLOBS + 1 + BLOBS / 2 / PER_MANIFEST,
        dry.elapsed.as_secs_f64(),
        report.elapsed.as_secs_f64(),
        report.blobs_deleted.len(),
        report.bytes_freed,
    );
    let mut orphans: BTreeSet<String> = datas
        .iter()
        .skip(1)
        .step_by(2)
        .map(|d| sha(d.as_bytes()).to_string())
        .collect();
    orphans.insert(sha(b"first").to_string());
    assert_eq!(blobs(&dry), orphans);
    assert_eq!(blobs(&report), orphans);
    assert!(report.manifests_deleted.is_empty());
    for d in used.iter().take(50) {
        assert!(
            r.blobs()
                .stat(&sha(d.as_bytes()))
                .await
                .expect("stat")
                .is_some()
        );
    }
}

/// Runs SQL on a SQLite store's database, beside the registry (to age rows).
async fn sql(dir: &std::path::Path, statement: &str) {
    use sqlx::Connection as _;
    let mut conn =
        sqlx::AnyConnection::connect(&format!("sqlite:{}", dir.join("meta.db").display()))
            .await
            .expect("sqlite");
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await
        .expect("sql");
}

const DAY: i64 = 86_400_000_000;

/// Makes a manifest look fetched `days` ago and never pulled since.
async fn last_used_days_ago(dir: &std::path::Path, digest: &Digest, days: i64) {
    sql(
        dir,
        &format!(
            "UPDATE manifests SET created_at = created_at - {}, pulled_at = NULL WHERE digest = '{digest}'",
            days * DAY,
        ),
    )
    .await;
}

#[tokio::test]
async fn retention_keeps_what_its_rules_name_and_gc_frees_the_rest() {
    use berth_registry::retention::{RetentionPolicies, RetentionSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let r = registry(dir.path(), false).await;
    let a = repo("team/app");
    let tags = [
        "1.0.0",
        "1.1.0",
        "1.2.0",
        "v1.3.0",
        "1.10.0",
        "latest",
        "stable",
        "feature-x",
        "old-but-pulled",
    ];
    for t in tags {
        let layer = format!("layer of {t}");
        push_image(
            &r,
            &a,
            Some(t),
            format!("config of {t}").as_bytes(),
            &[b"shared base", layer.as_bytes()],
            None,
        )
        .await
        .expect("push");
    }
    // Everything was pushed ten days ago; one tag was pulled just now.
    sql(
        dir.path(),
        &format!("UPDATE tags SET updated_at = updated_at - {}", 10 * DAY),
    )
    .await;
    sql(
        dir.path(),
        &format!(
            "UPDATE manifests SET created_at = created_at - {}",
            10 * DAY
        ),
    )
    .await;
    r.get_manifest_proxied(&a, &Reference::Tag("old-but-pulled".parse().expect("tag")))
        .await
        .expect("pull");
    // The pull is recorded in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let policies = RetentionPolicies::new(vec![RetentionSpec {
        repositories: "team/*".into(),
        keep_last_semver: Some(2),
        keep_days: Some(3),
        keep_tags: vec!["stable".into()],
        include_immutable: false,
    }])
    .expect("policy");
    let expired = |report: &berth_registry::retention::RetentionReport| {
        report
            .expired
            .iter()
            .map(|e| e.tag.clone())
            .collect::<BTreeSet<_>>()
    };
    let expected: BTreeSet<String> = ["1.0.0", "1.1.0", "1.2.0", "latest", "feature-x"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    // Each expired tag holds its config (13-16 bytes) and its layer; the base is shared.
    let expected_bytes: u64 = ["1.0.0", "1.1.0", "1.2.0", "latest", "feature-x"]
        .iter()
        .map(|t| (format!("config of {t}").len() + format!("layer of {t}").len()) as u64)
        .sum();
    let dry = r.apply_retention(&policies, true).await.expect("dry run");
    assert_eq!(expired(&dry), expected);
    assert_eq!(dry.kept, 4);
    assert_eq!(dry.bytes, expected_bytes);
    assert_eq!(
        r.list_tags(&a, None, None).await.expect("tags").0.len(),
        tags.len()
    );

    let done = r.apply_retention(&policies, false).await.expect("apply");
    assert_eq!(expired(&done), expected);
    let left: BTreeSet<String> = r
        .list_tags(&a, None, None)
        .await
        .expect("tags")
        .0
        .into_iter()
        .collect();
    let want: BTreeSet<String> = ["1.10.0", "v1.3.0", "stable", "old-but-pulled"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(left, want);
    let history = r
        .tag_history(&a, &"latest".parse().expect("tag"), 10)
        .await
        .expect("history");
    assert_eq!(
        (history[0].kind, history[0].actor.as_str()),
        ("delete", "system:retention")
    );
    // Within the rollback window the collection keeps them; after it, frees exactly that.
    assert_eq!(gc(&r, 0, 3600, false).await.bytes_freed, 0);
    assert_eq!(gc(&r, 0, 0, false).await.bytes_freed, expected_bytes);
    assert!(r.fsck(&NoProgress).await.expect("fsck").is_clean());

    // A policy that keeps nothing is refused; immutable tags stay unless included.
    assert!(
        RetentionPolicies::new(vec![RetentionSpec {
            repositories: "*".into(),
            keep_last_semver: None,
            keep_days: None,
            keep_tags: vec![],
            include_immutable: false,
        }])
        .is_err()
    );
}

#[tokio::test]
async fn cache_eviction_by_age_and_by_size() {
    use berth_registry::retention::CacheLimits;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = registry(dir.path(), false).await;
    let mut digests = Vec::new();
    // Three cached images of 1000-byte layers, last used 30, 20 and 1 days ago.
    for (name, days) in [("old", 30), ("middle", 20), ("recent", 1)] {
        let rp = repo(&format!("docker.io/library/{name}"));
        let layer = vec![name.as_bytes()[0]; 1000];
        let m = push_image(&r, &rp, Some("latest"), name.as_bytes(), &[&layer], None)
            .await
            .expect("push");
        last_used_days_ago(dir.path(), &sha(&m), days).await;
        digests.push((rp, sha(&m)));
    }
    // Outside the cache, nothing is touched.
    push_image(
        &r,
        &repo("team/app"),
        Some("latest"),
        b"mine",
        &[b"mine layer"],
        None,
    )
    .await
    .expect("push");

    let by_age = CacheLimits {
        max_age: Some(Duration::from_secs(25 * 86_400)),
        max_bytes: None,
    };
    let dry = r
        .evict_cache("docker.io", &by_age, true)
        .await
        .expect("dry");
    assert_eq!(
        dry.evicted
            .iter()
            .map(|e| (e.repository.as_str(), e.reason))
            .collect::<Vec<_>>(),
        [("docker.io/library/old", "age")]
    );
    assert_eq!(dry.bytes, 1003);
    // By size: 1500 bytes fit, so the least recently used of the rest goes too.
    let both = CacheLimits {
        max_age: Some(Duration::from_secs(25 * 86_400)),
        max_bytes: Some(1500),
    };
    let done = r
        .evict_cache("docker.io", &both, false)
        .await
        .expect("evict");
    assert_eq!(
        done.evicted
            .iter()
            .map(|e| (e.repository.as_str(), e.reason))
            .collect::<Vec<_>>(),
        [
            ("docker.io/library/old", "age"),
            ("docker.io/library/middle", "size")
        ]
    );
    for (rp, d) in &digests[..2] {
        assert!(
            r.get_manifest(rp, &Reference::Digest(d.clone()))
                .await
                .is_err()
        );
    }
    r.get_manifest(&digests[2].0, &Reference::Digest(digests[2].1.clone()))
        .await
        .expect("recent stays");
    r.get_manifest(
        &repo("team/app"),
        &Reference::Tag("latest".parse().expect("tag")),
    )
    .await
    .expect("not a cache");
    // The collection frees their bytes: 1000-byte layers and 3- and 6-byte configs.
    assert_eq!(gc(&r, 0, 0, false).await.bytes_freed, 1003 + 1006);
}

/// `housekeeping` is retention and eviction in one report, and a scheduled round runs it
/// and a collection only while it holds the lease another replica may have.
#[tokio::test]
async fn a_scheduled_round_applies_housekeeping_then_collects_under_the_lease() {
    use berth_registry::retention::{CacheLimits, Housekeeping, RetentionPolicies, RetentionSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let r = registry(dir.path(), false).await;
    let app = repo("team/app");
    for t in ["1.0.0", "1.1.0"] {
        push_image(
            &r,
            &app,
            Some(t),
            t.as_bytes(),
            &[format!("layer {t}").as_bytes()],
            None,
        )
        .await
        .expect("push");
    }
    let cached = repo("docker.io/library/old");
    let m = push_image(&r, &cached, Some("latest"), b"old", &[&[b'o'; 100]], None)
        .await
        .expect("push");
    last_used_days_ago(dir.path(), &sha(&m), 30).await;
    let h = Housekeeping {
        policies: RetentionPolicies::new(vec![RetentionSpec {
            repositories: "team/*".into(),
            keep_last_semver: Some(1),
            keep_days: None,
            keep_tags: vec![],
            include_immutable: true,
        }])
        .expect("policy"),
        cache_limits: vec![(
            "docker.io".into(),
            CacheLimits {
                max_age: Some(Duration::from_secs(25 * 86_400)),
                max_bytes: None,
            },
        )],
    };
    let dry = r.housekeeping(&h, true).await.expect("dry run");
    let removed = |r: &berth_registry::retention::RetentionReport| {
        let tags = r
            .expired
            .iter()
            .map(|e| format!("{}:{}", e.repository, e.tag));
        let cached = r.evicted.iter().map(|e| e.repository.clone());
        tags.chain(cached).collect::<Vec<_>>()
    };
    assert_eq!(removed(&dry), ["team/app:1.0.0", "docker.io/library/old"]);
    assert_eq!(
        dry.bytes,
        ("1.0.0".len() + "layer 1.0.0".len() + 3 + 100) as u64
    );
    assert_eq!(
        r.list_tags(&app, None, None).await.expect("tags").0.len(),
        2
    );

    let options = GcOptions {
        dry_run: false,
        grace: Duration::ZERO,
        rollback_window: Duration::ZERO,
    };
    assert!(
        r.meta()
            .try_lease("gc", "other replica", 60_000_000)
            .await
            .expect("lease")
    );
    assert!(
        r.scheduled_round("me", &h, &options)
            .await
            .expect("round")
            .is_none(),
        "another replica holds the lease"
    );
    assert_eq!(
        r.list_tags(&app, None, None).await.expect("tags").0.len(),
        2
    );
    r.meta()
        .release_lease("gc", "other replica")
        .await
        .expect("release");

    let round = r
        .scheduled_round("me", &h, &options)
        .await
        .expect("round")
        .expect("the lease is free");
    let done = round.housekeeping.expect("housekeeping");
    assert_eq!(removed(&done), removed(&dry));
    let collected = round.collection.expect("collection");
    assert_eq!(
        collected.bytes_freed, dry.bytes,
        "what housekeeping removed is freed"
    );
    assert_eq!(
        r.list_tags(&app, None, None).await.expect("tags").0,
        ["1.1.0"]
    );
    // The round gave the lease back.
    assert!(
        r.meta()
            .try_lease("gc", "other replica", 60_000_000)
            .await
            .expect("lease")
    );
}
