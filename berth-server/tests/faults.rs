//! Faults in the engines below: PostgreSQL stopped and restarted, backends killed in the
//! middle of transactions, a failover to a promoted standby. Each test runs a PostgreSQL
//! cluster of its own (`berth_testkit::pg`, never the shared server) under two replicas
//! (`berth_server::run` over one S3 prefix), with pushes and pulls running through both
//! while the fault happens. What must hold: requests during the fault get a JSON 503
//! within 5 s (never a hang, never a 500), recently served manifests are still served
//! (stale, with a `Warning`), the replicas recover by themselves within 10 s of the
//! database's return, and afterwards every acknowledged push pulls back byte-identical
//! from both replicas and `fsck` is clean.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_meta::{MetaStore, PoolSettings};
use berth_registry::{Registry, RegistryConfig};
use berth_server::{AppState, ServerConfig};
use berth_storage::BlobStore;
use berth_testkit::pg::{PgCluster, TcpProxy};
use common::{OCI_MANIFEST, Running, error_of, image_manifest, metric, metrics_at, serve, sha256};
use reqwest::StatusCode;

/// What the issue allows a request during an outage, and the pools to recover.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
const RECOVER_WITHIN: Duration = Duration::from_secs(10);

struct Replica {
    run: Running,
    registry: Registry,
}

async fn replica(url: &str, blobs: &BlobStore) -> Replica {
    let meta = MetaStore::connect_with(url, &PoolSettings::default())
        .await
        .expect("metadata store");
    let registry = Registry::new(
        blobs.clone(),
        meta,
        RegistryConfig {
            stale_on_error: Duration::from_secs(120),
            ..RegistryConfig::default()
        },
    );
    registry
        .follow_other_replicas()
        .await
        .expect("listen for the other replica");
    let state = AppState::new(registry.clone(), ServerConfig::default());
    Replica {
        run: serve(state).await,
        registry,
    }
}

/// An image pushed and acknowledged: its tag, manifest bytes and layer.
#[derive(Clone)]
struct Pushed {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    layer: Vec<u8>,
}

/// What a request that did not succeed looked like.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: String,
    took: Duration,
}

/// A client that gives up long after the 5 s Berth is allowed: a hang shows as a
/// `took` past the bound, not as a client error.
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// One image (config, layer, manifest under `tag`) through `base`; `Ok` only when the
/// manifest PUT was acknowledged with 201.
async fn push(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    seed: u64,
) -> Result<Pushed, Failure> {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}");
    let layer: Vec<u8> = (0..64 * 1024u64)
        .map(|i| (i.wrapping_mul(seed + 7) >> 3) as u8)
        .collect();
    for blob in [config.as_bytes(), &layer[..]] {
        let started = Instant::now();
        let r = http
            .post(format!(
                "{base}/v2/{repo}/blobs/uploads/?digest={}",
                sha256(blob)
            ))
            .body(blob.to_vec())
            .send()
            .await;
        check(r, StatusCode::CREATED, started).await?;
    }
    let m = image_manifest(
        (&sha256(config.as_bytes()), config.len()),
        (&sha256(&layer), layer.len()),
    );
    let manifest = serde_json::to_vec(&m).expect("json");
    let started = Instant::now();
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await;
    check(r, StatusCode::CREATED, started).await?;
    Ok(Pushed {
        repo: repo.into(),
        tag: tag.into(),
        manifest,
        layer,
    })
}

async fn check(
    r: reqwest::Result<reqwest::Response>,
    want: StatusCode,
    started: Instant,
) -> Result<reqwest::Response, Failure> {
    match r {
        Ok(r) if r.status() == want => Ok(r),
        Ok(r) => {
            let (status, code, _) = error_of(r).await;
            Err(Failure {
                status,
                code,
                took: started.elapsed(),
            })
        }
        Err(e) => Err(Failure {
            status: StatusCode::IM_A_TEAPOT,
            code: format!("client error: {e}"),
            took: started.elapsed(),
        }),
    }
}

/// A failure during a fault must be a clean, quick 503 `UNAVAILABLE`.
fn assert_clean(f: &Failure, what: &str) {
    assert_eq!(
        (f.status, f.code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        "{what}: {f:?}"
    );
    assert!(f.took < ANSWER_WITHIN, "{what} took {:?}", f.took);
}

/// Pushes through both replicas in turn until told to stop: what was acknowledged, and
/// every failure.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Pushed>>>,
    failures: Arc<Mutex<Vec<Failure>>>,
    pulls: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(bases: [String; 2], repo: &str, warm: Vec<Pushed>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let pulls = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for worker in 0..2u64 {
            let (stop, acked, failures) = (stop.clone(), acked.clone(), failures.clone());
            let (bases, repo) = (bases.clone(), repo.to_owned());
            tasks.push(tokio::spawn(async move {
                let http = client();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let base = &bases[((i + worker) % 2) as usize];
                    let tag = format!("w{worker}-{i}");
                    match push(&http, base, &repo, &tag, worker * 1_000_000 + i).await {
                        Ok(p) => acked.lock().expect("lock").push(p),
                        Err(f) => {
                            failures.lock().expect("lock").push(f);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    i += 1;
                }
            }));
        }
        // Pulls of images served before the fault, through both replicas: they must keep
        // working (stale) while the database is away.
        let (stop2, failures2, pulls2) = (stop.clone(), failures.clone(), pulls.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut i = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let p = &warm[i % warm.len()];
                let base = &bases[i % 2];
                let started = Instant::now();
                let r = http
                    .get(format!("{base}/v2/{}/manifests/{}", p.repo, p.tag))
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .await;
                match check(r, StatusCode::OK, started).await {
                    Ok(r) => {
                        let body = r.bytes().await.expect("body");
                        assert_eq!(&body[..], &p.manifest[..], "pulled bytes");
                        pulls2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(f) => failures2.lock().expect("lock").push(f),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
        Load {
            stop,
            acked,
            failures,
            pulls,
            tasks,
        }
    }

    async fn finish(self) -> (Vec<Pushed>, Vec<Failure>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let acked = std::mem::take(&mut *self.acked.lock().expect("lock"));
        let failures = std::mem::take(&mut *self.failures.lock().expect("lock"));
        (acked, failures, self.pulls.load(Ordering::Relaxed))
    }
}

/// Pushes through `base` until one is acknowledged; how long that took.
async fn until_push_succeeds(base: &str, repo: &str, within: Duration) -> Duration {
    let http = client();
    let started = Instant::now();
    let mut i = 0;
    loop {
        let tag = format!("recovered-{}-{i}", berth_testkit::unique());
        match push(&http, base, repo, &tag, 9_000_000 + i).await {
            Ok(_) => return started.elapsed(),
            Err(f) => {
                assert_clean(&f, "a push while the database comes back");
                assert!(
                    started.elapsed() < within,
                    "{base} did not recover within {within:?}: {f:?}"
                );
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every acknowledged push pulls back byte-identical (manifest by tag, layer) from both
/// replicas, and fsck over the stores is clean.
async fn verify_everything(replicas: &[Replica], acked: &[Pushed]) {
    let http = client();
    for p in acked {
        for r in replicas {
            let base = &r.run.base;
            let m = http
                .get(format!("{base}/v2/{}/manifests/{}", p.repo, p.tag))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("pull manifest");
            assert_eq!(
                m.status(),
                StatusCode::OK,
                "{}:{} from {base}",
                p.repo,
                p.tag
            );
            assert_eq!(&m.bytes().await.expect("body")[..], &p.manifest[..]);
            let l = http
                .get(format!("{base}/v2/{}/blobs/{}", p.repo, sha256(&p.layer)))
                .send()
                .await
                .expect("pull layer");
            assert_eq!(l.status(), StatusCode::OK);
            assert_eq!(&l.bytes().await.expect("body")[..], &p.layer[..]);
        }
    }
    let report = replicas[0]
        .registry
        .fsck(&berth_registry::fsck::NoProgress)
        .await
        .expect("fsck");
    assert!(report.is_clean(), "fsck: {report:?}");
    assert!(report.manifests_checked >= acked.len() as u64);
}

/// Images pushed and pulled through both replicas before the fault, so both have served
/// them.
async fn warm_up(replicas: &[Replica], repo: &str) -> Vec<Pushed> {
    let http = client();
    let mut warm = Vec::new();
    for i in 0..4u64 {
        let base = &replicas[(i % 2) as usize].run.base;
        let p = push(&http, base, repo, &format!("warm-{i}"), 500 + i)
            .await
            .expect("push before the fault");
        for r in replicas {
            let got = http
                .get(format!("{}/v2/{repo}/manifests/{}", r.run.base, p.tag))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("pull");
            assert_eq!(got.status(), StatusCode::OK);
            let got = http
                .get(format!(
                    "{}/v2/{repo}/blobs/{}",
                    r.run.base,
                    sha256(&p.layer)
                ))
                .send()
                .await
                .expect("pull");
            assert_eq!(got.status(), StatusCode::OK);
        }
        warm.push(p);
    }
    warm
}

/// PostgreSQL stopped for a few seconds under pushes and pulls through two replicas, then
/// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_and_restarted_under_load() {
    let cluster = PgCluster::start();
    let blobs = berth_testkit::s3_store().await;
    let replicas = [
        replica(&cluster.url(), &blobs).await,
        replica(&cluster.url(), &blobs).await,
    ];
    let bases = [replicas[0].run.base.clone(), replicas[1].run.base.clone()];
    let repo = "faults/restart";
    let warm = warm_up(&replicas, repo).await;
    let load = Load::start(bases.clone(), repo, warm.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    cluster.stop("fast");
    let http = client();
    let outage = Instant::now();
    // While it is down: a just-served manifest is served from the cache with a Warning,
    // as is its layer; a missing tag, a push and anything else get a quick JSON 503;
    // liveness answers, readiness says degraded (still ready, see README).
    while outage.elapsed() < Duration::from_secs(4) {
        for base in &bases {
            let started = Instant::now();
            let r = http
                .get(format!("{base}/v2/{repo}/manifests/{}", warm[0].tag))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("stale GET answered");
            assert_eq!(r.status(), StatusCode::OK, "stale manifest from {base}");
            let warning = r
                .headers()
                .get("warning")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(warning.starts_with("110 "), "Warning: {warning:?}");
            assert_eq!(&r.bytes().await.expect("body")[..], &warm[0].manifest[..]);
            assert!(started.elapsed() < ANSWER_WITHIN);
            let r = http
                .get(format!("{base}/v2/{repo}/blobs/{}", sha256(&warm[0].layer)))
                .send()
                .await
                .expect("layer");
            assert_eq!(r.status(), StatusCode::OK, "stale blob link from {base}");
            assert_eq!(&r.bytes().await.expect("body")[..], &warm[0].layer[..]);

            let started = Instant::now();
            let r = http
                .get(format!("{base}/v2/{repo}/manifests/never-pushed"))
                .send()
                .await;
            let f = check(r, StatusCode::OK, started)
                .await
                .expect_err("a missing tag cannot be answered");
            assert_clean(&f, "GET of a missing tag");

            let r = http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .expect("healthz");
            assert_eq!(
                r.status(),
                StatusCode::OK,
                "liveness never asks the database"
            );
            let started = Instant::now();
            let r = http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .expect("readyz");
            assert!(started.elapsed() < ANSWER_WITHIN);
            assert_eq!(r.status(), StatusCode::OK);
            assert!(
                r.text().await.expect("text").starts_with("degraded"),
                "readiness during a short outage"
            );
        }
    }

    cluster.start_server();
    for base in &bases {
        let took = until_push_succeeds(base, repo, RECOVER_WITHIN).await;
        eprintln!("{base} recovered {took:?} after PostgreSQL started");
    }
    for base in &bases {
        let r = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(r.text().await.expect("text"), "ready\n");
    }
    let (acked, failures, pulls) = load.finish().await;
    for f in &failures {
        assert_clean(f, "a request of the load during the outage");
    }
    assert!(
        !failures.is_empty(),
        "pushes failed while PostgreSQL was down"
    );
    assert!(pulls > 0);
    eprintln!(
        "{} pushes acknowledged, {} failed cleanly, {pulls} pulls",
        acked.len(),
        failures.len()
    );
    verify_everything(&replicas, &[&warm[..], &acked[..]].concat()).await;
    let text = metrics_at(&http, &bases[0]).await;
    assert!(metric::<u64>(&text, "berth_metadata_unavailable_responses_total") > 0);
    assert!(metric::<u64>(&text, "berth_metadata_stale_served_total") > 0);
    assert!(metric::<u64>(&text, "berth_cache_invalidation_resets_total") > 0);
}

/// `pg_terminate_backend` of every Berth connection, again and again, while pushes run:
/// a transaction cut in the middle is a clean 503 (nothing half-written), and the pools
/// replace the connections by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backends_terminated_mid_transaction() {
    let cluster = PgCluster::start();
    let blobs = berth_testkit::s3_store().await;
    let replicas = [
        replica(&cluster.url(), &blobs).await,
        replica(&cluster.url(), &blobs).await,
    ];
    let bases = [replicas[0].run.base.clone(), replicas[1].run.base.clone()];
    let repo = "faults/terminate";
    let warm = warm_up(&replicas, repo).await;
    let load = Load::start(bases.clone(), repo, warm.clone());
    let mut killed = 0u64;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n: u64 = cluster
            .sql(
                "postgres",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = 'berth' AND pid <> pg_backend_pid()",
            )
            .parse()
            .expect("count");
        killed += n;
    }
    for base in &bases {
        until_push_succeeds(base, repo, RECOVER_WITHIN).await;
    }
    let (acked, failures, _) = load.finish().await;
    for f in &failures {
        assert_clean(f, "a request whose backend was terminated");
    }
    assert!(killed > 10, "backends terminated: {killed}");
    eprintln!(
        "{killed} backends terminated; {} pushes acknowledged, {} failed cleanly",
        acked.len(),
        failures.len()
    );
    verify_everything(&replicas, &[&warm[..], &acked[..]].concat()).await;
}

/// A failover: the primary is fenced (it now refuses writes, and the connections open to
/// it stay open: what a demoted primary behind a moved DNS name or load balancer looks
/// like), the standby is promoted and the address moves to it. Connections that meet
/// `read_only_sql_transaction` are replaced, not retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_to_a_promoted_standby() {
    let primary = PgCluster::start();
    let standby = primary.standby();
    let proxy = TcpProxy::start(primary.port).await;
    let url = primary.url_at(proxy.port);
    let blobs = berth_testkit::s3_store().await;
    let replicas = [replica(&url, &blobs).await, replica(&url, &blobs).await];
    let bases = [replicas[0].run.base.clone(), replicas[1].run.base.clone()];
    let repo = "faults/failover";
    let warm = warm_up(&replicas, repo).await;
    let load = Load::start(bases.clone(), repo, warm.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    primary.sql(
        "postgres",
        "ALTER SYSTEM SET default_transaction_read_only = on",
    );
    primary.sql("postgres", "SELECT pg_reload_conf()");
    // Let the standby replay everything the primary committed before it was fenced: an
    // acknowledged push must not be lost to the failover.
    let fenced_at = primary.sql("postgres", "SELECT pg_current_wal_lsn()");
    let waited = Instant::now();
    while standby.sql(
        "postgres",
        &format!("SELECT pg_last_wal_replay_lsn() >= '{fenced_at}'::pg_lsn"),
    ) != "t"
    {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "standby caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    standby.promote();
    proxy.point_at(standby.port);
    let promoted = Instant::now();
    for base in &bases {
        until_push_succeeds(base, repo, RECOVER_WITHIN).await;
    }
    eprintln!(
        "both replicas write to the new primary {:?} after promotion",
        promoted.elapsed()
    );
    let (acked, failures, pulls) = load.finish().await;
    for f in &failures {
        assert_clean(f, "a request during the failover");
    }
    assert!(pulls > 0);
    verify_everything(&replicas, &[&warm[..], &acked[..]].concat()).await;
    // The fenced primary is no longer written to: every acknowledged push is on the
    // promoted standby (verified above through it), and the connections the replicas held
    // to the old one were closed, not reused.
    let http = client();
    let mut replaced = 0u64;
    for base in &bases {
        let text = metrics_at(&http, base).await;
        replaced += metric::<u64>(
            &text,
            "berth_metadata_read_only_connections_total{action=\"replaced\"}",
        );
    }
    assert!(replaced > 0, "read-only connections replaced");
    let still_on_old: u64 = primary
        .sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'berth' \
             AND state = 'idle' AND pid <> pg_backend_pid()",
        )
        .parse()
        .expect("count");
    eprintln!("idle connections left on the old primary: {still_on_old}");
}
