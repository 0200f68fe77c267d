//! The Kubernetes admission webhooks: `POST /validate` and `POST /mutate`, served on
//! their own listener (`[admission] listen`, TLS with the webhook certificate), each
//! taking one `AdmissionReview` v1 and answering one. The decision is
//! `Registry::admission_review`'s; this module only bounds the body, shapes errors and
//! queues the decision's audit rows (refusals, changes, audit-mode warnings).

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_registry::admission::Webhook;
use http::{StatusCode, header};
use http_body_util::BodyExt as _;

use crate::AppState;

/// The API server sends at most 3 MiB objects (etcd's default request limit), and an
/// AdmissionReview carries the object twice on UPDATE.
pub const MAX_REVIEW_BYTES: usize = 7 << 20;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn validate(State(state): State<AppState>, body: Body) -> Response {
    review(state, Webhook::Validate, body).await
}

async fn mutate(State(state): State<AppState>, body: Body) -> Response {
    review(state, Webhook::Mutate, body).await
}

fn bad(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

async fn review(state: AppState, webhook: Webhook, body: Body) -> Response {
    let limited = http_body_util::Limited::new(body, MAX_REVIEW_BYTES);
    let bytes = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let registry = state.registry();
            registry.admission_stats().review(webhook, "invalid");
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            // 400 either way: the API server treats any 4xx as the webhook's refusal to
            // answer, and failurePolicy decides.
            return if too_big {
                bad(
                    StatusCode::BAD_REQUEST,
                    format!("AdmissionReview larger than {MAX_REVIEW_BYTES} bytes"),
                )
            } else {
                bad(StatusCode::BAD_REQUEST, "the body could not be read".into())
            };
        }
    };
    match state.registry().admission_review(webhook, &bytes).await {
        Ok((v, audit)) => {
            // Queued for the audit writer's next batch: the answer never waits for it.
            for r in audit {
                state.audit(r);
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&v).unwrap_or_default(),
            )
                .into_response()
        }
        Err(e) => bad(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
