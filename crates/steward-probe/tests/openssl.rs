//! `fetch_chain` against the real `openssl s_server`, the reference TLS implementation most
//! third-party endpoints behave like. Skipped (with a message) where no openssl binary exists.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Pki, free_port, pem};
use steward_probe::{PeerChain, ProbeError, fetch_chain};

const OPENSSL: &str = "/usr/bin/openssl";

/// Kills the s_server child however the test ends, so no server outlives its test.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Files {
    _dir: tempfile::TempDir,
    leaf: PathBuf,
    key: PathBuf,
    inter: PathBuf,
    root: PathBuf,
}

fn write_files(pki: &Pki) -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write PEM");
        p
    };
    let leaf = write("leaf.pem", pem("CERTIFICATE", &pki.leaf.cert));
    let key = write("key.pem", pem("PRIVATE KEY", &pki.leaf.key_pkcs8));
    let inter = write("inter.pem", pem("CERTIFICATE", pki.inter.cert()));
    let root = write("root.pem", pem("CERTIFICATE", pki.root.cert()));
    Files {
        _dir: dir,
        leaf,
        key,
        inter,
        root,
    }
}

/// The openssl CLI is the independent peer these tests exist for: `.ci/run` installs it, so
/// its absence is a broken environment and fails the test rather than skipping it.
fn openssl_available() -> bool {
    assert!(
        Path::new(OPENSSL).exists(),
        "{OPENSSL} is not installed (apt-get install openssl)"
    );
    true
}

/// Start `openssl s_server -www` on a free port with `extra` arguments.
/// Starts `openssl s_server` on a free port and returns once it has bound it: it prints
/// `ACCEPT` then. A free port can be taken between `free_port` and the bind by another test's
/// server (the tests run in parallel); such an s_server exits without `ACCEPT`, and another
/// port is tried — otherwise the probe would meet the other test's server.
fn s_server(files: &Files, extra: &[&str]) -> (Server, u16) {
    use std::io::BufRead;
    for _ in 0..10 {
        let port = free_port();
        let mut child = Command::new(OPENSSL)
            .arg("s_server")
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&files.leaf)
            .arg("-key")
            .arg(&files.key)
            .args(extra)
            .arg("-www")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_server");
        let stdout = child.stdout.take().expect("s_server's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads until ACCEPT, then drains what s_server prints, so it never blocks on a pipe.
        std::thread::spawn(move || {
            let mut told = false;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !told && line.trim() == "ACCEPT" {
                    told = true;
                    let _ = tx.send(());
                }
            }
        });
        let server = Server(child);
        // Bounded; an exit without ACCEPT (the port was taken) ends the wait early.
        if rx.recv_timeout(Duration::from_secs(10)).is_ok() {
            return (server, port);
        }
    }
    panic!("openssl s_server did not start on any of 10 ports");
}

/// Probe until s_server is up: it refuses until it has bound, so retry only on Refused
/// (bounded: 100 tries, 100 ms apart).
async fn probe(port: u16) -> Result<PeerChain, ProbeError> {
    let mut last = None;
    for _ in 0..100 {
        match fetch_chain("127.0.0.1", port, Some("localhost"), Duration::from_secs(5)).await {
            Err(ProbeError::Refused { addr }) => {
                last = Some(ProbeError::Refused { addr });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
    Err(last.unwrap_or(ProbeError::InvalidTarget("no attempt made".to_owned())))
}

#[tokio::test]
async fn s_server_with_cert_chain_sends_two() {
    if !openssl_available() {
        return;
    }
    let pki = Pki::new();
    let files = write_files(&pki);
    let inter = files.inter.to_string_lossy().into_owned();
    let (_server, port) = s_server(&files, &["-cert_chain", &inter]);

    let chain = probe(port).await.expect("chain from openssl");

    assert_eq!(chain.certs, pki.served_chain());
    assert_eq!(chain.protocol, "TLSv1_3");
    assert_eq!(chain.client_auth, None);
}

#[tokio::test]
async fn s_server_without_cert_chain_sends_only_the_leaf() {
    if !openssl_available() {
        return;
    }
    let pki = Pki::new();
    let files = write_files(&pki);
    let (_server, port) = s_server(&files, &[]);

    let chain = probe(port).await.expect("chain from openssl");

    // The classic "missing intermediate" misconfiguration, seen as the client sees it.
    assert_eq!(chain.certs, vec![pki.leaf.cert.clone()]);
}

#[tokio::test]
async fn s_server_tls12_only() {
    if !openssl_available() {
        return;
    }
    let pki = Pki::new();
    let files = write_files(&pki);
    let inter = files.inter.to_string_lossy().into_owned();
    let (_server, port) = s_server(&files, &["-cert_chain", &inter, "-tls1_2"]);

    let chain = probe(port).await.expect("chain from openssl");

    assert_eq!(chain.protocol, "TLSv1_2");
    assert_eq!(chain.certs.len(), 2);
}

/// `-Verify 1` makes a client certificate mandatory. With TLS 1.3 the chain is captured and
/// openssl's post-handshake alert is recorded as the rejection.
#[tokio::test]
async fn s_server_requiring_client_cert_tls13() {
    if !openssl_available() {
        return;
    }
    let pki = Pki::new();
    let files = write_files(&pki);
    let inter = files.inter.to_string_lossy().into_owned();
    let root = files.root.to_string_lossy().into_owned();
    let (_server, port) = s_server(
        &files,
        &["-cert_chain", &inter, "-Verify", "1", "-CAfile", &root],
    );

    let chain = probe(port).await.expect("TLS 1.3: chain captured");

    assert_eq!(chain.certs.len(), 2);
    let auth = chain.client_auth.expect("openssl asked for a client cert");
    assert_eq!(
        auth.acceptable_issuers.len(),
        1,
        "openssl names the -CAfile root"
    );
    let rejected = auth.rejected.expect("openssl rejects the missing cert");
    assert!(rejected.contains("certificate_required"), "{rejected}");
}

/// The same with TLS 1.2: openssl fails the handshake itself.
#[tokio::test]
async fn s_server_requiring_client_cert_tls12() {
    if !openssl_available() {
        return;
    }
    let pki = Pki::new();
    let files = write_files(&pki);
    let inter = files.inter.to_string_lossy().into_owned();
    let root = files.root.to_string_lossy().into_owned();
    let (_server, port) = s_server(
        &files,
        &[
            "-cert_chain",
            &inter,
            "-Verify",
            "1",
            "-CAfile",
            &root,
            "-tls1_2",
        ],
    );

    let err = probe(port)
        .await
        .expect_err("TLS 1.2: rejected in the handshake");

    let ProbeError::Tls { detail, .. } = &err else {
        panic!("expected Tls, got {err:?}");
    };
    assert!(
        detail.contains("requested a client certificate"),
        "{detail}"
    );
    assert!(detail.contains("presented 2 certificate(s)"), "{detail}");
}
