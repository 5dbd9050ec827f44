//! Consumer lag per assigned partition: high watermark − stored position,
//! as last measured by the poller ([`crate::kafka::lag`]).

use std::sync::Mutex;

use crate::model::offsets::NextOffset;
use crate::model::Tp;

/// One partition's lag as last measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The pipeline's index.
    pub pipeline: usize,
    pub tp: Tp,
    pub lag: i64,
    pub high: i64,
    pub position: i64,
}

/// The latest round of measurements; each round replaces the last, so
/// revoked partitions drop out.
#[derive(Debug, Default)]
pub struct LagTable {
    inner: Mutex<Vec<PartitionLag>>,
}

impl LagTable {
    pub fn snapshot(&self) -> Vec<PartitionLag> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, lags: Vec<PartitionLag>) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = lags;
    }
}

/// Where a partition's next record to write is: the stored offset, or,
/// with none stored yet, where `auto.offset.reset` starts it.
pub fn position(stored: Option<NextOffset>, low: i64, high: i64, reset_earliest: bool) -> i64 {
    match stored {
        Some(NextOffset(o)) => o,
        None if reset_earliest => low,
        None => high,
    }
}

/// Records in the partition not yet in Postgres. Never negative: a
/// watermark read a moment before a commit can trail the stored offset.
pub fn lag(high: i64, position: i64) -> i64 {
    (high - position).max(0)
}
