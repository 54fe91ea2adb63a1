#!/usr/bin/env python3
"""Golden vectors for the 4/ESP codec, written by Apache Avro's Python implementation.

Reads the RFC schemas from kaa-esp/schemas/0004-*.avsc (copies of kaa-rfcs 0004/)
and writes vectors.json beside this script: a list of {"message", "name", "value",
"hex"} where "value" uses Avro field names, bytes as lowercase hex, unions as plain
values (null or the value), and "hex" is the Avro binary datum that `avro` 1.12
writes for it.

Run: python3 kaa-esp/tests/golden/generate.py (from anywhere). Deterministic: CI
regenerates the file and fails if it differs from the committed one.
"""

import io
import json
import os

import avro.io
import avro.schema

HERE = os.path.dirname(os.path.abspath(__file__))
CRATE = os.path.dirname(os.path.dirname(HERE))
REPO = os.path.dirname(CRATE)
SCHEMAS = os.path.join(CRATE, "schemas")

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1

# A 64 KiB payload with every byte value; periodic, so it compresses well in git.
LARGE = bytes((i * 7 + 3) % 256 for i in range(64 * 1024))


def load(path):
    with open(path, encoding="utf-8") as f:
        return avro.schema.parse(f.read())


def encode(schema, datum):
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def decode(schema, data):
    return avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data)))


def to_json(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def main():
    schemas = {
        "ClientData": load(os.path.join(SCHEMAS, "0004-client-data.avsc")),
        "ExtensionData": load(os.path.join(SCHEMAS, "0004-extension-data.avsc")),
    }

    client_base = {
        "correlationId": "07d78e95-2c4d-4899-957c-b9e5a3701fbb",
        "timestamp": 1490262793349,
        "timeout": 3600000,
        "appVersionName": "humidity-sensor-v3",
        "endpointId": "7ad263ec-3347-4c7d-af89-50c67061367a",
        "resourcePath": "/json",
        "requestId": 42,
        # The RFC example's base64 payload, decoded.
        "payload": b'[\r\n  { "humidity": 88 }\r\n]',
        "configName": "network",
    }
    extension_base = {
        "correlationId": "07d78e95-2c4d-4899-957c-b9e5a3701fbb",
        "timestamp": 1490262793349,
        "timeout": 3600000,
        "appVersionName": "humidity-sensor-v3",
        "extensionInstanceName": "humidity-sensor-cmx-1",
        "endpointId": "7ad263ec-3347-4c7d-af89-50c67061367a",
        "resourcePath": "/config/json",
        "requestId": 42,
        "payload": b'{\n  "sampling" : 200\n}',
        "statusCode": 200,
        "reasonPhrase": "OK",
    }

    cases = [
        ("ClientData", "rfc_example", client_base),
        ("ClientData", "unnamed_config", dict(client_base, configName=None)),
        ("ClientData", "all_nulls_and_empties", {
            "correlationId": "", "timestamp": 0, "timeout": 0, "appVersionName": "",
            "endpointId": None, "resourcePath": "", "requestId": None, "payload": b"",
            "configName": None,
        }),
        ("ClientData", "empty_strings_not_null", dict(
            client_base, endpointId="", requestId=0, configName="", payload=b"")),
        ("ClientData", "non_ascii", dict(
            client_base, correlationId="corrélation-日本-🚀", appVersionName="appé-v1",
            endpointId="端点-ä", resourcePath="/config/json/réseau", configName="réseau ✓",
            payload="données ✓".encode("utf-8"))),
        ("ClientData", "large_payload_64k", dict(client_base, payload=LARGE, configName=None)),
        ("ClientData", "extremes_max", dict(
            client_base, timestamp=I64_MAX, timeout=I64_MAX, requestId=I32_MAX)),
        ("ClientData", "extremes_min", dict(
            client_base, timestamp=I64_MIN, timeout=I64_MIN, requestId=I32_MIN)),
        ("ClientData", "negative_small", dict(
            client_base, timestamp=-1, timeout=-64, requestId=-1, configName=None)),
        ("ClientData", "varint_boundaries", dict(
            client_base, timestamp=63, timeout=64, requestId=-65, payload=bytes(range(128)))),
        ("ExtensionData", "rfc_example", extension_base),
        ("ExtensionData", "all_nulls", {
            "correlationId": "", "timestamp": 0, "timeout": 0, "appVersionName": None,
            "extensionInstanceName": None, "endpointId": None, "resourcePath": "",
            "requestId": None, "payload": None, "statusCode": 0, "reasonPhrase": None,
        }),
        ("ExtensionData", "push_without_request_id", dict(
            extension_base, requestId=None, reasonPhrase=None)),
        ("ExtensionData", "empty_payload_not_null", dict(
            extension_base, payload=b"", appVersionName="", extensionInstanceName="",
            endpointId="", reasonPhrase="")),
        ("ExtensionData", "error_response", dict(
            extension_base, payload=None, statusCode=404,
            reasonPhrase="Configuration not found")),
        ("ExtensionData", "non_ascii", dict(
            extension_base, correlationId="идентификатор", appVersionName="версия-1",
            extensionInstanceName="cmx-ü", endpointId="端点", resourcePath="/config/json/名前",
            reasonPhrase="Ошибка: конфигурация отклонена 🚫",
            payload='{"ключ":"значение"}'.encode("utf-8"))),
        ("ExtensionData", "large_payload_64k", dict(extension_base, payload=LARGE)),
        ("ExtensionData", "extremes_max", dict(
            extension_base, timestamp=I64_MAX, timeout=I64_MAX, requestId=I32_MAX,
            statusCode=I32_MAX)),
        ("ExtensionData", "extremes_min", dict(
            extension_base, timestamp=I64_MIN, timeout=I64_MIN, requestId=I32_MIN,
            statusCode=I32_MIN)),
    ]

    vectors = []
    for message, name, value in cases:
        schema = schemas[message]
        datum = encode(schema, value)
        assert decode(schema, datum) == value, (message, name)
        vectors.append({
            "message": message,
            "name": name,
            "value": to_json(value),
            "hex": datum.hex(),
        })

    # Evolution check with the reference implementation: a ClientData writer from
    # before configName was added is read by the current schema with the default.
    old_fields = [f for f in json.loads(str(schemas["ClientData"]))["fields"]
                  if f["name"] != "configName"]
    old_schema = avro.schema.parse(json.dumps({
        "type": "record", "name": "ClientData",
        "namespace": "org.kaaproject.ipc.esp.gen.v1", "fields": old_fields}))
    old_value = {k: v for k, v in client_base.items() if k != "configName"}
    old_datum = encode(old_schema, old_value)
    resolved = avro.io.DatumReader(old_schema, schemas["ClientData"]).read(
        avro.io.BinaryDecoder(io.BytesIO(old_datum)))
    assert resolved == dict(old_value, configName=None)

    out = os.path.join(HERE, "vectors.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(vectors, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {os.path.relpath(out, REPO)}")


if __name__ == "__main__":
    main()
