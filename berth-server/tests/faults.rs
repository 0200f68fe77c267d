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
    replica_with_ttl(url, blobs, RegistryConfig::default().cache_ttl).await
}

async fn replica_with_ttl(url: &str, blobs: &BlobStore, cache_ttl: Duration) -> Replica {
    replica_with(
        url,
        blobs,
        RegistryConfig {
            stale_on_error: Duration::from_secs(120),
            cache_ttl,
            ..RegistryConfig::default()
        },
    )
    .await
}

async fn replica_with(url: &str, blobs: &BlobStore, config: RegistryConfig) -> Replica {
    let meta = MetaStore::connect_with(url, &PoolSettings::default())
        .await
        .expect("metadata store");
    let registry = Registry::new(blobs.clone(), meta, config);
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
            // A 503 says "retry shortly" (Retry-After: 1), and clients do: on a machine
            // loaded enough that a new connection takes longer than the acquire timeout
            // right after the fault, the pull is asked again, as a kubelet would.
            let mut tries = 0;
            let m = loop {
                let m = http
                    .get(format!("{base}/v2/{}/manifests/{}", p.repo, p.tag))
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .await
                    .expect("pull manifest");
                tries += 1;
                if m.status() != StatusCode::SERVICE_UNAVAILABLE || tries == 5 {
                    break m;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
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

/// Every replica shares the one database, so when it is down all of them are in the same
/// state. The choice: readiness stays 200 ("degraded") while stale reads are possible
/// (`stale_on_error`), so the Service keeps its endpoints and kubelets keep pulling what
/// was served lately, and everything else gets a JSON 503 rather than a refused
/// connection; past the bound nothing useful can be served and readiness turns 503.
/// Liveness never depends on the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_the_stale_bound_when_the_shared_database_is_down() {
    const BOUND: Duration = Duration::from_secs(8);
    let cluster = PgCluster::start();
    let blobs = berth_testkit::s3_store().await;
    let config = || RegistryConfig {
        stale_on_error: BOUND,
        ..RegistryConfig::default()
    };
    let replicas = [
        replica_with(&cluster.url(), &blobs, config()).await,
        replica_with(&cluster.url(), &blobs, config()).await,
    ];
    let repo = "faults/readiness";
    let warm = warm_up(&replicas, repo).await;
    let http = client();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("answered");
            let status = r.status();
            (status, r.text().await.expect("body"))
        }
    };
    // The stale bound counts from each replica's last read of the database: on a busy
    // machine the warm-up can take longer than the bound, so read the tag afresh (past
    // the cache TTL) right before the outage.
    tokio::time::sleep(RegistryConfig::default().cache_ttl + Duration::from_millis(100)).await;
    for r in &replicas {
        let base = &r.run.base;
        let (status, _) = get(format!("{base}/v2/{repo}/manifests/{}", warm[3].tag)).await;
        assert_eq!(status, StatusCode::OK, "served before the outage");
    }
    cluster.stop("immediate");
    let down = Instant::now();
    for r in &replicas {
        let base = &r.run.base;
        let (status, _) = get(format!("{base}/v2/{repo}/manifests/{}", warm[3].tag)).await;
        assert_eq!(status, StatusCode::OK, "served stale within the bound");
    }
    for r in &replicas {
        let (status, body) = get(format!("{}/readyz", r.run.base)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("degraded"), "{body}");
    }
    // Past the bound (counted from the outage for readiness, and from when each entry
    // was read for the cache).
    tokio::time::sleep(BOUND.saturating_sub(down.elapsed()) + Duration::from_millis(500)).await;
    for r in &replicas {
        let base = &r.run.base;
        let (status, body) = get(format!("{base}/readyz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.starts_with("not ready"), "{body}");
        let (status, body) = get(format!("{base}/v2/{repo}/manifests/{}", warm[3].tag)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("UNAVAILABLE"), "{body}");
        let (status, _) = get(format!("{base}/healthz")).await;
        assert_eq!(status, StatusCode::OK, "liveness");
    }
    cluster.start_server();
    let back = Instant::now();
    for r in &replicas {
        loop {
            let (status, body) = get(format!("{}/readyz", r.run.base)).await;
            if status == StatusCode::OK && body == "ready\n" {
                break;
            }
            assert!(back.elapsed() < RECOVER_WITHIN, "ready again: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
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
    let t0 = Instant::now();
    let primary = PgCluster::start();
    let standby = primary.standby();
    eprintln!("[{:?}] clusters up", t0.elapsed());
    let proxy = TcpProxy::start(primary.port).await;
    let url = primary.url_at(proxy.port);
    let blobs = berth_testkit::s3_store().await;
    // A read cache that trusts entries for a minute: only the invalidation listener can
    // make a replica see a tag the other one moved sooner.
    let ttl = Duration::from_secs(60);
    let replicas = [
        replica_with_ttl(&url, &blobs, ttl).await,
        replica_with_ttl(&url, &blobs, ttl).await,
    ];
    let bases = [replicas[0].run.base.clone(), replicas[1].run.base.clone()];
    let repo = "faults/failover";
    let warm = warm_up(&replicas, repo).await;
    let http = client();
    let moving = |tag: &str, seed| {
        let (http, base, tag) = (http.clone(), bases[0].clone(), tag.to_owned());
        async move { push(&http, &base, repo, &tag, seed).await.expect("push") }
    };
    let before = moving("moving", 77).await;
    let pulled = |base: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("{base}/v2/{repo}/manifests/moving"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("pull");
            (r.status(), r.bytes().await.expect("body").to_vec())
        }
    };
    assert_eq!(
        pulled(bases[1].clone()).await,
        (StatusCode::OK, before.manifest.clone())
    );
    eprintln!("[{:?}] warm", t0.elapsed());
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
    eprintln!("[{:?}] standby caught up", t0.elapsed());
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
    // The tag moves through one replica; the other, whose listener was left on the fenced
    // old primary, must notice it is deaf, reconnect to the new primary and forget what it
    // cached: within its 5 s check and a reconnection, not the minute of its TTL.
    let after = moving("moving", 78).await;
    let moved = Instant::now();
    loop {
        let (status, body) = pulled(bases[1].clone()).await;
        if status == StatusCode::OK && body == after.manifest {
            break;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(15),
            "the other replica still serves the old digest of a moved tag after {:?}",
            moved.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "moved tag seen through the other replica after {:?}",
        moved.elapsed()
    );
    let (acked, failures, pulls) = load.finish().await;
    eprintln!("[{:?}] load finished", t0.elapsed());
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

// ---- S3: a fault-injecting proxy between Berth and the S3 test server ----

/// What the proxy does to the requests it picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `500 InternalError`.
    Internal,
    /// `503 SlowDown`.
    SlowDown,
    /// The connection is reset (RST) without an answer.
    Reset,
    /// Nothing is answered for a minute.
    Stall,
}

/// Which requests fail: every `every`-th request gets the next fault of `kinds` in turn
/// (0: none fails).
#[derive(Clone)]
struct FaultPlan {
    every: u64,
    kinds: Vec<Fault>,
    /// Only requests with this method are counted and faulted (`None`: all).
    method: Option<&'static str>,
}

/// An HTTP/1.1 proxy in front of the S3 test server that answers a share of requests
/// with a fault instead of forwarding them. One request per connection (it answers
/// `Connection: close`), which is all the S3 client needs.
struct FaultProxy {
    port: u16,
    plan: Arc<Mutex<FaultPlan>>,
    injected: Arc<Mutex<Vec<Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The end of the header block and the `Content-Length` in it.
fn parse_head(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    Some((end, len))
}

/// The head without its `Connection` header, with `Connection: close`.
fn closing(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn read_message(s: &mut tokio::net::TcpStream, until_eof: bool) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if !until_eof
            && let Some((end, len)) = parse_head(&buf)
            && buf.len() >= end + len
        {
            return Some(buf);
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return (!buf.is_empty()).then_some(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl FaultProxy {
    async fn start(upstream: u16, plan: FaultPlan) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let plan = Arc::new(Mutex::new(plan));
        let injected = Arc::new(Mutex::new(Vec::new()));
        let (p, inj) = (plan.clone(), injected.clone());
        let task = tokio::spawn(async move {
            let seen = Arc::new(AtomicU64::new(0));
            while let Ok((mut client, _)) = listener.accept().await {
                let (p, inj, seen) = (p.clone(), inj.clone(), seen.clone());
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt as _;
                    let Some(req) = read_message(&mut client, false).await else {
                        return;
                    };
                    let plan = p.lock().expect("plan").clone();
                    let picked = plan
                        .method
                        .is_none_or(|m| req.starts_with(format!("{m} ").as_bytes()));
                    let n = if picked {
                        seen.fetch_add(1, Ordering::Relaxed) + 1
                    } else {
                        1
                    };
                    let fault = {
                        (picked && plan.every > 0 && n % plan.every == 0 && !plan.kinds.is_empty())
                            .then(|| plan.kinds[((n / plan.every) as usize) % plan.kinds.len()])
                    };
                    if let Some(f) = fault {
                        inj.lock().expect("faults").push(f);
                        let answer = |status: &str, code: &str| {
                            let body = format!(
                                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected</Message></Error>"
                            );
                            format!(
                                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        };
                        match f {
                            Fault::Internal => {
                                let _ = client
                                    .write_all(
                                        answer("500 Internal Server Error", "InternalError")
                                            .as_bytes(),
                                    )
                                    .await;
                            }
                            Fault::SlowDown => {
                                let _ = client
                                    .write_all(answer("503 Slow Down", "SlowDown").as_bytes())
                                    .await;
                            }
                            Fault::Reset => {
                                let _ = client.set_zero_linger();
                            }
                            Fault::Stall => tokio::time::sleep(Duration::from_secs(60)).await,
                        }
                        return;
                    }
                    let Some((end, _)) = parse_head(&req) else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let mut out = closing(&req[..end]);
                    out.extend_from_slice(&req[end..]);
                    if up.write_all(&out).await.is_err() {
                        return;
                    }
                    let Some(resp) = read_message(&mut up, true).await else {
                        return;
                    };
                    let Some((rend, _)) = parse_head(&resp) else {
                        return;
                    };
                    let mut back = closing(&resp[..rend]);
                    back.extend_from_slice(&resp[rend..]);
                    let _ = client.write_all(&back).await;
                    let _ = client.shutdown().await;
                });
            }
        });
        FaultProxy {
            port,
            plan,
            injected,
            task,
        }
    }

    fn set(&self, plan: FaultPlan) {
        *self.plan.lock().expect("plan") = plan;
    }

    fn injected(&self, f: Fault) -> usize {
        self.injected
            .lock()
            .expect("faults")
            .iter()
            .filter(|x| **x == f)
            .count()
    }
}

/// A server whose blob store reaches the S3 test server through `proxy`, with short
/// attempt timeouts so that stalls are found quickly.
async fn s3_server(
    proxy: &FaultProxy,
    prefix: &str,
) -> (common::TestServer, berth_storage::S3Store) {
    s3_server_tuned(
        proxy,
        prefix,
        berth_storage::S3Tuning {
            attempt_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            ..berth_storage::S3Tuning::default()
        },
    )
    .await
}

async fn s3_server_tuned(
    proxy: &FaultProxy,
    prefix: &str,
    tuning: berth_storage::S3Tuning,
) -> (common::TestServer, berth_storage::S3Store) {
    let moto = std::env::var("BERTH_TEST_S3_URL").expect("BERTH_TEST_S3_URL");
    let mut config = berth_testkit::s3_config(prefix);
    config.endpoint = format!("http://127.0.0.1:{}", proxy.port);
    assert!(moto.starts_with("http://127.0.0.1:"), "moto on loopback");
    let s3 = berth_storage::S3Store::new_tuned(config, tuning)
        .await
        .expect("S3 store through the proxy");
    let meta = MetaStore::connect(&berth_testkit::postgres_url().await)
        .await
        .expect("metadata");
    let server = common::start(common::Setup {
        stores: Some(common::Stores {
            dir: Arc::new(tempfile::tempdir().expect("tempdir")),
            blobs: BlobStore::S3(s3.clone()),
            meta,
        }),
        ..common::Setup::default()
    })
    .await;
    (server, s3)
}

fn moto_port() -> u16 {
    std::env::var("BERTH_TEST_S3_URL")
        .expect("BERTH_TEST_S3_URL")
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("port of BERTH_TEST_S3_URL")
}

/// A chunked upload of `data` in `chunk`-sized PATCHes, resumed at the offset the
/// registry reports after any failure, as clients do; each failure must be a clean 503.
/// The number of failures met.
async fn resumable_upload(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    data: &[u8],
    chunk: usize,
) -> usize {
    let mut failures = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let next = |failures: &mut usize, f: Failure, what: &str| {
        assert_eq!(
            (f.status, f.code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            "{what}: {f:?}"
        );
        assert!(Instant::now() < deadline, "{what}: no progress");
        *failures += 1;
    };
    let location = loop {
        let started = Instant::now();
        let r = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await;
        match check(r, StatusCode::ACCEPTED, started).await {
            Ok(r) => {
                break r.headers()["location"]
                    .to_str()
                    .expect("location")
                    .to_owned();
            }
            Err(f) => next(&mut failures, f, "starting an upload"),
        }
    };
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let mut offset = 0usize;
    while offset < data.len() {
        let end = (offset + chunk).min(data.len());
        let started = Instant::now();
        let r = http
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{offset}-{}", end - 1))
            .body(data[offset..end].to_vec())
            .send()
            .await;
        match check(r, StatusCode::ACCEPTED, started).await {
            Ok(_) => offset = end,
            Err(f) => {
                next(&mut failures, f, "a chunk");
                // Where the upload stands now: the chunk counts only if acknowledged.
                loop {
                    let r = http.get(&url).send().await.expect("status");
                    if r.status() == StatusCode::NO_CONTENT {
                        let range = r.headers()["range"].to_str().expect("range").to_owned();
                        let last: usize =
                            range.trim_start_matches("0-").parse().expect("range end");
                        offset = if range == "0-0" && offset == 0 {
                            0
                        } else {
                            last + 1
                        };
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    loop {
        let started = Instant::now();
        let r = http
            .put(format!(
                "{url}{}digest={}",
                if url.contains('?') { '&' } else { '?' },
                sha256(data)
            ))
            .send()
            .await;
        match check(r, StatusCode::CREATED, started).await {
            Ok(_) => return failures,
            Err(f) => next(&mut failures, f, "completing the upload"),
        }
    }
}

/// A share of S3 requests answered 500, 503 SlowDown, reset or stalled: Berth retries
/// them with backoff (counted on /metrics) and pushes complete; a bucket that keeps
/// failing gives a clean 503, and the same upload completes once it recovers; every
/// blob then reads back byte-identical, and nothing is left of multipart uploads under
/// the test's prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_faults_are_retried_or_fail_cleanly() {
    let proxy = FaultProxy::start(
        moto_port(),
        FaultPlan {
            every: 4,
            kinds: vec![Fault::SlowDown, Fault::Internal, Fault::Reset, Fault::Stall],
            method: None,
        },
    )
    .await;
    let prefix = format!("{}/", berth_testkit::unique());
    let (server, s3) = s3_server(&proxy, &prefix).await;
    let http = client();
    let base = server.base.clone();
    let repo = "faults/s3";
    // Sizes that take every path: one PutObject per small chunk, a multipart append
    // (over 8 MiB), and completion by copy or by multipart assembly.
    let blobs: Vec<Vec<u8>> = [
        (300 * 1024, 100 * 1024),
        (9 << 20, 9 << 20),
        (6 << 20, 2 << 20),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(len, _))| {
        (0..len as u64)
            .map(|b| (b.wrapping_mul(2654435761 + i as u64) >> 7) as u8)
            .collect()
    })
    .collect();
    let chunks = [100 * 1024, 9 << 20, 2 << 20];
    let mut client_failures = 0;
    for (data, chunk) in blobs.iter().zip(chunks) {
        client_failures += resumable_upload(&http, &base, repo, data, chunk).await;
    }
    // The bucket fails every request for a while: a clean 503, then the same upload
    // goes on when it recovers.
    proxy.set(FaultPlan {
        every: 1,
        kinds: vec![Fault::SlowDown],
        method: None,
    });
    let last: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let r = http
        .post(format!(
            "{base}/v2/{repo}/blobs/uploads/?digest={}",
            sha256(&last)
        ))
        .body(last.clone())
        .send()
        .await;
    let f = check(r, StatusCode::CREATED, started)
        .await
        .expect_err("a bucket that only says SlowDown cannot take the blob");
    assert_eq!(
        (f.status, f.code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        "{f:?}"
    );
    proxy.set(FaultPlan {
        every: 0,
        kinds: vec![],
        method: None,
    });
    client_failures += resumable_upload(&http, &base, repo, &last, 1 << 20).await;

    for data in blobs.iter().chain([&last]) {
        let r = http
            .get(format!("{base}/v2/{repo}/blobs/{}", sha256(data)))
            .send()
            .await
            .expect("pull");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            &r.bytes().await.expect("body")[..],
            &data[..],
            "byte-identical"
        );
    }
    let text = server.metrics().await;
    let retried = |cause: &str| {
        metric::<u64>(
            &text,
            &format!("berth_s3_retries_total{{cause=\"{cause}\"}}"),
        )
    };
    eprintln!(
        "faults injected: {} SlowDown, {} InternalError, {} resets, {} stalls; retries: \
         status {}, connection {}, timeout {}; S3 failures {}; client-visible 503s {client_failures}",
        proxy.injected(Fault::SlowDown),
        proxy.injected(Fault::Internal),
        proxy.injected(Fault::Reset),
        proxy.injected(Fault::Stall),
        retried("status"),
        retried("connection"),
        retried("timeout"),
        metric::<u64>(&text, "berth_s3_failures_total"),
    );
    assert!(proxy.injected(Fault::Stall) > 0 && proxy.injected(Fault::Reset) > 0);
    assert!(retried("status") > 0, "5xx retried");
    assert!(retried("connection") > 0, "resets retried");
    assert!(retried("timeout") > 0, "stalls retried");
    assert!(metric::<u64>(&text, "berth_storage_unavailable_responses_total") > 0);
    // Multipart uploads of this test's own prefix only (moto dates every multipart
    // upload to 2010, so no stale-upload sweep is run against the shared bucket).
    assert_eq!(
        s3.pending_multipart_uploads().await.expect("list"),
        0,
        "multipart uploads left under {prefix}"
    );
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A bucket that stalls every object write, under 64 concurrent 9 MiB uploads: every
/// request is answered (a clean 503) in bounded time, and memory grows by at most what
/// `max_appends` appends may buffer (two 8 MiB parts each), not by what 64 would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_bucket_bounds_waiting_and_memory() {
    const CLIENTS: usize = 64;
    const APPENDS: usize = 4;
    let proxy = FaultProxy::start(
        moto_port(),
        FaultPlan {
            every: 0,
            kinds: vec![],
            method: None,
        },
    )
    .await;
    let prefix = format!("{}/", berth_testkit::unique());
    let (server, s3) = s3_server_tuned(
        &proxy,
        &prefix,
        berth_storage::S3Tuning {
            attempts: 2,
            attempt_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(2),
            max_in_flight: 16,
            max_appends: APPENDS,
        },
    )
    .await;
    proxy.set(FaultPlan {
        every: 1,
        kinds: vec![Fault::Stall],
        method: Some("PUT"),
    });
    let data = bytes::Bytes::from(
        (0..9u32 << 20)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let digest = sha256(&data);
    let baseline = rss();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let uploads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (http, base, data, digest) =
                (client(), server.base.clone(), data.clone(), digest.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let r = http
                    .post(format!(
                        "{base}/v2/faults/stalled{i}/blobs/uploads/?digest={digest}"
                    ))
                    .body(data)
                    .send()
                    .await;
                let f = check(r, StatusCode::CREATED, t)
                    .await
                    .expect_err("nothing can be written to a stalled bucket");
                (f, t.elapsed())
            })
        })
        .collect();
    let mut longest = Duration::ZERO;
    for u in uploads {
        let (f, took) = u.await.expect("upload task");
        if f.status != StatusCode::IM_A_TEAPOT {
            assert_eq!(
                (f.status, f.code.as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
                "{f:?}"
            );
        }
        longest = longest.max(took);
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    let text = server.metrics().await;
    eprintln!(
        "{CLIENTS} uploads of 9 MiB into a stalled bucket: all answered within {longest:?} \
         (all done after {:?}); resident memory grew by {} MiB at most; append waits {}, \
         S3 failures {}",
        started.elapsed(),
        grew >> 20,
        metric::<u64>(&text, "berth_s3_append_waits_total"),
        metric::<u64>(&text, "berth_s3_failures_total"),
    );
    assert!(metric::<u64>(&text, "berth_s3_append_waits_total") > 0);
    // Two 8 MiB parts per append in turn, plus room for the runtime and the clients'
    // send buffers: far below the 576 MiB the 64 bodies would take if each were read.
    let bound = ((APPENDS as u64 * 16) << 20) + (128 << 20);
    assert!(grew < bound, "memory grew by {} MiB", grew >> 20);
    assert!(
        longest < Duration::from_secs(30),
        "longest answer {longest:?}"
    );
    proxy.set(FaultPlan {
        every: 0,
        kinds: vec![],
        method: None,
    });
    assert_eq!(s3.pending_multipart_uploads().await.expect("list"), 0);
}
