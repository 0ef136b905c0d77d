//! `steward gateway token|join|run`: thin wrappers. `token` asks the server (admin API) for a
//! single-use join token; `join` and `run` are the steward-gateway library.

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
}

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
                        ..RunOptions::default()
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", e.id()))?;
                g.run_until_signal().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
