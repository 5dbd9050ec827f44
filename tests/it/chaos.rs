//! Chaos: a seeded schedule of faults mixed into one run against the real
//! broker and a real (private) Postgres, then a checker that proves the
//! delivery contract held: every (partition, offset) produced is exactly
//! once in its table or in `sluice.dead_letters` (`block` drops nothing),
//! and the offsets stored in `sluice.offsets` reach the produced end.
//!
//! Three parts, each on its own:
//! - [`schedule`]: pure. `schedule(seed, &Knobs)` is the list of faults and
//!   their timings; the same seed gives the same schedule, printed at the
//!   start of the run so a failure can be replayed
//!   (`SLUICE_CHAOS_SEED=<seed> scripts/test.sh -E 'test(chaos)'`).
//! - [`Chaos`] (the executors): runs one fault at a time against the
//!   services while a backlog is being produced and drained.
//! - [`checker`]: pure. `check(&produced, &observed)` returns every
//!   violation, grouped by partition; the test gathers, checks, prints the
//!   report, and only then fails.
//!
//! Timing is real, so a replay repeats the schedule, not the interleaving.
//!
//! Knobs (environment; `bench/soak.sh` runs many seeds at a larger volume):
//! - `SLUICE_CHAOS_SEED`: the schedule's seed (default [`DEFAULT_SEED`]);
//! - `SLUICE_CHAOS_EVENTS`: good events of the tight pipeline (default 40,000);
//! - `SLUICE_CHAOS_FAULTS`: faults in the schedule (default: one of each kind);
//! - `SLUICE_CHAOS_DLQ_LARGE`: `off` leaves out the >1 MB dead letter sent to
//!   the pipeline with a Kafka dead-letter topic (default `on`);
//! - `SLUICE_CHAOS_SUMMARY`: append a one-line JSON summary of the run here.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use sqlx::PgPool;

use crate::harness::*;

use crate::dead_letters::poison_corpus;

pub const DEFAULT_SEED: u64 = 20_261_128;

/// The pure part: which faults, in which order, how long each lasts.
pub mod schedule {
    use std::fmt;
    use std::time::Duration;

    /// splitmix64: tiny, and the same sequence for a seed in every version
    /// of every dependency, which is what a replayable seed needs.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `lo..hi` (`hi > lo`).
        pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next_u64() % (hi - lo)
        }

        pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
            Duration::from_millis(self.range(lo, hi))
        }

        pub fn shuffle<T>(&mut self, items: &mut [T]) {
            for i in (1..items.len()).rev() {
                let j = self.range(0, i as u64 + 1) as usize;
                items.swap(i, j);
            }
        }
    }

    /// Which pipeline's table a fault aims at.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Target {
        /// `max_buffer_bytes = 256KiB`, `high_watermark = 1.0`: refusals.
        Tight,
        /// Default buffer, `max_record_bytes = 1MiB`.
        Wide,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Fault {
        /// SIGKILL member A, start it again at once.
        Kill,
        /// SIGTERM member A, wait for it to exit, start it again.
        Term,
        /// Stop the Postgres server, keep it down, start it.
        PgRestart { down: Duration },
        /// The proxy between sluice and Postgres forwards nothing.
        Blackhole { hold: Duration },
        /// `LOCK TABLE … IN EXCLUSIVE MODE` on one table.
        TableLock { table: Target, hold: Duration },
        /// A second sluice (member B) joins the group.
        MemberJoin,
        /// Member B leaves: SIGTERM, or SIGKILL (its session then times out).
        MemberLeave { kill: bool },
        /// Records of these sizes (bytes) into the tight pipeline: those above
        /// its 16 KiB `max_record_bytes` are dead letters, the others rows.
        LargeRecords { sizes: Vec<usize> },
        /// One record of this many bytes (above 1 MB) into the wide pipeline,
        /// which has a Kafka dead-letter topic: a large dead letter for it.
        DlqLarge { bytes: usize },
    }

    impl Fault {
        pub fn kind(&self) -> &'static str {
            match self {
                Fault::Kill => "kill",
                Fault::Term => "term",
                Fault::PgRestart { .. } => "pg_restart",
                Fault::Blackhole { .. } => "blackhole",
                Fault::TableLock { .. } => "table_lock",
                Fault::MemberJoin => "member_join",
                Fault::MemberLeave { .. } => "member_leave",
                Fault::LargeRecords { .. } => "large_records",
                Fault::DlqLarge { .. } => "dlq_large",
            }
        }

        /// A generous guess of how long executing it takes (restarts
        /// included), to spread the production over the schedule.
        fn estimate(&self) -> Duration {
            match self {
                Fault::Kill => Duration::from_secs(8),
                Fault::Term => Duration::from_secs(5),
                Fault::PgRestart { down } => *down + Duration::from_secs(2),
                Fault::Blackhole { hold } | Fault::TableLock { hold, .. } => *hold,
                Fault::MemberJoin => Duration::from_secs(6),
                Fault::MemberLeave { .. } => Duration::from_secs(2),
                Fault::LargeRecords { .. } | Fault::DlqLarge { .. } => Duration::from_millis(500),
            }
        }
    }

    impl fmt::Display for Fault {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Fault::PgRestart { down } => write!(f, "pg_restart down={down:?}"),
                Fault::Blackhole { hold } => write!(f, "blackhole hold={hold:?}"),
                Fault::TableLock { table, hold } => write!(f, "table_lock {table:?} hold={hold:?}"),
                Fault::MemberLeave { kill } => {
                    write!(f, "member_leave by {}", if *kill { "SIGKILL" } else { "SIGTERM" })
                }
                Fault::LargeRecords { sizes } => {
                    let over = sizes.iter().filter(|&&s| s > super::TIGHT_MAX_RECORD).count();
                    write!(f, "large_records n={} over_limit={over} sizes={sizes:?}", sizes.len())
                }
                Fault::DlqLarge { bytes } => write!(f, "dlq_large bytes={bytes}"),
                other => f.write_str(other.kind()),
            }
        }
    }

    /// One step: wait `after` (since the previous step finished), then inject.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Step {
        pub after: Duration,
        pub fault: Fault,
    }

    #[derive(Debug, Clone)]
    pub struct Knobs {
        /// Faults in the schedule; at least one of each kind is always there.
        pub faults: usize,
        /// Whether the >1 MB dead letter for the dead-letter topic is sent.
        pub dlq_large: bool,
    }

    /// The kinds drawn from; member join/leave count as one ("member"),
    /// expanded into a join and a later leave.
    const KINDS: [&str; 8] = [
        "kill",
        "term",
        "pg_restart",
        "blackhole",
        "table_lock",
        "member",
        "large_records",
        "dlq_large",
    ];

    /// The schedule for `seed`: every kind once, then random kinds up to
    /// `knobs.faults`, shuffled. A member that joins leaves one to three
    /// steps later, so other faults happen while the group has two members.
    /// Without `dlq_large` its steps are left out and the rest is the same
    /// schedule, so a seed replays the same faults with the knob on or off.
    pub fn schedule(seed: u64, knobs: &Knobs) -> Vec<Step> {
        let mut steps = draw(seed, knobs.faults);
        if !knobs.dlq_large {
            steps.retain(|s| !matches!(s.fault, Fault::DlqLarge { .. }));
        }
        steps
    }

    fn draw(seed: u64, faults: usize) -> Vec<Step> {
        let mut rng = Rng::new(seed);
        let kinds = KINDS;
        let mut bag = kinds.to_vec();
        while bag.len() < faults {
            bag.push(kinds[rng.range(0, kinds.len() as u64) as usize]);
        }
        rng.shuffle(&mut bag);

        let mut steps = Vec::new();
        // Steps left before member B leaves; None while it is not there.
        let mut member: Option<u64> = None;
        for kind in bag {
            let fault = match kind {
                "member" if member.is_some() => {
                    member = None;
                    Fault::MemberLeave {
                        kill: rng.range(0, 2) == 0,
                    }
                }
                "member" => {
                    member = Some(rng.range(1, 4));
                    Fault::MemberJoin
                }
                other => fault(other, &mut rng),
            };
            steps.push(Step {
                after: rng.millis(500, 3000),
                fault,
            });
            if let Some(left) = member.as_mut() {
                if !matches!(steps.last().unwrap().fault, Fault::MemberJoin) {
                    *left -= 1;
                }
                if *left == 0 {
                    member = None;
                    steps.push(Step {
                        after: rng.millis(500, 3000),
                        fault: Fault::MemberLeave {
                            kill: rng.range(0, 2) == 0,
                        },
                    });
                }
            }
        }
        if member.is_some() {
            steps.push(Step {
                after: rng.millis(500, 3000),
                fault: Fault::MemberLeave {
                    kill: rng.range(0, 2) == 0,
                },
            });
        }
        steps
    }

    fn fault(kind: &str, rng: &mut Rng) -> Fault {
        match kind {
            "kill" => Fault::Kill,
            "term" => Fault::Term,
            "pg_restart" => Fault::PgRestart {
                down: rng.millis(1000, 4000),
            },
            "blackhole" => Fault::Blackhole {
                hold: rng.millis(2000, 6000),
            },
            "table_lock" => Fault::TableLock {
                table: if rng.range(0, 3) == 0 {
                    Target::Wide
                } else {
                    Target::Tight
                },
                hold: rng.millis(1000, 5000),
            },
            "large_records" => {
                let n = rng.range(5, 30);
                let sizes = (0..n)
                    .map(|_| match rng.range(0, 4) {
                        // Below the tight pipeline's limit: a large row.
                        0 => rng.range(4 << 10, 15 << 10),
                        // Just above it.
                        1 | 2 => rng.range(17 << 10, 200 << 10),
                        // Far above it (librdkafka fetches it in one round).
                        _ => rng.range(1 << 20, 3 << 20),
                    } as usize)
                    .collect();
                Fault::LargeRecords { sizes }
            }
            "dlq_large" => Fault::DlqLarge {
                bytes: rng.range(1_100_000, 3_000_000) as usize,
            },
            other => unreachable!("no fault kind {other}"),
        }
    }

    /// How long the schedule is expected to take.
    pub fn estimate(steps: &[Step]) -> Duration {
        steps.iter().map(|s| s.after + s.fault.estimate()).sum()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn knobs(faults: usize, dlq_large: bool) -> Knobs {
            Knobs { faults, dlq_large }
        }

        fn kinds(steps: &[Step]) -> Vec<&'static str> {
            steps.iter().map(|s| s.fault.kind()).collect()
        }

        #[test]
        fn a_seed_gives_one_schedule_and_another_seed_another() {
            let k = knobs(12, true);
            assert_eq!(schedule(7, &k), schedule(7, &k));
            assert_ne!(schedule(7, &k), schedule(8, &k));
        }

        #[test]
        fn every_kind_is_in_every_schedule_and_dlq_large_only_when_enabled() {
            for seed in 0..200 {
                let on = kinds(&schedule(seed, &knobs(0, true)));
                for kind in [
                    "kill",
                    "term",
                    "pg_restart",
                    "blackhole",
                    "table_lock",
                    "member_join",
                    "member_leave",
                    "large_records",
                    "dlq_large",
                ] {
                    assert!(on.contains(&kind), "seed {seed}: {kind} missing from {on:?}");
                }
                assert_eq!(on.len(), 9, "seed {seed}: one of each: {on:?}");
                let off = kinds(&schedule(seed, &knobs(0, false)));
                assert!(!off.contains(&"dlq_large"), "seed {seed}: {off:?}");
                assert_eq!(off.len(), 8);
            }
        }

        #[test]
        fn the_dlq_large_knob_only_removes_its_own_steps() {
            for seed in 0..100 {
                let mut on = schedule(seed, &knobs(20, true));
                on.retain(|s| s.fault.kind() != "dlq_large");
                assert_eq!(on, schedule(seed, &knobs(20, false)), "seed {seed}");
            }
        }

        #[test]
        fn members_alternate_join_leave_and_every_join_is_left() {
            for seed in 0..300 {
                let steps = schedule(seed, &knobs(40, true));
                let mut present = false;
                let mut between = 0;
                for kind in kinds(&steps) {
                    match kind {
                        "member_join" => {
                            assert!(!present, "seed {seed}: a join while B is there");
                            present = true;
                            between = 0;
                        }
                        "member_leave" => {
                            assert!(present, "seed {seed}: a leave without a join");
                            assert!(between <= 3, "seed {seed}: B stayed {between} steps");
                            present = false;
                        }
                        _ if present => between += 1,
                        _ => {}
                    }
                }
                assert!(!present, "seed {seed}: B never left");
                assert!(steps.len() >= 40, "seed {seed}: {} steps", steps.len());
            }
        }

        #[test]
        fn timings_and_sizes_stay_in_their_bounds() {
            for seed in 0..300 {
                let steps = schedule(seed, &knobs(30, true));
                for s in &steps {
                    assert!(s.after >= Duration::from_millis(500) && s.after < Duration::from_secs(3));
                    match &s.fault {
                        Fault::PgRestart { down } => assert!(*down < Duration::from_secs(4)),
                        Fault::Blackhole { hold } => assert!(*hold < Duration::from_secs(6)),
                        Fault::TableLock { hold, .. } => assert!(*hold < Duration::from_secs(5)),
                        Fault::LargeRecords { sizes } => {
                            assert!((5..30).contains(&sizes.len()));
                            assert!(sizes.iter().all(|&b| (4 << 10..3 << 20).contains(&b)));
                        }
                        Fault::DlqLarge { bytes } => assert!(*bytes > 1_000_000, "above message.max.bytes"),
                        _ => {}
                    }
                }
            }
        }

        #[test]
        fn the_ci_schedule_fits_its_time_budget() {
            for seed in 0..300 {
                let steps = schedule(seed, &knobs(0, true));
                let took = estimate(&steps);
                assert!(took < Duration::from_secs(80), "seed {seed}: {took:?}");
            }
        }

        #[test]
        fn shuffle_is_a_permutation() {
            let mut rng = Rng::new(3);
            let mut v: Vec<u32> = (0..50).collect();
            rng.shuffle(&mut v);
            let mut sorted = v.clone();
            sorted.sort();
            assert_eq!(sorted, (0..50).collect::<Vec<_>>());
            assert_ne!(v, sorted);
        }
    }
}

/// The pure part at the end: what was produced against what is stored.
pub mod checker {
    use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
    use std::fmt;

    /// Where a produced record belongs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Expect {
        Row,
        DeadLetter,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Produced {
        pub topic: String,
        pub partition: i32,
        pub offset: i64,
        pub expect: Expect,
    }

    /// (topic, partition, offset).
    pub type Tpo = (String, i32, i64);

    /// What the run left behind.
    #[derive(Debug, Default)]
    pub struct Observed {
        /// One entry per table row (duplicates included).
        pub rows: Vec<Tpo>,
        /// One entry per `sluice.dead_letters` row.
        pub letters: Vec<Tpo>,
        /// `sluice.offsets` of the group: (topic, partition, next_offset).
        pub stored: Vec<(String, i32, i64)>,
        /// Dead letters read back from the Kafka dead-letter topics; `None`
        /// when they were not read.
        pub dlq_topic: Option<HashSet<Tpo>>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Violation {
        /// Produced, in neither the table nor the dead letters.
        Missing {
            topic: String,
            partition: i32,
            offsets: Vec<i64>,
        },
        /// Stored more than once: (offset, rows, dead letters).
        Duplicated {
            topic: String,
            partition: i32,
            offsets: Vec<(i64, usize, usize)>,
        },
        /// A good record only in the dead letters, or a bad one in the table.
        Misplaced {
            topic: String,
            partition: i32,
            offsets: Vec<(i64, Expect)>,
        },
        /// In the table or the dead letters but never produced.
        Unknown {
            topic: String,
            partition: i32,
            offsets: Vec<i64>,
        },
        /// The stored next offset is not the produced end.
        StoredOffset {
            topic: String,
            partition: i32,
            stored: Option<i64>,
            end: i64,
        },
        /// In `sluice.dead_letters` but never reached the Kafka topic.
        NotInDlqTopic {
            topic: String,
            partition: i32,
            offsets: Vec<i64>,
        },
    }

    impl Violation {
        pub fn kind(&self) -> &'static str {
            match self {
                Violation::Missing { .. } => "missing",
                Violation::Duplicated { .. } => "duplicated",
                Violation::Misplaced { .. } => "misplaced",
                Violation::Unknown { .. } => "unknown",
                Violation::StoredOffset { .. } => "stored_offset",
                Violation::NotInDlqTopic { .. } => "not_in_dlq_topic",
            }
        }

        /// How many records (or partitions, for stored offsets) it is about.
        pub fn count(&self) -> usize {
            match self {
                Violation::Missing { offsets, .. }
                | Violation::Unknown { offsets, .. }
                | Violation::NotInDlqTopic { offsets, .. } => offsets.len(),
                Violation::Duplicated { offsets, .. } => offsets.len(),
                Violation::Misplaced { offsets, .. } => offsets.len(),
                Violation::StoredOffset { .. } => 1,
            }
        }
    }

    /// `0-4, 7, 9-10`.
    pub fn ranges(offsets: impl IntoIterator<Item = i64>) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut run: Option<(i64, i64)> = None;
        let flush = |run: (i64, i64), out: &mut Vec<String>| {
            out.push(if run.0 == run.1 {
                run.0.to_string()
            } else {
                format!("{}-{}", run.0, run.1)
            })
        };
        for o in offsets {
            run = match run {
                Some((a, b)) if o == b + 1 => Some((a, o)),
                Some(r) => {
                    flush(r, &mut out);
                    Some((o, o))
                }
                None => Some((o, o)),
            };
        }
        if let Some(r) = run {
            flush(r, &mut out);
        }
        out.join(", ")
    }

    impl fmt::Display for Violation {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Violation::Missing {
                    topic,
                    partition,
                    offsets,
                } => write!(
                    f,
                    "{topic}[{partition}]: {} missing: {}",
                    offsets.len(),
                    ranges(offsets.iter().copied())
                ),
                Violation::Duplicated {
                    topic,
                    partition,
                    offsets,
                } => {
                    let shown: Vec<String> = offsets
                        .iter()
                        .take(50)
                        .map(|(o, r, l)| format!("{o} ({r} rows, {l} dead letters)"))
                        .collect();
                    write!(
                        f,
                        "{topic}[{partition}]: {} duplicated: {}{}",
                        offsets.len(),
                        shown.join(", "),
                        if offsets.len() > 50 { ", …" } else { "" }
                    )
                }
                Violation::Misplaced {
                    topic,
                    partition,
                    offsets,
                } => {
                    let shown: Vec<String> = offsets
                        .iter()
                        .take(50)
                        .map(|(o, e)| match e {
                            Expect::Row => format!("{o} (a good record, dead-lettered)"),
                            Expect::DeadLetter => format!("{o} (a bad record, in the table)"),
                        })
                        .collect();
                    write!(
                        f,
                        "{topic}[{partition}]: {} misplaced: {}",
                        offsets.len(),
                        shown.join(", ")
                    )
                }
                Violation::Unknown {
                    topic,
                    partition,
                    offsets,
                } => write!(
                    f,
                    "{topic}[{partition}]: {} stored but never produced: {}",
                    offsets.len(),
                    ranges(offsets.iter().copied())
                ),
                Violation::StoredOffset {
                    topic,
                    partition,
                    stored,
                    end,
                } => write!(
                    f,
                    "{topic}[{partition}]: stored next_offset {} but the produced end is {end}",
                    stored.map_or("none".to_owned(), |s| s.to_string())
                ),
                Violation::NotInDlqTopic {
                    topic,
                    partition,
                    offsets,
                } => write!(
                    f,
                    "{topic}[{partition}]: {} dead letters never reached the dead-letter topic: {}",
                    offsets.len(),
                    ranges(offsets.iter().copied())
                ),
            }
        }
    }

    /// Every violation of the contract, grouped by kind and partition (in
    /// that order, offsets ascending). Empty when the run kept it.
    pub fn check(produced: &[Produced], observed: &Observed) -> Vec<Violation> {
        let mut expected: HashMap<(&str, i32, i64), Expect> = HashMap::new();
        let mut end: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for p in produced {
            expected.insert((&p.topic, p.partition, p.offset), p.expect);
            let e = end.entry((&p.topic, p.partition)).or_insert(0);
            *e = (*e).max(p.offset + 1);
        }
        let mut rows: HashMap<(&str, i32, i64), usize> = HashMap::new();
        for (t, p, o) in &observed.rows {
            *rows.entry((t, *p, *o)).or_default() += 1;
        }
        let mut letters: HashMap<(&str, i32, i64), usize> = HashMap::new();
        for (t, p, o) in &observed.letters {
            *letters.entry((t, *p, *o)).or_default() += 1;
        }

        type ByPartition<'a, T> = BTreeMap<(&'a str, i32), Vec<T>>;
        let mut missing: ByPartition<i64> = BTreeMap::new();
        let mut duplicated: ByPartition<(i64, usize, usize)> = BTreeMap::new();
        let mut misplaced: ByPartition<(i64, Expect)> = BTreeMap::new();
        let mut unknown: ByPartition<i64> = BTreeMap::new();
        let mut not_in_dlq: ByPartition<i64> = BTreeMap::new();

        let mut keys: Vec<&(&str, i32, i64)> = expected.keys().collect();
        keys.sort();
        for key in keys {
            let (t, p, o) = *key;
            let (r, l) = (
                rows.get(key).copied().unwrap_or(0),
                letters.get(key).copied().unwrap_or(0),
            );
            match r + l {
                0 => missing.entry((t, p)).or_default().push(o),
                1 => {
                    let found = if r == 1 { Expect::Row } else { Expect::DeadLetter };
                    if found != expected[key] {
                        misplaced.entry((t, p)).or_default().push((o, expected[key]));
                    }
                }
                _ => duplicated.entry((t, p)).or_default().push((o, r, l)),
            }
        }
        let stray: BTreeSet<&(&str, i32, i64)> = rows
            .keys()
            .chain(letters.keys())
            .filter(|k| !expected.contains_key(*k))
            .collect();
        for (t, p, o) in stray {
            unknown.entry((t, *p)).or_default().push(*o);
        }
        if let Some(seen) = &observed.dlq_topic {
            let mut stored: Vec<&(&str, i32, i64)> = letters.keys().collect();
            stored.sort();
            for &(t, p, o) in stored {
                if !seen.contains(&(t.to_owned(), p, o)) {
                    not_in_dlq.entry((t, p)).or_default().push(o);
                }
            }
        }

        let stored: HashMap<(&str, i32), i64> =
            observed.stored.iter().map(|(t, p, n)| ((t.as_str(), *p), *n)).collect();
        let mut out = Vec::new();
        let tp = |(t, p): (&str, i32)| (t.to_owned(), p);
        for (k, offsets) in missing {
            let (topic, partition) = tp(k);
            out.push(Violation::Missing {
                topic,
                partition,
                offsets,
            });
        }
        for (k, offsets) in duplicated {
            let (topic, partition) = tp(k);
            out.push(Violation::Duplicated {
                topic,
                partition,
                offsets,
            });
        }
        for (k, offsets) in misplaced {
            let (topic, partition) = tp(k);
            out.push(Violation::Misplaced {
                topic,
                partition,
                offsets,
            });
        }
        for (k, offsets) in unknown {
            let (topic, partition) = tp(k);
            out.push(Violation::Unknown {
                topic,
                partition,
                offsets,
            });
        }
        for (&k, &e) in &end {
            if stored.get(&k) != Some(&e) {
                let (topic, partition) = tp(k);
                out.push(Violation::StoredOffset {
                    topic,
                    partition,
                    stored: stored.get(&k).copied(),
                    end: e,
                });
            }
        }
        for (k, offsets) in not_in_dlq {
            let (topic, partition) = tp(k);
            out.push(Violation::NotInDlqTopic {
                topic,
                partition,
                offsets,
            });
        }
        out
    }

    /// Violated records (partitions for stored offsets) by kind.
    pub fn tally(violations: &[Violation]) -> BTreeMap<&'static str, usize> {
        let mut by: BTreeMap<&'static str, usize> = BTreeMap::new();
        for v in violations {
            *by.entry(v.kind()).or_default() += v.count();
        }
        by
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn produced(topic: &str, partition: i32, offsets: std::ops::Range<i64>, expect: Expect) -> Vec<Produced> {
            offsets
                .map(|offset| Produced {
                    topic: topic.into(),
                    partition,
                    offset,
                    expect,
                })
                .collect()
        }

        fn tpo(topic: &str, partition: i32, offsets: impl IntoIterator<Item = i64>) -> Vec<Tpo> {
            offsets.into_iter().map(|o| (topic.to_owned(), partition, o)).collect()
        }

        #[test]
        fn a_clean_run_has_no_violation() {
            let mut p = produced("t", 0, 0..10, Expect::Row);
            p[4].expect = Expect::DeadLetter;
            let observed = Observed {
                rows: tpo("t", 0, (0..10).filter(|&o| o != 4)),
                letters: tpo("t", 0, [4]),
                stored: vec![("t".into(), 0, 10)],
                dlq_topic: Some(tpo("t", 0, [4]).into_iter().collect()),
            };
            assert_eq!(check(&p, &observed), vec![]);
        }

        #[test]
        fn every_kind_of_violation_is_reported_by_partition() {
            let mut p = produced("t", 0, 0..10, Expect::Row);
            p.extend(produced("t", 1, 0..5, Expect::Row));
            p[9].expect = Expect::DeadLetter;
            let mut rows = tpo("t", 0, [0, 1, 2, 6, 7, 7, 8, 9]);
            rows.extend(tpo("t", 1, [0, 1, 2, 3, 4, 5]));
            let mut letters = tpo("t", 0, [2, 8]);
            letters.extend(tpo("t", 1, [3]));
            let observed = Observed {
                rows,
                letters,
                stored: vec![("t".into(), 0, 10)],
                dlq_topic: Some(tpo("t", 0, [2]).into_iter().collect()),
            };
            let v = check(&p, &observed);
            let shown: Vec<String> = v.iter().map(|v| v.to_string()).collect();
            assert_eq!(
                shown,
                [
                    "t[0]: 3 missing: 3-5",
                    "t[0]: 3 duplicated: 2 (1 rows, 1 dead letters), 7 (2 rows, 0 dead letters), 8 (1 rows, 1 dead letters)",
                    "t[1]: 1 duplicated: 3 (1 rows, 1 dead letters)",
                    "t[0]: 1 misplaced: 9 (a bad record, in the table)",
                    "t[1]: 1 stored but never produced: 5",
                    "t[1]: stored next_offset none but the produced end is 5",
                    "t[0]: 1 dead letters never reached the dead-letter topic: 8",
                    "t[1]: 1 dead letters never reached the dead-letter topic: 3",
                ]
            );
            let by = tally(&v);
            assert_eq!(by["missing"], 3);
            assert_eq!(by["duplicated"], 4);
            assert_eq!(by["stored_offset"], 1);
        }

        #[test]
        fn a_good_record_only_in_the_dead_letters_is_misplaced() {
            let p = produced("t", 0, 0..2, Expect::Row);
            let observed = Observed {
                rows: tpo("t", 0, [0]),
                letters: tpo("t", 0, [1]),
                stored: vec![("t".into(), 0, 2)],
                dlq_topic: None,
            };
            assert_eq!(
                check(&p, &observed),
                vec![Violation::Misplaced {
                    topic: "t".into(),
                    partition: 0,
                    offsets: vec![(1, Expect::Row)]
                }]
            );
        }

        #[test]
        fn offset_ranges_are_compact() {
            assert_eq!(ranges([0, 1, 2, 4, 6, 7]), "0-2, 4, 6-7");
            assert_eq!(ranges([]), "");
        }
    }
}

use checker::{Expect, Observed, Produced};
use schedule::{Fault, Knobs, Step, Target};

/// The tight pipeline's `max_record_bytes`.
pub const TIGHT_MAX_RECORD: usize = 16 << 10;

/// Producer deliveries, recorded with where each record belongs.
#[derive(Default)]
struct Ledger {
    produced: Mutex<Vec<Produced>>,
    failed: Mutex<Vec<String>>,
}

struct LedgerContext(Arc<Ledger>);
impl ClientContext for LedgerContext {}
impl ProducerContext for LedgerContext {
    type DeliveryOpaque = Box<Expect>;
    fn delivery(&self, result: &DeliveryResult<'_>, expect: Box<Expect>) {
        match result {
            Ok(m) => self.0.produced.lock().unwrap().push(Produced {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                expect: *expect,
            }),
            Err((err, _)) => self.0.failed.lock().unwrap().push(err.to_string()),
        }
    }
}

type LedgerProducer = ThreadedProducer<LedgerContext>;

fn ledger_producer(brokers: &str, ledger: Arc<Ledger>) -> LedgerProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("message.max.bytes", "8388608")
        .create_with_context(LedgerContext(ledger))
        .expect("producer")
}

fn send(producer: &LedgerProducer, topic: &str, partition: i32, key: &str, value: &[u8], expect: Expect) {
    let record = BaseRecord::with_opaque_to(topic, Box::new(expect))
        .key(key)
        .payload(value)
        .partition(partition);
    send_retrying(producer, record);
}

/// A strict-table record of `bytes` bytes (a long name), valid JSON.
fn large_value(id: u64, bytes: usize) -> Vec<u8> {
    let mut v = format!(r#"{{"id":{id},"qty":1,"score":1,"name":"L"#).into_bytes();
    v.resize(bytes.saturating_sub(2).max(v.len()), b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// One pipeline's topic and table.
#[derive(Clone)]
struct Stream {
    topic: String,
    table: String,
    dlq: String,
    partitions: i32,
}

/// The services, the members and the streams the faults act on.
struct Chaos {
    brokers: String,
    pg: Arc<PrivatePostgres>,
    proxy: BlackholeProxy,
    /// Straight to the private Postgres, not through the proxy.
    pool: PgPool,
    a: Sluice,
    b: Option<Sluice>,
    incarnation: u32,
    tight: Stream,
    wide: Stream,
    producer: Arc<LedgerProducer>,
    large_ids: u64,
    /// Exit statuses of SIGTERMed members (invariant 6: exit 0 in time).
    shutdowns: Vec<String>,
}

impl Chaos {
    fn next_log(&mut self, member: &str) -> String {
        self.incarnation += 1;
        format!("{member}-{}.log", self.incarnation)
    }

    async fn run(&mut self, fault: &Fault) {
        // A member is killed or stopped only once it is in the group: with
        // tansu, a member that goes away in the middle of its first join
        // can leave the group unable to finish a rebalance for minutes
        // (seen with seeds 3 and 20261128 at 12 faults), which would read
        // as loss here when it is a broker's stall.
        match fault {
            Fault::Kill | Fault::Term => joined(&self.a).await,
            Fault::MemberLeave { .. } => joined(self.b.as_ref().expect("B joined")).await,
            _ => {}
        }
        match fault {
            Fault::Kill => {
                self.a.kill9();
                let log = self.next_log("a");
                self.a = self.a.restart(&log);
            }
            Fault::Term => {
                let status = terminate(&mut self.a);
                self.shutdowns.push(format!("a: {status}"));
                let log = self.next_log("a");
                self.a = self.a.restart(&log);
            }
            Fault::PgRestart { down } => {
                let pg = self.pg.clone();
                tokio::task::spawn_blocking(move || pg.stop()).await.unwrap();
                tokio::time::sleep(*down).await;
                let pg = self.pg.clone();
                tokio::task::spawn_blocking(move || pg.resume()).await.unwrap();
            }
            Fault::Blackhole { hold } => {
                self.proxy.set_forwarding(false);
                tokio::time::sleep(*hold).await;
                self.proxy.set_forwarding(true);
            }
            Fault::TableLock { table, hold } => {
                let table = match table {
                    Target::Tight => &self.tight.table,
                    Target::Wide => &self.wide.table,
                };
                let lock = TableLock::take(&self.pool, table).await;
                tokio::time::sleep(*hold).await;
                lock.release().await;
            }
            Fault::MemberJoin => {
                let log = self.next_log("b");
                let b = self.a.restart(&log);
                joined(&b).await;
                self.b = Some(b);
            }
            Fault::MemberLeave { kill } => {
                let mut b = self.b.take().expect("the schedule joins before it leaves");
                if *kill {
                    b.kill9();
                } else {
                    let status = terminate(&mut b);
                    self.shutdowns.push(format!("b: {status}"));
                }
            }
            Fault::LargeRecords { sizes } => {
                for &bytes in sizes {
                    self.large_ids += 1;
                    let id = 2_000_000_000 + self.large_ids;
                    let expect = if bytes > TIGHT_MAX_RECORD {
                        Expect::DeadLetter
                    } else {
                        Expect::Row
                    };
                    let partition = (id % self.tight.partitions as u64) as i32;
                    send(
                        &self.producer,
                        &self.tight.topic,
                        partition,
                        &id.to_string(),
                        &large_value(id, bytes),
                        expect,
                    );
                }
            }
            Fault::DlqLarge { bytes } => {
                self.large_ids += 1;
                let id = 3_000_000_000 + self.large_ids;
                send(
                    &self.producer,
                    &self.wide.topic,
                    0,
                    &id.to_string(),
                    &large_value(id, *bytes),
                    Expect::DeadLetter,
                );
            }
        }
    }

    /// Every log of every member so far (they share one directory).
    fn logs(&self) -> Vec<(String, String)> {
        let dir = self.a.config.parent().unwrap();
        let mut logs: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        logs.sort();
        logs
    }
}

/// Waits (up to 30 s) until this incarnation has been assigned partitions.
async fn joined(member: &Sluice) {
    eventually(Duration::from_secs(30), || async {
        member.log_text().contains("partitions assigned")
    })
    .await;
}

/// SIGTERM, then wait for the exit (shutdown_timeout is 10 s); SIGKILL if
/// it overran. Returns how it ended.
fn terminate(member: &mut Sluice) -> String {
    member.sigterm();
    let status = tokio::task::block_in_place(|| member.wait_timeout(Duration::from_secs(15)));
    match status {
        Some(s) => format!("{s}"),
        None => {
            member.kill9();
            "still running 15 s after SIGTERM (killed)".into()
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a valid value")),
        Err(_) => default,
    }
}

fn chaos_config(brokers: &str, url: &str, group: &str, tight: &Stream, wide: &Stream) -> String {
    let columns = poison_corpus::COLUMNS;
    format!(
        r#"
shutdown_timeout = "10s"

[kafka]
brokers = "{brokers}"
group_id = "{group}"
session_timeout = "6s"

# The rebalance timeout: how long a join waits for a member that is gone.
[kafka.properties]
"max.poll.interval.ms" = "20000"

[breaker]
open_duration = "500ms"
max_open_duration = "2s"

[postgres]
url = "{url}"
connect_timeout = "1s"
write_timeout = "3s"

# The configuration that lost records after buffer refusals (issue 12).
[[pipelines]]
name = "tight"
topics = ["{tt}"]
table = "{tb}"
flush_interval = "100ms"
max_buffer_bytes = "256KiB"
high_watermark = 1.0
batch_bytes = "64KiB"
max_record_bytes = "16KiB"

[pipelines.errors]
dlq_topic = "{td}"

[pipelines.columns]
{columns}

# max_record_bytes at its default (1 MiB) and a dead-letter topic: a large
# dead letter is produced to Kafka nearly whole.
[[pipelines]]
name = "wide"
topics = ["{wt}"]
table = "{wb}"
flush_interval = "100ms"
batch_size = 2000

[pipelines.errors]
dlq_topic = "{wd}"

[pipelines.columns]
{columns}
"#,
        tt = tight.topic,
        tb = tight.table,
        td = tight.dlq,
        wt = wide.topic,
        wb = wide.table,
        wd = wide.dlq,
    )
}

/// Reads the dead-letter topics from the start until every record of `want`
/// (the stored dead letters) is seen or `timeout` passes; returns the
/// (topic, partition, offset) of the source records seen, from the
/// `sluice.*` headers. (The topic may hold more than the store: it is
/// at-least-once, and produced before the commit.)
fn read_dlq_topics(
    brokers: &str,
    topics: &[String],
    want: &HashSet<checker::Tpo>,
    timeout: Duration,
) -> HashSet<checker::Tpo> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("dlqreader"))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "16777216")
        .set("max.partition.fetch.bytes", "16777216")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in topics {
        tpl.add_partition_offset(t, 0, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + timeout;
    while !want.is_subset(&seen) && Instant::now() < deadline {
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Some(headers) = msg.headers() else { continue };
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if let (Some(t), Some(p), Some(o)) = (get("sluice.topic"), get("sluice.partition"), get("sluice.offset")) {
            seen.insert((t, p.parse().unwrap(), o.parse().unwrap()));
        }
    }
    seen
}

async fn gather(pool: &PgPool, group: &str, streams: &[&Stream]) -> Observed {
    let mut observed = Observed::default();
    for s in streams {
        let rows: Vec<(i32, i64)> = sqlx::query_as(&format!("SELECT kafka_partition, kafka_offset FROM {}", s.table))
            .fetch_all(pool)
            .await
            .expect("table rows");
        observed
            .rows
            .extend(rows.into_iter().map(|(p, o)| (s.topic.clone(), p, o)));
        let letters: Vec<(i32, i64)> =
            sqlx::query_as(r#"SELECT partition, "offset" FROM sluice.dead_letters WHERE topic = $1"#)
                .bind(&s.topic)
                .fetch_all(pool)
                .await
                .expect("dead letters");
        observed
            .letters
            .extend(letters.into_iter().map(|(p, o)| (s.topic.clone(), p, o)));
        observed.stored.extend(
            stored_offsets(pool, group, &s.topic)
                .await
                .into_iter()
                .map(|(p, n)| (s.topic.clone(), p, n)),
        );
    }
    observed
}

/// Whether `sluice.offsets` has reached the produced end of every partition.
async fn caught_up(pool: &PgPool, group: &str, end: &BTreeMap<(String, i32), i64>) -> bool {
    let Ok(stored) = sqlx::query_as::<_, (String, i32, i64)>(
        "SELECT topic, partition, next_offset FROM sluice.offsets WHERE group_id = $1",
    )
    .bind(group)
    .fetch_all(pool)
    .await
    else {
        return false;
    };
    let stored: BTreeMap<(String, i32), i64> = stored.into_iter().map(|(t, p, n)| ((t, p), n)).collect();
    end.iter().all(|(k, e)| stored.get(k) == Some(e))
}

/// The seeded fault schedule of issue 12 over a backlog of good, poison and
/// large records in two pipelines (one with the refusal-prone small buffer,
/// both with a Kafka dead-letter topic); then every produced (partition,
/// offset) is checked to be exactly once in its table or dead letters and
/// the stored offsets to reach the produced end.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_schedule_keeps_every_record_exactly_once() {
    let seed: u64 = env_or("SLUICE_CHAOS_SEED", DEFAULT_SEED);
    let good: u64 = env_or("SLUICE_CHAOS_EVENTS", 40_000);
    let dlq_large = match std::env::var("SLUICE_CHAOS_DLQ_LARGE").as_deref() {
        Ok("off" | "0" | "false") => false,
        Ok("on" | "1" | "true") | Err(_) => true,
        Ok(other) => panic!("SLUICE_CHAOS_DLQ_LARGE={other}: expected on or off"),
    };
    let knobs = Knobs {
        faults: env_or("SLUICE_CHAOS_FAULTS", 0),
        dlq_large,
    };
    let steps = schedule::schedule(seed, &knobs);
    let estimate = schedule::estimate(&steps);
    eprintln!(
        "chaos: seed {seed}, {good} good events, dlq_large {}, {} steps (~{estimate:?}); replay with \
         SLUICE_CHAOS_SEED={seed} SLUICE_CHAOS_EVENTS={good} SLUICE_CHAOS_FAULTS={} SLUICE_CHAOS_DLQ_LARGE={}",
        if dlq_large { "on" } else { "off" },
        steps.len(),
        knobs.faults,
        if dlq_large { "on" } else { "off" },
    );
    for (i, s) in steps.iter().enumerate() {
        eprintln!("chaos: step {i:2}: after {:?}: {}", s.after, s.fault);
    }

    let services = Services::from_env();
    let pg = Arc::new(tokio::task::spawn_blocking(PrivatePostgres::start).await.unwrap());
    let proxy = BlackholeProxy::start(pg.addr()).await;
    let pool = Services {
        brokers: services.brokers.clone(),
        database_url: pg.url(),
    }
    .pool()
    .await;
    let group = unique("g");
    let tight = Stream {
        topic: unique("chaos_tight"),
        table: unique("tight"),
        dlq: unique("chaos_dlq_tight"),
        partitions: 4,
    };
    let wide = Stream {
        topic: unique("chaos_wide"),
        table: unique("wide"),
        dlq: unique("chaos_dlq_wide"),
        partitions: 2,
    };
    for s in [&tight, &wide] {
        create_topic(&services.brokers, &s.topic, s.partitions).await;
        create_topic(&services.brokers, &s.dlq, 1).await;
        sqlx::query(&poison_corpus::strict_table_ddl(&s.table))
            .execute(&pool)
            .await
            .expect("create table");
    }

    // The backlog: the poison corpus (1 % bad records of every kind,
    // including three 5 MB values) into the tight pipeline, good events
    // into the wide one. 40 % at once, the rest spread over the schedule.
    let ledger = Arc::new(Ledger::default());
    let producer = Arc::new(ledger_producer(&services.brokers, ledger.clone()));
    let (values, poisons) = poison_corpus::corpus(good, tight.partitions as u64);
    let wide_events = good / 10;
    let background = {
        let (producer, tight, wide) = (producer.clone(), tight.clone(), wide.clone());
        let spread = estimate.as_secs_f64();
        tokio::task::spawn_blocking(move || {
            let total = values.len() as u64 + wide_events;
            let at_once = total * 2 / 5;
            let started = Instant::now();
            let (mut n, mut w) = (0u64, 0u64);
            for i in 0..total {
                if i > at_once {
                    let due =
                        started + Duration::from_secs_f64((i - at_once) as f64 / (total - at_once) as f64 * spread);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                // One wide event after every ten tight ones.
                if i % 11 == 10 && w < wide_events || n as usize == values.len() {
                    let id = 1_500_000_000 + w;
                    let value = poison_corpus::good(id);
                    let p = (w % wide.partitions as u64) as i32;
                    send(&producer, &wide.topic, p, &id.to_string(), &value, Expect::Row);
                    w += 1;
                } else {
                    let expect = if poisons.contains_key(&n) {
                        Expect::DeadLetter
                    } else {
                        Expect::Row
                    };
                    let p = (n % tight.partitions as u64) as i32;
                    send(&producer, &tight.topic, p, &n.to_string(), &values[n as usize], expect);
                    n += 1;
                }
            }
        })
    };

    let config = chaos_config(
        &services.brokers,
        &format!("postgres://postgres@{}/postgres", proxy.addr),
        &group,
        &tight,
        &wide,
    );
    let a = Sluice::start(&config);
    let mut chaos = Chaos {
        brokers: services.brokers.clone(),
        pg,
        proxy,
        pool: pool.clone(),
        a,
        b: None,
        incarnation: 0,
        tight: tight.clone(),
        wide: wide.clone(),
        producer: producer.clone(),
        large_ids: 0,
        shutdowns: Vec::new(),
    };

    let started = Instant::now();
    let mut injected: BTreeMap<&'static str, u32> = BTreeMap::new();
    for (i, Step { after, fault }) in steps.iter().enumerate() {
        tokio::time::sleep(*after).await;
        let at = started.elapsed();
        chaos.run(fault).await;
        *injected.entry(fault.kind()).or_default() += 1;
        eprintln!(
            "chaos: step {i:2} at {at:.1?} took {:.1?}: {fault}",
            started.elapsed() - at
        );
    }
    background.await.unwrap();
    tokio::task::block_in_place(|| producer.flush(Duration::from_secs(60))).expect("producer flush");
    let failed = ledger.failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "seed {seed}: deliveries failed: {failed:?}");
    let produced = ledger.produced.lock().unwrap().clone();
    let faults_done = started.elapsed();

    // Drained: the stored offsets reach the produced end of every partition.
    let mut end: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for p in &produced {
        let e = end.entry((p.topic.clone(), p.partition)).or_insert(0);
        *e = (*e).max(p.offset + 1);
    }
    let drain = Duration::from_secs(env_or("SLUICE_CHAOS_DRAIN_SECS", 60));
    let converged = eventually(drain, || caught_up(&pool, &group, &end)).await;
    let drained_in = started.elapsed() - faults_done;
    let status = terminate(&mut chaos.a);
    chaos.shutdowns.push(format!("a (end): {status}"));

    let mut observed = gather(&pool, &group, &[&tight, &wide]).await;
    // Every stored dead letter, read back from the dead-letter topics.
    let want: HashSet<checker::Tpo> = observed.letters.iter().cloned().collect();
    let dlq_topics = vec![tight.dlq.clone(), wide.dlq.clone()];
    let brokers = chaos.brokers.clone();
    let dlq_seen =
        tokio::task::spawn_blocking(move || read_dlq_topics(&brokers, &dlq_topics, &want, Duration::from_secs(20)))
            .await
            .unwrap();
    observed.dlq_topic = Some(dlq_seen);
    let violations = checker::check(&produced, &observed);

    // The report.
    let logs = chaos.logs();
    let occurrences = |needle: &str| -> usize {
        logs.iter()
            .map(|(_, l)| l.lines().filter(|x| x.contains(needle)).count())
            .sum()
    };
    let refusals = occurrences("buffer full: record refused");
    let fenced = occurrences("fenced");
    let by_kind = checker::tally(&violations);
    let expect_letters = produced.iter().filter(|p| p.expect == Expect::DeadLetter).count();
    let summary = serde_json::json!({
        "seed": seed,
        "good_events": good,
        "dlq_large": dlq_large,
        "steps": steps.len(),
        "faults": injected,
        "records_checked": produced.len(),
        "expected_dead_letters": expect_letters,
        "rows": observed.rows.len(),
        "dead_letters": observed.letters.len(),
        "refusals_logged": refusals,
        "fenced_logged": fenced,
        "converged": converged,
        "faults_secs": faults_done.as_secs_f64(),
        "drain_secs": drained_in.as_secs_f64(),
        "violations": by_kind,
        "shutdowns": chaos.shutdowns,
    });
    eprintln!("chaos summary: {summary}");
    if let Ok(path) = std::env::var("SLUICE_CHAOS_SUMMARY") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("summary file");
        writeln!(f, "{summary}").unwrap();
    }
    let report: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
    if !violations.is_empty() {
        // Keep the logs for the post-mortem: the temp dir goes with the test.
        let keep = std::env::temp_dir().join(format!("sluice-chaos-{seed}-{}", std::process::id()));
        std::fs::create_dir_all(&keep).unwrap();
        for (name, text) in &logs {
            std::fs::write(keep.join(name), text).unwrap();
        }
        eprintln!("chaos: logs kept in {}", keep.display());
    }
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations ({by_kind:?}), converged: {converged}\n{}\nreplay: SLUICE_CHAOS_SEED={seed} \
         SLUICE_CHAOS_EVENTS={good} SLUICE_CHAOS_FAULTS={} SLUICE_CHAOS_DLQ_LARGE={}",
        violations.len(),
        report.join("\n"),
        knobs.faults,
        if dlq_large { "on" } else { "off" },
    );
    assert!(
        converged,
        "seed {seed}: the stored offsets never reached the produced end"
    );
    drop(chaos);
}
