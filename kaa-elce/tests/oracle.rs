//! Cross-check against Apache Avro 0.22 (Rust) with the RFC schemas: for arbitrary
//! events, its schema-aware writer produces exactly our bytes, its readers (serde and
//! generic `Value`) read our bytes back to the same event, and we read what it writes,
//! including maps it splits into blocks with negative counts and byte sizes.

mod mirror;

use std::fmt::Debug;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use kaa_elce::{
    AppVersionUpdatedEvent, ConnectedEvent, DecodeLimits, DisconnectedEvent, ElceEvent, EventKind,
    Map, RegisteredEvent, TrafficReportEvent, TrafficStat, UnregisteredEvent,
};
use kaa_ism::avro::Encode;
use mirror::{
    AppVersionUpdatedMirror, ConnectedMirror, DisconnectedMirror, RegisteredMirror,
    TrafficReportMirror, UnregisteredMirror,
};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn schema_file(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Connected => "0009-ep-connected.avsc",
        EventKind::Disconnected => "0009-ep-disconnected.avsc",
        EventKind::Registered => "0009-ep-registered.avsc",
        EventKind::AppVersionUpdated => "0009-ep-appversion-updated.avsc",
        EventKind::Unregistered => "0009-ep-unregistered.avsc",
        EventKind::TrafficReport => "0009-ep-traffic-stats.avsc",
        other => panic!("no schema for {other:?}"),
    }
}

/// The RFC schemas, from this crate's `schemas/` (copies of kaa-rfcs `0009/`).
fn schema(kind: EventKind) -> &'static Schema {
    static SCHEMAS: OnceLock<Vec<(EventKind, Schema)>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        EventKind::ALL
            .into_iter()
            .map(|kind| {
                let path = format!(
                    "{}/schemas/{}",
                    env!("CARGO_MANIFEST_DIR"),
                    schema_file(kind)
                );
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read the RFC schema {path}: {e}"));
                let schema = Schema::parse_str(&text).expect("RFC schema parses");
                (kind, schema)
            })
            .collect()
    });
    &schemas.iter().find(|(k, _)| *k == kind).expect("schema").1
}

/// The whole cross-check for one event and its serde mirror.
fn cross_check<M>(event: ElceEvent<'static>, mirror: M) -> Result<(), TestCaseError>
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let kind = event.kind();
    let schema = schema(kind);
    let ours = event.to_vec();
    prop_assert_eq!(ours.len(), event.encoded_len());

    // Apache Avro writes exactly our bytes.
    let writer = GenericDatumWriter::builder(schema).build().expect("writer");
    let theirs = writer
        .write_ser_to_vec(&mirror)
        .expect("apache-avro writes");
    prop_assert_eq!(&ours, &theirs);

    // Apache Avro reads our bytes: with serde to the same value, and with its generic
    // decoder (which validates every value against the schema), consuming all of them.
    let reader = GenericDatumReader::builder(schema).build().expect("reader");
    let mut rest = &ours[..];
    let read: M = reader
        .read_deser(&mut rest)
        .expect("apache-avro reads ours (serde)");
    prop_assert!(
        read == mirror,
        "apache-avro read {read:?}, expected {mirror:?}"
    );
    prop_assert!(rest.is_empty());
    let mut rest = &ours[..];
    reader
        .read_value(&mut rest)
        .expect("apache-avro reads ours (Value)");
    prop_assert!(rest.is_empty());

    // We read what Apache Avro writes, also when it splits maps into small blocks
    // with negative counts and byte sizes.
    let decoded = ElceEvent::decode_kind(kind, &theirs, DecodeLimits::UNLIMITED);
    prop_assert_eq!(decoded.as_ref(), Ok(&event));
    let blocked = GenericDatumWriter::builder(schema)
        .target_block_size(16)
        .build()
        .expect("writer")
        .write_ser_to_vec(&mirror)
        .expect("apache-avro writes blocks");
    let decoded = ElceEvent::decode_kind(kind, &blocked, DecodeLimits::UNLIMITED);
    prop_assert_eq!(decoded.as_ref(), Ok(&event));
    Ok(())
}

/// Any Unicode, short: control characters, non-ASCII, astral planes.
fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

/// Sometimes up to 4 KiB of characters (up to 16 KiB of UTF-8).
fn text_up_to_4k() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text(),
        1 => proptest::collection::vec(any::<char>(), 0..4096).prop_map(String::from_iter),
    ]
}

fn map_of<V: Debug>(
    value: impl Strategy<Value = V>,
    max: usize,
) -> impl Strategy<Value = Map<'static, V>> {
    proptest::collection::vec((text(), value), 0..max)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn endpoints() -> impl Strategy<Value = Map<'static, std::borrow::Cow<'static, str>>> {
    map_of(text().prop_map(Into::into), 20)
}

fn connectivity() -> impl Strategy<Value = ConnectedEvent<'static>> {
    (
        text_up_to_4k(),
        any::<i64>(),
        any::<i64>(),
        endpoints(),
        text(),
    )
        .prop_map(|(c, timestamp, timeout, endpoints, r)| ConnectedEvent {
            correlation_id: c.into(),
            timestamp,
            timeout,
            endpoints,
            originator_replica_id: r.into(),
        })
}

fn lifecycle() -> impl Strategy<Value = AppVersionUpdatedEvent<'static>> {
    (
        text(),
        any::<i64>(),
        any::<i64>(),
        text_up_to_4k(),
        text(),
        text(),
        text_up_to_4k(),
    )
        .prop_map(
            |(c, timestamp, timeout, app, previous, ep, r)| AppVersionUpdatedEvent {
                correlation_id: c.into(),
                timestamp,
                timeout,
                app_version_name: app.into(),
                previous_app_version_name: previous.into(),
                endpoint_id: ep.into(),
                originator_replica_id: r.into(),
            },
        )
}

fn traffic_stat() -> impl Strategy<Value = TrafficStat> {
    any::<[i64; 4]>().prop_map(|[a, b, c, d]| TrafficStat {
        total_received_payload: a,
        total_sent_payload: b,
        total_received_message_count: c,
        total_sent_message_count: d,
    })
}

fn traffic_report() -> impl Strategy<Value = TrafficReportEvent<'static>> {
    (
        map_of(map_of(map_of(traffic_stat(), 20), 4), 4),
        any::<[i64; 4]>(),
        text_up_to_4k(),
        text(),
    )
        .prop_map(|(stats, [time_from, time_to, timestamp, timeout], c, r)| {
            TrafficReportEvent {
                tenant_traffic_stats: stats,
                time_from,
                time_to,
                correlation_id: c.into(),
                originator_replica_id: r.into(),
                timestamp,
                timeout,
            }
        })
}

proptest! {
    #[test]
    fn connected(e in connectivity()) {
        let mirror = ConnectedMirror::from(&e);
        cross_check(e.into(), mirror)?;
    }

    #[test]
    fn disconnected(e in connectivity()) {
        let e = DisconnectedEvent {
            correlation_id: e.correlation_id,
            timestamp: e.timestamp,
            timeout: e.timeout,
            endpoints: e.endpoints,
            originator_replica_id: e.originator_replica_id,
        };
        let mirror = DisconnectedMirror::from(&e);
        cross_check(e.into(), mirror)?;
    }

    #[test]
    fn registered(e in lifecycle()) {
        let e = RegisteredEvent {
            correlation_id: e.correlation_id,
            timestamp: e.timestamp,
            timeout: e.timeout,
            app_version_name: e.app_version_name,
            endpoint_id: e.endpoint_id,
            originator_replica_id: e.originator_replica_id,
        };
        let mirror = RegisteredMirror::from(&e);
        cross_check(e.into(), mirror)?;
    }

    #[test]
    fn app_version_updated(e in lifecycle()) {
        let mirror = AppVersionUpdatedMirror::from(&e);
        cross_check(e.into(), mirror)?;
    }

    #[test]
    fn unregistered(e in lifecycle()) {
        let e = UnregisteredEvent {
            correlation_id: e.correlation_id,
            timestamp: e.timestamp,
            timeout: e.timeout,
            app_version_name: e.app_version_name,
            endpoint_id: e.endpoint_id,
            originator_replica_id: e.originator_replica_id,
        };
        let mirror = UnregisteredMirror::from(&e);
        cross_check(e.into(), mirror)?;
    }

    #[test]
    fn traffic_report_event(e in traffic_report()) {
        let mirror = TrafficReportMirror::from(&e);
        cross_check(e.into(), mirror)?;
    }
}

/// The oracle itself must be able to disagree: a mirror with one field changed is
/// written to different bytes than ours.
#[test]
fn the_oracle_sees_a_difference() {
    let event = RegisteredEvent {
        correlation_id: "c".into(),
        endpoint_id: "ep-1".into(),
        ..Default::default()
    };
    let mut mirror = RegisteredMirror::from(&event);
    mirror.endpoint_id = "ep-2".into();
    let schema = schema(EventKind::Registered);
    let writer = GenericDatumWriter::builder(schema).build().unwrap();
    assert_ne!(writer.write_ser_to_vec(&mirror).unwrap(), event.to_vec());
}

/// Apache Avro's blocked writer really does write negative block counts with byte
/// sizes, several blocks per map, and we read them.
#[test]
fn apache_blocked_maps_are_read() {
    let event = ConnectedEvent {
        endpoints: (0..6)
            .map(|i| (format!("endpoint-{i}").into(), "app-v1".into()))
            .collect(),
        ..Default::default()
    };
    let schema = schema(EventKind::Connected);
    let blocked = GenericDatumWriter::builder(schema)
        .target_block_size(16)
        .build()
        .unwrap()
        .write_ser_to_vec(&ConnectedMirror::from(&event))
        .unwrap();
    let ours = event.to_vec();
    assert_ne!(blocked, ours);
    // The map starts after correlationId "" (1 byte) and two longs: a negative count.
    assert_eq!(blocked[3] & 1, 1, "block count is negative");
    assert!(blocked.len() > ours.len() + 2, "more than one block");
    assert_eq!(kaa_ism::avro::Decode::decode(&blocked), Ok(event));
}

// ------------------------------------------------------------------------------
// kaa-rs extensions (not 9/ELCE RFC messages): the sessions request and response,
// against Apache Avro with this crate's schemas/sessions-*.avsc.

mod sessions {
    use std::borrow::Cow;

    use apache_avro::Schema;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use kaa_elce::{DecodeLimits, EndpointSession, SessionsRequest, SessionsResponse};
    use kaa_ism::avro::{Decode, Encode};
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    fn ext_schema(file: &str) -> Schema {
        let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Schema::parse_str(&text).expect("extension schema parses")
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename = "SessionsRequest", rename_all = "camelCase")]
    struct RequestMirror {
        correlation_id: String,
        timestamp: i64,
        timeout: i64,
        extension_instance_name: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename = "EndpointSession", rename_all = "camelCase")]
    struct SessionMirror {
        endpoint_id: String,
        app_version_name: String,
        resource_paths: Vec<String>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename = "SessionsResponse", rename_all = "camelCase")]
    struct ResponseMirror {
        correlation_id: String,
        timestamp: i64,
        timeout: i64,
        endpoints: Vec<SessionMirror>,
        originator_replica_id: String,
    }

    fn cow(s: &str) -> Cow<'static, str> {
        Cow::Owned(s.to_owned())
    }

    impl RequestMirror {
        fn to_kaa(&self) -> SessionsRequest<'static> {
            SessionsRequest {
                correlation_id: cow(&self.correlation_id),
                timestamp: self.timestamp,
                timeout: self.timeout,
                extension_instance_name: cow(&self.extension_instance_name),
            }
        }
    }

    impl ResponseMirror {
        fn to_kaa(&self) -> SessionsResponse<'static> {
            SessionsResponse {
                correlation_id: cow(&self.correlation_id),
                timestamp: self.timestamp,
                timeout: self.timeout,
                endpoints: self
                    .endpoints
                    .iter()
                    .map(|s| EndpointSession {
                        endpoint_id: cow(&s.endpoint_id),
                        app_version_name: cow(&s.app_version_name),
                        resource_paths: s.resource_paths.iter().map(|p| cow(p)).collect(),
                    })
                    .collect(),
                originator_replica_id: cow(&self.originator_replica_id),
            }
        }
    }

    fn text() -> impl Strategy<Value = String> {
        any::<String>()
    }

    prop_compose! {
        fn request()(
            correlation_id in text(), timestamp in any::<i64>(), timeout in any::<i64>(),
            extension_instance_name in text(),
        ) -> RequestMirror {
            RequestMirror { correlation_id, timestamp, timeout, extension_instance_name }
        }
    }

    prop_compose! {
        fn session()(
            endpoint_id in text(), app_version_name in text(),
            resource_paths in proptest::collection::vec(text(), 0..6),
        ) -> SessionMirror {
            SessionMirror { endpoint_id, app_version_name, resource_paths }
        }
    }

    prop_compose! {
        fn response()(
            correlation_id in text(), timestamp in any::<i64>(), timeout in any::<i64>(),
            endpoints in proptest::collection::vec(session(), 0..20),
            originator_replica_id in text(),
        ) -> ResponseMirror {
            ResponseMirror { correlation_id, timestamp, timeout, endpoints, originator_replica_id }
        }
    }

    /// Our bytes are Apache Avro's, it reads ours back (serde and generic `Value`),
    /// and we read what it writes, also with arrays split into blocks with negative
    /// counts and byte sizes.
    fn cross_check<M, T>(
        schema: &Schema,
        mirror: &M,
        ours: &T,
        decode: impl Fn(&[u8]) -> Result<T, kaa_ism::avro::DecodeError>,
    ) -> Result<(), TestCaseError>
    where
        M: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
        T: Encode + PartialEq + std::fmt::Debug,
    {
        let our_bytes = ours.to_vec();
        prop_assert_eq!(our_bytes.len(), ours.encoded_len());
        let theirs = GenericDatumWriter::builder(schema)
            .build()
            .expect("writer")
            .write_ser_to_vec(mirror)
            .expect("apache-avro writes");
        prop_assert_eq!(&theirs, &our_bytes);

        let reader = GenericDatumReader::builder(schema).build().expect("reader");
        let mut rest = &our_bytes[..];
        let read: M = reader
            .read_deser(&mut rest)
            .expect("apache-avro reads ours");
        prop_assert_eq!(&read, mirror);
        prop_assert!(rest.is_empty());
        let mut rest = &our_bytes[..];
        reader
            .read_value(&mut rest)
            .expect("apache-avro reads ours (Value)");
        prop_assert!(rest.is_empty());

        let decoded = decode(&theirs);
        prop_assert_eq!(decoded.as_ref(), Ok(ours));
        let blocked = GenericDatumWriter::builder(schema)
            .target_block_size(16)
            .build()
            .expect("writer")
            .write_ser_to_vec(mirror)
            .expect("apache-avro writes blocks");
        let decoded = decode(&blocked);
        prop_assert_eq!(decoded.as_ref(), Ok(ours));
        Ok(())
    }

    proptest! {
        #[test]
        fn sessions_request_agrees_with_apache_avro(mirror in request()) {
            let schema = ext_schema("sessions-request.avsc");
            let ours = mirror.to_kaa();
            cross_check(&schema, &mirror, &ours, |b| {
                SessionsRequest::decode(b).map(SessionsRequest::into_owned)
            })?;
        }

        #[test]
        fn sessions_response_agrees_with_apache_avro(mirror in response()) {
            let schema = ext_schema("sessions-response.avsc");
            let ours = mirror.to_kaa();
            cross_check(&schema, &mirror, &ours, |b| {
                SessionsResponse::decode_with_limits(b, DecodeLimits::UNLIMITED)
                    .map(SessionsResponse::into_owned)
            })?;
        }
    }

    /// Apache Avro's blocked writer splits the endpoint array into several blocks
    /// with negative counts, and we read them.
    #[test]
    fn apache_blocked_arrays_are_read() {
        let mirror = ResponseMirror {
            correlation_id: String::new(),
            timestamp: 0,
            timeout: 0,
            endpoints: (0..6)
                .map(|i| SessionMirror {
                    endpoint_id: format!("endpoint-{i}"),
                    app_version_name: "app-v1".into(),
                    resource_paths: vec!["config/json".into(), format!("config/json/n{i}")],
                })
                .collect(),
            originator_replica_id: "kpc-1".into(),
        };
        let schema = ext_schema("sessions-response.avsc");
        let blocked = GenericDatumWriter::builder(&schema)
            .target_block_size(16)
            .build()
            .unwrap()
            .write_ser_to_vec(&mirror)
            .unwrap();
        let ours = mirror.to_kaa().to_vec();
        assert_ne!(blocked, ours);
        // The array starts after correlationId "" (1 byte) and two longs.
        assert_eq!(blocked[3] & 1, 1, "block count is negative");
        assert_eq!(SessionsResponse::decode(&blocked), Ok(mirror.to_kaa()));
    }
}
