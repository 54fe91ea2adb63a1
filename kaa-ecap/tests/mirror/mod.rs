//! Serde mirrors of the 16/ECAP records, for Apache Avro's schema-aware serde API
//! (`GenericDatumWriter::write_ser`, `GenericDatumReader::read_deser`) and for
//! serde_json. Shared by `tests/oracle.rs` and `benches/codec.rs`.
//!
//! Struct names are the Avro record names (Apache Avro's deserializer checks them),
//! field names the Avro field names. The string type `S` is `String` for owned use
//! (Apache Avro reads from `impl Read`, so it cannot borrow) and `&str` where serde can
//! borrow (serde_json from a slice). Unions with `null` are `Option`s: Apache Avro's
//! serde writer picks the branch by the value, so `["string","null"]` and
//! `["null","string"]` both work.

use kaa_ecap::{
    ClientCertificateValidationRequest, ClientCertificateValidationResponse,
    ClientCredentialRevokedEvent, ClientUsernamePasswordValidationRequest,
    ClientUsernamePasswordValidationResponse, EndpointTokenRevokedEvent,
    EndpointTokenStatusTransitionRequest, EndpointTokenStatusTransitionResponse,
    EndpointTokenValidationRequest, EndpointTokenValidationResponse,
};
use serde::{Deserialize, Serialize};

macro_rules! to_mirror {
    (string, $v:expr) => {
        $v.to_string()
    };
    (long, $v:expr) => {
        $v
    };
    (int, $v:expr) => {
        $v
    };
    (opt_string, $v:expr) => {
        $v.as_ref().map(|s| s.to_string())
    };
    (string_array, $v:expr) => {
        $v.iter().map(|s| s.to_string()).collect()
    };
}

/// A mirror struct named after the Avro record, and the conversion from our record.
macro_rules! mirror {
    ($mirror:ident, $ty:ident, $record:literal, { $($field:ident: $fty:ty = $kind:ident),+ $(,)? }) => {
        #[doc = concat!("`", $record, "`.")]
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename = $record, rename_all = "camelCase")]
        pub(crate) struct $mirror<S> {
            $(pub(crate) $field: $fty,)+
        }

        impl From<&$ty<'_>> for $mirror<String> {
            fn from(m: &$ty<'_>) -> Self {
                $mirror {
                    $($field: to_mirror!($kind, m.$field),)+
                }
            }
        }
    };
}

mirror!(EndpointTokenValidationRequestMirror, EndpointTokenValidationRequest, "EndpointTokenValidationRequest", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    app_name: S = string,
    token: S = string,
});

mirror!(EndpointTokenValidationResponseMirror, EndpointTokenValidationResponse, "EndpointTokenValidationResponse", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    token_id: Option<S> = opt_string,
    endpoint_id: Option<S> = opt_string,
    status_code: i32 = int,
    reason_phrase: Option<S> = opt_string,
});

mirror!(EndpointTokenStatusTransitionRequestMirror, EndpointTokenStatusTransitionRequest, "EndpointTokenStatusTransitionRequest", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    app_name: S = string,
    token: S = string,
    target_status: S = string,
});

mirror!(EndpointTokenStatusTransitionResponseMirror, EndpointTokenStatusTransitionResponse, "EndpointTokenStatusTransitionResponse", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    status_code: i32 = int,
    reason_phrase: Option<S> = opt_string,
});

mirror!(EndpointTokenRevokedMirror, EndpointTokenRevokedEvent, "EndpointTokenRevokedEvent", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    app_name: S = string,
    endpoint_id: S = string,
    token_ids: Vec<S> = string_array,
    originator_replica_id: S = string,
});

mirror!(ClientUsernamePasswordValidationRequestMirror, ClientUsernamePasswordValidationRequest, "ClientUsernamePasswordValidationRequest", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    username: Option<S> = opt_string,
    password: Option<S> = opt_string,
});

mirror!(ClientUsernamePasswordValidationResponseMirror, ClientUsernamePasswordValidationResponse, "ClientUsernamePasswordValidationResponse", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    credential_id: Option<S> = opt_string,
    client_id: Option<S> = opt_string,
    status_code: i32 = int,
    reason_phrase: Option<S> = opt_string,
});

mirror!(ClientCertificateValidationRequestMirror, ClientCertificateValidationRequest, "ClientCertificateValidationRequest", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    issuer: S = string,
    serial_number: S = string,
});

mirror!(ClientCertificateValidationResponseMirror, ClientCertificateValidationResponse, "ClientCertificateValidationResponse", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    credential_id: Option<S> = opt_string,
    client_id: Option<S> = opt_string,
    status_code: i32 = int,
    reason_phrase: Option<S> = opt_string,
});

mirror!(ClientCredentialRevokedMirror, ClientCredentialRevokedEvent, "ClientCredentialRevokedEvent", {
    correlation_id: S = string,
    timestamp: i64 = long,
    timeout: i64 = long,
    credential_id: S = string,
    originator_replica_id: S = string,
});
