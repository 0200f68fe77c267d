//! Sealed (encrypted) uploads and blobs on both backends: random ranges over random blob
//! sizes and append layouts read back exactly; across a long chunked upload with failed,
//! repeated and rewritten appends and a retried completion, no (key, nonce) pair ever
//! seals two different ciphertexts; and an upload is sealed once, as it arrives.

use std::collections::HashMap;
use std::sync::Arc;

use berth_oci::{Algorithm, Digest};
use berth_storage::seal::{Keyring, sealed_len, stored_segments};
use berth_storage::{BlobStore, FsStore, HashState, S3Store, digest_of};
use berth_testkit::s3_config;
use bytes::Bytes;
use futures_util::StreamExt;
use proptest::prelude::*;

const SEG: usize = 65536;

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(vec![("k1".into(), [0x5a; 32])], "k1").expect("keyring"))
}

async fn fs() -> (BlobStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::Fs(FsStore::new(dir.path()).await.expect("open"));
    (store, dir)
}

async fn s3() -> BlobStore {
    let prefix = format!("sealed-{}/", uuid::Uuid::new_v4());
    BlobStore::S3(S3Store::new(s3_config(&prefix)).await.expect("open S3"))
}

fn body(
    data: &[u8],
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + use<> {
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(10_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(pieces)
}

/// A body that sends `data` and then fails, as a dropped connection does.
fn failing(
    data: &[u8],
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + use<> {
    let mut pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(10_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    pieces.push(Err(std::io::Error::other("connection reset")));
    futures_util::stream::iter(pieces)
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Uploads `blob` in appends of the sizes given and seals it; the digest.
async fn put(store: &BlobStore, keyring: &Arc<Keyring>, blob: &[u8], cuts: &[usize]) -> Digest {
    let id = uuid::Uuid::new_v4().to_string();
    store.create_upload(&id).await.expect("create");
    let mut state = HashState::new();
    let mut at = 0usize;
    let mut offset = 0u64;
    for &n in cuts.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(n).min(blob.len());
        offset = store
            .append_upload_sealed(
                keyring,
                &id,
                offset,
                &mut state,
                body(&blob[at..end]),
                u64::MAX,
            )
            .await
            .expect("append");
        at = end;
        if at == blob.len() {
            break;
        }
    }
    assert_eq!(offset, blob.len() as u64);
    let d = digest_of(Algorithm::Sha256, blob);
    let done = store
        .complete_sealed_upload(keyring, &id, offset, &state, &d)
        .await
        .expect("complete");
    store.place_sealed(&id, offset, &d).await.expect("place");
    // The wrapped key the metadata store would record opens for this digest only.
    let key = keyring
        .open_data_key(&done.key_id, d.as_str().as_bytes(), &done.wrapped)
        .expect("wrapped for the digest");
    assert!(
        keyring
            .open_data_key(&done.key_id, b"sha256:other", &done.wrapped)
            .is_err()
    );
    remember(&d, key);
    d
}

/// The data key each blob a test sealed was sealed under (the metadata store's job in the
/// registry).
static KEYS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, berth_storage::seal::DataKey>>> =
    std::sync::LazyLock::new(Default::default);

fn remember(d: &Digest, key: berth_storage::seal::DataKey) {
    KEYS.lock().expect("keys").insert(d.to_string(), key);
}

fn key_of(d: &Digest) -> berth_storage::seal::DataKey {
    KEYS.lock()
        .expect("keys")
        .get(d.as_str())
        .cloned()
        .expect("key")
}

async fn read(store: &BlobStore, d: &Digest, size: u64, range: Option<(u64, u64)>) -> Vec<u8> {
    let mut r = store
        .open_sealed(d, range, size, &key_of(d), None)
        .await
        .expect("open")
        .expect("present");
    let mut out = Vec::new();
    while let Some(piece) = r.body.next().await {
        out.extend_from_slice(&piece.expect("authentic"));
    }
    assert_eq!(out.len() as u64, r.len);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Random sizes around segment boundaries, random append layouts, random ranges.
    #[test]
    fn random_ranges_over_random_layouts(
        segments in 0usize..5,
        extra in prop_oneof![Just(0usize), Just(1), 0usize..SEG],
        cuts in proptest::collection::vec(1usize..3 * SEG, 0..4),
        ranges in proptest::collection::vec((0.0f64..1.0, 0.0f64..1.0), 1..6),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let k = keyring();
            let (store, _dir) = fs().await;
            let blob = data(segments * SEG + extra, seed);
            let d = put(&store, &k, &blob, &cuts).await;
            let size = blob.len() as u64;
            assert_eq!(store.stat(&d).await.expect("stat"), Some(sealed_len(size)));
            assert_eq!(read(&store, &d, size, None).await, blob);
            if size > 0 {
                for (a, b) in ranges {
                    let a = ((a * size as f64) as u64).min(size - 1);
                    let b = ((b * size as f64) as u64).min(size - 1);
                    let (a, b) = (a.min(b), a.max(b));
                    let got = read(&store, &d, size, Some((a, b))).await;
                    assert_eq!(got, blob[a as usize..=b as usize].to_vec(), "range {a}-{b} of {size}");
                }
            }
        });
    }
}

/// The stored bytes of one upload, one buffer per append object on S3, the whole file on
/// the filesystem.
async fn upload_bytes(store: &BlobStore, id: &str) -> Vec<Vec<u8>> {
    match store {
        BlobStore::Fs(s) => vec![std::fs::read(s.root().join("uploads").join(id)).expect("read")],
        BlobStore::S3(s) => {
            let mut out = Vec::new();
            for (key, _) in s.list_raw(&format!("uploads/{id}/")).await.expect("list") {
                out.push(
                    s.get_raw(&key)
                        .await
                        .expect("get")
                        .expect("present")
                        .to_vec(),
                );
            }
            out
        }
    }
}

async fn no_key_nonce_reuse(store: BlobStore) {
    let k = keyring();
    let id = uuid::Uuid::new_v4().to_string();
    store.create_upload(&id).await.expect("create");
    let mut state = HashState::new();
    let mut offset = 0u64;
    let mut whole = Vec::new();
    // One key per upload: nonce -> the ciphertext it sealed.
    let mut seen: HashMap<[u8; 12], Vec<u8>> = HashMap::new();
    let sealings = std::cell::Cell::new(0usize);
    let record = |stored: Vec<Vec<u8>>, seen: &mut HashMap<[u8; 12], Vec<u8>>| {
        for bytes in stored {
            for (nonce, ct) in stored_segments(&bytes) {
                match seen.insert(nonce, ct.clone()) {
                    Some(before) => assert_eq!(
                        before, ct,
                        "a (key, nonce) pair sealed two different ciphertexts"
                    ),
                    None => sealings.set(sealings.get() + 1),
                }
            }
        }
    };
    let mut upload_key = None;
    for round in 0..30u64 {
        let len = [1, 100, SEG - 1, SEG, SEG + 1, 300_000][round as usize % 6];
        let first = data(len, round * 7 + 1);
        // An append that lands but is never acknowledged (the session's offset did not
        // move): the client retries at the same offset, here with different bytes.
        if round % 3 == 0 {
            let mut scratch = state.clone();
            store
                .append_upload_sealed(&k, &id, offset, &mut scratch, body(&first), u64::MAX)
                .await
                .expect("unacknowledged append");
            record(upload_bytes(&store, &id).await, &mut seen);
        }
        // A body that breaks half way.
        if round % 4 == 1 {
            let mut scratch = state.clone();
            let failed = store
                .append_upload_sealed(
                    &k,
                    &id,
                    offset,
                    &mut scratch,
                    failing(&first[..len / 2]),
                    u64::MAX,
                )
                .await;
            assert!(failed.is_err());
            record(upload_bytes(&store, &id).await, &mut seen);
        }
        let piece = data(len, round * 7 + 3);
        offset = store
            .append_upload_sealed(&k, &id, offset, &mut state, body(&piece), u64::MAX)
            .await
            .expect("append");
        whole.extend_from_slice(&piece);
        record(upload_bytes(&store, &id).await, &mut seen);
        let this = state.upload_key().map(|(i, w)| (i.to_owned(), w.to_vec()));
        assert!(this.is_some());
        if upload_key.is_none() {
            upload_key = this.clone();
        }
        assert_eq!(this, upload_key, "one key for the whole upload");
    }
    assert_eq!(offset, whole.len() as u64);
    // Partial segments were sealed again many times: more sealings than segments.
    let segs = whole.len().div_ceil(SEG);
    let sealings = sealings.get();
    assert!(
        sealings > segs + 30,
        "{sealings} sealings of {segs} segments"
    );
    // A completion that fails after sealing the last segment as final (wrong digest), then
    // the right one: the last segment is sealed afresh each time.
    let d = digest_of(Algorithm::Sha256, &whole);
    let wrong = digest_of(Algorithm::Sha512, b"other bytes");
    let bad = store
        .complete_sealed_upload(&k, &id, offset, &state, &wrong)
        .await;
    assert!(bad.is_err(), "SHA-512 of other bytes");
    record(upload_bytes(&store, &id).await, &mut seen);
    let done = store
        .complete_sealed_upload(&k, &id, offset, &state, &d)
        .await
        .expect("complete");
    record(upload_bytes(&store, &id).await, &mut seen);
    store.place_sealed(&id, offset, &d).await.expect("place");
    remember(&d, done.key.clone());
    assert_eq!(read(&store, &d, offset, None).await, whole);
    // Completion wrote no pass over the bytes: the blob is the segments sealed on append
    // plus the final one.
    let blob = read_raw(&store, &d).await;
    let mut fresh = 0;
    for (nonce, ct) in stored_segments(&blob) {
        match seen.get(&nonce) {
            Some(before) => assert_eq!(before, &ct),
            None => fresh += 1,
        }
    }
    assert_eq!(
        fresh, 0,
        "every stored segment was written by an append or completion"
    );
    // Sealing the same blob again under its key (a racing upload that lost) draws fresh
    // nonces: no nonce of the first sealing comes back.
    let again = put_with_key(&store, &whole, &done.key).await;
    assert_eq!(again, d);
    let second = read_raw(&store, &d).await;
    for (nonce, ct) in stored_segments(&second) {
        assert!(
            !seen.contains_key(&nonce),
            "nonce reused under the blob's key"
        );
        seen.insert(nonce, ct);
    }
    assert_eq!(read(&store, &d, offset, None).await, whole);
}

async fn put_with_key(
    store: &BlobStore,
    blob: &[u8],
    key: &berth_storage::seal::DataKey,
) -> Digest {
    let d = digest_of(Algorithm::Sha256, blob);
    store
        .seal_blob(&d, blob.len() as u64, key, body(blob))
        .await
        .expect("seal");
    d
}

async fn read_raw(store: &BlobStore, d: &Digest) -> Vec<u8> {
    let mut r = store.open(d, None).await.expect("open").expect("present");
    let mut out = Vec::new();
    while let Some(piece) = r.body.next().await {
        out.extend_from_slice(&piece.expect("read"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_nonce_pair_repeats_across_a_long_upload_with_retries_on_fs() {
    let (store, _dir) = fs().await;
    no_key_nonce_reuse(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_nonce_pair_repeats_across_a_long_upload_with_retries_on_s3() {
    no_key_nonce_reuse(s3().await).await;
}

/// With server-side encryption requested, every object Berth writes (append objects, the
/// blob assembled from them by a copy, and a multipart blob) carries it in S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_side_encryption_headers_reach_every_object() {
    let BlobStore::S3(s3) = s3().await else {
        unreachable!("an S3 store")
    };
    let s3 = s3.with_server_side_encryption("AES256", None).expect("sse");
    assert!(
        S3Store::new(s3_config("x/"))
            .await
            .expect("open")
            .with_server_side_encryption("rot13", None)
            .is_err()
    );
    let store = BlobStore::S3(s3.clone());
    let k = keyring();
    for (i, len) in [1000usize, 9 << 20].into_iter().enumerate() {
        let blob = data(len, 40 + i as u64);
        let id = format!("sse-{i}");
        store.create_upload(&id).await.expect("create");
        let mut state = HashState::new();
        let n = store
            .append_upload_sealed(&k, &id, 0, &mut state, body(&blob), u64::MAX)
            .await
            .expect("append");
        for (key, _) in s3.list_raw(&format!("uploads/{id}/")).await.expect("list") {
            assert_eq!(
                s3.object_encryption(&key).await.expect("head").as_deref(),
                Some("AES256"),
                "{key}"
            );
        }
        let d = digest_of(Algorithm::Sha256, &blob);
        store
            .complete_sealed_upload(&k, &id, n, &state, &d)
            .await
            .expect("complete");
        store.place_sealed(&id, n, &d).await.expect("place");
        let hex = d.hex();
        let rel = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        assert_eq!(
            s3.object_encryption(&rel).await.expect("head").as_deref(),
            Some("AES256"),
            "blob of {len} bytes"
        );
    }
}
