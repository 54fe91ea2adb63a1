//! The bus conformance suite (`kaa_bus::test_support::conformance`) run against
//! both implementations: every check once on a fresh `MemoryBus`, and once on a
//! `NatsBus` connected to the NATS at `KAA_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`), skipped visibly when that NATS is not reachable unless
//! `KAA_REQUIRE_SERVICES=1`.

use std::sync::Arc;

use kaa_bus::{
    Bus, MemoryBus, NatsBus, NatsConfig,
    nats::NatsAuth,
    test_support::{NATS, conformance},
};

/// A fresh in-memory bus.
fn memory_bus() -> Arc<dyn Bus> {
    Arc::new(MemoryBus::new())
}

/// A NatsBus on the test NATS, or `None` after a visible skip.
async fn nats_bus(test: &str) -> Option<Arc<dyn Bus>> {
    let url = NATS.require(test)?;
    // Credentials, if the test server needs any, come from the environment as in
    // production.
    let auth = NatsAuth::from_env().expect("NATS credential variables");
    let config = NatsConfig::new([url.as_str()])
        .with_retry_on_initial_connect(false)
        .with_connection_name(format!("kaa-bus {test}"));
    let bus = NatsBus::connect_with_auth(&config, &auth)
        .await
        .unwrap_or_else(|e| panic!("{test}: connect to {url}: {e}"));
    Some(Arc::new(bus))
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    conformance::$check(memory_bus()).await;
                }
            )*
        }

        mod nats {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let test = concat!("kaa-bus conformance::nats::", stringify!($check));
                    let Some(bus) = nats_bus(test).await else { return };
                    conformance::$check(bus).await;
                }
            )*
        }

        /// Every check of the suite has a test here.
        #[test]
        fn every_check_is_run() {
            let run: &[&str] = &[$(stringify!($check)),*];
            assert_eq!(run, conformance::CHECKS);
        }
    };
}

conformance!(
    publish_subscribe,
    wildcards,
    queue_group_single_delivery,
    no_delivery_after_unsubscribe,
    request_reply,
    request_timeout,
    no_responders,
    reply_to_carried,
    large_payload,
    ordering,
    invalid_names,
);

/// `run_all` runs the same checks in one go.
#[tokio::test]
async fn memory_run_all() {
    conformance::run_all(memory_bus()).await;
}
