//! How values appear in error messages: compact, quoted, and cut to about
//! [`SHOW_CHARS`] characters so a huge document in the wrong column costs
//! neither a full copy nor a huge dead-letter reason.

use std::io;

use serde_json::Value;

use crate::mapping::PgType;
use crate::row::project::JsonRef;

pub(super) const SHOW_CHARS: usize = 64;

pub(super) fn expected(what: &str, v: JsonRef<'_>) -> String {
    format!("expected {what}, found {}", show(v))
}

pub(super) fn out_of_range(v: JsonRef<'_>) -> String {
    format!("{} is out of range", show(v))
}

pub(super) fn nul_in(v: JsonRef<'_>) -> String {
    format!(
        "{} contains a NUL character (U+0000), which Postgres cannot store",
        show(v)
    )
}

/// The value as compact JSON, cut to about [`SHOW_CHARS`] characters.
pub(super) fn show(v: JsonRef<'_>) -> String {
    match v {
        JsonRef::Nested(nested) => show_value(nested),
        scalar => show_value(&scalar.to_value()),
    }
}

fn show_value(v: &Value) -> String {
    // Serialization stops once enough is written, so a huge document in the
    // wrong column does not cost a full copy just to build the message.
    // The cap in bytes always holds more than SHOW_CHARS characters, so a
    // character split at the cap is cut off again by `truncate_chars`.
    const CAP: usize = SHOW_CHARS * 4 + 4;
    struct Capped(Vec<u8>);
    impl io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = CAP - self.0.len();
            if room == 0 {
                return Err(io::Error::other("enough"));
            }
            self.0.extend_from_slice(&buf[..buf.len().min(room)]);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut capped = Capped(Vec::new());
    let _ = serde_json::to_writer(&mut capped, v);
    truncate_chars(String::from_utf8_lossy(&capped.0).into_owned())
}

pub(super) fn show_str(s: &str) -> String {
    let head: String = s.chars().take(SHOW_CHARS + 1).collect();
    let quoted = format!("{head:?}");
    if head.len() < s.len() {
        truncate_chars(quoted)
    } else {
        quoted
    }
}

pub(super) fn show_bytes(b: &[u8]) -> String {
    let head = &b[..b.len().min(SHOW_CHARS * 4)];
    show_str(&String::from_utf8_lossy(head))
}

fn truncate_chars(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(SHOW_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

pub(super) fn unsupported(source: &str, ty: PgType) -> String {
    format!("{source} cannot be written to a column of type {}", ty.sql_name())
}

/// "invalid JSON at line 1 column 5: expected value" — serde_json puts the
/// position at the end; we want it next to the subject.
pub(super) fn json_error(what: &str, e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&suffix) {
        Some(msg) => format!("{what} at line {} column {}: {msg}", e.line(), e.column()),
        None => format!("{what}: {full}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::mapping::PgType::*;
    use crate::row::testing::*;

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = format!("\"{}\"", "é".repeat(500));
        let e = err(Int4, &long);
        assert!(e.chars().count() < 140, "{e}");
        assert!(e.ends_with('…'), "{e}");
        let big = format!("[{}]", vec!["1"; 100_000].join(","));
        let e = err(Bool, &big);
        assert!(e.len() < 200, "{e}");
    }
}
