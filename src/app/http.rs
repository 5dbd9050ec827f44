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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tracing::{info, warn};

use crate::app::observe::Observed;
use crate::telemetry::prometheus::{PrometheusEndpoint, CONTENT_TYPE};

/// The running server; [`Server::stop`] ends it.
pub struct Server {
    /// Where it listens (the real port when configured as 0).
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves the routes until [`Server::stop`].
    pub async fn start(
        addr: SocketAddr,
        observed: Arc<Observed>,
        prometheus: Option<PrometheusEndpoint>,
    ) -> std::io::Result<Server> {
        Self::start_on(bind(addr)?, observed, prometheus)
    }

    /// Serves the routes on `listener` (from [`bind`]; the start-up server
    /// may have served it before) until [`Server::stop`].
    pub fn start_on(
        listener: std::net::TcpListener,
        observed: Arc<Observed>,
        prometheus: Option<PrometheusEndpoint>,
    ) -> std::io::Result<Server> {
        Self::serve(
            listener,
            router(observed, prometheus),
            "/metrics /healthz /readyz /status",
        )
    }

    /// Serves `app` on `listener` until [`Server::stop`]; logs `routes`
    /// with the address.
    pub fn serve(listener: std::net::TcpListener, app: Router, routes: &str) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(err) = server.await {
                warn!(error = %err, "telemetry http server failed");
            }
        });
        info!(%addr, "serving {routes}");
        Ok(Server { addr, stop, task })
    }

    /// Stops serving: waits up to 2 s for requests in progress, then ends
    /// them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// A listening socket for the telemetry server, non-blocking as tokio
/// needs it; `try_clone` hands it from the start-up server to the running
/// one without a moment of refused connections.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// `/metrics`: Prometheus text exposition.
pub const METRICS: &str = "/metrics";
/// `/healthz`: liveness, 200 while the process serves requests.
pub const HEALTHZ: &str = "/healthz";
/// `/readyz`: readiness, 200 or 503 with the reasons.
pub const READYZ: &str = "/readyz";
/// `/status`: JSON per pipeline.
pub const STATUS: &str = "/status";
/// Every route the telemetry server answers, while starting and running
/// alike (both routers are built from these constants, so the deployment
/// artefacts' probe paths are checked against this list).
pub const ROUTES: [&str; 4] = [METRICS, HEALTHZ, READYZ, STATUS];

#[derive(Clone)]
struct AppState {
    observed: Arc<Observed>,
    prometheus: Option<PrometheusEndpoint>,
}

pub fn router(observed: Arc<Observed>, prometheus: Option<PrometheusEndpoint>) -> Router {
    Router::new()
        .route(METRICS, get(metrics))
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .route(STATUS, get(status))
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
