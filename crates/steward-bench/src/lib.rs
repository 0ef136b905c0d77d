//! The swarm benchmark behind `steward bench`: many simulated agents in one process, each with
//! its own real identity, speaking the real agent protocol over real mutual TLS.
//!
//! Map: [`identity`] issues identities in bulk through the real enrollment route and stores
//! them for reuse (`steward bench prepare`); [`swarm`] runs the agents (`steward bench swarm`):
//! check-ins as `steward-agent` makes them, optionally held connections with the long-poll, a
//! task fan-out; [`handshake`] measures the mutual-TLS handshake ceiling of bare rustls against
//! Steward's agent site; [`net`] connects (spread over 127.0.0.0/8 source addresses) and
//! classifies every failure into an [`net::ErrorKind`]; [`limits`] raises the file limit and
//! reads a server's RSS and CPU from /proc; [`report`] holds the statistics and renders them as
//! text or JSON; [`multi`] spreads one swarm over several processes of the same executable
//! (each process can hold only as many connections as its open-file limit allows).
//!
//! Nothing here is a mock: the server under test is a real `steward server`, and what the
//! agents send is what `steward-agent` sends (the same `steward-proto` messages, the same
//! inventory hash, the same backoff).
#![forbid(unsafe_code)]

pub mod handshake;
pub mod identity;
pub mod limits;
pub mod multi;
pub mod net;
pub mod report;
pub mod swarm;

mod error;

pub use error::BenchError;

pub use indicatif::ProgressBar;

/// A progress bar on stderr of `len` units (`unit`: "agents", "s"), or a hidden one when
/// `visible` is false (JSON output, stderr not a terminal).
pub fn progress(len: u64, unit: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
