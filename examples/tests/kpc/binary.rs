//! The `kpc` binary: starts from a YAML file on the in-memory bus, answers MQTT,
//! stops on SIGTERM with status 0; an invalid configuration exits with status 2.

use std::process::Stdio;
use std::time::Duration;

use kaa_kp::ErrorResponse;
use kaa_testkit::kpc::*;
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn kpc_binary_serves_mqtt_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpc.yaml");
    std::fs::write(
        &path,
        "kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n  endpoint-tokens:\n    tok-1: ep-1\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new(kaa_testkit::service_binary("kpc"))
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("kpc starts")
        .unwrap()
        .expect("a first line");
    let addr = first
        .strip_prefix("kpc listening on mqtt://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();

    // No extension runs here: an unknown token is still answered by KPC itself.
    let mut dev = Client::connect(addr, "dev").await;
    let request = topic("nobody", "config/json/1");
    dev.publish(&request, QoS::AtMostOnce, b"{}").await;
    let r = dev.recv().await;
    assert_eq!(r.topic, format!("{request}/error"));
    assert_eq!(
        ErrorResponse::from_json(&r.payload).unwrap().status_code,
        401
    );

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("kpc stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    dev.closed().await;
}

#[tokio::test]
async fn kpc_binary_rejects_an_invalid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kpc.yaml");
    std::fs::write(
        &path,
        "kpc:\n  mqtt:\n    listen: 127.0.0.1:0\n    auth: { enabled: true }\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(kaa_testkit::service_binary("kpc"))
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kpc.mqtt.auth.users is empty"), "{stderr}");
    let out = tokio::process::Command::new(kaa_testkit::service_binary("kpc"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
