//! Which configurations a simulated device rejects ([`RejectRules`]): a stable
//! share of (device, configuration) pairs (`--reject-rate`) and JSON Pointer
//! conditions on the configuration (`--reject-if`), so a staged rollout can be
//! watched failing.
//!
//! The rate is deterministic: device `token` rejects configuration `config_id`
//! when the FNV-1a 64-bit hash of `token`, a zero byte and `config_id`, as a
//! fraction of 2⁶⁴ ([`reject_fraction`]), is below the rate. The same device
//! therefore always answers the same configuration the same way (across
//! restarts, pushes and processes), a different configuration is a fresh draw,
//! and with many devices the share rejecting is close to the rate.
//!
//! ```
//! use kaa_examples::device::{RejectIf, RejectRules};
//! use serde_json::json;
//!
//! let mut rules = RejectRules::default();
//! rules.rate = 0.1;
//! rules.conditions.push("/wifi/security=\"WPA2\"".parse::<RejectIf>().unwrap());
//! let (status, reason) = rules
//!     .decide("dev-1", "c1", &json!({"wifi": {"security": "WPA2"}}))
//!     .expect("the condition matches");
//! assert_eq!(status, 400);
//! assert!(reason.contains("/wifi/security"), "{reason}");
//! ```

use std::fmt;
use std::str::FromStr;

use kaa_cmp::delta::{PointerBuf, parse_pointer};
use serde_json::Value;

/// One `--reject-if` condition: `<JSON Pointer>` (reject when the pointer
/// resolves in the configuration) or `<JSON Pointer>=<JSON value>` (reject when
/// it resolves to that value, compared as `serde_json` values: `/rate=5`
/// matches `5`, not `5.0` nor `"5"`).
///
/// Parsing splits at the first `=` whose right side is valid JSON (so a pointer
/// may itself contain `=`, and strings must be quoted: `/ssid="home"`); a `=`
/// with no JSON after any of them is an error rather than a silent pointer.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectIf {
    /// Where to look (RFC 6901).
    pub pointer: PointerBuf,
    /// `None`: reject when the pointer resolves; else when it resolves to this.
    pub equals: Option<Value>,
}

impl RejectIf {
    /// Whether `config` meets the condition.
    pub fn matches(&self, config: &Value) -> bool {
        match (self.pointer.resolve(config), &self.equals) {
            (Ok(_), None) => true,
            (Ok(found), Some(value)) => found == value,
            (Err(_), _) => false,
        }
    }
}

impl fmt::Display for RejectIf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.equals {
            None => write!(f, "{} exists", self.pointer.as_str()),
            Some(v) => write!(f, "{} is {v}", self.pointer.as_str()),
        }
    }
}

impl FromStr for RejectIf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut saw_equals = false;
        for (at, _) in s.match_indices('=') {
            saw_equals = true;
            if let Ok(value) = serde_json::from_str::<Value>(&s[at + 1..]) {
                return Ok(RejectIf {
                    pointer: parse_pointer(&s[..at])?,
                    equals: Some(value),
                });
            }
        }
        if saw_equals {
            return Err(format!(
                "{s:?}: the value after `=` is not JSON (quote strings: /ssid=\"home\")"
            ));
        }
        Ok(RejectIf {
            pointer: parse_pointer(s)?,
            equals: None,
        })
    }
}

/// Which configurations a device rejects, and how it says so. The default
/// rejects nothing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RejectRules {
    /// The share (0..=1) of (device, configuration) pairs rejected, decided by
    /// [`reject_fraction`]; 0 rejects none, 1 all.
    pub rate: f64,
    /// Reject when any of these matches the configuration as the device
    /// received it (with delta pointers, the view `{"<pointer>": <part>, …}`).
    pub conditions: Vec<RejectIf>,
    /// The status code of the rejections (non-2xx; default 400).
    pub status_code: i32,
}

impl Default for RejectRules {
    fn default() -> Self {
        RejectRules {
            rate: 0.0,
            conditions: Vec::new(),
            status_code: 400,
        }
    }
}

impl RejectRules {
    /// Whether any rule is set (a rate above 0 or a condition).
    pub fn is_active(&self) -> bool {
        self.rate > 0.0 || !self.conditions.is_empty()
    }

    /// `Some((status code, reason phrase))` when device `token` rejects
    /// configuration `config_id` with body `config`: first the conditions, in
    /// order, then the rate. The reason says which rule decided.
    pub fn decide(&self, token: &str, config_id: &str, config: &Value) -> Option<(i32, String)> {
        if let Some(c) = self.conditions.iter().find(|c| c.matches(config)) {
            return Some((self.status_code, format!("reject-if: {c}")));
        }
        if self.rate > 0.0 {
            let draw = reject_fraction(token, config_id);
            if draw < self.rate {
                return Some((
                    self.status_code,
                    format!(
                        "reject-rate {}: this device rejects configuration {config_id} (draw {draw:.4})",
                        self.rate
                    ),
                ));
            }
        }
        None
    }
}

/// The stable draw in `[0, 1)` behind [`RejectRules::rate`]: FNV-1a 64 of
/// `token`, a zero byte and `config_id`, divided by 2⁶⁴.
pub fn reject_fraction(token: &str, config_id: &str) -> f64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in token.bytes().chain([0]).chain(config_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // The top 53 bits make an exact f64 fraction.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a `--reject-rate`: a number from 0 to 1.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?}: expected a number from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_parse_and_match() {
        let exists: RejectIf = "/debug".parse().unwrap();
        assert_eq!(exists.equals, None);
        assert!(exists.matches(&json!({"debug": false})));
        assert!(!exists.matches(&json!({"rate": 1})));

        let eq: RejectIf = "/wifi/security=\"WPA2\"".parse().unwrap();
        assert_eq!(eq.pointer.as_str(), "/wifi/security");
        assert!(eq.matches(&json!({"wifi": {"security": "WPA2"}})));
        assert!(!eq.matches(&json!({"wifi": {"security": "WPA3"}})));
        assert!(!eq.matches(&json!({"wifi": 1})));

        let num: RejectIf = "/rules/1=5".parse().unwrap();
        assert!(num.matches(&json!({"rules": [0, 5]})));
        let obj: RejectIf = "/a={\"b\":[1,null]}".parse().unwrap();
        assert!(obj.matches(&json!({"a": {"b": [1, null]}})));

        // A value holding `=`, and a pointer holding `=`.
        let s: RejectIf = "/k=\"a=b\"".parse().unwrap();
        assert_eq!((s.pointer.as_str(), s.equals), ("/k", Some(json!("a=b"))));
        let p: RejectIf = "/x=y=true".parse().unwrap();
        assert_eq!((p.pointer.as_str(), p.equals), ("/x=y", Some(json!(true))));

        let err = "/ssid=home".parse::<RejectIf>().unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
        assert!("ssid".parse::<RejectIf>().is_err());
        assert!("/a~2".parse::<RejectIf>().is_err());
    }

    #[test]
    fn rate_is_stable_and_close_to_its_share() {
        // Stable: the same pair, the same draw, pinned so a change of hash is seen.
        assert_eq!(
            reject_fraction("dev-1", "c1"),
            reject_fraction("dev-1", "c1")
        );
        assert_ne!(
            reject_fraction("dev-1", "c1"),
            reject_fraction("dev-1", "c2")
        );
        assert_ne!(
            reject_fraction("dev-1", "c1"),
            reject_fraction("dev-1c", "1")
        );
        assert_eq!(format!("{:.6}", reject_fraction("dev-1", "c1")), "0.394972");

        let mut rules = RejectRules::default();
        assert!(!rules.is_active());
        rules.rate = 0.1;
        assert!(rules.is_active());
        let config = json!({});
        let rejected = (1..=10_000)
            .filter(|i| {
                rules
                    .decide(&format!("dev-{i}"), "0123456789abcdef", &config)
                    .is_some()
            })
            .count();
        assert!((900..=1100).contains(&rejected), "{rejected} of 10000");
        // Each device decides the same way every time.
        for i in 1..=200 {
            let token = format!("dev-{i}");
            assert_eq!(
                rules.decide(&token, "cfg", &config),
                rules.decide(&token, "cfg", &config)
            );
        }
        rules.rate = 0.0;
        assert!(rules.decide("dev-1", "c1", &config).is_none());
        rules.rate = 1.0;
        let (status, reason) = rules.decide("dev-1", "c1", &config).unwrap();
        assert_eq!(status, 400);
        assert!(reason.starts_with("reject-rate 1:"), "{reason}");
    }

    #[test]
    fn conditions_come_first_with_their_reason() {
        let mut rules = RejectRules {
            rate: 1.0,
            conditions: vec!["/debug".parse().unwrap()],
            status_code: 422,
        };
        let (status, reason) = rules.decide("d", "c", &json!({"debug": 1})).unwrap();
        assert_eq!((status, reason.as_str()), (422, "reject-if: /debug exists"));
        rules.rate = 0.0;
        assert!(rules.decide("d", "c", &json!({"other": 1})).is_none());
        rules.conditions = vec!["/v=2".parse().unwrap()];
        let (_, reason) = rules.decide("d", "c", &json!({"v": 2})).unwrap();
        assert_eq!(reason, "reject-if: /v is 2");
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("NaN").is_err());
    }
}
