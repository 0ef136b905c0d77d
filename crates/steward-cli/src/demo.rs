//! `steward demo`: the README's main job. A real server, a real internet gateway, three real
//! agent processes on the LAN and one that reaches the server only through the gateway
//! (`steward-agent run --gateways-only`), all on loopback in a temporary directory; prints the
//! console URL and the admin credentials, and stops everything on Ctrl-C.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use steward_proto::admin::{
    DeviceStatus, DeviceSummary, GatewayStatus, GatewaySummary, GatewayToken, NewGatewayToken,
    NewPackage, paths,
};
use steward_server::{InitOptions, Server, ServerOverrides};

use crate::admin::Conn;

/// Agents on the LAN.
const AGENTS: usize = 3;
/// The agent that is "on the internet": it uses only the gateway.
const ROAMING: &str = "demo-roaming";

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

    // The internet gateway: a join token from the admin API, then `steward gateway join` and
    // `run`, in this process. It reports itself, and the profile gains its entry.
    let token: GatewayToken = admin
        .post(
            paths::GATEWAY_TOKENS,
            &NewGatewayToken { expires_secs: 600 },
        )
        .await?;
    let token_file = dir.join("gateway.token");
    std::fs::write(&token_file, serde_json::to_vec(&token)?)
        .with_context(|| format!("cannot write {}", token_file.display()))?;
    let gateway_dir = dir.join("gateway");
    steward_gateway::join(&steward_gateway::JoinOptions {
        server_url: server.agent_url().to_owned(),
        token_file,
        data_dir: gateway_dir.clone(),
        external_name: "127.0.0.1".into(),
        listen: free_addr()?,
    })
    .await
    .context("the demo gateway could not join")?;
    let gateway = steward_gateway::Gateway::start(&gateway_dir, Default::default())
        .await
        .context("the demo gateway could not start")?;
    println!("  gateway    {} (agents outside the LAN)", gateway.addr);
    let package = dir.join("agent-package.json");
    let pkg: steward_proto::BootstrapPackage = admin
        .post(
            paths::PACKAGES,
            &NewPackage {
                expires_secs: 3600,
                max_uses: AGENTS as u32 + 1,
                tags: vec!["demo".into()],
            },
        )
        .await?;
    std::fs::write(&package, serde_json::to_vec_pretty(&pkg)?)
        .with_context(|| format!("cannot write {}", package.display()))?;

    let mut agents = Agents(Vec::new());
    let names: Vec<String> = (1..=AGENTS)
        .map(|i| format!("demo-agent-{i}"))
        .chain([ROAMING.to_owned()])
        .collect();
    for name in &names {
        let data = dir.join(name);
        let out = Command::new(agent_bin)
            .arg("enroll")
            .arg("--package")
            .arg(&package)
            .arg("--data-dir")
            .arg(&data)
            .arg("--name")
            .arg(name)
            .output()
            .context("cannot start steward-agent")?;
        if !out.status.success() {
            bail!(
                "{name} did not enroll: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut run = Command::new(agent_bin);
        run.arg("run").arg("--data-dir").arg(&data);
        if name == ROAMING {
            run.arg("--gateways-only");
        }
        let child = run
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start steward-agent")?;
        agents.0.push(child);
    }
    // Wait (bounded) until every agent has checked in and the gateway has tested its own
    // address, so the console shows them Online and the gateway green.
    let mut online = Vec::new();
    let mut gateways: Vec<GatewaySummary> = Vec::new();
    for _ in 0..100 {
        let devices: Vec<DeviceSummary> = admin.get(paths::DEVICES).await?;
        online = devices
            .into_iter()
            .filter(|d| d.status == DeviceStatus::Online)
            .collect();
        gateways = admin.get(paths::GATEWAYS).await?;
        let green = gateways.iter().all(|g| g.status == GatewayStatus::Green);
        if online.len() == names.len() && green {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = server_dir.display();
    println!(
        "  agents     {}/{} Online (logs in {}/<name>/logs)",
        online.len(),
        names.len(),
        dir.display()
    );
    if let Some(r) = online.iter().find(|d| d.name == ROAMING) {
        println!(
            "  {ROAMING} {}",
            r.connection_path.as_deref().unwrap_or("(no path yet)")
        );
    }
    for g in &gateways {
        let state = match g.status {
            GatewayStatus::Green => "green".to_owned(),
            GatewayStatus::Red => format!(
                "red: {}",
                g.problems
                    .iter()
                    .map(|p| format!("{} {}", p.id, p.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        println!("  gateway    {} {state}", g.id);
    }
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
    println!("          steward gateway list --data-dir {d}");
    println!(
        "          steward-agent doctor --data-dir {}",
        dir.join(ROAMING).display()
    );
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
    gateway.shutdown().await;
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
