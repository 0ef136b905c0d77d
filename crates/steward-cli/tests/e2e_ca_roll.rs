//! Rolling the platform root CA end to end on loopback (issue 5), with a `steward server` and
//! real `steward-agent`s running throughout:
//!
//! 1. stage a new root → it is in the profile and the trust bundle, nothing is served
//!    differently → rollback → it is gone again (a new profile version);
//! 2. stage again → the running agents acknowledge; finalize is refused while a sleeping
//!    laptop has not, and `--force` names it and how it comes back;
//! 3. after finalize the listener certificates are re-issued and served without a restart,
//!    their chain verifies (`openssl verify`) against the old root alone and the new root
//!    alone; no agent is ever Offline; agents renew and receive chains to both roots;
//! 4. a revoked agent is refused while the others carry on;
//! 5. the laptop, off through the whole roll, starts and checks in;
//! 6. a restart loads the rolled CAs; an agent enrolled afterwards works.
//!
//! Needs the `steward-agent` binary next to `steward`: `cargo test --workspace` builds both.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

mod procs;
use procs::{
    Proc, StartedGateway, admin, agent_bin, device, init_loopback_server, json, log_of, ok, run,
    start_gateway, start_server, steward, wait_for,
};

/// `steward server ca roll ACTION --data-dir SERVER ARGS...`.
fn roll(server: &Path, action: &str, args: &[&str]) -> Command {
    let mut c = Command::new(steward());
    c.args(["server", "ca", "roll", action, "--data-dir"])
        .arg(server)
        .args(args);
    c
}

fn roll_json(server: &Path, action: &str, args: &[&str]) -> Value {
    let mut c = roll(server, action, args);
    c.args(["--format", "json"]);
    serde_json::from_str(&ok(&mut c)).unwrap()
}

/// The certificates a TLS server on 127.0.0.1:port sends (leaf first), PEM each.
fn served_chain(port: u16) -> Vec<String> {
    let out = ok(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -showcerts -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null"
    )));
    let mut certs = Vec::new();
    let mut cur: Option<String> = None;
    for line in out.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END CERTIFICATE-----") {
            certs.push(cur.take().unwrap());
        }
    }
    assert!(!certs.is_empty(), "no certificate from port {port}: {out}");
    certs
}

fn sha256_of_pem(dir: &Path, pem: &str) -> String {
    let f = dir.join("sha.pem");
    std::fs::write(&f, pem).unwrap();
    let out = ok(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&f));
    out.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_uppercase()
}

fn served_sha256(dir: &Path, port: u16) -> String {
    sha256_of_pem(dir, &served_chain(port)[0])
}

/// The trust bundle on the CRL listener: (profile version, anchors, number of signatures).
fn bundle(server: &Path) -> (u64, Vec<String>, usize) {
    let addrs: Value =
        serde_json::from_str(&std::fs::read_to_string(server.join("run/addresses.json")).unwrap())
            .unwrap();
    let url = format!(
        "http://{}/trust/bundle.json",
        addrs["crl"].as_str().unwrap()
    );
    let signed: Value =
        serde_json::from_str(&ok(Command::new("curl").args(["-sf", &url]))).unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signed["bundle_base64"].as_str().unwrap())
        .unwrap();
    let b: Value = serde_json::from_slice(&raw).unwrap();
    let anchors = b["trust_anchors_pem"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let sigs = 1 + signed["more_signatures_base64"]
        .as_array()
        .map_or(0, Vec::len);
    (b["profile_version"].as_u64().unwrap(), anchors, sigs)
}

/// The console's certificates page, fetched with the local admin token as the session.
fn console_certificates(server: &Path) -> String {
    let addrs: Value =
        serde_json::from_str(&std::fs::read_to_string(server.join("run/addresses.json")).unwrap())
            .unwrap();
    let token = std::fs::read_to_string(server.join("admin-token")).unwrap();
    let out = run(Command::new("curl")
        .args(["-sk", "-H"])
        .arg(format!("Cookie: steward_session={}", token.trim()))
        .arg(format!(
            "{}/certificates",
            addrs["console_url"].as_str().unwrap()
        )));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether every signature of the trust bundle verifies, in order, with `roots` (PEM files):
/// checked by `openssl dgst`, independently of Steward's code.
fn bundle_signed_by(server: &Path, dir: &Path, roots: &[PathBuf]) -> bool {
    let addrs: Value =
        serde_json::from_str(&std::fs::read_to_string(server.join("run/addresses.json")).unwrap())
            .unwrap();
    let url = format!(
        "http://{}/trust/bundle.json",
        addrs["crl"].as_str().unwrap()
    );
    let signed: Value =
        serde_json::from_str(&ok(Command::new("curl").args(["-sf", &url]))).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    std::fs::write(
        dir.join("bundle.raw"),
        b64.decode(signed["bundle_base64"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let sigs: Vec<&str> = std::iter::once(signed["signature_base64"].as_str().unwrap())
        .chain(
            signed["more_signatures_base64"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap()),
        )
        .collect();
    sigs.len() == roots.len()
        && sigs.iter().zip(roots).all(|(sig, root)| {
            std::fs::write(dir.join("bundle.sig"), b64.decode(sig).unwrap()).unwrap();
            let key = ok(Command::new("openssl")
                .args(["x509", "-pubkey", "-noout", "-in"])
                .arg(root));
            std::fs::write(dir.join("root.pub"), key).unwrap();
            run(Command::new("openssl")
                .args(["dgst", "-sha256", "-verify"])
                .arg(dir.join("root.pub"))
                .arg("-signature")
                .arg(dir.join("bundle.sig"))
                .arg(dir.join("bundle.raw")))
            .status
            .success()
        })
}

/// The CRL at the distribution point `ca` (PEM) names, fetched over HTTP, checked with
/// `openssl crl` to be signed by `root`; written as PEM to `dir/<name>`.
fn cdp_crl(dir: &Path, ca: &str, root: &Path, name: &str) -> PathBuf {
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    let ext = ok(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "crlDistributionPoints", "-in"])
        .arg(dir.join("ca.pem")));
    let url = ext
        .split_whitespace()
        .find_map(|w| w.strip_prefix("URI:"))
        .unwrap_or_else(|| panic!("no CDP: {ext}"))
        .replace("//localhost:", "//127.0.0.1:");
    let der = dir.join(format!("{name}.der"));
    ok(Command::new("curl").args(["-sf", "-o"]).arg(&der).arg(&url));
    let out = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(&der)
        .arg("-CAfile")
        .arg(root));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("verify OK"), "{url}: {said}");
    let pem = dir.join(format!("{name}.pem"));
    ok(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem));
    pem
}

/// `openssl verify` of `leaf` with `untrusted` intermediates against `anchor` only, checking
/// revocation of the whole chain: the root's CRL from `root_crl`, the leaf's downloaded from
/// the distribution point it names.
fn openssl_verify(
    dir: &Path,
    anchor: &Path,
    root_crl: &Path,
    untrusted: &[&str],
    leaf: &str,
) -> (bool, String) {
    std::fs::write(dir.join("leaf.pem"), leaf).unwrap();
    std::fs::write(dir.join("untrusted.pem"), untrusted.concat()).unwrap();
    let out = run(Command::new("openssl")
        // Revocation too, with the CRLs downloaded from the distribution points each
        // certificate names (the issuing CA's, and the root's for each path).
        .args([
            "verify",
            "-x509_strict",
            "-crl_check_all",
            "-crl_download",
            "-CRLfile",
        ])
        .arg(root_crl)
        .arg("-CAfile")
        .arg(anchor)
        .arg("-untrusted")
        .arg(dir.join("untrusted.pem"))
        .arg(dir.join("leaf.pem")));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_platform_root_rolls_while_agents_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, agent_port) = init_loopback_server(tmp.path());
    // Quick check-ins, and agent certificates due for renewal after 12 s.
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
    let mut server_proc = start_server(&server, &server_log);
    let pki = server.join("pki");
    let old_root_pem = std::fs::read_to_string(pki.join("root.crt")).unwrap();

    // A gateway that refreshes its CRL every 2 s; it knows only the old root (from its
    // token) and is not changed by the roll.
    let StartedGateway {
        proc: mut gw_proc,
        log: gw_log,
        ..
    } = start_gateway(
        tmp.path(),
        &server,
        agent_port,
        &["--crl-refresh-secs", "2", "--report-interval", "5"],
    );

    // Three LAN agents and one through the gateway only, running; and a laptop enrolled and
    // then put away before the roll.
    let package = tmp.path().join("agent-package.json");
    ok(&mut admin(
        &server,
        &[
            "package",
            "agent",
            "--max-uses",
            "5",
            "--out",
            package.to_str().unwrap(),
        ],
    ));
    let names = ["lan-0", "lan-1", "lan-2", "internet-0"];
    let mut agents: Vec<(PathBuf, Proc)> = Vec::new();
    for name in names.iter().chain(&["laptop-in-a-drawer"]) {
        let dir = tmp.path().join(name);
        ok(Command::new(agent_bin())
            .args(["enroll", "--package"])
            .arg(&package)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", name]));
        if !name.starts_with("laptop") {
            let mut cmd = Command::new(agent_bin());
            cmd.args(["run", "--data-dir"]).arg(&dir);
            if name.starts_with("internet") {
                cmd.arg("--gateways-only");
            }
            let p = Proc::spawn(&mut cmd, &tmp.path().join(format!("{name}.stderr")));
            agents.push((dir, p));
        }
    }
    let online = |names: &[&str]| {
        let list = json(&server, &["devices", "list"]);
        for n in names {
            assert_eq!(
                device(&list, n)["status"],
                "online",
                "{n} is not online: {list}"
            );
        }
        list
    };
    wait_for("the agents online", Duration::from_secs(40), || {
        let list = json(&server, &["devices", "list"]);
        names
            .iter()
            .all(|n| device(&list, n)["status"] == "online")
            .then_some(())
    });
    let idle = roll_json(&server, "status", &[]);
    assert_eq!(idle["phase"], "idle", "{idle}");
    let old_root_sha = idle["root"]["sha256"].as_str().unwrap().to_owned();
    let platform_sha = served_sha256(tmp.path(), agent_port);
    let (v0, anchors0, _) = bundle(&server);
    assert_eq!(anchors0.len(), 1);

    // 1. Stage: the new root is in the profile and the bundle (still signed by the old root
    //    only); nothing is served differently. Then roll back.
    let staged = roll_json(&server, "stage", &[]);
    assert_eq!(staged["phase"], "staged", "{staged}");
    assert_eq!(staged["staged"]["total"], 5, "{staged}");
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&pki.join("staged-ca").join("root.key")), 0o600);
    let (v1, anchors1, sigs1) = bundle(&server);
    assert!(v1 > v0);
    assert_eq!(anchors1.len(), 2);
    assert_eq!(sigs1, 1, "nothing is signed by the new root yet");
    assert!(bundle_signed_by(
        &server,
        tmp.path(),
        &[pki.join("root.crt")]
    ));
    assert_eq!(served_sha256(tmp.path(), agent_port), platform_sha);
    let again = run(&mut roll(&server, "stage", &[]));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("SERVER-CA-ROLL-ALREADY-STAGED"),
        "{again:?}"
    );
    let back = roll_json(&server, "rollback", &[]);
    assert_eq!(back["phase"], "idle", "{back}");
    assert!(!pki.join("staged-ca").exists());
    let (v2, anchors2, _) = bundle(&server);
    assert!(v2 > v1, "the rollback is a new profile version");
    assert_eq!(anchors2, anchors0, "the profile's anchors are as before");
    assert_eq!(
        std::fs::read_to_string(pki.join("root.crt")).unwrap(),
        old_root_pem
    );
    online(&names);

    // 2. Stage again; the running agents acknowledge, the laptop cannot.
    let staged = roll_json(&server, "stage", &[]);
    let new_root_sha = staged["staged"]["sha256"].as_str().unwrap().to_owned();
    let new_root_subject = staged["staged"]["subject"].as_str().unwrap().to_owned();
    wait_for(
        "the running agents to acknowledge the new root",
        Duration::from_secs(30),
        || {
            online(&names);
            let s = roll_json(&server, "status", &[]);
            (s["staged"]["acknowledged"] == 4).then_some(())
        },
    );
    let s = roll_json(&server, "status", &[]);
    assert!(
        s["staged"]["pending"]
            .to_string()
            .contains("laptop-in-a-drawer"),
        "{s}"
    );
    let text = ok(&mut roll(&server, "status", &[]));
    assert!(text.contains("4/5 agent(s) acknowledged"), "{text}");
    let page = console_certificates(&server);
    assert!(
        page.contains("staged: distributing the new root")
            && page.contains("4 of 5 agents")
            && page.contains("laptop-in-a-drawer"),
        "{page}"
    );
    let refused = run(&mut roll(&server, "finalize", &[]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("SERVER-CA-ROLL-NOT-DISTRIBUTED") && stderr.contains("laptop-in-a-drawer"),
        "{stderr}"
    );
    assert_eq!(served_sha256(tmp.path(), agent_port), platform_sha);

    // 3. Forced: the laptop is named, with how it comes back.
    let before: Vec<String> = {
        let list = online(&names);
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
    let renewals_before: Vec<usize> = agents
        .iter()
        .map(|(d, _)| log_of(d).matches("AGENT-CERT-RENEWED").count())
        .collect();
    let done = roll_json(&server, "finalize", &["--force"]);
    let finalized_at = Instant::now();
    assert!(
        done["stranded"].to_string().contains("laptop-in-a-drawer"),
        "{done}"
    );
    assert!(
        done["recovery"].as_str().unwrap().contains("trust bundle"),
        "{done}"
    );
    let st = &done["status"];
    assert_eq!(st["phase"], "overlap", "{done}");
    assert_eq!(st["root"]["sha256"], new_root_sha.as_str());
    assert_eq!(st["previous_root"]["sha256"], old_root_sha.as_str());
    assert_eq!(done["listeners"].as_array().unwrap().len(), 2, "{done}");
    server_proc.assert_running("the server", &server_log);
    assert!(!pki.join("staged-ca").exists());
    assert_eq!(
        std::fs::read_to_string(pki.join("previous-root.crt")).unwrap(),
        old_root_pem
    );
    assert_eq!(mode(&pki.join("root.key")), 0o600);
    assert_eq!(mode(&pki.join("previous-root.key")), 0o600);

    // Served without a restart: a new leaf, sent with the issuing CA under both roots (the
    // one under the old root first: every client still trusts that root).
    let chain = served_chain(agent_port);
    assert_ne!(sha256_of_pem(tmp.path(), &chain[0]), platform_sha);
    assert_eq!(chain.len(), 3, "{chain:?}");
    let v = tmp.path().join("verify");
    std::fs::create_dir_all(&v).unwrap();
    // Independent check with openssl: the new leaf against the old root alone (through the
    // issuing CA's certificate under it) and against the new root alone (through the other).
    // Each root's CRL is published at the distribution point the issuing CA's certificate
    // under it names, signed by that root.
    let old_crl = cdp_crl(&v, &chain[1], &pki.join("previous-root.crt"), "old-root");
    let new_crl = cdp_crl(&v, &chain[2], &pki.join("root.crt"), "new-root");
    let (old_only, out) = openssl_verify(
        &v,
        &pki.join("previous-root.crt"),
        &old_crl,
        &[&chain[1]],
        &chain[0],
    );
    assert!(old_only, "against the old root: {out}");
    let (new_only, out) =
        openssl_verify(&v, &pki.join("root.crt"), &new_crl, &[&chain[2]], &chain[0]);
    assert!(new_only, "against the new root: {out}");
    // The served chain as a whole, against the old root: what a client that slept through
    // the roll (or any OpenSSL client that knows only the old root) sees. OpenSSL does not
    // backtrack between same-named issuers, hence the order; rustls-webpki (agents, gateways)
    // does, so they build a path to either root whatever the order.
    let (both, out) = openssl_verify(
        &v,
        &pki.join("previous-root.crt"),
        &old_crl,
        &[&chain[1], &chain[2]],
        &chain[0],
    );
    assert!(
        both,
        "the served chain as a whole, against the old root: {out}"
    );
    // The trust bundle carries both roots, signed by both.
    let (_, anchors3, sigs3) = bundle(&server);
    assert_eq!(anchors3.len(), 2);
    assert_eq!(sigs3, 2);
    // First by the old root (every agent can check it), then by the new one.
    assert!(bundle_signed_by(
        &server,
        tmp.path(),
        &[pki.join("previous-root.crt"), pki.join("root.crt")]
    ));
    let console = served_chain(
        serde_json::from_str::<Value>(
            &std::fs::read_to_string(server.join("run/addresses.json")).unwrap(),
        )
        .unwrap()["console"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
    );
    assert_eq!(console.len(), 3);

    // Zero agents Offline at any check-in; no TLS fault in any log.
    wait_for(
        "every agent to check in after the finalize",
        Duration::from_secs(40),
        || {
            let list = online(&names);
            let moved = names
                .iter()
                .zip(&before)
                .all(|(n, b)| device(&list, n)["last_checkin"].as_str().unwrap() > b.as_str());
            (moved && finalized_at.elapsed() > Duration::from_secs(11)).then_some(())
        },
    );
    // Agents renew (their certificates are due every 12 s) and receive the issuing CA's
    // certificates under both roots.
    wait_for(
        "every agent to renew after the finalize",
        Duration::from_secs(60),
        || {
            online(&names);
            let renewed = agents.iter().zip(&renewals_before).all(|((d, _), n)| {
                let id: Value = serde_json::from_str(
                    &std::fs::read_to_string(d.join("identity.json")).unwrap_or_default(),
                )
                .unwrap_or(Value::Null);
                let chain = id["chain_pem"].to_string();
                log_of(d).matches("AGENT-CERT-RENEWED").count() > *n
                    && chain.matches("BEGIN CERTIFICATE").count() == 2
            });
            renewed.then_some(())
        },
    );
    for (dir, _) in &agents {
        let log = log_of(dir);
        assert!(!log.contains("AGENT-TLS-"), "{}: {log}", dir.display());
        assert!(
            !log.contains("AGENT-CERT-RENEW-FAILED"),
            "{}: {log}",
            dir.display()
        );
    }

    // An agent enrolled now (before any restart) gets the issuing CA under both roots too.
    let package2 = tmp.path().join("agent-package-2.json");
    ok(&mut admin(
        &server,
        &[
            "package",
            "agent",
            "--max-uses",
            "2",
            "--out",
            package2.to_str().unwrap(),
        ],
    ));
    let mid = tmp.path().join("mid-0");
    ok(Command::new(agent_bin())
        .args(["enroll", "--package"])
        .arg(&package2)
        .arg("--data-dir")
        .arg(&mid)
        .args(["--name", "mid-0"]));
    let id: Value =
        serde_json::from_str(&std::fs::read_to_string(mid.join("identity.json")).unwrap()).unwrap();
    assert_eq!(
        id["chain_pem"]
            .to_string()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2,
        "{id}"
    );
    let _mid = Proc::spawn(
        Command::new(agent_bin())
            .args(["run", "--data-dir"])
            .arg(&mid),
        &tmp.path().join("mid-0.stderr"),
    );
    wait_for("mid-0 online", Duration::from_secs(30), || {
        let list = json(&server, &["devices", "list"]);
        (device(&list, "mid-0")["status"] == "online").then_some(())
    });

    let list = json(&server, &["devices", "list"]);
    assert!(
        device(&list, "internet-0")["connection_path"]
            .as_str()
            .unwrap()
            .starts_with("gateway "),
        "{list}"
    );

    // 4. Revoke a LAN agent and the gateway agent (both renewed after the roll): each is
    //    refused — the gateway one at the gateway's TLS edge within its CRL refresh — and
    //    the others carry on.
    ok(&mut admin(&server, &["devices", "revoke", "lan-0"]));
    ok(&mut admin(&server, &["devices", "revoke", "internet-0"]));
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
            log_of(&agents[3].0)
                .contains("AGENT-TLS-CLIENT-REJECTED")
                .then_some(())
        },
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(30));
    gw_proc.assert_running("the gateway", &gw_log);
    let seen = device(&online(&names[1..3]), "lan-1")["last_checkin"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for("lan-1 to keep checking in", Duration::from_secs(20), || {
        let list = online(&names[1..3]);
        (device(&list, "lan-1")["last_checkin"].as_str().unwrap() > seen.as_str()).then_some(())
    });

    // 5. The laptop, off through the whole roll, starts: the served chain still reaches the
    //    old root it holds, so it checks in and then receives the new root with the profile.
    let laptop = tmp.path().join("laptop-in-a-drawer");
    let laptop_proc = Proc::spawn(
        Command::new(agent_bin())
            .args(["run", "--data-dir"])
            .arg(&laptop),
        &tmp.path().join("laptop.stderr"),
    );
    wait_for("the laptop to check in", Duration::from_secs(40), || {
        let list = json(&server, &["devices", "list"]);
        (device(&list, "laptop-in-a-drawer")["status"] == "online").then_some(())
    });
    let log = log_of(&laptop);
    assert!(!log.contains("AGENT-TRUST-RECOVERY-FAILED"), "{log}");
    let s = roll_json(&server, "status", &[]);
    assert_eq!(s["root"]["subject"], new_root_subject.as_str());
    let page = console_certificates(&server);
    assert!(
        page.contains("finalized: the previous root is still trusted"),
        "{page}"
    );

    // 6. A restart loads the rolled CAs from disk; every agent reconnects; an agent enrolled
    //    now gets a certificate under the rolled CAs and works too.
    drop(server_proc);
    let server_proc = start_server(&server, &tmp.path().join("server2.log"));
    let s = roll_json(&server, "status", &[]);
    assert_eq!(s["phase"], "overlap", "{s}");
    assert_eq!(s["root"]["sha256"], new_root_sha.as_str());
    assert_eq!(s["previous_root"]["sha256"], old_root_sha.as_str());
    let late = tmp.path().join("late-0");
    ok(Command::new(agent_bin())
        .args(["enroll", "--package"])
        .arg(&package2)
        .arg("--data-dir")
        .arg(&late)
        .args(["--name", "late-0"]));
    let _late = Proc::spawn(
        Command::new(agent_bin())
            .args(["run", "--data-dir"])
            .arg(&late),
        &tmp.path().join("late-0.stderr"),
    );
    wait_for(
        "every agent online after the restart",
        Duration::from_secs(60),
        || {
            let list = json(&server, &["devices", "list"]);
            ["lan-1", "lan-2", "laptop-in-a-drawer", "mid-0", "late-0"]
                .iter()
                .all(|n| device(&list, n)["status"] == "online")
                .then_some(())
        },
    );
    gw_proc.assert_running("the gateway", &gw_log);
    drop(laptop_proc);
    drop(server_proc);
    drop(agents);
}
