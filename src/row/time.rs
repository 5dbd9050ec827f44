//! Dates and timestamps: strict ISO 8601 / RFC 3339 input rounded to
//! Postgres' microseconds, and ISO output limited to years 1 to 9999 (the
//! years Postgres' ISO input accepts without an era suffix).

use chrono::{DateTime, Datelike, NaiveDate};

/// Outside the years Postgres' ISO input accepts without an era suffix.
pub(super) struct OutOfRange;

const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

/// Microseconds since the epoch, rounding nanoseconds half up (Postgres keeps
/// microseconds and rounds too). A leap second (`:60`) rolls into the next
/// minute, as in Postgres.
fn rfc3339_micros<Tz: chrono::TimeZone>(dt: &DateTime<Tz>) -> Option<i64> {
    let nanos = i64::from(dt.timestamp_subsec_nanos());
    dt.timestamp()
        .checked_mul(MICROS_PER_SEC)?
        .checked_add((nanos + 500) / 1000)
}

fn two_digits(b: &[u8], at: usize) -> Option<u32> {
    match b.get(at..at + 2)? {
        [h @ b'0'..=b'9', l @ b'0'..=b'9'] => Some(u32::from(h - b'0') * 10 + u32::from(l - b'0')),
        _ => None,
    }
}

/// The digits of strictly `YYYY-MM-DD` (the date not checked).
fn ymd(b: &[u8]) -> Option<(u32, u32, u32)> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
    Some((year, two_digits(b, 5)?, two_digits(b, 8)?))
}

/// Strictly `YYYY-MM-DD`.
pub(super) fn parse_date(b: &[u8]) -> Option<NaiveDate> {
    let (year, month, day) = ymd(b)?;
    NaiveDate::from_ymd_opt(year as i32, month, day)
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.frac]` without an offset, as microseconds since
/// the epoch (the wall-clock time read as UTC).
pub(super) fn parse_naive_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = ymd(&b[..10])?;
    let days = days_from_civil(i64::from(year), month, day)?;
    let (h, m, sec) = (two_digits(b, 11)?, two_digits(b, 14)?, two_digits(b, 17)?);
    // 60 is a leap second, accepted like the RFC 3339 path does.
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let frac = match &b[19..] {
        [] => 0,
        [b'.', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            let mut v = 0i64;
            for k in 0..6 {
                v = v * 10 + digits.get(k).map_or(0, |d| i64::from(d - b'0'));
            }
            // Half up on the seventh digit, matching `rfc3339_micros`.
            v + i64::from(digits.get(6).is_some_and(|&d| d >= b'5'))
        }
        _ => return None,
    };
    let secs = i64::from((h * 60 + m) * 60 + sec);
    Some(days * MICROS_PER_DAY + secs * MICROS_PER_SEC + frac)
}

/// An RFC 3339 timestamp as microseconds since the epoch
/// ([`rfc3339_micros`]): the common form read directly, anything else by
/// chrono.
pub(super) fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    parse_rfc3339_common(s).or_else(|| rfc3339_micros(&DateTime::parse_from_rfc3339(s).ok()?))
}

/// The RFC 3339 timestamps nearly every producer writes,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]` then `Z` or `±HH:MM`, with at most nine
/// fraction digits and no leap second, read without chrono's general parser:
/// microseconds since the epoch as [`rfc3339_micros`] gives them. `None`
/// for anything else, which chrono then decides.
fn parse_rfc3339_common(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let (local, offset_minutes) = match b.last()? {
        b'Z' => (&s[..s.len() - 1], 0),
        _ => {
            let zone = b.get(b.len().checked_sub(6)?..)?;
            let sign = match zone[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = (two_digits(zone, 1)?, two_digits(zone, 4)?);
            if zone[3] != b':' || h > 23 || m > 59 {
                return None;
            }
            // The sign is ASCII: a character boundary.
            (&s[..s.len() - 6], sign * i64::from(h * 60 + m))
        }
    };
    let l = local.as_bytes();
    if !(19..=29).contains(&l.len()) || l[10] != b'T' || &l[17..19] == b"60" {
        return None;
    }
    Some(parse_naive_micros(local)? - offset_minutes * 60 * MICROS_PER_SEC)
}

pub(super) fn push_date(out: &mut Vec<u8>, d: NaiveDate) -> Result<(), OutOfRange> {
    // Year 0 and earlier need Postgres' "BC" syntax, and later than 9999 is
    // almost always a unit mistake (epoch micros sent as millis); refuse both.
    let year = u32::try_from(d.year()).map_err(|_| OutOfRange)?;
    if !(1..=9999).contains(&year) {
        return Err(OutOfRange);
    }
    push_padded(out, year, 4);
    out.push(b'-');
    push_padded(out, d.month(), 2);
    out.push(b'-');
    push_padded(out, d.day(), 2);
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` with a zone, `YYYY-MM-DD HH:MM:SS[.ffffff]`
/// without. Written without chrono (its calendar types cost ~400
/// instructions a timestamp, and every row of a table with a Kafka
/// timestamp column writes one); checked against chrono by a proptest.
pub(super) fn push_timestamp(out: &mut Vec<u8>, micros: i64, with_zone: bool) -> Result<(), OutOfRange> {
    let (year, month, day) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
    if !(1..=9999).contains(&year) {
        return Err(OutOfRange);
    }
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let secs = (in_day / MICROS_PER_SEC) as u32;
    let frac = (in_day % MICROS_PER_SEC) as u32;
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut buf[0..4], year as u32);
    put_digits(&mut buf[5..7], month);
    put_digits(&mut buf[8..10], day);
    if !with_zone {
        buf[10] = b' ';
    }
    put_digits(&mut buf[11..13], secs / 3600);
    put_digits(&mut buf[14..16], secs / 60 % 60);
    put_digits(&mut buf[17..19], secs % 60);
    let mut len = 19;
    if frac != 0 {
        put_digits(&mut buf[20..26], frac);
        len = 26;
    }
    if with_zone {
        buf[len] = b'Z';
        len += 1;
    }
    out.extend_from_slice(&buf[..len]);
    Ok(())
}

/// The proleptic Gregorian (year, month, day) of a day counted from
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], from March
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The day counted from 1970-01-01 of a proleptic Gregorian date, `None`
/// when there is no such date (Howard Hinnant's `days_from_civil`; the
/// inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => 28 + u32::from(leap),
        _ => return None,
    };
    if day == 0 || day > days_in_month {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let (era, yoe) = (y.div_euclid(400), y.rem_euclid(400));
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 }); // from March
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The two digits of 0 to 99.
const PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0; 2]; 100];
    let mut i = 0;
    while i < 100 {
        pairs[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    pairs
};

/// `v` as exactly `slot.len()` decimal digits, zero-padded; `v` must fit.
/// Two digits at a time: half the divisions.
fn put_digits(slot: &mut [u8], mut v: u32) {
    let mut end = slot.len();
    while end >= 2 {
        slot[end - 2..end].copy_from_slice(&PAIRS[(v % 100) as usize]);
        v /= 100;
        end -= 2;
    }
    if end == 1 {
        slot[0] = b'0' + (v % 10) as u8;
    }
}

/// Zero-padded to `width` digits; `v` must fit.
fn push_padded(out: &mut Vec<u8>, v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    put_digits(&mut buf[..width], v);
    out.extend_from_slice(&buf[..width]);
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use proptest::prelude::*;

    use crate::mapping::PgType::*;
    use crate::row::testing::*;

    #[test]
    fn timestamptz() {
        assert_eq!(
            ok(Timestamptz, r#""2024-01-02T03:04:05.123456Z""#),
            "2024-01-02T03:04:05.123456Z"
        );
        assert_eq!(
            ok(Timestamptz, r#""2024-01-02T05:04:05+02:00""#),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            ok(Timestamptz, r#""2024-01-01T23:30:00.5-05:00""#),
            "2024-01-02T04:30:00.500000Z"
        );
        // Nanoseconds round to microseconds, carrying into the next day.
        assert_eq!(
            ok(Timestamptz, r#""2024-01-02T23:59:59.9999996Z""#),
            "2024-01-03T00:00:00Z"
        );
        assert_eq!(
            ok(Timestamptz, r#""2024-01-02T03:04:05.1234564Z""#),
            "2024-01-02T03:04:05.123456Z"
        );
        assert_eq!(ok(Timestamptz, r#""2016-12-31T23:59:60Z""#), "2017-01-01T00:00:00Z");
        assert_eq!(ok(Timestamptz, "0"), "1970-01-01T00:00:00Z");
        assert_eq!(ok(Timestamptz, "1704164645123"), "2024-01-02T03:04:05.123000Z");
        assert_eq!(ok(Timestamptz, "-1"), "1969-12-31T23:59:59.999000Z");
        assert_eq!(ok(Timestamptz, r#""0001-01-01T00:00:00Z""#), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn timestamptz_rejections() {
        let e = err(Timestamptz, r#""2024-01-02 03:04:05""#);
        assert!(
            e.contains("expected an RFC 3339 timestamp or epoch milliseconds"),
            "{e}"
        );
        assert!(err(Timestamptz, r#""2024-02-30T00:00:00Z""#).contains("expected"));
        assert!(err(Timestamptz, r#""yesterday""#).contains("expected"));
        assert!(err(Timestamptz, "1.5").contains("expected"));
        assert!(err(Timestamptz, "true").contains("expected"));
        assert!(err(Timestamptz, r#""0001-01-01T00:00:00+01:00""#).contains("out of range"));
        assert!(err(Timestamptz, "9223372036854775807").contains("out of range"));
        assert!(err(Timestamptz, "1e30").contains("out of range"));
        // Epoch microseconds mistaken for milliseconds land past year 9999.
        assert!(err(Timestamptz, "1704164645123000").contains("out of range"));
    }

    #[test]
    fn timestamp_without_zone() {
        assert_eq!(
            ok(Timestamp, r#""2024-01-02T05:04:05.25+02:00""#),
            "2024-01-02 03:04:05.250000"
        );
        assert_eq!(ok(Timestamp, r#""2024-01-02T03:04:05""#), "2024-01-02 03:04:05");
        assert_eq!(
            ok(Timestamp, r#""2024-01-02 03:04:05.123456789""#),
            "2024-01-02 03:04:05.123457"
        );
        assert_eq!(ok(Timestamp, r#""1900-02-28 23:59:59.9999999""#), "1900-03-01 00:00:00");
        assert_eq!(ok(Timestamp, "1704164645123"), "2024-01-02 03:04:05.123000");
        assert!(err(Timestamp, r#""2024-01-02T24:00:00""#).contains("expected"));
        assert!(err(Timestamp, r#""2024-01-02T03:04""#).contains("expected"));
        assert!(err(Timestamp, r#""2024-01-02T03:04:05.""#).contains("expected"));
        assert!(err(Timestamp, r#""2024-01-02T03:04:05x""#).contains("expected"));
        assert!(err(Timestamp, r#""0000-06-01 00:00:00""#).contains("out of range"));
        assert!(err(Timestamp, "[]").contains("expected"));
    }

    #[test]
    fn dates() {
        assert_eq!(ok(Date, r#""2024-02-29""#), "2024-02-29");
        assert_eq!(ok(Date, r#""2024-01-01T23:30:00-05:00""#), "2024-01-02");
        // A bare number could be days or milliseconds: refused, not guessed.
        assert!(err(Date, "1704164645123").contains("ambiguous for a date"));
        assert!(err(Date, "19724").contains("days or milliseconds"));
        assert!(err(Date, r#""2023-02-29""#).contains("expected a date"));
        assert!(err(Date, r#""2024-1-2""#).contains("expected a date"));
        assert!(err(Date, r#""2024-01-02T00:00:00""#).contains("expected a date"));
        assert!(err(Date, r#""0000-01-01""#).contains("out of range"));
        assert!(err(Date, r#""99999-01-01""#).contains("expected a date"));
        assert!(err(Date, "1.5").contains("expected a date"));
        assert!(err(Date, "false").contains("expected a date"));
    }

    /// What `push_timestamp` wrote before it left chrono: the oracle.
    fn chrono_timestamp(micros: i64, with_zone: bool) -> Option<String> {
        use chrono::{Datelike, Timelike};
        let t = DateTime::from_timestamp_micros(micros)?.naive_utc();
        if !(1..=9999).contains(&t.year()) {
            return None;
        }
        let frac = micros.rem_euclid(1_000_000);
        Some(format!(
            "{:04}-{:02}-{:02}{}{:02}:{:02}:{:02}{}{}",
            t.year(),
            t.month(),
            t.day(),
            if with_zone { 'T' } else { ' ' },
            t.hour(),
            t.minute(),
            t.second(),
            if frac != 0 {
                format!(".{frac:06}")
            } else {
                String::new()
            },
            if with_zone { "Z" } else { "" }
        ))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn timestamps_are_written_as_chrono_writes_them(
            micros in prop_oneof![
                -62_135_596_800_000_000i64..253_402_300_800_000_000,
                any::<i64>(),
                (-62_135_596_800_000_000i64 - 86_400_000_000..-62_135_596_800_000_000 + 86_400_000_000),
                (253_402_300_800_000_000i64 - 86_400_000_000..253_402_300_800_000_000 + 86_400_000_000),
            ],
            with_zone in any::<bool>(),
        ) {
            let mut out = Vec::new();
            let got = super::push_timestamp(&mut out, micros, with_zone).ok().map(|()| String::from_utf8(out).unwrap());
            prop_assert_eq!(got, chrono_timestamp(micros, with_zone));
        }

        /// Where the common form's reader answers, chrono's general parser
        /// gives the same instant; and it answers for every timestamp of
        /// the common form.
        #[test]
        fn common_timestamps_read_as_chrono_reads_them(
            date in "[0-9]{4}-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2])",
            sep in prop_oneof![8 => Just("T"), 1 => Just("t"), 1 => Just(" ")],
            time in "([01][0-9]|2[0-5]):[0-6][0-9]:[0-6][0-9]",
            frac in prop_oneof![Just(String::new()), "\\.[0-9]{0,11}"],
            zone in prop_oneof![Just("Z".to_owned()), Just("z".to_owned()), "[+-]([01][0-9]|2[0-5]):[0-6][0-9]", "[+-][0-9]{4}", Just(String::new())],
            damage in prop_oneof![8 => Just(None), 1 => (any::<prop::sample::Index>(), any::<char>()).prop_map(Some)],
        ) {
            let mut s = format!("{date}{sep}{time}{frac}{zone}");
            if let Some((at, c)) = damage {
                let at = at.index(s.len());
                s.replace_range(at..at + 1, &c.to_string());
            }
            let chrono = DateTime::parse_from_rfc3339(&s).ok().and_then(|dt| super::rfc3339_micros(&dt));
            let fast = super::parse_rfc3339_common(&s);
            if fast.is_some() {
                prop_assert_eq!(fast, chrono, "{}", s);
            }
            let common = sep == "T" && damage.is_none() && !time.ends_with("60") && (zone == "Z" || zone.len() == 6)
                && frac.len() <= 10;
            if common && chrono.is_some() {
                prop_assert_eq!(fast, chrono, "{} not read", s);
            }
        }

        /// Every date of years 0 to 9999 and beyond, there and back; chrono
        /// agrees on which dates exist.
        #[test]
        fn days_and_civil_dates_are_inverse(days in -800_000i64..3_000_000, month in 0u32..14, day in 0u32..33, year in -5i64..10_005) {
            let (y, m, d) = super::civil_from_days(days);
            prop_assert_eq!(super::days_from_civil(y, m, d), Some(days));
            let exists = chrono::NaiveDate::from_ymd_opt(year as i32, month, day);
            prop_assert_eq!(super::days_from_civil(year, month, day).is_some(), exists.is_some());
            if let Some(date) = exists {
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
                prop_assert_eq!(super::days_from_civil(year, month, day), Some((date - epoch).num_days()));
            }
        }

        #[test]
        fn epoch_millis_agree_with_chrono(ms in -62_135_596_800_000i64..253_402_300_799_999) {
            let got = ok(Timestamptz, &ms.to_string());
            let parsed = DateTime::parse_from_rfc3339(&got).unwrap();
            prop_assert_eq!(parsed.timestamp_millis(), ms);
            let naive = ok(Timestamp, &ms.to_string());
            prop_assert_eq!(naive.replace(' ', "T") + "Z", got);
        }
    }
}
