//! Serde mirrors of the 9/ELCE records, for Apache Avro's schema-aware serde API
//! (`GenericDatumWriter::write_ser`, `GenericDatumReader::read_deser`) and for
//! serde_json. Shared by `tests/oracle.rs` and `benches/codec.rs`.
//!
//! Struct names are the Avro record names (Apache Avro's deserializer checks them),
//! field names the Avro field names. The string type `S` is `String` for owned use
//! (Apache Avro reads from `impl Read`, so it cannot borrow) and `&str` where serde can
//! borrow (serde_json from a slice).

use std::fmt;
use std::marker::PhantomData;

use kaa_elce::{
    AppVersionUpdatedEvent, ConnectedEvent, DisconnectedEvent, Map, RegisteredEvent,
    TrafficReportEvent, TrafficStat, UnregisteredEvent,
};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Avro map as serde sees it, kept in wire order and with any duplicate keys, so
/// it compares equal to our [`Map`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderedMap<K, V>(pub(crate) Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for OrderedMap<K, V> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for PairsVisitor<K, V> {
            type Value = OrderedMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(0).min(4096));
                while let Some(pair) = access.next_entry()? {
                    pairs.push(pair);
                }
                Ok(OrderedMap(pairs))
            }
        }

        deserializer.deserialize_map(PairsVisitor(PhantomData))
    }
}

fn pairs<V, W>(map: &Map<'_, V>, value: impl Fn(&V) -> W) -> OrderedMap<String, W> {
    OrderedMap(map.iter().map(|(k, v)| (k.to_string(), value(v))).collect())
}

/// `ConnectedEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "ConnectedEvent", rename_all = "camelCase")]
pub(crate) struct ConnectedMirror<S> {
    pub(crate) correlation_id: S,
    pub(crate) timestamp: i64,
    pub(crate) timeout: i64,
    pub(crate) endpoints: OrderedMap<S, S>,
    pub(crate) originator_replica_id: S,
}

/// `DisconnectedEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "DisconnectedEvent", rename_all = "camelCase")]
pub(crate) struct DisconnectedMirror<S> {
    pub(crate) correlation_id: S,
    pub(crate) timestamp: i64,
    pub(crate) timeout: i64,
    pub(crate) endpoints: OrderedMap<S, S>,
    pub(crate) originator_replica_id: S,
}

/// `RegisteredEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "RegisteredEvent", rename_all = "camelCase")]
pub(crate) struct RegisteredMirror<S> {
    pub(crate) correlation_id: S,
    pub(crate) timestamp: i64,
    pub(crate) timeout: i64,
    pub(crate) app_version_name: S,
    pub(crate) endpoint_id: S,
    pub(crate) originator_replica_id: S,
}

/// `AppVersionUpdatedEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "AppVersionUpdatedEvent", rename_all = "camelCase")]
pub(crate) struct AppVersionUpdatedMirror<S> {
    pub(crate) correlation_id: S,
    pub(crate) timestamp: i64,
    pub(crate) timeout: i64,
    pub(crate) app_version_name: S,
    pub(crate) previous_app_version_name: S,
    pub(crate) endpoint_id: S,
    pub(crate) originator_replica_id: S,
}

/// `UnregisteredEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "UnregisteredEvent", rename_all = "camelCase")]
pub(crate) struct UnregisteredMirror<S> {
    pub(crate) correlation_id: S,
    pub(crate) timestamp: i64,
    pub(crate) timeout: i64,
    pub(crate) app_version_name: S,
    pub(crate) endpoint_id: S,
    pub(crate) originator_replica_id: S,
}

/// `trafficStat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "trafficStat", rename_all = "camelCase")]
pub(crate) struct TrafficStatMirror {
    pub(crate) total_received_payload: i64,
    pub(crate) total_sent_payload: i64,
    pub(crate) total_received_message_count: i64,
    pub(crate) total_sent_message_count: i64,
}

/// Tenant ID → application name → endpoint ID → stats.
pub(crate) type TenantStats<S> = OrderedMap<S, OrderedMap<S, OrderedMap<S, TrafficStatMirror>>>;

/// `TrafficReportEvent`, in its own field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "TrafficReportEvent", rename_all = "camelCase")]
pub(crate) struct TrafficReportMirror<S> {
    pub(crate) tenant_traffic_stats: TenantStats<S>,
    pub(crate) time_from: i64,
    pub(crate) time_to: i64,
    pub(crate) correlation_id: S,
    pub(crate) originator_replica_id: S,
    pub(crate) timestamp: i64,
    pub(crate) timeout: i64,
}

impl From<&ConnectedEvent<'_>> for ConnectedMirror<String> {
    fn from(e: &ConnectedEvent<'_>) -> Self {
        ConnectedMirror {
            correlation_id: e.correlation_id.to_string(),
            timestamp: e.timestamp,
            timeout: e.timeout,
            endpoints: pairs(&e.endpoints, |a| a.to_string()),
            originator_replica_id: e.originator_replica_id.to_string(),
        }
    }
}

impl From<&DisconnectedEvent<'_>> for DisconnectedMirror<String> {
    fn from(e: &DisconnectedEvent<'_>) -> Self {
        DisconnectedMirror {
            correlation_id: e.correlation_id.to_string(),
            timestamp: e.timestamp,
            timeout: e.timeout,
            endpoints: pairs(&e.endpoints, |a| a.to_string()),
            originator_replica_id: e.originator_replica_id.to_string(),
        }
    }
}

impl From<&RegisteredEvent<'_>> for RegisteredMirror<String> {
    fn from(e: &RegisteredEvent<'_>) -> Self {
        RegisteredMirror {
            correlation_id: e.correlation_id.to_string(),
            timestamp: e.timestamp,
            timeout: e.timeout,
            app_version_name: e.app_version_name.to_string(),
            endpoint_id: e.endpoint_id.to_string(),
            originator_replica_id: e.originator_replica_id.to_string(),
        }
    }
}

impl From<&AppVersionUpdatedEvent<'_>> for AppVersionUpdatedMirror<String> {
    fn from(e: &AppVersionUpdatedEvent<'_>) -> Self {
        AppVersionUpdatedMirror {
            correlation_id: e.correlation_id.to_string(),
            timestamp: e.timestamp,
            timeout: e.timeout,
            app_version_name: e.app_version_name.to_string(),
            previous_app_version_name: e.previous_app_version_name.to_string(),
            endpoint_id: e.endpoint_id.to_string(),
            originator_replica_id: e.originator_replica_id.to_string(),
        }
    }
}

impl From<&UnregisteredEvent<'_>> for UnregisteredMirror<String> {
    fn from(e: &UnregisteredEvent<'_>) -> Self {
        UnregisteredMirror {
            correlation_id: e.correlation_id.to_string(),
            timestamp: e.timestamp,
            timeout: e.timeout,
            app_version_name: e.app_version_name.to_string(),
            endpoint_id: e.endpoint_id.to_string(),
            originator_replica_id: e.originator_replica_id.to_string(),
        }
    }
}

impl From<&TrafficStat> for TrafficStatMirror {
    fn from(s: &TrafficStat) -> Self {
        TrafficStatMirror {
            total_received_payload: s.total_received_payload,
            total_sent_payload: s.total_sent_payload,
            total_received_message_count: s.total_received_message_count,
            total_sent_message_count: s.total_sent_message_count,
        }
    }
}

impl From<&TrafficReportEvent<'_>> for TrafficReportMirror<String> {
    fn from(e: &TrafficReportEvent<'_>) -> Self {
        TrafficReportMirror {
            tenant_traffic_stats: pairs(&e.tenant_traffic_stats, |apps| {
                pairs(apps, |endpoints| {
                    pairs(endpoints, |s| TrafficStatMirror::from(s))
                })
            }),
            time_from: e.time_from,
            time_to: e.time_to,
            correlation_id: e.correlation_id.to_string(),
            originator_replica_id: e.originator_replica_id.to_string(),
            timestamp: e.timestamp,
            timeout: e.timeout,
        }
    }
}
