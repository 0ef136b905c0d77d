//! init, check_config, restart, the CRL distribution point, and what survives a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{TestServer, checkin_request};
use steward_pki::{CertFacts, CrlSignature, parse_crl};
use steward_proto::admin::{DeviceStatus, DeviceSummary, paths as admin};
use steward_server::{Addresses, InitOptions, ServerError, Severity, check_config, init};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_private_layout_and_refuses_to_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    let mut opts = InitOptions::new(&data, vec!["smp.example.net".into(), "localhost".into()]);
    opts.ip_addrs = vec!["127.0.0.1".parse().unwrap()];
    let report = init(opts.clone()).await.unwrap();
    let password = report.generated_admin_password.clone().unwrap();
    assert_eq!(password.len(), 24);
    assert_eq!(report.admin_username, "admin");
    assert_eq!(
        report.crl_url,
        "http://smp.example.net:4728/crl/issuing.crl"
    );
    assert_eq!(report.root_sha256.len(), 64);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(data.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode("pki"), 0o700);
        for key in ["root.key", "issuing.key", "agent-site.key", "console.key"] {
            assert_eq!(mode(&format!("pki/{key}")), 0o600, "{key}");
        }
        assert_eq!(mode("admin-token"), 0o600);
        assert_eq!(mode("steward.db"), 0o600);
    }
    // The password is stored only as a hash.
    let db = std::fs::read(data.join("steward.db")).unwrap();
    assert!(!db.windows(password.len()).any(|w| w == password.as_bytes()));
    let config = std::fs::read_to_string(data.join("steward.toml")).unwrap();
    assert!(config.contains("checkin_interval_secs = 60"));
    assert!(config.contains("# Default: \"0.0.0.0:4726\""));

    let again = init(opts).await.unwrap_err();
    assert!(matches!(again, ServerError::AlreadyInitialised(_)));
    assert_eq!(again.id(), "SERVER-ALREADY-INITIALISED");

    let report = check_config(&data).unwrap();
    assert!(!report.has_errors(), "{:#?}", report.findings);
    assert_eq!(report.problems().count(), 0, "{:#?}", report.findings);

    // Another certificate's key in place of the agent site's: named, and start refuses.
    std::fs::copy(
        data.join("pki/console.key"),
        data.join("pki/agent-site.key"),
    )
    .unwrap();
    let report = check_config(&data).unwrap();
    let bad: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert_eq!(bad[0].id, "SERVER-KEY-MISMATCH");
    assert!(bad[0].message.contains("agent-site"), "{}", bad[0].message);
    let err = steward_server::Server::start(&data, Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.id(), "SERVER-KEY-MISMATCH", "{err}");

    // A typo in the configuration is named with its key.
    std::fs::write(
        data.join("steward.toml"),
        config.replace("long_poll_secs", "long_pol_secs"),
    )
    .unwrap();
    let err = check_config(&data).unwrap_err();
    assert_eq!(err.id(), "SERVER-CONFIG-INVALID");
    assert!(err.to_string().contains("long_pol_secs"), "{err}");

    let err = check_config(&dir.path().join("empty")).unwrap_err();
    assert_eq!(err.id(), "SERVER-NOT-INITIALISED");

    let bad = init(InitOptions::new(dir.path().join("x"), vec![]))
        .await
        .unwrap_err();
    assert_eq!(bad.id(), "SERVER-CONFIG-INVALID");
    let mut zero = InitOptions::new(dir.path().join("y"), vec!["a.example".into()]);
    zero.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    assert!(init(zero).await.unwrap_err().to_string().contains("port 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_are_served_signed_by_the_platform_cas() {
    let ts = TestServer::start().await;
    let addrs = Addresses::read(&ts.data_dir()).unwrap();
    assert_eq!(addrs.agent, ts.running().agent_addr);
    assert_eq!(addrs.console_url, ts.running().console_url());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let issuing_pem = std::fs::read(ts.data_dir().join("pki/issuing.crt")).unwrap();
    let issuing = CertFacts::from_der(
        &steward_pki::read_material(&issuing_pem, None)
            .unwrap()
            .certs[0],
    )
    .unwrap();
    let root = CertFacts::from_der(
        &steward_pki::read_material(ts.root_pem.as_bytes(), None)
            .unwrap()
            .certs[0],
    )
    .unwrap();
    for (file, signer) in [("issuing.crl", &issuing), ("root.crl", &root)] {
        let resp = http
            .get(format!("http://{}/crl/{file}", ts.running().crl_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/pkix-crl"
        );
        let crl = parse_crl(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(crl.verify_signed_by(signer), CrlSignature::Valid, "{file}");
        let next = crl.next_update.unwrap();
        assert!(next > steward_pki::OffsetDateTime::now_utc() + time::Duration::days(1));
    }
    // The issuing CA's own distribution point is the root CRL on this listener.
    assert_eq!(
        issuing.crl_urls,
        vec![format!(
            "http://localhost:{}/crl/root.crl",
            ts.running().crl_addr.port()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_and_last_seen_is_flushed_at_shutdown() {
    let mut ts = TestServer::start().await;
    let pkg = ts.package(3600, 2, &[]).await;
    let mut agent = ts.enroll(&pkg.token, "survivor").await.unwrap();
    let cfg = agent
        .checkin(&checkin_request(0))
        .await
        .unwrap()
        .config
        .unwrap();
    let before: Vec<DeviceSummary> = ts.get_admin(admin::DEVICES).await.unwrap();
    assert_eq!(before[0].status, DeviceStatus::Online);
    let seen = before[0].last_checkin.clone().unwrap();

    // One server per data directory: a second one is refused while this one runs (the store
    // caches on the premise that it is the database's only writer).
    let err = steward_server::Server::start(&ts.data_dir(), Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.id(), "SERVER-ALREADY-RUNNING", "{err}");

    // Shut down well within the flush interval: the final flush must write last-seen.
    ts.restart().await;
    assert!(!ts.data_dir().join("run/addresses.json.tmp").exists());
    let after: Vec<DeviceSummary> = ts.get_admin(admin::DEVICES).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].last_checkin.as_deref(), Some(seen.as_str()));
    assert_eq!(after[0].status, DeviceStatus::Online);
    assert_eq!(
        after[0].connection_path.as_deref(),
        Some("lan via localhost:4726")
    );

    // The agent's identity still works on the new listener; the profile changed (new agent
    // port), so the agent gets a new configuration.
    agent.reconnect(&ts);
    let fresh = agent.checkin(&checkin_request(cfg.version)).await.unwrap();
    assert!(
        fresh.config.unwrap().profile.version > cfg.profile.version,
        "a new agent port is a new profile"
    );
    // The remaining use of the token survived too.
    ts.enroll(&pkg.token, "second").await.unwrap();
}
