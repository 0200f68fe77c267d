//! Connections that ask for nothing cannot lock clients out (issue #13, item 1): a full
//! server evicts its connection idle the longest, a client's connections are capped per
//! address, and deadlines close what never asks or stops asking. Each test runs the real
//! server on 127.0.0.1:0 and attacks it over real sockets, from 127.0.0.x source addresses.

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_server::ServerConfig;
use berth_server::client::TrustedProxies;
use berth_server::tls::TlsSettings;
use bytes::Bytes;
use common::metric;
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// What the issue asks of a normal client while the attack is on.
const SERVED_WITHIN: Duration = Duration::from_secs(2);

struct Server {
    addr: SocketAddr,
    /// The CA's PEM when the server speaks TLS.
    ca: Option<Vec<u8>>,
    _server: common::TestServer,
    _pki: Option<tempfile::TempDir>,
}

async fn start(mut config: ServerConfig, tls: bool) -> Server {
    let mut ca = None;
    let mut pki = None;
    if tls {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_file, cert, key) = common::make_pki(dir.path());
        ca = Some(std::fs::read(ca_file).expect("CA"));
        config.tls = Some(TlsSettings {
            cert,
            key,
            reload_interval: Duration::from_secs(60),
        });
        pki = Some(dir);
    }
    let server = common::start(common::Setup {
        server: config,
        ..common::Setup::default()
    })
    .await;
    let addr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("server address");
    Server {
        addr,
        ca,
        _server: server,
        _pki: pki,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// A client with a connection pool of its own, so its first request opens a new
    /// connection.
    fn client(&self, from: Option<IpAddr>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .local_address(from);
        if let Some(pem) = &self.ca {
            b = b.tls_certs_only([reqwest::Certificate::from_pem(pem).expect("CA")]);
        }
        b.build().expect("client")
    }

    /// `GET /v2/` from a new client on a new connection: the client (kept, so its
    /// connection stays open and idle), the status and how long it took.
    async fn timed_get(&self, from: Option<IpAddr>) -> (reqwest::Client, StatusCode, Duration) {
        let client = self.client(from);
        let t = Instant::now();
        let r = client
            .get(self.url("/v2/"))
            .send()
            .await
            .expect("a normal client is served");
        (client, r.status(), t.elapsed())
    }

    /// `/metrics`, from a client that is kept open (returned) like a normal client.
    async fn metrics(&self) -> (reqwest::Client, String) {
        let client = self.client(None);
        let r = client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.expect("metrics text");
        (client, text)
    }

    /// A TCP connection from `src`.
    async fn connect_from(&self, src: IpAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(src, 0)).expect("bind source");
        socket.connect(self.addr).await.expect("connect")
    }

    /// A TLS connection from `src`, handshake done, offering `alpn`.
    async fn tls_from(
        &self,
        src: IpAddr,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let pem = self.ca.as_ref().expect("a TLS server");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls_pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tcp = self.connect_from(src).await;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }
}

type ReqBody = BoxBody<Bytes, std::io::Error>;

fn empty() -> ReqBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// An HTTP/2 client on `io` that sends a PING every 100 ms and answers the server's:
/// as alive as a connection can be without asking for anything. The handle ends when the
/// connection does.
async fn h2_client<I>(io: I) -> (SendRequest<ReqBody>, JoinHandle<hyper::Result<()>>)
where
    I: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .expect("HTTP/2 handshake");
    (send, tokio::spawn(conn))
}

async fn h2_get(send: &mut SendRequest<ReqBody>, path: &str) -> StatusCode {
    let req = http::Request::get(format!("http://127.0.0.1{path}"))
        .body(empty())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status();
    resp.into_body().collect().await.expect("body");
    status
}

/// The ways to hold a connection without asking for anything.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Connect and send nothing.
    SilentTcp,
    /// The HTTP/2 preface and an empty SETTINGS frame, then nothing.
    H2Preface,
    /// A complete HTTP/2 client that keeps PINGing and answering PINGs, but opens no
    /// stream.
    H2Pinger,
    /// A finished TLS handshake (offering h2, http/1.1, or no ALPN in turn), then nothing.
    SilentTls,
}

enum Held {
    Raw(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The request handle is kept: dropping it would end the connection.
    H2 {
        _send: SendRequest<ReqBody>,
        conn: JoinHandle<hyper::Result<()>>,
    },
}

impl Held {
    async fn open(kind: Kind, server: &Server, src: IpAddr, i: usize) -> Held {
        match kind {
            Kind::SilentTcp => Held::Raw(server.connect_from(src).await),
            Kind::H2Preface => {
                let mut tcp = server.connect_from(src).await;
                tcp.write_all(H2_PREFACE).await.expect("preface");
                tcp.write_all(&EMPTY_SETTINGS).await.expect("settings");
                Held::Raw(tcp)
            }
            Kind::H2Pinger => {
                let (send, conn) = h2_client(server.connect_from(src).await).await;
                Held::H2 { _send: send, conn }
            }
            Kind::SilentTls => {
                let alpn: &[&[u8]] = match i % 3 {
                    0 => &[b"h2"],
                    1 => &[b"http/1.1"],
                    _ => &[],
                };
                Held::Tls(Box::new(server.tls_from(src, alpn).await))
            }
        }
    }

    /// Whether the server still holds this connection open: reads whatever it sent
    /// (SETTINGS, session tickets) until the socket would block (open) or ends (closed).
    async fn is_open(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            let read = match self {
                Held::H2 { conn, .. } => return !conn.is_finished(),
                Held::Raw(tcp) => {
                    tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await
                }
                Held::Tls(tls) => {
                    tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await
                }
            };
            match read {
                Err(_) => return true,
                Ok(Ok(0) | Err(_)) => return false,
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Waits until the server closes this connection; how long that took from `since`.
    async fn closed_after(&mut self, since: Instant, limit: Duration) -> Duration {
        tokio::time::timeout(limit, async {
            loop {
                if !self.is_open().await {
                    return since.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the server closed the connection in time")
    }
}

/// Which of `held` the server still holds open, looked at all at once.
async fn still_open(held: &mut [Held]) -> Vec<bool> {
    futures_util::future::join_all(held.iter_mut().map(Held::is_open)).await
}

fn count_open(open: &[bool]) -> usize {
    open.iter().filter(|o| **o).count()
}

/// [`still_open`] once `expected` of `held` are open, or after 3 s (evicted connections
/// without a request in flight are dropped within a second).
async fn settle(held: &mut [Held], expected: usize) -> Vec<bool> {
    let t = Instant::now();
    loop {
        let open = still_open(held).await;
        if count_open(&open) == expected || t.elapsed() > Duration::from_secs(3) {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `max_connections` connections of `kind`, from 32 addresses or from one, then normal
/// clients: each is served within 2 s, displacing exactly one attacker connection, while
/// the attacker keeps the rest. Deadlines are long here, so only eviction can help.
async fn attack_then_serve(kind: Kind, many_sources: bool) {
    const MAX: usize = 32;
    const CLIENTS: usize = 5;
    let server = start(
        ServerConfig {
            max_connections: MAX,
            // Eviction alone, not the per-client cap, is on trial here.
            max_connections_per_client: 0,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        },
        matches!(kind, Kind::SilentTls),
    )
    .await;
    let mut held = Vec::new();
    for i in 0..MAX {
        let src = if many_sources {
            local(10 + u8::try_from(i).expect("small"))
        } else {
            local(2)
        };
        held.push(Held::open(kind, &server, src, i).await);
    }
    // The server has registered them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, status, took) = server.timed_get(None).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}");
        assert!(took < SERVED_WITHIN, "{kind:?}: served after {took:?}");
        clients.push(client);
    }
    let (_metrics_client, m) = server.metrics().await;
    let displaced = CLIENTS + 1;
    let open = count_open(&settle(&mut held, MAX - displaced).await);
    assert_eq!(
        open,
        MAX - displaced,
        "{kind:?}: each new client displaced one held connection; the attacker keeps the rest"
    );
    assert_eq!(
        metric::<u64>(&m, "berth_connections_evicted_total{reason=\"capacity\"}"),
        u64::try_from(displaced).expect("small"),
        "{m}"
    );
    assert_eq!(
        metric::<u64>(&m, "berth_connections_open"),
        u64::try_from(MAX).expect("small"),
        "the server was full throughout"
    );
    assert!(!m.contains("berth_connections_refused_total{"), "{m}");
    assert!(
        m.lines()
            .filter(|l| l.starts_with("berth_connections_timed_out_total{"))
            .all(|l| l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test]
async fn silent_tcp_from_many_addresses() {
    attack_then_serve(Kind::SilentTcp, true).await;
}

#[tokio::test]
async fn silent_tcp_from_one_address() {
    attack_then_serve(Kind::SilentTcp, false).await;
}

#[tokio::test]
async fn http2_preface_from_many_addresses() {
    attack_then_serve(Kind::H2Preface, true).await;
}

#[tokio::test]
async fn http2_preface_from_one_address() {
    attack_then_serve(Kind::H2Preface, false).await;
}

#[tokio::test]
async fn http2_pingers_without_streams_from_many_addresses() {
    attack_then_serve(Kind::H2Pinger, true).await;
}

#[tokio::test]
async fn http2_pingers_without_streams_from_one_address() {
    attack_then_serve(Kind::H2Pinger, false).await;
}

#[tokio::test]
async fn silent_after_tls_handshake_from_many_addresses() {
    attack_then_serve(Kind::SilentTls, true).await;
}

#[tokio::test]
async fn silent_after_tls_handshake_from_one_address() {
    attack_then_serve(Kind::SilentTls, false).await;
}

#[tokio::test]
async fn one_address_cannot_fill_the_server() {
    let server = start(
        ServerConfig {
            max_connections: 32,
            max_connections_per_client: 4,
            header_read_timeout: Duration::from_secs(30),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    // More connections from one address than the whole server holds.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(Held::Raw(server.connect_from(local(2)).await));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_client, status, took) = server.timed_get(Some(local(3))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(took < SERVED_WITHIN, "{took:?}");
    let open = settle(&mut held, 4).await;
    assert_eq!(
        open,
        [vec![false; 36], vec![true; 4]].concat(),
        "the address keeps its 4 newest connections"
    );
    let (_m, m) = server.metrics().await;
    assert_eq!(
        metric::<u64>(&m, "berth_connections_evicted_total{reason=\"per_client\"}"),
        36
    );
    assert_eq!(
        metric::<u64>(&m, "berth_connections_evicted_total{reason=\"capacity\"}"),
        0
    );
}

#[tokio::test]
async fn trusted_proxies_are_not_capped_per_address() {
    let server = start(
        ServerConfig {
            max_connections: 32,
            max_connections_per_client: 4,
            header_read_timeout: Duration::from_secs(30),
            trusted_proxies: TrustedProxies::parse(&["127.0.0.5"]).expect("proxies"),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let mut proxy = Vec::new();
    let mut other = Vec::new();
    for _ in 0..10 {
        proxy.push(Held::Raw(server.connect_from(local(5)).await));
        other.push(Held::Raw(server.connect_from(local(6)).await));
    }
    let other_open = count_open(&settle(&mut other, 4).await);
    let proxy_open = count_open(&still_open(&mut proxy).await);
    assert_eq!(
        proxy_open, 10,
        "the trusted proxy keeps all its connections"
    );
    assert_eq!(other_open, 4, "an ordinary address keeps its cap");
    let (_m, m) = server.metrics().await;
    assert_eq!(
        metric::<u64>(&m, "berth_connections_evicted_total{reason=\"per_client\"}"),
        6
    );
}

/// The body [`busy_from`] starts to send: "some", then 996 `x`.
fn busy_body() -> Vec<u8> {
    let mut body = b"some".to_vec();
    body.resize(1000, b'x');
    body
}

/// An HTTP/1 blob upload that does not finish sending its body: a request in flight, as a
/// slow upload is.
async fn busy_from(server: &Server, src: IpAddr) -> TcpStream {
    let mut tcp = server.connect_from(src).await;
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(busy_body()))
    );
    tcp.write_all(
        format!(
            "POST /v2/r/blobs/uploads/?digest={digest} HTTP/1.1\r\nhost: x\r\n\
             content-length: 1000\r\n\r\nsome"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    tcp
}

/// Whether the server closes `tcp` at once (within a second).
async fn closed_at_once(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn busy_connections_are_never_evicted_and_the_excess_is_refused() {
    let server = start(
        ServerConfig {
            max_connections: 4,
            max_connections_per_client: 2,
            header_read_timeout: Duration::from_secs(30),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let mut busy = vec![
        busy_from(&server, local(2)).await,
        busy_from(&server, local(2)).await,
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = server.connect_from(local(2)).await;
    assert!(
        closed_at_once(&mut third).await,
        "the client's cap is reached with busy connections"
    );
    busy.push(busy_from(&server, local(3)).await);
    busy.push(busy_from(&server, local(4)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fifth = server.connect_from(local(5)).await;
    assert!(
        closed_at_once(&mut fifth).await,
        "the server is full of busy connections"
    );
    for tcp in &mut busy {
        let mut buf = [0u8; 16];
        assert!(
            tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf))
                .await
                .is_err(),
            "no busy connection was closed"
        );
    }
    // One upload completes on a connection that stays open (keep-alive): the
    // connection is idle now, and the next newcomer evicts it instead of being refused.
    let mut done = busy.pop().expect("four");
    done.write_all(&busy_body()[4..])
        .await
        .expect("rest of the body");
    let mut buf = [0u8; 4096];
    let n = done.read(&mut buf).await.expect("response");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 201"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let (_m, m) = server.metrics().await;
    assert!(
        closed_at_once(&mut done).await,
        "the idle connection made room"
    );
    assert_eq!(
        metric::<u64>(&m, "berth_connections_refused_total{reason=\"per_client\"}"),
        1
    );
    assert_eq!(
        metric::<u64>(&m, "berth_connections_refused_total{reason=\"capacity\"}"),
        1
    );
    assert_eq!(
        metric::<u64>(&m, "berth_connections_evicted_total{reason=\"capacity\"}"),
        1
    );
}

#[tokio::test]
async fn connections_that_never_ask_close_at_the_first_request_deadline() {
    let server = start(
        ServerConfig {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let t = Instant::now();
    let mut held = Vec::new();
    for kind in [Kind::SilentTcp, Kind::H2Preface, Kind::H2Pinger] {
        held.push(Held::open(kind, &server, local(2), 0).await);
    }
    // An HTTP/1 keep-alive connection that stops asking closes at the same timeout.
    let mut tcp = server.connect_from(local(2)).await;
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    held.push(Held::Raw(tcp));
    let took = futures_util::future::join_all(
        held.iter_mut()
            .map(|h| h.closed_after(t, Duration::from_secs(4))),
    )
    .await;
    for took in took {
        assert!(took >= Duration::from_millis(900), "{took:?}");
    }
    let (_m, m) = server.metrics().await;
    assert_eq!(
        metric::<u64>(
            &m,
            "berth_connections_timed_out_total{stage=\"first_request\"}"
        ),
        3,
        "{m}"
    );
    assert_eq!(
        metric::<u64>(&m, "berth_connections_timed_out_total{stage=\"headers\"}"),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn tls_handshake_and_first_request_deadlines() {
    let server = start(
        ServerConfig {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        },
        true,
    )
    .await;
    // No handshake at all.
    let t = Instant::now();
    let mut raw = Held::Raw(server.connect_from(local(2)).await);
    let took = raw.closed_after(t, Duration::from_secs(4)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // A handshake that chose h2, then silence: HTTP/2 has no header timeout of its own.
    let t = Instant::now();
    let mut tls = Held::Tls(Box::new(server.tls_from(local(2), &[b"h2"]).await));
    let took = tls.closed_after(t, Duration::from_secs(4)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let (_m, m) = server.metrics().await;
    assert_eq!(
        metric::<u64>(
            &m,
            "berth_connections_timed_out_total{stage=\"tls_handshake\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric::<u64>(
            &m,
            "berth_connections_timed_out_total{stage=\"first_request\"}"
        ),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn tls_serves_the_protocol_alpn_chose() {
    let server = start(ServerConfig::default(), true).await;
    // h2 by ALPN.
    let tls = server.tls_from(local(2), &[b"h2"]).await;
    let (mut send, _conn) = h2_client(tls).await;
    assert_eq!(h2_get(&mut send, "/v2/").await, StatusCode::OK);
    // http/1.1 by ALPN: an HTTP/2 preface is not sniffed and served as HTTP/2 anyway.
    let mut tls = server.tls_from(local(2), &[b"http/1.1"]).await;
    tls.write_all(H2_PREFACE).await.expect("preface");
    tls.write_all(&EMPTY_SETTINGS).await.expect("settings");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap_or(0);
    assert!(
        n == 0 || buf[..n].starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // No ALPN: HTTP/1.1.
    let (_c, status, _) = server.timed_get(None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn http2_idle_timeout_closes_a_pinging_connection_without_streams() {
    let server = start(
        ServerConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(2),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let (mut send, conn) = h2_client(server.connect_from(local(2)).await).await;
    assert_eq!(h2_get(&mut send, "/v2/").await, StatusCode::OK);
    let t = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(6), conn)
        .await
        .expect("closed in time")
        .expect("task");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(
        ended.is_ok(),
        "closed with GOAWAY, not torn down: {ended:?}"
    );
    let (_m, m) = server.metrics().await;
    assert_eq!(
        metric::<u64>(&m, "berth_connections_timed_out_total{stage=\"idle\"}"),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn a_long_http2_request_is_neither_idle_closed_nor_evicted() {
    let server = start(
        ServerConfig {
            max_connections: 4,
            max_connections_per_client: 0,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    let (mut send, conn) = h2_client(server.connect_from(local(2)).await).await;
    let req = http::Request::post("http://127.0.0.1/v2/r/blobs/uploads/")
        .body(empty())
        .expect("request");
    let resp = send.send_request(req).await.expect("start upload");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    // 12 chunks, 250 ms apart: three seconds in flight, three idle timeouts long.
    let chunks: Vec<Bytes> = (0..12u8).map(|i| Bytes::from(vec![i; 1000])).collect();
    let data: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let body = futures_util::StreamExt::then(futures_util::stream::iter(chunks), |c| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok::<_, std::io::Error>(hyper::body::Frame::data(c))
    });
    let req = http::Request::patch(format!("http://127.0.0.1{location}"))
        .body(http_body_util::StreamBody::new(body).boxed())
        .expect("request");
    let patch = tokio::spawn(send.send_request(req));
    // Meanwhile newcomers keep the server full: each evicts an idle connection.
    let mut newcomers = Vec::new();
    for _ in 0..8 {
        newcomers.push(server.connect_from(local(3)).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resp = patch.await.expect("task").expect("upload answered");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(!conn.is_finished(), "the busy connection was kept");
    // The same connection goes on serving.
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
    );
    let req = http::Request::put(format!("http://127.0.0.1{location}?digest={digest}"))
        .body(empty())
        .expect("request");
    let resp = send.send_request(req).await.expect("finish upload");
    assert_eq!(resp.status(), StatusCode::CREATED);
    drop(newcomers);
    let (_m, m) = server.metrics().await;
    assert!(
        metric::<u64>(&m, "berth_connections_evicted_total{reason=\"capacity\"}") >= 4,
        "{m}"
    );
}

/// A request in flight keeps its connection from eviction, so one that makes no progress
/// must not last forever: an upload whose body stops, and a download nobody reads, are
/// cut off after the stall timeout, while the connection count comes back down.
#[tokio::test]
async fn stalled_uploads_and_unread_downloads_are_cut_off() {
    let server = start(
        ServerConfig {
            stall_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            ..ServerConfig::default()
        },
        false,
    )
    .await;
    // An upload that sends 4 of its 1000 bytes and then nothing.
    let mut upload = busy_from(&server, local(2)).await;
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), upload.read(&mut buf))
        .await
        .expect("the stalled upload is answered")
        .expect("read");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        n == 0 || head.starts_with("HTTP/1.1 4"),
        "a client error or a closed connection: {head}"
    );

    // A 32 MiB blob, more than loopback's socket buffers hold, asked for and never read.
    let blob = vec![7u8; 32 << 20];
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob))
    );
    let r = server
        .client(None)
        .post(server.url(&format!("/v2/r/blobs/uploads/?digest={digest}")))
        .body(blob)
        .send()
        .await
        .expect("push");
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut reader = server.connect_from(local(3)).await;
    reader
        .write_all(format!("GET /v2/r/blobs/{digest} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut cut_off = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_c, m) = server.metrics().await;
        if metric::<u64>(
            &m,
            "berth_connections_timed_out_total{stage=\"stalled_write\"}",
        ) == 1
        {
            cut_off = true;
            assert_eq!(
                metric::<u64>(
                    &m,
                    "berth_connections_timed_out_total{stage=\"stalled_body\"}"
                ),
                1
            );
            break;
        }
    }
    assert!(cut_off, "the unread download was never cut off");
    // What the socket still holds drains, then the connection is gone.
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the connection stayed open after {total} bytes"),
        }
    }
    assert!(total < 32 << 20, "the whole blob arrived: {total} bytes");
}
