//! Blobs in an S3 bucket (`BERTH_TEST_S3_URL`, e.g. moto from `scripts/start-s3.sh`): a
//! skopeo push and pull through `[storage] kind = "s3"`, the objects checked in the
//! bucket through Berth's own client, and blob GETs redirected to presigned URLs.

use crate::harness::{
    Berth, Layout, assert_same_image_blobs, cmd, push_new_image, run_stdout, sha256_digest,
    skopeo_copy, tempdir, unique,
};

/// A key prefix of its own in the test bucket, so tests never see each other's objects.
pub fn unique_prefix(label: &str) -> String {
    format!(
        "{label}-{}/",
        &sha256_digest(unique(label).as_bytes())[7..23]
    )
}

/// `[storage]` for the test bucket under `prefix`, plus `extra` lines. Credentials come
/// from the environment ([`s3_env`]), as in a cluster.
pub fn s3_storage_toml(prefix: &str, extra: &str) -> String {
    let berth_storage::S3Config {
        endpoint, bucket, ..
    } = berth_testkit::s3_config(prefix);
    format!(
        "[storage]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\n\
         prefix = \"{prefix}\"\npath_style = true\n{extra}"
    )
}

/// The server's S3 credentials (the test server checks none, but Berth signs with them).
pub const S3_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "berth-e2e"),
    ("AWS_SECRET_ACCESS_KEY", "berth-e2e-secret"),
    ("AWS_REGION", "us-east-1"),
];

/// The objects under `rel` in the bucket below `prefix`, read with Berth's own client.
pub fn bucket_objects(prefix: &str, rel: &str) -> Vec<(String, u64)> {
    let config = berth_testkit::s3_config(prefix);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = berth_storage::S3Store::new(config).await.expect("open S3");
        store.list_raw(rel).await.expect("list")
    })
}

#[test]
fn s3_storage_push_pull_and_presigned_redirects() {
    let prefix = unique_prefix("e2e-s3");
    // Credentials in the file this time (the other tests use the environment).
    let secret = sha256_digest(unique("s3-secret").as_bytes())[7..39].to_owned();
    let config = s3_storage_toml(
        &prefix,
        &format!(
            "redirect_blob_gets = true\nredirect_expiry_secs = 120\n\
             access_key_id = \"berth-e2e\"\nsecret_access_key = \"{secret}\"\n"
        ),
    );
    let berth = Berth::start_with(&config, &[]);
    let work = tempdir();
    let big = crate::harness::noise(7 << 20);
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[
            ("hello.txt", unique("hello from S3").into_bytes()),
            ("big", big),
        ],
        "e2e/s3:v1",
    );

    // Every blob of the image is an object of the right size; no upload is left behind;
    // nothing went to the data directory.
    let objects = bucket_objects(&prefix, "");
    let blobs = src.image_blobs(&digest);
    for blob in &blobs {
        let hex = blob.strip_prefix("sha256:").expect("sha256");
        let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        let size = src.blob(blob).len() as u64;
        assert!(
            objects.contains(&(key.clone(), size)),
            "{key} ({size} bytes) not in the bucket: {objects:?}"
        );
    }
    assert!(
        objects.iter().all(|(k, _)| k.starts_with("blobs/")),
        "leftovers: {objects:?}"
    );
    let local = berth.data_dir().join("blobs");
    assert!(
        std::fs::read_dir(&local).map_or(true, |mut d| d.next().is_none()),
        "blobs written to {}",
        local.display()
    );

    // skopeo follows the redirects and gets identical bytes.
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &berth.docker("e2e/s3:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);

    // A blob GET is a 307 to a presigned URL that serves the bytes without credentials.
    let layer = blobs.last().expect("a layer");
    let resp = berth.get(&format!("/v2/e2e/s3/blobs/{layer}"));
    assert_eq!(resp.status, 307, "{resp:?}");
    let location = resp.header("location").expect("Location").to_owned();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(location.contains("X-Amz-Expires=120"), "{location}");
    let out = work.path().join("fetched");
    run_stdout(
        cmd("curl")
            .args(["--silent", "--show-error", "--fail", "--output"])
            .arg(&out)
            .arg(&location),
    );
    let fetched = std::fs::read(&out).expect("fetched blob");
    assert_eq!(sha256_digest(&fetched), *layer);
    // HEAD is answered here, and a blob this repository does not link is not redirected.
    assert_eq!(
        berth
            .request("HEAD", &format!("/v2/e2e/s3/blobs/{layer}"), &[])
            .status,
        200
    );
    assert_eq!(
        berth.get(&format!("/v2/e2e/other/blobs/{layer}")).status,
        404
    );
    assert!(!berth.log().contains(&secret), "the secret was logged");
}

/// `berth migrate-storage` copies a filesystem store into a bucket; a server over the same
/// metadata with `[storage] kind = "s3"` then serves the image; a second run copies nothing.
#[test]
fn migrate_storage_from_fs_to_s3() {
    let work = tempdir();
    let data = work.path().join("data");
    let launch = crate::harness::Launch {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    let berth = Berth::start_launched("", &[], launch.clone());
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[("f", unique("to migrate"))],
        "e2e/migrate:v1",
    );
    let prefix = unique_prefix("e2e-migrate");
    let target = work.path().join("target.toml");
    std::fs::write(&target, s3_storage_toml(&prefix, "")).expect("target config");

    let out = run_stdout(
        berth
            .cli()
            .envs(S3_ENV.iter().copied())
            .arg("migrate-storage")
            .arg("--to")
            .arg(&target),
    );
    let blobs = src.image_blobs(&digest);
    assert!(
        out.starts_with(&format!("copied {} blobs", blobs.len())),
        "{out}"
    );
    let objects = bucket_objects(&prefix, "blobs/");
    assert_eq!(objects.len(), blobs.len(), "{objects:?}");
    let again = run_stdout(
        berth
            .cli()
            .envs(S3_ENV.iter().copied())
            .arg("migrate-storage")
            .arg("--to")
            .arg(&target),
    );
    assert!(again.starts_with("copied 0 blobs (0 bytes"), "{again}");
    assert!(
        again.contains(&format!("{} already in the target", blobs.len())),
        "{again}"
    );

    // The same metadata (the SQLite file in the data directory), blobs from the bucket.
    drop(berth);
    std::fs::remove_dir_all(data.join("blobs")).expect("remove the old blobs");
    let moved = Berth::start_launched(&s3_storage_toml(&prefix, ""), S3_ENV, launch);
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &moved.docker("e2e/migrate:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);
}

/// The embedded default moved to S3 + PostgreSQL in one command: blobs into the bucket and
/// every metadata table into a new database schema; a server started on the target alone
/// (a fresh data directory) serves the image, its tag history and its users' logins.
#[test]
fn migrate_storage_from_the_embedded_default_to_s3_and_postgres() {
    let work = tempdir();
    let data = work.path().join("data");
    let berth = Berth::start_launched(
        "",
        &[],
        crate::harness::Launch {
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[("f", unique("whole registry"))],
        "e2e/whole:stable",
    );
    run_stdout(berth.cli().args(["tag", "delete", "e2e/whole:stable"]));
    skopeo_copy(&[], &src.oci("v1"), &berth.docker("e2e/whole:stable"));
    drop(berth);

    let prefix = unique_prefix("e2e-whole");
    let url = crate::replicas::schema_url();
    let target_config = format!(
        "[metadata]\nurl = \"{url}\"\n{}",
        s3_storage_toml(&prefix, "")
    );
    let target = work.path().join("target.toml");
    std::fs::write(&target, &target_config).expect("target config");
    let out = run_stdout(
        cmd(env!("CARGO_BIN_EXE_berth"))
            .envs(S3_ENV.iter().copied())
            .args(["migrate-storage", "--data-dir"])
            .arg(&data)
            .arg("--to")
            .arg(&target),
    );
    assert!(out.contains("copied the metadata"), "{out}");

    let moved = Berth::start_with(&target_config, S3_ENV);
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &moved.docker("e2e/whole:stable"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);
    // The tag's history came along: created, deleted, created again.
    let history = run_stdout(
        moved
            .cli()
            .args(["tag", "history", "e2e/whole:stable", "--json"]),
    );
    assert_eq!(history.lines().count(), 3, "{history}");
}

/// With encryption on: a skopeo push and pull compare digests; `berth migrate-storage`
/// copies the sealed blobs into a bucket in their stored form (checked by opening them on
/// the way), no object in the bucket holds any of the image's plaintext, and a server over
/// the same metadata on the bucket serves the image to skopeo.
#[test]
fn migrate_storage_of_sealed_blobs_from_fs_to_s3() {
    let work = tempdir();
    let data = work.path().join("data");
    let launch = crate::harness::Launch {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    let encryption = "[encryption]\nactive = \"e2e\"\n[[encryption.key]]\nid = \"e2e\"\nenv = \"BERTH_KEK_E2E\"\n";
    let kek = ("BERTH_KEK_E2E", "5e".repeat(32));
    let env = [(kek.0, kek.1.as_str())];
    let berth = Berth::start_launched(encryption, &env, launch.clone());
    let big = crate::harness::noise(3 << 20);
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[
            ("f", unique("sealed, then migrated").into_bytes()),
            ("big", big),
        ],
        "e2e/sealed:v1",
    );
    let pulled = Layout::at(work.path().join("pulled"));
    skopeo_copy(&[], &berth.docker("e2e/sealed:v1"), &pulled.oci("v1"));
    assert_same_image_blobs(&src, &pulled, &digest);

    let prefix = unique_prefix("e2e-sealed");
    let target = work.path().join("target.toml");
    std::fs::write(&target, s3_storage_toml(&prefix, encryption)).expect("target config");
    let out = run_stdout(
        berth
            .cli()
            .envs(S3_ENV.iter().copied())
            .arg("migrate-storage")
            .arg("--to")
            .arg(&target),
    );
    let blobs = src.image_blobs(&digest);
    assert!(
        out.starts_with(&format!("copied {} blobs", blobs.len())),
        "{out}"
    );
    assert!(out.contains(" 0 failed"), "{out}");
    // Stored sealed: 28 bytes more per 64 KiB segment, and none of the plaintext.
    let objects = bucket_objects(&prefix, "blobs/");
    assert_eq!(objects.len(), blobs.len(), "{objects:?}");
    let config = berth_testkit::s3_config(&prefix);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stored: Vec<Vec<u8>> = rt.block_on(async {
        let store = berth_storage::S3Store::new(config).await.expect("open S3");
        let mut out = Vec::new();
        for (key, _) in &objects {
            out.push(
                store
                    .get_raw(key)
                    .await
                    .expect("get")
                    .expect("object")
                    .to_vec(),
            );
        }
        out
    });
    for blob in &blobs {
        let plain = src.blob(blob);
        let segments = (plain.len() as u64).div_ceil(65536).max(1);
        let hex = blob.strip_prefix("sha256:").expect("sha256");
        let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        assert!(
            objects.contains(&(key.clone(), plain.len() as u64 + 28 * segments)),
            "{key} not stored sealed: {objects:?}"
        );
        let marker = &plain[plain.len() / 2..(plain.len() / 2 + 48).min(plain.len())];
        for s in &stored {
            assert!(
                marker.len() < 16 || !s.windows(marker.len()).any(|w| w == marker),
                "plaintext of {blob} in the bucket"
            );
        }
    }

    drop(berth);
    std::fs::remove_dir_all(data.join("blobs")).expect("remove the old blobs");
    let mut env = S3_ENV.to_vec();
    env.push((kek.0, kek.1.as_str()));
    let moved = Berth::start_launched(&s3_storage_toml(&prefix, encryption), &env, launch);
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &moved.docker("e2e/sealed:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);
}

/// `[encryption]` with one key `id` from the environment variable `var`.
fn encryption_toml(id: &str, var: &str) -> String {
    format!("[encryption]\nactive = \"{id}\"\n[[encryption.key]]\nid = \"{id}\"\nenv = \"{var}\"\n")
}

/// Every object under `prefix` in the bucket (blobs, uploads, anything), with its bytes.
fn bucket_contents(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let config = berth_testkit::s3_config(prefix);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = berth_storage::S3Store::new(config).await.expect("open S3");
        let mut out = Vec::new();
        for (key, _) in store.list_raw("").await.expect("list") {
            let bytes = store.get_raw(&key).await.expect("get").expect("object");
            out.push((key, bytes.to_vec()));
        }
        out
    })
}

/// Pieces of each blob's plaintext (start, middle, end) and `extra`; panics if any bucket
/// object under `prefix` holds one.
fn assert_no_plaintext_in_bucket(prefix: &str, src: &Layout, blobs: &[String], extra: &[u8]) {
    let mut markers: Vec<Vec<u8>> = Vec::new();
    if !extra.is_empty() {
        markers.push(extra.to_vec());
    }
    for blob in blobs {
        let plain = src.blob(blob);
        for at in [0, plain.len() / 2, plain.len().saturating_sub(48)] {
            let piece = &plain[at..(at + 48).min(plain.len())];
            if piece.len() >= 24 {
                markers.push(piece.to_vec());
            }
        }
    }
    // Indexed by their first 8 bytes, so a scan is one lookup per byte (debug builds).
    let mut by_start: std::collections::HashMap<[u8; 8], Vec<&[u8]>> = Default::default();
    for m in &markers {
        assert!(m.len() >= 16, "marker too short");
        let start: [u8; 8] = m[..8].try_into().expect("8 bytes");
        by_start.entry(start).or_default().push(m);
    }
    for (key, bytes) in bucket_contents(prefix) {
        for i in 0..bytes.len().saturating_sub(7) {
            let start: [u8; 8] = bytes[i..i + 8].try_into().expect("8 bytes");
            if let Some(found) = by_start.get(&start)
                && let Some(m) = found.iter().find(|m| bytes[i..].starts_with(m))
            {
                panic!(
                    "plaintext ({:?}...) in the bucket object {key}",
                    String::from_utf8_lossy(&m[..16])
                );
            }
        }
    }
}

/// The blob objects of the bucket under `prefix`: each must be the sealed size of one of
/// `blobs` (28 bytes more per 64 KiB segment).
fn assert_stored_sealed(prefix: &str, src: &Layout, blobs: &[String]) {
    let objects = bucket_objects(prefix, "blobs/");
    for (key, size) in &objects {
        let blob = blobs
            .iter()
            .find(|b| key.ends_with(b.strip_prefix("sha256:").expect("sha256")))
            .unwrap_or_else(|| panic!("{key} is none of the image's blobs"));
        let plain = src.blob(blob).len() as u64;
        assert_eq!(
            *size,
            plain + 28 * plain.div_ceil(65536).max(1),
            "{key} not stored sealed"
        );
    }
}

/// A plaintext registry on the filesystem migrated into a bucket with `[encryption]`, the
/// metadata store (the SQLite file) shared, the source server running throughout. The
/// first run aborts at `migrate_seal_switch` (one blob sealed into the bucket, its key row
/// still `converting2`): only sealed bytes are in the bucket. The next run finishes that
/// blob without sealing it again (its object is byte for byte the same) and seals the
/// rest; a third copies nothing. No object in the bucket holds any plaintext, `keys
/// status` counts every blob, `fsck` is clean, the source server still serves its
/// plaintext copies, and a server on the target serves the image to skopeo.
#[test]
fn migrate_storage_seals_plaintext_blobs_into_an_encrypted_bucket_and_resumes() {
    let work = tempdir();
    let data = work.path().join("data");
    let launch = crate::harness::Launch {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    let berth = Berth::start_launched("", &[], launch.clone());
    // The first file's path is the image's command, so it is in the config blob as text.
    let marker = format!(
        "marker-{}",
        &sha256_digest(unique("migrate-marker").as_bytes())[7..39]
    );
    let big = crate::harness::noise(3 << 20);
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[
            (
                marker.as_str(),
                unique("plaintext, then sealed").into_bytes(),
            ),
            ("big", big),
        ],
        "e2e/sealmig:v1",
    );
    let blobs = src.image_blobs(&digest);
    assert!(
        blobs
            .iter()
            .any(|b| String::from_utf8_lossy(&src.blob(b)).contains(&marker)),
        "the marker is in no blob's plaintext"
    );

    let prefix = unique_prefix("e2e-sealmig");
    let kek = ("BERTH_KEK_E2E", "3c".repeat(32));
    let target_config = s3_storage_toml(&prefix, &encryption_toml("e2e", "BERTH_KEK_E2E"));
    let target = work.path().join("target.toml");
    std::fs::write(&target, &target_config).expect("target config");
    let migrate = |failpoints: Option<&str>| {
        let mut c = berth.cli();
        c.envs(S3_ENV.iter().copied())
            .env(kek.0, &kek.1)
            .arg("migrate-storage")
            .arg("--to")
            .arg(&target);
        match failpoints {
            Some(f) => c.env("BERTH_FAILPOINTS", f),
            None => c.env_remove("BERTH_FAILPOINTS"),
        };
        c
    };

    // Aborted after the first blob was sealed into the bucket, before its switch.
    crate::harness::run_fails(&mut migrate(Some("migrate_seal_switch=abort")));
    let first = bucket_objects(&prefix, "blobs/");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_stored_sealed(&prefix, &src, &blobs);
    assert_no_plaintext_in_bucket(&prefix, &src, &blobs, marker.as_bytes());
    let first_bytes = bucket_contents(&prefix)
        .into_iter()
        .find(|(k, _)| *k == first[0].0)
        .expect("the first object")
        .1;
    let status = |c: &mut std::process::Command| {
        run_stdout(
            c.envs(S3_ENV.iter().copied())
                .env(kek.0, &kek.1)
                .env("BERTH_CONFIG", &target)
                .args(["keys", "status"]),
        )
    };
    let after_crash = status(&mut berth.cli());
    assert!(
        after_crash.contains("e2e (active): 1 blob data keys"),
        "{after_crash}"
    );

    // Resumed: the first blob is checked and switched, not sealed again; the rest copied.
    let out = run_stdout(&mut migrate(None));
    assert!(
        out.starts_with(&format!("copied {} blobs", blobs.len() - 1)),
        "{out}"
    );
    assert!(out.contains("1 already in the target, 0 failed"), "{out}");
    assert!(
        out.contains("refused at startup from now on"),
        "no word about the shared store: {out}"
    );
    let again = bucket_contents(&prefix);
    assert_eq!(
        again.iter().find(|(k, _)| *k == first[0].0).map(|o| &o.1),
        Some(&first_bytes),
        "the blob sealed before the crash was sealed again"
    );
    assert_eq!(bucket_objects(&prefix, "blobs/").len(), blobs.len());
    assert_stored_sealed(&prefix, &src, &blobs);
    assert_no_plaintext_in_bucket(&prefix, &src, &blobs, marker.as_bytes());
    let third = run_stdout(&mut migrate(None));
    assert!(third.starts_with("copied 0 blobs (0 bytes"), "{third}");
    assert!(
        third.contains(&format!("{} already in the target, 0 failed", blobs.len())),
        "{third}"
    );
    let counted = status(&mut berth.cli());
    assert!(
        counted.contains(&format!("e2e (active): {} blob data keys", blobs.len())),
        "{counted}"
    );
    let fsck = run_stdout(
        berth
            .cli()
            .envs(S3_ENV.iter().copied())
            .env(kek.0, &kek.1)
            .env("BERTH_CONFIG", &target)
            .arg("fsck"),
    );
    assert!(fsck.contains("result: clean"), "{fsck}");

    // The source server (no keyring) still serves its plaintext copies.
    let pulled = Layout::at(work.path().join("pulled"));
    skopeo_copy(&[], &berth.docker("e2e/sealmig:v1"), &pulled.oci("v1"));
    assert_same_image_blobs(&src, &pulled, &digest);

    // The same metadata, blobs from the bucket, sealed.
    drop(berth);
    std::fs::remove_dir_all(data.join("blobs")).expect("remove the old blobs");
    let mut env = S3_ENV.to_vec();
    env.push((kek.0, kek.1.as_str()));
    let moved = Berth::start_launched(&target_config, &env, launch);
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &moved.docker("e2e/sealmig:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);
}

/// The embedded default (filesystem, SQLite, no encryption) moved to S3 + PostgreSQL with
/// `[encryption]` in one command: the blobs are sealed into the bucket with their data keys
/// in the new database, then every other table is copied beside them; a run aborted at
/// `migrate_seal_switch` (before the metadata copy) is finished by the next. A server on the
/// target alone serves the image; `keys status` counts every blob; `fsck` is clean; no
/// object holds plaintext.
#[test]
fn migrate_storage_seals_into_an_encrypted_bucket_with_a_new_postgres() {
    let work = tempdir();
    let data = work.path().join("data");
    let berth = Berth::start_launched(
        "",
        &[],
        crate::harness::Launch {
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[
            (
                "f",
                unique("plaintext, into PostgreSQL and a sealed bucket").into_bytes(),
            ),
            ("big", crate::harness::noise(1 << 20)),
        ],
        "e2e/sealpg:v1",
    );
    let blobs = src.image_blobs(&digest);
    drop(berth);

    let prefix = unique_prefix("e2e-sealpg");
    let url = crate::replicas::schema_url();
    let kek = ("BERTH_KEK_E2E", "a7".repeat(32));
    let target_config = format!(
        "[metadata]\nurl = \"{url}\"\n{}{}",
        s3_storage_toml(&prefix, ""),
        encryption_toml("pg", "BERTH_KEK_E2E")
    );
    let target = work.path().join("target.toml");
    std::fs::write(&target, &target_config).expect("target config");
    let migrate = |failpoints: &str| {
        let mut c = cmd(env!("CARGO_BIN_EXE_berth"));
        c.envs(S3_ENV.iter().copied())
            .env(kek.0, &kek.1)
            .env("BERTH_FAILPOINTS", failpoints)
            .args(["migrate-storage", "--data-dir"])
            .arg(&data)
            .arg("--to")
            .arg(&target);
        c
    };
    // A crash before the first blob's switch, so before the metadata copy: the new
    // database holds one `converting2` key row and nothing else; the next run finishes.
    crate::harness::run_fails(&mut migrate("migrate_seal_switch=abort"));
    assert_eq!(bucket_objects(&prefix, "blobs/").len(), 1);
    let out = run_stdout(&mut migrate(""));
    assert!(
        out.starts_with(&format!("copied {} blobs", blobs.len() - 1)),
        "{out}"
    );
    assert!(
        out.contains("1 already in the target, 0 failed") && out.contains("copied the metadata"),
        "{out}"
    );
    assert_stored_sealed(&prefix, &src, &blobs);
    assert_no_plaintext_in_bucket(&prefix, &src, &blobs, b"plaintext, into PostgreSQL");

    let mut env = S3_ENV.to_vec();
    env.push((kek.0, kek.1.as_str()));
    let moved = Berth::start_with(&target_config, &env);
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &moved.docker("e2e/sealpg:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);
    let status = run_stdout(moved.cli().args(["keys", "status"]));
    assert!(
        status.contains(&format!("pg (active): {} blob data keys", blobs.len())),
        "{status}"
    );
    let fsck = run_stdout(moved.cli().arg("fsck"));
    assert!(fsck.contains("result: clean"), "{fsck}");
}

/// What `migrate-storage` refuses, each before it writes anything to the target: from a
/// store holding sealed blobs to a target without `[encryption]` (it does not decrypt); to
/// a target whose keyring lacks the key in use, or holds another key under its id; and
/// sealing plaintext blobs into a target that shares the metadata store with a current
/// store that has `[encryption]` (its server would read its plaintext copies as sealed);
/// an encrypted target that is the current blob store itself (`berth encrypt`'s job).
/// Each message names what to do; after `berth encrypt` the same migration runs.
#[test]
fn migrate_storage_refuses_targets_that_could_not_read_the_blobs() {
    let work = tempdir();
    let data = work.path().join("data");
    let launch = crate::harness::Launch {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    // One image pushed as plaintext, one after encryption was turned on.
    let berth = Berth::start_launched("", &[], launch.clone());
    std::fs::create_dir_all(work.path().join("one")).expect("mkdir");
    std::fs::create_dir_all(work.path().join("two")).expect("mkdir");
    let (one, one_digest) = push_new_image(
        &berth,
        &work.path().join("one"),
        &[("f", unique("plain"))],
        "e2e/refuse:plain",
    );
    drop(berth);
    let kek = ("BERTH_KEK_E2E", "c4".repeat(32));
    let env = [(kek.0, kek.1.as_str())];
    let berth = Berth::start_launched(&encryption_toml("e2e", "BERTH_KEK_E2E"), &env, launch);
    let (src, digest) = push_new_image(
        &berth,
        &work.path().join("two"),
        &[("f", unique("sealed"))],
        "e2e/refuse:sealed",
    );

    let prefix = unique_prefix("e2e-refuse");
    // The target's key comes from a variable of its own, so the current store's is intact.
    let refused = |name: &str, config: String, key: &str| -> String {
        let path = work.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("target config");
        let err = crate::harness::run_fails(
            berth
                .cli()
                .envs(S3_ENV.iter().copied())
                .env("BERTH_KEK_TARGET", key)
                .arg("migrate-storage")
                .arg("--to")
                .arg(&path),
        );
        assert!(err.contains("Nothing was copied"), "{name}: {err}");
        let objects = bucket_objects(&prefix, "");
        assert!(objects.is_empty(), "{name} wrote {objects:?}");
        err
    };

    let err = refused("plain", s3_storage_toml(&prefix, ""), &kek.1);
    assert!(
        err.contains("has no [encryption]") && err.contains("(key e2e)"),
        "{err}"
    );
    let err = refused(
        "other",
        s3_storage_toml(&prefix, &encryption_toml("other", "BERTH_KEK_TARGET")),
        &kek.1,
    );
    assert!(
        err.contains("sealed under key e2e, which is not in the keyring"),
        "{err}"
    );
    let err = refused(
        "wrong",
        s3_storage_toml(&prefix, &encryption_toml("e2e", "BERTH_KEK_TARGET")),
        &"d5".repeat(32),
    );
    assert!(
        err.contains("key e2e is not the key that was used under this id before")
            && err.contains("env = BERTH_KEK_TARGET"),
        "{err}"
    );
    let err = refused(
        "itself",
        format!(
            "data_dir = \"{}\"\n{}",
            data.display(),
            encryption_toml("e2e", "BERTH_KEK_TARGET")
        ),
        &kek.1,
    );
    assert!(
        err.contains("names the current blob store itself") && err.contains("berth encrypt"),
        "{err}"
    );
    let same = s3_storage_toml(&prefix, &encryption_toml("e2e", "BERTH_KEK_TARGET"));
    let err = refused("shared", same, &kek.1);
    assert!(
        err.contains("not encrypted yet") && err.contains("Run `berth encrypt` first"),
        "{err}"
    );

    // Once every blob is sealed, the same target takes them as they are stored.
    run_stdout(berth.cli().arg("encrypt"));
    let path = work.path().join("shared.toml");
    let out = run_stdout(
        berth
            .cli()
            .envs(S3_ENV.iter().copied())
            .env("BERTH_KEK_TARGET", &kek.1)
            .arg("migrate-storage")
            .arg("--to")
            .arg(&path),
    );
    assert!(out.contains(" 0 failed"), "{out}");
    let objects = bucket_objects(&prefix, "blobs/");
    let mut all = one.image_blobs(&one_digest);
    all.extend(src.image_blobs(&digest));
    all.sort();
    all.dedup();
    assert_eq!(objects.len(), all.len(), "{objects:?}");
    for (key, size) in objects {
        let hex = key.rsplit('/').next().expect("name");
        let blob = format!("sha256:{hex}");
        let plain = if all.contains(&blob) && one.image_blobs(&one_digest).contains(&blob) {
            one.blob(&blob).len() as u64
        } else {
            src.blob(&blob).len() as u64
        };
        assert_eq!(size, plain + 28 * plain.div_ceil(65536).max(1), "{key}");
    }
}

/// The same on the filesystem: a plaintext data directory migrated into a new one with
/// `[encryption]` and its own SQLite file. No file under the new data directory (blobs,
/// uploads, the database and its WAL) holds any of the plaintext; a server on it serves
/// the image to skopeo and `fsck` is clean.
#[test]
fn migrate_storage_seals_into_an_encrypted_data_directory() {
    let work = tempdir();
    let data = work.path().join("data");
    let berth = Berth::start_launched(
        "",
        &[],
        crate::harness::Launch {
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    let (src, digest) = push_new_image(
        &berth,
        work.path(),
        &[
            (
                "f",
                unique("plaintext, into a sealed directory").into_bytes(),
            ),
            ("big", crate::harness::noise(200_000)),
        ],
        "e2e/sealfs:v1",
    );
    let blobs = src.image_blobs(&digest);
    drop(berth);

    let moved_dir = work.path().join("sealed");
    let kek = ("BERTH_KEK_E2E", "9b".repeat(32));
    let target_config = format!(
        "data_dir = \"{dir}\"\n[metadata]\nurl = \"sqlite:{dir}/berth.db\"\n{}",
        encryption_toml("fs", "BERTH_KEK_E2E"),
        dir = moved_dir.display()
    );
    let target = work.path().join("target.toml");
    std::fs::write(&target, &target_config).expect("target config");
    let out = run_stdout(
        cmd(env!("CARGO_BIN_EXE_berth"))
            .env(kek.0, &kek.1)
            .args(["migrate-storage", "--data-dir"])
            .arg(&data)
            .arg("--to")
            .arg(&target),
    );
    assert!(
        out.starts_with(&format!("copied {} blobs", blobs.len())) && out.contains(" 0 failed"),
        "{out}"
    );

    let env = [(kek.0, kek.1.as_str())];
    let moved = Berth::start_launched(
        &target_config,
        &env,
        crate::harness::Launch {
            data_dir: Some(moved_dir.clone()),
            ..Default::default()
        },
    );
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &moved.docker("e2e/sealfs:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);
    let fsck = run_stdout(moved.cli().arg("fsck"));
    assert!(fsck.contains("result: clean"), "{fsck}");

    let mut markers: Vec<Vec<u8>> = Vec::new();
    for blob in &blobs {
        let plain = src.blob(blob);
        for at in [0, plain.len() / 2, plain.len().saturating_sub(48)] {
            let piece = &plain[at..(at + 48).min(plain.len())];
            if piece.len() >= 24 {
                markers.push(piece.to_vec());
            }
        }
    }
    let mut files = 0;
    let mut stack = vec![moved_dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).expect("read");
            for m in &markers {
                assert!(
                    !bytes.windows(m.len()).any(|w| w == m.as_slice()),
                    "plaintext in {}",
                    path.display()
                );
            }
        }
    }
    assert!(files > blobs.len(), "{files} files");
    // The source's blobs hold the plaintext: the check does find it where it is.
    let source_blob = std::fs::read(
        data.join("blobs/sha256")
            .join(&blobs[0][7..9])
            .join(&blobs[0][7..]),
    )
    .expect("a source blob");
    assert!(
        markers
            .iter()
            .any(|m| source_blob.windows(m.len()).any(|w| w == m.as_slice()))
    );
}

/// `blob_keys.state` of each digest in the SQLite metadata store at `db` (`None`: no row).
fn key_states(db: &std::path::Path, digests: &[String]) -> Vec<Option<String>> {
    let out = run_stdout(
        cmd("sqlite3")
            .arg("-readonly")
            .arg(db)
            .arg("SELECT digest || ' ' || state FROM blob_keys"),
    );
    digests
        .iter()
        .map(|d| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{d} ")))
                .map(str::to_owned)
        })
        .collect()
}

/// `migrate-storage` into an encrypted bucket killed with SIGKILL at spread-out moments,
/// five times, then run to the end: after every kill the bucket holds only sealed objects
/// of the image's blobs, each with a key row (never an object without one); the last run
/// leaves every row `sealed2`, one object per blob, `fsck` clean, and a server on the
/// target serves the image to skopeo.
#[test]
fn migrate_storage_into_an_encrypted_bucket_survives_kills() {
    let work = tempdir();
    let data = work.path().join("data");
    let launch = crate::harness::Launch {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    let berth = Berth::start_launched("", &[], launch.clone());
    let layers: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| (format!("l{i}"), crate::harness::noise(512 << 10)))
        .collect();
    let files: Vec<(&str, &[u8])> = layers
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let (src, digest) = push_new_image(&berth, work.path(), &files, "e2e/sealkill:v1");
    let blobs = src.image_blobs(&digest);
    drop(berth);

    let prefix = unique_prefix("e2e-sealkill");
    let kek = ("BERTH_KEK_E2E", "6d".repeat(32));
    let target_config = s3_storage_toml(&prefix, &encryption_toml("e2e", "BERTH_KEK_E2E"));
    let target = work.path().join("target.toml");
    std::fs::write(&target, &target_config).expect("target config");
    let migrate = || {
        let mut c = cmd(env!("CARGO_BIN_EXE_berth"));
        c.envs(S3_ENV.iter().copied())
            .env(kek.0, &kek.1)
            .env_remove("BERTH_FAILPOINTS")
            .args(["migrate-storage", "--data-dir"])
            .arg(&data)
            .arg("--to")
            .arg(&target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let db = data.join("berth.db");
    let mut interrupted = 0;
    for delay_ms in [150u64, 300, 450, 600, 750] {
        let mut child = migrate().spawn().expect("spawn migrate-storage");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().expect("try_wait").is_none() {
            interrupted += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_stored_sealed(&prefix, &src, &blobs);
        assert_no_plaintext_in_bucket(&prefix, &src, &blobs, b"");
        // Every object placed has its key row.
        let states = key_states(&db, &blobs);
        for (key, _) in bucket_objects(&prefix, "blobs/") {
            let i = blobs
                .iter()
                .position(|b| key.ends_with(&b[7..]))
                .expect("a blob");
            assert!(
                states[i].is_some(),
                "{key} placed without a key row (after {delay_ms} ms)"
            );
        }
    }
    eprintln!("{interrupted} of 5 runs were killed mid-way");
    assert!(interrupted > 0, "every run finished before its kill");

    let out = run_stdout(migrate().stdout(std::process::Stdio::piped()));
    assert!(out.contains(" 0 failed"), "{out}");
    assert_eq!(bucket_objects(&prefix, "blobs/").len(), blobs.len());
    assert_stored_sealed(&prefix, &src, &blobs);
    assert_eq!(
        key_states(&db, &blobs),
        vec![Some("sealed2".to_owned()); blobs.len()]
    );
    let mut env = S3_ENV.to_vec();
    env.push((kek.0, kek.1.as_str()));
    let moved = Berth::start_launched(&target_config, &env, launch);
    let fsck = run_stdout(moved.cli().arg("fsck"));
    assert!(fsck.contains("result: clean"), "{fsck}");
    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &moved.docker("e2e/sealkill:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);
}
