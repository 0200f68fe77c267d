//! The HTTP face of Berth, and the only crate that knows HTTP.
//!
//! * [`endpoint`]: `/v2/...` paths parsed into an [`endpoint::Endpoint`] before any handler runs.
//! * [`error`]: [`error::ApiError`], turned into the spec's status, code and JSON body in one place.
//! * `handlers`: one function per endpoint and method, calling `berth-registry`.
//! * [`metrics`]: Prometheus counters served on `/metrics`.
//!
//! [`run`] takes a bound listener, so tests bind port 0 and drive a real server.

mod api;
pub mod audit;
pub mod auth;
pub mod endpoint;
pub mod error;
mod handlers;
pub mod metrics;
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
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

pub use auth::{AuthSettings, ChallengeKind};
pub use metrics::Metrics;

/// The connection a request arrived on, put in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            public_url: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(30),
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
        let audit = audit::AuditSink::start(
            registry.meta().clone(),
            metrics.audit_dropped.clone(),
            metrics.audit_written.clone(),
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
/// finish (up to the configured grace period).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let config = state.config().clone();
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
        let info = ConnInfo { peer, tls: false };
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info);
                req
            },
        ));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
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
