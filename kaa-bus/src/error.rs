//! The one error type every [`Bus`](crate::Bus) operation returns.

use std::time::Duration;

/// A boxed error from the transport underneath a bus (async-nats, I/O).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A subject to publish to (or a reply subject) is not a valid concrete NATS
    /// subject: empty, an empty token, a wildcard, whitespace or a control character.
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The rejected subject.
        subject: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A subscription filter is not a valid NATS subject filter (`>` not last, a
    /// wildcard mixed into a token, an empty token, whitespace).
    #[error("invalid subject filter {filter:?}")]
    InvalidFilter {
        /// The rejected filter.
        filter: String,
    },
    /// A queue group name is empty or holds whitespace or a control character.
    #[error("invalid queue group name {queue_group:?}")]
    InvalidQueueGroup {
        /// The rejected name.
        queue_group: String,
    },
    /// The payload is larger than the bus (or the NATS server) accepts.
    #[error("payload of {size} bytes exceeds the maximum payload of {max} bytes")]
    PayloadTooLarge {
        /// The payload size in bytes.
        size: usize,
        /// The largest payload accepted, in bytes.
        max: usize,
    },
    /// A request got no reply within its timeout.
    #[error("request on {subject:?} got no reply within {timeout:?}")]
    Timeout {
        /// The subject the request was published to.
        subject: String,
        /// How long the request waited.
        timeout: Duration,
    },
    /// A request was published to a subject nobody subscribes to (NATS answers such a
    /// request at once with a "no responders" status instead of letting it time out).
    #[error("no responders on {subject:?}")]
    NoResponders {
        /// The subject the request was published to.
        subject: String,
    },
    /// The bus is closed (or its connection was closed for good); nothing more can be
    /// sent or received through it.
    #[error("the bus is closed")]
    Closed,
    /// The NATS configuration is unusable: no server URL, a malformed URL, or an
    /// incomplete set of credential environment variables.
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    /// Connecting to NATS failed (only when retrying the initial connect is off).
    #[error("cannot connect to NATS at {urls}")]
    Connect {
        /// The server URLs tried, comma-separated.
        urls: String,
        /// What async-nats reported.
        #[source]
        source: BoxError,
    },
    /// Any other failure of the transport underneath, with the operation that failed.
    #[error("bus {operation} failed")]
    Transport {
        /// The operation, e.g. `publish`, `subscribe`, `flush`.
        operation: &'static str,
        /// What the transport reported.
        #[source]
        source: BoxError,
    },
}

impl BusError {
    /// True for [`BusError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, BusError::Timeout { .. })
    }

    /// True for [`BusError::NoResponders`].
    pub fn is_no_responders(&self) -> bool {
        matches!(self, BusError::NoResponders { .. })
    }
}
