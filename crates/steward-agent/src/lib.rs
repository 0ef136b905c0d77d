//! The Steward agent: the Symantec Management Agent of Steward.
//!
//! It enrolls once from a bootstrap package (its key pair is made here and never leaves the
//! host), then checks in over mutual TLS: it applies the configuration the server sends
//! (communication profile, settings, policies), reports inventory when it changes, runs tasks
//! and keeps their results in a durable outbox until the server acknowledges them. Every fault
//! is logged under a stable event ID (`events::ids`, documented in `docs/diagnostics.md`) and
//! reported to the server with the next successful check-in.
//!
//! Map: [`package`] reads bootstrap packages; [`enroll`] turns one into an identity; [`agent`]
//! is the check-in loop (and documents the delivery and execution guarantees); [`net`] reaches
//! the server and classifies failures; [`task`] runs one task; [`inventory`] collects and
//! hashes; [`store`] is the data directory with its atomic writes; [`status`] reads it back;
//! [`doctor`] checks every way to the server; [`events`] is the log format and the ID list.
//!
//! Architecture invariant: the agent never depends on the server crate; it speaks only
//! `steward-proto`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod doctor;
pub mod enroll;
pub mod events;
pub mod inventory;
pub mod net;
pub mod package;
pub mod renew;
pub mod signing;
pub mod status;
pub mod store;
pub mod task;
pub mod trust;

pub use agent::{DEFAULT_GATEWAY_SET_ASIDE, RunError, RunOptions, run};
#[cfg(feature = "kerberos")]
pub use enroll::enroll_kerberos;
pub use enroll::{EnrollError, EnrollOptions, Enrolled, enroll};
