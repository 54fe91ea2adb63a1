//! Avro binary codec of the 4/ESP messages: `Encode`, `Decode`, `into_owned` and
//! `CommonFields` for [`ClientData`] and [`ExtensionData`].
//!
//! Field order and union branch order follow the RFC schemas
//! (`schemas/0004-client-data.avsc`, `schemas/0004-extension-data.avsc`) exactly; see the crate
//! docs for the evolution policy.

use std::borrow::Cow;

use bytes::BufMut;
use kaa_ism::avro::{
    Decode, DecodeError, Encode, Reader, bytes_len, long_len, optional_len, put_bytes, put_int,
    put_long, put_optional, put_string, string_len, to_static,
};

use crate::{ClientData, ExtensionData};

// Union branch order of the optional fields, as in the schemas.
/// `["string","null"]`, `["int","null"]`, `["bytes","null"]`.
const NULL_SECOND: bool = false;
/// `["null","string"]`.
const NULL_FIRST: bool = true;

kaa_ism::impl_common_fields!(ClientData, ExtensionData);

impl ClientData<'_> {
    /// Copies every borrowed string and the payload, detaching the message from
    /// the buffer it was decoded from.
    pub fn into_owned(self) -> ClientData<'static> {
        ClientData {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            app_version_name: to_static(self.app_version_name),
            endpoint_id: self.endpoint_id.map(to_static),
            resource_path: to_static(self.resource_path),
            request_id: self.request_id,
            payload: Cow::Owned(self.payload.into_owned()),
            config_name: self.config_name.map(to_static),
        }
    }
}

impl Encode for ClientData<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + string_len(&self.app_version_name)
            + optional_len(self.endpoint_id.as_deref(), string_len)
            + string_len(&self.resource_path)
            + optional_len(self.request_id.as_ref(), |v| long_len(i64::from(*v)))
            + bytes_len(self.payload.len())
            + optional_len(self.config_name.as_deref(), string_len)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_string(buf, &self.app_version_name);
        put_optional(buf, self.endpoint_id.as_deref(), NULL_SECOND, put_string);
        put_string(buf, &self.resource_path);
        put_optional(buf, self.request_id.as_ref(), NULL_SECOND, |b, v| {
            put_int(b, *v)
        });
        put_bytes(buf, &self.payload);
        // Always written, as Apache Avro writes every field of the RFC schema.
        put_optional(buf, self.config_name.as_deref(), NULL_FIRST, put_string);
    }
}

impl<'a> Decode<'a> for ClientData<'a> {
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, "ClientData");
        let correlation_id = r.cow_string("correlationId")?;
        let timestamp = r.long("timestamp")?;
        let timeout = r.long("timeout")?;
        let app_version_name = r.cow_string("appVersionName")?;
        let endpoint_id = r.optional_cow_string("endpointId", NULL_SECOND)?;
        let resource_path = r.cow_string("resourcePath")?;
        let request_id = r.optional("requestId", NULL_SECOND, |r, f| r.int(f))?;
        let payload = Cow::Borrowed(r.bytes("payload")?);
        // Trailing field with a default: absent in datums of writers that predate it.
        let config_name = if r.is_empty() {
            None
        } else {
            r.optional_cow_string("configName", NULL_FIRST)?
        };
        // Anything left belongs to fields a newer writer appended: ignored.
        Ok(ClientData {
            correlation_id,
            timestamp,
            timeout,
            app_version_name,
            endpoint_id,
            resource_path,
            request_id,
            payload,
            config_name,
        })
    }
}

impl ExtensionData<'_> {
    /// Copies every borrowed string and the payload, detaching the message from
    /// the buffer it was decoded from.
    pub fn into_owned(self) -> ExtensionData<'static> {
        ExtensionData {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            app_version_name: self.app_version_name.map(to_static),
            extension_instance_name: self.extension_instance_name.map(to_static),
            endpoint_id: self.endpoint_id.map(to_static),
            resource_path: to_static(self.resource_path),
            request_id: self.request_id,
            payload: self.payload.map(|p| Cow::Owned(p.into_owned())),
            status_code: self.status_code,
            reason_phrase: self.reason_phrase.map(to_static),
        }
    }
}

impl Encode for ExtensionData<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + optional_len(self.app_version_name.as_deref(), string_len)
            + optional_len(self.extension_instance_name.as_deref(), string_len)
            + optional_len(self.endpoint_id.as_deref(), string_len)
            + string_len(&self.resource_path)
            + optional_len(self.request_id.as_ref(), |v| long_len(i64::from(*v)))
            + optional_len(self.payload.as_deref(), |p| bytes_len(p.len()))
            + long_len(i64::from(self.status_code))
            + optional_len(self.reason_phrase.as_deref(), string_len)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_optional(
            buf,
            self.app_version_name.as_deref(),
            NULL_SECOND,
            put_string,
        );
        put_optional(
            buf,
            self.extension_instance_name.as_deref(),
            NULL_SECOND,
            put_string,
        );
        put_optional(buf, self.endpoint_id.as_deref(), NULL_SECOND, put_string);
        put_string(buf, &self.resource_path);
        put_optional(buf, self.request_id.as_ref(), NULL_SECOND, |b, v| {
            put_int(b, *v)
        });
        put_optional(buf, self.payload.as_deref(), NULL_SECOND, put_bytes);
        put_int(buf, self.status_code);
        put_optional(buf, self.reason_phrase.as_deref(), NULL_FIRST, put_string);
    }
}

impl<'a> Decode<'a> for ExtensionData<'a> {
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, "ExtensionData");
        let correlation_id = r.cow_string("correlationId")?;
        let timestamp = r.long("timestamp")?;
        let timeout = r.long("timeout")?;
        let app_version_name = r.optional_cow_string("appVersionName", NULL_SECOND)?;
        let extension_instance_name =
            r.optional_cow_string("extensionInstanceName", NULL_SECOND)?;
        let endpoint_id = r.optional_cow_string("endpointId", NULL_SECOND)?;
        let resource_path = r.cow_string("resourcePath")?;
        let request_id = r.optional("requestId", NULL_SECOND, |r, f| r.int(f))?;
        let payload = r.optional("payload", NULL_SECOND, |r, f| r.bytes(f).map(Cow::Borrowed))?;
        let status_code = r.int("statusCode")?;
        // Trailing field with a default: absent in datums of writers that predate it.
        let reason_phrase = if r.is_empty() {
            None
        } else {
            r.optional_cow_string("reasonPhrase", NULL_FIRST)?
        };
        // Anything left belongs to fields a newer writer appended: ignored.
        Ok(ExtensionData {
            correlation_id,
            timestamp,
            timeout,
            app_version_name,
            extension_instance_name,
            endpoint_id,
            resource_path,
            request_id,
            payload,
            status_code,
            reason_phrase,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_ism::avro::DecodeErrorKind;
    use kaa_ism::common::CommonFields;

    fn client_data() -> ClientData<'static> {
        ClientData {
            correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
            timestamp: 1_490_262_793_349,
            timeout: 3_600_000,
            app_version_name: "humidity-sensor-v3".into(),
            endpoint_id: Some("7ad263ec-3347-4c7d-af89-50c67061367a".into()),
            resource_path: "/json".into(),
            request_id: Some(42),
            payload: Cow::Borrowed(b"[{\"humidity\": 88}]"),
            config_name: Some("network".into()),
        }
    }

    fn extension_data() -> ExtensionData<'static> {
        ExtensionData {
            correlation_id: "07d78e95-2c4d-4899-957c-b9e5a3701fbb".into(),
            timestamp: 1_490_262_793_349,
            timeout: 3_600_000,
            app_version_name: Some("humidity-sensor-v3".into()),
            extension_instance_name: Some("humidity-sensor-cmx-1".into()),
            endpoint_id: Some("7ad263ec-3347-4c7d-af89-50c67061367a".into()),
            resource_path: "/config/json".into(),
            request_id: Some(42),
            payload: Some(Cow::Borrowed(b"{\"sampling\": 200}")),
            status_code: 200,
            reason_phrase: Some("OK".into()),
        }
    }

    #[test]
    fn round_trips_and_exact_lengths() {
        let cd = client_data();
        let bytes = cd.to_vec();
        assert_eq!(bytes.len(), cd.encoded_len());
        assert_eq!(ClientData::decode(&bytes), Ok(cd.clone()));
        let cd_nulls = ClientData {
            endpoint_id: None,
            request_id: None,
            config_name: None,
            ..cd
        };
        let bytes = cd_nulls.to_vec();
        assert_eq!(bytes.len(), cd_nulls.encoded_len());
        assert_eq!(ClientData::decode(&bytes), Ok(cd_nulls));

        let ed = extension_data();
        let bytes = ed.to_vec();
        assert_eq!(bytes.len(), ed.encoded_len());
        assert_eq!(ExtensionData::decode(&bytes), Ok(ed));
        let empty = ExtensionData::default();
        assert_eq!(ExtensionData::decode(&empty.to_vec()), Ok(empty));
    }

    #[test]
    fn decoding_borrows_and_into_owned_detaches() {
        let bytes = client_data().to_vec();
        let decoded = ClientData::decode(&bytes).unwrap();
        assert!(matches!(decoded.payload, Cow::Borrowed(_)));
        assert!(matches!(decoded.correlation_id, Cow::Borrowed(_)));
        let owned: ClientData<'static> = decoded.clone().into_owned();
        assert!(matches!(owned.payload, Cow::Owned(_)));
        assert!(matches!(owned.config_name, Some(Cow::Owned(_))));
        drop(bytes);
        assert_eq!(owned, client_data());

        let bytes = extension_data().to_vec();
        let owned = ExtensionData::decode(&bytes).unwrap().into_owned();
        drop(bytes);
        assert!(matches!(owned.payload, Some(Cow::Owned(_))));
        assert_eq!(owned, extension_data());
    }

    #[test]
    fn common_fields_and_expiry() {
        let cd = client_data();
        assert_eq!(
            CommonFields::correlation_id(&cd),
            "07d78e95-2c4d-4899-957c-b9e5a3701fbb"
        );
        assert_eq!(
            cd.expires_at(),
            Some(kaa_ism::UnixMillis(1_490_262_793_349 + 3_600_000))
        );
        let ed = ExtensionData {
            timeout: 0,
            ..extension_data()
        };
        assert!(!ed.is_expired(kaa_ism::UnixMillis(i64::MAX)));
        let ed = extension_data();
        assert!(ed.is_expired(kaa_ism::UnixMillis(1_490_262_793_349 + 3_600_001)));
        assert_eq!(CommonFields::timeout(&ed), 3_600_000);
        assert_eq!(CommonFields::timestamp(&ed), 1_490_262_793_349);
    }

    #[test]
    fn errors_name_record_and_field() {
        let mut bytes = client_data().to_vec();
        bytes.truncate(bytes.len() - 20); // inside the payload
        let err = ClientData::decode(&bytes).unwrap_err();
        assert_eq!((err.record, err.field), ("ClientData", "payload"));
        assert!(matches!(err.kind, DecodeErrorKind::LengthPastEnd { .. }));
        assert!(err.to_string().starts_with("ClientData.payload: "), "{err}");
    }
}
