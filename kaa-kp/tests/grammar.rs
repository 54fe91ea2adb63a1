//! Every 1/KP topic grammar rule, with the RFCs' own examples, and a table of bad
//! input that must give a typed error.

use kaa_kp::{
    MAX_REQUEST_TOPIC_LEN, MAX_TOPIC_LEN, RequestId, RequestIdError, ResponseKind, Topic,
    TopicError, extension_request_topic, push_topic, request_topic, response_topic,
    validate_subject_token,
};

const TOKEN: &str = "JTjdbENzHh";

fn id(v: i32) -> Option<RequestId> {
    Some(RequestId::new(v).unwrap())
}

/// What a parsed topic should show.
#[derive(Debug, PartialEq)]
struct Parts<'a> {
    app: &'a str,
    ext: &'a str,
    token: &'a str,
    resource: &'a str,
    extension_path: &'a str,
    request_id: Option<i32>,
    response: Option<ResponseKind>,
    request_topic: &'a str,
}

fn parts<'a>(t: &Topic<'a>) -> Parts<'a> {
    Parts {
        app: t.app_version_name(),
        ext: t.extension_instance_name(),
        token: t.endpoint_token(),
        resource: t.resource_path(),
        extension_path: t.extension_path(),
        request_id: t.request_id().map(RequestId::get),
        response: t.response(),
        request_topic: t.request_topic(),
    }
}

#[test]
fn common_part_and_token() {
    // 1/KP: kp1/<appversion_name>/<extension_instance_name>/<endpoint_token>…
    let t = Topic::parse("kp1/smart-kettle-v3/dcx/JTjdbENzHh/json").unwrap();
    assert_eq!(
        parts(&t),
        Parts {
            app: "smart-kettle-v3",
            ext: "dcx",
            token: TOKEN,
            resource: "/json",
            extension_path: "/JTjdbENzHh/json",
            request_id: None,
            response: None,
            request_topic: "kp1/smart-kettle-v3/dcx/JTjdbENzHh/json",
        }
    );
    assert_eq!(t.as_str(), "kp1/smart-kettle-v3/dcx/JTjdbENzHh/json");
    assert_eq!(t.to_string(), t.as_str());
}

#[test]
fn token_only_has_empty_resource_path() {
    let t = Topic::parse("kp1/v1/ext/tok").unwrap();
    assert_eq!(t.endpoint_token(), "tok");
    assert_eq!(t.resource_path(), "");
    assert_eq!(t.extension_path(), "/tok");
    let t = Topic::parse("kp1/v1/ext/tok/5").unwrap();
    assert_eq!(t.endpoint_token(), "tok");
    assert_eq!(t.resource_path(), "");
    assert_eq!(t.request_id(), id(5));
}

#[test]
fn rfc_0001_update_42() {
    // "a request sent to `<endpoint_token>/update/42` topic is a request to
    // `<endpoint_token>/update` Resource Path with Request ID `42`."
    let t = Topic::parse("kp1/v1/epmx/JTjdbENzHh/update/42").unwrap();
    assert_eq!(t.endpoint_token(), TOKEN);
    assert_eq!(t.resource_path(), "/update");
    assert_eq!(t.extension_path(), "/JTjdbENzHh/update");
    assert_eq!(t.request_id(), id(42));
    assert_eq!(t.response(), None);
}

#[test]
fn rfc_0001_json_42_status_and_error() {
    // "request sent to `<endpoint_token>/json/42` has the following success response
    // topic: `<endpoint_token>/json/42/status`; the error response topic is
    // `<endpoint_token>/json/42/error`."
    let request = "kp1/v1/dcx/JTjdbENzHh/json/42";
    assert_eq!(
        response_topic(request, ResponseKind::Status),
        "kp1/v1/dcx/JTjdbENzHh/json/42/status"
    );
    assert_eq!(
        response_topic(request, ResponseKind::Error),
        "kp1/v1/dcx/JTjdbENzHh/json/42/error"
    );
    for (topic, kind) in [
        ("kp1/v1/dcx/JTjdbENzHh/json/42/status", ResponseKind::Status),
        ("kp1/v1/dcx/JTjdbENzHh/json/42/error", ResponseKind::Error),
    ] {
        let t = Topic::parse(topic).unwrap();
        assert_eq!(
            parts(&t),
            Parts {
                app: "v1",
                ext: "dcx",
                token: TOKEN,
                resource: "/json",
                extension_path: "/JTjdbENzHh/json",
                request_id: Some(42),
                response: Some(kind),
                request_topic: request,
            }
        );
        assert_eq!(t.response_topic(kind), topic);
    }
}

#[test]
fn rfc_0001_resource_path_examples() {
    // Extension-specific resource paths: `/<endpoint_token>/json`,
    // `/protobuf/<scheme_id>`, `/json`.
    let t = Topic::parse("kp1/v1/dcx/JTjdbENzHh/json").unwrap();
    assert_eq!(t.extension_path(), "/JTjdbENzHh/json");
    let t = Topic::parse("kp1/v1/dcx/protobuf/scheme-7").unwrap();
    assert_eq!(t.extension_path(), "/protobuf/scheme-7");
    let t = Topic::parse("kp1/v1/epr/json").unwrap();
    assert_eq!(t.extension_path(), "/json");
    assert_eq!(t.request_id(), None);
    // A numeric scheme ID as the last level is a request ID: to send one, append a
    // request ID after it.
    let t = Topic::parse("kp1/v1/dcx/protobuf/17/3").unwrap();
    assert_eq!(t.extension_path(), "/protobuf/17");
    assert_eq!(t.request_id(), id(3));
}

#[test]
fn rfc_0007_config_resource_paths() {
    let cases = [
        // Default configuration, backward compatible.
        ("kp1/v1/cmx/JTjdbENzHh/config/json", "/config/json", None),
        (
            "kp1/v1/cmx/JTjdbENzHh/config/json/42",
            "/config/json",
            Some(42),
        ),
        // Named configurations.
        (
            "kp1/v1/cmx/JTjdbENzHh/config/json/network",
            "/config/json/network",
            None,
        ),
        (
            "kp1/v1/cmx/JTjdbENzHh/config/json/display_settings/7",
            "/config/json/display_settings",
            Some(7),
        ),
        ("kp1/v1/cmx/JTjdbENzHh/applied/json", "/applied/json", None),
        (
            "kp1/v1/cmx/JTjdbENzHh/applied/json/network",
            "/applied/json/network",
            None,
        ),
    ];
    for (topic, resource, request_id) in cases {
        for t in [
            Topic::parse(topic).unwrap(),
            Topic::parse_request(topic).unwrap(),
        ] {
            assert_eq!(t.endpoint_token(), TOKEN, "{topic}");
            assert_eq!(t.resource_path(), resource, "{topic}");
            assert_eq!(t.request_id().map(RequestId::get), request_id, "{topic}");
            assert_eq!(t.response(), None, "{topic}");
        }
    }
}

#[test]
fn kaa_client_conventions() {
    // Responses read from `…/config/json/<reqId>/status`; pushes from
    // `…/config/json/status`.
    let t = Topic::parse("kp1/v1/cmx/tok/config/json/1/status").unwrap();
    assert_eq!(t.resource_path(), "/config/json");
    assert_eq!(t.request_id(), id(1));
    assert_eq!(t.response(), Some(ResponseKind::Status));

    let t = Topic::parse("kp1/v1/cmx/tok/config/json/status").unwrap();
    assert_eq!(t.resource_path(), "/config/json");
    assert_eq!(t.request_id(), None);
    assert_eq!(t.response(), Some(ResponseKind::Status));
    assert_eq!(t.request_topic(), "kp1/v1/cmx/tok/config/json");

    let t = Topic::parse("kp1/v1/cmx/tok/config/json/network/status").unwrap();
    assert_eq!(t.resource_path(), "/config/json/network");
    assert_eq!(t.response(), Some(ResponseKind::Status));
}

#[test]
fn parse_request_strips_no_suffix() {
    // 7/CMP allows a named configuration called "status"; a device that requests
    // it without a request ID publishes exactly what a push of the default
    // configuration looks like. The receiving side decides which reading applies.
    let topic = "kp1/v1/cmx/tok/config/json/status";
    let as_request = Topic::parse_request(topic).unwrap();
    assert_eq!(as_request.resource_path(), "/config/json/status");
    assert_eq!(as_request.response(), None);
    assert_eq!(as_request.request_topic(), topic);
    let as_response = Topic::parse(topic).unwrap();
    assert_eq!(as_response.resource_path(), "/config/json");
    assert_eq!(as_response.response(), Some(ResponseKind::Status));

    // With a request ID there is no ambiguity: the suffix is only ever the last level.
    let topic = "kp1/v1/cmx/tok/config/json/error/9";
    for t in [
        Topic::parse(topic).unwrap(),
        Topic::parse_request(topic).unwrap(),
    ] {
        assert_eq!(t.resource_path(), "/config/json/error");
        assert_eq!(t.request_id(), id(9));
        assert_eq!(t.response(), None);
    }

    // The push for the named configuration "status" strips one suffix only.
    let push = push_topic("v1", "cmx", "tok", "/config/json/status").unwrap();
    assert_eq!(push, "kp1/v1/cmx/tok/config/json/status/status");
    let t = Topic::parse(&push).unwrap();
    assert_eq!(t.resource_path(), "/config/json/status");
    assert_eq!(t.response(), Some(ResponseKind::Status));

    // A request topic that ends in a response suffix after a request ID: parse_request
    // reads `status` as an ordinary level, so the request ID is not the last level.
    let t = Topic::parse_request("kp1/v1/cmx/tok/config/json/42/status").unwrap();
    assert_eq!(t.resource_path(), "/config/json/42/status");
    assert_eq!(t.request_id(), None);
}

#[test]
fn request_id_rule() {
    // Canonical positive decimal within i32: a request ID.
    for (topic, want) in [
        ("kp1/v1/cmx/tok/config/json/1", 1),
        ("kp1/v1/cmx/tok/config/json/2147483647", i32::MAX),
        ("kp1/v1/cmx/tok/config/json/2147483647/error", i32::MAX),
    ] {
        assert_eq!(
            Topic::parse(topic).unwrap().request_id(),
            id(want),
            "{topic}"
        );
    }
    // Digits but not a request ID: an error, never a resource level.
    for (topic, why) in [
        ("kp1/v1/cmx/tok/config/json/0", RequestIdError::NotPositive),
        (
            "kp1/v1/cmx/tok/config/json/007",
            RequestIdError::LeadingZero,
        ),
        ("kp1/v1/cmx/tok/config/json/00", RequestIdError::NotPositive),
        (
            "kp1/v1/cmx/tok/config/json/2147483648",
            RequestIdError::OutOfRange,
        ),
        (
            "kp1/v1/cmx/tok/config/json/99999999999999999999",
            RequestIdError::OutOfRange,
        ),
        (
            "kp1/v1/cmx/tok/config/json/0/status",
            RequestIdError::NotPositive,
        ),
        ("kp1/v1/cmx/tok/0", RequestIdError::NotPositive),
    ] {
        assert_eq!(
            Topic::parse(topic),
            Err(TopicError::InvalidRequestId(why)),
            "{topic}"
        );
    }
    // Not all digits: an ordinary level.
    for (topic, resource) in [
        ("kp1/v1/cmx/tok/config/json/-5", "/config/json/-5"),
        ("kp1/v1/cmx/tok/config/json/5a", "/config/json/5a"),
        ("kp1/v1/cmx/tok/config/json/ 5", "/config/json/ 5"),
        ("kp1/v1/cmx/tok/config/json/٤٢", "/config/json/٤٢"),
        ("kp1/v1/cmx/tok/config/json/1.5", "/config/json/1.5"),
    ] {
        let t = Topic::parse(topic).unwrap();
        assert_eq!(t.resource_path(), resource, "{topic}");
        assert_eq!(t.request_id(), None, "{topic}");
    }
    // `+5` holds a wildcard.
    assert!(matches!(
        Topic::parse("kp1/v1/cmx/tok/config/json/+5"),
        Err(TopicError::InvalidCharacter {
            found: '+',
            level: 7,
            ..
        })
    ));
    // Digit-only levels elsewhere are ordinary: a numeric endpoint token.
    let t = Topic::parse("kp1/v1/cmx/0042/config/json/3").unwrap();
    assert_eq!(t.endpoint_token(), "0042");
    assert_eq!(t.resource_path(), "/config/json");
    assert_eq!(t.request_id(), id(3));
}

#[test]
fn names_may_hold_what_mqtt_allows() {
    // MQTT allows these in a topic level; only the NATS check rejects them.
    let t = Topic::parse("kp1/my app.v1/cmx*/to>ken/config/json").unwrap();
    assert_eq!(t.app_version_name(), "my app.v1");
    assert_eq!(t.extension_instance_name(), "cmx*");
    assert_eq!(t.endpoint_token(), "to>ken");
    assert!(matches!(
        t.validate_subject_tokens(),
        Err(TopicError::NotSubjectToken(_))
    ));
    let t = Topic::parse("kp1/smart-kettle-v3/cmx_ota/JTjdbENzHh/config/json").unwrap();
    assert_eq!(t.validate_subject_tokens(), Ok(()));
    // Each of the three names is checked.
    for topic in [
        "kp1/a.b/cmx/tok/config/json",
        "kp1/v1/c.mx/tok/config/json",
        "kp1/v1/cmx/t.ok/config/json",
    ] {
        assert!(
            Topic::parse(topic)
                .unwrap()
                .validate_subject_tokens()
                .is_err(),
            "{topic}"
        );
    }
    assert!(validate_subject_token("cmx", "extension instance name").is_ok());
    assert!(validate_subject_token("", "extension instance name").is_err());
    assert!(validate_subject_token("a b", "app version name").is_err());
}

#[test]
fn builders() {
    assert_eq!(
        request_topic("v1", "cmx", TOKEN, "/config/json", id(42)).unwrap(),
        "kp1/v1/cmx/JTjdbENzHh/config/json/42"
    );
    assert_eq!(
        request_topic("v1", "cmx", TOKEN, "/config/json/network", None).unwrap(),
        "kp1/v1/cmx/JTjdbENzHh/config/json/network"
    );
    assert_eq!(
        request_topic("v1", "cmx", TOKEN, "", id(1)).unwrap(),
        "kp1/v1/cmx/JTjdbENzHh/1"
    );
    assert_eq!(
        request_topic("v1", "cmx", TOKEN, "/config/json/2024", id(2147483647)).unwrap(),
        "kp1/v1/cmx/JTjdbENzHh/config/json/2024/2147483647"
    );
    assert_eq!(
        push_topic("v1", "cmx", TOKEN, "/config/json").unwrap(),
        "kp1/v1/cmx/JTjdbENzHh/config/json/status"
    );
    assert_eq!(
        extension_request_topic("v1", "epr", "/json", id(8)).unwrap(),
        "kp1/v1/epr/json/8"
    );
    assert_eq!(ResponseKind::for_status_code(200), ResponseKind::Status);
    assert_eq!(ResponseKind::for_status_code(299), ResponseKind::Status);
    assert_eq!(ResponseKind::for_status_code(199), ResponseKind::Error);
    assert_eq!(ResponseKind::for_status_code(300), ResponseKind::Error);
    assert_eq!(ResponseKind::for_status_code(404), ResponseKind::Error);
    assert_eq!(ResponseKind::Status.level(), "status");
    assert_eq!(ResponseKind::Error.to_string(), "error");
}

#[test]
fn builder_rejects_bad_names() {
    use TopicError::*;
    let cases: Vec<(Result<String, TopicError>, TopicError)> = vec![
        (
            request_topic("", "cmx", "t", "/config/json", None),
            EmptyLevel {
                what: "app version name",
                level: 2,
            },
        ),
        (
            request_topic("v1", "", "t", "/config/json", None),
            EmptyLevel {
                what: "extension instance name",
                level: 3,
            },
        ),
        (
            request_topic("v1", "cmx", "", "/config/json", None),
            EmptyLevel {
                what: "endpoint token",
                level: 4,
            },
        ),
        (
            request_topic("v/1", "cmx", "t", "/config/json", None),
            InvalidCharacter {
                what: "app version name",
                level: 2,
                found: '/',
            },
        ),
        (
            request_topic("v1", "cm+x", "t", "/config/json", None),
            InvalidCharacter {
                what: "extension instance name",
                level: 3,
                found: '+',
            },
        ),
        (
            request_topic("v1", "cmx", "t#", "/config/json", None),
            InvalidCharacter {
                what: "endpoint token",
                level: 4,
                found: '#',
            },
        ),
        (
            request_topic("v1", "cmx", "t/x", "/config/json", None),
            InvalidCharacter {
                what: "endpoint token",
                level: 4,
                found: '/',
            },
        ),
        (
            request_topic("v1", "cmx", "t", "/config/js\0n", None),
            InvalidCharacter {
                what: "resource path",
                level: 6,
                found: '\0',
            },
        ),
        (
            request_topic("v1", "cmx", "t", "config/json", None),
            MissingLeadingSlash {
                what: "resource path",
            },
        ),
        (
            request_topic("v1", "cmx", "t", "/", None),
            EmptyLevel {
                what: "resource path",
                level: 5,
            },
        ),
        (
            request_topic("v1", "cmx", "t", "/config//json", None),
            EmptyLevel {
                what: "resource path",
                level: 6,
            },
        ),
        (
            request_topic("v1", "cmx", "t", "/config/json/", None),
            EmptyLevel {
                what: "resource path",
                level: 7,
            },
        ),
        (
            request_topic("v1", "cmx", "t", "/config/json/7", None),
            NumericLastLevel {
                what: "resource path",
            },
        ),
        (
            request_topic("v1", "cmx", "t", "/config/json/007", None),
            NumericLastLevel {
                what: "resource path",
            },
        ),
        (
            request_topic("v1", "cmx", "12345", "", None),
            NumericLastLevel {
                what: "endpoint token",
            },
        ),
        (
            push_topic("v1", "cmx", "t", "/config/json/0"),
            NumericLastLevel {
                what: "resource path",
            },
        ),
        (
            extension_request_topic("v1", "epr", "", None),
            Missing {
                what: "extension path",
            },
        ),
        (
            extension_request_topic("v1", "epr", "json", None),
            MissingLeadingSlash {
                what: "extension path",
            },
        ),
        (
            extension_request_topic("v1", "epr", "/protobuf/17", None),
            NumericLastLevel {
                what: "extension path",
            },
        ),
        (
            request_topic(
                "v1",
                "cmx",
                "t",
                &format!("/{}", "x".repeat(MAX_TOPIC_LEN)),
                None,
            ),
            TooLong {
                len: MAX_TOPIC_LEN + "kp1/v1/cmx/t/".len(),
                max: MAX_TOPIC_LEN,
            },
        ),
    ];
    for (i, (got, want)) in cases.into_iter().enumerate() {
        assert_eq!(got, Err(want), "case {i}");
    }
}

#[test]
fn length_limits() {
    // A request topic without a request ID may use all of MQTT's 65,535 bytes.
    let prefix = "kp1/v1/cmx/t/";
    let fill = "x".repeat(MAX_TOPIC_LEN - prefix.len());
    let full = format!("{prefix}{fill}");
    assert_eq!(full.len(), MAX_TOPIC_LEN);
    assert_eq!(
        request_topic("v1", "cmx", "t", &format!("/{fill}"), None).unwrap(),
        full
    );
    assert!(Topic::parse_request(&full).is_ok());
    let over = format!("{full}x");
    assert_eq!(
        Topic::parse_request(&over),
        Err(TopicError::TooLong {
            len: MAX_TOPIC_LEN + 1,
            max: MAX_TOPIC_LEN
        })
    );

    // With a request ID the request topic must leave room for `/status`.
    let fill = "x".repeat(MAX_REQUEST_TOPIC_LEN - prefix.len() - "/1".len());
    let fits = request_topic("v1", "cmx", "t", &format!("/{fill}"), id(1)).unwrap();
    assert_eq!(fits.len(), MAX_REQUEST_TOPIC_LEN);
    let status = response_topic(&fits, ResponseKind::Status);
    assert_eq!(status.len(), MAX_TOPIC_LEN);
    assert_eq!(Topic::parse(&status).unwrap().request_topic(), fits);
    assert_eq!(Topic::parse(&fits).unwrap().request_id(), id(1));

    let fill = format!("{fill}x");
    assert_eq!(
        request_topic("v1", "cmx", "t", &format!("/{fill}"), id(1)),
        Err(TopicError::TooLong {
            len: MAX_REQUEST_TOPIC_LEN + 1,
            max: MAX_REQUEST_TOPIC_LEN
        })
    );
    let too_long = format!("{prefix}{fill}/1");
    assert_eq!(
        Topic::parse(&too_long),
        Err(TopicError::TooLong {
            len: MAX_REQUEST_TOPIC_LEN + 1,
            max: MAX_REQUEST_TOPIC_LEN
        })
    );
    // Its `/error` response is within 65,535 bytes, but its request part is not a
    // valid request topic, so it is rejected too.
    let error = response_topic(&too_long, ResponseKind::Error);
    assert!(error.len() <= MAX_TOPIC_LEN);
    assert!(matches!(
        Topic::parse(&error),
        Err(TopicError::TooLong { .. })
    ));

    // A push topic must fit as a whole.
    let fill = "x".repeat(MAX_TOPIC_LEN - prefix.len() - "/status".len());
    let push = push_topic("v1", "cmx", "t", &format!("/{fill}")).unwrap();
    assert_eq!(push.len(), MAX_TOPIC_LEN);
    assert!(matches!(
        push_topic("v1", "cmx", "t", &format!("/{fill}x")),
        Err(TopicError::TooLong { len, max: MAX_TOPIC_LEN }) if len == MAX_TOPIC_LEN + 1
    ));
}

/// Bad input: each topic must give exactly this typed error, from both parsers.
#[test]
fn bad_topics() {
    use TopicError::*;
    let huge_level = "x".repeat(MAX_TOPIC_LEN);
    let over = format!("kp1/v1/cmx/t/{huge_level}");
    let not_utf8_safe_nul = "kp1/v1/cmx/t/config\0/json";
    let cases: Vec<(&str, TopicError)> = vec![
        (
            "",
            EmptyLevel {
                what: "KP prefix",
                level: 1,
            },
        ),
        (
            "/",
            EmptyLevel {
                what: "KP prefix",
                level: 1,
            },
        ),
        (
            "/kp1/v1/cmx/t/config/json",
            EmptyLevel {
                what: "KP prefix",
                level: 1,
            },
        ),
        (
            "kp1/v1/cmx/t/config/json/",
            EmptyLevel {
                what: "resource path",
                level: 7,
            },
        ),
        (
            "kp1/v1/cmx/t/config//json",
            EmptyLevel {
                what: "resource path",
                level: 6,
            },
        ),
        (
            "kp1//cmx/t/config/json",
            EmptyLevel {
                what: "app version name",
                level: 2,
            },
        ),
        (
            "kp1/v1//t/config/json",
            EmptyLevel {
                what: "extension instance name",
                level: 3,
            },
        ),
        (
            "kp1/v1/cmx//config/json",
            EmptyLevel {
                what: "endpoint token",
                level: 4,
            },
        ),
        (
            "kp1/v1/cmx/",
            EmptyLevel {
                what: "endpoint token",
                level: 4,
            },
        ),
        (
            "kp1/",
            EmptyLevel {
                what: "app version name",
                level: 2,
            },
        ),
        (
            "kp1",
            Missing {
                what: "app version name",
            },
        ),
        (
            "kp1/v1",
            Missing {
                what: "extension instance name",
            },
        ),
        (
            "kp1/v1/cmx",
            Missing {
                what: "endpoint token",
            },
        ),
        (
            "kp1/v1/cmx/42",
            Missing {
                what: "endpoint token",
            },
        ),
        (
            "kp2/v1/cmx/t/config/json",
            NotKp1 {
                found: "kp2".into(),
            },
        ),
        (
            "KP1/v1/cmx/t/config/json",
            NotKp1 {
                found: "KP1".into(),
            },
        ),
        (
            "kp1 /v1/cmx/t/config/json",
            NotKp1 {
                found: "kp1 ".into(),
            },
        ),
        ("+/v1/cmx/t", NotKp1 { found: "+".into() }),
        ("#", NotKp1 { found: "#".into() }),
        (
            "kp1/+/cmx/t/config/json",
            InvalidCharacter {
                what: "app version name",
                level: 2,
                found: '+',
            },
        ),
        (
            "kp1/v1/#",
            InvalidCharacter {
                what: "extension instance name",
                level: 3,
                found: '#',
            },
        ),
        (
            "kp1/v1/cmx/+/config/json",
            InvalidCharacter {
                what: "endpoint token",
                level: 4,
                found: '+',
            },
        ),
        (
            "kp1/v1/cmx/t/config/json/#",
            InvalidCharacter {
                what: "resource path",
                level: 7,
                found: '#',
            },
        ),
        (
            "kp1/v1/cmx/t/con+fig/json",
            InvalidCharacter {
                what: "resource path",
                level: 5,
                found: '+',
            },
        ),
        (
            "kp1/v1/cmx/t/config/json/+5",
            InvalidCharacter {
                what: "resource path",
                level: 7,
                found: '+',
            },
        ),
        (
            "kp1/v\0/cmx/t/config/json",
            InvalidCharacter {
                what: "app version name",
                level: 2,
                found: '\0',
            },
        ),
        (
            not_utf8_safe_nul,
            InvalidCharacter {
                what: "resource path",
                level: 5,
                found: '\0',
            },
        ),
        (
            "kp1/v1/cmx/t/config/json/0",
            InvalidRequestId(RequestIdError::NotPositive),
        ),
        (
            "kp1/v1/cmx/t/config/json/007",
            InvalidRequestId(RequestIdError::LeadingZero),
        ),
        (
            "kp1/v1/cmx/t/config/json/2147483648",
            InvalidRequestId(RequestIdError::OutOfRange),
        ),
        (
            "kp1/v1/cmx/t/config/json/18446744073709551616",
            InvalidRequestId(RequestIdError::OutOfRange),
        ),
        (
            &over,
            TooLong {
                len: over.len(),
                max: MAX_TOPIC_LEN,
            },
        ),
    ];
    for (topic, want) in &cases {
        let shown: String = topic.chars().take(60).collect();
        assert_eq!(Topic::parse(topic).as_ref(), Err(want), "parse {shown:?}");
        assert_eq!(
            Topic::parse_request(topic).as_ref(),
            Err(want),
            "parse_request {shown:?}"
        );
        // Every error says something.
        assert!(!want.to_string().is_empty());
    }

    // Only `parse` strips response suffixes, so these fail there alone.
    let response_only: Vec<(&str, TopicError)> = vec![
        (
            "kp1/v1/cmx/status",
            Missing {
                what: "endpoint token",
            },
        ),
        (
            "kp1/v1/cmx/42/error",
            Missing {
                what: "endpoint token",
            },
        ),
        (
            "kp1/v1/cmx/t/config/json/0/status",
            InvalidRequestId(RequestIdError::NotPositive),
        ),
    ];
    for (topic, want) in &response_only {
        assert_eq!(Topic::parse(topic).as_ref(), Err(want), "{topic}");
    }
    assert!(Topic::parse_request("kp1/v1/cmx/status").is_ok());
    assert!(Topic::parse_request("kp1/v1/cmx/42/error").is_ok());
}

#[test]
fn error_messages_name_the_problem() {
    let e = Topic::parse("kp1/v1/cmx/t/config/json/007").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the last topic level is all digits but not a valid request ID: leading zeros are not allowed in a request ID"
    );
    let e = Topic::parse("kp1/v1/cmx/+/json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "endpoint token (topic level 4) contains '+', which a 1/KP topic level cannot hold"
    );
    let e = Topic::parse("kp2/v1/cmx/t").unwrap_err();
    assert_eq!(
        e.to_string(),
        "topic starts with \"kp2\", not the 1/KP prefix \"kp1\""
    );
    // A long first level is cut in the error.
    let long = format!("{}/v1", "k".repeat(1000));
    assert_eq!(
        Topic::parse(&long),
        Err(TopicError::NotKp1 {
            found: "k".repeat(32)
        })
    );
}
