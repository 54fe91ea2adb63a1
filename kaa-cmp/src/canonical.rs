//! Canonical JSON and config IDs: how a configuration's ID is derived from its
//! content. Part of the protocol for devices that take configuration deltas
//! ([`crate::delta`], a kaa-rs extension): a device that patched its
//! configuration checks the result against the announced config ID with these
//! two functions.
//!
//! 7/CMP calls config IDs opaque, and a plain 7/CMP device must keep treating
//! them so. In kaa-rs they are content hashes, and this module is their
//! definition: ECR (`services/kaa-ecr`) stores every configuration under
//! [`config_id_of`] its content, and the CMX engine computes the same IDs for
//! the documents it diffs.
//!
//! # The canonical form
//!
//! The canonical JSON text of a value is its JSON serialisation with:
//!
//! - **no insignificant whitespace** (nothing between tokens);
//! - **object members sorted by key**, comparing the keys' UTF-8 bytes
//!   (`memcmp` order, which is also Unicode code point order); a configuration
//!   has no duplicate keys (a JSON parser keeps one of them);
//! - **strings** (keys and values) between `"`, with `"` written `\"`, `\`
//!   written `\\`, the control characters U+0008, U+0009, U+000A, U+000C, U+000D
//!   written `\b`, `\t`, `\n`, `\f`, `\r`, every other character below U+0020
//!   written `\u00xx` with **lowercase** hex digits, and everything else
//!   (`/`, U+007F, all non-ASCII) as its raw UTF-8 bytes;
//! - **numbers**: an integer that fits in 64 bits (signed or unsigned) and was
//!   written without fraction or exponent, in plain decimal (`-12`, `0`); every
//!   other number is read as an IEEE-754 double (correctly rounded) and written
//!   with the shortest digits that read back to the same double (Ryū): in plain
//!   decimal when x = 0 or 1e-5 ≤ |x| < 1e16, always with a fraction (`1.5`, `100.0`,
//!   `0.00001`, `-0.0`), else as `<digits>e<sign><exponent>` with one digit
//!   before the optional fraction and an explicit sign (`1e+16`, `1.5e+16`,
//!   `1e-6`, `-2.5e-300`);
//! - `true`, `false`, `null` as themselves.
//!
//! That is exactly what `serde_json` writes for a [`serde_json::Value`] once the
//! object keys are sorted, and this crate reads numbers with its
//! `float_roundtrip` feature, so that a decoded double prints back as it was
//! written (the default parser may miss by one unit in the last place).
//!
//! # The config ID
//!
//! The config ID of a configuration is the SHA-256 of its canonical JSON text
//! (UTF-8), as **lowercase hex, truncated to the first [`CONFIG_ID_HEX_LEN`]
//! (32) digits** (128 bits). The absent configuration of 7/CMP (`config: null`
//! with `configId: ""`) is the one exception: its ID is [`ABSENT_CONFIG_ID`],
//! the empty string, while a configuration whose content *is* `null` has the
//! ID of the text `null`.
//!
//! A device that cannot reproduce the canonical form exactly (a double it
//! prints otherwise, say) loses nothing but efficiency: its check fails, and it
//! asks for the whole configuration, which it takes as sent.
//!
//! ```
//! use kaa_cmp::canonical::{canonical_json, config_id, config_id_of};
//! use serde_json::json;
//!
//! let config = json!({"ssid": "Smart Teapot", "mode": "AP", "rate": 1.5, "tags": ["a", "b"]});
//! let text = canonical_json(&config);
//! assert_eq!(text, r#"{"mode":"AP","rate":1.5,"ssid":"Smart Teapot","tags":["a","b"]}"#);
//! assert_eq!(config_id(&text), config_id_of(&config));
//! assert_eq!(config_id_of(&config), "bd075b2e150a9987b4152cfaafc7230d");
//! ```

use serde_json::Value;
use sha2::{Digest, Sha256};

/// How many lowercase hex digits of the SHA-256 make a config ID (128 bits).
pub const CONFIG_ID_HEX_LEN: usize = 32;

/// The config ID of the absent configuration (7/CMP: `configId: ""` with
/// `config: null`).
pub const ABSENT_CONFIG_ID: &str = "";

/// The canonical JSON text of `value` (see the [module docs](self)).
///
/// ```
/// use kaa_cmp::canonical::canonical_json;
/// let value: serde_json::Value = serde_json::from_str(r#"{ "b": 1e2, "a": [true, null, "\u001f/é"] }"#).unwrap();
/// assert_eq!(canonical_json(&value), "{\"a\":[true,null,\"\\u001f/é\"],\"b\":100.0}");
/// ```
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    // Only UTF-8 went in: `serde_json` writes strings as UTF-8 and the rest is
    // ASCII punctuation.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the canonical JSON text of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(key, out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing a string, number, boolean or null into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// The config ID of canonical JSON text: the first [`CONFIG_ID_HEX_LEN`]
/// lowercase hex digits of its SHA-256.
///
/// ```
/// use kaa_cmp::canonical::config_id;
/// // SHA-256("null") = 74234e98afe7498fb5daf1f36ac2d78a…
/// assert_eq!(config_id("null"), "74234e98afe7498fb5daf1f36ac2d78a");
/// ```
pub fn config_id(canonical_json: &str) -> String {
    let digest = Sha256::digest(canonical_json.as_bytes());
    let mut id = hex::encode(digest);
    id.truncate(CONFIG_ID_HEX_LEN);
    id
}

/// The config ID of a configuration: [`config_id`] of its [`canonical_json`].
/// (For the absent configuration use [`ABSENT_CONFIG_ID`].)
pub fn config_id_of(value: &Value) -> String {
    let mut text = Vec::new();
    write_canonical(value, &mut text);
    let digest = Sha256::digest(&text);
    let mut id = hex::encode(digest);
    id.truncate(CONFIG_ID_HEX_LEN);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The IDs ECR has stored: they must never change.
    #[test]
    fn pinned_config_ids() {
        assert_eq!(config_id("null"), "74234e98afe7498fb5daf1f36ac2d78a");
        assert_eq!(config_id_of(&Value::Null), config_id("null"));
        let cases = [
            (json!({}), "{}"),
            (json!([]), "[]"),
            (
                json!({"b": 1, "a": [1, {"d": 2, "c": 3}]}),
                r#"{"a":[1,{"c":3,"d":2}],"b":1}"#,
            ),
            (
                json!({"x": -0.0, "y": 1e20, "z": 1.5e-7, "w": 100.0}),
                r#"{"w":100.0,"x":-0.0,"y":1e+20,"z":1.5e-7}"#,
            ),
            (
                json!({"é": "\u{7f}\u{1}\n\"\\/", "E": u64::MAX, "e": i64::MIN}),
                "{\"E\":18446744073709551615,\"e\":-9223372036854775808,\"é\":\"\u{7f}\\u0001\\n\\\"\\\\/\"}",
            ),
        ];
        for (value, text) in &cases {
            assert_eq!(&canonical_json(value), text);
            assert_eq!(config_id_of(value), config_id(text));
        }
        // Where plain decimals end and exponents begin.
        let edges = [
            1e15,
            1e16,
            1.5e16,
            123456789.125,
            1e-5,
            1e-6,
            0.1,
            -2.5e-300,
        ];
        let texts: Vec<String> = edges.iter().map(|f| canonical_json(&json!(f))).collect();
        assert_eq!(
            texts,
            [
                "1000000000000000.0",
                "1e+16",
                "1.5e+16",
                "123456789.125",
                "0.00001",
                "1e-6",
                "0.1",
                "-2.5e-300"
            ]
        );
        // Pinned (computed independently: Python's hashlib over the text above);
        // a change to the canonical form or the hash changes it.
        assert_eq!(
            config_id_of(&cases[2].0),
            "e23f8d4197e06fb14090fd7ae275b6f9"
        );
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": [1, {"d": 2, "c": 3}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":[1,{"c":3,"d":2}],"b":1}"#).unwrap();
        assert_eq!(config_id_of(&a), config_id_of(&b));
        assert_ne!(config_id_of(&a), config_id_of(&json!({"b": 2})));
        assert_eq!(config_id_of(&a).len(), CONFIG_ID_HEX_LEN);
    }

    #[test]
    fn keys_sort_by_utf8_bytes() {
        let v = json!({"b": 0, "B": 0, "é": 0, "z": 0, "\u{1F600}": 0, "\u{FFFF}": 0});
        assert_eq!(
            canonical_json(&v),
            "{\"B\":0,\"b\":0,\"z\":0,\"é\":0,\"\u{FFFF}\":0,\"\u{1F600}\":0}"
        );
    }
}
