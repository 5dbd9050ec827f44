//! The application layer: the only module that sees every other. It wires
//! the pipelines, the writers, the consumer loop, the assigner and
//! telemetry from the config, runs them until shutdown ([`run`]), and
//! implements the other commands (`check`, `migrate`, `dlq`).

pub mod assigner;
pub mod check;
pub mod dlq;
pub mod http;
pub mod observe;
pub mod plan;
mod run;
mod startup;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::{PostgresConfig, SslMode};
pub use check::check;

/// An error with its sources, `a: b: c`, as `{:#}` prints an anyhow error.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    anyhow::Chain::new(err)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
pub use dlq::dlq_replay;
pub use run::run;

/// sluice's own migrations (`sluice.offsets`, …), embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects to Postgres with the configured pool settings.
pub async fn connect(config: &PostgresConfig) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.connect_timeout)
        .connect_with(connect_options(config)?)
        .await
}

/// The options of every connection sluice opens: the URL, TLS, and the
/// server-side timeouts.
pub fn connect_options(config: &PostgresConfig) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    let mut options: PgConnectOptions = config.url.parse()?;
    if let Some(mode) = config.sslmode {
        options = options.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
    }
    if let Some(cert) = &config.ssl_root_cert {
        options = options.ssl_root_cert(cert);
    }
    // Validation has checked that both or neither are set.
    if let (Some(cert), Some(key)) = (&config.ssl_cert, &config.ssl_key) {
        options = options.ssl_client_cert(cert).ssl_client_key(key);
    }
    // Server-side bound on every statement: a stuck COPY is cancelled (57014,
    // transient) instead of holding the pipeline forever.
    let statement_timeout = config.statement_timeout.as_millis().to_string();
    // A flush transaction cut off by the network (a blackhole) stays open
    // on the server, holding its offsets' row locks, until the server
    // notices: every later flush of those partitions would wait on them.
    // No sluice transaction idles longer than `write_timeout` (the client
    // gives up by then), so the server may end such orphans after it.
    let idle_in_transaction = config.write_timeout.as_millis().max(1).to_string();
    Ok(options.options([
        ("statement_timeout", statement_timeout.as_str()),
        ("idle_in_transaction_session_timeout", idle_in_transaction.as_str()),
    ]))
}

/// Applies sluice's migrations; safe to run concurrently (sqlx takes an
/// advisory lock) and repeatedly.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    // A newer sluice may already have migrated this database further (a
    // rolling upgrade, or a rollback): its extra migrations are additive, so
    // an older binary runs alongside them instead of refusing to start.
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}
