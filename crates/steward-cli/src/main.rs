//! `steward`: parse the command line, run the command, map the outcome to an exit status.
//!
//! Exit status: 0 success (for `doctor`: no finding is an error), 1 the check found an error,
//! 2 the command could not run (bad arguments, unreadable files).
#![forbid(unsafe_code)]

mod admin;
mod bench_cmd;
mod cli;
mod demo;
mod demo_cert;
mod doctor_cert;
mod doctor_gateway;
mod doctor_kerberos;
mod doctor_logs;
mod gateway_cmd;
mod server_ca_cmd;
mod server_cert_cmd;
mod server_cmd;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: the server, the gateway and the swarm allocate per
/// request from many threads, and glibc's arenas cost 15 % of all CPU in the 100,000-agent run
/// (BENCHMARKS.md, round 7). The agent (its own binary) keeps the system allocator: its target
/// is a small idle footprint, not throughput.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("steward: {e:#}");
            ExitCode::from(2)
        }
    }
}
