//! Encryption at rest over real HTTP, on the filesystem with SQLite and on S3 (moto) with
//! PostgreSQL: pushes (chunked and monolithic), full and ranged reads across segment
//! boundaries, HEAD sizes and mounts behave as without encryption; a marker pushed by the
//! test is in no file under the data directory (blobs, uploads, the SQLite database and its
//! WAL) nor in the bucket; a flipped bit, a truncated, extended or swapped blob file, or a
//! data key wrapped by a key not in the keyring is an error for the client and a finding
//! for `fsck`, while everything else keeps serving.

mod common;

use std::sync::Arc;

use berth_meta::WrappedKey;
use berth_registry::KeyProblem;
use berth_storage::BlobStore;
use berth_storage::seal::Keyring;
use common::{OCI_MANIFEST, Setup, TestServer as Server, sha256};
use reqwest::{Method, StatusCode, header};

const SEG: usize = 65536;

fn keyring(material: u8) -> Arc<Keyring> {
    Arc::new(Keyring::new(vec![("k1".into(), [material; 32])], "k1").expect("keyring"))
}

/// `len` bytes that repeat `marker` with a running count, so every segment holds it.
fn marked(len: usize, marker: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{marker}{i:08}|").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

async fn start(postgres: bool, s3: bool, encryption: Option<Arc<Keyring>>) -> Server {
    common::start(Setup {
        postgres,
        s3,
        encryption,
        ..Setup::default()
    })
    .await
}

/// A chunked upload in pieces of `pieces` bytes, then the closing `PUT`; the digest.
async fn push_chunked(s: &Server, repo: &str, data: &[u8], pieces: &[usize]) -> String {
    let d = sha256(data);
    let r = s
        .http
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut loc = r.headers()[header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    let mut at: usize = 0;
    for &n in pieces.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(n).min(data.len());
        if at == end {
            break;
        }
        let url = if loc.starts_with("http") {
            loc.clone()
        } else {
            s.url(&loc)
        };
        let r = s
            .http
            .patch(url)
            .header("content-range", format!("{}-{}", at, end - 1))
            .header("content-type", "application/octet-stream")
            .body(data[at..end].to_vec())
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "PATCH {at}-{end}");
        loc = r.headers()[header::LOCATION]
            .to_str()
            .expect("location")
            .to_owned();
        at = end;
    }
    let url = if loc.starts_with("http") {
        loc
    } else {
        s.url(&loc)
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = s
        .http
        .put(format!("{url}{sep}digest={d}"))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED, "closing PUT");
    d
}

/// A blob GET (with an optional inclusive range): the bytes, or why none came.
async fn get(
    s: &Server,
    repo: &str,
    digest: &str,
    range: Option<(usize, usize)>,
) -> Result<Vec<u8>, String> {
    let mut req = s.http.get(s.url(&format!("/v2/{repo}/blobs/{digest}")));
    if let Some((a, b)) = range {
        req = req.header(header::RANGE, format!("bytes={a}-{b}"));
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
        return Err(format!("status {status}"));
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("body: {e}"))
}

/// Every stored byte sequence the test can reach: files under the data directory (blobs,
/// uploads, the SQLite database, its WAL), and objects under the bucket prefix.
async fn stored_files(s: &Server) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![s.dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("entry");
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push((
                    p.display().to_string(),
                    std::fs::read(&p).expect("read file"),
                ));
            }
        }
    }
    if let BlobStore::S3(s3) = &s.blobs {
        for (key, _) in s3.list_raw("").await.expect("list") {
            let bytes = s3.get_raw(&key).await.expect("get").unwrap_or_default();
            out.push((format!("s3:{key}"), bytes.to_vec()));
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn round_trip(postgres: bool, s3: bool) {
    let marker = format!("PLAINTEXT-MARKER-{}", berth_testkit::unique());
    let layer = marked(3 * SEG + 1234, &marker);
    let config = format!(r#"{{"architecture":"amd64","os":"linux","marker":"{marker}"}}"#);

    // The control: without encryption the marker is there to find, so its absence below
    // means something.
    let plain = start(postgres, s3, None).await;
    push_chunked(&plain, "enc/app", &layer, &[1000, SEG + 7]).await;
    assert!(
        stored_files(&plain)
            .await
            .iter()
            .any(|(_, b)| holds(b, marker.as_bytes())),
        "without encryption the marker is stored in the clear"
    );
    drop(plain);

    let s = start(postgres, s3, Some(keyring(0x11))).await;
    let l = push_chunked(&s, "enc/app", &layer, &[1000, SEG + 7, 50_000]).await;
    let c = s
        .push_blob_as(&common::Cred::Anonymous, "enc/app", config.as_bytes())
        .await;
    let m = common::image_manifest((&c, config.len()), (&l, layer.len()));
    let mbytes = serde_json::to_vec(&m).expect("json");
    let r = s
        .put_manifest_as(
            &common::Cred::Anonymous,
            "enc/app",
            "v1",
            OCI_MANIFEST,
            &mbytes,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    assert_eq!(get(&s, "enc/app", &l, None).await.expect("GET"), layer);
    assert_eq!(
        get(&s, "enc/app", &c, None).await.expect("GET"),
        config.as_bytes()
    );
    let head = s
        .http
        .request(Method::HEAD, s.url(&format!("/v2/enc/app/blobs/{l}")))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH]
            .to_str()
            .expect("len"),
        layer.len().to_string(),
        "HEAD gives the plaintext size"
    );
    for (a, b) in [
        (0, 0),
        (SEG - 10, SEG + 10),
        (SEG, 2 * SEG - 1),
        (2 * SEG - 1, 3 * SEG),
        (5, layer.len() - 1),
        (layer.len() - 1, layer.len() - 1),
    ] {
        assert_eq!(
            get(&s, "enc/app", &l, Some((a, b))).await.expect("range"),
            layer[a..=b],
            "range {a}-{b}"
        );
    }
    // A cross-repository mount serves the same bytes.
    let r = s
        .http
        .post(s.url(&format!(
            "/v2/enc/other/blobs/uploads/?mount={l}&from=enc/app"
        )))
        .send()
        .await
        .expect("mount");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(get(&s, "enc/other", &l, None).await.expect("GET"), layer);
    // The same blob pushed again (deduplicated) stays readable.
    push_chunked(&s, "enc/third", &layer, &[SEG]).await;
    assert_eq!(get(&s, "enc/third", &l, None).await.expect("GET"), layer);
    // An upload left open holds its bytes sealed too.
    let r = s
        .http
        .post(s.url("/v2/enc/app/blobs/uploads/"))
        .send()
        .await
        .expect("post");
    let loc = r.headers()[header::LOCATION]
        .to_str()
        .expect("loc")
        .to_owned();
    let url = if loc.starts_with("http") {
        loc
    } else {
        s.url(&loc)
    };
    let r = s
        .http
        .patch(url)
        .header("content-range", format!("0-{}", 2 * SEG - 1))
        .body(layer[..2 * SEG].to_vec())
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    for (name, bytes) in stored_files(&s).await {
        assert!(
            !holds(&bytes, marker.as_bytes()),
            "{name} holds the plaintext marker"
        );
    }
    let report = s
        .registry
        .fsck(&berth_registry::fsck::NoProgress)
        .await
        .expect("fsck");
    assert!(report.is_clean(), "fsck: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_blobs_round_trip_and_leave_no_plaintext_on_fs_and_sqlite() {
    round_trip(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_blobs_round_trip_and_leave_no_plaintext_on_s3_and_postgres() {
    round_trip(true, true).await;
}

fn blob_rel(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    format!("blobs/sha256/{}/{hex}", &hex[..2])
}

async fn read_stored(s: &Server, digest: &str) -> Vec<u8> {
    match &s.blobs {
        BlobStore::Fs(fs) => std::fs::read(fs.root().join(blob_rel(digest))).expect("read"),
        BlobStore::S3(s3) => s3
            .get_raw(&blob_rel(digest))
            .await
            .expect("get")
            .expect("present")
            .to_vec(),
    }
}

async fn write_stored(s: &Server, digest: &str, bytes: Vec<u8>) {
    match &s.blobs {
        BlobStore::Fs(fs) => {
            std::fs::write(fs.root().join(blob_rel(digest)), bytes).expect("write")
        }
        BlobStore::S3(s3) => s3
            .put_raw(&blob_rel(digest), bytes.into())
            .await
            .expect("put"),
    }
}

async fn tampering(postgres: bool, s3: bool) {
    let s = start(postgres, s3, Some(keyring(0x22))).await;
    let anon = common::Cred::Anonymous;
    let blobs: Vec<Vec<u8>> = (0..7)
        .map(|i| marked(2 * SEG + 500 + i * 10, &format!("blob{i}-")))
        .collect();
    let mut d = Vec::new();
    for b in &blobs {
        d.push(s.push_blob_as(&anon, "t/app", b).await);
    }
    // 0: a flipped bit in the second segment.
    let mut x = read_stored(&s, &d[0]).await;
    x[SEG + 28 + 100] ^= 0x04;
    write_stored(&s, &d[0], x).await;
    // 1: cut back to a segment boundary.
    let x = read_stored(&s, &d[1]).await;
    write_stored(&s, &d[1], x[..2 * (SEG + 28)].to_vec()).await;
    // 2: extended.
    let mut x = read_stored(&s, &d[2]).await;
    x.extend_from_slice(&[0u8; 16]);
    write_stored(&s, &d[2], x).await;
    // 3 and 4: files swapped.
    let (x3, x4) = (read_stored(&s, &d[3]).await, read_stored(&s, &d[4]).await);
    write_stored(&s, &d[3], x4).await;
    write_stored(&s, &d[4], x3).await;
    // 5: its data key wrapped by a key the keyring does not have.
    let w = s.meta.blob_key(&d[5]).await.expect("key").expect("sealed");
    let moved = WrappedKey {
        key_id: "gone".into(),
        wrapped: w.wrapped.clone(),
    };
    assert_eq!(
        s.meta
            .rewrap_blob_keys(&[(d[5].clone(), w, moved)])
            .await
            .expect("rewrap"),
        1
    );
    // 6 is untouched.

    for (i, digest) in d.iter().enumerate().take(6) {
        let got = get(&s, "t/app", digest, None).await;
        assert!(got.is_err(), "blob {i} was served after tampering");
    }
    // The flipped segment is refused in a range too; the segment before it still reads.
    assert!(
        get(&s, "t/app", &d[0], Some((SEG + 10, SEG + 20)))
            .await
            .is_err()
    );
    assert_eq!(
        get(&s, "t/app", &d[0], Some((10, 20)))
            .await
            .expect("untouched segment"),
        blobs[0][10..=20]
    );
    assert_eq!(get(&s, "t/app", &d[6], None).await.expect("GET"), blobs[6]);

    let report = s
        .registry
        .fsck(&berth_registry::fsck::NoProgress)
        .await
        .expect("fsck");
    let mut corrupt: Vec<_> = report
        .corrupt_blobs
        .iter()
        .map(|c| c.digest.clone())
        .collect();
    corrupt.sort();
    let mut want: Vec<_> = d[..6].to_vec();
    want.sort();
    assert_eq!(corrupt, want, "fsck: {report:?}");
    let metrics = s.metrics().await;
    let failures: u64 = common::metric(&metrics, "berth_sealed_blob_failures_total");
    assert!(failures >= 5, "failures counted: {failures}\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_sealed_blobs_are_refused_and_reported_on_fs() {
    tampering(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_sealed_blobs_are_refused_and_reported_on_s3() {
    tampering(true, true).await;
}

/// A keyring whose key under a known id is not the one used before, one that lacks a key
/// sealed blobs need, and no keyring over sealed blobs, are each refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_key_is_found_before_serving() {
    let s = start(false, false, Some(keyring(0x33))).await;
    let good = keyring(0x33);
    assert_eq!(
        s.registry.check_keyring(Some(&good)).await.expect("check"),
        vec![]
    );
    s.push_blob_as(&common::Cred::Anonymous, "k/app", b"sealed bytes")
        .await;
    assert_eq!(
        s.registry.check_keyring(Some(&good)).await.expect("check"),
        vec![]
    );
    let wrong = keyring(0x34);
    assert_eq!(
        s.registry.check_keyring(Some(&wrong)).await.expect("check"),
        vec![KeyProblem::Wrong {
            key_id: "k1".into()
        }]
    );
    let other = Keyring::new(vec![("k2".into(), [0x35; 32])], "k2").expect("keyring");
    assert_eq!(
        s.registry.check_keyring(Some(&other)).await.expect("check"),
        vec![KeyProblem::Missing {
            key_id: "k1".into(),
            blobs: 1,
            secrets: 0,
        }]
    );
    assert_eq!(
        s.registry.check_keyring(None).await.expect("check"),
        vec![KeyProblem::NoKeyring { blobs: 1 }]
    );
}

/// Token signing keys are stored sealed: tokens issued over HTTP verify, the stored secret
/// is not the key, a key stored before encryption was turned on is sealed at the next
/// start, and a keyring with another key under the id cannot read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signing_keys_are_sealed_in_the_metadata_store() {
    use berth_registry::access::{Access, AccessConfig};
    use berth_server::auth::ChallengeKind;

    // First without encryption: the signing key is stored as it is.
    let plain = start(false, false, None).await;
    let before = Access::new(plain.meta.clone(), AccessConfig::default(), None)
        .await
        .expect("access");
    drop(before);
    let stored = plain.meta.stored_signing_keys().await.expect("keys");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].2, None,
        "without encryption the key is stored as it is"
    );
    let dir = plain.dir.clone();
    drop(plain);

    // The same data directory with encryption and authentication on.
    let ring = keyring(0x44);
    let s = common::start(Setup {
        dir: Some(dir),
        encryption: Some(ring.clone()),
        auth: Some((
            AccessConfig {
                encryption: Some(ring.clone()),
                ..AccessConfig::default()
            },
            ChallengeKind::Bearer,
        )),
        ..Setup::default()
    })
    .await;
    common::add_users(s.access(), &[("root", true)]).await;
    let after = s.meta.stored_signing_keys().await.expect("keys");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, stored[0].0, "the same key");
    assert_eq!(after[0].2.as_deref(), Some("k1"), "sealed at start");
    assert_ne!(after[0].1, stored[0].1, "the stored secret is not the key");
    assert!(!holds(&after[0].1, &stored[0].1));

    let r = s
        .http
        .get(format!(
            "{}/token?service=berth&scope=repository:root/app:pull,push",
            s.base
        ))
        .basic_auth("root", Some(common::PASSWORD))
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.expect("json");
    let token = v["token"].as_str().expect("token").to_owned();
    let r = s
        .http
        .get(s.url("/v2/"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("v2");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a token signed with the sealed key verifies"
    );

    // Rotation stores the new key sealed too.
    let admin = s
        .access()
        .login("root", common::PASSWORD, None)
        .await
        .expect("admin");
    s.access().rotate_key(&admin, None).await.expect("rotate");
    let rotated = s.meta.stored_signing_keys().await.expect("keys");
    assert_eq!(rotated.len(), 2);
    assert!(rotated.iter().all(|k| k.2.as_deref() == Some("k1")));

    // Another key under the same id cannot open them.
    let wrong = keyring(0x45);
    let refused = Access::new(
        s.meta.clone(),
        AccessConfig {
            encryption: Some(wrong),
            ..AccessConfig::default()
        },
        None,
    )
    .await;
    assert!(
        refused.is_err(),
        "a wrong key must not read the signing keys"
    );
}

/// Rotation without downtime: a second key made active wraps new data keys, `rewrap`
/// re-wraps the old ones (the blobs read the same, their bytes untouched), and the old key
/// can be retired only once nothing uses it; then a keyring without it serves everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_rewrap_and_retire() {
    let both = Arc::new(
        Keyring::new(
            vec![("k1".into(), [0x61; 32]), ("k2".into(), [0x62; 32])],
            "k1",
        )
        .expect("keyring"),
    );
    let s = start(false, false, Some(both.clone())).await;
    let anon = common::Cred::Anonymous;
    let blobs: Vec<Vec<u8>> = (0..3)
        .map(|i| marked(SEG + 100 * i, &format!("r{i}-")))
        .collect();
    let mut d = Vec::new();
    for b in &blobs {
        d.push(s.push_blob_as(&anon, "rot/app", b).await);
    }
    let stored_before = read_stored(&s, &d[0]).await;
    let cli = berth_meta::Actor::named("cli");
    let e = s.registry.retire_key("k1").await.expect_err("active");
    assert!(e.to_string().contains("active"), "{e}");

    s.registry.activate_key("k2", &cli).await.expect("rotate");
    assert_eq!(both.active_id(), "k2");
    // New blobs are wrapped with k2 at once.
    let fresh = marked(1000, "fresh-");
    let f = s.push_blob_as(&anon, "rot/app", &fresh).await;
    assert_eq!(
        s.meta
            .blob_key(&f)
            .await
            .expect("key")
            .expect("sealed")
            .key_id,
        "k2"
    );
    let e = s.registry.retire_key("k1").await.expect_err("in use");
    assert!(
        e.to_string().contains("3 blobs"),
        "says what still uses it: {e}"
    );

    let mut seen = Vec::new();
    let summary = s
        .registry
        .rewrap_keys(&mut |done, total| seen.push((done, total)))
        .await
        .expect("rewrap");
    assert_eq!(summary.rewrapped, 3);
    assert!(summary.failed.is_empty());
    assert_eq!(seen.last(), Some(&(3, 3)), "progress reaches the total");
    // Nothing left to do: a second run (a resumed one) changes nothing.
    let again = s.registry.rewrap_keys(&mut |_, _| {}).await.expect("again");
    assert_eq!(again.rewrapped, 0);
    for digest in &d {
        assert_eq!(
            s.meta
                .blob_key(digest)
                .await
                .expect("key")
                .expect("sealed")
                .key_id,
            "k2"
        );
    }
    assert_eq!(
        read_stored(&s, &d[0]).await,
        stored_before,
        "no blob byte rewritten"
    );
    s.registry.retire_key("k1").await.expect("retire");

    // A keyring of k2 alone opens everything.
    let only = Arc::new(Keyring::new(vec![("k2".into(), [0x62; 32])], "k2").expect("keyring"));
    assert_eq!(
        s.registry.check_keyring(Some(&only)).await.expect("check"),
        vec![]
    );
    let dir = s.dir.clone();
    drop(s);
    let s = common::start(Setup {
        dir: Some(dir),
        encryption: Some(only),
        ..Setup::default()
    })
    .await;
    for (digest, b) in d.iter().zip(&blobs) {
        assert_eq!(&get(&s, "rot/app", digest, None).await.expect("GET"), b);
    }
    assert_eq!(get(&s, "rot/app", &f, None).await.expect("GET"), fresh);
}

/// Every blob reads whole and across a segment boundary as pushed.
async fn check_all(s: &Server, d: &[String], blobs: &[Vec<u8>]) {
    for (digest, b) in d.iter().zip(blobs) {
        assert_eq!(&get(s, "conv/app", digest, None).await.expect("GET"), b);
        let (a, z) = (SEG - 5, SEG + 5);
        assert_eq!(
            get(s, "conv/app", digest, Some((a, z)))
                .await
                .expect("range"),
            b[a..=z]
        );
    }
}

/// Turning encryption on for a registry with plaintext blobs: they keep serving as they
/// are, `encrypt_blobs` seals them in place (state switched per blob in the metadata
/// store), a reader gets the same bytes before, during and after (ranged requests too,
/// including across an interrupted conversion in either of its halves), and afterwards no
/// blob file holds the marker and `fsck` is clean.
async fn conversion(postgres: bool, s3: bool) {
    let marker = format!("CONVERT-MARKER-{}", berth_testkit::unique());
    let plain = start(postgres, s3, None).await;
    let anon = common::Cred::Anonymous;
    let blobs: Vec<Vec<u8>> = (0..4)
        .map(|i| marked(SEG * 2 + 77 * i, &format!("{marker}{i}")))
        .collect();
    let mut d = Vec::new();
    for b in &blobs {
        d.push(plain.push_blob_as(&anon, "conv/app", b).await);
    }
    let stores = plain.stores();
    drop(plain);

    let ring = keyring(0x71);
    let s = common::start(Setup {
        stores: Some(stores),
        encryption: Some(ring.clone()),
        ..Setup::default()
    })
    .await;
    check_all(&s, &d, &blobs).await;
    // A pushed-again plaintext blob stays plaintext until converted (its readers rely on it).
    s.push_blob_as(&anon, "conv/other", &blobs[0]).await;
    assert!(s.meta.blob_key(&d[0]).await.expect("key").is_none());
    check_all(&s, &d, &blobs).await;

    // Interrupted conversions: blob 1 crashed before its bytes were sealed, blob 2 after
    // they were sealed but before the switch.
    for (i, seal_bytes) in [(1usize, false), (2, true)] {
        let (fresh, key_id, wrapped) = ring.new_data_key(d[i].as_bytes());
        let mine = WrappedKey { key_id, wrapped };
        s.meta
            .start_blob_conversion(&d[i], &mine)
            .await
            .expect("start");
        if seal_bytes {
            let digest: berth_oci::Digest = d[i].parse().expect("digest");
            let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
                blobs[i].clone(),
            ))]);
            s.blobs
                .seal_blob(&digest, blobs[i].len() as u64, &fresh, body)
                .await
                .expect("seal");
            assert_ne!(
                read_stored(&s, &d[i]).await.len(),
                blobs[i].len(),
                "sealed form"
            );
        }
    }
    check_all(&s, &d, &blobs).await;

    let mut seen = Vec::new();
    let summary = s
        .registry
        .encrypt_blobs(&mut |done, total| seen.push((done, total)))
        .await
        .expect("encrypt");
    assert_eq!(summary.sealed, 4, "{summary:?}");
    assert!(
        summary.failed.is_empty() && summary.missing.is_empty(),
        "{summary:?}"
    );
    assert_eq!(seen.last(), Some(&(4, 4)));
    check_all(&s, &d, &blobs).await;
    for digest in &d {
        let (_, state) = s
            .meta
            .blob_key_state(digest)
            .await
            .expect("state")
            .expect("sealed");
        assert!(!state.converting && !state.format1, "{state:?}");
        assert!(!holds(&read_stored(&s, digest).await, marker.as_bytes()));
    }
    // Resumed with nothing left: nothing changes.
    let again = s
        .registry
        .encrypt_blobs(&mut |_, _| {})
        .await
        .expect("again");
    assert_eq!(again.sealed, 0);
    let report = s
        .registry
        .fsck(&berth_registry::fsck::NoProgress)
        .await
        .expect("fsck");
    assert!(report.is_clean(), "fsck: {report:?}");
    for (name, bytes) in stored_files(&s).await {
        if name.contains("blobs/") || name.contains("uploads/") {
            assert!(!holds(&bytes, marker.as_bytes()), "{name} holds the marker");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_blobs_are_converted_online_on_fs() {
    conversion(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_blobs_are_converted_online_on_s3() {
    conversion(true, true).await;
}

/// What the previous release's code (main before format 2) produced for the fixture blob
/// below, computed by running its `BlobSealer` and `Keyring::wrap_under` once: the data
/// key `[0x17; 32]` wrapped by the key-encryption key `old` = `[0x42; 32]` (the wrap has
/// a random nonce, so it is kept as it came out), and the SHA-256 of the sealed bytes
/// (format 1 has deterministic nonces, so the bytes themselves are regenerated).
const FIXTURE_WRAPPED: &str = "12fd0387b5298e5d0ae2342363a7f29db1f9ecbb640691a6bbf21e7d20aa09a47225992e9e8bf6c2a747195aabdfd481a881ea85d91aaaab308f3772";
const FIXTURE_SEALED_SHA256: &str =
    "118e8365cf8bcaa5bd9576d615f4a451068afd68f72e42375338d799839c2446";
const FIXTURE_SEALED_LEN: usize = 150_048;

fn fixture_plain() -> Vec<u8> {
    (0..150_000u64)
        .map(|i| ((i * 31 + 7) % 251) as u8)
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

async fn key_state(s: &Server, digest: &str) -> berth_meta::KeyState {
    s.meta
        .blob_key_state(digest)
        .await
        .expect("state")
        .expect("row")
        .1
}

async fn check_format1(s: &Server, a: &str, plain: &[u8], d: &[String], others: &[Vec<u8>]) {
    assert_eq!(get(s, "legacy/app", a, None).await.expect("whole"), plain);
    for (x, y) in [(SEG - 5, SEG + 5), (2 * SEG - 1, 2 * SEG + 3), (0, 149_999)] {
        assert_eq!(
            get(s, "legacy/app", a, Some((x, y))).await.expect("range"),
            plain[x..=y],
            "range {x}-{y}"
        );
    }
    for (digest, b) in d.iter().zip(others) {
        assert_eq!(&get(s, "legacy/app", digest, None).await.expect("GET"), b);
        assert_eq!(
            get(s, "legacy/app", digest, Some((SEG - 3, SEG + 3)))
                .await
                .expect("range"),
            b[SEG - 3..=SEG + 3]
        );
    }
    let report = s
        .registry
        .fsck(&berth_registry::fsck::NoProgress)
        .await
        .expect("fsck");
    assert!(report.is_clean(), "fsck: {report:?}");
}

/// A registry the previous release left behind: a blob sealed in format 1, and two
/// conversions `berth encrypt` of that release left half done (one before its bytes were
/// sealed, one after). They read whole and by ranges across segment boundaries through
/// the server, fsck finds them clean, `berth encrypt` finishes the conversions, a key
/// rotation re-wraps their keys, and a flipped bit is caught.
async fn format1_blobs(postgres: bool, s3: bool) {
    use berth_storage::seal::legacy;
    let ring = Arc::new(
        Keyring::new(
            vec![("old".into(), [0x42; 32]), ("k2".into(), [0x43; 32])],
            "old",
        )
        .expect("keyring"),
    );
    let s = start(postgres, s3, Some(ring.clone())).await;
    let anon = common::Cred::Anonymous;
    let plain = fixture_plain();
    let a = s.push_blob_as(&anon, "legacy/app", &plain).await;
    let wrapped = WrappedKey {
        key_id: "old".into(),
        wrapped: unhex(FIXTURE_WRAPPED),
    };
    let key = ring
        .open_data_key("old", a.as_bytes(), &wrapped.wrapped)
        .expect("the fixture's key opens");
    let sealed = legacy::seal_blob(&key, &a, &plain);
    assert_eq!(sealed.len(), FIXTURE_SEALED_LEN);
    assert_eq!(
        sha256(&sealed).strip_prefix("sha256:").expect("hex"),
        FIXTURE_SEALED_SHA256,
        "the preserved format-1 sealer reproduces the previous release's bytes"
    );
    s.meta
        .put_format1_blob_key(&a, &wrapped, false)
        .await
        .expect("row");
    write_stored(&s, &a, sealed.clone()).await;

    // Conversions the previous release left: b still plaintext, c already sealed.
    let others: Vec<Vec<u8>> = (0..2)
        .map(|i| marked(2 * SEG + 300 + i, &format!("conv1-{i}-")))
        .collect();
    let mut d = Vec::new();
    for (i, b) in others.iter().enumerate() {
        let digest = s.push_blob_as(&anon, "legacy/app", b).await;
        let w = WrappedKey {
            key_id: "old".into(),
            wrapped: ring
                .wrap_under("old", digest.as_bytes(), &[0x30 + i as u8; 32])
                .expect("wrap"),
        };
        let k = ring
            .open_data_key("old", digest.as_bytes(), &w.wrapped)
            .expect("key");
        s.meta
            .put_format1_blob_key(&digest, &w, true)
            .await
            .expect("row");
        let stored = if i == 0 {
            b.clone()
        } else {
            legacy::seal_blob(&k, &digest, b)
        };
        write_stored(&s, &digest, stored).await;
        d.push(digest);
    }

    check_format1(&s, &a, &plain, &d, &others).await;

    // `berth encrypt` resumes them: the plaintext one is sealed in format 2 (its row says
    // so), the one sealed in format 1 is checked and stays in format 1.
    let summary = s
        .registry
        .encrypt_blobs(&mut |_, _| {})
        .await
        .expect("encrypt");
    assert_eq!(summary.sealed, 2, "{summary:?}");
    assert!(summary.failed.is_empty(), "{summary:?}");
    let sa = key_state(&s, &a).await;
    assert!(sa.format1 && !sa.converting, "{sa:?}");
    let sb = key_state(&s, &d[0]).await;
    assert!(!sb.format1 && !sb.converting, "{sb:?}");
    assert_eq!(
        read_stored(&s, &d[0]).await.len() as u64,
        berth_storage::seal::sealed_len(others[0].len() as u64)
    );
    let sc = key_state(&s, &d[1]).await;
    assert!(sc.format1 && !sc.converting, "{sc:?}");
    check_format1(&s, &a, &plain, &d, &others).await;

    // Rotation: every key re-wrapped, the formats unchanged.
    let cli = berth_meta::Actor::named("cli");
    s.registry.activate_key("k2", &cli).await.expect("rotate");
    let summary = s
        .registry
        .rewrap_keys(&mut |_, _| {})
        .await
        .expect("rewrap");
    assert_eq!(summary.rewrapped, 3, "{summary:?}");
    assert_eq!(
        s.meta.blob_key(&a).await.expect("key").expect("row").key_id,
        "k2"
    );
    assert!(key_state(&s, &a).await.format1);
    check_format1(&s, &a, &plain, &d, &others).await;

    // migrate-storage copies the stored form as it is, opened and checked in format 1 on
    // the way.
    let dir = tempfile::tempdir().expect("tempdir");
    let target = BlobStore::Fs(
        berth_storage::FsStore::new(dir.path())
            .await
            .expect("fs store"),
    );
    let ad: berth_oci::Digest = a.parse().expect("digest");
    let lookup = s.registry.sealed_blob(&ad).await.expect("key");
    assert_eq!(
        berth_storage::copy_blob_with(&s.blobs, &target, &ad, lookup)
            .await
            .expect("copy"),
        berth_storage::Copied::Bytes(FIXTURE_SEALED_LEN as u64)
    );
    assert_eq!(
        std::fs::read(dir.path().join(blob_rel(&a))).expect("copied"),
        sealed
    );

    // A flipped bit in the second segment: refused whole and in that segment, the first
    // segment still reads, fsck names it.
    let mut x = sealed.clone();
    x[SEG + 16 + 100] ^= 0x08;
    write_stored(&s, &a, x).await;
    assert!(get(&s, "legacy/app", &a, None).await.is_err());
    assert!(
        get(&s, "legacy/app", &a, Some((SEG + 50, SEG + 150)))
            .await
            .is_err()
    );
    assert_eq!(
        get(&s, "legacy/app", &a, Some((10, 20)))
            .await
            .expect("first segment"),
        plain[10..=20]
    );
    let report = s
        .registry
        .fsck(&berth_registry::fsck::NoProgress)
        .await
        .expect("fsck");
    let corrupt: Vec<_> = report
        .corrupt_blobs
        .iter()
        .map(|c| c.digest.clone())
        .collect();
    assert_eq!(corrupt, vec![a.clone()], "fsck: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format1_blobs_from_the_previous_release_still_read_on_fs() {
    format1_blobs(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format1_blobs_from_the_previous_release_still_read_on_s3_and_postgres() {
    format1_blobs(true, true).await;
}
