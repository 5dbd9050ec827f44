//! The unique keys of encoded rows, read straight from their COPY text:
//! splitting a line into fields, hashing a row's keys, and [`RecentKeys`],
//! the bounded memory of the keys a pipeline wrote last. Equal encodings
//! are equal values (the encoder writes one form per value, except for a
//! whole-value `jsonb` column, written as the record's own text: equal
//! documents spelled differently are then left for Postgres to find); a key
//! with a NULL never equals another.

use std::collections::HashSet;
use std::hash::{BuildHasher as _, BuildHasherDefault, Hash, Hasher};

use crate::row::plan::UniqueKey;

/// The seed of the unique-key hashes (any constant: they never leave the process).
const KEY_SEED: u64 = 0x5_1ce;

/// Splits a COPY text row into its fields' byte ranges (into `out`, which
/// is cleared first); returns the line without its newline, which the
/// ranges index.
pub(crate) fn field_ranges<'a>(row: &'a [u8], out: &mut Vec<(usize, usize)>) -> &'a [u8] {
    field_ranges_upto(row, usize::MAX, out)
}

/// [`field_ranges`], stopping once field `last` is found: the ranges of
/// fields `0..=last` are exact, the fields after it are not split.
fn field_ranges_upto<'a>(row: &'a [u8], last: usize, out: &mut Vec<(usize, usize)>) -> &'a [u8] {
    let line = row.strip_suffix(b"\n").unwrap_or(row);
    out.clear();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\t', line) {
        out.push((start, i));
        start = i + 1;
        if out.len() > last {
            return line;
        }
    }
    out.push((start, line.len()));
    line
}

/// The fields of `key` in a line split by [`field_ranges`], in the key's
/// column order; `None` when one is NULL (or missing): such a key never
/// equals another.
pub(crate) fn key_fields<'a>(
    line: &'a [u8],
    fields: &'a [(usize, usize)],
    key: &'a UniqueKey,
) -> Option<impl Iterator<Item = &'a [u8]> + 'a> {
    let field = move |c: usize| fields.get(c).map(|&(from, to)| &line[from..to]);
    key.columns
        .iter()
        .all(|&c| field(c).is_some_and(|f| f != b"\\N"))
        .then(|| key.columns.iter().filter_map(move |&c| field(c)))
}

/// Hashes of the unique keys of one encoded row (a COPY text line of the
/// encoder's columns), one per key that has no NULL, into `out`, which is
/// cleared first. `fields` is scratch space, reused across rows. `table`
/// tells tables apart, so that equal keys of different tables don't match.
pub fn key_hashes(table: usize, keys: &[UniqueKey], row: &[u8], fields: &mut Vec<(usize, usize)>, out: &mut Vec<u64>) {
    out.clear();
    if keys.is_empty() {
        return;
    }
    // Key columns usually come first: the rest of the row is not split.
    let last = keys.iter().flat_map(|k| k.columns.iter().copied()).max().unwrap_or(0);
    let line = field_ranges_upto(row, last, fields);
    hash_keys(table, keys, line, fields, out);
}

/// [`key_hashes`] of a row whose fields' byte ranges are already known
/// (noted by [`crate::row::RowEncoder::encode_noting_fields`] as it wrote
/// the row): nothing is split again.
pub fn key_hashes_of_fields(
    table: usize,
    keys: &[UniqueKey],
    row: &[u8],
    fields: &[(usize, usize)],
    out: &mut Vec<u64>,
) {
    out.clear();
    hash_keys(table, keys, row, fields, out);
}

fn hash_keys(table: usize, keys: &[UniqueKey], line: &[u8], fields: &[(usize, usize)], out: &mut Vec<u64>) {
    for (k, key) in keys.iter().enumerate() {
        if let Some(parts) = key_fields(line, fields, key) {
            // foldhash, not SipHash: this runs for every row of such a
            // table, and DefaultHasher's fixed keys resist no attacker
            // either. A collision only keeps a raw record not needed.
            let mut hasher = foldhash::quality::FixedState::with_seed(KEY_SEED).build_hasher();
            (table, k).hash(&mut hasher);
            parts.for_each(|part| part.hash(&mut hasher));
            out.push(hasher.finish());
        }
    }
}

/// The unique keys of the most recent rows of a pipeline, as hashes: at
/// least the last `window` rows' and at most twice that many. The consumer
/// loop asks it about every row of an insert-mode table with a unique key;
/// a row whose key is among them will most likely be refused as a
/// duplicate (in its own batch, or the one before), so its raw record is
/// kept for the dead letter instead of being read back from Kafka. A miss
/// only costs that read; a hash collision only keeps bytes that are not
/// needed.
///
/// Memory: two hash sets of at most `window` (+ keys per row) `u64`s each;
/// with hashbrown's power-of-two tables of 9 bytes per slot, under
/// 42 × `window` bytes in all (295 KiB for a window of 10,000).
#[derive(Debug)]
pub struct RecentKeys {
    window: usize,
    current: HashSet<u64, BuildHasherDefault<PreHashed>>,
    previous: HashSet<u64, BuildHasherDefault<PreHashed>>,
}

impl RecentKeys {
    pub fn new(window: usize) -> RecentKeys {
        RecentKeys {
            window: window.max(1),
            current: HashSet::default(),
            previous: HashSet::default(),
        }
    }

    /// Remembers `hashes`; returns whether any of them was seen recently.
    pub fn seen(&mut self, hashes: &[u64]) -> bool {
        let mut seen = false;
        for h in hashes {
            // Always into the current generation, so a key seen again stays.
            let new = self.current.insert(*h);
            seen |= !new || self.previous.contains(h);
        }
        if self.current.len() >= self.window {
            // The older generation goes; its allocation is reused.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        seen
    }
}

/// The hasher of sets of hashes: the value is its own hash.
#[derive(Debug, Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are hashed with it; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_their_fields_only() {
        let key = |columns: Vec<usize>| UniqueKey {
            name: "k".into(),
            columns,
        };
        let (mut fields, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
        let hashes = |keys: &[UniqueKey], row: &[u8], fields: &mut Vec<(usize, usize)>, out: &mut Vec<u64>| {
            key_hashes(1, keys, row, fields, out);
            out.clone()
        };
        let first = [key(vec![0])];
        // Equal keys, different rest: equal hashes; a different key differs.
        let h1 = hashes(&first, b"7\tx\ty\n", &mut fields, &mut a);
        assert_eq!(h1, hashes(&first, b"7\tz\n", &mut fields, &mut b));
        assert_ne!(h1, hashes(&first, b"8\tx\ty\n", &mut fields, &mut b));
        // A composite key on later columns, one NULL: no hash.
        let later = [key(vec![2, 1])];
        let h2 = hashes(&later, b"1\ta\tb\tc\n", &mut fields, &mut a);
        assert_eq!(h2.len(), 1);
        assert_eq!(h2, hashes(&later, b"2\ta\tb\n", &mut fields, &mut b));
        assert_ne!(h2, hashes(&later, b"1\ta\tbb\tc\n", &mut fields, &mut b));
        assert!(hashes(&later, b"1\t\\N\tb\n", &mut fields, &mut b).is_empty());
        // The early stop splits the fields it reaches like the full split.
        let row = b"a\tbb\t\tccc\td\n";
        let mut full = Vec::new();
        field_ranges(row, &mut full);
        for last in 0..6 {
            field_ranges_upto(row, last, &mut fields);
            let n = (last + 1).min(full.len());
            assert_eq!(fields[..n], full[..n], "last {last}");
        }
    }

    #[test]
    fn recent_keys_remember_at_least_the_window_and_at_most_twice_it() {
        let mut recent = RecentKeys::new(10);
        for n in 0..35u64 {
            assert!(!recent.seen(&[n]), "{n} is new");
        }
        // 35 inserted: generations [20, 30) and [30, 35) remain.
        assert!(recent.seen(&[34]) && recent.seen(&[25]) && recent.seen(&[20]));
        assert!(!recent.seen(&[19]) && !recent.seen(&[0]));
        assert!(recent.current.len() + recent.previous.len() <= 20);
    }
}
