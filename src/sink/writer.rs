//! The batch writer of one pipeline: takes batches out of the buffer and
//! writes each one — rows and the offsets they cover — in one Postgres
//! transaction.
//!
//! One flush is in flight per pipeline at a time, so a partition's batches
//! commit in offset order. A failed flush is retried as the same batch, so a
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
//! transaction ([`crate::sink::bisect`]). Both kinds go to
//! `sluice.dead_letters` in that same transaction, with the rows that land
//! and the offsets they all cover. Under `errors.tolerance = "none"` the
//! first such record stops the pipeline instead, before anything past it
//! commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Executor as _, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::Tolerance;
use crate::kafka::consumer::ConsumerCommand;
use crate::kafka::offsets::{Covered, NextOffset};
use crate::kafka::refetch::{Coordinates, Raw, Refetcher};
use crate::kafka::{Topics, Tp};
use crate::pipeline::buffer::{Batch, Entry};
use crate::pipeline::{breaker_state, next_epoch, Counters, Pipeline, Target};
use crate::sink::bisect::{self, Isolator, Refusal};
use crate::sink::breaker::{Breaker, BreakerSettings, BreakerState, Permit};
use crate::sink::dead_letter::{self, DeadLetter, DeadLetterClass, Stored};
use crate::sink::dlq::DlqError;
use crate::sink::error::{classify, ErrorClass};
use crate::sink::flush_policy::FlushPolicy;
use crate::sink::offset_store;
use crate::sink::upsert::WriteSql;

/// Requests to a writer.
#[derive(Debug)]
pub enum WriterCommand {
    /// Flush everything buffered, then answer (rebalance and shutdown).
    FlushAll { ack: oneshot::Sender<()> },
}

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
    DlqFailed(DlqError),
}

/// What a committed flush wrote.
#[derive(Debug, Default)]
struct Written {
    rows: usize,
    /// Rows the database refused: (entry index, dead letter), in batch order.
    refused: Vec<(usize, DeadLetter)>,
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

/// One partition's share of a batch.
#[derive(Debug, Clone, Copy)]
struct Span {
    epoch: u64,
    covered: Covered,
    /// The stored position the batch starts from: the fencing condition.
    from: Option<NextOffset>,
}

pub struct Writer {
    pub index: usize,
    pub pipeline: Arc<Pipeline>,
    pub pool: PgPool,
    pub group_id: Arc<str>,
    pub topics: Arc<Topics>,
    pub commands: mpsc::UnboundedReceiver<WriterCommand>,
    pub consumer: std_mpsc::Sender<ConsumerCommand>,
    pub control: Control,
    /// Reads refused records back from Kafka for their dead letters.
    pub refetch: Arc<std::sync::Mutex<Refetcher>>,
    /// Produces dead letters to `errors.dlq_topic`, when set.
    pub dlq: Option<crate::sink::dlq::DlqProducer>,
}

/// The writer's own decision state: the breaker, the adaptive flush policy
/// and the client-side write timeout.
#[derive(Debug)]
pub struct Control {
    pub breaker: Breaker,
    pub policy: FlushPolicy,
    pub write_timeout: Duration,
}

impl Control {
    pub fn new(pipeline: &Pipeline, breaker: BreakerSettings, write_timeout: Duration) -> Self {
        // Different seeds per pipeline and process: their jitter differs.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = clock ^ u64::from(std::process::id()).rotate_left(32) ^ (pipeline.name.len() as u64);
        Self {
            breaker: Breaker::new(breaker, seed ^ 0x9E37_79B9_7F4A_7C15),
            policy: FlushPolicy::new(pipeline.settings.flush, pipeline.settings.flush_interval),
            write_timeout,
        }
    }
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
                },
                _ = self.pipeline.wake_writer.notified() => {}
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

    /// Whether a batch should be flushed now, else how long until one should.
    fn readiness(&self, now: Instant, flush_all: bool) -> (bool, Option<Duration>) {
        if self.pipeline.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            // Stopped under `errors.tolerance = "none"`: nothing more commits.
            return (false, None);
        }
        let settings = &self.pipeline.settings;
        let state = self.pipeline.lock();
        let buffer = &state.buffer;
        if buffer.queued_records() == 0 {
            // Offsets evicted or dropped with nothing queued behind them still
            // need a (row-less) transaction to advance.
            return (buffer.has_covered_ahead(), None);
        }
        let batch_rows = self.control.policy.batch_rows();
        if flush_all || buffer.queued_records() >= batch_rows || buffer.queued_bytes() >= settings.batch_bytes {
            return (true, None);
        }
        let due = buffer.oldest_since().unwrap_or(now) + self.control.policy.interval();
        if due <= now {
            (true, None)
        } else {
            (false, Some(due - now))
        }
    }

    async fn flush_once(&mut self, pending_acks: &mut Vec<oneshot::Sender<()>>) {
        let batch_rows = self.control.policy.batch_rows();
        let batch_bytes = self.pipeline.settings.batch_bytes;
        let mut batch = self
            .pipeline
            .lock()
            .buffer
            .take_batch(batch_rows, batch_bytes, Instant::now());
        let mut failures = 0u32;
        loop {
            let Some(spans) = self.current_spans(&mut batch) else {
                return;
            };
            if let Permit::Wait(until) = self.control.breaker.permit(Instant::now(), &self.pipeline.name) {
                self.publish_breaker();
                self.wait_while_open(until, pending_acks).await;
                continue;
            }
            self.publish_breaker();
            let rows = batch.entries.iter().filter(|e| e.row.is_some()).count();
            let started = Instant::now();
            Counters::add(&self.pipeline.counters.attempts, 1);
            let result = match tokio::time::timeout(self.control.write_timeout, self.write(&batch, &spans)).await {
                Ok(result) => result,
                Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    WriteTimedOut(self.control.write_timeout),
                ))),
            };
            match result {
                Ok(Outcome::Committed(written)) => {
                    let took = started.elapsed();
                    self.control.breaker.on_success(&self.pipeline.name);
                    self.control.policy.observe(took);
                    self.publish_breaker();
                    self.committed(&batch, &spans, &written, took);
                    return;
                }
                Ok(Outcome::Stopped { entry, error }) => {
                    self.stop(&batch, entry, &error);
                    return;
                }
                Ok(Outcome::DlqFailed(err)) => {
                    failures += 1;
                    Counters::add(&self.pipeline.counters.dlq_produce_failures, 1);
                    let delay = backoff(failures);
                    warn!(pipeline = %self.pipeline.name, topic = %err.topic, rows, failures, retry_in = ?delay,
                        error = %err, "producing dead letters failed");
                    tokio::time::sleep(delay).await;
                }
                Ok(Outcome::Fenced(tps)) => {
                    self.control.breaker.on_success(&self.pipeline.name);
                    Counters::add(&self.pipeline.counters.fenced, tps.len() as u64);
                    for tp in tps {
                        self.refence(tp, spans[&tp].epoch).await;
                    }
                    // The other partitions' records are still good: retry them.
                }
                Err(err) => {
                    failures += 1;
                    let class = classify(&err);
                    crate::telemetry::flush_failed(&self.pipeline, &batch, spans.len(), started.elapsed(), class);
                    let delay = backoff(failures);
                    match class {
                        ErrorClass::Transient => {
                            self.control
                                .breaker
                                .on_transient_failure(Instant::now(), &self.pipeline.name);
                            warn!(
                                pipeline = %self.pipeline.name, rows, failures, retry_in = ?delay, error = %err,
                                "flush failed, retrying"
                            )
                        }
                        // Data errors of rows are isolated inside the flush; one
                        // that still escapes (e.g. from the dead-letter insert)
                        // or a configuration error stalls here, loudly, and
                        // backpressure pauses the pipeline's partitions.
                        ErrorClass::Data | ErrorClass::Config => error!(
                            pipeline = %self.pipeline.name, table = %self.pipeline.table, rows, failures,
                            retry_in = ?delay, error = %err, "flush refused by the database, operator action needed"
                        ),
                    }
                    self.publish_breaker();
                    // While the breaker is open its own wait replaces the backoff.
                    if matches!(self.control.breaker.state(), BreakerState::Closed { .. }) {
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
                    Some(WriterCommand::FlushAll { ack }) => { let _ = ack.send(()); }
                    None => return,
                },
            }
        }
    }

    /// Makes the breaker state and the flush interval visible to telemetry.
    fn publish_breaker(&self) {
        let state = match self.control.breaker.state() {
            BreakerState::Closed { .. } => breaker_state::CLOSED,
            BreakerState::HalfOpen => breaker_state::HALF_OPEN,
            BreakerState::Open { .. } => breaker_state::OPEN,
        };
        self.pipeline
            .breaker_state
            .store(state, std::sync::atomic::Ordering::Relaxed);
        let interval = self.control.policy.interval().as_micros().min(u64::MAX as u128) as u64;
        self.pipeline
            .flush_interval_us
            .store(interval, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drops the entries whose partition was revoked, re-assigned or fenced
    /// since they were read, and returns, per remaining partition, the range
    /// the batch covers and the stored position it starts from. `None` when
    /// nothing is left to write.
    fn current_spans(&self, batch: &mut Batch) -> Option<BTreeMap<Tp, Span>> {
        let mut state = self.pipeline.lock();
        let state = &mut *state;
        let held = |tp: &Tp, epoch: u64| {
            state
                .partitions
                .get(tp)
                .is_some_and(|p| p.epoch == epoch && !p.awaiting_seek)
        };
        if batch.entries.iter().any(|e| !held(&e.tp, e.epoch)) {
            let (keep, stale): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut batch.entries)
                .into_iter()
                .partition(|e| held(&e.tp, e.epoch));
            state.buffer.release(&stale);
            debug!(pipeline = %self.pipeline.name, dropped = stale.len(), "dropped stale records from batch");
            batch.entries = keep;
        }
        batch.covered.retain(|(tp, epoch, _)| held(tp, *epoch));
        if batch.entries.is_empty() && batch.covered.is_empty() {
            return None;
        }
        let mut spans: BTreeMap<Tp, Span> = BTreeMap::new();
        let covered = batch.covered.iter().copied();
        for (tp, epoch, offset) in batch.entries.iter().map(|e| (e.tp, e.epoch, e.offset)).chain(covered) {
            spans
                .entry(tp)
                .and_modify(|s| s.covered.include(offset))
                .or_insert_with(|| Span {
                    epoch,
                    covered: Covered::single(offset),
                    from: state.partitions[&tp].stored,
                });
        }
        Some(spans)
    }

    async fn write(&self, batch: &Batch, spans: &BTreeMap<Tp, Span>) -> Result<Outcome, sqlx::Error> {
        // When `flush_once` gives up on this write.
        let deadline = Instant::now() + self.control.write_timeout;
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
        for (i, e) in batch.entries.iter().enumerate() {
            let Some(row) = e.row.as_deref() else {
                continue;
            };
            let target = self
                .pipeline
                .target(e.tp.topic)
                .expect("a row is only encoded once its topic has a target");
            match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &target)) {
                Some((_, rows)) => rows.push((i, row)),
                None => groups.push((target, vec![(i, row)])),
            }
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
        let prefetch = (!prefetch_at.is_empty()).then(|| {
            let refetch = self.refetch.clone();
            tokio::task::spawn_blocking(move || {
                let mut refetch = refetch.lock().unwrap_or_else(|e| e.into_inner());
                refetch.fetch(&prefetch_at, REFETCH_TIMEOUT)
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
        let prefetched = match prefetch {
            Some(task) => task.await.unwrap_or_default(),
            None => HashMap::new(),
        };
        let refused = self.refused_letters(batch, refused, prefetched).await;
        let refetch = refetch_started.elapsed();
        let letters: Vec<Stored<'_>> = batch
            .entries
            .iter()
            .filter_map(|e| e.dead_letter.as_deref().map(|d| (e, d)))
            .chain(refused.iter().map(|(i, d)| (&batch.entries[*i], d)))
            .map(|(e, letter)| Stored {
                topic: self.topics.name(e.tp.topic),
                partition: e.tp.partition,
                offset: e.offset,
                timestamp_ms: e.timestamp_ms,
                letter,
            })
            .collect();
        let letters_started = Instant::now();
        let dead_lettered = dead_letter::insert(&mut tx, &self.pipeline.name, &letters).await?;
        let letters_took = letters_started.elapsed();
        if let (Some(dlq), false) = (&self.dlq, letters.is_empty()) {
            // Before COMMIT, so that a crash repeats rather than loses (see `dlq`).
            // By the flush's deadline, less a tenth of `write_timeout` kept
            // for the rollback or the commit. Out of time already: the
            // database took it, and the flush timed out as it would have.
            let produce_by = deadline.checked_sub(self.control.write_timeout / 10);
            let Some(produce_by) = produce_by.filter(|by| *by > Instant::now()) else {
                tx.rollback().await?;
                let timed_out = WriteTimedOut(self.control.write_timeout);
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    timed_out,
                )));
            };
            if let Err(err) = dlq.send(&self.pipeline.name, &letters, produce_by).await {
                tx.rollback().await?;
                return Ok(Outcome::DlqFailed(err));
            }
        }
        drop(letters);
        tx.commit().await?;
        Ok(Outcome::Committed(Written {
            rows: rows_total - refused.len(),
            refused,
            dead_lettered,
            copies,
            refetch,
            copy,
            letters: letters_took,
        }))
    }

    /// Writes `rows` inside `tx` (COPY, or in upsert mode COPY into the
    /// staging table and the upsert), each attempt under a savepoint; a range
    /// the database refuses for a data reason is narrowed down until the
    /// refused rows are alone ([`Isolator`]). Returns the refused rows (entry
    /// index and why, in batch order) and how many attempts it took; every
    /// other row is written. Any other error ends the flush.
    ///
    /// In upsert mode a refusal raised by the upsert statement (NOT NULL,
    /// CHECK, foreign keys of the target) names no COPY line, so its range is
    /// split in halves; applying the parts in order is equivalent to applying
    /// the whole (see [`crate::sink::upsert`]).
    async fn copy_isolating(
        &self,
        tx: &mut PgConnection,
        target: &Target,
        rows: &[(usize, &[u8])],
        repeats: Vec<bisect::Repeat>,
    ) -> Result<(Vec<(usize, Refusal)>, usize), sqlx::Error> {
        let write_sql = &target.write_sql;
        if rows.is_empty() {
            return Ok((Vec::new(), 0));
        }
        // Deferred constraints are checked per statement, so that a refusal
        // surfaces at the COPY that caused it, not at COMMIT.
        tx.execute("SET CONSTRAINTS ALL IMMEDIATE").await?;
        write_sql.prepare(tx).await?;
        tx.execute("SAVEPOINT sluice_rows").await?;
        // Rows repeating an earlier row's unique key (`repeats`, positions
        // in `rows`) go after the others, and are refused without a COPY
        // when that row landed.
        if repeats.is_empty() {
            return self.isolate(tx, target, rows).await;
        }
        let is_repeat: std::collections::HashSet<usize> = repeats.iter().map(|r| r.row).collect();
        let first_pass: Vec<(usize, &[u8])> = (0..rows.len())
            .filter(|p| !is_repeat.contains(p))
            .map(|p| rows[p])
            .collect();
        let (mut refused, mut copies) = self.isolate(tx, target, &first_pass).await?;
        let refused_entries: std::collections::HashSet<usize> = refused.iter().map(|(e, _)| *e).collect();
        let mut second_pass = Vec::new();
        for repeat in repeats {
            if refused_entries.contains(&rows[repeat.first].0) {
                // The earlier row did not land: this one may.
                second_pass.push(rows[repeat.row]);
            } else {
                refused.push((rows[repeat.row].0, repeat.refusal));
            }
        }
        if !second_pass.is_empty() {
            tx.execute("RELEASE SAVEPOINT sluice_rows; SAVEPOINT sluice_rows")
                .await?;
            let (more, c) = self.isolate(tx, target, &second_pass).await?;
            refused.extend(more);
            copies += c;
        }
        refused.sort_by_key(|(e, _)| *e);
        Ok((refused, copies))
    }

    /// Copies `rows` under savepoint `sluice_rows` (which must exist),
    /// isolating the refused ones; the savepoint exists again afterwards.
    async fn isolate(
        &self,
        tx: &mut PgConnection,
        target: &Target,
        rows: &[(usize, &[u8])],
    ) -> Result<(Vec<(usize, Refusal)>, usize), sqlx::Error> {
        let write_sql = &target.write_sql;
        let copy_target = write_sql.copy_target(&target.table);
        let mut isolator = Isolator::new(rows.len());
        let mut data = Vec::with_capacity(rows.iter().map(|(_, r)| r.len() + 8).sum());
        while let Some(range) = isolator.next_range() {
            data.clear();
            for (entry, row) in &rows[range.clone()] {
                write_sql.frame(&mut data, row, *entry);
            }
            match write_sql.write(tx, &data).await {
                Ok(()) => {
                    if isolator.more() {
                        write_sql.reset(tx).await?;
                        tx.execute("RELEASE SAVEPOINT sluice_rows; SAVEPOINT sluice_rows")
                            .await?;
                    }
                }
                Err(err) if classify(&err) == ErrorClass::Data => {
                    // ROLLBACK TO keeps the savepoint for the next attempt,
                    // and empties the staging table again.
                    tx.execute("ROLLBACK TO SAVEPOINT sluice_rows").await?;
                    isolator.refused(range, Refusal::of(&err, copy_target));
                }
                Err(err) => return Err(err),
            }
        }
        let (refused, copies) = isolator.finish();
        Ok((refused.into_iter().map(|(i, r)| (rows[i].0, r)).collect(), copies))
    }

    /// The dead letters of refused rows, with their raw records: kept by the
    /// consumer for likely duplicates, else read back from Kafka. One that
    /// cannot be read back is stored without its value, and says so.
    async fn refused_letters(
        &self,
        batch: &Batch,
        refused: Vec<(usize, Refusal)>,
        prefetched: HashMap<Coordinates, Raw>,
    ) -> Vec<(usize, DeadLetter)> {
        if refused.is_empty() {
            return Vec::new();
        }
        let wanted: Vec<Coordinates> = refused
            .iter()
            .map(|(i, _)| self.coordinates(&batch.entries[*i]))
            .collect();
        let mut found = prefetched;
        for ((i, _), at) in refused.iter().zip(&wanted) {
            if let Some(raw) = &batch.entries[*i].raw {
                found.insert(at.clone(), Raw::clone(raw));
            }
        }
        let asked: Vec<Coordinates> = wanted.iter().filter(|at| !found.contains_key(*at)).cloned().collect();
        if !asked.is_empty() {
            let refetch = self.refetch.clone();
            let fetched = tokio::task::spawn_blocking(move || {
                let mut refetch = refetch.lock().unwrap_or_else(|e| e.into_inner());
                refetch.fetch(&asked, REFETCH_TIMEOUT)
            })
            .await;
            found.extend(fetched.unwrap_or_default());
        }
        refused
            .into_iter()
            .zip(wanted)
            .map(|((i, refusal), at)| {
                let mut error = refusal.message;
                let raw = found.remove(&at).unwrap_or_else(|| {
                    error.push_str(" (the raw record could not be read back from Kafka; value not stored)");
                    Raw {
                        key: None,
                        value: None,
                        headers: "[]".into(),
                    }
                });
                let letter = DeadLetter {
                    key: raw.key,
                    value: raw.value,
                    headers: raw.headers,
                    class: DeadLetterClass::Data,
                    sqlstate: Some(refusal.sqlstate.into()),
                    error: error.into(),
                };
                (i, letter)
            })
            .collect()
    }

    /// Where an entry's record is in Kafka.
    fn coordinates(&self, e: &Entry) -> Coordinates {
        (self.topics.name(e.tp.topic).to_owned(), e.tp.partition, e.offset)
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
            for (tp, span) in spans {
                if let Some(p) = state.partitions.get_mut(tp) {
                    if p.epoch == span.epoch {
                        p.stored = Some(span.covered.next());
                    }
                }
            }
            state.buffer.release(&batch.entries);
            self.pipeline.refresh_state(&mut state);
        }
        Counters::add(&counters.written, rows as u64);
        Counters::add(&counters.dead_lettered, written.dead_lettered);
        Counters::add(&counters.flushes, 1);
        let decode = batch.entries.iter().filter(|e| e.dead_letter.is_some()).count();
        if decode + written.refused.len() > 0 {
            // One line per batch, not per record; each record's reason is in
            // sluice.dead_letters.
            let first = batch
                .entries
                .iter()
                .find_map(|e| e.dead_letter.as_deref())
                .or(written.refused.first().map(|(_, d)| d))
                .map(|d| d.error.to_string());
            warn!(pipeline = %self.pipeline.name, decode, refused = written.refused.len(),
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
        crate::telemetry::flush_committed(&self.pipeline, batch, spans.len(), took);
    }

    /// After a fence: read where the partition really is, forget what is
    /// buffered for it, and have the consumer loop seek there.
    async fn refence(&self, tp: Tp, epoch: u64) {
        let topic = self.topics.name(tp.topic);
        let mut failures = 0;
        let stored = loop {
            match offset_store::load(&self.pool, &self.group_id, topic, &[tp.partition]).await {
                Ok(map) => break map.get(&tp.partition).copied(),
                Err(err) => {
                    failures += 1;
                    warn!(pipeline = %self.pipeline.name, %topic, partition = tp.partition, error = %err, "re-reading fenced offset failed");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        };
        let new_epoch = {
            let mut state = self.pipeline.lock();
            let state = &mut *state;
            match state.partitions.get_mut(&tp) {
                Some(p) if p.epoch == epoch => {
                    p.epoch = next_epoch();
                    p.stored = stored;
                    p.expected = stored;
                    p.awaiting_seek = true;
                    state.buffer.purge(tp);
                    p.epoch
                }
                // Revoked or re-assigned meanwhile: the new assignment re-read it.
                _ => return,
            }
        };
        info!(pipeline = %self.pipeline.name, %topic, partition = tp.partition, stored = ?stored.map(|s| s.0),
            "fenced: the stored offset moved under this instance; re-reading from it");
        let _ = self.consumer.send(ConsumerCommand::Seek {
            pipeline: self.index,
            tp,
            epoch: new_epoch,
            to: stored,
        });
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
    fn backoff_grows_to_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(30), RETRY_MAX);
    }
}
