//! Numbers as Postgres reads them: [`Decimal`], an exact view of a decimal
//! literal (compared, rounded and range-checked without allocating), and
//! the integer, float and numeric parsers and writers built on it. It
//! stands alone, so the encoder and the CHECK evaluator both build on it.

use crate::mapping::PgType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NumError {
    Invalid,
    OutOfRange,
}

/// Exponents are clamped here while parsing; anything this large is out of
/// range for every type, and the clamp keeps the arithmetic overflow-free.
const EXP_CAP: i64 = 1 << 40;

/// A decimal literal: optional sign, digits, optional fraction, optional
/// exponent (a superset of JSON's number grammar, matching what Postgres'
/// numeric and integer inputs accept).
pub(super) struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exp: i64,
}

impl<'a> Decimal<'a> {
    pub(super) fn parse(s: &'a str) -> Option<Self> {
        let b = s.as_bytes();
        let mut i = 0;
        let negative = match b.first() {
            Some(b'-') => {
                i = 1;
                true
            }
            Some(b'+') => {
                i = 1;
                false
            }
            _ => false,
        };
        let digits_from = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let int_end = digits_from(i);
        let int = &b[i..int_end];
        i = int_end;
        let mut frac: &[u8] = &[];
        if b.get(i) == Some(&b'.') {
            let frac_end = digits_from(i + 1);
            frac = &b[i + 1..frac_end];
            i = frac_end;
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp = 0i64;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let exp_negative = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let exp_end = digits_from(i);
            if exp_end == i {
                return None;
            }
            for &d in &b[i..exp_end] {
                exp = (exp * 10 + i64::from(d - b'0')).min(EXP_CAP);
            }
            if exp_negative {
                exp = -exp;
            }
            i = exp_end;
        }
        (i == b.len()).then_some(Self {
            negative,
            int,
            frac,
            exp,
        })
    }

    fn digit(&self, k: usize) -> u8 {
        match self.int.get(k) {
            Some(&d) => d,
            None => self.frac[k - self.int.len()],
        }
    }

    fn len(&self) -> usize {
        self.int.len() + self.frac.len()
    }

    /// Indexes (into int ++ frac) of the first and last non-zero digit;
    /// `None` when the value is zero.
    fn significant(&self) -> Option<(usize, usize)> {
        let first = (0..self.len()).find(|&k| self.digit(k) != b'0')?;
        let last = (first..self.len())
            .rev()
            .find(|&k| self.digit(k) != b'0')
            .unwrap_or(first);
        Some((first, last))
    }

    /// The exact integer value; `Invalid` if it has a non-zero fraction.
    fn to_i64(&self) -> Result<i64, NumError> {
        let Some((first, last)) = self.significant() else {
            return Ok(0);
        };
        // value = digits[first..=last] * 10^scale
        let scale = self.exp - self.frac.len() as i64 + (self.len() - 1 - last) as i64;
        if scale < 0 {
            return Err(NumError::Invalid);
        }
        if (last - first + 1) as i64 + scale > 19 {
            return Err(NumError::OutOfRange);
        }
        let mut v: i128 = 0;
        for k in first..=last {
            v = v * 10 + i128::from(self.digit(k) - b'0');
        }
        for _ in 0..scale {
            v *= 10;
        }
        if self.negative {
            v = -v;
        }
        i64::try_from(v).map_err(|_| NumError::OutOfRange)
    }

    /// Compares two values exactly (any number of digits, any exponent),
    /// without allocating: it runs once per record for a CHECK.
    pub(super) fn cmp_value(&self, other: &Decimal<'_>) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        // Magnitudes: the exponent of the leading digit, then the
        // significant digits (no trailing zeros) in order.
        let magnitude = |a: &Decimal<'_>, (fa, la): (usize, usize), b: &Decimal<'_>, (fb, lb): (usize, usize)| {
            let lead = |d: &Decimal<'_>, first: usize| d.int.len() as i64 + d.exp - first as i64;
            lead(a, fa).cmp(&lead(b, fb)).then_with(|| {
                let da = (fa..=la).map(|k| a.digit(k));
                da.cmp((fb..=lb).map(|k| b.digit(k)))
            })
        };
        match (self.significant(), other.significant()) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) if other.negative => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) if self.negative => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => match (self.negative, other.negative) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => magnitude(self, a, other, b),
                (true, true) => magnitude(other, b, self, a),
            },
        }
    }

    /// Whether the value, rounded to `scale` decimals (half away from zero,
    /// as Postgres does), has at most `precision - scale` digits before the
    /// point, so that `numeric(precision, scale)` takes it.
    pub(super) fn fits_precision(&self, precision: u16, scale: u16) -> bool {
        let Some((first, _)) = self.significant() else {
            return true;
        };
        let len = self.len() as i64;
        // Digit k has weight 10^(point - 1 - k).
        let point = self.int.len() as i64 + self.exp;
        // The first digit rounded away.
        let round_at = point + i64::from(scale);
        let first = first as i64;
        if first >= round_at {
            // Every significant digit is rounded away: the result is 0 or
            // 10^-scale, which always fits.
            return true;
        }
        let mut int_digits = (point - first).max(0);
        let rounds_up = round_at < len && self.digit(round_at as usize) >= b'5';
        if rounds_up && (first..round_at).all(|k| self.digit(k as usize) == b'9') {
            // 99.995 -> 100.00: the carry adds a digit.
            int_digits = (point - first + 1).max(0);
        }
        int_digits <= i64::from(precision - scale)
    }

    /// Whether Postgres' numeric can hold the literal as written.
    fn fits_numeric(&self) -> bool {
        // Postgres up to 14 rejects exponents beyond ±1000 outright; newer
        // versions are laxer, but staying under the old bound works everywhere.
        if self.exp.abs() > 1000 {
            return false;
        }
        // Display scale (digits after the point, trailing zeros included) is
        // capped at 16383.
        if self.frac.len() as i64 - self.exp > 16383 {
            return false;
        }
        // At most 131072 digits before the point.
        match self.significant() {
            Some((first, _)) => self.int.len() as i64 - first as i64 + self.exp <= 131_072,
            None => true,
        }
    }
}

pub(super) fn parse_int(s: &str) -> Result<i64, NumError> {
    // Plain integers are by far the common case.
    if let Ok(i) = s.parse::<i64>() {
        return Ok(i);
    }
    Decimal::parse(s).ok_or(NumError::Invalid)?.to_i64()
}

pub(super) fn parse_int_in(s: &str, ty: PgType) -> Result<i64, NumError> {
    let i = parse_int(s)?;
    let fits = match ty {
        PgType::Int2 => i16::try_from(i).is_ok(),
        PgType::Int4 => i32::try_from(i).is_ok(),
        _ => true,
    };
    if fits {
        Ok(i)
    } else {
        Err(NumError::OutOfRange)
    }
}

pub(super) fn push_numeric(out: &mut Vec<u8>, s: &str) -> Result<(), NumError> {
    if s.eq_ignore_ascii_case("nan") {
        out.extend_from_slice(b"NaN");
        return Ok(());
    }
    let d = Decimal::parse(s).ok_or(NumError::Invalid)?;
    if !d.fits_numeric() {
        return Err(NumError::OutOfRange);
    }
    // The literal is valid numeric input as written, so keep every digit.
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Parses `s` as a float of the column's width and writes Rust's shortest
/// round-trip form, which Postgres reads back to the same value.
pub(super) fn push_float(out: &mut Vec<u8>, s: &str, single: bool) -> Result<(), NumError> {
    use std::io::Write as _;
    let (finite, zero, nan, negative) = if single {
        let f: f32 = s.parse().map_err(|_| NumError::Invalid)?;
        if f.is_finite() && f != 0.0 {
            let _ = write!(out, "{f:?}");
            return Ok(());
        }
        (f.is_finite(), f == 0.0, f.is_nan(), f.is_sign_negative())
    } else {
        let f: f64 = s.parse().map_err(|_| NumError::Invalid)?;
        if f.is_finite() && f != 0.0 {
            let _ = write!(out, "{f:?}");
            return Ok(());
        }
        (f.is_finite(), f == 0.0, f.is_nan(), f.is_sign_negative())
    };
    if finite && zero {
        // A non-zero literal that rounds to zero underflowed; Postgres
        // rejects it too, and writing 0 would silently change the data.
        let mantissa = s.split(['e', 'E']).next().unwrap_or("");
        if mantissa.bytes().any(|b| matches!(b, b'1'..=b'9')) {
            return Err(NumError::OutOfRange);
        }
        out.extend_from_slice(if negative { b"-0" } else { b"0" });
        return Ok(());
    }
    // Non-finite: a spelled-out NaN/Infinity (only possible from a string),
    // or a literal too large for the type.
    let spelled = s
        .trim_start_matches(['+', '-'])
        .starts_with(|c: char| c.is_ascii_alphabetic());
    if !spelled {
        return Err(NumError::OutOfRange);
    }
    out.extend_from_slice(match (nan, negative) {
        (true, _) => b"NaN".as_slice(),
        (false, true) => b"-Infinity",
        (false, false) => b"Infinity",
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mapping::PgType::*;
    use crate::row::testing::*;

    #[test]
    fn numeric_precision_rounds_like_postgres() {
        let fits = |s: &str, p: u16, sc: u16| Decimal::parse(s).unwrap().fits_precision(p, sc);
        assert!(fits("0.995", 3, 2));
        assert!(!fits("0.995", 2, 2), "rounds to 1.00");
        assert!(fits("0.994", 2, 2));
        assert!(fits("0.0995", 2, 2), "rounds to 0.10");
        assert!(fits("0.4", 1, 0));
        assert!(fits("9.4", 1, 0));
        assert!(!fits("9.5", 1, 0), "rounds to 10");
        assert!(fits("00012.5", 3, 1));
        assert!(fits("123e-1", 3, 1));
        assert!(!fits("1234e-1", 3, 1));
        assert!(fits("0", 1, 1));
        assert!(fits("0.00000000004", 2, 2));
    }

    // --- integers --------------------------------------------------------------

    #[test]
    fn integers() {
        assert_eq!(ok(Int2, "-32768"), "-32768");
        assert_eq!(ok(Int2, "32767"), "32767");
        assert_eq!(ok(Int4, "2147483647"), "2147483647");
        assert_eq!(ok(Int8, "-9223372036854775808"), "-9223372036854775808");
        assert_eq!(ok(Int8, "9223372036854775807"), "9223372036854775807");
        assert_eq!(ok(Int4, "5.0"), "5");
        assert_eq!(ok(Int4, "-0"), "0");
        assert_eq!(ok(Int4, "1e3"), "1000");
        assert_eq!(ok(Int4, "1.5e1"), "15");
        assert_eq!(ok(Int4, "1500e-2"), "15");
        assert_eq!(ok(Int8, "0.0e99999999999999"), "0");
        assert_eq!(ok(Int4, r#""123""#), "123");
        assert_eq!(ok(Int4, r#""-7""#), "-7");
        assert_eq!(ok(Int4, r#""+7""#), "7");
        assert_eq!(ok(Int8, r#""12.000""#), "12");
    }

    #[test]
    fn integer_rejections() {
        assert_eq!(err(Int2, "70000"), "column `c` (smallint): 70000 is out of range");
        assert!(err(Int2, "-32769").contains("out of range"));
        assert!(err(Int4, "2147483648").contains("(integer): 2147483648 is out of range"));
        assert!(err(Int8, "9223372036854775808").contains("out of range"));
        assert!(err(Int8, "1e19").contains("out of range"));
        assert!(err(Int8, "1e999999999999999999999").contains("out of range"));
        assert!(err(Int4, r#""99999999999""#).contains("out of range"));
        assert_eq!(err(Int4, "5.5"), "column `c` (integer): expected an integer, found 5.5");
        assert!(err(Int4, "1e-1").contains("expected an integer"));
        assert!(err(Int4, r#""abc""#).contains(r#"expected an integer, found "abc""#));
        assert!(err(Int4, r#"" 5""#).contains("expected an integer"));
        assert!(err(Int4, r#""""#).contains("expected an integer"));
        assert!(err(Int4, r#""0x10""#).contains("expected an integer"));
        assert!(err(Int4, "true").contains("expected an integer, found true"));
        assert!(err(Int4, "[1]").contains("expected an integer"));
        assert!(err(Int4, "{}").contains("expected an integer"));
    }

    // --- floats ------------------------------------------------------------------

    #[test]
    fn floats() {
        assert_eq!(ok(Float8, "1.5"), "1.5");
        assert_eq!(ok(Float8, "-2"), "-2.0");
        assert_eq!(ok(Float8, "1e300"), "1e300");
        assert_eq!(ok(Float8, "0.1000000000000000055511151231257827"), "0.1");
        assert_eq!(ok(Float8, "0"), "0");
        assert_eq!(ok(Float8, "-0.0"), "-0");
        assert_eq!(ok(Float8, "0e500"), "0");
        assert_eq!(ok(Float8, "5e-324"), "5e-324");
        assert_eq!(ok(Float4, "0.1"), "0.1");
        assert_eq!(ok(Float4, "3.4028235e38"), "3.4028235e38");
        assert_eq!(ok(Float8, r#""2.25""#), "2.25");
        assert_eq!(ok(Float8, r#""NaN""#), "NaN");
        assert_eq!(ok(Float8, r#""nan""#), "NaN");
        assert_eq!(ok(Float8, r#""Infinity""#), "Infinity");
        assert_eq!(ok(Float8, r#""-Infinity""#), "-Infinity");
        assert_eq!(ok(Float4, r#""-inf""#), "-Infinity");
    }

    #[test]
    fn float_rejections() {
        // serde_json spells exponents as `e+N`; Postgres reads that fine.
        assert_eq!(
            err(Float8, "1e400"),
            "column `c` (double precision): 1e+400 is out of range"
        );
        assert!(err(Float8, "-1e400").contains("out of range"));
        assert!(err(Float8, "1e-400").contains("out of range"));
        assert!(err(Float4, "1e39").contains("(real): 1e+39 is out of range"));
        assert!(err(Float4, "1e-50").contains("out of range"));
        assert!(err(Float4, r#""1e39""#).contains("out of range"));
        assert!(err(Float8, r#""abc""#).contains("expected a number"));
        assert!(err(Float8, r#""1,5""#).contains("expected a number"));
        assert!(err(Float8, "true").contains("expected a number"));
        assert!(err(Float8, "{}").contains("expected a number"));
    }

    // --- numeric -----------------------------------------------------------------

    #[test]
    fn numerics() {
        let big = "123456789012345678901234567890.000000000000000000001";
        assert_eq!(ok(Numeric, big), big);
        assert_eq!(ok(Numeric, "-1.50"), "-1.50");
        assert_eq!(ok(Numeric, "1E5"), "1e+5");
        assert_eq!(ok(Numeric, "1e1000"), "1e+1000");
        assert_eq!(ok(Numeric, r#""1E5""#), "1E5");
        assert_eq!(ok(Numeric, r#""12.340""#), "12.340");
        assert_eq!(ok(Numeric, r#""+.5""#), "+.5");
        assert_eq!(ok(Numeric, r#""5.""#), "5.");
        assert_eq!(ok(Numeric, r#""-7e-3""#), "-7e-3");
        assert_eq!(ok(Numeric, r#""NaN""#), "NaN");
        assert_eq!(ok(Numeric, r#""nan""#), "NaN");
    }

    #[test]
    fn numeric_rejections() {
        assert!(err(Numeric, r#""abc""#).contains(r#"expected a number, found "abc""#));
        assert!(err(Numeric, r#""""#).contains("expected a number"));
        assert!(err(Numeric, r#"".""#).contains("expected a number"));
        assert!(err(Numeric, r#""1e""#).contains("expected a number"));
        assert!(err(Numeric, r#""1 ""#).contains("expected a number"));
        assert!(err(Numeric, r#""Infinity""#).contains("expected a number"));
        assert!(err(Numeric, "true").contains("expected a number"));
        assert!(err(Numeric, "1e1001").contains("out of range"));
        assert!(err(Numeric, "1e-1001").contains("out of range"));
        let too_precise = format!("0.{}1", "0".repeat(16383));
        assert!(err(Numeric, &too_precise).contains("out of range"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn integers_round_trip(i in any::<i64>()) {
            let s = ok(Int8, &i.to_string());
            prop_assert_eq!(s, i.to_string());
            let s = ok(Int8, &format!("\"{i}.000\""));
            prop_assert_eq!(s, i.to_string());
        }

        #[test]
        fn floats_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let s = ok(Float8, &format!("{f:e}"));
            prop_assert_eq!(s.parse::<f64>().unwrap().to_bits(), f.to_bits());
        }

    }
}
