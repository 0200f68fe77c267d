//! The blob store's behaviour, run against both backends: the filesystem (a temporary
//! directory) and S3 (the server at `BERTH_TEST_S3_URL`, e.g. moto from
//! `scripts/start-s3.sh`; each test under a prefix of its own in `BERTH_TEST_S3_BUCKET`,
//! default `berth-test`).

use std::time::Duration;

use berth_oci::{Algorithm, Digest};
use berth_storage::{
    BlobCheck, BlobStore, FsStore, HashState, S3Config, S3Store, ScanEntry, StorageError, digest_of,
};
use berth_testkit::s3_config;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

const MIB: usize = 1 << 20;

/// A store and what a test needs to reach behind its back.
struct Harness {
    store: BlobStore,
    _dir: Option<tempfile::TempDir>,
}

async fn fs() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::Fs(FsStore::new(dir.path()).await.expect("open"));
    Harness {
        store,
        _dir: Some(dir),
    }
}

async fn s3() -> Harness {
    let prefix = format!("suite-{}/", uuid::Uuid::new_v4());
    let store = BlobStore::S3(S3Store::new(s3_config(&prefix)).await.expect("open S3"));
    Harness { store, _dir: None }
}

impl Harness {
    /// Writes bytes at a path relative to the store's root, bypassing the store.
    async fn put_raw(&self, rel: &str, data: &[u8]) {
        match &self.store {
            BlobStore::Fs(s) => {
                let path = s.root().join(rel);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(path, data).expect("write");
            }
            BlobStore::S3(s) => s
                .put_raw(rel, Bytes::copy_from_slice(data))
                .await
                .expect("put"),
        }
    }

    /// Removes bytes at a path relative to the store's root, bypassing the store.
    async fn remove_raw(&self, digest: &Digest) {
        self.store.delete(digest).await.expect("delete");
    }

    /// Bytes stored for one upload: its file, or its objects.
    async fn upload_bytes(&self, id: &str) -> u64 {
        match &self.store {
            BlobStore::Fs(s) => std::fs::metadata(s.root().join("uploads").join(id))
                .expect("upload file")
                .len(),
            BlobStore::S3(s) => {
                assert_eq!(s.pending_multipart_uploads().await.expect("multipart"), 0);
                s.list_raw(&format!("uploads/{id}/"))
                    .await
                    .expect("list")
                    .iter()
                    .map(|(_, n)| n)
                    .sum()
            }
        }
    }

    /// What is left of uploads in the store.
    async fn upload_leftovers(&self) -> usize {
        match &self.store {
            BlobStore::Fs(s) => std::fs::read_dir(s.root().join("uploads"))
                .expect("uploads dir")
                .count(),
            BlobStore::S3(s) => s.list_raw("uploads/").await.expect("list").len(),
        }
    }

    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> (Vec<u8>, u64, u64) {
        let mut r = self
            .store
            .open(digest, range)
            .await
            .expect("open")
            .expect("present");
        let mut out = Vec::new();
        while let Some(chunk) = r.body.next().await {
            out.extend_from_slice(&chunk.expect("read"));
        }
        (out, r.len, r.total)
    }

    /// Appends `data` as one body (split into 64 KiB frames, as a server would deliver it).
    async fn append(&self, id: &str, offset: u64, st: &mut HashState, data: &[u8]) -> u64 {
        self.store
            .append_upload(id, offset, st, frames(data), u64::MAX)
            .await
            .expect("append")
    }
}

fn frames(data: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + use<> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks)
}

fn body(
    parts: &[&'static [u8]],
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + use<> {
    futures_util::stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    )
}

fn sha256(data: &[u8]) -> Digest {
    digest_of(Algorithm::Sha256, data)
}

/// Deterministic bytes that do not compress or repeat.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs a test function against both backends.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn fs() {
                super::$name(super::fs().await).await;
            }
            #[tokio::test]
            async fn s3() {
                super::$name(super::s3().await).await;
            }
        }
    };
}

both!(chunked_upload_round_trip);
async fn chunked_upload_round_trip(h: Harness) {
    let store = &h.store;
    store.create_upload("u1").await.expect("create");
    let mut st = HashState::new();
    let n = store
        .append_upload("u1", 0, &mut st, body(&[b"hello "]), 1 << 20)
        .await
        .expect("append");
    // resume from serialised state, as another replica would
    let mut st = HashState::from_bytes(&st.to_bytes()).expect("state");
    let n = store
        .append_upload("u1", n, &mut st, body(&[b"wor", b"ld"]), 1 << 20)
        .await
        .expect("append");
    assert_eq!(n, 11);
    // an empty append changes nothing
    let n = store
        .append_upload("u1", n, &mut st, body(&[]), 1 << 20)
        .await
        .expect("append");
    assert_eq!(n, 11);
    let d = sha256(b"hello world");
    store.finish_upload("u1", n, &st, &d).await.expect("finish");
    assert_eq!(store.stat(&d).await.expect("stat"), Some(11));
    assert_eq!(h.read(&d, Some((6, 10))).await, (b"world".to_vec(), 5, 11));
    assert_eq!(h.read(&d, None).await, (b"hello world".to_vec(), 11, 11));
    assert_eq!(
        h.upload_leftovers().await,
        0,
        "finishing removes the upload"
    );

    // absent blobs
    let missing = sha256(b"never stored");
    assert_eq!(store.stat(&missing).await.expect("stat"), None);
    assert!(store.open(&missing, None).await.expect("open").is_none());
    store
        .delete(&missing)
        .await
        .expect("deleting nothing is fine");
    store.delete(&d).await.expect("delete");
    assert_eq!(store.stat(&d).await.expect("stat"), None);

    // the empty blob
    store.create_upload("u0").await.expect("create");
    let empty = sha256(b"");
    store
        .finish_upload("u0", 0, &HashState::new(), &empty)
        .await
        .expect("finish empty");
    assert_eq!(store.stat(&empty).await.expect("stat"), Some(0));
    assert_eq!(h.read(&empty, None).await, (Vec::new(), 0, 0));
}

both!(wrong_digest_is_not_stored);
async fn wrong_digest_is_not_stored(h: Harness) {
    let store = &h.store;
    store.create_upload("u2").await.expect("create");
    let mut st = HashState::new();
    let n = store
        .append_upload("u2", 0, &mut st, body(&[b"abc"]), 100)
        .await
        .expect("append");
    let claimed = sha256(b"abd");
    let err = store.finish_upload("u2", n, &st, &claimed).await;
    assert!(
        matches!(err, Err(StorageError::DigestMismatch { .. })),
        "{err:?}"
    );
    assert_eq!(store.stat(&claimed).await.expect("stat"), None);
    let claimed512 = digest_of(Algorithm::Sha512, b"abd");
    let err = store.finish_upload("u2", n, &st, &claimed512).await;
    assert!(
        matches!(err, Err(StorageError::DigestMismatch { .. })),
        "{err:?}"
    );
    // the upload is left for the caller, and still finishes with the right digest
    store
        .finish_upload("u2", n, &st, &sha256(b"abc"))
        .await
        .expect("finish");
}

both!(interrupted_append_leaves_acknowledged_state);
async fn interrupted_append_leaves_acknowledged_state(h: Harness) {
    let store = &h.store;
    store.create_upload("u3").await.expect("create");
    let mut st = HashState::new();
    let n = store
        .append_upload("u3", 0, &mut st, body(&[b"good"]), 100)
        .await
        .expect("append");
    let failing = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"junk")),
        Err(std::io::Error::other("client went away")),
    ]);
    let err = store.append_upload("u3", n, &mut st, failing, 100).await;
    assert!(matches!(err, Err(StorageError::Body(_))), "{err:?}");
    // an append that completed but was never acknowledged (the caller's state did not
    // move) is overwritten by the retry at the same offset
    let mut lost = st.clone();
    store
        .append_upload("u3", n, &mut lost, body(&[b"unacknowledged"]), 100)
        .await
        .expect("append");
    let n2 = store
        .append_upload("u3", n, &mut st, body(&[b"more"]), 100)
        .await
        .expect("append");
    store
        .finish_upload("u3", n2, &st, &sha256(b"goodmore"))
        .await
        .expect("finish");
    assert_eq!(h.read(&sha256(b"goodmore"), None).await.0, b"goodmore");

    // an append claiming an offset past the data is refused
    store.create_upload("u4").await.expect("create");
    let err = store
        .append_upload("u4", 5, &mut HashState::new(), body(&[b"x"]), 100)
        .await;
    assert!(
        matches!(err, Err(StorageError::UploadUnknown(_))),
        "{err:?}"
    );
    let err = store
        .append_upload("u4", 0, &mut HashState::new(), body(&[b"0123456789"]), 4)
        .await;
    assert!(matches!(err, Err(StorageError::TooLarge { .. })), "{err:?}");
    // finishing at a size the data does not reach is refused too
    let err = store
        .finish_upload("u4", 3, &HashState::new(), &sha256(b"abc"))
        .await;
    assert!(
        matches!(err, Err(StorageError::UploadUnknown(_))),
        "{err:?}"
    );
}

both!(a_failed_append_leaves_nothing_past_the_acknowledged_offset);
/// Whatever ends an append early (the body failing, the limit), the bytes it wrote are
/// gone when it returns, not only when the session's next append cuts them: a session may
/// never see another append, and those bytes are acknowledged and counted nowhere.
async fn a_failed_append_leaves_nothing_past_the_acknowledged_offset(h: Harness) {
    let store = &h.store;
    store.create_upload("u5").await.expect("create");
    let mut st = HashState::new();
    let n = h.append("u5", 0, &mut st, &noise(1000, 1)).await;
    assert_eq!(h.upload_bytes("u5").await, 1000);
    // More than the filesystem backend's write buffer, so they reach the file.
    let mut frames: Vec<Result<Bytes, std::io::Error>> = (0..40)
        .map(|i| Ok(Bytes::from(noise(64 * 1024, i))))
        .collect();
    frames.push(Err(std::io::Error::other("client went away")));
    let err = store
        .append_upload(
            "u5",
            n,
            &mut st,
            futures_util::stream::iter(frames),
            u64::MAX,
        )
        .await;
    assert!(matches!(err, Err(StorageError::Body(_))), "{err:?}");
    assert_eq!(h.upload_bytes("u5").await, 1000, "after a failed body");
    let err = store
        .append_upload(
            "u5",
            n,
            &mut st,
            frames_of(&noise(3 * MIB, 2)),
            2 * MIB as u64,
        )
        .await;
    assert!(matches!(err, Err(StorageError::TooLarge { .. })), "{err:?}");
    assert_eq!(h.upload_bytes("u5").await, 1000, "after the limit");
    store
        .finish_upload("u5", n, &st, &sha256(&noise(1000, 1)))
        .await
        .expect("the acknowledged bytes are intact");
}

both!(upload_ids_cannot_escape);
async fn upload_ids_cannot_escape(h: Harness) {
    for bad in ["../x", "a/b", "", "..", "x?y", &"a".repeat(65)] {
        assert!(
            matches!(
                h.store.create_upload(bad).await,
                Err(StorageError::UploadUnknown(_))
            ),
            "{bad:?}"
        );
        assert!(matches!(
            h.store
                .append_upload(bad, 0, &mut HashState::new(), body(&[b"x"]), 10)
                .await,
            Err(StorageError::UploadUnknown(_))
        ));
    }
}

// Chunks below and above S3's 5 MiB part minimum and above the 8 MiB append part size:
// on S3 the finish copies the large pieces inside the bucket and streams the small runs
// into parts; both algorithms verify.
both!(large_mixed_chunks);
async fn large_mixed_chunks(h: Harness) {
    let sizes = [6 * MIB, MIB, 2 * MIB, 7 * MIB, 3 * MIB, 9 * MIB, 100 * 1024];
    let total: usize = sizes.iter().sum();
    let data = noise(total, 7);
    for (id, algorithm) in [("m256", Algorithm::Sha256), ("m512", Algorithm::Sha512)] {
        let data = if algorithm == Algorithm::Sha512 {
            noise(total, 8)
        } else {
            data.clone()
        };
        h.store.create_upload(id).await.expect("create");
        let mut st = HashState::new();
        let mut n = 0u64;
        let mut at = 0;
        for size in sizes {
            // every chunk resumes from the serialised state, as on another replica
            st = HashState::from_bytes(&st.to_bytes()).expect("state");
            n = h.append(id, n, &mut st, &data[at..at + size]).await;
            at += size;
        }
        assert_eq!(n, total as u64);
        let digest = digest_of(algorithm, &data);
        h.store
            .finish_upload(id, n, &st, &digest)
            .await
            .expect("finish");
        assert_eq!(h.store.stat(&digest).await.expect("stat"), Some(n));
        let (back, len, _) = h.read(&digest, None).await;
        assert_eq!(len, n);
        assert!(back == data, "{algorithm:?}: the blob's bytes differ");
        // a range across chunk boundaries
        let (first, last) = (5 * MIB as u64, 17 * MIB as u64 + 3);
        let (part, len, whole) = h.read(&digest, Some((first, last))).await;
        assert_eq!((len, whole), (last - first + 1, n));
        assert!(part == data[first as usize..=last as usize]);
        let mut seen = 0;
        assert_eq!(
            h.store
                .verify_blob(&digest, &mut |b| seen += b)
                .await
                .expect("verify"),
            BlobCheck::Present {
                size: n,
                actual: digest.clone()
            }
        );
        assert_eq!(seen, n);
    }
    assert_eq!(h.upload_leftovers().await, 0);
}

both!(stale_uploads_are_purged);
async fn stale_uploads_are_purged(h: Harness) {
    let store = &h.store;
    store.create_upload("old").await.expect("create");
    let mut st = HashState::new();
    let n = h.append("old", 0, &mut st, b"abandoned").await;
    h.append("old", n, &mut st, b" twice").await;
    assert_eq!(
        store
            .purge_stale_uploads(Duration::from_secs(3600))
            .await
            .expect("purge"),
        0,
        "fresh uploads stay"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store
            .purge_stale_uploads(Duration::ZERO)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(h.upload_leftovers().await, 0);
    let err = store
        .append_upload("old", n, &mut st, body(&[b"x"]), 100)
        .await;
    assert!(
        matches!(err, Err(StorageError::UploadUnknown(_))),
        "{err:?}"
    );
    // deleting an upload removes its data
    store.create_upload("gone").await.expect("create");
    h.append("gone", 0, &mut HashState::new(), b"bytes").await;
    store.delete_upload("gone").await.expect("delete");
    store.delete_upload("gone").await.expect("twice is fine");
    assert_eq!(h.upload_leftovers().await, 0);
}

both!(scan_finds_blobs_and_strays_and_verify_rehashes);
async fn scan_finds_blobs_and_strays_and_verify_rehashes(h: Harness) {
    let store = &h.store;
    let data = b"some blob bytes";
    let digest = sha256(data);
    store.create_upload("u").await.expect("create");
    let mut st = HashState::new();
    let n = h.append("u", 0, &mut st, data).await;
    store
        .finish_upload("u", n, &st, &digest)
        .await
        .expect("finish");
    h.put_raw("blobs/sha256/junk", b"x").await;
    // in the wrong shard
    let wrong_shard = format!("blobs/sha256/zz/{}", digest.hex());
    h.put_raw(&wrong_shard, b"x").await;

    let mut scan = store.scan_blobs();
    let mut found = Vec::new();
    while let Some(batch) = scan.next_batch().await.expect("scan") {
        found.extend(batch);
    }
    found.sort_by_key(|e| format!("{e:?}"));
    let mut expected = vec![
        ScanEntry::Blob {
            digest: digest.clone(),
            size: data.len() as u64,
        },
        ScanEntry::Stray {
            path: "blobs/sha256/junk".into(),
        },
        ScanEntry::Stray { path: wrong_shard },
    ];
    expected.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(found, expected);

    let mut seen = 0;
    let check = store
        .verify_blob(&digest, &mut |n| seen += n)
        .await
        .expect("verify");
    assert_eq!(
        check,
        BlobCheck::Present {
            size: data.len() as u64,
            actual: digest.clone()
        }
    );
    assert_eq!(seen, data.len() as u64);

    // Bytes changed behind the store's back are caught.
    let hex = digest.hex();
    h.put_raw(&format!("blobs/sha256/{}/{hex}", &hex[..2]), b"other bytes")
        .await;
    let check = store
        .verify_blob(&digest, &mut |_| {})
        .await
        .expect("verify");
    assert!(matches!(check, BlobCheck::Present { actual, .. } if actual != digest));
    h.remove_raw(&digest).await;
    let check = store
        .verify_blob(&digest, &mut |_| {})
        .await
        .expect("verify");
    assert_eq!(check, BlobCheck::Missing);
}

/// Many listing pages: S3 answers at most 1000 keys per request.
#[tokio::test]
async fn s3_scan_pages_through_many_blobs() {
    let h = s3().await;
    let BlobStore::S3(s) = &h.store else {
        unreachable!()
    };
    let mut expected = Vec::new();
    let puts = (0..1100).map(|i| {
        let data = format!("blob {i}");
        let d = sha256(data.as_bytes());
        let hex = d.hex().to_owned();
        expected.push(d);
        async move {
            s.put_raw(
                &format!("blobs/sha256/{}/{hex}", &hex[..2]),
                Bytes::from(data),
            )
            .await
        }
    });
    let results: Vec<_> = futures_util::stream::iter(puts.collect::<Vec<_>>())
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r.expect("put");
    }
    let mut scan = h.store.scan_blobs();
    let mut found = Vec::new();
    let mut batches = 0;
    while let Some(batch) = scan.next_batch().await.expect("scan") {
        batches += 1;
        for e in batch {
            match e {
                ScanEntry::Blob { digest, .. } => found.push(digest),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(batches >= 2, "{batches} batches");
    found.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(found, expected);
}

/// A presigned URL serves the blob without credentials; without redirects there is none.
#[tokio::test]
async fn s3_presigned_urls_serve_the_blob() {
    let h = s3().await;
    assert!(h.store.presign_get(&sha256(b"x")).is_none());
    let prefix = format!("presign-{}/", uuid::Uuid::new_v4());
    let store = BlobStore::S3(
        S3Store::new(S3Config {
            redirect_expiry: Some(Duration::from_secs(60)),
            ..s3_config(&prefix)
        })
        .await
        .expect("open"),
    );
    let data = b"presigned bytes";
    let d = sha256(data);
    store.create_upload("p").await.expect("create");
    let mut st = HashState::new();
    let n = store
        .append_upload("p", 0, &mut st, body(&[data]), 100)
        .await
        .expect("append");
    store.finish_upload("p", n, &st, &d).await.expect("finish");
    let url = store.presign_get(&d).expect("a presigned URL");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    rustls_provider();
    let got = reqwest::get(&url).await.expect("GET presigned");
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.expect("body").as_ref(), data);
}

fn rustls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `copy_blob` (behind `berth migrate-storage`) both ways between the backends; a source
/// blob whose bytes no longer match its digest is refused, not copied.
#[tokio::test]
async fn copy_blob_between_backends_verifies() {
    use berth_storage::{Copied, copy_blob};
    let (a, b, c) = (fs().await, s3().await, fs().await);
    let data = noise(6 * MIB + 5, 3);
    let d = sha256(&data);
    a.store.create_upload("c").await.expect("create");
    let mut st = HashState::new();
    let n = a.append("c", 0, &mut st, &data).await;
    a.store
        .finish_upload("c", n, &st, &d)
        .await
        .expect("finish");

    assert_eq!(
        copy_blob(&a.store, &b.store, &d).await.expect("copy"),
        Copied::Bytes(n)
    );
    assert_eq!(
        copy_blob(&a.store, &b.store, &d).await.expect("copy"),
        Copied::AlreadyThere
    );
    assert_eq!(
        copy_blob(&b.store, &c.store, &d).await.expect("copy"),
        Copied::Bytes(n)
    );
    assert!(c.read(&d, None).await.0 == data);
    assert_eq!(
        copy_blob(&a.store, &b.store, &sha256(b"absent"))
            .await
            .expect("copy"),
        Copied::SourceMissing
    );

    let other = sha256(b"the real bytes");
    let hex = other.hex();
    a.put_raw(&format!("blobs/sha256/{}/{hex}", &hex[..2]), b"corrupted")
        .await;
    let err = copy_blob(&a.store, &b.store, &other).await;
    assert!(
        matches!(err, Err(StorageError::DigestMismatch { .. })),
        "{err:?}"
    );
    assert_eq!(b.store.stat(&other).await.expect("stat"), None);
    assert_eq!(b.upload_leftovers().await, 0);
}

/// `copy_all_blobs` (the whole of `berth migrate-storage`'s copy) from the filesystem into
/// S3: every blob lands, a corrupt one and a stray are reported and skipped without
/// stopping the rest, and a second run copies nothing.
#[tokio::test]
async fn copy_all_blobs_goes_on_past_failures_and_resumes() {
    use berth_storage::{CopyEvent, CopySummary, copy_all_blobs};
    let (a, b) = (fs().await, s3().await);
    let mut good = Vec::new();
    for i in 0..3u8 {
        let data = noise(1000 + usize::from(i), u64::from(i));
        let d = sha256(&data);
        let id = format!("u{i}");
        a.store.create_upload(&id).await.expect("create");
        let mut st = HashState::new();
        let n = a.append(&id, 0, &mut st, &data).await;
        a.store
            .finish_upload(&id, n, &st, &d)
            .await
            .expect("finish");
        good.push((d, data));
    }
    let bad = sha256(b"the real bytes");
    let hex = bad.hex();
    a.put_raw(&format!("blobs/sha256/{}/{hex}", &hex[..2]), b"corrupted")
        .await;
    a.put_raw("blobs/sha256/README", b"not a blob").await;

    let (mut failed, mut strays, mut done) = (Vec::new(), Vec::new(), 0);
    let summary = copy_all_blobs(&a.store, &b.store, &mut |e| match e {
        CopyEvent::Failed { digest, error } => failed.push((
            digest.clone(),
            matches!(error, StorageError::DigestMismatch { .. }),
        )),
        CopyEvent::Stray { path } => strays.push(path.to_owned()),
        CopyEvent::Done(_) => done += 1,
    })
    .await
    .expect("copy");
    let bytes: u64 = good.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(
        summary,
        CopySummary {
            copied: 3,
            copied_bytes: bytes,
            failed: 1,
            strays: 1,
            ..CopySummary::default()
        }
    );
    assert_eq!(failed, [(bad.clone(), true)]);
    assert_eq!(strays, ["blobs/sha256/README"]);
    assert_eq!(done, 4);
    for (d, data) in &good {
        assert_eq!(&b.read(d, None).await.0, data);
    }
    assert_eq!(b.store.stat(&bad).await.expect("stat"), None);

    let again = copy_all_blobs(&a.store, &b.store, &mut |_| {})
        .await
        .expect("again");
    assert_eq!((again.copied, again.already, again.failed), (0, 3, 1));
}

/// An append of more than one part (a multipart upload) that fails half way leaves no
/// object and no pending multipart upload, and the acknowledged state still finishes.
#[tokio::test]
async fn s3_interrupted_large_append_leaves_nothing() {
    let h = s3().await;
    let BlobStore::S3(s) = &h.store else {
        unreachable!()
    };
    let data = noise(20 * MIB, 11);
    h.store.create_upload("big").await.expect("create");
    let mut st = HashState::new();
    let n = h.append("big", 0, &mut st, &data[..MIB]).await;
    let mut frames: Vec<Result<Bytes, std::io::Error>> = data[MIB..]
        .chunks(MIB)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    frames.truncate(17);
    frames.push(Err(std::io::Error::other("client went away")));
    let err = h
        .store
        .append_upload(
            "big",
            n,
            &mut st,
            futures_util::stream::iter(frames),
            u64::MAX,
        )
        .await;
    assert!(matches!(err, Err(StorageError::Body(_))), "{err:?}");
    assert_eq!(s.pending_multipart_uploads().await.expect("list"), 0);
    assert_eq!(h.upload_leftovers().await, 1, "only the acknowledged chunk");
    // Too large half way through a multipart append: the same.
    let err = h
        .store
        .append_upload("big", n, &mut st, frames_of(&data[MIB..]), 18 * MIB as u64)
        .await;
    assert!(matches!(err, Err(StorageError::TooLarge { .. })), "{err:?}");
    assert_eq!(s.pending_multipart_uploads().await.expect("list"), 0);
    let n = h.append("big", n, &mut st, &data[MIB..]).await;
    h.store
        .finish_upload("big", n, &st, &sha256(&data))
        .await
        .expect("finish");
    assert_eq!(s.pending_multipart_uploads().await.expect("list"), 0);
}

fn frames_of(data: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + use<> {
    frames(data)
}

/// A bucket that does not exist fails at open, with S3's code and the operation.
#[tokio::test]
async fn s3_errors_name_the_code_and_operation() {
    let err = S3Store::new(S3Config {
        bucket: format!("no-such-bucket-{}", uuid::Uuid::new_v4()),
        ..s3_config("")
    })
    .await
    .err()
    .expect("a missing bucket is an error");
    match &err {
        StorageError::S3 {
            op, status, code, ..
        } => assert_eq!(
            (*op, *status, code.as_str()),
            ("ListObjectsV2", 404, "NoSuchBucket")
        ),
        other => panic!("{other:?}"),
    }
    // Nothing listens on port 9 of loopback.
    let err = S3Store::new(S3Config {
        endpoint: "http://127.0.0.1:9".into(),
        ..s3_config("")
    })
    .await
    .err()
    .expect("an unreachable endpoint is an error");
    assert!(
        matches!(
            err,
            StorageError::S3Request {
                op: "ListObjectsV2",
                ..
            }
        ),
        "{err:?}"
    );
    let err = S3Store::new(S3Config {
        endpoint: "ftp://example".into(),
        ..s3_config("")
    })
    .await
    .err()
    .expect("a bad endpoint is an error");
    assert!(matches!(err, StorageError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn a_checker_never_creates_a_store_where_there_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = FsStore::open_existing(dir.path())
        .await
        .err()
        .expect("no blobs/ here");
    assert!(
        err.to_string().contains("not a Berth data directory"),
        "{err}"
    );
    assert!(!dir.path().join("blobs").exists(), "nothing was created");
    FsStore::new(dir.path()).await.expect("create");
    FsStore::open_existing(dir.path())
        .await
        .expect("an existing store opens");
}
