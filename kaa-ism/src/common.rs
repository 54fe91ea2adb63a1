//! The fields every 3/ISM message carries (`correlationId`, `timestamp`,
//! `timeout`), and message expiry.
//!
//! Time is always an argument: nothing here reads a clock.
//!
//! ```
//! use kaa_ism::common::{CommonFields, UnixMillis};
//!
//! struct Ping { correlation_id: String, timestamp: i64, timeout: i64 }
//! impl CommonFields for Ping {
//!     fn correlation_id(&self) -> &str { &self.correlation_id }
//!     fn timestamp(&self) -> i64 { self.timestamp }
//!     fn timeout(&self) -> i64 { self.timeout }
//! }
//!
//! let ping = Ping { correlation_id: "c1".into(), timestamp: 1_000, timeout: 500 };
//! assert!(!ping.is_expired(UnixMillis(1_500)));
//! assert!(ping.is_expired(UnixMillis(1_501)));
//! ```

use std::fmt;
use std::time::Duration;

/// A point in time as a Unix timestamp in milliseconds, the unit 3/ISM uses.
///
/// Protocol code never reads a clock; the caller passes `now` as one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// This instant plus `duration`, saturating at the end of time.
    pub fn saturating_add(self, duration: Duration) -> UnixMillis {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        UnixMillis(self.0.saturating_add(ms))
    }

    /// The time from `earlier` to this instant, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0).unsigned_abs())
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Implements [`CommonFields`] for message types that keep the three fields as
/// `correlation_id` (a string type that derefs to `str`), `timestamp: i64` and
/// `timeout: i64`, and take one lifetime parameter (the borrowing message structs of
/// the protocol crates).
///
/// ```
/// use std::borrow::Cow;
/// use kaa_ism::common::{CommonFields, UnixMillis};
///
/// struct Ping<'a> { correlation_id: Cow<'a, str>, timestamp: i64, timeout: i64 }
/// kaa_ism::impl_common_fields!(Ping);
///
/// let ping = Ping { correlation_id: "c1".into(), timestamp: 1_000, timeout: 500 };
/// assert_eq!(ping.correlation_id(), "c1");
/// assert!(ping.is_expired(UnixMillis(1_501)));
/// ```
#[macro_export]
macro_rules! impl_common_fields {
    ($($ty:ident),+ $(,)?) => {$(
        impl $crate::common::CommonFields for $ty<'_> {
            fn correlation_id(&self) -> &str {
                &self.correlation_id
            }

            fn timestamp(&self) -> i64 {
                self.timestamp
            }

            fn timeout(&self) -> i64 {
                self.timeout
            }
        }
    )+};
}

/// The 3/ISM common fields of a message.
pub trait CommonFields {
    /// Message ID used to track processing across services; log it.
    fn correlation_id(&self) -> &str;

    /// When the message was created, Unix milliseconds.
    fn timestamp(&self) -> i64;

    /// Milliseconds after [`CommonFields::timestamp`] until the message expires;
    /// `0` means it never expires.
    fn timeout(&self) -> i64;

    /// The instant after which the message has expired, if it expires.
    ///
    /// A timeout of `0` means no expiry, as 3/ISM reserves it. A negative timeout is
    /// not defined by 3/ISM; it is treated like `0` (no expiry) rather than dropping
    /// the message, since a sender's bug there should not silently lose data.
    fn expires_at(&self) -> Option<UnixMillis> {
        expires_at(self.timestamp(), self.timeout())
    }

    /// True when `now` is past the message's expiry.
    fn is_expired(&self, now: UnixMillis) -> bool {
        self.expires_at().is_some_and(|deadline| now > deadline)
    }
}

/// The expiry instant for a `timestamp` and `timeout` pair, as [`CommonFields::expires_at`].
pub fn expires_at(timestamp: i64, timeout: i64) -> Option<UnixMillis> {
    (timeout > 0).then(|| UnixMillis(timestamp.saturating_add(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rules() {
        assert_eq!(expires_at(1_000, 0), None);
        assert_eq!(expires_at(1_000, -5), None);
        assert_eq!(expires_at(1_000, 250), Some(UnixMillis(1_250)));
        assert_eq!(expires_at(i64::MAX - 1, 10), Some(UnixMillis(i64::MAX)));
    }

    #[test]
    fn time_arithmetic() {
        let t = UnixMillis(1_000);
        assert_eq!(t.saturating_add(Duration::from_secs(1)), UnixMillis(2_000));
        assert_eq!(
            UnixMillis(i64::MAX).saturating_add(Duration::MAX),
            UnixMillis(i64::MAX)
        );
        assert_eq!(
            UnixMillis(3_000).saturating_duration_since(t),
            Duration::from_secs(2)
        );
        assert_eq!(
            t.saturating_duration_since(UnixMillis(3_000)),
            Duration::ZERO
        );
    }
}
