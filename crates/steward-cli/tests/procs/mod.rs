//! Process helpers shared by the multi-process end-to-end tests (`e2e_*.rs`): the built
//! binaries, a child that dies with the test, bounded command runs and bounded polling.
// Each test file uses a different subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `steward` binary under test.
pub(crate) fn steward() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_steward"))
}

/// The `steward-agent` binary, built next to `steward` by `cargo test --workspace`.
pub(crate) fn agent_bin() -> PathBuf {
    let p = steward().with_file_name("steward-agent");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// Kills its process on drop, so a failing test leaves nothing running.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Start `cmd` with its stderr in `log` (where the binaries write their logs).
    pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> Proc {
        let log = std::fs::File::create(log).unwrap();
        Proc(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// Fail with the process's log if it has exited.
    pub(crate) fn assert_running(&mut self, what: &str, log: &Path) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "{what} exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// Run to completion; a panic in the child fails the test whatever its exit status.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

/// Run to completion, require success, return stdout.
pub(crate) fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Poll `f` every 200 ms until it returns Some, for at most `limit`.
pub(crate) fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A port free on `ip` right now (bound, then released).
pub(crate) fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `steward server init` in `dir/server` for `localhost`/127.0.0.1, every listener on a free
/// loopback port, the admin password in `dir/admin-pw`. Returns the data directory and the
/// agent-site port.
pub(crate) fn init_loopback_server(dir: &Path) -> (PathBuf, u16) {
    let server = dir.join("server");
    let agent_port = free_port("127.0.0.1");
    let pw = dir.join("admin-pw");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    ok(Command::new(steward())
        .args(["server", "init", "--fqdn", "localhost", "--ip", "127.0.0.1"])
        .arg("--data-dir")
        .arg(&server)
        .args(["--agent-addr", &format!("127.0.0.1:{agent_port}")])
        .args([
            "--console-addr",
            &format!("127.0.0.1:{}", free_port("127.0.0.1")),
        ])
        .args([
            "--crl-addr",
            &format!("127.0.0.1:{}", free_port("127.0.0.1")),
        ])
        .arg("--admin-password-file")
        .arg(&pw));
    (server, agent_port)
}

/// An admin command against the server in `server` (its data directory), inserted after the
/// subcommand words: three for `server cert X`, two otherwise.
pub(crate) fn admin(server: &Path, args: &[&str]) -> Command {
    let words = if args[0] == "server" { 3 } else { 2 };
    let mut c = Command::new(steward());
    c.args(&args[..words])
        .arg("--data-dir")
        .arg(server)
        .args(&args[words..]);
    c
}

/// [`admin`] with `--format json`, required to succeed, its output parsed.
pub(crate) fn json(server: &Path, args: &[&str]) -> serde_json::Value {
    let mut c = admin(server, args);
    c.args(["--format", "json"]);
    serde_json::from_str(&ok(&mut c)).unwrap()
}

/// A gateway joined to the server in `server` (its agent site on 127.0.0.1:`agent_port`),
/// listening on 127.0.0.2, running with `run_args`, its first report in.
pub(crate) struct StartedGateway {
    /// The running `steward gateway run`.
    pub(crate) proc: Proc,
    /// Its data directory.
    pub(crate) dir: PathBuf,
    /// The port it listens on, on 127.0.0.2.
    pub(crate) port: u16,
    /// Its log (stderr).
    pub(crate) log: PathBuf,
}

/// `steward gateway token`, `join` and `run` (files in `tmp`), then waits until the server
/// lists the gateway's report.
pub(crate) fn start_gateway(
    tmp: &Path,
    server: &Path,
    agent_port: u16,
    run_args: &[&str],
) -> StartedGateway {
    let token = tmp.join("gateway.token");
    ok(&mut admin(
        server,
        &["gateway", "token", "--out", token.to_str().unwrap()],
    ));
    let dir = tmp.join("gateway");
    let port = free_port("127.0.0.2");
    ok(Command::new(steward())
        .args(["gateway", "join", "--server"])
        .arg(format!("https://127.0.0.1:{agent_port}"))
        .arg("--token")
        .arg(&token)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--external-name", "127.0.0.2"])
        .args(["--listen", &format!("127.0.0.2:{port}")]));
    let log = tmp.join("gateway.log");
    let mut proc = Proc::spawn(
        Command::new(steward())
            .args(["gateway", "run"])
            .args(run_args)
            .arg("--data-dir")
            .arg(&dir),
        &log,
    );
    wait_for("the gateway's report", Duration::from_secs(30), || {
        proc.assert_running("the gateway", &log);
        (json(server, &["gateway", "list"])[0]["report"]["listen_port"] == port).then_some(())
    });
    StartedGateway {
        proc,
        dir,
        port,
        log,
    }
}

/// Every log file of the agent whose data directory is `agent`, concatenated.
pub(crate) fn log_of(agent: &Path) -> String {
    std::fs::read_dir(agent.join("logs"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The device named `name` in a `steward devices list --format json` answer.
pub(crate) fn device<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no device {name} in {list}"))
}

/// `steward server run --data-dir SERVER` (its log in `log`), once it listens.
pub(crate) fn start_server(server: &Path, log: &Path) -> Proc {
    let _ = std::fs::remove_file(server.join("run").join("addresses.json"));
    let mut p = Proc::spawn(
        Command::new(steward())
            .args(["server", "run", "--data-dir"])
            .arg(server),
        log,
    );
    wait_for("the server to listen", Duration::from_secs(30), || {
        p.assert_running("the server", log);
        server
            .join("run")
            .join("addresses.json")
            .exists()
            .then_some(())
    });
    p
}
