//! HTTPS → HTTP → HTTPS on the LAN end to end on loopback with real processes (issue 5, test
//! 6, reference article 002): a `steward server`, a `steward gateway`, three real
//! `steward-agent`s on the LAN and one that reaches the server only through the gateway
//! (`--gateways-only`), running throughout, while the server is restarted with
//! `[listen] protocol = "http"` and then back with `"https"`:
//!
//! - the LAN agents follow each switch at their next check-in (no reinstall): the server
//!   records the transport it saw (`lan via http://…` on the plain-HTTP site);
//! - no agent is ever Offline (the devices list is watched the whole time);
//! - the gateway agent keeps going through the gateway over HTTPS and is never on HTTP;
//! - `curl` without a signature is refused with `AGENT-HTTP-SIGNATURE-REQUIRED`, enrollment
//!   over HTTP with `AGENT-HTTP-ROUTE-REFUSED`, and a replayed signed request with
//!   `AGENT-HTTP-REPLAY`; refusals are signed by the agent site too.
//!
//! Needs the `steward-agent` binary next to `steward`: `cargo test --workspace` builds both.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

mod procs;
use procs::{
    Proc, StartedGateway, admin, agent_bin, device, free_port, init_loopback_server, json, log_of,
    ok, run, start_gateway, start_server, steward, wait_for,
};

fn path_of(list: &Value, name: &str) -> String {
    device(list, name)["connection_path"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const LAN: [&str; 3] = ["lan-0", "lan-1", "lan-2"];
const INTERNET: &str = "internet-0";

/// SIGTERM, and wait for a clean stop (the last-seen times are flushed).
fn stop_server(mut p: Proc) {
    ok(Command::new("kill").arg("-TERM").arg(p.0.id().to_string()));
    let status = p.0.wait().unwrap();
    assert!(status.success(), "the server stopped with {status}");
}

fn set_protocol(server: &Path, protocol: &str) {
    let cfg = server.join("steward.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let (from, to) = if protocol == "http" {
        ("protocol = \"https\"", "protocol = \"http\"")
    } else {
        ("protocol = \"http\"", "protocol = \"https\"")
    };
    assert!(text.contains(from), "{text}");
    std::fs::write(&cfg, text.replace(from, to)).unwrap();
}

/// `curl -i` against the plain-HTTP site: (status, headers and body as text).
fn curl(args: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A signed GET as the agent in `dir` would send it, sent with curl.
fn signed_get(dir: &Path, url_base: &str, path: &str) -> Vec<String> {
    let data = steward_agent::store::DataDir::new(dir);
    let identity = data.load_identity().unwrap().unwrap();
    let key = std::fs::read_to_string(data.key_path()).unwrap();
    let signed =
        steward_agent::signing::sign_once(&identity.cert_pem, &key, "GET", path, b"").unwrap();
    let mut args = Vec::new();
    for (k, v) in signed.headers {
        args.push("-H".to_owned());
        args.push(format!("{k}: {v}"));
    }
    args.push(format!("{url_base}{path}"));
    args
}

#[test]
fn agents_follow_https_to_http_and_back_and_the_gateway_agent_stays_on_https() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, agent_port) = init_loopback_server(tmp.path());
    let http_port = free_port("127.0.0.1");
    let cfg = server.join("steward.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("checkin_interval_secs = 60", "checkin_interval_secs = 5")
        .replace(
            "agent_http = \"0.0.0.0:4729\"",
            &format!("agent_http = \"127.0.0.1:{http_port}\""),
        );
    assert!(text.contains(&format!("127.0.0.1:{http_port}")), "{text}");
    std::fs::write(&cfg, text).unwrap();
    let server_log = tmp.path().join("server-https.log");
    let server_proc = start_server(&server, &server_log);

    // A gateway, and agents: three on the LAN, one through the gateway only.
    let StartedGateway { proc: _gw_proc, .. } =
        start_gateway(tmp.path(), &server, agent_port, &["--report-interval", "5"]);
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
    let names: Vec<&str> = LAN.iter().copied().chain([INTERNET]).collect();
    let mut agents: Vec<(PathBuf, Proc)> = Vec::new();
    for name in &names {
        let dir = tmp.path().join(name);
        ok(Command::new(agent_bin())
            .args(["enroll", "--package"])
            .arg(&package)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", name]));
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "--data-dir"]).arg(&dir);
        if *name == INTERNET {
            cmd.arg("--gateways-only");
        }
        let p = Proc::spawn(&mut cmd, &tmp.path().join(format!("{name}.stderr")));
        agents.push((dir, p));
    }
    wait_for("every agent online", Duration::from_secs(40), || {
        let list = json(&server, &["devices", "list"]);
        names
            .iter()
            .all(|n| device(&list, n)["status"] == "online")
            .then_some(())
    });
    let list = json(&server, &["devices", "list"]);
    for n in LAN {
        assert!(path_of(&list, n).starts_with("lan via "), "{list}");
        assert!(!path_of(&list, n).contains("http://"), "{list}");
    }
    assert!(path_of(&list, INTERNET).starts_with("gateway "), "{list}");
    // With https the plain-HTTP port is not even bound.
    let (status, _) = curl(&[&format!("http://127.0.0.1:{http_port}/agent/v1/ping")]);
    assert_eq!(
        status, 0,
        "nothing listens on the HTTP port with protocol = https"
    );

    // Watch the devices list throughout: nobody Offline, the gateway agent never on HTTP.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let faults: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = {
        let (stop, seen, faults, server) =
            (stop.clone(), seen.clone(), faults.clone(), server.clone());
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut c = admin(&server, &["devices", "list"]);
                c.args(["--format", "json"]);
                let out = c.output().unwrap();
                // While the server restarts, the admin API is briefly away: skip that sample.
                if out.status.success()
                    && let Ok(list) = serde_json::from_slice::<Value>(&out.stdout)
                {
                    for n in &names {
                        let d = device(&list, n);
                        if d["status"] != "online" {
                            faults
                                .lock()
                                .unwrap()
                                .push(format!("{n} is {}", d["status"]));
                        }
                        let path = d["connection_path"].as_str().unwrap_or_default().to_owned();
                        if n == INTERNET && !path.starts_with("gateway ") {
                            faults
                                .lock()
                                .unwrap()
                                .push(format!("{n} is not through the gateway: {path}"));
                        }
                        seen.lock().unwrap().push((n.clone(), path));
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    // HTTPS → HTTP: a configuration change and a restart.
    set_protocol(&server, "http");
    let check = run(Command::new(steward())
        .args(["server", "run", "--check-config", "--data-dir"])
        .arg(&server));
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check.contains("CONFIG-AGENT-HTTP") && check.contains("readable by anyone"),
        "{check}"
    );
    stop_server(server_proc);
    let http_log = tmp.path().join("server-http.log");
    let server_proc = start_server(&server, &http_log);
    let log = std::fs::read_to_string(&http_log).unwrap_or_default();
    assert!(log.contains("CONFIG-AGENT-HTTP"), "{log}");
    wait_for(
        "the LAN agents to check in over plain HTTP",
        Duration::from_secs(40),
        || {
            let list = json(&server, &["devices", "list"]);
            LAN.iter()
                .all(|n| {
                    path_of(&list, n).starts_with("lan via http://")
                        && path_of(&list, n).ends_with(&format!(":{http_port}"))
                })
                .then_some(())
        },
    );
    let list = json(&server, &["devices", "list"]);
    assert!(path_of(&list, INTERNET).starts_with("gateway "), "{list}");

    // A task reaches an agent on HTTP (signed long-poll and check-in) and its result returns.
    let out = ok(&mut admin(
        &server,
        &[
            "task",
            "run",
            "--format",
            "json",
            "--target",
            "device:lan-1",
            "--wait",
            "30s",
            "--",
            "echo",
            "over-http",
        ],
    ));
    let out: Value = serde_json::from_str(&out).unwrap();
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{out}");
    assert_eq!(results[0]["state"], "succeeded", "{out}");
    assert_eq!(results[0]["output"].as_str().unwrap().trim(), "over-http");

    // Outsiders on the plain-HTTP site.
    let base = format!("http://127.0.0.1:{http_port}");
    let (status, text) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        &format!("{base}/agent/v1/checkin"),
    ]);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("AGENT-HTTP-SIGNATURE-REQUIRED"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-steward-response-signature:"),
        "refusals are signed too: {text}"
    );
    let (status, text) = curl(&["-X", "POST", "-d", "{}", &format!("{base}/agent/v1/enroll")]);
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("AGENT-HTTP-ROUTE-REFUSED") && text.contains("HTTPS only"),
        "{text}"
    );
    // A signed request is accepted once; the same bytes again are a replay.
    let args = signed_get(&agents[0].0, &base, "/agent/v1/ping");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, text) = curl(&args);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("device_id"), "{text}");
    let (status, text) = curl(&args);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("AGENT-HTTP-REPLAY"), "{text}");
    // A check-in asking to be held (`wait=`): never on the plain-HTTP site, whose answers are
    // signed whole. An answer that leaves the agent nothing to do (which HTTPS would hold)
    // comes back as plain JSON at once, well within curl's 10 s.
    let data = steward_agent::store::DataDir::new(&agents[0].0);
    let state = data.load_state().unwrap();
    let config = data.load_config().unwrap().unwrap();
    let checkin = serde_json::json!({
        "protocol": steward_proto::PROTOCOL_VERSION, "agent_version": "test",
        "config_version": config.version,
        "inventory_hash": state.inventory_hash.clone().unwrap(), "inventory": null,
        "results": [], "last_error": null, "profile_version": config.profile.version,
        "connection": { "kind": "lan", "server": format!("127.0.0.1:{http_port}") }
    })
    .to_string();
    let path = format!(
        "/agent/v1/checkin?wait=30&{}",
        steward_proto::WAIT_CARRY_TASKS
    );
    let identity = data.load_identity().unwrap().unwrap();
    let key = std::fs::read_to_string(data.key_path()).unwrap();
    let signed = steward_agent::signing::sign_once(
        &identity.cert_pem,
        &key,
        "POST",
        &path,
        checkin.as_bytes(),
    )
    .unwrap();
    let mut args = vec![
        "-X".to_owned(),
        "POST".to_owned(),
        "-H".to_owned(),
        "content-type: application/json".to_owned(),
        "--data-binary".to_owned(),
        checkin.clone(),
    ];
    for (k, v) in signed.headers {
        args.push("-H".to_owned());
        args.push(format!("{k}: {v}"));
    }
    args.push(format!("{base}{path}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, text) = curl(&args);
    assert_eq!(status, 200, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/json"), "{text}");
    let answer: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        answer["config"].is_null()
            && answer["tasks"].as_array().is_some_and(Vec::is_empty)
            && answer["send_inventory"] == false
            && answer["renew_certificate"] == false,
        "an answer HTTPS would hold: {answer}"
    );

    // HTTP → HTTPS: back again.
    set_protocol(&server, "https");
    stop_server(server_proc);
    let back_log = tmp.path().join("server-https-again.log");
    let server_proc = start_server(&server, &back_log);
    wait_for(
        "the LAN agents to check in over HTTPS again",
        Duration::from_secs(40),
        || {
            let list = json(&server, &["devices", "list"]);
            LAN.iter()
                .all(|n| {
                    let p = path_of(&list, n);
                    p.starts_with("lan via ") && !p.contains("http://")
                })
                .then_some(())
        },
    );
    let (status, _) = curl(&[&format!("{base}/agent/v1/ping")]);
    assert_eq!(status, 0, "the plain-HTTP site is closed again");
    // One more check-in round on HTTPS, still watched.
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();

    let faults = faults.lock().unwrap().clone();
    assert!(faults.is_empty(), "{faults:#?}");
    let seen = seen.lock().unwrap().clone();
    for n in LAN {
        assert!(
            seen.iter()
                .any(|(d, p)| d == n && p.starts_with("lan via http://")),
            "{n} was never seen on HTTP: {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .filter(|(d, _)| d == INTERNET)
            .all(|(_, p)| p.starts_with("gateway ") && !p.contains("http://")),
        "{seen:?}"
    );
    // The gateway agent never even tried the LAN's plain-HTTP port.
    let internet_log = log_of(&agents[3].0);
    assert!(
        !internet_log.contains(&format!(":{http_port}")),
        "{internet_log}"
    );
    for (dir, _) in &agents {
        let log = log_of(dir);
        assert!(
            !log.contains("AGENT-HTTP-RESPONSE-UNVERIFIED"),
            "{}: {log}",
            dir.display()
        );
    }
    drop(agents);
    drop(server_proc);
}
