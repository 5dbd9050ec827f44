//! Parsing only what the columns read: a record value is checked as JSON
//! from end to end, but only the values the columns' pointers reach are
//! kept, each as a [`Json`] that borrows the record's text where it can (a
//! number's own digits, a string without escapes). Nothing else is built:
//! no [`serde_json::Value`] tree, no key or number allocated. Most of a
//! record (its line items, say) is read by no column but the whole-document
//! one, which writes the record's own text ([`raw_fits_jsonb`]).
//!
//! The pointers form a tree ([`Need`]); the value where a pointer ends is
//! kept whole in a *slot*, and a pointer that reaches below another's end
//! reads the rest of its way in that slot's parsed value ([`Lookup`]).
//! Where the value at a path is not an object or array, nothing below it
//! resolves, exactly as with a fully parsed value.
//!
//! Two paths do this: a hand-written scanner ([`fast`]) that takes plain
//! records, and serde_json's deserializer, which decides whatever the
//! scanner gives up on (escaped keys, deep nesting, any error) so that
//! results and error messages are serde_json's.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::row::sources::{resolve_tokens, Path, Token};

mod fast;

/// A JSON value of a record, borrowing the record's text where it can.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json<'a> {
    Null,
    Bool(bool),
    /// The number's text, as serde_json keeps it with `arbitrary_precision`:
    /// the producer's digits, the exponent written `e+`/`e-`.
    Number(Cow<'a, str>),
    Str(Cow<'a, str>),
    /// An object or array, parsed whole.
    Nested(Value),
}

impl<'a> Json<'a> {
    /// The value whose text (valid JSON as far as serde_json's skipping
    /// checks) is `raw`, found inside `depth` objects and arrays; fails
    /// where a full parse would: an escape that is no character, nesting
    /// past the recursion limit (counting the `depth` levels above).
    fn read(text: &'a str, depth: usize) -> serde_json::Result<Json<'a>> {
        Ok(match text.as_bytes().first() {
            Some(b'n') => Json::Null,
            Some(b't') => Json::Bool(true),
            Some(b'f') => Json::Bool(false),
            Some(b'"') => {
                let inner = &text[1..text.len() - 1];
                if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
                    Json::Str(Cow::Borrowed(inner))
                } else {
                    Json::Str(Cow::Owned(serde_json::from_str(text)?))
                }
            }
            Some(b'{' | b'[') if depth == 0 => Json::Nested(serde_json::from_str(text)?),
            Some(b'{' | b'[') => {
                // Parsed inside as many arrays as it had containers above, so
                // that serde_json's recursion limit counts them as the full
                // parse does.
                let wrapped = format!("{}{text}{}", "[".repeat(depth), "]".repeat(depth));
                let mut v: Value = serde_json::from_str(&wrapped)?;
                for _ in 0..depth {
                    v = match v {
                        Value::Array(mut a) => a.pop().unwrap_or(Value::Null),
                        other => other,
                    };
                }
                Json::Nested(v)
            }
            _ => Json::Number(number_text(text)),
        })
    }

    pub(super) fn as_ref(&self) -> JsonRef<'_> {
        match self {
            Json::Null => JsonRef::Null,
            Json::Bool(b) => JsonRef::Bool(*b),
            Json::Number(n) => JsonRef::Number(n),
            Json::Str(s) => JsonRef::Str(s),
            // A parse may be a scalar after all: an object under one of
            // serde_json's private keys reads as the number or raw value it
            // stands for, as in a full parse.
            Json::Nested(v) => JsonRef::of(v),
        }
    }
}

/// A JSON number's text as serde_json's `arbitrary_precision` keeps it, so
/// that a number reads the same from a record's text as from a parsed
/// [`Value`]: the exponent marker `e`, its sign always written.
fn number_text(text: &str) -> Cow<'_, str> {
    let Some(at) = memchr::memchr2(b'e', b'E', text.as_bytes()) else {
        return Cow::Borrowed(text);
    };
    let (digits, exponent) = (&text[..at], &text[at + 1..]);
    match (text.as_bytes()[at], exponent.as_bytes().first()) {
        (b'e', Some(b'+' | b'-')) => Cow::Borrowed(text),
        (_, Some(b'+' | b'-')) => Cow::Owned(format!("{digits}e{exponent}")),
        _ => Cow::Owned(format!("{digits}e+{exponent}")),
    }
}

/// A borrowed JSON value, from a record's text ([`Json::as_ref`]) or from
/// a parsed [`Value`] ([`JsonRef::of`]): what the column conversions read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum JsonRef<'a> {
    Null,
    Bool(bool),
    /// A JSON number's text, exactly as written (serde_json's
    /// `arbitrary_precision` keeps it so in a [`Value`] too).
    Number(&'a str),
    Str(&'a str),
    /// An object or array.
    Nested(&'a Value),
}

impl<'a> JsonRef<'a> {
    pub(super) fn of(v: &'a Value) -> Self {
        match v {
            Value::Null => JsonRef::Null,
            Value::Bool(b) => JsonRef::Bool(*b),
            Value::Number(n) => JsonRef::Number(n.as_str()),
            Value::String(s) => JsonRef::Str(s),
            Value::Array(_) | Value::Object(_) => JsonRef::Nested(v),
        }
    }

    /// The value as a [`Value`] (for messages: it copies).
    pub(super) fn to_value(self) -> Value {
        match self {
            JsonRef::Null => Value::Null,
            JsonRef::Bool(b) => Value::Bool(b),
            JsonRef::Number(n) => serde_json::from_str(n).unwrap_or(Value::Null),
            JsonRef::Str(s) => Value::String(s.to_owned()),
            JsonRef::Nested(v) => v.clone(),
        }
    }
}

/// What the columns' pointers read of a record value: the tree of the
/// members they pass through, a slot where each ends.
#[derive(Debug, Clone, Default)]
pub(super) struct Need {
    root: Node,
    slots: usize,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// A pointer ends here: the value is kept whole, in this slot, and
    /// nothing below it is looked at by the projection.
    slot: Option<usize>,
    /// Members by object key or array index (a token may be both).
    members: Vec<Member>,
    /// The slots of this node and of everything below it.
    span: Range<usize>,
    /// While building: a pointer ends here.
    ends: bool,
}

#[derive(Debug, Clone)]
struct Member {
    key: Box<str>,
    index: Option<usize>,
    node: Node,
}

/// A value parsed by [`Need::parse`].
pub(super) struct Parsed<'a> {
    pub(super) slots: Vec<Option<Json<'a>>>,
    /// The text holds no backslash and no whitespace but spaces, and its
    /// nesting is within serde_json's limit: it stands for itself both as
    /// COPY text (nothing to escape) and as `jsonb` input (no `\u` escape
    /// for Postgres to read otherwise than serde_json; see
    /// [`raw_fits_jsonb`]). Only the fast path says so; `false` is "not known".
    pub(super) verbatim: bool,
}

/// Where a column's pointer finds its value: the slot at or above its end,
/// and the tokens left below that slot's value.
#[derive(Debug, Clone)]
pub(super) struct Lookup {
    slot: usize,
    rest: Box<[Token]>,
}

impl Lookup {
    /// The value at the pointer, `None` when nothing is there.
    pub(super) fn find<'v>(&self, slots: &'v [Option<Json<'_>>]) -> Option<JsonRef<'v>> {
        let found = slots[self.slot].as_ref()?;
        if self.rest.is_empty() {
            return Some(found.as_ref());
        }
        match found {
            Json::Nested(v) => resolve_tokens(v, &self.rest).map(JsonRef::of),
            _ => None,
        }
    }
}

impl Need {
    /// What the `paths` read of a value, and where each finds its value:
    /// `None` for a path that reads nothing of it (metadata, a pointer that
    /// can never match).
    pub(super) fn of<'p>(paths: impl IntoIterator<Item = &'p Path>) -> (Need, Vec<Option<Lookup>>) {
        let paths: Vec<Option<&[Token]>> = paths
            .into_iter()
            .map(|path| match path {
                Path::Whole => Some(&[][..]),
                Path::Tokens(tokens) => Some(&tokens[..]),
                Path::Meta | Path::Nothing => None,
            })
            .collect();
        let mut root = Node::default();
        for tokens in paths.iter().flatten() {
            let mut node = &mut root;
            for token in tokens.iter() {
                let at = match node.members.iter().position(|m| *m.key == *token.key()) {
                    Some(at) => at,
                    None => {
                        node.members.push(Member {
                            key: token.key().into(),
                            index: token.index(),
                            node: Node::default(),
                        });
                        node.members.len() - 1
                    }
                };
                node = &mut node.members[at].node;
            }
            node.ends = true;
        }
        let mut slots = 0;
        root.assign(&mut slots);
        let lookups = paths
            .iter()
            .map(|tokens| {
                let tokens = (*tokens)?;
                let mut node = &root;
                for (depth, token) in tokens.iter().enumerate() {
                    if let Some(slot) = node.slot {
                        return Some(Lookup {
                            slot,
                            rest: tokens[depth..].into(),
                        });
                    }
                    node = &node.members.iter().find(|m| *m.key == *token.key())?.node;
                }
                Some(Lookup {
                    slot: node.slot?,
                    rest: Box::default(),
                })
            })
            .collect();
        (Need { root, slots }, lookups)
    }

    /// Parses `text` as JSON, keeping the values the slots hold. Fails when
    /// the text is not JSON (`serde_json::from_str` would fail), except in
    /// parts no column reads: their strings' `\u` escapes are not checked for
    /// lone surrogates and their nesting not against serde_json's
    /// recursion limit (the whole-value column takes the full parse when
    /// either could matter: [`raw_fits_jsonb`]). An object whose key is serde_json's private
    /// number token is read as the object it is.
    pub(super) fn parse<'a>(&self, text: &'a str) -> serde_json::Result<Parsed<'a>> {
        let mut slots = vec![None; self.slots];
        if let Some(verbatim) = fast::project(&self.root, &mut slots, text) {
            return Ok(Parsed { slots, verbatim });
        }
        Ok(Parsed {
            slots: self.parse_with_serde(text)?,
            verbatim: false,
        })
    }

    /// [`Need::parse`] by serde_json alone: what decides every text the
    /// fast path gives up on.
    fn parse_with_serde<'a>(&self, text: &'a str) -> serde_json::Result<Vec<Option<Json<'a>>>> {
        let mut slots = vec![None; self.slots];
        let mut de = serde_json::Deserializer::from_str(text);
        Project {
            node: &self.root,
            slots: &mut slots,
            depth: 0,
        }
        .deserialize(&mut de)?;
        de.end()?;
        Ok(slots)
    }
}

impl Node {
    /// Numbers the slots depth first, so that each node's are one range;
    /// drops what lies below a slot.
    fn assign(&mut self, next: &mut usize) {
        let start = *next;
        if self.ends {
            self.slot = Some(*next);
            *next += 1;
            self.members.clear();
        } else {
            for member in &mut self.members {
                member.node.assign(next);
            }
        }
        self.span = start..*next;
    }
}

struct Project<'n, 's, 'a> {
    node: &'n Node,
    slots: &'s mut [Option<Json<'a>>],
    /// How many objects and arrays enclose the value.
    depth: usize,
}

impl<'a> DeserializeSeed<'a> for Project<'_, '_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'a>>(self, de: D) -> Result<(), D::Error> {
        // Like a full parse, a repeated key keeps its last value, and only
        // what is below that one resolves.
        for slot in &mut self.slots[self.node.span.clone()] {
            *slot = None;
        }
        if let Some(slot) = self.node.slot {
            let raw = <&'a RawValue>::deserialize(de)?;
            self.slots[slot] = Some(Json::read(raw.get(), self.depth).map_err(D::Error::custom)?);
            return Ok(());
        }
        if self.node.members.is_empty() {
            de.deserialize_ignored_any(IgnoredAny)?;
            return Ok(());
        }
        de.deserialize_any(self)
    }
}

/// An object key, matched against the members without an allocation.
struct Key<'n> {
    members: &'n [Member],
    first: bool,
}

/// What an object key is.
enum KeyIs {
    Member(usize),
    Other,
    /// serde_json's private number key as an object's first key: the
    /// "object" is a number (`arbitrary_precision` hands numbers over so,
    /// and a full parse reads a record's own such object as one too).
    Number,
}

/// serde_json's private key for a number kept as text.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = KeyIs;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<KeyIs, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = KeyIs;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<KeyIs, E> {
        if self.first && key == NUMBER_TOKEN {
            return Ok(KeyIs::Number);
        }
        Ok(match self.members.iter().position(|m| *m.key == *key) {
            Some(at) => KeyIs::Member(at),
            None => KeyIs::Other,
        })
    }
}

impl<'a> Visitor<'a> for Project<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // A scalar where members were wanted: nothing below it resolves, as
    // with a full parse. (With `arbitrary_precision` a number arrives as a
    // one-entry map under serde_json's private key, which matches no
    // member, so it too resolves nothing.)
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        let Project { node, slots, depth } = self;
        let mut first = true;
        let mut number = false;
        while let Some(found) = map.next_key_seed(Key {
            members: if number { &[] } else { &node.members },
            first,
        })? {
            first = false;
            match found {
                KeyIs::Member(at) => map.next_value_seed(Project {
                    node: &node.members[at].node,
                    slots: &mut *slots,
                    depth: depth + 1,
                })?,
                // A number: nothing below it resolves (its slots were
                // emptied on the way in).
                KeyIs::Number => {
                    number = true;
                    map.next_value::<IgnoredAny>()?;
                }
                KeyIs::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
        let Project { node, slots, depth } = self;
        let mut i = 0;
        loop {
            let more = match node.members.iter().find(|m| m.index == Some(i)) {
                Some(member) => seq
                    .next_element_seed(Project {
                        node: &member.node,
                        slots: &mut *slots,
                        depth: depth + 1,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// Whether the text of a JSON value (already parsed as JSON) can go to a
/// `jsonb` column as it is, meaning the same as the compact serialization
/// of its parse: no `\u` escape of NUL or of a non-ASCII code point
/// (Postgres decodes those into the database's encoding, which fails on a
/// `SQL_ASCII` database with an error that is not about the row, where the
/// parse would have sent UTF-8; and refuses NUL and lone surrogates), and
/// no more brackets than serde_json's recursion limit allows levels (deep
/// nesting would fail Postgres's recursive parser the same way). A text
/// that does not fit takes the full parse, which decides as it always did.
pub(super) fn raw_fits_jsonb(text: &str) -> bool {
    let bytes = text.as_bytes();
    if memchr::memchr2_iter(b'[', b'{', bytes).count() > MAX_DEPTH {
        return false;
    }
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', &bytes[i..]) {
        let at = i + at;
        // Parsed JSON: a backslash always starts an escape, of 2 bytes or,
        // for `\u`, of 6.
        if bytes.get(at + 1) != Some(&b'u') {
            i = at + 2;
            continue;
        }
        let unit = bytes
            .get(at + 2..at + 6)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok());
        match unit {
            Some(1..=0x7F) => i = at + 6,
            _ => return false,
        }
    }
    true
}

/// The deepest nesting serde_json parses (its recursion limit).
const MAX_DEPTH: usize = 127;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mapping::ColumnSource;

    pub(super) fn path(p: &str) -> Path {
        Path::compile(&ColumnSource::Pointer(p.to_owned()))
    }

    /// What each of `paths` finds in `text`, as values.
    fn project(paths: &[&str], text: &str) -> serde_json::Result<Vec<Option<Value>>> {
        let paths: Vec<Path> = paths.iter().map(|p| path(p)).collect();
        let (need, lookups) = Need::of(&paths);
        let slots = need.parse(text)?.slots;
        Ok(lookups
            .iter()
            .map(|l| l.as_ref().and_then(|l| l.find(&slots)).map(JsonRef::to_value))
            .collect())
    }

    #[test]
    fn keeps_only_what_the_paths_reach() {
        let paths: Vec<Path> = ["/id", "/customer/name", "/items/1/sku", "/missing"]
            .iter()
            .map(|p| path(p))
            .collect();
        let (need, _) = Need::of(&paths);
        assert_eq!(need.slots, 4);
        let slots = need
            .parse(r#"{"id": 7, "customer": {"name": "x", "age": 3}, "items": [{"sku": "a"}, {"sku": "b", "q": 1}, {}], "other": [1, {"a": null}]}"#)
            .unwrap()
            .slots;
        assert_eq!(
            slots,
            vec![
                Some(Json::Number(Cow::Borrowed("7"))),
                Some(Json::Str(Cow::Borrowed("x"))),
                Some(Json::Str(Cow::Borrowed("b"))),
                None
            ]
        );
    }

    #[test]
    fn text_is_borrowed_unless_escaped() {
        fn slots(text: &str) -> Vec<Option<Json<'_>>> {
            let paths = [path("/s"), path("/n")];
            Need::of(&paths).0.parse(text).unwrap().slots
        }
        let plain = slots(r#"{"s": "plain é", "n": -12.50e-3}"#);
        assert!(
            matches!(plain[0], Some(Json::Str(Cow::Borrowed("plain é")))),
            "{plain:?}"
        );
        assert!(
            matches!(plain[1], Some(Json::Number(Cow::Borrowed("-12.50e-3")))),
            "{plain:?}"
        );
        let escaped = slots(r#"{"s": "tab\there \u00e9"}"#);
        assert!(
            matches!(&escaped[0], Some(Json::Str(Cow::Owned(s))) if s == "tab\there é"),
            "{escaped:?}"
        );
        assert_eq!(escaped[1], None);
    }

    #[test]
    fn numbers_read_as_a_parse_keeps_them() {
        for text in [
            "0",
            "-12.50",
            "1E5",
            "1e5",
            "1E+5",
            "1e-5",
            "2.5E-300",
            "1e+5",
            "123456789012345678901234567890",
        ] {
            let parsed: Value = serde_json::from_str(text).unwrap();
            let Value::Number(n) = &parsed else { unreachable!() };
            assert_eq!(number_text(text), n.as_str(), "{text}");
            assert_eq!(project(&["/"], text).unwrap(), vec![Some(parsed.clone())]);
        }
    }

    #[test]
    fn the_whole_value_when_a_path_reads_it() {
        let text = r#"{"a": [1, 2.50, "x"], "b": {"c": null}}"#;
        let full: Value = serde_json::from_str(text).unwrap();
        let found = project(&["/a/2", "/", "/a", "/b/c", "/b/d"], text).unwrap();
        assert_eq!(
            found,
            vec![
                Some(Value::from("x")),
                Some(full.clone()),
                Some(full["a"].clone()),
                Some(Value::Null),
                None
            ]
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let found = project(&["/a/b", "/a/c"], r#"{"a": {"b": 1, "c": 2}, "a": 3}"#).unwrap();
        assert_eq!(found, vec![None, None]);
        let found = project(&["/a/b", "/a/c"], r#"{"a": 3, "a": {"b": 1}}"#).unwrap();
        assert_eq!(found, vec![Some(Value::from(1)), None]);
    }

    #[test]
    fn the_recursion_limit_counts_the_levels_above_a_read_value() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for (paths, text) in [
            (&["/a"][..], format!(r#"{{"a": {}}}"#, deep(127))),
            (&["/a/b"][..], format!(r#"{{"a": {{"b": {}}}}}"#, deep(126))),
            (&["/a", "/a/0"][..], format!(r#"{{"a": {}}}"#, deep(127))),
        ] {
            assert!(serde_json::from_str::<Value>(&text).is_err());
            assert!(project(paths, &text).is_err(), "{paths:?}");
        }
        let fits = format!(r#"{{"a": {{"b": {}}}}}"#, deep(125));
        let full: Value = serde_json::from_str(&fits).unwrap();
        assert_eq!(project(&["/a/b"], &fits).unwrap(), vec![Some(full["a"]["b"].clone())]);
    }

    #[test]
    fn serde_jsons_private_number_key_reads_as_the_full_parse_does() {
        // A decimal reaches the projection as a map under the private key.
        assert_eq!(
            project(&["/a/$serde_json::private::Number"], r#"{"a": 1.5}"#).unwrap(),
            vec![None]
        );
        assert_eq!(
            project(&["/a/$serde_json::private::Number", "/b"], r#"{"a": 1.5, "b": 2}"#).unwrap(),
            vec![None, Some(Value::from(2))]
        );
        // A record's own such object is the number, as in a full parse.
        let text = r#"{"a": {"$serde_json::private::Number": "15"}}"#;
        let full: Value = serde_json::from_str(text).unwrap();
        assert_eq!(project(&["/a"], text).unwrap(), vec![Some(full["a"].clone())]);
        let paths = [path("/a")];
        let (need, lookups) = Need::of(&paths);
        let slots = need.parse(text).unwrap().slots;
        assert!(matches!(
            lookups[0].as_ref().unwrap().find(&slots),
            Some(JsonRef::Number("15"))
        ));
    }

    #[test]
    fn invalid_json_fails_wherever_it_is() {
        for bad in [
            r#"{"id": 1, "skip": [1, 2,]}"#,
            r#"{"id": 1, "skip": "a
b"}"#,
            r#"{"id": 1} x"#,
            r#"{"id": 1, "skip": "\q"}"#,
            r#"{"id": 1, "skip": {"k" 1}}"#,
            r#"{"id": "\ud800"}"#,
            r#"{"id": {"deep": "\udc00"}}"#,
            "",
        ] {
            assert!(project(&["/id"], bad).is_err(), "{bad:?} parsed");
        }
        // Where no column reads, a lone surrogate is not looked at.
        assert!(project(&["/id"], r#"{"id": 1, "skip": "\ud800"}"#).is_ok());
    }

    #[test]
    fn scalars_where_members_were_wanted_resolve_nothing() {
        assert_eq!(
            project(&["/a/b", "/n/0"], r#"{"a": 12.5, "n": "str"}"#).unwrap(),
            vec![None, None]
        );
        assert_eq!(project(&["/a"], "42").unwrap(), vec![None]);
        assert_eq!(project(&["/"], " 42 ").unwrap(), vec![Some(Value::from(42))]);
    }

    #[test]
    fn raw_text_fits_jsonb_only_when_it_means_the_same() {
        assert!(raw_fits_jsonb(r#"{"a": "x \n \t \" \\u0000 é \u0041 😀"}"#));
        for no in [
            r#"{"a": "x\u0000"}"#,
            r#"{"\u0000": 1}"#,
            r#"{"a": "\u00e9"}"#,
            r#""\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""\u0041\u0080""#,
        ] {
            assert!(!raw_fits_jsonb(no), "{no}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(serde_json::from_str::<Value>(&deep(127)).is_ok());
        assert!(raw_fits_jsonb(&deep(127)));
        assert!(serde_json::from_str::<Value>(&deep(128)).is_err());
        assert!(!raw_fits_jsonb(&deep(128)));
    }

    pub(super) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            (any::<i32>(), 0u32..4).prop_map(|(m, s)| {
                let text = format!("{m}.{}", "0".repeat(s as usize + 1));
                serde_json::from_str(&text).unwrap()
            }),
            "[a-c\\\\\"\u{0}\u{e9}\u{1F600}\t]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the value, every path finds the same thing in the
        /// projection as in the full parse, paths that pass through
        /// others' ends included; and a text with NUL never goes to jsonb
        /// as it is.
        #[test]
        fn projection_resolves_like_the_full_parse(v in json_value(), paths in prop::collection::vec("/|(/[a-c0-2]){1,3}", 1..5)) {
            let text = serde_json::to_string(&v).unwrap();
            let want: Vec<Option<Value>> = paths.iter().map(|p| path(p).resolve(&v).cloned()).collect();
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            prop_assert_eq!(project(&paths, &text).unwrap(), want);
            // serde_json writes NUL as `\u0000`: never taken as it is.
            if crate::row::copy_text::has_nul(&v) {
                prop_assert!(!raw_fits_jsonb(&text));
            }
        }
    }
}
