#!/usr/bin/env python3
"""Golden vectors for the 6/CDTP codec, written by Apache Avro's Python implementation.

Reads the RFC schemas (kaa-cdtp/schemas/0006-*.avsc, copies of kaa-rfcs 0006/), this
crate's extended schemas (kaa-cdtp/schemas/config-*-ext.avsc, the named-configuration
extension) and its kaa-rs extension message (kaa-cdtp/schemas/provider-started.avsc,
not an RFC message) and writes vectors.json beside this script: a list of
{"message", "name", "value", "hex"} where "value" uses Avro field names, bytes as
lowercase hex, unions as plain values (null or the value), and "hex" is the Avro
binary datum that `avro` 1.12 writes for it.

ConfigUpdated / ConfigApplied cases without a configName are written with the RFC
schema (the extension writes nothing for an absent name, so the bytes must be the
RFC's); cases with a configName are written with the extended schema.

Run: python3 kaa-cdtp/tests/golden/generate.py (from anywhere). Deterministic: CI
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

# 64 KiB of content with every byte value; periodic, so it compresses well in git.
LARGE = bytes((i * 7 + 3) % 256 for i in range(64 * 1024))


def load(path):
    with open(path, encoding="utf-8") as f:
        return avro.schema.parse(f.read())


def encode(schema, datum):
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def decode(schema, data, reader_schema=None):
    reader = avro.io.DatumReader(schema, reader_schema)
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(data)))


def to_json(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def main():
    rfc = {
        "ConfigRequest": load(os.path.join(SCHEMAS, "0006-config-request.avsc")),
        "ConfigResponse": load(os.path.join(SCHEMAS, "0006-config-response.avsc")),
        "ConfigUpdated": load(os.path.join(SCHEMAS, "0006-config-updated.avsc")),
        "ConfigApplied": load(os.path.join(SCHEMAS, "0006-config-applied.avsc")),
    }
    ext = {
        "ConfigUpdated": load(os.path.join(SCHEMAS, "config-updated-ext.avsc")),
        "ConfigApplied": load(os.path.join(SCHEMAS, "config-applied-ext.avsc")),
    }

    # kaa-rs extension messages (not in the RFC), from this crate's schemas/.
    kaa_rs = {
        "ProviderStarted": load(os.path.join(SCHEMAS, "provider-started.avsc")),
    }

    request = {
        "correlationId": "07d78e95-2c4d-4899-957c-b9e5a3701fbb",
        "timestamp": 1490303342158,
        "timeout": 3000,
        "appVersionName": "smartKettleV1",
        "endpointId": "b197e391-1d13-403b-83f5-87bdd44888cf",
        "configId": "6046b576591c75fd68ab67f7e4475311",
        "configName": None,
    }
    response = {
        "correlationId": "07d78e95-2c4d-4899-957c-b9e5a3701fbb",
        "timestamp": 1490303342158,
        "timeout": 3000,
        "appVersionName": "smartKettleV1",
        "endpointId": "b197e391-1d13-403b-83f5-87bdd44888cf",
        "configId": "6046b576591c75fd68ab67f7e4475311",
        "contentType": "application/json",
        # The RFC example's base64 content, decoded.
        "content": b"waiurh3jfnlsdkcv87y87ow3",
        "statusCode": 200,
        "reasonPhrase": "OK",
    }
    updated = {
        "correlationId": "07d78e95-2c4d-4899-957c-b9e5a3701fbb",
        "timestamp": 1490303342158,
        "timeout": 0,
        "appVersionName": "smartKettleV1",
        "endpointId": "b197e391-1d13-403b-83f5-87bdd44888cf",
        "configId": "6046b576591c75fd68ab67f7e4475311",
        "contentType": "application/json",
        "content": b"waiurh3jfnlsdkcv87y87ow3",
        "originatorReplicaId": None,
    }
    applied = {
        "correlationId": "07d78e95-2c4d-4899-957c-b9e5a3701fbb",
        "timestamp": 1490303342158,
        "timeout": 0,
        "appVersionName": "smartKettleV1",
        "endpointId": "b197e391-1d13-403b-83f5-87bdd44888cf",
        "configId": "6046b576591c75fd68ab67f7e4475311",
        "originatorReplicaId": None,
        "statusCode": 200,
        "reasonPhrase": "OK",
    }
    started = {
        "correlationId": "9c8b7a69-5847-4362-a514-0f1e2d3c4b5a",
        "timestamp": 1490303342158,
        "timeout": 0,
        "originatorReplicaId": "ecr-replica-1",
    }
    empty_common = {"correlationId": "", "timestamp": 0, "timeout": 0,
                    "appVersionName": "", "endpointId": ""}

    cases = [
        # ConfigRequest (configName is an RFC field: always written).
        ("ConfigRequest", "rfc_example", request),
        ("ConfigRequest", "rfc_example_named", dict(request, configId=None, configName="network")),
        ("ConfigRequest", "all_nulls_and_empties", dict(empty_common, configId=None, configName=None)),
        ("ConfigRequest", "empty_strings_not_null", dict(empty_common, configId="", configName="")),
        ("ConfigRequest", "non_ascii", dict(
            request, correlationId="корреляция", appVersionName="чайник-v1",
            endpointId="端点-ä", configId="идентификатор", configName="réseau ✓ 🚀")),
        ("ConfigRequest", "extremes_max", dict(request, timestamp=I64_MAX, timeout=I64_MAX)),
        ("ConfigRequest", "extremes_min", dict(request, timestamp=I64_MIN, timeout=I64_MIN)),
        ("ConfigRequest", "negative_small", dict(request, timestamp=-1, timeout=-65, configName="n")),
        # ConfigResponse
        ("ConfigResponse", "rfc_example", response),
        ("ConfigResponse", "unchanged", dict(
            response, configId=None, content=None, reasonPhrase=None)),
        ("ConfigResponse", "all_nulls_and_empties", dict(
            empty_common, configId=None, contentType="", content=None, statusCode=0,
            reasonPhrase=None)),
        ("ConfigResponse", "empty_content_not_null", dict(
            response, configId="", content=b"", reasonPhrase="")),
        ("ConfigResponse", "error", dict(
            response, configId=None, content=None, statusCode=404,
            reasonPhrase="No configuration found")),
        ("ConfigResponse", "non_ascii", dict(
            response, appVersionName="чайник-v1", endpointId="端点", configId="ид-1",
            contentType="application/json; charset=utf-8",
            content='{"режим":"эко","温度":90}'.encode("utf-8"),
            reasonPhrase="Всё хорошо ✓")),
        ("ConfigResponse", "protobuf_content", dict(
            response, contentType="application/x-protobuf", content=bytes(range(256)))),
        ("ConfigResponse", "large_content_64k", dict(response, content=LARGE)),
        ("ConfigResponse", "extremes_max", dict(
            response, timestamp=I64_MAX, timeout=I64_MAX, statusCode=I32_MAX)),
        ("ConfigResponse", "extremes_min", dict(
            response, timestamp=I64_MIN, timeout=I64_MIN, statusCode=I32_MIN)),
        # ConfigUpdated
        ("ConfigUpdated", "rfc_example", updated),
        ("ConfigUpdated", "with_replica", dict(updated, originatorReplicaId="ecr-replica-1")),
        ("ConfigUpdated", "all_empties", dict(
            empty_common, configId="", contentType="", content=b"", originatorReplicaId=None)),
        ("ConfigUpdated", "empty_replica_not_null", dict(updated, originatorReplicaId="")),
        ("ConfigUpdated", "non_ascii", dict(
            updated, appVersionName="чайник-v1", endpointId="端点", configId="ид-1",
            content='{"温度":90}'.encode("utf-8"), originatorReplicaId="реплика-1")),
        ("ConfigUpdated", "large_content_64k", dict(updated, content=LARGE)),
        ("ConfigUpdated", "extremes_max", dict(updated, timestamp=I64_MAX, timeout=I64_MAX)),
        ("ConfigUpdated", "extremes_min", dict(updated, timestamp=I64_MIN, timeout=I64_MIN)),
        ("ConfigUpdated", "named", dict(updated, originatorReplicaId="ecr-1", configName="network")),
        ("ConfigUpdated", "named_no_replica", dict(updated, configName="réseau ✓")),
        ("ConfigUpdated", "named_empty_name", dict(updated, configName="")),
        ("ConfigUpdated", "named_large_content_64k", dict(
            updated, content=LARGE, originatorReplicaId="ecr-1", configName="firmware")),
        # ConfigApplied
        ("ConfigApplied", "rfc_example", applied),
        ("ConfigApplied", "rejected", dict(
            applied, originatorReplicaId="cmx-1", statusCode=400,
            reasonPhrase="Invalid sampling rate")),
        ("ConfigApplied", "all_nulls_and_empties", dict(
            empty_common, configId="", originatorReplicaId=None, statusCode=0,
            reasonPhrase=None)),
        ("ConfigApplied", "empty_strings_not_null", dict(
            applied, originatorReplicaId="", reasonPhrase="")),
        ("ConfigApplied", "non_ascii", dict(
            applied, appVersionName="чайник-v1", endpointId="端点", configId="ид-1",
            originatorReplicaId="реплика", reasonPhrase="Не удалось применить 🚫")),
        ("ConfigApplied", "extremes_max", dict(
            applied, timestamp=I64_MAX, timeout=I64_MAX, statusCode=I32_MAX)),
        ("ConfigApplied", "extremes_min", dict(
            applied, timestamp=I64_MIN, timeout=I64_MIN, statusCode=I32_MIN)),
        ("ConfigApplied", "named", dict(applied, originatorReplicaId="cmx-1", configName="network")),
        ("ConfigApplied", "named_rejected_no_reason", dict(
            applied, statusCode=500, reasonPhrase=None, configName="名前")),
        # ProviderStarted (kaa-rs extension)
        ("ProviderStarted", "typical", started),
        ("ProviderStarted", "with_timeout", dict(started, timeout=30000)),
        ("ProviderStarted", "empties", dict(started, correlationId="", originatorReplicaId="")),
        ("ProviderStarted", "non_ascii", dict(
            started, correlationId="корреляция", originatorReplicaId="реплика-端点-🚀")),
        ("ProviderStarted", "extremes_max", dict(started, timestamp=I64_MAX, timeout=I64_MAX)),
        ("ProviderStarted", "extremes_min", dict(started, timestamp=I64_MIN, timeout=I64_MIN)),
        ("ProviderStarted", "negative_small", dict(started, timestamp=-1, timeout=-65)),
        ("ProviderStarted", "large_replica_id_64k", dict(
            started, originatorReplicaId=("ecr-" + "0123456789abcdef" * 4096)[:64 * 1024])),
    ]

    vectors = []
    for message, name, value in cases:
        named = "configName" in value and message in ext
        if named:
            assert value["configName"] is not None, "unnamed cases use the RFC schema"
            schema = ext[message]
        elif message in kaa_rs:
            schema = kaa_rs[message]
        else:
            schema = rfc[message]
        datum = encode(schema, value)
        assert decode(schema, datum) == value, (message, name)
        if named:
            # The extension contract: the named datum is the RFC datum plus the
            # trailing union, and an RFC-schema reader ignores those bytes.
            rfc_value = {k: v for k, v in value.items() if k != "configName"}
            rfc_datum = encode(rfc[message], rfc_value)
            assert datum.startswith(rfc_datum), (message, name)
            assert decode(rfc[message], datum) == rfc_value, (message, name)
        elif message in ext:
            # Unnamed: an extended-schema reader resolving an RFC datum gets null.
            resolved = decode(rfc[message], datum, ext[message])
            assert resolved == dict(value, configName=None), (message, name)
        vectors.append({
            "message": message,
            "name": name,
            "value": to_json(value),
            "hex": datum.hex(),
        })

    out = os.path.join(HERE, "vectors.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(vectors, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {os.path.relpath(out, REPO)}")


if __name__ == "__main__":
    main()
