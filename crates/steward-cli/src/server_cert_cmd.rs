//! `steward server cert ...`: the server's listener certificates over the admin API.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

use steward_proto::admin::{CertFinalize, CertFinalized, CertImport, ListenerCertStatus, paths};

use crate::admin::Conn;
use crate::cli::Format;

/// `steward server cert`.
#[derive(Debug, Subcommand)]
pub(crate) enum CertCmd {
    /// Show the listener certificates as served now: thumbprint, validity, renewal, warnings.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Renew a listener's certificate from the platform CA now. It is served from the next
    /// connection on, without a restart; agents trust the platform root, so they notice
    /// nothing. (Renewal also happens by itself once two thirds of the lifetime have passed.)
    Renew(RenewArgs),
    /// Stage a third-party certificate (PKCS#12/PFX, PEM or DER, with its whole chain and
    /// key) for a listener. It is checked with the `doctor cert` rules and refused, with the
    /// findings, on any error; staged, its root goes to every agent in the communication
    /// profile. Then watch `status` until every agent has acknowledged it, and `finalize`.
    Import(ImportArgs),
    /// Put the staged certificate live, without a restart. Refused while agents have not
    /// acknowledged its root; `--force` goes ahead and names the agents left stranded.
    Finalize(FinalizeArgs),
    /// Drop the staged certificate and its root (before finalize); nothing else changes.
    Rollback(RenewArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    conn: Conn,
    /// The certificate file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// `agent` (the agent site) or `console`.
    #[arg(long, value_name = "LISTENER")]
    listener: String,
    /// File whose first line is the PFX password (`--password-file` is the admin's).
    #[arg(long, value_name = "FILE")]
    pfx_password_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct FinalizeArgs {
    #[command(flatten)]
    conn: Conn,
    /// `agent` or `console`.
    #[arg(long, value_name = "LISTENER")]
    listener: String,
    /// Go live although agents have not acknowledged the new root (they are named).
    #[arg(long)]
    force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// No certificate file is this large.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Args)]
pub(crate) struct RenewArgs {
    #[command(flatten)]
    conn: Conn,
    /// `agent` (the agent site) or `console`.
    #[arg(long, value_name = "LISTENER")]
    listener: String,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn run(cmd: CertCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCmd::Status { conn, format } => {
            let list: Vec<ListenerCertStatus> = runtime()?
                .block_on(async { conn.connect().await?.get(paths::SERVER_CERTS).await })?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Format::Text => list.iter().for_each(print_status),
            }
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::Renew(a) => {
            let path = paths::SERVER_CERT_RENEW.replace("{listener}", &a.listener);
            let s: ListenerCertStatus = runtime()?.block_on(async {
                a.conn
                    .connect()
                    .await?
                    .post(&path, &serde_json::json!({}))
                    .await
            })?;
            println!("renewed; served from the next connection on, no restart:");
            print_status(&s);
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::Import(a) => import(a),
        CertCmd::Finalize(a) => {
            let path = paths::SERVER_CERT_FINALIZE.replace("{listener}", &a.listener);
            let done: CertFinalized = runtime()?.block_on(async {
                a.conn
                    .connect()
                    .await?
                    .post(&path, &CertFinalize { force: a.force })
                    .await
            })?;
            match a.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&done)?),
                Format::Text => {
                    println!(
                        "finalized: the new certificate is served from the next connection on"
                    );
                    print_status(&done.status);
                    if !done.stranded.is_empty() {
                        println!(
                            "warning: {} agent(s) had not acknowledged the new root and are stranded:",
                            done.stranded.len()
                        );
                        for s in &done.stranded {
                            println!("  {s}");
                        }
                        if let Some(r) = &done.recovery {
                            println!("{r}");
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::Rollback(a) => {
            let path = paths::SERVER_CERT_ROLLBACK.replace("{listener}", &a.listener);
            let s: ListenerCertStatus = runtime()?.block_on(async {
                a.conn
                    .connect()
                    .await?
                    .post(&path, &serde_json::json!({}))
                    .await
            })?;
            println!(
                "rolled back: the staged certificate and its root are gone; nothing else changed"
            );
            print_status(&s);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn import(a: ImportArgs) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    use std::io::Read as _;
    let f = std::fs::File::open(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        anyhow::bail!(
            "{} is larger than 16 MiB: not a certificate file",
            a.file.display()
        );
    }
    let password = match &a.pfx_password_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        None => None,
    };
    let req = CertImport {
        file_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        password,
        label: a.file.display().to_string(),
    };
    let path = paths::SERVER_CERT_IMPORT.replace("{listener}", &a.listener);
    let s: ListenerCertStatus =
        runtime()?.block_on(async { a.conn.connect().await?.post(&path, &req).await })?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Format::Text => {
            println!(
                "staged: its root is in the communication profile; agents acknowledge it at their next check-in"
            );
            for f in &s.findings {
                println!("  {f}");
            }
            print_status(&s);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &ListenerCertStatus) {
    println!("{} listener", s.listener);
    println!("  subject     {}", s.subject);
    println!("  issuer      {}", s.issuer);
    println!("  sha256      {}", s.sha256);
    println!("  valid       {} .. {}", s.not_before, s.not_after);
    if s.renewal_due {
        println!("  renewal     due (the server renews it within the hour)");
    }
    if s.third_party {
        println!("  source      third-party (its root is in the communication profile)");
    }
    if let Some(w) = &s.warning {
        println!("  warning     {w}");
    }
    if let Some(st) = &s.staged {
        println!(
            "  staged      {} ({}), root {}",
            st.sha256, st.subject, st.root_subject
        );
        println!(
            "              valid until {}, staged {}",
            st.not_after, st.staged_at
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
