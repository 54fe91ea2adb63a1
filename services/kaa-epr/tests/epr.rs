//! The register end to end over its public API: the SQLite store, the REST API with
//! bearer tokens, 16/ECAP validation and events over the in-memory bus and NATS
//! (skipped visibly, unless `KAA_REQUIRE_SERVICES=1`, when no server is reachable),
//! and what reaches the logs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::{Bus, MemoryBus, NatsBus, NatsConfig, Subscription};
use kaa_ecap::{
    EndpointTokenRevokedEvent, EndpointTokenStatusTransitionRequest,
    EndpointTokenStatusTransitionResponse, EndpointTokenValidationRequest,
    EndpointTokenValidationResponse,
};
use kaa_epr::model::token_hash;
use kaa_ism::avro::{Decode, Encode};
use serde_json::{Value, json};

mod common;

use common::{Harness, RO, RW, start};

impl Harness {
    async fn validate(&self, app: &str, token: &str) -> EndpointTokenValidationResponse<'static> {
        let request = EndpointTokenValidationRequest {
            correlation_id: uuid::Uuid::new_v4().to_string().into(),
            timestamp: kaa_service::now().0,
            timeout: 5_000,
            app_name: app.to_owned().into(),
            token: token.to_owned().into(),
        };
        let subject = kaa_ecap::Exchange::EndpointToken
            .request_subject(&self.instance)
            .unwrap()
            .to_string();
        let reply = self
            .bus
            .request(
                &subject,
                Bytes::from(request.to_vec()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let response = EndpointTokenValidationResponse::decode(&reply.payload)
            .unwrap()
            .into_owned();
        assert_eq!(response.correlation_id, request.correlation_id);
        response
    }

    /// A 16/ECAP status transition request; the answer's status and reason.
    async fn transition(&self, app: &str, token: &str, target: &str) -> (i32, Option<String>) {
        let request = EndpointTokenStatusTransitionRequest {
            correlation_id: uuid::Uuid::new_v4().to_string().into(),
            timestamp: kaa_service::now().0,
            timeout: 5_000,
            app_name: app.to_owned().into(),
            token: token.to_owned().into(),
            target_status: target.to_owned().into(),
        };
        let subject = kaa_ecap::Exchange::EndpointTokenStatusTransition
            .request_subject(&self.instance)
            .unwrap()
            .to_string();
        let reply = self
            .bus
            .request(
                &subject,
                Bytes::from(request.to_vec()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let response = EndpointTokenStatusTransitionResponse::decode(&reply.payload).unwrap();
        assert_eq!(response.correlation_id, request.correlation_id);
        (
            response.status_code,
            response.reason_phrase.map(|r| r.into_owned()),
        )
    }

    async fn subscribe(&self, subject: &str) -> Subscription {
        let sub = self.bus.subscribe(subject, None).await.unwrap();
        self.bus.flush().await.unwrap();
        sub
    }
}

async fn next(sub: &mut Subscription) -> kaa_bus::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an event within 5 s")
        .expect("subscription open")
}

/// The whole provisioning story on one bus.
async fn provisioning_story(h: Harness) {
    let lifecycle = format!("kaa.v1.events.{}.endpoint.lifecycle.*", h.instance);
    let mut lifecycle = h.subscribe(&lifecycle).await;
    let revoked_subject = kaa_ecap::subject::endpoint_token_revoked_subject(&h.instance)
        .unwrap()
        .to_string();
    let mut revoked = h.subscribe(&revoked_subject).await;

    // Register with metadata and a token.
    let (status, body) = h
        .post(
            "/endpoints",
            json!({"endpointId": "kettle-1", "appVersionName": "kettleV1", "metadata": {"room": "kitchen"}, "issueToken": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"]["token"].as_str().unwrap().to_owned();
    let token_id = body["token"]["tokenId"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    let event = next(&mut lifecycle).await;
    assert!(event.subject.as_str().ends_with(".registered"));
    let registered = kaa_elce::RegisteredEvent::decode(&event.payload).unwrap();
    assert_eq!(
        (&*registered.endpoint_id, &*registered.app_version_name),
        ("kettle-1", "kettleV1")
    );

    // Read back: metadata, tokens without the token or its hash.
    let (status, body) = h
        .call(reqwest::Method::GET, "/endpoints/kettle-1", Some(RO), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["metadata"], json!({"room": "kitchen"}));
    let (_, tokens) = h
        .call(
            reqwest::Method::GET,
            "/endpoints/kettle-1/tokens",
            Some(RO),
            None,
        )
        .await;
    let listed = tokens.to_string();
    assert!(
        listed.contains(&token_id) && listed.contains("\"active\""),
        "{listed}"
    );
    assert!(
        !listed.contains(&token) && !listed.contains(&token_hash(&token)),
        "{listed}"
    );

    // 16/ECAP: valid; other application; unknown.
    let ok = h.validate("kettleV1", &token).await;
    assert_eq!(ok.status_code, 200);
    assert_eq!(ok.endpoint_id.as_deref(), Some("kettle-1"));
    assert_eq!(ok.token_id.as_deref(), Some(token_id.as_str()));
    let other = h.validate("lampV1", &token).await;
    assert_eq!((other.status_code, other.endpoint_id), (403, None));
    let unknown = h.validate("kettleV1", &"0".repeat(64)).await;
    assert_eq!(
        (unknown.status_code, unknown.token_id, unknown.endpoint_id),
        (404, None, None)
    );

    // Suspend, reactivate, revoke (final).
    let (status, body) = h
        .post(&format!("/tokens/{token_id}/suspend"), json!({}))
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("suspended")));
    assert_eq!(h.validate("kettleV1", &token).await.status_code, 403);
    let (status, _) = h
        .post(&format!("/tokens/{token_id}/reactivate"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(h.validate("kettleV1", &token).await.status_code, 200);
    let (status, _) = h
        .post(&format!("/tokens/{token_id}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200);
    let event = EndpointTokenRevokedEvent::decode(&next(&mut revoked).await.payload)
        .unwrap()
        .into_owned();
    assert_eq!(&*event.endpoint_id, "kettle-1");
    assert_eq!(&*event.app_name, "kettleV1");
    assert_eq!(event.token_ids.len(), 1);
    assert_eq!(&*event.token_ids[0], token_id.as_str());
    assert_eq!(h.validate("kettleV1", &token).await.status_code, 401);
    let (status, body) = h
        .post(&format!("/tokens/{token_id}/reactivate"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");

    // App version change: event, and the token follows the endpoint's app version.
    let (status, body) = h.post("/endpoints/kettle-1/tokens", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let token2 = body["token"].as_str().unwrap().to_owned();
    let (status, _) = h
        .call(
            reqwest::Method::PUT,
            "/endpoints/kettle-1/app-version",
            Some(RW),
            Some(json!({"appVersionName": "kettleV2"})),
        )
        .await;
    assert_eq!(status, 200);
    let event = next(&mut lifecycle).await;
    let moved = kaa_elce::AppVersionUpdatedEvent::decode(&event.payload).unwrap();
    assert_eq!(
        (&*moved.app_version_name, &*moved.previous_app_version_name),
        ("kettleV2", "kettleV1")
    );
    assert_eq!(h.validate("kettleV2", &token2).await.status_code, 200);
    assert_eq!(h.validate("kettleV1", &token2).await.status_code, 403);

    // Unregister: its live tokens are announced revoked, then `unregistered`.
    let (status, _) = h
        .call(
            reqwest::Method::DELETE,
            "/endpoints/kettle-1",
            Some(RW),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let event = EndpointTokenRevokedEvent::decode(&next(&mut revoked).await.payload)
        .unwrap()
        .into_owned();
    assert_eq!(event.token_ids.len(), 1);
    let event = next(&mut lifecycle).await;
    assert!(event.subject.as_str().ends_with(".unregistered"));
    assert_eq!(h.validate("kettleV2", &token2).await.status_code, 404);
    let (status, _) = h
        .call(reqwest::Method::GET, "/endpoints/kettle-1", Some(RO), None)
        .await;
    assert_eq!(status, 404);
}

/// 16/ECAP token status transitions: a consumer suspends, reactivates and
/// revokes a token by the token itself; the register's refusals have their
/// statuses and reasons; a revocation is announced.
async fn status_transitions(h: Harness) {
    let revoked_subject = kaa_ecap::subject::endpoint_token_revoked_subject(&h.instance)
        .unwrap()
        .to_string();
    let mut revoked = h.subscribe(&revoked_subject).await;
    let (status, body) = h
        .post(
            "/endpoints",
            json!({"endpointId": "lamp-1", "appVersionName": "lampV1", "issueToken": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"]["token"].as_str().unwrap().to_owned();
    let token_id = body["token"]["tokenId"].as_str().unwrap().to_owned();

    assert_eq!(h.transition("lampV1", &token, "suspended").await.0, 200);
    assert_eq!(h.validate("lampV1", &token).await.status_code, 403);
    assert_eq!(
        h.transition("lampV1", &token, "SUSPENDED").await.0,
        200,
        "no change, any case"
    );
    assert_eq!(h.transition("lampV1", &token, "active").await.0, 200);
    assert_eq!(h.validate("lampV1", &token).await.status_code, 200);

    let (status, reason) = h.transition("lampV1", &token, "lost").await;
    assert_eq!(status, 400);
    assert!(reason.unwrap().contains("active, suspended, revoked"));
    let (status, reason) = h.transition("lampV1", "no-such-token", "revoked").await;
    assert_eq!(
        (status, reason.as_deref()),
        (404, Some("unknown endpoint token"))
    );
    let (status, reason) = h.transition("kettle", &token, "revoked").await;
    assert_eq!(status, 403);
    assert!(reason.unwrap().contains("another application"));
    assert_eq!(
        h.validate("lampV1", &token).await.status_code,
        200,
        "unchanged"
    );

    assert_eq!(h.transition("lampV1", &token, "revoked").await.0, 200);
    let event = EndpointTokenRevokedEvent::decode(&next(&mut revoked).await.payload)
        .unwrap()
        .into_owned();
    assert_eq!((&*event.endpoint_id, event.token_ids.len()), ("lamp-1", 1));
    assert_eq!(&*event.token_ids[0], token_id.as_str());
    assert_eq!(h.validate("lampV1", &token).await.status_code, 401);
    let (status, reason) = h.transition("lampV1", &token, "active").await;
    assert_eq!(status, 409);
    assert!(reason.unwrap().contains("final"));
}

#[tokio::test]
async fn status_transitions_over_the_memory_bus() {
    status_transitions(start(Arc::new(MemoryBus::new()), "epr", "").await).await;
}

#[tokio::test]
async fn status_transitions_over_nats() {
    let Some(url) = kaa_bus::test_support::NATS.require("status_transitions_over_nats") else {
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&NatsConfig::new([url])).await.unwrap());
    let instance = format!("epr{}", uuid::Uuid::new_v4().simple());
    status_transitions(start(bus, &instance, "").await).await;
}

#[tokio::test]
async fn provisioning_over_the_memory_bus() {
    let h = start(Arc::new(MemoryBus::new()), "epr", "").await;
    provisioning_story(h).await;
}

#[tokio::test]
async fn provisioning_over_nats() {
    let Some(url) = kaa_bus::test_support::NATS.require("provisioning_over_nats") else {
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&NatsConfig::new([url])).await.unwrap());
    let instance = format!("epr{}", uuid::Uuid::new_v4().simple());
    let h = start(bus, &instance, "").await;
    provisioning_story(h).await;
}

#[tokio::test]
async fn rest_authentication() {
    let h = start(Arc::new(MemoryBus::new()), "epr", "").await;
    let register = json!({"endpointId": "a", "appVersionName": "v1"});
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            "/endpoints",
            None,
            Some(register.clone()),
        )
        .await;
    assert_eq!(status, 401);
    assert!(body["message"].is_string());
    let (status, _) = h
        .call(
            reqwest::Method::POST,
            "/endpoints",
            Some("wrong"),
            Some(register.clone()),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = h
        .call(reqwest::Method::GET, "/endpoints/a", None, None)
        .await;
    assert_eq!(status, 401);
    for (method, path) in [
        (reqwest::Method::POST, "/endpoints"),
        (reqwest::Method::POST, "/endpoints/batch"),
        (reqwest::Method::DELETE, "/endpoints/a"),
        (reqwest::Method::PUT, "/endpoints/a/app-version"),
        (reqwest::Method::PUT, "/endpoints/a/metadata"),
        (reqwest::Method::POST, "/endpoints/a/tokens"),
        (reqwest::Method::POST, "/tokens/t/revoke"),
    ] {
        let (status, body) = h
            .call(method.clone(), path, Some(RO), Some(json!({})))
            .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    let (status, _) = h.post("/endpoints", register).await;
    assert_eq!(status, 201);
    let (status, _) = h
        .call(reqwest::Method::GET, "/endpoints/a", Some(RO), None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rest_validation_and_conflicts() {
    let apps = "kaa:\n  applications:\n    kettle:\n      versions:\n        kettleV1: {}\n        kettleV2: {}\n";
    let h = start(Arc::new(MemoryBus::new()), "epr", apps).await;
    let cases = [
        json!({"endpointId": "a.b", "appVersionName": "kettleV1"}),
        json!({"endpointId": "a", "appVersionName": "kettle/V1"}),
        json!({"endpointId": "a", "appVersionName": "lampV1"}),
        json!({"endpointId": "a", "appVersionName": "kettleV1", "metadata": [1]}),
        json!({"endpointId": "a", "appVersionName": "kettleV1", "unknown": 1}),
    ];
    for body in cases {
        let (status, answer) = h.post("/endpoints", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, body) = h
        .post(
            "/endpoints",
            json!({"endpointId": "a", "appVersionName": "kettleV1", "issueToken": true}),
        )
        .await;
    assert_eq!(status, 201);
    let token = body["token"]["token"].as_str().unwrap().to_owned();
    // kaa.applications: the application is `kettle` for both versions.
    assert_eq!(h.validate("kettle", &token).await.status_code, 200);
    assert_eq!(h.validate("kettleV1", &token).await.status_code, 403);
    let (status, _) = h
        .post(
            "/endpoints",
            json!({"endpointId": "a", "appVersionName": "kettleV1"}),
        )
        .await;
    assert_eq!(status, 409);
    // A batch with one known endpoint stores nothing.
    let (status, _) = h
        .post(
            "/endpoints/batch",
            json!({"endpoints": [{"endpointId": "b", "appVersionName": "kettleV1"}, {"endpointId": "a", "appVersionName": "kettleV1"}]}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = h
        .call(reqwest::Method::GET, "/endpoints/b", Some(RW), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = h.post("/tokens/nope/revoke", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = h.post("/tokens/nope/destroy", json!({})).await;
    assert_eq!(status, 404);
    let (status, body) = h
        .call(reqwest::Method::GET, "/nowhere", Some(RW), None)
        .await;
    assert_eq!(status, 404);
    assert!(body["message"].is_string());
}

#[tokio::test]
async fn batch_of_a_thousand_with_tokens() {
    let h = start(Arc::new(MemoryBus::new()), "epr", "").await;
    let endpoints: Vec<Value> = (0..1000)
        .map(|i| json!({"endpointId": format!("dev-{i:04}"), "appVersionName": "kettleV1", "metadata": {"n": i}}))
        .collect();
    let (status, body) = h
        .post(
            "/endpoints/batch",
            json!({"endpoints": endpoints, "issueTokens": true}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["registered"], 1000);
    let list = body["endpoints"].as_array().unwrap();
    let tokens: std::collections::HashSet<&str> =
        list.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert_eq!(tokens.len(), 1000);
    let last = &list[999];
    let answer = h
        .validate("kettleV1", last["token"].as_str().unwrap())
        .await;
    assert_eq!(answer.endpoint_id.as_deref(), Some("dev-0999"));
    let (status, body) = h
        .call(reqwest::Method::GET, "/endpoints/dev-0500", Some(RO), None)
        .await;
    assert_eq!((status, &body["metadata"]), (200, &json!({"n": 500})));
}

/// No endpoint token, token hash or API token in any log line, at every level.
#[test]
fn no_token_or_hash_in_logs() {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokens = runtime.block_on(async {
        let h = start(Arc::new(MemoryBus::new()), "epr", "").await;
        let (_, body) = h
            .post(
                "/endpoints",
                json!({"endpointId": "x", "appVersionName": "v1", "issueToken": true}),
            )
            .await;
        let t1 = body["token"]["token"].as_str().unwrap().to_owned();
        let id1 = body["token"]["tokenId"].as_str().unwrap().to_owned();
        let (_, body) = h
            .post(
                "/endpoints/batch",
                json!({"endpoints": [{"endpointId": "y", "appVersionName": "v1"}], "issueTokens": true}),
            )
            .await;
        let t2 = body["endpoints"][0]["token"].as_str().unwrap().to_owned();
        let (_, body) = h.post("/endpoints/x/tokens", json!({})).await;
        let t3 = body["token"].as_str().unwrap().to_owned();
        for (app, t) in [("v1", &t1), ("v2", &t1), ("v1", &t2), ("v1", &t3)] {
            h.validate(app, t).await;
        }
        h.post(&format!("/tokens/{id1}/suspend"), json!({})).await;
        h.validate("v1", &t1).await;
        h.post(&format!("/tokens/{id1}/revoke"), json!({})).await;
        h.validate("v1", &t1).await;
        h.call(reqwest::Method::DELETE, "/endpoints/y", Some(RW), None)
            .await;
        h.call(reqwest::Method::GET, "/endpoints/x", Some("bad-api-token"), None)
            .await;
        vec![t1, t2, t3]
    });
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("endpoint token issued")
            && text.contains("16/ECAP token validation answered"),
        "logs were captured: {text}"
    );
    for token in tokens {
        assert!(!text.contains(&token), "a token in the logs");
        assert!(
            !text.contains(&token_hash(&token)),
            "a token hash in the logs"
        );
    }
    for secret in [RW, RO, "bad-api-token"] {
        assert!(!text.contains(secret), "an API token in the logs");
    }
}
