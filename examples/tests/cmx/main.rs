//! The CMX service's tests (`cargo test -p kaa-examples --test cmx`): the service on
//! the in-memory bus and on real NATS, a NATS restart under it, the `cmx` binary as a
//! process, the `custom_cmx` example's CMX, and two replicas sharing endpoints. Helpers: [`kaa_testkit::cmx`].

mod binary;
mod custom;
mod fault;
mod memory;
mod nats;
mod replicas;
