//! The rules of a 6/CDTP answer, written once for both sides: what a provider
//! answers for a [`ConfigRequest`] ([`ConfigResponse::answer`], which picks
//! [`ConfigResponse::current`] or [`ConfigResponse::unchanged`], and
//! [`ConfigResponse::error`]) and what a consumer makes of a [`ConfigResponse`]
//! ([`ConfigResponse::read`]).
//!
//! ```
//! use kaa_cdtp::{ConfigAnswer, ConfigRequest, ConfigResponse, Current};
//!
//! let request = ConfigRequest {
//!     correlation_id: "c-1".into(),
//!     app_version_name: "kettle-v1".into(),
//!     endpoint_id: "ep-1".into(),
//!     ..Default::default()
//! };
//! // The provider holds configuration "v7" for the endpoint.
//! let current = Current::Config { config_id: "v7", content: br#"{"rate":5}"# };
//! let response = ConfigResponse::answer(&request, current, 1_700_000_000_000);
//! assert_eq!(response.status_code, 200);
//! assert_eq!(
//!     response.read(None),
//!     ConfigAnswer::Config { config_id: "v7", content: br#"{"rate":5}"# }
//! );
//!
//! // A consumer that already holds "v7" hears that nothing changed.
//! let request = ConfigRequest { config_id: Some("v7".into()), ..request };
//! let response = ConfigResponse::answer(&request, current, 1_700_000_000_000);
//! assert_eq!((response.config_id.as_deref(), response.content.as_deref()), (None, None));
//! assert_eq!(response.read(Some("v7")), ConfigAnswer::Unchanged);
//! ```

use std::borrow::Cow;

use crate::{APPLICATION_JSON, ConfigRequest, ConfigResponse};

/// The `configId` with which a provider answers "no configuration" (kaa-rs
/// convention; 6/CDTP does not say): an empty ID, so that a consumer whose
/// endpoint held a configuration learns it is gone, and one that asks with `""`
/// hears "unchanged".
pub const ABSENT_CONFIG_ID: &str = "";

/// The content of the "no configuration" answer: JSON `null`.
pub const ABSENT_CONTENT: &[u8] = b"null";

/// What a provider holds for the endpoint, app version and configuration name a
/// request asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Current<'c> {
    /// A configuration: its ID and its JSON content.
    Config {
        /// Its `configId`.
        config_id: &'c str,
        /// Its content (`application/json`).
        content: &'c [u8],
    },
    /// No configuration.
    Absent,
}

impl<'c> Current<'c> {
    /// The `configId` and content a provider sends for it ([`ABSENT_CONFIG_ID`] and
    /// [`ABSENT_CONTENT`] for [`Current::Absent`]).
    pub fn id_and_content(self) -> (&'c str, &'c [u8]) {
        match self {
            Current::Config { config_id, content } => (config_id, content),
            Current::Absent => (ABSENT_CONFIG_ID, ABSENT_CONTENT),
        }
    }
}

/// What a [`ConfigResponse`] means to the consumer that sent the request, from
/// [`ConfigResponse::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigAnswer<'r> {
    /// The current configuration (2xx, `configId` and content, JSON content
    /// type). A `configId` of `""` is the provider's "no configuration" answer
    /// ([`ABSENT_CONFIG_ID`]) and carries [`ABSENT_CONTENT`].
    Config {
        /// Its `configId`.
        config_id: &'r str,
        /// Its content.
        content: &'r [u8],
    },
    /// The configuration the request named is current (2xx, no content: no
    /// `configId`, or the one asked about).
    Unchanged,
    /// The provider has no configuration (404, or 2xx with `configId` `""` and no
    /// content).
    Absent,
    /// The provider answered with an error (any status but 2xx and 404), with its
    /// reason phrase.
    Error {
        /// `statusCode`.
        status_code: i32,
        /// `reasonPhrase`.
        reason: Option<&'r str>,
    },
    /// A 2xx answer that breaks the rules: nothing in it can be used.
    Invalid(InvalidAnswer),
}

/// How a 2xx [`ConfigResponse`] breaks the rules ([`ConfigAnswer::Invalid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAnswer {
    /// A `configId` (other than the one asked about, or `""`) without content.
    #[error("the configuration provider sent a configId without content")]
    ConfigIdWithoutContent,
    /// Content without a `configId`.
    #[error("the configuration provider sent content without a configId")]
    ContentWithoutConfigId,
    /// Content of another type than `application/json`.
    #[error("the configuration provider sent content that is not application/json")]
    ContentType,
}

/// Whether `content_type` is JSON: `application/json` with any parameters, or
/// empty (the schema's default).
pub fn is_json_content_type(content_type: &str) -> bool {
    let main = content_type.split(';').next().unwrap_or("").trim();
    main.is_empty() || main.eq_ignore_ascii_case(APPLICATION_JSON)
}

impl<'a> ConfigResponse<'a> {
    /// Provider side: the 200 answer to `request` when the provider holds
    /// `current`, sent at `timestamp` (Unix milliseconds):
    ///
    /// - the request's `configId` names the current configuration (or `""` when
    ///   there is none): "Not Modified", with no `configId` and no content;
    /// - else the current configuration ("OK"), or [`ABSENT_CONFIG_ID`] with
    ///   [`ABSENT_CONTENT`] ("No configuration").
    ///
    /// Strings and content are borrowed where `request` and `current` allow.
    pub fn answer(request: &ConfigRequest<'a>, current: Current<'a>, timestamp: i64) -> Self {
        let (config_id, _) = current.id_and_content();
        if request.config_id.as_deref() == Some(config_id) {
            Self::unchanged(request, timestamp)
        } else {
            Self::current(request, current, timestamp)
        }
    }

    /// Provider side: the 200 answer that carries `current` whatever `request`
    /// named: its `configId` and content ("OK"), or [`ABSENT_CONFIG_ID`] with
    /// [`ABSENT_CONTENT`] ("No configuration"). [`ConfigResponse::answer`] sends
    /// it unless the request names `current`; a provider that does not compare
    /// (or a test that plays one) sends it directly.
    pub fn current(request: &ConfigRequest<'a>, current: Current<'a>, timestamp: i64) -> Self {
        let (config_id, content) = current.id_and_content();
        let mut response = Self::to_request(request, 200, timestamp);
        response.config_id = Some(config_id.into());
        response.content = Some(content.into());
        response.reason_phrase = Some(
            match current {
                Current::Config { .. } => "OK",
                Current::Absent => "No configuration",
            }
            .into(),
        );
        response
    }

    /// Provider side: the 200 "Not Modified" answer, with no `configId` and no
    /// content: the configuration `request` named is current.
    /// [`ConfigResponse::answer`] sends it when the request names what the
    /// provider holds.
    pub fn unchanged(request: &ConfigRequest<'a>, timestamp: i64) -> Self {
        let mut response = Self::to_request(request, 200, timestamp);
        response.reason_phrase = Some("Not Modified".into());
        response
    }

    /// Provider side: an error answer (`status_code` 4xx or 5xx, with a reason)
    /// to `request`, or to a request that could not be decoded (`None`: the
    /// correlation ID, app version and endpoint are empty).
    pub fn error(
        request: Option<&ConfigRequest<'a>>,
        status_code: i32,
        reason: impl Into<Cow<'a, str>>,
        timestamp: i64,
    ) -> Self {
        let mut response = match request {
            Some(r) => Self::to_request(r, status_code, timestamp),
            None => ConfigResponse {
                timestamp,
                content_type: APPLICATION_JSON.into(),
                status_code,
                ..Default::default()
            },
        };
        response.reason_phrase = Some(reason.into());
        response
    }

    fn to_request(request: &ConfigRequest<'a>, status_code: i32, timestamp: i64) -> Self {
        ConfigResponse {
            correlation_id: request.correlation_id.clone(),
            timestamp,
            timeout: 0,
            app_version_name: request.app_version_name.clone(),
            endpoint_id: request.endpoint_id.clone(),
            config_id: None,
            content_type: APPLICATION_JSON.into(),
            content: None,
            status_code,
            reason_phrase: None,
        }
    }

    /// Consumer side: what this answer means to a request that named `asked` as
    /// the configuration it holds (see [`ConfigAnswer`] for every case). The
    /// content is not parsed; a consumer that needs JSON checks it.
    pub fn read(&self, asked: Option<&str>) -> ConfigAnswer<'_> {
        let status_code = self.status_code;
        if status_code == 404 {
            return ConfigAnswer::Absent;
        }
        if !(200..300).contains(&status_code) {
            return ConfigAnswer::Error {
                status_code,
                reason: self.reason_phrase.as_deref(),
            };
        }
        match (self.config_id.as_deref(), self.content.as_deref()) {
            (None, None) => ConfigAnswer::Unchanged,
            (Some(id), None) if Some(id) == asked => ConfigAnswer::Unchanged,
            (Some(ABSENT_CONFIG_ID), None) => ConfigAnswer::Absent,
            (Some(_), None) => ConfigAnswer::Invalid(InvalidAnswer::ConfigIdWithoutContent),
            (None, Some(_)) => ConfigAnswer::Invalid(InvalidAnswer::ContentWithoutConfigId),
            (Some(_), Some(_)) if !is_json_content_type(&self.content_type) => {
                ConfigAnswer::Invalid(InvalidAnswer::ContentType)
            }
            (Some(config_id), Some(content)) => ConfigAnswer::Config { config_id, content },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(config_id: Option<&str>) -> ConfigRequest<'_> {
        ConfigRequest {
            correlation_id: "c".into(),
            timestamp: 1,
            timeout: 3_000,
            app_version_name: "av".into(),
            endpoint_id: "ep".into(),
            config_id: config_id.map(Into::into),
            config_name: Some("net".into()),
        }
    }

    const CURRENT: Current<'static> = Current::Config {
        config_id: "v2",
        content: b"{}",
    };

    #[test]
    fn a_provider_answers_every_case_and_a_consumer_reads_it_back() {
        for (asked, current, expected) in [
            (
                None,
                CURRENT,
                ConfigAnswer::Config {
                    config_id: "v2",
                    content: b"{}",
                },
            ),
            (
                Some("v1"),
                CURRENT,
                ConfigAnswer::Config {
                    config_id: "v2",
                    content: b"{}",
                },
            ),
            (Some("v2"), CURRENT, ConfigAnswer::Unchanged),
            (
                None,
                Current::Absent,
                ConfigAnswer::Config {
                    config_id: "",
                    content: b"null",
                },
            ),
            (
                Some("v1"),
                Current::Absent,
                ConfigAnswer::Config {
                    config_id: "",
                    content: b"null",
                },
            ),
            (Some(""), Current::Absent, ConfigAnswer::Unchanged),
        ] {
            let req = request(asked);
            let response = ConfigResponse::answer(&req, current, 5);
            assert_eq!(response.status_code, 200);
            assert_eq!(response.correlation_id, "c");
            assert_eq!((response.timestamp, response.timeout), (5, 0));
            assert_eq!(response.endpoint_id, "ep");
            assert_eq!(response.read(asked), expected, "{asked:?} {current:?}");
        }
    }

    #[test]
    fn current_and_unchanged_are_sent_whatever_the_request_named() {
        let req = request(Some("v2"));
        let full = ConfigResponse::current(&req, CURRENT, 5);
        assert_eq!(
            full.read(Some("v2")),
            ConfigAnswer::Config {
                config_id: "v2",
                content: b"{}"
            }
        );
        assert_eq!(full.reason_phrase.as_deref(), Some("OK"));
        let none = ConfigResponse::current(&req, Current::Absent, 5);
        assert_eq!(
            (none.config_id.as_deref(), none.content.as_deref()),
            (Some(ABSENT_CONFIG_ID), Some(ABSENT_CONTENT))
        );
        let req = request(None);
        let same = ConfigResponse::unchanged(&req, 5);
        assert_eq!(same.read(None), ConfigAnswer::Unchanged);
        assert_eq!(
            (same.status_code, same.reason_phrase.as_deref()),
            (200, Some("Not Modified"))
        );
    }

    #[test]
    fn errors_and_broken_answers_are_read_as_such() {
        let req = request(None);
        let e = ConfigResponse::error(Some(&req), 503, "busy", 5);
        assert_eq!(
            e.read(None),
            ConfigAnswer::Error {
                status_code: 503,
                reason: Some("busy")
            }
        );
        let e = ConfigResponse::error(None, 400, "malformed", 5);
        assert_eq!(e.correlation_id, "");
        assert_eq!(
            ConfigResponse::error(Some(&req), 404, "none", 5).read(None),
            ConfigAnswer::Absent
        );
        let ok = ConfigResponse::answer(&req, CURRENT, 5);
        let broken = |f: fn(&mut ConfigResponse<'_>), expected: ConfigAnswer<'_>| {
            let mut r = ok.clone();
            f(&mut r);
            assert_eq!(r.read(Some("v1")), expected);
        };
        broken(
            |r| r.content = None,
            ConfigAnswer::Invalid(InvalidAnswer::ConfigIdWithoutContent),
        );
        broken(
            |r| r.config_id = None,
            ConfigAnswer::Invalid(InvalidAnswer::ContentWithoutConfigId),
        );
        broken(
            |r| r.content_type = "text/plain".into(),
            ConfigAnswer::Invalid(InvalidAnswer::ContentType),
        );
        broken(
            |r| {
                r.config_id = Some("".into());
                r.content = None;
            },
            ConfigAnswer::Absent,
        );
        broken(
            |r| r.content_type = "Application/JSON; charset=utf-8".into(),
            ConfigAnswer::Config {
                config_id: "v2",
                content: b"{}",
            },
        );
        broken(
            |r| r.content_type = "".into(),
            ConfigAnswer::Config {
                config_id: "v2",
                content: b"{}",
            },
        );
    }
}
