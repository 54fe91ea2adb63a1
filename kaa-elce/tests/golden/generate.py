#!/usr/bin/env python3
"""Writes vectors.json: golden Avro datums of the 9/ELCE records, made by Apache Avro.

The schemas are the RFC .avsc files (kaa-elce/schemas/0009-*.avsc, copies of kaa-rfcs
0009/) and this crate's kaa-rs extension schemas (kaa-elce/schemas/sessions-*.avsc: the
sessions request and response, not RFC messages), all from this crate's schemas/.
Run from anywhere: python3 kaa-elce/tests/golden/generate.py (needs `avro` 1.12.2).

Each vector is {"message", "name", "value", "hex"}:
- `value` is the record as JSON with the Avro field names; maps are lists of
  [key, value] pairs in wire order; longs are JSON numbers;
- `hex` is the lowercase hex of the datum.
Vectors that show schema evolution carry "decode_only": true: the datum was written
by an older or newer writer schema, and `value` is what Apache Avro reads from it
with the RFC schema (defaults filled in, appended fields dropped). Encoding `value`
does not give these bytes back, so tests only decode them.
"""

import io
import json
import os
import sys

import avro
import avro.io
import avro.schema

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
SCHEMA_DIR = os.path.join(REPO, "kaa-elce", "schemas")
OUT = os.path.join(HERE, "vectors.json")

SCHEMA_FILES = {
    "ConnectedEvent": "0009-ep-connected.avsc",
    "DisconnectedEvent": "0009-ep-disconnected.avsc",
    "RegisteredEvent": "0009-ep-registered.avsc",
    "AppVersionUpdatedEvent": "0009-ep-appversion-updated.avsc",
    "UnregisteredEvent": "0009-ep-unregistered.avsc",
    "TrafficReportEvent": "0009-ep-traffic-stats.avsc",
}

# kaa-rs extensions (not 9/ELCE RFC messages), from this crate's schemas/.
EXT_SCHEMA_FILES = {
    "SessionsRequest": "sessions-request.avsc",
    "SessionsResponse": "sessions-response.avsc",
}

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
LARGE = 64 * 1024


def load_json(message):
    if message in EXT_SCHEMA_FILES:
        path = os.path.join(SCHEMA_DIR, EXT_SCHEMA_FILES[message])
    else:
        path = os.path.join(SCHEMA_DIR, SCHEMA_FILES[message])
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parse(schema_json):
    return avro.schema.parse(json.dumps(schema_json))


def to_avro(schema, value):
    """JSON vector value -> the datum the avro package writes (maps become dicts)."""
    if isinstance(schema, avro.schema.RecordSchema):
        return {f.name: to_avro(f.type, value[f.name]) for f in schema.fields if f.name in value}
    if isinstance(schema, avro.schema.MapSchema):
        d = {k: to_avro(schema.values, v) for k, v in value}
        assert len(d) == len(value), "duplicate map keys cannot be written from a dict"
        return d
    if isinstance(schema, avro.schema.ArraySchema):
        return [to_avro(schema.items, v) for v in value]
    if isinstance(schema, avro.schema.UnionSchema):
        raise AssertionError("9/ELCE schemas have no unions")
    if schema.type == "bytes":
        return bytes.fromhex(value)
    return value


def to_json(schema, datum):
    """What the avro package reads -> a JSON vector value (dicts keep wire order)."""
    if isinstance(schema, avro.schema.RecordSchema):
        return {f.name: to_json(f.type, datum[f.name]) for f in schema.fields}
    if isinstance(schema, avro.schema.MapSchema):
        return [[k, to_json(schema.values, v)] for k, v in datum.items()]
    if isinstance(schema, avro.schema.ArraySchema):
        return [to_json(schema.items, v) for v in datum]
    if schema.type == "bytes":
        return datum.hex()
    return datum


def write(schema, value):
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(to_avro(schema, value), avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def read(writer_schema, reader_schema, data):
    decoder = avro.io.BinaryDecoder(io.BytesIO(data))
    datum = avro.io.DatumReader(writer_schema, reader_schema).read(decoder)
    return to_json(reader_schema, datum)


vectors = []


def add(message, name, value):
    schema = parse(load_json(message))
    data = write(schema, value)
    back = read(schema, schema, data)
    assert back == value, f"{message}/{name}: avro read back {back!r}"
    vectors.append({"message": message, "name": name, "value": value, "hex": data.hex()})


def add_evolved(message, name, writer_json, value):
    """A datum from another version of the schema, read with the RFC schema."""
    writer = parse(writer_json)
    reader = parse(load_json(message))
    data = write(writer, value)
    vectors.append(
        {
            "message": message,
            "name": name,
            "value": read(writer, reader, data),
            "hex": data.hex(),
            "decode_only": True,
        }
    )


def uuid(i):
    return f"{i:08x}-4e2a-4c1b-9d3f-{i * 7919:012x}"


def large(prefix):
    """A 64 KiB string."""
    return (prefix + "-" + "0123456789abcdef" * (LARGE // 16))[:LARGE]


NON_ASCII = "датчик-вологості-ü-温度-🌡"

# --- Connectivity: ConnectedEvent and DisconnectedEvent have the same shape. ---

for message in ["ConnectedEvent", "DisconnectedEvent"]:
    base = {
        "correlationId": "6f1c0a52-3b9e-4f7d-a1e0-2c4b8d9e7f10",
        "timestamp": 1_700_000_000_000,
        "timeout": 0,
        "endpoints": [],
        "originatorReplicaId": "kpc-replica-1",
    }
    add(message, "no endpoints", base)
    add(message, "one endpoint", {**base, "endpoints": [[uuid(1), "humidity-sensor-v3"]], "timeout": 30_000})
    add(
        message,
        "several endpoints in wire order",
        {
            **base,
            "endpoints": [[uuid(i), f"app-v{i % 3}"] for i in [9, 3, 7, 1, 5]],
        },
    )
    add(
        message,
        "non-ASCII strings",
        {
            "correlationId": "корреляция-é-中",
            "timestamp": 1,
            "timeout": 1,
            "endpoints": [[NON_ASCII, "версія-2"], ["😀", ""], ["", "empty-key"]],
            "originatorReplicaId": "kpc-ß",
        },
    )
    add(
        message,
        "empty strings",
        {"correlationId": "", "timestamp": 0, "timeout": 0, "endpoints": [["", ""]], "originatorReplicaId": ""},
    )
    add(message, "extreme longs min/max", {**base, "timestamp": I64_MIN, "timeout": I64_MAX})
    add(message, "extreme longs max/min", {**base, "timestamp": I64_MAX, "timeout": I64_MIN})
    add(message, "negative longs", {**base, "timestamp": -1, "timeout": -64})
    add(message, "20 endpoints", {**base, "endpoints": [[uuid(i), f"app-v{i % 4}"] for i in range(20)]})
    if message == "ConnectedEvent":
        add(message, "64 KiB app version name", {**base, "endpoints": [[uuid(2), large("app")]]})
    else:
        add(message, "64 KiB endpoint ID", {**base, "endpoints": [[large("ep"), "app-v1"], [uuid(3), "app-v2"]]})

# --- Lifecycle: RegisteredEvent, UnregisteredEvent, AppVersionUpdatedEvent. ---

for message in ["RegisteredEvent", "UnregisteredEvent", "AppVersionUpdatedEvent"]:
    base = {
        "correlationId": "0b7e4d2c-9a51-4e38-8f06-1d2c3b4a5968",
        "timestamp": 1_700_000_123_456,
        "timeout": 0,
        "appVersionName": "humidity-sensor-v3",
        "endpointId": uuid(42),
        "originatorReplicaId": "epr-replica-2",
    }
    if message == "AppVersionUpdatedEvent":
        base = {
            "correlationId": base["correlationId"],
            "timestamp": base["timestamp"],
            "timeout": base["timeout"],
            "appVersionName": "humidity-sensor-v4",
            "previousAppVersionName": "humidity-sensor-v3",
            "endpointId": base["endpointId"],
            "originatorReplicaId": base["originatorReplicaId"],
        }
    add(message, "typical", base)
    add(message, "with timeout", {**base, "timeout": 5_000})
    add(
        message,
        "non-ASCII strings",
        {k: (NON_ASCII + "-" + k if isinstance(v, str) else v) for k, v in base.items()},
    )
    add(message, "empty strings", {k: ("" if isinstance(v, str) else v) for k, v in base.items()})
    add(message, "extreme longs min/max", {**base, "timestamp": I64_MIN, "timeout": I64_MAX})
    add(message, "extreme longs max/min", {**base, "timestamp": I64_MAX, "timeout": I64_MIN})
    add(message, "negative longs", {**base, "timestamp": -1, "timeout": -65})
    large_field = {
        "RegisteredEvent": "appVersionName",
        "UnregisteredEvent": "originatorReplicaId",
        "AppVersionUpdatedEvent": "previousAppVersionName",
    }[message]
    add(message, f"64 KiB {large_field}", {**base, large_field: large(large_field)})

# --- Traffic reporting: nested maps of trafficStat records, its own field order. ---


def stat(a, b, c, d):
    return {
        "totalReceivedPayload": a,
        "totalSentPayload": b,
        "totalReceivedMessageCount": c,
        "totalSentMessageCount": d,
    }


traffic = {
    "tenantTrafficStats": [],
    "timeFrom": 1_700_000_000_000_000_000,
    "timeTo": 1_700_000_060_000_000_000,
    "correlationId": "a9c1e2f3-0d4b-4c5a-8e6f-7a8b9c0d1e2f",
    "originatorReplicaId": "kpc-replica-3",
    "timestamp": 1_700_000_060_001,
    "timeout": 0,
}
add("TrafficReportEvent", "no tenants", traffic)
add(
    "TrafficReportEvent",
    "empty inner maps",
    {**traffic, "tenantTrafficStats": [["tenant-a", []], ["tenant-b", [["app-1", []]]]]},
)
add(
    "TrafficReportEvent",
    "tenants, apps and endpoints",
    {
        **traffic,
        "timeout": 10_000,
        "tenantTrafficStats": [
            [
                "tenant-b",
                [
                    ["smart-kettle", [[uuid(1), stat(1024, 2048, 3, 4)], [uuid(2), stat(0, 0, 0, 0)]]],
                    ["humidity-sensor", [[uuid(3), stat(65, 64, 1, 1)]]],
                ],
            ],
            ["tenant-a", [["humidity-sensor", [[uuid(4), stat(1, 2, 3, 4)]]]]],
        ],
    },
)
add(
    "TrafficReportEvent",
    "non-ASCII strings",
    {
        **traffic,
        "correlationId": NON_ASCII,
        "originatorReplicaId": "kpc-ñ",
        "tenantTrafficStats": [["орендар", [["温度计", [["端点-1", stat(7, 8, 9, 10)]]]]]],
    },
)
add(
    "TrafficReportEvent",
    "empty strings",
    {**traffic, "correlationId": "", "originatorReplicaId": "", "tenantTrafficStats": [["", [["", [["", stat(0, 0, 0, 0)]]]]]]},
)
add(
    "TrafficReportEvent",
    "extreme longs",
    {
        **traffic,
        "timeFrom": I64_MIN,
        "timeTo": I64_MAX,
        "timestamp": I64_MIN,
        "timeout": I64_MAX,
        "tenantTrafficStats": [["t", [["a", [["e", stat(I64_MAX, I64_MIN, -1, I64_MAX)]]]]]],
    },
)
add(
    "TrafficReportEvent",
    "negative longs",
    {**traffic, "timeFrom": -5, "timeTo": -1, "timestamp": -1, "timeout": -1},
)
add(
    "TrafficReportEvent",
    "20 endpoints",
    {
        **traffic,
        "tenantTrafficStats": [
            ["tenant-1", [[f"app-{a}", [[uuid(a * 10 + e), stat(e, a, e * a, 1)] for e in range(10)]] for a in range(2)]]
        ],
    },
)
add(
    "TrafficReportEvent",
    "64 KiB endpoint ID",
    {**traffic, "tenantTrafficStats": [["tenant-1", [["app-1", [[large("ep"), stat(1, 1, 1, 1)]]]]]]},
)

# --- kaa-rs extensions: the sessions request and response (not RFC messages). ---

request = {
    "correlationId": "3d2c1b0a-9f8e-4d7c-b6a5-948372615a4b",
    "timestamp": 1_700_000_200_000,
    "timeout": 5_000,
    "extensionInstanceName": "cmx",
}
add("SessionsRequest", "typical", request)
add("SessionsRequest", "no timeout", {**request, "timeout": 0})
add("SessionsRequest", "non-ASCII strings", {**request, "correlationId": NON_ASCII, "extensionInstanceName": "розширення-ü"})
add("SessionsRequest", "empty strings", {**request, "correlationId": "", "extensionInstanceName": ""})
add("SessionsRequest", "extreme longs min/max", {**request, "timestamp": I64_MIN, "timeout": I64_MAX})
add("SessionsRequest", "extreme longs max/min", {**request, "timestamp": I64_MAX, "timeout": I64_MIN})
add("SessionsRequest", "negative longs", {**request, "timestamp": -1, "timeout": -64})
add("SessionsRequest", "64 KiB extensionInstanceName", {**request, "extensionInstanceName": large("ext")})


def session(i, paths):
    return {"endpointId": uuid(i), "appVersionName": f"app-v{i % 3}", "resourcePaths": paths}


response = {
    "correlationId": request["correlationId"],
    "timestamp": 1_700_000_200_010,
    "timeout": 5_000,
    "endpoints": [],
    "originatorReplicaId": "kpc-replica-1",
}
add("SessionsResponse", "no endpoints", response)
add("SessionsResponse", "one endpoint", {**response, "endpoints": [session(1, ["config/json"])]})
add(
    "SessionsResponse",
    "several endpoints and paths in wire order",
    {
        **response,
        "endpoints": [
            session(9, ["config/json", "config/json/network", "applied/json"]),
            session(3, []),
            session(7, ["config/json/firmware"]),
        ],
    },
)
add(
    "SessionsResponse",
    "non-ASCII strings",
    {
        **response,
        "correlationId": "корреляция-é-中",
        "endpoints": [
            {"endpointId": NON_ASCII, "appVersionName": "версія-2", "resourcePaths": ["конфіг/json/мережа", "😀"]},
            {"endpointId": "", "appVersionName": "", "resourcePaths": [""]},
        ],
        "originatorReplicaId": "kpc-ß",
    },
)
add(
    "SessionsResponse",
    "empty strings",
    {"correlationId": "", "timestamp": 0, "timeout": 0, "endpoints": [{"endpointId": "", "appVersionName": "", "resourcePaths": ["", ""]}], "originatorReplicaId": ""},
)
add("SessionsResponse", "extreme longs min/max", {**response, "timestamp": I64_MIN, "timeout": I64_MAX})
add("SessionsResponse", "extreme longs max/min", {**response, "timestamp": I64_MAX, "timeout": I64_MIN})
add("SessionsResponse", "negative longs", {**response, "timestamp": -1, "timeout": -65})
add(
    "SessionsResponse",
    "100 endpoints",
    {**response, "endpoints": [session(i, [f"config/json/n{j}" for j in range(i % 4)]) for i in range(100)]},
)
add(
    "SessionsResponse",
    "70 resource paths",
    {**response, "endpoints": [session(5, [f"config/json/name-{j}" for j in range(70)])]},
)
add("SessionsResponse", "64 KiB resource path", {**response, "endpoints": [session(2, ["config/json", large("path")])]})

# --- Schema evolution, written with other versions of the schemas. ---


def find(message, name):
    return next(v["value"] for v in vectors if v["message"] == message and v["name"] == name)


# An older TrafficReportEvent writer, before the trailing `timeout` (default 0).
older = load_json("TrafficReportEvent")
assert older["fields"][-1]["name"] == "timeout" and "default" in older["fields"][-1]
older["fields"] = older["fields"][:-1]
add_evolved(
    "TrafficReportEvent",
    "older writer without timeout",
    older,
    {k: v for k, v in find("TrafficReportEvent", "tenants, apps and endpoints").items() if k != "timeout"},
)

# Newer writers that appended fields with defaults: the extra bytes are ignored.
for message in [*SCHEMA_FILES, *EXT_SCHEMA_FILES]:
    newer = load_json(message)
    newer["fields"] = newer["fields"] + [
        {"name": "futureNote", "type": "string", "default": ""},
        {"name": "futureCount", "type": "long", "default": 0},
    ]
    typical = find(
        message,
        {"TrafficReportEvent": "tenants, apps and endpoints", "SessionsResponse": "several endpoints and paths in wire order"}.get(
            message, "non-ASCII strings"
        ),
    )
    add_evolved(message, "newer writer with appended fields", newer, {**typical, "futureNote": "from the future ✨", "futureCount": -300})

with open(OUT, "w", encoding="utf-8") as f:
    json.dump(vectors, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(f"wrote {len(vectors)} vectors to {os.path.relpath(OUT, REPO)}", file=sys.stderr)
