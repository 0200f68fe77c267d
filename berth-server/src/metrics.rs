//! Prometheus metrics, kept in the server state rather than a global so that every test
//! server counts on its own.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: String,
    pub status: u16,
}

/// Why a request or connection was refused by a defence that has several reasons
/// (for connections: `capacity`, the server was full, or `per_client`, its client
/// address or /64 was).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Which deadline closed a connection: `tls_handshake`, `first_request` (no request
/// started in time: silence, an HTTP/2 preface alone), `headers` (an HTTP/1 request head,
/// or the next one on a keep-alive connection, not complete in time), `idle` (no request
/// in flight for the idle timeout).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub connections_evicted: Family<ReasonLabels, Counter>,
    pub connections_timed_out: Family<StageLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub uploads_started: Counter,
    pub uploads_in_progress: Gauge,
    pub login_failures: Counter,
    pub tokens_issued: Counter,
    pub audit: crate::audit::AuditCounters,
    /// 401 challenges to callers without credentials: how every token-flow pull starts,
    /// so counted here rather than written to the audit log as refusals.
    pub challenges: Counter,
    /// Token requests refused before any token was made: `scope` (a scope Berth cannot
    /// read, or of an unknown type), `management-refresh` (the management scope asked
    /// through a refresh token).
    pub tokens_refused: Family<ReasonLabels, Counter>,
    /// `/api/v1` requests refused for the kind of credential: `token-scope` (a token
    /// without the management scope), `anonymous-token`.
    pub api_refused: Family<ReasonLabels, Counter>,
    /// Web interface requests refused by a defence: `host` (a `Host` Berth does not serve:
    /// DNS rebinding), `csrf` (a form without its session's token), `origin` (a POST from
    /// another origin), `read-only` (a change with authentication off), `denied` (a change
    /// the caller's role does not allow).
    pub ui_refused: Family<ReasonLabels, Counter>,
    pub metadata_unavailable: Counter,
    pub storage_unavailable: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let uploads_started = Counter::default();
        let uploads_in_progress = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register("received_bytes", "Blob bytes received", bytes_in.clone());
        registry.register("sent_bytes", "Blob bytes sent", bytes_out.clone());
        registry.register(
            "upload_sessions_started",
            "Blob upload sessions started",
            uploads_started.clone(),
        );
        registry.register(
            "upload_sessions_open",
            "Chunked upload sessions opened by this process and not yet finished",
            uploads_in_progress.clone(),
        );
        let login_failures = Counter::default();
        let tokens_issued = Counter::default();
        let audit = crate::audit::AuditCounters::default();
        let challenges = Counter::default();
        registry.register(
            "login_failures",
            "Logins refused: bad credentials or throttled",
            login_failures.clone(),
        );
        registry.register(
            "tokens_issued",
            "Access tokens issued",
            tokens_issued.clone(),
        );
        registry.register(
            "audit_records_written",
            "Asynchronous audit records written (pulls, logins, refusals)",
            audit.written.clone(),
        );
        registry.register(
            "audit_records_dropped",
            "Asynchronous audit records dropped because the queue was full or the write failed",
            audit.dropped.clone(),
        );
        registry.register(
            "audit_refusals_summed",
            "Refused requests and failed logins folded into a summed audit row (one row per \
             client address and window) instead of a row each",
            audit.refusals_summed.clone(),
        );
        registry.register(
            "auth_challenges",
            "401 challenges sent to callers without credentials (not audited: every token-flow \
             pull starts with one)",
            challenges.clone(),
        );
        let tokens_refused = Family::<ReasonLabels, Counter>::default();
        let api_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "token_requests_refused",
            "Token requests refused: unreadable or unknown scope types, the management scope through a refresh token",
            tokens_refused.clone(),
        );
        registry.register(
            "api_credentials_refused",
            "Management API requests refused for their credential: a token without the management scope, an anonymous token",
            api_refused.clone(),
        );
        let ui_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ui_refused",
            "Web interface requests refused by a defence: foreign Host, missing or wrong CSRF token, cross-origin POST, a change while read-only or not allowed",
            ui_refused.clone(),
        );
        let metadata_unavailable = Counter::default();
        registry.register(
            "metadata_unavailable_responses",
            "Registry requests answered 503 UNAVAILABLE because the metadata store was unreachable, restarting or read-only",
            metadata_unavailable.clone(),
        );
        let storage_unavailable = Counter::default();
        registry.register(
            "storage_unavailable_responses",
            "Registry requests answered 503 UNAVAILABLE because the blob store still failed, throttled or stalled after the client's retries",
            storage_unavailable.clone(),
        );
        let connections_open = Gauge::default();
        let connections_accepted = Counter::default();
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        let connections_evicted = Family::<ReasonLabels, Counter>::default();
        let connections_timed_out = Family::<StageLabels, Counter>::default();
        registry.register(
            "connections_open",
            "Connections this process holds open (counted against max_connections)",
            connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted",
            connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "New connections closed at once because every connection of the server (capacity) or of the client (per_client) was busy",
            connections_refused.clone(),
        );
        registry.register(
            "connections_evicted",
            "Idle connections closed to make room for a new one, by the limit that was reached",
            connections_evicted.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed by a deadline, by stage",
            connections_timed_out.clone(),
        );
        Metrics {
            metadata_unavailable,
            storage_unavailable,
            tokens_refused,
            api_refused,
            ui_refused,
            connections_open,
            connections_accepted,
            connections_refused,
            connections_evicted,
            connections_timed_out,
            login_failures,
            tokens_issued,
            audit,
            challenges,
            registry,
            requests,
            bytes_in,
            bytes_out,
            uploads_started,
            uploads_in_progress,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
