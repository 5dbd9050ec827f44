//! A pipeline: one mapping (topics → table) with its own bounded buffer and
//! its own writer, so a slow table pauses only the partitions that feed it.
//!
//! The consumer loop pushes into [`PipelineState`] and decides pause/resume
//! from its utilization; the writer takes batches out of it. Both hold the
//! lock only for bookkeeping, never across I/O.

pub mod buffer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::kafka::offsets::NextOffset;
use crate::kafka::Tp;
use crate::sink::encode::RowEncoder;
use crate::sink::schema::TableRef;
use buffer::{Buffer, Limits};

/// What the writer needs to know about a partition this instance owns.
#[derive(Debug, Clone)]
pub struct PartState {
    /// Bumped on every assignment. A batch remembers the epoch its records
    /// were read under; once the partition is revoked or re-assigned, the
    /// batch's view of the stored offset is stale and must not be applied.
    pub epoch: u64,
    /// `next_offset` in `sluice.offsets` as this instance last saw or wrote
    /// it; `None` when there is no row yet. The fencing condition.
    pub stored: Option<NextOffset>,
    /// The next offset the buffer expects from Kafka (`None`: take whatever
    /// comes first). Records below it are redeliveries and are ignored.
    pub expected: Option<NextOffset>,
    /// Set after a fence: everything polled for this partition is ignored
    /// until the consumer loop has seeked it back to `stored`.
    pub awaiting_seek: bool,
}

static EPOCHS: AtomicU64 = AtomicU64::new(1);

/// A fresh epoch for an assignment or a re-read after a fence.
pub fn next_epoch() -> u64 {
    EPOCHS.fetch_add(1, Ordering::Relaxed)
}

/// Batch and buffer settings of a pipeline.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub flush_interval: Duration,
    pub limits: Limits,
    pub high_watermark: f64,
    pub low_watermark: f64,
}

/// Everything the consumer loop and the writer share, behind one lock.
#[derive(Debug)]
pub struct PipelineState {
    pub buffer: Buffer,
    pub partitions: HashMap<Tp, PartState>,
    /// Whether this pipeline's partitions are paused for backpressure.
    pub paused: bool,
}

/// Counters, readable without the lock.
#[derive(Debug, Default)]
pub struct Counters {
    pub consumed: AtomicU64,
    pub written: AtomicU64,
    pub skipped: AtomicU64,
    pub flushes: AtomicU64,
    pub fenced: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub table: TableRef,
    pub encoder: RowEncoder,
    pub settings: Settings,
    pub counters: Counters,
    state: Mutex<PipelineState>,
    /// Wakes the writer when a batch is ready or something changed.
    pub wake_writer: Notify,
}

/// Whether the consumer loop should change a pipeline's pause state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseDecision {
    Pause,
    Resume,
    Keep,
}

/// Hysteresis: pause at the high watermark, resume only at or below the low one.
pub fn pause_decision(paused: bool, utilization: f64, high: f64, low: f64) -> PauseDecision {
    if !paused && utilization >= high {
        PauseDecision::Pause
    } else if paused && utilization <= low {
        PauseDecision::Resume
    } else {
        PauseDecision::Keep
    }
}

impl Pipeline {
    pub fn new(name: String, table: TableRef, encoder: RowEncoder, settings: Settings) -> Self {
        let state = PipelineState {
            buffer: Buffer::new(settings.limits),
            partitions: HashMap::new(),
            paused: false,
        };
        Self {
            name,
            table,
            encoder,
            settings,
            counters: Counters::default(),
            state: Mutex::new(state),
            wake_writer: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, PipelineState> {
        // A panic while holding the lock is a bug; the data is still
        // consistent enough to shut down, so don't cascade the poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis() {
        assert_eq!(pause_decision(false, 0.79, 0.8, 0.5), PauseDecision::Keep);
        assert_eq!(pause_decision(false, 0.8, 0.8, 0.5), PauseDecision::Pause);
        assert_eq!(pause_decision(true, 0.6, 0.8, 0.5), PauseDecision::Keep);
        assert_eq!(pause_decision(true, 0.5, 0.8, 0.5), PauseDecision::Resume);
        assert_eq!(pause_decision(false, 0.1, 0.8, 0.5), PauseDecision::Keep);
    }
}
