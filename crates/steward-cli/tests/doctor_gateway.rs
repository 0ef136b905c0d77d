//! `steward doctor gateway HOST:PORT` as an admin runs it: the real binary against a real
//! server started in-process on 127.0.0.1, with the server's root as anchors, and with an
//! enrolled agent's data directory (its profile and identity) for the ping through to the
//! server. The way through a real gateway is tested in steward-agent's `tests/doctor_gateway.rs`.
// The shared process helpers (`procs`) unwrap: a test that cannot run a binary should panic.
#![allow(clippy::unwrap_used)]

mod procs;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use steward_proto::admin::NewPackage;
use steward_server::{AdminUser, InitOptions, Server, ServerOverrides};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn steward(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || procs::run(Command::new(procs::steward()).args(args)))
        .await
        .expect("join")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn ids(report: &serde_json::Value) -> Vec<String> {
    report["paths"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_gateway_names_the_broken_step_and_proves_the_way_with_an_agents_identity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut init = InitOptions::new(tmp.path().join("server"), vec!["localhost".to_owned()]);
    init.ip_addrs = vec!["127.0.0.1".parse().expect("ip")];
    init.admin_password = Some("correct horse battery".to_owned());
    init.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    let report = steward_server::init(init).await.expect("init");
    let root = s(&report.root_cert_path);
    let server = Server::start(
        &tmp.path().join("server"),
        ServerOverrides {
            agent_addr: Some("127.0.0.1:0".parse().expect("addr")),
            console_addr: Some("127.0.0.1:0".parse().expect("addr")),
            crl_addr: None,
        },
    )
    .await
    .expect("server");
    let site = format!("127.0.0.1:{}", server.agent_addr.port());

    // Without anything to trust it cannot run.
    let out = steward(vec!["doctor".into(), "gateway".into(), site.clone()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--anchors FILE"));

    // A closed port: refused, an error.
    let closed = format!("127.0.0.1:{}", free_port());
    let args = |target: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["doctor", "gateway", target, "--format", "json"]
            .iter()
            .map(|x| (*x).to_owned())
            .collect();
        a.extend(extra.iter().map(|x| (*x).to_owned()));
        a
    };
    let out = steward(args(&closed, &["--anchors", &root])).await;
    assert_eq!(out.status.code(), Some(2));
    let r = json(&out);
    assert_eq!(ids(&r), ["PATH-DNS", "NET-REFUSED"]);
    assert_eq!(r["verdict"], "error");

    // Something with a valid certificate, but not the thumbprint given: not that gateway.
    let wrong = "AB".repeat(32);
    let out = steward(args(&site, &["--anchors", &root, "--thumbprint", &wrong])).await;
    assert_eq!(out.status.code(), Some(2));
    let r = json(&out);
    assert_eq!(
        ids(&r).last().map(String::as_str),
        Some("PATH-THUMBPRINT-UNKNOWN"),
        "{r}"
    );

    // With an enrolled agent's data directory: its anchors and identity, through to the server.
    let package = server
        .service()
        .new_package(
            &AdminUser {
                username: "test".to_owned(),
            },
            NewPackage {
                expires_secs: 600,
                max_uses: 1,
                tags: vec![],
            },
        )
        .await
        .expect("package");
    let pkg = tmp.path().join("agent.pkg");
    std::fs::write(&pkg, serde_json::to_vec(&package).expect("json")).expect("write");
    let agent = tmp.path().join("agent");
    let (pkg_s, agent_s) = (s(&pkg), s(&agent));
    tokio::task::spawn_blocking(move || {
        procs::ok(Command::new(procs::agent_bin()).args([
            "enroll",
            "--package",
            &pkg_s,
            "--data-dir",
            &agent_s,
        ]))
    })
    .await
    .expect("enroll");
    let out = steward(args(&site, &["--agent-data-dir", &s(&agent)])).await;
    let r = json(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(
        ids(&r),
        [
            "PATH-DNS",
            "PATH-TCP",
            "PATH-TLS",
            "PATH-CERT",
            "PATH-THUMBPRINT",
            "PATH-OK"
        ],
        "{r}"
    );
    assert!(
        r["paths"][0]["findings"][4]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("skipped: ")),
        "no thumbprint is listed for a LAN address: {r}"
    );
    assert!(
        r["paths"][0]["findings"][5]["message"]
            .as_str()
            .is_some_and(|m| m.contains("directly")),
        "{r}"
    );
    server.shutdown().await.expect("stop");
}
