//! `steward server ca roll ...`: rolling the platform root CA over the admin API, in the
//! phases of a listener replacement: stage → distribute (watch `status`) → finalize, or
//! rollback before finalize.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use steward_proto::admin::{CaCertInfo, CaRollFinalized, CaRollStatus, CertFinalize, paths};

use crate::admin::Conn;
use crate::cli::Format;

/// `steward server ca`.
#[derive(Debug, Subcommand)]
pub(crate) enum CaCmd {
    /// Roll the platform root CA without stranding an agent.
    #[command(subcommand)]
    Roll(RollCmd),
}

/// `steward server ca roll`.
#[derive(Debug, Subcommand)]
pub(crate) enum RollCmd {
    /// Make a new platform root and certify the issuing CA under it (same name and key); the
    /// new root goes to every agent in the communication profile and the trust bundle.
    /// Nothing agents must accept is signed by it yet. Then watch `status`.
    Stage(Plain),
    /// The platform root, the previous one during the overlap, and a staged root's
    /// distribution: how many agents acknowledged it, and who has not.
    Status(Plain),
    /// The new root becomes the platform root (the previous one stays trusted); the listener
    /// certificates are re-issued with chains to both roots and served without a restart.
    /// Refused while agents have not acknowledged the new root; `--force` goes ahead and
    /// names them.
    Finalize(FinalizeArgs),
    /// Drop the staged root (before finalize): it leaves the profile; nothing else changed.
    Rollback(Plain),
}

#[derive(Debug, Args)]
pub(crate) struct Plain {
    #[command(flatten)]
    conn: Conn,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct FinalizeArgs {
    #[command(flatten)]
    conn: Conn,
    /// Go ahead although agents have not acknowledged the new root (they are named).
    #[arg(long)]
    force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn run(cmd: CaCmd) -> anyhow::Result<ExitCode> {
    let CaCmd::Roll(cmd) = cmd;
    match cmd {
        RollCmd::Status(a) => {
            let s: CaRollStatus = runtime()?
                .block_on(async { a.conn.connect().await?.get(paths::SERVER_CA_ROLL).await })?;
            show(&s, a.format, None)
        }
        RollCmd::Stage(a) => {
            let s: CaRollStatus = runtime()?.block_on(async {
                a.conn
                    .connect()
                    .await?
                    .post(paths::SERVER_CA_ROLL_STAGE, &serde_json::json!({}))
                    .await
            })?;
            show(
                &s,
                a.format,
                Some(
                    "staged: the new root is in the communication profile and the trust bundle; agents acknowledge it at their next check-in",
                ),
            )
        }
        RollCmd::Rollback(a) => {
            let s: CaRollStatus = runtime()?.block_on(async {
                a.conn
                    .connect()
                    .await?
                    .post(paths::SERVER_CA_ROLL_ROLLBACK, &serde_json::json!({}))
                    .await
            })?;
            show(
                &s,
                a.format,
                Some("rolled back: the staged root left the profile; nothing else changed"),
            )
        }
        RollCmd::Finalize(a) => {
            let done: CaRollFinalized = runtime()?.block_on(async {
                a.conn
                    .connect()
                    .await?
                    .post(
                        paths::SERVER_CA_ROLL_FINALIZE,
                        &CertFinalize { force: a.force },
                    )
                    .await
            })?;
            if matches!(a.format, Format::Json) {
                println!("{}", serde_json::to_string_pretty(&done)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "finalized: the new root is the platform root; the previous one stays trusted"
            );
            print_status(&done.status);
            for l in &done.listeners {
                println!(
                    "  {} listener re-issued: {} (served from the next connection on)",
                    l.listener, l.sha256
                );
            }
            if !done.stranded.is_empty() {
                println!(
                    "warning: {} agent(s) had not acknowledged the new root:",
                    done.stranded.len()
                );
                for s in &done.stranded {
                    println!("  {s}");
                }
                if let Some(r) = &done.recovery {
                    println!("{r}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show(s: &CaRollStatus, format: Format, headline: Option<&str>) -> anyhow::Result<ExitCode> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(s)?),
        Format::Text => {
            if let Some(h) = headline {
                println!("{h}");
            }
            print_status(s);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ca(label: &str, c: &CaCertInfo) {
    println!("  {label:<11} {}", c.subject);
    println!("  {:<11} sha256 {}, until {}", "", c.sha256, c.not_after);
}

fn print_status(s: &CaRollStatus) {
    println!("platform root CA roll: {}", s.phase);
    ca("root", &s.root);
    ca("issuing", &s.issuing);
    if let Some(p) = &s.previous_root {
        ca("previous", p);
    }
    if let Some(st) = &s.staged {
        ca(
            "staged",
            &CaCertInfo {
                subject: st.subject.clone(),
                sha256: st.sha256.clone(),
                not_after: st.not_after.clone(),
            },
        );
        println!(
            "  distribute  {}/{} agent(s) acknowledged profile version {}{}",
            st.acknowledged,
            st.total,
            st.profile_version,
            if st.acknowledged == st.total {
                ": ready to finalize"
            } else {
                ""
            }
        );
        for p in &st.pending {
            println!("              pending: {p}");
        }
    }
}
