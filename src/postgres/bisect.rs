//! Isolating the rows of a batch that the database refuses.
//!
//! A data error (SQLSTATE class 22 or 23) fails the whole COPY. The writer
//! then copies parts of the batch, each under a savepoint of the same
//! transaction, until every refused row is alone: those become dead letters,
//! everything else lands, and the offsets still advance once, together.
//!
//! Postgres names the failing line of a COPY in the error's context
//! (`COPY orders, line 17`) for per-row failures (NOT NULL, CHECK, unique,
//! type input). Then that row is set aside directly and the rows before it,
//! which passed, are copied again: about two COPYs of the batch in all,
//! whatever the number of bad rows. Failures checked at the end of the
//! statement (foreign keys, deferred constraints) carry no line; for those
//! the range is split in halves (log2(n) levels per bad row).
//!
//! [`Isolator`] is the pure decision part: which range to copy next, and
//! what a refusal means. The writer does the I/O.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use crate::row::{field_ranges, key_fields, ColumnPlan, UniqueKey};

/// The database's refusal of a COPY for a data reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: String,
    pub message: String,
    /// The 1-based line of the COPY that failed, when Postgres said.
    pub line: Option<usize>,
}

impl Refusal {
    /// Reads the SQLSTATE, message and failing COPY line of a database error
    /// raised by `COPY {table} ...` (`table` unquoted, as Postgres names it).
    pub fn of(err: &sqlx::Error, table: &str) -> Refusal {
        match err {
            sqlx::Error::Database(db) => {
                let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
                let mut message = db.message().to_owned();
                if let Some(detail) = pg.and_then(|pg| pg.detail()) {
                    message.push_str(": ");
                    message.push_str(detail);
                }
                Refusal {
                    sqlstate: db.code().map(|c| c.into_owned()).unwrap_or_default(),
                    message,
                    line: pg.and_then(|pg| pg.r#where()).and_then(|w| copy_line(w, table)),
                }
            }
            other => Refusal {
                sqlstate: String::new(),
                message: other.to_string(),
                line: None,
            },
        }
    }
}

/// The line number in a COPY error context such as
/// `COPY orders, line 17, column amount: "x"`.
pub fn copy_line(context: &str, table: &str) -> Option<usize> {
    // The context may hold several lines (a trigger's, then COPY's); the
    // COPY one starts with exactly this prefix.
    let prefix = format!("COPY {table}, line ");
    context.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix(&prefix)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Which ranges of a batch's rows to copy, until every refused row is alone.
#[derive(Debug)]
pub struct Isolator {
    /// Ranges still to copy, in row order (so rows land in batch order).
    todo: VecDeque<Range<usize>>,
    /// Rows refused on their own, with the refusal, in row order.
    refused: Vec<(usize, Refusal)>,
    attempts: usize,
}

impl Isolator {
    /// Starts with the whole batch of `rows` rows as one range.
    pub fn new(rows: usize) -> Isolator {
        let mut todo = VecDeque::new();
        if rows > 0 {
            todo.push_back(0..rows);
        }
        Isolator {
            todo,
            refused: Vec::new(),
            attempts: 0,
        }
    }

    /// The next range to copy, `None` when done.
    pub fn next_range(&mut self) -> Option<Range<usize>> {
        let range = self.todo.pop_front()?;
        self.attempts += 1;
        Some(range)
    }

    /// Whether another range follows.
    pub fn more(&self) -> bool {
        !self.todo.is_empty()
    }

    /// `range` was refused: narrow it down.
    pub fn refused(&mut self, range: Range<usize>, refusal: Refusal) {
        let len = range.len();
        if len == 1 {
            self.refused.push((range.start, refusal));
            return;
        }
        match refusal.line.filter(|l| (1..=len).contains(l)) {
            Some(line) => {
                // The rows before `line` passed; the one at `line` is refused.
                let bad = range.start + line - 1;
                self.todo.push_front(bad + 1..range.end);
                self.refused.push((bad, refusal));
                self.todo.push_front(range.start..bad);
                self.todo.retain(|r| !r.is_empty());
            }
            None => {
                let mid = range.start + len / 2;
                self.todo.push_front(mid..range.end);
                self.todo.push_front(range.start..mid);
            }
        }
    }

    /// The refused rows, by index, in row order, and how many COPYs it took.
    pub fn finish(mut self) -> (Vec<(usize, Refusal)>, usize) {
        self.refused.sort_by_key(|(i, _)| *i);
        (self.refused, self.attempts)
    }
}

/// A row whose unique key repeats an earlier row of the same batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeat {
    /// Its position in the rows given to [`repeats`].
    pub row: usize,
    /// The position of the earlier row with the same key.
    pub first: usize,
    /// What Postgres would say once the earlier row is in.
    pub refusal: Refusal,
}

/// Finds the rows (COPY text lines of `columns`) whose key under one of
/// `keys` equals an earlier row's: Postgres would refuse each of them with
/// 23505 if the earlier row lands. Copying them apart, after the others,
/// spares a failed COPY per duplicate. Keys with a NULL are never equal.
/// Equal encodings are equal values; equal values with other encodings
/// (`1.0` and `1.00`) are not found here and are left to Postgres.
pub fn repeats(keys: &[UniqueKey], columns: &[ColumnPlan], rows: &[&[u8]]) -> Vec<Repeat> {
    if keys.is_empty() {
        return Vec::new();
    }
    let mut seen: Vec<HashMap<Vec<u8>, usize>> = vec![HashMap::new(); keys.len()];
    let mut found = Vec::new();
    let mut key_bytes: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
    // Reused for every row: this runs over each row of each insert-mode flush.
    let mut fields = Vec::new();
    for (pos, row) in rows.iter().enumerate() {
        let line = field_ranges(row, &mut fields);
        key_bytes.clear();
        key_bytes.extend(keys.iter().map(|key| {
            key_fields(line, &fields, key).map(|parts| {
                let mut bytes = Vec::new();
                for (n, part) in parts.enumerate() {
                    if n > 0 {
                        bytes.push(b'\t');
                    }
                    bytes.extend_from_slice(part);
                }
                bytes
            })
        }));
        let earlier = key_bytes
            .iter()
            .zip(&seen)
            .enumerate()
            .find_map(|(k, (bytes, map))| Some((k, *map.get(bytes.as_ref()?)?)));
        match earlier {
            Some((k, first)) => {
                let key = &keys[k];
                let names: Vec<&str> = key.columns.iter().map(|&c| columns[c].name.as_str()).collect();
                let values: Vec<String> = key_fields(line, &fields, key)
                    .into_iter()
                    .flatten()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect();
                found.push(Repeat {
                    row: pos,
                    first,
                    refusal: Refusal {
                        sqlstate: "23505".into(),
                        message: format!(
                            "duplicate key value violates unique constraint \"{}\": Key ({})=({}) already exists \
                             (an earlier record of the same batch)",
                            key.name,
                            names.join(", "),
                            values.join(", ")
                        ),
                        line: None,
                    },
                });
            }
            None => {
                for (bytes, map) in key_bytes.iter_mut().zip(seen.iter_mut()) {
                    if let Some(bytes) = bytes.take() {
                        map.insert(bytes, pos);
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::row::{key_hashes, RecentKeys};

    /// Drives an isolator against a simulated table: a COPY of a range is
    /// refused when it holds a bad row, naming the first bad row's line
    /// when `lines` (as for per-row checks) and no line otherwise (as for
    /// foreign keys). Returns (refused, landed, attempts).
    fn run(rows: usize, bad: &BTreeSet<usize>, lines: bool) -> (Vec<usize>, Vec<usize>, usize) {
        let mut iso = Isolator::new(rows);
        let mut landed = Vec::new();
        while let Some(range) = iso.next_range() {
            match range.clone().find(|i| bad.contains(i)) {
                None => landed.extend(range),
                Some(first) => iso.refused(
                    range.clone(),
                    Refusal {
                        sqlstate: "23502".into(),
                        message: "null value".into(),
                        line: lines.then_some(first - range.start + 1),
                    },
                ),
            }
        }
        let (refused, attempts) = iso.finish();
        (refused.into_iter().map(|(i, _)| i).collect(), landed, attempts)
    }

    #[test]
    fn a_clean_batch_is_one_copy() {
        assert_eq!(run(1000, &BTreeSet::new(), true), (vec![], (0..1000).collect(), 1));
        assert_eq!(run(0, &BTreeSet::new(), true), (vec![], vec![], 0));
    }

    #[test]
    fn line_hints_cost_two_copies_per_bad_row() {
        let bad: BTreeSet<usize> = [3, 500, 999].into();
        let (refused, landed, attempts) = run(1000, &bad, true);
        assert_eq!(refused, vec![3, 500, 999]);
        assert_eq!(landed.len(), 997);
        assert!(attempts <= 1 + 2 * bad.len(), "{attempts} copies");
    }

    #[test]
    fn without_lines_bisection_is_logarithmic() {
        let bad: BTreeSet<usize> = [777].into();
        let (refused, landed, attempts) = run(1024, &bad, false);
        assert_eq!(refused, vec![777]);
        assert_eq!(landed.len(), 1023);
        assert!(attempts <= 1 + 2 * 10, "{attempts} copies");
    }

    /// A primary key on (id, region), a unique email, and rows of those
    /// three columns: rows 2, 3 and 6 repeat an earlier row's key.
    fn keyed_rows() -> (Vec<UniqueKey>, Vec<&'static [u8]>) {
        let keys = vec![
            UniqueKey {
                name: "t_pkey".into(),
                columns: vec![0, 1],
            },
            UniqueKey {
                name: "t_email_key".into(),
                columns: vec![2],
            },
        ];
        let rows: Vec<&[u8]> = vec![
            b"1\teu\ta@x\n",
            b"1\tus\tb@x\n",
            b"1\teu\tc@x\n",  // repeats row 0 on the primary key
            b"2\teu\tb@x\n",  // repeats row 1 on email
            b"3\t\\N\t\\N\n", // NULLs never repeat
            b"3\t\\N\t\\N\n",
            b"1\teu\ta@x\n", // repeats row 0 (not row 2, which is itself a repeat)
        ];
        (keys, rows)
    }

    #[test]
    fn repeats_within_a_batch_are_found_by_their_encoded_keys() {
        use crate::mapping::{ColumnSource, PgType};
        let col = |name: &str| ColumnPlan::new(name, ColumnSource::Pointer(format!("/{name}")), PgType::Text);
        let columns = vec![col("id"), col("region"), col("email")];
        let (keys, rows) = keyed_rows();
        let found = repeats(&keys, &columns, &rows);
        let pairs: Vec<(usize, usize)> = found.iter().map(|r| (r.row, r.first)).collect();
        assert_eq!(pairs, vec![(2, 0), (3, 1), (6, 0)]);
        assert_eq!(found[0].refusal.sqlstate, "23505");
        assert!(
            found[0]
                .refusal
                .message
                .starts_with("duplicate key value violates unique constraint \"t_pkey\": Key (id, region)=(1, eu)"),
            "{}",
            found[0].refusal.message
        );
        assert!(found[1].refusal.message.contains("\"t_email_key\": Key (email)=(b@x)"));
        assert!(repeats(&[], &columns, &rows).is_empty());
    }

    #[test]
    fn recent_keys_flag_every_repeat_the_batch_scan_finds_within_the_window() {
        let (keys, rows) = keyed_rows();
        let (mut fields, mut hashes) = (Vec::new(), Vec::new());
        let mut recent = RecentKeys::new(100);
        let flagged: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                key_hashes(0, &keys, rows[i], &mut fields, &mut hashes);
                recent.seen(&hashes)
            })
            .collect();
        // Exactly the rows `repeats` finds (see the test above).
        assert_eq!(flagged, vec![2, 3, 6]);
        // NULL keys hash to nothing; another table's equal key is not a repeat.
        key_hashes(0, &keys, b"3\t\\N\t\\N\n", &mut fields, &mut hashes);
        assert!(hashes.is_empty());
        key_hashes(1, &keys, b"1\teu\ta@x\n", &mut fields, &mut hashes);
        assert_eq!(hashes.len(), 2);
        assert!(!recent.seen(&hashes));
    }

    #[test]
    fn copy_lines_are_read_from_the_context() {
        assert_eq!(
            copy_line("COPY orders, line 17, column amount: \"x\"", "orders"),
            Some(17)
        );
        assert_eq!(copy_line("COPY orders, line 3: \"1\t\\N\"", "orders"), Some(3));
        assert_eq!(copy_line("COPY orders, line 3", "orders"), Some(3));
        assert_eq!(
            copy_line("PL/pgSQL function f() line 2 at RAISE\nCOPY o, line 9", "o"),
            Some(9)
        );
        assert_eq!(copy_line("COPY other, line 3", "orders"), None);
        assert_eq!(copy_line("SQL statement \"SELECT 1 FROM ONLY ...\"", "orders"), None);
    }

    proptest! {
        /// Whatever the bad rows and whether lines are reported: exactly
        /// the bad rows are refused, every other row lands once, in order.
        #[test]
        fn isolates_exactly_the_bad_rows(
            rows in 0usize..300,
            bad in proptest::collection::btree_set(0usize..300, 0..20),
            lines in any::<bool>(),
        ) {
            let bad: BTreeSet<usize> = bad.into_iter().filter(|i| *i < rows).collect();
            let (refused, landed, attempts) = run(rows, &bad, lines);
            prop_assert_eq!(refused, bad.iter().copied().collect::<Vec<_>>());
            let good: Vec<usize> = (0..rows).filter(|i| !bad.contains(i)).collect();
            prop_assert_eq!(landed, good);
            let depth = usize::BITS as usize - rows.leading_zeros() as usize;
            prop_assert!(attempts <= 1 + bad.len() * 2 * (depth + 1), "{} copies", attempts);
        }
    }
}
