//! The segment functions on every encrypted blob's path: sealing on append and opening on
//! GET (in place, as the read path does, and with the plaintext compacted, as the copy
//! check does), one segment and a read batch (16 segments, 1 MiB) at a time. Throughput
//! is plaintext bytes; compare with a plain memcpy of the same size to see what AES-GCM
//! costs beside a copy.

use std::hint::black_box;

use berth_storage::seal::{
    DataKey, Keyring, SEGMENT, SegmentBatch, open_segments, open_segments_in_place,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn key() -> DataKey {
    let ring = Keyring::new(vec![("bench".into(), [0x42; 32])], "bench").expect("keyring");
    ring.new_data_key(b"bench").0
}

fn sealed(key: &DataKey, plain: &[u8], segments: usize) -> Vec<u8> {
    let mut b = SegmentBatch::new(0, segments);
    assert_eq!(b.push(plain), plain.len());
    b.seal(key, true)
}

fn benches(c: &mut Criterion) {
    let key = key();
    for segments in [1usize, 16] {
        let plain: Vec<u8> = (0..segments * SEGMENT).map(|i| (i % 251) as u8).collect();
        let total = plain.len() as u64;
        let stored = sealed(&key, &plain, segments);
        let mut g = c.benchmark_group(format!("{segments} segment(s)"));
        g.throughput(Throughput::Bytes(total));
        g.bench_function("seal (batch fill + AES-GCM)", |b| {
            b.iter(|| sealed(&key, black_box(&plain), segments))
        });
        g.bench_function("open in place", |b| {
            b.iter_batched_ref(
                || stored.clone(),
                |buf| open_segments_in_place(&key, total, 0, buf).expect("authentic"),
                BatchSize::LargeInput,
            )
        });
        g.bench_function("open and compact", |b| {
            b.iter_batched_ref(
                || stored.clone(),
                |buf| open_segments(&key, total, 0, buf).expect("authentic"),
                BatchSize::LargeInput,
            )
        });
        g.bench_function("memcpy (reference)", |b| {
            let mut dst = vec![0u8; plain.len()];
            b.iter(|| dst.copy_from_slice(black_box(&plain)))
        });
        g.finish();
    }
}

criterion_group!(seal, benches);
criterion_main!(seal);
