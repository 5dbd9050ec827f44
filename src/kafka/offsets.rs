//! Where librdkafka starts a partition: the one offset conversion that
//! needs the Kafka client's types (the arithmetic is in [`crate::model::offsets`]).

use rdkafka::Offset;

use crate::model::offsets::NextOffset;

/// Where to start a partition on assignment: the stored position when there
/// is one, else the configured reset policy.
pub fn start_position(stored: Option<NextOffset>, reset_to_earliest: bool) -> Offset {
    match stored {
        Some(NextOffset(next)) => Offset::Offset(next),
        None if reset_to_earliest => Offset::Beginning,
        None => Offset::End,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::offsets::Covered;

    #[test]
    fn start_position_prefers_stored() {
        assert_eq!(start_position(Some(NextOffset(7)), true), Offset::Offset(7));
        assert_eq!(start_position(Some(NextOffset(0)), false), Offset::Offset(0));
        assert_eq!(start_position(None, true), Offset::Beginning);
        assert_eq!(start_position(None, false), Offset::End);
    }

    #[test]
    fn a_batch_then_restart_reads_exactly_the_rest() {
        // Records 0..=99 committed: a restart must start at 100, not 99 or 101.
        let mut c = Covered::single(0);
        for o in 1..=99 {
            c.extend(o);
        }
        assert_eq!(start_position(Some(c.next()), true), Offset::Offset(100));
    }
}
