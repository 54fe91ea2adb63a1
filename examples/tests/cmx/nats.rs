//! The CMX service over the machine's real NATS server (`KAA_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`), driven by a fake provider and a fake communication
//! service that speak raw Avro. Skipped visibly when NATS is not reachable, failed
//! instead under `KAA_REQUIRE_SERVICES=1`. Every test uses its own instance names
//! (see [`kaa_testkit::cmx`]), so they run in parallel on the shared server.

use std::time::Duration;

use kaa_bus::test_support::NATS;
use kaa_testkit::cmx::{APP_V1, APP_V2, FakeKpc, FakeProvider, Names, RunningCmx, Stack, nats};
use serde_json::json;

async fn stack(test: &str, extra_cmx: &str) -> Option<Stack> {
    let url = NATS.require(test)?;
    let names = Names::unique(test);
    // CMX on a connection of its own, the fakes on another: as in production.
    let cmx_bus = nats(&url).await;
    let fakes_bus = nats(&url).await;
    Some(Stack::start(names, Some(&url), cmx_bus, fakes_bus, extra_cmx).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_is_answered_then_unchanged() {
    let Some(mut s) = stack("cmx::nats::request_is_answered_then_unchanged", "").await else {
        return;
    };
    let ep = s.names.endpoint(1);
    let correlation = s
        .kpc
        .send(&ep, APP_V1, "/config/json", Some(1), br#"{"observe":true}"#)
        .await;

    // The engine asks the provider over 6/CDTP, on its replica's reply subject.
    let received = s.provider.next_request().await;
    assert_eq!(received.request.endpoint_id, ep);
    assert_eq!(received.request.app_version_name, APP_V1);
    assert_eq!(received.request.config_id, None);
    assert_eq!(received.request.config_name, None);
    assert_eq!(received.request.timeout, 3000);
    assert_eq!(received.reply_to, s.names.cdtp_reply_subject());
    s.provider
        .answer_config(&received, "c1", r#"{"sampling":200}"#)
        .await;

    // The device's answer goes to the communication service replica (session affinity).
    let answer = s.kpc.next().await;
    assert_eq!(answer.subject, s.names.kpc_reply_subject());
    let m = &answer.message;
    assert_eq!((m.status_code, m.request_id), (200, Some(1)));
    assert_eq!(m.correlation_id, correlation);
    assert_eq!(m.endpoint_id.as_deref(), Some(ep.as_str()));
    assert_eq!(m.resource_path, "/config/json");
    assert_eq!(
        m.extension_instance_name.as_deref(),
        Some(s.names.cmx.as_str())
    );
    assert_eq!(m.app_version_name.as_deref(), Some(APP_V1));
    assert_eq!(
        answer.json(),
        json!({"configId": "c1", "config": {"sampling": 200}})
    );

    // The device names what it holds: the provider says unchanged, the device gets `{}`.
    s.kpc
        .send(
            &ep,
            APP_V1,
            "/config/json",
            Some(2),
            br#"{"configId":"c1","observe":true}"#,
        )
        .await;
    let received = s.provider.next_request().await;
    assert_eq!(received.request.config_id.as_deref(), Some("c1"));
    s.provider.answer_unchanged(&received).await;
    let answer = s.kpc.next().await;
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (200, Some(2))
    );
    assert_eq!(answer.json(), json!({}));

    assert_eq!(s.cmx.metric("cmx_client_data_total"), 2.0);
    assert_eq!(s.cmx.metric("cmx_responses_total{status=\"200\"}"), 2.0);
    assert_eq!(s.cmx.metric("cmx_cdtp_requests_total"), 2.0);
    assert_eq!(s.cmx.metric("cmx_cdtp_latency_seconds_count"), 2.0);
    assert_eq!(s.cmx.metric("cmx_tracked_endpoints"), 1.0);
    assert_eq!(s.cmx.metric("cmx_pending_cdtp_requests"), 0.0);
    let report = s.cmx.stop().await;
    assert_eq!(report.abandoned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_configuration_is_pushed_until_observe_false() {
    let Some(mut s) = stack("cmx::nats::observed_configuration_is_pushed", "").await else {
        return;
    };
    let ep = s.names.endpoint(1);
    s.fetch(
        &ep,
        APP_V1,
        "/config/json",
        1,
        br#"{"observe":true}"#,
        ("c1", r#"{"v":1}"#),
    )
    .await;

    // The provider broadcasts a change: CMX fetches the current configuration and
    // pushes it (no request ID).
    s.provider
        .config_updated(&ep, APP_V1, "c2", r#"{"v":2}"#, None)
        .await;
    let received = s.provider.next_request().await;
    assert_eq!(received.request.endpoint_id, ep);
    s.provider
        .answer_config(&received, "c2", r#"{"v":2}"#)
        .await;
    let push = s.kpc.next().await;
    assert_eq!(push.message.request_id, None);
    assert_eq!(push.message.status_code, 200);
    assert_eq!(push.message.resource_path, "/config/json");
    assert_eq!(push.message.endpoint_id.as_deref(), Some(ep.as_str()));
    assert_eq!(push.json(), json!({"configId": "c2", "config": {"v": 2}}));
    assert_eq!(s.cmx.metric("cmx_pushes_total"), 1.0);
    assert_eq!(s.cmx.metric("cmx_config_updates_total"), 1.0);

    // `observe: false` stops pushes.
    s.kpc
        .send(
            &ep,
            APP_V1,
            "/config/json",
            Some(2),
            br#"{"configId":"c2","observe":false}"#,
        )
        .await;
    let received = s.provider.next_request().await;
    s.provider.answer_unchanged(&received).await;
    assert_eq!(s.kpc.next().await.json(), json!({}));
    s.provider
        .config_updated(&ep, APP_V1, "c3", r#"{"v":3}"#, None)
        .await;
    s.provider.expect_no_request().await;
    s.kpc.expect_nothing().await;
    s.cmx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_and_rejected_reports_are_broadcast() {
    let Some(mut s) = stack("cmx::nats::applied_and_rejected_reports", "").await else {
        return;
    };
    let ep = s.names.endpoint(1);
    s.fetch(&ep, APP_V1, "/config/json", 1, b"{}", ("c1", r#"{"v":1}"#))
        .await;

    // Applied: an empty 200 to the device and a broadcast.
    let correlation = s
        .kpc
        .send(
            &ep,
            APP_V1,
            "/applied/json",
            Some(2),
            br#"{"configId":"c1","statusCode":200}"#,
        )
        .await;
    let answer = s.kpc.next().await;
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (200, Some(2))
    );
    assert_eq!(answer.message.payload, None);
    let applied = s.kpc.next_applied().await;
    assert_eq!(applied.endpoint_id, ep);
    assert_eq!(applied.app_version_name, APP_V1);
    assert_eq!(applied.config_id, "c1");
    assert_eq!(applied.status_code, 200);
    assert_eq!(applied.correlation_id, correlation);
    assert_eq!(
        applied.originator_replica_id.as_deref(),
        Some(s.names.replica.as_str())
    );
    assert_eq!(applied.config_name, None);

    // Rejected, on a named configuration, without a request ID (no response).
    s.kpc
        .send(
            &ep,
            APP_V1,
            "/applied/json/network",
            None,
            br#"{"configId":"n7","statusCode":400,"reasonPhrase":"sampling out of range"}"#,
        )
        .await;
    let rejected = s.kpc.next_applied().await;
    assert_eq!(rejected.config_id, "n7");
    assert_eq!(rejected.status_code, 400);
    assert_eq!(
        rejected.reason_phrase.as_deref(),
        Some("sampling out of range")
    );
    assert_eq!(rejected.config_name.as_deref(), Some("network"));
    s.kpc.expect_nothing().await;

    assert_eq!(
        s.cmx.metric("cmx_config_applied_total{result=\"applied\"}"),
        1.0
    );
    assert_eq!(
        s.cmx
            .metric("cmx_config_applied_total{result=\"rejected\"}"),
        1.0
    );
    s.cmx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_catches_up_with_the_latest_configuration_once() {
    let Some(mut s) = stack("cmx::nats::connect_catches_up", "").await else {
        return;
    };
    let ep = s.names.endpoint(1);

    // A device the CMX never saw connects: it gets the current configuration,
    // pushed to the subject of the communication service replica that reported
    // the session (3/ISM's replica-specific subject, where that session's
    // answers go too: neither can overtake the other).
    s.kpc.connected(&[(&ep, APP_V1)]).await;
    let received = s.provider.next_request().await;
    assert_eq!(received.request.endpoint_id, ep);
    assert_eq!(received.request.app_version_name, APP_V1);
    s.provider
        .answer_config(&received, "c1", r#"{"v":1}"#)
        .await;
    let push = s.kpc.next().await;
    assert_eq!(push.subject, s.names.kpc_reply_subject());
    assert_eq!(push.message.request_id, None);
    assert_eq!(push.json(), json!({"configId": "c1", "config": {"v": 1}}));

    // It applies c1 and goes offline; two changes happen while it is away.
    s.kpc
        .send(&ep, APP_V1, "/applied/json", None, br#"{"configId":"c1"}"#)
        .await;
    assert_eq!(s.kpc.next_applied().await.config_id, "c1");
    s.kpc.disconnected(&[(&ep, APP_V1)]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.provider
        .config_updated(&ep, APP_V1, "c2", r#"{"v":2}"#, None)
        .await;
    s.provider
        .config_updated(&ep, APP_V1, "c3", r#"{"v":3}"#, None)
        .await;
    s.provider.expect_no_request().await;
    s.kpc.expect_nothing().await;

    // Back online: it gets the latest, once.
    s.kpc.connected(&[(&ep, APP_V1)]).await;
    let received = s.provider.next_request().await;
    s.provider
        .answer_config(&received, "c3", r#"{"v":3}"#)
        .await;
    let push = s.kpc.next().await;
    assert_eq!(push.json(), json!({"configId": "c3", "config": {"v": 3}}));
    s.kpc.expect_nothing().await;
    s.provider.expect_no_request().await;
    s.cmx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_version_change_pushes_the_new_versions_configuration() {
    let Some(mut s) = stack("cmx::nats::app_version_change", "").await else {
        return;
    };
    let ep = s.names.endpoint(1);
    s.fetch(
        &ep,
        APP_V1,
        "/config/json",
        1,
        br#"{"observe":true}"#,
        ("c1", r#"{"v":1}"#),
    )
    .await;
    s.kpc
        .send(&ep, APP_V1, "/applied/json", None, br#"{"configId":"c1"}"#)
        .await;
    s.kpc.next_applied().await;

    s.kpc.app_version_updated(&ep, APP_V1, APP_V2).await;
    let received = s.provider.next_request().await;
    assert_eq!(received.request.endpoint_id, ep);
    assert_eq!(received.request.app_version_name, APP_V2);
    s.provider
        .answer_config(&received, "v2-c1", r#"{"v":"two"}"#)
        .await;
    let push = s.kpc.next().await;
    assert_eq!(push.message.request_id, None);
    assert_eq!(push.message.app_version_name.as_deref(), Some(APP_V2));
    assert_eq!(
        push.json(),
        json!({"configId": "v2-c1", "config": {"v": "two"}})
    );
    s.cmx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_configurations_are_requested_and_pushed_by_name() {
    let Some(mut s) = stack("cmx::nats::named_configurations", "").await else {
        return;
    };
    let ep = s.names.endpoint(1);
    s.kpc
        .send(
            &ep,
            APP_V1,
            "/config/json/network",
            Some(4),
            br#"{"observe":true}"#,
        )
        .await;
    let received = s.provider.next_request().await;
    assert_eq!(received.request.config_name.as_deref(), Some("network"));
    s.provider
        .answer_config(&received, "n1", r#"{"ssid":"kettle"}"#)
        .await;
    let answer = s.kpc.next().await;
    assert_eq!(answer.message.resource_path, "/config/json/network");
    assert_eq!(answer.message.request_id, Some(4));
    assert_eq!(
        answer.json(),
        json!({"configId": "n1", "config": {"ssid": "kettle"}})
    );

    // A change of the named configuration is pushed on its own resource path.
    s.provider
        .config_updated(
            &ep,
            APP_V1,
            "n2",
            r#"{"ssid":"kettle-5g"}"#,
            Some("network"),
        )
        .await;
    let received = s.provider.next_request().await;
    assert_eq!(received.request.config_name.as_deref(), Some("network"));
    s.provider
        .answer_config(&received, "n2", r#"{"ssid":"kettle-5g"}"#)
        .await;
    let push = s.kpc.next().await;
    assert_eq!(push.message.request_id, None);
    assert_eq!(push.message.resource_path, "/config/json/network");
    assert_eq!(push.json()["configId"], "n2");
    s.cmx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_silence_is_a_504_to_the_device() {
    let Some(mut s) = stack(
        "cmx::nats::provider_silence_is_a_504",
        "  cdtp-timeout-ms: 400\n",
    )
    .await
    else {
        return;
    };
    let ep = s.names.endpoint(1);
    let started = std::time::Instant::now();
    s.kpc
        .send(&ep, APP_V1, "/config/json", Some(9), b"{}")
        .await;
    let received = s.provider.next_request().await; // and never answered in time
    let answer = s.kpc.next().await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (504, Some(9))
    );
    let reason = answer.message.reason_phrase.clone().unwrap_or_default();
    assert!(reason.contains("did not answer"), "{reason}");
    assert_eq!(s.cmx.metric("cmx_cdtp_timeouts_total"), 1.0);
    assert_eq!(s.cmx.metric("cmx_responses_total{status=\"504\"}"), 1.0);

    // A late answer matches nothing and reaches nobody.
    s.provider.answer_config(&received, "late", "{}").await;
    s.kpc.expect_nothing().await;
    // The timed-out request is not pending (another test's `connected` event may
    // make this CMX ask its provider for a moment; that provider answers at once).
    s.cmx.wait_metric("cmx_pending_cdtp_requests", 0.0).await;
    s.cmx.stop().await;
}

/// No provider subscribed at all (ECR down): NATS answers the 6/CDTP request "no
/// responders"; CMX counts that (not as a malformed response) and the device gets
/// the timeout's 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_provider_is_counted_and_a_504_to_the_device() {
    let Some(mut s) = stack("cmx::nats::no_provider", "  cdtp-timeout-ms: 400\n").await else {
        return;
    };
    s.provider.stop().await;
    let ep = s.names.endpoint(1);
    s.kpc
        .send(&ep, APP_V1, "/config/json", Some(9), b"{}")
        .await;
    let answer = s.kpc.next().await;
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (504, Some(9))
    );
    let no_responders = s.cmx.metric("cmx_no_responders_total");
    assert!(no_responders >= 1.0, "{no_responders}");
    assert_eq!(
        s.cmx
            .metric("cmx_malformed_messages_total{kind=\"cdtp_response\"}"),
        0.0
    );
    s.cmx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_data_gets_400_and_everyone_else_is_served() {
    let Some(mut s) = stack("cmx::nats::malformed_client_data", "").await else {
        return;
    };
    let ep = s.names.endpoint(1);

    // Not Avro at all: nothing to answer (no request ID can be read), counted, dropped.
    s.kpc
        .send_raw(b"\x02\xff\xff\xff\xff\xff\xff garbage")
        .await;
    // A valid datum with a broken 7/CMP payload, and one with an unknown field: 400.
    s.kpc
        .send(&ep, APP_V1, "/config/json", Some(1), br#"{"observe":tru"#)
        .await;
    let answer = s.kpc.next().await;
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (400, Some(1))
    );
    assert!(answer.message.reason_phrase.is_some());
    s.kpc
        .send(&ep, APP_V1, "/config/json", Some(2), br#"{"colour":"red"}"#)
        .await;
    let answer = s.kpc.next().await;
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (400, Some(2))
    );
    let reason = answer.message.reason_phrase.clone().unwrap_or_default();
    assert!(reason.contains("colour"), "{reason}");
    // An unknown resource: 404; an unknown app version: 404 without asking the provider.
    s.kpc
        .send(&ep, APP_V1, "/firmware/json", Some(3), b"{}")
        .await;
    assert_eq!(s.kpc.next().await.message.status_code, 404);
    s.kpc
        .send(&ep, "smartKettleV9", "/config/json", Some(4), b"{}")
        .await;
    let answer = s.kpc.next().await;
    assert_eq!(answer.message.status_code, 404);
    assert!(
        answer
            .message
            .reason_phrase
            .as_deref()
            .unwrap_or_default()
            .contains("smartKettleV9")
    );
    s.provider.expect_no_request().await;

    // Everyone else is still served.
    let other = s.names.endpoint(2);
    let answer = s
        .fetch(
            &other,
            APP_V1,
            "/config/json",
            5,
            b"{}",
            ("c1", r#"{"ok":true}"#),
        )
        .await;
    assert_eq!(answer.message.status_code, 200);
    assert!(s.cmx.status.is_up());
    assert_eq!(
        s.cmx
            .metric("cmx_malformed_messages_total{kind=\"client_data\"}"),
        1.0
    );
    assert_eq!(s.cmx.metric("cmx_responses_total{status=\"400\"}"), 2.0);
    s.cmx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_over_http() {
    let Some(mut s) = stack(
        "cmx::nats::health_and_metrics_over_http",
        "  http:\n    listen: 127.0.0.1:0\n  limits:\n    delta-cache-bytes: 1MiB\n",
    )
    .await
    else {
        return;
    };
    let base = format!("http://{}", s.cmx.http.expect("HTTP bound"));
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "UP");

    let ep = s.names.endpoint(1);
    s.fetch(&ep, APP_V1, "/config/json", 1, b"{}", ("c1", "{}"))
        .await;
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for (sample, value) in [
        ("cmx_client_data_total", 1.0),
        ("cmx_responses_total{status=\"200\"}", 1.0),
        ("cmx_cdtp_requests_total", 1.0),
        ("cmx_cdtp_latency_seconds_count", 1.0),
        ("cmx_tracked_endpoints", 1.0),
        ("cmx_pending_cdtp_requests", 0.0),
    ] {
        assert_eq!(
            kaa_testkit::cmx::metric_value(&text, sample),
            value,
            "{sample}\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE cmx_cdtp_latency_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("cmx_pushes_total"), "{text}");
    for sample in [
        "cmx_delta_patches_total",
        "cmx_delta_whole_total",
        "cmx_delta_quiet_total",
        "cmx_delta_cache_bytes",
    ] {
        assert_eq!(
            kaa_testkit::cmx::metric_value(&text, sample),
            0.0,
            "{sample}\n{text}"
        );
    }
    // A first request on the delta resource (kaa-rs extension): the whole
    // configuration, counted, and the configuration enters the base cache.
    let ep2 = s.names.endpoint(2);
    s.fetch(
        &ep2,
        APP_V1,
        "/config/json-patch",
        1,
        b"{}",
        ("c2", r#"{"rate":5}"#),
    )
    .await;
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |sample: &str| kaa_testkit::cmx::metric_value(&text, sample);
    assert_eq!(metric("cmx_delta_whole_total"), 1.0, "{text}");
    assert_eq!(metric("cmx_delta_patches_total"), 0.0, "{text}");
    let cached = metric("cmx_delta_cache_bytes");
    assert!(cached > 0.0 && cached <= 1_048_576.0, "{text}");
    s.cmx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let Some(mut s) = stack(
        "cmx::nats::shutdown_finishes_requests_in_flight",
        "  http:\n    listen: 127.0.0.1:0\n",
    )
    .await
    else {
        return;
    };
    let base = format!("http://{}", s.cmx.http.expect("HTTP bound"));
    let ep = s.names.endpoint(1);
    s.kpc
        .send(&ep, APP_V1, "/config/json", Some(1), b"{}")
        .await;
    let received = s.provider.next_request().await;

    // SIGTERM while the provider is still thinking.
    s.cmx.signal_stop();
    s.cmx.wait_state("draining").await;
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 503);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New requests are not taken any more...
    s.kpc
        .send(&s.names.endpoint(2), APP_V1, "/config/json", Some(2), b"{}")
        .await;
    s.provider.expect_no_request().await;
    // ...but the one in flight is finished.
    s.provider
        .answer_config(&received, "c1", r#"{"v":1}"#)
        .await;
    let answer = s.kpc.next().await;
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (200, Some(1))
    );
    let report = tokio::time::timeout(Duration::from_secs(10), s.cmx.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.pending_at_shutdown, 1);
    assert_eq!(report.answered_during_drain, 1);
    assert_eq!(report.abandoned, 0);
    s.kpc.expect_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_is_bounded_and_waiting_devices_get_504() {
    let Some(mut s) = stack(
        "cmx::nats::shutdown_grace_is_bounded",
        "  cdtp-timeout-ms: 60000\n  shutdown-grace-ms: 300\n",
    )
    .await
    else {
        return;
    };
    let ep = s.names.endpoint(1);
    s.kpc
        .send(&ep, APP_V1, "/config/json", Some(1), b"{}")
        .await;
    let _never_answered = s.provider.next_request().await;
    let started = std::time::Instant::now();
    let report = s.cmx.stop().await;
    // Far less than the 60 s CDTP timeout: the grace bounds the wait.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.pending_at_shutdown, 1);
    assert_eq!(report.abandoned, 1);
    let answer = s.kpc.next().await;
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (504, Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_client_data_through_the_queue_group() {
    let test = "cmx::nats::replicas_share_client_data";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let names = Names::unique(test);
    let fakes = nats(&url).await;
    let mut provider = FakeProvider::start(fakes.clone(), &names).await;
    let mut kpc = FakeKpc::start(fakes, &names).await;
    let first = RunningCmx::start(&names.config_yaml(Some(&url), ""), nats(&url).await).await;
    let mut second_names = names.clone();
    second_names.replica = format!("{}-r2", names.cmx);
    let second =
        RunningCmx::start(&second_names.config_yaml(Some(&url), ""), nats(&url).await).await;
    first.wait_state("running").await;
    second.wait_state("running").await;

    // Every request is handled exactly once, by one replica or the other, and
    // the CDTP answer finds its way back to the replica that asked.
    let mut replicas = std::collections::HashSet::new();
    for i in 0..20 {
        let ep = names.endpoint(i);
        kpc.send(&ep, APP_V1, "/config/json", Some(1), b"{}").await;
        let received = provider.next_request().await;
        replicas.insert(received.reply_to.clone());
        provider
            .answer_config(&received, &format!("c{i}"), "{}")
            .await;
        let answer = kpc.next().await;
        assert_eq!(answer.message.endpoint_id.as_deref(), Some(ep.as_str()));
        assert_eq!(answer.message.status_code, 200);
    }
    provider.expect_no_request().await;
    kpc.expect_nothing().await;
    assert_eq!(
        first.metric("cmx_client_data_total") + second.metric("cmx_client_data_total"),
        20.0
    );
    assert_eq!(replicas.len(), 2, "both replicas served: {replicas:?}");
    first.stop().await;
    second.stop().await;
}
