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
