//! The `device` binary against KPC (in-memory bus) and a fake CMX: one-shot runs
//! that apply, reject and meet an error, and a small load run.

use std::sync::Arc;
use std::time::Duration;

use kaa_bus::{Bus, MemoryBus};
use kaa_cmp::message::AppliedRequest;
use kaa_testkit::kpc::*;

struct Output {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

async fn device(args: &[&str]) -> Output {
    device_with_input(args, None).await
}

async fn device_with_input(args: &[&str], input: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_device"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the device CLI runs");
    let mut stdin = child.stdin.take().expect("piped stdin");
    if let Some(text) = input {
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the device CLI finishes")
        .expect("the device CLI runs");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn setup() -> (Arc<dyn Bus>, kaa_examples::kpc::KpcHandle, FakeCmx, String) {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let cmx = FakeCmx::start(Arc::clone(&bus), "cmx", default_behavior()).await;
    let mut cfg = config();
    cfg.kpc.accept_any_token = true;
    let kpc = start_kpc(&cfg, Arc::clone(&bus)).await;
    let addr = kpc.local_addr().to_string();
    (bus, kpc, cmx, addr)
}

#[tokio::test]
async fn one_shot_reject_prints_the_configuration_and_reports_the_rejection() {
    let (_bus, _kpc, mut cmx, addr) = setup().await;
    let out = device(&[
        "--mqtt",
        &addr,
        "--app-version",
        APP,
        "run",
        "--token",
        "tok-1",
        "--name",
        "network",
        "--once",
        "--reject",
        "WPA2 is not supported",
    ])
    .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "connected to 127.0.0.1:{} as device-tok-1",
                addr.rsplit(':').next().unwrap()
            )
            .as_str(),
            r#"request kp1/app-v1/cmx/tok-1/config/json/network/1 {"observe":true}"#,
            r#"configuration network id=c-network (response): {"name":"network"}"#,
            "rejected network id=c-network status=400 reason=WPA2 is not supported",
        ],
        "{}",
        out.stderr
    );
    // CMX got the request, then the rejection on applied/json/network.
    let request = cmx.next().await.data;
    assert_eq!(request.resource_path, "/config/json/network");
    assert_eq!(request.endpoint_id.as_deref(), Some("ep-1"));
    let report = cmx.next().await.data;
    assert_eq!(report.resource_path, "/applied/json/network");
    assert_eq!(report.request_id, None);
    assert_eq!(
        AppliedRequest::from_json(&report.payload).unwrap(),
        AppliedRequest::rejected("c-network", 400, "WPA2 is not supported")
    );
}

#[tokio::test]
async fn one_shot_apply_and_error_exit_codes() {
    let (_bus, _kpc, mut cmx, addr) = setup().await;
    let out = device(&[
        "--mqtt",
        &addr,
        "--app-version",
        APP,
        "--qos",
        "1",
        "run",
        "--token",
        "tok-2",
        "--name",
        "default",
        "--name",
        "display",
        "--no-observe",
        "--apply",
        "--once",
    ])
    .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("request kp1/app-v1/cmx/tok-2/config/json/1 {}\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(r#"configuration default id=c-default (response): {"name":"default"}"#)
    );
    assert!(out.stdout.contains("applied default id=c-default\n"));
    assert!(out.stdout.contains("applied display id=c-display\n"));
    let mut applied = Vec::new();
    for _ in 0..4 {
        let cd = cmx.next().await.data;
        if cd.resource_path.starts_with("/applied") {
            applied.push((
                cd.resource_path.to_string(),
                AppliedRequest::from_json(&cd.payload).unwrap().into_owned(),
            ));
        }
    }
    applied.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        applied,
        [
            (
                "/applied/json".to_owned(),
                AppliedRequest::applied("c-default")
            ),
            (
                "/applied/json/display".to_owned(),
                AppliedRequest::applied("c-display")
            ),
        ]
    );

    // "No configuration": printed, nothing to report.
    let out = device(&[
        "--mqtt",
        &addr,
        "--app-version",
        APP,
        "run",
        "--token",
        "tok-3",
        "--name",
        "none",
        "--once",
        "--apply",
    ])
    .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("configuration none id= (response): null\n"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("applied"), "{}", out.stdout);
    assert_eq!(cmx.next().await.data.resource_path, "/config/json/none");
    cmx.none_within(QUIET).await;

    // An error answer: printed, exit status 1.
    let out = device(&[
        "--mqtt",
        &addr,
        "--app-version",
        APP,
        "run",
        "--token",
        "tok-3",
        "--name",
        "missing",
        "--once",
        "--apply",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("error missing config 404 No such configuration"),
        "{}",
        out.stdout
    );

    // Nothing listening: exit status 1 with the reason on stderr.
    let port = kaa_bus::test_support::free_port().unwrap();
    let out = device(&[
        "--mqtt",
        &format!("127.0.0.1:{port}"),
        "--app-version",
        APP,
        "run",
        "--token",
        "t",
        "--once",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("device: MQTT"), "{}", out.stderr);
    // Invalid arguments: exit status 2.
    assert_eq!(
        device(&["run", "--token", "t"]).await.status.code(),
        Some(2)
    );
}

#[tokio::test]
async fn load_mode_reports_counts_and_latency_percentiles() {
    let (_bus, kpc, _cmx, addr) = setup().await;
    let out = device(&[
        "--mqtt",
        &addr,
        "--app-version",
        APP,
        "load",
        "--devices",
        "20",
        "--tokens",
        "load-{}",
        "--requests",
        "3",
        "--no-progress",
    ])
    .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("devices: 20 connected, 0 failed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("requests: 60 sent, 60 ok, 0 errors, 0 timeouts"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("latency: p50 "), "{}", out.stdout);
    // Every load device said DISCONNECT at the end.
    let deadline = std::time::Instant::now() + WAIT;
    while kpc.metrics().closed_count("disconnect") < 20 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kpc.metrics().closed_count("disconnect"), 20);
}

#[tokio::test]
async fn interactive_prompt_applies_or_rejects_with_the_typed_reason() {
    let (_bus, _kpc, mut cmx, addr) = setup().await;
    // Two configurations: the first is applied ("y"), the second rejected with the
    // reason typed.
    let out = device_with_input(
        &[
            "--mqtt",
            &addr,
            "--app-version",
            APP,
            "run",
            "--token",
            "tok-1",
            "--name",
            "a",
            "--name",
            "b",
            "--once",
        ],
        Some("y\nscreen too bright\n"),
    )
    .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("apply configuration c-a of a?"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("applied a id=c-a\n"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("rejected b id=c-b status=400 reason=screen too bright\n"),
        "{}",
        out.stdout
    );
    let mut reports = Vec::new();
    for _ in 0..4 {
        let cd = cmx.next().await.data;
        if cd.resource_path.starts_with("/applied") {
            reports.push(AppliedRequest::from_json(&cd.payload).unwrap().into_owned());
        }
    }
    assert_eq!(
        reports,
        [
            AppliedRequest::applied("c-a"),
            AppliedRequest::rejected("c-b", 400, "screen too bright"),
        ]
    );
}
