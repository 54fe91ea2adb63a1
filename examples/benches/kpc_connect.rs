//! Connect rate of a fleet through KPC with 16/ECAP token validation against
//! the static token table, in the same run (issue #17).
//!
//! ```sh
//! cargo bench -p kaa-examples --bench kpc_connect
//! # knobs: KPC_CONNECT_DEVICES (default 10000), KPC_CONNECT_CONCURRENCY (default 64),
//! #        KPC_CONNECT_ROUNDS (default 2), KAA_TEST_NATS_URL
//! ```
//!
//! In this process, on NATS: the endpoint register (SQLite in a temp dir) with
//! the devices provisioned (one batch call per 10,000, a token each), a fake CMX
//! that answers every configuration request at once, and two KPCs: one with the
//! devices' tokens in its static table (`kpc.endpoint-tokens`), one that
//! validates them with the register over 16/ECAP (`kpc.token-validation`, cache
//! on, as deployed; each device's first request is a cache miss). The devices
//! are the `device load` binary in another process (a process here may hold at
//! most 20,000 open files): every device connects (MQTT CONNECT/CONNACK, 64 at a
//! time), then each sends one configuration request; KPC resolves the token on
//! that first request, so the request phase is where validation costs. Phases
//! alternate (table, 16/ECAP) for `rounds` rounds, each with fresh MQTT
//! sessions; the second round onwards finds the tokens in KPC's cache only when
//! the same KPC is reused, so each round gets new KPCs.

use std::sync::Arc;
use std::time::Duration;

use kaa_bus::{Bus, NatsBus, NatsConfig};
use kaa_examples::device::provision::Register;
use kaa_examples::epr::EprServer;
use kaa_examples::epr::config::EprConfig;
use kaa_examples::kpc::config::{KpcConfig, TokenEntry, TokenValidationSection};
use kaa_examples::service::parse_yaml;
use kaa_testkit::bench::env_or;
use kaa_testkit::kpc::{APP, FakeCmx, default_behavior, start_kpc};

/// Runs `device load` against `mqtt` with the given tokens file; its report.
async fn load(mqtt: std::net::SocketAddr, tokens: &[String], concurrency: usize) -> String {
    let mut args = vec![
        "--mqtt".to_owned(),
        mqtt.to_string(),
        "--app-version".into(),
        APP.into(),
        "load".into(),
        "--devices".into(),
        tokens.len().to_string(),
        "--concurrency".into(),
        concurrency.to_string(),
        "--timeout".into(),
        "30".into(),
        "--no-progress".into(),
    ];
    // The tokens reach the child through a file, not its command line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, tokens.join("\n")).unwrap();
    args.push("--tokens-file".into());
    args.push(file.display().to_string());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_device"))
        .args(&args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("the device binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "device load failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `(connect seconds, first-request phase seconds)` from a `device load` report.
fn phases(report: &str) -> (f64, f64) {
    let secs = |line: &str, after: &str| -> f64 {
        let rest = line.split(after).nth(1).unwrap_or("");
        let t = rest.split_whitespace().next().unwrap_or("0");
        let t = t.trim_end_matches(['(', ',']);
        if let Some(ms) = t.strip_suffix("ms") {
            ms.parse::<f64>().unwrap_or(0.0) / 1000.0
        } else if let Some(s) = t.strip_suffix('s') {
            s.parse().unwrap_or(0.0)
        } else {
            0.0
        }
    };
    let connect = report
        .lines()
        .find(|l| l.starts_with("devices:"))
        .map_or(0.0, |l| secs(l, " in "));
    let requests = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .map_or(0.0, |l| secs(l, " timeouts in "));
    (connect, requests)
}

#[tokio::main]
async fn main() {
    let devices = env_or("KPC_CONNECT_DEVICES", 10_000);
    let concurrency = env_or("KPC_CONNECT_CONCURRENCY", 64);
    let rounds = env_or("KPC_CONNECT_ROUNDS", 2);
    let url = kaa_bus::test_support::NATS.url();
    let Some(url) = kaa_bus::test_support::NATS
        .require("kpc_connect")
        .or(Some(url))
        .filter(|u| kaa_bus::test_support::is_reachable(u, Duration::from_secs(2)))
    else {
        eprintln!("kpc_connect: NATS not reachable; nothing measured");
        return;
    };
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::connect(&NatsConfig::new([url])).await.unwrap());
    let tag = std::process::id();
    let epr_instance = format!("eprconnect{tag}");
    let dir = tempfile::tempdir().unwrap();
    let config: EprConfig = parse_yaml(
        &format!(
            "service:\n  instance:\n    name: {epr_instance}\nepr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: sqlite://{}\nauth:\n  enabled: false\n",
            dir.path().join("epr.db").display()
        ),
        "kpc_connect",
    )
    .unwrap();
    let epr = EprServer::bind(&config, Arc::clone(&bus)).await.unwrap();
    let register = Register::new(&format!("http://{}", epr.local_addr()), None).unwrap();
    tokio::spawn(epr.run(std::future::pending()));
    // The fake CMX answers on the extension instance `cmx`, which KPC forwards to.
    let _cmx = FakeCmx::start(Arc::clone(&bus), "cmx", default_behavior()).await;

    let ids: Vec<String> = (1..=devices).map(|i| format!("meter-{tag}-{i}")).collect();
    let provisioned = register.provision_batch(&ids, APP).await.unwrap();
    let ecap_tokens: Vec<String> = provisioned.into_iter().map(|d| d.token).collect();
    let table_tokens: Vec<String> = (1..=devices)
        .map(|i| format!("tok-{tag}-{i:06}-{}", "x".repeat(32)))
        .collect();

    println!(
        "kpc_connect: {devices} devices, {concurrency} connecting at a time, NATS, register on SQLite"
    );
    println!(
        "| round | KPC tokens | connect (all CONNACKs) | first request answered (all) | rate |"
    );
    println!("|---:|---|---:|---:|---:|");
    for round in 1..=rounds {
        for ecap in [false, true] {
            let mut kpc_config = KpcConfig::new("127.0.0.1:0".parse().unwrap());
            kpc_config.service.instance.name = format!("kpcconnect{tag}r{round}{ecap}");
            kpc_config.kpc.extension_instances = vec!["cmx".into()];
            kpc_config.kpc.mqtt.max_connections = devices + 100;
            if ecap {
                kpc_config.kpc.token_validation = Some(TokenValidationSection {
                    provider: epr_instance.clone(),
                    timeout: Duration::from_secs(10),
                    app_names: Default::default(),
                    cache: Default::default(),
                });
            } else {
                for (i, t) in table_tokens.iter().enumerate() {
                    kpc_config
                        .kpc
                        .endpoint_tokens
                        .insert(t.clone(), TokenEntry::EndpointId(ids[i].clone()));
                }
            }
            let kpc = start_kpc(&kpc_config, Arc::clone(&bus)).await;
            let tokens = if ecap { &ecap_tokens } else { &table_tokens };
            let report = load(kpc.local_addr(), tokens, concurrency).await;
            let (connect, requests) = phases(&report);
            println!(
                "| {round} | {} | {connect:.2} s ({:.0}/s) | {requests:.2} s | {:.0} devices/s |",
                if ecap { "16/ECAP" } else { "static table" },
                devices as f64 / connect.max(1e-9),
                devices as f64 / (connect + requests).max(1e-9),
            );
            let _ = kpc.shutdown().await;
        }
    }
}
