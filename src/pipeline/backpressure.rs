//! The backpressure state machine of DESIGN.md, in one place.
//!
//! | state | utilization |
//! | --- | --- |
//! | NORMAL | < low watermark |
//! | ELEVATED | low .. high (sampling starts here) |
//! | CRITICAL | high .. full (`block` pauses the partitions) |
//! | BLOCKED | full: intake refused |
//! | DRAINING | shutdown: no intake, flush everything |
//!
//! Upward transitions are immediate. Downward ones wait until utilization is
//! [`DOWN_MARGIN`] below the boundary, so a buffer hovering at a watermark
//! does not log a transition per record.

use std::fmt;

use tracing::info;

/// How far below a boundary utilization must fall to move down a state.
pub const DOWN_MARGIN: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BpState {
    Normal = 0,
    Elevated = 1,
    Critical = 2,
    Blocked = 3,
    Draining = 4,
}

impl BpState {
    pub fn as_str(self) -> &'static str {
        match self {
            BpState::Normal => "NORMAL",
            BpState::Elevated => "ELEVATED",
            BpState::Critical => "CRITICAL",
            BpState::Blocked => "BLOCKED",
            BpState::Draining => "DRAINING",
        }
    }

    /// The state utilization alone implies.
    pub fn classify(utilization: f64, high: f64, low: f64) -> BpState {
        if utilization >= 1.0 {
            BpState::Blocked
        } else if utilization >= high {
            BpState::Critical
        } else if utilization >= low {
            BpState::Elevated
        } else {
            BpState::Normal
        }
    }

    /// The one transition function: where `self` goes at `utilization`.
    pub fn next(self, utilization: f64, high: f64, low: f64, draining: bool) -> BpState {
        if draining || self == BpState::Draining {
            return BpState::Draining;
        }
        let raw = BpState::classify(utilization, high, low);
        if raw >= self {
            return raw;
        }
        // Going down: only as far as utilization clears the boundaries by the margin.
        BpState::classify(utilization + DOWN_MARGIN, high, low).min(self)
    }
}

impl fmt::Display for BpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one log line per transition.
pub fn log_transition(pipeline: &str, from: BpState, to: BpState, utilization: f64) {
    info!(
        pipeline,
        from = from.as_str(),
        to = to.as_str(),
        utilization = format!("{utilization:.3}"),
        "backpressure state changed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: f64 = 0.8;
    const L: f64 = 0.5;

    #[test]
    fn classify_matches_the_table() {
        assert_eq!(BpState::classify(0.0, H, L), BpState::Normal);
        assert_eq!(BpState::classify(0.5, H, L), BpState::Elevated);
        assert_eq!(BpState::classify(0.8, H, L), BpState::Critical);
        assert_eq!(BpState::classify(1.0, H, L), BpState::Blocked);
    }

    #[test]
    fn up_is_immediate_down_is_damped() {
        let s = BpState::Normal.next(0.85, H, L, false);
        assert_eq!(s, BpState::Critical);
        assert_eq!(
            s.next(0.78, H, L, false),
            BpState::Critical,
            "within the margin below high"
        );
        assert_eq!(s.next(0.74, H, L, false), BpState::Elevated);
        assert_eq!(BpState::Elevated.next(0.47, H, L, false), BpState::Elevated);
        assert_eq!(BpState::Elevated.next(0.44, H, L, false), BpState::Normal);
        assert_eq!(BpState::Blocked.next(0.0, H, L, false), BpState::Normal);
    }

    #[test]
    fn draining_is_terminal() {
        assert_eq!(BpState::Normal.next(0.1, H, L, true), BpState::Draining);
        assert_eq!(BpState::Draining.next(0.1, H, L, false), BpState::Draining);
    }

    proptest! {
        /// The state never sits below what utilization implies, and never
        /// more than the margin above it.
        #[test]
        fn state_tracks_utilization(us in proptest::collection::vec(0.0f64..1.2, 1..200)) {
            let mut s = BpState::Normal;
            for u in us {
                s = s.next(u, H, L, false);
                prop_assert!(s >= BpState::classify(u, H, L));
                prop_assert!(s <= BpState::classify(u + DOWN_MARGIN, H, L));
            }
        }
    }
}
