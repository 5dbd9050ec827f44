//! Partitions positioned outside their log on the broker: finding them,
//! and stopping the pipeline or skipping past the gap as
//! `kafka.on_offset_out_of_range` says.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use super::{Context, LoopState, Shared};
use crate::config::OnOffsetOutOfRange;
use crate::kafka::offsets::start_position;
use crate::model::offsets::{out_of_range, skip_to, NextOffset, OutOfRange};
use crate::model::Tp;
use crate::pipeline::ports::AssignRequest;
use crate::pipeline::Counters;

/// How long one watermark query may take while looking for a partition
/// out of range.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one search this often: one bad assignment brings an error per partition.
const RANGE_SEARCH_INTERVAL: Duration = Duration::from_secs(1);
/// An out-of-range error this soon after a search found a partition out
/// of range is taken to be about that partition (it was still queued).
const RANGE_EXPLAINED_FOR: Duration = Duration::from_secs(10);

/// Whether a consumer error is librdkafka's report of a fetch position
/// outside the log (`auto.offset.reset=error`): the partition's fetcher has
/// stopped, and nothing else moves it.
pub(super) fn is_out_of_range(err: &KafkaError) -> bool {
    err.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset)
}

/// Partitions positioned outside the log on the broker.
///
/// The broker answers a fetch below the log start or above its end with
/// OFFSET_OUT_OF_RANGE; librdkafka (with `auto.offset.reset=error`) stops
/// fetching the partition and reports an error, but the rdkafka crate's
/// error does not say which partition. So the loop looks: every held
/// partition's position (the next offset its buffer expects) against its
/// log's watermarks. What it finds follows `kafka.on_offset_out_of_range`:
/// the pipeline stops, or the partition skips to the log's start or end
/// once what it read before has committed, moving the stored offset under
/// the fencing rule.
#[derive(Debug, Default)]
pub(super) struct RangeWatch {
    /// An out-of-range error (its text) that no search has explained yet.
    pub(super) pending: Option<String>,
    last_search: Option<Instant>,
    last_found: Option<Instant>,
    /// Partitions to skip, waiting for their earlier records to commit.
    skips: Vec<Skip>,
    /// `(pipeline, partition, epoch)` already reported: one ERROR each.
    reported: HashSet<(usize, Tp, u64)>,
}

/// A partition to move past a gap (`on_offset_out_of_range` = `earliest` / `latest`).
#[derive(Debug)]
struct Skip {
    pipeline: usize,
    tp: Tp,
    epoch: u64,
    position: NextOffset,
    why: OutOfRange,
    low: i64,
    high: i64,
    to: NextOffset,
    skipped: i64,
    not_before: Instant,
}

/// A held partition's position: `(pipeline, partition, epoch, position, stored)`.
type Held = (usize, Tp, u64, NextOffset, Option<NextOffset>);

impl LoopState {
    /// Searches for the partition an out-of-range error was about (at most
    /// once a second) and carries out pending skips.
    pub(super) fn watch_range(&mut self, consumer: &BaseConsumer<Context>, shared: &Shared, now: Instant) {
        if self.drained {
            return;
        }
        let due = self
            .range
            .last_search
            .is_none_or(|t| now.duration_since(t) >= RANGE_SEARCH_INTERVAL);
        if self.range.pending.is_some() && due {
            self.search_out_of_range(consumer, shared);
        }
        if !self.range.skips.is_empty() {
            let moved = self.apply_skips(shared);
            if !moved.is_empty() {
                restart_fetch(consumer, shared, Some(&moved));
            }
        }
    }

    fn search_out_of_range(&mut self, consumer: &BaseConsumer<Context>, shared: &Shared) {
        let error = self.range.pending.take().unwrap_or_default();
        let now = Instant::now();
        self.range.last_search = Some(now);
        let held = held_positions(shared);
        self.range
            .reported
            .retain(|r| held.iter().any(|h| (h.0, h.1, h.2) == *r));
        let (mut found, mut unanswered) = (false, false);
        for &(index, tp, epoch, position, stored) in &held {
            let topic = shared.topics.name(tp.topic);
            let (low, high) = match consumer.fetch_watermarks(topic, tp.partition, WATERMARK_TIMEOUT) {
                Ok(w) => w,
                Err(err) => {
                    warn!(%topic, partition = tp.partition, error = %err,
                        "reading watermarks to find an offset out of range failed; looking again");
                    unanswered = true;
                    continue;
                }
            };
            let Some(why) = out_of_range(position, low, high) else {
                continue;
            };
            found = true;
            if self.range.reported.insert((index, tp, epoch)) {
                self.found_out_of_range(shared, (index, tp, epoch, position, stored), why, low, high);
            }
        }
        if found {
            self.range.last_found = Some(now);
        } else if unanswered {
            self.range.pending = Some(error);
        } else if self
            .range
            .last_found
            .is_none_or(|t| now.duration_since(t) >= RANGE_EXPLAINED_FOR)
        {
            // Every position is inside its log now: the broker's answer did
            // not last (a leader change, say). librdkafka stopped fetching
            // the partition, which one is unknown: restart them all where
            // their buffers left off.
            warn!(error = %error, partitions = held.len(),
                "kafka reported an offset out of range, but every position is inside its log; fetching again from each");
            restart_fetch(consumer, shared, None);
        }
    }

    /// Counts and reports a partition found outside its log, and stops its
    /// pipeline or schedules the skip `on_offset_out_of_range` asks for.
    fn found_out_of_range(&mut self, shared: &Shared, held: Held, why: OutOfRange, low: i64, high: i64) {
        let (index, tp, epoch, position, stored) = held;
        let pipeline = &shared.pipelines[index];
        let topic = shared.topics.name(tp.topic);
        Counters::add(&pipeline.counters.out_of_range, 1);
        let to_earliest = match shared.on_out_of_range {
            OnOffsetOutOfRange::Stop => {
                // As under `errors.tolerance = "none"`: nothing more of the
                // pipeline commits, so the stored offset stays for the
                // operator to judge; librdkafka fetches nothing more for the
                // partition, and the other partitions fill the buffer and pause.
                pipeline.stopped.store(true, Ordering::Relaxed);
                error!(pipeline = %pipeline.name, %topic, partition = tp.partition, offset = position.0,
                    stored = ?stored.map(|s| s.0), log_start = low, log_end = high, reason = why.as_str(),
                    on_offset_out_of_range = "stop",
                    "offset out of range: pipeline stopped, operator action needed");
                return;
            }
            OnOffsetOutOfRange::Earliest => true,
            OnOffsetOutOfRange::Latest => false,
        };
        let (to, skipped) = skip_to(position, low, high, to_earliest);
        debug!(pipeline = %pipeline.name, %topic, partition = tp.partition, offset = position.0, to = to.0,
            "offset out of range: skipping once what was read before it has committed");
        self.range.skips.push(Skip {
            pipeline: index,
            tp,
            epoch,
            position,
            why,
            low,
            high,
            to,
            skipped,
            not_before: Instant::now(),
        });
    }

    /// Moves each scheduled partition past its gap: once everything it
    /// read before has committed (stored = expected), the stored offset
    /// moves to the skip's target under the fencing rule. Returns whether a
    /// partition has a new position to fetch from.
    /// Returns the partitions whose position moved: their fetch restarts.
    fn apply_skips(&mut self, shared: &Shared) -> Vec<Tp> {
        let now = Instant::now();
        let mut moved_any = Vec::new();
        for mut skip in std::mem::take(&mut self.range.skips) {
            let pipeline = &shared.pipelines[skip.pipeline];
            let from = match pipeline.lock().partitions.get(&skip.tp) {
                // Revoked or re-read meanwhile: its holder looks again.
                Some(p) if p.epoch != skip.epoch => None,
                None => None,
                Some(p) if p.stored != p.expected || skip.not_before > now => {
                    self.range.skips.push(skip);
                    continue;
                }
                Some(p) => Some(p.stored),
            };
            let Some(from) = from else {
                self.range.reported.remove(&(skip.pipeline, skip.tp, skip.epoch));
                continue;
            };
            let topic = shared.topics.name(skip.tp.topic);
            let moved = shared
                .ask(|reply| AssignRequest::Advance {
                    topic: topic.to_owned(),
                    partition: skip.tp.partition,
                    from,
                    to: skip.to,
                    reply,
                })
                .unwrap_or_else(|| Err("the assigner stopped".into()));
            match moved {
                Ok(true) => {
                    pipeline.lock().moved(skip.tp, skip.epoch, Some(skip.to));
                    let setting = shared.on_out_of_range.as_str();
                    error!(pipeline = %pipeline.name, %topic, partition = skip.tp.partition,
                        offset = skip.position.0, log_start = skip.low, log_end = skip.high,
                        reason = skip.why.as_str(), reset_to = skip.to.0, skipped = skip.skipped,
                        on_offset_out_of_range = setting, "offset out of range: records skipped");
                    self.range.reported.remove(&(skip.pipeline, skip.tp, skip.epoch));
                    moved_any.push(skip.tp);
                }
                Ok(false) => {
                    // Another owner moved the stored offset (nothing of the
                    // partition is buffered: stored = expected). As after a
                    // fence, continue from where it is now.
                    let Some(stored) = self.reread(shared, topic, skip.tp.partition) else {
                        // No answer (sluice is stopping): unknown is not
                        // "nothing stored"; look again later.
                        skip.not_before = now + Duration::from_secs(1);
                        self.range.skips.push(skip);
                        continue;
                    };
                    pipeline.lock().moved(skip.tp, skip.epoch, stored);
                    self.range.reported.remove(&(skip.pipeline, skip.tp, skip.epoch));
                    moved_any.push(skip.tp);
                    info!(pipeline = %pipeline.name, %topic, partition = skip.tp.partition, stored = ?stored.map(|s| s.0),
                        "fenced while skipping an offset out of range; re-reading from the stored offset");
                }
                Err(err) => {
                    warn!(pipeline = %pipeline.name, %topic, partition = skip.tp.partition, error = %err,
                        "moving the stored offset past an out-of-range gap failed; retrying");
                    skip.not_before = now + Duration::from_secs(1);
                    self.range.skips.push(skip);
                }
            }
        }
        moved_any
    }

    /// The stored offset of one partition (`Some(None)`: no row), retried
    /// while the database is away; `None` when the assigner did not answer.
    fn reread(&self, shared: &Shared, topic: &str, partition: i32) -> Option<Option<NextOffset>> {
        shared.ask(|reply| AssignRequest::Stored {
            topic: topic.to_owned(),
            partition,
            reply,
        })
    }
}

/// Restarts fetching every assigned partition at its position. librdkafka
/// does not fetch a partition it found out of range any more, and cannot
/// seek it (its fetcher is stopped); under the eager protocol only a full
/// `assign` starts it again. The other partitions restart where their
/// buffers left off (a refetch, as after a seek; one with no record read
/// yet resolves its reset position again), and pauses are re-applied.
/// Under the cooperative protocol only `only` restart, when given (the
/// partitions moved past a gap): the others keep their prefetch, and the
/// fewer partitions an out-of-callback (un)assign touches, the less it can
/// disturb a rebalance librdkafka is in the middle of.
fn restart_fetch(consumer: &BaseConsumer<Context>, shared: &Shared, only: Option<&[Tp]>) {
    let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(err) => {
            warn!(error = %err, "reading the assignment to restart fetching failed");
            return;
        }
    };
    let wanted = |topic: &str, partition: i32| {
        !cooperative
            || only.is_none_or(|only| {
                shared
                    .topics
                    .route(topic)
                    .is_some_and(|(t, _)| only.contains(&Tp { topic: t, partition }))
            })
    };
    let mut tpl = TopicPartitionList::new();
    let mut out = TopicPartitionList::new();
    for elem in assignment.elements() {
        if !wanted(elem.topic(), elem.partition()) {
            continue;
        }
        out.add_partition(elem.topic(), elem.partition());
        let held = shared.topics.route(elem.topic()).and_then(|(topic, index)| {
            let tp = Tp {
                topic,
                partition: elem.partition(),
            };
            let state = shared.pipelines[index].lock();
            state.partitions.get(&tp).map(|p| match p.expected {
                Some(NextOffset(next)) => Offset::Offset(next),
                None => start_position(p.stored, shared.reset_earliest),
            })
        });
        // A topic no pipeline holds is ignored anyway.
        let offset = held.unwrap_or(Offset::End);
        if let Err(err) = tpl.add_partition_offset(elem.topic(), elem.partition(), offset) {
            warn!(topic = elem.topic(), partition = elem.partition(), error = %err, "cannot set restart offset");
        }
    }
    // Under the cooperative protocol librdkafka refuses a plain assign:
    // take the partitions out and put them back at their offsets instead.
    let restarted = if cooperative {
        consumer
            .incremental_unassign(&out)
            .and_then(|()| consumer.incremental_assign(&tpl))
    } else {
        consumer.assign(&tpl)
    };
    match restarted {
        Ok(()) => info!(partitions = tpl.count(), "fetching restarted"),
        Err(err) => warn!(error = %err, "restarting fetching failed"),
    }
    shared.reapply_pauses.store(true, Ordering::Relaxed);
}

/// Every held partition with a known position that is not waiting for a
/// seek: where its fetch stands.
fn held_positions(shared: &Shared) -> Vec<Held> {
    let mut held = Vec::new();
    for (index, pipeline) in shared.pipelines.iter().enumerate() {
        let state = pipeline.lock();
        for (tp, p) in &state.partitions {
            if let (Some(position), false) = (p.expected, p.awaiting_seek) {
                held.push((index, *tp, p.epoch, position, p.stored));
            }
        }
    }
    held
}
