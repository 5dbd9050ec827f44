//! `sluice.offsets`: the source of truth for where each partition resumes.
//!
//! The fencing rule of DESIGN.md lives in [`advance`]: an offset row moves
//! only from the position this instance started its batch from. Anyone who
//! moved it in between (a new owner after a rebalance, or this instance's own
//! stale batch) makes the update touch zero rows, and the whole transaction,
//! rows included, rolls back.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

use crate::model::offsets::NextOffset;

/// Stored positions of `partitions` of `topic` for `group_id`.
pub async fn load(
    pool: &PgPool,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, NextOffset>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM sluice.offsets \
         WHERE group_id = $1 AND topic = $2 AND partition = ANY($3)",
    )
    .bind(group_id)
    .bind(topic)
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(p, o)| (p, NextOffset(o))).collect())
}

/// Moves the stored position of one partition from `from` to `to` inside
/// the caller's transaction. Returns `false` when fenced: the stored
/// position is no longer `from` (or, for a first write, a row already exists).
pub async fn advance(
    tx: &mut PgConnection,
    group_id: &str,
    topic: &str,
    partition: i32,
    from: Option<NextOffset>,
    to: NextOffset,
) -> Result<bool, sqlx::Error> {
    let result = match from {
        Some(NextOffset(from)) => {
            sqlx::query(
                "UPDATE sluice.offsets SET next_offset = $5, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
            )
            .bind(group_id)
            .bind(topic)
            .bind(partition)
            .bind(from)
            .bind(to.0)
            .execute(&mut *tx)
            .await?
        }
        None => {
            sqlx::query(
                "INSERT INTO sluice.offsets (group_id, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(group_id)
            .bind(topic)
            .bind(partition)
            .bind(to.0)
            .execute(&mut *tx)
            .await?
        }
    };
    Ok(result.rows_affected() == 1)
}
