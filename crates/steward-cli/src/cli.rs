use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use steward_doctor::Profile;

/// Steward: endpoint management whose certificate, port and protocol changes never strand an
/// agent silently.
#[derive(Debug, Parser)]
#[command(name = "steward", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Diagnose: every check names its fault by a stable ID, with evidence and a fix.
    #[command(subcommand)]
    Doctor(Doctor),
    /// Build a sample platform PKI in a temporary directory and check its certificates.
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
enum Doctor {
    /// Check a certificate file or a live TLS endpoint against a requirement profile.
    Cert(CertArgs),
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// A readable table.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct CertArgs {
    /// A certificate file (.pfx, .p12, .pem, .crt, .cer, .der) or a live endpoint
    /// (`https://host:port` or `host:port`).
    pub(crate) target: String,
    /// File holding the PKCS#12 password (first line).
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// A name the certificate must cover; repeat for every name agents use.
    /// For endpoints the first one is also sent as SNI (default: the endpoint's host).
    #[arg(long = "fqdn", value_name = "NAME")]
    pub(crate) fqdns: Vec<String>,
    /// PEM bundle of trust anchors [default: the system trust store].
    #[arg(long, value_name = "FILE")]
    pub(crate) trust: Option<PathBuf>,
    /// Whose requirements to judge by.
    #[arg(long, default_value = "steward", value_parser = parse_profile)]
    pub(crate) profile: Profile,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Do not fetch CRLs (revocation checks are reported as skipped).
    #[arg(long)]
    pub(crate) no_revocation: bool,
    /// Seconds allowed for each network step (resolve, connect, handshake, CRL download).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = parse_timeout)]
    pub(crate) timeout: f64,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the sample files here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Output format of the checks.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    s.parse()
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 3600.0 => Ok(t),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

/// The password from `STEWARD_PFX_PASSWORD`, read here so the library code stays free of
/// process environment.
const PASSWORD_ENV: &str = "STEWARD_PFX_PASSWORD";

impl Cli {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Doctor(Doctor::Cert(args)) => {
                let env_password = std::env::var(PASSWORD_ENV).ok();
                crate::doctor_cert::run(&args, env_password)
            }
            Command::Demo(args) => crate::demo::run(&args),
        }
    }
}
