//! `steward server init|run`: thin wrappers over the steward-server library.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use steward_server::{InitOptions, ServerOverrides};

#[derive(Debug, Subcommand)]
pub(crate) enum ServerCmd {
    /// Create a server data directory: platform CA, agent-site and console certificates, a
    /// documented steward.toml, the database and the first admin account.
    Init(InitArgs),
    /// Serve the agent site, the console/admin API and the CRLs until SIGINT/SIGTERM.
    Run(RunArgs),
    /// The listener certificates: status, renewal.
    #[command(subcommand)]
    Cert(crate::server_cert_cmd::CertCmd),
    /// The platform CA: roll the root (stage, status, finalize, rollback).
    #[command(subcommand)]
    Ca(crate::server_ca_cmd::CaCmd),
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The data directory (created, mode 0700).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// A DNS name agents use for the server (repeatable; every name goes into the certificate).
    #[arg(long = "fqdn", value_name = "NAME", required = true)]
    fqdns: Vec<String>,
    /// An IP address agents may use instead of a name (repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    ips: Vec<IpAddr>,
    /// File holding the first admin's password [default: generate one and print it once].
    #[arg(long, value_name = "FILE")]
    admin_password_file: Option<PathBuf>,
    #[command(flatten)]
    listen: Listen,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The data directory made by `steward server init`.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Validate the configuration, keys and certificates, print the findings, and exit.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    listen: Listen,
}

/// Listen addresses; they override steward.toml.
#[derive(Debug, Args)]
struct Listen {
    /// Agent site address [config default 0.0.0.0:4726].
    #[arg(long, value_name = "ADDR")]
    agent_addr: Option<SocketAddr>,
    /// Console and admin API address [config default 127.0.0.1:4727].
    #[arg(long, value_name = "ADDR")]
    console_addr: Option<SocketAddr>,
    /// CRL distribution point address (plain HTTP) [config default 0.0.0.0:4728].
    #[arg(long, value_name = "ADDR")]
    crl_addr: Option<SocketAddr>,
}

pub(crate) fn run(cmd: ServerCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ServerCmd::Init(a) => init(a),
        ServerCmd::Run(a) if a.check_config => check(&a),
        ServerCmd::Run(a) => serve(a),
        ServerCmd::Cert(c) => crate::server_cert_cmd::run(c),
        ServerCmd::Ca(c) => crate::server_ca_cmd::run(c),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // The server serves many agents: use every core.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let admin_password = match &a.admin_password_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
        None => None,
    };
    let mut opts = InitOptions::new(&a.data_dir, a.fqdns);
    opts.ip_addrs = a.ips;
    opts.admin_password = admin_password;
    opts.agent_addr = a.listen.agent_addr;
    opts.console_addr = a.listen.console_addr;
    opts.crl_addr = a.listen.crl_addr;
    let report = runtime()?.block_on(steward_server::init(opts))?;
    println!("initialised {}", report.data_dir.display());
    println!("  config          {}", report.config_path.display());
    println!(
        "  platform root   {} (SHA-256 {})",
        report.root_cert_path.display(),
        report.root_sha256
    );
    println!("  agent site for  {}", report.agent_site_names.join(", "));
    println!("  CRLs at         {}", report.crl_url);
    println!("  admin token     {}", report.admin_token_path.display());
    match report.generated_admin_password {
        Some(p) => println!(
            "  admin account   {} / {p}   (shown once: store it now)",
            report.admin_username
        ),
        None => println!(
            "  admin account   {} (password as given)",
            report.admin_username
        ),
    }
    println!(
        "next: steward server run --data-dir {}",
        report.data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn check(a: &RunArgs) -> anyhow::Result<ExitCode> {
    let report = steward_server::check_config(&a.data_dir)?;
    for f in &report.findings {
        println!("{f}");
    }
    if report.has_errors() {
        println!("configuration has errors");
        Ok(ExitCode::from(1))
    } else {
        println!("configuration ok");
        Ok(ExitCode::SUCCESS)
    }
}

fn serve(a: RunArgs) -> anyhow::Result<ExitCode> {
    select_keytab(&a.data_dir)?;
    crate::telemetry::init();
    let overrides = ServerOverrides {
        agent_addr: a.listen.agent_addr,
        console_addr: a.listen.console_addr,
        crl_addr: a.listen.crl_addr,
    };
    let rt = runtime()?;
    rt.block_on(steward_server::run(&a.data_dir, overrides))?;
    // Stopped: last-seen flushed, the database closed, `run/addresses.json` removed. Dropping
    // the runtime now would drop what is left of every held long-poll's task and hand each
    // thread's heap back to the allocator: with 100,000 agents held the exit came 4.8 s after
    // "server stopped", 2.1 s without (BENCHMARKS.md, swarm round 9), time the agents wait
    // for the restart. Nothing is left to save.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

/// Marks the process started by [`select_keytab`], so a keytab that still does not take
/// cannot loop.
const KEYTAB_REEXEC: &str = "STEWARD_KEYTAB_REEXEC";

/// With Kerberos configured, makes `[auth] keytab` the process's acceptor keytab. GSSAPI (MIT)
/// reads it from `KRB5_KTNAME` only, and changing the environment of a running process is not
/// safe Rust (other threads may read it), so the server starts itself again, once, with the
/// variable set — before any thread exists. The process ID stays the same (exec).
fn select_keytab(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let dir = steward_server::DataDir::new(data_dir);
    // A broken configuration is reported by the server itself, with its ID.
    let Ok(cfg) = steward_server::Config::load(&dir) else {
        return Ok(());
    };
    let kerberos = cfg.auth.uses_kerberos();
    let Some(keytab) = cfg.auth.keytab.filter(|_| kerberos) else {
        return Ok(());
    };
    let keytab = if keytab.is_absolute() {
        keytab
    } else {
        dir.root().join(keytab)
    };
    let want = format!("FILE:{}", keytab.display());
    if std::env::var("KRB5_KTNAME").ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    if std::env::var_os(KEYTAB_REEXEC).is_some() {
        anyhow::bail!("KRB5_KTNAME is not {want} even after restarting with it set");
    }
    let exe = std::env::current_exe().context("cannot find the steward binary to restart")?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("KRB5_KTNAME", &want)
        .env(KEYTAB_REEXEC, "1")
        .exec();
    Err(err).context("cannot restart the server with KRB5_KTNAME set")
}
