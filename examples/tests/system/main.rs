//! The whole system's tests (`cargo test -p kaa-examples --test system`): the same
//! end-to-end behaviours on the all-in-one embedded stack and on the three binaries
//! over NATS, the limits and the security properties. Helpers:
//! [`kaa_testkit::e2e`]. The fault-injection test is a binary of its own
//! (`fault_stack`): it restarts services and needs the machine to itself.

mod embedded;
mod limits;
mod nats;
mod provisioning;
mod security;
