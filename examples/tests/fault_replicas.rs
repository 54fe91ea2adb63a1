//! Replicas of every service, faults one at a time (issue 15): the real `ecr`,
//! `cmx` and `kpc` binaries, two replicas of each (a third CMX replica joins during
//! the run), on a private 3-node NATS cluster with JetStream and a private
//! PostgreSQL cluster (all on ephemeral ports, never the machine's shared servers).
//!
//! - **ECR**: two replicas of one instance on one PostgreSQL database (announcements
//!   through the outbox); the writer alternates its PUTs between their REST APIs
//!   (each kind of write through each replica in turn, one PUT at a time).
//! - **CMX**: two replicas of one instance with `cmx.replicas.enabled` (membership in
//!   a JetStream key-value bucket with 3 stream replicas, so it survives the loss of
//!   a node; default heartbeat 1 s, expiry 5 s).
//! - **KPC**: two replicas of one instance (replica IDs `-1`, `-2`), each on its own
//!   MQTT port. 1,000 devices (`KAA_FAULT_DEVICES`) are spread round robin over the
//!   two; a device whose connection drops (or whose connection attempt fails)
//!   reconnects to the other one, as a device behind a load balancer does.
//! - Every service is given the URLs of all three NATS nodes (async-nats picks one
//!   at random); which node a CMX replica is connected to is read from the nodes'
//!   `/connz` monitoring endpoint when the fault needs it.
//!
//! Faults, in order (`KAA_FAULTS=a,b,…` picks some), on the same running stack:
//!
//! - `cmx-kill`: SIGKILL CMX replica 1, wait 6 s (longer than the membership
//!   expiry, so its endpoints move to replica 2), start it again (they move back);
//! - `cmx-add`: start a third CMX replica and keep it (endpoints rebalance over 3);
//! - `kpc-kill`: SIGKILL KPC replica 1; its devices reconnect to replica 2; replica 1
//!   is started again after 1 s, but the moved devices stay on replica 2 (nothing
//!   moves them back), so from here on replica 2 holds every device;
//! - `ecr-kill`: SIGKILL ECR replica 2 (the writer's PUTs through it fail meanwhile),
//!   start it again after 1 s;
//! - `nats-node-kill`: SIGKILL the NATS node CMX replica 1 is connected to (read
//!   from `/connz`), start it again after 3 s (the cluster re-forms).
//!
//! After each fault (the writer goes on for `KAA_FAULT_AFTER_MS`, default 300 ms,
//! after the restart, then pauses):
//!
//! - **convergence**: within 30 s every device is connected and its last received
//!   configuration ID, per name, equals what ECR serves it (asked over 6/CDTP);
//! - **no acknowledged write lost** (as in `fault_stack`);
//! - **never back to an older write**: per device and name, the `seq` in the
//!   content of the configurations it received never decreases
//!   ([`Fleet::regressions`] says why `seq` order is ECR's write order here);
//! - **duplicates** (the same config ID delivered twice in a row to a device for a
//!   name) are counted and reported per fault, not failed on.
//!
//! What it found (repaired in `kaa_cmp::engine`, *Deliveries overtaking each other*):
//! at `kpc-kill` a few of the 500 moved devices (1 to 16 per run, 3 runs of 4)
//! received the newer configuration by push and then the older one as the answer
//! to their reconnect request, and in one run 2 stayed on the older one for 30 s.
//! The owning CMX replica took the new session's `connected` event after the
//! session's first request (handed over by another CMX replica, or just faster)
//! and dropped the request's KPC replica subject, so the next push went on KPC's
//! instance-wide subject and overtook the answer queued on the replica subject.
//! A `connected` event from the replica the affinity names, or stamped before the
//! request that set it, now keeps it (`cargo test -p kaa-cmp --test engine
//! a_connected_event_of_the_requests_session_keeps_its_affinity` fails without
//! it). A timestamp rule alone was not enough: KPC stamps the `connected` event
//! and the first request in the same millisecond.
//!
//!
//! At `nats-node-kill` it found three more (repairs in `kaa_cmx::membership`,
//! `kaa_kpc::bus` and `kaa_cmp::engine`): the membership bucket's stream stalled
//! for 8 s and every CMX replica expired every member at once (members now expire
//! against the replica's own heartbeat as its watch delivers it); a push sent to
//! KPC during its own reconnect was lost and nothing re-sent it (a KPC replica
//! now publishes `connected` again for its sessions after a reconnect); and the
//! sessions CMX re-adopted after its reconnect reset their KPC replica subject,
//! letting a push overtake another (sessions listed by the replica the affinity
//! names now keep it). At `cmx-kill` (and once at `cmx-add`) the replica giving
//! endpoints up and the one taking them both pushed to a device and the older
//! push arrived last: once in 15 runs at first, then in 2 of 4 CI runs on
//! 2026-12-06, with and without load, and after a fixed 1 s hold on the joining
//! replica; for a while an older delivery at those two faults was reported as a
//! known gap instead of failing. Now the hand-over is fenced (the joining
//! replica delivers nothing until every other member confirms, in its key, that
//! it applied the new member list and flushed what it sent before; "Replicas"
//! in `kaa_cmp::engine`), and an older delivery fails the test at every fault
//! again. Each fault's line counts the CMX replicas' fences lifted by
//! confirmation and at their deadline (from their logs).
//!
//! One line per fault goes to stderr (run with `--nocapture`). On failure the
//! services' logs are kept (the panic names the directory) and their tails printed.
//! Without `nats-server` or the PostgreSQL server binaries the test prints
//! `SKIPPED: …` and passes, unless `KAA_REQUIRE_SERVICES=1`. `KAA_FAULT_SERVICE_LOG`
//! sets the services' `RUST_LOG`.

use std::sync::Arc;
use std::time::Duration;

use kaa_bus::test_support::{PrivateNatsCluster, free_port};
use kaa_bus::{Bus, NatsBus, NatsConfig};
use kaa_testkit::fault::{
    Fleet, Key, PrivatePostgres, Rest, ServiceProcess, Window, Writer, converge, converged_in,
    fail_keeping_logs, lost_writes, nats_node_of,
};
use serde_json::json;
use tokio::time::Instant;

/// How long every device has to converge after a fault.
const CONVERGE: Duration = Duration::from_secs(30);
/// Load before a fault.
const BEFORE: Duration = Duration::from_secs(2);
/// How long a killed service stays down (CMX: past the membership expiry).
const DOWN: Duration = Duration::from_secs(1);
const CMX_DOWN: Duration = Duration::from_secs(6);
const NATS_DOWN: Duration = Duration::from_secs(3);
const AFTER_DEFAULT_MS: usize = 300;

/// The faults, in the order they run.
const FAULTS: &[&str] = &[
    "cmx-kill",
    "cmx-add",
    "kpc-kill",
    "ecr-kill",
    "nats-node-kill",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Names {
    ecr: String,
    cmx: String,
    kpc: String,
}

struct Stack {
    nats: PrivateNatsCluster,
    pg: PrivatePostgres,
    ecr: Vec<ServiceProcess>,
    cmx: Vec<ServiceProcess>,
    kpc: Vec<ServiceProcess>,
    names: Names,
    urls: String,
    dir: Option<tempfile::TempDir>,
}

impl Stack {
    fn dir(&self) -> &std::path::Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    fn cmx_yaml(&self, replica: usize) -> String {
        let Names { ecr, cmx, kpc } = &self.names;
        let urls = &self.urls;
        format!(
            "service:\n  instance:\n    name: {cmx}\n    replica:\n      id: {cmx}-{replica}\n\
             nats:\n  urls: [{urls}]\n\
             kaa:\n  cmx:\n    configuration-data-provider:\n      service-instance:\n        name: {ecr}\n\
             \x20   communication-service:\n      service-instance:\n        name: {kpc}\n\
             cmx:\n  bus: nats\n  cdtp-timeout-ms: 3000\n  shutdown-grace-ms: 2000\n\
             \x20 replicas:\n    enabled: true\n    stream-replicas: 3\n"
        )
    }

    /// The CMX replicas' hand-over fences so far, from their logs: (lifted
    /// because every member confirmed, lifted at the deadline).
    fn fences(&self) -> (usize, usize) {
        let logs: String = self.cmx.iter().map(ServiceProcess::log_text).collect();
        (
            logs.matches("hand-over fence lifted: every member confirmed")
                .count(),
            logs.matches("hand-over fence lifted: at its deadline")
                .count(),
        )
    }

    fn dump_logs(&self) {
        for s in self.ecr.iter().chain(&self.cmx).chain(&self.kpc) {
            eprintln!("--- {}.log (last lines) ---\n{}", s.name, s.log_tail(30));
        }
        eprintln!("--- postgres log ---\n{}", self.pg.log_tail());
        for i in 0..self.nats.len() {
            eprintln!(
                "--- nats node {i} log (last lines) ---\n{}",
                self.nats.log_tail(i, 10)
            );
        }
    }

    /// Injects `fault` and brings the stack back (see the module docs); returns
    /// what it did.
    async fn inject(&mut self, fault: &str) -> String {
        match fault {
            "cmx-kill" => {
                let s = &mut self.cmx[0];
                tokio::task::block_in_place(|| s.stop("KILL"));
                tokio::time::sleep(CMX_DOWN).await;
                tokio::task::block_in_place(|| s.spawn());
                format!("SIGKILLed {}, down {CMX_DOWN:?}", s.name)
            }
            "cmx-add" => {
                let replica = self.cmx.len() + 1;
                let yaml = self.cmx_yaml(replica);
                let unit = format!("cmx-{replica}");
                let dir = self.dir().to_owned();
                let s = tokio::task::block_in_place(|| {
                    ServiceProcess::start_unit("cmx", &unit, &dir, &yaml, "cmx running")
                });
                self.cmx.push(s);
                format!("started {unit}")
            }
            "kpc-kill" | "ecr-kill" => {
                let s = if fault == "kpc-kill" {
                    &mut self.kpc[0]
                } else {
                    &mut self.ecr[1]
                };
                tokio::task::block_in_place(|| s.stop("KILL"));
                tokio::time::sleep(DOWN).await;
                tokio::task::block_in_place(|| s.spawn());
                format!("SIGKILLed {}, down {DOWN:?}", s.name)
            }
            "nats-node-kill" => {
                let monitors: Vec<String> = (0..self.nats.len())
                    .map(|i| self.nats.monitor_url(i))
                    .collect();
                let connection = format!("{}-1", self.names.cmx);
                let node = nats_node_of(&monitors, &connection)
                    .await
                    .unwrap_or_else(|| panic!("no NATS node lists the connection {connection}"));
                self.nats.kill(node);
                tokio::time::sleep(NATS_DOWN).await;
                let nats = &mut self.nats;
                tokio::task::block_in_place(|| nats.restart(node)).expect("NATS node restarts");
                format!(
                    "SIGKILLed NATS node n{node} ({connection}'s), down {NATS_DOWN:?} + re-forming"
                )
            }
            other => panic!("unknown fault {other} (known: {FAULTS:?})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behave_as_one_through_each_fault() {
    let test = "fault_replicas::replicas_behave_as_one_through_each_fault";
    let Some(nats) = tokio::task::block_in_place(|| PrivateNatsCluster::start(test)) else {
        return;
    };
    let Some(pg) = tokio::task::block_in_place(|| PrivatePostgres::start(test)) else {
        return;
    };
    let devices = env_usize("KAA_FAULT_DEVICES", 1000);
    let write_every = Duration::from_millis(env_usize("KAA_FAULT_WRITE_MS", 200) as u64);
    let after = Duration::from_millis(env_usize("KAA_FAULT_AFTER_MS", AFTER_DEFAULT_MS) as u64);
    let faults: Vec<String> = match std::env::var("KAA_FAULTS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|f| f.trim().to_owned()).collect(),
        _ => FAULTS.iter().map(|f| (*f).to_owned()).collect(),
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let urls = nats
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let tag = format!("rep{}", std::process::id());
    let names = Names {
        ecr: format!("ecr-{tag}"),
        cmx: format!("cmx-{tag}"),
        kpc: format!("kpc-{tag}"),
    };
    let http_ports = [free_port().unwrap(), free_port().unwrap()];
    let mqtt_ports = [free_port().unwrap(), free_port().unwrap()];
    let store = pg.url();
    let mut stack = Stack {
        nats,
        pg,
        ecr: Vec::new(),
        cmx: Vec::new(),
        kpc: Vec::new(),
        names,
        urls,
        dir: Some(dir),
    };
    let Names { ecr, cmx, kpc } = &stack.names;
    let urls = &stack.urls;
    let ecr_yaml = |replica: usize| {
        let port = http_ports[replica - 1];
        format!(
            "service:\n  instance:\n    name: {ecr}\n    replica:\n      id: {ecr}-{replica}\n\
             nats:\n  urls: [{urls}]\n\
             ecr:\n  http:\n    listen: 127.0.0.1:{port}\n  store:\n    url: \"{store}\"\n  cmx:\n    service-instance-name: {cmx}\n\
             auth:\n  enabled: false\n"
        )
    };
    let kpc_yaml = |replica: usize| {
        let port = mqtt_ports[replica - 1];
        format!(
            "service:\n  instance:\n    name: {kpc}\n    replica:\n      id: {kpc}-{replica}\n\
             nats:\n  urls: [{urls}]\n\
             kpc:\n  mqtt:\n    listen: 127.0.0.1:{port}\n    auth:\n      enabled: false\n\
             \x20 extension-instances: [{cmx}]\n  accept-any-token: true\n"
        )
    };
    let (ecr_yamls, kpc_yamls) = ([ecr_yaml(1), ecr_yaml(2)], [kpc_yaml(1), kpc_yaml(2)]);
    let cmx_yamls = [stack.cmx_yaml(1), stack.cmx_yaml(2)];
    let dir = stack.dir().to_owned();
    tokio::task::block_in_place(|| {
        for (i, y) in ecr_yamls.iter().enumerate() {
            let unit = format!("ecr-{}", i + 1);
            stack.ecr.push(ServiceProcess::start_unit(
                "ecr",
                &unit,
                &dir,
                y,
                "ecr listening on",
            ));
        }
        for (i, y) in cmx_yamls.iter().enumerate() {
            let unit = format!("cmx-{}", i + 1);
            stack.cmx.push(ServiceProcess::start_unit(
                "cmx",
                &unit,
                &dir,
                y,
                "cmx running",
            ));
        }
        for (i, y) in kpc_yamls.iter().enumerate() {
            let unit = format!("kpc-{}", i + 1);
            stack.kpc.push(ServiceProcess::start_unit(
                "kpc",
                &unit,
                &dir,
                y,
                "kpc listening on",
            ));
        }
    });
    let ecr_name = stack.names.ecr.clone();
    let cmx_name = stack.names.cmx.clone();

    // The test's own NATS connection (all three nodes), for asking ECR what it serves.
    let probe = NatsBus::connect(
        &NatsConfig::new(stack.nats.urls()).with_reconnect_delay_max(Duration::from_millis(250)),
    )
    .await
    .expect("NATS");
    assert!(probe.wait_connected(Duration::from_secs(10)).await);
    let probe: Arc<dyn Bus> = Arc::new(probe);

    let rests: Vec<Rest> = http_ports
        .iter()
        .map(|p| Rest::new(([127, 0, 0, 1], *p).into()))
        .collect();
    // Reads of the final state go to replica 1 (faults kill replica 2).
    let rest = rests[0].clone();
    let app = format!("{tag}-app");
    for name in [None, Some("network")] {
        let k = Key {
            endpoint: None,
            name,
        };
        assert!(rest.put(&app, &k, &json!({"seq": 0})).await, "initial PUT");
    }
    let started = Instant::now();
    let mqtt: Vec<std::net::SocketAddr> = mqtt_ports
        .iter()
        .map(|p| ([127, 0, 0, 1], *p).into())
        .collect();
    let fleet = Fleet::start_on(devices, &mqtt, &cmx_name, &app, &tag);
    if !fleet.wait_ready(Duration::from_secs(120)).await {
        stack.dump_logs();
        let kept = stack.dir.take().map(tempfile::TempDir::keep);
        panic!(
            "only {} of {devices} devices connected and configured (logs kept in {kept:?})",
            fleet.connected()
        );
    }
    eprintln!(
        "fault_replicas: {devices} devices on 2 KPC replicas connected and configured in {:?}",
        started.elapsed()
    );
    let overridden = (devices / 10).max(1);
    let writer = Writer::start_on(
        rests.clone(),
        app.clone(),
        fleet.endpoints.clone(),
        overridden,
        write_every,
    );

    let mut failures = Vec::new();
    let mut regressions_before = 0;
    for fault in &faults {
        let fences0 = stack.fences();
        let window = Window::open(&writer.log, &fleet);
        let duplicates0 = fleet.duplicates();
        tokio::time::sleep(BEFORE).await;
        let t0 = Instant::now();
        let what = stack.inject(fault).await;
        let restarted = Instant::now();
        tokio::time::sleep(after).await;
        writer.pause().await;
        let paused = Instant::now();

        let converged = converge(&probe, &ecr_name, &fleet, devices, paused, CONVERGE).await;
        let lost = lost_writes(&rest, &app, &writer.log).await;
        let regressions = fleet.regressions();
        let new_regressions = &regressions[regressions_before.min(regressions.len())..];
        let (writes, devices_did) = window.describe(&writer.log, &fleet, lost.len());
        let fences = stack.fences();
        let row = format!(
            "{fault} ({what}; {:.1}s in all): converged {} after the writer paused ({:.1}s after the restart); \
             {writes}; devices back to an older write {}; duplicate deliveries {}; {devices_did}; \
             hand-over fences lifted by confirmation {}, at the deadline {}",
            (restarted - t0).as_secs_f64(),
            converged_in(&converged, CONVERGE),
            (paused - restarted).as_secs_f64(),
            new_regressions.len(),
            fleet.duplicates() - duplicates0,
            fences.0 - fences0.0,
            fences.1 - fences0.1,
        );
        eprintln!("fault_replicas: {row}");
        if let Err(last) = &converged {
            failures.push(format!("{fault}: not converged; e.g. {last:?}"));
        }
        if !lost.is_empty() {
            failures.push(format!("{fault}: acknowledged writes lost: {lost:?}"));
        }
        if !new_regressions.is_empty() {
            let examples: Vec<String> = new_regressions
                .iter()
                .take(5)
                .map(|r| {
                    let n = usize::from(r.name.is_some());
                    let h = fleet.history(r.device, n);
                    let from = r.at.saturating_sub(3);
                    format!(
                        "{r:?} (endpoint {}; received around it: {:?})",
                        fleet.endpoints[r.device],
                        &h[from..(r.at + 2).min(h.len())]
                    )
                })
                .collect();
            failures.push(format!(
                "{fault}: {} deliveries went back to an older write, e.g. {examples:#?}",
                new_regressions.len()
            ));
        }
        regressions_before = regressions.len();
        if !failures.is_empty() {
            break;
        }
        writer.resume();
    }
    writer.pause().await;
    let by_address = writer.log.counts_by_address();
    eprintln!(
        "fault_replicas: writes (acknowledged, failed) per ECR replica {by_address:?}; \
         duplicate deliveries in all {}",
        fleet.duplicates()
    );
    if !failures.is_empty() {
        stack.dump_logs();
        fail_keeping_logs("fault_replicas", stack.dir.take(), &failures);
    }
    assert!(
        by_address.len() == 2 && by_address.iter().all(|(acked, _)| *acked > 0),
        "both ECR replicas took acknowledged writes: {by_address:?}"
    );
    drop(fleet);
    drop(stack);
}
