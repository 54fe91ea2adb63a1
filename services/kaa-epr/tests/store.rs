//! The store contract, on SQLite (always) and PostgreSQL (a fresh database on the
//! server at `KAA_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! skipped visibly, unless `KAA_REQUIRE_SERVICES=1`, when it is not reachable).

use std::sync::Arc;

use kaa_epr::core::{Applications, Epr, EprError, Event, Validation};
use kaa_epr::model::{AppVersionName, EndpointId, NewEndpoint, TokenStatus, UnixMillis};
use kaa_epr::store::{self, EndpointStore};
use serde_json::json;

fn new(id: &str, app: &str) -> NewEndpoint {
    NewEndpoint {
        endpoint_id: EndpointId::new(id).unwrap(),
        app_version: AppVersionName::new(app).unwrap(),
        metadata: json!({"id": id}).as_object().unwrap().clone(),
    }
}

async fn contract(store: Arc<dyn EndpointStore>) {
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let epr = Epr::new(store, Applications::open(), Some(tx));
    let t = UnixMillis(1_700_000_000_000);

    // A batch is all or nothing.
    let batch: Vec<NewEndpoint> = (0..500).map(|i| new(&format!("ep-{i}"), "v1")).collect();
    let provisioned = epr.register_batch(batch, true, t).await.unwrap();
    assert_eq!(provisioned.len(), 500);
    let clash = vec![new("fresh", "v1"), new("ep-7", "v1")];
    assert!(matches!(
        epr.register_batch(clash, true, t).await,
        Err(EprError::Conflict(_))
    ));
    assert!(matches!(
        epr.endpoint(&EndpointId::new("fresh").unwrap()).await,
        Err(EprError::NotFound(_))
    ));
    let registered = std::iter::from_fn(|| events.try_recv().ok()).count();
    assert_eq!(
        registered, 500,
        "one event per endpoint, none for the failed batch"
    );

    // Tokens: hashed lookup, statuses, final revocation.
    let ep = EndpointId::new("ep-42").unwrap();
    let token = provisioned[42].token.clone().unwrap();
    assert_eq!(
        epr.validate("v1", &token.token).await.unwrap(),
        Validation::Valid {
            token_id: token.token_id.clone(),
            endpoint_id: "ep-42".into()
        }
    );
    let (second, issued) = epr.issue_token(&ep, UnixMillis(t.0 + 1)).await.unwrap();
    let listed = epr.tokens(&ep).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|r| r.token_id.as_str())
            .collect::<Vec<_>>(),
        [token.token_id.as_str(), second.token_id.as_str()]
    );
    epr.set_token_status(&token.token_id, TokenStatus::Suspended, t)
        .await
        .unwrap();
    assert!(matches!(
        epr.validate("v1", &token.token).await.unwrap(),
        Validation::Suspended { .. }
    ));
    epr.set_token_status(&token.token_id, TokenStatus::Revoked, t)
        .await
        .unwrap();
    assert!(matches!(
        epr.validate("v1", &token.token).await.unwrap(),
        Validation::Revoked { .. }
    ));
    assert!(matches!(
        epr.set_token_status(&token.token_id, TokenStatus::Active, t)
            .await,
        Err(EprError::Conflict(_))
    ));
    assert!(
        matches!(events.try_recv(), Ok(Event::TokensRevoked { ref token_ids, .. }) if token_ids == &vec![token.token_id.clone()])
    );
    assert!(matches!(
        epr.set_token_status("nope", TokenStatus::Revoked, t).await,
        Err(EprError::NotFound(_))
    ));

    // App version and metadata.
    let moved = epr
        .set_app_version(&ep, &AppVersionName::new("v2").unwrap(), t)
        .await
        .unwrap();
    assert_eq!(moved.app_version.as_str(), "v2");
    assert!(matches!(
        events.try_recv(),
        Ok(Event::AppVersionUpdated { .. })
    ));
    assert!(matches!(
        epr.validate("v1", &issued.token).await.unwrap(),
        Validation::OtherApplication { .. }
    ));
    let meta = json!({"room": "hall"}).as_object().unwrap().clone();
    assert_eq!(
        epr.set_metadata(&ep, &meta, t).await.unwrap().metadata,
        meta
    );

    // Unregistering takes the live tokens with it.
    epr.unregister(&ep).await.unwrap();
    match events.try_recv() {
        Ok(Event::TokensRevoked { token_ids, .. }) => {
            assert_eq!(token_ids, vec![second.token_id.clone()])
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(events.try_recv(), Ok(Event::Unregistered { .. })));
    assert_eq!(
        epr.validate("v2", &issued.token).await.unwrap(),
        Validation::Unknown
    );
    assert!(matches!(epr.tokens(&ep).await, Err(EprError::NotFound(_))));
    // And the ID can be registered again.
    epr.register(new("ep-42", "v1"), false, t).await.unwrap();
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("epr.db").display());
    let store = store::open(&url).await.unwrap();
    contract(Arc::clone(&store)).await;
    // One register per file (while this one is open).
    let err = store::open(&url).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(store);
}

/// `endpoints`: the registered ones among many IDs, each once, in one read.
async fn many_at_once(store: Arc<dyn EndpointStore>) {
    let t = UnixMillis(1_700_000_000_000);
    let batch: Vec<NewEndpoint> = (0..300).map(|i| new(&format!("many-{i}"), "v7")).collect();
    store.register(batch, vec![], t).await.unwrap();
    let mut ids: Vec<EndpointId> = (0..400)
        .step_by(2)
        .map(|i| EndpointId::new(format!("many-{i}")).unwrap())
        .collect();
    ids.push(EndpointId::new("many-0").unwrap());
    let mut found = store.endpoints(&ids).await.unwrap();
    found.sort_by_key(|e| {
        e.endpoint_id
            .as_str()
            .trim_start_matches("many-")
            .parse::<u32>()
            .unwrap()
    });
    let expected: Vec<String> = (0..300).step_by(2).map(|i| format!("many-{i}")).collect();
    assert_eq!(
        found
            .iter()
            .map(|e| e.endpoint_id.to_string())
            .collect::<Vec<_>>(),
        expected
    );
    assert!(found.iter().all(|e| e.app_version.as_str() == "v7"));
    assert_eq!(
        found[1].metadata,
        json!({"id": "many-2"}).as_object().unwrap().clone()
    );
    assert!(store.endpoints(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_store_reads_many_endpoints_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("epr.db").display());
    many_at_once(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn unsupported_url_does_not_echo_it() {
    let err = store::open("mysql://user:secret@host/db")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn postgres_store() {
    let Some(admin) = kaa_bus::test_support::POSTGRES.require("postgres_store") else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL login");
    tokio::spawn(connection);
    let name = format!("epr_test_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let store = store::open(&format!("{base}/{name}")).await.unwrap();
    contract(Arc::clone(&store)).await;
    many_at_once(Arc::clone(&store)).await;
    drop(store);
    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}
