//! The pull-through cache with real binaries: one `berth serve` holds the images (the
//! "upstream"), a second one caches it as `docker.io`, and containerd and skopeo pull
//! through the cache by prefix and as a containerd mirror (`?ns=docker.io`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::containerd::Containerd;
use crate::harness::{
    ACCEPT_ALL, Berth, Layout, noise, parse_response, push_new_image, require_root, run,
    run_stdout, sha256_digest, skopeo_copy, skopeo_inspect, tempdir, unique,
};

/// A cache Berth in front of `upstream_url` under the name `docker.io`.
fn start_cache(upstream_url: &str, tag_ttl_secs: u64) -> Berth {
    Berth::start_with(
        &format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"{upstream_url}\"\n\
             tag_ttl_secs = {tag_ttl_secs}\nnegative_ttl_secs = 0\n"
        ),
        &[],
    )
}

/// The sum of `berth_http_requests_total` for `route`, `method` and `status` in a Berth's
/// `/metrics` (0 if that series has not appeared yet).
#[track_caller]
fn served(berth: &Berth, route: &str, method: &str, status: u16) -> u64 {
    let resp = berth.get("/metrics");
    assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
    let series = format!(
        r#"berth_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
    );
    String::from_utf8_lossy(&resp.body)
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The digest `ctr image ls` shows for `reference`.
#[track_caller]
fn listed_digest(daemon: &Containerd, namespace: &str, reference: &str) -> String {
    let ls = run_stdout(daemon.ctr(namespace).args(["image", "ls"]));
    ls.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&reference))
        .and_then(|cols| cols.get(2).map(|d| (*d).to_owned()))
        .unwrap_or_else(|| panic!("{reference} missing from `ctr image ls`:\n{ls}"))
}

/// Pulls `reference` into `namespace`, as a mirror of `docker.io` when `hosts` is given,
/// else by prefix over plain HTTP.
#[track_caller]
fn ctr_pull(
    daemon: &Containerd,
    namespace: &str,
    hosts: Option<&std::path::Path>,
    reference: &str,
) {
    let mut c = daemon.ctr(namespace);
    c.args(["image", "pull"]);
    match hosts {
        Some(dir) => c.arg("--hosts-dir").arg(dir),
        None => c.arg("--plain-http"),
    };
    run(c.arg(reference));
}

/// The cached tag as a raw client sees it: (digest, `Warning` header).
#[track_caller]
fn cached_tag(cache: &Berth, name: &str, tag: &str) -> (String, Option<String>) {
    let resp = cache.manifest(name, tag, ACCEPT_ALL);
    assert_eq!(
        resp.status, 200,
        "GET {name}:{tag} from the cache: {resp:?}"
    );
    let digest = resp
        .header("docker-content-digest")
        .unwrap_or_else(|| panic!("no Docker-Content-Digest: {resp:?}"))
        .to_owned();
    assert_eq!(
        digest,
        sha256_digest(&resp.body),
        "manifest bytes vs digest"
    );
    (digest, resp.header("warning").map(str::to_owned))
}

#[test]
fn containerd_pulls_through_the_mirror_by_ns_and_by_prefix() {
    require_root("containerd needs root");
    let upstream = Berth::start();
    let work = tempdir();
    let (_, a_digest) = push_new_image(
        &upstream,
        &work.path().join("a"),
        &[("a.txt", unique("mirror a")), ("b.bin", unique("mirror b"))],
        "library/mirror-a:v1",
    );
    let (_, b_digest) = push_new_image(
        &upstream,
        &work.path().join("b"),
        &[("c.txt", unique("mirror c"))],
        "library/mirror-b:v1",
    );
    // A 1 s TTL lets the test see the stale-tag path after the upstream is gone.
    let cache = start_cache(&format!("http://{}", upstream.addr()), 1);

    let daemon = Containerd::start();
    // `server` is a dead port: only the mirror can have answered.
    let hosts = daemon.write_hosts_toml_text(
        "docker.io",
        &format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"http://{}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n",
            cache.addr()
        ),
    );
    let by_ns = "docker.io/library/mirror-a:v1";
    let by_prefix = cache.image("docker.io/library/mirror-b:v1");
    ctr_pull(&daemon, "first", Some(&hosts), by_ns);
    assert_eq!(listed_digest(&daemon, "first", by_ns), a_digest);
    ctr_pull(&daemon, "first", None, &by_prefix);
    assert_eq!(listed_digest(&daemon, "first", &by_prefix), b_digest);

    // Both forms land in the same cached repositories, named after the upstream.
    assert_eq!(
        cached_tag(&cache, "docker.io/library/mirror-a", "v1").0,
        a_digest
    );
    assert_eq!(
        cached_tag(&cache, "docker.io/library/mirror-b", "v1").0,
        b_digest
    );
    assert!(
        served(&upstream, "blob", "GET", 200) >= 4,
        "the upstream served no blobs: the pulls did not go through it"
    );

    drop(upstream);
    // Past the TTL: every tag must be re-checked and the check fails.
    std::thread::sleep(Duration::from_millis(1500));
    let blobs_before = served(&cache, "blob", "GET", 200);
    // A fresh containerd: a second namespace of the same daemon would reuse its content
    // store and never ask for the blobs.
    drop(daemon);
    let daemon = Containerd::start();
    let hosts = daemon.write_hosts_toml_text(
        "docker.io",
        &format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"http://{}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n",
            cache.addr()
        ),
    );
    ctr_pull(&daemon, "offline", Some(&hosts), by_ns);
    assert_eq!(listed_digest(&daemon, "offline", by_ns), a_digest);
    ctr_pull(&daemon, "offline", None, &by_prefix);
    assert_eq!(listed_digest(&daemon, "offline", &by_prefix), b_digest);
    let blobs = served(&cache, "blob", "GET", 200) - blobs_before;
    assert!(
        blobs >= 5,
        "containerd fetched only {blobs} blobs from the cache with the upstream down"
    );

    for (name, digest) in [
        ("docker.io/library/mirror-a", &a_digest),
        ("docker.io/library/mirror-b", &b_digest),
    ] {
        let (got, warning) = cached_tag(&cache, name, "v1");
        assert_eq!(&got, digest, "{name}:v1 with the upstream down");
        let warning = warning.unwrap_or_else(|| panic!("{name}:v1 is stale but has no Warning"));
        assert!(
            warning.starts_with("299 "),
            "Warning of {name}:v1: {warning}"
        );
    }
    // The mirror form of the same request is judged on the same cached name.
    let resp = cache.request(
        "GET",
        "/v2/library/mirror-a/manifests/v1?ns=docker.io",
        &[("Accept", ACCEPT_ALL)],
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.header("warning").is_some(), "{resp:?}");
}

#[test]
fn tag_moved_upstream_is_seen_after_the_ttl() {
    const TTL: Duration = Duration::from_secs(4);
    let upstream = Berth::start();
    let work = tempdir();
    let (_, old) = push_new_image(
        &upstream,
        work.path(),
        &[("old.txt", unique("old"))],
        "library/moving:v1",
    );
    // Built before the clock starts so that only the push runs within the TTL.
    let next = Layout::init(work.path().join("next"));
    let new = next.build("v1", "amd64", &[("new.txt", unique("new"))]);
    assert_ne!(old, new);
    let cache = start_cache(&format!("http://{}", upstream.addr()), TTL.as_secs());
    let image = cache.docker("docker.io/library/moving:v1");
    let digest = |image: &str| skopeo_inspect(image)["Digest"].as_str().map(str::to_owned);

    let started = Instant::now();
    assert_eq!(digest(&image).as_deref(), Some(old.as_str()));
    let checked = Instant::now();
    skopeo_copy(&[], &next.oci("v1"), &upstream.docker("library/moving:v1"));
    let stale = digest(&image);
    // The cache checked the tag after `started`: still fresh only if we stayed inside TTL.
    assert!(
        started.elapsed() < TTL,
        "the machine is too slow for this TTL: {:?} passed",
        started.elapsed()
    );
    assert_eq!(
        stale.as_deref(),
        Some(old.as_str()),
        "a fresh tag was re-fetched"
    );

    let wait =
        (checked + TTL + Duration::from_millis(500)).saturating_duration_since(Instant::now());
    std::thread::sleep(wait);
    assert_eq!(
        digest(&image).as_deref(),
        Some(new.as_str()),
        "the moved tag"
    );
    // And the new image is complete in the cache, not only its manifest.
    let out = Layout::at(work.path().join("out"));
    skopeo_copy(&[], &image, &out.oci("v1"));
    assert_eq!(out.digest("v1"), new);
    for blob in next.image_blobs(&new) {
        assert_eq!(out.blob(&blob), next.blob(&blob));
    }
}

/// A TCP relay to `target` that passes requests at once and responses in 64 KiB pieces
/// with `pause` after each, so a large response takes a known minimum time. It lives as
/// long as the test process.
fn throttling_proxy(target: String, pause: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
    let addr = listener.local_addr().expect("proxy address").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut c_in, mut s_out) = (
                client.try_clone().expect("cloning a socket"),
                server.try_clone().expect("cloning a socket"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
                let _ = s_out.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if client.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            std::thread::sleep(pause);
                        }
                    }
                }
                let _ = client.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn first_byte_arrives_before_the_upstream_finishes() {
    const SIZE: usize = 16 << 20;
    let upstream = Berth::start();
    let work = tempdir();
    let (src, digest) = push_new_image(
        &upstream,
        work.path(),
        &[("big.bin", noise(SIZE))],
        "library/big:v1",
    );
    let layer = src
        .image_blobs(&digest)
        .into_iter()
        .max_by_key(|d| src.blob(d).len())
        .expect("a layer");
    let expected_len = src.blob(&layer).len();
    assert!(
        expected_len >= SIZE,
        "the layer compressed: {expected_len} bytes"
    );
    // 256 pieces of 64 KiB with 20 ms after each: at least 5 s for the blob.
    let proxy = throttling_proxy(upstream.addr().to_owned(), Duration::from_millis(20));
    let cache = start_cache(&format!("http://{proxy}"), 300);

    let mut conn = TcpStream::connect(cache.addr()).expect("connecting to the cache");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let started = Instant::now();
    write!(
        conn,
        "GET /v2/docker.io/library/big/blobs/{layer} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        cache.addr()
    )
    .expect("sending the request");
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut first_body_byte = None;
    loop {
        let n = conn.read(&mut buf).expect("reading the response");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if first_body_byte.is_none()
            && raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|end| raw.len() > end + 4)
        {
            first_body_byte = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let resp = parse_response(&raw, false).expect("a well-formed response");
    assert_eq!(resp.status, 200, "headers: {:?}", resp.headers);
    assert_eq!(resp.body.len(), expected_len);
    assert_eq!(sha256_digest(&resp.body), layer, "streamed bytes vs digest");
    let first = first_body_byte.expect("a body");
    eprintln!("16 MiB blob through a throttled upstream: first byte {first:?}, last {total:?}");
    assert!(
        total >= Duration::from_secs(3),
        "the throttle did not hold the blob back: {total:?}"
    );
    assert!(
        first < total / 4,
        "the first byte waited for the upstream: first {first:?} of {total:?}"
    );

    // Once kept, the blob is served from storage, not through the slow upstream.
    let again = Instant::now();
    let resp = cache.get(&format!("/v2/docker.io/library/big/blobs/{layer}"));
    assert_eq!(resp.status, 200);
    assert_eq!(sha256_digest(&resp.body), layer);
    assert!(
        again.elapsed() < total / 2,
        "a cached blob took {:?}",
        again.elapsed()
    );
}

#[test]
fn sixteen_cold_pulls_fetch_each_blob_once() {
    let upstream = Berth::start();
    let work = tempdir();
    // Layers of a few MiB so that the copies really overlap in time.
    let (src, digest) = push_new_image(
        &upstream,
        &work.path().join("src"),
        &[
            ("one.bin", noise(3 << 20)),
            ("two.bin", noise(2 << 20)),
            ("three.txt", unique("three").into_bytes()),
        ],
        "library/crowd:v1",
    );
    let blobs = src.image_blobs(&digest);
    let cache = start_cache(&format!("http://{}", upstream.addr()), 300);
    let before_blobs = served(&upstream, "blob", "GET", 200);
    let before_manifests = served(&upstream, "manifest", "GET", 200);

    let image = cache.docker("docker.io/library/crowd:v1");
    let copies: Vec<_> = (0..16)
        .map(|i| {
            let dest = Layout::at(work.path().join(format!("copy-{i}")));
            let image = image.clone();
            std::thread::spawn(move || {
                skopeo_copy(&[], &image, &dest.oci("v1"));
                dest
            })
        })
        .collect();
    for copy in copies {
        let dest = copy.join().expect("a skopeo copy failed");
        assert_eq!(dest.digest("v1"), digest);
        for blob in &blobs {
            assert_eq!(
                dest.blob(blob),
                src.blob(blob),
                "{blob} in {}",
                dest.dir.display()
            );
        }
    }

    let fetched = served(&upstream, "blob", "GET", 200) - before_blobs;
    assert_eq!(
        fetched,
        blobs.len() as u64,
        "16 cold pulls of {} blobs fetched {fetched} from the upstream",
        blobs.len()
    );
    let manifests = served(&upstream, "manifest", "GET", 200) - before_manifests;
    assert_eq!(manifests, 1, "the manifest was fetched {manifests} times");
}

/// An upstream reached on a port of its own (`registry.internal:5000` in real life): the
/// cache is configured with `name = "host:port"`, containerd sends `?ns=host:port`, and
/// the cached repositories live under `host_port/`.
#[test]
fn containerd_mirrors_an_upstream_with_a_port() {
    require_root("containerd needs root");
    let upstream = Berth::start();
    let work = tempdir();
    let (_, digest) = push_new_image(
        &upstream,
        &work.path().join("a"),
        &[("a.txt", unique("ported upstream"))],
        "team/app:v1",
    );
    let host = upstream.addr().to_owned();
    let prefix = host.replace(':', "_");
    let cache = Berth::start_with(
        &format!(
            "[[upstream]]\nname = \"{host}\"\nurl = \"http://{host}\"\n\
             tag_ttl_secs = 1\nnegative_ttl_secs = 0\n"
        ),
        &[],
    );
    // `server` is a dead port: only the mirror can have answered.
    let hosts_toml = format!(
        "server = \"http://127.0.0.1:1\"\n\n[host.\"http://{}\"]\n  \
         capabilities = [\"pull\", \"resolve\"]\n",
        cache.addr()
    );
    let reference = format!("{host}/team/app:v1");

    let daemon = Containerd::start();
    let hosts = daemon.write_hosts_toml_text(&host, &hosts_toml);
    ctr_pull(&daemon, "online", Some(&hosts), &reference);
    assert_eq!(listed_digest(&daemon, "online", &reference), digest);
    // Kept under the prefix, and the upstream was asked.
    assert_eq!(
        cached_tag(&cache, &format!("{prefix}/team/app"), "v1").0,
        digest
    );
    assert!(served(&upstream, "blob", "GET", 200) >= 2);
    // The mirror form, as containerd sent it, answers from the same cached name.
    let resp = cache.request(
        "GET",
        &format!("/v2/team/app/manifests/v1?ns={host}"),
        &[("Accept", ACCEPT_ALL)],
    );
    assert_eq!(resp.status, 200, "{resp:?}");

    // The upstream goes away; past the TTL a fresh containerd still pulls.
    drop(upstream);
    std::thread::sleep(Duration::from_millis(1500));
    drop(daemon);
    let daemon = Containerd::start();
    let hosts = daemon.write_hosts_toml_text(&host, &hosts_toml);
    ctr_pull(&daemon, "offline", Some(&hosts), &reference);
    assert_eq!(listed_digest(&daemon, "offline", &reference), digest);
    let (got, warning) = cached_tag(&cache, &format!("{prefix}/team/app"), "v1");
    assert_eq!(got, digest);
    assert!(
        warning.is_some_and(|w| w.starts_with("299 ")),
        "a stale tag is served with a Warning"
    );
}
