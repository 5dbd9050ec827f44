//! The bounded buffer between the consumer loop and a pipeline's writer.
//!
//! It holds encoded rows in arrival order. Arrival order is per-partition
//! offset order, so any prefix of the queue covers, per partition, a
//! contiguous run of offsets: that is what lets a batch advance the stored
//! offset safely. Records taken by the writer stay accounted (as in-flight)
//! until their transaction ends, so utilization bounds everything this
//! pipeline holds, not only what is waiting.
//!
//! Every entry says which offsets it accounts for: `[from, offset]`, where
//! `from` is the offset the consumer expected when the record arrived (the
//! offsets in between do not exist: compaction, transaction markers). So a
//! batch can prove it is gap-free: per partition, its pieces chain without a
//! hole from the stored position (see `PipelineState::spans`).

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use crate::model::{DeadLetter, Raw, RecordMeta, Tp, TpMap, TraceParent};
use crate::telemetry::RowFacts;

/// Bookkeeping bytes charged per entry on top of the row itself, so that a
/// flood of tiny rows still counts against `max_buffer_bytes`: the entry
/// itself (88 bytes).
pub const ENTRY_OVERHEAD_BYTES: usize = 88;

/// One consumed record: its encoded COPY row, or `None` for a marker. A
/// marker either carries a dead letter (the record cannot become a row; its
/// raw bytes wait here until the batch that stores them commits) or stands
/// for dropped records: its offset (and, for a drop marker extended by later
/// drops, every offset of its partition up to `offset`) must still be covered.
#[derive(Debug)]
pub struct Entry {
    pub tp: Tp,
    /// The assignment this record was read under (see `PartState::epoch`).
    pub epoch: u64,
    /// The first offset this entry accounts for: the offset the consumer
    /// expected when the record arrived (offsets in `from..offset` do not
    /// exist in the log). A drop marker accounts for `[from, offset]`.
    pub from: i64,
    pub offset: i64,
    pub row: Option<Box<[u8]>>,
    /// The record's Kafka timestamp (ms since the epoch), for end-to-end latency.
    pub timestamp_ms: Option<i64>,
    /// The producer's W3C trace context, only when the record carried a
    /// `traceparent` header (so no allocation otherwise); the flush span
    /// links to it.
    pub trace: Option<Box<TraceParent>>,
    /// Only for a record that cannot become a row: what the dead-letter
    /// store keeps of it. Boxed, so a good record pays one pointer.
    pub dead_letter: Option<Box<DeadLetter>>,
    /// Only for a row that will most likely be refused as a duplicate key
    /// (see [`crate::row::RecentKeys`]): its raw record, for the
    /// dead letter, so that it need not be read back from Kafka.
    pub raw: Option<Box<Raw>>,
}

impl Entry {
    /// A consumed record's entry, with what telemetry needs of it.
    pub fn new(tp: Tp, epoch: u64, offset: i64, row: Option<Box<[u8]>>, meta: RecordMeta) -> Entry {
        Entry {
            tp,
            epoch,
            from: offset,
            offset,
            row,
            timestamp_ms: meta.timestamp_ms,
            trace: meta.trace,
            dead_letter: None,
            raw: None,
        }
    }

    /// A record that will not become a row: a marker carrying its dead letter.
    pub fn dead(tp: Tp, epoch: u64, offset: i64, letter: DeadLetter, meta: RecordMeta) -> Entry {
        Entry {
            dead_letter: Some(Box::new(letter)),
            ..Entry::new(tp, epoch, offset, None, meta)
        }
    }

    /// Whether this entry is a record (a row or a dead letter), as opposed to
    /// a marker for dropped records.
    pub fn is_record(&self) -> bool {
        self.row.is_some() || self.dead_letter.is_some()
    }

    /// Makes the entry cost at most `limit` bytes, so that it can always be
    /// buffered (and `drop_oldest` never evicts a whole queue for it): first
    /// without its raw copy (an optimisation: a refused row is read back
    /// from Kafka instead), then a row still too large becomes a dead letter
    /// (`as_letter` builds it from the record, given the reason), and a dead
    /// letter is stored truncated. `limit` must be at least 2KiB.
    pub fn fit(&mut self, limit: usize, as_letter: impl FnOnce(String) -> DeadLetter) {
        if self.cost() <= limit {
            return;
        }
        self.raw = None;
        if self.cost() > limit {
            if let Some(row) = self.row.take() {
                let why = format!(
                    "the encoded row is {} bytes, more than one pipeline buffer entry may hold ({limit} bytes, \
                     half of max_buffer_bytes)",
                    row.len()
                );
                self.dead_letter = Some(Box::new(as_letter(why)));
            }
        }
        let cost = self.cost();
        if let Some(letter) = self.dead_letter.as_deref_mut().filter(|_| cost > limit) {
            let others = cost - letter.bytes();
            letter.shrink_to(limit.saturating_sub(others));
        }
        debug_assert!(self.cost() <= limit, "{} > {limit}", self.cost());
    }

    pub fn cost(&self) -> usize {
        let trace = if self.trace.is_some() {
            std::mem::size_of::<TraceParent>()
        } else {
            0
        };
        let dead_letter = self.dead_letter.as_ref().map_or(0, |d| d.bytes());
        let raw = self.raw.as_ref().map_or(0, |r| r.bytes());
        ENTRY_OVERHEAD_BYTES + trace + dead_letter + raw + self.row.as_ref().map_or(0, |r| r.len())
    }
}

/// Limits of one pipeline buffer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// The bounded buffer of one pipeline: a queue per writer lane, one set of
/// limits over all of them.
///
/// A pipeline with `writers = n` has `n` lanes. Every partition belongs to
/// one lane ([`Buffer::lane_of`]), and each lane's writer takes batches of
/// its lane only, so `n` transactions can be in flight at once over
/// disjoint sets of partitions while each partition still has at most one
/// batch in flight, committed in offset order.
#[derive(Debug)]
pub struct Buffer {
    limits: Limits,
    lanes: Vec<Lane>,
    /// Queued bytes and rows over all lanes.
    queued_bytes: usize,
    queued_rows: usize,
    inflight_rows: usize,
    inflight_bytes: usize,
    /// Per partition, the offsets evicted from the head (or dropped with
    /// nothing of the partition queued): covered, and before every queued
    /// entry of that partition.
    covered_ahead: TpMap<Ahead>,
}

/// One writer lane's queue.
#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Entry>,
    queued_bytes: usize,
    /// When the oldest queued entry arrived: drives the flush interval.
    oldest_since: Option<Instant>,
    /// The consumer found nothing more to read after the newest queued
    /// entry arrived: what is queued is all there is for now (see
    /// [`Buffer::intake_drained`]).
    handed_over: bool,
}

/// The lane of `tp` among `lanes` (see [`Buffer::lane_of`]).
fn lane_index(tp: Tp, lanes: usize) -> usize {
    (tp.partition.unsigned_abs() as usize).wrapping_add(tp.topic.0 as usize) % lanes
}

/// Offsets of one partition covered without an entry: `[from, last]`,
/// read under `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    pub tp: Tp,
    pub epoch: u64,
    pub from: i64,
    pub last: i64,
}

impl Ahead {
    fn merge(slot: &mut Option<Ahead>, next: Ahead) {
        *slot = Some(match *slot {
            Some(a) if a.epoch == next.epoch => {
                debug_assert!(
                    next.from <= a.last + 1 && a.from <= next.last + 1,
                    "covered-ahead ranges chain: {a:?} then {next:?}"
                );
                Ahead {
                    from: a.from.min(next.from),
                    last: a.last.max(next.last),
                    ..a
                }
            }
            _ => next,
        });
    }
}

/// What [`Buffer::take_batch`] hands the writer.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// Offsets dropped from the head, per partition: covered by this batch
    /// although no entry carries them; they come before its entries.
    pub covered: Vec<Ahead>,
}

impl Batch {
    /// What telemetry needs of the batch's rows (drop markers and dead
    /// letters are not rows).
    pub fn row_facts(&self) -> impl Iterator<Item = RowFacts<'_>> {
        self.entries.iter().filter_map(|e| {
            e.row.as_ref().map(|row| RowFacts {
                bytes: row.len(),
                timestamp_ms: e.timestamp_ms,
                trace: e.trace.as_deref(),
            })
        })
    }
}

impl Buffer {
    /// A buffer with one lane.
    pub fn new(limits: Limits) -> Self {
        Self::with_lanes(limits, 1)
    }

    /// A buffer with `lanes` writer lanes (at least 1).
    pub fn with_lanes(limits: Limits, lanes: usize) -> Self {
        Self {
            limits,
            lanes: (0..lanes.max(1)).map(|_| Lane::default()).collect(),
            queued_bytes: 0,
            queued_rows: 0,
            inflight_rows: 0,
            inflight_bytes: 0,
            covered_ahead: TpMap::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many writer lanes the buffer has.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The lane a partition's entries go to. Fixed for the buffer's life,
    /// so a partition's entries always queue, and are taken, in one lane:
    /// consecutive partitions of a topic go to consecutive lanes.
    pub fn lane_of(&self, tp: Tp) -> usize {
        lane_index(tp, self.lanes.len())
    }

    /// Whether holding one more entry of `cost` bytes would exceed a limit.
    /// Only entries with a row count against `max_records`; a marker costs
    /// its bookkeeping bytes only (markers are bounded anyway: at most one
    /// per run of rows of a partition).
    pub fn would_overflow(&self, cost: usize, has_row: bool) -> bool {
        (has_row && self.records() + 1 > self.limits.max_records) || self.bytes() + cost > self.limits.max_bytes
    }

    /// Drops the oldest queued entry (never one in flight) of the lane
    /// holding the most queued bytes (with one lane: the oldest queued
    /// entry), keeping its offset covered. `None` when nothing is queued;
    /// else whether the entry was a record (a row or a dead letter, as
    /// opposed to a drop marker): the caller counts it as dropped.
    pub fn evict_oldest(&mut self) -> Option<bool> {
        let lane = (0..self.lanes.len())
            .filter(|l| !self.lanes[*l].queue.is_empty())
            .max_by_key(|l| (self.lanes[*l].queued_bytes, std::cmp::Reverse(*l)))?;
        let e = self.lanes[lane].queue.pop_front()?;
        self.unqueue(lane, e.cost(), usize::from(e.row.is_some()));
        self.cover_ahead(Ahead {
            tp: e.tp,
            epoch: e.epoch,
            from: e.from,
            last: e.offset,
        });
        Some(e.is_record())
    }

    /// Takes `bytes` and `rows` off `lane`'s queued figures (and the totals).
    fn unqueue(&mut self, lane: usize, bytes: usize, rows: usize) {
        let l = &mut self.lanes[lane];
        l.queued_bytes -= bytes;
        if l.queue.is_empty() {
            l.oldest_since = None;
            l.handed_over = false;
        }
        self.queued_bytes -= bytes;
        self.queued_rows -= rows;
    }

    /// Covers a dropped incoming record of `tp` without buffering its row.
    /// Extends the partition's trailing marker, or appends one when there is
    /// room; in a full buffer it turns the partition's newest queued row into
    /// the marker instead (that row is dropped too). Returns how many
    /// *buffered* rows were dropped to make this work (0 or 1).
    pub fn drop_newest(&mut self, tp: Tp, epoch: u64, from: i64, offset: i64, now: Instant) -> u64 {
        let lane = self.lane_of(tp);
        let Some(last) = self.lanes[lane].queue.iter().rposition(|e| e.tp == tp) else {
            // Nothing of this partition queued: "ahead of everything queued" holds.
            self.cover_ahead(Ahead {
                tp,
                epoch,
                from,
                last: offset,
            });
            return 0;
        };
        let tail = &self.lanes[lane].queue[last];
        // Only a drop marker may stand for more offsets; a dead letter is one record.
        if tail.row.is_none() && tail.dead_letter.is_none() && tail.epoch == epoch {
            self.lanes[lane].queue[last].offset = offset;
            return 0;
        }
        if !self.would_overflow(ENTRY_OVERHEAD_BYTES, false) {
            self.push(
                Entry {
                    tp,
                    epoch,
                    from,
                    offset,
                    row: None,
                    timestamp_ms: None,
                    trace: None,
                    dead_letter: None,
                    raw: None,
                },
                now,
            );
            return 0;
        }
        // The newest queued record of the partition (a row or a dead letter)
        // is dropped too and becomes the drop marker.
        let tail = &mut self.lanes[lane].queue[last];
        let (before, was_record, had_row) = (tail.cost(), tail.is_record(), tail.row.is_some());
        tail.row = None;
        tail.dead_letter = None;
        tail.raw = None;
        // The marker keeps the row's `from`: it accounts for both.
        tail.offset = offset;
        tail.epoch = epoch;
        let freed = before - tail.cost();
        self.unqueue(lane, freed, usize::from(had_row));
        u64::from(was_record)
    }

    fn cover_ahead(&mut self, ahead: Ahead) {
        let mut slot = self.covered_ahead.remove(&ahead.tp);
        Ahead::merge(&mut slot, ahead);
        if let Some(a) = slot {
            self.covered_ahead.insert(a.tp, a);
        }
    }

    pub fn push(&mut self, entry: Entry, now: Instant) {
        let (cost, rows) = (entry.cost(), usize::from(entry.row.is_some()));
        let index = self.lane_of(entry.tp);
        let lane = &mut self.lanes[index];
        if lane.queue.is_empty() {
            lane.oldest_since = Some(now);
        }
        lane.handed_over = false;
        lane.queued_bytes += cost;
        lane.queue.push_back(entry);
        self.queued_bytes += cost;
        self.queued_rows += rows;
    }

    /// Records (rows) held: waiting plus in flight.
    pub fn records(&self) -> usize {
        self.queued_rows + self.inflight_rows
    }

    /// Bytes held: waiting plus in flight.
    pub fn bytes(&self) -> usize {
        self.queued_bytes + self.inflight_bytes
    }

    /// Entries waiting (rows and markers) in all lanes.
    pub fn queued_records(&self) -> usize {
        self.lanes.iter().map(|l| l.queue.len()).sum()
    }

    /// Entries waiting (rows and markers) in `lane`: what its next batches take.
    pub fn queued_in(&self, lane: usize) -> usize {
        self.lanes[lane].queue.len()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Bytes waiting in `lane`.
    pub fn queued_bytes_in(&self, lane: usize) -> usize {
        self.lanes[lane].queued_bytes
    }

    /// When the oldest entry waiting in `lane` arrived (or the lane's last
    /// batch was taken, if later).
    pub fn oldest_since(&self, lane: usize) -> Option<Instant> {
        self.lanes[lane].oldest_since
    }

    /// The consumer's intake ran dry (it found nothing more to read): the
    /// lanes holding entries now hold all there is for the moment. Returns
    /// the lanes this newly applies to, whose writers may flush early (see
    /// [`crate::pipeline::flush_policy::FlushPolicy::due`]).
    pub fn intake_drained(&mut self) -> Vec<usize> {
        let mut lanes = Vec::new();
        for (index, lane) in self.lanes.iter_mut().enumerate() {
            if !lane.queue.is_empty() && !lane.handed_over {
                lane.handed_over = true;
                lanes.push(index);
            }
        }
        lanes
    }

    /// Whether the intake ran dry after `lane`'s newest entry arrived
    /// ([`Buffer::intake_drained`]); `false` for an empty lane.
    pub fn handed_over(&self, lane: usize) -> bool {
        self.lanes[lane].handed_over
    }

    /// `max(bytes / max_bytes, records / max_records)`, as DESIGN.md defines it.
    pub fn utilization(&self) -> f64 {
        let by_bytes = self.bytes() as f64 / self.limits.max_bytes.max(1) as f64;
        let by_records = self.records() as f64 / self.limits.max_records.max(1) as f64;
        by_bytes.max(by_records)
    }

    /// Moves the oldest entries of `lane`, up to `max_rows` entries or
    /// `max_bytes` (at least one entry), into a batch, with the offsets
    /// covered ahead of the lane's partitions. They stay accounted as in
    /// flight until [`Buffer::release`].
    pub fn take_batch(&mut self, lane: usize, max_rows: usize, max_bytes: usize, now: Instant) -> Batch {
        self.take_batch_of(lane, None, max_rows, max_bytes, now)
    }

    /// [`Buffer::take_batch`], of the partitions in `only` when given: the
    /// oldest entries of those partitions (each partition's in its order;
    /// the other partitions' entries stay queued where they are) and the
    /// offsets covered ahead of them. An incremental revoke flushes the
    /// revoked partitions this way while the others keep their batching.
    pub fn take_batch_of(
        &mut self,
        lane: usize,
        only: Option<&HashSet<Tp>>,
        max_rows: usize,
        max_bytes: usize,
        now: Instant,
    ) -> Batch {
        let l = &mut self.lanes[lane];
        let mut batch = Vec::with_capacity(max_rows.min(l.queue.len()));
        let mut bytes = 0;
        let mut rows = 0;
        let full = |batch: &Vec<Entry>, bytes: usize, cost: usize| {
            batch.len() >= max_rows || (!batch.is_empty() && bytes + cost > max_bytes)
        };
        match only {
            None => {
                while let Some(front) = l.queue.front() {
                    let cost = front.cost();
                    if full(&batch, bytes, cost) {
                        break;
                    }
                    bytes += cost;
                    rows += usize::from(front.row.is_some());
                    batch.push(l.queue.pop_front().expect("front exists"));
                }
            }
            Some(only) => {
                let mut kept = VecDeque::with_capacity(l.queue.len());
                let mut done = false;
                for e in l.queue.drain(..) {
                    if done || !only.contains(&e.tp) {
                        kept.push_back(e);
                        continue;
                    }
                    let cost = e.cost();
                    if full(&batch, bytes, cost) {
                        done = true;
                        kept.push_back(e);
                        continue;
                    }
                    bytes += cost;
                    rows += usize::from(e.row.is_some());
                    batch.push(e);
                }
                l.queue = kept;
            }
        }
        self.unqueue(lane, bytes, rows);
        self.inflight_rows += rows;
        self.inflight_bytes += bytes;
        // The remaining entries have waited since at most now; restarting the
        // clock here keeps a steady stream flushing at batch size, not early.
        // A take of some partitions leaves the others' clock alone.
        let l = &mut self.lanes[lane];
        if l.queue.is_empty() {
            l.oldest_since = None;
            l.handed_over = false;
        } else if only.is_none() {
            l.oldest_since = Some(now);
        }
        let lanes = self.lanes.len();
        let mut covered = Vec::new();
        self.covered_ahead.retain(|tp, ahead| {
            let mine = lane_index(*tp, lanes) == lane && only.is_none_or(|o| o.contains(tp));
            if mine {
                covered.push(*ahead);
            }
            !mine
        });
        Batch {
            entries: batch,
            covered,
        }
    }

    /// Whether `lane` holds anything of the partitions in `only` that a
    /// batch would take: queued entries or offsets covered ahead.
    pub fn holds_any_of(&self, lane: usize, only: &HashSet<Tp>) -> bool {
        self.covered_ahead
            .keys()
            .any(|tp| only.contains(tp) && self.lane_of(*tp) == lane)
            || self.lanes[lane].queue.iter().any(|e| only.contains(&e.tp))
    }

    /// The queued (not in-flight) entries: each lane's oldest first.
    pub fn queued(&self) -> impl Iterator<Item = &Entry> {
        self.lanes.iter().flat_map(|l| l.queue.iter())
    }

    /// Whether head-evicted offsets of `lane`'s partitions wait to be
    /// covered by a batch.
    pub fn has_covered_ahead(&self, lane: usize) -> bool {
        self.covered_ahead.keys().any(|tp| self.lane_of(*tp) == lane)
    }

    /// Ends the accounting of in-flight entries (committed or discarded).
    pub fn release<'a>(&mut self, entries: impl IntoIterator<Item = &'a Entry>) {
        for e in entries {
            self.inflight_rows -= usize::from(e.row.is_some());
            self.inflight_bytes -= e.cost();
        }
    }

    /// Drops every waiting entry of `tp` (revoked, or fenced and about to be
    /// re-read). Returns how many were dropped.
    pub fn purge(&mut self, tp: Tp) -> usize {
        let lane = self.lane_of(tp);
        let queue = &mut self.lanes[lane].queue;
        let before = queue.len();
        let (mut freed, mut rows) = (0, 0);
        queue.retain(|e| {
            let keep = e.tp != tp;
            if !keep {
                freed += e.cost();
                rows += usize::from(e.row.is_some());
            }
            keep
        });
        let dropped = before - queue.len();
        self.unqueue(lane, freed, rows);
        self.covered_ahead.remove(&tp);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TopicId;
    use proptest::prelude::*;

    fn entry(partition: i32, offset: i64, len: usize) -> Entry {
        Entry {
            tp: Tp {
                topic: TopicId(0),
                partition,
            },
            epoch: 1,
            from: offset,
            offset,
            row: Some(vec![b'x'; len].into_boxed_slice()),
            timestamp_ms: None,
            trace: None,
            dead_letter: None,
            raw: None,
        }
    }

    /// Telemetry sees the batch's rows only: a marker (no row) is neither
    /// counted nor its timestamp taken as the oldest.
    #[test]
    fn row_facts_leave_markers_out() {
        let trace = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let with = |offset, len: Option<usize>, ts| Entry {
            row: len.map(|len| vec![b'x'; len].into_boxed_slice()),
            timestamp_ms: Some(ts),
            trace: Some(Box::new(trace)),
            ..entry(0, offset, 0)
        };
        let batch = Batch {
            entries: vec![with(0, Some(4), 2_000), with(1, None, 1_000), with(2, Some(3), 1_500)],
            covered: Vec::new(),
        };
        let facts: Vec<(usize, Option<i64>, bool)> = batch
            .row_facts()
            .map(|r| (r.bytes, r.timestamp_ms, r.trace.is_some()))
            .collect();
        assert_eq!(facts, vec![(4, Some(2_000), true), (3, Some(1_500), true)]);
    }

    /// Partition `p` of topic number `t` goes to lane `(p + t) mod lanes`
    /// (README "Writers"): a topic's consecutive partitions alternate, and
    /// every entry of a partition is queued and taken in its one lane.
    #[test]
    fn partitions_are_dealt_to_the_lanes_in_turn() {
        let mut b = Buffer::with_lanes(
            Limits {
                max_records: 100,
                max_bytes: 1 << 20,
            },
            2,
        );
        let tp = |topic, partition| Tp {
            topic: TopicId(topic),
            partition,
        };
        let lanes: Vec<usize> = (0..6).map(|p| b.lane_of(tp(0, p))).collect();
        assert_eq!(lanes, [0, 1, 0, 1, 0, 1]);
        assert_eq!(
            (b.lane_of(tp(1, 0)), b.lane_of(tp(1, 1)), b.lane_of(tp(3, 4))),
            (1, 0, 1)
        );
        let now = Instant::now();
        for offset in 0..3 {
            for p in 0..4 {
                b.push(entry(p, offset, 10), now);
            }
        }
        assert_eq!((b.queued_in(0), b.queued_in(1), b.queued_records()), (6, 6, 12));
        let batch = b.take_batch(1, 100, usize::MAX, now).entries;
        let taken: Vec<(i32, i64)> = batch.iter().map(|e| (e.tp.partition, e.offset)).collect();
        assert_eq!(taken, [(1, 0), (3, 0), (1, 1), (3, 1), (1, 2), (3, 2)]);
        assert_eq!((b.queued_in(0), b.queued_in(1), b.records()), (6, 0, 12));
    }

    /// A drained intake hands over the lanes holding entries, once each;
    /// an entry arriving after it, or the lane's last entry leaving, takes
    /// the hand-over back.
    #[test]
    fn a_drained_intake_hands_over_the_lanes_holding_entries() {
        let mut b = Buffer::with_lanes(
            Limits {
                max_records: 100,
                max_bytes: 1 << 20,
            },
            3,
        );
        let now = Instant::now();
        assert_eq!(
            b.intake_drained(),
            Vec::<usize>::new(),
            "nothing queued, nothing handed over"
        );
        b.push(entry(0, 0, 10), now);
        b.push(entry(2, 0, 10), now);
        assert!(!b.handed_over(0) && !b.handed_over(2));
        assert_eq!(b.intake_drained(), [0, 2]);
        assert!(b.handed_over(0) && !b.handed_over(1) && b.handed_over(2));
        assert_eq!(b.intake_drained(), Vec::<usize>::new(), "already handed over");
        b.push(entry(0, 1, 10), now);
        assert!(
            !b.handed_over(0),
            "an entry after the hand-over: more may be on its way"
        );
        assert!(b.handed_over(2));
        assert_eq!(b.intake_drained(), [0]);
        b.take_batch(2, 100, usize::MAX, now);
        assert!(!b.handed_over(2), "an empty lane holds nothing handed over");
        b.push(entry(2, 1, 10), now);
        assert!(!b.handed_over(2));
        b.purge(Tp {
            topic: TopicId(0),
            partition: 0,
        });
        assert!(!b.handed_over(0), "purged empty");
        assert_eq!(b.intake_drained(), [2]);
    }

    /// `drop_oldest` with lanes evicts the head of the lane holding the
    /// most queued bytes, and covers its offset.
    #[test]
    fn eviction_takes_the_head_of_the_fullest_lane() {
        let mut b = Buffer::with_lanes(
            Limits {
                max_records: 100,
                max_bytes: 1 << 20,
            },
            2,
        );
        let now = Instant::now();
        b.push(entry(0, 0, 10), now);
        b.push(entry(1, 0, 50), now);
        b.push(entry(1, 1, 50), now);
        b.push(entry(0, 1, 10), now);
        assert_eq!(b.evict_oldest(), Some(true));
        assert_eq!((b.queued_in(0), b.queued_in(1)), (2, 1));
        assert!(b.has_covered_ahead(1) && !b.has_covered_ahead(0));
        let batch = b.take_batch(1, 100, usize::MAX, now);
        assert_eq!(batch.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), [1]);
        assert_eq!(
            batch
                .covered
                .iter()
                .map(|a| (a.tp.partition, a.from, a.last))
                .collect::<Vec<_>>(),
            [(1, 0, 0)]
        );
    }

    #[test]
    fn entry_overhead_covers_the_entry() {
        assert!(std::mem::size_of::<Entry>() <= ENTRY_OVERHEAD_BYTES);
    }

    fn letter(key: usize, value: usize, headers: usize) -> DeadLetter {
        DeadLetter {
            key: Some(vec![b'k'; key].into_boxed_slice()),
            value: Some(vec![b'v'; value].into_boxed_slice()),
            headers: format!("[{}]", "h".repeat(headers)).into(),
            class: crate::model::dead_letter::DeadLetterClass::Decode,
            sqlstate: None,
            error: "bad".into(),
        }
    }

    /// Defect 3 of "Lossless means lossless": an entry costing more than the
    /// buffer was refused forever under `block`.
    #[test]
    fn every_entry_fits_its_limit() {
        let limit = 4_096;
        // A row with a large raw copy keeps the row, loses the copy.
        let mut e = entry(0, 0, 1_000);
        e.raw = Some(Box::new(Raw {
            key: None,
            value: Some(vec![0; 10_000].into_boxed_slice()),
            headers: "[]".into(),
        }));
        e.fit(limit, |_| unreachable!("the row fits without its copy"));
        assert!(e.row.is_some() && e.raw.is_none());
        // A row too large for any entry becomes a dead letter saying why.
        let mut e = entry(0, 1, 5_000);
        let mut why = String::new();
        e.fit(limit, |reason| {
            why = reason;
            letter(10, 100, 0)
        });
        assert!(e.row.is_none() && e.dead_letter.is_some());
        assert_eq!(
            why,
            "the encoded row is 5000 bytes, more than one pipeline buffer entry may hold (4096 bytes, half of \
             max_buffer_bytes)"
        );
        // A dead letter with huge headers and key is stored truncated.
        let mut e = entry(0, 2, 0);
        e.row = None;
        e.dead_letter = Some(Box::new(letter(3_000, 3_000, 50_000)));
        e.fit(limit, |_| unreachable!());
        assert!(e.cost() <= limit, "{}", e.cost());
        let d = e.dead_letter.as_deref().unwrap();
        assert_eq!(&*d.headers, "[]");
        assert!(
            d.error.starts_with("bad (stored truncated to fit the buffer:"),
            "{}",
            d.error
        );
    }

    proptest! {
        #[test]
        fn fit_always_fits(row in 0usize..20_000, raw in 0usize..20_000, key in 0usize..9_000,
                           value in 0usize..9_000, headers in 0usize..9_000, limit in 2_048usize..16_384) {
            let mut e = entry(0, 0, row);
            e.raw = Some(Box::new(Raw { key: None, value: Some(vec![0; raw].into_boxed_slice()), headers: "[]".into() }));
            e.fit(limit, |_| letter(key, value, headers));
            prop_assert!(e.cost() <= limit);
            prop_assert!(e.row.is_some() || e.dead_letter.is_some(), "a record stays a record");
        }
    }

    #[test]
    fn utilization_is_the_larger_ratio() {
        let mut b = Buffer::new(Limits {
            max_records: 10,
            max_bytes: 10_000,
        });
        let now = Instant::now();
        b.push(entry(0, 0, 10), now);
        assert!((b.utilization() - 0.1).abs() < 1e-9);
        b.push(entry(0, 1, 5_000), now);
        assert!(b.utilization() > 0.5);
    }

    #[test]
    fn batch_respects_rows_and_bytes_and_stays_accounted() {
        let mut b = Buffer::new(Limits {
            max_records: 100,
            max_bytes: 1 << 20,
        });
        let now = Instant::now();
        for o in 0..10 {
            b.push(entry(o as i32 % 2, o, 100), now);
        }
        let batch = b.take_batch(0, 4, usize::MAX, now).entries;
        assert_eq!(batch.len(), 4);
        assert_eq!(b.records(), 10, "in-flight entries still count");
        let small = b.take_batch(0, 100, 1, now).entries;
        assert_eq!(small.len(), 1, "a batch always takes at least one entry");
        b.release(&batch);
        b.release(&small);
        assert_eq!(b.records(), 5);
    }

    #[test]
    fn purge_only_touches_one_partition() {
        let mut b = Buffer::new(Limits {
            max_records: 100,
            max_bytes: 1 << 20,
        });
        let now = Instant::now();
        for o in 0..10 {
            b.push(entry(o as i32 % 2, o, 10), now);
        }
        assert_eq!(
            b.purge(Tp {
                topic: TopicId(0),
                partition: 1
            }),
            5
        );
        assert_eq!(b.queued_records(), 5);
        assert_eq!(b.queued_bytes(), 5 * (10 + ENTRY_OVERHEAD_BYTES));
    }

    proptest! {
        /// Whatever the interleaving, accounting matches the entries held and
        /// every batch is, per partition, the next contiguous run in order;
        /// also when some batches take one partition only (an incremental
        /// revoke's flush), which leaves the others' entries queued.
        #[test]
        fn accounting_and_order_hold(
            lanes in 1usize..4,
            ops in proptest::collection::vec((0u8..4, 0i32..3, 1usize..200), 1..300),
        ) {
            let mut b = Buffer::with_lanes(Limits { max_records: 1000, max_bytes: 1 << 30 }, lanes);
            let now = Instant::now();
            let mut next = [0i64; 3];
            let mut taken_next = [0i64; 3];
            let mut held = 0usize;
            for (op, p, n) in ops {
                match op {
                    0 | 1 => {
                        b.push(entry(p, next[p as usize], n), now);
                        next[p as usize] += 1;
                        held += 1;
                    }
                    _ => {
                        // `p` picks the lane that takes (op 3: of `p` only).
                        let lane = p as usize % lanes;
                        let only: HashSet<Tp> = [entry(p, 0, 0).tp].into();
                        let of_p = op == 3;
                        let queued_of_p = b.queued().filter(|e| e.tp.partition == p).count();
                        let batch = b.take_batch_of(lane, of_p.then_some(&only), n, usize::MAX, now).entries;
                        if of_p {
                            prop_assert!(batch.iter().all(|e| e.tp.partition == p));
                            let in_lane = b.lane_of(entry(p, 0, 0).tp) == lane;
                            let expect = if in_lane { queued_of_p.min(n) } else { 0 };
                            prop_assert_eq!(batch.len(), expect);
                            prop_assert_eq!(b.holds_any_of(lane, &only), in_lane && expect < queued_of_p);
                        }
                        for e in &batch {
                            prop_assert_eq!(b.lane_of(e.tp), lane);
                            let p = e.tp.partition as usize;
                            prop_assert_eq!(e.offset, taken_next[p]);
                            taken_next[p] += 1;
                        }
                        prop_assert_eq!(b.records(), held);
                        b.release(&batch);
                        held -= batch.len();
                    }
                }
                prop_assert_eq!(b.records(), held);
                let expect_bytes: usize = b.queued().map(Entry::cost).sum();
                prop_assert_eq!(b.queued_bytes(), expect_bytes);
                prop_assert_eq!(b.queued_rows, b.queued().filter(|e| e.row.is_some()).count());
                for (i, lane) in b.lanes.iter().enumerate() {
                    prop_assert_eq!(lane.queued_bytes, lane.queue.iter().map(Entry::cost).sum::<usize>());
                    prop_assert!(lane.queue.iter().all(|e| b.lane_of(e.tp) == i));
                }
            }
        }
    }
}
