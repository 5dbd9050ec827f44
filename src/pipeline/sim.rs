//! A deterministic simulation of the sans-IO core ([`super::core`]).
//!
//! A seeded scheduler interleaves polls (with librdkafka-like prefetch:
//! records keep arriving after a refusal until the seek is carried out),
//! refusals and seeks, pause/resume at the watermarks, batch takes, flush
//! transactions split in two steps (so a rebalance can fall between a
//! batch's spans and its commit: a zombie write) on one to three writer
//! lanes per member (each lane's batch in flight beside the others'), fences, eager or
//! cooperative (incremental, with a bounded flush of the revoked partitions) rebalances
//! among one to three members, graceful stops (drain, final flush, leave), crashes
//! and restarts — against an in-memory log (with
//! holes, as after compaction) and an in-memory store that implements the
//! fenced offset protocol of DESIGN.md. After every step a checker asserts:
//! no (partition, offset) is written twice, and no stored offset passes a
//! record that is in neither the rows nor the dead letters. At the end
//! everything is drained and every record must be in exactly one of them.
//! It also fails if the core's gap check ever fires: that check is the last
//! line of defence, so tripping it means a decision upstream was wrong.
//!
//! `SLUICE_SIM_SEEDS` (default 2,000) sets how many seeds the test runs;
//! `SLUICE_SIM_SEED` replays one. A failure prints its seed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use crate::config::Strategy;
use crate::model::dead_letter::{DeadLetter, DeadLetterClass};
use crate::model::offsets::NextOffset;
use crate::model::{TopicId, Tp};
use crate::pipeline::buffer::{Batch, Entry};
use crate::pipeline::{Offer, PipelineState, Settings, Span};

/// A small deterministic generator (xorshift64*): the same seed, the same run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One record of the log.
#[derive(Debug, Clone, Copy)]
struct Record {
    offset: i64,
    len: usize,
    poison: bool,
}

/// The store: `sluice.offsets`, the table and the dead letters.
#[derive(Debug, Default)]
struct Store {
    next: HashMap<i32, i64>,
    rows: HashSet<(i32, i64)>,
    dead: HashSet<(i32, i64)>,
    /// Offsets covered by a committed batch without a row or a dead letter:
    /// shed by the strategy (never under `block`).
    dropped: HashSet<(i32, i64)>,
}

/// A flush between its spans and its commit.
struct InFlight {
    batch: Batch,
    spans: BTreeMap<Tp, Span>,
}

/// One group member: the core plus what its shells hold.
struct Member {
    state: PipelineState,
    /// Per assigned partition, librdkafka's fetch position.
    position: HashMap<i32, usize>,
    /// Seeks asked by the core, not carried out yet: (partition, epoch, to).
    seeks: Vec<(i32, u64, Option<NextOffset>)>,
    /// One writer per lane of the buffer, each with its own batch in flight.
    lanes: Vec<Lane>,
    /// librdkafka's application pause flag per partition: set by pause,
    /// cleared only by resume — it survives unassign and assign, so the
    /// shell resumes what it is assigned for a flowing pipeline.
    app_paused: HashSet<i32>,
}

/// What one writer lane holds.
#[derive(Default)]
struct Lane {
    taken: Option<Batch>,
    /// The later part of a batch split after timeouts (as the writer does):
    /// still in flight, written once the part before it committed.
    rest: Vec<Entry>,
    inflight: Option<InFlight>,
}

impl Lane {
    fn idle(&self) -> bool {
        self.taken.is_none() && self.inflight.is_none() && self.rest.is_empty()
    }
}

pub struct Sim {
    rng: Rng,
    settings: Settings,
    log: Vec<Vec<Record>>,
    store: Store,
    members: Vec<Option<Member>>,
    /// Which member the group assigned each partition to.
    owner: Vec<Option<usize>>,
    pub steps: u64,
    pub checks: u64,
    pub gaps: u64,
    pub fences: u64,
    pub refusals: u64,
    pub rebalances: u64,
    /// Rebalances are incremental (cooperative) in this run, else eager.
    pub cooperative: bool,
    pub crashes: u64,
    pub stops: u64,
    /// Batches that went in flight while another lane's was.
    pub overlaps: u64,
    /// The schema registry is unreachable: records whose schema is not
    /// cached (every third offset) cannot be decoded and are held.
    registry_down: bool,
    pub registry_outages: u64,
    pub holds: u64,
    /// Virtual time for holds: one millisecond per step.
    clock: Instant,
}

const TOPIC: TopicId = TopicId(0);

fn tp(partition: i32) -> Tp {
    Tp {
        topic: TOPIC,
        partition,
    }
}

fn settings(rng: &mut Rng) -> Settings {
    let strategy = match rng.below(8) {
        0 => Strategy::DropOldest,
        1 => Strategy::DropNewest,
        2 => Strategy::Sample,
        _ => Strategy::Block,
    };
    let high = [1.0, 0.9, 0.8][rng.below(3) as usize];
    Settings {
        batch_size: 1 + rng.below(12) as usize,
        batch_bytes: 300 + rng.below(2_000) as usize,
        high_watermark: high,
        low_watermark: high / 2.0,
        sample_rate: 2 + rng.below(3) as u32,
        writers: 1 + rng.below(3) as usize,
        ..super::test_settings(strategy, 4 + rng.below(30) as usize, 1_000 + rng.below(4_000) as usize)
    }
}

impl Member {
    /// Partition `p` was revoked: the core forgets it, the shell its fetch
    /// position and pending seeks (librdkafka's pause flag stays).
    fn revoked(&mut self, p: i32) {
        self.state.revoke(tp(p));
        self.position.remove(&p);
        self.seeks.retain(|s| s.0 != p);
    }

    /// The shell after assigning `p`: a flowing pipeline's partition is
    /// resumed, a paused pipeline's paused (the loop re-applies pauses).
    fn assigned(&mut self, p: i32) {
        if self.state.paused {
            self.app_paused.insert(p);
        } else {
            self.app_paused.remove(&p);
        }
    }

    fn new(settings: &Settings) -> Member {
        Member {
            state: PipelineState::with_lanes(settings.limits, settings.writers),
            position: HashMap::new(),
            seeks: Vec::new(),
            lanes: (0..settings.writers).map(|_| Lane::default()).collect(),
            app_paused: HashSet::new(),
        }
    }
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let settings = settings(&mut rng);
        let partitions = 1 + rng.below(4) as i32;
        let mut log = Vec::new();
        for _ in 0..partitions {
            let mut records = Vec::new();
            let mut offset = 0;
            for _ in 0..(20 + rng.below(120)) {
                // Holes, as compaction and transaction markers leave.
                offset += if rng.chance(10) { 1 + rng.below(3) as i64 } else { 0 };
                let big = rng.chance(10);
                records.push(Record {
                    offset,
                    len: if big {
                        settings.limits.max_bytes / 3
                    } else {
                        10 + rng.below(200) as usize
                    },
                    poison: rng.chance(5),
                });
                offset += 1;
            }
            log.push(records);
        }
        let members = if rng.chance(50) { 1 } else { 2 + rng.below(2) as usize };
        let cooperative = rng.chance(50);
        let mut sim = Sim {
            rng,
            settings,
            log,
            store: Store::default(),
            members: (0..members).map(|_| None).collect(),
            owner: vec![None; partitions as usize],
            steps: 0,
            checks: 0,
            gaps: 0,
            fences: 0,
            refusals: 0,
            rebalances: 0,
            cooperative,
            crashes: 0,
            stops: 0,
            overlaps: 0,
            registry_down: false,
            registry_outages: 0,
            holds: 0,
            clock: Instant::now(),
        };
        for m in 0..members {
            sim.members[m] = Some(Member::new(&sim.settings));
        }
        sim.eager_rebalance();
        sim
    }

    fn partitions(&self) -> i32 {
        self.log.len() as i32
    }

    /// Index of the first record at or after `offset`.
    fn index_of(&self, p: i32, offset: i64) -> usize {
        self.log[p as usize].partition_point(|r| r.offset < offset)
    }

    /// A rebalance under the seed's protocol.
    fn rebalance(&mut self) -> Result<(), String> {
        if self.cooperative {
            self.cooperative_rebalance()
        } else {
            self.eager_rebalance();
            Ok(())
        }
    }

    /// Incremental cooperative rebalance: the partitions are dealt out
    /// again among the live members; only those whose owner changes move.
    /// The old owner flushes what it holds of them — a few rounds of
    /// batches of those partitions only, as many as its revoke deadline
    /// allows (maybe none, maybe cut short with a batch in flight: a
    /// zombie) — and forgets them; the new owner starts them from the
    /// store. The partitions that stay are not touched at all.
    fn cooperative_rebalance(&mut self) -> Result<(), String> {
        self.rebalances += 1;
        let live: Vec<usize> = (0..self.members.len()).filter(|m| self.members[*m].is_some()).collect();
        let shift = self.rng.below(live.len().max(1) as u64) as usize;
        let target = |p: i32| (!live.is_empty()).then(|| live[(p as usize + shift) % live.len()]);
        // Revoke phase, per old owner that is still alive.
        for m in 0..self.members.len() {
            if self.members[m].is_none() {
                continue;
            }
            let moving: Vec<i32> = (0..self.partitions())
                .filter(|p| self.owner[*p as usize] == Some(m) && target(*p) != Some(m))
                .collect();
            if moving.is_empty() {
                continue;
            }
            let only: HashSet<Tp> = moving.iter().map(|p| tp(*p)).collect();
            for _ in 0..self.rng.below(4) {
                for l in 0..self.settings.writers {
                    if self.member(m).lanes[l].idle() {
                        self.take_of(m, l, Some(&only));
                    }
                    self.write_spans(m, l)?;
                    self.commit(m, l)?;
                }
            }
            let member = self.member(m);
            for p in moving {
                member.revoked(p);
            }
        }
        // Assign phase: what moved, or lost its (dead) owner.
        for p in 0..self.partitions() {
            let old = self.owner[p as usize];
            let new = target(p);
            let old_alive = old.is_some_and(|m| self.members[m].is_some());
            if old == new && old_alive {
                continue;
            }
            self.owner[p as usize] = new;
            let Some(m) = new else { continue };
            self.assign_to(m, p);
        }
        Ok(())
    }

    /// Member `m` is assigned partition `p`: it starts from the store, and
    /// the shell resumes or pauses it as its pipeline is.
    fn assign_to(&mut self, m: usize, p: i32) {
        let stored = self.store.next.get(&p).copied().map(NextOffset);
        let start = stored.map_or(0, |s| self.index_of(p, s.0));
        let member = self.members[m].as_mut().expect("live");
        member.state.assign(tp(p), stored);
        member.position.insert(p, start);
        member.assigned(p);
    }

    /// Eager rebalance: every live member loses everything, then the
    /// partitions are dealt out again, each starting from the store. A
    /// member's in-flight batch is *not* flushed: it may still try to commit
    /// (a zombie) and must be fenced.
    fn eager_rebalance(&mut self) {
        self.rebalances += 1;
        for (p, owner) in self.owner.iter_mut().enumerate() {
            if let Some(m) = owner.take() {
                if let Some(member) = self.members[m].as_mut() {
                    member.revoked(p as i32);
                }
            }
        }
        let live: Vec<usize> = (0..self.members.len()).filter(|m| self.members[*m].is_some()).collect();
        if live.is_empty() {
            return;
        }
        let shift = self.rng.below(live.len() as u64) as usize;
        for p in 0..self.partitions() {
            let m = live[(p as usize + shift) % live.len()];
            self.owner[p as usize] = Some(m);
            self.assign_to(m, p);
        }
    }

    /// One scheduled step.
    pub fn step(&mut self) -> Result<(), String> {
        self.steps += 1;
        self.clock += std::time::Duration::from_millis(1);
        if self.rng.below(400) == 0 {
            self.registry_down = !self.registry_down;
            self.registry_outages += u64::from(self.registry_down);
        }
        let m = self.rng.below(self.members.len() as u64) as usize;
        let roll = self.rng.below(1005);
        if self.members[m].is_none() {
            if roll < 300 {
                // Restart: a new incarnation joins, triggering a rebalance.
                self.members[m] = Some(Member::new(&self.settings));
                self.rebalance()?;
            }
            return self.verify();
        }
        let l = self.rng.below(self.settings.writers as u64) as usize;
        match roll {
            0..=449 => self.poll(m),
            450..=549 => self.seek(m),
            550..=649 => self.take(m, l),
            650..=729 => self.write_spans(m, l)?,
            730..=749 => self.split(m, l),
            750..=869 => self.commit(m, l)?,
            870..=979 => self.resume(m),
            980..=989 => self.rebalance()?,
            990..=994 => self.stop(m)?,
            // 995..=1004
            _ => {
                // Crash: everything in memory is gone.
                self.crashes += 1;
                self.members[m] = None;
                self.rebalance()?;
            }
        }
        self.verify()
    }

    /// A graceful stop (SIGTERM): the member drains — takes nothing more,
    /// the writer flushes what is buffered (as many rounds as it gets
    /// before its deadline) — then leaves the group; what it did not commit
    /// is re-read by the next owner.
    fn stop(&mut self, m: usize) -> Result<(), String> {
        self.stops += 1;
        self.member(m).state.drain();
        let rounds = self.rng.below(40);
        for _ in 0..rounds {
            // Records keep arriving from the fetch queue: the core ignores them.
            self.poll(m);
            for l in 0..self.settings.writers {
                self.take(m, l);
                self.write_spans(m, l)?;
                self.commit(m, l)?;
            }
        }
        self.members[m] = None;
        self.rebalance()
    }

    fn member(&mut self, m: usize) -> &mut Member {
        self.members[m].as_mut().expect("live member")
    }

    /// The consumer loop polls one record (prefetched: it keeps coming even
    /// while the core waits for a seek) and applies pause decisions.
    fn poll(&mut self, m: usize) {
        let settings = self.settings.clone();
        let now = Instant::now();
        let owned: Vec<i32> = {
            let member = self.member(m);
            let mut v: Vec<i32> = member.position.keys().copied().collect();
            v.sort_unstable();
            v
        };
        if owned.is_empty() {
            return;
        }
        let p = owned[self.rng.below(owned.len() as u64) as usize];
        let log = &self.log[p as usize];
        let member = self.members[m].as_mut().expect("live member");
        if member.state.paused || member.app_paused.contains(&p) {
            return;
        }
        let at = member.position[&p];
        let Some(record) = log.get(at).copied() else {
            return;
        };
        member.position.insert(p, at + 1);
        // While the registry is down, records whose schema is not cached
        // (every third offset) cannot be decoded: held, re-read after the backoff.
        let held = self.registry_down && !record.poison && record.offset % 3 == 0;
        let offer = if held {
            let until = self.clock + std::time::Duration::from_millis(1 + self.rng.below(20));
            member.state.hold(tp(p), record.offset, until)
        } else {
            let mut entry = Entry::new(tp(p), 0, record.offset, None, Default::default());
            if record.poison {
                entry.dead_letter = Some(Box::new(DeadLetter {
                    key: None,
                    value: Some(vec![b'?'; record.len].into_boxed_slice()),
                    headers: "[]".into(),
                    class: DeadLetterClass::Decode,
                    sqlstate: None,
                    error: "poison".into(),
                }));
            } else {
                entry.row = Some(vec![b'r'; record.len].into_boxed_slice());
            }
            member.state.offer(entry, &settings, now)
        };
        match offer {
            Offer::Refused { epoch, seek_to } => {
                match held {
                    true => self.holds += 1,
                    false => self.refusals += 1,
                }
                member.seeks.push((p, epoch, Some(seek_to)));
            }
            Offer::Ignored | Offer::Taken(_) => {}
        }
        member.state.refresh(&settings);
        if member.state.should_pause(&settings) {
            // The loop pauses every partition the pipeline holds.
            let held: Vec<i32> = member.state.partitions.keys().map(|tp| tp.partition).collect();
            member.app_paused.extend(held);
        }
    }

    /// The consumer loop carries out one asked-for seek.
    fn seek(&mut self, m: usize) {
        let member = self.members[m].as_mut().expect("live member");
        if member.seeks.is_empty() {
            return;
        }
        let (p, epoch, to) = member.seeks.remove(0);
        if !member.state.holds(tp(p), epoch) {
            return;
        }
        let at = to.map_or(0, |t| self.log[p as usize].partition_point(|r| r.offset < t.0));
        member.position.insert(p, at);
        member.state.seeked(tp(p), epoch);
    }

    /// Resume at the low watermark; like the loop, seek to where each
    /// partition continues (which discards prefetched records).
    fn resume(&mut self, m: usize) {
        let settings = self.settings.clone();
        let now = self.clock;
        let member = self.members[m].as_mut().expect("live member");
        let Some(positions) = member.state.resume(&settings, now) else {
            return;
        };
        // The loop resumes every partition the pipeline holds.
        for tp in member.state.partitions.keys() {
            member.app_paused.remove(&tp.partition);
        }
        for (tp, NextOffset(next)) in positions {
            let at = self.log[tp.partition as usize].partition_point(|r| r.offset < next);
            member.position.insert(tp.partition, at);
        }
    }

    /// Lane `l`'s writer takes a batch of its lane.
    fn take(&mut self, m: usize, l: usize) {
        self.take_of(m, l, None);
    }

    /// Lane `l`'s writer takes a batch of its lane, of `only` these
    /// partitions when given (the flush of an incremental revoke).
    fn take_of(&mut self, m: usize, l: usize, only: Option<&HashSet<Tp>>) {
        let rows = 1 + self.rng.below(self.settings.batch_size as u64) as usize;
        let bytes = self.settings.batch_bytes;
        let member = self.member(m);
        let lane = &mut member.lanes[l];
        if lane.taken.is_some() || lane.inflight.is_some() {
            return;
        }
        let batch = member.state.buffer.take_batch_of(l, only, rows, bytes, Instant::now());
        if !batch.entries.is_empty() || !batch.covered.is_empty() {
            lane.taken = Some(batch);
        }
    }

    /// The writer's batch keeps timing out: it goes on with its first half;
    /// the second waits, in flight, behind it.
    fn split(&mut self, m: usize, l: usize) {
        let lane = &mut self.member(m).lanes[l];
        let Some(batch) = lane.taken.as_mut() else {
            return;
        };
        if batch.entries.len() < 2 {
            return;
        }
        let mut tail = batch.entries.split_off(batch.entries.len() / 2);
        tail.append(&mut lane.rest);
        lane.rest = tail;
    }

    /// After a commit (or when nothing of the batch is left to write), the
    /// writer goes on with the rest of a split batch.
    fn next_of_split(&mut self, m: usize, l: usize) {
        let lane = &mut self.member(m).lanes[l];
        if lane.taken.is_none() && lane.inflight.is_none() && !lane.rest.is_empty() {
            lane.taken = Some(Batch {
                entries: std::mem::take(&mut lane.rest),
                covered: Vec::new(),
            });
        }
    }

    /// The writer works out the spans of its batch (and re-reads gapped
    /// partitions from the store).
    fn write_spans(&mut self, m: usize, l: usize) -> Result<(), String> {
        let Some(mut batch) = self.member(m).lanes[l].taken.take() else {
            return Ok(());
        };
        let spans = self.member(m).state.spans(&mut batch);
        // A partition has one batch in flight: never in two lanes at once.
        for (other, lane) in self.member(m).lanes.iter().enumerate() {
            if other == l {
                continue;
            }
            let held = lane.inflight.iter().map(|f| &f.batch).chain(lane.taken.iter());
            let tps = held
                .flat_map(|b| b.entries.iter().map(|e| e.tp).chain(b.covered.iter().map(|a| a.tp)))
                .chain(lane.rest.iter().map(|e| e.tp));
            for tp in tps {
                if spans.spans.contains_key(&tp) {
                    return Err(format!(
                        "partition {} is written by lane {l} while lane {other} holds a batch of it",
                        tp.partition
                    ));
                }
            }
        }
        for gap in &spans.gaps {
            self.gaps += 1;
            let stored = self.store.next.get(&gap.tp.partition).copied().map(NextOffset);
            let member = self.member(m);
            if let Some(epoch) = member.state.reread(gap.tp, gap.epoch, stored) {
                member.seeks.push((gap.tp.partition, epoch, stored));
            }
        }
        if spans.spans.is_empty() {
            self.member(m).state.buffer.release(&batch.entries);
            self.next_of_split(m, l);
            return Ok(());
        }
        if self.member(m).lanes.iter().any(|lane| lane.inflight.is_some()) {
            self.overlaps += 1;
        }
        self.member(m).lanes[l].inflight = Some(InFlight {
            batch,
            spans: spans.spans,
        });
        Ok(())
    }

    /// The flush transaction: the fenced offset update, then rows and dead
    /// letters, all or nothing.
    fn commit(&mut self, m: usize, l: usize) -> Result<(), String> {
        let Some(flight) = self.member(m).lanes[l].inflight.take() else {
            return Ok(());
        };
        let fenced: Vec<Tp> = flight
            .spans
            .iter()
            .filter(|(tp, span)| self.store.next.get(&tp.partition).copied() != span.from.map(|f| f.0))
            .map(|(tp, _)| *tp)
            .collect();
        if !fenced.is_empty() {
            // Rolled back; the fenced partitions re-read, the rest retries.
            self.fences += 1;
            for tp in fenced {
                let stored = self.store.next.get(&tp.partition).copied().map(NextOffset);
                let epoch = flight.spans[&tp].epoch;
                let member = self.member(m);
                if let Some(epoch) = member.state.reread(tp, epoch, stored) {
                    member.seeks.push((tp.partition, epoch, stored));
                }
            }
            self.member(m).lanes[l].taken = Some(flight.batch);
            return Ok(());
        }
        for e in &flight.batch.entries {
            let key = (e.tp.partition, e.offset);
            let fresh = if e.row.is_some() {
                self.store.rows.insert(key)
            } else if e.dead_letter.is_some() {
                // `ON CONFLICT DO NOTHING`, but a second copy is a bug anyway.
                self.store.dead.insert(key)
            } else {
                true
            };
            if !fresh {
                return Err(format!("partition {} offset {} written twice", key.0, key.1));
            }
        }
        for (tp, span) in &flight.spans {
            // What the span covers without a row or a dead letter was shed.
            let p = tp.partition;
            for r in &self.log[p as usize] {
                if r.offset < span.covered.first || r.offset > span.covered.last {
                    continue;
                }
                let key = (p, r.offset);
                if self.store.rows.contains(&key) || self.store.dead.contains(&key) {
                    continue;
                }
                if self.settings.strategy == Strategy::Block {
                    return Err(format!(
                        "partition {p} offset {} covered without a row under block",
                        r.offset
                    ));
                }
                if !self.store.dropped.insert(key) {
                    return Err(format!("partition {p} offset {} covered twice", r.offset));
                }
            }
            self.store.next.insert(p, span.covered.next().0);
        }
        self.member(m).state.committed(&flight.spans, &flight.batch.entries);
        self.next_of_split(m, l);
        Ok(())
    }

    /// No stored offset passes a record that is in neither rows nor dead letters.
    fn verify(&mut self) -> Result<(), String> {
        self.checks += 1;
        for (p, &next) in &self.store.next {
            for r in &self.log[*p as usize] {
                if r.offset >= next {
                    break;
                }
                let key = (*p, r.offset);
                if !self.store.rows.contains(&key)
                    && !self.store.dead.contains(&key)
                    && !self.store.dropped.contains(&key)
                {
                    return Err(format!(
                        "stored offset {next} of partition {p} passes offset {} which is in no row, dead letter or drop",
                        r.offset
                    ));
                }
            }
        }
        if self.gaps > 0 {
            return Err(format!("the gap check fired {} time(s)", self.gaps));
        }
        Ok(())
    }

    /// Runs `steps` scheduled steps, then drains with no more faults: every
    /// record must end in exactly one of rows and dead letters.
    pub fn run(&mut self, steps: u64) -> Result<(), String> {
        for _ in 0..steps {
            self.step()?;
        }
        for m in 0..self.members.len() {
            if self.members[m].is_none() {
                self.members[m] = Some(Member::new(&self.settings));
                self.rebalance()?;
            }
        }
        self.registry_down = false;
        let mut idle = 0;
        while idle < 10_000 {
            self.clock += std::time::Duration::from_millis(1);
            let before = (self.store.rows.len(), self.store.dead.len());
            for m in 0..self.members.len() {
                self.seek(m);
                self.poll(m);
                self.resume(m);
                for l in 0..self.settings.writers {
                    self.take(m, l);
                    self.write_spans(m, l)?;
                    self.commit(m, l)?;
                }
            }
            self.verify()?;
            let done = (0..self.partitions()).all(|p| {
                let end = self.log[p as usize].last().map_or(0, |r| r.offset + 1);
                self.store.next.get(&p).copied() == Some(end)
            });
            if done {
                break;
            }
            idle = if (self.store.rows.len(), self.store.dead.len()) == before {
                idle + 1
            } else {
                0
            };
        }
        for member in self.members.iter().flatten() {
            let b = &member.state.buffer;
            if member.lanes.iter().all(Lane::idle) && b.queued_records() == 0 {
                // Everything written: nothing may stay accounted.
                if (b.records(), b.bytes()) != (0, 0) {
                    return Err(format!(
                        "drained, but the buffer still accounts {} records, {} bytes",
                        b.records(),
                        b.bytes()
                    ));
                }
            }
        }
        for p in 0..self.partitions() {
            let end = self.log[p as usize].last().map_or(0, |r| r.offset + 1);
            let stored = self.store.next.get(&p).copied();
            if stored != Some(end) {
                let state = self
                    .members
                    .iter()
                    .flatten()
                    .map(|m| &m.state)
                    .find(|s| s.partitions.contains_key(&tp(p)));
                return Err(format!(
                    "drained, but partition {p} is stored at {stored:?}, its end is {end} (buffer {:?}, state {:?})",
                    state.map(|s| (s.buffer.records(), s.buffer.bytes(), s.paused, s.bp)),
                    state.and_then(|s| s.partitions.get(&tp(p)))
                ));
            }
            for r in &self.log[p as usize] {
                let key = (p, r.offset);
                let (row, dead, dropped) = (
                    self.store.rows.contains(&key),
                    self.store.dead.contains(&key),
                    self.store.dropped.contains(&key),
                );
                let places = u8::from(row) + u8::from(dead) + u8::from(dropped);
                if places != 1 || (row && r.poison) || (dead && !r.poison) {
                    return Err(format!(
                        "partition {p} offset {}: row {row}, dead letter {dead}, dropped {dropped}",
                        r.offset
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> Vec<u64> {
        if let Ok(seed) = std::env::var("SLUICE_SIM_SEED") {
            return vec![seed.parse().expect("SLUICE_SIM_SEED is a number")];
        }
        let n = std::env::var("SLUICE_SIM_SEEDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2_000u64);
        (1..=n).collect()
    }

    #[test]
    fn every_record_exactly_once_under_every_interleaving() {
        let (mut steps, mut checks, mut fences, mut refusals, mut rebalances, mut crashes, mut stops, mut overlaps) =
            (0, 0, 0, 0, 0, 0, 0, 0);
        let (mut incremental, mut holds, mut outages) = (0, 0, 0);
        let seeds = seeds();
        for &seed in &seeds {
            let mut sim = Sim::new(seed);
            if let Err(why) = sim.run(3_000) {
                panic!("seed {seed} failed (replay: SLUICE_SIM_SEED={seed}): {why}");
            }
            steps += sim.steps;
            checks += sim.checks;
            fences += sim.fences;
            refusals += sim.refusals;
            rebalances += sim.rebalances;
            if sim.cooperative {
                incremental += sim.rebalances;
            }
            crashes += sim.crashes;
            stops += sim.stops;
            overlaps += sim.overlaps;
            holds += sim.holds;
            outages += sim.registry_outages;
        }
        eprintln!(
            "simulation: {} seeds, {steps} steps, {checks} checks, {refusals} refusals, {fences} fenced flushes, \
             {rebalances} rebalances ({incremental} cooperative), {crashes} crashes, {stops} graceful stops, {overlaps} batches in flight \
             beside another lane's, {outages} registry outages holding {holds} records, 0 violations",
            seeds.len()
        );
        // The schedule must really exercise what it claims to.
        if seeds.len() >= 100 {
            assert!(refusals > 100 * seeds.len() as u64 / 10, "refusals: {refusals}");
            assert!(fences > seeds.len() as u64 / 10, "fences: {fences}");
            assert!(crashes > seeds.len() as u64, "crashes: {crashes}");
            assert!(stops > seeds.len() as u64, "graceful stops: {stops}");
            assert!(overlaps > seeds.len() as u64, "concurrent lanes: {overlaps}");
            assert!(holds > seeds.len() as u64, "records held for the registry: {holds}");
            assert!(
                incremental > seeds.len() as u64 / 2,
                "cooperative rebalances: {incremental}"
            );
            assert!(
                rebalances - incremental > seeds.len() as u64 / 2,
                "eager rebalances: {rebalances}"
            );
        }
    }
}
