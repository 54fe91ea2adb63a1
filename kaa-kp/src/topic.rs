//! The 1/KP MQTT topic grammar: parsing (borrowed, allocation-free) and building.

use std::fmt;

use kaa_ism::subject::{SubjectError, validate_token};

use crate::request_id::{RequestId, RequestIdError};

/// The first level of every 1/KP (version 1) topic.
pub const PREFIX: &str = "kp1";

/// MQTT's limit on the length of a topic name, in bytes (a UTF-8 string with a
/// 16-bit length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The limit on a request topic that carries a request ID: it leaves room for the
/// longer response suffix, `/status`, so that the response topic fits in
/// [`MAX_TOPIC_LEN`].
pub const MAX_REQUEST_TOPIC_LEN: usize = MAX_TOPIC_LEN - "/status".len();

/// Which response a response topic carries: the level appended to the request topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    /// `/status`: a successful (2xx) response, or a server push.
    Status,
    /// `/error`: an error response; the payload is an [`ErrorResponse`](crate::ErrorResponse).
    Error,
}

impl ResponseKind {
    /// The topic level: `status` or `error`.
    pub const fn level(self) -> &'static str {
        match self {
            ResponseKind::Status => "status",
            ResponseKind::Error => "error",
        }
    }

    /// The kind a response with this HTTP-style status code is published as:
    /// [`Status`](ResponseKind::Status) for 2xx, [`Error`](ResponseKind::Error)
    /// for anything else.
    pub const fn for_status_code(status_code: i32) -> Self {
        if status_code >= 200 && status_code < 300 {
            ResponseKind::Status
        } else {
            ResponseKind::Error
        }
    }

    /// The suffix appended to a request topic, with its `/`.
    const fn suffix(self) -> &'static str {
        match self {
            ResponseKind::Status => "/status",
            ResponseKind::Error => "/error",
        }
    }
}

impl fmt::Display for ResponseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.level())
    }
}

/// Why a topic, or a name meant to become a topic level, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is longer than allowed: [`MAX_TOPIC_LEN`], or
    /// [`MAX_REQUEST_TOPIC_LEN`] for the request part of a topic that carries a
    /// request ID.
    #[error("topic is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The length in bytes.
        len: usize,
        /// The limit that applies.
        max: usize,
    },
    /// The first level is not `kp1`, e.g. `kp2` (another KP version).
    #[error("topic starts with {found:?}, not the 1/KP prefix \"kp1\"")]
    NotKp1 {
        /// The first level (cut to 32 characters).
        found: String,
    },
    /// The topic ends before a required part.
    #[error("topic has no {what}")]
    Missing {
        /// `app version name`, `extension instance name` or `endpoint token`.
        what: &'static str,
    },
    /// A level is empty: `a//b`, a leading or a trailing `/`, or an empty name.
    #[error("{what} (topic level {level}) is empty")]
    EmptyLevel {
        /// The part the level belongs to, e.g. `app version name`.
        what: &'static str,
        /// The 1-based index of the level in the topic.
        level: usize,
    },
    /// A level holds a character that a 1/KP topic level cannot hold: the MQTT
    /// wildcards `+` and `#`, NUL, or (in a name given to a builder) `/`.
    #[error(
        "{what} (topic level {level}) contains {found:?}, which a 1/KP topic level cannot hold"
    )]
    InvalidCharacter {
        /// The part the level belongs to.
        what: &'static str,
        /// The 1-based index of the level in the topic.
        level: usize,
        /// The first offending character.
        found: char,
    },
    /// The last level (before any `/status` or `/error`) is made only of ASCII
    /// digits but is not a request ID: `0`, leading zeros, or past `i32::MAX`.
    #[error("the last topic level is all digits but not a valid request ID: {0}")]
    InvalidRequestId(#[from] RequestIdError),
    /// A path given to a builder is neither empty nor starts with `/`.
    #[error("{what} must start with '/'")]
    MissingLeadingSlash {
        /// `resource path` or `extension path`.
        what: &'static str,
    },
    /// A builder was asked for a topic without a request ID whose last level is
    /// all digits: it would be read back as a request ID (or rejected as an
    /// invalid one).
    #[error("the {what} ends in a level made only of digits, which would be read as a request ID")]
    NumericLastLevel {
        /// `resource path`, `extension path` or `endpoint token`.
        what: &'static str,
    },
    /// A name is not usable as a NATS subject token (see
    /// [`validate_subject_token`]).
    #[error(transparent)]
    NotSubjectToken(#[from] SubjectError),
}

/// A parsed 1/KP MQTT topic, borrowing from the topic string.
///
/// Grammar (see the crate docs for the request ID and response suffix rules):
///
/// ```text
/// kp1/<appVersionName>/<extensionInstanceName>/<endpointToken>[/<resource…>][/<requestId>][/status|/error]
///                                             \______ extension path ______/
/// ```
///
/// For endpoint-aware extensions (7/CMP and most others) the first level after the
/// extension instance name is the endpoint token ([`endpoint_token`](Topic::endpoint_token))
/// and the rest is the resource path ([`resource_path`](Topic::resource_path)). A
/// parser cannot tell whether an extension is endpoint-aware, so the endpoint-unaware
/// view, everything after the extension instance name, is
/// [`extension_path`](Topic::extension_path).
///
/// ```
/// use kaa_kp::{ResponseKind, Topic};
///
/// let t = Topic::parse("kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/network/42/status")?;
/// assert_eq!(t.app_version_name(), "smart-kettle-v3");
/// assert_eq!(t.extension_instance_name(), "cmx");
/// assert_eq!(t.endpoint_token(), "JTjdbENzHh");
/// assert_eq!(t.resource_path(), "/config/json/network");
/// assert_eq!(t.extension_path(), "/JTjdbENzHh/config/json/network");
/// assert_eq!(t.request_id().map(|id| id.get()), Some(42));
/// assert_eq!(t.response(), Some(ResponseKind::Status));
/// assert_eq!(t.request_topic(), "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/network/42");
/// # Ok::<(), kaa_kp::TopicError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic<'a> {
    topic: &'a str,
    request_len: usize,
    app_version_name: &'a str,
    extension_instance_name: &'a str,
    extension_path: &'a str,
    endpoint_token: &'a str,
    resource_path: &'a str,
    request_id: Option<RequestId>,
    response: Option<ResponseKind>,
}

impl<'a> Topic<'a> {
    /// Parses and classifies any 1/KP topic: a trailing `status` or `error` level
    /// makes it a response topic ([`response`](Topic::response) is `Some`).
    ///
    /// This is the view of whoever receives responses (a device-side client). A
    /// server receiving requests uses [`parse_request`](Topic::parse_request),
    /// because a request to a resource whose last level is `status` or `error`
    /// (e.g. the 7/CMP named configuration `config/json/status`) is otherwise
    /// read as a response.
    ///
    /// Never allocates on success.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        parse(topic, true)
    }

    /// Parses a request topic: every level after the extension instance name is
    /// part of the request (token, resource path, request ID); `status` and
    /// `error` are ordinary levels. [`response`](Topic::response) is always `None`.
    ///
    /// Never allocates on success.
    pub fn parse_request(topic: &'a str) -> Result<Self, TopicError> {
        parse(topic, false)
    }

    /// The whole topic, as parsed.
    pub fn as_str(&self) -> &'a str {
        self.topic
    }

    /// The application version name (level 2).
    pub fn app_version_name(&self) -> &'a str {
        self.app_version_name
    }

    /// The extension instance name (level 3), e.g. `cmx`.
    pub fn extension_instance_name(&self) -> &'a str {
        self.extension_instance_name
    }

    /// The endpoint token: the level after the extension instance name, read as
    /// an endpoint-aware extension does. Never empty.
    pub fn endpoint_token(&self) -> &'a str {
        self.endpoint_token
    }

    /// The resource path after the endpoint token, with its leading `/`, without
    /// the request ID and response suffix: what 4/ESP `ClientData.resourcePath`
    /// carries, e.g. `/config/json`. Empty if the topic ends at the token.
    pub fn resource_path(&self) -> &'a str {
        self.resource_path
    }

    /// The endpoint-unaware view: everything after the extension instance name,
    /// with its leading `/`, without the request ID and response suffix, e.g.
    /// `/<token>/config/json`. Never empty.
    pub fn extension_path(&self) -> &'a str {
        self.extension_path
    }

    /// The request ID, if the topic carries one.
    pub fn request_id(&self) -> Option<RequestId> {
        self.request_id
    }

    /// `Some` if this is a response topic (ends in `/status` or `/error`, and was
    /// parsed with [`Topic::parse`]).
    pub fn response(&self) -> Option<ResponseKind> {
        self.response
    }

    /// The request topic: the whole topic without the response suffix. For a
    /// request topic, the whole topic. A client matches responses to its pending
    /// requests with this.
    pub fn request_topic(&self) -> &'a str {
        self.topic.get(..self.request_len).unwrap_or(self.topic)
    }

    /// The response topic for this topic's request: [`request_topic`](Topic::request_topic)
    /// plus `/status` or `/error`. Fits in [`MAX_TOPIC_LEN`] whenever the topic
    /// carries a request ID.
    pub fn response_topic(&self, kind: ResponseKind) -> String {
        response_topic(self.request_topic(), kind)
    }

    /// Checks that the app version name, extension instance name and endpoint
    /// token can also be used as NATS subject tokens (no `.`, `*`, `>`,
    /// whitespace or control characters), for services that put them into 3/ISM
    /// subjects. MQTT allows those characters, so [`Topic::parse`] does not.
    pub fn validate_subject_tokens(&self) -> Result<(), TopicError> {
        validate_subject_token(self.app_version_name, "app version name")?;
        validate_subject_token(self.extension_instance_name, "extension instance name")?;
        validate_subject_token(self.endpoint_token, "endpoint token")
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.topic)
    }
}

/// Checks that `name` can be used as one NATS subject token (3/ISM): non-empty,
/// no `.`, `*`, `>`, whitespace or control character. `what` names the thing in
/// the error, e.g. `"extension instance name"`.
///
/// ```
/// use kaa_kp::validate_subject_token;
/// assert!(validate_subject_token("cmx_ota", "extension instance name").is_ok());
/// assert!(validate_subject_token("cmx.ota", "extension instance name").is_err());
/// ```
pub fn validate_subject_token(name: &str, what: &'static str) -> Result<(), TopicError> {
    Ok(validate_token(name, what)?)
}

/// Builds an endpoint-aware request topic:
/// `kp1/<app_version>/<extension_instance>/<endpoint_token><resource_path>[/<request_id>]`.
///
/// `resource_path` is empty or starts with `/` (as 4/ESP `resourcePath` does).
/// Every name and level is validated (non-empty; no `/` inside a name; no `+`,
/// `#` or NUL). Without a request ID the last level must not be all digits, since
/// it would be read back as one. With a request ID the topic must leave room for
/// its response suffix ([`MAX_REQUEST_TOPIC_LEN`]).
///
/// ```
/// use kaa_kp::{request_topic, RequestId};
///
/// let t = request_topic("smart-kettle-v3", "cmx", "JTjdbENzHh", "/config/json", RequestId::new(42))?;
/// assert_eq!(t, "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/42");
/// let t = request_topic("smart-kettle-v3", "cmx", "JTjdbENzHh", "/applied/json", None)?;
/// assert_eq!(t, "kp1/smart-kettle-v3/cmx/JTjdbENzHh/applied/json");
/// assert!(request_topic("smart-kettle-v3", "cmx", "JTjdbENzHh", "/config/json/7", None).is_err());
/// # Ok::<(), kaa_kp::TopicError>(())
/// ```
pub fn request_topic(
    app_version: &str,
    extension_instance: &str,
    endpoint_token: &str,
    resource_path: &str,
    request_id: Option<RequestId>,
) -> Result<String, TopicError> {
    build(
        app_version,
        extension_instance,
        Path {
            first: endpoint_token,
            first_what: ENDPOINT_TOKEN,
            rest: resource_path,
            rest_what: RESOURCE_PATH,
        },
        request_id,
        None,
    )
}

/// Builds an endpoint-unaware request topic:
/// `kp1/<app_version>/<extension_instance><extension_path>[/<request_id>]`.
///
/// `extension_path` starts with `/` and has at least one level; the rules of
/// [`request_topic`] apply.
///
/// ```
/// use kaa_kp::extension_request_topic;
/// let t = extension_request_topic("smart-kettle-v3", "epr", "/json", None)?;
/// assert_eq!(t, "kp1/smart-kettle-v3/epr/json");
/// // A last level of digits would be read back as a request ID.
/// assert!(extension_request_topic("smart-kettle-v3", "epr", "/protobuf/17", None).is_err());
/// # Ok::<(), kaa_kp::TopicError>(())
/// ```
pub fn extension_request_topic(
    app_version: &str,
    extension_instance: &str,
    extension_path: &str,
    request_id: Option<RequestId>,
) -> Result<String, TopicError> {
    let Some(path) = extension_path.strip_prefix('/') else {
        return Err(if extension_path.is_empty() {
            TopicError::Missing {
                what: EXTENSION_PATH,
            }
        } else {
            TopicError::MissingLeadingSlash {
                what: EXTENSION_PATH,
            }
        });
    };
    let (first, rest) = match path.find('/') {
        Some(i) => path.split_at(i),
        None => (path, ""),
    };
    build(
        app_version,
        extension_instance,
        Path {
            first,
            first_what: EXTENSION_PATH,
            rest,
            rest_what: EXTENSION_PATH,
        },
        request_id,
        None,
    )
}

/// The response topic for a request topic: `<request_topic>/status` or
/// `<request_topic>/error`.
///
/// Only appends; `request_topic` is expected to be a valid request topic (from
/// [`request_topic`], or [`Topic::request_topic`] after parsing). A request topic
/// that carries a request ID is at most [`MAX_REQUEST_TOPIC_LEN`] bytes, so its
/// response topic fits in MQTT's limit.
///
/// ```
/// use kaa_kp::{response_topic, ResponseKind};
/// assert_eq!(response_topic("kp1/v1/cmx/tok/config/json/42", ResponseKind::Error), "kp1/v1/cmx/tok/config/json/42/error");
/// ```
pub fn response_topic(request_topic: &str, kind: ResponseKind) -> String {
    let suffix = kind.suffix();
    let mut out = String::with_capacity(request_topic.len() + suffix.len());
    out.push_str(request_topic);
    out.push_str(suffix);
    out
}

/// Builds the topic a server pushes to when there is no request ID (e.g. a 7/CMP
/// configuration push): `kp1/<app_version>/<extension_instance>/<endpoint_token><resource_path>/status`.
///
/// The rules of [`request_topic`] without a request ID apply, and the whole topic
/// must fit in [`MAX_TOPIC_LEN`].
///
/// ```
/// use kaa_kp::push_topic;
/// let t = push_topic("smart-kettle-v3", "cmx", "JTjdbENzHh", "/config/json/network")?;
/// assert_eq!(t, "kp1/smart-kettle-v3/cmx/JTjdbENzHh/config/json/network/status");
/// # Ok::<(), kaa_kp::TopicError>(())
/// ```
pub fn push_topic(
    app_version: &str,
    extension_instance: &str,
    endpoint_token: &str,
    resource_path: &str,
) -> Result<String, TopicError> {
    build(
        app_version,
        extension_instance,
        Path {
            first: endpoint_token,
            first_what: ENDPOINT_TOKEN,
            rest: resource_path,
            rest_what: RESOURCE_PATH,
        },
        None,
        Some(ResponseKind::Status),
    )
}

const PREFIX_WHAT: &str = "KP prefix";
const APP_VERSION_NAME: &str = "app version name";
const EXTENSION_INSTANCE_NAME: &str = "extension instance name";
const ENDPOINT_TOKEN: &str = "endpoint token";
const RESOURCE_PATH: &str = "resource path";
const EXTENSION_PATH: &str = "extension path";

/// Checks one topic level: non-empty, no `+`, `#` or NUL (and, for names given to
/// builders, no `/`).
fn check_level(level: &str, what: &'static str, index: usize) -> Result<(), TopicError> {
    if level.is_empty() {
        return Err(TopicError::EmptyLevel { what, level: index });
    }
    match level
        .bytes()
        .position(|b| matches!(b, b'+' | b'#' | b'\0' | b'/'))
    {
        None => Ok(()),
        Some(at) => Err(TopicError::InvalidCharacter {
            what,
            level: index,
            // All four are ASCII, so `at` is a char boundary.
            found: level[at..].chars().next().unwrap_or('\0'),
        }),
    }
}

fn is_all_digits(level: &str) -> bool {
    !level.is_empty() && level.bytes().all(|b| b.is_ascii_digit())
}

/// Splits off the first level: `(level, rest after the '/')`.
fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (s, None),
    }
}

fn parse(topic: &str, classify: bool) -> Result<Topic<'_>, TopicError> {
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: MAX_TOPIC_LEN,
        });
    }
    let (prefix, rest) = split_level(topic);
    if prefix != PREFIX {
        return Err(if prefix.is_empty() {
            TopicError::EmptyLevel {
                what: PREFIX_WHAT,
                level: 1,
            }
        } else {
            TopicError::NotKp1 {
                found: prefix.chars().take(32).collect(),
            }
        });
    }
    let Some(rest) = rest else {
        return Err(TopicError::Missing {
            what: APP_VERSION_NAME,
        });
    };
    let (app_version_name, rest) = split_level(rest);
    check_level(app_version_name, APP_VERSION_NAME, 2)?;
    let Some(rest) = rest else {
        return Err(TopicError::Missing {
            what: EXTENSION_INSTANCE_NAME,
        });
    };
    let (extension_instance_name, rest) = split_level(rest);
    check_level(extension_instance_name, EXTENSION_INSTANCE_NAME, 3)?;
    let Some(after_ext) = rest else {
        return Err(TopicError::Missing {
            what: ENDPOINT_TOKEN,
        });
    };
    for (i, level) in after_ext.split('/').enumerate() {
        let what = if i == 0 {
            ENDPOINT_TOKEN
        } else {
            RESOURCE_PATH
        };
        check_level(level, what, 4 + i)?;
    }

    // The extension path with its leading '/': `after_ext` is a suffix of `topic`
    // preceded by the '/' that ended the extension instance name.
    let ext_start = topic.len() - after_ext.len() - 1;
    let mut path = topic.get(ext_start..).unwrap_or_default();
    let mut request_len = topic.len();

    let mut response = None;
    if classify {
        for kind in [ResponseKind::Status, ResponseKind::Error] {
            if let Some(stripped) = path.strip_suffix(kind.suffix()) {
                path = stripped;
                request_len -= kind.suffix().len();
                response = Some(kind);
                break;
            }
        }
    }

    let mut request_id = None;
    if let Some((head, last)) = path.rsplit_once('/')
        && is_all_digits(last)
    {
        request_id = Some(RequestId::parse_canonical(last)?);
        path = head;
    }

    let Some(token_and_resource) = path.strip_prefix('/') else {
        // Only a request ID and/or a response suffix after the extension instance name.
        return Err(TopicError::Missing {
            what: ENDPOINT_TOKEN,
        });
    };
    if request_id.is_some() && request_len > MAX_REQUEST_TOPIC_LEN {
        return Err(TopicError::TooLong {
            len: request_len,
            max: MAX_REQUEST_TOPIC_LEN,
        });
    }
    let (endpoint_token, resource_path) = match token_and_resource.find('/') {
        Some(i) => token_and_resource.split_at(i),
        None => (token_and_resource, ""),
    };

    Ok(Topic {
        topic,
        request_len,
        app_version_name,
        extension_instance_name,
        extension_path: path,
        endpoint_token,
        resource_path,
        request_id,
        response,
    })
}

/// The part of a topic after the extension instance name, as a builder gets it.
struct Path<'s> {
    /// The first level (endpoint token, or the first extension path level).
    first: &'s str,
    first_what: &'static str,
    /// The rest: empty or starting with '/'.
    rest: &'s str,
    rest_what: &'static str,
}

fn build(
    app_version: &str,
    extension_instance: &str,
    path: Path<'_>,
    request_id: Option<RequestId>,
    suffix: Option<ResponseKind>,
) -> Result<String, TopicError> {
    check_level(app_version, APP_VERSION_NAME, 2)?;
    check_level(extension_instance, EXTENSION_INSTANCE_NAME, 3)?;
    check_level(path.first, path.first_what, 4)?;
    let mut last = (path.first, path.first_what);
    if !path.rest.is_empty() {
        let Some(rest) = path.rest.strip_prefix('/') else {
            return Err(TopicError::MissingLeadingSlash {
                what: path.rest_what,
            });
        };
        for (i, level) in rest.split('/').enumerate() {
            check_level(level, path.rest_what, 5 + i)?;
            last = (level, path.rest_what);
        }
    }
    if request_id.is_none() && is_all_digits(last.0) {
        return Err(TopicError::NumericLastLevel { what: last.1 });
    }

    let id_text = request_id.map(|id| id.to_string());
    let request_len = PREFIX.len()
        + 1
        + app_version.len()
        + 1
        + extension_instance.len()
        + 1
        + path.first.len()
        + path.rest.len()
        + id_text.as_ref().map_or(0, |t| 1 + t.len());
    let suffix = suffix.map_or("", ResponseKind::suffix);
    let len = request_len + suffix.len();
    let max = if request_id.is_some() {
        MAX_REQUEST_TOPIC_LEN
    } else {
        MAX_TOPIC_LEN
    };
    if request_len > max {
        return Err(TopicError::TooLong {
            len: request_len,
            max,
        });
    }
    if len > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong {
            len,
            max: MAX_TOPIC_LEN,
        });
    }

    let mut out = String::with_capacity(len);
    out.push_str(PREFIX);
    for part in [app_version, extension_instance, path.first] {
        out.push('/');
        out.push_str(part);
    }
    out.push_str(path.rest);
    if let Some(t) = &id_text {
        out.push('/');
        out.push_str(t);
    }
    out.push_str(suffix);
    Ok(out)
}
