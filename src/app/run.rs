//! `sluice run`: everything wired together until shutdown, then the drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::assigner::Assigner;
use super::http;
use super::observe::{self, Observed};
use super::plan::{plan_pipelines, topics_of, with_schema_columns, PlanError};
use super::startup::{serve_starting, wait_for_services, Waiting};
use crate::config::{Config, OffsetReset};
use crate::kafka::consumer::{self, Shared};
use crate::kafka::dead_letter_topic::DeadLetterProducer;
use crate::kafka::refetch::Refetcher;
use crate::pipeline::breaker::BreakerSettings;
use crate::pipeline::ports::{DeadLetterTopic, ReadBack, WriterCommand};
use crate::pipeline::Pipeline;
use crate::postgres::writer::{Control, Writer};
use crate::telemetry::Telemetry;

/// Runs sluice until `shutdown` resolves, then drains within
/// `config.shutdown_timeout` and leaves the group.
///
/// A pipeline taking its columns from the value schema that meets a schema
/// with fields it has no column for makes sluice drain the same way, plan
/// again with that schema's fields (`auto_evolve` adds their columns) and
/// start again; the records held meanwhile are read again.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let mut seen: Vec<(String, u32)> = Vec::new();
    loop {
        match run_once(config.clone(), &seen, shutdown.as_mut()).await? {
            Ended::Shutdown => return Ok(()),
            Ended::Replan(more) => {
                for wanted in more {
                    if !seen.contains(&wanted) {
                        seen.push(wanted);
                    }
                }
                info!(schemas = ?seen, "planning again with the new schemas' fields");
            }
        }
    }
}

/// Why [`run_once`] returned.
enum Ended {
    Shutdown,
    /// Drained to plan again with these (pipeline, value schema id) pairs.
    Replan(Vec<(String, u32)>),
}

async fn run_once(
    config: Config,
    seen: &[(String, u32)],
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Ended> {
    let started = tokio::time::Instant::now();
    // What needs no service is checked before waiting for them.
    let topics = Arc::new(topics_of(&config)?);
    // The telemetry port is served from the start: /healthz alive, /readyz
    // not ready and why, while Postgres and Kafka are waited for.
    let waiting = Waiting::default();
    let (listener, starting_http) = match config.telemetry.http_socket_addr() {
        Some(addr) => {
            let listener =
                http::bind(addr).with_context(|| format!("starting telemetry: binding telemetry.http_addr {addr}"))?;
            let starting = serve_starting(
                listener
                    .try_clone()
                    .context("starting telemetry: the start-up server")?,
                waiting.clone(),
            )
            .context("starting telemetry: the start-up server")?;
            (Some(listener), Some(starting))
        }
        None => (None, None),
    };
    let pool = tokio::select! {
        pool = wait_for_services(&config, &waiting, started) => pool?,
        _ = &mut shutdown => {
            info!("shutdown requested while starting");
            return Ok(Ended::Shutdown);
        }
    };
    let config = with_schema_columns(config, seen)?;
    let pipelines = match plan_pipelines(&config, &pool, &topics).await {
        Ok(p) => p,
        Err(PlanError::Mapping(errors)) => {
            for e in &errors {
                error!(error = %e, "mapping does not fit the table");
            }
            bail!("{} mapping problem(s); see `sluice check`", errors.len());
        }
        Err(other) => return Err(other.into()),
    };
    let pipelines: Vec<Arc<Pipeline>> = pipelines.into_iter().map(Arc::new).collect();
    let lanes: usize = pipelines.iter().map(|p| p.lanes()).sum();
    if lanes >= config.postgres.pool_size as usize {
        // Not an error: lanes wait for a connection in turn. But they then
        // flush one after the other, and a wait past `connect_timeout`
        // counts as a transient failure.
        warn!(
            writers = lanes,
            pool_size = config.postgres.pool_size,
            "postgres.pool_size leaves no connection beside the pipelines' writer lanes; \
             set it above the sum of pipelines[].writers"
        );
    }
    let group_id: Arc<str> = Arc::from(config.kafka.group_id.as_str());

    let telemetry = Telemetry::start(&config).context("starting telemetry")?;

    let (cmd_tx, cmd_rx) = std_mpsc::channel();
    let mut writer_txs = Vec::new();
    let mut writer_tasks = Vec::new();
    let refetch: Arc<std::sync::Mutex<dyn ReadBack>> =
        Arc::new(std::sync::Mutex::new(Refetcher::new(config.consumer_properties())));
    for (index, pipeline) in pipelines.iter().enumerate() {
        let dlq: Option<Arc<dyn DeadLetterTopic>> = match &pipeline.settings.dlq_topic {
            Some(topic) => Some(Arc::new(
                DeadLetterProducer::new(&config.consumer_properties(), topic)
                    .with_context(|| format!("creating the producer for dead-letter topic {topic}"))?,
            )),
            None => None,
        };
        let controls = Control::lanes(
            pipeline,
            BreakerSettings {
                failure_threshold: config.breaker.failure_threshold,
                open_duration: config.breaker.open_duration,
                max_open_duration: config.breaker.max_open_duration,
            },
            config.postgres.write_timeout,
        );
        for (lane, control) in controls.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            writer_txs.push(tx);
            let writer = Writer {
                index,
                lane,
                pipeline: pipeline.clone(),
                pool: pool.clone(),
                group_id: group_id.clone(),
                topics: topics.clone(),
                commands: rx,
                consumer: cmd_tx.clone(),
                control,
                refetch: refetch.clone(),
                dlq: dlq.clone(),
                flushes: telemetry.flushes(),
            };
            writer_tasks.push(tokio::spawn(writer.run()));
        }
    }
    let (assign_tx, assign_rx) = mpsc::unbounded_channel();
    let assigner = Assigner {
        pool: pool.clone(),
        group_id,
        configs: config.pipelines.clone(),
        pipelines: pipelines.clone(),
    };
    let assigner_task = tokio::spawn(assigner.serve(assign_rx));
    let reset_earliest = config.kafka.auto_offset_reset == OffsetReset::Earliest;
    let shared = Arc::new(Shared::new(
        pipelines.clone(),
        topics.clone(),
        assign_tx,
        reset_earliest,
        config.kafka.on_offset_out_of_range,
        writer_txs.clone(),
        tokio::runtime::Handle::current(),
        config.kafka.revoke_timeout(),
        telemetry.flushes().wants_traces(),
    ));
    let observed = Arc::new(Observed::new(
        &config,
        pipelines.clone(),
        topics.clone(),
        shared.clone(),
        telemetry.flushes(),
    ));
    let _instruments = telemetry
        .meter()
        .map(|meter| observe::register(&meter, observed.clone()));
    if let Some(starting) = starting_http {
        starting.stop().await;
    }
    let http = match listener {
        Some(listener) => Some(
            http::Server::start_on(listener, observed.clone(), telemetry.prometheus())
                .context("starting telemetry: serving telemetry.http_addr")?,
        ),
        None => None,
    };
    let background_stop = Arc::new(AtomicBool::new(false));
    crate::kafka::lag::spawn_poller(
        pipelines.clone(),
        topics.clone(),
        reset_earliest,
        observed.lag.clone(),
        &config.consumer_properties(),
        config.telemetry.lag_interval,
        background_stop.clone(),
    )
    .context("starting telemetry: the consumer lag poller")?;
    crate::postgres::health::spawn_probe(&config.postgres, observed.db.clone(), background_stop.clone())
        .context("starting telemetry: the postgres probe")?;
    let kafka =
        consumer::create(&config.consumer_properties(), shared.clone()).context("creating the kafka consumer")?;
    let (done_tx, mut done_rx) = oneshot::channel::<()>();
    let loop_shared = shared.clone();
    let consumer_thread = std::thread::Builder::new()
        .name("sluice-consumer".into())
        .spawn(move || {
            consumer::run(kafka, loop_shared, cmd_rx);
            let _ = done_tx.send(());
        })
        .context("spawning the consumer thread")?;
    info!(pipelines = pipelines.len(), group = %config.kafka.group_id, brokers = %config.kafka.brokers, "sluice running");

    let ended = tokio::select! {
        _ = &mut shutdown => {
            info!(timeout = ?config.shutdown_timeout, "shutdown requested: draining");
            Ended::Shutdown
        }
        wanted = shared.replan_wanted() => {
            let wanted: Vec<(String, u32)> =
                wanted.into_iter().map(|(index, id)| (pipelines[index].name.clone(), id)).collect();
            info!(schemas = ?wanted, timeout = ?config.shutdown_timeout, "new schema fields: draining to plan again");
            Ended::Replan(wanted)
        }
        _ = &mut done_rx => match shared.fatal() {
            Some(why) => bail!("{why}"),
            None => bail!("the consumer loop ended unexpectedly"),
        },
    };

    // DRAINING: stop intake, flush what is buffered, commit, leave the group.
    // Whatever is not flushed by the deadline is simply not committed.
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let close_reserve = (config.shutdown_timeout / 4).min(Duration::from_secs(3));
    // The core first: from here on nothing is taken and nothing resumes;
    // then the loop pauses everything.
    for p in &pipelines {
        let mut state = p.lock();
        state.drain();
        p.refresh_state(&mut state);
    }
    shared.draining.store(true, Ordering::SeqCst);
    let acks: Vec<oneshot::Receiver<()>> = writer_txs
        .iter()
        .filter_map(|w| {
            let (ack, rx) = oneshot::channel();
            w.send(WriterCommand::FlushAll { ack }).ok().map(|_| rx)
        })
        .collect();
    let flushed = tokio::time::timeout_at(deadline - close_reserve, async {
        for rx in acks {
            let _ = rx.await;
        }
    })
    .await
    .is_ok();
    // A writer also answers at once when its breaker is open: check what is left.
    let left: usize = pipelines.iter().map(|p| p.lock().buffer.records()).sum();
    if flushed && left == 0 {
        info!("drained: everything buffered is committed");
    } else if flushed {
        warn!(
            records = left,
            "the database is unavailable: stopping without flushing; the rest is re-read by the next owner"
        );
    } else {
        warn!(
            records = left,
            "shutdown deadline reached before the buffers drained; the rest is re-read by the next owner"
        );
    }
    shared.stop.store(true, Ordering::SeqCst);
    if tokio::time::timeout_at(deadline, done_rx).await.is_err() {
        warn!("the consumer did not leave the group before the deadline");
    } else {
        let _ = consumer_thread.join();
    }
    for task in writer_tasks {
        task.abort();
    }
    assigner_task.abort();
    background_stop.store(true, Ordering::Relaxed);
    if let Some(http) = http {
        http.stop().await;
    }
    telemetry.shutdown().await;
    for p in &pipelines {
        let c = &p.counters;
        let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        info!(pipeline = %p.name, consumed = get(&c.consumed), written = get(&c.written), dropped = get(&c.dropped),
            drop_reason = p.settings.strategy.as_str(), dead_lettered = get(&c.dead_lettered), fenced = get(&c.fenced),
            flushes = get(&c.flushes), attempts = get(&c.attempts), "pipeline totals");
    }
    if matches!(ended, Ended::Shutdown) {
        info!("sluice stopped");
    }
    Ok(ended)
}
