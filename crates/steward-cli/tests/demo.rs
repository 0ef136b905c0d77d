//! `steward demo`, the README's main job, run as a user runs it: every part comes up (a server,
//! a gateway, three LAN agents and one that uses only the gateway), the roaming agent's path is
//! the gateway, the gateway is green, and SIGTERM stops it all cleanly.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod procs;
use procs::{agent_bin, steward};

#[test]
fn the_demo_brings_up_server_gateway_and_agents_and_stops_on_sigterm() {
    // Built next to `steward` by `cargo test --workspace`; the demo starts it.
    let _ = agent_bin();
    let mut child = Command::new(steward())
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    // Bounded: the demo waits at most ~20 s for its agents, then prints the prompt.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !out.contains("Ctrl-C stops") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                out.push_str(&l);
                out.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the demo did not get ready: {out}");
            }
        }
    }
    assert!(out.contains("agents     4/4 Online"), "{out}");
    let roaming = out
        .lines()
        .find(|l| l.trim_start().starts_with("demo-roaming"))
        .unwrap_or_default();
    assert!(
        roaming.contains("gateway") && roaming.contains(" via 127.0.0.1:"),
        "{out}"
    );
    let gateway = out
        .lines()
        .rfind(|l| l.trim_start().starts_with("gateway "))
        .unwrap_or_default();
    assert!(gateway.ends_with(" green"), "{out}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the demo did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
}
