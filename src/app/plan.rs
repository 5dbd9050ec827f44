//! Planning: the pipelines from the config, each mapping checked against
//! its live table (running the DDL a pipeline allows), and the encoder of
//! each table.

use std::sync::Arc;

use sqlx::PgPool;
use tracing::info;

use crate::config::{Config, PipelineConfig, WriteMode};
use crate::format::{Decoder, Envelope, Format, SchemaSource as _, Schemas};
use crate::mapping::{ColumnSource, TableRef};
use crate::model::{TopicId, Topics};
use crate::pipeline::buffer::Limits;
use crate::pipeline::flush_policy::FlushSettings;
use crate::pipeline::{Pipeline, Settings, Target};
use crate::postgres::ddl::{self, ColumnDef};
use crate::postgres::schema::{live_columns, plan_columns, MappingError};
use crate::postgres::upsert::{has_unique_key, unique_keys};
use crate::registry::Registry;
use crate::row::{ColumnPlan, RowEncoder, UpsertError};

/// Why a pipeline or a table cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The database failed while planning (it may be restarting: a caller
    /// that can wait retries).
    #[error("{what}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    /// The mapping does not fit the table: every problem found.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Mapping(Vec<MappingError>),
    /// The Schema Registry client could not be built (its CA file).
    #[error("{0}")]
    Registry(String),
    /// A topic pattern that is not a valid regular expression.
    #[error("pipeline `{pipeline}`: topic pattern {pattern:?}")]
    TopicPattern {
        pipeline: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// More topics than sluice can hold.
    #[error("more than {} topics", crate::model::MAX_TOPICS)]
    TooManyTopics,
}

impl PlanError {
    fn database(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> PlanError {
        let what = what.into();
        move |source| PlanError::Database { what, source }
    }
}

pub fn settings(p: &PipelineConfig) -> Settings {
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
        writers: p.writers,
    }
}

pub fn table_ref(p: &PipelineConfig) -> TableRef {
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
    Ready(Box<RowEncoder>),
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
) -> Result<Planned, PlanError> {
    let sources = p.column_sources();
    let mut live = live_columns(pool, table)
        .await
        .map_err(PlanError::database(format!("reading the columns of {table}")))?;
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
                return Ok(Planned::NeedsDdl(statements));
            }
            ddl::apply(pool, table, &statements)
                .await
                .map_err(PlanError::database(format!(
                    "pipeline `{}`: {}",
                    p.name,
                    statements.join("; ")
                )))?;
            for statement in &statements {
                info!(pipeline = %p.name, %table, %statement, "table changed to fit the mapping");
            }
            live = live_columns(pool, table)
                .await
                .map_err(PlanError::database(format!("reading the columns of {table}")))?;
        }
    }
    let columns = match plan_columns(&p.name, table, &sources, live.as_deref()) {
        Ok(columns) => columns,
        Err(errors) => return Err(PlanError::Mapping(errors)),
    };
    let bad_constants = verify_constants(pool, &p.name, &columns).await;
    if !bad_constants.is_empty() {
        return Err(PlanError::Mapping(bad_constants));
    }
    // Only schemaless JSON keeps the epoch-milliseconds reading of a bare
    // number in a timestamp column; with a schema or an envelope the
    // schema decides, and a bare number is refused.
    let plain_json = p.value_format == Format::Json && p.envelope == Envelope::None;
    let mut encoder = RowEncoder::new(columns).with_epoch_millis(plain_json);
    // A BEFORE trigger may change a row's key: then leave duplicates to Postgres.
    let before_triggers = live.iter().flatten().any(|c| c.table_has_before_triggers);
    if p.mode == WriteMode::Insert && !before_triggers {
        let keys = unique_keys(pool, table)
            .await
            .map_err(PlanError::database(format!("reading the unique indexes of {table}")))?;
        encoder = encoder.with_unique_keys(&keys);
    }
    if p.mode == WriteMode::Upsert {
        // `Config::validate` checked that the key columns are mapped.
        let invalid = |why: UpsertError| {
            PlanError::Mapping(vec![MappingError::Invalid {
                pipeline: p.name.clone(),
                reason: why.to_string(),
            }])
        };
        encoder = encoder.with_upsert(&p.key, p.deletes_on_tombstone()).map_err(invalid)?;
        if let Some(version) = &p.version {
            encoder = encoder.with_version(version).map_err(invalid)?;
        }
        let unique = has_unique_key(pool, table, &p.key)
            .await
            .map_err(PlanError::database(format!("reading the unique indexes of {table}")))?;
        if !unique {
            return Err(PlanError::Mapping(vec![MappingError::NoUniqueKey {
                pipeline: p.name.clone(),
                index,
                table: table.to_string(),
                key: p.key.join(", "),
            }]));
        }
    }
    Ok(Planned::Ready(Box::new(encoder)))
}

/// The topics of the config: named ones registered, patterns added.
pub fn topics_of(config: &Config) -> Result<Topics, PlanError> {
    let mut topics = Topics::default();
    for (index, p) in config.pipelines.iter().enumerate() {
        for t in &p.topics {
            if t.starts_with('^') {
                topics.add_pattern(t, index).map_err(|source| PlanError::TopicPattern {
                    pipeline: p.name.clone(),
                    pattern: t.clone(),
                    source,
                })?;
            } else {
                topics.insert(t, index).ok_or(PlanError::TooManyTopics)?;
            }
        }
    }
    Ok(topics)
}

/// Plans the table of `topic` for the per-topic pipeline `index` (running
/// the DDL it allows) and adds it to `pipeline`.
pub async fn plan_topic(
    pool: &PgPool,
    config: &PipelineConfig,
    index: usize,
    pipeline: &Pipeline,
    topic_id: TopicId,
    topic: &str,
) -> Result<Arc<Target>, PlanError> {
    let (schema, name) = config
        .table_for(topic)
        .map_err(|why| PlanError::Mapping(vec![MappingError::TableName(why)]))?;
    let table = TableRef { schema, name };
    match plan_table(pool, config, index, &table, Ddl::Apply).await? {
        Planned::Ready(encoder) => Ok(pipeline.add_target(topic_id, table, *encoder)),
        Planned::NeedsDdl(_) => unreachable!("Ddl::Apply runs the DDL"),
    }
}

/// Checks every pipeline's mapping against its live table (running the DDL
/// the pipelines allow) and builds the pipelines. A pipeline with a table
/// per topic gets the tables of its named topics now; those of topics
/// matching its patterns are planned when they are assigned. A mapping
/// error holds every problem found, not just the first.
pub async fn plan_pipelines(config: &Config, pool: &PgPool, topics: &Topics) -> Result<Vec<Pipeline>, PlanError> {
    let mut pipelines = Vec::new();
    let mut problems = Vec::new();
    let schemas = schemas(config)?;
    for (index, p) in config.pipelines.iter().enumerate() {
        let table = table_ref(p);
        let decoder = Decoder::new(p.key_format, p.value_format, p.envelope, schemas.clone());
        if p.table_per_topic() {
            let pipeline = Pipeline::per_topic(p.name.clone(), table, settings(p)).with_decoder(decoder);
            for t in p.topics.iter().filter(|t| !t.starts_with('^')) {
                let Some((topic_id, _)) = topics.route(t) else {
                    continue;
                };
                match plan_topic(pool, p, index, &pipeline, topic_id, t).await {
                    Ok(_) => {}
                    Err(PlanError::Mapping(errors)) => problems.extend(errors),
                    Err(other) => return Err(other),
                }
            }
            pipelines.push(pipeline);
            continue;
        }
        match plan_table(pool, p, index, &table, Ddl::Apply).await {
            Ok(Planned::Ready(encoder)) => pipelines.push(
                Pipeline::new(p.name.clone(), table, *encoder, settings(p))
                    .with_decoder(decoder)
                    .with_columns_from_schema(p.columns_from_schema()),
            ),
            Ok(Planned::NeedsDdl(_)) => unreachable!("Ddl::Apply runs the DDL"),
            Err(PlanError::Mapping(errors)) => problems.extend(errors),
            Err(other) => return Err(other),
        }
    }
    match problems.is_empty() {
        true => Ok(pipelines),
        false => Err(PlanError::Mapping(problems)),
    }
}

/// Fills in the columns of pipelines that omit them
/// ([`PipelineConfig::columns_from_schema`]): one per top-level field of the
/// latest schema of `<topic>-value`, and of each schema id in `seen` for
/// that pipeline (schemas records were met with, whose fields the latest
/// may lack), mapped from `/<field>` and typed from the schema unless
/// `column_types` names a type. A few registry requests per such pipeline,
/// at start; a registry that cannot answer is an error.
pub fn with_schema_columns(mut config: Config, seen: &[(String, u32)]) -> Result<Config, PlanError> {
    if !config.pipelines.iter().any(PipelineConfig::columns_from_schema) {
        return Ok(config);
    }
    let registry = Registry::new(&config.schema_registry).map_err(|e| PlanError::Registry(e.to_string()))?;
    for p in config.pipelines.iter_mut().filter(|p| p.columns_from_schema()) {
        let subject = format!("{}-value", p.topics[0]);
        let bad = |why: String| {
            PlanError::Registry(format!(
                "pipeline `{}` takes its columns from the schema of subject {subject:?}: {why}",
                p.name
            ))
        };
        let mut schemas = vec![registry.latest(&subject).map_err(|e| bad(e.to_string()))?];
        for (_, id) in seen.iter().filter(|(name, _)| *name == p.name) {
            schemas.push(registry.fetch(*id).map_err(|e| bad(format!("schema id {id}: {e}")))?);
        }
        let before = p.columns.len();
        for schema in &schemas {
            for f in crate::format::columns_of(schema, p.envelope).map_err(&bad)? {
                // RFC 6901: `~` and `/` in a name are escaped in its pointer.
                let pointer = format!("/{}", f.name.replace('~', "~0").replace('/', "~1"));
                p.columns.entry(f.name.clone()).or_insert(pointer);
                p.column_types.entry(f.name).or_insert(f.sql_type);
            }
        }
        p.schema_filled = true;
        info!(pipeline = %p.name, %subject, columns = p.columns.len() - before, schemas = schemas.len(),
            "columns taken from the schema");
    }
    // What the schema brought is checked like a configured mapping.
    config.validate().map_err(|e| PlanError::Registry(e.to_string()))?;
    Ok(config)
}

/// The schema cache in front of the registry, shared by every pipeline,
/// when one reads a format that needs it.
fn schemas(config: &Config) -> Result<Option<Arc<Schemas>>, PlanError> {
    let needed = config
        .pipelines
        .iter()
        .any(|p| p.value_format.uses_registry() || p.key_format.uses_registry());
    if !needed {
        return Ok(None);
    }
    let registry = Registry::new(&config.schema_registry).map_err(|e| PlanError::Registry(e.to_string()))?;
    // A length inside an Avro datum never legitimately exceeds the record.
    let largest = config.pipelines.iter().map(|p| p.max_record_bytes.0).max().unwrap_or(0);
    let _ = apache_avro::util::max_allocation_bytes(usize::try_from(largest).unwrap_or(usize::MAX).max(1024));
    Ok(Some(Arc::new(Schemas::new(
        Box::new(registry),
        config.schema_registry.cache_capacity,
    ))))
}

/// Constant columns (`"=value"`) must be valid input for their column's
/// type; Postgres itself says whether they are.
async fn verify_constants(pool: &PgPool, pipeline: &str, columns: &[ColumnPlan]) -> Vec<MappingError> {
    let mut problems = Vec::new();
    for c in columns {
        let ColumnSource::Const(text) = &c.source else {
            continue;
        };
        let cast = format!("SELECT CAST($1::text AS {})::text", c.type_name());
        if let Err(err) = sqlx::query(&cast).bind(text).execute(pool).await {
            let why = match &err {
                sqlx::Error::Database(db) => db.message().to_owned(),
                other => other.to_string(),
            };
            problems.push(MappingError::Incompatible {
                pipeline: pipeline.to_owned(),
                column: c.name.clone(),
                type_name: c.type_name().into_owned(),
                reason: format!("the constant {text:?} is not a valid {}: {why}", c.type_name()),
            });
        }
    }
    problems
}
