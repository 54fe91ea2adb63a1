//! The register's endpoint metadata lookup over the bus (a kaa-rs extension on
//! 16/ECAP subjects, `kaa_ecap::metadata`), asked with
//! `kaa_service::endpoint_metadata::MetadataClient`, on the in-memory bus and NATS
//! (skipped visibly, unless `KAA_REQUIRE_SERVICES=1`, when no server is reachable).
//! A test binary of its own: `tests/epr.rs` captures the register's logs with a
//! thread-local subscriber, which the extra concurrent tests made miss lines.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kaa_bus::{Bus, MemoryBus, NatsBus, NatsConfig};
use kaa_ism::avro::{Decode, Encode};
use serde_json::{Value, json};

mod common;

use common::{Harness, RW, start};

// ------------------------------------------------------------------------------
// The endpoint metadata lookup (kaa-rs extension on 16/ECAP subjects), answered by
// the register and asked with kaa_service::endpoint_metadata::MetadataClient.

impl Harness {
    /// A raw metadata request: the decoded answer.
    async fn metadata_request(
        &self,
        datum: Vec<u8>,
    ) -> kaa_ecap::metadata::EndpointMetadataResponse<'static> {
        let subject = kaa_ecap::metadata::metadata_request_subject(&self.instance)
            .unwrap()
            .to_string();
        let reply = self
            .bus
            .request(&subject, Bytes::from(datum), Duration::from_secs(5))
            .await
            .unwrap();
        kaa_ecap::metadata::EndpointMetadataResponse::decode(&reply.payload)
            .unwrap()
            .into_owned()
    }

    fn metadata_client(&self) -> kaa_service::endpoint_metadata::MetadataClient {
        kaa_service::endpoint_metadata::MetadataClient::new(Arc::clone(&self.bus), &self.instance)
            .unwrap()
    }
}

/// Registered, unknown, invalid and duplicate IDs; a change of metadata and app
/// version seen at once; refusals of whole requests.
async fn metadata_lookups(h: Harness) {
    use kaa_ecap::metadata::{EndpointMetadataRequest, MAX_ENDPOINT_IDS};
    use kaa_service::endpoint_metadata::{Lookup, MetadataError};

    let (status, _) = h
        .post(
            "/endpoints/batch",
            json!({"endpoints": [
                {"endpointId": "kettle-1", "appVersionName": "kettleV1", "metadata": {"room": "kitchen", "floor": 2}},
                {"endpointId": "lamp-1", "appVersionName": "lampV1"},
            ]}),
        )
        .await;
    assert_eq!(status, 201);
    let client = h.metadata_client();
    let got = client
        .lookup(&["kettle-1", "nobody", "lamp-1", "a.b", "kettle-1"])
        .await
        .unwrap();
    let Lookup::Found(kettle) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(kettle.endpoint_id, "kettle-1");
    assert_eq!(kettle.app_version_name, "kettleV1");
    assert_eq!(
        Value::Object(kettle.metadata.clone()),
        json!({"room": "kitchen", "floor": 2})
    );
    assert_eq!(got[1], Lookup::NotFound);
    assert!(matches!(&got[2], Lookup::Found(lamp) if lamp.metadata.is_empty()));
    assert!(
        matches!(&got[3], Lookup::Refused { status_code: 400, reason } if reason.contains("'.'") || reason.contains('.')),
        "{:?}",
        got[3]
    );
    assert_eq!(got[4], got[0]);

    // Changes through REST are what the next lookup reads.
    let (status, _) = h
        .call(
            reqwest::Method::PUT,
            "/endpoints/kettle-1/metadata",
            Some(RW),
            Some(json!({"room": "hall"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = h
        .call(
            reqwest::Method::PUT,
            "/endpoints/kettle-1/app-version",
            Some(RW),
            Some(json!({"appVersionName": "kettleV2"})),
        )
        .await;
    assert_eq!(status, 200);
    let kettle = client.endpoint("kettle-1").await.unwrap().unwrap();
    assert_eq!(kettle.app_version_name, "kettleV2");
    assert_eq!(Value::Object(kettle.metadata), json!({"room": "hall"}));
    assert_eq!(client.endpoint("nobody").await.unwrap(), None);
    // The raw answer: statuses and reasons on the wire.
    let request = EndpointMetadataRequest {
        correlation_id: "c-1".into(),
        timestamp: kaa_service::now().0,
        timeout: 5_000,
        endpoint_ids: vec!["nobody".into(), "lamp-1".into()],
    };
    let answer = h.metadata_request(request.to_vec()).await;
    assert_eq!(answer.correlation_id, "c-1");
    assert_eq!(answer.status_code, 200);
    assert_eq!(
        answer
            .endpoints
            .iter()
            .map(|e| (e.endpoint_id.as_ref(), e.status_code))
            .collect::<Vec<_>>(),
        [("nobody", 404), ("lamp-1", 200)]
    );
    assert_eq!(
        answer.endpoints[0].reason_phrase.as_deref(),
        Some("not registered")
    );
    assert_eq!(answer.endpoints[1].metadata.as_deref(), Some("{}"));

    // Too many IDs in one request: 400, nothing listed (the client splits).
    let too_many = EndpointMetadataRequest {
        correlation_id: "c-2".into(),
        endpoint_ids: (0..=MAX_ENDPOINT_IDS)
            .map(|i| format!("ep-{i}").into())
            .collect(),
        ..request.clone()
    };
    let answer = h.metadata_request(too_many.to_vec()).await;
    assert_eq!(
        (answer.correlation_id.as_ref(), answer.status_code),
        ("c-2", 400)
    );
    assert!(answer.endpoints.is_empty());
    assert!(answer.reason_phrase.unwrap().contains("at most 1000"));
    let ids: Vec<String> = (0..=MAX_ENDPOINT_IDS).map(|i| format!("ep-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = client.lookup(&ids).await.unwrap();
    assert_eq!(got.len(), MAX_ENDPOINT_IDS + 1);
    assert!(got.iter().all(|l| *l == Lookup::NotFound));
    // A datum that does not decode but names its correlation ID: 400 with the error.
    let mut cut = request.to_vec();
    cut.truncate(cut.len() - 3);
    let answer = h.metadata_request(cut).await;
    assert_eq!(
        (answer.correlation_id.as_ref(), answer.status_code),
        ("c-1", 400)
    );
    assert!(
        answer
            .reason_phrase
            .unwrap()
            .contains("EndpointMetadataRequest")
    );
    // The client's view of a refusal.
    assert!(matches!(
        h.metadata_client()
            .with_timeout(Duration::from_secs(5))
            .endpoint("a.b")
            .await,
        Err(MetadataError::Refused {
            status_code: 400,
            ..
        })
    ));
}

#[tokio::test]
async fn metadata_lookups_over_the_memory_bus() {
    metadata_lookups(start(Arc::new(MemoryBus::new()), "epr", "").await).await;
}

#[tokio::test]
async fn metadata_lookups_over_nats() {
    let Some(url) = kaa_bus::test_support::NATS.require("metadata_lookups_over_nats") else {
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&NatsConfig::new([url])).await.unwrap());
    let instance = format!("epr{}", uuid::Uuid::new_v4().simple());
    metadata_lookups(start(bus, &instance, "").await).await;
}

/// On a bus that carries 16 KiB per message, 40 endpoints with 1 KiB of metadata
/// each do not fit one answer: the register answers the first ones with 206 and
/// the client asks again until it has all of them; an endpoint whose metadata alone
/// is larger than an answer is listed with 413 and its app version.
#[tokio::test]
async fn metadata_answers_fit_the_bus() {
    use kaa_service::endpoint_metadata::Lookup;
    let bus =
        MemoryBus::with_config(kaa_bus::MemoryBusConfig::default().with_max_payload(16 * 1024));
    let h = start(Arc::new(bus), "epr", "").await;
    let blob = "x".repeat(1024);
    let mut endpoints: Vec<Value> = (0..40)
        .map(|i| json!({"endpointId": format!("ep-{i}"), "appVersionName": "v1", "metadata": {"blob": blob, "i": i}}))
        .collect();
    endpoints.push(json!({"endpointId": "huge", "appVersionName": "v9", "metadata": {"blob": "y".repeat(20_000)}}));
    let (status, _) = h
        .post("/endpoints/batch", json!({"endpoints": endpoints}))
        .await;
    assert_eq!(status, 201);

    let request = kaa_ecap::metadata::EndpointMetadataRequest {
        correlation_id: "c-1".into(),
        timestamp: kaa_service::now().0,
        timeout: 5_000,
        endpoint_ids: (0..40).map(|i| format!("ep-{i}").into()).collect(),
    };
    let datum = request.to_vec();
    let answer = h.metadata_request(datum.clone()).await;
    assert_eq!(answer.status_code, kaa_ecap::metadata::PARTIAL);
    let listed = answer.endpoints.len();
    assert!((1..40).contains(&listed), "{listed}");
    assert!(answer.to_vec().len() <= 8 * 1024);
    assert!(
        answer
            .reason_phrase
            .unwrap()
            .contains(&format!("first {listed} of 40"))
    );

    let mut ids: Vec<String> = (0..40).map(|i| format!("ep-{i}")).collect();
    ids.insert(20, "huge".to_owned());
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = h.metadata_client().lookup(&ids).await.unwrap();
    assert_eq!(got.len(), 41);
    for (lookup, id) in got.iter().zip(&ids) {
        match lookup {
            Lookup::Found(e) => {
                assert_eq!(e.endpoint_id, *id);
                assert_eq!(e.metadata["blob"].as_str().map(str::len), Some(1024));
            }
            Lookup::Refused {
                status_code: 413,
                reason,
            } => {
                assert_eq!(*id, "huge");
                assert!(reason.contains("larger than an answer"), "{reason}");
            }
            other => panic!("{id}: {other:?}"),
        }
    }
}
