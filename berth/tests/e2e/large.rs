//! A layer of several megabytes of incompressible data: streaming uploads and downloads,
//! and ranged blob reads (what clients use to resume).

use crate::containerd::Containerd;
use crate::harness::{
    Berth, Layout, assert_same_image_blobs, noise, run, sha256_digest, skopeo_copy, tempdir, unique,
};

const BIG: usize = 24 << 20;

#[test]
fn large_layer_round_trip_and_range_reads() {
    let berth = Berth::start();
    let work = tempdir();
    let src = Layout::init(work.path().join("src"));
    let big = noise(BIG);
    let small = unique("next to a big layer");
    let digest = src.build(
        "v1",
        "amd64",
        &[("big.bin", big.as_slice()), ("small.txt", small.as_bytes())],
    );
    let blobs = src.image_blobs(&digest);
    let layer = blobs[1].clone();
    let bytes = src.blob(&layer);
    assert!(
        bytes.len() > BIG,
        "the big layer compressed: {}",
        bytes.len()
    );
    let size = bytes.len();

    skopeo_copy(&[], &src.oci("v1"), &berth.docker("e2e/large:v1"));

    let path = format!("/v2/e2e/large/blobs/{layer}");
    let head = berth.request("HEAD", &path, &[]);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(head.header("docker-content-digest"), Some(layer.as_str()));
    assert_eq!(head.header("accept-ranges"), Some("bytes"));

    let full = berth.get(&path);
    assert_eq!(full.status, 200);
    assert_eq!(full.body.len(), size, "full blob length");
    assert_eq!(sha256_digest(&full.body), layer, "full blob digest");

    let mid = size / 2;
    for (range, first, last) in [
        (format!("bytes={mid}-{}", mid + 65_535), mid, mid + 65_535),
        ("bytes=-1000".to_owned(), size - 1000, size - 1),
        (format!("bytes={}-", size - 10), size - 10, size - 1),
        ("bytes=0-0".to_owned(), 0, 0),
    ] {
        let part = berth.request("GET", &path, &[("Range", &range)]);
        assert_eq!(part.status, 206, "{range}: {:?}", part.headers);
        let expected_range = format!("bytes {first}-{last}/{size}");
        assert_eq!(
            part.header("content-range"),
            Some(expected_range.as_str()),
            "{range}"
        );
        assert!(part.body == bytes[first..=last], "{range}: wrong bytes");
    }
    let beyond = berth.request("GET", &path, &[("Range", &format!("bytes={size}-"))]);
    assert_eq!(beyond.status, 416, "{:?}", beyond.headers);
    let star = format!("bytes */{size}");
    assert_eq!(beyond.header("content-range"), Some(star.as_str()));

    let back = Layout::at(work.path().join("back"));
    skopeo_copy(&[], &berth.docker("e2e/large:v1"), &back.oci("v1"));
    assert_same_image_blobs(&src, &back, &digest);

    let daemon = Containerd::start();
    run(daemon.ctr("large").args([
        "image",
        "pull",
        "--plain-http",
        &berth.image("e2e/large:v1"),
    ]));
    let got = run(daemon.ctr("large").args(["content", "get", &layer])).stdout;
    assert!(got == bytes, "containerd's copy of the big layer differs");
}
