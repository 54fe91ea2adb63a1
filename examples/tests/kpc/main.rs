//! The KPC service's tests (`cargo test -p kaa-examples --test kpc`): MQTT end to end
//! on the in-memory bus and over NATS, the `kpc` binary and the `device` binary
//! against it, and two KPC replicas of one instance (`replicas`: on NATS, on a
//! private NATS cluster and in memory). Helpers: [`kaa_testkit::kpc`]. The
//! handshake floods are a binary of their own (`kpc_handshakes`): they need the
//! machine's CPU and descriptors to themselves, as `fault_stack` does.

mod binary;
mod device_cli;
mod mqtt;
mod nats;
mod replicas;
