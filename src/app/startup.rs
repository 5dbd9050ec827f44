//! Start-up that waits: a Postgres or Kafka that cannot be reached yet when
//! `sluice run` starts is tried again with backoff, up to
//! `startup_timeout`, while `/healthz` answers 200 and `/readyz` 503 with
//! what is awaited. A bad config never gets here (exit 2 at once).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;
use serde_json::json;
use sqlx::PgPool;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{connect, migrate};
use crate::config::Config;
use crate::model::ErrorClass;
use crate::postgres::error::classify;

/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long one Kafka metadata request may take.
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What start-up is waiting for, as `/readyz` shows it.
#[derive(Clone, Default)]
pub struct Waiting(Arc<Mutex<String>>);

impl Waiting {
    fn set(&self, why: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The HTTP server while starting: `/healthz` 200, `/readyz` and
/// `/status` 503 with what is awaited, `/metrics` 503.
pub struct StartingServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl StartingServer {
    /// Serves `listener` (from [`super::http::bind`]) until [`StartingServer::stop`].
    pub fn start(listener: std::net::TcpListener, waiting: Waiting) -> std::io::Result<StartingServer> {
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        info!(%addr, "serving /healthz /readyz while starting");
        let (stop, rx) = tokio::sync::oneshot::channel();
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(unready))
            .route("/status", get(unready))
            .route("/metrics", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .with_state(waiting);
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(err) = server.await {
                warn!(error = %err, "telemetry http server failed while starting");
            }
        });
        Ok(StartingServer { stop, task })
    }

    /// Stops serving, releasing the address for the running server.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

async fn unready(State(waiting): State<Waiting>) -> Response {
    let why = waiting.get();
    let reasons = if why.is_empty() {
        vec!["starting".to_owned()]
    } else {
        vec![why]
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"ready": false, "starting": true, "reasons": reasons})),
    )
        .into_response()
}

/// Connects to Postgres and applies the migrations, then asks Kafka for
/// its metadata, each tried again after a transient failure (backoff from
/// 0.5 s doubling to 10 s, a WARN per attempt) until `startup_timeout` has
/// passed since `started`. A Postgres error that is not transient (a
/// refused login, a missing database, a failed migration) ends it at once.
pub async fn wait_for_services(config: &Config, waiting: &Waiting, started: Instant) -> anyhow::Result<PgPool> {
    let deadline = started + config.startup_timeout;
    let url = config.postgres.redacted_url();
    let mut backoff = Backoff::new(deadline);
    let pool = loop {
        let err = match connect(&config.postgres).await {
            Ok(pool) => match migrate(&pool).await {
                Ok(()) => break pool,
                Err(sqlx::migrate::MigrateError::Execute(err)) if classify(&err) == ErrorClass::Transient => {
                    anyhow::Error::new(err)
                }
                Err(err) => return Err(err).context("applying sluice migrations"),
            },
            Err(err) if classify(&err) == ErrorClass::Transient => anyhow::Error::new(err),
            Err(err) => return Err(err).with_context(|| format!("connecting to postgres {url}")),
        };
        let why = format!("waiting for postgres {url}: {err:#}");
        backoff.wait("postgres", why, waiting, config).await?;
    };
    let mut backoff = Backoff::new(deadline);
    let properties = config.consumer_properties();
    loop {
        let probe = properties.clone();
        let result = tokio::task::spawn_blocking(move || kafka_metadata(&probe))
            .await
            .context("probing kafka")?;
        match result {
            Ok(brokers) => {
                info!(brokers, "kafka answers");
                break;
            }
            Err(err) => {
                let why = format!("waiting for kafka {}: {err}", config.kafka.brokers);
                backoff.wait("kafka", why, waiting, config).await?;
            }
        }
    }
    waiting.set(String::new());
    Ok(pool)
}

/// One metadata request; how many brokers the cluster has.
fn kafka_metadata(properties: &BTreeMap<String, String>) -> Result<usize, rdkafka::error::KafkaError> {
    let mut client = ClientConfig::new();
    for (k, v) in properties {
        client.set(k, v);
    }
    let consumer: BaseConsumer = client.create()?;
    let metadata = consumer.fetch_metadata(None, KAFKA_PROBE_TIMEOUT)?;
    Ok(metadata.brokers().len())
}

struct Backoff {
    deadline: Instant,
    delay: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(deadline: Instant) -> Backoff {
        Backoff {
            deadline,
            delay: FIRST_BACKOFF,
            attempt: 1,
        }
    }

    /// Logs the failed attempt and sleeps before the next one; an error
    /// once the next attempt would start past the deadline.
    async fn wait(&mut self, what: &str, why: String, waiting: &Waiting, config: &Config) -> anyhow::Result<()> {
        if Instant::now() + self.delay > self.deadline {
            bail!(
                "{why} (gave up after {} attempts: startup_timeout {} passed)",
                self.attempt,
                humantime::format_duration(config.startup_timeout)
            );
        }
        warn!(attempt = self.attempt, retry_in = ?self.delay, error = %why, "{what} is not reachable yet; retrying");
        waiting.set(why);
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        self.attempt += 1;
        Ok(())
    }
}
