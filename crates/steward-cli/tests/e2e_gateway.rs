//! Multi-process end to end on loopback, through the gateway: a real `steward server`,
//! `steward gateway token|join|run|list`, and a real `steward-agent` that has left the LAN
//! (its LAN address, 127.0.0.3, answers nothing) and checks in through the gateway on
//! 127.0.0.2.
//!
//! Needs the `steward-agent` binary next to `steward`: `cargo test --workspace` builds both.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here is a failed test

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod procs;
use procs::{
    Proc, admin, agent_bin, free_port, init_loopback_server, json, ok, run, steward, wait_for,
};

#[test]
fn an_agent_off_the_lan_checks_in_through_a_gateway_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, agent_port) = init_loopback_server(tmp.path());
    let mut server_proc = Proc::spawn(
        Command::new(steward())
            .args(["server", "run", "--data-dir"])
            .arg(&server),
        &tmp.path().join("server.log"),
    );
    let addresses = server.join("run").join("addresses.json");
    wait_for("the server to listen", Duration::from_secs(30), || {
        assert!(
            server_proc.0.try_wait().unwrap().is_none(),
            "the server exited: {}",
            std::fs::read_to_string(tmp.path().join("server.log")).unwrap_or_default()
        );
        addresses.exists().then_some(())
    });

    // Server side: a token file. Gateway side: join with it, then run.
    let token = tmp.path().join("gateway.token");
    ok(&mut admin(
        &server,
        &["gateway", "token", "--out", token.to_str().unwrap()],
    ));
    let gw = tmp.path().join("gateway");
    let gw_port = free_port("127.0.0.2");
    ok(Command::new(steward())
        .args(["gateway", "join", "--server"])
        .arg(format!("https://127.0.0.1:{agent_port}"))
        .arg("--token")
        .arg(&token)
        .arg("--data-dir")
        .arg(&gw)
        .args(["--external-name", "127.0.0.2"])
        .args(["--listen", &format!("127.0.0.2:{gw_port}")]));
    // The token was for one join.
    let again = run(Command::new(steward())
        .args(["gateway", "join", "--server"])
        .arg(format!("https://127.0.0.1:{agent_port}"))
        .arg("--token")
        .arg(&token)
        .arg("--data-dir")
        .arg(tmp.path().join("gateway-2"))
        .args(["--external-name", "127.0.0.2"]));
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("GATEWAY-TOKEN-USED"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let mut gw_proc = Proc::spawn(
        Command::new(steward())
            .args(["gateway", "run", "--data-dir"])
            .arg(&gw),
        &tmp.path().join("gateway.log"),
    );
    // Its report is how the server (and so the profile) learns the port.
    wait_for("the gateway's report", Duration::from_secs(30), || {
        assert!(
            gw_proc.0.try_wait().unwrap().is_none(),
            "the gateway exited: {}",
            std::fs::read_to_string(tmp.path().join("gateway.log")).unwrap_or_default()
        );
        let list = json(&server, &["gateway", "list"]);
        (list[0]["report"]["listen_port"] == gw_port).then_some(())
    });

    // An agent enrolls and checks in on the LAN, receiving the gateway in its profile.
    let package = tmp.path().join("agent-package.json");
    ok(&mut admin(
        &server,
        &["package", "agent", "--out", package.to_str().unwrap()],
    ));
    let agent = tmp.path().join("agent");
    ok(Command::new(agent_bin())
        .args(["enroll", "--package"])
        .arg(&package)
        .arg("--data-dir")
        .arg(&agent));
    ok(Command::new(agent_bin())
        .args(["run", "--once", "--data-dir"])
        .arg(&agent));
    let config_path = agent.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(config["profile"]["gateways"][0]["port"], gw_port);
    assert_eq!(config["profile"]["gateways"][0]["host"], "127.0.0.2");

    // It leaves the LAN: the LAN address answers nothing; the gateway carries the check-in.
    for s in config["profile"]["servers"].as_array_mut().unwrap() {
        s["host"] = Value::from("127.0.0.3");
    }
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    ok(Command::new(agent_bin())
        .args(["run", "--once", "--data-dir"])
        .arg(&agent));
    let devices = json(&server, &["devices", "list"]);
    let path = devices[0]["connection_path"].as_str().unwrap();
    assert!(
        path.starts_with("gateway ") && path.ends_with(&format!("via 127.0.0.2:{gw_port}")),
        "{path}"
    );
    let logs: String = std::fs::read_dir(agent.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert!(
        logs.lines().any(|l| l.contains("AGENT-CONNECTED")
            && l.contains(&format!("through gateway 127.0.0.2:{gw_port}"))),
        "{logs}"
    );

    // Revoking the gateway through the CLI: the server says so, and the agent, which has no
    // other way in, can no longer check in through it.
    let id = json(&server, &["gateway", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&mut admin(&server, &["gateway", "revoke", &id]));
    assert_eq!(json(&server, &["gateway", "list"])[0]["revoked"], true);
    let out = run(Command::new(agent_bin())
        .args(["run", "--once", "--data-dir"])
        .arg(&agent));
    assert!(
        !out.status.success(),
        "a revoked gateway still carried the check-in"
    );
}
