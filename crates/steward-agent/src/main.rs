//! `steward-agent`: parse the command line, set up the log, run, map the outcome to an exit
//! status (0 ok, 1 the operation failed, 2 bad input such as an unusable package).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use steward_agent::events::{self, LogOptions};
use steward_agent::{EnrollOptions, RunOptions};
use tracing_subscriber::filter::LevelFilter;

/// Where the agent keeps its identity, configuration, outbox and logs unless told otherwise.
const DEFAULT_DATA_DIR: &str = "/var/lib/steward-agent";

#[derive(Parser)]
#[command(name = "steward-agent", version, about = "The Steward agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this host from a bootstrap package (makes the key pair here; it never leaves).
    Enroll {
        /// The bootstrap package written by `steward package agent`.
        #[arg(long)]
        package: PathBuf,
        /// Data directory.
        #[arg(long, env = "STEWARD_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Replace an existing identity.
        #[arg(long)]
        force: bool,
        /// The name the console shows for this device [default: the host name].
        #[arg(long)]
        name: Option<String>,
        /// Enroll with this host's Kerberos identity (host/<fqdn> from the keytab in
        /// KRB5_CLIENT_KTNAME, e.g. /etc/krb5.keytab) instead of the package's token; the
        /// server must allow it. Needs an agent built with the `kerberos` feature.
        #[arg(long)]
        kerberos: bool,
    },
    /// Check in, apply configuration, run tasks; until SIGINT/SIGTERM.
    Run {
        /// Data directory.
        #[arg(long, env = "STEWARD_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Also log to stderr (always done when stderr is a terminal).
        #[arg(long)]
        foreground: bool,
        /// Check in once, run the tasks that arrive, deliver their results, and exit.
        #[arg(long)]
        once: bool,
        /// Log debug events too.
        #[arg(long)]
        verbose: bool,
        /// Daily log files kept.
        #[arg(long, default_value_t = 7)]
        keep_logs: usize,
        /// Seconds a failing internet gateway is skipped while another way remains.
        #[arg(long, default_value_t = steward_agent::DEFAULT_GATEWAY_SET_ASIDE.as_secs())]
        gateway_set_aside_secs: u64,
        /// Use only the profile's internet gateways, never its LAN servers: try the internet
        /// path from a computer on the LAN.
        #[arg(long)]
        gateways_only: bool,
    },
    /// Check every way to the server (LAN servers, then gateways) with this agent's profile and
    /// identity, step by step; exit 0 ok, 1 warnings, 2 errors.
    Doctor {
        /// Data directory.
        #[arg(long, env = "STEWARD_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Time limit of each step, in seconds.
        #[arg(long, default_value_t = steward_agent::doctor::DEFAULT_STEP_TIMEOUT.as_secs())]
        timeout_secs: u64,
    },
    /// Show identity, server, connection path, last check-in and last error.
    Status {
        /// Data directory.
        #[arg(long, env = "STEWARD_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("steward-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: the agent waits on the network almost all the time, and a lean footprint
    // (RSS, threads) matters more on every managed host than parallelism.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[cfg(feature = "kerberos")]
fn enroll_kerberos(
    opts: &EnrollOptions,
) -> anyhow::Result<Result<steward_agent::Enrolled, steward_agent::EnrollError>> {
    Ok(runtime()?.block_on(steward_agent::enroll_kerberos(opts)))
}

#[cfg(not(feature = "kerberos"))]
fn enroll_kerberos(
    _opts: &EnrollOptions,
) -> anyhow::Result<Result<steward_agent::Enrolled, steward_agent::EnrollError>> {
    anyhow::bail!(
        "this steward-agent was built without Kerberos: rebuild it with `--features kerberos` \
         (it then links MIT krb5), or enroll with the package's token"
    )
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Enroll {
            package,
            data_dir,
            force,
            name,
            kerberos,
        } => {
            let dir = steward_agent::store::DataDir::new(&data_dir);
            dir.create()
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let _lock = dir.lock()?;
            let log = LogOptions {
                stderr: false,
                ..LogOptions::default()
            };
            events::init(&dir.logs_dir(), &log)?;
            let opts = EnrollOptions {
                package,
                data_dir,
                force,
                name,
            };
            let outcome = if kerberos {
                enroll_kerberos(&opts)?
            } else {
                runtime()?.block_on(steward_agent::enroll(&opts))
            };
            match outcome {
                Ok(done) => {
                    println!(
                        "enrolled as device {} via {}; certificate {} valid until {}",
                        done.device_id, done.server, done.subject, done.not_after
                    );
                    if let Some(moved) = done.moved_outbox {
                        println!(
                            "unsent results of the previous identity were moved to {moved} (not sent as this device)"
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    let what = match e.api_id() {
                        Some(api) => format!("{} ({api})", e.id()),
                        None => e.id().to_owned(),
                    };
                    eprintln!("{what}: {e}");
                    Ok(match e {
                        steward_agent::EnrollError::Package { .. } => ExitCode::from(2),
                        _ => ExitCode::from(1),
                    })
                }
            }
        }
        Command::Run {
            data_dir,
            foreground,
            once,
            verbose,
            keep_logs,
            gateway_set_aside_secs,
            gateways_only,
        } => {
            let dir = steward_agent::store::DataDir::new(&data_dir);
            dir.create()
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let _lock = dir.lock()?;
            let defaults = LogOptions::default();
            let log = LogOptions {
                stderr: defaults.stderr || foreground,
                keep_files: keep_logs,
                level: if verbose {
                    LevelFilter::DEBUG
                } else {
                    LevelFilter::INFO
                },
            };
            events::init(&dir.logs_dir(), &log)?;
            let opts = RunOptions {
                data_dir,
                once,
                crls: Vec::new(),
                gateway_set_aside: Some(std::time::Duration::from_secs(gateway_set_aside_secs)),
                gateways_only,
            };
            let rt = runtime()?;
            match rt.block_on(steward_agent::run(opts, shutdown_signal())) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    tracing::error!(id = e.id(), "{e}");
                    if !log.stderr {
                        eprintln!("{} {e}", e.id());
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Doctor {
            data_dir,
            format,
            timeout_secs,
        } => {
            let timeout = std::time::Duration::from_secs(timeout_secs.max(1));
            let report = runtime()?.block_on(steward_agent::doctor::doctor(&data_dir, timeout));
            match format {
                Format::Text => print!("{}", report.to_text("steward-agent doctor")),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::Status { data_dir, format } => {
            let report = steward_agent::status::status(&data_dir)?;
            match format {
                Format::Text => print!("{report}"),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(if report.enrolled {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers the default action (exit) still applies; wait forever.
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
