//! Avro binary codec of the 16/ECAP records: [`Encode`], [`Decode`], `into_owned` and
//! [`CommonFields`](kaa_ism::common::CommonFields) for every record.
//!
//! Field order and union branch order follow the RFC schemas (`schemas/0016-*.avsc`)
//! exactly; see the crate docs for the evolution policy.

use std::borrow::Cow;

use bytes::BufMut;
use kaa_ism::avro::{
    Decode, DecodeError, Encode, Reader, array_len, long_len, optional_len, put_array, put_int,
    put_long, put_optional, put_string, string_len, to_static,
};

use crate::{
    ClientCertificateValidationRequest, ClientCertificateValidationResponse,
    ClientCredentialRevokedEvent, ClientUsernamePasswordValidationRequest,
    ClientUsernamePasswordValidationResponse, EndpointTokenRevokedEvent,
    EndpointTokenStatusTransitionRequest, EndpointTokenStatusTransitionResponse,
    EndpointTokenValidationRequest, EndpointTokenValidationResponse,
};

// Union branch order of the optional fields, as in the schemas.
/// `["string","null"]`: the optional IDs, `username` and `password`.
const NULL_SECOND: bool = false;
/// `["null","string"]`: `reasonPhrase`.
const NULL_FIRST: bool = true;

fn string_array_len(items: &[Cow<'_, str>]) -> usize {
    array_len(items.len(), items.iter().map(|s| string_len(s)).sum())
}

// Per field kind: encoded size, writer, reader and conversion to owned, so that every
// record shares one definition.
//
// - `string`, `long`, `int`: the Avro primitives;
// - `opt_string`: a `["string","null"]` union;
// - `trailing_reason`: `reasonPhrase`, a `["null","string"]` union with default
//   `null`; only ever the last field of a record, so a datum that ends before it
//   (an older writer's) decodes with the default;
// - `string_array`: an array of strings.
macro_rules! field_len {
    (string, $v:expr) => {
        string_len(&$v)
    };
    (long, $v:expr) => {
        long_len($v)
    };
    (int, $v:expr) => {
        long_len(i64::from($v))
    };
    (opt_string, $v:expr) => {
        optional_len($v.as_deref(), string_len)
    };
    (trailing_reason, $v:expr) => {
        optional_len($v.as_deref(), string_len)
    };
    (string_array, $v:expr) => {
        string_array_len(&$v)
    };
}

macro_rules! put_field {
    (string, $buf:expr, $v:expr) => {
        put_string($buf, &$v)
    };
    (long, $buf:expr, $v:expr) => {
        put_long($buf, $v)
    };
    (int, $buf:expr, $v:expr) => {
        put_int($buf, $v)
    };
    (opt_string, $buf:expr, $v:expr) => {
        put_optional($buf, $v.as_deref(), NULL_SECOND, put_string)
    };
    // Always written, as Apache Avro writes every field of the RFC schema.
    (trailing_reason, $buf:expr, $v:expr) => {
        put_optional($buf, $v.as_deref(), NULL_FIRST, put_string)
    };
    (string_array, $buf:expr, $v:expr) => {
        put_array($buf, $v.iter(), |b, s| put_string(b, s))
    };
}

macro_rules! read_field {
    (string, $r:expr, $name:literal) => {
        $r.cow_string($name)?
    };
    (long, $r:expr, $name:literal) => {
        $r.long($name)?
    };
    (int, $r:expr, $name:literal) => {
        $r.int($name)?
    };
    (opt_string, $r:expr, $name:literal) => {
        $r.optional_cow_string($name, NULL_SECOND)?
    };
    // Trailing field with a default: absent in datums of writers that predate it.
    (trailing_reason, $r:expr, $name:literal) => {
        if $r.is_empty() {
            None
        } else {
            $r.optional_cow_string($name, NULL_FIRST)?
        }
    };
    // An element takes at least one byte (an empty string).
    (string_array, $r:expr, $name:literal) => {
        $r.array($name, 1, |r| r.cow_string($name))?
    };
}

macro_rules! owned_field {
    (string, $v:expr) => {
        to_static($v)
    };
    (long, $v:expr) => {
        $v
    };
    (int, $v:expr) => {
        $v
    };
    (opt_string, $v:expr) => {
        $v.map(to_static)
    };
    (trailing_reason, $v:expr) => {
        $v.map(to_static)
    };
    (string_array, $v:expr) => {
        $v.into_iter().map(to_static).collect()
    };
}

/// The codec of one record: its fields in schema order, each with its kind and Avro
/// name.
macro_rules! record {
    ($ty:ident, $record:literal, [$($field:ident: $kind:ident = $name:literal),+ $(,)?]) => {
        impl Encode for $ty<'_> {
            fn encoded_len(&self) -> usize {
                0 $(+ field_len!($kind, self.$field))+
            }

            fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
                $(put_field!($kind, buf, self.$field);)+
            }
        }

        impl<'a> Decode<'a> for $ty<'a> {
            #[doc = concat!("Decodes a `", $record, "` datum, borrowing every string.")]
            ///
            /// Bytes after the last field are ignored (fields a newer writer appended).
            fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
                let mut r = Reader::new(input, $record);
                // Fields are read in schema order: struct expressions evaluate in the
                // order they are written.
                Ok($ty {
                    $($field: read_field!($kind, r, $name),)+
                })
            }
        }

        impl $ty<'_> {
            /// Copies every borrowed string, detaching the message from the input
            /// buffer.
            pub fn into_owned(self) -> $ty<'static> {
                $ty {
                    $($field: owned_field!($kind, self.$field),)+
                }
            }
        }

        kaa_ism::impl_common_fields!($ty);
    };
}

record!(EndpointTokenValidationRequest, "EndpointTokenValidationRequest", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    app_name: string = "appName",
    token: string = "token",
]);

record!(EndpointTokenValidationResponse, "EndpointTokenValidationResponse", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    token_id: opt_string = "tokenId",
    endpoint_id: opt_string = "endpointId",
    status_code: int = "statusCode",
    reason_phrase: trailing_reason = "reasonPhrase",
]);

record!(EndpointTokenStatusTransitionRequest, "EndpointTokenStatusTransitionRequest", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    app_name: string = "appName",
    token: string = "token",
    target_status: string = "targetStatus",
]);

record!(EndpointTokenStatusTransitionResponse, "EndpointTokenStatusTransitionResponse", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    status_code: int = "statusCode",
    reason_phrase: trailing_reason = "reasonPhrase",
]);

record!(EndpointTokenRevokedEvent, "EndpointTokenRevokedEvent", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    app_name: string = "appName",
    endpoint_id: string = "endpointId",
    token_ids: string_array = "tokenIds",
    originator_replica_id: string = "originatorReplicaId",
]);

record!(ClientUsernamePasswordValidationRequest, "ClientUsernamePasswordValidationRequest", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    username: opt_string = "username",
    password: opt_string = "password",
]);

record!(ClientUsernamePasswordValidationResponse, "ClientUsernamePasswordValidationResponse", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    credential_id: opt_string = "credentialId",
    client_id: opt_string = "clientId",
    status_code: int = "statusCode",
    reason_phrase: trailing_reason = "reasonPhrase",
]);

record!(ClientCertificateValidationRequest, "ClientCertificateValidationRequest", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    issuer: string = "issuer",
    serial_number: string = "serialNumber",
]);

record!(ClientCertificateValidationResponse, "ClientCertificateValidationResponse", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    credential_id: opt_string = "credentialId",
    client_id: opt_string = "clientId",
    status_code: int = "statusCode",
    reason_phrase: trailing_reason = "reasonPhrase",
]);

record!(ClientCredentialRevokedEvent, "ClientCredentialRevokedEvent", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    credential_id: string = "credentialId",
    originator_replica_id: string = "originatorReplicaId",
]);

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_ism::UnixMillis;
    use kaa_ism::avro::DecodeErrorKind;
    use kaa_ism::common::CommonFields;

    #[test]
    fn field_and_branch_order_is_the_schema_order() {
        let request = EndpointTokenValidationRequest {
            correlation_id: "c".into(),
            timestamp: 1,
            timeout: 2,
            app_name: "a".into(),
            token: "t".into(),
        };
        assert_eq!(request.to_vec(), [2, b'c', 2, 4, 2, b'a', 2, b't']);
        // tokenId/endpointId are ["string","null"] (index 0 = string), reasonPhrase
        // is ["null","string"] (index 0 = null).
        let found = EndpointTokenValidationResponse {
            token_id: Some("i".into()),
            endpoint_id: Some("e".into()),
            status_code: 200,
            ..Default::default()
        };
        assert_eq!(
            found.to_vec(),
            [0, 0, 0, 0, 2, b'i', 0, 2, b'e', 0x90, 0x03, 0]
        );
        let not_found = EndpointTokenValidationResponse {
            status_code: 404,
            reason_phrase: Some("r".into()),
            ..Default::default()
        };
        assert_eq!(not_found.to_vec(), [0, 0, 0, 2, 2, 0xa8, 0x06, 2, 2, b'r']);
        let revoked = EndpointTokenRevokedEvent {
            token_ids: vec!["x".into(), "y".into()],
            originator_replica_id: "r".into(),
            ..Default::default()
        };
        assert_eq!(
            revoked.to_vec(),
            [0, 0, 0, 0, 0, 4, 2, b'x', 2, b'y', 0, 2, b'r']
        );
        let no_credentials = ClientUsernamePasswordValidationRequest::default();
        assert_eq!(no_credentials.to_vec(), [0, 0, 0, 2, 2]);
    }

    #[test]
    fn none_and_empty_are_different() {
        let empty = ClientUsernamePasswordValidationRequest {
            username: Some("".into()),
            password: Some("".into()),
            ..Default::default()
        };
        let none = ClientUsernamePasswordValidationRequest::default();
        assert_ne!(empty.to_vec(), none.to_vec());
        assert_eq!(
            ClientUsernamePasswordValidationRequest::decode(&empty.to_vec()).unwrap(),
            empty
        );
        assert_eq!(
            ClientUsernamePasswordValidationRequest::decode(&none.to_vec()).unwrap(),
            none
        );
    }

    #[test]
    fn a_response_without_reason_phrase_takes_the_default() {
        let response = ClientCertificateValidationResponse {
            correlation_id: "c".into(),
            credential_id: Some("cred".into()),
            client_id: None,
            status_code: 200,
            reason_phrase: Some("OK".into()),
            ..Default::default()
        };
        let datum = response.to_vec();
        // Cut right before reasonPhrase: the union index and the string.
        let older = &datum[..datum.len() - 1 - string_len("OK")];
        let decoded = ClientCertificateValidationResponse::decode(older).unwrap();
        assert_eq!(
            decoded,
            ClientCertificateValidationResponse {
                reason_phrase: None,
                ..response.clone()
            }
        );
        // One byte fewer cuts statusCode (200 takes two bytes): an error.
        let e = ClientCertificateValidationResponse::decode(&older[..older.len() - 1]).unwrap_err();
        assert_eq!(e.field, "statusCode");
        assert_eq!(e.kind, DecodeErrorKind::UnexpectedEnd);
    }

    #[test]
    fn bad_union_indexes_name_the_field() {
        // reasonPhrase with branch index 2 of a 2-branch union.
        let e = EndpointTokenStatusTransitionResponse::decode(&[0, 0, 0, 0, 4]).unwrap_err();
        assert_eq!(
            (e.record, e.field),
            ("EndpointTokenStatusTransitionResponse", "reasonPhrase")
        );
        assert_eq!(
            e.kind,
            DecodeErrorKind::UnionIndex {
                index: 2,
                branches: 2
            }
        );
        // username with branch index -1.
        let e = ClientUsernamePasswordValidationRequest::decode(&[0, 0, 0, 1]).unwrap_err();
        assert_eq!(e.field, "username");
        // A statusCode that does not fit an int.
        let mut datum = vec![0, 0, 0, 2, 2];
        put_long(&mut datum, i64::from(i32::MAX) + 1);
        datum.push(0);
        let e = EndpointTokenValidationResponse::decode(&datum).unwrap_err();
        assert_eq!(e.field, "statusCode");
        assert!(matches!(e.kind, DecodeErrorKind::IntOutOfRange(_)));
    }

    #[test]
    fn into_owned_detaches_from_the_input() {
        let event = EndpointTokenRevokedEvent {
            correlation_id: "c".into(),
            app_name: "app".into(),
            endpoint_id: "ep".into(),
            token_ids: vec!["t1".into(), "t2".into()],
            originator_replica_id: "epts-1".into(),
            ..Default::default()
        };
        let owned = {
            let datum = event.to_vec();
            let decoded = EndpointTokenRevokedEvent::decode(&datum).unwrap();
            assert!(matches!(decoded.token_ids[1], Cow::Borrowed(_)));
            decoded.into_owned()
        };
        assert_eq!(owned, event);
        assert!(matches!(owned.token_ids[0], Cow::Owned(_)));

        let response = ClientUsernamePasswordValidationResponse {
            credential_id: Some("cred".into()),
            reason_phrase: Some("OK".into()),
            ..Default::default()
        };
        let owned = {
            let datum = response.to_vec();
            ClientUsernamePasswordValidationResponse::decode(&datum)
                .unwrap()
                .into_owned()
        };
        assert_eq!(owned, response);
        assert!(matches!(owned.credential_id, Some(Cow::Owned(_))));
    }

    #[test]
    fn common_fields() {
        let event = ClientCredentialRevokedEvent {
            correlation_id: "c-1".into(),
            timestamp: 1_000,
            timeout: 500,
            ..Default::default()
        };
        assert_eq!(event.correlation_id(), "c-1");
        assert_eq!(event.expires_at(), Some(UnixMillis(1_500)));
        assert!(!event.is_expired(UnixMillis(1_500)));
        assert!(event.is_expired(UnixMillis(1_501)));
        let never = ClientCertificateValidationRequest {
            timestamp: 1_000,
            timeout: 0,
            ..Default::default()
        };
        assert!(!never.is_expired(UnixMillis(i64::MAX)));
    }
}
