//! A pipeline: one mapping (topics → table) with its own bounded buffer and
//! its own writer, so a slow table pauses only the partitions that feed it.
//!
//! The consumer loop pushes into [`PipelineState`] and decides pause/resume
//! from its utilization; the writer takes batches out of it. Both hold the
//! lock only for bookkeeping, never across I/O.

pub mod backpressure;
pub mod breaker;
pub mod buffer;
pub mod core;
pub mod flush_policy;
pub mod ports;
#[cfg(test)]
mod sim;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Strategy;
use crate::format::Decoder;
use crate::mapping::TableRef;
use crate::model::{TopicId, TpMap};
use crate::row::statements::WriteSql;
use crate::row::RowEncoder;
use backpressure::BpState;
use breaker::BreakerGauge;
use buffer::{Buffer, Entry, Limits};
pub use core::{Gap, Offer, PartState, Span, Spans};

/// Batch and buffer settings of a pipeline.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub flush_interval: Duration,
    pub limits: Limits,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub strategy: Strategy,
    pub sample_rate: u32,
    /// Adaptive flushing bounds (`flush_interval` is where the interval starts).
    pub flush: crate::pipeline::flush_policy::FlushSettings,
    /// A record value above this many bytes is dead-lettered without decoding.
    pub max_record_bytes: usize,
    /// What a record that cannot be written does to the pipeline.
    pub tolerance: crate::config::Tolerance,
    /// Kafka topic dead letters are also produced to (at-least-once), if any.
    pub dlq_topic: Option<String>,
    /// Writer lanes: transactions in flight at once, each over its own
    /// share of the partitions (at least 1).
    pub writers: usize,
}

/// What became of a record offered to the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Buffered; `evicted` older rows were dropped to make room (`drop_oldest`).
    Buffered { evicted: u64 },
    /// Not buffered, deliberately: `rows` rows dropped in all (the incoming
    /// one, and possibly a buffered one that became its marker). Offsets stay covered.
    Dropped { rows: u64 },
    /// Not buffered, not covered: the buffer is full and the strategy is
    /// `block`. The consumer must re-read the partition from this record.
    Refused,
}

/// Everything the consumer loop and the writer share, behind one lock.
#[derive(Debug)]
pub struct PipelineState {
    pub buffer: Buffer,
    pub partitions: TpMap<PartState>,
    /// Whether this pipeline's partitions are paused for backpressure.
    pub paused: bool,
    /// The backpressure state; changed only through [`PipelineState::refresh`].
    pub bp: BpState,
    /// Shutdown began: no intake.
    pub draining: bool,
    /// Records seen while sampling, to keep 1 in `sample_rate`.
    sample_seq: u64,
    /// The last epoch handed out (see [`PartState::epoch`]).
    epochs: u64,
    /// Set by [`PipelineState::hold`]: the partitions stay paused until
    /// then (a record's schema could not be had).
    pub held_until: Option<std::time::Instant>,
}

impl PipelineState {
    /// An empty state with one writer lane: no partitions, nothing
    /// buffered, flowing.
    pub fn new(limits: Limits) -> PipelineState {
        Self::with_lanes(limits, 1)
    }

    /// An empty state whose buffer has `lanes` writer lanes.
    pub fn with_lanes(limits: Limits, lanes: usize) -> PipelineState {
        PipelineState {
            buffer: Buffer::with_lanes(limits, lanes),
            partitions: TpMap::default(),
            paused: false,
            bp: BpState::Normal,
            draining: false,
            sample_seq: 0,
            epochs: 0,
            held_until: None,
        }
    }

    /// Offers a record to the buffer under the pipeline's strategy. The
    /// buffer never exceeds its limits: `block` refuses what would not fit,
    /// the others drop (counted by the caller) and keep the offsets covered.
    pub fn admit(&mut self, entry: Entry, s: &Settings, now: std::time::Instant) -> Admission {
        let cost = entry.cost();
        let has_row = entry.row.is_some();
        let (tp, epoch, from, offset) = (entry.tp, entry.epoch, entry.from, entry.offset);
        if s.strategy == Strategy::Sample && entry.row.is_some() && self.bp > BpState::Normal {
            self.sample_seq += 1;
            if self.sample_seq % u64::from(s.sample_rate) != 0 {
                let rows = 1 + self.buffer.drop_newest(tp, epoch, from, offset, now);
                return Admission::Dropped { rows };
            }
        }
        let mut evicted = 0;
        if s.strategy == Strategy::DropOldest {
            while self.buffer.would_overflow(cost, has_row) {
                match self.buffer.evict_oldest() {
                    Some(was_row) => evicted += u64::from(was_row),
                    // Only in-flight records are left: nothing older to evict.
                    None => break,
                }
            }
        }
        if !self.buffer.would_overflow(cost, has_row) {
            self.buffer.push(entry, now);
            return Admission::Buffered { evicted };
        }
        match s.strategy {
            Strategy::Block => Admission::Refused,
            _ => {
                let incoming = u64::from(entry.is_record());
                let rows = evicted + incoming + self.buffer.drop_newest(tp, epoch, from, offset, now);
                Admission::Dropped { rows }
            }
        }
    }

    /// Moves the backpressure state to where utilization says; returns the
    /// transition, if any, for the caller to log.
    pub fn refresh(&mut self, s: &Settings) -> Option<(BpState, BpState)> {
        let next = self.bp.next(
            self.buffer.utilization(),
            s.high_watermark,
            s.low_watermark,
            self.draining,
        );
        if next == self.bp {
            return None;
        }
        let from = std::mem::replace(&mut self.bp, next);
        Some((from, next))
    }
}

/// Counters, readable without the lock.
#[derive(Debug, Default)]
pub struct Counters {
    pub consumed: AtomicU64,
    pub written: AtomicU64,
    /// Records shed by the pipeline's strategy (reason = the strategy).
    pub dropped: AtomicU64,
    /// Database write attempts (transactions started), successful or not:
    /// while the breaker is open this stays still.
    pub attempts: AtomicU64,
    pub flushes: AtomicU64,
    pub fenced: AtomicU64,
    /// Batches refused for a partition whose share did not start at its
    /// stored position (`sluice_offset_gaps_total`): each would have
    /// committed a hole; the partition was re-read instead. Always 0 unless
    /// sluice has a bug.
    pub gaps: AtomicU64,
    /// Records written to the dead-letter store, counted when their
    /// transaction commits (`sluice_records_dead_lettered_total`).
    pub dead_lettered: AtomicU64,
    /// Flushes that failed producing to `errors.dlq_topic`
    /// (`sluice_dlq_produce_failures_total`).
    pub dlq_produce_failures: AtomicU64,
    /// Partitions found positioned outside their log on the broker
    /// (`sluice_offset_out_of_range_total`).
    pub out_of_range: AtomicU64,
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
    /// The configured table: the one table, or the `{topic}` template of a
    /// pipeline with a table per topic (labels, logs, `/status`).
    pub table: TableRef,
    /// The one target of a pipeline writing one table.
    single: Option<Arc<Target>>,
    /// A table per topic: the targets planned so far, by topic.
    per_topic: RwLock<HashMap<TopicId, Arc<Target>>>,
    pub settings: Settings,
    pub counters: Counters,
    state: Mutex<PipelineState>,
    /// Per writer lane, wakes its writer when a batch is ready or
    /// something changed.
    wake_writers: Vec<Notify>,
    /// The database circuit breaker's phase, set by the writer's breaker
    /// on every transition; `/readyz`, `/status` and `sluice_breaker_state`
    /// read it.
    pub breaker: Arc<BreakerGauge>,
    /// The flush interval in force, in microseconds: the configured one
    /// until adaptive flushing stores the interval it chose
    /// (`sluice_flush_interval_seconds`).
    pub flush_interval_us: AtomicU64,
    /// Set when the pipeline has stopped for good (e.g. a data error under
    /// `errors.tolerance = none`); `/readyz` is unready while set.
    pub stopped: AtomicBool,
    /// How the pipeline's records are decoded before the encoder reads
    /// them (formats, envelope, schemas).
    pub decoder: Decoder,
    /// The columns come from the value schema (`columns` omitted): a record
    /// whose schema has a field without a column is not written without it
    /// (the consumer asks for a re-plan).
    pub columns_from_schema: bool,
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

/// Where a pipeline's rows of a topic go: the table, the encoder planned
/// against its live columns, and the statements that write it.
#[derive(Debug)]
pub struct Target {
    pub table: TableRef,
    pub encoder: RowEncoder,
    pub write_sql: WriteSql,
}

impl Target {
    /// `stage`: a number distinct among the targets one flush may write
    /// (it names the upsert staging table).
    pub fn new(table: TableRef, encoder: RowEncoder, stage: usize) -> Target {
        let write_sql = WriteSql::with_stage(&table, &encoder, stage);
        Target {
            table,
            encoder,
            write_sql,
        }
    }
}

impl Pipeline {
    /// A pipeline writing every record into one table.
    pub fn new(name: String, table: TableRef, encoder: RowEncoder, settings: Settings) -> Self {
        let single = Arc::new(Target::new(table.clone(), encoder, 0));
        Self::build(name, table, Some(single), settings)
    }

    /// A pipeline with a table per topic (`template` holds `{topic}`);
    /// targets are added with [`Pipeline::add_target`] as topics appear.
    pub fn per_topic(name: String, template: TableRef, settings: Settings) -> Self {
        Self::build(name, template, None, settings)
    }

    /// The target of `topic`'s records; `None` for a topic of a per-topic
    /// pipeline that is not planned yet.
    pub fn target(&self, topic: TopicId) -> Option<Arc<Target>> {
        match &self.single {
            Some(t) => Some(t.clone()),
            None => self
                .per_topic
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&topic)
                .cloned(),
        }
    }

    /// Runs `f` on the target of `topic`'s records, if it has one, without
    /// cloning the `Arc`: the consumer asks for every record, and a clone
    /// would bounce the count's cache line against the writers'.
    pub fn with_target<R>(&self, topic: TopicId, f: impl FnOnce(&Arc<Target>) -> R) -> Option<R> {
        match &self.single {
            Some(t) => Some(f(t)),
            None => self
                .per_topic
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&topic)
                .map(f),
        }
    }

    /// Whether the pipeline has a table per topic.
    pub fn is_per_topic(&self) -> bool {
        self.single.is_none()
    }

    /// Adds the target of `topic` (a per-topic pipeline); keeps an existing one.
    pub fn add_target(&self, topic: TopicId, table: TableRef, encoder: RowEncoder) -> Arc<Target> {
        let mut targets = self.per_topic.write().unwrap_or_else(|e| e.into_inner());
        let stage = targets.len();
        targets
            .entry(topic)
            .or_insert_with(|| Arc::new(Target::new(table, encoder, stage)))
            .clone()
    }

    fn build(name: String, table: TableRef, single: Option<Arc<Target>>, settings: Settings) -> Self {
        let state = PipelineState::with_lanes(settings.limits, settings.writers);
        let wake_writers = (0..state.buffer.lanes()).map(|_| Notify::new()).collect();
        // Where the lanes' policies start.
        let start = settings.flush.starting_interval(settings.flush_interval);
        let flush_interval_us = AtomicU64::new(start.as_micros().min(u64::MAX as u128) as u64);
        Self {
            name,
            table,
            single,
            per_topic: RwLock::new(HashMap::new()),
            settings,
            counters: Counters::default(),
            state: Mutex::new(state),
            wake_writers,
            breaker: Arc::default(),
            flush_interval_us,
            stopped: AtomicBool::new(false),
            decoder: Decoder::default(),
            columns_from_schema: false,
        }
    }

    /// Sets how records are decoded (default: schemaless JSON).
    pub fn with_decoder(mut self, decoder: Decoder) -> Self {
        self.decoder = decoder;
        self
    }

    /// Marks the pipeline as taking its columns from the value schema.
    pub fn with_columns_from_schema(mut self, yes: bool) -> Self {
        self.columns_from_schema = yes;
        self
    }

    /// The flush interval in force (see [`Pipeline::flush_interval_us`]).
    pub fn flush_interval(&self) -> Duration {
        Duration::from_micros(self.flush_interval_us.load(Ordering::Relaxed))
    }

    /// Runs [`PipelineState::refresh`] and logs a transition.
    pub fn refresh_state(&self, state: &mut PipelineState) {
        if let Some((from, to)) = state.refresh(&self.settings) {
            backpressure::log_transition(&self.name, from, to, state.buffer.utilization());
        }
    }

    /// How many writer lanes the pipeline has (see [`buffer::Buffer::lane_of`]).
    pub fn lanes(&self) -> usize {
        self.wake_writers.len()
    }

    /// Wakes the writer of `lane`.
    pub fn wake_writer(&self, lane: usize) {
        self.wake_writers[lane].notify_one();
    }

    /// Resolves when the writer of `lane` is woken.
    pub async fn woken(&self, lane: usize) {
        self.wake_writers[lane].notified().await
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

/// Pipeline settings for tests: small batches, watermarks 0.8 / 0.5.
#[cfg(test)]
pub(crate) fn test_settings(strategy: Strategy, max_records: usize, max_bytes: usize) -> Settings {
    Settings {
        batch_size: 10,
        batch_bytes: 1 << 20,
        flush_interval: Duration::from_millis(100),
        limits: Limits { max_records, max_bytes },
        high_watermark: 0.8,
        low_watermark: 0.5,
        strategy,
        sample_rate: 3,
        flush: crate::pipeline::flush_policy::FlushSettings {
            target_latency: Duration::from_secs(1),
            min_interval: Duration::from_millis(20),
            max_interval: Duration::from_secs(5),
            max_batch_rows: 10,
            min_batch_rows: 1,
        },
        max_record_bytes: 1 << 20,
        tolerance: crate::config::Tolerance::All,
        dlq_topic: None,
        writers: 1,
    }
}

/// Property tests of buffer + state machine + strategies together, driven
/// the way the consumer loop and the writer drive them.
#[cfg(test)]
mod model_tests {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Instant;

    use proptest::prelude::{prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig};
    use proptest::strategy::Strategy as Gen;

    use super::*;
    use crate::model::{TopicId, Tp};

    #[derive(Debug, Clone)]
    enum Op {
        /// A record arrives for partition `p` with a row of `len` bytes.
        Offer { p: i32, len: usize },
        /// Writer lane `lane` (modulo the lanes) takes a batch of up to `n` entries.
        Take { n: usize, lane: usize },
        /// The lane's in-flight batch commits.
        Commit { lane: usize },
    }

    fn ops() -> impl Gen<Value = Vec<Op>> {
        let op = prop_oneof![
            6 => (0i32..3, 1usize..300).prop_map(|(p, len)| Op::Offer { p, len }),
            1 => (1usize..40, 0usize..3).prop_map(|(n, lane)| Op::Take { n, lane }),
            1 => (0usize..3).prop_map(|lane| Op::Commit { lane }),
        ];
        proptest::collection::vec(op, 1..400)
    }

    fn strategies() -> impl Gen<Value = crate::config::Strategy> {
        use crate::config::Strategy as S;
        prop_oneof![
            Just(S::Block),
            Just(S::DropOldest),
            Just(S::DropNewest),
            Just(S::Sample)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn buffer_state_machine_and_strategies_keep_their_invariants(
            strategy in strategies(),
            max_records in 5usize..60,
            max_bytes in 2_000usize..20_000,
            lanes in 1usize..4,
            ops in ops(),
        ) {
            let s = test_settings(strategy, max_records, max_bytes);
            let mut state = PipelineState::with_lanes(s.limits, lanes);
            let tp = |p: i32| Tp { topic: TopicId(0), partition: p };
            let now = Instant::now();
            // Model: next offset each partition delivers (a refused record is
            // delivered again: that is the seek), what was admitted, what
            // was written, where the stored offset is.
            let mut next = [0i64; 3];
            let mut admitted: HashSet<(i32, i64)> = HashSet::new();
            let mut written: HashSet<(i32, i64)> = HashSet::new();
            let mut stored = [0i64; 3];
            let mut inflight: Vec<Option<batch_model::InFlight>> = (0..lanes).map(|_| None).collect();
            let (mut consumed, mut n_written, mut dropped) = (0u64, 0u64, 0u64);

            for op in ops {
                match op {
                    Op::Offer { p, len } => {
                        if state.paused {
                            // A paused partition delivers nothing new.
                            continue;
                        }
                        let offset = next[p as usize];
                        let entry = Entry { tp: tp(p), epoch: 1, from: offset, offset, row: Some(vec![b'x'; len].into_boxed_slice()), timestamp_ms: None, trace: None, dead_letter: None, raw: None };
                        match state.admit(entry, &s, now) {
                            Admission::Refused => {
                                prop_assert_eq!(strategy, crate::config::Strategy::Block, "only block refuses");
                            }
                            Admission::Buffered { evicted } => {
                                prop_assert!(strategy == crate::config::Strategy::DropOldest || evicted == 0);
                                admitted.insert((p, offset));
                                consumed += 1;
                                dropped += evicted;
                                next[p as usize] += 1;
                            }
                            Admission::Dropped { rows } => {
                                prop_assert!(strategy != crate::config::Strategy::Block, "block never drops");
                                admitted.insert((p, offset));
                                consumed += 1;
                                dropped += rows;
                                next[p as usize] += 1;
                            }
                        }
                    }
                    Op::Take { n, lane } => {
                        let lane = lane % lanes;
                        if inflight[lane].is_none() {
                            let batch = state.buffer.take_batch(lane, n, usize::MAX, now);
                            prop_assert!(batch.entries.iter().all(|e| state.buffer.lane_of(e.tp) == lane));
                            prop_assert!(batch.covered.iter().all(|a| state.buffer.lane_of(a.tp) == lane));
                            if !batch.entries.is_empty() || !batch.covered.is_empty() {
                                inflight[lane] = Some(batch_model::InFlight::new(batch));
                            }
                        }
                    }
                    Op::Commit { lane } => {
                        if let Some(b) = inflight[lane % lanes].take() {
                            let spans = b.spans();
                            for (p, (first, last)) in &spans {
                                let p = *p;
                                // Offsets advance monotonically, contiguously from the stored one.
                                prop_assert!(*first >= stored[p as usize], "batch starts at or after the stored offset");
                                prop_assert!(last + 1 > stored[p as usize]);
                                for o in stored[p as usize]..=*last {
                                    // Only past records that were admitted (written, or dropped on purpose)...
                                    prop_assert!(admitted.contains(&(p, o)), "offset {} of partition {} covered but never admitted", o, p);
                                    // ...and none that is still waiting in the buffer.
                                    prop_assert!(!state.buffer.queued().any(|e| e.tp == tp(p) && e.offset == o && e.row.is_some()),
                                        "offset {} of partition {} covered while still buffered", o, p);
                                }
                                stored[p as usize] = last + 1;
                            }
                            for e in &b.batch.entries {
                                if e.row.is_some() {
                                    prop_assert!(written.insert((e.tp.partition, e.offset)), "written twice");
                                    n_written += 1;
                                }
                            }
                            state.buffer.release(&b.batch.entries);
                        }
                    }
                }
                // Never over capacity.
                prop_assert!(state.buffer.records() <= s.limits.max_records);
                prop_assert!(state.buffer.bytes() <= s.limits.max_bytes);
                // consumed = written + dropped + buffered, at every step.
                let buffered = state.buffer.queued().filter(|e| e.row.is_some()).count() as u64
                    + inflight.iter().flatten().map(|b| b.rows()).sum::<u64>();
                prop_assert_eq!(consumed, n_written + dropped + buffered);
                // The state machine and the pause decision, as the loop runs them.
                state.refresh(&s);
                let u = state.buffer.utilization();
                prop_assert!(state.bp >= BpState::classify(u, s.high_watermark, s.low_watermark));
                if strategy == crate::config::Strategy::Block {
                    match pause_decision(state.paused, u, s.high_watermark, s.low_watermark) {
                        PauseDecision::Pause => { prop_assert!(u >= s.high_watermark); state.paused = true; }
                        PauseDecision::Resume => { prop_assert!(u <= s.low_watermark); state.paused = false; }
                        PauseDecision::Keep => {}
                    }
                }
            }
            if strategy == crate::config::Strategy::Block {
                prop_assert_eq!(dropped, 0, "block is lossless");
            }
            // Drain (as at shutdown): afterwards every admitted offset is
            // covered, so a restart re-reads nothing that was handled.
            for b in inflight.iter_mut().filter_map(Option::take) {
                for (p, (_, last)) in b.spans() {
                    stored[p as usize] = last + 1;
                }
                n_written += b.rows();
                state.buffer.release(&b.batch.entries);
            }
            for lane in 0..lanes {
                let b = batch_model::InFlight::new(state.buffer.take_batch(lane, usize::MAX, usize::MAX, now));
                if b.batch.entries.is_empty() && b.batch.covered.is_empty() {
                    continue;
                }
                for (p, (first, last)) in b.spans() {
                    prop_assert!(first >= stored[p as usize]);
                    stored[p as usize] = last + 1;
                }
                n_written += b.rows();
                state.buffer.release(&b.batch.entries);
            }
            prop_assert_eq!(stored, next, "every admitted offset is covered after a drain");
            prop_assert_eq!(consumed, n_written + dropped);
        }
    }

    mod batch_model {
        use super::*;
        use crate::pipeline::buffer::Batch;

        pub struct InFlight {
            pub batch: Batch,
        }

        impl InFlight {
            pub fn new(batch: Batch) -> Self {
                Self { batch }
            }

            pub fn rows(&self) -> u64 {
                self.batch.entries.iter().filter(|e| e.row.is_some()).count() as u64
            }

            /// Per partition, (first, last) offset covered: what the writer computes.
            pub fn spans(&self) -> BTreeMap<i32, (i64, i64)> {
                let mut spans: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
                let entries = self.batch.entries.iter().map(|e| (e.tp.partition, e.offset));
                let covered = self
                    .batch
                    .covered
                    .iter()
                    .flat_map(|a| [(a.tp.partition, a.from), (a.tp.partition, a.last)]);
                for (p, o) in entries.chain(covered) {
                    let span = spans.entry(p).or_insert((o, o));
                    span.0 = span.0.min(o);
                    span.1 = span.1.max(o);
                }
                spans
            }
        }
    }
}
