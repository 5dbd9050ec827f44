//! All offset arithmetic lives here.
//!
//! Kafka speaks in *next* offsets: a committed offset (and sluice's
//! `sluice.offsets.next_offset`) is the offset of the next record to read,
//! one past the last record processed. Batches speak in *inclusive* ranges of
//! the records they hold. Mixing the two is the classic off-by-one that
//! either skips a record or writes it twice, so every conversion goes
//! through these functions.

use rdkafka::Offset;

/// The stored position of a partition: the offset the next batch starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextOffset(pub i64);

/// An inclusive range of offsets `[first, last]` that a batch covers for one
/// partition: every offset in it was written or deliberately skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covered {
    pub first: i64,
    pub last: i64,
}

impl Covered {
    pub fn single(offset: i64) -> Self {
        Self {
            first: offset,
            last: offset,
        }
    }

    /// Extends the range with a later record of the same partition.
    /// Offsets may jump (compaction, transaction markers) but never go back.
    pub fn extend(&mut self, offset: i64) {
        debug_assert!(offset > self.last, "offsets go forward within a partition");
        self.last = offset;
    }

    /// Widens the range to include `offset`, wherever it falls (offsets
    /// dropped from the head of a buffer come after the rows that follow them).
    pub fn include(&mut self, offset: i64) {
        self.first = self.first.min(offset);
        self.last = self.last.max(offset);
    }

    /// The position to store once this range is committed: one past the last
    /// record it covers.
    pub fn next(self) -> NextOffset {
        NextOffset(self.last + 1)
    }
}

/// Where to start a partition on assignment: the stored position when there
/// is one, else the configured reset policy.
pub fn start_position(stored: Option<NextOffset>, reset_to_earliest: bool) -> Offset {
    match stored {
        Some(NextOffset(next)) => Offset::Offset(next),
        None if reset_to_earliest => Offset::Beginning,
        None => Offset::End,
    }
}

/// Whether a freshly polled record belongs after what the buffer already
/// holds for its partition. `expected` is the next offset the buffer expects
/// (`None`: nothing read yet on this assignment, anything goes). A record
/// below it was already taken (redelivered after a seek) and must be ignored;
/// a record at or above it is new (gaps are normal: compaction, markers).
pub fn is_new(expected: Option<NextOffset>, offset: i64) -> bool {
    match expected {
        None => true,
        Some(NextOffset(next)) => offset >= next,
    }
}

/// Consumer lag of a partition: records in `[position, high_watermark)`.
pub fn lag(position: NextOffset, high_watermark: i64) -> i64 {
    (high_watermark - position.0).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_next_is_one_past_last() {
        let mut c = Covered::single(41);
        assert_eq!(c.next(), NextOffset(42));
        c.extend(45);
        assert_eq!(c, Covered { first: 41, last: 45 });
        assert_eq!(c.next(), NextOffset(46));
    }

    #[test]
    fn include_widens_both_ways() {
        let mut c = Covered::single(10);
        c.include(7);
        c.include(12);
        c.include(11);
        assert_eq!(c, Covered { first: 7, last: 12 });
    }

    #[test]
    fn start_position_prefers_stored() {
        assert_eq!(start_position(Some(NextOffset(7)), true), Offset::Offset(7));
        assert_eq!(start_position(Some(NextOffset(0)), false), Offset::Offset(0));
        assert_eq!(start_position(None, true), Offset::Beginning);
        assert_eq!(start_position(None, false), Offset::End);
    }

    #[test]
    fn is_new_rejects_redelivery_and_allows_gaps() {
        assert!(is_new(None, 0));
        assert!(is_new(None, 999));
        assert!(is_new(Some(NextOffset(10)), 10));
        assert!(is_new(Some(NextOffset(10)), 12));
        assert!(!is_new(Some(NextOffset(10)), 9));
    }

    #[test]
    fn lag_never_negative() {
        assert_eq!(lag(NextOffset(10), 15), 5);
        // tansu and compacted topics can report a high watermark below our position.
        assert_eq!(lag(NextOffset(10), 8), 0);
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
