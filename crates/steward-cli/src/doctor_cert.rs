//! `steward doctor cert`: gather the evidence (file or handshake, trust anchors, CRLs) and hand
//! it to the doctor, which judges it without I/O of its own.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use steward_doctor::cert::{
    CertEvidence, CrlEvidence, Input, KeyEvidence, ProbeFailure, ReadOutcome, Revocation,
};
use steward_doctor::{CertReport, Severity};
use steward_pki::{
    CertFacts, CertificateDer, Chain, LinkSource, Material, MaterialError, MaterialFormat,
    build_chain, key_matches_cert, parse_crl, read_material,
};

use crate::cli::{CertArgs, Format};

/// No certificate file is this large; refuse before reading it all into memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Large enterprise CRLs run to a few MiB; 32 MiB leaves room without inviting abuse.
const MAX_CRL_BYTES: usize = 32 * 1024 * 1024;

pub(crate) fn run(args: &CertArgs, env_password: Option<String>) -> anyhow::Result<ExitCode> {
    let password = match &args.password_file {
        Some(f) => Some(read_password(f)?),
        None => env_password,
    };
    let anchors = load_anchors(args.trust.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(check(args, password.as_deref(), &anchors))?;
    print(&report, args.format)?;
    Ok(exit_code(&report))
}

pub(crate) fn exit_code(report: &CertReport) -> ExitCode {
    if report.worst() == Severity::Error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub(crate) fn print(report: &CertReport, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Text => print!("{}", report.to_text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(report)?),
    }
    Ok(())
}

/// Check one target and build the report.
pub(crate) async fn check(
    args: &CertArgs,
    password: Option<&str>,
    anchors: &[CertFacts],
) -> anyhow::Result<CertReport> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut ev = gather(args, password, anchors, timeout).await?;
    if let (false, Some(chain)) = (args.no_revocation, &ev.chain) {
        ev.revocation = Revocation::Checked(fetch_crls(chain, timeout).await);
    }
    Ok(CertReport::new(
        &args.target,
        &ev,
        args.profile,
        time::OffsetDateTime::now_utc(),
    ))
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the password file {}", path.display()))?;
    // The first line, without its line ending: `echo secret > file` must work.
    Ok(text.lines().next().unwrap_or("").to_owned())
}

fn load_anchors(trust: Option<&Path>) -> anyhow::Result<Vec<CertFacts>> {
    let ders: Vec<CertificateDer<'static>> = match trust {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the trust bundle {}", path.display()))?;
            read_material(&bytes, None)
                .with_context(|| format!("the trust bundle {} is unusable", path.display()))?
                .certs
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                bail!(
                    "no system trust anchors found ({}); pass --trust FILE",
                    found
                        .errors
                        .first()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "empty store".into())
                );
            }
            found.certs
        }
    };
    // An odd certificate in the system store must not stop the check of an unrelated one.
    Ok(ders
        .iter()
        .filter_map(|d| CertFacts::from_der(d).ok())
        .collect())
}

async fn gather(
    args: &CertArgs,
    password: Option<&str>,
    anchors: &[CertFacts],
    timeout: Duration,
) -> anyhow::Result<CertEvidence> {
    let path = Path::new(&args.target);
    let mut ev = CertEvidence {
        read: ReadOutcome::Read,
        input: Input::File { format: None },
        chain: None,
        key: KeyEvidence::NotApplicable("no private key in the target"),
        names: args.fqdns.clone(),
        revocation: Revocation::Disabled,
    };
    let material = if path.exists() {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            bail!("{} is a directory, not a certificate file", path.display());
        }
        if meta.len() > MAX_FILE_BYTES {
            Err(MaterialError::Unrecognised(format!(
                "{} bytes is far larger than any certificate file",
                meta.len()
            )))
        } else {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            read_material(&bytes, password)
        }
    } else if looks_like_endpoint(&args.target) {
        let (host, port) =
            steward_probe::parse_endpoint(&args.target).map_err(|e| anyhow::anyhow!("{e}"))?;
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        let sni = args
            .fqdns
            .first()
            .cloned()
            .or_else(|| (!is_ip).then(|| host.clone()));
        if ev.names.is_empty() {
            ev.names.push(host.clone());
        }
        ev.key = KeyEvidence::NotApplicable(
            "endpoint: the server proved it holds the key in the handshake",
        );
        progress(&format!("connecting to {host}:{port}"));
        match steward_probe::fetch_chain(&host, port, sni.as_deref(), timeout).await {
            Ok(peer) => {
                ev.input = Input::Endpoint {
                    addr: peer.addr.to_string(),
                    negotiated: Some(format!("{}, {}", peer.protocol, peer.cipher_suite)),
                };
                Ok(Material {
                    format: MaterialFormat::Der,
                    certs: peer.certs,
                    keys: Vec::new(),
                })
            }
            Err(e) => {
                ev.input = Input::Endpoint {
                    addr: format!("{host}:{port}"),
                    negotiated: None,
                };
                ev.read = ReadOutcome::Probe(ProbeFailure {
                    id: e.id(),
                    message: e.to_string(),
                    remedy: e.remedy().to_owned(),
                });
                return Ok(ev);
            }
        }
    } else {
        bail!(
            "{}: no such file; for a live endpoint give host:port or https://host:port",
            args.target
        );
    };
    let material = match material {
        Ok(m) => m,
        Err(e) => {
            ev.read = ReadOutcome::Material(e);
            return Ok(ev);
        }
    };
    if let Input::File { format } = &mut ev.input {
        *format = Some(material.format);
    }
    let mut facts = Vec::with_capacity(material.certs.len());
    for (index, der) in material.certs.iter().enumerate() {
        match CertFacts::from_der(der) {
            Ok(f) => facts.push(f),
            Err(reason) => {
                ev.read = ReadOutcome::Material(MaterialError::BadCertificate { index, reason });
                return Ok(ev);
            }
        }
    }
    let Some(leaf_index) = material.leaf_index() else {
        ev.read = ReadOutcome::Material(match material.format {
            MaterialFormat::Pkcs12 => {
                MaterialError::Unrecognised("the PKCS#12 file holds no certificate".into())
            }
            _ => MaterialError::Unrecognised("no certificate".into()),
        });
        return Ok(ev);
    };
    let leaf = facts.remove(leaf_index);
    if matches!(ev.input, Input::File { .. }) {
        ev.key = match (material.format, material.keys.first()) {
            (MaterialFormat::Pkcs12, None) => KeyEvidence::Missing,
            (_, None) => KeyEvidence::NotApplicable("no private key in the file"),
            (_, Some(key)) => match key_matches_cert(key, &leaf.spki_der) {
                Ok(true) => KeyEvidence::Matches,
                Ok(false) => KeyEvidence::Mismatch,
                Err(why) => KeyEvidence::Unloadable(why),
            },
        };
    }
    ev.chain = Some(build_chain(leaf, &facts, anchors));
    Ok(ev)
}

/// `host:port`, `[v6]:port` or a URL; a bare word is taken as a file name that does not exist.
fn looks_like_endpoint(target: &str) -> bool {
    target.contains("://")
        || target
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Fetch every CRL distribution point of the chain (each URL once). Trust anchors and
/// self-signed roots are not revocation-checked: nothing above them could revoke them.
async fn fetch_crls(chain: &Chain, timeout: Duration) -> Vec<CrlEvidence> {
    let mut out = Vec::new();
    let mut cache: HashMap<String, Result<steward_pki::CrlFacts, String>> = HashMap::new();
    for (i, link) in chain.links.iter().enumerate() {
        if link.source == LinkSource::Anchor || (i > 0 && link.cert.is_self_issued()) {
            continue;
        }
        let http: Vec<&String> = link
            .cert
            .crl_urls
            .iter()
            .filter(|u| u.starts_with("http://"))
            .collect();
        if http.is_empty() {
            if let Some(other) = link.cert.crl_urls.first() {
                // LDAP and file distribution points only work for domain members on the LAN:
                // an agent on the internet has no way to check this certificate.
                out.push(CrlEvidence {
                    link: i,
                    url: other.clone(),
                    fetched: Err(
                        "only non-HTTP distribution points; agents fetch CRLs over HTTP".into(),
                    ),
                });
            }
            continue;
        }
        for url in http {
            if !cache.contains_key(url) {
                progress(&format!("fetching CRL {url}"));
                let fetched = match steward_probe::fetch_crl(url, timeout, MAX_CRL_BYTES).await {
                    Ok(body) => parse_crl(&body).map_err(|e| format!("fetched, but {e}")),
                    Err(e) => Err(format!("{} ({})", e, e.id())),
                };
                cache.insert(url.clone(), fetched);
            }
            let fetched = cache
                .get(url)
                .cloned()
                .unwrap_or_else(|| Err("internal: cache miss".into()));
            out.push(CrlEvidence {
                link: i,
                url: url.clone(),
                fetched,
            });
        }
    }
    out
}

/// Progress for slow network steps, only when a person is watching.
fn progress(what: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("… {what}");
    }
}
