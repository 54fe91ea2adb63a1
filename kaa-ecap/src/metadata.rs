//! Endpoint metadata lookup: a **kaa-rs extension** carried on 16/ECAP subjects, not
//! an RFC message.
//!
//! Services other than the endpoint register need an endpoint's app version and
//! metadata (ECR selects configuration groups and layers by them) without going
//! through the register's REST API. They ask the register over the bus:
//!
//! - [`EndpointMetadataRequest`] goes to
//!   `kaa.v1.service.{register}.ecap.ep-metadata-request`
//!   ([`metadata_request_subject`]; the register's replicas share it in a queue group
//!   named after the instance), with a `replyTo`, recommended
//!   `kaa.v1.replica.{requester-replica}.ecap.ep-metadata-response`
//!   ([`metadata_response_subject`]), naming up to [`MAX_ENDPOINT_IDS`] endpoint IDs.
//! - The register answers with one [`EndpointMetadataResponse`]: for each ID asked
//!   about, in request order, an [`EndpointMetadata`] with its own `statusCode`: 200
//!   with the app version and the metadata (a JSON object, as text), 404 when it is
//!   not registered, 400 when the ID is not a valid endpoint ID, 413 (app version
//!   only) when its metadata alone is larger than an answer may be. The response's
//!   own `statusCode` is 200 when every ID is listed, [`PARTIAL`] (206) when only
//!   the first ones fit in one message (the requester asks again for the rest:
//!   [`EndpointMetadataResponse::fit`] is the rule the register applies), 400 for a
//!   request it refuses (more than [`MAX_ENDPOINT_IDS`] IDs, a datum that does not
//!   decode), 500 when its store fails; those list no endpoints.
//!
//! The schemas are `kaa-ecap/schemas/endpoint-metadata-request.avsc` and
//! `endpoint-metadata-response.avsc` (namespace `kaa_rs.ecap.v1`); the codec is
//! byte-exact with Apache Avro for them (golden vectors), with the crate's wire
//! policy: optional strings are `["null","string"]` unions, arrays are written as one
//! block and read in any legal block form, every length and count is checked against
//! the remaining input before anything is allocated, and nothing panics on input.
//! The response's last field, `reasonPhrase`, has a default: a datum that ends before
//! it decodes with `None`. A register that does not know this extension does not
//! answer: the requester's request times out.
//!
//! ```
//! use kaa_ecap::metadata::{
//!     EndpointMetadata, EndpointMetadataRequest, EndpointMetadataResponse,
//!     metadata_request_subject,
//! };
//! use kaa_ism::avro::{Decode, Encode};
//!
//! // ECR replica ecr-1 asks the register "epr" about two endpoints.
//! let request = EndpointMetadataRequest {
//!     correlation_id: "c-1".into(),
//!     timestamp: 1_700_000_000_000,
//!     timeout: 5_000,
//!     endpoint_ids: vec!["kettle-1".into(), "kettle-9".into()],
//! };
//! assert_eq!(
//!     metadata_request_subject("epr")?.to_string(),
//!     "kaa.v1.service.epr.ecap.ep-metadata-request"
//! );
//! let datum = request.to_vec();
//! assert_eq!(EndpointMetadataRequest::decode(&datum)?, request);
//!
//! // The register answers: one found, one not registered.
//! let mut response = EndpointMetadataResponse {
//!     correlation_id: request.correlation_id.clone(),
//!     timestamp: 1_700_000_000_004,
//!     timeout: 5_000,
//!     endpoints: vec![
//!         EndpointMetadata::found("kettle-1", "smartKettleV1", r#"{"room":"kitchen"}"#),
//!         EndpointMetadata::refused("kettle-9", 404, "not registered"),
//!     ],
//!     status_code: 200,
//!     reason_phrase: None,
//! };
//! response.fit(1024 * 1024); // the bus's limit: everything fits
//! let datum = response.to_vec();
//! let decoded = EndpointMetadataResponse::decode(&datum)?;
//! assert_eq!(decoded, response);
//! assert!(decoded.is_success());
//! assert_eq!(decoded.endpoints[0].metadata.as_deref(), Some(r#"{"room":"kitchen"}"#));
//! assert_eq!(decoded.endpoints[1].status_code, 404);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;

use bytes::BufMut;
use kaa_ism::avro::{
    Decode, DecodeError, Encode, Reader, array_len, long_len, optional_len, put_array, put_int,
    put_long, put_optional, put_string, string_len, to_static,
};
use kaa_ism::subject::{ReplicaSubject, ServiceSubject, SubjectError, SubjectFilter};

use crate::subject::PROTOCOL;

/// The message type of an [`EndpointMetadataRequest`].
pub const EP_METADATA_REQUEST: &str = "ep-metadata-request";
/// The message type of an [`EndpointMetadataResponse`] on the recommended `replyTo`.
pub const EP_METADATA_RESPONSE: &str = "ep-metadata-response";

/// The most endpoint IDs one request may name; the register refuses more with 400.
pub const MAX_ENDPOINT_IDS: usize = 1000;

/// The response status of an answer that lists only the first endpoints asked about
/// (the rest did not fit in one message).
pub const PARTIAL: i32 = 206;

/// The Avro record names.
const REQUEST_RECORD: &str = "EndpointMetadataRequest";
const RESPONSE_RECORD: &str = "EndpointMetadataResponse";
const ENTRY_RECORD: &str = "EndpointMetadata";

/// Every optional string of these records is a `["null","string"]` union.
const NULL_FIRST: bool = true;

/// `kaa.v1.service.{register}.ecap.ep-metadata-request`: where a service asks the
/// register (subscribe in a queue group named `register`).
pub fn metadata_request_subject(register: &str) -> Result<ServiceSubject<'_>, SubjectError> {
    ServiceSubject::new(register, PROTOCOL, EP_METADATA_REQUEST)
}

/// `kaa.v1.replica.{requester_replica}.ecap.ep-metadata-response`: the recommended
/// `replyTo` of a requester replica (the register answers on whatever `replyTo` the
/// request had).
pub fn metadata_response_subject(
    requester_replica: &str,
) -> Result<ReplicaSubject<'_>, SubjectError> {
    ReplicaSubject::new(requester_replica, PROTOCOL, EP_METADATA_RESPONSE)
}

/// The filter a register instance subscribes to for metadata requests.
pub fn metadata_request_filter(register: &str) -> Result<SubjectFilter, SubjectError> {
    SubjectFilter::parse(&metadata_request_subject(register)?.to_string())
}

/// kaa-rs extension (not in 16/ECAP): asks the register about endpoints. Avro
/// record `kaa_rs.ecap.v1.EndpointMetadataRequest`
/// (`schemas/endpoint-metadata-request.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointMetadataRequest<'a> {
    /// `correlationId`; the response carries the same one.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `endpointIds`: the endpoints asked about (at most [`MAX_ENDPOINT_IDS`] for the
    /// register to answer), in wire order, duplicates kept.
    pub endpoint_ids: Vec<Cow<'a, str>>,
}

/// What the register knows of one endpoint asked about: Avro record
/// `kaa_rs.ecap.v1.EndpointMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointMetadata<'a> {
    /// `endpointId`: as asked.
    pub endpoint_id: Cow<'a, str>,
    /// `statusCode`: 200 found, 400 not a valid endpoint ID, 404 not registered, 413
    /// metadata larger than an answer may be.
    pub status_code: i32,
    /// `appVersionName`: the endpoint's app version; `None` unless found.
    pub app_version_name: Option<Cow<'a, str>>,
    /// `metadata`: the endpoint's metadata, a JSON object as text; `None` unless
    /// `status_code` is 200.
    pub metadata: Option<Cow<'a, str>>,
    /// `reasonPhrase`: why it is not found or not answered.
    pub reason_phrase: Option<Cow<'a, str>>,
}

/// kaa-rs extension (not in 16/ECAP): the register's answer to an
/// [`EndpointMetadataRequest`]. Avro record `kaa_rs.ecap.v1.EndpointMetadataResponse`
/// (`schemas/endpoint-metadata-response.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointMetadataResponse<'a> {
    /// `correlationId`: the request's.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `endpoints`: the endpoints asked about, in request order (all of them, or the
    /// first ones when `status_code` is [`PARTIAL`]).
    pub endpoints: Vec<EndpointMetadata<'a>>,
    /// `statusCode`: 200, [`PARTIAL`] (206), 400 or 500 (see the module docs).
    pub status_code: i32,
    /// `reasonPhrase` (default `null`): a human-readable status reason.
    pub reason_phrase: Option<Cow<'a, str>>,
}

impl<'a> EndpointMetadata<'a> {
    /// A found endpoint (200) with its app version and metadata (JSON text).
    pub fn found(
        endpoint_id: impl Into<Cow<'a, str>>,
        app_version_name: impl Into<Cow<'a, str>>,
        metadata: impl Into<Cow<'a, str>>,
    ) -> Self {
        Self {
            endpoint_id: endpoint_id.into(),
            status_code: 200,
            app_version_name: Some(app_version_name.into()),
            metadata: Some(metadata.into()),
            reason_phrase: None,
        }
    }

    /// An endpoint not answered with its metadata: `status_code` (400, 404 or 413)
    /// and why.
    pub fn refused(
        endpoint_id: impl Into<Cow<'a, str>>,
        status_code: i32,
        reason: impl Into<Cow<'a, str>>,
    ) -> Self {
        Self {
            endpoint_id: endpoint_id.into(),
            status_code,
            app_version_name: None,
            metadata: None,
            reason_phrase: Some(reason.into()),
        }
    }

    /// True when `statusCode` is 200 (app version and metadata present).
    pub const fn is_found(&self) -> bool {
        self.status_code == 200
    }

    /// The bytes this entry takes in a response.
    pub fn encoded_len(&self) -> usize {
        string_len(&self.endpoint_id)
            + long_len(i64::from(self.status_code))
            + optional_len(self.app_version_name.as_deref(), string_len)
            + optional_len(self.metadata.as_deref(), string_len)
            + optional_len(self.reason_phrase.as_deref(), string_len)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.endpoint_id);
        put_int(buf, self.status_code);
        put_optional(
            buf,
            self.app_version_name.as_deref(),
            NULL_FIRST,
            put_string,
        );
        put_optional(buf, self.metadata.as_deref(), NULL_FIRST, put_string);
        put_optional(buf, self.reason_phrase.as_deref(), NULL_FIRST, put_string);
    }

    /// Copies every borrowed string.
    pub fn into_owned(self) -> EndpointMetadata<'static> {
        EndpointMetadata {
            endpoint_id: to_static(self.endpoint_id),
            status_code: self.status_code,
            app_version_name: self.app_version_name.map(to_static),
            metadata: self.metadata.map(to_static),
            reason_phrase: self.reason_phrase.map(to_static),
        }
    }
}

impl Encode for EndpointMetadataRequest<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + array_len(
                self.endpoint_ids.len(),
                self.endpoint_ids.iter().map(|s| string_len(s)).sum(),
            )
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_array(buf, &self.endpoint_ids, |b, s| put_string(b, s));
    }
}

impl<'a> Decode<'a> for EndpointMetadataRequest<'a> {
    /// Decodes an `EndpointMetadataRequest` datum, borrowing every string. Memory is
    /// bounded by the datum (an ID takes at least one byte); the count limit
    /// ([`MAX_ENDPOINT_IDS`]) is the register's to apply, so that it can answer the
    /// request. Bytes after `endpointIds` are ignored.
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, REQUEST_RECORD);
        Ok(EndpointMetadataRequest {
            correlation_id: r.cow_string("correlationId")?,
            timestamp: r.long("timestamp")?,
            timeout: r.long("timeout")?,
            // An ID takes at least one byte (an empty string).
            endpoint_ids: r.array("endpointIds", 1, |r| r.cow_string("endpointIds"))?,
        })
    }
}

impl EndpointMetadataRequest<'_> {
    /// Copies every borrowed string, detaching the request from the input buffer.
    pub fn into_owned(self) -> EndpointMetadataRequest<'static> {
        EndpointMetadataRequest {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            endpoint_ids: self.endpoint_ids.into_iter().map(to_static).collect(),
        }
    }

    /// The `correlationId` of a datum that may not decode as a whole (the first
    /// field of every 3/ISM message), so that a refusal can be answered; `None` when
    /// not even that decodes.
    pub fn correlation_id_of(datum: &[u8]) -> Option<&str> {
        Reader::new(datum, REQUEST_RECORD)
            .string("correlationId")
            .ok()
    }
}

/// Reads one `EndpointMetadata` record (errors name it, e.g.
/// `EndpointMetadata.metadata: …`).
fn read_entry<'a>(r: &mut Reader<'a>) -> Result<EndpointMetadata<'a>, DecodeError> {
    r.set_record(ENTRY_RECORD);
    let entry = EndpointMetadata {
        endpoint_id: r.cow_string("endpointId")?,
        status_code: r.int("statusCode")?,
        app_version_name: r.optional_cow_string("appVersionName", NULL_FIRST)?,
        metadata: r.optional_cow_string("metadata", NULL_FIRST)?,
        reason_phrase: r.optional_cow_string("reasonPhrase", NULL_FIRST)?,
    };
    r.set_record(RESPONSE_RECORD);
    Ok(entry)
}

impl Encode for EndpointMetadataResponse<'_> {
    fn encoded_len(&self) -> usize {
        self.head_len()
            + array_len(
                self.endpoints.len(),
                self.endpoints
                    .iter()
                    .map(EndpointMetadata::encoded_len)
                    .sum(),
            )
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_array(buf, &self.endpoints, |b, e| e.encode(b));
        put_int(buf, self.status_code);
        put_optional(buf, self.reason_phrase.as_deref(), NULL_FIRST, put_string);
    }
}

impl<'a> Decode<'a> for EndpointMetadataResponse<'a> {
    /// Decodes an `EndpointMetadataResponse` datum, borrowing every string. A datum
    /// that ends right before `reasonPhrase` (an older writer's) decodes with `None`;
    /// bytes after it are ignored. Memory is bounded by the datum (an entry takes at
    /// least 5 bytes).
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, RESPONSE_RECORD);
        let correlation_id = r.cow_string("correlationId")?;
        let timestamp = r.long("timestamp")?;
        let timeout = r.long("timeout")?;
        // An entry takes at least 5 bytes: an empty ID, a status, three null unions.
        let endpoints = r.array("endpoints", 5, read_entry)?;
        let status_code = r.int("statusCode")?;
        let reason_phrase = if r.is_empty() {
            None
        } else {
            r.optional_cow_string("reasonPhrase", NULL_FIRST)?
        };
        Ok(EndpointMetadataResponse {
            correlation_id,
            timestamp,
            timeout,
            endpoints,
            status_code,
            reason_phrase,
        })
    }
}

impl EndpointMetadataResponse<'_> {
    /// Copies every borrowed string, detaching the response from the input buffer.
    pub fn into_owned(self) -> EndpointMetadataResponse<'static> {
        EndpointMetadataResponse {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            endpoints: self
                .endpoints
                .into_iter()
                .map(EndpointMetadata::into_owned)
                .collect(),
            status_code: self.status_code,
            reason_phrase: self.reason_phrase.map(to_static),
        }
    }

    /// True when `statusCode` is a success (2xx: 200, or [`PARTIAL`]).
    pub const fn is_success(&self) -> bool {
        200 <= self.status_code && self.status_code < 300
    }

    /// The bytes of everything but the `endpoints` array.
    fn head_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + long_len(i64::from(self.status_code))
            + optional_len(self.reason_phrase.as_deref(), string_len)
    }

    /// Makes the response fit in `max_len` encoded bytes (the bus's message limit),
    /// the rule a register applies before answering:
    ///
    /// 1. an entry larger on its own than what is left of `max_len` besides the
    ///    response's other fields keeps its ID and app version and loses its
    ///    metadata, with status 413;
    /// 2. then the longest prefix of entries that fits is kept; when entries were
    ///    dropped, `statusCode` becomes [`PARTIAL`] with a reason saying how many
    ///    are listed, and the requester asks again for the rest.
    ///
    /// Returns how many entries are kept. Entries with a short ID always fit a
    /// budget of a few hundred bytes, so an answer makes progress; a budget too
    /// small for even the first entry keeps none.
    pub fn fit(&mut self, max_len: usize) -> usize {
        let asked = self.endpoints.len();
        // The head as it will be with a PARTIAL status and its reason (the larger
        // head, so that the decision holds whatever the outcome).
        let reason = partial_reason(asked, asked);
        let head = string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + long_len(i64::from(PARTIAL)).max(long_len(i64::from(self.status_code)))
            + optional_len(Some(reason.as_str()), string_len)
                .max(optional_len(self.reason_phrase.as_deref(), string_len));
        // One block header (count up to 10 bytes) and the terminating zero.
        let room = max_len.saturating_sub(head + 11);
        for entry in &mut self.endpoints {
            if entry.encoded_len() > room {
                let size = entry.metadata.as_deref().map_or(0, str::len);
                entry.status_code = 413;
                entry.metadata = None;
                entry.reason_phrase = Some(Cow::Owned(format!(
                    "metadata of {size} bytes is larger than an answer may be"
                )));
            }
        }
        let mut used = 0;
        let mut keep = 0;
        for entry in &self.endpoints {
            let len = entry.encoded_len();
            if used + len > room {
                break;
            }
            used += len;
            keep += 1;
        }
        if keep < asked {
            self.endpoints.truncate(keep);
            self.status_code = PARTIAL;
            self.reason_phrase = Some(Cow::Owned(partial_reason(keep, asked)));
        }
        keep
    }
}

fn partial_reason(listed: usize, asked: usize) -> String {
    format!("the first {listed} of {asked} endpoints fit in one answer: ask again for the rest")
}

kaa_ism::impl_common_fields!(EndpointMetadataRequest, EndpointMetadataResponse);

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_ism::avro::DecodeErrorKind;

    fn response(n: usize, metadata_len: usize) -> EndpointMetadataResponse<'static> {
        EndpointMetadataResponse {
            correlation_id: "c".into(),
            timestamp: 1,
            timeout: 2,
            endpoints: (0..n)
                .map(|i| {
                    EndpointMetadata::found(
                        format!("ep-{i}"),
                        "v1",
                        format!("{{\"x\":\"{}\"}}", "m".repeat(metadata_len)),
                    )
                })
                .collect(),
            status_code: 200,
            reason_phrase: None,
        }
    }

    #[test]
    fn field_and_branch_order_is_the_schema_order() {
        let request = EndpointMetadataRequest {
            correlation_id: "c".into(),
            timestamp: 1,
            timeout: 2,
            endpoint_ids: vec!["e".into()],
        };
        assert_eq!(request.to_vec(), [2, b'c', 2, 4, 2, 2, b'e', 0]);
        let response = EndpointMetadataResponse {
            endpoints: vec![
                EndpointMetadata::found("e", "a", "{}"),
                EndpointMetadata::refused("f", 404, "r"),
            ],
            status_code: 200,
            ..Default::default()
        };
        assert_eq!(
            response.to_vec(),
            [
                0, 0, 0, // correlationId, timestamp, timeout
                4, // two entries
                2, b'e', 0x90, 0x03, 2, 2, b'a', 2, 4, b'{', b'}', 0, // found
                2, b'f', 0xa8, 0x06, 0, 0, 2, 2, b'r', // not registered
                0, 0x90, 0x03, 0 // end, statusCode, no reason
            ]
        );
        assert_eq!(response.encoded_len(), response.to_vec().len());
    }

    #[test]
    fn older_writer_without_reason_phrase() {
        let mut response = response(2, 3);
        response.reason_phrase = Some("OK".into());
        let datum = response.to_vec();
        let older = &datum[..datum.len() - 1 - string_len("OK")];
        let decoded = EndpointMetadataResponse::decode(older).unwrap();
        assert_eq!(decoded.reason_phrase, None);
        assert_eq!(decoded.endpoints, response.endpoints);
        // One byte fewer cuts statusCode (200 takes two bytes).
        let e = EndpointMetadataResponse::decode(&older[..older.len() - 1]).unwrap_err();
        assert_eq!((e.record, e.field), (RESPONSE_RECORD, "statusCode"));
        assert_eq!(e.kind, DecodeErrorKind::UnexpectedEnd);
    }

    #[test]
    fn errors_name_the_nested_record() {
        let mut datum = response(1, 3).to_vec();
        // Inside the first entry's metadata union: a bad branch index.
        let at = string_len("c") + 2 + 1 + string_len("ep-0") + 2 + 1 + string_len("v1");
        assert_eq!(datum[at], 2, "the metadata branch index");
        datum[at] = 4;
        let e = EndpointMetadataResponse::decode(&datum).unwrap_err();
        assert_eq!((e.record, e.field), (ENTRY_RECORD, "metadata"));
        assert_eq!(
            e.kind,
            DecodeErrorKind::UnionIndex {
                index: 2,
                branches: 2
            }
        );
    }

    #[test]
    fn fit_keeps_what_fits_and_marks_the_rest() {
        // Everything fits: nothing changes.
        let mut all = response(10, 10);
        let before = all.clone();
        assert_eq!(all.fit(all.encoded_len() + 200), 10);
        assert_eq!(all, before);
        // A budget for about half: the first ones, PARTIAL, and it fits.
        let budget = before.encoded_len() / 2 + 100;
        let mut half = before.clone();
        let kept = half.fit(budget);
        assert!(0 < kept && kept < 10, "{kept}");
        assert_eq!(half.endpoints[..], before.endpoints[..kept]);
        assert_eq!(half.status_code, PARTIAL);
        assert!(
            half.reason_phrase
                .as_deref()
                .unwrap()
                .contains(&format!("first {kept} of 10"))
        );
        assert!(
            half.encoded_len() <= budget,
            "{} > {budget}",
            half.encoded_len()
        );
        assert!(half.is_success());
        // An entry too large alone loses its metadata (413) and the others stay.
        let mut one_big = response(3, 10);
        one_big.endpoints[1].metadata = Some("x".repeat(5000).into());
        assert_eq!(one_big.fit(1000), 3);
        assert_eq!(one_big.status_code, 200);
        let big = &one_big.endpoints[1];
        assert_eq!((big.status_code, big.metadata.as_deref()), (413, None));
        assert_eq!(big.app_version_name.as_deref(), Some("v1"));
        assert!(big.reason_phrase.as_deref().unwrap().contains("5000 bytes"));
        assert!(one_big.endpoints[0].is_found() && one_big.endpoints[2].is_found());
        assert!(one_big.encoded_len() <= 1000);
        // Every budget from tiny to ample keeps a prefix and respects the budget
        // whenever it keeps anything.
        for budget in (0..before.encoded_len() + 50).step_by(7) {
            let mut r = before.clone();
            let kept = r.fit(budget);
            assert_eq!(r.endpoints.len(), kept);
            if kept > 0 {
                assert!(r.encoded_len() <= budget, "{budget}");
            }
        }
    }

    #[test]
    fn correlation_id_of_an_undecodable_request() {
        let request = EndpointMetadataRequest {
            correlation_id: "c-7".into(),
            endpoint_ids: vec!["a".into()],
            ..Default::default()
        };
        let datum = request.to_vec();
        let cut = &datum[..datum.len() - 2];
        assert!(EndpointMetadataRequest::decode(cut).is_err());
        assert_eq!(EndpointMetadataRequest::correlation_id_of(cut), Some("c-7"));
        assert_eq!(EndpointMetadataRequest::correlation_id_of(&[0x01]), None);
        assert_eq!(EndpointMetadataRequest::correlation_id_of(&[]), None);
    }

    #[test]
    fn subjects() {
        assert_eq!(
            metadata_request_subject("epr").unwrap().to_string(),
            "kaa.v1.service.epr.ecap.ep-metadata-request"
        );
        assert_eq!(
            metadata_response_subject("ecr-1").unwrap().to_string(),
            "kaa.v1.replica.ecr-1.ecap.ep-metadata-response"
        );
        assert!(
            metadata_request_filter("epr")
                .unwrap()
                .matches("kaa.v1.service.epr.ecap.ep-metadata-request")
        );
        for bad in ["", "a.b", "*", ">", "a b"] {
            assert!(metadata_request_subject(bad).is_err(), "{bad:?}");
            assert!(metadata_response_subject(bad).is_err(), "{bad:?}");
        }
        // Not one of the RFC's messages.
        assert_eq!(
            crate::MessageKind::of_subject("kaa.v1.service.epr.ecap.ep-metadata-request"),
            None
        );
    }
}
