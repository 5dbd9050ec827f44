//! The batch writers of one pipeline: each takes batches out of its lane of
//! the buffer and writes each one — rows and the offsets they cover — in one
//! Postgres transaction.
//!
//! A pipeline has `writers` lanes, each with its own writer task and
//! connection; a partition belongs to one lane, and a lane has one flush in
//! flight at a time, so a partition's batches commit in offset order while
//! the lanes' transactions run side by side. A failed flush is retried as the same batch, so a
//! retry never reorders a partition; the fencing condition makes a retry
//! after an ambiguous COMMIT (connection lost mid-commit) safe.
//!
//! Every attempt passes the circuit breaker first ([`Control`]): while it is
//! open nothing is attempted, the buffer fills and the consumer pauses the
//! pipeline's partitions. When and how much to flush is the adaptive
//! [`FlushPolicy`]'s call.
//!
//! Records that can never be written never stall the pipeline: undecodable
//! ones arrive as dead letters, and rows the database refuses for a data
//! reason (SQLSTATE class 22 or 23) are isolated inside the flush
//! transaction ([`crate::postgres::bisect`]). Both kinds go to
//! `sluice.dead_letters` in that same transaction, with the rows that land
//! and the offsets they all cover. Under `errors.tolerance = "none"` the
//! first such record stops the pipeline instead, before anything past it
//! commits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Executor as _, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::Tolerance;
use crate::model::dead_letter::{DeadLetter, DeadLetterClass, Stored};
use crate::model::record::{Coordinates, Raw};
use crate::model::ErrorClass;
use crate::model::{TopicId, Topics, Tp};
use crate::pipeline::breaker::{Breaker, BreakerSettings, BreakerState, Permit};
use crate::pipeline::buffer::{Batch, Entry};
use crate::pipeline::flush_policy::FlushPolicy;
use crate::pipeline::ports::{ConsumerCommand, DeadLetterTopic, DeadLetterTopicError, ReadBack, WriterCommand};
use crate::pipeline::{Counters, Pipeline, Span, Target};
use crate::postgres::bisect::{self, Isolator, Refusal};
use crate::postgres::dead_letters;
use crate::postgres::error::classify;
use crate::postgres::offset_store;
use crate::postgres::upsert;
use crate::row::statements::WriteSql;
use crate::telemetry::{FlushEvent, FlushOutcome, Flushes};

mod refusals;

/// What one transaction did.
#[derive(Debug)]
enum Outcome {
    Committed(Written),
    /// Another owner moved these partitions' stored offsets: rolled back.
    Fenced(Vec<Tp>),
    /// `errors.tolerance = "none"` and this entry of the batch can never be
    /// written: nothing was committed.
    Stopped {
        entry: usize,
        error: String,
    },
    /// Producing the dead letters to `errors.dlq_topic` failed: rolled back.
    /// Not a database failure: retried without the breaker.
    DlqFailed(DeadLetterTopicError),
}

/// What a committed flush wrote.
#[derive(Debug, Default)]
struct Written {
    rows: usize,
    /// Rows the database refused (dead-lettered).
    refused: usize,
    /// Why the first of them was refused.
    first_refusal: Option<String>,
    /// Dead letters inserted (fewer than offered when some were already stored).
    dead_lettered: u64,
    /// COPY statements it took (1 without refusals).
    copies: usize,
    /// Time spent reading refused records back from Kafka.
    refetch: Duration,
    /// Time spent writing the rows (the COPYs, with any isolation).
    copy: Duration,
    /// Time spent inserting the dead letters.
    letters: Duration,
}

/// How long a flush waits to read refused records back from Kafka.
const REFETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Writer {
    pub index: usize,
    /// The lane of the pipeline's buffer this writer takes batches from.
    pub lane: usize,
    pub pipeline: Arc<Pipeline>,
    pub pool: PgPool,
    pub group_id: Arc<str>,
    pub topics: Arc<Topics>,
    pub commands: mpsc::UnboundedReceiver<WriterCommand>,
    pub consumer: std_mpsc::Sender<ConsumerCommand>,
    pub control: Control,
    /// Reads refused records back from Kafka for their dead letters.
    pub refetch: Arc<std::sync::Mutex<dyn ReadBack>>,
    /// Produces dead letters to `errors.dlq_topic`, when set.
    pub dlq: Option<Arc<dyn DeadLetterTopic>>,
    /// Where each flush attempt is recorded (metrics, span, `/status`).
    pub flushes: Flushes,
}

/// A writer lane's decision state: the pipeline's circuit breaker (one for
/// all its lanes: they write to the same database), the lane's own adaptive
/// flush policy, and the client-side write timeout.
#[derive(Debug)]
pub struct Control {
    pub breaker: Arc<std::sync::Mutex<Breaker>>,
    pub policy: FlushPolicy,
    pub write_timeout: Duration,
    /// When the lane's last flush ended: offsets covered with nothing
    /// queued (records shed or evicted), and records handed over before
    /// their interval has passed (`FlushPolicy::due`), are flushed at most
    /// once per flush interval after it.
    pub last_flush: Option<Instant>,
}

impl Control {
    /// The controls of a pipeline's `pipeline.lanes()` writer lanes.
    pub fn lanes(pipeline: &Pipeline, breaker: BreakerSettings, write_timeout: Duration) -> Vec<Self> {
        // Different seeds per pipeline and process: their jitter differs.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = clock ^ u64::from(std::process::id()).rotate_left(32) ^ (pipeline.name.len() as u64);
        // A trial's writer reports within `write_timeout` (plus the time to
        // read refused records back); one that does not has died.
        let breaker = Arc::new(std::sync::Mutex::new(
            Breaker::new(breaker, seed ^ 0x9E37_79B9_7F4A_7C15, pipeline.breaker.clone())
                .with_trial_timeout(write_timeout * 2 + REFETCH_TIMEOUT),
        ));
        (0..pipeline.lanes())
            .map(|_| Self {
                breaker: breaker.clone(),
                policy: FlushPolicy::new(pipeline.settings.flush, pipeline.settings.flush_interval),
                write_timeout,
                last_flush: None,
            })
            .collect()
    }

    /// The pipeline's breaker, locked for one decision (never across I/O).
    pub fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What storing a chunk of dead letters came to.
enum Letters {
    /// In the store (this many new) and, if set, on the dead-letter topic.
    Stored(u64),
    /// The dead-letter topic refused them: roll back and retry the flush.
    DlqFailed(DeadLetterTopicError),
}

/// A write that did not finish within `write_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("flush did not complete within {0:?}")]
struct WriteTimedOut(Duration);

/// A batch's rows for one table: (entry index, encoded row).
type Rows<'a> = Vec<(usize, &'a [u8])>;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Writer {
    pub async fn run(mut self) {
        let mut pending_acks: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            // Between batches too, not only when idle: a revoke waits on
            // its flush, and a lane under steady load is never idle.
            while let Ok(cmd) = self.commands.try_recv() {
                match cmd {
                    WriterCommand::FlushAll { ack } => pending_acks.push(ack),
                    WriterCommand::FlushPartitions { partitions, ack } => {
                        self.flush_partitions(&partitions, ack).await;
                    }
                }
            }
            let (ready, wait) = self.readiness(Instant::now(), !pending_acks.is_empty());
            if ready {
                self.flush_once(&mut pending_acks).await;
                continue;
            }
            if !pending_acks.is_empty() {
                for ack in pending_acks.drain(..) {
                    let _ = ack.send(());
                }
            }
            let sleep = wait.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None => return,
                    Some(WriterCommand::FlushAll { ack }) => pending_acks.push(ack),
                    Some(WriterCommand::FlushPartitions { partitions, ack }) => {
                        self.flush_partitions(&partitions, ack).await;
                    }
                },
                _ = self.pipeline.woken(self.lane) => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Flushes everything queued now, regardless of batch size or interval.
    pub async fn flush_pending(&mut self) {
        let mut acks = Vec::new();
        while self.readiness(Instant::now(), true).0 {
            self.flush_once(&mut acks).await;
        }
    }

    /// Flushes what this lane holds of `partitions` (an incremental
    /// revoke), batch by batch, then answers; the lane's other partitions
    /// stay queued. An open breaker answers at once (nothing can be
    /// flushed; the next owner re-reads what was not).
    async fn flush_partitions(&mut self, partitions: &HashSet<Tp>, ack: oneshot::Sender<()>) {
        let mut acks = vec![ack];
        while !acks.is_empty()
            && !self.pipeline.stopped.load(std::sync::atomic::Ordering::Relaxed)
            && self.pipeline.lock().buffer.holds_any_of(self.lane, partitions)
        {
            self.flush_batch(&mut acks, Some(partitions)).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }

    /// Whether a batch should be flushed now, else how long until one should.
    fn readiness(&self, now: Instant, flush_all: bool) -> (bool, Option<Duration>) {
        if self.pipeline.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            // Stopped under `errors.tolerance = "none"`: nothing more commits.
            return (false, None);
        }
        let settings = &self.pipeline.settings;
        let state = self.pipeline.lock();
        let (buffer, lane) = (&state.buffer, self.lane);
        if buffer.queued_in(lane) == 0 {
            // Offsets evicted or dropped with nothing queued behind them still
            // need a (row-less) transaction to advance: one per flush
            // interval at most, however many records are shed.
            if !buffer.has_covered_ahead(lane) {
                return (false, None);
            }
            let due = self
                .control
                .last_flush
                .map_or(now, |t| t + self.control.policy.interval());
            return if flush_all || due <= now {
                (true, None)
            } else {
                (false, Some(due - now))
            };
        }
        let batch_rows = self.control.policy.batch_rows();
        if flush_all || buffer.queued_in(lane) >= batch_rows || buffer.queued_bytes_in(lane) >= settings.batch_bytes {
            return (true, None);
        }
        let oldest = buffer.oldest_since(lane).unwrap_or(now);
        let due = self
            .control
            .policy
            .due(oldest, buffer.handed_over(lane), self.control.last_flush);
        if due <= now {
            (true, None)
        } else {
            (false, Some(due - now))
        }
    }

    async fn flush_once(&mut self, pending_acks: &mut Vec<oneshot::Sender<()>>) {
        self.flush_batch(pending_acks, None).await;
    }

    /// Takes a batch and writes it (see [`Writer::write_batch`]), noting when
    /// the lane's flush ended: every path's, so the lane's next flush of
    /// handed-over records starts an interval after it (`FlushPolicy::due`).
    async fn flush_batch(&mut self, pending_acks: &mut Vec<oneshot::Sender<()>>, only: Option<&HashSet<Tp>>) {
        self.write_batch(pending_acks, only).await;
        self.control.last_flush = Some(Instant::now());
    }

    /// Takes a batch (of `only` these partitions, when given) and writes it.
    async fn write_batch(&mut self, pending_acks: &mut Vec<oneshot::Sender<()>>, only: Option<&HashSet<Tp>>) {
        let batch_rows = self.control.policy.batch_rows();
        let batch_bytes = self.pipeline.settings.batch_bytes;
        let mut batch =
            self.pipeline
                .lock()
                .buffer
                .take_batch_of(self.lane, only, batch_rows, batch_bytes, Instant::now());
        let mut failures = 0u32;
        // Consecutive attempts of this batch that ran out of time.
        let mut timeouts = 0u32;
        // The later part of a batch that was split: still in flight (taken
        // from the queue and accounted), written as the next batch once the
        // part before it has committed. It never goes back to the queue,
        // where it would land behind offsets covered since it was taken.
        let mut rest: Vec<Entry> = Vec::new();
        loop {
            let Some(spans) = self.current_spans(&mut batch).await else {
                if rest.is_empty() {
                    return;
                }
                batch = Batch {
                    entries: std::mem::take(&mut rest),
                    covered: Vec::new(),
                };
                continue;
            };
            // Whether this attempt is the HALF_OPEN trial: its outcome (and
            // only its) decides the breaker's next state.
            let (permit, trial) = {
                let mut breaker = self.control.breaker();
                let permit = breaker.permit(Instant::now(), &self.pipeline.name);
                (permit, breaker.trial())
            };
            match permit {
                Permit::Allowed => {}
                Permit::Wait(until) => {
                    self.publish_interval();
                    self.wait_while_open(until, pending_acks).await;
                    continue;
                }
                Permit::AwaitTrial(until) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
                    continue;
                }
            }
            self.publish_interval();
            let rows = batch.entries.iter().filter(|e| e.row.is_some()).count();
            let started = Instant::now();
            let deadline = started + self.control.write_timeout;
            Counters::add(&self.pipeline.counters.attempts, 1);
            let result =
                match tokio::time::timeout(self.control.write_timeout, self.write(&batch, &spans, deadline)).await {
                    Ok(result) => result,
                    Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        WriteTimedOut(self.control.write_timeout),
                    ))),
                };
            match result {
                Ok(Outcome::Committed(written)) => {
                    let took = started.elapsed();
                    self.control.breaker().on_success(&self.pipeline.name);
                    self.control.policy.observe(took);
                    self.publish_interval();
                    self.committed(&batch, &spans, &written, took);
                    if rest.is_empty() {
                        return;
                    }
                    // Go on with the rest of the split batch, at the size
                    // that just worked.
                    let more = rest.split_off(batch.entries.len().clamp(1, rest.len()));
                    batch = Batch {
                        entries: std::mem::replace(&mut rest, more),
                        covered: Vec::new(),
                    };
                    (failures, timeouts) = (0, 0);
                }
                Ok(Outcome::Stopped { entry, error }) => {
                    self.control.breaker().settled(trial);
                    self.stop(&batch, entry, &error);
                    return;
                }
                Ok(Outcome::DlqFailed(err)) => {
                    self.control.breaker().settled(trial);
                    failures += 1;
                    Counters::add(&self.pipeline.counters.dlq_produce_failures, 1);
                    let delay = backoff(failures);
                    warn!(pipeline = %self.pipeline.name, topic = %err.topic, rows, failures, retry_in = ?delay,
                        error = %err, "producing dead letters failed");
                    tokio::time::sleep(delay).await;
                }
                Ok(Outcome::Fenced(tps)) => {
                    self.control.breaker().on_success(&self.pipeline.name);
                    Counters::add(&self.pipeline.counters.fenced, tps.len() as u64);
                    for tp in tps {
                        info!(pipeline = %self.pipeline.name, topic = %self.topics.name(tp.topic), partition = tp.partition,
                            "fenced: the stored offset moved under this instance; re-reading from it");
                        self.reread(tp, spans[&tp].epoch).await;
                    }
                    // The other partitions' records are still good: retry them.
                }
                Err(err) => {
                    failures += 1;
                    let class = classify(&err);
                    self.record_flush(&batch, spans.len(), started.elapsed(), FlushOutcome::Failed(class));
                    if is_timeout(&err) {
                        timeouts += 1;
                    } else {
                        timeouts = 0;
                    }
                    match class {
                        ErrorClass::Transient => {
                            self.control
                                .breaker()
                                .on_transient_failure(Instant::now(), &self.pipeline.name, trial);
                            warn!(
                                pipeline = %self.pipeline.name, rows, failures, error = %err,
                                "flush failed, retrying"
                            )
                        }
                        // Data errors of rows are isolated inside the flush; one
                        // that still escapes (e.g. from the dead-letter insert)
                        // or a configuration error stalls here, loudly, and
                        // backpressure pauses the pipeline's partitions.
                        ErrorClass::Data | ErrorClass::Config => {
                            self.control.breaker().settled(trial);
                            error!(
                                pipeline = %self.pipeline.name, table = %self.pipeline.table, rows, failures,
                                error = %err, "flush refused by the database, operator action needed"
                            )
                        }
                    }
                    self.publish_interval();
                    if timeouts >= SPLIT_AFTER_TIMEOUTS && batch.entries.len() > 1 {
                        // The same batch keeps running out of time: a smaller
                        // one may not. Its later half waits, in order, until
                        // the first half has committed.
                        let keep = batch.entries.len() / 2;
                        let mut tail = batch.entries.split_off(keep);
                        warn!(pipeline = %self.pipeline.name, timeouts, records = keep, later = tail.len(),
                            "flush keeps timing out: splitting the batch");
                        tail.append(&mut rest);
                        rest = tail;
                        timeouts = 0;
                    }
                    let breaker = self.control.breaker().state();
                    if let Some(delay) = retry_wait(breaker, failures) {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }

    /// Waits out an open breaker. Requests to flush everything (a revoke, a
    /// shutdown) are answered at once: nothing can be flushed now, and the
    /// caller will forget or leave the records, which the next owner re-reads.
    async fn wait_while_open(&mut self, until: Instant, pending_acks: &mut Vec<oneshot::Sender<()>>) {
        for ack in pending_acks.drain(..) {
            let _ = ack.send(());
        }
        let deadline = tokio::time::Instant::from_std(until);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                cmd = self.commands.recv() => match cmd {
                    Some(WriterCommand::FlushAll { ack } | WriterCommand::FlushPartitions { ack, .. }) => {
                        let _ = ack.send(());
                    }
                    None => return,
                },
            }
        }
    }

    /// Makes the flush interval in force visible to telemetry.
    fn publish_interval(&self) {
        let interval = self.control.policy.interval().as_micros().min(u64::MAX as u128) as u64;
        self.pipeline
            .flush_interval_us
            .store(interval, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drops the entries whose partition was revoked or re-read since they
    /// were read, and returns, per remaining partition, the range the batch
    /// covers and the stored position it starts from. `None` when nothing is
    /// left to write. A partition whose share of the batch does not chain
    /// from its stored position is never written: that would commit a hole
    /// (or a repeat). It is logged, counted and re-read from the store, like
    /// a fence.
    async fn current_spans(&self, batch: &mut Batch) -> Option<BTreeMap<Tp, Span>> {
        loop {
            let spans = self.pipeline.lock().spans(batch);
            if spans.gaps.is_empty() {
                return (!spans.spans.is_empty()).then_some(spans.spans);
            }
            for gap in &spans.gaps {
                Counters::add(&self.pipeline.counters.gaps, 1);
                error!(pipeline = %self.pipeline.name, topic = %self.topics.name(gap.tp.topic),
                    partition = gap.tp.partition, expected = ?gap.expected, found = gap.found,
                    "batch does not start at the stored position: not written, re-reading the partition");
                self.reread(gap.tp, gap.epoch).await;
            }
        }
    }

    /// One flush transaction. Every wait inside it ends by `deadline` (the
    /// attempt's `write_timeout`), so that an attempt that times out leaves
    /// nothing running behind it.
    async fn write(
        &self,
        batch: &Batch,
        spans: &BTreeMap<Tp, Span>,
        deadline: Instant,
    ) -> Result<Outcome, sqlx::Error> {
        let tolerate = self.pipeline.settings.tolerance == Tolerance::All;
        if !tolerate {
            if let Some((entry, e)) = batch.entries.iter().enumerate().find(|(_, e)| e.dead_letter.is_some()) {
                let error = match e.dead_letter.as_deref() {
                    Some(DeadLetter {
                        sqlstate: Some(state),
                        error,
                        ..
                    }) => format!("SQLSTATE {state}: {error}"),
                    Some(d) => d.error.to_string(),
                    None => String::new(),
                };
                return Ok(Outcome::Stopped { entry, error });
            }
        }
        let mut tx = self.pool.begin().await?;
        // Offsets first: a fenced batch costs no COPY, and the row locks taken
        // here serialize two owners of a partition. Partitions are visited in
        // (topic, partition) order so two writers can't deadlock on them.
        let mut ordered: Vec<(&str, Tp, &Span)> = spans
            .iter()
            .map(|(tp, s)| (self.topics.name(tp.topic), *tp, s))
            .collect();
        ordered.sort_by(|a, b| (a.0, a.1.partition).cmp(&(b.0, b.1.partition)));
        let mut fenced = Vec::new();
        for (topic, tp, span) in ordered {
            let moved = offset_store::advance(
                &mut tx,
                &self.group_id,
                topic,
                tp.partition,
                span.from,
                span.covered.next(),
            )
            .await?;
            if !moved {
                fenced.push(tp);
            }
        }
        if !fenced.is_empty() {
            tx.rollback().await?;
            return Ok(Outcome::Fenced(fenced));
        }
        // Rows by target table (one, unless the pipeline has a table per
        // topic), each group in batch order; all in this one transaction.
        let mut groups: Vec<(Arc<Target>, Rows<'_>)> = Vec::new();
        // The group of the previous row's topic: rows of one topic come in
        // runs, and a target looked up once per run, not per row.
        let mut current: Option<(TopicId, usize)> = None;
        for (i, e) in batch.entries.iter().enumerate() {
            let Some(row) = e.row.as_deref() else {
                continue;
            };
            let group = match current {
                Some((topic, group)) if topic == e.tp.topic => group,
                _ => {
                    let target = self
                        .pipeline
                        .target(e.tp.topic)
                        .expect("a row is only encoded once its topic has a target");
                    let group = match groups.iter().position(|(t, _)| Arc::ptr_eq(t, &target)) {
                        Some(group) => group,
                        None => {
                            groups.push((target, Vec::with_capacity(batch.entries.len())));
                            groups.len() - 1
                        }
                    };
                    current = Some((e.tp.topic, group));
                    group
                }
            };
            groups[group].1.push((i, row));
        }
        let rows_total: usize = groups.iter().map(|(_, rows)| rows.len()).sum();
        // Insert mode: rows repeating an earlier row's unique key (see
        // `bisect::repeats`). The consumer already flagged every row whose
        // key repeats one of its last `batch_size` rows' by keeping its raw
        // record (`RecentKeys`): a batch without such a row is not scanned.
        // (A repeat further apart is still refused by Postgres, row by row.)
        // Raw records not kept are read back from Kafka while the COPY runs,
        // for the dead letters most repeats become.
        let mut repeats = Vec::with_capacity(groups.len());
        let mut prefetch_at: Vec<Coordinates> = Vec::new();
        for (target, rows) in &groups {
            let flagged = rows.iter().any(|(i, _)| batch.entries[*i].raw.is_some());
            let found = match target.write_sql {
                WriteSql::Insert { .. } if flagged => {
                    let lines: Vec<&[u8]> = rows.iter().map(|(_, r)| *r).collect();
                    bisect::repeats(target.encoder.unique_keys(), target.encoder.columns(), &lines)
                }
                _ => Vec::new(),
            };
            // Those whose raw record the consumer kept need no reading back.
            prefetch_at.extend(
                found
                    .iter()
                    .map(|r| &batch.entries[rows[r.row].0])
                    .filter(|e| e.raw.is_none())
                    .map(|e| self.coordinates(e)),
            );
            repeats.push(found);
        }
        // At most `batch_bytes` of them; the rest are read when needed.
        let budget = self.pipeline.settings.batch_bytes;
        let prefetch = (!prefetch_at.is_empty()).then(|| {
            let refetch = self.refetch.clone();
            tokio::task::spawn_blocking(move || {
                let mut refetch = refetch.lock().unwrap_or_else(|e| e.into_inner());
                refetch.fetch(&prefetch_at, refetch_timeout(deadline), budget).0
            })
        });
        let mut refused = Vec::new();
        let mut copies = 0;
        let copy_started = Instant::now();
        for ((target, rows), repeats) in groups.iter().zip(repeats) {
            let (r, c) = self.copy_isolating(&mut tx, target, rows, repeats).await?;
            refused.extend(r);
            copies += c;
        }
        refused.sort_by_key(|(i, _)| *i);
        let copy = copy_started.elapsed();
        let stop = match (tolerate, refused.first()) {
            (false, Some((entry, refusal))) => {
                Some((*entry, format!("SQLSTATE {}: {}", refusal.sqlstate, refusal.message)))
            }
            _ => None,
        };
        if let Some((entry, error)) = stop {
            tx.rollback().await?;
            return Ok(Outcome::Stopped { entry, error });
        }
        let refetch_started = Instant::now();
        let mut prefetched = match prefetch {
            Some(task) => task.await.unwrap_or_default(),
            None => HashMap::new(),
        };
        let mut refetch = refetch_started.elapsed();
        // Dead letters are stored (and produced to the DLQ topic) a chunk of
        // about `batch_bytes` at a time: the statement's copy, the producer's
        // copy and the raw records read back stay bounded by it.
        let (mut dead_lettered, mut letters_took) = (0, Duration::ZERO);
        let intake: Vec<Stored<'_>> = batch
            .entries
            .iter()
            .filter_map(|e| e.dead_letter.as_deref().map(|d| self.stored(e, d)))
            .collect();
        for chunk in chunks_by_bytes(&intake, budget) {
            let started = Instant::now();
            match self.store_letters(&mut tx, chunk, deadline).await? {
                Letters::Stored(n) => dead_lettered += n,
                Letters::DlqFailed(err) => {
                    tx.rollback().await?;
                    return Ok(Outcome::DlqFailed(err));
                }
            }
            letters_took += started.elapsed();
        }
        let (n_refused, first_refusal) = (refused.len(), refused.first().map(|(_, r)| r.message.clone()));
        let mut pending = refused;
        while !pending.is_empty() {
            let started = Instant::now();
            let letters = self
                .next_refused_letters(batch, &mut pending, &mut prefetched, deadline, budget)
                .await;
            refetch += started.elapsed();
            let stored: Vec<Stored<'_>> = letters
                .iter()
                .map(|(i, d)| self.stored(&batch.entries[*i], d))
                .collect();
            let started = Instant::now();
            match self.store_letters(&mut tx, &stored, deadline).await? {
                Letters::Stored(n) => dead_lettered += n,
                Letters::DlqFailed(err) => {
                    tx.rollback().await?;
                    return Ok(Outcome::DlqFailed(err));
                }
            }
            letters_took += started.elapsed();
        }
        tx.commit().await?;
        Ok(Outcome::Committed(Written {
            rows: rows_total - n_refused,
            refused: n_refused,
            first_refusal,
            dead_lettered,
            copies,
            refetch,
            copy,
            letters: letters_took,
        }))
    }

    /// `errors.tolerance = "none"` met a record that can never be written:
    /// the pipeline stops here. Its batch stays in flight (uncommitted, still
    /// accounted), so the buffer fills and backpressure pauses the partitions.
    fn stop(&self, batch: &Batch, entry: usize, error: &str) {
        let e = &batch.entries[entry];
        self.pipeline.stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        error!(
            pipeline = %self.pipeline.name, topic = %self.topics.name(e.tp.topic), partition = e.tp.partition,
            offset = e.offset, %error,
            "record cannot be written and errors.tolerance is none: pipeline stopped, operator action needed"
        );
    }

    fn committed(&self, batch: &Batch, spans: &BTreeMap<Tp, Span>, written: &Written, took: Duration) {
        let rows = written.rows;
        let counters = &self.pipeline.counters;
        {
            let mut state = self.pipeline.lock();
            state.committed(spans, &batch.entries);
            self.pipeline.refresh_state(&mut state);
        }
        Counters::add(&counters.written, rows as u64);
        Counters::add(&counters.dead_lettered, written.dead_lettered);
        Counters::add(&counters.flushes, 1);
        let decode = batch.entries.iter().filter(|e| e.dead_letter.is_some()).count();
        if decode + written.refused > 0 {
            // One line per batch, not per record; each record's reason is in
            // sluice.dead_letters.
            let first = batch
                .entries
                .iter()
                .find_map(|e| e.dead_letter.as_deref())
                .map(|d| d.error.to_string())
                .or_else(|| written.first_refusal.clone());
            warn!(pipeline = %self.pipeline.name, decode, refused = written.refused,
                stored = written.dead_lettered, copies = written.copies,
                copy_ms = written.copy.as_millis() as u64, refetch_ms = written.refetch.as_millis() as u64,
                insert_ms = written.letters.as_millis() as u64, took_ms = took.as_millis() as u64,
                first = first.as_deref().unwrap_or(""),
                "records dead-lettered");
        }
        for (tp, span) in spans {
            // Kafka's committed offset is for lag tooling only; Postgres is the truth.
            let _ = self.consumer.send(ConsumerCommand::Commit {
                pipeline: self.index,
                tp: *tp,
                epoch: span.epoch,
                next: span.covered.next(),
            });
        }
        debug!(pipeline = %self.pipeline.name, rows, records = batch.entries.len(), partitions = spans.len(), took_ms = took.as_millis() as u64, "flushed");
        self.record_flush(batch, spans.len(), took, FlushOutcome::Committed);
    }

    /// Records a flush attempt with telemetry.
    fn record_flush(&self, batch: &Batch, partitions: usize, duration: Duration, outcome: FlushOutcome) {
        let event = FlushEvent {
            pipeline: &self.pipeline.name,
            table: &self.pipeline.table,
            partitions,
            duration,
            outcome,
        };
        self.flushes.record(event, batch.row_facts());
    }

    /// After a fence or a gap: read where the partition really is, forget
    /// what is buffered for it, and have the consumer loop seek there.
    async fn reread(&self, tp: Tp, epoch: u64) {
        let topic = self.topics.name(tp.topic);
        let mut failures = 0;
        let stored = loop {
            match offset_store::load(&self.pool, &self.group_id, topic, &[tp.partition]).await {
                Ok(map) => break map.get(&tp.partition).copied(),
                Err(err) => {
                    failures += 1;
                    warn!(pipeline = %self.pipeline.name, %topic, partition = tp.partition, error = %err, "re-reading the stored offset failed");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        };
        // `None`: revoked or re-assigned meanwhile; the new assignment read it.
        let Some(epoch) = self.pipeline.lock().reread(tp, epoch, stored) else {
            return;
        };
        debug!(pipeline = %self.pipeline.name, %topic, partition = tp.partition, stored = ?stored.map(|s| s.0),
            "re-reading the partition from the stored offset");
        let _ = self.consumer.send(ConsumerCommand::Seek {
            pipeline: self.index,
            tp,
            epoch,
            to: stored,
        });
    }
}

/// Splits `letters` into runs of about `budget` bytes (at least one letter each).
fn chunks_by_bytes<'a, 'b>(letters: &'a [Stored<'b>], budget: usize) -> Vec<&'a [Stored<'b>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, s) in letters.iter().enumerate() {
        if i > start && bytes + s.letter.bytes() > budget {
            chunks.push(&letters[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += s.letter.bytes();
    }
    if start < letters.len() {
        chunks.push(&letters[start..]);
    }
    chunks
}

/// How long a read-back may take: at most [`REFETCH_TIMEOUT`], and never
/// past the attempt's deadline.
fn refetch_timeout(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).min(REFETCH_TIMEOUT)
}

/// After how many consecutive timed-out attempts a batch is split in two.
const SPLIT_AFTER_TIMEOUTS: u32 = 2;

/// Whether a failed attempt ran out of time: sluice's `write_timeout`, or
/// the server's `statement_timeout` (57014).
fn is_timeout(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57014"),
        _ => false,
    }
}

/// How long to wait before retrying a failed flush: the backoff, whatever
/// the error class, unless the breaker is open (its own wait replaces it).
/// A data or configuration error leaves the breaker as it was, half-open
/// included, so it must still back off.
fn retry_wait(breaker: BreakerState, failures: u32) -> Option<Duration> {
    match breaker {
        BreakerState::Open { .. } => None,
        BreakerState::Closed { .. } | BreakerState::HalfOpen => Some(backoff(failures)),
    }
}

fn backoff(failures: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1 << failures.min(10).saturating_sub(1))
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_backs_off_unless_the_breaker_waits() {
        // Defect 5 of "Lossless means lossless": after a data or
        // configuration error in HALF_OPEN the writer retried at once.
        assert_eq!(retry_wait(BreakerState::HalfOpen, 1), Some(Duration::from_millis(100)));
        assert_eq!(retry_wait(BreakerState::HalfOpen, 3), Some(Duration::from_millis(400)));
        assert_eq!(
            retry_wait(BreakerState::Closed { failures: 2 }, 2),
            Some(Duration::from_millis(200))
        );
        let until = Instant::now() + Duration::from_secs(1);
        assert_eq!(retry_wait(BreakerState::Open { until }, 5), None);
    }

    #[test]
    fn a_read_back_never_outlives_the_attempt() {
        let soon = Instant::now() + Duration::from_millis(300);
        assert!(refetch_timeout(soon) <= Duration::from_millis(300));
        assert_eq!(refetch_timeout(Instant::now()), Duration::ZERO);
        assert_eq!(
            refetch_timeout(Instant::now() + Duration::from_secs(60)),
            REFETCH_TIMEOUT
        );
    }

    #[test]
    fn backoff_grows_to_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(30), RETRY_MAX);
    }
}
