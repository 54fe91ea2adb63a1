//! `provider.started`: a **kaa-rs extension** to 6/CDTP, not an RFC message.
//!
//! A provider publishes [`ConfigUpdated`](crate::ConfigUpdated) after a write
//! commits, and 3/ISM broadcasts are delivered at most once: a provider replica
//! killed with events still queued never announces those writes. So every provider
//! replica (e.g. ECR) announces its (re)start with a [`ProviderStarted`] broadcast on
//! `kaa.v1.events.{provider}.provider.started`
//! ([`subject::provider_started_subject`](crate::subject::provider_started_subject))
//! once its subscriptions are in place, and a consumer (e.g. CMX) that hears it
//! fetches the configurations of its connected endpoints again.
//!
//! The schema is `kaa-cdtp/schemas/provider-started.avsc` (record
//! `kaa_rs.cdtp.v1.ProviderStarted`); the codec is byte-exact with Apache Avro for it.
//! A consumer that does not know the extension ignores the subject; one that listens
//! to a provider that never sends it simply never re-synchronizes on a provider
//! restart.
//!
//! ```
//! use kaa_cdtp::{ProviderStarted, subject};
//! use kaa_ism::avro::{Decode, Encode};
//! use kaa_ism::subject::Token;
//!
//! let started = ProviderStarted {
//!     correlation_id: "c-1".into(),
//!     timestamp: 1_700_000_000_000,
//!     timeout: 0,
//!     originator_replica_id: "ecr-1".into(),
//! };
//! let to = subject::provider_started_subject("ecr")?;
//! assert_eq!(to, "kaa.v1.events.ecr.provider.started");
//! assert!(subject::provider_started_filter(Token::Any)?.matches(&to));
//! let datum = started.to_vec();
//! assert_eq!(ProviderStarted::decode(&datum)?, started);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;

use bytes::BufMut;
use kaa_ism::avro::{
    Decode, DecodeError, Encode, Reader, long_len, put_long, put_string, string_len, to_static,
};

/// kaa-rs extension (not in 6/CDTP): a provider replica (re)started, broadcast on
/// `kaa.v1.events.{provider}.provider.started`. Avro record
/// `kaa_rs.cdtp.v1.ProviderStarted` (`schemas/provider-started.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderStarted<'a> {
    /// `correlationId`.
    pub correlation_id: Cow<'a, str>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp: i64,
    /// `timeout`, milliseconds; 0 = never.
    pub timeout: i64,
    /// `originatorReplicaId`: the replica that started.
    pub originator_replica_id: Cow<'a, str>,
}

const RECORD: &str = "ProviderStarted";

impl Encode for ProviderStarted<'_> {
    fn encoded_len(&self) -> usize {
        string_len(&self.correlation_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
            + string_len(&self.originator_replica_id)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_string(buf, &self.correlation_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
        put_string(buf, &self.originator_replica_id);
    }
}

impl<'a> Decode<'a> for ProviderStarted<'a> {
    /// Decodes a `ProviderStarted` datum, borrowing every string. Bytes after
    /// `originatorReplicaId` are ignored.
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, RECORD);
        Ok(ProviderStarted {
            correlation_id: Cow::Borrowed(r.string("correlationId")?),
            timestamp: r.long("timestamp")?,
            timeout: r.long("timeout")?,
            originator_replica_id: Cow::Borrowed(r.string("originatorReplicaId")?),
        })
    }
}

impl ProviderStarted<'_> {
    /// Copies every borrowed string, detaching the message from the input buffer.
    pub fn into_owned(self) -> ProviderStarted<'static> {
        ProviderStarted {
            correlation_id: to_static(self.correlation_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
            originator_replica_id: to_static(self.originator_replica_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_ism::common::{CommonFields, UnixMillis};

    #[test]
    fn field_order_and_common_fields() {
        let started = ProviderStarted {
            correlation_id: "c".into(),
            timestamp: 1,
            timeout: 2,
            originator_replica_id: "r".into(),
        };
        assert_eq!(started.to_vec(), [2, b'c', 2, 4, 2, b'r']);
        assert_eq!(started.expires_at(), Some(UnixMillis(3)));
        let owned = {
            let datum = started.to_vec();
            let decoded = ProviderStarted::decode(&datum).unwrap();
            assert!(matches!(decoded.originator_replica_id, Cow::Borrowed(_)));
            decoded.into_owned()
        };
        assert_eq!(owned, started);
        let err = ProviderStarted::decode(&[2, b'c', 2, 4]).unwrap_err();
        assert_eq!(
            (err.record, err.field),
            ("ProviderStarted", "originatorReplicaId")
        );
    }
}
