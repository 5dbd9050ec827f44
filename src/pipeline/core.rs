//! The decisions that can lose or double a record, as plain code: no
//! rdkafka, no sqlx, no tokio. The consumer loop and the writer are shells
//! that feed these methods what happened and carry out what they answer;
//! the simulation in `super::sim` drives the very same methods.
//!
//! The invariant they keep: a stored offset never passes a record that is
//! not in its table, in the dead letters or in the dropped count. The last
//! line of defence is [`PipelineState::spans`]: per partition, a batch's
//! pieces must chain without a hole from the stored position, or the batch
//! is not written for that partition (it is re-read instead).
//!
//! Words used here:
//! - *epoch*: one tenure of a partition (an assignment, or a re-read after a
//!   fence or a gap). Entries remember theirs; once it changes they are stale.
//! - *refusal*: the buffer is full under `block`; the record is not taken and
//!   the partition is re-read from it after a seek (`awaiting_seek`). What is
//!   buffered of the partition stays good: same epoch.
//! - *hold*: a record cannot be decoded yet (its schema registry is
//!   unreachable). Like a refusal it is not taken and its partition is
//!   re-read from it; unlike one, the whole pipeline pauses until the
//!   registry's backoff has passed, whatever the buffer holds.
//! - *span*: what a batch covers of one partition, `[first, last]`, and the
//!   stored position it starts from (the fencing condition).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::config::Strategy;
use crate::model::offsets::{is_new, Covered, NextOffset};
use crate::model::{Tp, TpMap};
use crate::pipeline::buffer::{Batch, Entry};
use crate::pipeline::{pause_decision, Admission, PauseDecision, PipelineState, Settings};

/// What the writer and the consumer loop know about a partition this
/// instance owns.
#[derive(Debug, Clone)]
pub struct PartState {
    /// Changes on every assignment and every re-read (fence, gap). A batch
    /// remembers the epoch its records were read under; once it changes, the
    /// batch's view of the partition is stale and must not be applied.
    pub epoch: u64,
    /// `next_offset` in `sluice.offsets` as this instance last saw or wrote
    /// it; `None` when there is no row yet. The fencing condition.
    pub stored: Option<NextOffset>,
    /// Without a stored row: the first offset taken under this epoch, where
    /// the first batch must start.
    pub origin: Option<i64>,
    /// The next offset the buffer expects from Kafka (`None`: take whatever
    /// comes first). Records below it are redeliveries and are ignored;
    /// offsets between it and the next record do not exist in the log.
    pub expected: Option<NextOffset>,
    /// Set after a refusal, a fence or a gap: everything polled for this
    /// partition is ignored until the consumer loop has seeked it to
    /// `expected`. Entries already buffered stay valid (same epoch).
    pub awaiting_seek: bool,
}

impl PartState {
    /// Where the next batch of this partition must start.
    pub fn base(&self) -> Option<i64> {
        self.stored.map(|s| s.0).or(self.origin)
    }
}

/// What the core decided about a polled record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Not taken and nothing to do: the partition is not held, waits for a
    /// seek, the record was already taken, or shutdown began.
    Ignored,
    /// Taken (buffered or deliberately dropped).
    Taken(Admission),
    /// The buffer is full (`block`): not taken, not covered. The shell must
    /// seek the partition to `seek_to` and report it with
    /// [`PipelineState::seeked`].
    Refused { epoch: u64, seek_to: NextOffset },
}

/// One partition's share of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub epoch: u64,
    pub covered: Covered,
    /// The stored position the batch starts from: the fencing condition.
    pub from: Option<NextOffset>,
}

/// A partition whose share of a batch does not chain from its stored
/// position: writing it would commit a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub tp: Tp,
    pub epoch: u64,
    /// Where the piece should have started (`None`: nothing known).
    pub expected: Option<i64>,
    /// Where it did start.
    pub found: i64,
}

/// What a batch may write, after stale entries were dropped.
#[derive(Debug, Default)]
pub struct Spans {
    pub spans: BTreeMap<Tp, Span>,
    /// Partitions left out because their pieces do not chain. The shell
    /// re-reads each ([`PipelineState::reread`]) and retries the batch.
    pub gaps: Vec<Gap>,
}

impl PipelineState {
    /// A fresh epoch, unique within this pipeline.
    fn new_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    /// Takes a partition on assignment, starting from `stored` (`None`: no
    /// row yet, the reset policy decides). Returns its epoch.
    pub fn assign(&mut self, tp: Tp, stored: Option<NextOffset>) -> u64 {
        let epoch = self.new_epoch();
        self.partitions.insert(
            tp,
            PartState {
                epoch,
                stored,
                origin: None,
                expected: stored,
                awaiting_seek: false,
            },
        );
        epoch
    }

    /// Forgets a revoked partition and what is queued of it (not committed:
    /// the next owner reads it again). Returns how many entries were dropped.
    pub fn revoke(&mut self, tp: Tp) -> usize {
        self.partitions.remove(&tp);
        self.buffer.purge(tp)
    }

    /// Whether `tp` is held under `epoch`.
    pub fn holds(&self, tp: Tp, epoch: u64) -> bool {
        self.partitions.get(&tp).is_some_and(|p| p.epoch == epoch)
    }

    /// The state of `tp` when a polled record at `offset` is one to act
    /// on: the partition is held, not waiting for a seek, the record is new
    /// to it, and shutdown has not begun (shutdown sets `draining` under the
    /// lock before asking the writer for its final flush: a record taken
    /// now could land in the buffer after that flush; the next owner
    /// re-reads it). `None`: ignore the record.
    fn expecting(&mut self, tp: Tp, offset: i64) -> Option<&mut PartState> {
        if self.draining {
            return None;
        }
        self.partitions
            .get_mut(&tp)
            .filter(|p| !p.awaiting_seek && is_new(p.expected, offset))
    }

    /// Offers a polled record (its entry built by the shell; epoch and
    /// `from` are set here).
    pub fn offer(&mut self, mut entry: Entry, s: &Settings, now: Instant) -> Offer {
        let (tp, offset) = (entry.tp, entry.offset);
        let Some(part) = self.expecting(tp, offset) else {
            return Offer::Ignored;
        };
        let epoch = part.epoch;
        entry.epoch = epoch;
        entry.from = part.expected.map_or(offset, |e| e.0);
        let admission = self.admit(entry, s, now);
        let part = self.partitions.get_mut(&tp).expect("checked above");
        if admission == Admission::Refused {
            // Neither buffered nor covered: re-read from this record. What is
            // buffered of the partition stays (same epoch), and `expected`
            // stays too, so the re-read record chains on to it.
            part.awaiting_seek = true;
            return Offer::Refused {
                epoch,
                seek_to: NextOffset(offset),
            };
        }
        if part.expected.is_none() && part.stored.is_none() {
            part.origin = Some(offset);
        }
        part.expected = Some(NextOffset(offset + 1));
        Offer::Taken(admission)
    }

    /// A polled record that cannot be decoded before `until` (its schema
    /// is unavailable): not taken, not covered. Answers like a refusal
    /// (`Refused`: seek the partition back to the record; `Ignored` when
    /// the record is not one the partition expects), and holds the
    /// pipeline: [`PipelineState::should_pause`] pauses it and
    /// [`PipelineState::resume`] keeps it paused until `until`.
    pub fn hold(&mut self, tp: Tp, offset: i64, until: Instant) -> Offer {
        let Some(part) = self.expecting(tp, offset) else {
            return Offer::Ignored;
        };
        part.awaiting_seek = true;
        let epoch = part.epoch;
        self.held_until = Some(self.held_until.map_or(until, |u| u.max(until)));
        Offer::Refused {
            epoch,
            seek_to: NextOffset(offset),
        }
    }

    /// After an offer: whether the pipeline's partitions must be paused now
    /// (at the high watermark, or held). Only `block` pauses for a full
    /// buffer: the shedding strategies keep consuming and drop. A hold
    /// pauses under every strategy.
    pub fn should_pause(&mut self, s: &Settings) -> bool {
        if self.held_until.is_some() && !self.paused && !self.draining {
            self.paused = true;
            return true;
        }
        let pause = s.strategy == Strategy::Block
            && pause_decision(
                self.paused,
                self.buffer.utilization(),
                s.high_watermark,
                s.low_watermark,
            ) == PauseDecision::Pause;
        if pause {
            self.paused = true;
        }
        pause
    }

    /// Whether the paused partitions resume (at the low watermark, and not
    /// before a hold's time; never while draining). `Some` with where each continues: the next offset
    /// its buffer expects, for the shell to seek to (librdkafka drops what
    /// it prefetched when pausing). Partitions with nothing read yet, or
    /// waiting for a seek of their own, are left out.
    pub fn resume(&mut self, s: &Settings, now: Instant) -> Option<Vec<(Tp, NextOffset)>> {
        match self.held_until {
            Some(until) if now < until => return None,
            Some(_) => self.held_until = None,
            None => {}
        }
        if self.draining
            || pause_decision(
                self.paused,
                self.buffer.utilization(),
                s.high_watermark,
                s.low_watermark,
            ) != PauseDecision::Resume
        {
            return None;
        }
        self.paused = false;
        let mut positions: Vec<(Tp, NextOffset)> = self
            .partitions
            .iter()
            .filter_map(|(tp, p)| match (p.expected, p.awaiting_seek) {
                (Some(next), false) => Some((*tp, next)),
                _ => None,
            })
            .collect();
        positions.sort_unstable();
        Some(positions)
    }

    /// After an offer of a record of `tp`: the writer lanes to wake. The
    /// record's lane when its first entry is queued or a batch is full;
    /// after records were shed or evicted, also every lane with only
    /// covered offsets and nothing queued (nothing else would wake it, and
    /// its stored offsets would lag).
    pub fn lanes_to_wake(&self, tp: Tp, offer: Offer, s: &Settings) -> Vec<usize> {
        let buffer = &self.buffer;
        let lane = buffer.lane_of(tp);
        let queued = buffer.queued_in(lane);
        let mut wake = Vec::new();
        if queued == 1 || queued >= s.batch_size || buffer.queued_bytes_in(lane) >= s.batch_bytes {
            wake.push(lane);
        }
        if matches!(
            offer,
            Offer::Taken(Admission::Dropped { .. } | Admission::Buffered { evicted: 1.. })
        ) {
            // Never the record's lane again: that one has something queued.
            wake.extend((0..buffer.lanes()).filter(|l| buffer.queued_in(*l) == 0 && buffer.has_covered_ahead(*l)));
        }
        wake
    }

    /// Shutdown begins: from now on nothing is taken ([`PipelineState::offer`]
    /// answers `Ignored`), so the writer's final flush holds everything
    /// that will be committed; what is not flushed by the deadline is
    /// simply not committed, and the next owner reads it again.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// The shell seeked `tp` as asked under `epoch`: records flow again.
    pub fn seeked(&mut self, tp: Tp, epoch: u64) {
        if let Some(p) = self.partitions.get_mut(&tp) {
            if p.epoch == epoch {
                p.awaiting_seek = false;
            }
        }
    }

    /// Drops the entries of `batch` whose partition was revoked or re-read
    /// since they were read, and works out, per remaining partition, what
    /// the batch covers and the stored position it starts from. A partition
    /// whose pieces do not chain from that position is left out and
    /// reported as a gap.
    pub fn spans(&mut self, batch: &mut Batch) -> Spans {
        let held = |parts: &TpMap<PartState>, tp: &Tp, epoch: u64| parts.get(tp).is_some_and(|p| p.epoch == epoch);
        if batch.entries.iter().any(|e| !held(&self.partitions, &e.tp, e.epoch)) {
            let (keep, stale): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut batch.entries)
                .into_iter()
                .partition(|e| held(&self.partitions, &e.tp, e.epoch));
            self.buffer.release(&stale);
            batch.entries = keep;
        }
        batch.covered.retain(|a| held(&self.partitions, &a.tp, a.epoch));
        // Per partition, the pieces `[from, last]` the batch accounts for.
        let mut pieces: BTreeMap<Tp, (u64, Vec<(i64, i64)>)> = BTreeMap::new();
        let entries = batch.entries.iter().map(|e| (e.tp, e.epoch, e.from, e.offset));
        let ahead = batch.covered.iter().map(|a| (a.tp, a.epoch, a.from, a.last));
        for (tp, epoch, from, last) in ahead.chain(entries) {
            pieces.entry(tp).or_insert((epoch, Vec::new())).1.push((from, last));
        }
        let mut out = Spans::default();
        for (tp, (epoch, mut pieces)) in pieces {
            pieces.sort_unstable();
            let part = &self.partitions[&tp];
            let mut next = part.base();
            let mut hole = None;
            for &(from, last) in &pieces {
                if next != Some(from) {
                    hole = Some((next, from));
                    break;
                }
                next = Some(last + 1);
            }
            match hole {
                Some((expected, found)) => out.gaps.push(Gap {
                    tp,
                    epoch,
                    expected,
                    found,
                }),
                None => {
                    let (first, last) = (pieces[0].0, pieces[pieces.len() - 1].1);
                    out.spans.insert(
                        tp,
                        Span {
                            epoch,
                            covered: Covered { first, last },
                            from: part.stored,
                        },
                    );
                }
            }
        }
        if !out.gaps.is_empty() {
            // Not written: the partition is re-read, so its entries go.
            let (keep, gapped): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut batch.entries)
                .into_iter()
                .partition(|e| out.spans.contains_key(&e.tp));
            self.buffer.release(&gapped);
            batch.entries = keep;
            batch.covered.retain(|a| out.spans.contains_key(&a.tp));
        }
        out
    }

    /// A batch committed: its spans are the stored positions now, its
    /// entries leave the buffer.
    pub fn committed(&mut self, spans: &BTreeMap<Tp, Span>, entries: &[Entry]) {
        for (tp, span) in spans {
            if let Some(p) = self.partitions.get_mut(tp) {
                if p.epoch == span.epoch {
                    p.stored = Some(span.covered.next());
                }
            }
        }
        self.buffer.release(entries);
    }

    /// The stored offset of `tp` moved outside a flush while nothing of it
    /// was buffered (a skip past an out-of-range gap, or another owner):
    /// the partition continues from `stored`, under the same epoch.
    pub fn moved(&mut self, tp: Tp, epoch: u64, stored: Option<NextOffset>) {
        if let Some(p) = self.partitions.get_mut(&tp).filter(|p| p.epoch == epoch) {
            p.stored = stored;
            p.origin = None;
            p.expected = stored;
        }
    }

    /// Re-reads `tp` from `stored` (the position in `sluice.offsets` now):
    /// after a fence (another owner moved it) or a gap. Forgets what is
    /// buffered of it; the shell seeks it with the returned epoch. `None`
    /// when the partition was revoked or re-assigned meanwhile (the new
    /// assignment read its position afresh).
    pub fn reread(&mut self, tp: Tp, epoch: u64, stored: Option<NextOffset>) -> Option<u64> {
        if !self.holds(tp, epoch) {
            return None;
        }
        let epoch = self.new_epoch();
        let p = self.partitions.get_mut(&tp).expect("held");
        p.epoch = epoch;
        p.stored = stored;
        p.origin = None;
        p.expected = stored;
        p.awaiting_seek = true;
        self.buffer.purge(tp);
        Some(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TopicId;

    fn entry(p: i32, offset: i64, len: usize) -> Entry {
        let tp = Tp {
            topic: TopicId(0),
            partition: p,
        };
        Entry::new(
            tp,
            0,
            offset,
            Some(vec![b'r'; len].into_boxed_slice()),
            Default::default(),
        )
    }

    /// A lane whose partition's records are all shed while another lane
    /// fills the buffer has nothing queued, only covered offsets: its
    /// writer is woken for them, or its stored offsets would lag for as
    /// long as it sleeps.
    #[test]
    fn a_lane_with_only_shed_offsets_is_woken() {
        let s = Settings {
            writers: 2,
            ..crate::pipeline::test_settings(Strategy::DropNewest, 4, 1 << 20)
        };
        let mut state = PipelineState::with_lanes(s.limits, s.writers);
        let now = Instant::now();
        let (p0, p1) = (entry(0, 0, 1).tp, entry(1, 0, 1).tp);
        assert_ne!(state.buffer.lane_of(p0), state.buffer.lane_of(p1));
        state.assign(p0, Some(NextOffset(0)));
        state.assign(p1, Some(NextOffset(0)));
        for offset in 0..4 {
            let offer = state.offer(entry(0, offset, 10), &s, now);
            assert_eq!(offer, Offer::Taken(Admission::Buffered { evicted: 0 }));
        }
        // Partition 1's record finds the buffer full: dropped, its offset
        // covered ahead in partition 1's lane, which has nothing queued.
        let offer = state.offer(entry(1, 0, 10), &s, now);
        assert_eq!(offer, Offer::Taken(Admission::Dropped { rows: 1 }));
        let lane1 = state.buffer.lane_of(p1);
        assert!(state.buffer.has_covered_ahead(lane1));
        assert_eq!(state.lanes_to_wake(p1, offer, &s), vec![lane1]);
        // What that lane's writer takes covers the dropped offset.
        let mut batch = state.buffer.take_batch(lane1, 10, 1 << 20, now);
        let spans = state.spans(&mut batch);
        assert_eq!(spans.spans[&p1].covered.next(), NextOffset(1));
        // A plain buffered record wakes its lane only at its first entry or a full batch.
        let offer = Offer::Taken(Admission::Buffered { evicted: 0 });
        assert_eq!(state.lanes_to_wake(p0, offer, &s), Vec::<usize>::new());
    }

    /// Pause at the high watermark, resume at the low one with the next
    /// offset of each partition to seek to, never while draining; a
    /// draining pipeline takes nothing.
    #[test]
    fn the_core_pauses_resumes_and_drains() {
        let s = crate::pipeline::test_settings(Strategy::Block, 10, 1 << 20);
        let mut state = PipelineState::new(s.limits);
        let now = Instant::now();
        state.assign(entry(0, 0, 1).tp, Some(NextOffset(0)));
        state.assign(entry(1, 0, 1).tp, None);
        let mut paused_at = None;
        for offset in 0..8 {
            assert!(matches!(state.offer(entry(0, offset, 10), &s, now), Offer::Taken(_)));
            if state.should_pause(&s) {
                paused_at.get_or_insert(offset);
            }
        }
        assert_eq!(paused_at, Some(7), "8 of 10 records is the 0.8 high watermark");
        assert!(state.paused);
        assert_eq!(state.resume(&s, Instant::now()), None, "not at the low watermark yet");
        let mut batch = state.buffer.take_batch(0, 4, 1 << 20, now);
        let spans = state.spans(&mut batch);
        assert!(spans.gaps.is_empty());
        state.committed(&spans.spans, &batch.entries);
        assert_eq!(state.buffer.records(), 4);
        assert_eq!(
            state.resume(&s, Instant::now()),
            Some(vec![(entry(0, 0, 1).tp, NextOffset(8))]),
            "partition 1 has read nothing yet: it stays where librdkafka is"
        );
        assert!(!state.paused);
        assert_eq!(state.partitions[&entry(0, 0, 1).tp].stored, Some(NextOffset(4)));
        state.drain();
        assert_eq!(state.offer(entry(1, 0, 10), &s, now), Offer::Ignored);
        state.paused = true;
        assert_eq!(state.resume(&s, Instant::now()), None, "never resumes while draining");
    }
}
