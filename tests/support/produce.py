#!/usr/bin/env python3
"""Produce Kafka records in the Confluent wire format, made by the official
serializers of confluent-kafka (Python), for sluice's integration tests.

Usage:
  PYTHONPATH=$SLUICE_TEST_PYTHONPATH python3 tests/support/produce.py SPEC.json
  ... produce.py -          (the spec on stdin)

SPEC (JSON):
  {
    "brokers": "127.0.0.1:9092",
    "topic": "t",
    "partitions": 3,                  optional: create the topic with this many
                                      partitions if it does not exist
    "registry": {"url": "http://127.0.0.1:PORT", "username": "u", "password": "p",
                 "ca": "/path/ca.pem"},     username/password/ca optional
    "value": FORMAT,
    "key": FORMAT,                    optional; without it records have no key
    "records": [{"key": ..., "value": ... (null: tombstone), "partition": 0,
                 "headers": {"name": "string value"}}],
    "serializer_config": {...},       optional, given to every serializer, e.g.
                                      {"auto.register.schemas": false, "use.latest.version": true}
    "producer_config": {...}          optional librdkafka properties
  }

FORMAT:
  {"format": "avro" | "protobuf" | "json_schema" | "json" | "string" | "bytes",
   "schema": "...",      avro: the schema JSON text; protobuf: the .proto text;
                         json_schema: the JSON Schema text
   "message": "pkg.Msg", protobuf: the fully qualified message to write
                         (default: the first message of the file)
   "imports": {"common/x.proto": "..."},   protobuf: other .proto files the schema
                         imports (registered as references by the serializer;
                         google/protobuf/*.proto come with protoc)
   "subject_name_strategy": "topic" | "record" | "topic_record"   (default topic)}

Values are JSON. For Avro these tagged values become the Python types fastavro
wants, recursively: {"$decimal": "12.34"}, {"$date": "2024-01-02"},
{"$timestamp": "2024-01-02T03:04:05.123456Z"} (aware),
{"$local_timestamp": "2024-01-02T03:04:05.123456"} (naive), {"$time": "03:04:05.123456"},
{"$uuid": "..."}, {"$bytes": "<base64>"}, {"$union": ["branch name", value]}.
Protobuf values are built with json_format.ParseDict (proto3 JSON mapping).
"json" writes json.dumps(value), "string" the UTF-8 value, "bytes" the
base64-decoded value.

Prints "produced N" and exits 0 once every record is acknowledged; exits 1 with
a message on stderr on any serialization or delivery error.
"""

import atexit
import base64
import datetime
import decimal
import hashlib
import importlib
import importlib.resources
import json
import os
import shutil
import sys
import tempfile
import uuid


def fail(msg):
    sys.stderr.write("produce.py: error: %s\n" % msg)
    sys.exit(1)


try:
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from confluent_kafka.schema_registry import (
        SchemaRegistryClient,
        record_subject_name_strategy,
        topic_record_subject_name_strategy,
        topic_subject_name_strategy,
    )
    from confluent_kafka.serialization import MessageField, SerializationContext
except ImportError as e:  # pragma: no cover
    fail("%s: put the test packages on PYTHONPATH (PYTHONPATH=$SLUICE_TEST_PYTHONPATH; "
         "scripts/services.sh installs them)" % e)

STRATEGIES = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic_record": topic_record_subject_name_strategy,
}

# --------------------------------------------------------------------------
# Avro tagged values
# --------------------------------------------------------------------------


def _tagged(tag, v):
    if tag == "$decimal":
        return decimal.Decimal(str(v))
    if tag == "$date":
        return datetime.date.fromisoformat(v)
    if tag == "$timestamp":
        dt = datetime.datetime.fromisoformat(v)
        if dt.tzinfo is None:
            raise ValueError("$timestamp %r has no time zone (use $local_timestamp)" % v)
        return dt
    if tag == "$local_timestamp":
        dt = datetime.datetime.fromisoformat(v)
        if dt.tzinfo is not None:
            raise ValueError("$local_timestamp %r has a time zone (use $timestamp)" % v)
        return dt
    if tag == "$time":
        return datetime.time.fromisoformat(v)
    if tag == "$uuid":
        return uuid.UUID(v)
    if tag == "$bytes":
        return base64.b64decode(v, validate=True)
    if tag == "$union":
        if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)):
            raise ValueError('$union wants ["branch name", value], not %r' % (v,))
        return (v[0], avro_value(v[1]))
    raise AssertionError(tag)


TAGS = {"$decimal", "$date", "$timestamp", "$local_timestamp", "$time", "$uuid", "$bytes", "$union"}


def avro_value(v):
    """The spec's JSON value with the tagged values converted for fastavro."""
    if isinstance(v, dict):
        if len(v) == 1:
            (k, inner), = v.items()
            if k in TAGS:
                return _tagged(k, inner)
        return {k: avro_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [avro_value(x) for x in v]
    return v


# --------------------------------------------------------------------------
# Protobuf: compile .proto text at run time with grpc_tools' protoc
# --------------------------------------------------------------------------

_proto_dir = None


def _proto_workdir():
    global _proto_dir
    if _proto_dir is None:
        _proto_dir = tempfile.mkdtemp(prefix="sluice-proto-")
        atexit.register(shutil.rmtree, _proto_dir, True)
        sys.path.insert(0, _proto_dir)
    return _proto_dir


def compile_proto(schema, imports=None):
    """Compile .proto text (plus the files it imports) and import the module.

    The file is named after a hash of its content, so the same text always
    gives the same module (and the same descriptor in the default pool).
    """
    from grpc_tools import protoc

    imports = imports or {}
    digest = hashlib.sha256(json.dumps([schema, sorted(imports.items())]).encode()).hexdigest()[:16]
    name = "sluice_%s" % digest
    module_name = name + "_pb2"
    if module_name in sys.modules:
        return sys.modules[module_name]
    work = _proto_workdir()
    files = []
    for path, text in list(imports.items()) + [(name + ".proto", schema)]:
        full = os.path.join(work, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as fh:
            fh.write(text)
        files.append(path)
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(["grpc_tools.protoc", "-I" + work, "-I" + include, "--python_out=" + work] + files)
    if rc != 0:
        raise ValueError("protoc failed on the schema (see its messages above)")
    importlib.invalidate_caches()
    return importlib.import_module(module_name)


def message_class(module, full_name=None):
    """The generated class of message `full_name` (default: the file's first)."""
    fd = module.DESCRIPTOR
    if not full_name:
        if not fd.message_types_by_name:
            raise ValueError("the .proto file defines no message")
        return getattr(module, next(iter(fd.message_types_by_name)))
    rel = full_name.lstrip(".")
    if fd.package:
        if not rel.startswith(fd.package + "."):
            raise ValueError("message %s is not in package %s" % (full_name, fd.package))
        rel = rel[len(fd.package) + 1 :]
    obj = module
    for part in rel.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError("message %s not found in the .proto file" % full_name)
    return obj


# --------------------------------------------------------------------------
# Serializers
# --------------------------------------------------------------------------


def registry_client(reg):
    if not reg or not reg.get("url"):
        raise ValueError('"registry": {"url": ...} is required for avro, protobuf and json_schema')
    conf = {"url": reg["url"]}
    if reg.get("username") is not None:
        conf["basic.auth.user.info"] = "%s:%s" % (reg["username"], reg.get("password", ""))
    if reg.get("ca"):
        conf["ssl.ca.location"] = reg["ca"]
    return SchemaRegistryClient(conf)


class Encoder:
    """Turns one spec value into bytes for one field (key or value)."""

    def __init__(self, fmt, field, spec, registry):
        self.fmt = fmt.get("format")
        self.field = field
        self.serializer = None
        conf = dict(spec.get("serializer_config") or {})
        strategy = fmt.get("subject_name_strategy", "topic")
        if strategy not in STRATEGIES:
            raise ValueError("subject_name_strategy must be topic, record or topic_record, not %r" % strategy)
        conf.setdefault("subject.name.strategy", STRATEGIES[strategy])
        if self.fmt == "avro":
            from confluent_kafka.schema_registry.avro import AvroSerializer

            self.serializer = AvroSerializer(registry(), fmt["schema"], conf=conf)
            self.convert = avro_value
        elif self.fmt == "protobuf":
            from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
            from google.protobuf import json_format

            cls = message_class(compile_proto(fmt["schema"], fmt.get("imports")), fmt.get("message"))
            conf.setdefault("use.deprecated.format", False)
            self.serializer = ProtobufSerializer(cls, registry(), conf)
            self.convert = lambda v: json_format.ParseDict(v, cls())
        elif self.fmt == "json_schema":
            from confluent_kafka.schema_registry.json_schema import JSONSerializer

            self.serializer = JSONSerializer(fmt["schema"], registry(), conf=conf)
            self.convert = lambda v: v
        elif self.fmt == "json":
            self.convert = lambda v: json.dumps(v).encode("utf-8")
        elif self.fmt == "string":
            self.convert = lambda v: v.encode("utf-8") if isinstance(v, str) else _bad("a string", v)
        elif self.fmt == "bytes":
            self.convert = lambda v: base64.b64decode(v, validate=True)
        else:
            raise ValueError("unknown format %r" % (self.fmt,))

    def __call__(self, value, topic, headers):
        if value is None:
            return None
        obj = self.convert(value)
        if self.serializer is None:
            return obj
        return self.serializer(obj, SerializationContext(topic, self.field, headers))


def _bad(what, v):
    raise ValueError("expected %s, got %r" % (what, v))


def ensure_topic(conf, topic, partitions):
    admin = AdminClient(dict(conf, log_level=3))
    md = admin.list_topics(timeout=10)
    if topic in md.topics and md.topics[topic].error is None:
        return
    fut = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=10)[topic]
    try:
        fut.result(timeout=15)
    except KafkaException as e:
        if "TOPIC_ALREADY_EXISTS" not in str(e):
            raise


def produce(spec):
    topic = spec["topic"]
    conf = {
        "bootstrap.servers": spec.get("brokers") or os.environ.get("SLUICE_KAFKA_BROKERS", "127.0.0.1:9092"),
        "message.timeout.ms": 30000,
        "linger.ms": 5,
    }
    conf.update(spec.get("producer_config") or {})
    if spec.get("partitions"):
        ensure_topic({"bootstrap.servers": conf["bootstrap.servers"]}, topic, int(spec["partitions"]))

    client = []

    def registry():  # one client, shared by key and value, made only when needed
        if not client:
            client.append(registry_client(spec.get("registry")))
        return client[0]

    value_enc = Encoder(spec["value"], MessageField.VALUE, spec, registry)
    key_enc = Encoder(spec["key"], MessageField.KEY, spec, registry) if spec.get("key") else None

    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append("record to %s [%s]: %s" % (msg.topic(), msg.partition(), err))

    producer = Producer(conf)
    records = spec.get("records") or []
    for i, rec in enumerate(records):
        headers = [(k, None if v is None else str(v).encode("utf-8"))
                   for k, v in (rec.get("headers") or {}).items()]
        try:
            key = key_enc(rec.get("key"), topic, headers) if key_enc else None
            value = value_enc(rec.get("value"), topic, headers)
        except Exception as e:  # noqa: BLE001 (any serializer error ends the run)
            producer.flush(10)
            fail("record %d: cannot serialize: %s: %s" % (i, type(e).__name__, e))
        kwargs = {"key": key, "value": value, "on_delivery": on_delivery}
        if headers:
            kwargs["headers"] = headers
        if rec.get("partition") is not None:
            kwargs["partition"] = int(rec["partition"])
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if errors:
            break
    left = producer.flush(60)
    if errors:
        fail("delivery failed: %s%s" % (errors[0], " (and %d more)" % (len(errors) - 1) if len(errors) > 1 else ""))
    if left:
        fail("%d records still undelivered after 60 s" % left)
    return len(records)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    try:
        if argv[1] == "-":
            spec = json.load(sys.stdin)
        else:
            with open(argv[1], encoding="utf-8") as fh:
                spec = json.load(fh)
    except (OSError, ValueError) as e:
        fail("cannot read the spec %s: %s" % (argv[1], e))
    try:
        n = produce(spec)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        fail("%s: %s" % (type(e).__name__, e))
    print("produced %d" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
