#!/usr/bin/env python3
"""A small, in-memory, Confluent Schema Registry compatible HTTP server for tests.

Standard library only. It implements the REST subset that the official clients
(confluent-kafka's SchemaRegistryClient and its Avro/Protobuf/JSON Schema
serializers and deserializers) use, the way the real registry answers it:

  POST /subjects/{subject}/versions     register; {"id": n}
  POST /subjects/{subject}              look a schema up under a subject
  GET  /schemas/ids/{id}                {"schema", "schemaType"?, "references"?}
  GET  /schemas/ids/{id}/versions       [{"subject", "version"}]
  GET  /schemas/ids/{id}/subjects       ["subject", ...]
  GET  /schemas/types
  GET  /subjects
  GET  /subjects/{subject}/versions
  GET  /subjects/{subject}/versions/{version|latest|-1}
  GET  /subjects/{subject}/versions/{version}/schema
  GET  /config, /config/{subject}       {"compatibilityLevel": "BACKWARD"}
  PUT  /config, /config/{subject}       {"compatibility": ...}
  GET  /mode                            {"mode": "READWRITE"}
  anything else                         404 {"error_code": 404, ...}

Like the real registry: one global id per distinct (type, canonical schema,
references), whatever the subject; versions per subject count from 1;
"schemaType" is left out for AVRO and "references" when empty; errors are
{"error_code": n, "message": "..."} with the registry's codes (40401 subject
not found, 40402 version not found, 40403 schema not found, 42201 invalid
schema, 42202 invalid version).

Canonical forms: AVRO and JSON schemas are kept as compact JSON. A PROTOBUF
schema registered as a base64 FileDescriptorProto (which is what the Python
ProtobufSerializer sends) is served as .proto text, rendered the way the real
registry renders a descriptor (fully-qualified types with a leading dot, map
fields as their synthetic *Entry messages); `?format=serialized` gives the
base64 descriptor back. A PROTOBUF schema registered as .proto text is kept
as given; `?format=serialized` for it compiles it with grpc_tools' protoc when
that package is importable (it is on SLUICE_TEST_PYTHONPATH), else answers 422.

Test control endpoints (never behind auth, never affected by an outage):

  POST /_test/outage    {"down": true|false, "mode": "503"|"close"}
  GET  /_test/stats     {"schema_by_id_requests": n, "requests": n}
  GET  /_test/requests  [{"method", "path", "status", "client"}, ...] (the last 10000;
                        client: the Confluent-Client-Version or User-Agent header)
  POST /_test/reset_stats   zero the counters of /_test/stats
  POST /_test/register  {"subject", "schema", "schemaType"?, "references"?} -> {"id"}

Usage:
  registry.py --port 0 --port-file PATH [--user U --password P]
              [--tls-cert CERT --tls-key KEY] [--verbose]
"""

import argparse
import base64
import binascii
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
SCHEMA_TYPES = ("AVRO", "PROTOBUF", "JSON")


class RegistryError(Exception):
    def __init__(self, status, error_code, message):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def not_found():
    return RegistryError(404, 404, "HTTP 404 Not Found")


# --------------------------------------------------------------------------
# Protobuf: decode a FileDescriptorProto (wire format) and render it as .proto
# text like the real registry (ProtobufSchema.toProtoFile + ProtobufSchemaUtils
# .toString). Custom options and groups are not rendered, as there.
# --------------------------------------------------------------------------


class Msg:
    """A decoded protobuf message: field number -> list of raw values."""

    def __init__(self, data):
        self.fields = {}
        pos, end = 0, len(data)
        while pos < end:
            key, pos = _varint(data, pos)
            num, wtype = key >> 3, key & 7
            if wtype == 0:
                val, pos = _varint(data, pos)
            elif wtype == 1:
                val, pos = data[pos : pos + 8], pos + 8
            elif wtype == 2:
                n, pos = _varint(data, pos)
                val, pos = data[pos : pos + n], pos + n
            elif wtype == 5:
                val, pos = data[pos : pos + 4], pos + 4
            else:
                raise ValueError("unsupported wire type %d" % wtype)
            if pos > end:
                raise ValueError("truncated message")
            self.fields.setdefault(num, []).append(val)

    def has(self, num):
        return num in self.fields

    def str(self, num, default=""):
        v = self.fields.get(num)
        return v[-1].decode("utf-8") if v else default

    def strs(self, num):
        return [v.decode("utf-8") for v in self.fields.get(num, [])]

    def int(self, num, default=0):
        v = self.fields.get(num)
        if not v:
            return default
        x = v[-1]
        if isinstance(x, bytes):  # a packed repeated field: not expected here
            raise ValueError("unexpected length-delimited value")
        return x - (1 << 64) if x >= 1 << 63 else x

    def ints(self, num):
        out = []
        for v in self.fields.get(num, []):
            if isinstance(v, bytes):  # packed
                p = 0
                while p < len(v):
                    x, p = _varint(v, p)
                    out.append(x)
            else:
                out.append(v)
        return out

    def bool(self, num):
        return bool(self.int(num))

    def msg(self, num):
        v = self.fields.get(num)
        return Msg(v[-1]) if v else Msg(b"")

    def msgs(self, num):
        return [Msg(v) for v in self.fields.get(num, [])]


def _varint(data, pos):
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


_SCALAR = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64",
    7: "fixed32", 8: "bool", 9: "string", 10: "group", 11: "message", 12: "bytes",
    13: "uint32", 14: "enum", 15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64",
}
_NUMBER_KINDS = {
    "bytes", "double", "float", "fixed32", "fixed64", "int32", "int64", "sfixed32",
    "sfixed64", "sint32", "sint64", "uint32", "uint64",
}
_MAX_TAG = 536870911


def _escape(s):
    table = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
             "\v": "\\v", "\\": "\\\\", "'": "\\'", '"': '\\"'}
    return "".join(table.get(c, c) for c in s)


def _indent(text):
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return "".join("  " + line + "\n" for line in lines)


def _opt(name, kind, value):
    """One option as `name = value` (kind: string, bool, number, enum)."""
    if kind == "string":
        return '%s = "%s"' % (name, _escape(value))
    if kind == "bool":
        return "%s = %s" % (name, "true" if value else "false")
    return "%s = %s" % (name, value)


def _bracket_options(opts):
    if len(opts) == 1:
        return "[" + opts[0] + "]"
    out = "[\n"
    for i, o in enumerate(opts):
        out += _indent(o + ("," if i < len(opts) - 1 else ""))
    return out + "]"


_FILE_OPTIONS = [  # (field number, name, kind), in the registry's order
    (1, "java_package", "string"), (8, "java_outer_classname", "string"),
    (10, "java_multiple_files", "bool"), (20, "java_generate_equals_and_hash", "bool"),
    (27, "java_string_check_utf8", "bool"), (9, "optimize_for", "optimize"),
    (11, "go_package", "string"), (16, "cc_generic_services", "bool"),
    (17, "java_generic_services", "bool"), (18, "py_generic_services", "bool"),
    (42, "php_generic_services", "bool"), (23, "deprecated", "bool"),
    (31, "cc_enable_arenas", "bool"), (36, "objc_class_prefix", "string"),
    (37, "csharp_namespace", "string"), (39, "swift_prefix", "string"),
    (40, "php_class_prefix", "string"), (41, "php_namespace", "string"),
    (44, "php_metadata_namespace", "string"), (45, "ruby_package", "string"),
]
_OPTIMIZE = {1: "SPEED", 2: "CODE_SIZE", 3: "LITE_RUNTIME"}
_CTYPE = {0: "STRING", 1: "CORD", 2: "STRING_PIECE"}
_JSTYPE = {0: "JS_NORMAL", 1: "JS_STRING", 2: "JS_NUMBER"}
_IDEMPOTENCY = {0: "IDEMPOTENCY_UNKNOWN", 1: "NO_SIDE_EFFECTS", 2: "IDEMPOTENT"}


def _option_value(m, num, kind):
    if kind == "string":
        return m.str(num)
    if kind == "bool":
        return m.bool(num)
    if kind == "optimize":
        return _OPTIMIZE.get(m.int(num), m.int(num))
    return m.int(num)


def _kind(kind):
    return {"optimize": "enum"}.get(kind, kind)


def _field_type(fd):
    if fd.has(6):
        return fd.str(6)
    return _SCALAR.get(fd.int(5), "unknown")


def _render_field(fd, syntax, in_oneof):
    proto3 = syntax == "proto3"
    label = None
    if not in_oneof:
        if fd.bool(17):
            label = "optional"
        else:
            lab = fd.int(4, 1)
            if lab == 3:
                label = "repeated"
            elif lab == 2 and not proto3:
                label = "required"
            elif lab == 1 and not proto3:
                label = "optional"
    ftype = _field_type(fd)
    opts = []
    fo = fd.msg(8)
    if fo.has(1):
        opts.append(_opt("ctype", "enum", _CTYPE.get(fo.int(1), fo.int(1))))
    if fo.has(2):
        opts.append(_opt("packed", "bool", fo.bool(2)))
    if fo.has(6):
        opts.append(_opt("jstype", "enum", _JSTYPE.get(fo.int(6), fo.int(6))))
    if fo.has(3):
        opts.append(_opt("deprecated", "bool", fo.bool(3)))
    if not proto3 and fd.has(7):
        simple = ftype.rsplit(".", 1)[-1]
        kind = "bool" if simple == "bool" else "string" if simple == "string" else "number" \
            if simple in _NUMBER_KINDS else "enum"
        value = fd.str(7)
        opts.append('default = "%s"' % _escape(value) if kind == "string" else "default = %s" % value)
    if fd.has(10):
        opts.append(_opt("json_name", "string", fd.str(10)))
    out = (label + " " if label else "") + "%s %s = %d" % (ftype, fd.str(1), fd.int(3))
    if opts:
        out += " " + _bracket_options(opts)
    return out + ";\n"


def _render_reserved(values):
    return "reserved " + ", ".join(values) + ";\n"


def _render_enum(ed):
    out = "enum %s {" % ed.str(1)
    eo = ed.msg(3)
    opts = []
    if eo.has(2):
        opts.append(_opt("allow_alias", "bool", eo.bool(2)))
    if eo.has(3):
        opts.append(_opt("deprecated", "bool", eo.bool(3)))
    values = ed.msgs(2)
    if opts or values:
        out += "\n"
    for o in opts:
        out += _indent("option " + o + ";\n")
    for v in values:
        line = "%s = %d" % (v.str(1), v.int(2))
        vo = v.msg(3)
        if vo.has(1):
            line += " " + _bracket_options([_opt("deprecated", "bool", vo.bool(1))])
        out += _indent(line + ";\n")
    return out + "}\n"


def _render_message(md, syntax):
    out = "message %s {" % md.str(1)
    reserved = []
    for r in md.msgs(9):  # start inclusive, end exclusive
        s, e = r.int(1), r.int(2) - 1
        reserved.append(_render_reserved([str(s) if s == e else "%d to %d" % (s, e)]))
    for n in md.strs(10):
        reserved.append(_render_reserved(['"%s"' % n]))
    if reserved:
        out += "\n" + "".join(_indent(r) for r in reserved)
    mo = md.msg(7)
    opts = []
    if mo.has(2):
        opts.append(_opt("no_standard_descriptor_accessor", "bool", mo.bool(2)))
    if mo.has(3):
        opts.append(_opt("deprecated", "bool", mo.bool(3)))
    if mo.has(7):
        opts.append(_opt("map_entry", "bool", mo.bool(7)))
    if opts:
        out += "\n" + "".join(_indent("option " + o + ";\n") for o in opts)
    oneof_names = [o.str(1) for o in md.msgs(8)]
    oneof_fields = [[] for _ in oneof_names]
    fields = []
    for fd in md.msgs(2):
        if fd.has(9) and not fd.bool(17):
            oneof_fields[fd.int(9)].append(_render_field(fd, syntax, True))
        else:
            fields.append(_render_field(fd, syntax, False))
    if fields:
        out += "\n" + "".join(_indent(f) for f in fields)
    oneofs = [(n, f) for n, f in zip(oneof_names, oneof_fields) if f]
    if oneofs:
        out += "\n"
        for name, fs in oneofs:
            out += _indent("oneof %s {\n" % name + "".join(_indent(f) for f in fs) + "}\n")
    ranges = md.msgs(5)
    if ranges:
        out += "\n"
        for r in ranges:
            s, e = r.int(1), r.int(2) - 1
            v = str(s) if s == e else "%d to %s" % (s, e if e < _MAX_TAG else "max")
            out += _indent("extensions %s;\n" % v)
    nested, enums = md.msgs(3), md.msgs(4)
    if nested or enums:
        out += "\n"
        for n in nested:
            out += _indent(_render_message(n, syntax))
        for e in enums:
            out += _indent(_render_enum(e))
    return out + "}\n"


def render_proto(data):
    """.proto text of a serialized FileDescriptorProto, as the registry shows it."""
    f = Msg(data)
    syntax = f.str(12)
    out = ""
    if syntax in ("proto2", "proto3"):
        out += 'syntax = "%s";\n' % syntax
    if f.str(2):
        out += "package %s;\n" % f.str(2)
    deps, public = f.strs(3), set(f.ints(10))
    if deps:
        out += "\n"
        out += "".join('import "%s";\n' % d for i, d in enumerate(deps) if i not in public)
        out += "".join('import public "%s";\n' % d for i, d in enumerate(deps) if i in public)
    fo = f.msg(8)
    opts = [_opt(name, _kind(kind), _option_value(fo, num, kind))
            for num, name, kind in _FILE_OPTIONS if fo.has(num)]
    if opts:
        out += "\n" + "".join("option " + o + ";\n" for o in opts)
    messages, enums = f.msgs(4), f.msgs(5)
    if messages or enums:
        out += "\n"
        out += "".join(_render_message(m, syntax) for m in messages)
        out += "".join(_render_enum(e) for e in enums)
    extensions = f.msgs(7)
    if extensions:
        out += "\n"
        groups = {}
        for fd in extensions:
            groups.setdefault(fd.str(2), []).append(fd)
        for extendee, fds in groups.items():
            out += "extend %s {\n" % extendee
            out += "".join(_indent(_render_field(fd, syntax, False)) for fd in fds)
            out += "}\n"
    services = f.msgs(6)
    if services:
        out += "\n"
        for sd in services:
            s = "service %s {" % sd.str(1)
            so = sd.msg(3)
            if so.has(33):
                s += "\n" + _indent("option " + _opt("deprecated", "bool", so.bool(33)) + ";\n")
            methods = sd.msgs(2)
            if methods:
                s += "\n"
                for m in methods:
                    r = "rpc %s (%s%s) returns (%s%s)" % (
                        m.str(1), "stream " if m.bool(5) else "", m.str(2),
                        "stream " if m.bool(6) else "", m.str(3))
                    mo = m.msg(4)
                    mopts = []
                    if mo.has(33):
                        mopts.append(_opt("deprecated", "bool", mo.bool(33)))
                    if mo.has(34):
                        mopts.append(_opt("idempotency_level", "enum",
                                          _IDEMPOTENCY.get(mo.int(34), mo.int(34))))
                    if mopts:
                        r += " {\n" + "".join(_indent("option " + o + ";\n") for o in mopts) + "}"
                    s += _indent(r + ";\n")
            out += s + "}\n"
    return out


def decode_descriptor_b64(text):
    """The FileDescriptorProto bytes if `text` is one in base64, else None."""
    stripped = "".join(text.split())
    if not stripped or any(c in stripped for c in "{};\""):  # .proto text, never base64
        return None
    try:
        data = base64.b64decode(stripped, validate=True)
        Msg(data)
    except (binascii.Error, ValueError, IndexError):
        return None
    return data


_AVRO_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def avro_canonical(s):
    """Avro's own printing of a bare primitive: {"type": "long"} is "long".

    (Avro's Schema.toString, which the registry serves, prints a primitive
    without properties as its name; the Python serializers send {"type": ...}.)
    Applied to the schema positions only, never to default values.
    """
    if isinstance(s, list):
        return [avro_canonical(x) for x in s]
    if not isinstance(s, dict):
        return s
    if set(s) == {"type"} and s["type"] in _AVRO_PRIMITIVES:
        return s["type"]
    out = {}
    for k, v in s.items():
        if k in ("type", "items", "values"):
            v = avro_canonical(v)
        elif k == "fields" and isinstance(v, list):
            v = [avro_canonical(f) for f in v]
        out[k] = v
    return out


# --------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------


class Schema:
    def __init__(self, sid, schema_type, canonical, references, serialized):
        self.id = sid
        self.type = schema_type
        self.canonical = canonical
        self.references = references
        self.serialized = serialized  # PROTOBUF: base64 FileDescriptorProto, if known


class Store:
    def __init__(self):
        self.lock = threading.RLock()
        self.schemas = {}  # id -> Schema
        self.by_key = {}  # (type, canonical, refs) -> id
        self.subjects = {}  # subject -> [id of version 1, id of version 2, ...]
        self.config = {}  # subject or None -> compatibility level
        self.next_id = 1

    @staticmethod
    def _refs(references):
        if references is None:
            return []
        if not isinstance(references, list):
            raise RegistryError(422, 42201, "Invalid schema: references must be a list")
        out = []
        for r in references:
            if not isinstance(r, dict) or not isinstance(r.get("name"), str) \
                    or not isinstance(r.get("subject"), str) or not isinstance(r.get("version"), int):
                raise RegistryError(422, 42201, "Invalid schema: bad reference %r" % (r,))
            out.append({"name": r["name"], "subject": r["subject"], "version": r["version"]})
        return out

    def parse(self, body):
        """(type, canonical, references, serialized) of a register/lookup body."""
        if not isinstance(body, dict):
            raise RegistryError(422, 42201, "Invalid schema: body must be a JSON object")
        text = body.get("schema")
        if not isinstance(text, str) or not text.strip():
            raise RegistryError(422, 42201, "Invalid schema: empty schema")
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type not in SCHEMA_TYPES:
            raise RegistryError(422, 42209, "Invalid schema type %s" % schema_type)
        refs = self._refs(body.get("references"))
        with self.lock:
            for r in refs:
                versions = self.subjects.get(r["subject"])
                if not versions or not 1 <= r["version"] <= len(versions):
                    raise RegistryError(
                        422, 42201, "Invalid schema: reference %s (subject %s, version %d) not found"
                        % (r["name"], r["subject"], r["version"]))
        serialized = None
        if schema_type in ("AVRO", "JSON"):
            try:
                parsed = json.loads(text)
            except ValueError as e:
                raise RegistryError(422, 42201, "Invalid schema: %s" % e)
            if schema_type == "AVRO":
                parsed = avro_canonical(parsed)
            canonical = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)
        else:
            data = decode_descriptor_b64(text)
            if data is not None:
                try:
                    canonical = render_proto(data)
                except (ValueError, IndexError, UnicodeDecodeError) as e:
                    raise RegistryError(422, 42201, "Invalid schema: bad FileDescriptorProto: %s" % e)
                serialized = base64.b64encode(data).decode("ascii")
            else:
                canonical = text
        return schema_type, canonical, refs, serialized

    def _key(self, schema_type, canonical, refs):
        return (schema_type, canonical, tuple((r["name"], r["subject"], r["version"]) for r in refs))

    def register(self, subject, body):
        schema_type, canonical, refs, serialized = self.parse(body)
        with self.lock:
            key = self._key(schema_type, canonical, refs)
            sid = self.by_key.get(key)
            if sid is None:
                sid = self.next_id
                self.next_id += 1
                self.schemas[sid] = Schema(sid, schema_type, canonical, refs, serialized)
                self.by_key[key] = sid
            elif serialized and not self.schemas[sid].serialized:
                self.schemas[sid].serialized = serialized
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return sid

    def lookup(self, subject, body):
        with self.lock:
            if subject not in self.subjects:
                raise RegistryError(404, 40401, "Subject '%s' not found." % subject)
        schema_type, canonical, refs, _ = self.parse(body)
        with self.lock:
            sid = self.by_key.get(self._key(schema_type, canonical, refs))
            versions = self.subjects[subject]
            if sid is None or sid not in versions:
                raise RegistryError(404, 40403, "Schema not found")
            return self.version_entry(subject, versions.index(sid) + 1, None)

    def get(self, sid):
        with self.lock:
            s = self.schemas.get(sid)
        if s is None:
            raise RegistryError(404, 40403, "Schema %d not found" % sid)
        return s

    def text(self, s, fmt):
        if fmt == "serialized" and s.type == "PROTOBUF":
            if s.serialized is None:
                s.serialized = compile_proto_text(self, s)
            return s.serialized
        return s.canonical

    def schema_entry(self, sid, fmt):
        s = self.get(sid)
        out = {}
        if s.type != "AVRO":
            out["schemaType"] = s.type
        out["schema"] = self.text(s, fmt)
        if s.references:
            out["references"] = s.references
        return out

    def versions_of(self, subject):
        with self.lock:
            versions = self.subjects.get(subject)
            if versions is None:
                raise RegistryError(404, 40401, "Subject '%s' not found." % subject)
            return list(versions)

    def version_entry(self, subject, version, fmt):
        versions = self.versions_of(subject)
        if version in ("latest", "-1"):
            version = len(versions)
        else:
            try:
                version = int(version)
            except (TypeError, ValueError):
                raise RegistryError(
                    422, 42202,
                    "The specified version '%s' is not a valid version id. Allowed values are "
                    "between [1, 2^31-1] and the string \"latest\"" % version)
            if version < 1:
                raise RegistryError(
                    422, 42202,
                    "The specified version '%d' is not a valid version id. Allowed values are "
                    "between [1, 2^31-1] and the string \"latest\"" % version)
        if version > len(versions):
            raise RegistryError(404, 40402, "Version %d not found." % version)
        sid = versions[version - 1]
        s = self.get(sid)
        out = {"subject": subject, "version": version, "id": sid}
        if s.type != "AVRO":
            out["schemaType"] = s.type
        out["schema"] = self.text(s, fmt)
        if s.references:
            out["references"] = s.references
        return out


def compile_proto_text(store, s):
    """base64 FileDescriptorProto of a PROTOBUF schema registered as text.

    Needs grpc_tools (protoc) importable; referenced schemas are written under
    their reference names next to it.
    """
    try:
        import importlib.resources
        from grpc_tools import protoc  # noqa: PLC0415 (optional, see the module doc)
    except ImportError:
        raise RegistryError(
            422, 42201,
            "format=serialized of a PROTOBUF schema registered as text needs grpc_tools "
            "on PYTHONPATH (SLUICE_TEST_PYTHONPATH)")
    with _PROTOC_LOCK, tempfile.TemporaryDirectory(prefix="registry-proto-") as tmp:
        written = set()

        def write(name, schema):
            if name in written:
                return
            written.add(name)
            path = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(schema.canonical)
            for r in schema.references:
                write(r["name"], store.get(store.versions_of(r["subject"])[r["version"] - 1]))

        main = "__registry_schema_%d.proto" % s.id
        write(main, s)
        include = str(importlib.resources.files("grpc_tools") / "_proto")
        out = os.path.join(tmp, "out.pb")
        rc = protoc.main(["protoc", "-I" + tmp, "-I" + include,
                          "--descriptor_set_out=" + out, main])
        if rc != 0:
            raise RegistryError(422, 42201, "Invalid schema: protoc failed on the .proto text")
        with open(out, "rb") as fh:
            files = Msg(fh.read()).fields.get(1, [])
        return base64.b64encode(files[-1]).decode("ascii")


_PROTOC_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class State:
    def __init__(self, auth, verbose):
        self.store = Store()
        self.auth = auth  # "Basic ..." header value, or None
        self.verbose = verbose
        self.lock = threading.Lock()
        self.down = False
        self.mode = "503"
        self.requests = 0
        self.schema_by_id_requests = 0
        self.log = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sluice-test-registry/1"
    timeout = 60
    state = None  # set by main

    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, fmt, *args):
        if self.state.verbose:
            sys.stderr.write("registry: %s - %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n > 0 else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise RegistryError(400, 400, "Unrecognized request body: not JSON")

    def send_json(self, status, obj, extra_headers=()):
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def dispatch(self, method):
        st = self.state
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in path.strip("/").split("/")] if path != "/" else []
        status = 500
        try:
            if parts and parts[0] == "_test":
                status, obj = self.control(method, parts[1:])
                self.send_json(status, obj)
                return
            with st.lock:
                st.requests += 1
                if method == "GET" and parts[:2] == ["schemas", "ids"]:
                    st.schema_by_id_requests += 1
                down, mode = st.down, st.mode
            if down:
                if mode == "close":
                    status = 0
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                raise RegistryError(503, 50301, "Service Unavailable (test outage)")
            if st.auth is not None and self.headers.get("Authorization") != st.auth:
                status = 401
                self.send_json(401, {"error_code": 401, "message": "Unauthorized"},
                               [("WWW-Authenticate", 'Basic realm="SchemaRegistry"')])
                return
            status, obj = self.route(method, parts, query)
            self.send_json(status, obj)
        except RegistryError as e:
            status = e.status
            self.send_json(e.status, {"error_code": e.error_code, "message": e.message})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 (report it to the client, as a 500)
            status = 500
            self.send_json(500, {"error_code": 50001, "message": "Error in the backend data store: %r" % e})
        finally:
            if not (parts and parts[0] == "_test"):
                with st.lock:
                    st.log.append({"method": method, "path": self.path, "status": status,
                                   "client": self.headers.get("Confluent-Client-Version")
                                   or self.headers.get("User-Agent")})
                    del st.log[:-10000]

    def control(self, method, parts):
        st = self.state
        if method == "POST" and parts == ["outage"]:
            body = self.read_body() or {}
            mode = str(body.get("mode", "503"))
            if mode not in ("503", "close"):
                raise RegistryError(422, 422, "mode must be \"503\" or \"close\"")
            with st.lock:
                st.down = bool(body.get("down", True))
                st.mode = mode
                return 200, {"down": st.down, "mode": st.mode}
        if method == "GET" and parts == ["stats"]:
            with st.lock:
                return 200, {"schema_by_id_requests": st.schema_by_id_requests, "requests": st.requests}
        if method == "GET" and parts == ["requests"]:
            with st.lock:
                return 200, list(st.log)
        if method == "POST" and parts == ["reset_stats"]:
            with st.lock:
                st.requests = st.schema_by_id_requests = 0
            return 200, {}
        if method == "POST" and parts == ["register"]:
            body = self.read_body() or {}
            subject = body.get("subject")
            if not isinstance(subject, str) or not subject:
                raise RegistryError(422, 422, "subject is required")
            return 200, {"id": st.store.register(subject, body)}
        raise not_found()

    def route(self, method, parts, query):
        store = self.state.store
        n = len(parts)
        fmt = query.get("format")
        if method == "GET" and n == 0:
            return 200, {}
        if parts[0] == "schemas" and method == "GET":
            if n == 2 and parts[1] == "types":
                return 200, list(SCHEMA_TYPES)
            if n >= 3 and parts[1] == "ids":
                try:
                    sid = int(parts[2])
                except ValueError:
                    raise not_found()
                if n == 3:
                    return 200, store.schema_entry(sid, fmt)
                if n == 4 and parts[3] in ("versions", "subjects"):
                    store.get(sid)
                    with store.lock:
                        pairs = [(subj, i + 1) for subj, ids in sorted(store.subjects.items())
                                 for i, x in enumerate(ids) if x == sid]
                    if parts[3] == "subjects":
                        return 200, sorted({subj for subj, _ in pairs})
                    return 200, [{"subject": subj, "version": v} for subj, v in pairs]
            raise not_found()
        if parts[0] == "subjects":
            if n == 1 and method == "GET":
                with store.lock:
                    return 200, sorted(store.subjects)
            subject = parts[1] if n >= 2 else None
            if n == 2 and method == "POST":
                return 200, store.lookup(subject, self.read_body())
            if n == 3 and parts[2] == "versions":
                if method == "POST":
                    return 200, {"id": store.register(subject, self.read_body())}
                if method == "GET":
                    return 200, list(range(1, len(store.versions_of(subject)) + 1))
            if n == 4 and parts[2] == "versions" and method == "GET":
                return 200, store.version_entry(subject, parts[3], fmt)
            if n == 5 and parts[2] == "versions" and parts[4] == "schema" and method == "GET":
                entry = store.version_entry(subject, parts[3], fmt)
                text = entry["schema"]
                return 200, json.loads(text) if entry.get("schemaType", "AVRO") != "PROTOBUF" else text
            raise not_found()
        if parts[0] == "config" and n <= 2:
            subject = parts[1] if n == 2 else None
            if method == "GET":
                with store.lock:
                    level = store.config.get(subject) or store.config.get(None) or "BACKWARD"
                return 200, {"compatibilityLevel": level}
            if method == "PUT":
                body = self.read_body() or {}
                level = body.get("compatibility")
                if not isinstance(level, str):
                    raise RegistryError(422, 42203, "Invalid compatibility level")
                with store.lock:
                    store.config[subject] = level.upper()
                return 200, {"compatibility": level.upper()}
        if parts[0] == "mode" and n <= 2 and method == "GET":
            return 200, {"mode": "READWRITE"}
        raise not_found()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")

    auth = None
    if args.user is not None:
        token = base64.b64encode(("%s:%s" % (args.user, args.password)).encode("utf-8")).decode("ascii")
        auth = "Basic " + token
    Handler.state = State(auth, args.verbose)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64

        def handle_error(self, request, client_address):
            # A client that went away or failed the TLS handshake: not our error.
            if args.verbose:
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", args.port), Handler)
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        # The handshake runs on first read, in the request's thread, so a slow or
        # broken client cannot stall the accept loop.
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    port = server.server_address[1]
    tmp = "%s.tmp.%d" % (args.port_file, os.getpid())
    with open(tmp, "w") as fh:
        fh.write("%d\n" % port)
    os.replace(tmp, args.port_file)
    if args.verbose:
        sys.stderr.write("registry: listening on %s://127.0.0.1:%d\n" % ("https" if args.tls_cert else "http", port))
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()
        try:
            os.remove(args.port_file)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
