//! A small client of containerd's content service (`containerd.services.content.v1.Content`),
//! for the node agent to serve peers layers containerd already holds: `Info`, `List` and
//! `Read`, nothing that writes. gRPC is HTTP/2 over containerd's unix socket with
//! length-prefixed protobuf messages; the few messages needed are encoded and decoded by
//! hand in `pb`, which costs less than a code generator and a gRPC stack in the build.
//! containerd verified each blob's digest when it committed it; the agent still checks
//! every piece it reads against the central Berth's piece hashes before serving it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};

const SERVICE: &str = "/containerd.services.content.v1.Content/";
/// No message of these calls comes near this (containerd reads in chunks of about 1 MiB).
const MAX_MESSAGE: usize = 16 << 20;
/// gRPC status `NOT_FOUND`.
const NOT_FOUND: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentInfo {
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("containerd socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("containerd: {0}")]
    Transport(String),
    #[error("containerd answered gRPC status {code}: {message}")]
    Status { code: u32, message: String },
    #[error("containerd's answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("containerd sent nothing for {0:?}")]
    Timeout(Duration),
}

impl ContentError {
    /// containerd does not have (or no longer has) the blob.
    pub fn not_found(&self) -> bool {
        matches!(self, ContentError::Status { code, .. } if *code == NOT_FOUND)
    }
}

/// containerd's content store in one namespace, reached through its socket.
#[derive(Debug, Clone)]
pub struct ContentStore {
    socket: PathBuf,
    namespace: String,
    /// Every wait on containerd is bounded by this.
    timeout: Duration,
}

impl ContentStore {
    pub fn new(socket: PathBuf, namespace: String, timeout: Duration) -> ContentStore {
        ContentStore {
            socket,
            namespace,
            timeout,
        }
    }

    /// The blob's size, `None` when containerd does not hold it.
    pub async fn info(&self, digest: &str) -> Result<Option<ContentInfo>, ContentError> {
        let mut s = match self.call("Info", pb::info_request(digest)).await {
            Ok(s) => s,
            Err(e) if e.not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let m = match s.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(ContentError::Malformed("no Info answer")),
            Err(e) if e.not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        s.finish().await?;
        pb::decode_info_response(&m).map(Some)
    }

    /// Every blob in the namespace's content store.
    pub async fn list(&self) -> Result<Vec<ContentInfo>, ContentError> {
        let mut s = self.call("List", pb::list_request(&[])).await?;
        let mut out = Vec::new();
        while let Some(m) = s.message().await? {
            out.extend(pb::decode_list_response(&m)?);
        }
        Ok(out)
    }

    /// `size` bytes of the blob from `offset`, all of them or an error.
    pub async fn read(
        &self,
        digest: &str,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, ContentError> {
        let (Ok(o), Ok(n)) = (i64::try_from(offset), i64::try_from(size)) else {
            return Err(ContentError::Malformed("range out of bounds"));
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut s = self.call("Read", pb::read_request(digest, o, n)).await?;
        let mut out = Vec::with_capacity(size as usize);
        while let Some(m) = s.message().await? {
            let (at, data) = pb::decode_read_response(&m)?;
            // containerd numbers the answers from the start of the read, not of the blob.
            let done = out.len() as u64;
            if (at != done && at != offset + done) || out.len() + data.len() > size as usize {
                return Err(ContentError::Malformed("read answers out of order"));
            }
            out.extend_from_slice(data);
        }
        if out.len() as u64 != size {
            return Err(ContentError::Malformed("short read"));
        }
        Ok(out)
    }

    async fn call(&self, method: &str, message: Vec<u8>) -> Result<Messages, ContentError> {
        let path = format!("{SERVICE}{method}");
        open_call(&self.socket, &self.namespace, &path, message, self.timeout).await
    }
}

/// One unary call of any containerd gRPC service (`path` is `/<package>.<Service>/<Method>`)
/// in `namespace`: the answer's single message. Every wait is bounded by `timeout`, which
/// must cover the whole call, since a unary answer's headers come with its message.
pub async fn unary(
    socket: &Path,
    namespace: &str,
    path: &str,
    message: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, ContentError> {
    let mut s = open_call(socket, namespace, path, message, timeout).await?;
    let m = s
        .message()
        .await?
        .ok_or(ContentError::Malformed("no answer"))?;
    s.finish().await?;
    Ok(m)
}

/// One unary or server-streaming call on a connection of its own (a unix socket is cheap
/// to open, and no connection state outlives a call).
async fn open_call(
    socket: &Path,
    namespace: &str,
    path: &str,
    message: Vec<u8>,
    t: Duration,
) -> Result<Messages, ContentError> {
    let bounded = |_: tokio::time::error::Elapsed| ContentError::Timeout(t);
    let stream = tokio::time::timeout(t, tokio::net::UnixStream::connect(socket))
        .await
        .map_err(bounded)?
        .map_err(|source| ContentError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut send, conn) = tokio::time::timeout(
        t,
        hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        ),
    )
    .await
    .map_err(bounded)?
    .map_err(|e| ContentError::Transport(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "containerd connection ended");
        }
    });
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let req = http::Request::post(format!("http://localhost{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header("containerd-namespace", namespace)
        .body(Full::new(Bytes::from(framed)))
        .map_err(|e| ContentError::Transport(e.to_string()))?;
    let resp = tokio::time::timeout(t, send.send_request(req))
        .await
        .map_err(bounded)?
        .map_err(|e| ContentError::Transport(e.to_string()))?;
    if resp.status() != http::StatusCode::OK {
        return Err(ContentError::Transport(format!("HTTP {}", resp.status())));
    }
    // A call that fails at once, or a stream with no message (an empty List), answers
    // with headers only ("Trailers-Only"), the status among them.
    let ended = check_status(resp.headers())?;
    Ok(Messages {
        body: resp.into_body(),
        buf: BytesMut::new(),
        ended,
        timeout: t,
    })
}

/// `grpc-status` (and `grpc-message`) of headers or trailers: `Ok(true)` when they say OK,
/// `Ok(false)` when they say nothing.
fn check_status(h: &http::HeaderMap) -> Result<bool, ContentError> {
    let Some(code) = h.get("grpc-status") else {
        return Ok(false);
    };
    let code: u32 = code
        .to_str()
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or(ContentError::Malformed("grpc-status"))?;
    if code == 0 {
        return Ok(true);
    }
    let message = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Err(ContentError::Status { code, message })
}

/// The messages of an answer, in order, then its status.
struct Messages {
    body: hyper::body::Incoming,
    buf: BytesMut,
    ended: bool,
    timeout: Duration,
}

impl Messages {
    async fn message(&mut self) -> Result<Option<Bytes>, ContentError> {
        loop {
            if self.buf.len() >= 5 {
                let compressed = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if compressed != 0 {
                    return Err(ContentError::Malformed("compressed message"));
                }
                if len > MAX_MESSAGE {
                    return Err(ContentError::Malformed("message too large"));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ContentError::Malformed("truncated message"))
                };
            }
            let frame = match tokio::time::timeout(self.timeout, self.body.frame()).await {
                Err(_) => return Err(ContentError::Timeout(self.timeout)),
                Ok(None) => return Err(ContentError::Malformed("answer without a status")),
                Ok(Some(Err(e))) => return Err(ContentError::Transport(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            match frame.into_data() {
                Ok(d) => self.buf.extend_from_slice(&d),
                Err(f) => {
                    if let Ok(trailers) = f.into_trailers() {
                        if !check_status(&trailers)? {
                            return Err(ContentError::Malformed("trailers without a status"));
                        }
                        self.ended = true;
                    }
                }
            }
        }
    }

    /// Reads to the status, which must be OK (a unary call's single message was read).
    async fn finish(&mut self) -> Result<(), ContentError> {
        match self.message().await? {
            None => Ok(()),
            Some(_) => Err(ContentError::Malformed("more than one answer")),
        }
    }
}

/// The protobuf messages of the content service this client uses, by the field numbers of
/// containerd's `api/services/content/v1/content.proto`:
/// `InfoRequest { string digest = 1; }`, `InfoResponse { Info info = 1; }`,
/// `Info { string digest = 1; int64 size = 2; ... }`,
/// `ListContentRequest { repeated string filters = 1; }`,
/// `ListContentResponse { repeated Info info = 1; }`,
/// `ReadContentRequest { string digest = 1; int64 offset = 2; int64 size = 3; }`,
/// `ReadContentResponse { int64 offset = 1; bytes data = 2; }`.
/// Fields this client does not know (timestamps, labels) are skipped by wire type.
pub(crate) mod pb {
    use super::{ContentError, ContentInfo};

    const VARINT: u8 = 0;
    const FIXED64: u8 = 1;
    const LEN: u8 = 2;
    const FIXED32: u8 = 5;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
        put_varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    /// proto3 leaves fields at their default value out.
    fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        put_key(out, field, LEN);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn put_int64(out: &mut Vec<u8>, field: u32, v: i64) {
        if v == 0 {
            return;
        }
        put_key(out, field, VARINT);
        // Negative int64 are ten-byte varints of their two's complement.
        put_varint(out, v as u64);
    }

    pub fn info_request(digest: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, 1, digest.as_bytes());
        out
    }

    pub fn list_request(filters: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in filters {
            // A repeated string keeps empty elements.
            put_key(&mut out, 1, LEN);
            put_varint(&mut out, f.len() as u64);
            out.extend_from_slice(f.as_bytes());
        }
        out
    }

    pub fn read_request(digest: &str, offset: i64, size: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, 1, digest.as_bytes());
        put_int64(&mut out, 2, offset);
        put_int64(&mut out, 3, size);
        out
    }

    pub(crate) enum Value<'a> {
        Varint(u64),
        Len(&'a [u8]),
        Fixed,
    }

    fn varint(buf: &mut &[u8]) -> Result<u64, ContentError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = buf.split_first() else {
                return Err(ContentError::Malformed("truncated varint"));
            };
            *buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ContentError::Malformed("varint longer than ten bytes"))
    }

    /// The fields of a message, in wire order.
    pub(crate) fn fields(mut buf: &[u8]) -> Result<Vec<(u32, Value<'_>)>, ContentError> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let field = u32::try_from(key >> 3).map_err(|_| ContentError::Malformed("field"))?;
            let v = match (key & 7) as u8 {
                VARINT => Value::Varint(varint(&mut buf)?),
                LEN => {
                    let n = usize::try_from(varint(&mut buf)?)
                        .map_err(|_| ContentError::Malformed("length"))?;
                    if n > buf.len() {
                        return Err(ContentError::Malformed("truncated field"));
                    }
                    let (v, rest) = buf.split_at(n);
                    buf = rest;
                    Value::Len(v)
                }
                w @ (FIXED64 | FIXED32) => {
                    let n = if w == FIXED64 { 8 } else { 4 };
                    if n > buf.len() {
                        return Err(ContentError::Malformed("truncated field"));
                    }
                    buf = &buf[n..];
                    Value::Fixed
                }
                _ => return Err(ContentError::Malformed("unknown wire type")),
            };
            out.push((field, v));
        }
        Ok(out)
    }

    pub fn decode_info(buf: &[u8]) -> Result<ContentInfo, ContentError> {
        let mut info = ContentInfo {
            digest: String::new(),
            size: 0,
        };
        for (f, v) in fields(buf)? {
            match (f, v) {
                (1, Value::Len(d)) => {
                    info.digest = std::str::from_utf8(d)
                        .map_err(|_| ContentError::Malformed("digest"))?
                        .to_owned();
                }
                (2, Value::Varint(n)) => {
                    info.size = u64::try_from(n as i64)
                        .map_err(|_| ContentError::Malformed("negative size"))?;
                }
                (1 | 2, _) => return Err(ContentError::Malformed("Info field of a wrong type")),
                _ => {}
            }
        }
        Ok(info)
    }

    pub fn decode_info_response(buf: &[u8]) -> Result<ContentInfo, ContentError> {
        let mut info = None;
        for (f, v) in fields(buf)? {
            if let (1, Value::Len(m)) = (f, v) {
                info = Some(decode_info(m)?);
            }
        }
        info.ok_or(ContentError::Malformed("InfoResponse without info"))
    }

    pub fn decode_list_response(buf: &[u8]) -> Result<Vec<ContentInfo>, ContentError> {
        let mut out = Vec::new();
        for (f, v) in fields(buf)? {
            if let (1, Value::Len(m)) = (f, v) {
                out.push(decode_info(m)?);
            }
        }
        Ok(out)
    }

    /// (offset, data) of a `ReadContentResponse`.
    pub fn decode_read_response(buf: &[u8]) -> Result<(u64, &[u8]), ContentError> {
        let mut offset = 0u64;
        let mut data: &[u8] = &[];
        for (f, v) in fields(buf)? {
            match (f, v) {
                (1, Value::Varint(n)) => {
                    offset = u64::try_from(n as i64)
                        .map_err(|_| ContentError::Malformed("negative offset"))?;
                }
                (2, Value::Len(d)) => data = d,
                (1 | 2, _) => {
                    return Err(ContentError::Malformed("ReadContentResponse field type"));
                }
                _ => {}
            }
        }
        Ok((offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::pb;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn info_request_is_field_one_as_a_string() {
        let m = pb::info_request(D);
        // key (1 << 3 | 2) = 0x0a, length 71 = 0x47, then the digest's bytes.
        assert_eq!(&m[..2], &[0x0a, 0x47]);
        assert_eq!(&m[2..], D.as_bytes());
        assert_eq!(pb::info_request(""), Vec::<u8>::new());
    }

    #[test]
    fn read_request_encodes_offset_and_size_as_varints() {
        let m = pb::read_request(D, 4 << 20, 300);
        let mut want = vec![0x0a, 0x47];
        want.extend_from_slice(D.as_bytes());
        // field 2 varint: key 0x10; 4 MiB = 0x400000 → 80 80 80 02.
        want.extend_from_slice(&[0x10, 0x80, 0x80, 0x80, 0x02]);
        // field 3 varint: key 0x18; 300 → ac 02.
        want.extend_from_slice(&[0x18, 0xac, 0x02]);
        assert_eq!(m, want);
        // Offset 0 (a default) is left out; size 0 too.
        let mut want = vec![0x0a, 0x47];
        want.extend_from_slice(D.as_bytes());
        assert_eq!(pb::read_request(D, 0, 0), want);
        // A negative int64 is a ten-byte varint.
        let n = pb::read_request("", -1, 0);
        assert_eq!(n, [&[0x10][..], &[0xff; 9], &[0x01]].concat());
    }

    #[test]
    fn list_request_repeats_field_one() {
        assert_eq!(pb::list_request(&[]), Vec::<u8>::new());
        assert_eq!(
            pb::list_request(&["a", ""]),
            vec![0x0a, 0x01, b'a', 0x0a, 0x00]
        );
    }

    /// An `Info` as containerd sends it: digest, size, a `committed_at` timestamp (field 3,
    /// a message), an `updated_at` (4) and a label (5, a map entry), all to be skipped.
    fn info_bytes(size_varint: &[u8]) -> Vec<u8> {
        let mut m = vec![0x0a, 0x47];
        m.extend_from_slice(D.as_bytes());
        m.push(0x10);
        m.extend_from_slice(size_varint);
        // committed_at { seconds = 1 (0x08 0x01), nanos = 2 (0x10 0x02) }
        m.extend_from_slice(&[0x1a, 0x04, 0x08, 0x01, 0x10, 0x02]);
        m.extend_from_slice(&[0x22, 0x00]);
        // labels { key = "k", value = "v" }
        m.extend_from_slice(&[0x2a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v']);
        m
    }

    #[test]
    fn info_response_decodes_digest_and_size_and_skips_the_rest() {
        // 6 MiB + 1 = 0x600001 → 81 80 80 03.
        let info = info_bytes(&[0x81, 0x80, 0x80, 0x03]);
        let mut resp = vec![0x0a, info.len() as u8];
        resp.extend_from_slice(&info);
        let got = pb::decode_info_response(&resp).expect("decodes");
        assert_eq!(got.digest, D);
        assert_eq!(got.size, (6 << 20) + 1);
        assert!(pb::decode_info_response(&[]).is_err(), "no info field");
        // Cut anywhere inside, it is an error, never a wrong answer.
        for cut in 1..resp.len() {
            if let Ok(i) = pb::decode_info_response(&resp[..cut]) {
                panic!("decoded {i:?} from {cut} bytes");
            }
        }
        // A fixed64 and a fixed32 field of a later version are skipped.
        let mut newer = resp.clone();
        newer.extend_from_slice(&[0x31, 1, 2, 3, 4, 5, 6, 7, 8, 0x3d, 1, 2, 3, 4]);
        assert_eq!(pb::decode_info_response(&newer).expect("decodes"), got);
    }

    #[test]
    fn list_response_holds_every_info() {
        let a = info_bytes(&[0x05]);
        let b = info_bytes(&[0x80, 0x01]);
        let mut resp = vec![0x0a, a.len() as u8];
        resp.extend_from_slice(&a);
        resp.extend_from_slice(&[0x0a, b.len() as u8]);
        resp.extend_from_slice(&b);
        let got = pb::decode_list_response(&resp).expect("decodes");
        assert_eq!(got.iter().map(|i| i.size).collect::<Vec<_>>(), vec![5, 128]);
        assert_eq!(pb::decode_list_response(&[]).expect("empty"), vec![]);
    }

    #[test]
    fn read_response_gives_offset_and_data() {
        // offset 4 MiB (field 1 varint), data "abc" (field 2 bytes).
        let m = [0x08, 0x80, 0x80, 0x80, 0x02, 0x12, 0x03, b'a', b'b', b'c'];
        let (off, data) = pb::decode_read_response(&m).expect("decodes");
        assert_eq!((off, data), (4 << 20, &b"abc"[..]));
        // Offset 0 is absent on the wire.
        assert_eq!(
            pb::decode_read_response(&[0x12, 0x01, b'x']).expect("decodes"),
            (0, &b"x"[..])
        );
        // A negative offset, a wrong wire type, an unknown wire type: errors.
        let neg = [&[0x08][..], &[0xff; 9], &[0x01]].concat();
        assert!(pb::decode_read_response(&neg).is_err());
        assert!(pb::decode_read_response(&[0x0a, 0x00]).is_err());
        assert!(pb::decode_read_response(&[0x0b]).is_err());
        // An eleven-byte varint is refused.
        let long = [&[0x08][..], &[0xff; 10], &[0x01]].concat();
        assert!(pb::decode_read_response(&long).is_err());
    }
}
