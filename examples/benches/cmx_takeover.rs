//! Take-over time: from SIGKILL of a CMX replica to the next push reaching each of
//! its endpoints (issue #15).
//!
//! ```text
//! cargo bench -p kaa-examples --bench cmx_takeover
//! TAKEOVER_EXPIRY_MS=1500,5000 TAKEOVER_ENDPOINTS=5000 cargo bench -p kaa-examples --bench cmx_takeover
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TAKEOVER_ENDPOINTS` | connected endpoints, every one observing `/config/json` | 2000 |
//! | `TAKEOVER_REPLICAS` | CMX replicas (`cmx` binaries, one SIGKILLed) | 2 |
//! | `TAKEOVER_EXPIRY_MS` | `cmx.replicas.expiry-ms` values to run, comma-separated | `5000` (the default) |
//! | `TAKEOVER_HEARTBEAT_MS` | `cmx.replicas.heartbeat-ms` | a fifth of the expiry (1000 for 5000, the defaults) |
//!
//! A private `nats-server` with JetStream, `TAKEOVER_REPLICAS` `cmx` processes (the
//! release binary, replicas on), and in this process a fake communication service
//! (answers the sessions exchange with every endpoint, records every
//! `ExtensionData`) and a fake provider (answers every 6/CDTP request with the
//! endpoint's current configuration). Every endpoint is connected and gets its
//! first configuration; then, at one instant, replica 1 is SIGKILLed and a new
//! configuration of every endpoint is announced (`ConfigUpdated`). Reported: for
//! the killed replica's endpoints and for the others, the time from the SIGKILL
//! to the push of the new configuration reaching the communication service (p50,
//! p99, max), and how many pushes of it each endpoint got. The killed replica's
//! endpoints wait for its membership key to expire (`expiry-ms`), then for the
//! new owner's sessions exchange and fetch; the others are pushed at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaa_bus::test_support::PrivateNatsServer;
use kaa_cmp::engine::rendezvous_owner;
use kaa_testkit::bench::{env_or, percentile};
use kaa_testkit::cmx::{APP_V1, FakeKpc, FakeProvider, Names, Session, nats};
use kaa_testkit::fault::ServiceProcess;

/// The configuration the provider answers, per endpoint: (config ID, content).
type Current = Arc<Mutex<HashMap<String, (String, String)>>>;

/// A push of `config_id` to `endpoint` seen at `at`.
type Push = (String, String, Instant);

struct Row {
    expiry_ms: u64,
    killed: Vec<Duration>,
    others: Vec<Duration>,
    killed_missing: usize,
    others_missing: usize,
    pushes_per_endpoint: f64,
}

fn yaml(names: &Names, url: &str, replica: &str, heartbeat_ms: u64, expiry_ms: u64) -> String {
    let mut n = names.clone();
    n.replica = replica.to_owned();
    n.config_yaml(
        Some(url),
        &format!(
            "  http:\n    listen: 127.0.0.1:0\n  replicas:\n    enabled: true\n    \
             heartbeat-ms: {heartbeat_ms}\n    expiry-ms: {expiry_ms}\n"
        ),
    )
}

async fn run(
    url: &str,
    dir: &Path,
    endpoints: usize,
    replicas: usize,
    heartbeat_ms: u64,
    expiry_ms: u64,
) -> Row {
    let names = Names::unique("takeover");
    let ids: Vec<String> = (0..endpoints as u32).map(|n| names.endpoint(n)).collect();
    let current: Current = Arc::new(Mutex::new(
        ids.iter()
            .map(|e| (e.clone(), (format!("{e}-v1"), r#"{"v":1}"#.to_owned())))
            .collect(),
    ));
    let bus = nats(url).await;

    // The provider: every request answered with the endpoint's current configuration.
    let mut provider = FakeProvider::start(Arc::clone(&bus), &names).await;
    let answers = Arc::clone(&current);
    let provider_task = tokio::spawn(async move {
        while let Some(r) = provider.next_request_raw().await {
            let found = answers
                .lock()
                .unwrap()
                .get(&*r.request.endpoint_id)
                .cloned();
            if let Some((id, content)) = found {
                provider.answer_config(&r, &id, &content).await;
            }
        }
    });

    // The communication service: every endpoint in session, observing.
    let mut kpc = FakeKpc::start(Arc::clone(&bus), &names).await;
    let sessions: Arc<Mutex<Vec<Session>>> = Arc::new(Mutex::new(
        ids.iter()
            .map(|e| {
                (
                    e.clone(),
                    APP_V1.to_owned(),
                    vec!["/config/json".to_owned()],
                )
            })
            .collect(),
    ));
    kpc.serve_sessions(Arc::clone(&sessions)).await;

    let replica_ids: Vec<String> = (1..=replicas)
        .map(|i| format!("{}-r{i}", names.cmx))
        .collect();
    let mut processes: Vec<ServiceProcess> = replica_ids
        .iter()
        .enumerate()
        .map(|(i, r)| {
            ServiceProcess::start_unit(
                "cmx",
                &format!("cmx-{expiry_ms}-{}", i + 1),
                dir,
                &yaml(&names, url, r, heartbeat_ms, expiry_ms),
                "cmx running",
            )
        })
        .collect();
    // Every replica sees every other before the endpoints connect.
    tokio::time::sleep(Duration::from_millis(2 * heartbeat_ms + 500)).await;

    let pushes: Arc<Mutex<Vec<Push>>> = Arc::default();
    let connected: Vec<(&str, &str)> = ids.iter().map(|e| (e.as_str(), APP_V1)).collect();
    for chunk in connected.chunks(1_000) {
        kpc.connected(chunk).await;
    }
    let record = Arc::clone(&pushes);
    let kpc_task = tokio::spawn(async move {
        while let Some(d) = kpc.next_within(Duration::from_secs(3600)).await {
            if d.message.request_id.is_some() || d.message.status_code != 200 {
                continue;
            }
            let Some(config_id) = d
                .json()
                .get("configId")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
            else {
                continue;
            };
            let endpoint = d.message.endpoint_id.as_deref().unwrap_or("").to_owned();
            record
                .lock()
                .unwrap()
                .push((endpoint, config_id, Instant::now()));
        }
    });
    // Every endpoint has its first configuration.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = {
            let p = pushes.lock().unwrap();
            let mut seen: Vec<&str> = p.iter().map(|(e, _, _)| e.as_str()).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len()
        };
        if have >= endpoints {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {endpoints} endpoints got their first configuration"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Which endpoints the killed replica (r1) owns.
    let members: Vec<&str> = replica_ids.iter().map(String::as_str).collect();
    let owned_by_killed: std::collections::HashSet<&str> = ids
        .iter()
        .filter(|e| rendezvous_owner(&members, e) == Some(members[0]))
        .map(String::as_str)
        .collect();

    // SIGKILL replica 1 and announce a new configuration of every endpoint.
    {
        let mut c = current.lock().unwrap();
        for e in &ids {
            c.insert(e.clone(), (format!("{e}-v2"), r#"{"v":2}"#.to_owned()));
        }
    }
    let killed_at = Instant::now();
    processes[0].stop("KILL");
    let announce = FakeAnnouncer {
        bus: Arc::clone(&bus),
        names: names.clone(),
    };
    for e in &ids {
        announce.updated(e, &format!("{e}-v2")).await;
    }

    // Wait until every endpoint has the new configuration (or the expiry plus 20 s).
    let deadline = killed_at + Duration::from_millis(expiry_ms) + Duration::from_secs(20);
    loop {
        let done = {
            let p = pushes.lock().unwrap();
            let mut seen: Vec<&str> = p
                .iter()
                .filter(|(_, id, at)| *at >= killed_at && id.ends_with("-v2"))
                .map(|(e, _, _)| e.as_str())
                .collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len()
        };
        if done >= endpoints || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Late duplicates, if any.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let p = pushes.lock().unwrap().clone();
    let mut first: HashMap<&str, Duration> = HashMap::new();
    let mut count = 0usize;
    for (e, id, at) in &p {
        if *at >= killed_at && id.ends_with("-v2") {
            count += 1;
            first
                .entry(e.as_str())
                .or_insert_with(|| at.duration_since(killed_at));
        }
    }
    let (mut killed, mut others) = (Vec::new(), Vec::new());
    let (mut killed_missing, mut others_missing) = (0, 0);
    for e in &ids {
        let mine = owned_by_killed.contains(e.as_str());
        match (first.get(e.as_str()), mine) {
            (Some(d), true) => killed.push(*d),
            (Some(d), false) => others.push(*d),
            (None, true) => killed_missing += 1,
            (None, false) => others_missing += 1,
        }
    }
    killed.sort();
    others.sort();
    kpc_task.abort();
    provider_task.abort();
    for mut process in processes {
        process.stop("TERM");
    }
    Row {
        expiry_ms,
        killed,
        others,
        killed_missing,
        others_missing,
        pushes_per_endpoint: count as f64 / first.len().max(1) as f64,
    }
}

/// Announces `endpoint.config.updated` as the provider does.
struct FakeAnnouncer {
    bus: Arc<dyn kaa_bus::Bus>,
    names: Names,
}

impl FakeAnnouncer {
    async fn updated(&self, endpoint: &str, config_id: &str) {
        use kaa_ism::avro::Encode;
        let event = kaa_cdtp::ConfigUpdated {
            correlation_id: format!("upd-{config_id}").into(),
            timestamp: kaa_service::now().0,
            timeout: 0,
            app_version_name: APP_V1.into(),
            endpoint_id: endpoint.into(),
            config_id: config_id.into(),
            content_type: kaa_cdtp::APPLICATION_JSON.into(),
            content: br#"{"v":2}"#.as_slice().into(),
            originator_replica_id: Some(format!("{}-r1", self.names.provider).into()),
            config_name: None,
        };
        let subject = kaa_cdtp::subject::config_updated_subject(&self.names.provider)
            .expect("subject")
            .to_string();
        self.bus
            .publish(&subject, bytes::Bytes::from(event.to_vec()))
            .await
            .expect("published");
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let endpoints: usize = env_or("TAKEOVER_ENDPOINTS", 2_000);
    let replicas: usize = env_or("TAKEOVER_REPLICAS", 2).max(2);
    let heartbeat: Option<u64> = std::env::var("TAKEOVER_HEARTBEAT_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    let expiries: Vec<u64> = std::env::var("TAKEOVER_EXPIRY_MS")
        .unwrap_or_else(|_| "5000".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    // Built before anything is timed.
    let _ = kaa_testkit::service_binary("cmx");
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = dir.path().join("jetstream");
    let store = store.to_string_lossy().into_owned();
    let server =
        PrivateNatsServer::start_with_args("cmx_takeover bench", &["-js", "--sd", store.as_str()])
            .expect("nats-server binary");
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "cmx_takeover: {endpoints} endpoints, {replicas} CMX replicas (cmx binaries); replica 1 \
         SIGKILLed as a new configuration of every endpoint is announced"
    );
    println!(
        "| expiry-ms (heartbeat-ms) | killed replica's endpoints | p50 ms | p99 ms | max ms | missing | \
         other endpoints | p50 ms | p99 ms | max ms | missing | pushes of the new config per endpoint |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for expiry_ms in expiries {
        let heartbeat_ms = heartbeat.unwrap_or((expiry_ms / 5).max(100));
        let row = runtime.block_on(run(
            &url,
            dir.path(),
            endpoints,
            replicas,
            heartbeat_ms,
            expiry_ms,
        ));
        println!(
            "| {} ({heartbeat_ms}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            row.expiry_ms,
            row.killed.len(),
            ms(percentile(&row.killed, 0.5)),
            ms(percentile(&row.killed, 0.99)),
            ms(row.killed.last().copied().unwrap_or_default()),
            row.killed_missing,
            row.others.len(),
            ms(percentile(&row.others, 0.5)),
            ms(percentile(&row.others, 0.99)),
            ms(row.others.last().copied().unwrap_or_default()),
            row.others_missing,
            row.pushes_per_endpoint,
        );
    }
}
