//! The dead-letter store: `sluice.dead_letters`.
//!
//! A record that can never become a row is kept here with its raw bytes and
//! the precise reason, instead of stalling the pipeline or vanishing. Dead
//! letters are inserted in the flush transaction that advances the offsets
//! covering them, so — like rows — each one is stored exactly once: a
//! rolled-back flush stores none, a retried or re-delivered one cannot store
//! it twice (`ON CONFLICT DO NOTHING` on the record's coordinates).
//! [`replay`] lists, shows and replays what is stored (`sluice dlq`).

pub mod replay;

use sqlx::PgConnection;

use crate::model::dead_letter::{no_nul, Stored};

/// Inserts dead letters of `pipeline` in the caller's transaction, one
/// statement for all of them. A record already stored (re-delivered after a
/// fence or a crash) is skipped. Returns how many were inserted.
pub async fn insert(tx: &mut PgConnection, pipeline: &str, letters: &[Stored<'_>]) -> Result<u64, sqlx::Error> {
    if letters.is_empty() {
        return Ok(0);
    }
    let n = letters.len();
    let (mut topics, mut partitions, mut offsets, mut timestamps) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut keys, mut values, mut headers) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut classes, mut sqlstates, mut errors) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for s in letters {
        topics.push(s.topic);
        partitions.push(s.partition);
        offsets.push(s.offset);
        timestamps.push(s.timestamp_ms);
        keys.push(s.letter.key.as_deref());
        values.push(s.letter.value.as_deref());
        headers.push(&*s.letter.headers);
        classes.push(s.letter.class.as_str());
        sqlstates.push(s.letter.sqlstate.as_deref());
        errors.push(no_nul(&s.letter.error));
    }
    let result = sqlx::query(
        "INSERT INTO sluice.dead_letters \
           (pipeline, topic, partition, \"offset\", kafka_timestamp, key, value, headers, error_class, sqlstate, error) \
         SELECT $1, t, p, o, to_timestamp(ts::float8 / 1000), k, v, h::jsonb, c, s, e \
         FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[], $6::bytea[], $7::bytea[], $8::text[], \
                     $9::text[], $10::text[], $11::text[]) AS u(t, p, o, ts, k, v, h, c, s, e) \
         ON CONFLICT (pipeline, topic, partition, \"offset\") DO NOTHING",
    )
    .bind(pipeline)
    .bind(topics)
    .bind(partitions)
    .bind(offsets)
    .bind(timestamps)
    .bind(keys)
    .bind(values)
    .bind(headers)
    .bind(classes)
    .bind(sqlstates)
    .bind(errors)
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected())
}
