//! `sluice check`: the config is valid (it loaded), both systems answer,
//! sluice's schema is migrated, and every mapping fits its live table.

use std::time::Duration;

use sqlx::PgPool;

use super::plan::{plan_table, table_ref, with_schema_columns, Ddl, PlanError, Planned};
use super::{connect, MIGRATOR};
use crate::config::{Config, PipelineConfig};
use crate::mapping::TableRef;

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
    let config = match with_schema_columns(config.clone(), &[]) {
        Ok(config) => config,
        Err(err) => {
            println!("error: {err}");
            return problems + 1;
        }
    };
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
        Ok(Planned::Ready(encoder)) => {
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
        Ok(Planned::NeedsDdl(statements)) => {
            println!("ok: pipeline `{}` → {table}: at start-up sluice will run:", p.name);
            for statement in statements {
                println!("    {statement};");
            }
            0
        }
        Err(PlanError::Mapping(errors)) => {
            for e in &errors {
                println!("error: {e}");
            }
            errors.len()
        }
        Err(err) => {
            println!("error: {}", super::error_chain(&err));
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
    use rdkafka::consumer::Consumer as _;
    let consumer = crate::kafka::metadata_client(properties)?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok(metadata.topics().iter().map(|t| t.name().to_owned()).collect())
}
