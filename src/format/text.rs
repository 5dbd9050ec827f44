//! The JSON text a decoded record becomes, written directly: strings
//! escaped by serde_json, numbers as exact digit strings, and the logical
//! and semantic types as unambiguous strings (`"2024-01-02"`,
//! `"03:04:05.123456"`, `"2024-01-02T03:04:05.123456Z"` for an instant,
//! the same without `Z` for a wall-clock time), so the row encoder never
//! has to guess what a number meant.

use chrono::{DateTime, NaiveDate};
use num_bigint::BigInt;

/// Appends `s` as a JSON string.
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string into a Vec cannot fail");
}

/// Appends a float; JSON has no NaN or infinities, so those become the
/// strings Postgres reads for them (`"NaN"`, `"Infinity"`, `"-Infinity"`).
pub(super) fn float(out: &mut Vec<u8>, f: f64, single: bool) {
    if f.is_nan() {
        string(out, "NaN");
    } else if f.is_infinite() {
        string(out, if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else if single {
        // The shortest text that reads back as the same f32, not its f64 widening.
        out.extend_from_slice((f as f32).to_string().as_bytes());
    } else {
        out.extend_from_slice(f.to_string().as_bytes());
    }
}

/// Appends bytes as a base64 JSON string (what a `bytea` column decodes).
pub(super) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    use base64::Engine as _;
    out.push(b'"');
    out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(b).as_bytes());
    out.push(b'"');
}

/// A big-endian two's-complement unscaled integer and a scale, as the
/// exact decimal digits (a JSON number).
pub(super) fn decimal(out: &mut Vec<u8>, unscaled_be: &[u8], scale: i64) -> Result<(), String> {
    let unscaled = BigInt::from_signed_bytes_be(unscaled_be);
    decimal_of(out, &unscaled, scale)
}

pub(super) fn decimal_of(out: &mut Vec<u8>, unscaled: &BigInt, scale: i64) -> Result<(), String> {
    if !(-1000..=1000).contains(&scale) {
        return Err(format!("decimal scale {scale} is out of range"));
    }
    let digits = unscaled.magnitude().to_string();
    if unscaled.sign() == num_bigint::Sign::Minus {
        out.push(b'-');
    }
    if scale <= 0 {
        out.extend_from_slice(digits.as_bytes());
        if scale < 0 && digits != "0" {
            out.extend(std::iter::repeat_n(b'0', scale.unsigned_abs() as usize));
        }
        return Ok(());
    }
    let scale = scale as usize;
    if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(int.as_bytes());
        out.push(b'.');
        out.extend_from_slice(frac.as_bytes());
    } else {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', scale - digits.len()));
        out.extend_from_slice(digits.as_bytes());
    }
    Ok(())
}

/// Days since 1970-01-01 as `"YYYY-MM-DD"`.
pub(super) fn date(out: &mut Vec<u8>, days: i64) -> Result<(), String> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
    let d = i32::try_from(days)
        .ok()
        .and_then(|d| epoch.checked_add_signed(chrono::Duration::days(d.into())))
        .ok_or_else(|| format!("{days} days since 1970-01-01 is out of range"))?;
    string(out, &d.format("%Y-%m-%d").to_string());
    Ok(())
}

/// A time of day from `count` units of `10^-digits` seconds past midnight,
/// as `"HH:MM:SS[.fraction]"` with `digits` fractional digits.
pub(super) fn time_of_day(out: &mut Vec<u8>, count: i64, digits: u32) -> Result<(), String> {
    let per_sec = 10i64.pow(digits);
    let day = 86_400 * per_sec;
    // 24:00:00 is a valid Postgres time; Debezium and Avro never send it,
    // but a count of exactly one day is accepted as that.
    if !(0..=day).contains(&count) {
        return Err(format!(
            "{count} is not a time of day (0 to 86400 seconds in units of 1e-{digits} s)"
        ));
    }
    let secs = count / per_sec;
    let frac = count % per_sec;
    let mut text = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if digits > 0 {
        text.push_str(&format!(".{frac:0width$}", width = digits as usize));
    }
    string(out, &text);
    Ok(())
}

/// An instant or a wall-clock time from `count` units of `10^-digits`
/// seconds since the epoch: `"…Z"` when `utc`, without a zone otherwise.
pub(super) fn timestamp(out: &mut Vec<u8>, count: i64, digits: u32, utc: bool) -> Result<(), String> {
    let per_sec = 10i64.pow(digits);
    let secs = count.div_euclid(per_sec);
    let frac = count.rem_euclid(per_sec);
    let nanos = u32::try_from(frac * 10i64.pow(9 - digits)).expect("below one second");
    let dt = DateTime::from_timestamp(secs, nanos)
        .ok_or_else(|| format!("{count} (1e-{digits} s since the epoch) is out of range"))?
        .naive_utc();
    let mut text = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
    if digits > 0 {
        text.push_str(&format!(".{frac:0width$}", width = digits as usize));
    }
    if utc {
        text.push('Z');
    }
    string(out, &text);
    Ok(())
}

/// A time of day from a chrono value (used by checks in tests).
#[cfg(test)]
pub(super) fn parse_time(s: &str) -> chrono::NaiveTime {
    chrono::NaiveTime::parse_from_str(s, "%H:%M:%S%.f").expect("a time")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> Result<(), String>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimals_keep_every_digit() {
        assert_eq!(text(|o| decimal(o, &[0x04, 0xD2], 2)), "12.34");
        assert_eq!(text(|o| decimal(o, &[0xFB, 0x2E], 2)), "-12.34");
        assert_eq!(text(|o| decimal(o, &[0x05], 3)), "0.005");
        assert_eq!(text(|o| decimal(o, &[0xFB], 3)), "-0.005");
        assert_eq!(text(|o| decimal(o, &[0x00], 2)), "0.00");
        assert_eq!(text(|o| decimal(o, &[0x07], 0)), "7");
        assert_eq!(text(|o| decimal(o, &[0x07], -2)), "700");
        let big = BigInt::parse_bytes(b"-123456789012345678901234567890123456789", 10).unwrap();
        assert_eq!(
            text(|o| decimal(o, &big.to_signed_bytes_be(), 20)),
            "-1234567890123456789.01234567890123456789"
        );
    }

    #[test]
    fn dates_times_and_timestamps() {
        assert_eq!(text(|o| date(o, 0)), r#""1970-01-01""#);
        assert_eq!(text(|o| date(o, -165)), r#""1969-07-20""#);
        assert_eq!(text(|o| date(o, 19_724)), r#""2024-01-02""#);
        assert_eq!(text(|o| time_of_day(o, 0, 3)), r#""00:00:00.000""#);
        assert_eq!(text(|o| time_of_day(o, 86_399_999_999, 6)), r#""23:59:59.999999""#);
        assert_eq!(
            text(|o| time_of_day(o, 3_723_000_000_001, 9)),
            r#""01:02:03.000000001""#
        );
        assert!(time_of_day(&mut Vec::new(), -1, 3).is_err());
        assert_eq!(
            text(|o| timestamp(o, 1_704_164_645_123_456, 6, true)),
            r#""2024-01-02T03:04:05.123456Z""#
        );
        assert_eq!(text(|o| timestamp(o, -1, 3, false)), r#""1969-12-31T23:59:59.999""#);
        assert_eq!(text(|o| timestamp(o, 0, 0, true)), r#""1970-01-01T00:00:00Z""#);
        assert_eq!(
            text(|o| timestamp(o, 1_704_164_645_123_456_789, 9, false)),
            r#""2024-01-02T03:04:05.123456789""#
        );
        assert_eq!(parse_time("23:59:59.999999").to_string(), "23:59:59.999999");
    }

    #[test]
    fn floats_without_json_spellings() {
        let mut out = Vec::new();
        float(&mut out, f64::NAN, false);
        out.push(b' ');
        float(&mut out, f64::NEG_INFINITY, false);
        out.push(b' ');
        float(&mut out, 0.1f32 as f64, true);
        out.push(b' ');
        float(&mut out, 1.5, false);
        assert_eq!(String::from_utf8(out).unwrap(), r#""NaN" "-Infinity" 0.1 1.5"#);
    }
}
