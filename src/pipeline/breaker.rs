//! The circuit breaker around a pipeline's database writes.
//!
//! CLOSED counts consecutive *transient* failures (the one classifier in
//! `postgres::error` decides); at `failure_threshold` it opens. OPEN attempts
//! nothing for the open duration, which doubles with each consecutive
//! opening up to a cap, with ±20 % jitter so a fleet of instances does not
//! probe a recovering database in lockstep. Then HALF_OPEN lets exactly one
//! trial flush through at a time (a pipeline's writer lanes share one
//! breaker; the others wait for the trial's outcome): success closes the
//! breaker, failure re-opens it.
//!
//! Pure logic: the caller passes `Instant`s, so tests drive it without
//! sleeping. The state lives here only: observers (`/readyz`, `/status`,
//! `sluice_breaker_state`) read the [`BreakerGauge`] the breaker itself
//! sets on every transition.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open_duration: Duration,
    pub max_open_duration: Duration,
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Writes flow; `failures` consecutive transient failures so far.
    Closed { failures: u32 },
    /// Nothing is attempted until `until`.
    Open { until: Instant },
    /// One trial write is allowed.
    HalfOpen,
}

impl BreakerState {
    /// The phase, as observers see it.
    pub fn phase(self) -> BreakerPhase {
        match self {
            BreakerState::Closed { .. } => BreakerPhase::Closed,
            BreakerState::HalfOpen => BreakerPhase::HalfOpen,
            BreakerState::Open { .. } => BreakerPhase::Open,
        }
    }

    /// The name logs use.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A breaker's state without its data: the value of `sluice_breaker_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerPhase {
    /// Flushes go through (also the value while no breaker exists).
    Closed = 0,
    /// One trial flush is let through.
    HalfOpen = 1,
    /// Nothing is attempted; `/readyz` is unready.
    Open = 2,
}

impl BreakerPhase {
    /// The label value (`state="…"`) and `/status`'s `breaker`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerPhase::Closed => "CLOSED",
            BreakerPhase::HalfOpen => "HALF_OPEN",
            BreakerPhase::Open => "OPEN",
        }
    }
}

/// Where observers read a breaker's phase, without a lock; only the
/// breaker writes it.
#[derive(Debug, Default)]
pub struct BreakerGauge(AtomicU8);

impl BreakerGauge {
    pub fn get(&self) -> BreakerPhase {
        match self.0.load(Ordering::Relaxed) {
            1 => BreakerPhase::HalfOpen,
            2 => BreakerPhase::Open,
            _ => BreakerPhase::Closed,
        }
    }

    fn set(&self, phase: BreakerPhase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }
}

/// May a write be attempted now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    /// Wait until this instant, then ask again.
    Wait(Instant),
    /// Another writer lane's HALF_OPEN trial is under way: ask again at
    /// this instant. The database may well be up, so requests to flush
    /// everything keep waiting instead of being answered at once.
    AwaitTrial(Instant),
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    /// Consecutive openings without a success: drives the growing duration.
    openings: u32,
    /// xorshift state for the jitter; seeded per breaker.
    rng: u64,
    /// Where the phase is published.
    gauge: Arc<BreakerGauge>,
    /// The HALF_OPEN trial under way: its number and when it began.
    trial: Option<(u64, Instant)>,
    /// Trials handed out so far (numbers them).
    trials: u64,
    /// A trial not reported within this long is taken as lost (its writer
    /// died), and the next lane may try: longer than any write may take.
    trial_timeout: Duration,
}

/// The HALF_OPEN trial a permitted write is, if it is one: its outcome is
/// reported with it, and only the current trial's outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial(u64);

/// How long a writer lane waits before asking again while another lane's
/// HALF_OPEN trial is under way.
pub const TRIAL_POLL: Duration = Duration::from_millis(50);

impl Breaker {
    /// A closed breaker that publishes its phase in `gauge`.
    pub fn new(settings: BreakerSettings, seed: u64, gauge: Arc<BreakerGauge>) -> Self {
        gauge.set(BreakerPhase::Closed);
        Self {
            settings,
            state: BreakerState::Closed { failures: 0 },
            openings: 0,
            rng: seed | 1,
            gauge,
            trial: None,
            trials: 0,
            trial_timeout: Duration::from_secs(600),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Sets how long a trial may go unreported before it is taken as lost
    /// (use more than the write timeout).
    pub fn with_trial_timeout(mut self, timeout: Duration) -> Self {
        self.trial_timeout = timeout;
        self
    }

    /// Asks for permission to write; OPEN turns HALF_OPEN once its time is
    /// up, and HALF_OPEN lets one trial through until its outcome is
    /// reported ([`Breaker::on_success`], [`Breaker::on_transient_failure`]
    /// or [`Breaker::settled`]) or it is lost (`trial_timeout`).
    pub fn permit(&mut self, now: Instant, pipeline: &str) -> Permit {
        match self.state {
            BreakerState::Closed { .. } => Permit::Allowed,
            BreakerState::HalfOpen => match self.trial {
                Some((_, since)) if now.saturating_duration_since(since) < self.trial_timeout => {
                    Permit::AwaitTrial(now + TRIAL_POLL)
                }
                _ => {
                    self.begin_trial(now);
                    Permit::Allowed
                }
            },
            BreakerState::Open { until } if now >= until => {
                self.transition(BreakerState::HalfOpen, pipeline);
                self.begin_trial(now);
                Permit::Allowed
            }
            BreakerState::Open { until } => Permit::Wait(until),
        }
    }

    fn begin_trial(&mut self, now: Instant) {
        self.trials += 1;
        self.trial = Some((self.trials, now));
    }

    /// The trial the write just permitted is, if it is one (ask under the
    /// same lock as [`Breaker::permit`]); its outcome is reported with it.
    pub fn trial(&self) -> Option<Trial> {
        match (self.state, self.trial) {
            (BreakerState::HalfOpen, Some((n, _))) => Some(Trial(n)),
            _ => None,
        }
    }

    /// Whether `trial` is the trial under way.
    fn is_current(&self, trial: Option<Trial>) -> bool {
        matches!((self.trial, trial), (Some((n, _)), Some(Trial(m))) if n == m)
    }

    /// An attempt ended in neither success nor a transient failure (a data
    /// or configuration error, a dead-letter topic failure): if it was the
    /// HALF_OPEN trial under way, the trial is over; the state stays.
    pub fn settled(&mut self, trial: Option<Trial>) {
        if self.is_current(trial) {
            self.trial = None;
        }
    }

    /// Records a success (a committed or fenced write: the database
    /// answered), whichever write it was: closes the breaker.
    pub fn on_success(&mut self, pipeline: &str) {
        self.trial = None;
        self.openings = 0;
        match self.state {
            BreakerState::Closed { .. } => self.state = BreakerState::Closed { failures: 0 },
            _ => self.transition(BreakerState::Closed { failures: 0 }, pipeline),
        }
    }

    /// Records a transient failure of a write that was a HALF_OPEN trial
    /// (`trial`) or not. Data and configuration errors are not the database
    /// being unavailable and must not be passed here. While a trial is under
    /// way, the failure of any other write (one that started before the
    /// breaker opened, or an earlier trial taken as lost) is stale and
    /// changes nothing.
    pub fn on_transient_failure(&mut self, now: Instant, pipeline: &str, trial: Option<Trial>) {
        if self.state == BreakerState::HalfOpen && self.trial.is_some() && !self.is_current(trial) {
            return;
        }
        self.trial = None;
        match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.settings.failure_threshold => {
                self.state = BreakerState::Closed { failures: failures + 1 };
            }
            BreakerState::Closed { .. } | BreakerState::HalfOpen => {
                let duration = self.open_duration();
                self.openings += 1;
                self.transition(BreakerState::Open { until: now + duration }, pipeline);
            }
            // A failure reported while open (a write that started before it opened).
            BreakerState::Open { .. } => {}
        }
    }

    /// `open_duration × 2^openings`, capped, ±20 % jitter.
    fn open_duration(&mut self) -> Duration {
        let base = self
            .settings
            .open_duration
            .saturating_mul(1u32 << self.openings.min(16));
        let capped = base.min(self.settings.max_open_duration);
        // xorshift64: good enough for jitter, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng % 10_000) as f64 / 10_000.0; // [0, 1)
        capped.mul_f64(0.8 + 0.4 * unit)
    }

    fn transition(&mut self, to: BreakerState, pipeline: &str) {
        let from = std::mem::replace(&mut self.state, to);
        self.gauge.set(to.phase());
        match to {
            BreakerState::Open { until } => warn!(
                pipeline, from = from.name(), to = to.name(), open_for = ?until.saturating_duration_since(Instant::now()),
                "circuit breaker opened: database writes paused"
            ),
            _ => info!(
                pipeline,
                from = from.name(),
                to = to.name(),
                "circuit breaker state changed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerSettings {
                failure_threshold: 3,
                open_duration: Duration::from_secs(1),
                max_open_duration: Duration::from_secs(8),
            },
            42,
            Arc::default(),
        )
    }

    #[test]
    fn the_gauge_follows_every_transition() {
        let gauge = Arc::new(BreakerGauge::default());
        let settings = BreakerSettings {
            failure_threshold: 1,
            open_duration: Duration::from_secs(1),
            max_open_duration: Duration::from_secs(1),
        };
        let mut b = Breaker::new(settings, 7, gauge.clone());
        let t = Instant::now();
        assert_eq!(gauge.get(), BreakerPhase::Closed);
        b.on_transient_failure(t, "p", None);
        assert_eq!(gauge.get(), BreakerPhase::Open);
        assert_eq!(b.permit(t + Duration::from_secs(2), "p"), Permit::Allowed);
        assert_eq!(gauge.get(), BreakerPhase::HalfOpen);
        b.on_success("p");
        assert_eq!((gauge.get(), gauge.get().as_str()), (BreakerPhase::Closed, "CLOSED"));
        assert_eq!(b.state().name(), "closed", "logs keep their own names");
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let mut b = breaker();
        let t = Instant::now();
        b.on_transient_failure(t, "p", None);
        b.on_transient_failure(t, "p", None);
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        b.on_success("p");
        b.on_transient_failure(t, "p", None);
        b.on_transient_failure(t, "p", None);
        assert!(
            matches!(b.state(), BreakerState::Closed { .. }),
            "a success resets the count"
        );
        b.on_transient_failure(t, "p", None);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(
            matches!(b.permit(t, "p"), Permit::Wait(_)),
            "nothing is attempted while open"
        );
    }

    #[test]
    fn half_open_lets_one_trial_and_its_outcome_decides() {
        let mut b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_transient_failure(t, "p", None);
        }
        let BreakerState::Open { until } = b.state() else {
            panic!()
        };
        let first = until - t;
        assert!(
            first >= Duration::from_millis(800) && first <= Duration::from_millis(1200),
            "{first:?}"
        );
        assert_eq!(b.permit(until, "p"), Permit::Allowed);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // One trial at a time: another writer lane waits for its outcome;
        // one that settles otherwise (a data error) lets the next through.
        let trial = b.trial();
        assert!(trial.is_some());
        assert_eq!(b.permit(until, "p"), Permit::AwaitTrial(until + TRIAL_POLL));
        // Reports of writes that are not the trial change nothing...
        b.settled(None);
        b.on_transient_failure(until, "p", None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.permit(until, "p"), Permit::AwaitTrial(until + TRIAL_POLL));
        // ...the trial's own does.
        b.settled(trial);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.permit(until, "p"), Permit::Allowed);
        let second = b.trial();
        assert_ne!(second, trial);
        // The first trial's late report is stale: the second is under way.
        b.on_transient_failure(until, "p", trial);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.permit(until, "p"), Permit::AwaitTrial(until + TRIAL_POLL));
        // A trial never reported (its writer died) is lost after the trial
        // timeout, and another lane may try.
        let lost = until + Duration::from_secs(600);
        assert_eq!(b.permit(lost, "p"), Permit::Allowed);
        let third = b.trial();
        assert_ne!(third, second);
        // The trial fails: open again, for longer.
        b.on_transient_failure(until, "p", third);
        let BreakerState::Open { until: until2 } = b.state() else {
            panic!()
        };
        let second = until2 - until;
        assert!(
            second >= Duration::from_millis(1600) && second <= Duration::from_millis(2400),
            "{second:?}"
        );
        // The next trial succeeds: closed, and the duration starts over.
        assert_eq!(b.permit(until2, "p"), Permit::Allowed);
        b.on_success("p");
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        for _ in 0..3 {
            b.on_transient_failure(until2, "p", None);
        }
        let BreakerState::Open { until: until3 } = b.state() else {
            panic!()
        };
        assert!(until3 - until2 <= Duration::from_millis(1200));
    }

    #[test]
    fn open_duration_grows_to_the_cap_with_jitter() {
        let mut b = breaker();
        let mut t = Instant::now();
        let mut durations = Vec::new();
        for _ in 0..3 {
            b.on_transient_failure(t, "p", None);
        }
        for _ in 0..8 {
            let BreakerState::Open { until } = b.state() else {
                panic!()
            };
            durations.push(until - t);
            t = until;
            assert_eq!(b.permit(t, "p"), Permit::Allowed);
            let trial = b.trial();
            b.on_transient_failure(t, "p", trial);
        }
        assert!(
            durations.iter().all(|d| *d <= Duration::from_millis(9600)),
            "{durations:?}"
        );
        assert!(
            durations[5..].iter().all(|d| *d >= Duration::from_millis(6400)),
            "at the cap: {durations:?}"
        );
        let distinct: std::collections::HashSet<_> = durations[5..].iter().collect();
        assert!(distinct.len() > 1, "jittered: {durations:?}");
    }
}
