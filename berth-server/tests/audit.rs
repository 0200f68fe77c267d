//! The audit log under attack: a flood of refused requests with random names, from many
//! addresses, beside a few authenticated pulls. The pulls must all be recorded, and the
//! refusals must cost a bounded number of rows, however many there are.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_meta::AuditQuery;
use berth_registry::access::AccessConfig;
use berth_server::client::TrustedProxies;
use berth_server::{ChallengeKind, ServerConfig};
use common::{Cred, PASSWORD, Setup, TestServer as Server};
use reqwest::StatusCode;
const WINDOW: Duration = Duration::from_millis(500);
/// Addresses the flood comes from (through a trusted proxy's X-Forwarded-For).
const SOURCES: u64 = 8;

/// A cheap pseudo-random sequence, so every flood request uses a name never seen before.
fn next(seed: &AtomicU64) -> u64 {
    let x = seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn setup() -> Server {
    let s = common::start(Setup {
        server: ServerConfig {
            audit_window: WINDOW,
            trusted_proxies: TrustedProxies::parse(&["127.0.0.1"]).expect("proxies"),
            ..ServerConfig::default()
        },
        auth: Some((AccessConfig::default(), ChallengeKind::Bearer)),
        ..Setup::default()
    })
    .await;
    common::add_users(
        s.access(),
        &[("admin", true), ("alice", false), ("eve", false)],
    )
    .await;
    common::add_tenant(s.access(), "team-a", false, &[("alice", "reader")]).await;
    s
}

impl Server {
    async fn push(&self, repo: &str, tag: &str) {
        self.push_image_as(&Cred::user("admin"), repo, &[tag], b"a layer")
            .await;
    }

    async fn rows(&self, action: &str) -> Vec<berth_meta::AuditRecord> {
        let mut out = Vec::new();
        let mut before_id = None;
        loop {
            let page = self
                .meta
                .audit_query(&AuditQuery {
                    action: Some(action.into()),
                    before_id,
                    limit: 1000,
                    ..AuditQuery::default()
                })
                .await
                .expect("audit");
            let Some((last, _)) = page.last() else {
                return out;
            };
            before_id = Some(*last);
            out.extend(page.into_iter().map(|(_, r)| r));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_flood_with_random_names_cannot_push_out_pulls() {
    let s = Arc::new(setup().await);
    s.push("team-a/app", "v1").await;
    let seed = Arc::new(AtomicU64::new(7));
    let refused = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let started = Instant::now();

    let mut flood = Vec::new();
    for worker in 0..16u64 {
        let (s, seed, refused) = (s.clone(), seed.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop_at {
                i += 1;
                let n = next(&seed);
                let source = format!("198.51.100.{}", n % SOURCES + 1);
                let base = &s.base;
                let req = match (worker + i) % 4 {
                    // Anonymous pulls of names that do not exist: 401 challenges.
                    0 => s
                        .http
                        .get(format!("{base}/v2/t{n:x}/r{n:x}/manifests/latest")),
                    // A logged-in user without rights, on random names: 403.
                    1 => s
                        .http
                        .get(format!("{base}/v2/team-a/r{n:x}/manifests/v1"))
                        .basic_auth("eve", Some(PASSWORD)),
                    // Anonymous tokens, as many as asked for.
                    2 => s.http.get(format!(
                        "{base}/token?service=berth&scope=repository:t{n:x}/x:pull"
                    )),
                    // Wrong passwords for random names (argon2: a few at a time).
                    _ if worker < 2 => s
                        .http
                        .get(format!("{base}/v2/"))
                        .basic_auth(format!("u{n:x}"), Some("wrong")),
                    _ => continue,
                };
                let r = req
                    .header("x-forwarded-for", source)
                    .send()
                    .await
                    .expect("flood request");
                assert!(
                    matches!(r.status().as_u16(), 200 | 401 | 403 | 429),
                    "{}",
                    r.status()
                );
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Twenty pulls by a reader, spread over the flood.
    for _ in 0..20 {
        let r = s
            .http
            .get(format!("{}/v2/team-a/app/manifests/v1", s.base))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .header("x-forwarded-for", "203.0.113.20")
            .basic_auth("alice", Some(PASSWORD))
            .send()
            .await
            .expect("pull");
        assert_eq!(r.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    for f in flood {
        f.await.expect("flood task");
    }
    let elapsed = started.elapsed();
    // Everything queued or summed is written.
    s.state.flush_audit().await;

    let pulls = s.rows("manifest.pull").await;
    assert_eq!(pulls.len(), 20, "{pulls:?}");
    assert!(pulls.iter().all(|r| r.actor == "alice"
        && r.source.as_deref() == Some("203.0.113.20")
        && r.repository.as_deref() == Some("team-a/app")));

    let mut refusal_rows = 0;
    let mut by_action = BTreeMap::new();
    for action in ["access", "login", "token"] {
        let rows = s.rows(action).await;
        // Every summed or single row names an address of the flood, or none (overflow).
        assert!(
            rows.iter().all(|r| r
                .source
                .as_deref()
                .is_none_or(|a| a.starts_with("198.51.100."))),
            "{action}: {rows:?}"
        );
        by_action.insert(action, rows.len());
        refusal_rows += rows.len();
    }
    let requests = refused.load(Ordering::Relaxed);
    // Per window and address: for each kind of refusal at most five keys (four names and
    // the rest), each written once at once and once summed.
    let windows = elapsed.as_millis() / WINDOW.as_millis() + 2;
    let bound = windows as usize * SOURCES as usize * 3 * 2 * 5;
    eprintln!(
        "{requests} refused requests in {elapsed:?} -> {refusal_rows} rows {by_action:?} \
         (bound {bound})"
    );
    assert!(requests > 1000, "the flood was too small to show anything");
    assert!(refusal_rows <= bound, "{refusal_rows} > {bound}");
    assert!(
        (refusal_rows as u64) * 5 < requests,
        "{refusal_rows} rows for {requests} refusals"
    );
    // Anonymous challenges are counted, not written; nothing was dropped.
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("berth_audit_records_dropped_total 0"),
        "{metrics}"
    );
    let challenges: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_auth_challenges_total "))
        .and_then(|v| v.parse().ok())
        .expect("challenge counter");
    assert!(challenges > 100, "{challenges}");
    let summed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_audit_refusals_summed_total "))
        .and_then(|v| v.parse().ok())
        .expect("summed counter");
    assert!(summed > 500, "{summed}");
}

#[tokio::test]
async fn old_audit_rows_are_pruned() {
    let s = setup().await;
    let day = 86_400_000_000i64;
    let now = berth_meta::now_micros();
    let rows: Vec<_> = [100, 91, 89, 1]
        .iter()
        .map(|days| berth_meta::AuditRecord {
            at: now - days * day,
            actor: format!("aged-{days}"),
            action: "login".into(),
            outcome: "ok".into(),
            ..berth_meta::AuditRecord::default()
        })
        .collect();
    s.meta.append_audit(&rows).await.expect("append");
    let n = s
        .state
        .registry()
        .prune_audit(Duration::from_secs(90 * 86_400))
        .await
        .expect("prune");
    assert_eq!(n, 2);
    let left: Vec<String> = s.rows("login").await.into_iter().map(|r| r.actor).collect();
    assert_eq!(left, ["aged-1", "aged-89"]);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("berth_audit_records_pruned_total 2"),
        "{metrics}"
    );
}
