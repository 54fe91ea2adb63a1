//! # kaa-esp: Kaa 4/ESP (Extension Service Protocol), sans-IO
//!
//! 4/ESP carries application data between Kaa *communication services* (which
//! talk to devices, e.g. KPC over MQTT) and *extension services* (which implement
//! what the data means, e.g. CMX for configuration management). This crate is the
//! wire layer of that exchange, with no I/O of its own:
//!
//! - the two messages, [`ClientData`] (device → extension) and [`ExtensionData`]
//!   (extension → device), and their Avro binary codec through
//!   [`kaa_ism::avro::Encode`] and [`kaa_ism::avro::Decode`], byte-exact with
//!   Apache Avro for the RFC schemas (`schemas/0004-client-data.avsc`,
//!   `schemas/0004-extension-data.avsc` in this crate, copies of the kaa-rfcs
//!   files);
//! - the NATS subjects they travel on and the filters listeners subscribe with
//!   ([`subject`]);
//! - the 3/ISM common fields and expiry check ([`kaa_ism::common::CommonFields`],
//!   implemented by both messages; the current time is always an argument).
//!
//! ```
//! use std::borrow::Cow;
//! use kaa_esp::{subject, ClientData};
//! use kaa_ism::avro::{Decode, Encode};
//!
//! // A device's configuration request, as KPC forwards it to CMX.
//! let request = ClientData {
//!     correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
//!     timestamp: 1_490_262_793_349,
//!     timeout: 3_600_000,
//!     app_version_name: "humidity-sensor-v3".into(),
//!     endpoint_id: Some("7ad263ec-3347-4c7d-af89-50c67061367a".into()),
//!     resource_path: "/config/json".into(),
//!     request_id: Some(42),
//!     payload: Cow::Borrowed(br#"{"observe":true}"#),
//!     config_name: None,
//! };
//! let datum = request.to_vec();
//! assert_eq!(datum.len(), request.encoded_len());
//!
//! // Decoding borrows strings and the payload from `datum`.
//! let decoded = ClientData::decode(&datum)?;
//! assert_eq!(decoded, request);
//! assert!(matches!(decoded.payload, Cow::Borrowed(_)));
//!
//! let to = subject::client_data_subject("cmx")?;
//! assert_eq!(to.to_string(), "kaa.v1.service.cmx.esp.ClientData");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Wire policy
//!
//! **Encoding** writes every field of the RFC schema in order, unions as the
//! branch index followed by the value, exactly as Apache Avro does; the trailing
//! optional fields (`ClientData.configName`, `ExtensionData.reasonPhrase`) are
//! always written, `null` included. [`kaa_ism::avro::Encode::encoded_len`] is exact.
//!
//! **Decoding** borrows every string and byte field from the input (no copy; call
//! `into_owned` to keep a message past its buffer), checks every length against
//! the bytes that remain, rejects union branch indexes outside the union, `int`s
//! outside 32 bits and invalid UTF-8, and never panics: an error is a
//! [`kaa_ism::avro::DecodeError`] naming the record and the Avro field, e.g.
//! `ClientData.payload: length 200 exceeds the 12 bytes that remain (at byte 98)`.
//!
//! **Schema evolution.** Peers of different ages interoperate in both directions:
//! - A datum that ends right before the trailing fields that have defaults decodes
//!   with those defaults. Only fields after the last required field qualify:
//!   `ClientData.configName` (null) and `ExtensionData.reasonPhrase` (null). This
//!   is what a writer using the schema before `configName` was added sends.
//! - Bytes after the last field this version knows are ignored: they belong to
//!   optional fields a newer writer appended.
//!
//! There are no maps in the 4/ESP records; `payload` is opaque bytes whose format
//! is given by `resourcePath` (for CMX, JSON as 7/CMP defines it).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::borrow::Cow;

mod codec;
pub mod subject;

pub use kaa_ism::avro::{Decode, DecodeError, Encode};

/// Client-originated data, from a communication service (KPC) to an extension
/// service (CMX): Avro record `org.kaaproject.ipc.esp.gen.v1.ClientData`.
///
/// Decoding borrows strings and the payload from the input; build one with owned
/// values (`Cow::Owned`) or call [`ClientData::into_owned`] to keep it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientData<'a> {
    /// `correlationId`: message ID for tracing across services.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`: creation time, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`: milliseconds after `timestamp` until expiry; 0 = never (default 0).
    pub timeout: i64,
    /// `appVersionName`: the endpoint's application version.
    pub app_version_name: Cow<'a, str>,
    /// `endpointId` (`["string","null"]`): null for endpoint-unaware extensions.
    pub endpoint_id: Option<Cow<'a, str>>,
    /// `resourcePath`: extension-specific path, e.g. `/config/json/network`.
    pub resource_path: Cow<'a, str>,
    /// `requestId` (`["int","null"]`): the 1/KP request ID, if the device sent one.
    pub request_id: Option<i32>,
    /// `payload`: the device's message body.
    pub payload: Cow<'a, [u8]>,
    /// `configName` (`["null","string"]`, default null): named configuration.
    pub config_name: Option<Cow<'a, str>>,
}

/// Extension-originated data for a client, from an extension service (CMX) to a
/// communication service (KPC): Avro record `org.kaaproject.ipc.esp.gen.v1.ExtensionData`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtensionData<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `appVersionName` (`["string","null"]`).
    pub app_version_name: Option<Cow<'a, str>>,
    /// `extensionInstanceName` (`["string","null"]`): the originating extension instance.
    pub extension_instance_name: Option<Cow<'a, str>>,
    /// `endpointId` (`["string","null"]`).
    pub endpoint_id: Option<Cow<'a, str>>,
    /// `resourcePath`.
    pub resource_path: Cow<'a, str>,
    /// `requestId` (`["int","null"]`): null for a server push.
    pub request_id: Option<i32>,
    /// `payload` (`["bytes","null"]`).
    pub payload: Option<Cow<'a, [u8]>>,
    /// `statusCode`: HTTP-style status of the request processing.
    pub status_code: i32,
    /// `reasonPhrase` (`["null","string"]`, default null).
    pub reason_phrase: Option<Cow<'a, str>>,
}
