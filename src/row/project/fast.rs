//! The projection's fast path: one pass over the record's bytes that checks
//! the JSON grammar and notes where each slot's value lies, without
//! serde_json's visitor machinery. It answers only when it is sure to agree
//! with [`super::Need::parse`]'s serde_json path, and gives up (`None`) on
//! everything rarer than plain data — an escape in a key or where members
//! were wanted, nesting deeper than [`MAX_NESTING`], serde_json's private
//! number key, any syntax error — so that the serde_json path decides
//! those, error messages included.
//!
//! Measured (callgrind, the bench's order events): serde_json's
//! validation and skipping was ~26 % of all instructions per record; SIMD
//! parsers (sonic-rs, simd-json) were slower than serde_json on these
//! ~200-byte documents, so this is hand-written and checked against the
//! serde_json path by a differential proptest (`tests` below).

use super::{Json, Node, NUMBER_TOKEN};

/// Deeper than this, the serde_json path decides (its recursion limit, 128,
/// is then never reached on the fast path).
const MAX_NESTING: usize = 100;

/// Fills `slots` as [`super::Need::parse`] would, or `None` when the serde_json
/// path must decide (`slots` is then in an unspecified state). `Some(true)`
/// when the text is also verbatim (see [`super::Parsed::verbatim`]).
pub(super) fn project<'a>(root: &Node, slots: &mut [Option<Json<'a>>], text: &'a str) -> Option<bool> {
    let mut s = Scanner {
        text,
        at: 0,
        verbatim: true,
    };
    s.skip_ws();
    s.node(root, slots, 0)?;
    s.skip_ws();
    (s.at == text.len()).then_some(s.verbatim)
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
    /// No backslash and no whitespace but spaces met so far.
    verbatim: bool,
}

/// How many bytes from the start of `b` a string's plain run takes: up to
/// the first quote, backslash or control character (or the end). Sixteen
/// bytes at a time with SSE2 (part of every x86-64), the rest in words.
#[cfg(target_arch = "x86_64")]
fn plain_run(b: &[u8]) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut at = 0;
    while let Some(chunk) = b.get(at..at + 16) {
        // SAFETY: SSE2 is always there on x86-64, and the unaligned load
        // reads exactly the 16 bytes of `chunk`.
        let found = unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Unsigned v <= 0x1F: min(v, 0x1F) == v.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1F)), v);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
        };
        if found != 0 {
            return at + found.trailing_zeros() as usize;
        }
        at += 16;
    }
    at + plain_run_in_words(&b[at..])
}

#[cfg(not(target_arch = "x86_64"))]
fn plain_run(b: &[u8]) -> usize {
    plain_run_in_words(b)
}

/// [`plain_run`] eight bytes at a time: in each word, the lowest byte
/// flagged by the classic zero-byte and less-than tricks is exact (false
/// positives appear only above a true one).
fn plain_run_in_words(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut rest = b;
    while let Some((chunk, tail)) = rest.split_first_chunk::<8>() {
        let w = u64::from_le_bytes(*chunk);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | w.wrapping_sub(ONES * 0x20) & !w)
            & HIGHS;
        if found != 0 {
            return b.len() - rest.len() + (found.trailing_zeros() / 8) as usize;
        }
        rest = tail;
    }
    let tail = rest.iter().position(|c| matches!(c, b'"' | b'\\' | 0..=0x1F));
    b.len() - rest.len() + tail.unwrap_or(rest.len())
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The byte at the cursor, 0 at the end: NUL is nowhere valid in JSON
    /// outside a string's escapes, so the end fails wherever a NUL would.
    fn peek(&self) -> u8 {
        self.bytes().get(self.at).copied().unwrap_or(0)
    }

    fn skip_ws(&mut self) {
        while self.peek() <= b' ' && matches!(self.peek(), b' ' | b'\n' | b'\t' | b'\r') {
            self.verbatim &= self.peek() == b' ';
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.skip_ws();
        (self.peek() == c).then(|| self.at += 1)
    }

    /// The value at `node`, `depth` containers down: kept whole in its slot,
    /// searched for members, or checked and skipped.
    fn node(&mut self, node: &Node, slots: &mut [Option<Json<'a>>], depth: usize) -> Option<()> {
        // A repeated key keeps its last value: what an earlier one filled
        // below this node is emptied first.
        for slot in &mut slots[node.span.clone()] {
            *slot = None;
        }
        self.skip_ws();
        if let Some(slot) = node.slot {
            let start = self.at;
            self.skip_value(depth)?;
            slots[slot] = Some(Json::read(&self.text[start..self.at], depth).ok()?);
            return Some(());
        }
        if node.members.is_empty() {
            return self.skip_value(depth);
        }
        match self.peek() {
            b'{' => {
                self.enter(depth)?;
                self.members(|s, key| {
                    if key == NUMBER_TOKEN.as_bytes() {
                        return None;
                    }
                    match node.members.iter().find(|m| m.key.as_bytes() == key) {
                        Some(member) => s.node(&member.node, slots, depth + 1),
                        None => s.skip_value(depth + 1),
                    }
                })
            }
            b'[' => {
                self.enter(depth)?;
                self.elements(|s, i| match node.members.iter().find(|m| m.index == Some(i)) {
                    Some(member) => s.node(&member.node, slots, depth + 1),
                    None => s.skip_value(depth + 1),
                })
            }
            // A string where members were wanted is parsed whole by the
            // serde_json path (escapes and all): only a plain one here.
            b'"' => self.string(false).map(drop),
            _ => self.skip_value(depth),
        }
    }

    fn enter(&mut self, depth: usize) -> Option<()> {
        self.at += 1;
        (depth < MAX_NESTING).then_some(())
    }

    /// An object's members after its `{`: each key (plain, no escapes) and
    /// its value, read by `value`.
    fn members(&mut self, mut value: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        if self.closes(b'}') {
            return Some(());
        }
        loop {
            self.skip_ws();
            if self.peek() != b'"' {
                return None;
            }
            let key = self.string(false)?;
            self.eat(b':')?;
            value(self, key)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    /// An array's elements after its `[`, each read by `value` with its index.
    fn elements(&mut self, mut value: impl FnMut(&mut Self, usize) -> Option<()>) -> Option<()> {
        if self.closes(b']') {
            return Some(());
        }
        for i in 0.. {
            value(self, i)?;
            if !self.more(b']')? {
                break;
            }
        }
        Some(())
    }

    /// Right after the opening bracket: whether `close` ends the container
    /// at once (it is eaten).
    fn closes(&mut self, close: u8) -> bool {
        self.skip_ws();
        (self.peek() == close).then(|| self.at += 1).is_some()
    }

    /// After a member or element: `true` past a comma (another follows),
    /// `false` past `close`, `None` on anything else.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.skip_ws();
        let more = match self.peek() {
            b',' => true,
            c if c == close => false,
            _ => return None,
        };
        self.at += 1;
        Some(more)
    }

    /// Checks and skips one value, `depth` containers down.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        self.skip_ws();
        match self.peek() {
            b'"' => self.string(true).map(drop),
            b'{' => {
                self.enter(depth)?;
                self.members(|s, _| s.skip_value(depth + 1))
            }
            b'[' => {
                self.enter(depth)?;
                self.elements(|s, _| s.skip_value(depth + 1))
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes().get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == b'-' {
            self.at += 1;
        }
        match self.peek() {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == b'.' {
            self.at += 1;
            self.some_digits()?;
        }
        if let b'e' | b'E' = self.peek() {
            self.at += 1;
            if let b'+' | b'-' = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let b'0'..=b'9' = self.peek() {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// A string at its opening quote; its content when it has no escape
    /// (empty when it has).
    /// With `escapes`, escapes are checked as serde_json checks a string it
    /// skips (a `\u` needs four hex digits; its value is not looked at);
    /// without, an escape gives up.
    #[inline(always)]
    fn string(&mut self, escapes: bool) -> Option<&'a [u8]> {
        let b = self.bytes();
        let start = self.at + 1;
        let mut at = start;
        let mut plain = true;
        loop {
            at += plain_run(b.get(at..)?);
            match b.get(at) {
                Some(b'"') => {
                    self.at = at + 1;
                    return Some(if plain { &b[start..at] } else { b"" });
                }
                Some(b'\\') if escapes => {
                    plain = false;
                    self.verbatim = false;
                    self.at = at;
                    self.escape()?;
                    at = self.at;
                }
                _ => return None,
            }
        }
    }

    /// An escape at its backslash.
    fn escape(&mut self) -> Option<()> {
        match *self.bytes().get(self.at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
            b'u' => {
                let hex = self.bytes().get(self.at + 2..self.at + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                self.at += 6;
            }
            _ => return None,
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::path;
    use super::super::Need;
    use super::*;

    type Slots<'t> = Vec<Option<Json<'t>>>;

    /// The fast path's answer and the serde_json path's, for `paths` in `text`.
    fn both<'t>(paths: &[String], text: &'t str) -> (Option<Slots<'t>>, serde_json::Result<Slots<'t>>) {
        let paths: Vec<_> = paths.iter().map(|p| path(p)).collect();
        let (need, _) = Need::of(&paths);
        let mut slots = vec![None; need.slots];
        let fast = project(&need.root, &mut slots, text).map(|verbatim| {
            // What `verbatim` promises (`Parsed::verbatim`): nothing for COPY
            // to escape, no escape for jsonb to read.
            if verbatim {
                assert!(
                    !text.bytes().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b'\t' | 0)),
                    "{text:?}"
                );
            }
            slots
        });
        (fast, need.parse_with_serde(text))
    }

    /// Documents of the shapes records have, with the keys the paths use
    /// repeated, escapes, odd numbers and whitespace, written by hand so
    /// that what serde_json would never write appears too.
    fn document() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            "-?0[0-9]",
            "[0-9]\\.",
            "-",
        ];
        let string = prop_oneof![
            "\"[a-c é😀]{0,6}\"",
            "\"[a-c]{0,3}(\\\\[\"\\\\/bfnrt]|\\\\u[0-9a-fA-F]{4}|\\\\ud800|\\\\x)[a-c]{0,3}\"",
            "\"[a-c]\t[a-c]\"",
        ];
        let leaf = prop_oneof![
            number,
            string.clone(),
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("null".to_owned()),
            Just("nul".to_owned()),
        ];
        let ws = "[ \t\n\r]{0,1}";
        leaf.prop_recursive(4, 32, 4, move |inner| {
            let key = prop_oneof![
                4 => "\"[ab0-1]\"",
                1 => "\"\\\\u0061\"",
                1 => Just("\"$serde_json::private::Number\"".to_owned()),
            ];
            prop_oneof![
                (prop::collection::vec((ws, inner.clone(), ws), 0..4), any::<bool>()).prop_map(|(items, trailing)| {
                    let body: Vec<String> = items.into_iter().map(|(a, v, b)| format!("{a}{v}{b}")).collect();
                    format!(
                        "[{}{}]",
                        body.join(","),
                        if trailing && !body.is_empty() { "," } else { "" }
                    )
                }),
                (prop::collection::vec((key, ws, inner), 0..5), prop::bool::weighted(0.1)).prop_map(
                    |(members, trailing)| {
                        let body: Vec<String> = members.into_iter().map(|(k, w, v)| format!("{k}{w}:{w}{v}")).collect();
                        format!("{{{}{}}}", body.join(","), if trailing { "," } else { "" })
                    }
                ),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the text, when the fast path answers, the serde_json
        /// path agrees, slot for slot.
        #[test]
        fn agrees_with_the_serde_json_path(
            doc in document(),
            ws in "[ \n]{0,1}",
            tail in prop_oneof![4 => Just(String::new()), 1 => "[ x,}\\]]"],
            cut in any::<prop::sample::Index>(),
            cut_it in prop::bool::weighted(0.1),
            swap in any::<prop::sample::Index>(),
            swap_it in prop::bool::weighted(0.3),
            with in prop::sample::select(vec!['{', '}', '[', ']', ',', ':', '"', '\\', ' ', '0', 'e']),
            paths in prop::collection::vec("/|(/[ab0-1]){1,3}", 1..5),
        ) {
            let mut text = format!("{ws}{doc}{ws}{tail}");
            if cut_it {
                let at = cut.index(text.len() + 1);
                let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                text.truncate(at);
            }
            if swap_it && !text.is_empty() {
                // One character replaced by a structural one: brackets that
                // do not match, a missing key, a stray quote.
                let at = swap.index(text.len());
                if text.is_char_boundary(at) && text.is_char_boundary(at + 1) {
                    text.replace_range(at..at + 1, &with.to_string());
                }
            }
            let (fast, slow) = both(&paths, &text);
            if let Some(fast) = fast {
                prop_assert_eq!(Some(fast), slow.ok(), "{:?} in {}", paths, text);
            }
        }

        /// Both ways of finding a string's plain run stop where a plain
        /// scan stops, at every length and position.
        #[test]
        fn plain_runs_end_at_the_first_quote_backslash_or_control(
            b in prop::collection::vec(prop_oneof![60 => 0x20u8..=0xFF, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20], 0..80),
            from in any::<prop::sample::Index>(),
        ) {
            let b = &b[from.index(b.len() + 1)..];
            let plain = b.iter().position(|c| matches!(c, b'"' | b'\\' | 0..=0x1F)).unwrap_or(b.len());
            prop_assert_eq!(plain_run(b), plain);
            prop_assert_eq!(plain_run_in_words(b), plain);
        }

        /// Records as serde_json writes them, nesting far from the limit,
        /// take the fast path unless they hold an escape (which it may
        /// leave to the serde_json path).
        #[test]
        fn plain_records_take_the_fast_path(v in super::super::tests::json_value(), paths in prop::collection::vec("/|(/[a-c0-2]){1,3}", 1..5)) {
            let text = serde_json::to_string(&v).unwrap();
            let (fast, slow) = both(&paths, &text);
            let slow = slow.unwrap();
            match fast {
                Some(fast) => prop_assert_eq!(fast, slow, "{:?} in {}", paths, text),
                None => prop_assert!(text.contains('\\'), "{:?} in {} not taken", paths, text),
            }
            // Compact and without an escape, it is verbatim too.
            let paths: Vec<_> = paths.iter().map(|p| path(p)).collect();
            let need = Need::of(&paths).0;
            let verbatim = project(&need.root, &mut vec![None; need.slots], &text);
            if !text.contains('\\') {
                prop_assert_eq!(verbatim, Some(true), "{}", text);
            }
        }
    }

    /// Every structural character of a few records replaced by every
    /// other, in turn: whatever the fast path then answers, the serde_json
    /// path agrees (brackets that do not match, commas and colons out of
    /// place, in read and in skipped parts alike).
    #[test]
    fn agrees_on_every_one_character_damage() {
        let records = [
            r#"{"amount":"1234.56","customer":{"name":"customer-42"},"id":1042,"items":[{"qty":2,"sku":"SKU-0042","unit_price":"199.99"},{"qty":5,"sku":"SKU-0777","unit_price":"166.91"}],"ts":"2026-11-30T08:31:39.191Z"}"#,
            r#"{"a": [1, {"b": [true, null]}, "x"], "b": {"0": {}, "1": []}, "c": [[], [[]]]}"#,
            r#"[{"a": 1}, [2, {"b": "\"q\""}], {"1": [0.5e-3]}]"#,
        ];
        let paths: Vec<String> = [
            "/id",
            "/customer/name",
            "/amount",
            "/a/1/b",
            "/b/1",
            "/0/a",
            "/1/1/b",
            "/items/0/qty",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        let structural = ['{', '}', '[', ']', ',', ':', '"', ' '];
        let mut taken = 0;
        for record in records {
            for (at, c) in record.char_indices().filter(|(_, c)| structural.contains(c)) {
                for with in structural.iter().filter(|&&w| w != c) {
                    let mut text = record.to_owned();
                    text.replace_range(at..at + 1, &with.to_string());
                    let (fast, slow) = both(&paths, &text);
                    if let Some(fast) = fast {
                        taken += 1;
                        assert_eq!(Some(fast), slow.ok(), "{text}");
                    }
                }
            }
        }
        // Some damage still leaves valid JSON (a space for a space-like
        // spot, a quote pair moved): those are taken, and agree.
        assert!(taken > 0);
    }

    #[test]
    fn gives_up_where_the_serde_json_path_must_decide() {
        let paths = ["/a/b".to_owned(), "/c".to_owned()];
        for text in [
            r#"{"a": {"b": 1}, "c": "\ud800"}"#,
            r#"{"\u0061": {"b": 1}}"#,
            r#"{"a": "\u0061"}"#,
            r#"{"a": {"$serde_json::private::Number": "1"}}"#,
            r#"{"a": {"b": 01}}"#,
            r#"{"a": [1, 2,]}"#,
            r#"{"a": 1} x"#,
            "",
        ] {
            assert_eq!(both(&paths, text).0, None, "{text}");
        }
        let deep = format!(r#"{{"x": {}{}}}"#, "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert_eq!(both(&paths, &deep).0, None);
        assert!(both(&paths, &deep).1.is_ok());
        // A `\u` escape where no column reads is checked as serde_json
        // checks it, and taken.
        let (fast, slow) = both(&paths, r#"{"a": {"b": 1}, "skip": "\u00e9\ud800", "c": 2}"#);
        assert_eq!(fast, Some(slow.unwrap()));
    }
}
