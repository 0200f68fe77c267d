//! Hostile clients against the real binary: bodies far past the limits are cut off without
//! being buffered, and the process's memory stays flat.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::Berth;

/// Streams `total` bytes of a chunked body to a manifest PUT, stopping when the server
/// answers or closes. Returns (bytes sent, response head).
fn stream_chunked(addr: &str, total: u64) -> (u64, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "PUT /v2/hostile/manifests/v1 HTTP/1.1\r\nhost: {addr}\r\n\
         content-type: application/vnd.oci.image.manifest.v1+json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).expect("head");
    let block = vec![b' '; 1 << 20];
    let mut sent = 0u64;
    while sent < total {
        let frame = format!("{:x}\r\n", block.len());
        if tcp.write_all(frame.as_bytes()).is_err()
            || tcp.write_all(&block).is_err()
            || tcp.write_all(b"\r\n").is_err()
        {
            break;
        }
        sent += block.len() as u64;
    }
    let mut answer = vec![0u8; 4096];
    let n = tcp.read(&mut answer).unwrap_or(0);
    (sent, String::from_utf8_lossy(&answer[..n]).into_owned())
}

#[test]
fn multi_gib_manifest_body_is_cut_off_and_memory_stays_flat() {
    let berth = Berth::start();
    let before = berth.peak_rss_kib();
    // 2 GiB offered with no Content-Length: the server must stop reading at its 4 MiB
    // manifest limit and answer 413, long before the client is done.
    let (sent, answer) = stream_chunked(berth.addr(), 2 << 30);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "expected 413, got {answer:?}"
    );
    assert!(answer.contains("SIZE_INVALID"), "{answer}");
    assert!(
        sent < 512 << 20,
        "the server read {sent} bytes before refusing"
    );
    // An announced size over the limit is refused before any body is read.
    let mut tcp = TcpStream::connect(berth.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "PUT /v2/hostile/manifests/v1 HTTP/1.1\r\nhost: x\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: {}\r\n\r\n",
        8u64 << 30
    );
    tcp.write_all(head.as_bytes()).expect("head");
    let mut answer = vec![0u8; 4096];
    let n = tcp.read(&mut answer).expect("answer without a body");
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"));
    let after = berth.peak_rss_kib();
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB while refusing huge bodies"
    );
    // and the server still works
    assert_eq!(berth.get("/v2/").status, 200);
}
