//! Whether Postgres answers: a `SELECT 1` every second on a connection of
//! its own, so that a pool busy with flushes never reads as an outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;

use crate::config::PostgresConfig;

const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The probe's latest answer. Starts healthy: sluice only runs after it
/// connected and migrated.
#[derive(Debug)]
pub struct DbHealth {
    ok: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Default for DbHealth {
    fn default() -> Self {
        Self {
            ok: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }
}

impl DbHealth {
    pub fn is_ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// The error of the last failed probe, while the database is unreachable.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, result: Result<(), String>) {
        let ok = result.is_ok();
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = result.err();
        self.ok.store(ok, Ordering::Relaxed);
    }
}

/// Probes until `stop` is set.
pub fn spawn_probe(config: &PostgresConfig, health: Arc<DbHealth>, stop: Arc<AtomicBool>) -> Result<(), sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(PROBE_TIMEOUT)
        // The probe query is the test.
        .test_before_acquire(false)
        .connect_lazy(&config.url)?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let result = match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&pool)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("no answer to SELECT 1 within {PROBE_TIMEOUT:?}")),
            };
            let was_ok = health.is_ok();
            match &result {
                Err(error) if was_ok => tracing::warn!(%error, "postgres probe failed: not ready"),
                Ok(()) if !was_ok => tracing::info!("postgres probe answered again: ready"),
                _ => {}
            }
            health.set(result);
        }
        pool.close().await;
    });
    Ok(())
}
