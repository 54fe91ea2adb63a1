//! proptest round trips: build → parse → equal, for request topics with and
//! without request IDs, response topics and push topics.

use kaa_kp::{
    RequestId, ResponseKind, Topic, TopicError, extension_request_topic, push_topic, request_topic,
    response_topic,
};
use proptest::prelude::*;

/// A topic level: anything MQTT allows in one level (no `/`, `+`, `#`, NUL),
/// including `.`, spaces, non-ASCII and pure digits, which stress the request ID
/// rule, and the words `status` and `error`, which stress suffix handling.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_.~ $é-]{1,12}",
        1 => "[0-9]{1,12}",
        1 => Just("status".to_owned()),
        1 => Just("error".to_owned()),
        1 => Just("config".to_owned()),
    ]
}

fn resource_path() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 0..5)
        .prop_map(|levels| levels.iter().map(|l| format!("/{l}")).collect::<String>())
}

fn request_id() -> impl Strategy<Value = Option<RequestId>> {
    prop::option::of(prop_oneof![(1..=9_i32), (1..=i32::MAX), Just(i32::MAX),])
        .prop_map(|v| v.and_then(RequestId::new))
}

fn kind() -> impl Strategy<Value = ResponseKind> {
    prop_oneof![Just(ResponseKind::Status), Just(ResponseKind::Error)]
}

fn is_all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The last level of `<token><resource>`.
fn last_level<'a>(token: &'a str, resource: &'a str) -> &'a str {
    resource
        .rsplit('/')
        .next()
        .filter(|l| !l.is_empty())
        .unwrap_or(token)
}

fn check_parts(
    t: &Topic<'_>,
    app: &str,
    ext: &str,
    token: &str,
    resource: &str,
    id: Option<RequestId>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.app_version_name(), app);
    prop_assert_eq!(t.extension_instance_name(), ext);
    prop_assert_eq!(t.endpoint_token(), token);
    prop_assert_eq!(t.resource_path(), resource);
    prop_assert_eq!(t.extension_path(), format!("/{token}{resource}"));
    prop_assert_eq!(t.request_id(), id);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Request topics, with and without request IDs.
    #[test]
    fn request_round_trip(
        app in level(), ext in level(), token in level(),
        resource in resource_path(), id in request_id(),
    ) {
        let built = request_topic(&app, &ext, &token, &resource, id);
        let last = last_level(&token, &resource);
        if id.is_none() && is_all_digits(last) {
            // Would read back as a request ID (or an invalid one): refused.
            prop_assert!(matches!(built, Err(TopicError::NumericLastLevel { .. })), "{built:?}");
            return Ok(());
        }
        let built = built.unwrap();

        let t = Topic::parse_request(&built).unwrap();
        check_parts(&t, &app, &ext, &token, &resource, id)?;
        prop_assert_eq!(t.response(), None);
        prop_assert_eq!(t.request_topic(), built.as_str());
        prop_assert_eq!(t.as_str(), built.as_str());

        // The endpoint-unaware builder gives the same topic from the extension path.
        prop_assert_eq!(&extension_request_topic(&app, &ext, t.extension_path(), id).unwrap(), &built);

        // `parse` agrees, unless the request has no ID and ends in a word that is
        // also a response suffix: then it reads as a response, or is rejected when
        // what is left is not a request (e.g. only `kp1/<app>/<ext>` remains, or
        // an invalid request ID). It never reads as this request.
        let classified = Topic::parse(&built);
        if id.is_none() && (last == "status" || last == "error") {
            prop_assert_ne!(&classified, &Ok(t));
            if let Ok(c) = classified {
                prop_assert!(c.response().is_some());
            }
        } else {
            prop_assert_eq!(classified.unwrap(), t);
        }
    }

    /// Response topics of requests with request IDs.
    #[test]
    fn response_round_trip(
        app in level(), ext in level(), token in level(),
        resource in resource_path(), id in (1..=i32::MAX), kind in kind(),
    ) {
        let id = RequestId::new(id);
        let request = request_topic(&app, &ext, &token, &resource, id).unwrap();
        let response = response_topic(&request, kind);
        prop_assert_eq!(&response, &format!("{request}/{kind}"));

        let t = Topic::parse(&response).unwrap();
        check_parts(&t, &app, &ext, &token, &resource, id)?;
        prop_assert_eq!(t.response(), Some(kind));
        prop_assert_eq!(t.request_topic(), request.as_str());
        prop_assert_eq!(t.as_str(), response.as_str());
        prop_assert_eq!(t.response_topic(kind), response.clone());

        // Same answer from the parsed request.
        let r = Topic::parse_request(&request).unwrap();
        prop_assert_eq!(r.response_topic(kind), response);
    }

    /// Push topics: no request ID, `/status`.
    #[test]
    fn push_round_trip(
        app in level(), ext in level(), token in level(), resource in resource_path(),
    ) {
        let built = push_topic(&app, &ext, &token, &resource);
        if is_all_digits(last_level(&token, &resource)) {
            prop_assert!(matches!(built, Err(TopicError::NumericLastLevel { .. })), "{built:?}");
            return Ok(());
        }
        let built = built.unwrap();
        let t = Topic::parse(&built).unwrap();
        check_parts(&t, &app, &ext, &token, &resource, None)?;
        prop_assert_eq!(t.response(), Some(ResponseKind::Status));
        let request = request_topic(&app, &ext, &token, &resource, None).unwrap();
        prop_assert_eq!(t.request_topic(), request.as_str());
        prop_assert_eq!(response_topic(&request, ResponseKind::Status), built);
    }

    /// Parsing arbitrary strings never panics, and whatever parses rebuilds to the
    /// same topic (the property the fuzz target checks, on a smaller scale).
    #[test]
    fn parse_then_rebuild(topic in "(kp1/)?([a-z0-9+#/]|status|error|0|00|42){0,24}") {
        for parsed in [Topic::parse(&topic), Topic::parse_request(&topic)] {
            let Ok(t) = parsed else { continue };
            let request = request_topic(
                t.app_version_name(), t.extension_instance_name(), t.endpoint_token(),
                t.resource_path(), t.request_id(),
            ).unwrap();
            prop_assert_eq!(request.as_str(), t.request_topic());
            let full = match t.response() {
                None => request,
                Some(kind) => response_topic(&request, kind),
            };
            prop_assert_eq!(full, topic.clone());
        }
    }
}
