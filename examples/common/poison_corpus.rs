//! The poison corpus of the dead-letter tests and `bench/poison.sh`: good
//! events for a strict table with one bad record of some kind after every
//! 100 good ones (1 %). Shared by `examples/produce.rs` (`--corpus`) and
//! `tests/it/dead_letters.rs`, so the benchmark measures what the test checks.
//!
//! Record `n` is meant for partition `n % partitions`: a duplicate key
//! repeats the id of a good record earlier in its own partition.

use std::collections::HashMap;

/// One poison record after every 100 good ones: 1 %.
pub const EVERY: u64 = 101;
pub const FIVE_MB: usize = 5 * 1024 * 1024;

/// The table the corpus is written into: NOT NULL, CHECK, a primary key,
/// smallint and numeric(8,2) — every kind of constraint a poison record can
/// break. `written_at` times each row.
pub fn strict_table_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, qty smallint NOT NULL, price numeric(8,2), \
         name text NOT NULL CHECK (name <> ''), score int CHECK (score >= 0), kafka_partition int, \
         kafka_offset bigint, written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )
}

/// The pipeline's column mapping for the strict table.
pub const COLUMNS: &str = r#"
id = "/id"
qty = "/qty"
price = "/price"
name = "/name"
score = "/score"
kafka_partition = "@partition"
kafka_offset = "@offset"
"#;

/// The good event with this id (its name is `n<id>`).
pub fn good(id: u64) -> Vec<u8> {
    format!(
        r#"{{"id":{id},"qty":{},"price":"{}.{:02}","name":"n{id}","score":{}}}"#,
        id % 30_000,
        id % 100_000,
        id % 100,
        id % 500
    )
    .into_bytes()
}

/// The kinds of poison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Poison {
    MalformedJson,
    TruncatedUtf8,
    WrongType,
    SmallintTooLarge,
    NumericTooLarge,
    NullIntoNotNull,
    DuplicateKey,
    CheckViolation,
    Huge,
    Empty,
    Garbage,
}

/// `good` good events (ids 0..good) and one poison record after every 100
/// of them, for a topic of `partitions` partitions. Returns the values and,
/// per poison record's position, its kind.
pub fn corpus(good_events: u64, partitions: u64) -> (Vec<Vec<u8>>, HashMap<u64, Poison>) {
    let total = good_events + good_events / (EVERY - 1);
    let mut values = Vec::with_capacity(total as usize);
    let mut poisons = HashMap::new();
    // The id of the good record at each position, for duplicates.
    let mut ids: Vec<Option<u64>> = Vec::new();
    let mut next_good = 0u64;
    let mut k = 0u64;
    while (values.len() as u64) < total {
        let n = values.len() as u64;
        if n % EVERY == EVERY - 1 {
            let kind = match k % 10 {
                0 => Poison::MalformedJson,
                1 => Poison::TruncatedUtf8,
                2 => Poison::WrongType,
                3 if (k / 10) % 2 == 0 => Poison::SmallintTooLarge,
                3 => Poison::NumericTooLarge,
                4 => Poison::NullIntoNotNull,
                5 => Poison::DuplicateKey,
                6 => Poison::CheckViolation,
                // Three 5 MB values; the other slots of this kind are empty values.
                7 if k / 10 < 3 => Poison::Huge,
                7 | 8 => Poison::Empty,
                _ => Poison::Garbage,
            };
            let id = 1_000_000_000 + k;
            let value = match kind {
                Poison::MalformedJson => format!(r#"{{"id":{id},"qty":1,"#).into_bytes(),
                Poison::TruncatedUtf8 => {
                    let mut v = format!(r#"{{"id":{id},"qty":1,"price":"1","name":"caf"#).into_bytes();
                    v.push(0xC3); // the first byte of "é", cut off
                    v
                }
                Poison::WrongType => format!(r#"{{"id":"abc{id}","qty":1,"name":"x","score":1}}"#).into_bytes(),
                Poison::SmallintTooLarge => format!(r#"{{"id":{id},"qty":70000,"name":"x","score":1}}"#).into_bytes(),
                Poison::NumericTooLarge => {
                    format!(r#"{{"id":{id},"qty":1,"price":"12345678.5","name":"x","score":1}}"#).into_bytes()
                }
                Poison::NullIntoNotNull => format!(r#"{{"id":{id},"qty":1,"name":null,"score":1}}"#).into_bytes(),
                Poison::DuplicateKey => {
                    // The id of a good record earlier in the same partition,
                    // so the original always lands first.
                    let earlier = ids[(n - partitions) as usize].expect("a good record");
                    format!(r#"{{"id":{earlier},"qty":1,"name":"dup","score":1}}"#).into_bytes()
                }
                Poison::CheckViolation => format!(r#"{{"id":{id},"qty":1,"name":"x","score":-1}}"#).into_bytes(),
                Poison::Huge => {
                    let mut v = format!(r#"{{"id":{id},"qty":1,"name":""#).into_bytes();
                    v.resize(FIVE_MB, b'a');
                    v.extend_from_slice(b"\"}");
                    v
                }
                Poison::Empty => Vec::new(),
                Poison::Garbage => (0..64u32)
                    .map(|b| (b.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
                    .collect(),
            };
            poisons.insert(n, kind);
            values.push(value);
            ids.push(None);
            k += 1;
        } else {
            values.push(good(next_good));
            ids.push(Some(next_good));
            next_good += 1;
        }
    }
    (values, poisons)
}
