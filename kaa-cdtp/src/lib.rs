//! # kaa-cdtp: Kaa 6/CDTP (Configuration Data Transport Protocol), sans-IO
//!
//! 6/CDTP moves endpoint configuration data between Kaa services: a *consumer*
//! (e.g. CMX, which serves devices) pulls an endpoint's configuration from a
//! *provider* (e.g. ECR, which stores it) with a request/response pair, the
//! provider pushes changes as `endpoint.config.updated` broadcasts, and the
//! consumer reports what endpoints applied or rejected as `endpoint.config.applied`
//! broadcasts. This crate is the wire layer of that exchange, with no I/O of its own:
//!
//! - the four messages, [`ConfigRequest`], [`ConfigResponse`], [`ConfigUpdated`]
//!   and [`ConfigApplied`], and their Avro binary codec through
//!   [`kaa_ism::avro::Encode`] and [`kaa_ism::avro::Decode`], byte-exact with Apache
//!   Avro for the RFC schemas (`schemas/0006-*.avsc` in this crate, copies of the
//!   kaa-rfcs files);
//! - the NATS subjects they travel on and the filters listeners subscribe with
//!   ([`subject`]);
//! - the 3/ISM common fields and expiry check ([`kaa_ism::common::CommonFields`],
//!   implemented by every message; the current time is always an argument);
//! - the rules of an answer, for both sides ([`answer`]): what a provider answers
//!   for a request given what it holds ([`ConfigResponse::answer`],
//!   [`ConfigResponse::error`]) and what a consumer makes of a response
//!   ([`ConfigResponse::read`] → [`ConfigAnswer`]).
//! - **kaa-rs extension, not in the 6/CDTP RFC:** [`ProviderStarted`], which every
//!   provider replica (e.g. ECR) broadcasts on `kaa.v1.events.{provider}.provider.started`
//!   when it (re)starts, so that consumers (e.g. CMX) fetch their endpoints'
//!   configurations again (a provider killed with `ConfigUpdated` events still
//!   queued never announces those writes). Its Avro schema is this crate's
//!   `schemas/provider-started.avsc`; golden vectors from Apache Avro cover it like
//!   the RFC records.
//!
//! ```
//! use std::borrow::Cow;
//! use kaa_cdtp::{subject, ConfigRequest, ConfigResponse, APPLICATION_JSON};
//! use kaa_ism::avro::{Decode, Encode};
//!
//! // CMX asks ECR for the endpoint's latest "network" configuration ...
//! let request = ConfigRequest {
//!     correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
//!     timestamp: 1_490_303_342_158,
//!     timeout: 3_000,
//!     app_version_name: "smartKettleV1".into(),
//!     endpoint_id: "b197e391-1d13-403b-83f5-87bdd44888cf".into(),
//!     config_id: None,
//!     config_name: Some("network".into()),
//! };
//! let to = subject::request_subject("ecr")?;
//! let reply_to = subject::response_subject("cmx-1")?;
//! assert_eq!(to.to_string(), "kaa.v1.service.ecr.cdtp.request");
//! assert_eq!(reply_to.to_string(), "kaa.v1.replica.cmx-1.cdtp.response");
//! let datum = request.to_vec();
//! assert_eq!(ConfigRequest::decode(&datum)?, request);
//!
//! // ... and ECR answers on the replyTo.
//! let response = ConfigResponse {
//!     correlation_id: request.correlation_id.clone(),
//!     timestamp: 1_490_303_342_170,
//!     timeout: 3_000,
//!     app_version_name: request.app_version_name.clone(),
//!     endpoint_id: request.endpoint_id.clone(),
//!     config_id: Some("6046b576591c75fd68ab67f7e4475311".into()),
//!     content_type: APPLICATION_JSON.into(),
//!     content: Some(Cow::Borrowed(br#"{"sampling":200}"#)),
//!     status_code: 200,
//!     reason_phrase: Some("OK".into()),
//! };
//! let datum = response.to_vec();
//! let decoded = ConfigResponse::decode(&datum)?;
//! assert_eq!(decoded, response);
//! assert!(matches!(decoded.content, Some(Cow::Borrowed(_)))); // borrowed, not copied
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Wire policy
//!
//! **Encoding** writes every field of the RFC schema in order, unions as the branch
//! index followed by the value, exactly as Apache Avro does; trailing optional RFC
//! fields (`configId`, `configName`, `originatorReplicaId`, `reasonPhrase`) are always
//! written, `null` included. The one exception is this project's `configName`
//! extension below. [`kaa_ism::avro::Encode::encoded_len`] is exact.
//!
//! **Decoding** borrows every string and byte field from the input (no copy; call
//! `into_owned` to keep a message past its buffer), checks every length against the
//! bytes that remain, rejects union branch indexes outside the union, `int`s outside
//! 32 bits and invalid UTF-8, and never panics: an error is a
//! [`kaa_ism::avro::DecodeError`] naming the record and the Avro field, e.g.
//! `ConfigResponse.content: …`.
//!
//! **Schema evolution.** Peers of different ages interoperate in both directions:
//! - A datum that ends right before the trailing fields that have defaults decodes
//!   with those defaults. Only fields after the last required field qualify:
//!   `ConfigRequest.configId` and `.configName` (null), `ConfigResponse.reasonPhrase`
//!   (null), `ConfigUpdated.originatorReplicaId` (null) and `.configName` (null),
//!   `ConfigApplied.originatorReplicaId` (null), `.statusCode` (200),
//!   `.reasonPhrase` (null) and `.configName` (null). (`ConfigResponse.contentType`
//!   and `.content` have defaults too, but a required `statusCode` follows them, so
//!   a datum cannot leave them out.)
//! - Bytes after the last field this version knows are ignored: they belong to
//!   optional fields a newer writer appended.
//!
//! There are no maps in the 6/CDTP records; `content` is opaque bytes in the format
//! `contentType` names ([`APPLICATION_JSON`] by default).
//!
//! # Named-configuration extension
//!
//! Kaa's named configurations (7/CMP `config/json/<name>`; no name means `default`)
//! reached the RFCs as a trailing optional `configName` (`["null","string"]`,
//! default null) in `ClientData` (4/ESP) and [`ConfigRequest`]. Those are ordinary
//! RFC fields here: always written, as Apache Avro writes them.
//!
//! The RFC broadcasts cannot say which named configuration they are about, so this
//! project appends the same field, `configName` (`["null","string"]`, default
//! null), as the **last** field of [`ConfigUpdated`] and [`ConfigApplied`]. The
//! extended schemas are committed as `kaa-cdtp/schemas/config-updated-ext.avsc` and
//! `config-applied-ext.avsc`. The field is **written only when it is `Some`**:
//! - a datum without a name is byte-identical to the RFC schema's, so every RFC
//!   peer reads it as before;
//! - a named datum is an RFC datum followed by the union index `1` and the name; an
//!   RFC-schema reader stops after the RFC's last field and ignores those trailing
//!   bytes (the evolution rule above), so it sees the `default` configuration's
//!   event with the same config ID: an old provider or consumer can mistake a named
//!   event for an unnamed one, never fail on it;
//! - a writer that uses the extended schemas with Apache Avro writes an explicit
//!   null branch (`0x00`) for an unnamed event; this crate decodes that as `None`.
//!
//! The price: should a future RFC append a different field to these two records,
//! its datums would be read here as a `configName` (or rejected, if the bytes are
//! not a valid `["null","string"]` union). The extension must then move behind the
//! RFC's new fields.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::borrow::Cow;

pub mod answer;
mod codec;
mod provider;
pub mod subject;

pub use answer::{ConfigAnswer, Current, InvalidAnswer};
pub use provider::ProviderStarted;

pub use kaa_ism::avro::{Decode, DecodeError, Encode};

/// The default `contentType` of configuration data.
pub const APPLICATION_JSON: &str = "application/json";

/// Consumer → provider configuration request, sent to
/// `kaa.v1.service.{provider}.cdtp.request` with a replyTo:
/// Avro record `org.kaaproject.ipc.cdtp.gen.v1.ConfigRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigRequest<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Cow<'a, str>,
    /// `endpointId`.
    pub endpoint_id: Cow<'a, str>,
    /// `configId` (`["null","string"]`, default null): the ID the consumer knows.
    pub config_id: Option<Cow<'a, str>>,
    /// `configName` (`["null","string"]`, default null): named configuration.
    pub config_name: Option<Cow<'a, str>>,
}

/// Provider → consumer configuration response, on the request's replyTo:
/// Avro record `org.kaaproject.ipc.cdtp.gen.v1.ConfigResponse`.
///
/// `config_id` and `content` both `None` with a 2xx status means "unchanged".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigResponse<'a> {
    /// `correlationId` (the request's).
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Cow<'a, str>,
    /// `endpointId`.
    pub endpoint_id: Cow<'a, str>,
    /// `configId` (`["null","string"]`, default null).
    pub config_id: Option<Cow<'a, str>>,
    /// `contentType` (default `application/json`).
    pub content_type: Cow<'a, str>,
    /// `content` (`["null","bytes"]`, default null).
    pub content: Option<Cow<'a, [u8]>>,
    /// `statusCode`.
    pub status_code: i32,
    /// `reasonPhrase` (`["null","string"]`, default null).
    pub reason_phrase: Option<Cow<'a, str>>,
}

/// Provider broadcast: an endpoint's configuration changed,
/// `kaa.v1.events.{provider}.endpoint.config.updated`:
/// Avro record `org.kaaproject.ipc.event.gen.v1.endpoint.config.ConfigUpdated`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigUpdated<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Cow<'a, str>,
    /// `endpointId`.
    pub endpoint_id: Cow<'a, str>,
    /// `configId`: the new configuration's ID.
    pub config_id: Cow<'a, str>,
    /// `contentType` (default `application/json`).
    pub content_type: Cow<'a, str>,
    /// `content`: the new configuration data.
    pub content: Cow<'a, [u8]>,
    /// `originatorReplicaId` (`["null","string"]`, default null).
    pub originator_replica_id: Option<Cow<'a, str>>,
    /// `configName` (`["null","string"]`, default null). **Extension** of this
    /// project, appended after the RFC's last field and written only when set.
    pub config_name: Option<Cow<'a, str>>,
}

/// Consumer broadcast: an endpoint applied (2xx) or rejected a configuration,
/// `kaa.v1.events.{consumer}.endpoint.config.applied`:
/// Avro record `org.kaaproject.ipc.event.gen.v1.endpoint.config.ConfigApplied`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigApplied<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appVersionName`.
    pub app_version_name: Cow<'a, str>,
    /// `endpointId`.
    pub endpoint_id: Cow<'a, str>,
    /// `configId`: the configuration the endpoint applied or rejected.
    pub config_id: Cow<'a, str>,
    /// `originatorReplicaId` (`["null","string"]`, default null).
    pub originator_replica_id: Option<Cow<'a, str>>,
    /// `statusCode` (default 200): 2xx applied, anything else rejected.
    pub status_code: i32,
    /// `reasonPhrase` (`["null","string"]`, default null).
    pub reason_phrase: Option<Cow<'a, str>>,
    /// `configName` (`["null","string"]`, default null). **Extension** of this
    /// project, appended after the RFC's last field and written only when set.
    pub config_name: Option<Cow<'a, str>>,
}
