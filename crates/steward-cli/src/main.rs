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
