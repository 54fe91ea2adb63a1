//! Two ECR replicas (same instance name, different replica IDs) on one PostgreSQL
//! database and the shared NATS (`KAA_TEST_NATS_URL`, `KAA_TEST_POSTGRES_URL`;
//! skipped visibly when either is unreachable, unless `KAA_REQUIRE_SERVICES=1`):
//!
//! - concurrent REST writes to the same keys through both replicas: every key's
//!   last committed configuration is announced (`ConfigUpdated`), and per key the
//!   announced configurations never go back to an older write (compared with the
//!   commit order, which a trigger in the test database records);
//! - a replica that died between its commit and its announcement: the other replica
//!   announces the write, within a few seconds;
//! - 6/CDTP is answered by either replica;
//! - status batches of two replicas about the same endpoints are both written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kaa_bus::test_support::NATS;
use kaa_bus::{Bus, NatsBus, NatsConfig, nats::NatsAuth};
use kaa_cdtp::{ConfigRequest, ConfigResponse, ConfigUpdated};
use kaa_examples::ecr::EcrServer;
use kaa_examples::ecr::config::EcrConfig;
use kaa_examples::ecr::core::{AppVersions, Ecr};
use kaa_examples::ecr::model::{ConfigName, now};
use kaa_examples::ecr::store::{self, Precondition};
use kaa_examples::service::parse_yaml;
use kaa_ism::avro::{Decode, Encode};
use kaa_testkit::ecr::{PgTestDb, ep_scope};
use serde_json::json;

const APP: &str = "kettleV1";

struct Replica {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(instance: &str, replica_id: &str, pg_url: &str, nats_url: &str) -> Replica {
        let config: EcrConfig = parse_yaml(
            &format!(
                "service: {{ instance: {{ name: {instance}, replica: {{ id: {replica_id} }} }} }}\n\
                 ecr:\n  http:\n    listen: 127.0.0.1:0\n  store:\n    url: \"{pg_url}\"\n  cmx:\n    service-instance-name: cmx\n\
                 auth:\n  enabled: false\n"
            ),
            "ecr replica",
        )
        .unwrap();
        let bus: Arc<dyn Bus> = Arc::new(connect(nats_url).await);
        let server = EcrServer::bind(&config, bus).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Replica {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

async fn connect(url: &str) -> NatsBus {
    let bus = NatsBus::connect_with_auth(
        &NatsConfig::new([url]).with_retry_on_initial_connect(false),
        &NatsAuth::None,
    )
    .await
    .expect("connect to NATS");
    assert!(bus.wait_connected(Duration::from_secs(5)).await);
    bus
}

/// What the test database records of every write to `configs`, in commit order per
/// key (the writes of one key are serialised by its row lock, held to the commit).
async fn record_commit_order(url: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE test_commits (seq BIGSERIAL PRIMARY KEY, endpoint_id TEXT, config_id TEXT);
             CREATE FUNCTION test_record() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO test_commits (endpoint_id, config_id) VALUES (NEW.endpoint_id, NEW.config_id); RETURN NEW; END $$;
             CREATE TRIGGER test_record AFTER INSERT OR UPDATE ON configs
             FOR EACH ROW EXECUTE FUNCTION test_record();",
        )
        .await
        .unwrap();
}

/// Per endpoint, the config IDs in commit order.
async fn commits(url: &str) -> HashMap<String, Vec<String>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for row in client
        .query(
            "SELECT endpoint_id, config_id FROM test_commits ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
    {
        out.entry(row.get(0)).or_default().push(row.get(1));
    }
    out
}

type Announcements = Arc<Mutex<Vec<(String, String)>>>;

/// Records every `ConfigUpdated` of `instance` as (endpoint ID, config ID).
async fn listen(nats_url: &str, instance: &str) -> Announcements {
    let bus = connect(nats_url).await;
    let subject = kaa_cdtp::subject::config_updated_subject(instance)
        .unwrap()
        .to_string();
    let mut sub = bus.subscribe(&subject, None).await.unwrap();
    bus.flush().await.unwrap();
    let seen: Announcements = Arc::default();
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        let _bus = bus;
        while let Some(m) = sub.next().await {
            let event = ConfigUpdated::decode(&m.payload).expect("a ConfigUpdated");
            out.lock()
                .unwrap()
                .push((event.endpoint_id.to_string(), event.config_id.to_string()));
        }
    });
    seen
}

async fn setup(test: &str) -> Option<(PgTestDb, String, String)> {
    let nats_url = NATS.require(test)?;
    let db = PgTestDb::create(test).await?;
    let instance = format!(
        "ecr-rep-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    Some((db, nats_url, instance))
}

/// Waits until `check` holds on the announcements, at most `within`.
async fn wait_for(
    seen: &Announcements,
    within: Duration,
    check: impl Fn(&[(String, String)]) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check(&seen.lock().unwrap()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_announce_every_write_in_commit_order() {
    let test = "ecr::replicas::replicas_announce_every_write_in_commit_order";
    let Some((db, nats_url, instance)) = setup(test).await else {
        return;
    };
    let a = Replica::start(&instance, "ecr-a", &db.url, &nats_url).await;
    let b = Replica::start(&instance, "ecr-b", &db.url, &nats_url).await;
    record_commit_order(&db.url).await;
    let seen = listen(&nats_url, &instance).await;

    // 4 keys; through each replica 4 concurrent writers, 15 writes each, to the
    // keys in turn: every write has content of its own, so a config ID of its own.
    const KEYS: usize = 4;
    let http = reqwest::Client::new();
    let mut writers = Vec::new();
    for (r, addr) in [a.addr, b.addr].into_iter().enumerate() {
        for w in 0..4 {
            let http = http.clone();
            writers.push(tokio::spawn(async move {
                for n in 0..15 {
                    let key = (w + n) % KEYS;
                    let url =
                        format!("http://{addr}/api/v1/endpoints/kettle-{key}/app-versions/{APP}");
                    let response = http
                        .put(&url)
                        .json(&json!({"replica": r, "writer": w, "n": n}))
                        .send()
                        .await
                        .expect("PUT");
                    assert!(response.status().is_success(), "{}", response.status());
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let committed = commits(&db.url).await;
    assert_eq!(committed.len(), KEYS);
    assert_eq!(committed.values().map(Vec::len).sum::<usize>(), 2 * 4 * 15);
    let last: HashMap<&str, &str> = committed
        .iter()
        .map(|(k, ids)| (k.as_str(), ids.last().unwrap().as_str()))
        .collect();
    // At least once: every key's last commit is announced.
    let all_announced = wait_for(&seen, Duration::from_secs(10), |seen| {
        last.iter()
            .all(|(k, id)| seen.iter().any(|(e, c)| e == k && c == id))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();

    // Never older after newer: per key, the announced commits' ranks never go down.
    let mut inversions = Vec::new();
    for (key, ids) in &committed {
        let rank: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut highest: Option<(usize, &str)> = None;
        for (_, id) in seen.iter().filter(|(e, _)| e == key) {
            let r = rank[id.as_str()];
            match highest {
                Some((h, hid)) if r < h => inversions.push(format!(
                    "{key}: write #{r} ({id}) announced after #{h} ({hid})"
                )),
                Some((h, _)) if r <= h => {}
                _ => highest = Some((r, id.as_str())),
            }
        }
    }
    eprintln!(
        "{} commits, {} announcements, {} inversions",
        committed.values().map(Vec::len).sum::<usize>(),
        seen.len(),
        inversions.len()
    );
    assert!(
        inversions.is_empty(),
        "older configurations announced after newer ones:\n{}",
        inversions.join("\n")
    );
    assert!(all_announced, "a key's last commit was never announced");
    a.stop().await;
    b.stop().await;
}

/// A replica that committed a write and died before announcing it: the write waits in
/// the outbox, and the live replica announces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_of_a_replica_that_died_before_announcing_is_announced_by_another() {
    let test =
        "ecr::replicas::the_write_of_a_replica_that_died_before_announcing_is_announced_by_another";
    let Some((db, nats_url, instance)) = setup(test).await else {
        return;
    };
    let live = Replica::start(&instance, "ecr-live", &db.url, &nats_url).await;
    let seen = listen(&nats_url, &instance).await;

    // The dying replica: its store writes the outbox, and it has no announcer (as
    // if killed right after the commit).
    let store = store::open(&db.url).await.unwrap();
    assert!(store.enable_durable_announcements());
    let dead = Ecr::new(store, AppVersions::open(), None);
    let committed_at = Instant::now();
    let outcome = dead
        .put(
            &ep_scope("kettle-9", APP),
            &ConfigName::default_name(),
            &json!({"sampling": 42}),
            &Precondition::None,
            now(),
        )
        .await
        .unwrap();
    let id = outcome.config.config_id;
    assert!(
        wait_for(&seen, Duration::from_secs(10), |seen| seen
            .iter()
            .any(|(e, c)| e == "kettle-9" && *c == id))
        .await,
        "the dead replica's write was never announced"
    );
    let took = committed_at.elapsed();
    eprintln!("announced by the live replica {took:?} after the commit");
    assert!(took < Duration::from_secs(5), "{took:?}");
    live.stop().await;
}

/// 6/CDTP is answered by either replica: each answers alone, with what the other
/// wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_replica_answers_cdtp() {
    let test = "ecr::replicas::either_replica_answers_cdtp";
    let Some((db, nats_url, instance)) = setup(test).await else {
        return;
    };
    let client = connect(&nats_url).await;
    let subject = format!("kaa.v1.service.{instance}.cdtp.request");
    let ask = |client: NatsBus, subject: String| async move {
        let datum = ConfigRequest {
            correlation_id: "c".into(),
            timestamp: now().0,
            timeout: 3000,
            app_version_name: APP.into(),
            endpoint_id: "kettle-1".into(),
            config_id: None,
            config_name: None,
        }
        .to_vec();
        let reply = client
            .request(&subject, Bytes::from(datum), Duration::from_secs(5))
            .await
            .expect("answered");
        ConfigResponse::decode(&reply.payload)
            .unwrap()
            .config_id
            .map(|c| c.to_string())
    };
    let http = reqwest::Client::new();
    for (writer, answerer) in [("ecr-a", "ecr-b"), ("ecr-b", "ecr-a")] {
        let w = Replica::start(&instance, writer, &db.url, &nats_url).await;
        let response = http
            .put(format!(
                "http://{}/api/v1/endpoints/kettle-1/app-versions/{APP}",
                w.addr
            ))
            .json(&json!({"by": writer}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let etag = response.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_owned();
        w.stop().await;
        let r = Replica::start(&instance, answerer, &db.url, &nats_url).await;
        assert_eq!(
            ask(client.clone(), subject.clone()).await.as_deref(),
            Some(etag.as_str()),
            "{answerer} answers with what {writer} wrote"
        );
        r.stop().await;
    }
}

/// Two replicas write status batches about the same keys at the same time: one the
/// dispatches of its 6/CDTP answers, the other the devices' applied reports, each
/// in the order its events came (here: one ascending, one descending). Every batch
/// is written (before batches were sorted by key, PostgreSQL picked one of two
/// such batches as a deadlock victim and its 2,048 events were dropped, seen in the
/// 50,000-device fan-out over 3 ECR replicas), and the history holds every report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_batches_of_two_replicas_about_the_same_endpoints_do_not_deadlock() {
    use kaa_examples::ecr::model::StatusEvent;
    use kaa_examples::ecr::store::StatusWrite;
    let test = "status_batches_of_two_replicas_about_the_same_endpoints_do_not_deadlock";
    let Some(db) = PgTestDb::create(test).await else {
        return;
    };
    let a = store::open(&db.url).await.unwrap();
    let b = store::open(&db.url).await.unwrap();
    const ENDPOINTS: usize = 2_000;
    const ROUNDS: usize = 6;
    let (app_version, name) = (
        kaa_testkit::ecr::app(APP),
        ConfigName::new("default").unwrap(),
    );
    let batch = |round: usize, event: StatusEvent, descending: bool| -> Vec<StatusWrite> {
        let mut ids: Vec<usize> = (0..ENDPOINTS).collect();
        if descending {
            ids.reverse();
        }
        ids.into_iter()
            .map(|i| {
                StatusWrite::new(
                    &kaa_testkit::ecr::ep(&format!("dev-{i:05}")),
                    &app_version,
                    &name,
                    &format!("cfg-{round}"),
                    &event,
                    kaa_ism::UnixMillis(1_000 + round as i64),
                )
            })
            .collect()
    };
    let applied = StatusEvent::Confirmed {
        status_code: 200,
        reason_phrase: None,
    };
    for round in 0..ROUNDS {
        let dispatches = batch(round, StatusEvent::Dispatched, false);
        let reports = batch(round, applied.clone(), true);
        let (da, rb) = tokio::join!(a.record_statuses(&dispatches), b.record_statuses(&reports));
        da.unwrap_or_else(|e| panic!("round {round}: the dispatches were not written: {e}"));
        rb.unwrap_or_else(|e| panic!("round {round}: the applied reports were not written: {e}"));
    }
    // Every endpoint's last round is recorded as applied, whichever batch came last.
    let counts = a.status_counts(&app_version, &name).await.unwrap();
    let applied_last: u64 = counts
        .iter()
        .filter(|c| c.config_id == format!("cfg-{}", ROUNDS - 1))
        .map(|c| c.applied)
        .sum();
    assert_eq!(applied_last, ENDPOINTS as u64, "{counts:?}");
}
