//! `steward doctor gateway HOST:PORT`: the path checker of `steward-agent doctor`, run from an
//! admin's machine against one gateway (or agent-site) address: DNS, TCP, TLS, certificate
//! against the anchors, thumbprint, and — with an agent's data directory — the ping through the
//! gateway to the server with that agent's identity.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Deserialize;
use steward_probe::path::{PathIdentity, PathTarget, PathsReport, check_path, profile_targets};
use steward_proto::{AgentConfig, CommunicationProfile};

use crate::cli::Format;

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The gateway's address as agents use it: HOST:PORT (or https://HOST:PORT).
    pub(crate) target: String,
    /// PEM file of the roots to trust [default: the agent's profile with --agent-data-dir].
    #[arg(long, value_name = "FILE")]
    pub(crate) anchors: Option<PathBuf>,
    /// A SHA-256 thumbprint (hex) the gateway's certificate must have; repeat for current and
    /// next [default: the agent's profile entry for HOST:PORT].
    #[arg(long = "thumbprint", value_name = "HEX")]
    pub(crate) thumbprints: Vec<String>,
    /// An agent's data directory: use its profile (anchors, thumbprints) and its identity, so
    /// the check goes through the gateway to the server as that agent (needs its key).
    #[arg(long, value_name = "DIR")]
    pub(crate) agent_data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Seconds allowed for each step.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub(crate) timeout: u64,
}

/// The parts of the agent's `identity.json` this check needs (the agent writes more).
#[derive(Debug, Deserialize)]
struct AgentIdentity {
    cert_pem: String,
    chain_pem: Vec<String>,
    profile: CommunicationProfile,
}

pub(crate) fn run(args: &GatewayArgs) -> anyhow::Result<ExitCode> {
    let (host, port) = steward_probe::parse_endpoint(&args.target)?;
    let agent = match &args.agent_data_dir {
        Some(dir) => Some(read_agent(dir)?),
        None => None,
    };
    // The agent's own entry for this address, when it has one: its name, roots, thumbprints.
    let from_profile = agent.as_ref().and_then(|(profile, _)| {
        let wanted = authority(&host, port);
        profile_targets(profile)
            .0
            .into_iter()
            .find(|t| t.authority() == wanted)
    });
    let anchors = match &args.anchors {
        Some(file) => read_anchors(file)?,
        None => match (&from_profile, &agent) {
            (Some(t), _) => t.anchors.clone(),
            (None, Some((profile, _))) => profile_targets(&CommunicationProfile {
                gateways: Vec::new(),
                ..profile.clone()
            })
            .0
            .into_iter()
            .next()
            .map(|t| t.anchors)
            .unwrap_or_default(),
            (None, None) => bail!(
                "give the roots to trust: --anchors FILE (PEM), or --agent-data-dir DIR to use an agent's profile"
            ),
        },
    };
    let thumbprints = if args.thumbprints.is_empty() {
        from_profile
            .as_ref()
            .map(|t| t.thumbprints.clone())
            .unwrap_or_default()
    } else {
        args.thumbprints.clone()
    };
    let target = PathTarget {
        host: host.clone(),
        port,
        gateway: Some(
            from_profile
                .as_ref()
                .and_then(|t| t.gateway.clone())
                .unwrap_or_else(|| authority(&host, port)),
        ),
        thumbprints,
        anchors,
    };
    let identity = agent.and_then(|(_, id)| id);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let timeout = Duration::from_secs(args.timeout.clamp(1, 3600));
    let path = rt.block_on(check_path(&target, identity.as_ref(), timeout));
    let report = PathsReport::new(target.authority(), Vec::new(), vec![path]);
    match args.format {
        Format::Text => print!("{}", report.to_text("steward doctor gateway")),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn read_anchors(file: &Path) -> anyhow::Result<Vec<steward_probe::CertificateDer<'static>>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let m = steward_pki::read_material(&bytes, None)
        .with_context(|| format!("{} holds no usable certificate", file.display()))?;
    if m.certs.is_empty() {
        bail!("{} holds no certificate", file.display());
    }
    Ok(m.certs)
}

/// The agent's current profile (its stored configuration's, else the enrollment one, as the
/// agent itself chooses) and, when its key is readable, its identity.
fn read_agent(dir: &Path) -> anyhow::Result<(CommunicationProfile, Option<PathIdentity>)> {
    let id_path = dir.join("identity.json");
    let text = std::fs::read_to_string(&id_path)
        .with_context(|| format!("cannot read {} (is the agent enrolled?)", id_path.display()))?;
    let id: AgentIdentity = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an agent identity", id_path.display()))?;
    let profile = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<AgentConfig>(&t).ok())
        .map(|c| c.profile)
        .filter(|p| !p.servers.is_empty() && !p.trust_anchors_pem.is_empty())
        .unwrap_or_else(|| id.profile.clone());
    let key_path = dir.join("agent.key");
    let identity = match std::fs::read(&key_path) {
        Ok(key) => {
            let mut pem = id.cert_pem.clone();
            for c in &id.chain_pem {
                pem.push('\n');
                pem.push_str(c);
            }
            pem.push('\n');
            pem.push_str(&String::from_utf8_lossy(&key));
            let m = steward_pki::read_material(pem.as_bytes(), None)
                .with_context(|| format!("the identity in {} is unusable", dir.display()))?;
            let mut chain = m.certs.clone();
            // The client certificate goes first whatever order the reader returned.
            if let Some(i) = m.leaf_index() {
                let leaf = chain.remove(i);
                chain.insert(0, leaf);
            }
            let key = m
                .keys
                .into_iter()
                .next()
                .with_context(|| format!("{} holds no private key", key_path.display()))?;
            Some(PathIdentity { chain, key })
        }
        Err(e) => {
            eprintln!(
                "steward: cannot read {} ({e}): the ping through the gateway is skipped (run as the agent's user or root)",
                key_path.display()
            );
            None
        }
    };
    Ok((profile, identity))
}
