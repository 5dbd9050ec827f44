//! The pipeline's ports: what the Kafka side and the Postgres side ask of
//! each other, and of the application, without importing each other.
//!
//! Each port is a command type or a trait defined here, below both sides;
//! the side that serves it implements it ([`crate::kafka`] serves
//! [`ConsumerCommand`], [`ReadBack`] and [`DeadLetterTopic`];
//! [`crate::postgres`]'s writer serves [`WriterCommand`]; the application's
//! assigner, [`crate::app::assigner`], serves [`AssignRequest`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::model::dead_letter::Stored;
use crate::model::{Coordinates, NextOffset, Raw, TopicId, Tp};

/// Requests from the writers to the consumer loop, which owns the consumer.
#[derive(Debug)]
pub enum ConsumerCommand {
    /// Commit `next` to Kafka (for lag tooling) if the partition is still
    /// held under `epoch`.
    Commit {
        pipeline: usize,
        tp: Tp,
        epoch: u64,
        next: NextOffset,
    },
    /// A flush was fenced: move the partition back to the stored offset
    /// (`None`: no row, use the reset policy).
    Seek {
        pipeline: usize,
        tp: Tp,
        epoch: u64,
        to: Option<NextOffset>,
    },
}

/// Requests to a writer.
#[derive(Debug)]
pub enum WriterCommand {
    /// Flush everything buffered, then answer (eager rebalance and shutdown).
    FlushAll { ack: oneshot::Sender<()> },
    /// Flush what is buffered of these partitions only, then answer (an
    /// incremental revoke: the other partitions keep their batching).
    FlushPartitions {
        partitions: Arc<HashSet<Tp>>,
        ack: oneshot::Sender<()>,
    },
}

/// Reads records back from Kafka by their coordinates, for the dead
/// letters of rows the database refused (implemented by
/// [`crate::kafka::refetch::Refetcher`]).
pub trait ReadBack: Send {
    /// Reads the records at `wanted`, until about `budget` bytes of them are
    /// found; the flag says whether it looked for all of them (`false`: it
    /// stopped at the budget, ask again for the rest). What is not found
    /// within `timeout` is missing from the map. Blocking.
    fn fetch(&mut self, wanted: &[Coordinates], timeout: Duration, budget: usize) -> (HashMap<Coordinates, Raw>, bool);
}

/// A dead-letter topic refused, or did not acknowledge in time, a flush's
/// dead letters. Not a database failure: the flush is retried without the
/// breaker.
#[derive(Debug, thiserror::Error)]
#[error("producing to dead-letter topic {topic}: {source}")]
pub struct DeadLetterTopicError {
    pub topic: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// What [`DeadLetterTopic::send`] returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeadLetterTopicError>> + Send + 'a>>;

/// The Kafka dead-letter topic of a pipeline (`errors.dlq_topic`),
/// implemented by [`crate::kafka::dead_letter_topic::DeadLetterProducer`].
pub trait DeadLetterTopic: Send + Sync + std::fmt::Debug {
    /// Produces `letters` and waits for every acknowledgement, by `deadline`.
    fn send<'a>(&'a self, pipeline: &'a str, letters: &'a [Stored<'a>], deadline: Instant) -> SendFuture<'a>;
}

/// Why the partitions of an assignment cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The table of a topic new to a per-topic pipeline cannot be written:
    /// sluice must stop rather than skip its records.
    #[error("pipeline `{pipeline}`: topic {topic:?}: {reason}")]
    Unplannable {
        pipeline: String,
        topic: String,
        reason: String,
    },
    /// The assigner is gone (sluice is stopping).
    #[error("the assigner stopped")]
    Gone,
}

/// Requests from the consumer loop to the component that does the database
/// side of an assignment ([`crate::app::assigner`]), each with its reply
/// channel. The rebalance callback only sends these and waits: it does no
/// database I/O itself.
#[derive(Debug)]
pub enum AssignRequest {
    /// Partitions of `topic` (of pipeline `pipeline`) were assigned: plan
    /// the topic's table if the pipeline has none for it yet, then read the
    /// stored offsets of `partitions` (retried while the database is away).
    Assign {
        pipeline: usize,
        topic_id: TopicId,
        topic: String,
        partitions: Vec<i32>,
        reply: oneshot::Sender<Result<HashMap<i32, NextOffset>, AssignError>>,
    },
    /// The stored offset of one partition (retried while the database is away).
    Stored {
        topic: String,
        partition: i32,
        reply: oneshot::Sender<Option<NextOffset>>,
    },
    /// Moves a partition's stored offset from `from` to `to` under the
    /// fencing rule (past an out-of-range gap): `Ok(false)` when another
    /// owner moved it first.
    Advance {
        topic: String,
        partition: i32,
        from: Option<NextOffset>,
        to: NextOffset,
        reply: oneshot::Sender<Result<bool, Box<dyn std::error::Error + Send + Sync>>>,
    },
}
