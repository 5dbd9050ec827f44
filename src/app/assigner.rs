//! The database side of an assignment, off the rebalance callback.
//!
//! The consumer loop's rebalance callback must answer before its
//! partitions start, but does no database I/O itself: it sends an
//! [`AssignRequest`] with a reply channel and waits. The assigner, a task
//! on the runtime, plans the table of a topic new to a per-topic pipeline
//! and reads the stored offsets (both retried while the database is away);
//! it also reads and moves single stored offsets for the out-of-range
//! handling of the loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::error_chain;
use super::plan::{plan_topic, PlanError};
use crate::config::PipelineConfig;
use crate::model::{NextOffset, TopicId};
use crate::pipeline::ports::{AssignError, AssignRequest};
use crate::pipeline::Pipeline;
use crate::postgres::offset_store;

/// How long the table of a new topic is retried while the database fails.
const PLAN_RETRY_FOR: Duration = Duration::from_secs(30);

/// Serves the consumer loop's [`AssignRequest`]s.
pub struct Assigner {
    pub pool: PgPool,
    pub group_id: Arc<str>,
    /// The pipelines' configs, to plan the table of a topic that appears.
    pub configs: Vec<PipelineConfig>,
    pub pipelines: Vec<Arc<Pipeline>>,
}

impl Assigner {
    /// Answers requests, one at a time, until every sender is gone.
    pub async fn serve(self, mut requests: mpsc::UnboundedReceiver<AssignRequest>) {
        while let Some(request) = requests.recv().await {
            match request {
                AssignRequest::Assign {
                    pipeline,
                    topic_id,
                    topic,
                    partitions,
                    reply,
                } => {
                    let answer = self.assign(pipeline, topic_id, &topic, &partitions).await;
                    let _ = reply.send(answer);
                }
                AssignRequest::Stored {
                    topic,
                    partition,
                    reply,
                } => {
                    let stored = self.stored(&topic, &[partition]).await;
                    let _ = reply.send(stored.get(&partition).copied());
                }
                AssignRequest::Advance {
                    topic,
                    partition,
                    from,
                    to,
                    reply,
                } => {
                    let moved = async {
                        let mut conn = self.pool.acquire().await?;
                        offset_store::advance(&mut conn, &self.group_id, &topic, partition, from, to).await
                    }
                    .await;
                    let _ = reply.send(moved.map_err(Into::into));
                }
            }
        }
    }

    /// Plans the topic's table when the pipeline has none for it yet, then
    /// reads the stored offsets of `partitions`.
    async fn assign(
        &self,
        index: usize,
        topic_id: TopicId,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, NextOffset>, AssignError> {
        if self.pipelines[index].target(topic_id).is_none() {
            self.plan_new_topic(index, topic_id, topic).await?;
        }
        Ok(self.stored(topic, partitions).await)
    }

    /// Plans the table of a topic a per-topic pipeline sees for the first
    /// time. Database errors are retried for a while (the database may be
    /// restarting); a mapping that does not fit is returned at once.
    async fn plan_new_topic(&self, index: usize, topic_id: TopicId, topic: &str) -> Result<(), AssignError> {
        let pipeline = &self.pipelines[index];
        let config = &self.configs[index];
        let mut delay = Duration::from_millis(100);
        let deadline = Instant::now() + PLAN_RETRY_FOR;
        loop {
            match plan_topic(&self.pool, config, index, pipeline, topic_id, topic).await {
                Ok(target) => {
                    info!(pipeline = %pipeline.name, %topic, table = %target.table, "table planned for a new topic");
                    return Ok(());
                }
                Err(err @ PlanError::Database { .. }) if Instant::now() < deadline => {
                    warn!(pipeline = %pipeline.name, %topic, error = %error_chain(&err), retry_in = ?delay,
                        "planning the table of a new topic failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(err) => {
                    return Err(AssignError::Unplannable {
                        pipeline: pipeline.name.clone(),
                        topic: topic.to_owned(),
                        reason: error_chain(&err),
                    });
                }
            }
        }
    }

    /// The stored offsets of `partitions`. Reading them must succeed before
    /// the partitions start: starting anywhere else would only get fenced.
    /// Retried while the database is away.
    async fn stored(&self, topic: &str, partitions: &[i32]) -> HashMap<i32, NextOffset> {
        let mut delay = Duration::from_millis(100);
        loop {
            match offset_store::load(&self.pool, &self.group_id, topic, partitions).await {
                Ok(map) => return map,
                Err(err) => {
                    warn!(%topic, error = %err, retry_in = ?delay, "reading stored offsets failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
