//! KPC over NATS (the machine's server, `KAA_TEST_NATS_URL`): request → response
//! at QoS 0 and 1, a push, an error response, NATS "no responders" for an extension
//! instance nobody runs, connected and disconnected events.
//! Instance names are unique per run so that parallel tests on the shared server do
//! not see each other. Skipped visibly (`SKIPPED: …`) when NATS is not reachable,
//! failed instead under `KAA_REQUIRE_SERVICES=1`.

use std::sync::Arc;

use kaa_bus::test_support::NATS;
use kaa_bus::{Bus, NatsBus, NatsConfig};
use kaa_examples::kpc::config::InstanceSection;
use kaa_kp::ErrorResponse;
use kaa_testkit::kpc::*;
use rumqttc::mqttbytes::QoS;

#[tokio::test]
async fn kpc_routes_requests_pushes_and_events_over_nats() {
    let Some(url) = NATS.require("kpc::nats::kpc_routes_requests_pushes_and_events_over_nats")
    else {
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(
        NatsBus::connect(&NatsConfig::new([url]))
            .await
            .expect("NATS connects"),
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let kpc_name = format!("kpc-{}", &id[..12]);
    let cmx_name = format!("cmx-{}", &id[..12]);
    let mut cfg = config();
    cfg.service.instance =
        InstanceSection::new(kpc_name.clone()).with_replica(format!("{kpc_name}-r1"));
    let behavior = default_behavior();
    let cmx_answers: Behavior = {
        let cmx_name = cmx_name.clone();
        Arc::new(move |cd: &kaa_esp::ClientData<'_>| {
            let mut answer = behavior(cd)?;
            answer.extension_instance_name = Some(cmx_name.clone().into());
            Some(answer)
        })
    };
    let mut cmx = FakeCmx::start(Arc::clone(&bus), &cmx_name, cmx_answers).await;
    let mut events = Events::listen(&bus, &kpc_name).await;
    let kpc = start_kpc(&cfg, Arc::clone(&bus)).await;
    bus.flush().await.unwrap();

    let mut dev = Client::connect(kpc.local_addr(), "nats-dev").await;
    let base = format!("kp1/{APP}/{cmx_name}/tok-1");
    dev.publish(&format!("{base}/config/json/1"), QoS::AtMostOnce, b"{}")
        .await;
    assert_eq!(
        events.next().await,
        Connectivity::Connected(eps(&[("ep-1", APP)]))
    );
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{base}/config/json/1/status"));
    assert_eq!(r.qos, QoS::AtMostOnce);
    let got = cmx.next().await;
    assert_eq!(
        got.subject,
        format!("kaa.v1.service.{cmx_name}.esp.ClientData")
    );
    assert_eq!(
        got.reply_to.as_deref(),
        Some(format!("kaa.v1.replica.{kpc_name}-r1.esp.ExtensionData").as_str())
    );
    assert_eq!(got.data.endpoint_id.as_deref(), Some("ep-1"));

    dev.publish(
        &format!("{base}/config/json/network/2"),
        QoS::AtLeastOnce,
        b"{}",
    )
    .await;
    dev.puback().await;
    let r = dev.recv().await;
    assert_eq!(
        (r.topic.clone(), r.qos),
        (
            format!("{base}/config/json/network/2/status"),
            QoS::AtLeastOnce
        )
    );

    dev.publish(
        &format!("{base}/config/json/missing/3"),
        QoS::AtMostOnce,
        b"{}",
    )
    .await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{base}/config/json/missing/3/error"));
    assert_eq!(
        ErrorResponse::from_json(&r.payload).unwrap().status_code,
        404
    );

    // A push on the instance-wide subject, as CMX sends it without affinity.
    let data = kaa_esp::ExtensionData {
        correlation_id: "p".into(),
        app_version_name: Some(APP.into()),
        extension_instance_name: Some(cmx_name.clone().into()),
        endpoint_id: Some("ep-1".into()),
        resource_path: "/config/json/network".into(),
        payload: Some(br#"{"configId":"n2","config":{}}"#.as_slice().into()),
        status_code: 200,
        ..Default::default()
    };
    let subject = format!("kaa.v1.service.{kpc_name}.esp.ExtensionData");
    bus.publish(&subject, kaa_ism::avro::Encode::to_vec(&data).into())
        .await
        .unwrap();
    let p = dev.recv().await;
    assert_eq!(p.topic, format!("{base}/config/json/network/status"));
    assert_eq!(
        p.qos,
        QoS::AtLeastOnce,
        "the QoS of the last request for that resource"
    );

    // A request to an extension instance nobody runs: NATS answers KPC's replyTo
    // with "no responders", which KPC counts as such, not as malformed ExtensionData.
    let nobody = format!("nobody-{}", &id[..12]);
    dev.publish(
        &format!("kp1/{APP}/{nobody}/tok-1/config/json/4"),
        QoS::AtMostOnce,
        b"{}",
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while kpc.metrics().extension_data_count("no_responders") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no no-responders status counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(kpc.metrics().extension_data_count("malformed"), 0);

    dev.disconnect().await;
    assert_eq!(
        events.next().await,
        Connectivity::Disconnected(eps(&[("ep-1", APP)]))
    );
    kpc.shutdown().await.unwrap();
}
