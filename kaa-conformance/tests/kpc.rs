//! The kit's KPC mode against our own KPC (`kaa-kpc`, `accept-any-token`), in
//! this process with its MQTT listener on an ephemeral port: on the in-memory bus
//! (always), and on the machine's NATS (skipped visibly when NATS is not
//! reachable, mandatory with `KAA_REQUIRE_SERVICES=1`). And against our KPC
//! behind a bus that loses some of what it publishes: the kit must name the cases
//! that catch it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kaa_bus::test_support::NATS;
use kaa_bus::{Bus, BusError, Message, Subscription};
use kaa_conformance::cmx::SuiteOptions;
use kaa_conformance::kpc::{CASES, KpcTarget, run_kpc_suite};
use kaa_conformance::{Outcome, Report};
use kaa_kpc::KpcServer;
use kaa_kpc::config::KpcConfig;

fn options() -> SuiteOptions {
    SuiteOptions {
        wait: Duration::from_secs(5),
        quiet: Duration::from_millis(300),
        ..SuiteOptions::default()
    }
}

/// Runs the suite against our KPC, which publishes through `kpc_bus` (the kit
/// uses `kit_bus`, the same bus or what it wraps).
async fn run_against_our_kpc(
    kit_bus: Arc<dyn Bus>,
    kpc_bus: Arc<dyn Bus>,
    tag: &str,
    options: &SuiteOptions,
) -> Report {
    let instance = format!("kpc-{tag}");
    let mut config = KpcConfig::new("127.0.0.1:0".parse().unwrap());
    config.service.instance.name = instance.clone();
    config.kpc.accept_any_token = true;
    let kpc = KpcServer::bind(&config, kpc_bus)
        .await
        .expect("bind KPC")
        .spawn();
    let target = KpcTarget::new(
        &instance,
        kpc.local_addr().to_string(),
        format!("cmx-{tag}"),
    );
    let report = run_kpc_suite(kit_bus, &target, options, |_| {})
        .await
        .expect("suite");
    let _ = kpc.shutdown().await;
    report
}

fn assert_all_passed(report: &Report) {
    println!("{}", report.to_table());
    assert_eq!(report.results.len(), CASES.len());
    assert_eq!(
        report.passed(),
        CASES.len(),
        "every case, extensions too:\n{}",
        report.to_table()
    );
    assert!(report.conformant());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_kpc_passes_every_case_on_the_memory_bus() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let tag = format!("mem{}", std::process::id());
    let report = run_against_our_kpc(Arc::clone(&bus), bus, &tag, &options()).await;
    assert_all_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_kpc_passes_every_case_on_nats() {
    let Some(url) = NATS.require("kaa-conformance our_kpc_passes_every_case_on_nats") else {
        return;
    };
    let config = kaa_bus::NatsConfig::new([url.as_str()]).with_retry_on_initial_connect(false);
    let kit: Arc<dyn Bus> = Arc::new(kaa_bus::NatsBus::connect(&config).await.expect("NATS"));
    let kpc: Arc<dyn Bus> = Arc::new(kaa_bus::NatsBus::connect(&config).await.expect("NATS"));
    let tag = format!("nats{}", std::process::id());
    let report = run_against_our_kpc(kit, kpc, &tag, &options()).await;
    assert_all_passed(&report);
}

#[tokio::test]
async fn with_no_kpc_the_cases_fail_with_a_reason() {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let target = KpcTarget::new("kpc-absent", format!("127.0.0.1:{port}"), "cmx-absent");
    let options = SuiteOptions {
        wait: Duration::from_millis(100),
        quiet: Duration::from_millis(10),
        ..SuiteOptions::default()
    };
    let report = run_kpc_suite(bus, &target, &options, |_| {})
        .await
        .expect("suite");
    assert!(!report.conformant());
    for r in &report.results {
        match &r.outcome {
            Outcome::Failed(why) => assert!(why.contains("MQTT connect"), "{why}"),
            other => panic!("{}: {other:?} with no KPC", r.case.id),
        }
    }
}

// ---------------------------------------------------------------------------
// Our KPC behind a bus that gets something wrong.

/// What the bus under our KPC loses or changes of what the KPC publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// `disconnected` events are lost.
    DropsDisconnected,
    /// `connected` events are lost.
    DropsConnected,
    /// ClientData reaches the extension with the request ID left in its
    /// resource path (`/config/json/7`).
    RequestIdInResourcePath,
}

#[derive(Debug)]
struct FlawedBus {
    inner: Arc<dyn Bus>,
    flaw: Flaw,
}

#[async_trait::async_trait]
impl Bus for FlawedBus {
    async fn publish_message(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        use kaa_ism::avro::{Decode, Encode};
        let payload = match self.flaw {
            Flaw::DropsDisconnected if subject.ends_with(".connectivity.disconnected") => {
                return Ok(());
            }
            Flaw::DropsConnected if subject.ends_with(".connectivity.connected") => {
                return Ok(());
            }
            Flaw::RequestIdInResourcePath if subject.ends_with(".esp.ClientData") => {
                let mut data = kaa_esp::ClientData::decode(&payload).expect("ClientData");
                if let Some(id) = data.request_id {
                    data.resource_path = format!("{}/{id}", data.resource_path).into();
                }
                Bytes::from(data.to_vec())
            }
            _ => payload,
        };
        self.inner.publish_message(subject, reply_to, payload).await
    }

    async fn subscribe(
        &self,
        filter: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        self.inner.subscribe(filter, queue_group).await
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        self.inner.request(subject, payload, timeout).await
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.inner.flush().await
    }

    fn new_inbox(&self) -> String {
        self.inner.new_inbox()
    }
}

async fn failing_with(flaw: Flaw) -> BTreeSet<&'static str> {
    let bus: Arc<dyn Bus> = Arc::new(kaa_bus::MemoryBus::new());
    let flawed: Arc<dyn Bus> = Arc::new(FlawedBus {
        inner: Arc::clone(&bus),
        flaw,
    });
    let tag = format!("{flaw:?}").to_lowercase();
    let options = SuiteOptions {
        wait: Duration::from_secs(1),
        ..options()
    };
    let report = run_against_our_kpc(bus, flawed, &tag, &options).await;
    println!("{flaw:?}:\n{}", report.to_table());
    report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .map(|r| r.case.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_disconnected_events_are_caught() {
    assert_eq!(
        failing_with(Flaw::DropsDisconnected).await,
        BTreeSet::from(["ELCE-DIS-1", "ELCE-DIS-2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connected_events_are_caught() {
    assert_eq!(
        failing_with(Flaw::DropsConnected).await,
        BTreeSet::from(["ELCE-CON-1"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_left_in_the_resource_path_is_caught() {
    assert_eq!(
        failing_with(Flaw::RequestIdInResourcePath).await,
        BTreeSet::from(["KP-REQ-1"])
    );
}
