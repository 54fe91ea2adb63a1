//! Avro binary codec of the 9/ELCE records: [`Encode`] and [`Decode`] for every event,
//! plus [`DecodeLimits`] for the events that list endpoints.

use std::borrow::Cow;

use bytes::BufMut;
use kaa_ism::avro::{
    Decode, DecodeError, Encode, Reader, long_len, put_long, put_map, put_string, string_len,
    to_static,
};

use crate::{
    AppVersionUpdatedEvent, ConnectedEvent, DisconnectedEvent, Map, RegisteredEvent,
    TrafficReportEvent, TrafficStat, UnregisteredEvent,
};

/// The reason in the [`DecodeError`] (kind [`Invalid`](kaa_ism::avro::DecodeErrorKind::Invalid))
/// returned when an event lists more endpoints than [`DecodeLimits::max_endpoints`].
pub const TOO_MANY_ENDPOINTS: &str = "more endpoints than the decoder's limit allows";

/// Limits a decoder applies on top of the size of the input.
///
/// Without limits, memory is already bounded by the input: every map entry takes at
/// least two bytes on the wire, and the decoder never reserves more entries than the
/// remaining bytes could hold. What the limit adds is a bound on the *work* one event
/// can cause downstream (a `disconnected` event with a million endpoints fans out to a
/// million state updates in a listener).
///
/// [`Decode::decode`] applies [`DecodeLimits::UNLIMITED`]; a service that wants a cap
/// calls `decode_with_limits` (on [`ConnectedEvent`], [`DisconnectedEvent`],
/// [`TrafficReportEvent`] or [`ElceEvent`](crate::ElceEvent)), or checks
/// `endpoint_count()` after decoding.
///
/// ```
/// use kaa_elce::{ConnectedEvent, DecodeLimits};
/// use kaa_ism::avro::Encode;
///
/// let event = ConnectedEvent {
///     endpoints: vec![("ep-1".into(), "v1".into()), ("ep-2".into(), "v1".into())],
///     ..Default::default()
/// };
/// let datum = event.to_vec();
/// assert!(ConnectedEvent::decode_with_limits(&datum, DecodeLimits::with_max_endpoints(2)).is_ok());
/// let err = ConnectedEvent::decode_with_limits(&datum, DecodeLimits::with_max_endpoints(1)).unwrap_err();
/// assert_eq!(err.field, "endpoints");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most endpoints one event may list: the entries of `endpoints` in
    /// connectivity events, and the endpoint entries summed over every tenant and
    /// application in a traffic report.
    pub max_endpoints: usize,
}

impl DecodeLimits {
    /// No limit beyond the size of the input.
    pub const UNLIMITED: DecodeLimits = DecodeLimits {
        max_endpoints: usize::MAX,
    };

    /// At most `max_endpoints` endpoints per event.
    pub const fn with_max_endpoints(max_endpoints: usize) -> Self {
        DecodeLimits { max_endpoints }
    }
}

impl Default for DecodeLimits {
    /// [`DecodeLimits::UNLIMITED`].
    fn default() -> Self {
        DecodeLimits::UNLIMITED
    }
}

/// Counts endpoints as they are read and fails once the limit is passed.
struct EndpointBudget {
    left: usize,
}

impl EndpointBudget {
    fn new(limits: DecodeLimits) -> Self {
        EndpointBudget {
            left: limits.max_endpoints,
        }
    }

    #[inline]
    fn take(&mut self, r: &Reader<'_>, field: &'static str) -> Result<(), DecodeError> {
        match self.left.checked_sub(1) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(r.invalid(field, TOO_MANY_ENDPOINTS)),
        }
    }
}

/// Encoded size of a map as [`put_map`] writes it: one block (none when empty) and
/// the terminating zero count.
fn map_len<V>(map: &Map<'_, V>, value_len: impl Fn(&V) -> usize) -> usize {
    let header = if map.is_empty() {
        0
    } else {
        long_len(map.len() as i64)
    };
    map.iter().fold(header + 1, |len, (key, value)| {
        len + string_len(key) + value_len(value)
    })
}

fn put_wire_map<B: BufMut + ?Sized, V>(
    buf: &mut B,
    map: &Map<'_, V>,
    mut put_value: impl FnMut(&mut B, &V),
) {
    put_map(buf, map.iter().map(|(k, v)| (k, v)), |b, v| put_value(b, v));
}

fn endpoints_len(endpoints: &Map<'_, Cow<'_, str>>) -> usize {
    map_len(endpoints, |app_version| string_len(app_version))
}

fn put_endpoints<B: BufMut + ?Sized>(buf: &mut B, endpoints: &Map<'_, Cow<'_, str>>) {
    put_wire_map(buf, endpoints, |b, app_version| put_string(b, app_version));
}

/// Reads `endpoints` (endpoint ID → app version name), borrowing every string.
fn read_endpoints<'a>(
    r: &mut Reader<'a>,
    limits: DecodeLimits,
) -> Result<Map<'a, Cow<'a, str>>, DecodeError> {
    r.string_map(
        "endpoints",
        limits.max_endpoints,
        TOO_MANY_ENDPOINTS,
        |endpoint_id, app_version| (Cow::Borrowed(endpoint_id), Cow::Borrowed(app_version)),
    )
}

fn owned_map<V, W>(map: Map<'_, V>, mut owned_value: impl FnMut(V) -> W) -> Map<'static, W> {
    map.into_iter()
        .map(|(k, v)| (to_static(k), owned_value(v)))
        .collect()
}

// Per field kind: encoded size, writer, reader and conversion to owned, so that the
// records made only of strings, longs and an endpoint map share one definition.
macro_rules! field_len {
    (string, $v:expr) => {
        string_len(&$v)
    };
    (long, $v:expr) => {
        long_len($v)
    };
    (endpoints, $v:expr) => {
        endpoints_len(&$v)
    };
}

macro_rules! put_field {
    (string, $buf:expr, $v:expr) => {
        put_string($buf, &$v)
    };
    (long, $buf:expr, $v:expr) => {
        put_long($buf, $v)
    };
    (endpoints, $buf:expr, $v:expr) => {
        put_endpoints($buf, &$v)
    };
}

macro_rules! read_field {
    (string, $r:expr, $name:literal, $limits:expr) => {
        Cow::Borrowed($r.string($name)?)
    };
    (long, $r:expr, $name:literal, $limits:expr) => {
        $r.long($name)?
    };
    (endpoints, $r:expr, $name:literal, $limits:expr) => {
        read_endpoints(&mut $r, $limits)?
    };
}

macro_rules! owned_field {
    (string, $v:expr) => {
        to_static($v)
    };
    (long, $v:expr) => {
        $v
    };
    (endpoints, $v:expr) => {
        owned_map($v, to_static)
    };
}

/// The codec of a record whose fields are all strings, longs or the endpoint map, and
/// are all required: none of them is a trailing field with a default.
macro_rules! flat_record {
    ($ty:ident, $record:literal, [$($field:ident: $kind:ident = $name:literal),+ $(,)?]) => {
        impl Encode for $ty<'_> {
            fn encoded_len(&self) -> usize {
                0 $(+ field_len!($kind, self.$field))+
            }

            fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
                $(put_field!($kind, buf, self.$field);)+
            }
        }

        impl<'a> Decode<'a> for $ty<'a> {
            fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
                Self::decode_with_limits(input, DecodeLimits::UNLIMITED)
            }
        }

        impl<'a> $ty<'a> {
            #[doc = concat!("Decodes a `", $record, "` datum as [`Decode::decode`] does, and")]
            /// rejects an event that lists more endpoints than `limits` allow.
            ///
            /// Bytes after the last field are ignored (fields a newer writer appended).
            #[allow(unused_variables, reason = "only records with endpoints use the limits")]
            pub fn decode_with_limits(
                input: &'a [u8],
                limits: DecodeLimits,
            ) -> Result<Self, DecodeError> {
                let mut r = Reader::new(input, $record);
                // Fields are read in schema order: struct expressions evaluate in the
                // order they are written.
                Ok($ty {
                    $($field: read_field!($kind, r, $name, limits),)+
                })
            }

            /// Copies every borrowed string, detaching the event from the input buffer.
            pub fn into_owned(self) -> $ty<'static> {
                $ty {
                    $($field: owned_field!($kind, self.$field),)+
                }
            }
        }

        kaa_ism::impl_common_fields!($ty);
    };
}

flat_record!(ConnectedEvent, "ConnectedEvent", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    endpoints: endpoints = "endpoints",
    originator_replica_id: string = "originatorReplicaId",
]);

flat_record!(DisconnectedEvent, "DisconnectedEvent", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    endpoints: endpoints = "endpoints",
    originator_replica_id: string = "originatorReplicaId",
]);

flat_record!(RegisteredEvent, "RegisteredEvent", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    app_version_name: string = "appVersionName",
    endpoint_id: string = "endpointId",
    originator_replica_id: string = "originatorReplicaId",
]);

flat_record!(AppVersionUpdatedEvent, "AppVersionUpdatedEvent", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    app_version_name: string = "appVersionName",
    previous_app_version_name: string = "previousAppVersionName",
    endpoint_id: string = "endpointId",
    originator_replica_id: string = "originatorReplicaId",
]);

flat_record!(UnregisteredEvent, "UnregisteredEvent", [
    correlation_id: string = "correlationId",
    timestamp: long = "timestamp",
    timeout: long = "timeout",
    app_version_name: string = "appVersionName",
    endpoint_id: string = "endpointId",
    originator_replica_id: string = "originatorReplicaId",
]);

impl ConnectedEvent<'_> {
    /// The number of endpoints the event lists, for a service that checks a limit
    /// after decoding instead of with [`ConnectedEvent::decode_with_limits`].
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

impl DisconnectedEvent<'_> {
    /// The number of endpoints the event lists, for a service that checks a limit
    /// after decoding instead of with [`DisconnectedEvent::decode_with_limits`].
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

const TRAFFIC_RECORD: &str = "TrafficReportEvent";
const TRAFFIC_STAT_RECORD: &str = "trafficStat";
const TENANT_TRAFFIC_STATS: &str = "tenantTrafficStats";

fn traffic_stat_len(stat: &TrafficStat) -> usize {
    long_len(stat.total_received_payload)
        + long_len(stat.total_sent_payload)
        + long_len(stat.total_received_message_count)
        + long_len(stat.total_sent_message_count)
}

fn put_traffic_stat<B: BufMut + ?Sized>(buf: &mut B, stat: &TrafficStat) {
    put_long(buf, stat.total_received_payload);
    put_long(buf, stat.total_sent_payload);
    put_long(buf, stat.total_received_message_count);
    put_long(buf, stat.total_sent_message_count);
}

/// Reads one `trafficStat` record. Its fields have defaults, but it sits inside a
/// map, so a datum can never end before them: all four are always read.
fn read_traffic_stat(r: &mut Reader<'_>) -> Result<TrafficStat, DecodeError> {
    r.set_record(TRAFFIC_STAT_RECORD);
    let stat = TrafficStat {
        total_received_payload: r.long("totalReceivedPayload")?,
        total_sent_payload: r.long("totalSentPayload")?,
        total_received_message_count: r.long("totalReceivedMessageCount")?,
        total_sent_message_count: r.long("totalSentMessageCount")?,
    };
    r.set_record(TRAFFIC_RECORD);
    Ok(stat)
}

impl Encode for TrafficReportEvent<'_> {
    fn encoded_len(&self) -> usize {
        map_len(&self.tenant_traffic_stats, |apps| {
            map_len(apps, |endpoints| map_len(endpoints, traffic_stat_len))
        }) + long_len(self.time_from)
            + long_len(self.time_to)
            + string_len(&self.correlation_id)
            + string_len(&self.originator_replica_id)
            + long_len(self.timestamp)
            + long_len(self.timeout)
    }

    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        put_wire_map(buf, &self.tenant_traffic_stats, |b, apps| {
            put_wire_map(b, apps, |b, endpoints| {
                put_wire_map(b, endpoints, put_traffic_stat);
            });
        });
        put_long(buf, self.time_from);
        put_long(buf, self.time_to);
        put_string(buf, &self.correlation_id);
        put_string(buf, &self.originator_replica_id);
        put_long(buf, self.timestamp);
        put_long(buf, self.timeout);
    }
}

impl<'a> Decode<'a> for TrafficReportEvent<'a> {
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with_limits(input, DecodeLimits::UNLIMITED)
    }
}

impl<'a> TrafficReportEvent<'a> {
    /// Decodes a `TrafficReportEvent` datum as [`Decode::decode`] does, and rejects a
    /// report with more endpoint entries (summed over all tenants and applications)
    /// than `limits` allow.
    ///
    /// `timeout`, the last field, has a default: a datum that ends before it decodes
    /// with `timeout = 0`. Bytes after `timeout` are ignored.
    pub fn decode_with_limits(input: &'a [u8], limits: DecodeLimits) -> Result<Self, DecodeError> {
        let mut r = Reader::new(input, TRAFFIC_RECORD);
        let mut budget = EndpointBudget::new(limits);
        // Tenant and application entries take at least 2 bytes (empty key, empty
        // map); endpoint entries at least 5 (empty key, four one-byte longs).
        let tenant_traffic_stats = r.map(TENANT_TRAFFIC_STATS, 2, |r, tenant_id| {
            let apps = r.map(TENANT_TRAFFIC_STATS, 2, |r, app_name| {
                let endpoints = r.map(TENANT_TRAFFIC_STATS, 5, |r, endpoint_id| {
                    budget.take(r, TENANT_TRAFFIC_STATS)?;
                    Ok((Cow::Borrowed(endpoint_id), read_traffic_stat(r)?))
                })?;
                Ok((Cow::Borrowed(app_name), endpoints))
            })?;
            Ok((Cow::Borrowed(tenant_id), apps))
        })?;
        Ok(TrafficReportEvent {
            tenant_traffic_stats,
            time_from: r.long("timeFrom")?,
            time_to: r.long("timeTo")?,
            correlation_id: Cow::Borrowed(r.string("correlationId")?),
            originator_replica_id: Cow::Borrowed(r.string("originatorReplicaId")?),
            timestamp: r.long("timestamp")?,
            // Trailing field with a default: an older writer's datum ends here.
            timeout: if r.is_empty() { 0 } else { r.long("timeout")? },
        })
    }

    /// Copies every borrowed string, detaching the report from the input buffer.
    pub fn into_owned(self) -> TrafficReportEvent<'static> {
        TrafficReportEvent {
            tenant_traffic_stats: owned_map(self.tenant_traffic_stats, |apps| {
                owned_map(apps, |endpoints| owned_map(endpoints, |stat| stat))
            }),
            time_from: self.time_from,
            time_to: self.time_to,
            correlation_id: to_static(self.correlation_id),
            originator_replica_id: to_static(self.originator_replica_id),
            timestamp: self.timestamp,
            timeout: self.timeout,
        }
    }

    /// The number of endpoint entries, summed over every tenant and application.
    pub fn endpoint_count(&self) -> usize {
        self.tenant_traffic_stats
            .iter()
            .flat_map(|(_, apps)| apps.iter())
            .map(|(_, endpoints)| endpoints.len())
            .sum()
    }
}

kaa_ism::impl_common_fields!(TrafficReportEvent);

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_ism::UnixMillis;
    use kaa_ism::avro::DecodeErrorKind;
    use kaa_ism::common::CommonFields;

    fn connected(endpoints: &[(&str, &str)]) -> ConnectedEvent<'static> {
        ConnectedEvent {
            correlation_id: "c-1".into(),
            timestamp: 1_000,
            timeout: 500,
            endpoints: endpoints
                .iter()
                .map(|(e, a)| (Cow::Owned((*e).to_owned()), Cow::Owned((*a).to_owned())))
                .collect(),
            originator_replica_id: "kpc-1".into(),
        }
    }

    fn report(apps: &[(&str, usize)]) -> TrafficReportEvent<'static> {
        let stat = TrafficStat {
            total_received_payload: 10,
            total_sent_payload: 20,
            total_received_message_count: 1,
            total_sent_message_count: 2,
        };
        TrafficReportEvent {
            tenant_traffic_stats: vec![(
                "tenant".into(),
                apps.iter()
                    .map(|(app, n)| {
                        let endpoints = (0..*n).map(|i| (format!("ep-{i}").into(), stat)).collect();
                        (Cow::Owned((*app).to_owned()), endpoints)
                    })
                    .collect(),
            )],
            correlation_id: "c-2".into(),
            originator_replica_id: "kpc-2".into(),
            timeout: 7,
            ..Default::default()
        }
    }

    #[test]
    fn endpoint_limit_on_connectivity_events() {
        let event = connected(&[("ep-1", "v1"), ("ep-2", "v1"), ("ep-3", "v2")]);
        let datum = event.to_vec();
        assert_eq!(event.endpoint_count(), 3);
        for max in [3, 4, usize::MAX] {
            let limits = DecodeLimits::with_max_endpoints(max);
            assert_eq!(
                ConnectedEvent::decode_with_limits(&datum, limits).unwrap(),
                event
            );
        }
        for max in [0, 1, 2] {
            let limits = DecodeLimits::with_max_endpoints(max);
            let err = ConnectedEvent::decode_with_limits(&datum, limits).unwrap_err();
            assert_eq!((err.record, err.field), ("ConnectedEvent", "endpoints"));
            assert_eq!(err.kind, DecodeErrorKind::Invalid(TOO_MANY_ENDPOINTS));
        }
        // The same rule for disconnected events; none for lifecycle events.
        let disconnected = DisconnectedEvent {
            endpoints: event.endpoints.clone(),
            ..Default::default()
        };
        let datum = disconnected.to_vec();
        let limits = DecodeLimits::with_max_endpoints(2);
        assert!(DisconnectedEvent::decode_with_limits(&datum, limits).is_err());
        assert!(DisconnectedEvent::decode(&datum).is_ok());
        let registered = RegisteredEvent::default();
        let datum = registered.to_vec();
        let limits = DecodeLimits::with_max_endpoints(0);
        assert_eq!(
            RegisteredEvent::decode_with_limits(&datum, limits).unwrap(),
            registered
        );
    }

    #[test]
    fn endpoint_limit_sums_over_a_traffic_report() {
        // 2 + 3 endpoints in two applications: the limit applies to the sum.
        let event = report(&[("app-1", 2), ("app-2", 3)]);
        assert_eq!(event.endpoint_count(), 5);
        let datum = event.to_vec();
        let ok = DecodeLimits::with_max_endpoints(5);
        assert_eq!(
            TrafficReportEvent::decode_with_limits(&datum, ok).unwrap(),
            event
        );
        let err =
            TrafficReportEvent::decode_with_limits(&datum, DecodeLimits::with_max_endpoints(4))
                .unwrap_err();
        assert_eq!(err.field, "tenantTrafficStats");
        assert_eq!(err.kind, DecodeErrorKind::Invalid(TOO_MANY_ENDPOINTS));
    }

    #[test]
    fn duplicate_keys_and_order_survive_a_round_trip() {
        let event = connected(&[("ep-2", "v1"), ("ep-1", "v2"), ("ep-2", "v3")]);
        let datum = event.to_vec();
        let decoded = ConnectedEvent::decode(&datum).unwrap();
        assert_eq!(decoded, event);
        assert_eq!(decoded.to_vec(), datum);
    }

    #[test]
    fn into_owned_detaches_from_the_input() {
        let event = report(&[("app", 2)]);
        let owned = {
            let datum = event.to_vec();
            let decoded = TrafficReportEvent::decode(&datum).unwrap();
            assert!(matches!(decoded.correlation_id, Cow::Borrowed(_)));
            decoded.into_owned()
        };
        assert_eq!(owned, event);
        assert!(matches!(owned.tenant_traffic_stats[0].0, Cow::Owned(_)));

        let event = connected(&[("ep-1", "v1")]);
        let owned = {
            let datum = event.to_vec();
            ConnectedEvent::decode(&datum).unwrap().into_owned()
        };
        assert_eq!(owned, event);
        assert!(matches!(owned.endpoints[0].1, Cow::Owned(_)));
    }

    #[test]
    fn common_fields() {
        let event = connected(&[]);
        assert_eq!(event.correlation_id(), "c-1");
        assert_eq!(event.expires_at(), Some(UnixMillis(1_500)));
        assert!(!event.is_expired(UnixMillis(1_500)));
        assert!(event.is_expired(UnixMillis(1_501)));
        let never = RegisteredEvent {
            timestamp: 1_000,
            timeout: 0,
            ..Default::default()
        };
        assert!(!never.is_expired(UnixMillis(i64::MAX)));
        let report = report(&[]);
        assert_eq!(
            (
                report.correlation_id(),
                report.timestamp(),
                report.timeout()
            ),
            ("c-2", 0, 7)
        );
    }

    #[test]
    fn traffic_report_field_order_is_the_schema_order() {
        // tenantTrafficStats first, then timeFrom, timeTo, correlationId,
        // originatorReplicaId, timestamp, timeout.
        let event = TrafficReportEvent {
            time_from: 1,
            time_to: 2,
            correlation_id: "c".into(),
            originator_replica_id: "r".into(),
            timestamp: 3,
            timeout: 4,
            ..Default::default()
        };
        assert_eq!(event.to_vec(), [0, 2, 4, 2, b'c', 2, b'r', 6, 8]);
    }
}
