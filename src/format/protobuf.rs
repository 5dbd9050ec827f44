//! Protobuf: the writer's `.proto` (and the files it imports, from the
//! schema's references) compiled by `protox`, the message picked by the
//! Confluent message indexes, decoded by `prost-reflect` and written in
//! the canonical proto3 JSON mapping with the `.proto` field names:
//! `google.protobuf.Timestamp` as an RFC 3339 instant, enums by name,
//! bytes as base64, 64-bit integers as numbers, unset fields at their
//! defaults.

use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};

use super::avro::FieldColumn;
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// A compiled Protobuf writer's schema.
#[derive(Debug)]
pub(crate) struct ProtoSchema {
    pool: DescriptorPool,
    file: String,
}

/// The name the main schema is compiled under (references keep their own).
const MAIN: &str = "sluice_registered_schema.proto";

struct Sources(Vec<(String, String)>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.iter().find(|(n, _)| n == name) {
            Some((n, text)) => match serialized(text) {
                Some(mut descriptor) => {
                    descriptor.name = Some(n.clone());
                    Ok(File::from_file_descriptor_proto(descriptor))
                }
                None => File::from_source(n, text),
            },
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// A schema the registry served as `format=serialized`: a base64
/// `FileDescriptorProto` (what the official serializers register).
fn serialized(text: &str) -> Option<prost_types::FileDescriptorProto> {
    use base64::Engine as _;
    use prost::Message as _;
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.contains(|c: char| c.is_ascii_whitespace() || c == ';' || c == '{') {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(trimmed).ok()?;
    prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

impl ProtoSchema {
    /// Compiles `text` (`.proto` source, or a base64 `FileDescriptorProto`
    /// as the registry serves it with `format=serialized`); `references`
    /// are the imported files by import path, in either form.
    pub(crate) fn compile(text: &str, references: &[(String, String)]) -> Result<ProtoSchema, String> {
        let mut files = references.to_vec();
        files.push((MAIN.to_owned(), text.to_owned()));
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources(files));
        // The well-known types (`google/protobuf/timestamp.proto`, …) are
        // built in, whether or not the registry lists them as references.
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler
            .open_file(MAIN)
            .map_err(|e| format!("the Protobuf schema does not compile: {e}"))?;
        Ok(ProtoSchema {
            pool: compiler.descriptor_pool(),
            file: MAIN.to_owned(),
        })
    }

    /// Decodes one payload (the bytes after the magic byte and schema id:
    /// message indexes, then the message) into JSON text.
    pub(crate) fn to_json(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let (indexes, message) = message_indexes(payload)?;
        let descriptor = self.message(&indexes)?;
        let decoded = DynamicMessage::decode(descriptor.clone(), message).map_err(|e| {
            format!(
                "the Protobuf message does not decode as {}: {e}",
                descriptor.full_name()
            )
        })?;
        let options = SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .use_proto_field_name(true)
            .skip_default_fields(false);
        let mut serializer = serde_json::Serializer::new(&mut *out);
        decoded
            .serialize_with_options(&mut serializer, &options)
            .map_err(|e| format!("the Protobuf message cannot be written as JSON: {e}"))?;
        Ok(())
    }

    fn message(&self, indexes: &[usize]) -> Result<MessageDescriptor, String> {
        let file = self.pool.get_file_by_name(&self.file).expect("the compiled file");
        let missing = || format!("the schema has no message at indexes {indexes:?}");
        let (&first, rest) = indexes.split_first().ok_or_else(missing)?;
        let mut message = file.messages().nth(first).ok_or_else(missing)?;
        for &i in rest {
            let child = message.child_messages().nth(i);
            message = child.ok_or_else(missing)?;
        }
        Ok(message)
    }
}

/// The columns of a Protobuf schema: one per field of the file's one
/// top-level message (nested messages aside), by its `.proto` name, typed
/// as sluice writes the field. A file with several top-level messages is
/// refused: its records may be any of them.
pub(crate) fn columns(text: &str, references: &[(String, String)]) -> Result<Vec<FieldColumn>, String> {
    let schema = ProtoSchema::compile(text, references)?;
    // With several messages, records may be any of them (their message
    // indexes say which): no one message's fields are the columns.
    let file = schema.pool.get_file_by_name(&schema.file).expect("the compiled file");
    let names: Vec<String> = file.messages().map(|m| m.full_name().to_owned()).collect();
    if names.len() > 1 {
        return Err(format!(
            "the Protobuf schema has {} top-level messages ({}): columns are taken only from a file with one \
             (name the columns in `columns` instead)",
            names.len(),
            names.join(", ")
        ));
    }
    let message = schema.message(&[0])?;
    Ok(message
        .fields()
        .map(|f| FieldColumn {
            name: f.name().to_owned(),
            sql_type: sql_type(&f).to_owned(),
        })
        .collect())
}

/// The SQL type a field is written as: what its canonical JSON converts to
/// faithfully. Repeated fields, maps and messages other than the
/// well-known scalars are `jsonb`.
fn sql_type(field: &FieldDescriptor) -> &'static str {
    if field.is_list() || field.is_map() {
        return "jsonb";
    }
    match field.kind() {
        Kind::Double => "double precision",
        Kind::Float => "real",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "integer",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint32 | Kind::Fixed32 => "bigint",
        Kind::Uint64 | Kind::Fixed64 => "numeric",
        Kind::Bool => "boolean",
        Kind::String | Kind::Enum(_) => "text",
        Kind::Bytes => "bytea",
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => "timestamptz",
            "google.protobuf.DoubleValue" => "double precision",
            "google.protobuf.FloatValue" => "real",
            "google.protobuf.Int32Value" => "integer",
            "google.protobuf.Int64Value" | "google.protobuf.UInt32Value" => "bigint",
            "google.protobuf.UInt64Value" => "numeric",
            "google.protobuf.BoolValue" => "boolean",
            "google.protobuf.BytesValue" => "bytea",
            // A Duration's JSON is seconds with an `s` ("1.5s").
            "google.protobuf.StringValue" | "google.protobuf.Duration" | "google.protobuf.FieldMask" => "text",
            _ => "jsonb",
        },
    }
}

/// Confluent's message indexes: a zigzag varint count, then that many
/// zigzag varint indexes; a count of 0 means `[0]` (the first message).
fn message_indexes(payload: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let mut rest = payload;
    let count = zigzag(&mut rest)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if !(1..=100).contains(&count) {
        return Err(format!("bad Protobuf message-index count {count}"));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let i = zigzag(&mut rest)?;
        indexes.push(usize::try_from(i).map_err(|_| format!("bad Protobuf message index {i}"))?);
    }
    Ok((indexes, rest))
}

fn zigzag(rest: &mut &[u8]) -> Result<i64, String> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest.split_first().ok_or("the Protobuf message indexes are truncated")?;
        *rest = tail;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("a Protobuf message index is not a valid varint".to_owned())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::{DynamicMessage, Value};

    use super::*;

    const PROTO: &str = r#"
        syntax = "proto3";
        package shop;
        import "google/protobuf/timestamp.proto";
        message Other { string x = 1; }
        message Order {
          int64 id = 1;
          string name = 2;
          repeated string tags = 3;
          enum Status { NEW = 0; PAID = 1; }
          Status status = 4;
          google.protobuf.Timestamp at = 5;
          message Line { int32 qty = 1; }
          Line line = 6;
          bytes raw = 7;
          double price = 8;
        }
    "#;

    #[test]
    fn the_first_messages_fields_become_typed_columns() {
        let proto = r#"
            syntax = "proto3";
            package shop;
            import "google/protobuf/timestamp.proto";
            import "google/protobuf/wrappers.proto";
            import "google/protobuf/duration.proto";
            message Order {
              int64 id = 1;
              string name = 2;
              repeated string tags = 3;
              enum Status { NEW = 0; PAID = 1; }
              Status status = 4;
              google.protobuf.Timestamp at = 5;
              Line line = 6;
              bytes raw = 7;
              double price = 8;
              float ratio = 9;
              int32 qty = 10;
              uint32 small = 11;
              uint64 big = 12;
              sint64 delta = 13;
              bool paid = 14;
              map<string, int32> counts = 15;
              google.protobuf.Int64Value maybe = 16;
              google.protobuf.Duration took = 17;
              oneof choice { string a = 18; int32 b = 19; }
            }
            message Line { int32 qty = 1; }
        "#;
        assert!(columns(proto, &[])
            .unwrap_err()
            .contains("2 top-level messages (shop.Order, shop.Line)"));
        let proto = proto.replace("message Line { int32 qty = 1; }", "").replace(
            "Line line = 6;",
            "message Line { int32 qty = 1; }\n              Line line = 6;",
        );
        let want = [
            ("id", "bigint"),
            ("name", "text"),
            ("tags", "jsonb"),
            ("status", "text"),
            ("at", "timestamptz"),
            ("line", "jsonb"),
            ("raw", "bytea"),
            ("price", "double precision"),
            ("ratio", "real"),
            ("qty", "integer"),
            ("small", "bigint"),
            ("big", "numeric"),
            ("delta", "bigint"),
            ("paid", "boolean"),
            ("counts", "jsonb"),
            ("maybe", "bigint"),
            ("took", "text"),
            ("a", "text"),
            ("b", "integer"),
        ];
        crate::format::avro::assert_columns(columns(&proto, &[]).unwrap(), &want);
        assert!(columns("syntax = \"proto3\";", &[]).unwrap_err().contains("no message"));
    }

    #[test]
    fn messages_decode_to_canonical_json() {
        let schema = ProtoSchema::compile(PROTO, &[]).unwrap();
        let order = schema.message(&[1]).unwrap();
        let mut m = DynamicMessage::new(order.clone());
        m.set_field_by_name("id", Value::I64(9_007_199_254_740_993));
        m.set_field_by_name("name", Value::String("a\tb".into()));
        m.set_field_by_name("tags", Value::List(vec![Value::String("x".into())]));
        m.set_field_by_name("status", Value::EnumNumber(1));
        let ts = order.get_field_by_name("at").unwrap().kind();
        let mut at = DynamicMessage::new(ts.as_message().unwrap().clone());
        at.set_field_by_name("seconds", Value::I64(1_704_164_645));
        at.set_field_by_name("nanos", Value::I32(123_456_000));
        m.set_field_by_name("at", Value::Message(at));
        m.set_field_by_name("raw", Value::Bytes(vec![0u8, 255].into()));
        // Indexes [1]: count 1, index 1, zigzag-encoded.
        let mut payload = vec![2u8, 2];
        payload.extend(m.encode_to_vec());
        let mut out = Vec::new();
        schema.to_json(&payload, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":9007199254740993,"name":"a\tb","tags":["x"],"status":"PAID","at":"2024-01-02T03:04:05.123456Z","raw":"AP8=","price":0.0}"#
        );
        // A nested message: indexes [1, 0]; and count 0 for the first message.
        assert_eq!(schema.message(&[1, 0]).unwrap().full_name(), "shop.Order.Line");
        let (indexes, rest) = message_indexes(&[0, 9]).unwrap();
        assert_eq!((indexes, rest), (vec![0], &[9u8][..]));
        assert!(schema.message(&[5]).unwrap_err().contains("no message at indexes [5]"));
    }

    #[test]
    fn bad_bytes_and_bad_schemas_are_errors() {
        let schema = ProtoSchema::compile(PROTO, &[]).unwrap();
        let mut out = Vec::new();
        let e = schema.to_json(&[2, 2, 0x0a, 0x05, b'a'], &mut out).unwrap_err();
        assert!(e.contains("does not decode as shop.Order"), "{e}");
        assert!(schema.to_json(&[0x80], &mut out).unwrap_err().contains("truncated"));
        let e = ProtoSchema::compile("syntax = \"proto3\"; message M { Missing m = 1; }", &[]).unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
        // An import the references provide.
        let dep = (
            "dep/other.proto".to_owned(),
            "syntax = \"proto3\"; package d; message D { int32 n = 1; }".to_owned(),
        );
        let main = "syntax = \"proto3\"; import \"dep/other.proto\"; message M { d.D d = 1; }";
        let schema = ProtoSchema::compile(main, &[dep]).unwrap();
        assert_eq!(schema.message(&[0]).unwrap().full_name(), "M");
    }

    #[test]
    fn serialized_descriptors_compile_like_source() {
        use base64::Engine as _;
        let source = ProtoSchema::compile(PROTO, &[]).unwrap();
        let file = source.pool.get_file_by_name(MAIN).unwrap();
        let mut proto = file.file_descriptor_proto().clone();
        proto.name = Some("shop/order.proto".to_owned());
        let b64 = base64::engine::general_purpose::STANDARD.encode(proto.encode_to_vec());
        let schema = ProtoSchema::compile(&b64, &[]).unwrap();
        assert_eq!(schema.message(&[1, 0]).unwrap().full_name(), "shop.Order.Line");
    }
}
