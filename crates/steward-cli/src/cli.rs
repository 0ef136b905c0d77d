use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use steward_doctor::Profile;
use steward_proto::admin::{NewPackage, NewTask};

use crate::admin::Conn;

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
    /// Start a server and three agents on loopback in a temporary directory (Ctrl-C stops
    /// all); `steward demo cert` checks a sample PKI's certificates instead.
    Demo {
        #[command(subcommand)]
        what: Option<DemoWhat>,
        /// Keep the demo's files here instead of a temporary directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The management server.
    #[command(subcommand)]
    Server(crate::server_cmd::ServerCmd),
    /// Managed devices.
    #[command(subcommand)]
    Devices(Devices),
    /// Run commands on devices and read their results.
    #[command(subcommand)]
    Task(Task),
    /// Write installation packages.
    #[command(subcommand)]
    Package(Package),
    /// The internet gateway: join tokens, joining, running.
    #[command(subcommand)]
    Gateway(crate::gateway_cmd::GatewayCmd),
    /// The swarm benchmark: bulk identities, simulated agents, the handshake ceiling.
    #[command(subcommand)]
    Bench(crate::bench_cmd::BenchCmd),
}

#[derive(Debug, Subcommand)]
enum Devices {
    /// List devices: name, OS, Online/Offline, last check-in, connection path, last error.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Revoke a device's certificate: the server and gateways refuse it from now on (the CRL
    /// is re-signed at once). It must be enrolled again with a new package to come back.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        /// The device's name or ID.
        device: String,
    },
    /// Delete a device. Its certificate is revoked first (and stays in the CRLs), so a
    /// deleted device can never check in again; it must enroll anew.
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// The device's name or ID.
        device: String,
    },
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run a command (no shell) on the targets, wait, and print every device's result.
    Run {
        #[command(flatten)]
        conn: Conn,
        /// `all`, `tag:NAME` or `device:NAME`.
        #[arg(long)]
        target: String,
        /// Seconds before an agent kills the command.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// How long to wait for all results (90s, 5m, ...).
        #[arg(long, default_value = "5m", value_parser = crate::admin::parse_duration)]
        wait: std::time::Duration,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Show a task and every device's result.
    Show {
        #[command(flatten)]
        conn: Conn,
        /// Task ID.
        id: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
enum Package {
    /// Write an agent bootstrap package: the communication profile, the trust anchors and an
    /// expiring, use-limited enrollment token. It holds no private key.
    Agent {
        #[command(flatten)]
        conn: Conn,
        /// Where to write it (mode 0600: it holds a live token).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How long the token stays valid (30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = crate::admin::parse_duration)]
        expires: std::time::Duration,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        max_uses: u32,
        /// Tags for the devices enrolled with it (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DemoWhat {
    /// Build a sample platform PKI, serve its CRLs on loopback, and check a sound and a broken
    /// server certificate.
    Cert(DemoArgs),
}

#[derive(Debug, Subcommand)]
enum Doctor {
    /// Check a certificate file or a live TLS endpoint against a requirement profile.
    Cert(CertArgs),
    /// Check the way to a gateway step by step (DNS, TCP, TLS, certificate, thumbprint, and
    /// with an agent's data directory the ping through to the server); exit 0 ok, 1 warnings,
    /// 2 errors.
    Gateway(crate::doctor_gateway::GatewayArgs),
    /// Check the server's Kerberos (Negotiate) setup: keytab, an HTTP/<name> SPN per name,
    /// key versions against the KDC, KDC reachability, clock skew, name resolution, and a
    /// service ticket from your credential cache (kinit first); exit 1 on an error.
    Kerberos(crate::doctor_kerberos::KerberosArgs),
    /// Read an agent log and name each fault found in it, with its remedy.
    Logs {
        /// The agent log (DATA_DIR/logs/agent.log*).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
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
            Command::Doctor(Doctor::Gateway(args)) => crate::doctor_gateway::run(&args),
            Command::Doctor(Doctor::Kerberos(args)) => crate::doctor_kerberos::run(&args),
            Command::Doctor(Doctor::Logs { file, format }) => {
                crate::doctor_logs::run(&file, format)
            }
            Command::Demo {
                what: Some(DemoWhat::Cert(args)),
                ..
            } => crate::demo_cert::run(&args),
            Command::Demo { what: None, out } => crate::demo::run(out.as_deref()),
            Command::Server(cmd) => crate::server_cmd::run(cmd),
            Command::Gateway(cmd) => crate::gateway_cmd::run(cmd),
            Command::Bench(cmd) => crate::bench_cmd::run(cmd),
            Command::Devices(Devices::List { conn, format }) => {
                crate::admin::devices_list(&conn, format)
            }
            Command::Devices(Devices::Delete { conn, device }) => {
                crate::admin::delete_device(&conn, &device)
            }
            Command::Devices(Devices::Revoke { conn, device }) => crate::admin::revoke(
                &conn,
                steward_proto::admin::paths::DEVICE_REVOKE,
                "device",
                &device,
            ),
            Command::Task(Task::Run {
                conn,
                target,
                timeout,
                wait,
                format,
                mut command,
            }) => {
                let program = command.remove(0);
                let task = NewTask {
                    command: program,
                    args: command,
                    timeout_secs: timeout,
                    target,
                };
                crate::admin::task_run(&conn, task, wait, format)
            }
            Command::Task(Task::Show { conn, id, format }) => {
                crate::admin::task_show(&conn, id, format)
            }
            Command::Package(Package::Agent {
                conn,
                out,
                expires,
                max_uses,
                tags,
            }) => {
                let req = NewPackage {
                    expires_secs: expires.as_secs(),
                    max_uses,
                    tags,
                };
                crate::admin::package_agent(&conn, &out, req)
            }
        }
    }
}
