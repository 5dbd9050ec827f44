//! Adaptive flushing: the flush interval and the batch size follow the
//! measured flush latency against `target_latency`.
//!
//! The rule the design started with: latency above 1.5 × target → interval
//! × 1.5; below 0.5 × target → interval × 0.8. Two changes, both justified by
//! the scenario simulations below:
//!
//! - The latency compared is an exponentially weighted average (α = 0.3),
//!   not the last sample: one slow flush (a checkpoint, an autovacuum) must
//!   not halve the batch size; a sustained slowdown still moves it within a
//!   few flushes.
//! - The batch size moves with the interval: slow → × 0.75 (smaller
//!   transactions hold locks for less time and fail cheaper), fast → × 1.25
//!   (up to `batch_size`), so heavy load ends at the largest, most efficient
//!   batches while a struggling database gets smaller, rarer ones.
//!
//! Light load therefore flushes every `min_interval` (low latency), heavy
//! load flushes full batches back to back (throughput), a slow database is
//! probed at up to `max_interval`.
//!
//! When a partial batch is due ([`FlushPolicy::due`]): an interval after its
//! oldest record arrived, or sooner once the consumer has handed over all it
//! had read — then an interval after the lane's last flush ended, so a burst
//! after a quiet spell is written at once (no record waits for company that
//! is not coming) while flushes stay at least an interval apart.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct FlushSettings {
    pub target_latency: Duration,
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// Upper bound of the batch size (`batch_size`).
    pub max_batch_rows: usize,
    /// Lower bound of the batch size.
    pub min_batch_rows: usize,
}

impl FlushSettings {
    /// `interval` kept within `min_interval..=max_interval`: where a policy
    /// given it starts.
    pub fn starting_interval(&self, interval: Duration) -> Duration {
        interval.clamp(self.min_interval, self.max_interval)
    }
}

const SLOW: f64 = 1.5;
const FAST: f64 = 0.5;
const ALPHA: f64 = 0.3;

#[derive(Debug, Clone)]
pub struct FlushPolicy {
    settings: FlushSettings,
    interval: Duration,
    batch_rows: usize,
    /// Smoothed flush latency, seconds; `None` before the first flush.
    ewma: Option<f64>,
}

impl FlushPolicy {
    pub fn new(settings: FlushSettings, initial_interval: Duration) -> Self {
        Self {
            settings,
            interval: settings.starting_interval(initial_interval),
            batch_rows: settings.max_batch_rows,
            ewma: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn batch_rows(&self) -> usize {
        self.batch_rows
    }

    /// When a lane whose oldest queued record arrived at `oldest_since`
    /// flushes its partial batch: `interval` after that record arrived; but
    /// once the consumer has found nothing more to read (`handed_over`),
    /// `interval` after the lane's `last_flush` ended (at once if it has not
    /// flushed yet), if that is sooner — never before the record arrived.
    pub fn due(&self, oldest_since: Instant, handed_over: bool, last_flush: Option<Instant>) -> Instant {
        let waited = oldest_since + self.interval;
        if !handed_over {
            return waited;
        }
        let spaced = last_flush.map_or(oldest_since, |end| (end + self.interval).max(oldest_since));
        waited.min(spaced)
    }

    /// Feeds the latency of a committed flush.
    pub fn observe(&mut self, latency: Duration) {
        let sample = latency.as_secs_f64();
        let smoothed = match self.ewma {
            None => sample,
            Some(prev) => ALPHA * sample + (1.0 - ALPHA) * prev,
        };
        self.ewma = Some(smoothed);
        let target = self.settings.target_latency.as_secs_f64();
        let s = &self.settings;
        if smoothed > SLOW * target {
            self.interval = self.interval.mul_f64(1.5).min(s.max_interval);
            self.batch_rows = ((self.batch_rows as f64 * 0.75) as usize).max(s.min_batch_rows);
        } else if smoothed < FAST * target {
            self.interval = self.interval.mul_f64(0.8).max(s.min_interval);
            self.batch_rows = ((self.batch_rows as f64 * 1.25).ceil() as usize).min(s.max_batch_rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> FlushSettings {
        FlushSettings {
            target_latency: Duration::from_millis(500),
            min_interval: Duration::from_millis(20),
            max_interval: Duration::from_secs(5),
            max_batch_rows: 10_000,
            min_batch_rows: 500,
        }
    }

    /// A simulated database: a flush of `rows` takes `base + rows × per_row`.
    #[derive(Clone, Copy)]
    struct Db {
        base: f64,
        per_row: f64,
    }

    impl Db {
        fn latency(self, rows: usize) -> f64 {
            self.base + rows as f64 * self.per_row
        }
    }

    /// Discrete-event simulation of the writer: records arrive at `rate`/s;
    /// a flush happens when `batch_rows` are waiting or the oldest waited
    /// `interval`; a flush of n rows takes `db(t).latency(n)` during which
    /// records keep arriving. Returns (record latencies, batch sizes, policy).
    fn simulate(rate: f64, seconds: f64, db: impl Fn(f64) -> Db, policy: &mut FlushPolicy) -> (Vec<f64>, Vec<usize>) {
        let mut t = 0.0;
        let mut queue: std::collections::VecDeque<f64> = Default::default();
        let mut next_arrival = 0.0;
        let mut latencies = Vec::new();
        let mut batches = Vec::new();
        while t < seconds {
            // Arrivals up to now.
            while next_arrival <= t {
                queue.push_back(next_arrival);
                next_arrival += 1.0 / rate;
            }
            let due = queue.front().map(|first| first + policy.interval().as_secs_f64());
            let ready = queue.len() >= policy.batch_rows() || due.is_some_and(|d| d <= t);
            if ready {
                let n = queue.len().min(policy.batch_rows());
                let took = db(t).latency(n);
                t += took;
                for _ in 0..n {
                    latencies.push(t - queue.pop_front().unwrap());
                }
                batches.push(n);
                policy.observe(Duration::from_secs_f64(took));
            } else {
                // Advance to the next event: an arrival or the interval expiring.
                let next = due.map_or(next_arrival, |d| d.min(next_arrival));
                t = next.max(t + 1e-6);
            }
        }
        (latencies, batches)
    }

    /// Discrete-event simulation of a lane fed in bursts, as the consumer
    /// hands over a fetch response: every `gap` s `size` records arrive at
    /// once, after which the consumer finds nothing more to read (handed
    /// over, when `hand_over`). A partial batch flushes at [`FlushPolicy::due`],
    /// a full one at once; a flush of n rows takes `db.latency(n)`. Returns
    /// the record latencies (arrival → flush end) and each flush's (start, end).
    fn simulate_bursts(
        (gap, size, seconds): (f64, usize, f64),
        db: Db,
        hand_over: bool,
        policy: &mut FlushPolicy,
    ) -> (Vec<f64>, Vec<(f64, f64)>) {
        let base = Instant::now();
        let at = |t: f64| base + Duration::from_secs_f64(t);
        let mut t = 0.0;
        let mut queue: std::collections::VecDeque<f64> = Default::default();
        // As the buffer keeps it: the oldest queued arrival, or the last take if later.
        let mut oldest: Option<f64> = None;
        let mut last_end: Option<f64> = None;
        let mut next_burst = 0.0;
        let (mut latencies, mut flushes) = (Vec::new(), Vec::new());
        while t < seconds {
            while next_burst <= t {
                queue.extend(std::iter::repeat_n(next_burst, size));
                oldest.get_or_insert(next_burst);
                next_burst += gap;
            }
            let due = oldest.map(|o| {
                let due = policy.due(at(o), hand_over, last_end.map(at));
                due.duration_since(base).as_secs_f64()
            });
            if queue.len() >= policy.batch_rows() || due.is_some_and(|d| d <= t + 1e-9) {
                let n = queue.len().min(policy.batch_rows());
                let (start, took) = (t, db.latency(n));
                t += took;
                latencies.extend(queue.drain(..n).map(|arrived| t - arrived));
                oldest = (!queue.is_empty()).then_some(start);
                flushes.push((start, t));
                last_end = Some(t);
                policy.observe(Duration::from_secs_f64(took));
            } else {
                let next = due.map_or(next_burst, |d| d.min(next_burst));
                t = next.max(t + 1e-6);
            }
        }
        (latencies, flushes)
    }

    #[test]
    fn due_is_an_interval_after_the_oldest_record_or_after_the_last_flush_once_handed_over() {
        let policy = FlushPolicy::new(settings(), Duration::from_millis(20));
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Not handed over: the oldest record waits the interval for company.
        assert_eq!(policy.due(ms(100), false, Some(ms(99))), ms(120));
        assert_eq!(policy.due(ms(100), false, None), ms(120));
        // Handed over: at once after a quiet spell, or before any flush...
        assert_eq!(policy.due(ms(100), true, Some(ms(50))), ms(100));
        assert_eq!(policy.due(ms(100), true, Some(ms(80))), ms(100));
        assert_eq!(policy.due(ms(100), true, None), ms(100));
        // ...else an interval after the last flush ended...
        assert_eq!(policy.due(ms(100), true, Some(ms(90))), ms(110));
        // ...and never later than without the hand-over.
        assert_eq!(policy.due(ms(100), true, Some(ms(105))), ms(120));
    }

    #[test]
    fn bursts_after_a_quiet_spell_are_written_at_once_once_handed_over() {
        let db = Db {
            base: 0.004,
            per_row: 0.000_005,
        };
        let flush_of_a_burst = db.latency(10);
        // A burst of 10 records every 100 ms, the interval at its 20 ms floor.
        let run = |hand_over| {
            let mut policy = FlushPolicy::new(settings(), Duration::from_millis(20));
            simulate_bursts((0.1, 10, 20.0), db, hand_over, &mut policy)
        };
        let (waited, flushes) = run(false);
        assert_eq!(flushes.len(), 200, "one flush a burst");
        assert!(
            waited.iter().all(|l| (l - (0.020 + flush_of_a_burst)).abs() < 1e-6),
            "without the hand-over every record waits out the interval"
        );
        let (at_once, flushes) = run(true);
        assert_eq!(flushes.len(), 200, "one flush a burst");
        assert!(
            at_once.iter().all(|l| (l - flush_of_a_burst).abs() < 1e-6),
            "handed over, a burst is flushed as it arrives: {:?}",
            at_once.iter().cloned().fold(0.0, f64::max)
        );
    }

    #[test]
    fn handed_over_flushes_stay_an_interval_apart() {
        let db = Db {
            base: 0.004,
            per_row: 0.000_005,
        };
        // A burst of 5 records every 5 ms: handed over after each, yet the
        // lane flushes at most once per 20 ms interval.
        let mut policy = FlushPolicy::new(settings(), Duration::from_millis(20));
        let (latencies, flushes) = simulate_bursts((0.005, 5, 10.0), db, true, &mut policy);
        assert_eq!(policy.interval(), Duration::from_millis(20));
        assert!(
            flushes.windows(2).all(|w| w[1].0 - w[0].0 >= 0.020 - 1e-9),
            "a flush started within an interval of the previous one"
        );
        assert!(flushes.len() <= 500, "{} flushes in 10 s", flushes.len());
        let worst = latencies.iter().cloned().fold(0.0, f64::max);
        assert!(worst < 0.020 + db.latency(30) + 1e-6, "worst latency {worst:.4} s");
    }

    fn percentile(values: &mut [f64], p: f64) -> f64 {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        values[((values.len() - 1) as f64 * p) as usize]
    }

    #[test]
    fn light_load_flushes_at_min_interval_with_low_latency() {
        let mut policy = FlushPolicy::new(settings(), Duration::from_millis(200));
        let fast = Db {
            base: 0.004,
            per_row: 0.000_005,
        };
        let (mut lat, _) = simulate(500.0, 30.0, |_| fast, &mut policy);
        assert_eq!(policy.interval(), Duration::from_millis(20));
        let tail = lat.split_off(lat.len() / 2);
        let mut tail = tail;
        let p99 = percentile(&mut tail, 0.99);
        assert!(p99 < 0.040, "p99 {p99:.3}s at light load");
    }

    #[test]
    fn heavy_load_keeps_up_with_bounded_latency() {
        let mut policy = FlushPolicy::new(settings(), Duration::from_millis(200));
        // 10k rows in ~45 ms: fast against a 500 ms target; capacity ~220k rows/s.
        let db = Db {
            base: 0.005,
            per_row: 0.000_004,
        };
        let (lat, _) = simulate(150_000.0, 20.0, |_| db, &mut policy);
        assert_eq!(policy.batch_rows(), 10_000, "fast flushes open the batch limit fully");
        let worst = lat[lat.len() - 10_000..].iter().cloned().fold(0.0, f64::max);
        assert!(worst < 0.1, "keeps up: worst recent latency {worst:.3}s");
    }

    #[test]
    fn catch_up_flushes_full_batches_back_to_back() {
        let mut policy = FlushPolicy::new(settings(), Duration::from_millis(200));
        let db = Db {
            base: 0.005,
            per_row: 0.000_004,
        };
        // Arrivals (400k/s) beyond capacity: a backlog, as after an outage.
        let (_, batches) = simulate(400_000.0, 10.0, |_| db, &mut policy);
        let late = &batches[batches.len() / 2..];
        assert!(
            late.iter().all(|n| *n == 10_000),
            "every catch-up batch is full: {:?}",
            &late[..5]
        );
    }

    #[test]
    fn one_latency_spike_barely_moves_the_batch_size() {
        let mut policy = FlushPolicy::new(settings(), Duration::from_millis(200));
        for _ in 0..20 {
            policy.observe(Duration::from_millis(100));
        }
        let before = (policy.interval(), policy.batch_rows());
        policy.observe(Duration::from_millis(1_500)); // 3 × target, once
        let after = (policy.interval(), policy.batch_rows());
        assert_eq!(before, after, "a single 3× spike is absorbed by the average");
    }

    #[test]
    fn slow_database_gets_rarer_smaller_batches_then_recovery_restores_them() {
        let mut policy = FlushPolicy::new(settings(), Duration::from_millis(200));
        let slow = Db {
            base: 2.0,
            per_row: 0.000_1,
        };
        let fast = Db {
            base: 0.004,
            per_row: 0.000_005,
        };
        simulate(2_000.0, 60.0, |_| slow, &mut policy);
        assert_eq!(policy.interval(), Duration::from_secs(5), "probes at max_interval");
        assert_eq!(policy.batch_rows(), 500, "batches shrink to the minimum");
        // Recovery: within a few seconds of normal service both are back.
        simulate(2_000.0, 20.0, |_| fast, &mut policy);
        assert_eq!(policy.interval(), Duration::from_millis(20));
        assert_eq!(policy.batch_rows(), 10_000);
    }

    #[test]
    fn stays_within_bounds_whatever_it_sees() {
        let mut policy = FlushPolicy::new(settings(), Duration::from_secs(60));
        assert_eq!(policy.interval(), Duration::from_secs(5), "initial interval clamped");
        for i in 0..1000u64 {
            policy.observe(Duration::from_millis((i * 7919) % 3000));
            assert!(policy.interval() >= Duration::from_millis(20) && policy.interval() <= Duration::from_secs(5));
            assert!((500..=10_000).contains(&policy.batch_rows()));
        }
    }
}
