use std::path::PathBuf;

/// Why a benchmark could not run (faults of single requests are counted, not returned).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file of the identity store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The identity store holds something that is not what `steward bench prepare` writes.
    #[error("{path}: not a swarm identity store: {detail}")]
    BadStore {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Fewer identities are stored than agents were asked for.
    #[error(
        "{dir} holds {have} identities, {want} asked for (run `steward bench prepare --agents {want}`)"
    )]
    TooFewIdentities {
        /// The identity directory.
        dir: PathBuf,
        /// How many it holds.
        have: usize,
        /// How many were asked for.
        want: usize,
    },
    /// A certificate, key or trust anchor could not be used to build a TLS configuration.
    #[error("TLS set-up: {0}")]
    Tls(String),
    /// The server address could not be used.
    #[error("server address {addr}: {detail}")]
    Address {
        /// What was given.
        addr: String,
        /// Why it is unusable.
        detail: String,
    },
    /// Enrollment failed, for the reason given; the identities enrolled so far are kept.
    #[error("enrollment failed after {done} identities: {detail}")]
    Enroll {
        /// Identities enrolled and stored before the failure.
        done: usize,
        /// The failure, classified.
        detail: String,
    },
    /// The task for the fan-out could not be created.
    #[error("cannot create the fan-out task: {0}")]
    Task(String),
    /// A child swarm process could not be started, failed, exited early or sent what is not
    /// the child protocol (the other children are killed).
    #[error("swarm process {index} of {of}: {detail}{}", stderr_tail(stderr))]
    Child {
        /// Which child (its slice, from 0).
        index: usize,
        /// Children in all.
        of: usize,
        /// What went wrong.
        detail: String,
        /// The last lines it wrote on stderr.
        stderr: String,
    },
    /// (In a child swarm process.) The parent sent what is not the child protocol, or went
    /// away (its end of stdin closed) before the run was over.
    #[error("swarm parent: {0}")]
    Parent(String),
}

fn stderr_tail(s: &str) -> String {
    if s.trim().is_empty() {
        "; nothing on its stderr".into()
    } else {
        format!("; its stderr ends with:\n{}", s.trim_end())
    }
}

impl BenchError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
