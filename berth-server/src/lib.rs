//! The HTTP face of Berth, and the only crate that knows HTTP.
//!
//! * [`endpoint`]: `/v2/...` paths parsed into an [`endpoint::Endpoint`] before any handler runs.
//! * [`error`]: [`error::ApiError`], turned into the spec's status, code and JSON body in one place.
//! * `handlers`: one function per endpoint and method, calling `berth-registry`.
//! * [`metrics`]: Prometheus counters served on `/metrics`.
//! * [`tls`]: built-in TLS with a certificate reloaded when its files change.
//!
//! [`run`] takes a bound listener, so tests bind port 0 and drive a real server.

mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod endpoint;
pub mod error;
mod handlers;
pub mod metrics;
pub mod tls;
mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use berth_registry::Registry;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    /// How long a client may take to send its request headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this certificate and key; plain HTTP if unset.
    pub tls: Option<TlsSettings>,
    /// Proxies whose `X-Forwarded-For` names the client (see [`client`]).
    pub trusted_proxies: client::TrustedProxies,
    /// Refusals are summed in the audit log over this long (see [`audit`]).
    pub audit_window: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            public_url: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            trusted_proxies: client::TrustedProxies::default(),
            audit_window: audit::WINDOW,
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
        .fallback(handlers::dispatch)
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
/// finish (up to the configured grace period). With TLS configured, a certificate or key
/// that cannot be loaded is an `InvalidInput` error before anything is accepted.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let config = state.config().clone();
    let tls = match &config.tls {
        Some(settings) => Some(
            tls::acceptor(settings)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        ),
        None => None,
    };
    let app = router(state);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        let service = TowerToHyperService::new(with_conn_info(app.clone(), info));
        // Subscribed now, so shutdown also waits for a handshake still in progress.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        match &tls {
            None => {
                tokio::spawn(serve_connection(
                    builder, stream, service, watcher, peer, slot,
                ));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let timeout = config.header_read_timeout;
                // The handshake runs in the connection's own task: a client that connects
                // and sends nothing must not hold up the accept loop.
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(builder, stream, service, watcher, peer, slot).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
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

/// Serves one accepted (and, with TLS, handshaken) connection until it ends.
async fn serve_connection<I, S>(
    builder: Builder<TokioExecutor>,
    io: I,
    service: S,
    watcher: Watcher,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<axum::body::Body>,
            Error = std::convert::Infallible,
        > + Send
        + Sync
        + Clone
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(slot);
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
