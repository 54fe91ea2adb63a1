//! Avro binary codec of the 6/CDTP messages: `Encode`, `Decode`, `into_owned` and
//! `CommonFields` for [`ConfigRequest`], [`ConfigResponse`], [`ConfigUpdated`] and
//! [`ConfigApplied`].
//!
//! Field order and union branch order follow the RFC schemas (`schemas/0006-*.avsc`)
//! exactly, plus the trailing `configName` extension of `ConfigUpdated` and
//! `ConfigApplied` (`schemas/config-*-ext.avsc`); see the crate docs for the
//! evolution policy.

use std::borrow::Cow;

use bytes::BufMut;
use kaa_ism::avro::{
    Decode, DecodeError, Encode, Reader, SplicedDatum, bytes_len, long_len, optional_len,
    put_bytes, put_int, put_long, put_optional, put_string, put_union_index, string_len, to_static,
};

use crate::{ConfigApplied, ConfigRequest, ConfigResponse, ConfigUpdated, ProviderStarted};

/// Every optional field of the 6/CDTP schemas is a `["null", T]` union.
const NULL_FIRST: bool = true;

/// The default of `ConfigApplied.statusCode` in the RFC schema.
const APPLIED_DEFAULT_STATUS: i32 = 200;

/// Reads a trailing `["null","string"]` field that has a default of null: a datum
/// that ends before it (an older writer) gives `None`.
#[inline]
fn read_trailing_opt_str<'a>(
    r: &mut Reader<'a>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    if r.is_empty() {
        Ok(None)
    } else {
        r.optional_cow_string(field, NULL_FIRST)
    }
}

#[inline]
fn put_opt_str<B: BufMut + ?Sized>(buf: &mut B, value: Option<&str>) {
    put_optional(buf, value, NULL_FIRST, put_string);
}

kaa_ism::impl_common_fields!(
    ConfigRequest,
    ConfigResponse,
    ConfigUpdated,
    ConfigApplied,
    ProviderStarted
);

// ---------------------------------------------------------------- ConfigRequest

impl ConfigRequest<'_> {
    /// Copies every borrowed string, detaching the message from the buffer it was
    /// decoded from.
    pub fn into_owned(self) -> ConfigRequest<'static> {
        ConfigRequest {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            app_version_name: to_static(self.app_version_name),
            endpoint_id: to_static(self.endpoint_id),
            config_id: self.config_id.map(to_static),
            config_name: self.config_name.map(to_static),
        }
    }
}

impl Encode for ConfigRequest<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + string_len(&self.app_version_name)
            + string_len(&self.endpoint_id)
            + optional_len(self.config_id.as_deref(), string_len)
            + optional_len(self.config_name.as_deref(), string_len)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_string(buf, &self.app_version_name);
        put_string(buf, &self.endpoint_id);
        put_opt_str(buf, self.config_id.as_deref());
        // An RFC field: always written, as Apache Avro writes it.
        put_opt_str(buf, self.config_name.as_deref());
    }
}

impl<'a> Decode<'a> for ConfigRequest<'a> {
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, "ConfigRequest");
        let correlation_id = r.cow_string("correlationId")?;
        let timestamp = r.long("timestamp")?;
        let timeout = r.long("timeout")?;
        let app_version_name = r.cow_string("appVersionName")?;
        let endpoint_id = r.cow_string("endpointId")?;
        // Trailing fields with defaults.
        let config_id = read_trailing_opt_str(&mut r, "configId")?;
        let config_name = read_trailing_opt_str(&mut r, "configName")?;
        Ok(ConfigRequest {
            correlation_id,
            timestamp,
            timeout,
            app_version_name,
            endpoint_id,
            config_id,
            config_name,
        })
    }
}

// --------------------------------------------------------------- ConfigResponse

impl ConfigResponse<'_> {
    /// Copies every borrowed string and the content, detaching the message from the
    /// buffer it was decoded from.
    pub fn into_owned(self) -> ConfigResponse<'static> {
        ConfigResponse {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            app_version_name: to_static(self.app_version_name),
            endpoint_id: to_static(self.endpoint_id),
            config_id: self.config_id.map(to_static),
            content_type: to_static(self.content_type),
            content: self.content.map(|c| Cow::Owned(c.into_owned())),
            status_code: self.status_code,
            reason_phrase: self.reason_phrase.map(to_static),
        }
    }
}

impl Encode for ConfigResponse<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + string_len(&self.app_version_name)
            + string_len(&self.endpoint_id)
            + optional_len(self.config_id.as_deref(), string_len)
            + string_len(&self.content_type)
            + optional_len(self.content.as_deref(), |c| bytes_len(c.len()))
            + long_len(i64::from(self.status_code))
            + optional_len(self.reason_phrase.as_deref(), string_len)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        self.put_before_content(buf);
        put_optional(buf, self.content.as_deref(), NULL_FIRST, put_bytes);
        self.put_after_content(buf);
    }
}

impl ConfigResponse<'_> {
    /// Encodes the response with its `content` borrowed rather than copied: the
    /// same bytes as [`Encode::encode`], as a [`SplicedDatum`] of three chunks
    /// (the fields before the content, the content, the fields after it).
    ///
    /// For callers that can send non-contiguous bytes (vectored writes, chained
    /// buffers): the content, usually the largest part of the response, is not
    /// copied. A response without content is all frame.
    pub fn encode_spliced(&self) -> SplicedDatum<'_> {
        let content_len = self.content.as_deref().map_or(0, <[u8]>::len);
        let mut datum = SplicedDatum::with_capacity(self.encoded_len() - content_len);
        let buf = datum.frame_mut();
        self.put_before_content(buf);
        match self.content.as_deref() {
            None => put_union_index(buf, 0),
            Some(content) => {
                put_union_index(buf, 1);
                datum.put_spliced_bytes(content);
            }
        }
        self.put_after_content(datum.frame_mut());
        datum
    }

    /// The fields before `content`, in schema order (shared by [`Encode::encode`]
    /// and [`ConfigResponse::encode_spliced`]).
    fn put_before_content<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_string(buf, &self.app_version_name);
        put_string(buf, &self.endpoint_id);
        put_opt_str(buf, self.config_id.as_deref());
        put_string(buf, &self.content_type);
    }

    /// The fields after `content`.
    fn put_after_content<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_int(buf, self.status_code);
        put_opt_str(buf, self.reason_phrase.as_deref());
    }
}

impl<'a> Decode<'a> for ConfigResponse<'a> {
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, "ConfigResponse");
        let correlation_id = r.cow_string("correlationId")?;
        let timestamp = r.long("timestamp")?;
        let timeout = r.long("timeout")?;
        let app_version_name = r.cow_string("appVersionName")?;
        let endpoint_id = r.cow_string("endpointId")?;
        let config_id = r.optional_cow_string("configId", NULL_FIRST)?;
        let content_type = r.cow_string("contentType")?;
        let content = r.optional("content", NULL_FIRST, |r, f| r.bytes(f).map(Cow::Borrowed))?;
        let status_code = r.int("statusCode")?;
        // Trailing field with a default.
        let reason_phrase = read_trailing_opt_str(&mut r, "reasonPhrase")?;
        Ok(ConfigResponse {
            correlation_id,
            timestamp,
            timeout,
            app_version_name,
            endpoint_id,
            config_id,
            content_type,
            content,
            status_code,
            reason_phrase,
        })
    }
}

// ---------------------------------------------------------------- ConfigUpdated

impl ConfigUpdated<'_> {
    /// Copies every borrowed string and the content, detaching the message from the
    /// buffer it was decoded from.
    pub fn into_owned(self) -> ConfigUpdated<'static> {
        ConfigUpdated {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            app_version_name: to_static(self.app_version_name),
            endpoint_id: to_static(self.endpoint_id),
            config_id: to_static(self.config_id),
            content_type: to_static(self.content_type),
            content: Cow::Owned(self.content.into_owned()),
            originator_replica_id: self.originator_replica_id.map(to_static),
            config_name: self.config_name.map(to_static),
        }
    }
}

impl Encode for ConfigUpdated<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + string_len(&self.app_version_name)
            + string_len(&self.endpoint_id)
            + string_len(&self.config_id)
            + string_len(&self.content_type)
            + bytes_len(self.content.len())
            + optional_len(self.originator_replica_id.as_deref(), string_len)
            + self.config_name.as_deref().map_or(0, |n| 1 + string_len(n))
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_string(buf, &self.app_version_name);
        put_string(buf, &self.endpoint_id);
        put_string(buf, &self.config_id);
        put_string(buf, &self.content_type);
        put_bytes(buf, &self.content);
        put_opt_str(buf, self.originator_replica_id.as_deref());
        // Extension field: written only when set, so an unnamed datum is
        // byte-identical to the RFC schema's.
        if let Some(name) = self.config_name.as_deref() {
            put_opt_str(buf, Some(name));
        }
    }
}

impl<'a> Decode<'a> for ConfigUpdated<'a> {
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, "ConfigUpdated");
        let correlation_id = r.cow_string("correlationId")?;
        let timestamp = r.long("timestamp")?;
        let timeout = r.long("timeout")?;
        let app_version_name = r.cow_string("appVersionName")?;
        let endpoint_id = r.cow_string("endpointId")?;
        let config_id = r.cow_string("configId")?;
        let content_type = r.cow_string("contentType")?;
        let content = Cow::Borrowed(r.bytes("content")?);
        // Trailing fields with defaults (configName is this project's extension).
        let originator_replica_id = read_trailing_opt_str(&mut r, "originatorReplicaId")?;
        let config_name = read_trailing_opt_str(&mut r, "configName")?;
        Ok(ConfigUpdated {
            correlation_id,
            timestamp,
            timeout,
            app_version_name,
            endpoint_id,
            config_id,
            content_type,
            content,
            originator_replica_id,
            config_name,
        })
    }
}

// ---------------------------------------------------------------- ConfigApplied

impl ConfigApplied<'_> {
    /// Copies every borrowed string, detaching the message from the buffer it was
    /// decoded from.
    pub fn into_owned(self) -> ConfigApplied<'static> {
        ConfigApplied {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            app_version_name: to_static(self.app_version_name),
            endpoint_id: to_static(self.endpoint_id),
            config_id: to_static(self.config_id),
            originator_replica_id: self.originator_replica_id.map(to_static),
            status_code: self.status_code,
            reason_phrase: self.reason_phrase.map(to_static),
            config_name: self.config_name.map(to_static),
        }
    }

    /// True when the endpoint applied the configuration: a 2xx `statusCode`.
    /// Anything else is a rejection.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_code)
    }
}

impl Encode for ConfigApplied<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + string_len(&self.app_version_name)
            + string_len(&self.endpoint_id)
            + string_len(&self.config_id)
            + optional_len(self.originator_replica_id.as_deref(), string_len)
            + long_len(i64::from(self.status_code))
            + optional_len(self.reason_phrase.as_deref(), string_len)
            + self.config_name.as_deref().map_or(0, |n| 1 + string_len(n))
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_string(buf, &self.app_version_name);
        put_string(buf, &self.endpoint_id);
        put_string(buf, &self.config_id);
        put_opt_str(buf, self.originator_replica_id.as_deref());
        put_int(buf, self.status_code);
        put_opt_str(buf, self.reason_phrase.as_deref());
        // Extension field: written only when set (see `ConfigUpdated`).
        if let Some(name) = self.config_name.as_deref() {
            put_opt_str(buf, Some(name));
        }
    }
}

impl<'a> Decode<'a> for ConfigApplied<'a> {
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, "ConfigApplied");
        let correlation_id = r.cow_string("correlationId")?;
        let timestamp = r.long("timestamp")?;
        let timeout = r.long("timeout")?;
        let app_version_name = r.cow_string("appVersionName")?;
        let endpoint_id = r.cow_string("endpointId")?;
        let config_id = r.cow_string("configId")?;
        // Trailing fields with defaults (configName is this project's extension).
        let originator_replica_id = read_trailing_opt_str(&mut r, "originatorReplicaId")?;
        let status_code = if r.is_empty() {
            APPLIED_DEFAULT_STATUS
        } else {
            r.int("statusCode")?
        };
        let reason_phrase = read_trailing_opt_str(&mut r, "reasonPhrase")?;
        let config_name = read_trailing_opt_str(&mut r, "configName")?;
        Ok(ConfigApplied {
            correlation_id,
            timestamp,
            timeout,
            app_version_name,
            endpoint_id,
            config_id,
            originator_replica_id,
            status_code,
            reason_phrase,
            config_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_ism::UnixMillis;
    use kaa_ism::avro::DecodeErrorKind;
    use kaa_ism::common::CommonFields;

    fn updated() -> ConfigUpdated<'static> {
        ConfigUpdated {
            correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
            timestamp: 1_490_303_342_158,
            timeout: 0,
            app_version_name: "smartKettleV1".into(),
            endpoint_id: "b197e391-1d13-403b-83f5-87bdd44888cf".into(),
            config_id: "6046b576591c75fd68ab67f7e4475311".into(),
            content_type: crate::APPLICATION_JSON.into(),
            content: Cow::Borrowed(b"{\"sampling\":200}"),
            originator_replica_id: Some("ecr-1".into()),
            config_name: None,
        }
    }

    fn applied() -> ConfigApplied<'static> {
        ConfigApplied {
            correlation_id: "c".into(),
            timestamp: 1,
            timeout: 2,
            app_version_name: "app".into(),
            endpoint_id: "ep".into(),
            config_id: "id".into(),
            originator_replica_id: None,
            status_code: 200,
            reason_phrase: None,
            config_name: None,
        }
    }

    #[test]
    fn spliced_encoding_is_the_datum_without_copying_the_content() {
        use bytes::Buf;

        let content: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let full = ConfigResponse {
            correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
            timestamp: 1_490_303_342_158,
            timeout: 3_000,
            app_version_name: "smartKettleV1".into(),
            endpoint_id: "b197e391-1d13-403b-83f5-87bdd44888cf".into(),
            config_id: Some("6046b576591c75fd68ab67f7e4475311".into()),
            content_type: crate::APPLICATION_JSON.into(),
            content: Some(Cow::Borrowed(&content)),
            status_code: 200,
            reason_phrase: Some("OK".into()),
        };
        let cases = [
            full.clone(),
            ConfigResponse {
                content: Some(Cow::Borrowed(b"")),
                reason_phrase: None,
                ..full.clone()
            },
            ConfigResponse {
                content: None,
                config_id: None,
                status_code: 404,
                ..full.clone()
            },
            ConfigResponse::default(),
        ];
        for response in &cases {
            let expected = response.to_vec();
            let spliced = response.encode_spliced();
            assert_eq!(spliced.len(), expected.len());
            assert_eq!(spliced.to_vec(), expected);
            // Read as a Buf in uneven steps that cross the chunk boundaries.
            let mut buf = spliced.clone();
            let mut read = Vec::new();
            while buf.has_remaining() {
                let step = buf.chunk().len().min(7 + read.len() % 13);
                read.extend_from_slice(&buf.chunk()[..step]);
                buf.advance(step);
            }
            assert_eq!(read, expected);
            assert_eq!(
                spliced.clone().copy_to_bytes(spliced.len()).as_ref(),
                &expected[..]
            );
            assert_eq!(
                ConfigResponse::decode(&spliced.to_vec()).as_ref(),
                Ok(response)
            );
        }

        // The content is borrowed: the middle chunk is the caller's buffer.
        let spliced = full.encode_spliced();
        let [head, body, tail] = spliced.parts();
        assert!(std::ptr::eq(body.as_ptr(), content.as_ptr()));
        assert_eq!(head.len() + body.len() + tail.len(), full.encoded_len());
        let mut slices = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(spliced.chunks_vectored(&mut slices), 3);
        let mut written = Vec::new();
        std::io::Write::write_vectored(&mut written, &slices[..3]).unwrap();
        assert_eq!(written, full.to_vec());
        // Past the head, two chunks remain; too few slots take what fits.
        let mut rest = spliced.clone();
        rest.advance(head.len() + 10);
        assert_eq!(rest.chunk(), &content[10..]);
        let mut one = [std::io::IoSlice::new(&[]); 1];
        assert_eq!(rest.chunks_vectored(&mut one), 1);
        assert_eq!(&*one[0], &content[10..]);
        rest.advance(usize::MAX);
        assert_eq!(rest.remaining(), 0);
        assert!(rest.chunk().is_empty());
    }

    #[test]
    fn unnamed_extension_datums_are_rfc_datums() {
        // Without a name, the datum ends with the RFC's last field.
        let u = updated();
        let bytes = u.to_vec();
        assert_eq!(bytes.len(), u.encoded_len());
        assert_eq!(bytes.last(), Some(&b'1')); // ... "ecr-1"
        let named = ConfigUpdated {
            config_name: Some("network".into()),
            ..u.clone()
        };
        let named_bytes = named.to_vec();
        assert_eq!(named_bytes.len(), named.encoded_len());
        assert_eq!(&named_bytes[..bytes.len()], &bytes[..]);
        assert_eq!(&named_bytes[bytes.len()..], b"\x02\x0enetwork");
        assert_eq!(ConfigUpdated::decode(&named_bytes), Ok(named));

        let a = applied();
        let bytes = a.to_vec();
        assert_eq!(bytes, b"\x02c\x02\x04\x06app\x04ep\x04id\x00\x90\x03\x00");
        assert_eq!(bytes.len(), a.encoded_len());
    }

    #[test]
    fn explicit_null_name_decodes_as_absent() {
        // A writer using the extended schema with Apache Avro writes the null branch.
        let mut bytes = updated().to_vec();
        bytes.push(0x00);
        assert_eq!(ConfigUpdated::decode(&bytes), Ok(updated()));
        let mut bytes = applied().to_vec();
        bytes.push(0x00);
        assert_eq!(ConfigApplied::decode(&bytes), Ok(applied()));
    }

    #[test]
    fn applied_status_defaults_to_200() {
        // A datum that ends right after configId (before every defaulted field).
        let bytes = b"\x02c\x02\x04\x06app\x04ep\x04id";
        let a = ConfigApplied::decode(bytes).unwrap();
        assert_eq!(a.status_code, 200);
        assert!(a.is_success());
        assert_eq!(a, applied());
        let rejected = ConfigApplied {
            status_code: 400,
            ..applied()
        };
        assert!(!rejected.is_success());
        assert!(
            !ConfigApplied {
                status_code: 300,
                ..applied()
            }
            .is_success()
        );
        assert!(
            ConfigApplied {
                status_code: 299,
                ..applied()
            }
            .is_success()
        );
    }

    #[test]
    fn into_owned_detaches() {
        let named = ConfigUpdated {
            config_name: Some("n".into()),
            ..updated()
        };
        let bytes = named.to_vec();
        let owned = ConfigUpdated::decode(&bytes).unwrap().into_owned();
        drop(bytes);
        assert!(matches!(owned.content, Cow::Owned(_)));
        assert_eq!(owned, named);

        let resp = ConfigResponse {
            content: Some(Cow::Borrowed(b"{}")),
            reason_phrase: Some("OK".into()),
            ..Default::default()
        };
        let bytes = resp.to_vec();
        let owned = ConfigResponse::decode(&bytes).unwrap().into_owned();
        drop(bytes);
        assert_eq!(owned, resp);

        let req = ConfigRequest {
            config_id: Some("x".into()),
            ..Default::default()
        };
        let bytes = req.to_vec();
        let owned = ConfigRequest::decode(&bytes).unwrap().into_owned();
        drop(bytes);
        assert_eq!(owned, req);

        let a = ConfigApplied {
            reason_phrase: Some("bad".into()),
            config_name: Some("n".into()),
            ..applied()
        };
        let bytes = a.to_vec();
        let owned = ConfigApplied::decode(&bytes).unwrap().into_owned();
        drop(bytes);
        assert_eq!(owned, a);
    }

    #[test]
    fn common_fields() {
        let a = applied();
        assert_eq!(CommonFields::correlation_id(&a), "c");
        assert_eq!(a.expires_at(), Some(UnixMillis(3)));
        assert!(a.is_expired(UnixMillis(4)));
        let u = updated();
        assert_eq!(u.expires_at(), None);
        let req = ConfigRequest {
            timestamp: 10,
            timeout: 5,
            ..Default::default()
        };
        assert!(!req.is_expired(UnixMillis(15)));
        assert!(req.is_expired(UnixMillis(16)));
        let resp = ConfigResponse {
            timestamp: 10,
            timeout: 1,
            ..Default::default()
        };
        assert_eq!(resp.expires_at(), Some(UnixMillis(11)));
    }

    #[test]
    fn garbage_where_a_name_would_be_is_an_error() {
        let mut bytes = updated().to_vec();
        bytes.push(0x04); // union index 2
        let err = ConfigUpdated::decode(&bytes).unwrap_err();
        assert_eq!((err.record, err.field), ("ConfigUpdated", "configName"));
        assert!(matches!(
            err.kind,
            DecodeErrorKind::UnionIndex {
                index: 2,
                branches: 2
            }
        ));
    }
}
