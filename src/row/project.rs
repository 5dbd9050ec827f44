//! Parsing only what the columns read: a record value is checked as JSON
//! from end to end, but a [`serde_json::Value`] is built only of the parts
//! the columns' pointers reach. Everything else is skipped without an
//! allocation. On the sample orders this halved the encoder's time: most of
//! a record (its line items) is read by no column but the whole-document one,
//! which writes the record's own text ([`raw_fits_jsonb`]).
//!
//! A pointer's path decides what is built: `/customer/name` builds an object
//! holding only `customer`, holding only `name`, whose value is built whole.
//! Where the value at a path is not an object or array, nothing below it
//! resolves, exactly as with a fully parsed value.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::row::sources::Path;

/// What of a value to build: all of it, or only some of its members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Need {
    all: bool,
    /// Members by object key or array index (a token may be both).
    members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    key: Box<str>,
    index: Option<usize>,
    need: Need,
}

impl Need {
    /// What the `paths` read of a value; `whole_raw` marks the paths that
    /// read the whole value but take its text, not its parse.
    pub(super) fn of<'p>(paths: impl IntoIterator<Item = (&'p Path, bool)>) -> Need {
        let mut root = Need::default();
        for (path, whole_raw) in paths {
            match path {
                Path::Whole if !whole_raw => root.all = true,
                Path::Tokens(tokens) => {
                    let mut node = &mut root;
                    for token in tokens.iter() {
                        let at = match node.members.iter().position(|m| *m.key == *token.key()) {
                            Some(at) => at,
                            None => {
                                node.members.push(Member {
                                    key: token.key().into(),
                                    index: token.index(),
                                    need: Need::default(),
                                });
                                node.members.len() - 1
                            }
                        };
                        node = &mut node.members[at].need;
                    }
                    node.all = true;
                }
                Path::Whole | Path::Meta | Path::Nothing => {}
            }
        }
        root
    }

    /// Parses `text` as JSON, building only what is needed. Fails when the
    /// text is not JSON (`serde_json::from_str` would fail), except in parts
    /// no column reads: their strings' `\u` escapes are not checked for
    /// lone surrogates and their nesting not against serde_json's
    /// recursion limit (the whole-value column takes the full parse when
    /// either could matter: [`raw_fits_jsonb`]). An object whose key is serde_json's private
    /// number token is read as the object it is.
    pub(super) fn parse(&self, text: &str) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_str(text);
        let value = Project(self).deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

struct Project<'n>(&'n Need);

impl<'de> DeserializeSeed<'de> for Project<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        if self.0.all {
            return serde::Deserialize::deserialize(de);
        }
        if self.0.members.is_empty() {
            de.deserialize_ignored_any(IgnoredAny)?;
            return Ok(Value::Null);
        }
        de.deserialize_any(self)
    }
}

/// An object key, matched against the members without an allocation.
struct Key<'n>(&'n [Member]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|m| *m.key == *key))
    }
}

impl<'de> Visitor<'de> for Project<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // A scalar where members were wanted: nothing below it resolves, as
    // with a full parse. (With `arbitrary_precision` a number arrives as a
    // one-entry map under serde_json's private key, which matches no
    // member, so it too builds an empty object that resolves nothing.)
    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let members = &self.0.members;
        let mut out = Map::new();
        while let Some(found) = map.next_key_seed(Key(members))? {
            match found {
                Some(at) => {
                    let member = &members[at];
                    let value = map.next_value_seed(Project(&member.need))?;
                    // Like a full parse, a repeated key keeps its last value.
                    out.insert(member.key.to_string(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let members = &self.0.members;
        let last = members.iter().filter_map(|m| m.index).max();
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let wanted = members.iter().find(|m| m.index == Some(i));
            let more = match wanted {
                Some(member) => match seq.next_element_seed(Project(&member.need))? {
                    Some(v) => {
                        out.push(v);
                        true
                    }
                    None => false,
                },
                // Placeholders keep the wanted elements at their indexes;
                // nothing past the last wanted one is kept.
                None => match seq.next_element::<IgnoredAny>()? {
                    Some(_) => {
                        if last.is_some_and(|l| i < l) {
                            out.push(Value::Null);
                        }
                        true
                    }
                    None => false,
                },
            };
            if !more {
                return Ok(Value::Array(out));
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

    fn path(p: &str) -> Path {
        Path::compile(&ColumnSource::Pointer(p.to_owned()))
    }

    fn need(paths: &[&str]) -> Need {
        let paths: Vec<Path> = paths.iter().map(|p| path(p)).collect();
        Need::of(paths.iter().map(|p| (p, false)))
    }

    #[test]
    fn builds_only_what_the_paths_reach() {
        let n = need(&["/id", "/customer/name", "/items/1/sku"]);
        let v = n
            .parse(r#"{"id": 7, "customer": {"name": "x", "age": 3}, "items": [{"sku": "a"}, {"sku": "b", "q": 1}, {}], "other": [1, {"a": null}]}"#)
            .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 7, "customer": {"name": "x"}, "items": [null, {"sku": "b"}]})
        );
    }

    #[test]
    fn the_whole_value_when_a_path_reads_it() {
        let text = r#"{"a": [1, 2.50, "x"], "b": {"c": null}}"#;
        let full: Value = serde_json::from_str(text).unwrap();
        assert_eq!(need(&["/", "/a"]).parse(text).unwrap(), full);
        let only_a: Value = serde_json::from_str(r#"{"a": [1, 2.50, "x"]}"#).unwrap();
        assert_eq!(need(&["/a"]).parse(text).unwrap(), only_a);
    }

    #[test]
    fn invalid_json_fails_wherever_it_is() {
        let n = need(&["/id"]);
        for bad in [
            r#"{"id": 1, "skip": [1, 2,]}"#,
            r#"{"id": 1, "skip": "a
b"}"#,
            r#"{"id": 1} x"#,
            r#"{"id": 1, "skip": "\q"}"#,
            r#"{"id": 1, "skip": {"k" 1}}"#,
            "",
        ] {
            assert!(n.parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn scalars_where_members_were_wanted_resolve_nothing() {
        let n = need(&["/a/b", "/n/0"]);
        let v = n.parse(r#"{"a": 12.5, "n": "str"}"#).unwrap();
        for (p, _) in [("/a/b", ()), ("/n/0", ())] {
            assert_eq!(path(p).resolve(&v), None, "{p}");
        }
        let top = need(&["/a"]).parse("42").unwrap();
        assert_eq!(path("/a").resolve(&top), None);
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

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[a-c\\\\\"\u{0}\u{e9}\u{1F600}]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the value, every path resolves to the same thing in the
        /// projection as in the full parse; and a text with NUL never goes
        /// to jsonb as it is.
        #[test]
        fn projection_resolves_like_the_full_parse(v in json_value(), paths in prop::collection::vec("(/[a-c0-2]){1,3}", 1..4)) {
            let text = serde_json::to_string(&v).unwrap();
            let compiled: Vec<Path> = paths.iter().map(|p| path(p)).collect();
            let projected = Need::of(compiled.iter().map(|p| (p, false))).parse(&text).unwrap();
            for p in &compiled {
                prop_assert_eq!(p.resolve(&projected), p.resolve(&v));
            }
            // serde_json writes NUL as `\u0000`: never taken as it is.
            if crate::row::copy_text::has_nul(&v) {
                prop_assert!(!raw_fits_jsonb(&text));
            }
        }
    }
}
