//! Test support (cargo feature `test-support`): a fake 6/CDTP provider and the
//! invariants of the engine, shared by this crate's tests and benchmarks, the
//! `cmx_sequence` fuzz target and anyone who tests a CMX built on [`Cmx`].
//! Not for production builds. It adds no dependency: it is sans-IO like the
//! rest of the crate.
//!
//! Enable it from another crate's dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! kaa-cmp = { workspace = true, features = ["test-support"] }
//! ```
//!
//! - [`FakeProvider`]: a store of configurations per endpoint, app version and
//!   name that answers `ConfigRequest`s by kaa-cdtp's rules, and can be told to
//!   answer errors, "no configuration" in either form, or late.
//! - The invariants, each a check that returns a [`Violation`] (a proptest
//!   turns it into a failed case, a fuzz target into a panic):
//!   1. **Never older after newer** ([`ConfigOrder`]);
//!   2. **At most one CDTP request in flight** per endpoint and name, with the
//!      configured deadline ([`InFlight`]);
//!   3. **Responses** have a documented status, errors a reason and no payload,
//!      200 configuration responses a payload of valid 7/CMP JSON
//!      ([`check_response`]);
//!   4. **Limits** ([`check_limits`]), **timers** ([`check_after_timeout`]) and
//!      **everything ends** ([`check_quiet`]).
//!
//!   [`Invariants`] holds them together for a harness that feeds the engine
//!   from a [`FakeProvider`].
//!
//! What only a harness knows (which endpoints are connected, what a device
//! asked to observe, which device messages await a response) stays in that
//! harness: the fuzz target checks pushes and replies on top of these.
//!
//! [`Cmx`]: crate::engine::Cmx

mod invariants;
mod provider;

pub use invariants::{
    ConfigOrder, ENGINE_STATUSES, InFlight, Invariants, Violation, check_after_timeout,
    check_limits, check_quiet, check_response, config_name_of_path,
};
pub use provider::{AbsentForm, FakeProvider};
