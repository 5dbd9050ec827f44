#!/usr/bin/env bash
# Self-test of the test support scripts, for real:
#
#   tests/support/selftest.sh
#
# Starts three tests/support/registry.py servers (plain, basic auth, TLS),
# produces Avro, Protobuf and JSON Schema records to the broker with
# tests/support/produce.py (the official confluent-kafka serializers), reads
# them back with a plain Consumer, checks the wire bytes (magic 0, 4-byte
# big-endian schema id, Protobuf message indexes), decodes them with the
# official deserializers through the registry, and checks auth, TLS, the
# outage modes and the schema cache. Prints the REST calls the official client
# made. Exits non-zero on the first failure. Takes about 15 s.
#
# Needs the broker and SLUICE_TEST_PYTHONPATH: when SLUICE_KAFKA_BROKERS or
# SLUICE_TEST_PYTHONPATH is unset, it sources scripts/services.sh first.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [ -z "${SLUICE_TEST_PYTHONPATH:-}" ] || [ -z "${SLUICE_KAFKA_BROKERS:-}" ]; then
    # shellcheck source=scripts/services.sh
    source scripts/services.sh
fi

say() { printf 'selftest: %s\n' "$*" >&2; }
# The check imports tests/support/produce.py: leave no __pycache__ in the tree.
export PYTHONDONTWRITEBYTECODE=1

work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-selftest.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# A self-signed certificate for 127.0.0.1, for the TLS registry.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/tls.key" -out "$work/tls.crt" >/dev/null 2>&1 ||
    { say "openssl could not make a test certificate"; exit 1; }

start_registry() { # NAME ARGS...
    local name=$1
    shift
    # (stdlib only; grpc_tools on the path only for format=serialized of .proto text)
    PYTHONPATH=$SLUICE_TEST_PYTHONPATH python3 tests/support/registry.py \
        --port 0 --port-file "$work/$name.port" "$@" 2>"$work/$name.log" &
    pids+=("$!")
}
start_registry plain
start_registry auth --user alice --password 's3cret:x'
start_registry tls --tls-cert "$work/tls.crt" --tls-key "$work/tls.key"
for name in plain auth tls; do
    for _ in $(seq 100); do [ -s "$work/$name.port" ] && break; sleep 0.1; done
    [ -s "$work/$name.port" ] || { say "registry $name did not start:"; cat "$work/$name.log" >&2; exit 1; }
done

say "registries up: plain :$(<"$work/plain.port"), auth :$(<"$work/auth.port"), tls :$(<"$work/tls.port")"

SELFTEST_WORK=$work PYTHONPATH=$SLUICE_TEST_PYTHONPATH python3 - <<'PYTHON'
import base64, datetime, decimal, json, os, subprocess, sys, time, urllib.request, uuid
from decimal import Decimal

sys.path.insert(0, "tests/support")
import produce as P  # compile_proto / message_class, the same code produce.py runs

from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.serialization import SerializationContext, MessageField
from google.protobuf import json_format

WORK = os.environ["SELFTEST_WORK"]
BROKERS = os.environ["SLUICE_KAFKA_BROKERS"]
PORT = {n: int(open(os.path.join(WORK, n + ".port")).read()) for n in ("plain", "auth", "tls")}
URL = "http://127.0.0.1:%d" % PORT["plain"]
AUTH_URL = "http://127.0.0.1:%d" % PORT["auth"]
TLS_URL = "https://127.0.0.1:%d" % PORT["tls"]
RUN = uuid.uuid4().hex[:8]
checks = 0


def ok(cond, what):
    global checks
    if not cond:
        print("selftest: FAILED: %s" % what, file=sys.stderr)
        sys.exit(1)
    checks += 1


def http(url, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def produce(spec):
    path = os.path.join(WORK, "spec-%s.json" % spec["topic"])
    with open(path, "w") as fh:
        json.dump(spec, fh)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "tests/support/produce.py", path],
                       capture_output=True, text=True, timeout=120)
    ok(p.returncode == 0, "produce.py %s: rc %d: %s" % (spec["topic"], p.returncode, p.stderr))
    ok(p.stdout.strip() == "produced %d" % len(spec["records"]), "produce.py output: %r" % p.stdout)
    return time.monotonic() - t0


def consume(topic, n, partitions=1):
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": "selftest-" + RUN,
                  "enable.auto.commit": False, "log_level": 3})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, deadline = [], time.monotonic() + 30
    while len(out) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        ok(m.error() is None, "consume %s: %s" % (topic, m.error()))
        out.append(m)
    c.close()
    ok(len(out) == n, "consumed %d of %d records from %s" % (len(out), n, topic))
    return out


def frame(b):
    """(schema id, rest) of a Confluent-framed payload."""
    ok(b is not None and len(b) >= 5 and b[0] == 0, "magic byte 0: %r" % (b[:8] if b else b,))
    return int.from_bytes(b[1:5], "big"), b[5:]


def latest_id(subject, url=URL):
    return http("%s/subjects/%s/versions/latest" % (url, urllib.request.quote(subject, safe="")))["id"]


sr = SchemaRegistryClient({"url": URL})
samples = {}

# ---------------------------------------------------------------- Avro ----
avro_topic = "selftest-avro-" + RUN
avro_schema = {
    "type": "record", "name": "Order", "namespace": "sluice.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "local_us", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "t_ms", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "t_us", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "raw", "type": "bytes"},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "street", "type": "string"},
            {"name": "zip", "type": ["null", "string"], "default": None}]}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "choice", "type": ["null", "string", "long"], "default": None},
    ],
}
avro_in = [
    {"id": 1, "amount": {"$decimal": "12.34"}, "day": {"$date": "2024-01-02"},
     "ts_ms": {"$timestamp": "2024-01-02T03:04:05.123Z"},
     "ts_us": {"$timestamp": "2024-01-02T03:04:05.123456+00:00"},
     "local_us": {"$local_timestamp": "2024-01-02T03:04:05.123456"},
     "t_ms": {"$time": "03:04:05.123"}, "t_us": {"$time": "03:04:05.123456"},
     "uid": {"$uuid": "0b7e6a52-7c3c-4c1e-9a43-4d4f2b1c9e11"}, "raw": {"$bytes": "AAEC/w=="},
     "status": "PAID", "tags": ["a", "b"], "attrs": {"x": 1, "y": -2},
     "address": {"street": "Main St", "zip": {"$union": ["string", "12345"]}},
     "note": "hello", "choice": {"$union": ["long", 5]}},
    {"id": 2, "amount": {"$decimal": "-0.50"}, "day": {"$date": "1969-12-31"},
     "ts_ms": {"$timestamp": "1970-01-01T00:00:00Z"}, "ts_us": {"$timestamp": "2024-06-30T23:59:59.999999Z"},
     "local_us": {"$local_timestamp": "2024-06-30T23:59:59"}, "t_ms": {"$time": "00:00:00"},
     "t_us": {"$time": "23:59:59.999999"}, "uid": {"$uuid": "00000000-0000-0000-0000-000000000000"},
     "raw": {"$bytes": ""}, "status": "NEW", "tags": [], "attrs": {},
     "address": {"street": "", "zip": None}, "note": None, "choice": {"$union": ["string", "5"]}},
]
utc = datetime.timezone.utc
avro_expected = [
    {"id": 1, "amount": Decimal("12.34"), "day": datetime.date(2024, 1, 2),
     "ts_ms": datetime.datetime(2024, 1, 2, 3, 4, 5, 123000, utc),
     "ts_us": datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, utc),
     "local_us": datetime.datetime(2024, 1, 2, 3, 4, 5, 123456),
     "t_ms": datetime.time(3, 4, 5, 123000), "t_us": datetime.time(3, 4, 5, 123456),
     "uid": uuid.UUID("0b7e6a52-7c3c-4c1e-9a43-4d4f2b1c9e11"), "raw": b"\x00\x01\x02\xff",
     "status": "PAID", "tags": ["a", "b"], "attrs": {"x": 1, "y": -2},
     "address": {"street": "Main St", "zip": "12345"}, "note": "hello", "choice": 5},
    {"id": 2, "amount": Decimal("-0.50"), "day": datetime.date(1969, 12, 31),
     "ts_ms": datetime.datetime(1970, 1, 1, tzinfo=utc),
     "ts_us": datetime.datetime(2024, 6, 30, 23, 59, 59, 999999, utc),
     "local_us": datetime.datetime(2024, 6, 30, 23, 59, 59), "t_ms": datetime.time(0, 0),
     "t_us": datetime.time(23, 59, 59, 999999), "uid": uuid.UUID(int=0), "raw": b"",
     "status": "NEW", "tags": [], "attrs": {}, "address": {"street": "", "zip": None},
     "note": None, "choice": "5"},
]
produce({"brokers": BROKERS, "topic": avro_topic, "partitions": 1, "registry": {"url": URL},
         "key": {"format": "avro", "schema": '"long"'},
         "value": {"format": "avro", "schema": json.dumps(avro_schema, indent=2)},
         "records": [{"key": 1, "value": avro_in[0], "headers": {"h1": "v1"}},
                     {"key": 2, "value": avro_in[1]},
                     {"key": 3, "value": None}]})
msgs = consume(avro_topic, 3)
vid, kid = latest_id(avro_topic + "-value"), latest_id(avro_topic + "-key")
ok(http("%s/schemas/ids/%d" % (URL, vid)) == {"schema": json.dumps(avro_schema, separators=(",", ":"))},
   "GET /schemas/ids for AVRO: no schemaType, compact canonical JSON")
ok(http("%s/schemas/ids/%d" % (URL, kid)) == {"schema": '"long"'}, "primitive key schema")
long_id = kid
deser = AvroDeserializer(sr)
for m, expected in zip(msgs, avro_expected + [None]):
    sid, _ = frame(m.key())
    ok(sid == kid, "avro key id %d == %d" % (sid, kid))
    ok(deser(m.key(), SerializationContext(avro_topic, MessageField.KEY)) in (1, 2, 3), "avro key decodes")
    if expected is None:
        ok(m.value() is None, "tombstone stays a tombstone")
        continue
    sid, _ = frame(m.value())
    ok(sid == vid, "avro value id %d == %d" % (sid, vid))
    got = deser(m.value(), SerializationContext(avro_topic, MessageField.VALUE))
    ok(got == expected, "avro round trip:\n  got      %r\n  expected %r" % (got, expected))
ok(msgs[0].headers() == [("h1", b"v1")], "headers: %r" % (msgs[0].headers(),))
samples["avro"] = msgs[0].value()

# ------------------------------------------------------------ Protobuf ----
proto = '''syntax = "proto3";
package sluice.test;

import "google/protobuf/timestamp.proto";

message Other { string x = 1; }

message Order {
  enum Status { UNKNOWN = 0; PAID = 1; SHIPPED = 2; }
  message Item { string sku = 1; int32 qty = 2; }
  int64 id = 1;
  string customer = 2;
  repeated Item items = 3;
  Status status = 4;
  google.protobuf.Timestamp created = 5;
  map<string, int64> counts = 6;
  oneof contact { string email = 7; string phone = 8; }
  optional double discount = 9;
  repeated string tags = 10;
}
'''
order_in = {"id": "7", "customer": "ann", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
            "status": "PAID", "created": "2024-01-02T03:04:05.123456Z", "counts": {"a": 1},
            "email": "a@b.c", "discount": 0.5, "tags": ["x", "y"]}
proto_topic = "selftest-proto-" + RUN
produce({"brokers": BROKERS, "topic": proto_topic, "partitions": 1, "registry": {"url": URL},
         "key": {"format": "protobuf", "schema": proto, "message": "sluice.test.Order.Item"},
         "value": {"format": "protobuf", "schema": proto, "message": "sluice.test.Order"},
         "records": [{"key": {"sku": "k"}, "value": order_in}, {"key": {"sku": "k2"}, "value": None}]})
msgs = consume(proto_topic, 2)
mod = P.compile_proto(proto)
Order, Item = P.message_class(mod, "sluice.test.Order"), P.message_class(mod, "sluice.test.Order.Item")
vid, kid = latest_id(proto_topic + "-value"), latest_id(proto_topic + "-key")
ok(vid == kid, "key and value: one schema (file), one id")
entry = http("%s/subjects/%s-value/versions/latest" % (URL, proto_topic))
ok(entry["schemaType"] == "PROTOBUF" and "references" not in entry,
   "skip.known.types (default True): timestamp.proto is no reference: %r" % entry.get("references"))
ok(".google.protobuf.Timestamp created = 5;" in entry["schema"] and
   'import "google/protobuf/timestamp.proto";' in entry["schema"], "rendered .proto text")
print("selftest: the registry serves this .proto for %s-value:\n%s" % (proto_topic, entry["schema"]), file=sys.stderr)
sid, rest = frame(msgs[0].value())
ok(sid == vid and rest[:2] == b"\x02\x02", "Order = message index [1]: varints 02 02, got %s" % rest[:4].hex())
sid, rest = frame(msgs[0].key())
ok(sid == kid and rest[:3] == b"\x04\x02\x00", "Order.Item = indexes [1, 0]: 04 02 00, got %s" % rest[:4].hex())
ok(msgs[1].value() is None, "protobuf tombstone")
got = ProtobufDeserializer(Order, {"use.deprecated.format": False}, schema_registry_client=sr)(
    msgs[0].value(), SerializationContext(proto_topic, MessageField.VALUE))
ok(got == json_format.ParseDict(order_in, Order()), "protobuf round trip: %s" % got)
got = ProtobufDeserializer(Item, {"use.deprecated.format": False}, schema_registry_client=sr)(
    msgs[0].key(), SerializationContext(proto_topic, MessageField.KEY))
ok(got == Item(sku="k"), "protobuf key round trip: %s" % got)
samples["protobuf"] = msgs[0].value()

# Protobuf with imports registered as references: a file of ours and, with
# skip.known.types false, the well-known timestamp.proto.
common = 'syntax = "proto3";\npackage sluice.common;\nmessage Money { string currency = 1; int64 units = 2; }\n'
proto_b = ('syntax = "proto3";\npackage sluice.test.b;\nimport "sluice/common.proto";\n'
           'import "google/protobuf/timestamp.proto";\n'
           'message Payment { sluice.common.Money amount = 1; google.protobuf.Timestamp at = 2; }\n')
topic_b = "selftest-proto-refs-" + RUN
produce({"brokers": BROKERS, "topic": topic_b, "partitions": 1, "registry": {"url": URL},
         "serializer_config": {"skip.known.types": False},
         "value": {"format": "protobuf", "schema": proto_b, "imports": {"sluice/common.proto": common}},
         "records": [{"value": {"amount": {"currency": "EUR", "units": "5"}, "at": "2024-01-02T00:00:00Z"}}]})
entry = http("%s/subjects/%s-value/versions/latest" % (URL, topic_b))
refs = entry.get("references")
ok(refs == [{"name": "sluice/common.proto", "subject": "sluice/common.proto", "version": 1},
            {"name": "google/protobuf/timestamp.proto", "subject": "google/protobuf/timestamp.proto", "version": 1}],
   "references of a schema with imports: %r" % refs)
ts = http("%s/subjects/google%%2Fprotobuf%%2Ftimestamp.proto/versions/1" % URL)
ok(ts["schema"].startswith('syntax = "proto3";\npackage google.protobuf;\n'), "timestamp.proto served as text")
print("selftest: references of %s-value: %s" % (topic_b, json.dumps(refs)), file=sys.stderr)
(m,) = consume(topic_b, 1)
sid, rest = frame(m.value())
ok(sid == entry["id"] and rest[:1] == b"\x00", "first message: index [0] is the single byte 00")
Payment = P.message_class(P.compile_proto(proto_b, {"sluice/common.proto": common}))
got = ProtobufDeserializer(Payment, {"use.deprecated.format": False}, schema_registry_client=sr)(
    m.value(), SerializationContext(topic_b, MessageField.VALUE))
ok(got.amount.currency == "EUR" and got.amount.units == 5 and got.at.seconds == 1704153600,
   "protobuf with references round trip: %s" % got)

# --------------------------------------------------------- JSON Schema ----
json_schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "Customer", "type": "object",
               "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                              "tags": {"type": "array", "items": {"type": "string"}},
                              "address": {"type": "object", "properties": {"city": {"type": "string"}}},
                              "nick": {"type": ["string", "null"]}},
               "required": ["id", "name"]}
json_in = [{"id": 1, "name": "Ann", "tags": ["a"], "address": {"city": "Oslo"}, "nick": None},
           {"id": 2, "name": "Bob"}]
json_topic = "selftest-json-" + RUN
produce({"brokers": BROKERS, "topic": json_topic, "partitions": 1, "registry": {"url": URL},
         "key": {"format": "string"}, "value": {"format": "json_schema", "schema": json.dumps(json_schema)},
         "records": [{"key": "1", "value": json_in[0]}, {"key": "2", "value": json_in[1]}]})
msgs = consume(json_topic, 2)
vid = latest_id(json_topic + "-value")
entry = http("%s/schemas/ids/%d" % (URL, vid))
ok(entry["schemaType"] == "JSON", "JSON schemaType")
jd = JSONDeserializer(None, schema_registry_client=sr)
for m, expected in zip(msgs, json_in):
    sid, rest = frame(m.value())
    ok(sid == vid and json.loads(rest) == expected, "json_schema payload is plain JSON after the 5 bytes")
    ok(jd(m.value(), SerializationContext(json_topic, MessageField.VALUE)) == expected, "json_schema round trip")
    ok(m.key() == str(expected["id"]).encode(), "string key")
samples["json_schema"] = msgs[0].value()

# A schema rejected by the JSON Schema: produce.py must fail, clearly.
bad = os.path.join(WORK, "bad.json")
json.dump({"brokers": BROKERS, "topic": json_topic, "registry": {"url": URL},
           "value": {"format": "json_schema", "schema": json.dumps(json_schema)},
           "records": [{"value": {"id": "not a number", "name": "x"}}]}, open(bad, "w"))
p = subprocess.run([sys.executable, "tests/support/produce.py", bad], capture_output=True, text=True)
ok(p.returncode != 0 and "record 0: cannot serialize" in p.stderr, "bad record fails: %r" % p.stderr)

# ------------------------------------- use.latest.version / no auto-register ----
latest_topic = "selftest-latest-" + RUN
reg = http(URL + "/_test/register", "POST", {"subject": latest_topic + "-value", "schema": json.dumps(avro_schema)})
produce({"brokers": BROKERS, "topic": latest_topic, "partitions": 1, "registry": {"url": URL},
         "serializer_config": {"auto.register.schemas": False, "use.latest.version": True},
         "value": {"format": "avro", "schema": json.dumps(avro_schema)}, "records": [{"value": avro_in[0]}]})
(m,) = consume(latest_topic, 1)
ok(frame(m.value())[0] == reg["id"], "use.latest.version writes the registered id")
ok(reg["id"] == latest_id(avro_topic + "-value"), "same schema under another subject: same global id")
lookup_topic = "selftest-lookup-" + RUN
http(URL + "/_test/register", "POST", {"subject": lookup_topic + "-value", "schema": json.dumps(avro_schema)})
produce({"brokers": BROKERS, "topic": lookup_topic, "partitions": 1, "registry": {"url": URL},
         "serializer_config": {"auto.register.schemas": False},
         "value": {"format": "avro", "schema": json.dumps(avro_schema, indent=4)}, "records": [{"value": avro_in[1]}]})
(m,) = consume(lookup_topic, 1)
ok(frame(m.value())[0] == reg["id"], "auto.register.schemas false: POST /subjects/{s} lookup finds it")
# Protobuf registered as .proto text, then written with use.latest.version
# (the serializer asks for format=serialized: the registry compiles the text).
text_topic = "selftest-prototext-" + RUN
reg = http(URL + "/_test/register", "POST", {"subject": text_topic + "-value", "schemaType": "PROTOBUF", "schema": proto})
produce({"brokers": BROKERS, "topic": text_topic, "partitions": 1, "registry": {"url": URL},
         "serializer_config": {"auto.register.schemas": False, "use.latest.version": True},
         "value": {"format": "protobuf", "schema": proto, "message": "sluice.test.Order"},
         "records": [{"value": order_in}]})
(m,) = consume(text_topic, 1)
sid, rest = frame(m.value())
ok(sid == reg["id"] and rest[:2] == b"\x02\x02", "protobuf text schema + use.latest.version")
ok(http("%s/schemas/ids/%d" % (URL, reg["id"]))["schema"] == proto, ".proto text served as registered")
try:
    http(URL + "/subjects/" + text_topic + "-value", "POST", {"schema": "{", "schemaType": "AVRO"})
    ok(False, "invalid schema accepted")
except urllib.error.HTTPError as e:
    ok(e.code == 422 and json.load(e)["error_code"] == 42201, "invalid schema: 422 / 42201")

# ------------------------------------------------- errors of the REST API ----
def sr_error(fn):
    try:
        fn()
    except SchemaRegistryError as e:
        return e.http_status_code, e.error_code
    return None

ok(sr_error(lambda: sr.get_schema(99999)) == (404, 40403), "unknown id: 404 / 40403")
ok(sr_error(lambda: sr.get_latest_version("nope")) == (404, 40401), "unknown subject: 404 / 40401")
ok(sr_error(lambda: sr.get_version(avro_topic + "-value", 9)) == (404, 40402), "unknown version: 404 / 40402")
from confluent_kafka.schema_registry import Schema
ok(sr_error(lambda: sr.lookup_schema("nope", Schema('"int"', "AVRO"))) == (404, 40401), "lookup: unknown subject 40401")
ok(sr_error(lambda: sr.lookup_schema(avro_topic + "-value", Schema('"int"', "AVRO"))) == (404, 40403),
   "lookup: schema not under subject 40403")
ok(sr.get_compatibility() == "BACKWARD", "GET /config")
ok(avro_topic + "-value" in sr.get_subjects(), "GET /subjects")
ok(sr.get_versions(avro_topic + "-value") == [1], "GET /subjects/{s}/versions")
ok([(v.subject, v.version) for v in sr.get_schema_versions(vid)] == [(json_topic + "-value", 1)],
   "GET /schemas/ids/{id}/versions")

# ------------------------------------------------ cache, outage, auth, TLS ----
http(URL + "/_test/reset_stats", "POST", {})
fresh = SchemaRegistryClient({"url": URL, "max.retries": 0})
d = AvroDeserializer(fresh)
msgs = consume(avro_topic, 2)
for _ in range(3):
    for m in msgs:
        d(m.value(), SerializationContext(avro_topic, MessageField.VALUE))
ok(http(URL + "/_test/stats")["schema_by_id_requests"] == 1, "6 decodes, one GET /schemas/ids: %r" % http(URL + "/_test/stats"))
http(URL + "/_test/outage", "POST", {"down": True, "mode": "503"})
ok(d(msgs[0].value(), SerializationContext(avro_topic, MessageField.VALUE))["id"] == 1, "cached schema during outage")
ok(sr_error(lambda: fresh.get_schema(long_id)) == (503, 50301), "outage 503")
http(URL + "/_test/outage", "POST", {"down": True, "mode": "close"})
try:
    fresh.get_schema(long_id)
    ok(False, "outage close: request succeeded")
except SchemaRegistryError as e:
    ok(False, "outage close answered %s" % e)
except Exception as e:  # a transport error: no response at all
    ok("Error" in type(e).__name__, "outage close: %s" % type(e).__name__)
    print("selftest: outage mode close -> %s.%s: %s" % (type(e).__module__, type(e).__name__, e), file=sys.stderr)
http(URL + "/_test/outage", "POST", {"down": False})
ok(fresh.get_schema(long_id).schema_str == '"long"', "back after the outage")

ok(sr_error(lambda: SchemaRegistryClient({"url": AUTH_URL}).get_subjects()) == (401, 401), "no credentials: 401")
ok(sr_error(lambda: SchemaRegistryClient({"url": AUTH_URL, "basic.auth.user.info": "alice:wrong"}).get_subjects())
   == (401, 401), "wrong password: 401")
auth_topic = "selftest-auth-" + RUN
produce({"brokers": BROKERS, "topic": auth_topic, "partitions": 1,
         "registry": {"url": AUTH_URL, "username": "alice", "password": "s3cret:x"},
         "value": {"format": "avro", "schema": json.dumps(avro_schema)}, "records": [{"value": avro_in[0]}]})
(m,) = consume(auth_topic, 1)
authed = SchemaRegistryClient({"url": AUTH_URL, "basic.auth.user.info": "alice:s3cret:x"})
ok(AvroDeserializer(authed)(m.value(), SerializationContext(auth_topic, MessageField.VALUE)) == avro_expected[0],
   "basic auth round trip")
ok(http(AUTH_URL + "/_test/stats")["requests"] >= 3, "/_test needs no auth")

tls = SchemaRegistryClient({"url": TLS_URL, "ssl.ca.location": os.path.join(WORK, "tls.crt")})
sid = tls.register_schema("tls-value", Schema(json.dumps(avro_schema), "AVRO"))
ok(tls.get_schema(sid).schema_str == json.dumps(avro_schema, separators=(",", ":")), "TLS register + get")
try:
    SchemaRegistryClient({"url": TLS_URL, "max.retries": 0}).get_subjects()
    ok(False, "TLS without the CA accepted")
except SchemaRegistryError:
    ok(False, "TLS without the CA answered")
except Exception:
    ok(True, "")

# --------------------------------------------------------------- report ----
calls = set()
for url in (URL, AUTH_URL):
    for r in http(url + "/_test/requests"):
        if (r.get("client") or "").startswith("python/"):  # confluent-kafka's, not this script's urllib
            calls.add("%s %s" % (r["method"], r["path"]))
import re
def template(call):
    call = re.sub(r"selftest-[a-z-]+-[0-9a-f]{8}", "{topic}", call)
    call = re.sub(r"/ids/\d+", "/ids/{id}", call)
    call = re.sub(r"/versions/\d+", "/versions/{n}", call)
    return call
print("selftest: REST calls made by confluent-kafka's client (plain + auth registries):", file=sys.stderr)
for c in sorted({template(c) for c in calls}):
    print("  " + c, file=sys.stderr)
for name, b in samples.items():
    print("selftest: %-11s wire bytes: %s" % (name, b[:16].hex(" ")), file=sys.stderr)
print("selftest: %d passed, 0 failed" % checks)
PYTHON
