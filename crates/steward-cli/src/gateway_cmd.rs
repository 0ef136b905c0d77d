//! `steward gateway token|join|run|set-port|cert import|cert renew`: thin wrappers. `token` asks the
//! server (admin API) for a single-use join token; the rest is the steward-gateway library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use steward_gateway::{Gateway, JoinOptions, RunOptions};

use crate::admin::Conn;

#[derive(Debug, Subcommand)]
pub(crate) enum GatewayCmd {
    /// Make a single-use, expiring gateway join token (server side). The file also holds the
    /// platform's trust anchors, so it is all `steward gateway join` needs.
    Token(TokenArgs),
    /// List gateways with what each last reported (external name, port, thumbprints, health).
    List {
        #[command(flatten)]
        conn: Conn,
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::cli::Format::Text)]
        format: crate::cli::Format,
    },
    /// Revoke a gateway: its identity is refused by the server at once and it leaves the
    /// agents' communication profile.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        /// The gateway's ID (see `steward gateway list`).
        id: String,
    },
    /// Join this host as a gateway: keys are made here; the server issues its identity
    /// certificate and a server certificate for its external name.
    Join(JoinArgs),
    /// Serve agents at the edge and tunnel their requests to the server until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Change the listen address, phased: after a restart the gateway answers on the new and
    /// the old address until every agent has a profile with the new port, then closes the old.
    SetPort(SetPortArgs),
    /// The gateway's server certificate.
    #[command(subcommand)]
    Cert(CertCmd),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertCmd {
    /// Check a third-party certificate (.pfx, or PEM/DER with its key and full chain) with the
    /// rules of `steward doctor cert` and stage it as the next server certificate: agents get
    /// its thumbprint and root first, and the running gateway serves it once all have them.
    Import(CertImportArgs),
    /// Renew the gateway's platform-issued certificates now (normally done by itself when the
    /// server says they are due): new keys are made here and only CSRs are sent, over the
    /// current identity. The identity switches at once; the server certificate is staged as
    /// next, announced to agents, and served once every agent has its thumbprint. Works with
    /// the gateway running (it takes both within one report interval) or stopped.
    Renew(CertRenewArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CertRenewArgs {
    /// The data directory written by `steward gateway join`.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Renew only the identity certificate (gateway→server).
    #[arg(long, conflicts_with = "server_only")]
    identity_only: bool,
    /// Renew only the server certificate agents see.
    #[arg(long)]
    server_only: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SetPortArgs {
    /// The data directory written by `steward gateway join`.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The new address to listen on, e.g. 0.0.0.0:9443.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
pub(crate) struct CertImportArgs {
    /// The certificate file (.pfx/.p12, or PEM/DER with the private key and the full chain).
    file: PathBuf,
    /// The data directory written by `steward gateway join`.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// File holding the PKCS#12 password (first line).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    conn: Conn,
    /// Where to write the token (mode 0600: it is a live secret).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// How long the token stays valid (30m, 24h, 7d).
    #[arg(long, default_value = "24h", value_parser = crate::admin::parse_duration)]
    expires: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// The server's agent site, e.g. https://smp.example.net:4726.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The token file from `steward gateway token`.
    #[arg(long, value_name = "FILE")]
    token: PathBuf,
    /// The gateway's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The name agents on the internet use to reach this gateway.
    #[arg(long, value_name = "FQDN")]
    external_name: String,
    /// Where to listen for agents.
    #[arg(long, value_name = "ADDR", default_value = steward_gateway::DEFAULT_LISTEN)]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The data directory written by `steward gateway join`.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Listen here instead of the joined address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Seconds between reports to the server (each report may trigger self-probes, retire
    /// previous ports or promote a staged certificate).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    report_interval: u64,
    /// Seconds between fetches of the CRL: a revoked agent is refused at this edge within
    /// one refresh (the server itself refuses it at once).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    crl_refresh_secs: u64,
}

/// No certificate file is this large; refuse before reading it all into memory.
const MAX_CERT_FILE_BYTES: u64 = 16 * 1024 * 1024;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // A gateway tunnels many agents: use every core.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn run(cmd: GatewayCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        GatewayCmd::Token(a) => crate::admin::gateway_token(&a.conn, &a.out, a.expires.as_secs()),
        GatewayCmd::List { conn, format } => crate::admin::gateway_list(&conn, format),
        GatewayCmd::Revoke { conn, id } => crate::admin::revoke(
            &conn,
            steward_proto::admin::paths::GATEWAY_REVOKE,
            "gateway",
            &id,
        ),
        GatewayCmd::Join(a) => {
            crate::telemetry::init();
            let cfg = runtime()?
                .block_on(steward_gateway::join(&JoinOptions {
                    server_url: a.server,
                    token_file: a.token,
                    data_dir: a.data_dir.clone(),
                    external_name: a.external_name,
                    listen: a.listen,
                }))
                .map_err(|e| anyhow::anyhow!("{}: {e}", e.id()))?;
            println!(
                "joined as gateway {}; start it with: steward gateway run --data-dir {}",
                cfg.gateway_id,
                a.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        GatewayCmd::Run(a) => {
            crate::telemetry::init();
            runtime()?.block_on(async {
                let g = Gateway::start(
                    &a.data_dir,
                    RunOptions {
                        listen: a.listen,
                        report_interval: Duration::from_secs(a.report_interval),
                        crl_refresh: Duration::from_secs(a.crl_refresh_secs),
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", e.id()))?;
                g.run_until_signal().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCmd::SetPort(a) => set_port(&a),
        GatewayCmd::Cert(CertCmd::Import(a)) => cert_import(&a),
        GatewayCmd::Cert(CertCmd::Renew(a)) => cert_renew(&a),
    }
}

fn set_port(a: &SetPortArgs) -> anyhow::Result<ExitCode> {
    let change = steward_gateway::set_port(&a.data_dir, a.listen)
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.id()))?;
    let Some(old) = change.replaced else {
        println!(
            "the gateway already listens on {}; nothing changed",
            a.listen
        );
        return Ok(ExitCode::SUCCESS);
    };
    let previous: Vec<String> = change
        .config
        .previous_listen
        .iter()
        .map(ToString::to_string)
        .collect();
    println!("listen address: {old} -> {}", a.listen);
    println!(
        "restart the gateway (steward gateway run --data-dir {}) for it to take effect;",
        a.data_dir.display()
    );
    println!(
        "it will then answer on {} and on {} until every agent has a profile with port {}",
        a.listen,
        previous.join(", "),
        a.listen.port()
    );
    println!(
        "(agents on the internet learn the new port only through the old one), and then stop \
         listening on the old port by itself (log: GATEWAY-PORT-RETIRED)."
    );
    println!(
        "open port {} on the perimeter firewall now; close {} only after that.",
        a.listen.port(),
        old.port()
    );
    Ok(ExitCode::SUCCESS)
}

fn cert_renew(a: &CertRenewArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init();
    let what = steward_gateway::RenewWhat {
        identity: !a.server_only,
        server: !a.identity_only,
    };
    let done = runtime()?
        .block_on(steward_gateway::renew_certs(&a.data_dir, what))
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.id()))?;
    if let Some(sha) = &done.identity {
        println!(
            "identity renewed: {sha}; in use from now on (a running gateway takes it before its \
             next report); the server revokes the previous one at its first use."
        );
    }
    if let Some(sha) = &done.server {
        println!(
            "server certificate renewed: {sha}, staged as next. The gateway announces its \
             thumbprint to agents at its next report, keeps serving the current one, and \
             switches once every agent has it (log: GATEWAY-CERT-PROMOTED); the server then \
             revokes the previous one. Progress: steward gateway list, or the console's \
             Gateways page."
        );
    }
    for s in &done.skipped {
        println!("not renewed: {s}");
    }
    Ok(if done.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cert_import(a: &CertImportArgs) -> anyhow::Result<ExitCode> {
    let password = match &a.password_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the password file {}", f.display()))?;
            // The first line, without its line ending: `echo secret > file` must work.
            Some(text.lines().next().unwrap_or("").to_owned())
        }
        None => None,
    };
    let meta =
        std::fs::metadata(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    if meta.len() > MAX_CERT_FILE_BYTES {
        anyhow::bail!(
            "{}: {} bytes is far larger than any certificate file",
            a.file.display(),
            meta.len()
        );
    }
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let label = a.file.display().to_string();
    match steward_gateway::import_cert(
        &a.data_dir,
        &bytes,
        password.as_deref(),
        &label,
        time::OffsetDateTime::now_utc(),
    ) {
        Ok(staged) => {
            print!("{}", staged.report.to_text());
            if staged.already_current {
                println!("\nthis certificate is already the one served; nothing staged.");
            } else {
                println!(
                    "\nstaged as the next server certificate: {} (root: {}), checked for {}.",
                    staged.sha256,
                    staged.root_subject,
                    staged.names.join(", ")
                );
                if let Some(old) = staged.replaced_next {
                    println!("it replaces the certificate staged before ({old}).");
                }
                println!(
                    "the running gateway announces its thumbprint and root to agents at its next \
                     report, keeps serving the current certificate, and switches once every \
                     agent has them (log: GATEWAY-CERT-PROMOTED); no restart is needed."
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(steward_gateway::GatewayError::CertRefused { report }) => {
            print!("{}", report.to_text());
            println!(
                "\nGATEWAY-CERT-REFUSED: not staged; fix the findings above and import again."
            );
            Ok(ExitCode::from(1))
        }
        Err(e @ steward_gateway::GatewayError::CertNoRoot { .. }) => {
            println!("{}: {e}", e.id());
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", e.id())),
    }
}
