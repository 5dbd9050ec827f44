//! The `sluice` binary: parse the CLI, load the config, set up logging, run
//! until a signal, and turn the outcome into an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice::config::Config;
use sluice::service;
use tracing_subscriber::EnvFilter;

/// Kafka → PostgreSQL connector with backpressure and exactly-once delivery.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Config file (TOML). Environment variables `SLUICE_*` override it.
    #[arg(long, short, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format; the filter comes from `SLUICE_LOG` or `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value = "text", env = "SLUICE_LOG_FORMAT", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the configured topics into their tables until SIGTERM/SIGINT.
    Run,
    /// Validate the config, connect to Kafka and Postgres, and check every mapping against its live table.
    Check,
    /// Create or upgrade sluice's own schema (`sluice.offsets`).
    Migrate,
}

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run => match service::run(config, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = format!("{err:#}"), "sluice failed");
                    ExitCode::FAILURE
                }
            },
            Command::Check => {
                let problems = service::check(&config).await;
                if problems == 0 {
                    println!("check passed");
                    ExitCode::SUCCESS
                } else {
                    println!("check failed: {problems} problem(s)");
                    ExitCode::FAILURE
                }
            }
            Command::Migrate => {
                let result = async {
                    let pool = service::connect(&config.postgres).await?;
                    service::migrate(&pool).await?;
                    anyhow::Ok(())
                };
                match result.await {
                    Ok(()) => {
                        println!("migrations applied to {}", config.postgres.redacted_url());
                        ExitCode::SUCCESS
                    }
                    Err(err) => {
                        eprintln!("error: migrating {}: {err:#}", config.postgres.redacted_url());
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

fn init_logging(format: LogFormat) {
    let filter = std::env::var("SLUICE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
