#!/usr/bin/env python3
"""Writes vectors.json: golden Avro datums of the 16/ECAP records, made by Apache Avro.

The schemas are the RFC .avsc files (kaa-ecap/schemas/0016-*.avsc, copies of kaa-rfcs
0016/) and this crate's kaa-rs extension schemas (kaa-ecap/schemas/endpoint-metadata-*.avsc:
the endpoint metadata request and response, not RFC messages), all from this crate's
schemas/.
Run from anywhere: python3 kaa-ecap/tests/golden/generate.py (needs `avro` 1.12.2).

Each vector is {"message", "name", "value", "hex"}:
- `message` is the Avro record name;
- `value` is the record as JSON with the Avro field names; unions are plain values
  (null or the string); arrays are lists in wire order; longs and ints are JSON
  numbers;
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
SCHEMA_DIR = os.path.join(REPO, "kaa-ecap", "schemas")
OUT = os.path.join(HERE, "vectors.json")

SCHEMA_FILES = {
    "EndpointTokenValidationRequest": "0016-endpoint-token-validation-request.avsc",
    "EndpointTokenValidationResponse": "0016-endpoint-token-validation-response.avsc",
    "EndpointTokenStatusTransitionRequest": "0016-endpoint-token-status-transition-request.avsc",
    "EndpointTokenStatusTransitionResponse": "0016-endpoint-token-status-transition-response.avsc",
    "EndpointTokenRevokedEvent": "0016-endpoint-token-revoked.avsc",
    "ClientUsernamePasswordValidationRequest": "0016-client-username-password-validation-request.avsc",
    "ClientUsernamePasswordValidationResponse": "0016-client-username-password-validation-response.avsc",
    "ClientCertificateValidationRequest": "0016-client-certificate-validation-request.avsc",
    "ClientCertificateValidationResponse": "0016-client-certificate-validation-response.avsc",
    "ClientCredentialRevokedEvent": "0016-client-credential-revoked.avsc",
    # kaa-rs extensions, not RFC messages.
    "EndpointMetadataRequest": "endpoint-metadata-request.avsc",
    "EndpointMetadataResponse": "endpoint-metadata-response.avsc",
}

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
LARGE = 64 * 1024


def load_json(message):
    with open(os.path.join(SCHEMA_DIR, SCHEMA_FILES[message]), encoding="utf-8") as f:
        return json.load(f)


def parse(schema_json):
    return avro.schema.parse(json.dumps(schema_json))


def write(schema, value):
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(value, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def read(writer_schema, reader_schema, data):
    decoder = avro.io.BinaryDecoder(io.BytesIO(data))
    return avro.io.DatumReader(writer_schema, reader_schema).read(decoder)


vectors = []


def add(message, name, value):
    schema = parse(load_json(message))
    data = write(schema, value)
    back = read(schema, schema, data)
    assert back == value, f"{message}/{name}: avro read back {back!r}"
    assert list(value) == [f.name for f in schema.fields], f"{message}/{name}: fields"
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


def common(i):
    return {
        "correlationId": uuid(i),
        "timestamp": 1_700_000_000_000 + i,
        "timeout": 5_000,
    }


def strings_replaced(value, make):
    """Every string field (not null ones, not arrays) replaced by make(field)."""
    return {k: (make(k) if isinstance(v, str) else v) for k, v in value.items()}


def standard_cases(message, base, large_field):
    """The cases every record has: typical, no timeout, non-ASCII, empty strings,
    extreme and negative longs, and one 64 KiB string."""
    add(message, "typical", base)
    add(message, "no timeout", {**base, "timeout": 0})
    add(message, "non-ASCII strings", strings_replaced(base, lambda k: NON_ASCII + "-" + k))
    add(message, "empty strings", strings_replaced(base, lambda k: ""))
    add(message, "extreme longs min/max", {**base, "timestamp": I64_MIN, "timeout": I64_MAX})
    add(message, "extreme longs max/min", {**base, "timestamp": I64_MAX, "timeout": I64_MIN})
    add(message, "negative longs", {**base, "timestamp": -1, "timeout": -64})
    add(message, f"64 KiB {large_field}", {**base, large_field: large(large_field)})


# --- Endpoint token validation. ---

token_request = {
    **common(1),
    "appName": "smart-kettle",
    "token": "kettle-7f3a9c2e-token",
}
standard_cases("EndpointTokenValidationRequest", token_request, "token")


def response_cases(message, id_fields, base):
    """A response: the standard cases, plus the union branches both ways and the
    statusCode extremes."""
    standard_cases(message, base, "reasonPhrase")
    nulls = {k: None for k in id_fields}
    add(message, "not found", {**base, **nulls, "statusCode": 404, "reasonPhrase": "Not found"})
    add(message, "all nulls", {**base, **nulls, "statusCode": 0, "reasonPhrase": None})
    add(message, "empty strings not null", {**base, **{k: "" for k in id_fields}, "reasonPhrase": ""})
    add(message, "first ID only", {**base, id_fields[1]: None, "reasonPhrase": None})
    add(message, "statusCode int max", {**base, "statusCode": I32_MAX})
    add(message, "statusCode int min", {**base, "statusCode": I32_MIN})
    add(message, "statusCode varint boundaries", {**base, "statusCode": -65, "timestamp": 63, "timeout": 64})


token_response = {
    **common(2),
    "tokenId": uuid(100),
    "endpointId": uuid(200),
    "statusCode": 200,
    "reasonPhrase": "OK",
}
response_cases("EndpointTokenValidationResponse", ["tokenId", "endpointId"], token_response)

# --- Endpoint token status transition. ---

transition_request = {
    **common(3),
    "appName": "smart-kettle",
    "token": "kettle-7f3a9c2e-token",
    "targetStatus": "suspended",
}
standard_cases("EndpointTokenStatusTransitionRequest", transition_request, "token")

transition_response = {**common(4), "statusCode": 204, "reasonPhrase": None}
standard_cases(
    "EndpointTokenStatusTransitionResponse",
    {**transition_response, "reasonPhrase": "No Content"},
    "reasonPhrase",
)
add("EndpointTokenStatusTransitionResponse", "no reason phrase", transition_response)
add(
    "EndpointTokenStatusTransitionResponse",
    "rejected",
    {**transition_response, "statusCode": 400, "reasonPhrase": "Unknown target status"},
)
add("EndpointTokenStatusTransitionResponse", "empty reason phrase", {**transition_response, "reasonPhrase": ""})
add("EndpointTokenStatusTransitionResponse", "statusCode int extremes", {**transition_response, "statusCode": I32_MIN})

# --- Endpoint token revoked. ---

revoked = {
    **common(5),
    "appName": "smart-kettle",
    "endpointId": uuid(200),
    "tokenIds": [uuid(100)],
    "originatorReplicaId": "epts-replica-1",
}
standard_cases("EndpointTokenRevokedEvent", revoked, "originatorReplicaId")
add("EndpointTokenRevokedEvent", "no tokens", {**revoked, "tokenIds": []})
add(
    "EndpointTokenRevokedEvent",
    "several tokens in wire order with a duplicate",
    {**revoked, "tokenIds": [uuid(9), uuid(3), uuid(7), uuid(3)]},
)
add(
    "EndpointTokenRevokedEvent",
    "non-ASCII and empty token IDs",
    {**revoked, "tokenIds": [NON_ASCII, "", "😀"]},
)
add("EndpointTokenRevokedEvent", "100 tokens", {**revoked, "tokenIds": [uuid(i) for i in range(100)]})
add("EndpointTokenRevokedEvent", "64 KiB token ID", {**revoked, "tokenIds": ["t-1", large("token")]})

# --- Client username and password validation. ---

password_request = {**common(6), "username": "kettle-gateway", "password": "correct horse battery staple"}
standard_cases("ClientUsernamePasswordValidationRequest", password_request, "password")
add("ClientUsernamePasswordValidationRequest", "username only", {**password_request, "password": None})
add("ClientUsernamePasswordValidationRequest", "password only", {**password_request, "username": None})
add("ClientUsernamePasswordValidationRequest", "no credentials", {**password_request, "username": None, "password": None})

password_response = {
    **common(7),
    "credentialId": uuid(300),
    "clientId": "kettle-gateway-1",
    "statusCode": 200,
    "reasonPhrase": None,
}
response_cases("ClientUsernamePasswordValidationResponse", ["credentialId", "clientId"], password_response)

# --- Client certificate validation. ---

certificate_request = {
    **common(8),
    "issuer": "CN=Kaa Devices CA,O=Example Org,C=US",
    "serialNumber": "340282366920938463463374607431768211455",
}
standard_cases("ClientCertificateValidationRequest", certificate_request, "issuer")

certificate_response = {
    **common(9),
    "credentialId": uuid(400),
    "clientId": None,
    "statusCode": 200,
    "reasonPhrase": "OK",
}
response_cases("ClientCertificateValidationResponse", ["credentialId", "clientId"], certificate_response)

# --- Client credential revoked. ---

credential_revoked = {**common(10), "credentialId": uuid(300), "originatorReplicaId": "epts-replica-2"}
standard_cases("ClientCredentialRevokedEvent", credential_revoked, "credentialId")

# --- kaa-rs extensions: the endpoint metadata request and response (not RFC messages). ---

metadata_request = {**common(11), "endpointIds": ["kettle-1", uuid(200)]}
add("EndpointMetadataRequest", "typical", metadata_request)
add("EndpointMetadataRequest", "no timeout", {**metadata_request, "timeout": 0})
add("EndpointMetadataRequest", "non-ASCII strings", {**metadata_request, "correlationId": NON_ASCII, "endpointIds": [NON_ASCII, "😀"]})
add("EndpointMetadataRequest", "empty strings", {**metadata_request, "correlationId": "", "endpointIds": [""]})
add("EndpointMetadataRequest", "extreme longs min/max", {**metadata_request, "timestamp": I64_MIN, "timeout": I64_MAX})
add("EndpointMetadataRequest", "negative longs", {**metadata_request, "timestamp": -1, "timeout": -64})
add("EndpointMetadataRequest", "no endpoints", {**metadata_request, "endpointIds": []})
add(
    "EndpointMetadataRequest",
    "1000 endpoints in wire order with a duplicate",
    {**metadata_request, "endpointIds": [uuid(i) for i in range(999)] + [uuid(3)]},
)
add("EndpointMetadataRequest", "64 KiB endpoint ID", {**metadata_request, "endpointIds": ["kettle-1", large("endpoint")]})


def found(endpoint_id, app, metadata):
    return {"endpointId": endpoint_id, "statusCode": 200, "appVersionName": app, "metadata": metadata, "reasonPhrase": None}


def refused(endpoint_id, status, reason):
    return {"endpointId": endpoint_id, "statusCode": status, "appVersionName": None, "metadata": None, "reasonPhrase": reason}


metadata_response = {
    **common(12),
    "endpoints": [
        found("kettle-1", "smartKettleV1", '{"room":"kitchen","floor":2}'),
        refused(uuid(200), 404, "not registered"),
    ],
    "statusCode": 200,
    "reasonPhrase": None,
}
add("EndpointMetadataResponse", "typical", metadata_response)
add("EndpointMetadataResponse", "no timeout", {**metadata_response, "timeout": 0})
add(
    "EndpointMetadataResponse",
    "non-ASCII strings",
    {
        **metadata_response,
        "correlationId": NON_ASCII,
        "endpoints": [found(NON_ASCII, "версія-1", '{"кімната":"кухня","🌡":21.5}')],
        "reasonPhrase": NON_ASCII,
    },
)
add(
    "EndpointMetadataResponse",
    "empty strings not null",
    {
        **metadata_response,
        "correlationId": "",
        "endpoints": [{"endpointId": "", "statusCode": 200, "appVersionName": "", "metadata": "", "reasonPhrase": ""}],
        "reasonPhrase": "",
    },
)
add("EndpointMetadataResponse", "extreme longs min/max", {**metadata_response, "timestamp": I64_MIN, "timeout": I64_MAX})
add("EndpointMetadataResponse", "no endpoints", {**metadata_response, "endpoints": []})
add(
    "EndpointMetadataResponse",
    "every entry status",
    {
        **metadata_response,
        "endpoints": [
            found("a", "v1", "{}"),
            refused("b.c", 400, "endpoint ID \"b.c\" contains '.'"),
            refused("d", 404, "not registered"),
            {**refused("e", 413, "metadata of 2000000 bytes is larger than an answer may be"), "appVersionName": "v2"},
        ],
    },
)
add(
    "EndpointMetadataResponse",
    "partial",
    {
        **metadata_response,
        "endpoints": [found(uuid(i), "v1", "{}") for i in range(100)],
        "statusCode": 206,
        "reasonPhrase": "the first 100 of 1000 endpoints fit in one answer: ask again for the rest",
    },
)
add(
    "EndpointMetadataResponse",
    "refused request",
    {**metadata_response, "endpoints": [], "statusCode": 400, "reasonPhrase": "at most 1000 endpoint IDs per request"},
)
add("EndpointMetadataResponse", "statusCode int extremes", {**metadata_response, "statusCode": I32_MIN, "endpoints": [{**refused("x", I32_MAX, "r")}]})
add(
    "EndpointMetadataResponse",
    "64 KiB metadata",
    {**metadata_response, "endpoints": [found("kettle-1", "v1", '{"blob":"' + large("metadata") + '"}')]},
)

# --- Schema evolution, written with other versions of the schemas. ---


def find(message, name):
    return next(v["value"] for v in vectors if v["message"] == message and v["name"] == name)


# Older response writers, before the trailing `reasonPhrase` (default null).
for message in SCHEMA_FILES:
    older = load_json(message)
    last = older["fields"][-1]
    if last["name"] != "reasonPhrase":
        continue
    assert "default" in last and last["default"] is None, message
    older["fields"] = older["fields"][:-1]
    add_evolved(
        message,
        "older writer without reasonPhrase",
        older,
        {k: v for k, v in find(message, "typical").items() if k != "reasonPhrase"},
    )

# Newer writers that appended fields with defaults: the extra bytes are ignored.
for message in SCHEMA_FILES:
    newer = load_json(message)
    newer["fields"] = newer["fields"] + [
        {"name": "futureNote", "type": "string", "default": ""},
        {"name": "futureCount", "type": "long", "default": 0},
    ]
    add_evolved(
        message,
        "newer writer with appended fields",
        newer,
        {**find(message, "non-ASCII strings"), "futureNote": "from the future ✨", "futureCount": -300},
    )

with open(OUT, "w", encoding="utf-8") as f:
    json.dump(vectors, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(f"wrote {len(vectors)} vectors to {os.path.relpath(OUT, REPO)}", file=sys.stderr)
