//! # kaa-ism: Kaa 3/ISM inter-service messaging, sans-IO
//!
//! The pieces every Kaa inter-service protocol crate shares:
//!
//! - [`subject`]: the 3/ISM NATS subject grammar — targeted instance-wide
//!   (`kaa.v1.service.…`) and replica (`kaa.v1.replica.…`) subjects, broadcast
//!   subjects (`kaa.v1.events.…`), and the `*` / `>` filters listeners use. Every
//!   name that becomes a token is validated, never escaped.
//! - [`common`]: the common message fields (`correlationId`, `timestamp`,
//!   `timeout`) and an expiry check that takes `now` as an argument.
//! - [`avro`]: Avro binary primitives (zigzag varints, strings, bytes, unions, maps)
//!   with a borrowing, bounds-checked reader, used by the 4/ESP, 6/CDTP and 9/ELCE
//!   codecs.
//!
//! No I/O, no async runtime, no clock reads.
//!
//! ```
//! use kaa_ism::avro::{put_string, Reader};
//! use kaa_ism::subject::ServiceSubject;
//!
//! let subject = ServiceSubject::new("ecr", "cdtp", "request")?;
//! assert_eq!(subject.to_string(), "kaa.v1.service.ecr.cdtp.request");
//!
//! let mut datum = Vec::new();
//! put_string(&mut datum, "07d78e95-2c4d-4899-957c-b9e5a3701fbb");
//! let correlation_id = Reader::new(&datum, "ConfigRequest").string("correlationId")?;
//! assert_eq!(correlation_id.len(), 36);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod avro;
pub mod common;
pub mod subject;

pub use common::UnixMillis;
