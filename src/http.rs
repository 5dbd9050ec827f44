//! The telemetry HTTP server (`telemetry.http_addr`):
//!
//! - `/metrics`: Prometheus text exposition of every metric;
//! - `/healthz`: 200 while the process serves requests;
//! - `/readyz`: 200 when partitions are assigned, Postgres answers, no
//!   breaker is open, no pipeline is stopped and sluice is not shutting
//!   down; else 503 with the reasons;
//! - `/status`: JSON per pipeline (state, utilization, paused partitions,
//!   breaker, lag, last flush, counters). No secrets: the Postgres URL is
//!   shown redacted.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::telemetry::prometheus::{PrometheusEndpoint, CONTENT_TYPE};
use crate::telemetry::Observed;

#[derive(Clone)]
struct AppState {
    observed: Arc<Observed>,
    prometheus: Option<PrometheusEndpoint>,
}

pub fn router(observed: Arc<Observed>, prometheus: Option<PrometheusEndpoint>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(AppState { observed, prometheus })
}

async fn metrics(State(app): State<AppState>) -> Response {
    match app.prometheus {
        // Collecting runs the observable callbacks, which take the pipeline
        // locks briefly: off the async workers.
        Some(p) => match tokio::task::spawn_blocking(move || p.render()).await {
            Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<AppState>) -> Response {
    let reasons = app.observed.unready_reasons();
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"ready": reasons.is_empty(), "reasons": reasons}))).into_response()
}

async fn status(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(app.observed.status())
}
