//! `steward-agent doctor` through a real gateway, in one process on loopback: the server on
//! 127.0.0.1, the gateway's external address 127.0.0.2, a LAN address nothing answers on
//! 127.0.0.3. The doctor proves the whole way through the gateway with the agent's own identity,
//! and names the gateway's faults: credentials the server no longer trusts, and a server the
//! gateway cannot reach.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use steward_agent::doctor::doctor;
use steward_doctor::Severity;
use steward_gateway::{Gateway, JoinOptions, RunOptions as GatewayRunOptions};
use steward_probe::path::PathsReport;
use steward_proto::AgentConfig;
use steward_proto::admin::{NewGatewayToken, NewPackage};
use steward_server::{AdminUser, InitOptions, Server, ServerOverrides};

fn admin() -> AdminUser {
    AdminUser {
        username: "test".to_owned(),
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn ids(report: &PathsReport, kind: &str) -> Vec<Vec<&'static str>> {
    report
        .paths
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| p.findings.iter().map(|f| f.id).collect())
        .collect()
}

async fn once(data_dir: &Path) -> Result<(), steward_agent::RunError> {
    steward_agent::run(
        steward_agent::RunOptions {
            data_dir: data_dir.to_owned(),
            once: true,
            crls: Vec::new(),
            gateway_set_aside: Some(Duration::ZERO),
            gateways_only: false,
        },
        std::future::pending(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_proves_the_way_through_a_real_gateway_and_names_its_faults() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let mut init = InitOptions::new(root.join("server"), vec!["localhost".to_owned()]);
    init.ip_addrs = vec!["127.0.0.1".parse().expect("ip")];
    init.admin_password = Some("correct horse battery".to_owned());
    init.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1"))));
    steward_server::init(init).await.expect("server init");
    let server = Server::start(
        &root.join("server"),
        ServerOverrides {
            agent_addr: Some("127.0.0.1:0".parse().expect("addr")),
            console_addr: Some("127.0.0.1:0".parse().expect("addr")),
            crl_addr: None,
        },
    )
    .await
    .expect("server starts");
    let service = server.service();

    // A gateway joined and running on 127.0.0.2.
    let token = service
        .new_gateway_token(&admin(), NewGatewayToken { expires_secs: 600 })
        .await
        .expect("gateway token");
    let token_file = root.join("gateway.token");
    std::fs::write(&token_file, serde_json::to_vec(&token).expect("json")).expect("write");
    let listen = SocketAddr::from(([127, 0, 0, 2], free_port("127.0.0.2")));
    steward_gateway::join(&JoinOptions {
        server_url: format!("https://127.0.0.1:{}", server.agent_addr.port()),
        token_file,
        data_dir: root.join("gateway"),
        external_name: "127.0.0.2".to_owned(),
        listen,
    })
    .await
    .expect("gateway joins");
    let gateway = Gateway::start(
        &root.join("gateway"),
        GatewayRunOptions {
            listen: None,
            crl_refresh: Duration::from_secs(3600),
            report_interval: Duration::from_secs(1),
        },
    )
    .await
    .expect("gateway starts");

    // An agent enrolled on the LAN, checking in until its profile lists the gateway.
    let package = service
        .new_package(
            &admin(),
            NewPackage {
                expires_secs: 600,
                max_uses: 1,
                tags: vec![],
            },
        )
        .await
        .expect("package");
    let pkg = root.join("agent.pkg");
    std::fs::write(&pkg, serde_json::to_vec(&package).expect("json")).expect("write");
    let agent = root.join("agent");
    let enrolled = steward_agent::enroll(&steward_agent::EnrollOptions {
        name: None,
        package: pkg,
        data_dir: agent.clone(),
        force: false,
    })
    .await
    .expect("enroll");
    let deadline = Instant::now() + Duration::from_secs(30);
    let gateway_name = loop {
        once(&agent).await.expect("LAN check-in");
        let config: AgentConfig =
            serde_json::from_slice(&std::fs::read(agent.join("config.json")).expect("config"))
                .expect("config json");
        if let Some(g) = config.profile.gateways.first() {
            break g.name.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the profile never listed the gateway"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    // Every way works, the gateway's up to the server.
    let report = doctor(&agent, Duration::from_secs(5)).await;
    assert_eq!(report.verdict, Severity::Ok, "{}", report.to_text("doctor"));
    assert_eq!(
        ids(&report, "gateway"),
        [[
            "PATH-DNS",
            "PATH-TCP",
            "PATH-TLS",
            "PATH-CERT",
            "PATH-THUMBPRINT",
            "PATH-OK"
        ]],
        "{}",
        report.to_text("doctor")
    );
    let through = report
        .paths
        .iter()
        .find(|p| p.kind == "gateway")
        .and_then(|p| p.findings.last())
        .map(|f| f.message.clone())
        .unwrap_or_default();
    assert!(
        through.contains(&format!("through gateway {gateway_name}"))
            && through.contains(&enrolled.device_id),
        "{through}"
    );
    assert!(report.findings.iter().all(|f| f.id != "PATH-NO-GATEWAYS"));

    // Off the LAN: the LAN way fails, the gateway carries it; a warning, not an error.
    let mut config: AgentConfig =
        serde_json::from_slice(&std::fs::read(agent.join("config.json")).expect("config"))
            .expect("config json");
    for s in &mut config.profile.servers {
        s.host = "127.0.0.3".to_owned();
    }
    steward_agent::store::DataDir::new(&agent)
        .store_config(&config)
        .expect("store");
    let report = doctor(&agent, Duration::from_secs(5)).await;
    assert_eq!(
        report.verdict,
        Severity::Warning,
        "{}",
        report.to_text("doctor")
    );
    assert_eq!(report.exit_code(), 1);
    for lan in ids(&report, "lan") {
        assert_eq!(
            lan,
            ["PATH-DNS", "NET-REFUSED"],
            "{}",
            report.to_text("doctor")
        );
    }

    // The gateway's credentials are revoked: the gateway answers, the server refuses it.
    service
        .revoke_gateway(&admin(), &gateway_name)
        .await
        .expect("revoke gateway");
    let report = doctor(&agent, Duration::from_secs(5)).await;
    assert_eq!(
        report.verdict,
        Severity::Error,
        "{}",
        report.to_text("doctor")
    );
    let gw = ids(&report, "gateway").pop().unwrap_or_default();
    assert_eq!(
        gw.last().copied(),
        Some("PATH-GATEWAY-NOT-TRUSTED"),
        "{}",
        report.to_text("doctor")
    );

    // The server is gone: the gateway answers, but cannot reach it.
    server.shutdown().await.expect("server stops");
    let report = doctor(&agent, Duration::from_secs(5)).await;
    let gw = ids(&report, "gateway").pop().unwrap_or_default();
    assert_eq!(
        gw.last().copied(),
        Some("PATH-GATEWAY-UPSTREAM"),
        "{}",
        report.to_text("doctor")
    );
    gateway.shutdown().await;
}
