//! The HTTP face of Berth, and the only crate that knows HTTP.
//!
//! * [`endpoint`]: `/v2/...` paths parsed into an [`endpoint::Endpoint`] before any handler runs.
//! * [`error`]: [`error::ApiError`], turned into the spec's status, code and JSON body in one place.
//! * `handlers`: one function per endpoint and method, calling `berth-registry`.
//! * [`metrics`]: Prometheus counters served on `/metrics`.
//! * [`tls`]: built-in TLS with a certificate reloaded when its files change.
//!
//! [`run`] takes a bound listener, so tests bind port 0 and drive a real server.

pub mod admission;
mod api;
pub mod audit;
pub mod auth;
pub mod client;
mod conn;
pub mod containerd;
pub mod endpoint;
pub mod error;
mod handlers;
pub mod metrics;
pub mod node;
pub mod p2p;
pub mod stall;
pub mod tls;
mod token;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use berth_registry::Registry;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

pub use auth::{AuthSettings, ChallengeKind};
pub use metrics::Metrics;
pub use tls::TlsSettings;

/// The connection a request arrived on, in every request's extensions: authentication
/// needs to know whether credentials crossed the network encrypted, and from where.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The request came through Berth's own TLS (not a terminating proxy in front of it).
    pub tls: bool,
}

impl AppState {
    /// The client's address for a request: the peer, or what trusted proxies say it is.
    pub fn client_ip(
        &self,
        conn: Option<&ConnInfo>,
        headers: &http::HeaderMap,
    ) -> Option<std::net::IpAddr> {
        conn.map(|c| client::client_ip(c.peer.ip(), headers, &self.config().trusted_proxies))
    }
}

/// HTTP-level settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Prefix for `Location` headers (`https://registry.example.com`); relative if unset.
    pub public_url: Option<String>,
    /// How long a client may take to send its request headers (slowloris guard). It also
    /// bounds the TLS handshake and, on a new connection, the wait for the first request
    /// (HTTP/1 or HTTP/2), counted from the accept.
    pub header_read_timeout: Duration,
    /// Connections open at once. At the limit a new connection evicts the one idle the
    /// longest; only when every connection has a request in flight is it closed at once.
    pub max_connections: usize,
    /// Connections open at once from one client (an IPv4 address, an IPv6 /64), counted
    /// by the peer address; trusted proxies are exempt. At the cap a new connection evicts
    /// that client's connection idle the longest, or is closed. 0: no cap.
    pub max_connections_per_client: usize,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    /// HTTP/1 keep-alive connections close sooner, at `header_read_timeout`.
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this certificate and key; plain HTTP if unset.
    pub tls: Option<TlsSettings>,
    /// Proxies whose `X-Forwarded-For` names the client (see [`client`]).
    pub trusted_proxies: client::TrustedProxies,
    /// Refusals are summed in the audit log over this long (see [`audit`]).
    pub audit_window: Duration,
    /// A response the client reads nothing of, or an upload body it sends nothing of,
    /// for this long is cut off (see [`stall`]).
    pub stall_timeout: Duration,
    /// The web interface (`/ui`); see [`ui`].
    pub ui: ui::UiConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            public_url: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_client: 256,
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            trusted_proxies: client::TrustedProxies::default(),
            audit_window: audit::WINDOW,
            stall_timeout: Duration::from_secs(60),
            ui: ui::UiConfig::default(),
        }
    }
}

struct Inner {
    registry: Registry,
    metrics: Metrics,
    config: ServerConfig,
    auth: Option<AuthSettings>,
    audit: audit::AuditSink,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// A server without authentication: every request may do everything.
    pub fn new(registry: Registry, config: ServerConfig) -> AppState {
        AppState::with_auth(registry, config, None)
    }

    /// A server that authenticates with `auth` (when set).
    pub fn with_auth(
        registry: Registry,
        config: ServerConfig,
        auth: Option<AuthSettings>,
    ) -> AppState {
        let metrics = Metrics::default();
        let audit = audit::AuditSink::start_with_window(
            registry.meta().clone(),
            metrics.audit.clone(),
            config.audit_window,
        );
        AppState(Arc::new(Inner {
            registry,
            metrics,
            config,
            auth,
            audit,
        }))
    }

    pub fn auth(&self) -> Option<&AuthSettings> {
        self.0.auth.as_ref()
    }

    /// Writes the queued audit records; call after [`run`] returns, before closing the
    /// metadata store.
    pub async fn flush_audit(&self) {
        self.0.audit.flush().await;
    }

    /// Queues a record for the audit log (see [`audit`]).
    pub fn audit(&self, r: berth_meta::AuditRecord) {
        self.0.audit.record(r);
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }
}

/// All routes: the distribution API under `/v2`, and the operational endpoints.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/token", get(token::get).post(token::post))
        .nest("/api/v1", api::router())
        .nest("/p2p/v1", p2p::router())
        .merge(ui::router())
        .fallback(handlers::dispatch)
        .with_state(state)
}

/// How long a connection told to close (evicted, idle, or at shutdown) may take to end on
/// its own, which an HTTP/2 client needs to answer the GOAWAY's PING; after that it is
/// dropped if it is idle. One with a request in flight is left to finish that request.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What every connection task shares.
struct Serving {
    table: Arc<conn::Table>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Plain HTTP: HTTP/1 or HTTP/2 (prior knowledge) told apart by the first bytes.
    auto: Builder<TokioExecutor>,
    /// TLS: the protocol ALPN chose, without reading anything first.
    h1: Builder<TokioExecutor>,
    h2: Builder<TokioExecutor>,
    first_request: Duration,
    idle: Duration,
    stall: Duration,
    write_stalls: stall::StallCount,
    timed_out: prometheus_client::metrics::family::Family<
        metrics::StageLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl Serving {
    fn timed_out(&self, stage: &'static str) {
        self.timed_out
            .get_or_create(&metrics::StageLabels { stage })
            .inc();
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
/// finish (up to the configured grace period). With TLS configured, a certificate or key
/// that cannot be loaded is an `InvalidInput` error before anything is accepted.
///
/// Connections are admitted through the connection table ([`conn`]): at
/// `max_connections` (or a client's cap) a new connection evicts the one idle the longest,
/// and is itself closed only when every connection is busy. Each connection's task
/// enforces the deadlines: the TLS handshake and the first request within
/// `header_read_timeout` of the accept, then `idle_timeout` with nothing in flight.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let tls = state.config().tls.clone();
    let app = router(state.clone());
    serve(listener, state, tls.as_ref(), app, shutdown).await
}

/// Serves the admission webhooks (`/validate`, `/mutate`) on their own listener, with the
/// webhook certificate (the API server calls webhooks over HTTPS only), under the same
/// connection limits and deadlines as the registry.
pub async fn run_admission(
    listener: TcpListener,
    state: AppState,
    tls: Option<TlsSettings>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = admission::router(state.clone());
    serve(listener, state, tls.as_ref(), app, shutdown).await
}

async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<&TlsSettings>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let config = state.config().clone();
    let tls = match tls {
        Some(settings) => Some(
            tls::acceptor(settings)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        ),
        None => None,
    };
    let table = conn::Table::new(
        conn::Limits {
            max: config.max_connections,
            per_client: config.max_connections_per_client,
            trusted: config.trusted_proxies.clone(),
        },
        state.metrics(),
    );
    let timed_out = state.metrics().connections_timed_out.clone();
    let mut auto = Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    auto.http2().timer(TokioTimer::new());
    let write_stalls = timed_out
        .get_or_create(&metrics::StageLabels {
            stage: "stalled_write",
        })
        .clone();
    let serving = Arc::new(Serving {
        table,
        tls,
        h1: auto.clone().http1_only(),
        h2: auto.clone().http2_only(),
        auto,
        first_request: config.header_read_timeout,
        idle: config.idle_timeout,
        stall: config.stall_timeout,
        write_stalls,
        timed_out,
    });
    // Every connection task holds a sender; shutdown waits until all are dropped.
    let (drain, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = match serving.table.admit(peer.ip()) {
            Ok(c) => c,
            Err(limit) => {
                tracing::warn!(%peer, ?limit, "connection limit reached with every connection busy; closing new connection");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            tls: serving.tls.is_some(),
        };
        let service = TowerToHyperService::new(with_conn_info(app.clone(), info));
        // The handshake runs in the connection's own task: a client that connects and
        // sends nothing must not hold up the accept loop.
        tokio::spawn(connection(
            Arc::clone(&serving),
            stream,
            peer,
            conn,
            service,
            drain.clone(),
        ));
    }
    drop(listener);
    // Agents' grants requests wait up to half a minute for news: answered now, they do
    // not hold the drain up (the agents ask another replica).
    state.registry().p2p_close();
    tracing::info!("shutting down: waiting for in-flight requests");
    serving.table.close_all();
    drop(drain);
    if tokio::time::timeout(config.shutdown_grace, drained.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    Ok(())
}

/// `app` with `info` in every request's extensions.
fn with_conn_info<B>(
    app: Router,
    info: ConnInfo,
) -> tower::util::MapRequest<Router, impl Fn(http::Request<B>) -> http::Request<B> + Clone>
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let insert = move |mut req: http::Request<B>| {
        req.extensions_mut().insert(info);
        req
    };
    app.map_request(insert)
}

/// Takes the connection out of the table when its task ends, however it ends.
struct Leave {
    table: Arc<conn::Table>,
    conn: Arc<conn::Conn>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.table.leave(&self.conn);
    }
}

/// One accepted connection, from the TLS handshake (if any) until it closes.
async fn connection<S>(
    serving: Arc<Serving>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    conn: Arc<conn::Conn>,
    service: S,
    _drain: tokio::sync::mpsc::Sender<()>,
) where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<axum::body::Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _leave = Leave {
        table: Arc::clone(&serving.table),
        conn: Arc::clone(&conn),
    };
    let service = conn::track(service, Arc::clone(&conn));
    let stream = stall::WriteStall::new(stream, serving.stall, serving.write_stalls.clone());
    let Some(acceptor) = &serving.tls else {
        let http = serving.auto.serve_connection(TokioIo::new(stream), service);
        drive(&serving, http, &conn, peer).await;
        return;
    };
    let handshake = tokio::time::timeout(serving.first_request, acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                serving.timed_out("tls_handshake");
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = conn.closed() => return,
    };
    // ALPN decided the protocol; reading the first bytes to guess would be one more wait
    // for a client to stall.
    let builder = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => &serving.h2,
        _ => &serving.h1,
    };
    let http = builder.serve_connection(TokioIo::new(stream), service);
    drive(&serving, http, &conn, peer).await;
}

/// Polls `http` until it ends, closing it gracefully when the table asks (eviction,
/// shutdown) or a deadline passes, and dropping it if it is still idle [`CLOSE_GRACE`]
/// later.
async fn drive<I, S, B>(
    serving: &Serving,
    http: hyper_util::server::conn::auto::Connection<'_, I, S, TokioExecutor>,
    conn: &conn::Conn,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    let mut http = std::pin::pin!(http);
    let first = match conn.watch(serving.first_request, serving.idle) {
        conn::Watch::At(t) => t,
        _ => tokio::time::Instant::now().into_std(),
    };
    let timer = tokio::time::sleep_until(first.into());
    let mut timer = std::pin::pin!(timer);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = http.as_mut() => {
                if let Err(e) = ended {
                    let header_timeout = e
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if header_timeout && !closing {
                        serving.timed_out("headers");
                    }
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = conn.closed(), if !closing => {
                closing = true;
                http.as_mut().graceful_shutdown();
                timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = &mut timer => {
                let now = tokio::time::Instant::now();
                if closing {
                    if !conn.busy() {
                        return;
                    }
                    timer.as_mut().reset(now + CLOSE_GRACE);
                    continue;
                }
                match conn.watch(serving.first_request, serving.idle) {
                    conn::Watch::At(t) => timer.as_mut().reset(t.into()),
                    expired => {
                        serving.timed_out(match expired {
                            conn::Watch::NoRequest => "first_request",
                            _ => "idle",
                        });
                        tracing::debug!(%peer, "closing an idle connection");
                        closing = true;
                        http.as_mut().graceful_shutdown();
                        timer.as_mut().reset(now + CLOSE_GRACE);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Extension;
    use axum::body::Body;

    #[tokio::test]
    async fn every_request_carries_its_connection() {
        let app = Router::new().route(
            "/",
            get(|Extension(info): Extension<ConnInfo>| async move {
                format!("{} {}", info.peer, info.tls)
            }),
        );
        let peer: SocketAddr = "192.0.2.9:40000".parse().expect("address");
        for tls in [false, true] {
            let resp = with_conn_info(app.clone(), ConnInfo { peer, tls })
                .oneshot(http::Request::new(Body::empty()))
                .await
                .expect("infallible");
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(body, format!("192.0.2.9:40000 {tls}").as_bytes());
        }
    }
}
