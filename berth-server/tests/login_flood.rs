//! The login flood of issue #13: wrong passwords for one user from 64 client addresses
//! (real sockets bound to 127.0.0.10-73) while that user logs in from its own address and
//! blobs are pulled. The user must get in within a bounded time, and pulls must keep at
//! least half their throughput.
//!
//! A test binary of its own, so nothing else in the process competes for the CPU while
//! throughput is measured; the server runs on a runtime built like `berth serve`'s (a
//! blocking pool of 8 threads), since that pool is what a flood used to exhaust. Run with
//! `--nocapture` for the figures.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_registry::access::AccessConfig;
use berth_server::ChallengeKind;
use common::{PASSWORD, Setup, client_from, sha256};
use reqwest::StatusCode;
use serde_json::Value;

const ATTACKERS: u8 = 64;
const BLOB_BYTES: usize = 4 << 20;

/// Half-second windows of a measurement.
const WINDOW: Duration = Duration::from_millis(500);

/// Pulls the blob with four parallel loops for `how_long`; bytes per second in each
/// half-second window.
async fn throughput(base: &str, token: &str, digest: &str, how_long: Duration) -> Vec<f64> {
    let readers = 4;
    let start = Instant::now();
    let until = start + how_long;
    let windows = (how_long.as_millis() / WINDOW.as_millis()) as usize;
    let bytes: Arc<Vec<AtomicU64>> = Arc::new((0..windows).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let url = format!("{base}/v2/pub/img/blobs/{digest}");
        let token = token.to_owned();
        let bytes = Arc::clone(&bytes);
        let http = reqwest::Client::new();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let r = http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("blob GET");
                assert_eq!(r.status(), StatusCode::OK);
                let body = r.bytes().await.expect("blob body");
                assert_eq!(body.len(), BLOB_BYTES);
                let w = (start.elapsed().as_millis() / WINDOW.as_millis()) as usize;
                if let Some(b) = bytes.get(w) {
                    b.fetch_add(body.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("reader");
    }
    bytes
        .iter()
        .map(|b| b.load(Ordering::Relaxed) as f64 / WINDOW.as_secs_f64())
        .collect()
}

/// The mean of the best third of `windows`: what the server sustains when the other
/// programs on this shared machine leave it the CPU, which a mean over all windows
/// would mix with their load.
fn best(windows: &[f64]) -> f64 {
    let mut w = windows.to_vec();
    w.sort_by(|a, b| b.total_cmp(a));
    let n = (w.len() / 3).max(1);
    w[..n].iter().sum::<f64>() / n as f64
}

#[test]
fn a_login_flood_locks_nobody_out_and_does_not_starve_pulls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The server's runtime, as `berth serve` builds it.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .thread_name("server")
        .build()
        .expect("server runtime");
    let server = server_rt.block_on(async {
        let s = common::start(Setup {
            auth: Some((AccessConfig::default(), ChallengeKind::Bearer)),
            ..Setup::default()
        })
        .await;
        common::add_users(s.access(), &[("admin", true), ("alice", false)]).await;
        common::add_tenant(s.access(), "pub", true, &[]).await;
        s
    });
    let base = server.base.clone();

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    client_rt.block_on(async {
        let http = reqwest::Client::new();
        let blob: Vec<u8> = (0..BLOB_BYTES).map(|i| (i % 251) as u8).collect();
        let digest = sha256(&blob);
        let r = http
            .post(format!("{base}/v2/pub/img/blobs/uploads/?digest={digest}"))
            .basic_auth("admin", Some(PASSWORD))
            .body(blob)
            .send()
            .await
            .expect("push");
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = http
            .get(format!(
                "{base}/token?service=berth&scope=repository:pub/img:pull"
            ))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        let token = v["token"].as_str().expect("token").to_owned();

        let measure = Duration::from_secs(2);
        // Warm up (connections, page cache, allocator) before anything counts.
        throughput(&base, &token, &digest, Duration::from_secs(1)).await;

        // The flood: every attacker address guesses alice's password as fast as it is
        // answered. It runs in phases, paused in between, and pulls are measured in
        // both: on a shared machine the load of other programs drifts, and alternating
        // keeps that drift out of the comparison.
        let stop_flood = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(true));
        let in_flight = Arc::new(AtomicU64::new(0));
        let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let mut flood = Vec::new();
        for i in 0..ATTACKERS {
            let c = client_from(std::net::IpAddr::from([127, 0, 0, 10 + i]));
            let url = format!("{base}/v2/");
            let (stop, paused, in_flight) = (
                Arc::clone(&stop_flood),
                Arc::clone(&paused),
                Arc::clone(&in_flight),
            );
            let statuses = Arc::clone(&statuses);
            flood.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if paused.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    n += 1;
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let status = match c
                        .get(&url)
                        .basic_auth("alice", Some(format!("guess {i} {n}")))
                        .send()
                        .await
                    {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    *statuses
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(status)
                        .or_insert(0u64) += 1;
                }
            }));
        }
        let mut quiet = throughput(&base, &token, &digest, measure).await;
        let mut flooded = Vec::new();
        let mut alice_login = None;
        for cycle in 0..2 {
            paused.store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let pulls = tokio::spawn({
                let (base, token, digest) = (base.clone(), token.clone(), digest.clone());
                async move { throughput(&base, &token, &digest, measure).await }
            });
            if cycle == 0 {
                // Meanwhile alice, from her own address, gets a token with her password.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let alice = client_from(std::net::IpAddr::from([127, 0, 0, 1]));
                let t = Instant::now();
                let r = alice
                    .get(format!(
                        "{base}/token?service=berth&scope=repository:pub/img:pull"
                    ))
                    .basic_auth("alice", Some(PASSWORD))
                    .send()
                    .await
                    .expect("alice's token");
                alice_login = Some((r.status(), t.elapsed()));
            }
            flooded.extend(pulls.await.expect("measure"));
            // Quiet again: no guess sent, none still waiting or being checked.
            paused.store(true, Ordering::Relaxed);
            let settle = Instant::now();
            while in_flight.load(Ordering::Relaxed) > 0 && settle.elapsed() < Duration::from_secs(8)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            quiet.extend(throughput(&base, &token, &digest, measure).await);
        }
        stop_flood.store(true, Ordering::Relaxed);
        for f in flood {
            f.await.expect("attacker");
        }
        let (token_status, token_latency) = alice_login.expect("alice tried");
        let (baseline, during) = (best(&quiet), best(&flooded));
        let metrics = common::metrics_at(&http, &base).await;
        let ratio = during / baseline;
        let statuses = statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        println!(
            "blob GET (best third of 0.5 s windows): {:.0} MB/s without the flood, {:.0} MB/s \
             during it ({:.0}%); all windows, MB/s: quiet {:.0?}, flooded {:.0?}; alice's \
             login: {token_status} in {token_latency:?}; flood answers by status: {statuses:?}",
            baseline / 1e6,
            during / 1e6,
            ratio * 100.0,
            quiet.iter().map(|b| b / 1e6).collect::<Vec<_>>(),
            flooded.iter().map(|b| b / 1e6).collect::<Vec<_>>(),
        );
        for l in metrics.lines().filter(|l| {
            (l.starts_with("berth_login") || l.starts_with("berth_password")) && !l.starts_with('#')
        }) {
            println!("  {l}");
        }
        assert_eq!(token_status, StatusCode::OK, "alice is not locked out");
        assert!(
            token_latency < Duration::from_secs(5),
            "alice waited {token_latency:?}"
        );
        assert!(!statuses.contains_key(&200), "a guess got in: {statuses:?}");
        assert!(
            ratio >= 0.5,
            "pulls fell to {:.0}% of their throughput during the flood",
            ratio * 100.0
        );
    });
    drop(server);
    server_rt.shutdown_timeout(Duration::from_secs(5));
}
