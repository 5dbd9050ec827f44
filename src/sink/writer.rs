//! The batch writer of one pipeline: takes batches out of the buffer and
//! writes each one — rows and the offsets they cover — in one Postgres
//! transaction.
//!
//! One flush is in flight per pipeline at a time, so a partition's batches
//! commit in offset order. A failed flush is retried as the same batch; the
//! fencing condition makes a retry after an ambiguous COMMIT safe.

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::kafka::consumer::ConsumerCommand;
use crate::kafka::offsets::{Covered, NextOffset};
use crate::kafka::{Topics, Tp};
use crate::pipeline::buffer::{Batch, Entry};
use crate::pipeline::{next_epoch, Counters, Pipeline};
use crate::sink::error::{classify, ErrorClass};
use crate::sink::offset_store;
use crate::sink::schema::quote_ident;

/// Requests to a writer.
#[derive(Debug)]
pub enum WriterCommand {
    /// Flush everything buffered, then answer (rebalance and shutdown).
    FlushAll { ack: oneshot::Sender<()> },
}

/// What one transaction did.
#[derive(Debug)]
enum Outcome {
    Committed,
    /// Another owner moved these partitions' stored offsets: rolled back.
    Fenced(Vec<Tp>),
}

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
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Writer {
    /// The COPY statement for the pipeline's table and mapped columns.
    fn copy_statement(&self) -> String {
        let columns: Vec<String> = self
            .pipeline
            .encoder
            .columns()
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        format!(
            "COPY {} ({}) FROM STDIN WITH (FORMAT text)",
            self.pipeline.table.quoted(),
            columns.join(", ")
        )
    }

    pub async fn run(mut self) {
        let copy_statement = self.copy_statement();
        let mut pending_acks: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let (ready, wait) = self.readiness(Instant::now(), !pending_acks.is_empty());
            if ready {
                self.flush_once(&copy_statement).await;
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
    pub async fn flush_pending(&self) {
        let copy_statement = self.copy_statement();
        while self.readiness(Instant::now(), true).0 {
            self.flush_once(&copy_statement).await;
        }
    }

    /// Whether a batch should be flushed now, else how long until one should.
    fn readiness(&self, now: Instant, flush_all: bool) -> (bool, Option<Duration>) {
        let settings = &self.pipeline.settings;
        let state = self.pipeline.lock();
        let buffer = &state.buffer;
        if buffer.queued_records() == 0 {
            // Offsets evicted or dropped with nothing queued behind them still
            // need a (row-less) transaction to advance.
            return (buffer.has_covered_ahead(), None);
        }
        if flush_all || buffer.queued_records() >= settings.batch_size || buffer.queued_bytes() >= settings.batch_bytes
        {
            return (true, None);
        }
        let due = buffer.oldest_since().unwrap_or(now) + settings.flush_interval;
        if due <= now {
            (true, None)
        } else {
            (false, Some(due - now))
        }
    }

    async fn flush_once(&self, copy_statement: &str) {
        let settings = &self.pipeline.settings;
        let mut batch =
            self.pipeline
                .lock()
                .buffer
                .take_batch(settings.batch_size, settings.batch_bytes, Instant::now());
        let mut failures = 0u32;
        loop {
            let Some(spans) = self.current_spans(&mut batch) else {
                return;
            };
            let (data, rows) = concat_rows(&batch.entries);
            let started = Instant::now();
            match self.write(copy_statement, &data, &spans).await {
                Ok(Outcome::Committed) => {
                    self.committed(&batch, &spans, rows, started.elapsed());
                    return;
                }
                Ok(Outcome::Fenced(tps)) => {
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
                        ErrorClass::Transient => warn!(
                            pipeline = %self.pipeline.name, rows, failures, retry_in = ?delay, error = %err,
                            "flush failed, retrying"
                        ),
                        // Dead letters and bisection arrive later; until then a
                        // batch the database refuses stalls here, loudly, and
                        // backpressure pauses the pipeline's partitions.
                        ErrorClass::Data | ErrorClass::Config => error!(
                            pipeline = %self.pipeline.name, table = %self.pipeline.table, rows, failures,
                            retry_in = ?delay, error = %err, "flush refused by the database, operator action needed"
                        ),
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
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

    async fn write(
        &self,
        copy_statement: &str,
        data: &[u8],
        spans: &BTreeMap<Tp, Span>,
    ) -> Result<Outcome, sqlx::Error> {
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
        if !data.is_empty() {
            let mut copy = tx.copy_in_raw(copy_statement).await?;
            copy.send(data).await?;
            copy.finish().await?;
        }
        tx.commit().await?;
        Ok(Outcome::Committed)
    }

    fn committed(&self, batch: &Batch, spans: &BTreeMap<Tp, Span>, rows: usize, took: Duration) {
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
        Counters::add(&counters.flushes, 1);
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

fn concat_rows(batch: &[Entry]) -> (Vec<u8>, usize) {
    let len = batch.iter().map(|e| e.row.as_ref().map_or(0, |r| r.len())).sum();
    let mut data = Vec::with_capacity(len);
    let mut rows = 0;
    for row in batch.iter().filter_map(|e| e.row.as_deref()) {
        data.extend_from_slice(row);
        rows += 1;
    }
    (data, rows)
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
