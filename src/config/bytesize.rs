//! [`ByteSize`]: a byte count that a config file can write as `"64MiB"`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use serde::{Serialize, Serializer};

/// A number of bytes.
///
/// In a config file it is either an integer (bytes) or a string with an
/// optional unit: `"512"`, `"64KiB"`, `"64 MiB"`, `"1.5GiB"`, `"10kB"`.
/// Units are case-insensitive; `kB`/`MB`/`GB`/`TB` are powers of 1000 and
/// `KiB`/`MiB`/`GiB`/`TiB` powers of 1024 (so `"10KB"` is 10,000 bytes).
/// [`Display`](fmt::Display) prints the unit that gives the shortest exact
/// number (`8MiB`, `10kB`, `1000B`), which parses back to the same value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Recognised units, lowercase, with their multipliers. The empty unit and
/// `b` are bytes.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// Units [`Display`](fmt::Display) may choose, with their canonical spelling.
const DISPLAY_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
];

const EXPECTED: &str = "a byte size: an integer number of bytes, or a string with a unit \
                        (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB) such as \"64MiB\"";

impl ByteSize {
    /// `n` kibibytes (`n * 1024` bytes).
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    /// `n` gibibytes.
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a string is not a [`ByteSize`]; says what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |why: &str| ParseByteSizeError(format!("expected {EXPECTED}; found {input:?}{why}"));
        let s = input.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let Some(&(_, multiplier)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(fail(" (unknown unit)"));
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        // 19 fraction digits keep 10^len and fraction * multiplier inside u128.
        if (whole.is_empty() && fraction.is_empty())
            || !all_digits(whole)
            || !all_digits(fraction)
            || fraction.len() > 19
        {
            return Err(fail(""));
        }
        let too_large = || fail(" (more than 2^64 - 1 bytes)");
        // Exact decimal arithmetic: "1.5GiB" must be exactly 1.5 * 2^30, and
        // "0.1kB" exactly 100, which f64 does not promise.
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse::<u64>().map_err(|_| too_large())?.into()
        };
        let scale = 10u128.pow(fraction.len() as u32);
        let fraction: u128 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().map_err(|_| fail(""))?
        };
        let fraction_bytes = fraction * u128::from(multiplier);
        if fraction_bytes % scale != 0 {
            return Err(fail(" (not a whole number of bytes)"));
        }
        let total = whole * u128::from(multiplier) + fraction_bytes / scale;
        u64::try_from(total).map(ByteSize).map_err(|_| too_large())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let best = DISPLAY_UNITS
            .iter()
            .filter(|(_, m)| self.0 != 0 && self.0 % m == 0)
            .min_by_key(|(_, m)| self.0 / m);
        match best {
            Some((unit, m)) => write!(f, "{}{unit}", self.0 / m),
            None => write!(f, "{}B", self.0),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("expected {EXPECTED}; found {v}, more than 2^64 - 1 bytes")))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("expected {EXPECTED}; found {v}")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                // TOML and environment values such as `1e6` arrive as floats.
                if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 {
                    Ok(ByteSize(v as u64))
                } else {
                    Err(E::invalid_value(Unexpected::Float(v), &self))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(|e: ParseByteSizeError| E::custom(e.0))
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

impl Serialize for ByteSize {
    /// As the string [`Display`](fmt::Display) prints, so a serialized
    /// config reads like the file it came from.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_integers_and_units() {
        let table: &[(&str, u64)] = &[
            ("512", 512),
            ("0", 0),
            ("512B", 512),
            ("512 b", 512),
            ("64KiB", 64 * 1024),
            ("64kib", 64 * 1024),
            ("64 MiB", 64 << 20),
            ("  64MiB  ", 64 << 20),
            ("1GiB", 1 << 30),
            ("1gib", 1 << 30),
            ("2TiB", 2 << 40),
            ("10kB", 10_000),
            ("10KB", 10_000),
            ("10kb", 10_000),
            ("3MB", 3_000_000),
            ("1GB", 1_000_000_000),
            ("1.5GiB", 3 << 29),
            ("0.5KiB", 512),
            ("0.1kB", 100),
            (".5KiB", 512),
            ("8.KiB", 8192),
            ("18446744073709551615", u64::MAX),
        ];
        for (input, bytes) in table {
            assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(*bytes)), "{input:?}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for input in [
            "",
            "MiB",
            "ten",
            "-5",
            "5 MiBs",
            "5 k",
            "1.2.3KiB",
            "0.3B",
            "1.0001KiB",
            "18446744073709551616",
            "20000000TiB",
            "1e3",
        ] {
            let err = input.parse::<ByteSize>().unwrap_err().to_string();
            assert!(err.starts_with("expected a byte size"), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{input:?}: {err}");
        }
    }

    #[test]
    fn displays_the_most_natural_unit_and_round_trips() {
        let table: &[(u64, &str)] = &[
            (0, "0B"),
            (1, "1B"),
            (1000, "1kB"),
            (1001, "1001B"),
            (1024, "1KiB"),
            (10_000, "10kB"),
            (8 << 20, "8MiB"),
            (64 << 20, "64MiB"),
            (1 << 30, "1GiB"),
            (1_024_000, "1000KiB"),
            (3 << 29, "1536MiB"),
            (5_000_000_000, "5GB"),
        ];
        for (bytes, shown) in table {
            assert_eq!(ByteSize(*bytes).to_string(), *shown);
            assert_eq!(shown.parse::<ByteSize>(), Ok(ByteSize(*bytes)));
        }
    }

    #[test]
    fn constructors() {
        assert_eq!(ByteSize::kib(1).bytes(), 1024);
        assert_eq!(ByteSize::mib(8).bytes(), 8 << 20);
        assert_eq!(ByteSize::gib(1).bytes(), 1 << 30);
    }
}
