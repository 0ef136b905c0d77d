//! `steward demo cert`: a certificate check on a sample. The demo
//! builds a small platform PKI (root, issuing CA, CRLs served over HTTP on loopback), exports a
//! server certificate twice — once correctly, once without its intermediate, the most common
//! field failure — and runs `doctor cert` on both.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use steward_doctor::{Profile, Severity};
use steward_pki::{Authority, KeySpec, LeafRequest, Pkcs12Encryption, Usage, write_pkcs12};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::{CertArgs, DemoArgs, Format};

const FQDN: &str = "smp.example.net";
const PASSWORD: &str = "demo-password";

pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let (_tmp, dir) = match &args.out {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::tempdir().context("cannot create a temporary directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(demo(&dir, args.format))
}

async fn demo(dir: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let base = format!("http://{}", listener.local_addr()?);
    let now = OffsetDateTime::now_utc();
    say(
        format,
        &format!("Building a sample platform PKI in {}", dir.display()),
    );
    let root = Authority::new_root(
        "Steward Demo Root",
        KeySpec::EcdsaP256,
        now - Duration::hours(1),
        now + Duration::days(3650),
    )?;
    let issuing = root.new_intermediate(
        "Steward Demo Issuing CA",
        KeySpec::EcdsaP256,
        now - Duration::hours(1),
        now + Duration::days(1825),
        &[format!("{base}/root.crl")],
    )?;
    let leaf = issuing.issue(&LeafRequest {
        common_name: FQDN.into(),
        dns_names: vec![FQDN.into()],
        ip_addrs: vec![],
        usage: Usage::Server,
        not_before: now - Duration::hours(1),
        not_after: now + Duration::days(397),
        crl_urls: vec![format!("{base}/issuing.crl")],
        key: KeySpec::EcdsaP256,
    })?;
    let root_crl = root.sign_crl(&[], now - Duration::minutes(5), now + Duration::days(1), 1)?;
    let issuing_crl =
        issuing.sign_crl(&[], now - Duration::minutes(5), now + Duration::days(1), 1)?;
    tokio::spawn(serve_crls(
        listener,
        Arc::new(root_crl.to_vec()),
        Arc::new(issuing_crl.to_vec()),
    ));

    let full = [leaf.cert.clone(), issuing.cert().clone()];
    let good = dir.join("server.pfx");
    let bad = dir.join("server-without-intermediate.pfx");
    let trust = dir.join("root.pem");
    let password_file = dir.join("pfx-password.txt");
    write(
        &good,
        &write_pkcs12(
            &leaf.key_pkcs8,
            &full,
            PASSWORD,
            FQDN,
            Pkcs12Encryption::Aes256,
        )?,
    )?;
    write(
        &bad,
        &write_pkcs12(
            &leaf.key_pkcs8,
            &full[..1],
            PASSWORD,
            FQDN,
            Pkcs12Encryption::Aes256,
        )?,
    )?;
    write(&trust, pem("CERTIFICATE", root.cert()).as_bytes())?;
    write(&password_file, format!("{PASSWORD}\n").as_bytes())?;

    let anchors = vec![steward_pki::CertFacts::from_der(root.cert()).map_err(anyhow::Error::msg)?];
    let mut as_expected = true;
    for (file, want) in [(&good, Severity::Ok), (&bad, Severity::Error)] {
        let args = CertArgs {
            target: file.display().to_string(),
            password_file: Some(password_file.clone()),
            fqdns: vec![FQDN.into()],
            trust: Some(trust.clone()),
            profile: Profile::Steward,
            format,
            no_revocation: false,
            timeout: 5.0,
        };
        say(
            format,
            &format!(
                "\n$ steward doctor cert {} --password-file {} --trust {} --fqdn {FQDN}",
                args.target,
                password_file.display(),
                trust.display()
            ),
        );
        let report = crate::doctor_cert::check(&args, Some(PASSWORD), &anchors).await?;
        crate::doctor_cert::print(&report, format)?;
        as_expected &= report.worst() == want;
    }
    say(
        format,
        &format!(
            "\nThe second file lacks its intermediate: CERT-CHAIN-INCOMPLETE names it, with the fix.\n\
             The CRLs were served on {base} for this run only; to re-run the checks by hand on the\n\
             files in {} (kept with --out DIR), add --no-revocation.",
            dir.display()
        ),
    );
    Ok(if as_expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Narration goes to stderr in JSON mode so stdout stays machine-readable.
fn say(format: Format, text: &str) {
    match format {
        Format::Text => println!("{text}"),
        Format::Json => eprintln!("{text}"),
    }
}

fn write(path: &PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn pem(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for j in 0..4 {
            b64.push(if j <= chunk.len() {
                T[(n >> (18 - 6 * j) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .filter_map(|l| std::str::from_utf8(l).ok())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

/// A minimal HTTP/1.0 responder for the two CRLs: enough for the demo's distribution points.
async fn serve_crls(listener: TcpListener, root: Arc<Vec<u8>>, issuing: Arc<Vec<u8>>) {
    while let Ok((mut sock, _)) = listener.accept().await {
        let (root, issuing) = (root.clone(), issuing.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let body = if head.starts_with("GET /root.crl ") {
                Some(root)
            } else if head.starts_with("GET /issuing.crl ") {
                Some(issuing)
            } else {
                None
            };
            let response = match body {
                Some(b) => {
                    let mut r = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&b);
                    r
                }
                None => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = sock.write_all(&response).await;
            let _ = sock.shutdown().await;
        });
    }
}
