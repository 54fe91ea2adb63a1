#![no_main]
//! 1/KP topics: parsing arbitrary UTF-8 never panics, and whatever parses
//! rebuilds, through the public builders, to exactly the same topic string.
//! Non-UTF-8 input is skipped (an MQTT topic name is UTF-8; a `&str` cannot hold
//! anything else).

use kaa_kp::{
    ResponseKind, Topic, extension_request_topic, push_topic, request_topic, response_topic,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [Topic::parse(topic), Topic::parse_request(topic)] {
        let Ok(t) = parsed else { continue };
        assert_eq!(t.as_str(), topic);

        // Endpoint-aware view.
        let request = request_topic(
            t.app_version_name(),
            t.extension_instance_name(),
            t.endpoint_token(),
            t.resource_path(),
            t.request_id(),
        )
        .expect("a parsed topic's parts rebuild");
        assert_eq!(request, t.request_topic());

        // Endpoint-unaware view.
        let unaware = extension_request_topic(
            t.app_version_name(),
            t.extension_instance_name(),
            t.extension_path(),
            t.request_id(),
        )
        .expect("a parsed topic's extension path rebuilds");
        assert_eq!(unaware, request);

        let full = match t.response() {
            None => request,
            Some(kind) => {
                let response = response_topic(&request, kind);
                assert_eq!(t.response_topic(kind), response);
                if kind == ResponseKind::Status && t.request_id().is_none() {
                    let push = push_topic(
                        t.app_version_name(),
                        t.extension_instance_name(),
                        t.endpoint_token(),
                        t.resource_path(),
                    )
                    .expect("a parsed push topic rebuilds");
                    assert_eq!(push, response);
                }
                response
            }
        };
        assert_eq!(full, topic);
    }
});
