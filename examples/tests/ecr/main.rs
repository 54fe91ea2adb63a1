//! The ECR service's tests (`cargo test -p kaa-examples --test ecr`): the one store
//! suite on SQLite and PostgreSQL, the REST API, 6/CDTP and update events on the bus,
//! announcing committed writes, staged rollouts, and the `ecr` binary as a process. Helpers:
//! [`kaa_testkit::ecr`].

mod announce;
mod api;
mod bus;
mod layers;
mod patch_race;
mod process;
mod replicas;
mod rollouts;
mod store;
