//! The check-in of an unchanged agent writes nothing to the database (its last-seen waits in
//! memory for the batched flush), checked against SQLite itself rather than against the store's
//! own bookkeeping, two ways: `total_changes()` of the store's single writer connection counts
//! every row any INSERT, UPDATE or DELETE touched (even an UPDATE to the same values, which
//! SQLite may skip writing to disk), and `PRAGMA data_version`, read on a connection of the
//! test's own, changes whenever any other connection commits to the file.
//!
//! The service is assembled here from a real data directory (`init`), the real PKI and a real
//! `SqliteStore`, but without the server's background last-seen flush, so that any commit the
//! observer sees was made by the check-in under test. Controls show the observer does see the
//! writes a check-in legitimately makes (a new fault, a task delivery, the flush).

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sqlx::Connection;
use steward_pki::{KeySpec, make_csr};
use steward_proto::admin::{NewPackage, NewTask};
use steward_proto::{
    AgentError, CheckinRequest, CheckinResponse, CommunicationProfile, ConnectionPath,
    EnrollRequest, Inventory, Protocol, ServerEndpoint,
};
use steward_store::{SqliteStore, Store};

use crate::config::{Config, DataDir};
use crate::pki::Pki;
use crate::service::{AdminUser, PeerCert, Service};
use crate::{InitOptions, init};

struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    store: Arc<SqliteStore>,
    service: Service,
    peer: PeerCert,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut opts = InitOptions::new(&data, vec!["localhost".into()]);
    opts.admin_password = Some("correct horse battery".into());
    init(opts).await.unwrap();
    let dd = DataDir::new(&data);
    let cfg = Config::load(&dd).unwrap();
    let pki = Arc::new(Pki::load(&dd).unwrap());
    let db = dd.database(&cfg);
    let store = Arc::new(SqliteStore::open(&db).await.unwrap());
    let profile = CommunicationProfile {
        version: 1,
        servers: vec![ServerEndpoint {
            host: "localhost".into(),
            port: 4726,
            http_port: None,
        }],
        protocol: Protocol::Https,
        trust_anchors_pem: vec![pki.root_pem.clone()],
        gateways: Vec::new(),
    };
    let service = Service::new(store.clone(), cfg, pki, profile, None)
        .await
        .unwrap();
    let admin = AdminUser {
        username: "admin".into(),
    };
    let package = service
        .new_package(
            &admin,
            NewPackage {
                expires_secs: 600,
                max_uses: 1,
                tags: vec![],
            },
        )
        .await
        .unwrap();
    let (csr_pem, _key) = make_csr(KeySpec::EcdsaP256, "web-1").unwrap();
    let enrolled = service
        .enroll(
            EnrollRequest {
                token: package.token,
                csr_pem,
                hostname: "web-1".into(),
                agent_version: "0.1.0-test".into(),
            },
            "127.0.0.1:50000",
        )
        .await
        .unwrap();
    let der = CertificateDer::from_pem_slice(enrolled.cert_pem.as_bytes()).unwrap();
    let peer = PeerCert::from_der(&der).unwrap();
    Fixture {
        _dir: dir,
        db,
        store,
        service,
        peer,
    }
}

fn request(config_version: u64) -> CheckinRequest {
    CheckinRequest {
        protocol: steward_proto::PROTOCOL_VERSION,
        agent_version: "0.1.0-test".into(),
        config_version,
        inventory_hash: "H1".into(),
        inventory: None,
        results: vec![],
        last_error: None,
        connection: ConnectionPath::Lan {
            server: "localhost:4726".into(),
        },
        // The profile the fixture enrolled the device with: holding it is not news.
        profile_version: 1,
        failed_attempts: vec![],
    }
}

impl Fixture {
    /// What the agent route does: identify the device by its certificate, then check in.
    async fn checkin(&self, req: CheckinRequest) -> CheckinResponse {
        let device = self.service.agent_device(Some(&self.peer)).await.unwrap();
        self.service.checkin(&device, req).await.unwrap()
    }

    async fn observer(&self) -> sqlx::SqliteConnection {
        sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(&self.db),
        )
        .await
        .unwrap()
    }
}

async fn data_version(observer: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(observer)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unchanged_checkin_commits_nothing() {
    let f = fixture().await;
    // First contact: the agent has no configuration and sends its inventory; both are stored.
    let mut first = request(0);
    first.inventory = Some(Inventory {
        hostname: "web-1".into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "13".into(),
        kernel: "6.12.0".into(),
        cpu_model: "Test CPU".into(),
        cpu_count: 2,
        memory_total_bytes: 4 << 30,
        disks: vec![],
        interfaces: vec![],
        agent_version: "0.1.0-test".into(),
    });
    let version = f
        .checkin(first)
        .await
        .config
        .expect("a configuration on first contact")
        .version;
    // The agent now holds that configuration: its next check-in acknowledges it (one write).
    f.checkin(request(version)).await;

    let mut obs = f.observer().await;
    let before = data_version(&mut obs).await;
    let changes = f.store.total_changes().await.unwrap();
    for _ in 0..20 {
        let r = f.checkin(request(version)).await;
        assert!(r.config.is_none() && r.tasks.is_empty() && r.acked_results.is_empty());
        assert!(!r.send_inventory, "same inventory hash: nothing to send");
    }
    assert_eq!(
        f.store.total_changes().await.unwrap(),
        changes,
        "an unchanged check-in ran a write statement"
    );
    assert_eq!(
        data_version(&mut obs).await,
        before,
        "an unchanged check-in committed a write"
    );
    // It was seen all the same: in memory, merged on read, flushed later in one batch.
    let device = f.service.agent_device(Some(&f.peer)).await.unwrap();
    assert!(device.last_seen.is_some());

    // Controls: the observer does see the writes a check-in legitimately makes.
    let mut faulty = request(version);
    faulty.last_error = Some(AgentError {
        id: "AGENT-CONNECTION-REFUSED".into(),
        message: "connection refused".into(),
        at: "2026-01-01T00:00:00Z".into(),
    });
    f.checkin(faulty.clone()).await;
    let after_fault = data_version(&mut obs).await;
    assert_ne!(after_fault, before, "a new fault must be stored");
    // The same fault again is not news: no write.
    f.checkin(faulty).await;
    assert_eq!(data_version(&mut obs).await, after_fault);

    f.service
        .create_task(
            &AdminUser {
                username: "admin".into(),
            },
            NewTask {
                command: "true".into(),
                args: vec![],
                timeout_secs: 10,
                target: "all".into(),
            },
        )
        .await
        .unwrap();
    let with_task = data_version(&mut obs).await;
    assert_eq!(f.checkin(request(version)).await.tasks.len(), 1);
    assert_ne!(
        data_version(&mut obs).await,
        with_task,
        "a delivered task is marked running"
    );
    let delivered = data_version(&mut obs).await;
    f.checkin(request(version)).await;
    assert_eq!(data_version(&mut obs).await, delivered);

    // A newer profile held is stored once; holding it afterwards is not news.
    let mut newer = request(version);
    newer.profile_version = 2;
    f.checkin(newer.clone()).await;
    let acked = data_version(&mut obs).await;
    assert_ne!(acked, delivered, "a new profile version must be stored");
    f.checkin(newer.clone()).await;
    assert_eq!(data_version(&mut obs).await, acked);
    // Failed attempts are stored when reported; an empty report keeps them, unwritten.
    let mut failing = newer.clone();
    failing.failed_attempts = vec![steward_proto::FailedAttempt {
        gateway: Some("gw".into()),
        address: "gw.example.net:8443".into(),
        kind: steward_proto::FailureKind::Timeout,
        id: "AGENT-CONNECTION-FAILED".into(),
        detail: "timed out".into(),
        last_at: "2026-01-01T00:00:00Z".into(),
        count: 1,
    }];
    f.checkin(failing).await;
    let reported = data_version(&mut obs).await;
    assert_ne!(reported, acked, "failed attempts must be stored");
    f.checkin(newer).await;
    assert_eq!(data_version(&mut obs).await, reported);
    let delivered = reported;

    assert_eq!(f.store.flush_seen().await.unwrap(), 1);
    assert_ne!(data_version(&mut obs).await, delivered, "the batched flush");
}
