//! `sluice dlq`: list, show and replay dead letters.
//!
//! Replay is exactly-once per dead letter. Each one is replayed in its own
//! transaction that first marks it (`replayed_at = now() WHERE replayed_at
//! IS NULL`, which also locks it), then encodes its stored value with the
//! pipeline's *current* mapping against the live table and COPYs the row
//! (in upsert mode: upserts it, or deletes for a tombstone).
//! Both commit together or not at all: an interrupted replay leaves each
//! dead letter either replayed (row written, marked) or untouched, a rerun
//! skips the marked ones, and two replays running at once cannot both write
//! one (the second waits on the row lock, then finds it marked). One that is
//! still bad stays unmarked and is reported.

use std::sync::Arc;
use std::time::Instant;

use sqlx::{PgPool, Row as _};

use crate::format::Decoder;
use crate::model::dead_letter::headers_from_json;
use crate::pipeline::Target;
use crate::postgres::upsert;
use crate::row::{HeaderRef, RecordRef};

/// One dead letter, as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: i64,
    pub pipeline: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error_class: String,
    pub sqlstate: Option<String>,
    pub error: String,
    pub failed_at: String,
    pub replayed_at: Option<String>,
}

/// One dead letter in full.
#[derive(Debug, Clone)]
pub struct Shown {
    pub listed: Listed,
    pub kafka_timestamp: Option<String>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: serde_json::Value,
}

/// Which dead letters: of a pipeline (or all), in an id range, of a class.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pipeline: Option<String>,
    /// Inclusive.
    pub ids: Option<(i64, i64)>,
    pub class: Option<String>,
}

const LISTED: &str = "SELECT id, pipeline, topic, partition, \"offset\", error_class, sqlstate, error, \
     failed_at::text AS failed_at, replayed_at::text AS replayed_at";

fn listed(row: &sqlx::postgres::PgRow) -> Result<Listed, sqlx::Error> {
    Ok(Listed {
        id: row.try_get("id")?,
        pipeline: row.try_get("pipeline")?,
        topic: row.try_get("topic")?,
        partition: row.try_get("partition")?,
        offset: row.try_get("offset")?,
        error_class: row.try_get("error_class")?,
        sqlstate: row.try_get("sqlstate")?,
        error: row.try_get("error")?,
        failed_at: row.try_get("failed_at")?,
        replayed_at: row.try_get("replayed_at")?,
    })
}

/// Dead letters matching `filter`, oldest first, at most `limit`.
pub async fn list(pool: &PgPool, filter: &Filter, limit: i64) -> Result<Vec<Listed>, sqlx::Error> {
    let (from, to) = filter.ids.unwrap_or((i64::MIN, i64::MAX));
    let rows = sqlx::query(&format!(
        "{LISTED} FROM sluice.dead_letters \
         WHERE ($1::text IS NULL OR pipeline = $1) AND ($2::text IS NULL OR error_class = $2) \
           AND id BETWEEN $3 AND $4 \
         ORDER BY id LIMIT $5"
    ))
    .bind(filter.pipeline.as_deref())
    .bind(filter.class.as_deref())
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(listed).collect()
}

/// One dead letter with its key, value and headers.
pub async fn show(pool: &PgPool, id: i64) -> Result<Option<Shown>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "{LISTED}, kafka_timestamp::text AS kafka_timestamp, key, value, headers \
         FROM sluice.dead_letters WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Shown {
        listed: listed(&row)?,
        kafka_timestamp: row.try_get("kafka_timestamp")?,
        key: row.try_get("key")?,
        value: row.try_get("value")?,
        headers: row.try_get::<sqlx::types::Json<serde_json::Value>, _>("headers")?.0,
    }))
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Report {
    /// Written into the table and marked replayed.
    pub replayed: Vec<i64>,
    /// Already replayed (by an earlier or a concurrent run).
    pub skipped: Vec<i64>,
    /// Still refused: (id, why). They stay dead letters.
    pub still_bad: Vec<(i64, String)>,
}

/// Replays the not-yet-replayed dead letters of `pipeline` matching
/// `filter` into its table, each exactly once (see the module docs).
/// `target` gives the table (and mapping) of a topic's records; a dead
/// letter of a topic without one is reported as still bad.
pub async fn replay(
    pool: &PgPool,
    pipeline: &str,
    target: &dyn Fn(&str) -> Option<Arc<Target>>,
    decoder: &Decoder,
    filter: &Filter,
) -> Result<Report, sqlx::Error> {
    let (from, to) = filter.ids.unwrap_or((i64::MIN, i64::MAX));
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM sluice.dead_letters \
         WHERE pipeline = $1 AND replayed_at IS NULL AND ($2::text IS NULL OR error_class = $2) \
           AND id BETWEEN $3 AND $4 ORDER BY id",
    )
    .bind(pipeline)
    .bind(filter.class.as_deref())
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut report = Report::default();
    let mut line = Vec::new();
    for id in ids {
        let mut tx = pool.begin().await?;
        // Marks and locks it: a concurrent replay waits here, then skips it.
        let marked = sqlx::query(
            "UPDATE sluice.dead_letters SET replayed_at = now() WHERE id = $1 AND replayed_at IS NULL \
             RETURNING topic, partition, \"offset\", \
               round(extract(epoch FROM kafka_timestamp) * 1000)::int8 AS timestamp_ms, key, value, \
               headers::text AS headers",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = marked else {
            tx.rollback().await?;
            report.skipped.push(id);
            continue;
        };
        let topic: String = row.try_get("topic")?;
        let key: Option<Vec<u8>> = row.try_get("key")?;
        let value: Option<Vec<u8>> = row.try_get("value")?;
        let stored_headers: Option<String> = row.try_get("headers")?;
        let owned_headers = headers_from_json(stored_headers.as_deref().unwrap_or("[]"));
        let headers: Vec<HeaderRef<'_>> = owned_headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        // Decoded as the consumer does (a schema is fetched if need be).
        let decoded = match decoder.decode(key.as_deref(), value.as_deref(), true, Instant::now()) {
            Ok(decoded) => decoded,
            Err(err) => {
                tx.rollback().await?;
                report.still_bad.push((id, err.to_string()));
                continue;
            }
        };
        if decoded.skip {
            // Nothing to write (a Debezium delete's tombstone): done.
            tx.commit().await?;
            report.replayed.push(id);
            continue;
        }
        let record = RecordRef {
            topic: &topic,
            partition: row.try_get("partition")?,
            offset: row.try_get("offset")?,
            timestamp_ms: row.try_get("timestamp_ms")?,
            key: decoded.key.as_deref(),
            value: decoded.value.as_deref(),
            source: decoded.source.as_deref(),
            headers: &headers,
        };
        let Some(target) = target(&topic) else {
            tx.rollback().await?;
            report
                .still_bad
                .push((id, format!("no table is planned for topic {topic:?}")));
            continue;
        };
        let write_sql = &target.write_sql;
        line.clear();
        if let Err(err) = target.encoder.encode(&record, &mut line) {
            tx.rollback().await?;
            report.still_bad.push((id, err.to_string()));
            continue;
        }
        // In upsert mode the record is applied like a one-record batch: a
        // replayed (older) record overwrites the row of its key.
        let mut data = Vec::with_capacity(line.len() + 4);
        write_sql.frame(&mut data, &line, 0);
        let copied = async {
            upsert::prepare(write_sql, &mut tx).await?;
            upsert::write(write_sql, &mut tx, &data).await
        }
        .await;
        match copied {
            Ok(_) => {
                tx.commit().await?;
                report.replayed.push(id);
            }
            Err(sqlx::Error::Database(db))
                if crate::postgres::error::classify_sqlstate(db.code().as_deref().unwrap_or(""))
                    == crate::model::ErrorClass::Data =>
            {
                tx.rollback().await?;
                report.still_bad.push((
                    id,
                    format!("SQLSTATE {}: {}", db.code().unwrap_or_default(), db.message()),
                ));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(report)
}
