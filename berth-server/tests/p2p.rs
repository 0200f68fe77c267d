//! Node-local sharing over real HTTP on 127.0.0.0/8: a central Berth and node agents
//! (`berth_server::node`), each node an address of its own (127.0.0.2, .3, ...), its
//! "kubelet" a client from that address pulling manifests with its own credentials.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_auth::ticket::{TicketClaims, TicketKey};
use berth_registry::access::AccessConfig;
use berth_registry::p2p::P2pSettings;
use berth_server::ChallengeKind;
use berth_server::node::{Agent, AgentConfig};
use common::{Cred, OCI_MANIFEST, Setup, TestServer, add_tenant, add_users, client_from, metric};
use reqwest::StatusCode;

const BOOTSTRAP: &str = "bootstrap-token-for-the-tests";

struct Central {
    server: TestServer,
    key: TicketKey,
    manifest: String,
    layer: String,
    layer_bytes: Vec<u8>,
}

/// A central Berth with authentication and sharing on, and a private image in team-a
/// (alice may pull; bob, of team-b, may not). The layer spans three pieces.
async fn central(p2p_off: Vec<String>) -> Central {
    let key = TicketKey::generate().expect("test");
    let server = common::start(Setup {
        auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
        p2p: Some(P2pSettings {
            bootstrap_token: BOOTSTRAP.into(),
            key_pkcs8: Some(key.pkcs8().to_vec()),
            off: p2p_off,
            ..P2pSettings::default()
        }),
        ..Setup::default()
    })
    .await;
    add_users(
        server.access(),
        &[("admin", true), ("alice", false), ("bob", false)],
    )
    .await;
    add_tenant(server.access(), "team-a", false, &[("alice", "developer")]).await;
    add_tenant(server.access(), "team-b", false, &[("bob", "developer")]).await;
    let layer_bytes: Vec<u8> = (0..(9u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (_, manifest, layer) = server
        .push_image_as(&Cred::user("admin"), "team-a/app", &["v1"], &layer_bytes)
        .await;
    Central {
        server,
        key,
        manifest,
        layer,
        layer_bytes,
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

struct Node {
    agent: Arc<Agent>,
    /// The containerd face.
    mirror: String,
    peer: SocketAddr,
    spool: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn node(c: &Central, n: u8, failpoints: &[&str], stall: Duration) -> Node {
    node_with_rate(c, n, failpoints, stall, 0, 0).await
}

async fn node_with_rate(
    c: &Central,
    n: u8,
    failpoints: &[&str],
    stall: Duration,
    serve_rate: u64,
    spool_max_bytes: u64,
) -> Node {
    let spool = tempfile::tempdir().expect("test");
    let containerd = tokio::net::TcpListener::bind((ip(n), 0))
        .await
        .expect("test");
    let peers = tokio::net::TcpListener::bind((ip(n), 0))
        .await
        .expect("test");
    let peer = peers.local_addr().expect("test");
    let agent = Agent::new(AgentConfig {
        node: format!("node-{n}"),
        central: c.server.base.clone(),
        bootstrap_token: BOOTSTRAP.into(),
        peer_port: peer.port(),
        spool: spool.path().to_owned(),
        spool_max_bytes,
        serve_rate,
        stall_timeout: stall,
        local_address: Some(ip(n)),
        central_ca: None,
        failpoints: failpoints.iter().map(|s| s.to_string()).collect(),
        containerd: None,
    })
    .expect("test");
    let mirror = format!("http://{}", containerd.local_addr().expect("test"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(berth_server::node::run_agent(
        Arc::clone(&agent),
        containerd,
        peers,
        async move {
            let _ = stopped.await;
        },
    ));
    // Enrolled once it answers its metrics and the central Berth knows it.
    let http = client_from(ip(n));
    for _ in 0..100 {
        let st = status(c).await;
        if st["nodes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["node"] == format!("node-{n}")))
            && http.get(format!("{mirror}/metrics")).send().await.is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Node {
        agent,
        mirror,
        peer,
        spool,
        _stop: stop,
    }
}

async fn status(c: &Central) -> serde_json::Value {
    c.server
        .request_as(reqwest::Method::GET, "/p2p/v1/status", &Cred::user("admin"))
        .send()
        .await
        .expect("test")
        .json()
        .await
        .expect("test")
}

/// The node's kubelet resolving the image at the central Berth, as `cred`.
async fn kubelet_pull(c: &Central, n: u8, cred: &Cred) -> StatusCode {
    let r = cred
        .apply(
            client_from(ip(n)).get(
                c.server
                    .url(&format!("/v2/team-a/app/manifests/{}", c.manifest)),
            ),
        )
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("test");
    r.status()
}

/// containerd asking the node's agent for the layer: status and bytes.
async fn containerd_get(node: &Node, n: u8, digest: &str) -> (StatusCode, Vec<u8>) {
    let r = client_from(ip(n))
        .get(format!(
            "{}/v2/team-a/app/blobs/{digest}?ns=registry.example",
            node.mirror
        ))
        .send()
        .await
        .expect("test");
    let s = r.status();
    (s, r.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
}

fn stat(
    node: &Node,
    f: impl Fn(&berth_server::node::AgentStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    f(&node.agent.stats).load(std::sync::atomic::Ordering::Relaxed)
}

async fn central_metric(c: &Central, sample: &str) -> u64 {
    let text = c.server.metrics().await;
    metric(&text, sample)
}

#[tokio::test]
async fn a_second_node_gets_the_layer_from_the_first_and_the_central_berth_sends_it_once() {
    let c = central(vec![]).await;
    let a = node(&c, 2, &[], Duration::from_secs(10)).await;
    let b = node(&c, 3, &[], Duration::from_secs(10)).await;
    let size = c.layer_bytes.len() as u64;

    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let (s, bytes) = containerd_get(&a, 2, &c.layer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == c.layer_bytes, "node A got the layer's bytes");
    assert_eq!(stat(&a, |s| &s.bytes_from_central), size);
    assert_eq!(
        central_metric(&c, "berth_p2p_bytes_to_agents_total").await,
        size
    );

    assert_eq!(
        kubelet_pull(&c, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let (s, bytes) = containerd_get(&b, 3, &c.layer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == c.layer_bytes, "node B got the layer's bytes");
    assert_eq!(stat(&b, |s| &s.bytes_from_peers), size);
    assert_eq!(stat(&b, |s| &s.bytes_from_central), 0);
    assert_eq!(stat(&a, |s| &s.bytes_to_peers), size);
    assert_eq!(
        central_metric(&c, "berth_p2p_bytes_to_agents_total").await,
        size,
        "the central Berth sent the layer once"
    );
    // Both now hold it, as the tracker says.
    let st = status(&c).await;
    let holders = st["blobs"]
        .as_array()
        .expect("test")
        .iter()
        .find(|b| b["digest"] == c.layer.as_str())
        .map(|b| b["holders"].as_array().expect("test").len());
    assert_eq!(holders, Some(2), "{st}");
}

#[tokio::test]
async fn four_nodes_pulling_at_once_get_the_layer_while_the_central_berth_sends_it_once() {
    nodes_pulling_at_once(4).await;
}

#[tokio::test]
async fn eight_nodes_pulling_at_once_get_the_layer_while_the_central_berth_sends_it_once() {
    nodes_pulling_at_once(8).await;
}

async fn nodes_pulling_at_once(count: u8) {
    let c = central(vec![]).await;
    let size = c.layer_bytes.len() as u64;
    let mut nodes = Vec::new();
    for n in 2..2 + count {
        nodes.push((n, node(&c, n, &[], Duration::from_secs(10)).await));
        assert_eq!(
            kubelet_pull(&c, n, &Cred::user("alice")).await,
            StatusCode::OK
        );
    }
    let pulls = nodes
        .iter()
        .map(|(n, node)| containerd_get(node, *n, &c.layer));
    for (s, bytes) in futures_util::future::join_all(pulls).await {
        assert_eq!(s, StatusCode::OK);
        assert!(bytes == c.layer_bytes, "every node got the layer's bytes");
    }
    let from_peers: u64 = nodes
        .iter()
        .map(|(_, n)| stat(n, |s| &s.bytes_from_peers))
        .sum();
    let from_central: u64 = nodes
        .iter()
        .map(|(_, n)| stat(n, |s| &s.bytes_from_central))
        .sum();
    assert_eq!(
        central_metric(&c, "berth_p2p_bytes_to_agents_total").await,
        size,
        "the central Berth sent the layer once (peers {from_peers}, central {from_central})"
    );
    assert_eq!(from_central, size);
    assert_eq!(from_peers, u64::from(count - 1) * size);
}

#[tokio::test]
async fn the_bytes_served_to_peers_stay_under_the_cap() {
    let c = central(vec![]).await;
    // 8 MB/s: the 9.4 MB layer takes over a second to serve; on loopback, uncapped, it
    // takes a few milliseconds.
    let a = node_with_rate(&c, 2, &[], Duration::from_secs(10), 8_000_000, 0).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    assert_eq!(containerd_get(&a, 2, &c.layer).await.0, StatusCode::OK);
    let b = node(&c, 3, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let t0 = Instant::now();
    let (s, bytes) = containerd_get(&b, 3, &c.layer).await;
    let took = t0.elapsed();
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == c.layer_bytes);
    assert_eq!(
        stat(&b, |s| &s.bytes_from_peers),
        c.layer_bytes.len() as u64
    );
    assert!(took >= Duration::from_millis(1000), "served in {took:?}");
}

#[tokio::test]
async fn nodes_whose_pulls_were_refused_get_nothing_from_the_agent_or_its_peers() {
    let c = central(vec![]).await;
    let a = node(&c, 2, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    assert_eq!(containerd_get(&a, 2, &c.layer).await.0, StatusCode::OK);

    let other = node(&c, 4, &[], Duration::from_secs(10)).await;
    // Anonymous, and a member of another tenant: both refused at the central Berth.
    assert_eq!(
        kubelet_pull(&c, 4, &Cred::Anonymous).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        kubelet_pull(&c, 4, &Cred::user("bob")).await,
        StatusCode::FORBIDDEN
    );
    let (s, bytes) = containerd_get(&other, 4, &c.layer).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(!bytes.windows(64).any(|w| c.layer_bytes.starts_with(w)));
    assert_eq!(stat(&other, |s| &s.bytes_from_peers), 0);
    assert_eq!(stat(&other, |s| &s.bytes_from_central), 0);
    assert_eq!(stat(&a, |s| &s.bytes_to_peers), 0);
    assert_eq!(stat(&other, |s| &s.blobs_refused), 1);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("test")
        .as_secs()
}

/// A peer request from node `asker`'s agent (its TLS client) with `ticket`: status and
/// body length.
async fn ask_peer(
    peer: SocketAddr,
    asker: &Node,
    digest: &str,
    ticket: Option<&str>,
) -> (StatusCode, usize) {
    let mut r = asker
        .agent
        .peer_client()
        .expect("enrolled")
        .get(format!("https://{peer}/p2p/v1/blobs/{digest}"))
        .header("range", "bytes=0-1023");
    if let Some(t) = ticket {
        r = r.header("x-berth-ticket", t);
    }
    let r = r.send().await.expect("test");
    let s = r.status();
    (s, r.bytes().await.expect("test").len())
}

#[tokio::test]
async fn a_peer_answers_403_with_no_bytes_without_a_valid_ticket_of_the_asking_node() {
    let c = central(vec![]).await;
    let a = node(&c, 2, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    assert_eq!(containerd_get(&a, 2, &c.layer).await.0, StatusCode::OK);
    // Node 3's agent asks, over TLS with its own certificate, without a pull of its own.
    let b = node(&c, 3, &[], Duration::from_secs(10)).await;

    let ticket = |node: &str, n: u8, digest: &str, exp: u64| {
        c.key.sign_ticket(&TicketClaims {
            node: node.into(),
            addr: ip(n),
            digest: digest.into(),
            exp,
        })
    };
    let later = now() + 300;
    let config = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let cases = [
        ("no ticket", None),
        (
            "a ticket for another blob",
            Some(ticket("node-3", 3, config, later)),
        ),
        (
            "another node's ticket",
            Some(ticket("node-5", 5, &c.layer, later)),
        ),
        (
            "an expired ticket",
            Some(ticket("node-3", 3, &c.layer, now() - 3600)),
        ),
        (
            "a ticket signed by another key",
            Some(
                TicketKey::generate()
                    .expect("test")
                    .sign_ticket(&TicketClaims {
                        node: "node-3".into(),
                        addr: ip(3),
                        digest: c.layer.clone(),
                        exp: later,
                    }),
            ),
        ),
    ];
    for (what, t) in &cases {
        let (s, n) = ask_peer(a.peer, &b, &c.layer, t.as_deref()).await;
        assert_eq!((s, n), (StatusCode::FORBIDDEN, 0), "{what}");
    }
    assert_eq!(stat(&a, |s| &s.peer_requests_refused), cases.len() as u64);
    assert_eq!(stat(&a, |s| &s.bytes_to_peers), 0);
    // The same request with node 3's own ticket is served.
    let (s, n) = ask_peer(
        a.peer,
        &b,
        &c.layer,
        Some(&ticket("node-3", 3, &c.layer, later)),
    )
    .await;
    assert_eq!((s, n), (StatusCode::PARTIAL_CONTENT, 1024));
}

/// A new P-256 key for agent-to-agent TLS: PKCS#8 and its public point, hex.
fn tls_key() -> (Vec<u8>, String) {
    let rng = ring::rand::SystemRandom::new();
    let k = berth_k8s::cert::new_p256_key(&rng).expect("test");
    let point = berth_k8s::cert::p256_public(&k, &rng).expect("test");
    (k, hex::encode(point))
}

/// Enrolls node `n` by hand, as an agent would, with peers told to use `port`: the answer.
async fn enroll_at(c: &Central, n: u8, port: u16, tls_public_key: &str) -> serde_json::Value {
    let r = client_from(ip(n))
        .post(c.server.url("/p2p/v1/enroll"))
        .bearer_auth(BOOTSTRAP)
        .json(&serde_json::json!({
            "node": format!("node-{n}"),
            "port": port,
            "tls_public_key": tls_public_key,
        }))
        .send()
        .await
        .expect("test");
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("test")
}

async fn enroll(c: &Central, n: u8) -> String {
    let v = enroll_at(c, n, 9, &tls_key().1).await;
    v["credential"].as_str().expect("test").to_owned()
}

#[tokio::test]
async fn the_tracker_takes_announcements_only_with_the_announcers_own_ticket() {
    let c = central(vec![]).await;
    let wrong = client_from(ip(2))
        .post(c.server.url("/p2p/v1/enroll"))
        .bearer_auth("not-the-bootstrap-token")
        .json(&serde_json::json!({"node": "node-2", "port": 9, "tls_public_key": tls_key().1}))
        .send()
        .await
        .expect("test");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let cred_a = enroll(&c, 2).await;
    let cred_m = enroll(&c, 6).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let issued: serde_json::Value = client_from(ip(2))
        .get(c.server.url(&format!("/p2p/v1/tickets/{}", c.layer)))
        .bearer_auth(&cred_a)
        .send()
        .await
        .expect("test")
        .json()
        .await
        .expect("test");
    let ticket_a = issued["ticket"].as_str().expect("test").to_owned();
    assert_eq!(issued["hashes"].as_array().expect("test").len(), 3);

    let announce = |n: u8, cred: String, ticket: String| {
        let url = c.server.url("/p2p/v1/announce");
        async move {
            client_from(ip(n))
                .post(url)
                .bearer_auth(cred)
                .json(&serde_json::json!({ "ticket": ticket }))
                .send()
                .await
                .expect("test")
                .status()
        }
    };
    // Node 6 never pulled the image: it has no ticket of its own; A's does not pass for it,
    // nor does a forged one, nor A's credential from 6's address.
    assert_eq!(
        announce(6, cred_m.clone(), ticket_a.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        announce(6, cred_m.clone(), "e30.AAAA".into()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        announce(6, cred_a.clone(), ticket_a.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    // Nor may it ask who holds the blob, or get a ticket.
    let peers = client_from(ip(6))
        .get(c.server.url(&format!("/p2p/v1/peers/{}", c.layer)))
        .bearer_auth(&cred_m)
        .send()
        .await
        .expect("test");
    assert_eq!(peers.status(), StatusCode::FORBIDDEN);
    let t = client_from(ip(6))
        .get(c.server.url(&format!("/p2p/v1/tickets/{}", c.layer)))
        .bearer_auth(&cred_m)
        .send()
        .await
        .expect("test");
    assert_eq!(t.status(), StatusCode::FORBIDDEN);
    // Central bytes for a ticket come only to its own node.
    let stolen = client_from(ip(6))
        .get(c.server.url(&format!("/p2p/v1/blobs/{}", c.layer)))
        .header("x-berth-ticket", &ticket_a)
        .send()
        .await
        .expect("test");
    assert_eq!(stolen.status(), StatusCode::FORBIDDEN);
    assert!(
        status(&c).await["blobs"]
            .as_array()
            .expect("test")
            .is_empty()
    );
    // A node's credential (or a ticket) is no registry credential: an agent cannot pull
    // what its node was not let pull, from the registry itself either.
    for bearer in [&cred_a, &ticket_a] {
        for path in [
            format!("/v2/team-a/app/manifests/{}", c.manifest),
            format!("/v2/team-a/app/blobs/{}", c.layer),
        ] {
            let r = client_from(ip(2))
                .get(c.server.url(&path))
                .bearer_auth(bearer)
                .send()
                .await
                .expect("test");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        }
    }
    assert_eq!(
        central_metric(&c, "berth_p2p_announces_refused_total").await,
        2
    );

    assert_eq!(announce(2, cred_a, ticket_a).await, StatusCode::OK);
    let st = status(&c).await;
    assert_eq!(st["blobs"][0]["holders"][0]["node"], "node-2", "{st}");
}

#[tokio::test]
async fn a_peer_sending_corrupt_pieces_is_dropped_and_the_transfer_completes() {
    let c = central(vec![]).await;
    let bad = node(&c, 2, &["serve-corrupt"], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    assert_eq!(containerd_get(&bad, 2, &c.layer).await.0, StatusCode::OK);

    let b = node(&c, 3, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let (s, bytes) = containerd_get(&b, 3, &c.layer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        bytes == c.layer_bytes,
        "the right bytes despite the corrupt peer"
    );
    assert_eq!(stat(&b, |s| &s.peers_dropped_corrupt), 1);
    assert_eq!(stat(&b, |s| &s.bytes_from_peers), 0);
    assert_eq!(
        stat(&b, |s| &s.bytes_from_central),
        c.layer_bytes.len() as u64
    );
}

/// A peer that asks while the holder's fetch is renaming its spool file into place gets
/// the bytes: it once missed the file under both names and took the blob from the
/// central Berth instead (seen in CI as 1.33 copies sent for four nodes).
#[tokio::test]
async fn a_peer_asking_while_the_holder_renames_its_spool_file_gets_the_bytes() {
    let c = central(vec![]).await;
    let size = c.layer_bytes.len() as u64;
    let a = node(&c, 2, &["rename-race"], Duration::from_secs(10)).await;
    let b = node(&c, 3, &[], Duration::from_secs(10)).await;
    for n in [2, 3] {
        assert_eq!(
            kubelet_pull(&c, n, &Cred::user("alice")).await,
            StatusCode::OK
        );
    }
    let first = {
        let (mirror, layer) = (a.mirror.clone(), c.layer.clone());
        tokio::spawn(async move {
            client_from(ip(2))
                .get(format!("{mirror}/v2/team-a/app/blobs/{layer}"))
                .send()
                .await
                .expect("test")
                .status()
        })
    };
    // A has the layer verified and holds it under its partial name for a second.
    for _ in 0..100 {
        if stat(&a, |s| &s.bytes_from_central) == size {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stat(&a, |s| &s.bytes_from_central), size);
    let (s, bytes) = containerd_get(&b, 3, &c.layer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == c.layer_bytes, "node B got the layer's bytes");
    assert_eq!(first.await.expect("test"), StatusCode::OK);
    assert_eq!(stat(&b, |s| &s.peers_dropped_failed), 0);
    assert_eq!(stat(&b, |s| &s.bytes_from_peers), size);
    assert_eq!(stat(&b, |s| &s.bytes_from_central), 0);
    assert_eq!(
        central_metric(&c, "berth_p2p_bytes_to_agents_total").await,
        size,
        "the central Berth sent the layer once"
    );
}

#[tokio::test]
async fn a_stalled_peer_is_abandoned_within_the_stall_timeout() {
    let c = central(vec![]).await;
    let frozen = node(&c, 2, &["serve-stall"], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    assert_eq!(containerd_get(&frozen, 2, &c.layer).await.0, StatusCode::OK);

    let b = node(&c, 3, &[], Duration::from_secs(1)).await;
    assert_eq!(
        kubelet_pull(&c, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let t0 = Instant::now();
    let (s, bytes) = containerd_get(&b, 3, &c.layer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == c.layer_bytes);
    assert_eq!(stat(&b, |s| &s.peers_dropped_stalled), 1);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn sharing_turned_off_for_a_tenant_gives_no_ticket() {
    let c = central(vec!["team-a".into()]).await;
    let a = node(&c, 2, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let (s, _) = containerd_get(&a, 2, &c.layer).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(stat(&a, |s| &s.bytes_from_central), 0);
}

#[tokio::test]
async fn the_spool_keeps_under_its_cap_by_dropping_the_oldest_blob() {
    let c = central(vec![]).await;
    let size = c.layer_bytes.len() as u64;
    let a = node_with_rate(&c, 2, &[], Duration::from_secs(10), 0, size).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let config = common::sha256(br#"{"architecture":"amd64","os":"linux"}"#);
    assert_eq!(containerd_get(&a, 2, &config).await.0, StatusCode::OK);
    assert_eq!(stat(&a, |s| &s.blobs_evicted), 0);
    assert_eq!(containerd_get(&a, 2, &c.layer).await.0, StatusCode::OK);
    assert_eq!(
        stat(&a, |s| &s.blobs_evicted),
        1,
        "the config went to make room"
    );
    let spooled: Vec<String> = std::fs::read_dir(a.spool.path())
        .expect("test")
        .map(|e| e.expect("test").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(spooled, vec![c.layer.replace(':', "-")]);
}

#[tokio::test]
async fn a_peer_that_is_gone_is_dropped_and_the_transfer_completes() {
    let c = central(vec![]).await;
    let a = node(&c, 2, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    assert_eq!(containerd_get(&a, 2, &c.layer).await.0, StatusCode::OK);
    let gone = a.peer;
    drop(a);
    // Stopped: its port refuses connections, but the tracker still names it.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(gone).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = node(&c, 3, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let (s, bytes) = containerd_get(&b, 3, &c.layer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == c.layer_bytes);
    assert_eq!(stat(&b, |s| &s.peers_dropped_failed), 1);
    assert_eq!(
        stat(&b, |s| &s.bytes_from_central),
        c.layer_bytes.len() as u64
    );
}

/// A TLS server standing in for a peer at `addr`: counts the connections it gets and the
/// handshakes that complete (then drops them), with the certificate it is given.
struct FakePeer {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicU64>,
    handshakes: Arc<std::sync::atomic::AtomicU64>,
    config: Arc<std::sync::Mutex<Arc<rustls::ServerConfig>>>,
}

fn server_config(cert_der: Vec<u8>, key_pkcs8: &[u8]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("test")
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls_pki_types::CertificateDer::from(cert_der)],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key_pkcs8.to_vec().into()),
            )
            .expect("test"),
    )
}

async fn fake_peer(n: u8, config: Arc<rustls::ServerConfig>) -> FakePeer {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind((ip(n), 0))
        .await
        .expect("test");
    let f = FakePeer {
        addr: listener.local_addr().expect("test"),
        connections: Arc::default(),
        handshakes: Arc::default(),
        config: Arc::new(std::sync::Mutex::new(config)),
    };
    let (conns, shakes, config) = (
        Arc::clone(&f.connections),
        Arc::clone(&f.handshakes),
        Arc::clone(&f.config),
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::Relaxed);
            let config = Arc::clone(&config.lock().expect("test"));
            let shakes = Arc::clone(&shakes);
            tokio::spawn(async move {
                if tokio_rustls::TlsAcceptor::from(config)
                    .accept(tcp)
                    .await
                    .is_ok()
                {
                    shakes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    f
}

#[tokio::test]
async fn a_peer_whose_certificate_is_not_from_the_p2p_ca_is_refused() {
    use std::sync::atomic::Ordering;
    let c = central(vec![]).await;
    // Node 4 is no agent: it enrolls by hand (getting a real certificate for its key, kept
    // for the control below), pulls and announces, so the tracker names it as a holder;
    // at its peer port it presents a certificate for its name and address from a CA of
    // its own.
    let (key4, point4) = tls_key();
    let rng = ring::rand::SystemRandom::new();
    let own_ca = berth_k8s::cert::new_p256_key(&rng).expect("test");
    let forged = berth_k8s::cert::p2p_node_certificate(
        &own_ca,
        "node-4",
        ip(4),
        &hex::decode(&point4).expect("test"),
        now(),
        now() + 3600,
        &rng,
    )
    .expect("test");
    let fake = fake_peer(4, server_config(forged, &key4)).await;
    let e = enroll_at(&c, 4, fake.addr.port(), &point4).await;
    let cred4 = e["credential"].as_str().expect("test");
    assert_eq!(
        kubelet_pull(&c, 4, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let issued: serde_json::Value = client_from(ip(4))
        .get(c.server.url(&format!("/p2p/v1/tickets/{}", c.layer)))
        .bearer_auth(cred4)
        .send()
        .await
        .expect("test")
        .json()
        .await
        .expect("test");
    let announced = client_from(ip(4))
        .post(c.server.url("/p2p/v1/announce"))
        .bearer_auth(cred4)
        .json(&serde_json::json!({ "ticket": issued["ticket"] }))
        .send()
        .await
        .expect("test");
    assert_eq!(announced.status(), StatusCode::OK);

    let b = node(&c, 3, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&c, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let (s, bytes) = containerd_get(&b, 3, &c.layer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == c.layer_bytes, "the layer, from the central Berth");
    assert!(
        fake.connections.load(Ordering::Relaxed) >= 1,
        "node 3 tried node 4"
    );
    assert_eq!(fake.handshakes.load(Ordering::Relaxed), 0);
    assert!(stat(&b, |s| &s.peers_dropped_failed) >= 1);
    assert_eq!(stat(&b, |s| &s.bytes_from_peers), 0);
    assert_eq!(
        stat(&b, |s| &s.bytes_from_central),
        c.layer_bytes.len() as u64
    );

    // The control: with the certificate the central Berth issued for its key, the same
    // server completes the handshake with node 3's agent.
    let real = hex::decode(e["certificate"].as_str().expect("test")).expect("test");
    *fake.config.lock().expect("test") = server_config(real, &key4);
    let _ = b
        .agent
        .peer_client()
        .expect("test")
        .get(format!("https://{}/p2p/v1/blobs/{}", fake.addr, c.layer))
        .send()
        .await;
    assert_eq!(fake.handshakes.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_peer_port_speaks_only_tls_and_only_to_certified_agents() {
    let c = central(vec![]).await;
    let a = node(&c, 2, &[], Duration::from_secs(10)).await;
    let b = node(&c, 3, &[], Duration::from_secs(10)).await;
    let url = |scheme: &str| format!("{scheme}://{}/p2p/v1/blobs/{}", a.peer, c.layer);

    // Plain HTTP gets no HTTP answer at all.
    let plain = client_from(ip(3)).get(url("http")).send().await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // TLS trusting the p2p CA but with no certificate of one's own: refused too.
    let e = enroll_at(&c, 5, 9, &tls_key().1).await;
    let ca = hex::decode(e["ca"].as_str().expect("test")).expect("test");
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&ca).expect("test"))
        .local_address(ip(5))
        .no_proxy()
        .build()
        .expect("test")
        .get(url("https"))
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "no client certificate answered: {anonymous:?}"
    );
    assert_eq!(stat(&a, |s| &s.peer_handshakes_refused), 2);
    assert_eq!(stat(&a, |s| &s.bytes_to_peers), 0);
    // An enrolled agent is answered (403 here: it has no ticket).
    let r = b
        .agent
        .peer_client()
        .expect("test")
        .get(url("https"))
        .send()
        .await
        .expect("test");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The agent's metrics show the refusals.
    let m = client_from(ip(2))
        .get(format!("{}/metrics", a.mirror))
        .send()
        .await
        .expect("test")
        .text()
        .await
        .expect("test");
    assert!(
        m.contains("berth_node_peer_handshakes_refused_total 2"),
        "{m}"
    );
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("test"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A central Berth on PostgreSQL, sharing on and no key given: the keys are the store's.
async fn replica(stores: Option<common::Stores>) -> TestServer {
    common::start(Setup {
        postgres: stores.is_none(),
        stores,
        auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
        p2p: Some(P2pSettings {
            bootstrap_token: BOOTSTRAP.into(),
            ..P2pSettings::default()
        }),
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn replicas_on_one_store_sign_tickets_and_certificates_with_the_same_keys() {
    let a_server = replica(None).await;
    let b_server = replica(Some(a_server.stores())).await;
    add_users(a_server.access(), &[("admin", true), ("alice", false)]).await;
    add_tenant(
        a_server.access(),
        "team-a",
        false,
        &[("alice", "developer")],
    )
    .await;
    let layer_bytes: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (_, manifest, layer) = a_server
        .push_image_as(&Cred::user("admin"), "team-a/app", &["v1"], &layer_bytes)
        .await;
    let at = |server| Central {
        server,
        key: TicketKey::generate().expect("test"),
        manifest: manifest.clone(),
        layer: layer.clone(),
        layer_bytes: layer_bytes.clone(),
    };
    let (ca, cb) = (at(a_server), at(b_server));

    // Node 2's agent enrolled at replica A and holds the layer.
    let a = node(&ca, 2, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&ca, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    assert_eq!(containerd_get(&a, 2, &layer).await.0, StatusCode::OK);

    // Node 3 enrolls at replica B, pulls through B and gets its ticket there.
    let (key3, point3) = tls_key();
    let e3 = enroll_at(&cb, 3, 9, &point3).await;
    let e5 = enroll_at(&ca, 5, 9, &tls_key().1).await;
    assert_eq!(e3["public_key"], e5["public_key"], "one ticket key");
    // Each replica makes its own CA certificate (serial, signature) of the one CA key:
    // the TLS exchange below is what shows the CA is shared.
    assert_eq!(
        kubelet_pull(&cb, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let issued: serde_json::Value = client_from(ip(3))
        .get(cb.server.url(&format!("/p2p/v1/tickets/{layer}")))
        .bearer_auth(e3["credential"].as_str().expect("test"))
        .send()
        .await
        .expect("test")
        .json()
        .await
        .expect("test");
    let ticket = issued["ticket"].as_str().expect("test");

    // Node 2's agent (which knows replica A only) serves node 3, over TLS both ways,
    // for B's ticket.
    let cert3 = hex::decode(e3["certificate"].as_str().expect("test")).expect("test");
    let ca_der = hex::decode(e3["ca"].as_str().expect("test")).expect("test");
    let identity = format!(
        "{}{}",
        pem("PRIVATE KEY", &key3),
        pem("CERTIFICATE", &cert3)
    );
    let r = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&ca_der).expect("test"))
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).expect("test"))
        .local_address(ip(3))
        .no_proxy()
        .build()
        .expect("test")
        .get(format!("https://{}/p2p/v1/blobs/{layer}", a.peer))
        .header("x-berth-ticket", ticket)
        .header("range", "bytes=0-1023")
        .send()
        .await
        .expect("node 2's agent accepts node 3's certificate from replica B");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.expect("test")[..], layer_bytes[..1024]);
}

#[tokio::test]
async fn with_encryption_on_the_stored_keys_are_sealed() {
    let ring = Arc::new(
        berth_storage::seal::Keyring::new(vec![("k1".into(), [0x42; 32])], "k1").expect("keyring"),
    );
    let server = common::start(Setup {
        encryption: Some(Arc::clone(&ring)),
        p2p: Some(P2pSettings {
            bootstrap_token: BOOTSTRAP.into(),
            ..P2pSettings::default()
        }),
        ..Setup::default()
    })
    .await;
    // What is stored (a key is there already, so this only reads it).
    let (stored, sealed_by) = server
        .meta
        .ensure_p2p_key("ticket", b"unused", None)
        .await
        .expect("test");
    assert_eq!(sealed_by.as_deref(), Some("k1"));
    assert!(TicketKey::from_pkcs8(&stored).is_err(), "not in the clear");
    let key = TicketKey::from_pkcs8(
        &ring
            .unwrap("k1", b"berth-p2p-key\0ticket", &stored)
            .expect("sealed by k1 for the ticket key"),
    )
    .expect("test");
    let r = client_from(ip(2))
        .post(server.url("/p2p/v1/enroll"))
        .bearer_auth(BOOTSTRAP)
        .json(&serde_json::json!({"node": "node-2", "port": 9, "tls_public_key": tls_key().1}))
        .send()
        .await
        .expect("test");
    let e: serde_json::Value = r.json().await.expect("test");
    assert_eq!(e["public_key"], hex::encode(key.public_key()));
    let (ca, ca_by) = server
        .meta
        .ensure_p2p_key("ca", b"unused", None)
        .await
        .expect("test");
    assert_eq!(ca_by.as_deref(), Some("k1"));
    assert!(ring.unwrap("k1", b"berth-p2p-key\0ca", &ca).is_ok());

    // Rotation: the old key cannot be retired while it seals the p2p keys, `rewrap` moves
    // them, then it can, and the keys still open under the new one.
    let ring2 = Arc::new(
        berth_storage::seal::Keyring::new(
            vec![("k1".into(), [0x42; 32]), ("k2".into(), [0x43; 32])],
            "k2",
        )
        .expect("keyring"),
    );
    let registry = server
        .registry
        .clone()
        .with_encryption(Some(Arc::clone(&ring2)));
    registry
        .activate_key("k2", &berth_meta::Actor::named("test"))
        .await
        .expect("rotate");
    let uses = registry.key_uses().await.expect("uses");
    let k1 = uses.iter().find(|u| u.key_id == "k1").expect("k1 in use");
    assert_eq!(k1.secrets, 2, "the ticket and CA keys: {uses:?}");
    let refused = registry
        .retire_key("k1")
        .await
        .expect_err("k1 still seals the keys");
    assert!(
        refused.to_string().contains("2 stored secrets"),
        "{refused}"
    );
    let summary = registry.rewrap_keys(&mut |_, _| {}).await.expect("rewrap");
    assert_eq!(summary.rewrapped, 2, "{summary:?}");
    assert!(summary.failed.is_empty(), "{summary:?}");
    for (name, secret, by) in server.meta.p2p_keys().await.expect("keys") {
        assert_eq!(by.as_deref(), Some("k2"), "{name}");
        let context = format!("berth-p2p-key\0{name}");
        assert!(
            ring2.unwrap("k2", context.as_bytes(), &secret).is_ok(),
            "{name}"
        );
    }
    registry.retire_key("k1").await.expect("k1 retires");
}

#[tokio::test]
async fn an_agent_renews_its_certificate_before_it_expires() {
    let server = common::start(Setup {
        auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
        p2p: Some(P2pSettings {
            bootstrap_token: BOOTSTRAP.into(),
            credential_ttl: Duration::from_secs(3),
            ..P2pSettings::default()
        }),
        ..Setup::default()
    })
    .await;
    let c = Central {
        server,
        key: TicketKey::generate().expect("test"),
        manifest: String::new(),
        layer: String::new(),
        layer_bytes: Vec::new(),
    };
    // The helpers ask the tracker's status as an administrator.
    add_users(c.server.access(), &[("admin", true)]).await;
    let a = node(&c, 2, &[], Duration::from_secs(10)).await;
    let b = node(&c, 3, &[], Duration::from_secs(10)).await;
    // Renewed at two thirds of three seconds, again and again; 20 s is a generous bound.
    let deadline = Instant::now() + Duration::from_secs(20);
    while central_metric(&c, "berth_p2p_enrolled_total").await < 6 {
        assert!(Instant::now() < deadline, "no renewal");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past the first certificates' expiry the agents still reach each other over TLS.
    let r = b
        .agent
        .peer_client()
        .expect("test")
        .get(format!("https://{}/p2p/v1/blobs/{}", a.peer, "sha256:00"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a renewed certificate on both ends");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// Two replicas of a central Berth on one PostgreSQL with sharing on (`settings`, the
/// bootstrap token set here), and the private image of [`central`] pushed through the
/// first. A short shutdown grace: agents' grants requests wait up to 20 s.
async fn two_replicas(settings: P2pSettings) -> (Central, Central) {
    let setup = |stores: Option<common::Stores>| Setup {
        postgres: stores.is_none(),
        stores,
        auth: Some((AccessConfig::default(), ChallengeKind::Basic)),
        server: berth_server::ServerConfig {
            shutdown_grace: Duration::from_millis(200),
            ..berth_server::ServerConfig::default()
        },
        p2p: Some(P2pSettings {
            bootstrap_token: BOOTSTRAP.into(),
            ..settings.clone()
        }),
        ..Setup::default()
    };
    let a = common::start(setup(None)).await;
    let b = common::start(setup(Some(a.stores()))).await;
    add_users(
        a.access(),
        &[("admin", true), ("alice", false), ("bob", false)],
    )
    .await;
    add_tenant(a.access(), "team-a", false, &[("alice", "developer")]).await;
    add_tenant(a.access(), "team-b", false, &[("bob", "developer")]).await;
    let layer_bytes: Vec<u8> = (0..(9u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (_, manifest, layer) = a
        .push_image_as(&Cred::user("admin"), "team-a/app", &["v1"], &layer_bytes)
        .await;
    let at = |server| Central {
        server,
        key: TicketKey::generate().expect("test"),
        manifest: manifest.clone(),
        layer: layer.clone(),
        layer_bytes: layer_bytes.clone(),
    };
    (at(a), at(b))
}

async fn get_as(c: &Central, n: u8, path: &str, credential: &str) -> reqwest::Response {
    client_from(ip(n))
        .get(c.server.url(path))
        .bearer_auth(credential)
        .send()
        .await
        .expect("test")
}

async fn announce_at(c: &Central, n: u8, credential: &str, ticket: &str) -> StatusCode {
    client_from(ip(n))
        .post(c.server.url("/p2p/v1/announce"))
        .bearer_auth(credential)
        .json(&serde_json::json!({ "ticket": ticket }))
        .send()
        .await
        .expect("test")
        .status()
}

/// The node names a peer answer (`{"peers": [...]}`) holds.
fn peer_names(v: &serde_json::Value) -> Vec<String> {
    v["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["node"].as_str().expect("node").to_owned())
        .collect()
}

#[tokio::test]
async fn replicas_share_enrollments_pulls_and_the_tracker() {
    let (ca, cb) = two_replicas(P2pSettings::default()).await;
    let layer = ca.layer.clone();
    // Node 2's agent knows replica A only; its kubelet pulls through B.
    let a = node(&ca, 2, &[], Duration::from_secs(10)).await;
    assert_eq!(
        kubelet_pull(&cb, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let (s, bytes) = containerd_get(&a, 2, &layer).await;
    assert_eq!(s, StatusCode::OK, "A gives a ticket for a pull B recorded");
    assert!(bytes == ca.layer_bytes);

    // Node 3 enrolls at B, its kubelet pulls through A, B signs its ticket and names
    // node 2 (which announced at A) as a holder.
    let e3 = enroll_at(&cb, 3, 9, &tls_key().1).await;
    let cred3 = e3["credential"].as_str().expect("test");
    assert_eq!(
        kubelet_pull(&ca, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let t = get_as(&cb, 3, &format!("/p2p/v1/tickets/{layer}"), cred3).await;
    assert_eq!(t.status(), StatusCode::OK);
    let ticket3 = t.json::<serde_json::Value>().await.expect("test")["ticket"]
        .as_str()
        .expect("test")
        .to_owned();
    let peers: serde_json::Value = get_as(&cb, 3, &format!("/p2p/v1/peers/{layer}"), cred3)
        .await
        .json()
        .await
        .expect("test");
    assert_eq!(peer_names(&peers), ["node-2"], "{peers}");
    // Announced at B, node 3 is named to node 2 by A, and the tracker's view is one.
    assert_eq!(announce_at(&cb, 3, cred3, &ticket3).await, StatusCode::OK);
    let cred2 = enroll(&ca, 2).await;
    let peers: serde_json::Value = get_as(&ca, 2, &format!("/p2p/v1/peers/{layer}"), &cred2)
        .await
        .json()
        .await
        .expect("test");
    assert_eq!(peer_names(&peers), ["node-3"], "{peers}");
    assert_eq!(status(&ca).await["blobs"], status(&cb).await["blobs"]);

    // Refusals hold across replicas. Node 6 enrolled at A; bob (team-b) is refused the
    // manifest through B from node 6: neither replica gives node 6 a ticket, peers or
    // bytes, and node 3's ticket and credential do not pass from node 6's address.
    let cred6 = enroll(&ca, 6).await;
    assert_ne!(
        kubelet_pull(&cb, 6, &Cred::user("bob")).await,
        StatusCode::OK
    );
    for c in [&ca, &cb] {
        for what in ["tickets", "peers"] {
            let r = get_as(c, 6, &format!("/p2p/v1/{what}/{layer}"), &cred6).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
        }
        assert_eq!(
            announce_at(c, 6, &cred6, &ticket3).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            announce_at(c, 6, cred3, &ticket3).await,
            StatusCode::UNAUTHORIZED
        );
        let stolen = client_from(ip(6))
            .get(c.server.url(&format!("/p2p/v1/blobs/{layer}")))
            .header("x-berth-ticket", &ticket3)
            .send()
            .await
            .expect("test");
        assert_eq!(stolen.status(), StatusCode::FORBIDDEN);
    }
    // A credential of a node that enrolled again under another name at its address is
    // refused by every replica, and what the old name announced is forgotten.
    let renamed = client_from(ip(3))
        .post(cb.server.url("/p2p/v1/enroll"))
        .bearer_auth(BOOTSTRAP)
        .json(&serde_json::json!({"node": "other-3", "port": 9, "tls_public_key": tls_key().1}))
        .send()
        .await
        .expect("test");
    assert_eq!(renamed.status(), StatusCode::OK);
    let r = get_as(&ca, 3, &format!("/p2p/v1/tickets/{layer}"), cred3).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let peers: serde_json::Value = get_as(&ca, 2, &format!("/p2p/v1/peers/{layer}"), &cred2)
        .await
        .json()
        .await
        .expect("test");
    assert!(peer_names(&peers).is_empty(), "{peers}");
}

#[tokio::test]
async fn shared_pulls_and_announcements_expire_and_are_purged() {
    let (ca, cb) = two_replicas(P2pSettings {
        pull_ttl: Duration::from_secs(2),
        announce_ttl: Duration::from_secs(2),
        ..P2pSettings::default()
    })
    .await;
    let layer = ca.layer.clone();
    let cred2 = enroll(&ca, 2).await;
    let cred3 = enroll(&cb, 3).await;
    for n in [2, 3] {
        assert_eq!(
            kubelet_pull(&ca, n, &Cred::user("alice")).await,
            StatusCode::OK
        );
    }
    let t = get_as(&cb, 2, &format!("/p2p/v1/tickets/{layer}"), &cred2).await;
    assert_eq!(t.status(), StatusCode::OK);
    let ticket2 = t.json::<serde_json::Value>().await.expect("test")["ticket"]
        .as_str()
        .expect("test")
        .to_owned();
    assert_eq!(announce_at(&cb, 2, &cred2, &ticket2).await, StatusCode::OK);
    let peers: serde_json::Value = get_as(&ca, 3, &format!("/p2p/v1/peers/{layer}"), &cred3)
        .await
        .json()
        .await
        .expect("test");
    assert_eq!(peer_names(&peers), ["node-2"]);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The pull expired: no ticket, no peers, no bytes, on either replica.
    for c in [&ca, &cb] {
        for what in ["tickets", "peers"] {
            let r = get_as(c, 3, &format!("/p2p/v1/{what}/{layer}"), &cred3).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
        }
        let r = client_from(ip(2))
            .get(c.server.url(&format!("/p2p/v1/blobs/{layer}")))
            .header("x-berth-ticket", &ticket2)
            .send()
            .await
            .expect("test");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(status(c).await["authorized_pulls"], 0);
    }
    // Pulled again, node 3 may ask, but node 2's announcement has expired.
    assert_eq!(
        kubelet_pull(&cb, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let peers: serde_json::Value = get_as(&ca, 3, &format!("/p2p/v1/peers/{layer}"), &cred3)
        .await
        .json()
        .await
        .expect("test");
    assert!(peer_names(&peers).is_empty(), "{peers}");
    // Expired rows are purged, not kept: only node 3's fresh pull is left.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        kubelet_pull(&ca, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let purged = ca
        .server
        .meta
        .p2p_purge(
            i64::try_from(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("test")
                    .as_secs(),
            )
            .expect("test"),
        )
        .await
        .expect("test");
    assert!(purged >= 3, "{purged} expired rows purged");
    let rows = ca.server.meta.p2p_pull_rows().await.expect("test");
    assert_eq!(rows, 2, "node 3's config and layer only");
}

#[tokio::test]
async fn with_the_central_berth_gone_after_the_manifest_the_layer_comes_from_a_peer() {
    let (mut ca, mut cb) = two_replicas(P2pSettings::default()).await;
    let layer = ca.layer.clone();
    // Node 2 holds the layer (its agent knows A).
    let seed = node(&ca, 2, &[], Duration::from_secs(5)).await;
    assert_eq!(
        kubelet_pull(&ca, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    assert_eq!(containerd_get(&seed, 2, &layer).await.0, StatusCode::OK);
    // Node 3's agent knows B; its kubelet resolves the manifest at A, and the agent
    // learns its tickets from B at once.
    let late = node(&cb, 3, &[], Duration::from_secs(5)).await;
    assert_eq!(
        kubelet_pull(&ca, 3, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&late, |s| &s.grants_received) < 2 {
        assert!(Instant::now() < deadline, "no grant for node 3's pull");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both replicas go away before containerd asks for the layer.
    ca.server.stop().await;
    cb.server.stop().await;
    let (s, bytes) = containerd_get(&late, 3, &layer).await;
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == ca.layer_bytes, "node 3 got the layer's bytes");
    assert_eq!(stat(&late, |s| &s.tickets_from_grants), 1);
    assert_eq!(
        stat(&late, |s| &s.bytes_from_peers),
        ca.layer_bytes.len() as u64
    );
    assert_eq!(stat(&late, |s| &s.bytes_from_central), 0);
}

/// A grants request waiting at replica B, from the node at `n`: the answer and how
/// long it took.
fn wait_for_grants(
    c: &Central,
    n: u8,
    credential: &str,
) -> tokio::task::JoinHandle<(serde_json::Value, Duration)> {
    let (url, credential) = (
        c.server.url("/p2p/v1/grants?after=0&wait=25"),
        credential.to_owned(),
    );
    tokio::spawn(async move {
        let asked = Instant::now();
        let r = client_from(ip(n))
            .get(url)
            .bearer_auth(credential)
            .send()
            .await
            .expect("test");
        assert_eq!(r.status(), StatusCode::OK);
        (r.json().await.expect("test"), asked.elapsed())
    })
}

/// Waiting grants requests wait on their own node's pulls, not on the store: a pull
/// recorded by the other replica answers its node's request at once (PostgreSQL
/// `NOTIFY`) and wakes no other, and meanwhile each reads the grants table once on
/// arrival (it used to read it every second).
#[tokio::test]
async fn a_pull_on_one_replica_answers_its_nodes_grants_request_waiting_on_the_other() {
    let (ca, cb) = two_replicas(P2pSettings::default()).await;
    let (cred2, cred3) = (enroll(&cb, 2).await, enroll(&cb, 3).await);
    let reads = || central_metric(&cb, "berth_p2p_grants_reads_total");
    let reads0 = reads().await;
    let (w2, w3) = (
        wait_for_grants(&cb, 2, &cred2),
        wait_for_grants(&cb, 3, &cred3),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!w2.is_finished() && !w3.is_finished());
    assert_eq!(reads().await - reads0, 2, "one read per request in 3 s");

    assert_eq!(
        kubelet_pull(&ca, 2, &Cred::user("alice")).await,
        StatusCode::OK
    );
    let (answer, took) = w2.await.expect("test");
    let granted: Vec<&str> = answer["grants"][0]["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .map(|b| b["digest"].as_str().expect("digest"))
        .collect();
    assert!(granted.contains(&ca.layer.as_str()), "{answer}");
    // Well before the 10 s backstop: the notification woke it.
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    assert_eq!(
        reads().await - reads0,
        3,
        "node 2's request read once more, node 3's was not woken"
    );
    assert!(!w3.is_finished());
    w3.abort();
}

#[tokio::test]
async fn stopping_a_replica_does_not_wait_for_agents_grants_requests() {
    let mut c = central(vec![]).await;
    let _n = node(&c, 2, &[], Duration::from_secs(10)).await;
    // The agent's grants request (20 s) is in flight; the drain's grace is 30 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    c.server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the shutdown waited {:?} for a grants request",
        started.elapsed()
    );
}

async fn ticket_for(c: &Central, n: u8, cred: &str) -> (StatusCode, serde_json::Value) {
    let r = client_from(ip(n))
        .get(c.server.url(&format!("/p2p/v1/tickets/{}", c.layer)))
        .bearer_auth(cred)
        .send()
        .await
        .expect("test");
    let s = r.status();
    (s, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn concurrent_first_tickets_for_a_blob_read_it_once_for_its_piece_hashes() {
    let c = central(vec![]).await;
    let mut creds = Vec::new();
    for n in 2..10u8 {
        let cred = enroll(&c, n).await;
        assert_eq!(
            kubelet_pull(&c, n, &Cred::user("alice")).await,
            StatusCode::OK
        );
        creds.push((n, cred));
    }
    assert_eq!(
        central_metric(&c, "berth_p2p_piece_hash_reads_total").await,
        0
    );
    // Eight nodes ask for their first ticket of the 9 MiB layer at once.
    let answers = futures_util::future::join_all(
        creds
            .iter()
            .map(|(n, cred)| ticket_for(&c, *n, cred.as_str())),
    )
    .await;
    let want = c
        .layer_bytes
        .chunks(4 << 20)
        .map(|p| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(p)))
        .collect::<Vec<_>>();
    for (s, v) in &answers {
        assert_eq!(*s, StatusCode::OK, "{v}");
        let hashes: Vec<String> = serde_json::from_value(v["hashes"].clone()).expect("test");
        assert_eq!(hashes, want);
    }
    assert_eq!(
        central_metric(&c, "berth_p2p_piece_hash_reads_total").await,
        1,
        "one read of the blob for eight concurrent first tickets"
    );
    // Later tickets take the hashes kept.
    let (s, _) = ticket_for(&c, creds[0].0, &creds[0].1).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        central_metric(&c, "berth_p2p_piece_hash_reads_total").await,
        1
    );
}

#[tokio::test]
async fn an_agent_withdraws_only_its_own_announcement() {
    let c = central(vec![]).await;
    let mut creds = Vec::new();
    for n in [2u8, 3] {
        let cred = enroll(&c, n).await;
        assert_eq!(
            kubelet_pull(&c, n, &Cred::user("alice")).await,
            StatusCode::OK
        );
        let (s, v) = ticket_for(&c, n, &cred).await;
        assert_eq!(s, StatusCode::OK);
        let r = client_from(ip(n))
            .post(c.server.url("/p2p/v1/announce"))
            .bearer_auth(&cred)
            .json(&serde_json::json!({ "ticket": v["ticket"] }))
            .send()
            .await
            .expect("test");
        assert_eq!(r.status(), StatusCode::OK);
        creds.push(cred);
    }
    let holders = |st: serde_json::Value| -> Vec<String> {
        st["blobs"]
            .as_array()
            .expect("test")
            .iter()
            .filter(|b| b["digest"] == c.layer.as_str())
            .flat_map(|b| b["holders"].as_array().cloned().unwrap_or_default())
            .map(|h| h["node"].as_str().expect("test").to_owned())
            .collect()
    };
    assert_eq!(holders(status(&c).await), vec!["node-2", "node-3"]);
    let withdraw = |n: u8, cred: String| {
        let url = c.server.url("/p2p/v1/withdraw");
        let layer = c.layer.clone();
        async move {
            client_from(ip(n))
                .post(url)
                .bearer_auth(cred)
                .json(&serde_json::json!({ "digest": layer }))
                .send()
                .await
                .expect("test")
                .status()
        }
    };
    // Node 2's credential from node 3's address withdraws nothing.
    assert_eq!(
        withdraw(3, creds[0].clone()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(holders(status(&c).await), vec!["node-2", "node-3"]);
    assert_eq!(withdraw(2, creds[0].clone()).await, StatusCode::NO_CONTENT);
    assert_eq!(holders(status(&c).await), vec!["node-3"]);
    // Node 3 asking who holds the blob is no longer sent to node 2.
    let peers: serde_json::Value = client_from(ip(3))
        .get(c.server.url(&format!("/p2p/v1/peers/{}", c.layer)))
        .bearer_auth(&creds[1])
        .send()
        .await
        .expect("test")
        .json()
        .await
        .expect("test");
    assert_eq!(peers["peers"], serde_json::json!([]), "{peers}");
    assert_eq!(central_metric(&c, "berth_p2p_withdrawals_total").await, 1);
}
