//! `steward demo`: the README's main job. A real server and three real agent processes on
//! loopback, in a temporary directory; prints the console URL and the admin credentials, and
//! stops everything on Ctrl-C.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use steward_proto::admin::{DeviceStatus, DeviceSummary, NewPackage, paths};
use steward_server::{InitOptions, Server, ServerOverrides};

use crate::admin::Conn;

const AGENTS: usize = 3;

/// Kills the agent processes however the demo ends.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn run(keep: Option<&Path>) -> anyhow::Result<ExitCode> {
    let agent_bin = std::env::current_exe()
        .context("cannot locate the steward executable")?
        .with_file_name("steward-agent");
    if !agent_bin.exists() {
        bail!(
            "{} is missing: build the whole workspace (cargo build --release) so the demo can start real agents",
            agent_bin.display()
        );
    }
    let (_tmp, dir) = match keep {
        Some(d) => (None, d.to_path_buf()),
        None => {
            let t = tempfile::tempdir().context("cannot create a temporary directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    crate::telemetry::init_quiet();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(demo(&dir, &agent_bin))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("cannot listen on loopback")?
        .local_addr()?)
}

async fn demo(dir: &Path, agent_bin: &Path) -> anyhow::Result<ExitCode> {
    let server_dir = dir.join("server");
    let mut opts = InitOptions::new(&server_dir, vec!["localhost".into()]);
    opts.ip_addrs = vec!["127.0.0.1".parse()?];
    opts.agent_addr = Some(free_addr()?);
    opts.console_addr = Some(free_addr()?);
    opts.crl_addr = Some(free_addr()?);
    let report = steward_server::init(opts).await?;
    let password = report.generated_admin_password.clone().unwrap_or_default();
    let server = Server::start(&server_dir, ServerOverrides::default()).await?;
    println!("Steward demo in {}", dir.display());
    println!(
        "  server     agent site {}   console {}",
        server.agent_url(),
        server.console_url()
    );

    let conn = Conn::for_data_dir(&server_dir);
    let admin = conn.connect().await?;
    let package = dir.join("agent-package.json");
    let pkg: steward_proto::BootstrapPackage = admin
        .post(
            paths::PACKAGES,
            &NewPackage {
                expires_secs: 3600,
                max_uses: AGENTS as u32,
                tags: vec!["demo".into()],
            },
        )
        .await?;
    std::fs::write(&package, serde_json::to_vec_pretty(&pkg)?)
        .with_context(|| format!("cannot write {}", package.display()))?;

    let mut agents = Agents(Vec::new());
    for i in 1..=AGENTS {
        let data = dir.join(format!("agent-{i}"));
        let out = Command::new(agent_bin)
            .arg("enroll")
            .arg("--package")
            .arg(&package)
            .arg("--data-dir")
            .arg(&data)
            .arg("--name")
            .arg(format!("demo-agent-{i}"))
            .output()
            .context("cannot start steward-agent")?;
        if !out.status.success() {
            bail!(
                "agent {i} did not enroll: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let child = Command::new(agent_bin)
            .arg("run")
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start steward-agent")?;
        agents.0.push(child);
    }
    // Wait (bounded) until every agent has checked in, so the console shows them Online.
    let mut online = 0;
    for _ in 0..100 {
        let devices: Vec<DeviceSummary> = admin.get(paths::DEVICES).await?;
        online = devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Online)
            .count();
        if online == AGENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = server_dir.display();
    println!(
        "  agents     {online}/{AGENTS} Online (logs in {}/agent-N/logs)",
        dir.display()
    );
    println!();
    println!(
        "Console:  {}   user admin   password {password}",
        server.console_url()
    );
    println!(
        "          (the certificate is issued by the demo's own CA: {})",
        report.root_cert_path.display()
    );
    println!("Try:      steward devices list --data-dir {d}");
    println!("          steward task run --data-dir {d} --target all -- uname -a");
    println!(
        "          steward doctor cert {} --trust {} --fqdn localhost",
        server.agent_addr,
        report.root_cert_path.display()
    );
    println!();
    println!("Ctrl-C stops the server and the agents.");
    stop_signal().await?;
    println!("stopping");
    drop(agents);
    server.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C, or SIGTERM (`timeout`, `kill`, service managers): either way the agents are stopped.
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot wait for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
