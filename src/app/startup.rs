//! Start-up that waits: a Postgres or Kafka that cannot be reached yet when
//! `sluice run` starts is tried again with backoff, up to
//! `startup_timeout`, while `/healthz` answers 200 and `/readyz` 503 with
//! what is awaited. A bad config never gets here (exit 2 at once).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use serde_json::json;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{connect, connect_options, http, migrate};
use crate::config::Config;
use crate::kafka::metadata_client;

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
/// `/status` 503 with what is awaited, `/metrics` 503. Serves `listener`
/// (from [`http::bind`]) until [`http::Server::stop`].
pub fn serve_starting(listener: std::net::TcpListener, waiting: Waiting) -> std::io::Result<http::Server> {
    let app = Router::new()
        .route(http::HEALTHZ, get(|| async { "ok\n" }))
        .route(http::READYZ, get(unready))
        .route(http::STATUS, get(unready))
        .route(http::METRICS, get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .with_state(waiting);
    http::Server::serve(listener, app, "/healthz /readyz while starting")
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

/// Why an attempt failed: worth another, or not.
enum Failure {
    Transient(anyhow::Error),
    Fatal(anyhow::Error),
}

/// Whether a Postgres error at start-up may clear by itself: the server
/// is not there yet, not accepting yet, or overloaded. A TLS failure, a
/// certificate file that cannot be read, a refused login, a missing
/// database or a server that does not speak the protocol will not.
fn pg_failure(err: sqlx::Error) -> Failure {
    use std::io::ErrorKind::*;
    let transient = match &err {
        sqlx::Error::Io(io) => !matches!(
            io.kind(),
            NotFound | PermissionDenied | InvalidInput | InvalidData | Unsupported
        ),
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")),
        _ => false,
    };
    let err = anyhow::Error::new(err);
    if transient {
        Failure::Transient(err)
    } else {
        Failure::Fatal(err)
    }
}

fn migrate_failure(err: sqlx::migrate::MigrateError) -> Failure {
    use sqlx::migrate::MigrateError;
    match err {
        MigrateError::Execute(err) | MigrateError::ExecuteMigration(err, _) => match pg_failure(err) {
            Failure::Transient(e) => Failure::Transient(e.context("applying sluice migrations")),
            Failure::Fatal(e) => Failure::Fatal(e.context("applying sluice migrations")),
        },
        other => Failure::Fatal(anyhow::Error::new(other).context("applying sluice migrations")),
    }
}

/// Connects to Postgres and applies the migrations, then asks Kafka for
/// its metadata, each tried again after a failure that may clear by itself
/// (backoff from 0.5 s doubling to 10 s, a WARN per attempt), until
/// `startup_timeout` has passed since `started`: then an error naming what
/// was awaited. Anything else ends it at once.
pub async fn wait_for_services(config: &Config, waiting: &Waiting, started: Instant) -> anyhow::Result<PgPool> {
    // An absurd timeout is a year.
    let deadline = started
        .checked_add(config.startup_timeout)
        .unwrap_or_else(|| started + Duration::from_secs(365 * 86_400));
    let mut backoff = Backoff::new(deadline, config.startup_timeout);
    let url = config.postgres.redacted_url();
    let options = connect_options(&config.postgres).with_context(|| format!("connecting to postgres {url}"))?;
    waiting.set(format!("waiting for postgres {url}"));
    let pool = loop {
        let attempt = async {
            // One connection first: it says at once why it cannot connect,
            // where the pool retries a refusal until its acquire timeout.
            let probe = tokio::time::timeout(config.postgres.connect_timeout, PgConnection::connect_with(&options))
                .await
                .map_err(|_| {
                    Failure::Transient(anyhow!(
                        "no answer within postgres.connect_timeout ({})",
                        humantime::format_duration(config.postgres.connect_timeout)
                    ))
                })?
                .map_err(pg_failure)?;
            let _ = probe.close().await;
            let pool = connect(&config.postgres).await.map_err(pg_failure)?;
            migrate(&pool).await.map_err(migrate_failure)?;
            Ok::<PgPool, Failure>(pool)
        };
        match backoff.within(attempt).await {
            Ok(Ok(pool)) => break pool,
            Ok(Err(Failure::Fatal(err))) => return Err(err.context(format!("postgres {url}"))),
            Ok(Err(Failure::Transient(err))) => {
                backoff
                    .wait("postgres", format!("waiting for postgres {url}: {err:#}"), waiting)
                    .await?
            }
            Err(_) => return Err(backoff.give_up(waiting)),
        }
    };
    // Metadata needs no group: without `group.id` (and so without the
    // instance id, which needs one), closing the probe does not wait to
    // leave one.
    let mut properties = config.consumer_properties();
    properties.remove("group.id");
    properties.remove("group.instance.id");
    let client = Arc::new(kafka_client(&properties)?);
    let brokers = &config.kafka.brokers;
    waiting.set(format!("waiting for kafka {brokers}"));
    let mut backoff = Backoff::new(deadline, config.startup_timeout);
    let result = loop {
        let probe = client.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            probe
                .fetch_metadata(None, KAFKA_PROBE_TIMEOUT)
                .map(|m| m.brokers().len())
        });
        match backoff.within(metadata).await {
            Ok(Ok(Ok(n))) => {
                info!(brokers = n, "kafka answers");
                break Ok(());
            }
            Ok(Ok(Err(err))) => {
                if let Err(gave_up) = backoff
                    .wait("kafka", format!("waiting for kafka {brokers}: {err}"), waiting)
                    .await
                {
                    break Err(gave_up);
                }
            }
            Ok(Err(join)) => break Err(anyhow::Error::new(join).context("probing kafka")),
            Err(_) => break Err(backoff.give_up(waiting)),
        }
    };
    // librdkafka's teardown may take a moment: not on the async workers.
    tokio::task::spawn_blocking(move || drop(client));
    result?;
    waiting.set(String::new());
    Ok(pool)
}

/// The metadata probe's client. A property librdkafka refuses or a
/// client it cannot create (a missing certificate file, a SASL mechanism
/// not built in) fails at once; the property's value is not shown (it may
/// be a secret under a mistyped name).
fn kafka_client(properties: &BTreeMap<String, String>) -> anyhow::Result<BaseConsumer> {
    metadata_client(properties).map_err(|err| match err {
        KafkaError::ClientConfig(_, desc, key, _) => anyhow!("kafka.properties: `{key}`: {desc}"),
        other => anyhow!("creating the kafka client: {other}"),
    })
}

struct Backoff {
    deadline: Instant,
    timeout: Duration,
    delay: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(deadline: Instant, timeout: Duration) -> Backoff {
        Backoff {
            deadline,
            timeout,
            delay: FIRST_BACKOFF,
            attempt: 1,
        }
    }

    /// Logs the failed attempt and sleeps before the next one; the error
    /// to exit with once the next attempt would start past the deadline.
    async fn wait(&mut self, what: &str, why: String, waiting: &Waiting) -> anyhow::Result<()> {
        waiting.set(why.clone());
        if Instant::now() + self.delay > self.deadline {
            return Err(self.give_up(waiting));
        }
        warn!(attempt = self.attempt, retry_in = ?self.delay, error = %why, "{what} is not reachable yet; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        self.attempt += 1;
        Ok(())
    }

    /// `attempt`, cut off at the deadline; the first one always runs in
    /// full (it is bounded anyway: `connect_timeout`, the probe's 5 s), so
    /// that even `startup_timeout = "0s"` tries once.
    async fn within<F: std::future::Future>(&self, attempt: F) -> Result<F::Output, tokio::time::error::Elapsed> {
        if self.attempt == 1 {
            return Ok(attempt.await);
        }
        tokio::time::timeout_at(self.deadline, attempt).await
    }

    fn give_up(&self, waiting: &Waiting) -> anyhow::Error {
        let attempts = match self.attempt {
            1 => "1 attempt".to_owned(),
            n => format!("{n} attempts"),
        };
        anyhow!(
            "{} (gave up after {attempts}: startup_timeout {} passed)",
            waiting.get(),
            humantime::format_duration(self.timeout)
        )
    }
}
