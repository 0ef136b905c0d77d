//! Certificate lifecycle end to end on loopback with real processes (issue 5): a `steward
//! server`, a `steward gateway`, and real `steward-agent`s — two on the LAN, one that reaches
//! the server only through the gateway — running throughout, while
//!
//! 1. the agent-site certificate is renewed from the platform CA (`steward server cert renew`):
//!    the new one is served without a restart and no agent goes Offline or logs a TLS fault;
//! 2. every agent renews its own client certificate (short lifetimes via `[certs]`), through
//!    the gateway too, without a gap;
//! 3. a LAN agent is revoked and the gateway agent deleted: each is refused (the gateway one at
//!    the gateway's TLS edge, within one CRL refresh) while the remaining agent is untouched.
//!
//! Needs the `steward-agent` binary next to `steward`: `cargo test --workspace` builds both.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod procs;
use procs::{
    Proc, StartedGateway, admin, agent_bin, device, init_loopback_server, json, log_of, ok, run,
    start_gateway, steward, wait_for,
};

/// SHA-256 (upper-case hex) of the certificate a TLS server on 127.0.0.1:port presents now.
fn served_sha256(port: u16) -> String {
    let out = ok(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    )));
    out.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_uppercase()
}

#[test]
fn certificates_renew_and_revoke_while_agents_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, agent_port) = init_loopback_server(tmp.path());
    // Quick check-ins, and agent certificates that are due for renewal after 12 s.
    let cfg = server.join("steward.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("checkin_interval_secs = 60", "checkin_interval_secs = 5");
    std::fs::write(
        &cfg,
        format!("{text}\n[certs]\nagent_validity_secs = 120\nrenew_at_percent = 10\n"),
    )
    .unwrap();
    let server_log = tmp.path().join("server.log");
    let mut server_proc = Proc::spawn(
        Command::new(steward())
            .args(["server", "run", "--data-dir"])
            .arg(&server),
        &server_log,
    );
    wait_for("the server to listen", Duration::from_secs(30), || {
        server_proc.assert_running("the server", &server_log);
        server
            .join("run")
            .join("addresses.json")
            .exists()
            .then_some(())
    });

    // A gateway that refreshes its CRL every 2 s.
    let StartedGateway { proc: _gw_proc, .. } = start_gateway(
        tmp.path(),
        &server,
        agent_port,
        &["--crl-refresh-secs", "2", "--report-interval", "5"],
    );

    // Three agents: two on the LAN, one through the gateway only.
    let package = tmp.path().join("agent-package.json");
    ok(&mut admin(
        &server,
        &[
            "package",
            "agent",
            "--max-uses",
            "3",
            "--out",
            package.to_str().unwrap(),
        ],
    ));
    let names = ["lan-0", "lan-1", "internet-0"];
    let mut agents: Vec<(PathBuf, Proc)> = Vec::new();
    for name in names {
        let dir = tmp.path().join(name);
        ok(Command::new(agent_bin())
            .args(["enroll", "--package"])
            .arg(&package)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", name]));
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "--data-dir"]).arg(&dir);
        if name.starts_with("internet") {
            cmd.arg("--gateways-only");
        }
        let p = Proc::spawn(&mut cmd, &tmp.path().join(format!("{name}.stderr")));
        agents.push((dir, p));
    }
    wait_for("every agent online", Duration::from_secs(40), || {
        let list = json(&server, &["devices", "list"]);
        let all = names.iter().all(|n| {
            device(&list, n)["status"] == "online" && device(&list, n)["last_checkin"].is_string()
        });
        all.then_some(())
    });
    let path = json(&server, &["devices", "list"]);
    assert!(
        device(&path, "internet-0")["connection_path"]
            .as_str()
            .unwrap()
            .starts_with("gateway "),
        "{path}"
    );

    // 1. The agent-site certificate renewed from the platform CA, agents running throughout.
    let status = json(&server, &["server", "cert", "status"]);
    let old = status[0]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(status[0]["listener"], "agent");
    assert_eq!(served_sha256(agent_port), old);
    let renewed_at = Instant::now();
    let out = ok(&mut admin(
        &server,
        &["server", "cert", "renew", "--listener", "agent"],
    ));
    assert!(out.contains("renewed"), "{out}");
    let new = json(&server, &["server", "cert", "status"])[0]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert_eq!(served_sha256(agent_port), new, "served without a restart");
    server_proc.assert_running("the server", &server_log);
    let before: Vec<String> = {
        let list = json(&server, &["devices", "list"]);
        names
            .iter()
            .map(|n| {
                device(&list, n)["last_checkin"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // Two check-in intervals: every agent checks in again, none is ever Offline, and none
    // logs a TLS fault.
    wait_for(
        "every agent to check in after the renewal",
        Duration::from_secs(30),
        || {
            let list = json(&server, &["devices", "list"]);
            for n in names {
                assert_eq!(
                    device(&list, n)["status"],
                    "online",
                    "{n} went offline: {list}"
                );
            }
            let moved = names
                .iter()
                .zip(&before)
                .all(|(n, b)| device(&list, n)["last_checkin"].as_str().unwrap() > b.as_str());
            (moved && renewed_at.elapsed() > Duration::from_secs(11)).then_some(())
        },
    );
    for (dir, _) in &agents {
        let log = log_of(dir);
        assert!(!log.contains("AGENT-TLS-"), "{}: {log}", dir.display());
    }

    // 2. Each agent renews its own certificate (through the gateway too), without a gap.
    let first = json(&server, &["devices", "list"]);
    wait_for(
        "every agent to renew its certificate",
        Duration::from_secs(60),
        || {
            let list = json(&server, &["devices", "list"]);
            for n in names {
                assert_eq!(
                    device(&list, n)["status"],
                    "online",
                    "{n} went offline: {list}"
                );
            }
            let renewed = names.iter().zip(&agents).all(|(n, (dir, _))| {
                log_of(dir).contains("AGENT-CERT-RENEWED")
                    && device(&list, n)["cert_expires_at"] != device(&first, n)["cert_expires_at"]
                    && device(&list, n)["cert_renewal_pending"] == false
            });
            renewed.then_some(())
        },
    );
    for (dir, _) in &agents {
        let log = log_of(dir);
        assert!(
            !log.contains("AGENT-CERT-RENEW-FAILED"),
            "{}: {log}",
            dir.display()
        );
    }

    // 3. Revoke a LAN agent and delete the gateway agent: each is refused — the gateway one
    //    at the gateway's TLS edge once its CRL refresh (2 s) brings the revocation — and the
    //    remaining agent is untouched.
    ok(&mut admin(&server, &["devices", "revoke", "lan-0"]));
    ok(&mut admin(&server, &["devices", "delete", "internet-0"]));
    let revoked_at = Instant::now();
    wait_for("lan-0 to be refused", Duration::from_secs(30), || {
        let log = log_of(&agents[0].0);
        (log.contains("AGENT-UNKNOWN-DEVICE") || log.contains("AGENT-TLS-CLIENT-REJECTED"))
            .then_some(())
    });
    wait_for(
        "internet-0 to be refused at the gateway's TLS edge",
        Duration::from_secs(30),
        || {
            log_of(&agents[2].0)
                .contains("AGENT-TLS-CLIENT-REJECTED")
                .then_some(())
        },
    );
    let list = json(&server, &["devices", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|d| d["name"] != "internet-0"),
        "a deleted device is gone: {list}"
    );
    let gone = run(&mut admin(&server, &["devices", "revoke", "internet-0"]));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("DEVICE-NOT-FOUND"));
    // The bystander keeps checking in.
    let seen = device(&list, "lan-1")["last_checkin"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for("lan-1 to keep checking in", Duration::from_secs(20), || {
        let list = json(&server, &["devices", "list"]);
        assert_eq!(device(&list, "lan-1")["status"], "online");
        (device(&list, "lan-1")["last_checkin"].as_str().unwrap() > seen.as_str()).then_some(())
    });
    assert!(revoked_at.elapsed() < Duration::from_secs(60));
    drop(agents);
}

/// Runs `openssl` in `dir` (with a minimal configuration, so the host's cannot change the
/// fixtures); panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .env("OPENSSL_CONF", dir.join("openssl.cnf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A third-party PKI made by the `openssl` CLI (RSA, a root and an issuing CA, "Acme"), and an
/// agent-site certificate from it for localhost and 127.0.0.1, as two PKCS#12 files: one with
/// the whole chain, one that lacks the intermediate. Returns (full, lacking, leaf PEM).
fn acme_pfx(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("openssl.cnf"),
        "[req]\ndistinguished_name = dn\n[dn]\n[ca_ext]\nbasicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-extensions",
            "ca_ext",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-days",
            "3650",
            "-sha256",
            "-subj",
            "/O=Acme/CN=Acme Root",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "inter.key",
            "-out",
            "inter.csr",
            "-subj",
            "/O=Acme/CN=Acme Issuing CA",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "inter.pem",
            "-days",
            "1825",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "ca_ext",
            "-sha256",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "inter.pem",
            "-CAkey",
            "inter.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "365",
            "-extfile",
            "leaf.ext",
            "-sha256",
        ],
    );
    let chain = [
        std::fs::read_to_string(dir.join("inter.pem")).unwrap(),
        std::fs::read_to_string(dir.join("root.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            "leaf.pem",
            "-inkey",
            "leaf.key",
            "-certfile",
            "chain.pem",
            "-out",
            "full.pfx",
            "-passout",
            "pass:acme-secret",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            "leaf.pem",
            "-inkey",
            "leaf.key",
            "-certfile",
            "root.pem",
            "-out",
            "no-intermediate.pfx",
            "-passout",
            "pass:acme-secret",
        ],
    );
    std::fs::write(dir.join("pfx-password"), "acme-secret\n").unwrap();
    (
        dir.join("full.pfx"),
        dir.join("no-intermediate.pfx"),
        dir.join("leaf.pem"),
    )
}

/// Issue tests 2 and 3: the article-000 scenario. The agent-site certificate is replaced by a
/// third-party one made by `openssl` under a different root, in phases, with agents running:
/// a PFX that lacks the intermediate is refused with CERT-CHAIN-INCOMPLETE and nothing
/// changes; the full one is staged (its root reaches every agent), rolled back, staged again,
/// refused at finalize while an enrolled agent that is switched off has not acknowledged it, and
/// finalized with `--force`, which names that agent and how it recovers. No running agent is
/// Offline at any check-in or logs a TLS fault, and the server still passes its configuration
/// check with the new certificate (a restart is safe). Issue test 5: the switched-off agent is
/// started after finalize, recovers through the signed trust bundle, and the console shows it.
#[test]
fn a_third_party_certificate_replaces_the_agent_site_certificate_in_phases() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, agent_port) = init_loopback_server(tmp.path());
    let cfg = server.join("steward.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("checkin_interval_secs = 60", "checkin_interval_secs = 5");
    std::fs::write(&cfg, text).unwrap();
    let server_log = tmp.path().join("server.log");
    let mut server_proc = Proc::spawn(
        Command::new(steward())
            .args(["server", "run", "--data-dir"])
            .arg(&server),
        &server_log,
    );
    wait_for("the server to listen", Duration::from_secs(30), || {
        server_proc.assert_running("the server", &server_log);
        server
            .join("run")
            .join("addresses.json")
            .exists()
            .then_some(())
    });
    let package = tmp.path().join("agent-package.json");
    ok(&mut admin(
        &server,
        &[
            "package",
            "agent",
            "--max-uses",
            "4",
            "--out",
            package.to_str().unwrap(),
        ],
    ));
    let names = ["pc-0", "pc-1", "pc-2"];
    let mut agents = Vec::new();
    for name in names.iter().chain(&["laptop-in-a-drawer"]) {
        let dir = tmp.path().join(name);
        ok(Command::new(agent_bin())
            .args(["enroll", "--package"])
            .arg(&package)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", name]));
        // The laptop was enrolled and then put away: it never checks in.
        if name.starts_with("pc") {
            let p = Proc::spawn(
                Command::new(agent_bin())
                    .args(["run", "--data-dir"])
                    .arg(&dir),
                &tmp.path().join(format!("{name}.stderr")),
            );
            agents.push((dir, p));
        }
    }
    let all_online = || {
        let list = json(&server, &["devices", "list"]);
        for n in names {
            assert_eq!(
                device(&list, n)["status"],
                "online",
                "{n} is not online: {list}"
            );
        }
    };
    wait_for("the agents online", Duration::from_secs(40), || {
        let list = json(&server, &["devices", "list"]);
        names
            .iter()
            .all(|n| device(&list, n)["status"] == "online")
            .then_some(())
    });
    let platform_sha = served_sha256(agent_port);
    let (full, lacking, leaf) = acme_pfx(&tmp.path().join("acme"));
    let pfx_pw = tmp.path().join("acme").join("pfx-password");

    // 3. The PFX without the intermediate: refused with CERT-CHAIN-INCOMPLETE, nothing changed.
    let out = run(admin(&server, &["server", "cert", "import"])
        .arg(&lacking)
        .args(["--listener", "agent", "--pfx-password-file"])
        .arg(&pfx_pw));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("CERT-CHAIN-INCOMPLETE"), "{stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");
    let status = json(&server, &["server", "cert", "status"]);
    assert!(status[0]["staged"].is_null(), "{status}");
    assert!(!server.join("pki").join("staged-agent-site").exists());
    assert_eq!(served_sha256(agent_port), platform_sha);
    all_online();

    // 2. Stage the full one: its root goes into the profile; then roll back, then stage again.
    let staged = json(
        &server,
        &[
            "server",
            "cert",
            "import",
            full.to_str().unwrap(),
            "--listener",
            "agent",
            "--pfx-password-file",
            pfx_pw.to_str().unwrap(),
        ],
    );
    assert_eq!(
        staged["staged"]["root_subject"], "O=Acme, CN=Acme Root",
        "{staged}"
    );
    let acme_sha = staged["staged"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(
        served_sha256(agent_port),
        platform_sha,
        "staging serves nothing new"
    );
    ok(&mut admin(
        &server,
        &["server", "cert", "rollback", "--listener", "agent"],
    ));
    assert!(json(&server, &["server", "cert", "status"])[0]["staged"].is_null());
    let staged = json(
        &server,
        &[
            "server",
            "cert",
            "import",
            full.to_str().unwrap(),
            "--listener",
            "agent",
            "--pfx-password-file",
            pfx_pw.to_str().unwrap(),
        ],
    );
    assert_eq!(staged["staged"]["total"], 4);

    // Distribute: the three running agents acknowledge; the laptop in the drawer cannot.
    wait_for(
        "the running agents to acknowledge the new root",
        Duration::from_secs(30),
        || {
            all_online();
            let s = json(&server, &["server", "cert", "status"]);
            (s[0]["staged"]["acknowledged"] == 3).then_some(())
        },
    );
    let s = json(&server, &["server", "cert", "status"]);
    let pending = s[0]["staged"]["pending"].to_string();
    assert!(pending.contains("laptop-in-a-drawer"), "{s}");
    let refused = run(&mut admin(
        &server,
        &["server", "cert", "finalize", "--listener", "agent"],
    ));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("SERVER-CERT-NOT-DISTRIBUTED") && stderr.contains("laptop-in-a-drawer"),
        "{stderr}"
    );
    assert_eq!(served_sha256(agent_port), platform_sha);

    // Forced: the laptop is named as stranded, with how it comes back.
    let done = json(
        &server,
        &[
            "server",
            "cert",
            "finalize",
            "--listener",
            "agent",
            "--force",
        ],
    );
    let stranded = done["stranded"].to_string();
    assert!(stranded.contains("laptop-in-a-drawer"), "{done}");
    assert!(
        done["recovery"].as_str().unwrap().contains("trust bundle"),
        "{done}"
    );
    assert_eq!(done["status"]["third_party"], true);
    assert_eq!(done["status"]["sha256"], acme_sha.as_str());
    let finalized_at = Instant::now();

    // Live without a restart: the agent site serves the openssl-made leaf.
    let openssl_sha = {
        let out = ok(Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&leaf));
        out.trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_uppercase()
    };
    assert_eq!(acme_sha, openssl_sha);
    assert_eq!(served_sha256(agent_port), openssl_sha);
    server_proc.assert_running("the server", &server_log);

    // Zero agents Offline at any check-in, before and after, and no TLS fault in any log.
    let before: Vec<String> = {
        let list = json(&server, &["devices", "list"]);
        names
            .iter()
            .map(|n| {
                device(&list, n)["last_checkin"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    wait_for(
        "every agent to check in through the new certificate",
        Duration::from_secs(30),
        || {
            all_online();
            let list = json(&server, &["devices", "list"]);
            let moved = names
                .iter()
                .zip(&before)
                .all(|(n, b)| device(&list, n)["last_checkin"].as_str().unwrap() > b.as_str());
            (moved && finalized_at.elapsed() > Duration::from_secs(11)).then_some(())
        },
    );
    for (dir, _) in &agents {
        let log = log_of(dir);
        assert!(!log.contains("AGENT-TLS-"), "{}: {log}", dir.display());
    }
    // A restart would accept it: the configuration check passes with the third-party chain.
    let check = run(Command::new(steward())
        .args(["server", "run", "--check-config", "--data-dir"])
        .arg(&server));
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // 5. The laptop, off through the whole rollover, is started: its TLS fails as untrusted,
    //    it fetches the trust bundle signed by the platform root from the CRL listener, adds
    //    the Acme root and checks in; the console shows what happened on the device.
    let laptop = tmp.path().join("laptop-in-a-drawer");
    let _laptop = Proc::spawn(
        Command::new(agent_bin())
            .args(["run", "--data-dir"])
            .arg(&laptop),
        &tmp.path().join("laptop.stderr"),
    );
    wait_for(
        "the laptop to recover and check in",
        Duration::from_secs(40),
        || {
            let list = json(&server, &["devices", "list"]);
            let d = device(&list, "laptop-in-a-drawer");
            (d["status"] == "online" && d["last_error"]["id"] == "AGENT-TRUST-RECOVERED")
                .then_some(())
        },
    );
    let log = log_of(&laptop);
    assert!(log.contains("AGENT-TLS-UNTRUSTED"), "{log}");
    assert!(
        log.contains("AGENT-TRUST-RECOVERED") && log.contains("Acme Root"),
        "{log}"
    );
    let list = json(&server, &["devices", "list"]);
    let event = device(&list, "laptop-in-a-drawer")["last_error"]["message"].to_string();
    assert!(event.contains("/trust/bundle.json"), "{event}");
    for n in names {
        assert_eq!(device(&list, n)["status"], "online");
    }
    drop(agents);
}
