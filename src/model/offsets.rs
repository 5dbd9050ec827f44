//! All offset arithmetic lives here.
//!
//! Kafka speaks in *next* offsets: a committed offset (and sluice's
//! `sluice.offsets.next_offset`) is the offset of the next record to read,
//! one past the last record processed. Batches speak in *inclusive* ranges of
//! the records they hold. Mixing the two is the classic off-by-one that
//! either skips a record or writes it twice, so every conversion goes
//! through these functions.

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

/// Why a position is outside the log a broker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRange {
    /// Below the log start: retention deleted the records before they were read.
    BelowStart,
    /// Above the log end: the log is not the one the position was taken in
    /// (the topic was deleted and re-created), or it lost records.
    AboveEnd,
}

impl OutOfRange {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BelowStart => "below the log start",
            Self::AboveEnd => "above the log end",
        }
    }
}

/// Whether `position` lies outside the log `[low, high]`, where `low` is the
/// first retained offset and `high` the next to be written (the high
/// watermark): a position equal to `high` waits for the next record.
pub fn out_of_range(position: NextOffset, low: i64, high: i64) -> Option<OutOfRange> {
    if position.0 < low {
        Some(OutOfRange::BelowStart)
    } else if position.0 > high {
        Some(OutOfRange::AboveEnd)
    } else {
        None
    }
}

/// Where a partition positioned outside its log `[low, high]` continues when
/// skipping to the log's start (`to_earliest`) or end, and how many records
/// that passes over that the position still had ahead of it: below the
/// start, those retention deleted (and, to the end, every retained one);
/// above the end, the retained ones skipped to reach the end.
pub fn skip_to(position: NextOffset, low: i64, high: i64, to_earliest: bool) -> (NextOffset, i64) {
    let to = if to_earliest { low } else { high };
    let skipped = if position.0 < low { to - position.0 } else { to - low };
    (NextOffset(to), skipped.max(0))
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
    fn out_of_range_is_outside_low_to_high_inclusive() {
        assert_eq!(out_of_range(NextOffset(4), 5, 10), Some(OutOfRange::BelowStart));
        assert_eq!(out_of_range(NextOffset(5), 5, 10), None, "the first retained record");
        assert_eq!(out_of_range(NextOffset(10), 5, 10), None, "waiting for the next record");
        assert_eq!(out_of_range(NextOffset(11), 5, 10), Some(OutOfRange::AboveEnd));
        assert_eq!(out_of_range(NextOffset(0), 0, 0), None, "an empty log");
    }

    #[test]
    fn skip_to_counts_what_the_position_had_ahead() {
        // Stored 100, retention kept [150, 200): 50 deleted, then 50 retained.
        assert_eq!(skip_to(NextOffset(100), 150, 200, true), (NextOffset(150), 50));
        assert_eq!(skip_to(NextOffset(100), 150, 200, false), (NextOffset(200), 100));
        // Stored 1000, the re-created topic holds [0, 10).
        assert_eq!(skip_to(NextOffset(1000), 0, 10, true), (NextOffset(0), 0));
        assert_eq!(skip_to(NextOffset(1000), 0, 10, false), (NextOffset(10), 10));
    }
}
