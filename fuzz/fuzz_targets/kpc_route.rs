//! KPC: an MQTT PUBLISH (topic + payload) from a session becomes a 4/ESP
//! `ClientData` or a 1/KP error response, through `kaa_kpc::route`
//! (the code a session runs) and the configuration's token table resolver.
//!
//! Checks: no panic; a `ClientData`'s endpoint ID is the one the resolver gives
//! for the topic's token (never the token itself, unless the resolver says so),
//! its app version, resource path and request ID are the topic's, and it
//! round-trips through Avro; a rejection is a well-formed 1/KP error
//! (`{"statusCode", "reasonPhrase"}`, a 4xx/5xx status and a reason) on the
//! request topic + `/error` when the topic ends with a request ID, and a
//! documented drop (no response) otherwise; the extension instance is checked
//! only after the token resolved (a session that used a token has connected
//! the endpoint, whatever extension it named), and a `ClientData` is only ever
//! built for an allowed extension instance.
#![no_main]

use arbitrary::Arbitrary;
use futures::executor::block_on;
use kaa_esp::ClientData;
use kaa_kpc::config::TokenEntry;
use kaa_kpc::resolver::{EndpointTokenResolver, TokenTable};
use kaa_kpc::route::{self, RouteLimits, trailing_request_id};
use kaa_ism::avro::{Decode, Encode};
use kaa_kp::{ErrorResponse, Topic};
use libfuzzer_sys::fuzz_target;

const TOKENS: [&str; 4] = ["tok-a", "tok-b", "tok-v2", "ep-c"];
const EXTENSIONS: [&str; 4] = ["cmx", "cmx_ota", "c.mx", "*"];
const VERSIONS: [&str; 3] = ["v1", "v2", "v 3"];

#[derive(Arbitrary, Debug)]
enum Part {
    Known(u8),
    Raw(String),
}

impl Part {
    fn pick<'a>(&'a self, known: &[&'a str]) -> &'a str {
        match self {
            Part::Known(i) => known[usize::from(*i) % known.len()],
            Part::Raw(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum TopicInput {
    /// `kp1/<av>/<ext>/<token>/<resource>[/<request id>]`.
    Built {
        av: Part,
        ext: Part,
        token: Part,
        resource: String,
        request_id: Option<String>,
    },
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    topic: TopicInput,
    payload: Vec<u8>,
    restrict_extensions: bool,
    accept_any: bool,
    max_payload: u8,
    max_endpoints: u8,
    session_tokens: Vec<Part>,
}

fn resolver(accept_any: bool) -> TokenTable {
    TokenTable::new(
        [
            ("tok-a".to_owned(), TokenEntry::EndpointId("ep-a".into())),
            ("tok-b".to_owned(), TokenEntry::EndpointId("ep-b".into())),
            (
                "tok-v2".to_owned(),
                TokenEntry::Detailed {
                    endpoint_id: "ep-v2".into(),
                    app_version: Some("v2".into()),
                },
            ),
        ],
        accept_any,
    )
}

fn check_rejection(raw_topic: &str, r: &route::Rejection) {
    assert!(
        (400..600).contains(&r.status_code),
        "not an error status: {r:?}"
    );
    assert!(!r.reason.is_empty(), "no reason: {r:?}");
    match (trailing_request_id(raw_topic), r.response(raw_topic)) {
        (Some(_), Some((topic, payload))) => {
            assert_eq!(topic, format!("{raw_topic}/error"));
            let e = ErrorResponse::from_json(&payload).expect("a valid 1/KP error payload");
            assert_eq!(e.status_code, r.status_code);
            assert_eq!(e.reason_phrase, r.reason);
            // A device reading the response topic sees the error for its request.
            if let Ok(t) = Topic::parse(&topic) {
                assert_eq!(t.request_topic(), raw_topic);
            }
        }
        (None, None) => {} // no request ID: no response (1/KP)
        (id, response) => panic!("request ID {id:?} but response {response:?}"),
    }
}

fuzz_target!(|input: Input| {
    let raw_topic = match &input.topic {
        TopicInput::Built {
            av,
            ext,
            token,
            resource,
            request_id,
        } => {
            let mut t = format!(
                "kp1/{}/{}/{}/{resource}",
                av.pick(&VERSIONS),
                ext.pick(&EXTENSIONS),
                token.pick(&TOKENS)
            );
            if let Some(id) = request_id {
                t.push('/');
                t.push_str(id);
            }
            t
        }
        TopicInput::Raw(s) => s.clone(),
    };
    // A session closes the connection on these before routing (protocol
    // violation, documented in kaa_kpc): no response.
    if raw_topic.is_empty() || raw_topic.contains(['+', '#', '\0']) {
        return;
    }
    let allowed: Vec<String> = if input.restrict_extensions {
        vec!["cmx".into(), "cmx_ota".into()]
    } else {
        Vec::new()
    };
    let limits = RouteLimits {
        extension_instances: &allowed,
        max_payload: usize::from(input.max_payload) * 4,
        max_endpoints: 1 + usize::from(input.max_endpoints % 4),
    };
    let session: Vec<&str> = input
        .session_tokens
        .iter()
        .take(8)
        .map(|p| p.pick(&TOKENS))
        .collect();
    let checked = route::check_request(
        &raw_topic,
        input.payload.len(),
        &limits,
        |t| session.contains(&t),
        session.len(),
    );
    let topic = match checked {
        Ok(t) => t,
        Err(r) => return check_rejection(&raw_topic, &r),
    };
    assert!(input.payload.len() <= limits.max_payload);
    let resolver = resolver(input.accept_any);
    let token = topic.endpoint_token();
    let endpoint = match block_on(resolver.resolve(topic.app_version_name(), token)) {
        Ok(e) => e,
        Err(e) => {
            let r = route::Rejection::new(e.status_code(), e.to_string(), "unknown_token");
            return check_rejection(&raw_topic, &r);
        }
    };
    let expected = match token {
        "tok-a" => "ep-a",
        "tok-b" => "ep-b",
        "tok-v2" => "ep-v2",
        other => {
            assert!(
                input.accept_any,
                "token {other:?} resolved without accept-any"
            );
            other
        }
    };
    assert_eq!(endpoint.endpoint_id, expected);
    if let Err(r) = route::check_extension(&topic, &limits) {
        assert!(input.restrict_extensions, "no list, yet {r:?}");
        assert_eq!((r.status_code, r.kind), (404, "unknown_extension"));
        return check_rejection(&raw_topic, &r);
    }
    assert!(allowed.is_empty() || allowed.iter().any(|a| a == topic.extension_instance_name()));
    let routed = route::client_data(
        &topic,
        &endpoint.endpoint_id,
        &input.payload,
        "corr".into(),
        1,
        1000,
    );
    let (subject, data) = match routed {
        Ok(x) => x,
        Err(r) => return check_rejection(&raw_topic, &r),
    };
    assert_eq!(data.endpoint_id.as_deref(), Some(expected));
    assert_eq!(&*data.app_version_name, topic.app_version_name());
    assert_eq!(&*data.resource_path, topic.resource_path());
    // Empty when the topic ends at the token (kaa_kp::Topic::resource_path).
    assert!(data.resource_path.is_empty() || data.resource_path.starts_with('/'));
    assert_eq!(
        data.request_id,
        topic.request_id().map(kaa_kp::RequestId::get)
    );
    assert_eq!(&*data.payload, &input.payload[..]);
    assert_eq!(
        subject,
        format!(
            "kaa.v1.service.{}.esp.ClientData",
            topic.extension_instance_name()
        )
    );
    let datum = data.to_vec();
    let back = ClientData::decode(&datum).expect("a ClientData that decodes");
    assert_eq!(back, data);
});
