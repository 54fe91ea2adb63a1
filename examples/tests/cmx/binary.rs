//! The `cmx` binary as a process: an invalid configuration exits non-zero with a
//! message naming the problem; a valid one serves over NATS and stops cleanly on
//! SIGTERM (NATS test skipped visibly when the server is unreachable).

use std::process::Stdio;
use std::time::Duration;

use kaa_bus::test_support::NATS;
use kaa_testkit::cmx::{APP_V1, FakeKpc, FakeProvider, Names, nats};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The `cmx` binary (built on first use).
fn bin() -> std::path::PathBuf {
    kaa_testkit::service_binary("cmx")
}

/// Runs the binary with `args`; returns (exit code, stderr).
async fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(bin())
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("cmx exits by itself on a bad configuration")
    .expect("run cmx");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn invalid_configuration_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "bad-name.yaml",
            "service:\n  instance:\n    name: cmx.eu\n",
            "service.instance.name: \"cmx.eu\" cannot be a NATS subject token",
        ),
        (
            "ttl.yaml",
            "kaa:\n  cmx:\n    endpoint-state-persistence:\n      ttl: 0\n",
            "kaa.cmx.endpoint-state-persistence.ttl must be at least 1",
        ),
        (
            "typo.yaml",
            "kaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        nmae: ecr\n",
            "line 5 column 9: kaa.cmx.configuration-data-provider.service-instance: unknown field `nmae`",
        ),
        (
            "no-nats.yaml",
            "cmx:\n  bus: nats\n",
            "cmx.bus is nats but there is no nats section",
        ),
        (
            "limits.yaml",
            "cmx:\n  limits:\n    max-pending-requests: 0\n",
            "cmx.limits.max-pending-requests must be greater than 0",
        ),
        ("not-yaml.yaml", "cmx: [unclosed\n", "line 2"),
    ];
    for (file, text, expected) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = run(&[path.to_str().unwrap()]).await;
        assert_eq!(code, Some(2), "{file}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{file}: expected {expected:?} in {stderr:?}"
        );
        assert!(
            stderr.contains(file),
            "{file}: the file is named in {stderr:?}"
        );
        assert!(stderr.starts_with("cmx: "), "{stderr:?}");
    }

    let missing = dir.path().join("missing.yaml");
    let (code, stderr) = run(&["--config", missing.to_str().unwrap()]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read configuration file"),
        "{stderr}"
    );

    let (code, stderr) = run(&[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.to_lowercase().contains("usage: cmx"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_over_nats_and_stops_on_sigterm() {
    let test = "cmx::binary::binary_serves_over_nats_and_stops_on_sigterm";
    let Some(url) = NATS.require(test) else {
        return;
    };
    let names = Names::unique(test);
    let fakes = nats(&url).await;
    let mut provider = FakeProvider::start(fakes.clone(), &names).await;
    let mut kpc = FakeKpc::start(fakes, &names).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmx.yaml");
    std::fs::write(
        &path,
        names.config_yaml(Some(&url), "  http:\n    listen: 127.0.0.1:0\n"),
    )
    .unwrap();

    let mut child = tokio::process::Command::new(bin())
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("cmx starts")
        .unwrap()
        .expect("a start-up line");
    let addr = line
        .strip_prefix("cmx running; health and metrics on http://")
        .unwrap_or_else(|| panic!("unexpected start-up line {line:?}"))
        .to_owned();
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200);

    // It serves a device request.
    let ep = names.endpoint(1);
    kpc.send(&ep, APP_V1, "/config/json", Some(1), b"{}").await;
    let received = provider.next_request().await;

    // SIGTERM with that request in flight: it is finished, then the process exits 0.
    let pid = child.id().expect("running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    provider.answer_config(&received, "c1", r#"{"v":1}"#).await;
    let answer = kpc.next().await;
    assert_eq!(
        (answer.message.status_code, answer.message.request_id),
        (200, Some(1))
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("cmx exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
