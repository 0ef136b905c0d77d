//! Multi-process end to end on loopback: a real `steward server`, twenty real `steward-agent`
//! processes, the admin CLI, `curl` and `openssl` as outside peers.
//!
//! Needs the `steward-agent` binary next to `steward`: `cargo test --workspace` builds both.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here is a failed test

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

mod procs;
use procs::{Proc, agent_bin, ok, run, steward, wait_for};

const AGENTS: usize = 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Server {
    fn start(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("run").join("addresses.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = Command::new(steward())
            .args(["server", "run", "--data-dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        let addresses = self.dir.join("run").join("addresses.json");
        let log = self.dir.join("server.log");
        wait_for("the server to listen", Duration::from_secs(30), || {
            if let Some(status) = self
                .proc
                .as_mut()
                .and_then(|p| p.0.try_wait().ok().flatten())
            {
                panic!(
                    "the server exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            addresses.exists().then_some(())
        });
    }

    fn kill9(&mut self) {
        let mut p = self.proc.take().unwrap();
        // Child::kill is SIGKILL: no flush, no clean shutdown — the crash the test is about.
        p.0.kill().unwrap();
        p.0.wait().unwrap();
        std::mem::forget(p);
    }

    fn cli(&self, args: &[&str]) -> Command {
        // After the two subcommand words and before any `--`, which ends the options.
        let mut c = Command::new(steward());
        c.args(&args[..2])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&args[2..]);
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut with_format = args[..2].to_vec();
        with_format.extend(["--format", "json"]);
        with_format.extend(&args[2..]);
        let mut c = self.cli(&with_format);
        let out = run(&mut c);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn init_server(tmp: &Path) -> (Server, u16) {
    let dir = tmp.join("server");
    let agent_port = free_port();
    let pw = tmp.join("admin-pw");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    ok(Command::new(steward())
        .args([
            "server",
            "init",
            "--fqdn",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--data-dir",
        ])
        .arg(&dir)
        .args(["--agent-addr", &format!("127.0.0.1:{agent_port}")])
        .args(["--console-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--crl-addr", &format!("127.0.0.1:{}", free_port())])
        .arg("--admin-password-file")
        .arg(&pw));
    // A short interval keeps the test quick; the long-poll still delivers tasks at once.
    let cfg = dir.join("steward.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("checkin_interval_secs = 60"));
    std::fs::write(
        &cfg,
        text.replace("checkin_interval_secs = 60", "checkin_interval_secs = 5"),
    )
    .unwrap();
    (Server { dir, proc: None }, agent_port)
}

fn task_detail(server: &Server, id: u64) -> Value {
    server.json(&["task", "show", &id.to_string()])
}

fn states(detail: &Value) -> Vec<String> {
    detail["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn twenty_agents_enroll_run_tasks_and_lose_nothing_when_the_server_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, agent_port) = init_server(tmp.path());
    server.start();
    let package = tmp.path().join("agent-package.json");
    ok(&mut server.cli(&[
        "package",
        "agent",
        "--max-uses",
        &AGENTS.to_string(),
        "--out",
        package.to_str().unwrap(),
    ]));

    // Enroll in parallel (each makes its own key), then run each agent.
    let enrollments: Vec<_> = (0..AGENTS)
        .map(|i| {
            let dir = tmp.path().join(format!("agent-{i}"));
            Command::new(agent_bin())
                .arg("enroll")
                .arg("--package")
                .arg(&package)
                .arg("--data-dir")
                .arg(&dir)
                .args(["--name", &format!("e2e-agent-{i}")])
                .output_async(dir)
        })
        .collect();
    let mut agents = Vec::new();
    for (dir, child) in enrollments {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "enroll {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let key = dir.join("agent.key");
        let mode = std::fs::metadata(&key)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap();
        assert_eq!(mode, 0o600, "the agent key is private");
        let child = Command::new(agent_bin())
            .arg("run")
            .arg("--data-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        agents.push((dir, Proc(child)));
    }
    // The package was for exactly AGENTS uses: one more is refused, and says why.
    let extra = run(Command::new(agent_bin())
        .arg("enroll")
        .arg("--package")
        .arg(&package)
        .arg("--data-dir")
        .arg(tmp.path().join("agent-extra")));
    assert!(!extra.status.success());
    assert!(
        String::from_utf8_lossy(&extra.stderr).contains("ENROLL-TOKEN-EXHAUSTED"),
        "{}",
        String::from_utf8_lossy(&extra.stderr)
    );

    // 1. All Online.
    wait_for("20 agents Online", Duration::from_secs(60), || {
        let devices = server.json(&["devices", "list"]);
        let online = devices
            .as_array()?
            .iter()
            .filter(|d| d["status"] == "online")
            .count();
        (online == AGENTS).then_some(())
    });
    let devices = server.json(&["devices", "list"]);
    // Every agent runs on this one host; --name gave each the name the console shows.
    let mut names: Vec<String> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..AGENTS).map(|i| format!("e2e-agent-{i}")).collect();
    want.sort();
    assert_eq!(names, want);
    for d in devices.as_array().unwrap() {
        assert!(
            d["connection_path"].as_str().unwrap().contains("lan"),
            "{d}"
        );
        assert!(d["os"].as_str().is_some(), "inventory arrived: {d}");
    }

    // 2. A task on all returns every output.
    let out = server.json(&[
        "task",
        "run",
        "--target",
        "all",
        "--wait",
        "60s",
        "--",
        "echo",
        "hello from steward",
    ]);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), AGENTS);
    for r in results {
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["output"].as_str().unwrap().trim(), "hello from steward");
    }

    // 3. kill -9 while results are pending: every result arrives exactly once after restart,
    //    and no agent runs the task twice (each run appends one line to `runs`).
    let runs = tmp.path().join("runs");
    let script = format!("echo $$ >> {}; sleep 4; echo finished", runs.display());
    let created = server.json(&[
        "task", "run", "--target", "all", "--wait", "1s", "--", "sh", "-c", &script,
    ]);
    let id = created["id"].as_u64().unwrap();
    // Started by every agent (a line each in `runs`), not only handed out: the server marks a
    // task running when it commits the hand-out, a moment before the answer carrying it is on
    // its way.
    wait_for(
        "the task to reach every agent",
        Duration::from_secs(30),
        || {
            let s = states(&task_detail(&server, id));
            let started = std::fs::read_to_string(&runs)
                .map(|r| r.lines().count())
                .unwrap_or(0);
            (s.iter().all(|s| s == "running") && started == AGENTS).then_some(())
        },
    );
    server.kill9();
    std::thread::sleep(Duration::from_secs(5)); // the agents finish while the server is down
    server.start();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_ok(),
        "restarted on the same agent port"
    );
    let detail = wait_for(
        "all results after the restart",
        Duration::from_secs(60),
        || {
            let d = task_detail(&server, id);
            states(&d)
                .iter()
                .all(|s| s != "pending" && s != "running")
                .then_some(d)
        },
    );
    let results = detail["results"].as_array().unwrap();
    assert_eq!(results.len(), AGENTS);
    for r in results {
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(r["output"].as_str().unwrap().trim(), "finished");
    }
    let lines = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert_eq!(lines, AGENTS, "each agent ran the task exactly once");
    // Acknowledged results leave the outboxes.
    wait_for("outboxes to drain", Duration::from_secs(30), || {
        agents
            .iter()
            .all(|(dir, _)| {
                std::fs::read_dir(dir.join("outbox"))
                    .map(|d| d.count() == 0)
                    .unwrap_or(true)
            })
            .then_some(())
    });

    // 4. Without a client certificate, no agent route is reachable (curl and openssl as peers).
    let root = server.dir.join("pki").join("root.crt");
    let url = format!("https://localhost:{agent_port}/agent/v1/checkin");
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--cacert",
        ])
        .arg(&root)
        .arg(&url));
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        code == "401" || code == "403" || code == "000",
        "curl without a client certificate got HTTP {code}"
    );
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{agent_port}"), "-servername", "localhost", "-quiet", "-CAfile"])
        .arg(&root)
        .stdin(Stdio::piped())
        .output_with_input(b"POST /agent/v1/checkin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("HTTP/1.1 200"),
        "openssl s_client without a certificate reached the route: {text}"
    );
    assert!(
        text.contains("401") || text.contains("403") || text.is_empty(),
        "{text}"
    );

    // 5. Revoking a device through the CLI: that agent is refused from its next check-in on
    //    (and says so in its log), the others stay Online; an unknown name is named as such.
    ok(&mut server.cli(&["devices", "revoke", "e2e-agent-0"]));
    let log = agents
        .iter()
        .find(|(dir, _)| dir.ends_with("agent-0"))
        .map(|(dir, _)| dir.join("logs").join("agent.log"))
        .unwrap();
    wait_for(
        "the revoked agent to be refused",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let refused =
                text.contains("AGENT-UNKNOWN-DEVICE") || text.contains("AGENT-TLS-CLIENT-REJECTED");
            refused.then_some(())
        },
    );
    let devices = server.json(&["devices", "list"]);
    let online = devices
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] == "online")
        .count();
    assert!(
        online >= AGENTS - 1,
        "the other agents stay Online: {online}"
    );
    let out = run(&mut server.cli(&["devices", "revoke", "no-such-device"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DEVICE-NOT-FOUND"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(agents);
}

trait SpawnExt {
    fn output_async(&mut self, dir: PathBuf) -> (PathBuf, Child);
    fn output_with_input(&mut self, input: &[u8]) -> Output;
}

impl SpawnExt for Command {
    fn output_async(&mut self, dir: PathBuf) -> (PathBuf, Child) {
        let child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (dir, child)
    }

    fn output_with_input(&mut self, input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}
