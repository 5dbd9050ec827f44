//! Wiring: builds the pipelines, writers and consumer loop from the config,
//! runs them until shutdown, and implements `check` and `migrate`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::config::{Config, OffsetReset, PipelineConfig, PostgresConfig, SslMode, WriteMode};
use crate::kafka::consumer::{self, Shared};
use crate::kafka::refetch::Refetcher;
use crate::kafka::{TopicId, Topics};
use crate::mapping::ColumnSource;
use crate::pipeline::buffer::Limits;
use crate::pipeline::{Pipeline, Settings, Target};
use crate::row::{ColumnPlan, RowEncoder};
use crate::sink::breaker::BreakerSettings;
use crate::sink::ddl::{self, ColumnDef};
use crate::sink::dlq::DlqProducer;
use crate::sink::flush_policy::FlushSettings;
use crate::sink::schema::{live_columns, plan_columns, MappingError, TableRef};
use crate::sink::upsert::{has_unique_key, unique_keys};
use crate::sink::writer::{Control, Writer, WriterCommand};
use crate::telemetry::{Observed, Telemetry};

/// sluice's own migrations (`sluice.offsets`, …), embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects to Postgres with the configured pool settings.
pub async fn connect(config: &PostgresConfig) -> Result<PgPool, sqlx::Error> {
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
    // Server-side bound on every statement: a stuck COPY is cancelled (57014,
    // transient) instead of holding the pipeline forever.
    let statement_timeout = config.statement_timeout.as_millis().to_string();
    // A flush transaction cut off by the network (a blackhole) stays open
    // on the server, holding its offsets' row locks, until the server
    // notices: every later flush of those partitions would wait on them.
    // No sluice transaction idles longer than `write_timeout` (the client
    // gives up by then), so the server may end such orphans after it.
    let idle_in_transaction = config.write_timeout.as_millis().max(1).to_string();
    options = options.options([
        ("statement_timeout", statement_timeout.as_str()),
        ("idle_in_transaction_session_timeout", idle_in_transaction.as_str()),
    ]);
    PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.connect_timeout)
        .connect_with(options)
        .await
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

fn settings(p: &PipelineConfig) -> Settings {
    Settings {
        batch_size: p.batch_size,
        batch_bytes: p.batch_bytes.bytes() as usize,
        flush_interval: p.flush_interval,
        limits: Limits {
            max_records: p.max_buffer_records,
            max_bytes: p.max_buffer_bytes.bytes() as usize,
        },
        high_watermark: p.high_watermark,
        low_watermark: p.low_watermark,
        strategy: p.strategy,
        sample_rate: p.sample_rate,
        flush: FlushSettings {
            target_latency: p.target_latency,
            min_interval: p.min_interval,
            max_interval: p.max_interval,
            max_batch_rows: p.batch_size,
            min_batch_rows: (p.batch_size / 10).max(1),
        },
        max_record_bytes: p.max_record_bytes.bytes() as usize,
        tolerance: p.errors.tolerance,
        dlq_topic: p.errors.dlq_topic.clone(),
    }
}

fn table_ref(p: &PipelineConfig) -> TableRef {
    let (schema, name) = p.table_ref();
    TableRef { schema, name }
}

/// Whether planning may change the database (`auto_create`, `auto_evolve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ddl {
    /// Start-up: run the DDL the pipeline allows.
    Apply,
    /// `sluice check`: only say what would run.
    DryRun,
}

/// What planning one table found.
pub enum Planned {
    /// The encoder for the table.
    Ready(RowEncoder),
    /// `Ddl::DryRun` and the table still needs these statements.
    NeedsDdl(Vec<String>),
}

/// Plans pipeline `p` (at `index` in the config) into `table`: runs or
/// reports the DDL it allows, checks the mapping against the live table and
/// builds the encoder. Mapping problems are all returned, not the first.
pub async fn plan_table(
    pool: &PgPool,
    p: &PipelineConfig,
    index: usize,
    table: &TableRef,
    ddl: Ddl,
) -> anyhow::Result<Result<Planned, Vec<MappingError>>> {
    let sources = p.column_sources();
    let mut live = live_columns(pool, table)
        .await
        .with_context(|| format!("reading the columns of {table}"))?;
    if p.auto_create || p.auto_evolve {
        let defs: Vec<ColumnDef> = sources
            .iter()
            .map(|(name, source)| ColumnDef {
                name: name.clone(),
                sql_type: p.column_sql_type(name, source),
            })
            .collect();
        let key = if p.mode == WriteMode::Upsert {
            p.key.as_slice()
        } else {
            &[]
        };
        let statements = ddl::plan(table, live.as_deref(), &defs, key, p.auto_create, p.auto_evolve);
        if !statements.is_empty() {
            if ddl == Ddl::DryRun {
                return Ok(Ok(Planned::NeedsDdl(statements)));
            }
            ddl::apply(pool, table, &statements)
                .await
                .with_context(|| format!("pipeline `{}`: {}", p.name, statements.join("; ")))?;
            for statement in &statements {
                info!(pipeline = %p.name, %table, %statement, "table changed to fit the mapping");
            }
            live = live_columns(pool, table)
                .await
                .with_context(|| format!("reading the columns of {table}"))?;
        }
    }
    let columns = match plan_columns(&p.name, table, &sources, live.as_deref()) {
        Ok(columns) => columns,
        Err(errors) => return Ok(Err(errors)),
    };
    let bad_constants = check_constants(pool, &p.name, &columns).await;
    if !bad_constants.is_empty() {
        return Ok(Err(bad_constants));
    }
    let mut encoder = RowEncoder::new(columns);
    // A BEFORE trigger may change a row's key: then leave duplicates to Postgres.
    let before_triggers = live.iter().flatten().any(|c| c.table_has_before_triggers);
    if p.mode == WriteMode::Insert && !before_triggers {
        let keys = unique_keys(pool, table)
            .await
            .with_context(|| format!("reading the unique indexes of {table}"))?;
        encoder = encoder.with_unique_keys(&keys);
    }
    if p.mode == WriteMode::Upsert {
        // `Config::validate` checked that the key columns are mapped.
        encoder = encoder
            .with_upsert(&p.key, p.deletes_on_tombstone())
            .map_err(|why| anyhow::anyhow!("pipeline `{}`: {why}", p.name))?;
        if let Some(version) = &p.version {
            encoder = encoder
                .with_version(version)
                .map_err(|why| anyhow::anyhow!("pipeline `{}`: {why}", p.name))?;
        }
        let unique = has_unique_key(pool, table, &p.key)
            .await
            .with_context(|| format!("reading the unique indexes of {table}"))?;
        if !unique {
            return Ok(Err(vec![MappingError::NoUniqueKey {
                pipeline: p.name.clone(),
                index,
                table: table.to_string(),
                key: p.key.join(", "),
            }]));
        }
    }
    Ok(Ok(Planned::Ready(encoder)))
}

/// The topics of the config: named ones registered, patterns added.
pub fn topics_of(config: &Config) -> anyhow::Result<Topics> {
    let mut topics = Topics::default();
    for (index, p) in config.pipelines.iter().enumerate() {
        for t in &p.topics {
            if t.starts_with('^') {
                topics
                    .add_pattern(t, index)
                    .with_context(|| format!("pipeline `{}`: topic pattern {t:?}", p.name))?;
            } else {
                topics
                    .insert(t, index)
                    .with_context(|| format!("more than {} topics", crate::kafka::MAX_TOPICS))?;
            }
        }
    }
    Ok(topics)
}

/// Plans the table of `topic` for the per-topic pipeline `index` (running
/// the DDL it allows) and adds it to `pipeline`. Mapping problems come back
/// as text, joined.
pub async fn plan_topic(
    pool: &PgPool,
    config: &PipelineConfig,
    index: usize,
    pipeline: &Pipeline,
    topic_id: TopicId,
    topic: &str,
) -> anyhow::Result<Result<Arc<Target>, String>> {
    let (schema, name) = match config.table_for(topic) {
        Ok(t) => t,
        Err(why) => return Ok(Err(why)),
    };
    let table = TableRef { schema, name };
    Ok(match plan_table(pool, config, index, &table, Ddl::Apply).await? {
        Ok(Planned::Ready(encoder)) => Ok(pipeline.add_target(topic_id, table, encoder)),
        Ok(Planned::NeedsDdl(_)) => unreachable!("Ddl::Apply runs the DDL"),
        Err(problems) => Err(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
    })
}

/// Checks every pipeline's mapping against its live table (running the DDL
/// the pipelines allow) and builds the pipelines. A pipeline with a table
/// per topic gets the tables of its named topics now; those of topics
/// matching its patterns are planned when they are assigned. Returns every
/// problem found, not just the first.
pub async fn plan_pipelines(
    config: &Config,
    pool: &PgPool,
    topics: &Topics,
) -> anyhow::Result<Result<Vec<Pipeline>, Vec<String>>> {
    let mut pipelines = Vec::new();
    let mut problems = Vec::new();
    for (index, p) in config.pipelines.iter().enumerate() {
        let table = table_ref(p);
        if p.table_per_topic() {
            let pipeline = Pipeline::per_topic(p.name.clone(), table, settings(p));
            for t in p.topics.iter().filter(|t| !t.starts_with('^')) {
                let Some((topic_id, _)) = topics.route(t) else {
                    continue;
                };
                if let Err(why) = plan_topic(pool, p, index, &pipeline, topic_id, t).await? {
                    problems.push(why);
                }
            }
            pipelines.push(pipeline);
            continue;
        }
        match plan_table(pool, p, index, &table, Ddl::Apply).await? {
            Ok(Planned::Ready(encoder)) => pipelines.push(Pipeline::new(p.name.clone(), table, encoder, settings(p))),
            Ok(Planned::NeedsDdl(_)) => unreachable!("Ddl::Apply runs the DDL"),
            Err(errors) => problems.extend(errors.iter().map(ToString::to_string)),
        }
    }
    Ok(if problems.is_empty() {
        Ok(pipelines)
    } else {
        Err(problems)
    })
}

/// Constant columns (`"=value"`) must be valid input for their column's
/// type; Postgres itself says whether they are.
async fn check_constants(pool: &PgPool, pipeline: &str, columns: &[ColumnPlan]) -> Vec<MappingError> {
    let mut problems = Vec::new();
    for c in columns {
        let ColumnSource::Const(text) = &c.source else {
            continue;
        };
        let cast = format!("SELECT CAST($1::text AS {})::text", c.ty.sql_name());
        if let Err(err) = sqlx::query(&cast).bind(text).execute(pool).await {
            let why = match &err {
                sqlx::Error::Database(db) => db.message().to_owned(),
                other => other.to_string(),
            };
            problems.push(MappingError::Incompatible {
                pipeline: pipeline.to_owned(),
                column: c.name.clone(),
                type_name: c.ty.sql_name().to_owned(),
                reason: format!("the constant {text:?} is not a valid {}: {why}", c.ty.sql_name()),
            });
        }
    }
    problems
}

/// `sluice check`: the config is valid (it loaded), both systems answer,
/// and every mapping fits its live table. Prints a line per finding and
/// returns how many problems there were.
pub async fn check(config: &Config) -> usize {
    let mut problems = 0;
    let properties = config.consumer_properties();
    match kafka_metadata(&properties, Duration::from_secs(10)) {
        Ok(topics) => {
            println!(
                "ok: kafka {} answers ({} topics visible)",
                config.kafka.brokers,
                topics.len()
            );
            for p in &config.pipelines {
                for t in &p.topics {
                    if !topics.contains(t) {
                        println!(
                            "warning: pipeline `{}`: topic `{t}` does not exist yet (it is read once created)",
                            p.name
                        );
                    }
                }
            }
        }
        Err(err) => {
            problems += 1;
            println!("error: kafka {}: {err}", config.kafka.brokers);
        }
    }
    let pool = match connect(&config.postgres).await {
        Ok(pool) => {
            println!("ok: postgres {} answers", config.postgres.redacted_url());
            pool
        }
        Err(err) => {
            println!("error: postgres {}: {err}", config.postgres.redacted_url());
            return problems + 1;
        }
    };
    match MIGRATOR.version_checksum_ok(&pool).await {
        Ok(true) => println!("ok: sluice schema is migrated"),
        Ok(false) => {
            problems += 1;
            println!("error: sluice schema is not migrated: run `sluice migrate`");
        }
        Err(err) => {
            problems += 1;
            println!("error: reading sluice migrations: {err}");
        }
    }
    for (index, p) in config.pipelines.iter().enumerate() {
        let mut tables = Vec::new();
        if p.table_per_topic() {
            for t in p.topics.iter().filter(|t| !t.starts_with('^')) {
                match p.table_for(t) {
                    Ok((schema, name)) => tables.push(TableRef { schema, name }),
                    Err(why) => {
                        problems += 1;
                        println!("error: pipeline `{}`: {why}", p.name);
                    }
                }
            }
            if p.topics.iter().any(|t| t.starts_with('^')) {
                println!(
                    "ok: pipeline `{}`: the tables of topics matching its patterns are planned as they are assigned ({})",
                    p.name, p.table
                );
            }
        } else {
            tables.push(table_ref(p));
        }
        for table in tables {
            problems += check_table(&pool, p, index, &table).await;
        }
    }
    problems
}

/// `sluice check` of one pipeline's table; returns the number of problems.
async fn check_table(pool: &PgPool, p: &PipelineConfig, index: usize, table: &TableRef) -> usize {
    match plan_table(pool, p, index, table, Ddl::DryRun).await {
        Ok(Ok(Planned::Ready(encoder))) => {
            let mode = match encoder.key_columns() {
                Some(key) => format!(", upsert on ({}), unique index found", key.join(", ")),
                None => String::new(),
            };
            println!(
                "ok: pipeline `{}` → {table} ({} columns{mode})",
                p.name,
                encoder.columns().len()
            );
            0
        }
        Ok(Ok(Planned::NeedsDdl(statements))) => {
            println!("ok: pipeline `{}` → {table}: at start-up sluice will run:", p.name);
            for statement in statements {
                println!("    {statement};");
            }
            0
        }
        Ok(Err(errors)) => {
            for e in &errors {
                println!("error: {e}");
            }
            errors.len()
        }
        Err(err) => {
            println!("error: {err:#}");
            1
        }
    }
}

trait MigratorExt {
    async fn version_checksum_ok(&self, pool: &PgPool) -> Result<bool, sqlx::Error>;
}

impl MigratorExt for sqlx::migrate::Migrator {
    /// Whether every embedded migration is applied.
    async fn version_checksum_ok(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => return Ok(false),
            Err(err) => return Err(err),
        };
        Ok(self.iter().all(|m| applied.contains(&m.version)))
    }
}

fn kafka_metadata(
    properties: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Vec<String>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut config = rdkafka::ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok(metadata.topics().iter().map(|t| t.name().to_owned()).collect())
}

/// `sluice dlq replay`: replays `filter`'s dead letters of pipeline
/// `name` with its current mapping, checked against the live table.
pub async fn dlq_replay(
    config: &Config,
    name: &str,
    filter: &crate::sink::replay::Filter,
) -> anyhow::Result<crate::sink::replay::Report> {
    let index = config
        .pipelines
        .iter()
        .position(|p| p.name == name)
        .with_context(|| format!("no pipeline named {name:?} in the config"))?;
    let pool = connect(&config.postgres)
        .await
        .with_context(|| format!("connecting to postgres {}", config.postgres.redacted_url()))?;
    let mut only = config.clone();
    only.pipelines = vec![config.pipelines[index].clone()];
    let topics = topics_of(&only)?;
    let pipeline = match plan_pipelines(&only, &pool, &topics).await? {
        Ok(mut p) => p.remove(0),
        Err(errors) => bail!("the mapping does not fit the table: {}", errors.join("; ")),
    };
    // A table per topic: plan those of the topics with dead letters to replay.
    let mut targets: HashMap<String, Arc<Target>> = HashMap::new();
    if pipeline.is_per_topic() {
        let dead_topics: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT topic FROM sluice.dead_letters WHERE pipeline = $1 AND replayed_at IS NULL",
        )
        .bind(name)
        .fetch_all(&pool)
        .await?;
        for topic in dead_topics {
            let Some((topic_id, _)) = topics.route(&topic) else {
                continue;
            };
            match plan_topic(&pool, &only.pipelines[0], index, &pipeline, topic_id, &topic).await? {
                Ok(target) => {
                    targets.insert(topic, target);
                }
                Err(why) => bail!("the mapping does not fit the table of topic {topic:?}: {why}"),
            }
        }
    }
    let target = |topic: &str| -> Option<Arc<Target>> {
        match pipeline.is_per_topic() {
            true => targets.get(topic).cloned(),
            false => pipeline.target(TopicId(0)),
        }
    };
    Ok(crate::sink::replay::replay(&pool, name, &target, filter).await?)
}

/// Runs sluice until `shutdown` resolves, then drains within
/// `config.shutdown_timeout` and leaves the group.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let pool = connect(&config.postgres)
        .await
        .with_context(|| format!("connecting to postgres {}", config.postgres.redacted_url()))?;
    migrate(&pool).await.context("applying sluice migrations")?;
    let topics = Arc::new(topics_of(&config)?);
    let pipelines = match plan_pipelines(&config, &pool, &topics).await? {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                error!(error = %e, "mapping does not fit the table");
            }
            bail!("{} mapping problem(s); see `sluice check`", errors.len());
        }
    };
    let pipelines: Vec<Arc<Pipeline>> = pipelines.into_iter().map(Arc::new).collect();
    let group_id: Arc<str> = Arc::from(config.kafka.group_id.as_str());

    let (cmd_tx, cmd_rx) = std_mpsc::channel();
    let mut writer_txs = Vec::new();
    let mut writer_tasks = Vec::new();
    let refetch = Arc::new(std::sync::Mutex::new(Refetcher::new(config.consumer_properties())));
    for (index, pipeline) in pipelines.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        writer_txs.push(tx);
        let writer = Writer {
            index,
            pipeline: pipeline.clone(),
            pool: pool.clone(),
            group_id: group_id.clone(),
            topics: topics.clone(),
            commands: rx,
            consumer: cmd_tx.clone(),
            control: Control::new(
                pipeline,
                BreakerSettings {
                    failure_threshold: config.breaker.failure_threshold,
                    open_duration: config.breaker.open_duration,
                    max_open_duration: config.breaker.max_open_duration,
                },
                config.postgres.write_timeout,
            ),
            refetch: refetch.clone(),
            dlq: match &pipeline.settings.dlq_topic {
                Some(topic) => Some(
                    DlqProducer::new(&config.consumer_properties(), topic)
                        .with_context(|| format!("creating the producer for dead-letter topic {topic}"))?,
                ),
                None => None,
            },
        };
        writer_tasks.push(tokio::spawn(writer.run()));
    }
    let shared = Arc::new(Shared::new(
        pipelines.clone(),
        topics.clone(),
        pool.clone(),
        group_id,
        config.kafka.auto_offset_reset == OffsetReset::Earliest,
        config.kafka.on_offset_out_of_range,
        writer_txs.clone(),
        tokio::runtime::Handle::current(),
        config.shutdown_timeout,
        config.pipelines.clone(),
    ));
    let observed = Arc::new(Observed::new(
        &config,
        pipelines.clone(),
        topics.clone(),
        shared.clone(),
    ));
    let telemetry = Telemetry::start(&config, observed)
        .await
        .context("starting telemetry")?;
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

    tokio::select! {
        _ = shutdown => info!(timeout = ?config.shutdown_timeout, "shutdown requested: draining"),
        _ = &mut done_rx => match shared.fatal() {
            Some(why) => bail!("{why}"),
            None => bail!("the consumer loop ended unexpectedly"),
        },
    }

    // DRAINING: stop intake, flush what is buffered, commit, leave the group.
    // Whatever is not flushed by the deadline is simply not committed.
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let close_reserve = (config.shutdown_timeout / 4).min(Duration::from_secs(3));
    shared.draining.store(true, Ordering::SeqCst);
    for p in &pipelines {
        let mut state = p.lock();
        state.draining = true;
        p.refresh_state(&mut state);
    }
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
    telemetry.shutdown().await;
    for p in &pipelines {
        let c = &p.counters;
        let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        info!(pipeline = %p.name, consumed = get(&c.consumed), written = get(&c.written), dropped = get(&c.dropped),
            drop_reason = p.settings.strategy.as_str(), dead_lettered = get(&c.dead_lettered), fenced = get(&c.fenced),
            flushes = get(&c.flushes), attempts = get(&c.attempts), "pipeline totals");
    }
    info!("sluice stopped");
    Ok(())
}
