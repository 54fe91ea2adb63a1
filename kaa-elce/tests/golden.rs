//! Golden vectors written by Apache Avro (Python `avro` 1.12.2, see
//! `tests/golden/generate.py`) from the RFC schemas: our bytes must equal theirs, we
//! must decode theirs to the same value, and no prefix or corruption of a datum may
//! panic.

use std::borrow::Cow;

use kaa_elce::{
    AppVersionUpdatedEvent, ConnectedEvent, DecodeLimits, DisconnectedEvent, ElceEvent,
    EndpointSession, EventKind, Map, RegisteredEvent, SessionsRequest, SessionsResponse,
    TrafficReportEvent, TrafficStat, UnregisteredEvent,
};
use kaa_ism::avro::{Decode, DecodeError, DecodeErrorKind, Encode, put_long, put_string};
use serde_json::Value;

/// One golden vector: the message it is an instance of (`kind`), its name, the value
/// and the bytes Apache Avro wrote for it.
struct Vector<K, T> {
    kind: K,
    name: String,
    value: T,
    datum: Vec<u8>,
    decode_only: bool,
}

impl<K: RecordName, T> Vector<K, T> {
    fn label(&self) -> String {
        format!("{}/{}", self.kind.record_name(), self.name)
    }
}

/// The Avro record name a vector's `kind` stands for.
trait RecordName {
    fn record_name(&self) -> &str;
}

impl RecordName for EventKind {
    fn record_name(&self) -> &str {
        EventKind::record_name(*self)
    }
}

impl RecordName for String {
    fn record_name(&self) -> &str {
        self
    }
}

/// The vectors of `vectors.json` whose message `kind_of` accepts, with `value_of`
/// building each value from its JSON.
fn load_vectors<K, T>(
    kind_of: impl Fn(&str) -> Option<K>,
    value_of: impl Fn(&K, &Value) -> T,
) -> Vec<Vector<K, T>> {
    let text = include_str!("golden/vectors.json");
    let list: Vec<Value> = serde_json::from_str(text).expect("vectors.json is JSON");
    list.iter()
        .filter_map(|v| {
            let kind = kind_of(v["message"].as_str().expect("message"))?;
            Some(Vector {
                value: value_of(&kind, &v["value"]),
                kind,
                name: v["name"].as_str().expect("name").to_owned(),
                datum: hex::decode(v["hex"].as_str().expect("hex")).expect("hex digits"),
                decode_only: v
                    .get("decode_only")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect()
}

/// Whether `e` says the input ended too early (what a cut datum must give).
fn is_truncation(e: &DecodeError) -> bool {
    matches!(
        e.kind,
        DecodeErrorKind::UnexpectedEnd | DecodeErrorKind::LengthPastEnd { .. }
    )
}

fn vectors() -> Vec<Vector<EventKind, ElceEvent<'static>>> {
    load_vectors(
        |message| {
            if SESSIONS_MESSAGES.contains(&message) {
                return None; // kaa-rs extensions: see `session_vectors`.
            }
            Some(
                EventKind::ALL
                    .into_iter()
                    .find(|k| k.record_name() == message)
                    .unwrap_or_else(|| panic!("unknown message {message}")),
            )
        },
        |kind, value| event_from_json(*kind, value),
    )
}

fn string(v: &Value, field: &str) -> Cow<'static, str> {
    Cow::Owned(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is a string"))
            .to_owned(),
    )
}

fn long(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} is a long"))
}

/// A JSON map: a list of `[key, value]` pairs in wire order.
fn map<V>(v: &Value, value: impl Fn(&Value) -> V) -> Map<'static, V> {
    v.as_array()
        .expect("map is a list of pairs")
        .iter()
        .map(|pair| {
            let key = pair[0].as_str().expect("map key").to_owned();
            (Cow::Owned(key), value(&pair[1]))
        })
        .collect()
}

fn event_from_json(kind: EventKind, v: &Value) -> ElceEvent<'static> {
    let endpoints = || {
        map(&v["endpoints"], |app| {
            Cow::Owned(app.as_str().expect("app version").to_owned())
        })
    };
    match kind {
        EventKind::Connected => ConnectedEvent {
            correlation_id: string(v, "correlationId"),
            timestamp: long(v, "timestamp"),
            timeout: long(v, "timeout"),
            endpoints: endpoints(),
            originator_replica_id: string(v, "originatorReplicaId"),
        }
        .into(),
        EventKind::Disconnected => DisconnectedEvent {
            correlation_id: string(v, "correlationId"),
            timestamp: long(v, "timestamp"),
            timeout: long(v, "timeout"),
            endpoints: endpoints(),
            originator_replica_id: string(v, "originatorReplicaId"),
        }
        .into(),
        EventKind::Registered => RegisteredEvent {
            correlation_id: string(v, "correlationId"),
            timestamp: long(v, "timestamp"),
            timeout: long(v, "timeout"),
            app_version_name: string(v, "appVersionName"),
            endpoint_id: string(v, "endpointId"),
            originator_replica_id: string(v, "originatorReplicaId"),
        }
        .into(),
        EventKind::AppVersionUpdated => AppVersionUpdatedEvent {
            correlation_id: string(v, "correlationId"),
            timestamp: long(v, "timestamp"),
            timeout: long(v, "timeout"),
            app_version_name: string(v, "appVersionName"),
            previous_app_version_name: string(v, "previousAppVersionName"),
            endpoint_id: string(v, "endpointId"),
            originator_replica_id: string(v, "originatorReplicaId"),
        }
        .into(),
        EventKind::Unregistered => UnregisteredEvent {
            correlation_id: string(v, "correlationId"),
            timestamp: long(v, "timestamp"),
            timeout: long(v, "timeout"),
            app_version_name: string(v, "appVersionName"),
            endpoint_id: string(v, "endpointId"),
            originator_replica_id: string(v, "originatorReplicaId"),
        }
        .into(),
        EventKind::TrafficReport => TrafficReportEvent {
            tenant_traffic_stats: map(&v["tenantTrafficStats"], |apps| {
                map(apps, |endpoints| {
                    map(endpoints, |s| TrafficStat {
                        total_received_payload: long(s, "totalReceivedPayload"),
                        total_sent_payload: long(s, "totalSentPayload"),
                        total_received_message_count: long(s, "totalReceivedMessageCount"),
                        total_sent_message_count: long(s, "totalSentMessageCount"),
                    })
                })
            }),
            time_from: long(v, "timeFrom"),
            time_to: long(v, "timeTo"),
            correlation_id: string(v, "correlationId"),
            originator_replica_id: string(v, "originatorReplicaId"),
            timestamp: long(v, "timestamp"),
            timeout: long(v, "timeout"),
        }
        .into(),
        other => panic!("no golden conversion for {other:?}"),
    }
}

fn decode(kind: EventKind, datum: &[u8]) -> Result<ElceEvent<'_>, DecodeError> {
    ElceEvent::decode_kind(kind, datum, DecodeLimits::UNLIMITED)
}

#[test]
fn every_message_has_vectors() {
    let vectors = vectors();
    for kind in EventKind::ALL {
        let canonical = vectors
            .iter()
            .filter(|v| v.kind == kind && !v.decode_only)
            .count();
        assert!(
            canonical >= 7,
            "{kind:?} has only {canonical} golden vectors"
        );
        assert!(
            vectors
                .iter()
                .any(|v| v.kind == kind && v.decode_only && v.name.starts_with("newer writer")),
            "{kind:?} has no newer-writer vector"
        );
        assert!(
            vectors
                .iter()
                .any(|v| v.kind == kind && v.datum.len() > 64 * 1024),
            "{kind:?} has no 64 KiB vector"
        );
    }
}

#[test]
fn our_encoding_is_the_golden_bytes() {
    for v in vectors().iter().filter(|v| !v.decode_only) {
        assert_eq!(v.value.encoded_len(), v.datum.len(), "{}", v.label());
        assert_eq!(v.value.to_vec(), v.datum, "{}", v.label());
        // `encoded_len` is exact: a buffer of that size is filled completely.
        let mut fixed = vec![0xa5u8; v.datum.len()];
        let mut window: &mut [u8] = &mut fixed;
        v.value.encode(&mut window);
        assert!(window.is_empty(), "{}", v.label());
        assert_eq!(fixed, v.datum, "{}", v.label());
    }
}

#[test]
fn decoding_the_golden_bytes_gives_the_value() {
    for v in vectors() {
        let decoded = decode(v.kind, &v.datum).unwrap_or_else(|e| panic!("{}: {e}", v.label()));
        assert_eq!(decoded, v.value, "{}", v.label());
        assert_eq!(decoded.kind(), v.kind);
        // Through the subject, as a wildcard listener decodes.
        let subject = v.kind.subject("golden").unwrap().to_string();
        assert_eq!(ElceEvent::decode(&subject, &v.datum).unwrap(), v.value);
        // Owned copies are equal and outlive the input.
        let owned = {
            let datum = v.datum.clone();
            decode(v.kind, &datum).unwrap().into_owned()
        };
        assert_eq!(owned, v.value, "{}", v.label());
    }
}

/// The value a datum cut right before its trailing defaulted fields decodes to, if the
/// record has such fields: in 9/ELCE only `TrafficReportEvent.timeout` (default 0).
fn with_defaults(event: &ElceEvent<'static>) -> Option<(ElceEvent<'static>, usize)> {
    match event {
        ElceEvent::TrafficReport(e) => {
            let defaulted = TrafficReportEvent {
                timeout: 0,
                ..e.clone()
            };
            Some((defaulted.into(), kaa_ism::avro::long_len(e.timeout)))
        }
        _ => None,
    }
}

#[test]
fn every_prefix_is_an_error_or_the_defaulted_value() {
    let mut defaulted_prefixes = 0;
    for v in vectors() {
        let canonical = v.value.to_vec();
        // Where the known fields end (a newer writer's datum goes on after that).
        let known_len = canonical.len();
        assert!(
            v.datum.starts_with(&canonical) || v.decode_only,
            "{}",
            v.label()
        );
        let defaults = with_defaults(&v.value);
        for cut in 0..v.datum.len() {
            let prefix = &v.datum[..cut];
            let result = decode(v.kind, prefix);
            let expected = match &defaults {
                // A datum that ends right before the trailing `timeout`.
                Some((defaulted, trailing_len))
                    if v.datum.starts_with(&canonical) && cut == known_len - trailing_len =>
                {
                    Some(defaulted.clone())
                }
                _ if v.datum.starts_with(&canonical) && cut >= known_len => Some(v.value.clone()),
                _ => None,
            };
            match (result, expected) {
                (Ok(got), Some(want)) => {
                    defaulted_prefixes += 1;
                    assert_eq!(got, want, "{} cut at {cut}", v.label());
                }
                (Err(e), None) => {
                    assert!(is_truncation(&e), "{} cut at {cut}: {e}", v.label());
                }
                (got, want) => panic!("{} cut at {cut}: got {got:?}, want {want:?}", v.label()),
            }
        }
    }
    // Every TrafficReportEvent vector (and the newer writers' extra fields) exercised it.
    assert!(defaulted_prefixes >= 10, "{defaulted_prefixes}");
}

#[test]
fn older_writer_without_trailing_timeout() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "older writer without timeout")
        .expect("vector");
    let ElceEvent::TrafficReport(report) = decode(v.kind, &v.datum).unwrap() else {
        panic!("not a traffic report")
    };
    assert_eq!(report.timeout, 0);
    assert_eq!(report.endpoint_count(), 4);
    // Our encoding of the same report is Apache Avro's plus the timeout, 0.
    let mut expected = v.datum.clone();
    expected.push(0x00);
    assert_eq!(report.to_vec(), expected);
}

#[test]
fn newer_writer_fields_are_ignored() {
    let vectors = vectors();
    for v in vectors
        .iter()
        .filter(|v| v.name.starts_with("newer writer"))
    {
        let canonical = v.value.to_vec();
        assert!(v.datum.len() > canonical.len(), "{}", v.label());
        assert!(v.datum.starts_with(&canonical), "{}", v.label());
        assert_eq!(decode(v.kind, &v.datum).unwrap(), v.value, "{}", v.label());
        // Whatever the trailing bytes are, even garbage, they are not read.
        let mut garbage = canonical.clone();
        garbage.extend_from_slice(&[0xff, 0xff, 0x80]);
        assert_eq!(decode(v.kind, &garbage).unwrap(), v.value, "{}", v.label());
    }
}

#[test]
fn large_strings_are_borrowed_from_the_input() {
    for v in vectors().iter().filter(|v| v.datum.len() > 64 * 1024) {
        let event = decode(v.kind, &v.datum).unwrap();
        let large: &Cow<'_, str> = match &event {
            ElceEvent::Connected(e) => &e.endpoints[0].1,
            ElceEvent::Disconnected(e) => &e.endpoints[0].0,
            ElceEvent::Registered(e) => &e.app_version_name,
            ElceEvent::Unregistered(e) => &e.originator_replica_id,
            ElceEvent::AppVersionUpdated(e) => &e.previous_app_version_name,
            ElceEvent::TrafficReport(e) => &e.tenant_traffic_stats[0].1[0].1[0].0,
            other => panic!("{other:?}"),
        };
        assert_eq!(large.len(), 64 * 1024, "{}", v.label());
        let Cow::Borrowed(s) = large else {
            panic!("{}: copied", v.label())
        };
        assert!(
            v.datum.as_ptr_range().contains(&s.as_ptr()),
            "{}",
            v.label()
        );
    }
}

fn field_error(kind: EventKind, datum: &[u8]) -> (String, DecodeErrorKind) {
    let e = decode(kind, datum).expect_err("must not decode");
    (format!("{}.{}", e.record, e.field), e.kind)
}

/// A RegisteredEvent datum made by hand: `raw_correlation_id` is the first field's raw
/// bytes (any length prefix), then the longs 1 and 2 and three valid strings.
fn registered_with(raw_correlation_id: &[u8]) -> Vec<u8> {
    let mut d = raw_correlation_id.to_vec();
    put_long(&mut d, 1);
    put_long(&mut d, 2);
    for s in ["app-v1", "ep-1", "epr-1"] {
        put_string(&mut d, s);
    }
    d
}

#[test]
fn bad_strings() {
    let cases: &[(&str, Vec<u8>, DecodeErrorKind)] = &[
        (
            "negative length",
            registered_with(&[0x01]),
            DecodeErrorKind::NegativeLength(-1),
        ),
        (
            "length past the end",
            registered_with(&[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            DecodeErrorKind::LengthPastEnd {
                length: 2_147_483_647,
                remaining: 20,
            },
        ),
        (
            "invalid UTF-8",
            registered_with(&[0x04, 0xc3, 0x28]),
            DecodeErrorKind::InvalidUtf8,
        ),
        (
            "overlong UTF-8",
            registered_with(&[0x04, 0xc0, 0xaf]),
            DecodeErrorKind::InvalidUtf8,
        ),
        (
            "UTF-16 surrogate",
            registered_with(&[0x06, 0xed, 0xa0, 0x80]),
            DecodeErrorKind::InvalidUtf8,
        ),
    ];
    for (name, datum, kind) in cases {
        let (field, got) = field_error(EventKind::Registered, datum);
        assert_eq!(field, "RegisteredEvent.correlationId", "{name}");
        assert_eq!(&got, kind, "{name}");
    }
}

/// A ConnectedEvent datum whose `endpoints` map is the raw bytes `map`.
fn connected_with_map(map: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    put_string(&mut d, "c");
    put_long(&mut d, 1);
    put_long(&mut d, 0);
    d.extend_from_slice(map);
    put_string(&mut d, "kpc-1");
    d
}

#[test]
fn bad_maps() {
    let mut huge = Vec::new();
    put_long(&mut huge, i64::MAX);
    let mut min = Vec::new();
    put_long(&mut min, i64::MIN);
    let cases: &[(&str, Vec<u8>)] = &[
        (
            "count past the end",
            connected_with_map(&[0x08, 2, b'a', 2, b'1', 0]),
        ),
        ("huge count", connected_with_map(&huge)),
        ("i64::MIN count", connected_with_map(&min)),
        (
            "negative block size",
            connected_with_map(&[3, 1, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0]),
        ),
        (
            "block size mismatch",
            connected_with_map(&[3, 14, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0]),
        ),
        (
            "block size past the end",
            connected_with_map(&[3, 0x7e, 2, b'a', 2, b'1', 0]),
        ),
        (
            "invalid UTF-8 key",
            connected_with_map(&[2, 2, 0xff, 2, b'1', 0]),
        ),
        (
            "invalid UTF-8 value",
            connected_with_map(&[2, 2, b'a', 2, 0xff, 0]),
        ),
        (
            "negative key length",
            connected_with_map(&[2, 1, 2, b'1', 0]),
        ),
        ("no terminator", {
            let mut d = Vec::new();
            put_string(&mut d, "c");
            put_long(&mut d, 1);
            put_long(&mut d, 0);
            d.extend_from_slice(&[2, 2, b'a', 2, b'1']);
            d
        }),
    ];
    for (name, datum) in cases {
        let (field, _) = field_error(EventKind::Connected, datum);
        assert_eq!(field, "ConnectedEvent.endpoints", "{name}");
    }
    // Every legal block form decodes to the same value.
    let expected = connected_with_map(&[4, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0]);
    let expected = ConnectedEvent::decode(&expected).unwrap();
    for (name, map) in [
        (
            "two blocks",
            &[2, 2, b'a', 2, b'1', 2, 2, b'b', 2, b'2', 0][..],
        ),
        (
            "sized block",
            &[3, 16, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0],
        ),
    ] {
        let datum = connected_with_map(map);
        assert_eq!(ConnectedEvent::decode(&datum).unwrap(), expected, "{name}");
    }
}

#[test]
fn bad_traffic_stats_name_the_nested_record() {
    // tenant "t" → app "a" → endpoint "e" → a stat whose third long is cut off.
    let datum = [2, 2, b't', 2, 2, b'a', 2, 2, b'e', 2, 4, 0x80];
    let (field, kind) = field_error(EventKind::TrafficReport, &datum);
    assert_eq!(field, "trafficStat.totalReceivedMessageCount");
    assert_eq!(kind, DecodeErrorKind::UnexpectedEnd);
    // A bad key names the map field of the report.
    let datum = [2, 2, b't', 2, 2, 0xff];
    let (field, kind) = field_error(EventKind::TrafficReport, &datum);
    assert_eq!(field, "TrafficReportEvent.tenantTrafficStats");
    assert_eq!(kind, DecodeErrorKind::InvalidUtf8);
    // After the stats the report's own fields are named again.
    let datum = [
        2, 2, b't', 2, 2, b'a', 2, 2, b'e', 2, 4, 6, 8, 0, 0, 0, 0x80,
    ];
    let (field, _) = field_error(EventKind::TrafficReport, &datum);
    assert_eq!(field, "TrafficReportEvent.timeFrom");
}

#[test]
fn varints_that_lie() {
    // Overlong and overflowing varints in `timestamp`.
    for (name, long, kind) in [
        (
            "overlong",
            &[0x80, 0x00][..],
            DecodeErrorKind::OverlongVarint,
        ),
        ("overflow", &[0xff; 10][..], DecodeErrorKind::VarintOverflow),
    ] {
        let mut d = Vec::new();
        put_string(&mut d, "c");
        d.extend_from_slice(long);
        d.extend_from_slice(&[0, 0]);
        put_string(&mut d, "kpc-1");
        let (field, got) = field_error(EventKind::Connected, &d);
        assert_eq!(field, "ConnectedEvent.timestamp", "{name}");
        assert_eq!(got, kind, "{name}");
    }
}

// ------------------------------------------------------------------------------
// kaa-rs extensions (not 9/ELCE RFC messages): the sessions request and response,
// with vectors written by Apache Avro from kaa-elce/schemas/sessions-*.avsc.

const SESSIONS_MESSAGES: [&str; 2] = ["SessionsRequest", "SessionsResponse"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sessions<'a> {
    Request(SessionsRequest<'a>),
    Response(SessionsResponse<'a>),
}

impl Sessions<'_> {
    fn to_vec(&self) -> Vec<u8> {
        match self {
            Sessions::Request(m) => m.to_vec(),
            Sessions::Response(m) => m.to_vec(),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Sessions::Request(m) => m.encoded_len(),
            Sessions::Response(m) => m.encoded_len(),
        }
    }

    fn into_owned(self) -> Sessions<'static> {
        match self {
            Sessions::Request(m) => Sessions::Request(m.into_owned()),
            Sessions::Response(m) => Sessions::Response(m.into_owned()),
        }
    }
}

type SessionsVector = Vector<String, Sessions<'static>>;

impl SessionsVector {
    fn decode<'a>(&self, datum: &'a [u8]) -> Result<Sessions<'a>, DecodeError> {
        decode_sessions(&self.kind, datum)
    }
}

fn decode_sessions<'a>(message: &str, datum: &'a [u8]) -> Result<Sessions<'a>, DecodeError> {
    match message {
        "SessionsRequest" => SessionsRequest::decode(datum).map(Sessions::Request),
        "SessionsResponse" => SessionsResponse::decode(datum).map(Sessions::Response),
        other => panic!("not a sessions message: {other}"),
    }
}

fn session_vectors() -> Vec<SessionsVector> {
    load_vectors(
        |message| {
            SESSIONS_MESSAGES
                .contains(&message)
                .then(|| message.to_owned())
        },
        |message, value| {
            if message == "SessionsRequest" {
                Sessions::Request(SessionsRequest {
                    correlation_id: string(value, "correlationId"),
                    timestamp: long(value, "timestamp"),
                    timeout: long(value, "timeout"),
                    extension_instance_name: string(value, "extensionInstanceName"),
                })
            } else {
                Sessions::Response(SessionsResponse {
                    correlation_id: string(value, "correlationId"),
                    timestamp: long(value, "timestamp"),
                    timeout: long(value, "timeout"),
                    endpoints: value["endpoints"]
                        .as_array()
                        .expect("endpoints")
                        .iter()
                        .map(|s| EndpointSession {
                            endpoint_id: string(s, "endpointId"),
                            app_version_name: string(s, "appVersionName"),
                            resource_paths: s["resourcePaths"]
                                .as_array()
                                .expect("resourcePaths")
                                .iter()
                                .map(|p| Cow::Owned(p.as_str().expect("path").to_owned()))
                                .collect(),
                        })
                        .collect(),
                    originator_replica_id: string(value, "originatorReplicaId"),
                })
            }
        },
    )
}

#[test]
fn sessions_messages_have_vectors() {
    let vectors = session_vectors();
    for message in SESSIONS_MESSAGES {
        let of = |f: &dyn Fn(&SessionsVector) -> bool| {
            vectors.iter().filter(|v| v.kind == message && f(v)).count()
        };
        assert!(of(&|v| !v.decode_only) >= 7, "{message}");
        assert_eq!(of(&|v| v.name.starts_with("newer writer")), 1, "{message}");
        assert!(of(&|v| v.datum.len() > 64 * 1024) >= 1, "{message}");
    }
}

#[test]
fn sessions_encoding_is_the_golden_bytes() {
    for v in session_vectors().iter().filter(|v| !v.decode_only) {
        assert_eq!(v.value.encoded_len(), v.datum.len(), "{}", v.label());
        assert_eq!(v.value.to_vec(), v.datum, "{}", v.label());
    }
}

#[test]
fn sessions_decoding_the_golden_bytes_gives_the_value() {
    for v in session_vectors() {
        let decoded = v
            .decode(&v.datum)
            .unwrap_or_else(|e| panic!("{}: {e}", v.label()));
        assert_eq!(decoded, v.value, "{}", v.label());
        let owned = {
            let datum = v.datum.clone();
            v.decode(&datum).unwrap().into_owned()
        };
        assert_eq!(owned, v.value, "{}", v.label());
        if let Sessions::Response(r) = &v.value {
            // A limit at the count decodes; one below rejects.
            let n = r.endpoint_count();
            let limits = DecodeLimits::with_max_endpoints(n);
            assert_eq!(
                SessionsResponse::decode_with_limits(&v.datum, limits).as_ref(),
                Ok(r),
                "{}",
                v.label()
            );
            if n > 0 {
                let limits = DecodeLimits::with_max_endpoints(n - 1);
                let e = SessionsResponse::decode_with_limits(&v.datum, limits).unwrap_err();
                assert_eq!(e.field, "endpoints", "{}", v.label());
            }
        }
    }
}

/// No field of the sessions records has a default after the last required one, so
/// every proper prefix of the known fields is an error; the known fields followed by
/// anything (a newer writer's fields) decode to the value.
#[test]
fn sessions_every_prefix_is_an_error() {
    for v in session_vectors() {
        let canonical = v.value.to_vec();
        assert!(v.datum.starts_with(&canonical), "{}", v.label());
        for cut in 0..v.datum.len() {
            match v.decode(&v.datum[..cut]) {
                Ok(got) => {
                    assert!(cut >= canonical.len(), "{} cut at {cut}", v.label());
                    assert_eq!(got, v.value, "{} cut at {cut}", v.label());
                }
                Err(e) => {
                    assert!(cut < canonical.len(), "{} cut at {cut}: {e}", v.label());
                    assert!(is_truncation(&e), "{} cut at {cut}: {e}", v.label());
                }
            }
        }
    }
}

#[test]
fn sessions_large_strings_are_borrowed() {
    for v in session_vectors()
        .iter()
        .filter(|v| v.datum.len() > 64 * 1024)
    {
        let decoded = v.decode(&v.datum).unwrap();
        let large: &Cow<'_, str> = match &decoded {
            Sessions::Request(m) => &m.extension_instance_name,
            Sessions::Response(m) => &m.endpoints[0].resource_paths[1],
        };
        assert_eq!(large.len(), 64 * 1024, "{}", v.label());
        let Cow::Borrowed(s) = large else {
            panic!("{}: copied", v.label())
        };
        assert!(v.datum.as_ptr_range().contains(&s.as_ptr()));
    }
}

#[test]
fn sessions_arrays_in_other_block_forms() {
    // Two endpoints written as two blocks, the second with a negative count and its
    // byte size: the same value as the canonical single block.
    let value = SessionsResponse {
        correlation_id: "c".into(),
        endpoints: vec![
            EndpointSession {
                endpoint_id: "e1".into(),
                app_version_name: "a".into(),
                resource_paths: vec!["p".into(), "q".into()],
            },
            EndpointSession {
                endpoint_id: "e2".into(),
                app_version_name: "a".into(),
                resource_paths: vec![],
            },
        ],
        originator_replica_id: "r".into(),
        ..Default::default()
    };
    let mut second = Vec::new();
    put_string(&mut second, "e2");
    put_string(&mut second, "a");
    put_long(&mut second, 0);
    let mut datum = Vec::new();
    put_string(&mut datum, "c");
    put_long(&mut datum, 0);
    put_long(&mut datum, 0);
    put_long(&mut datum, 1);
    put_string(&mut datum, "e1");
    put_string(&mut datum, "a");
    // The paths as two one-element blocks.
    for path in ["p", "q"] {
        put_long(&mut datum, 1);
        put_string(&mut datum, path);
    }
    put_long(&mut datum, 0);
    put_long(&mut datum, -1);
    put_long(&mut datum, second.len() as i64);
    datum.extend_from_slice(&second);
    put_long(&mut datum, 0);
    put_string(&mut datum, "r");
    assert_eq!(SessionsResponse::decode(&datum).unwrap(), value);
    // A byte size that lies is an error naming the array.
    let at = datum.len() - second.len() - 4;
    datum[at] += 2;
    let e = SessionsResponse::decode(&datum).unwrap_err();
    assert_eq!(e.field, "endpoints");
}
