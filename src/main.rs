//! The `sluice` binary: parse the CLI, load the config, set up logging, run
//! until a signal, and turn the outcome into an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice::app;
use sluice::config::Config;
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
    /// Create or upgrade sluice's own schema (`sluice.offsets`, `sluice.dead_letters`).
    Migrate,
    /// Inspect and replay dead letters (`sluice.dead_letters`).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first: id, pipeline, topic[partition]@offset, class, SQLSTATE, when, replayed, error.
    List {
        #[arg(long)]
        pipeline: Option<String>,
        /// `decode` or `data`.
        #[arg(long)]
        class: Option<String>,
        /// Only ids in this range, `A-B` (inclusive).
        #[arg(long, value_parser = parse_ids)]
        ids: Option<(i64, i64)>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one dead letter with its key, value and headers.
    Show { id: i64 },
    /// Write dead letters into their table with the pipeline's current
    /// mapping, once the cause is fixed; each exactly once, so an
    /// interrupted replay can simply be run again.
    Replay {
        #[arg(long)]
        pipeline: String,
        /// Only ids in this range, `A-B` (inclusive), or one id.
        #[arg(long, value_parser = parse_ids)]
        ids: Option<(i64, i64)>,
        /// `decode` or `data`.
        #[arg(long)]
        class: Option<String>,
    },
}

fn parse_ids(s: &str) -> Result<(i64, i64), String> {
    let parse = |v: &str| v.trim().parse::<i64>().map_err(|e| format!("{v:?}: {e}"));
    match s.split_once('-') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => parse(s).map(|id| (id, id)),
    }
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
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run => match app::run(config, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = format!("{err:#}"), "sluice failed");
                    ExitCode::FAILURE
                }
            },
            Command::Check => {
                let problems = app::check(&config).await;
                if problems == 0 {
                    println!("check passed");
                    ExitCode::SUCCESS
                } else {
                    println!("check failed: {problems} problem(s)");
                    ExitCode::FAILURE
                }
            }
            Command::Dlq { command } => match dlq(&config, command).await {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Migrate => {
                let result = async {
                    let pool = app::connect(&config.postgres).await?;
                    app::migrate(&pool).await?;
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
    });
    // A blocking task still running (a Kafka probe cut short by SIGTERM
    // while starting) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// `sluice dlq ...`; exits 1 from `replay` when some dead letters are still refused.
async fn dlq(config: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    use sluice::postgres::dead_letters::replay::{self, Filter};
    match command {
        DlqCommand::List {
            pipeline,
            class,
            ids,
            limit,
        } => {
            let pool = app::connect(&config.postgres).await?;
            let filter = Filter { pipeline, ids, class };
            for d in replay::list(&pool, &filter, limit).await? {
                println!(
                    "{}\t{}\t{}[{}]@{}\t{}\t{}\t{}\t{}\t{}",
                    d.id,
                    d.pipeline,
                    d.topic,
                    d.partition,
                    d.offset,
                    d.error_class,
                    d.sqlstate.as_deref().unwrap_or("-"),
                    d.failed_at,
                    d.replayed_at.as_deref().unwrap_or("-"),
                    d.error
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id } => {
            let pool = app::connect(&config.postgres).await?;
            let Some(d) = replay::show(&pool, id).await? else {
                anyhow::bail!("no dead letter {id}");
            };
            let l = &d.listed;
            println!(
                "id: {}\npipeline: {}\nrecord: {}[{}]@{}",
                l.id, l.pipeline, l.topic, l.partition, l.offset
            );
            println!("timestamp: {}", d.kafka_timestamp.as_deref().unwrap_or("-"));
            println!(
                "class: {}\nsqlstate: {}\nerror: {}",
                l.error_class,
                l.sqlstate.as_deref().unwrap_or("-"),
                l.error
            );
            println!(
                "failed_at: {}\nreplayed_at: {}",
                l.failed_at,
                l.replayed_at.as_deref().unwrap_or("-")
            );
            println!("headers: {}", d.headers);
            println!("key: {}", shown_bytes(d.key.as_deref()));
            println!("value: {}", shown_bytes(d.value.as_deref()));
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { pipeline, ids, class } => {
            let filter = Filter {
                pipeline: Some(pipeline.clone()),
                ids,
                class,
            };
            let report = app::dlq_replay(config, &pipeline, &filter).await?;
            for (id, why) in &report.still_bad {
                println!("still refused: {id}: {why}");
            }
            println!(
                "replayed {}, already replayed {}, still refused {}",
                report.replayed.len(),
                report.skipped.len(),
                report.still_bad.len()
            );
            Ok(if report.still_bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Bytes as text when UTF-8 (JSON-quoted, so control characters show), else base64.
fn shown_bytes(bytes: Option<&[u8]>) -> String {
    use base64::Engine as _;
    match bytes {
        None => "null".to_owned(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => serde_json::Value::String(s.to_owned()).to_string(),
            Err(_) => format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(b)),
        },
    }
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
