//! The CMX service composed in one process on a `MemoryBus`, as the all-in-one
//! binary runs it: first with the raw-Avro fakes, then with the real ECR service on
//! the same bus. No server needed.

use std::sync::Arc;

use kaa_bus::{Bus, MemoryBus};
use kaa_examples::ecr;
use kaa_examples::ecr::model::{AppVersionName, ConfigName, EndpointId, Scope};
use kaa_examples::ecr::store::Precondition;
use kaa_examples::service::parse_yaml;
use kaa_testkit::cmx::{APP_V1, FakeKpc, Names, RunningCmx, Stack};
use kaa_testkit::log_capture::Captured;
use serde_json::json;

#[tokio::test]
async fn request_push_and_applied_on_the_memory_bus() {
    let names = Names::unique("cmx::memory::request_push_applied");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let mut s = Stack::start(names, None, Arc::clone(&bus), bus, "").await;
    let ep = s.names.endpoint(1);
    let answer = s
        .fetch(
            &ep,
            APP_V1,
            "/config/json",
            1,
            br#"{"observe":true}"#,
            ("c1", r#"{"a":1}"#),
        )
        .await;
    assert_eq!(answer.json(), json!({"configId": "c1", "config": {"a": 1}}));

    s.provider
        .config_updated(&ep, APP_V1, "c2", r#"{"a":2}"#, None)
        .await;
    let received = s.provider.next_request().await;
    s.provider
        .answer_config(&received, "c2", r#"{"a":2}"#)
        .await;
    let push = s.kpc.next().await;
    assert_eq!(push.message.request_id, None);
    assert_eq!(push.json()["configId"], "c2");

    s.kpc
        .send(
            &ep,
            APP_V1,
            "/applied/json",
            Some(2),
            br#"{"configId":"c2"}"#,
        )
        .await;
    assert_eq!(s.kpc.next().await.message.status_code, 200);
    assert_eq!(s.kpc.next_applied().await.config_id, "c2");
    let report = s.cmx.stop().await;
    assert_eq!(report.abandoned, 0);
}

#[tokio::test]
async fn cmx_and_the_real_ecr_share_one_memory_bus() {
    let names = Names::unique("cmx::memory::with_ecr");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());

    // ECR from its YAML configuration: embedded store, 6/CDTP provider and events
    // on the shared bus (its HTTP API is bound but not served here).
    let dir = tempfile::tempdir().unwrap();
    let ecr_yaml = format!(
        "service:\n  instance:\n    name: {provider}\n\
         ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://{db}\n\
         \x20 cmx:\n    service-instance-name: {cmx}\n\
         auth:\n  enabled: false\n",
        provider = names.provider,
        db = dir.path().join("ecr.db").display(),
        cmx = names.cmx,
    );
    let ecr_config: ecr::config::EcrConfig = parse_yaml(&ecr_yaml, "ecr test config").unwrap();
    let ecr_server = ecr::EcrServer::bind(&ecr_config, Arc::clone(&bus))
        .await
        .unwrap();
    let core = Arc::clone(ecr_server.ecr());

    let mut kpc = FakeKpc::start(Arc::clone(&bus), &names).await;
    let cmx = RunningCmx::start(&names.config_yaml(None, ""), Arc::clone(&bus)).await;
    cmx.wait_state("running").await;

    let app = AppVersionName::new(APP_V1).unwrap();
    let default = ConfigName::default_name();
    let put = core
        .put(
            &Scope::Default {
                app_version: app.clone(),
            },
            &default,
            &json!({"sampling": 200}),
            &Precondition::None,
            kaa_examples::cmx::now(),
        )
        .await
        .unwrap();
    let default_id = put.config.config_id.clone();

    // A device asks: the answer comes from ECR's store, through CMX.
    let ep = names.endpoint(1);
    kpc.send(&ep, APP_V1, "/config/json", Some(1), br#"{"observe":true}"#)
        .await;
    let answer = kpc.next().await;
    assert_eq!(answer.message.status_code, 200);
    assert_eq!(
        answer.json(),
        json!({"configId": default_id, "config": {"sampling": 200}})
    );

    // An endpoint-specific configuration in ECR is pushed to the observing device.
    let put = core
        .put(
            &Scope::Endpoint {
                endpoint_id: EndpointId::new(ep.as_str()).unwrap(),
                app_version: app,
            },
            &default,
            &json!({"sampling": 50}),
            &Precondition::None,
            kaa_examples::cmx::now(),
        )
        .await
        .unwrap();
    let push = kpc.next().await;
    assert_eq!(push.message.request_id, None);
    assert_eq!(
        push.json(),
        json!({"configId": put.config.config_id, "config": {"sampling": 50}})
    );

    // Asking again with the current ID: ECR says unchanged, the device gets `{}`.
    let request = format!(r#"{{"configId":"{}"}}"#, put.config.config_id);
    kpc.send(&ep, APP_V1, "/config/json", Some(2), request.as_bytes())
        .await;
    assert_eq!(kpc.next().await.json(), json!({}));

    cmx.stop().await;
    drop(ecr_server);
}

#[tokio::test]
async fn logs_carry_the_correlation_id_of_the_message_being_handled() {
    // A current-thread runtime: the service task runs on this thread, under this
    // thread's default subscriber.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "kaa_examples=debug,kaa_cmx=debug,kaa_ecr=debug,kaa_kpc=debug",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let names = Names::unique("cmx::memory::logs_carry_correlation");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let mut s = Stack::start(names, None, Arc::clone(&bus), bus, "").await;
    let ep = s.names.endpoint(1);
    let bad = s
        .kpc
        .send(&ep, APP_V1, "/config/json", Some(1), b"not json")
        .await;
    assert_eq!(s.kpc.next().await.message.status_code, 400);
    let good = s
        .kpc
        .send(&ep, APP_V1, "/config/json", Some(2), b"{}")
        .await;
    let received = s.provider.next_request().await;
    let cdtp = received.request.correlation_id.to_string();
    s.provider.answer_config(&received, "c1", "{}").await;
    assert_eq!(s.kpc.next().await.message.status_code, 200);
    s.cmx.stop().await;

    let text = captured.text();
    let line_with = |needle: &str, message: &str| {
        text.lines()
            .any(|l| l.contains(needle) && l.contains(message))
    };
    // The error answer is logged inside the span of the ClientData that caused it.
    assert!(
        line_with(&format!("correlationId={bad}"), "answered with an error"),
        "{text}"
    );
    assert!(
        line_with(&format!("correlationId={good}"), "ClientData"),
        "{text}"
    );
    // The provider's answer is handled in a span with the CDTP correlation ID.
    assert!(
        line_with(&format!("correlationId={cdtp}"), "ConfigResponse"),
        "{text}"
    );
}

/// A request the engine refuses that has no request ID (here an applied report
/// without a usable `configId`) cannot be answered (1/KP), so it is counted by
/// reason and logged with its correlation ID, endpoint and reason, never its
/// payload; the device gets nothing.
#[tokio::test]
async fn refused_fire_and_forget_request_is_counted_and_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("kaa_cmx=info"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let names = Names::unique("cmx::memory::refused_fire_and_forget");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let mut s = Stack::start(names, None, Arc::clone(&bus), bus, "").await;
    let ep = s.names.endpoint(1);
    let refused = s
        .kpc
        .send(
            &ep,
            APP_V1,
            "/applied/json",
            None,
            br#"{"configId": null, "statusCode": 500, "reasonPhrase": "s3cr3t"}"#,
        )
        .await;
    s.kpc.expect_nothing().await;
    let sample = r#"cmx_refused_without_request_id_total{reason="malformed_payload"}"#;
    assert_eq!(s.cmx.metric(sample), 1.0);
    // Kaa's official client's success report is no refusal.
    s.kpc
        .send(
            &ep,
            APP_V1,
            "/applied/json",
            None,
            br#"{"configId": "c1", "statusCode": null, "reasonPhrase": null}"#,
        )
        .await;
    let applied = s.kpc.next_applied().await;
    assert_eq!((&*applied.config_id, applied.status_code), ("c1", 200));
    assert_eq!(s.cmx.metric(sample), 1.0);
    s.cmx.stop().await;

    let text = captured.text();
    let line = text
        .lines()
        .find(|l| l.contains("device request refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{text}"));
    for needle in [
        format!("correlationId={refused}"),
        format!("endpointId={ep}"),
        "resourcePath=/applied/json".to_owned(),
        "reason=\"malformed_payload\"".to_owned(),
        "status=400".to_owned(),
    ] {
        assert!(line.contains(&needle), "{needle} missing: {line}");
    }
    assert!(
        !text.contains("s3cr3t"),
        "the payload is never logged:\n{text}"
    );
    assert_eq!(text.matches("device request refused").count(), 1, "{text}");
}
