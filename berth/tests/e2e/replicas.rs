//! Two `berth serve` processes as replicas: one PostgreSQL database (`BERTH_TEST_POSTGRES_URL`,
//! a schema of their own) and one blob directory. A chunked upload moves between them, a
//! push through one pulls from the other, and a tag moved on one is seen on the other long
//! before its cache TTL (a minute here). The same replicas over one S3 bucket instead of a
//! directory: `two_replicas_share_an_s3_bucket`.

use std::time::{Duration, Instant};

use crate::harness::{
    Berth, Launch, Layout, cmd, noise, run, run_stdout, sha256_digest, skopeo_copy, skopeo_inspect,
    tempdir, unique,
};

/// A fresh schema in the test database, as a metadata URL.
pub fn schema_url() -> String {
    let base = std::env::var("BERTH_TEST_POSTGRES_URL")
        .expect("BERTH_TEST_POSTGRES_URL must point at PostgreSQL (scripts/start-postgres.sh)");
    let schema = format!("e{}", &sha256_digest(unique("schema").as_bytes())[7..23]);
    run(cmd("psql")
        .arg(&base)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE SCHEMA {schema}")));
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

/// `curl` against `addr`: status code and headers.
fn curl(addr: &str, args: &[&str], path: &str) -> String {
    run_stdout(
        cmd("curl")
            .args([
                "--silent",
                "--show-error",
                "--dump-header",
                "-",
                "--output",
                "/dev/null",
            ])
            .args(args)
            .arg(format!("http://{addr}{path}")),
    )
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn two_replicas_share_uploads_pushes_and_tag_moves() {
    let url = schema_url();
    let shared = tempdir();
    let config = format!("[metadata]\nurl = \"{url}\"\n[cache]\nttl_ms = 60000\n");
    let launch = || Launch {
        data_dir: Some(shared.path().to_owned()),
        ..Launch::default()
    };
    let a = Berth::start_launched(&config, &[], launch());
    let b = Berth::start_launched(&config, &[], launch());

    // A chunked upload started on a, continued on b, then a, finished on b.
    let work = tempdir();
    let data = noise(3 << 20);
    let digest = sha256_digest(&data);
    let started = curl(a.addr(), &["-X", "POST"], "/v2/team-a/big/blobs/uploads/");
    let mut location = header(&started, "location").expect("Location").to_owned();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let file = work.path().join(format!("chunk{i}"));
        std::fs::write(&file, chunk).expect("chunk");
        let offset = i * (1 << 20);
        let range = format!("Content-Range: {}-{}", offset, offset + chunk.len() - 1);
        let server = if i % 2 == 0 { &a } else { &b };
        let at = format!("@{}", file.display());
        let resp = curl(
            server.addr(),
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                &range,
                "--data-binary",
                &at,
            ],
            &location,
        );
        assert!(
            resp.starts_with("HTTP/1.1 202"),
            "chunk {i} on replica {}: {resp}",
            i % 2
        );
        location = header(&resp, "location").expect("Location").to_owned();
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = curl(
        b.addr(),
        &["-X", "PUT"],
        &format!("{location}{sep}digest={digest}"),
    );
    assert!(done.starts_with("HTTP/1.1 201"), "{done}");
    assert_eq!(a.get(&format!("/v2/team-a/big/blobs/{digest}")).body, data);

    // Pushed through b, pulled from a at once.
    let src = Layout::init(work.path().join("src"));
    let first = src.build("v1", "amd64", &[("f", unique("first"))]);
    skopeo_copy(&[], &src.oci("v1"), &b.docker("team-a/app:v1"));
    assert_eq!(
        skopeo_inspect(&a.docker("team-a/app:v1"))["Digest"],
        first.as_str()
    );
    // b has read the tag too (and caches it for a minute).
    assert_eq!(
        skopeo_inspect(&b.docker("team-a/app:v1"))["Digest"],
        first.as_str()
    );

    // Moved through a: b follows within seconds, not after its one-minute TTL.
    let second = src.build("v2", "amd64", &[("f", unique("second"))]);
    skopeo_copy(&[], &src.oci("v2"), &a.docker("team-a/app:v1"));
    let start = Instant::now();
    loop {
        let seen = b.manifest("team-a/app", "v1", crate::harness::OCI_MANIFEST);
        if seen.header("docker-content-digest") == Some(second.as_str()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replica b still serves the old tag after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two replicas with data directories of their own, sharing only PostgreSQL and one S3
/// bucket prefix: a chunked upload starts on a (POST, PATCH), continues on b (PATCH, and
/// the PUT with the last chunk) and pulls from a; an image pushed through b pulls from a.
#[test]
fn two_replicas_share_an_s3_bucket() {
    use crate::s3::{S3_ENV, bucket_objects, s3_storage_toml, unique_prefix};

    let url = schema_url();
    let prefix = unique_prefix("e2e-replicas");
    let config = format!(
        "[metadata]\nurl = \"{url}\"\n{}",
        s3_storage_toml(&prefix, "")
    );
    let a = Berth::start_with(&config, S3_ENV);
    let b = Berth::start_with(&config, S3_ENV);

    // 6 MiB on a (over S3's 5 MiB part minimum), 1 MiB on b, 2 MiB with b's PUT: the
    // finish copies the first chunk inside S3 and streams the small ones.
    let work = tempdir();
    let data = noise(9 << 20);
    let digest = sha256_digest(&data);
    let chunks = [(&a, 0, 6 << 20), (&b, 6 << 20, 7 << 20)];
    let started = curl(a.addr(), &["-X", "POST"], "/v2/team-a/big/blobs/uploads/");
    let mut location = header(&started, "location").expect("Location").to_owned();
    for (i, (server, from, to)) in chunks.into_iter().enumerate() {
        let file = work.path().join(format!("chunk{i}"));
        std::fs::write(&file, &data[from..to]).expect("chunk");
        let range = format!("Content-Range: {from}-{}", to - 1);
        let at = format!("@{}", file.display());
        let resp = curl(
            server.addr(),
            &[
                "-X",
                "PATCH",
                // no `100 Continue` before the answer
                "-H",
                "Expect:",
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                &range,
                "--data-binary",
                &at,
            ],
            &location,
        );
        assert!(resp.starts_with("HTTP/1.1 202"), "chunk {i}: {resp}");
        location = header(&resp, "location").expect("Location").to_owned();
    }
    let last = work.path().join("last");
    std::fs::write(&last, &data[7 << 20..]).expect("last chunk");
    let sep = if location.contains('?') { '&' } else { '?' };
    let at = format!("@{}", last.display());
    let range = format!("Content-Range: {}-{}", 7 << 20, data.len() - 1);
    let done = curl(
        b.addr(),
        &[
            "-X",
            "PUT",
            "-H",
            "Expect:",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            &range,
            "--data-binary",
            &at,
        ],
        &format!("{location}{sep}digest={digest}"),
    );
    assert!(done.starts_with("HTTP/1.1 201"), "{done}");
    let pulled = a.get(&format!("/v2/team-a/big/blobs/{digest}"));
    assert_eq!(pulled.status, 200);
    assert_eq!(sha256_digest(&pulled.body), digest);
    let ranged = a.request(
        "GET",
        &format!("/v2/team-a/big/blobs/{digest}"),
        &[("Range", "bytes=6291450-6291460")],
    );
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, data[6_291_450..=6_291_460]);
    let objects = bucket_objects(&prefix, "");
    assert!(
        objects.iter().all(|(k, _)| k.starts_with("blobs/")),
        "upload objects left behind: {objects:?}"
    );

    // Pushed through b, pulled from a.
    let src = Layout::init(work.path().join("src"));
    let image = src.build("v1", "amd64", &[("f", unique("over S3"))]);
    skopeo_copy(&[], &src.oci("v1"), &b.docker("team-a/app:v1"));
    assert_eq!(
        skopeo_inspect(&a.docker("team-a/app:v1"))["Digest"],
        image.as_str()
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &a.docker("team-a/app:v1"), &back.oci("v1"));
    crate::harness::assert_same_image_blobs(&src, &back, &image);
}

/// Two replicas over PostgreSQL and one S3 bucket: replica b collects garbage on its
/// `[gc]` schedule (every second, a 2 s grace, no rollback window) while images with tags
/// that keep moving are pushed through replica a; afterwards both replicas serve every tag
/// complete, and b's collections really swept. Then eight clients push different
/// manifests to one new immutable tag through both replicas at once: exactly one wins.
#[test]
fn gc_beside_pushes_and_immutable_races_across_replicas_over_s3() {
    use crate::s3::{S3_ENV, s3_storage_toml, unique_prefix};

    let url = schema_url();
    let prefix = unique_prefix("e2e-gc");
    let config = format!(
        "[metadata]\nurl = \"{url}\"\n{}",
        s3_storage_toml(&prefix, "")
    );
    let a = Berth::start_with(&config, S3_ENV);
    let b = Berth::start_with(
        &format!("{config}\n[gc]\ninterval_secs = 1\ngrace_secs = 2\nrollback_window_secs = 0\n"),
        S3_ENV,
    );
    let counter = |name: &str| -> u64 {
        let text = String::from_utf8_lossy(&b.get("/metrics").body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };

    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let mut last = std::collections::HashMap::new();
    let started = Instant::now();
    let mut pushed = 0;
    while started.elapsed() < Duration::from_secs(20) && pushed < 12 {
        let tag = format!("t{}", pushed % 2);
        let digest = src.build(
            &tag,
            "amd64",
            &[("f", unique(&format!("gc race {pushed}")))],
        );
        skopeo_copy(&[], &src.oci(&tag), &a.docker(&format!("team/app:{tag}")));
        last.insert(tag, digest);
        pushed += 1;
        // Long enough that what the tags left gets older than the grace period.
        std::thread::sleep(Duration::from_millis(700));
    }
    // Let the schedule catch up with the last pushes' leftovers.
    let deadline = Instant::now() + Duration::from_secs(15);
    while counter("berth_gc_manifests_deleted_total") < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (runs, swept) = (
        counter("berth_gc_runs_total"),
        counter("berth_gc_manifests_deleted_total"),
    );
    for (tag, digest) in &last {
        for server in [&a, &b] {
            let got = skopeo_inspect(&server.docker(&format!("team/app:{tag}")));
            assert_eq!(got["Digest"].as_str(), Some(digest.as_str()), "{tag}");
            let back = Layout::at(work.path().join(format!(
                "back-{tag}-{}",
                server.addr().replace(['.', ':'], "-")
            )));
            skopeo_copy(
                &[],
                &server.docker(&format!("team/app:{tag}")),
                &back.oci(tag),
            );
            crate::harness::assert_same_image_blobs(&src, &back, digest);
        }
    }
    assert!(runs >= 3, "{runs} collections");
    assert!(swept > 0, "no collection swept anything in {runs} runs");

    // Eight different manifests for one new semver tag (immutable by default), half
    // through each replica, all at once.
    let config_blob = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";
    let cfg = work.path().join("config.json");
    std::fs::write(&cfg, config_blob).expect("config");
    let cfg_digest = sha256_digest(config_blob);
    let resp = curl(
        a.addr(),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", cfg.display()),
        ],
        &format!("/v2/team/app/blobs/uploads/?digest={cfg_digest}"),
    );
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg_digest}","size":{}}},"layers":[],"annotations":{{"racer":"{i}"}}}}"#,
                config_blob.len()
            );
            let file = work.path().join(format!("m{i}.json"));
            std::fs::write(&file, manifest).expect("manifest");
            let addr = if i % 2 == 0 { a.addr() } else { b.addr() }.to_owned();
            std::thread::spawn(move || {
                curl(
                    &addr,
                    &[
                        "-X",
                        "PUT",
                        "-H",
                        "Content-Type: application/vnd.oci.image.manifest.v1+json",
                        "--data-binary",
                        &format!("@{}", file.display()),
                    ],
                    "/v2/team/app/manifests/1.0.0",
                )
            })
        })
        .collect();
    let answers: Vec<String> = racers
        .into_iter()
        .map(|t| t.join().expect("racer"))
        .collect();
    let won = answers
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 201"))
        .count();
    let denied = answers
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 403"))
        .count();
    assert_eq!((won, denied), (1, 7), "{answers:#?}");
}

/// Four `berth migrate` processes (the init containers of four replicas) started at the
/// same moment on a database of their own: none fails, and every step is applied and
/// recorded once. On an empty database, and on one an older Berth left at version 5.
#[test]
fn four_migrate_processes_at_once_apply_the_schema_once() {
    let older_steps = [
        include_str!("../../../berth-meta/migrations/postgres/0001_core.sql"),
        include_str!("../../../berth-meta/migrations/postgres/0002_access.sql"),
        include_str!("../../../berth-meta/migrations/postgres/0003_tag_history.sql"),
        include_str!("../../../berth-meta/migrations/postgres/0004_gc.sql"),
        include_str!("../../../berth-meta/migrations/postgres/0005_quota.sql"),
    ];
    for older in [false, true] {
        let cluster = berth_testkit::pg::PgCluster::start();
        if older {
            cluster.sql(
                "berth",
                "CREATE TABLE berth_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            );
            for (i, step) in older_steps.iter().enumerate() {
                cluster.sql("berth", step);
                cluster.sql(
                    "berth",
                    &format!("INSERT INTO berth_schema VALUES ({}, 0)", i + 1),
                );
            }
        }
        let dir = tempdir();
        let children: Vec<_> = (0..4)
            .map(|i| {
                std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
                    .args(["migrate", "--data-dir"])
                    .arg(dir.path().join(format!("d{i}")))
                    .args(["--metadata-url", &cluster.url()])
                    .output_async()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().expect("berth migrate");
            assert!(
                out.status.success(),
                "older = {older}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let counts = cluster.sql(
            "berth",
            "SELECT count(*) || ' ' || count(DISTINCT version) || ' ' || max(version) FROM berth_schema",
        );
        let known = std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../berth-meta/migrations/postgres"
        ))
        .expect("migrations")
        .count();
        assert_eq!(
            counts,
            format!("{known} {known} {known}"),
            "older = {older}"
        );
    }
}

/// Starts a command with its output captured, without waiting for it.
trait Spawn {
    fn output_async(&mut self) -> std::process::Child;
}

impl Spawn for std::process::Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn berth")
    }
}
