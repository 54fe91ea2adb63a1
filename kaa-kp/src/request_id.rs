//! The 1/KP request ID: the last topic level when it is a positive integer.

use std::fmt;
use std::num::NonZeroI32;
use std::str::FromStr;

/// A 1/KP request ID: a positive integer that fits 4/ESP's Avro `int`
/// (`1..=i32::MAX`).
///
/// In a topic it is written in canonical decimal form, `[1-9][0-9]*`; see the
/// crate docs for how a topic's last level is read. `Option<RequestId>` is as
/// small as an `i32`.
///
/// ```
/// use kaa_kp::RequestId;
///
/// let id: RequestId = "42".parse()?;
/// assert_eq!(id.get(), 42);
/// assert_eq!(id.to_string(), "42");
/// assert_eq!(RequestId::new(0), None);
/// assert!("007".parse::<RequestId>().is_err());
/// assert_eq!(RequestId::MAX.wrapping_next(), RequestId::MIN);
/// # Ok::<(), kaa_kp::RequestIdError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(NonZeroI32);

/// Why a value or a topic level is not a request ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestIdError {
    /// The text is not made only of ASCII digits (or is empty).
    #[error("not a decimal number")]
    NotDecimal,
    /// The value is zero or negative; request IDs start at 1.
    #[error("request IDs are positive; 0 and negative values are not request IDs")]
    NotPositive,
    /// The text has leading zeros, e.g. `007`; only the canonical form is accepted.
    #[error("leading zeros are not allowed in a request ID")]
    LeadingZero,
    /// The value is greater than `i32::MAX` (4/ESP carries request IDs as Avro `int`).
    #[error("request IDs are at most 2147483647 (Avro int)")]
    OutOfRange,
}

impl RequestId {
    /// The smallest request ID, 1.
    pub const MIN: RequestId = match NonZeroI32::new(1) {
        Some(v) => RequestId(v),
        // Evaluated at compile time: 1 is not zero.
        None => unreachable!(),
    };

    /// The largest request ID, `i32::MAX`.
    pub const MAX: RequestId = RequestId(NonZeroI32::MAX);

    /// Wraps a positive `i32`; `None` for zero and negative values.
    pub const fn new(value: i32) -> Option<Self> {
        if value <= 0 {
            return None;
        }
        match NonZeroI32::new(value) {
            Some(v) => Some(RequestId(v)),
            None => None,
        }
    }

    /// The value, always in `1..=i32::MAX`.
    pub const fn get(self) -> i32 {
        self.0.get()
    }

    /// The next request ID, wrapping from [`RequestId::MAX`] to [`RequestId::MIN`].
    ///
    /// A device-side client can number its requests with this.
    pub const fn wrapping_next(self) -> Self {
        match self.get().checked_add(1) {
            Some(next) => match RequestId::new(next) {
                Some(id) => id,
                None => RequestId::MIN,
            },
            None => RequestId::MIN,
        }
    }

    /// Parses the canonical decimal form `[1-9][0-9]*` within `1..=i32::MAX`.
    ///
    /// Signs, leading zeros, whitespace and anything but ASCII digits are rejected.
    pub fn parse_canonical(text: &str) -> Result<Self, RequestIdError> {
        let bytes = text.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(RequestIdError::NotDecimal);
        }
        if bytes.iter().all(|&b| b == b'0') {
            return Err(RequestIdError::NotPositive);
        }
        if bytes.first() == Some(&b'0') {
            return Err(RequestIdError::LeadingZero);
        }
        // i32::MAX has 10 digits; anything longer is out of range and must not
        // overflow the accumulator below.
        if bytes.len() > 10 {
            return Err(RequestIdError::OutOfRange);
        }
        let value = bytes
            .iter()
            .fold(0_i64, |acc, &b| acc * 10 + i64::from(b - b'0'));
        i32::try_from(value)
            .ok()
            .and_then(RequestId::new)
            .ok_or(RequestIdError::OutOfRange)
    }
}

impl FromStr for RequestId {
    type Err = RequestIdError;

    /// Same as [`RequestId::parse_canonical`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestId::parse_canonical(s)
    }
}

impl TryFrom<i32> for RequestId {
    type Error = RequestIdError;

    /// For a 4/ESP `requestId`: fails with [`RequestIdError::NotPositive`] for
    /// zero and negative values.
    fn try_from(value: i32) -> Result<Self, Self::Error> {
        RequestId::new(value).ok_or(RequestIdError::NotPositive)
    }
}

impl From<RequestId> for i32 {
    fn from(id: RequestId) -> i32 {
        id.get()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.get(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_accepts_positive_only() {
        assert_eq!(RequestId::new(1).map(RequestId::get), Some(1));
        assert_eq!(RequestId::new(i32::MAX).map(RequestId::get), Some(i32::MAX));
        assert_eq!(RequestId::new(0), None);
        assert_eq!(RequestId::new(-1), None);
        assert_eq!(RequestId::new(i32::MIN), None);
        assert_eq!(RequestId::try_from(-5), Err(RequestIdError::NotPositive));
        assert_eq!(i32::from(RequestId::MIN), 1);
    }

    #[test]
    fn option_is_niche_packed() {
        assert_eq!(
            std::mem::size_of::<Option<RequestId>>(),
            std::mem::size_of::<i32>()
        );
    }

    #[test]
    fn canonical_parse() {
        let cases: &[(&str, Result<i32, RequestIdError>)] = &[
            ("1", Ok(1)),
            ("42", Ok(42)),
            ("2147483647", Ok(i32::MAX)),
            ("2147483648", Err(RequestIdError::OutOfRange)),
            ("9999999999", Err(RequestIdError::OutOfRange)),
            ("99999999999999999999999", Err(RequestIdError::OutOfRange)),
            ("0", Err(RequestIdError::NotPositive)),
            ("000", Err(RequestIdError::NotPositive)),
            ("007", Err(RequestIdError::LeadingZero)),
            ("02147483647", Err(RequestIdError::LeadingZero)),
            ("", Err(RequestIdError::NotDecimal)),
            ("-5", Err(RequestIdError::NotDecimal)),
            ("+5", Err(RequestIdError::NotDecimal)),
            (" 5", Err(RequestIdError::NotDecimal)),
            ("5a", Err(RequestIdError::NotDecimal)),
            ("٤٢", Err(RequestIdError::NotDecimal)),
        ];
        for (text, want) in cases {
            let got = text.parse::<RequestId>().map(RequestId::get);
            assert_eq!(&got, want, "{text:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for v in [1, 9, 10, 42, 1_000_000, i32::MAX] {
            let id = RequestId::new(v).unwrap();
            assert_eq!(id.to_string().parse::<RequestId>(), Ok(id));
        }
    }

    #[test]
    fn wrapping_next() {
        assert_eq!(RequestId::MIN.wrapping_next().get(), 2);
        assert_eq!(RequestId::new(41).unwrap().wrapping_next().get(), 42);
        assert_eq!(RequestId::MAX.wrapping_next(), RequestId::MIN);
    }
}
