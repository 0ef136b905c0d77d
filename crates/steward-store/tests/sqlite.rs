//! The SQLite store against a real database file in a temporary directory.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use steward_proto::admin::TaskState;
use steward_proto::{
    AgentError, FailedAttempt, FailureKind, GatewayReport, Inventory, TaskOutcome, TaskResult,
};
use steward_store::{
    ImportedDevice, NewDevice, NewEnrollmentToken, NewTaskRecord, PolicyRecord, Seen, SqliteStore,
    Store, StoreError, TokenCheck,
};

const NOW: i64 = 1_800_000_000;

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("steward.db"))
        .await
        .unwrap()
}

fn token(hash: &str, max_uses: u32, expires_at: i64) -> NewEnrollmentToken {
    NewEnrollmentToken {
        token_hash: hash.into(),
        expires_at,
        max_uses,
        tags: vec!["lab".into()],
        created_at: NOW,
        created_by: "admin".into(),
    }
}

fn device(id: &str, name: &str) -> NewDevice {
    NewDevice {
        id: id.into(),
        name: name.into(),
        cert_serial: format!("SERIAL-{id}"),
        cert_sha256: format!("SHA-{id}"),
        tags: vec!["lab".into()],
        created_at: NOW,
        profile_version: 0,
        cert_not_after: Some(NOW + 365 * 86_400),
    }
}

async fn enrolled(store: &SqliteStore, ids: &[&str]) {
    store
        .create_enrollment_token(&token("setup", 1000, NOW + 3600))
        .await
        .unwrap();
    for id in ids {
        let v = store
            .enroll_device("setup", NOW, &device(id, &format!("host-{id}")))
            .await
            .unwrap();
        assert!(matches!(v, TokenCheck::Usable { .. }));
    }
}

fn result(task_id: u64, outcome: TaskOutcome, output: &str) -> TaskResult {
    TaskResult {
        task_id,
        outcome,
        exit_code: Some(if outcome == TaskOutcome::Succeeded {
            0
        } else {
            1
        }),
        output: output.into(),
        truncated: false,
        started_at: "2027-01-15T08:00:00Z".into(),
        finished_at: "2027-01-15T08:00:01Z".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_never_exceed_max_uses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir).await);
    // A second store on the same file has its own writer connection: the race is then between
    // two SQLite connections, not serialised by one pool.
    let second = Arc::new(open(&dir).await);
    store
        .create_enrollment_token(&token("t", 3, NOW + 60))
        .await
        .unwrap();
    let mut joins = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        joins.push(tokio::spawn(async move {
            store
                .enroll_device("t", NOW, &device(&format!("d{i}"), "h"))
                .await
                .unwrap()
        }));
    }
    let mut usable = 0;
    let mut exhausted = 0;
    for j in joins {
        match j.await.unwrap() {
            TokenCheck::Usable { tags } => {
                assert_eq!(tags, vec!["lab".to_owned()]);
                usable += 1;
            }
            TokenCheck::Exhausted { max_uses: 3 } => exhausted += 1,
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    assert_eq!((usable, exhausted), (3, 17));
    assert_eq!(store.devices().await.unwrap().len(), 3);
    assert_eq!(
        store.check_enrollment_token("t", NOW).await.unwrap(),
        TokenCheck::Exhausted { max_uses: 3 }
    );
}

#[tokio::test]
async fn tokens_are_judged_unknown_expired_or_usable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .create_enrollment_token(&token("old", 5, NOW - 1))
        .await
        .unwrap();
    store
        .create_enrollment_token(&token("new", 5, NOW + 60))
        .await
        .unwrap();
    assert_eq!(
        store.check_enrollment_token("nope", NOW).await.unwrap(),
        TokenCheck::Unknown
    );
    assert_eq!(
        store
            .enroll_device("nope", NOW, &device("a", "a"))
            .await
            .unwrap(),
        TokenCheck::Unknown
    );
    assert_eq!(
        store
            .enroll_device("old", NOW, &device("a", "a"))
            .await
            .unwrap(),
        TokenCheck::Expired {
            expires_at: NOW - 1
        }
    );
    assert!(matches!(
        store.check_enrollment_token("new", NOW).await.unwrap(),
        TokenCheck::Usable { .. }
    ));
    // Nothing was inserted by the refused enrollments.
    assert!(store.device("a").await.unwrap().is_none());
}

fn gateway(id: &str) -> steward_store::NewGateway {
    steward_store::NewGateway {
        id: id.into(),
        cert_serial: "01".into(),
        cert_sha256: "AA".into(),
        created_at: NOW,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_tokens_join_once_and_are_not_enrollment_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir).await);
    store
        .create_gateway_token(&token("g", 1, NOW + 60))
        .await
        .unwrap();
    store
        .create_enrollment_token(&token("e", 5, NOW + 60))
        .await
        .unwrap();
    store
        .create_gateway_token(&token("old", 1, NOW - 1))
        .await
        .unwrap();
    // Neither kind works as the other.
    assert_eq!(
        store.check_enrollment_token("g", NOW).await.unwrap(),
        TokenCheck::Unknown
    );
    assert_eq!(
        store
            .enroll_device("g", NOW, &device("a", "a"))
            .await
            .unwrap(),
        TokenCheck::Unknown
    );
    assert_eq!(
        store.check_gateway_token("e", NOW).await.unwrap(),
        TokenCheck::Unknown
    );
    assert_eq!(
        store.join_gateway("e", NOW, &gateway("x")).await.unwrap(),
        TokenCheck::Unknown
    );
    assert_eq!(
        store.join_gateway("old", NOW, &gateway("x")).await.unwrap(),
        TokenCheck::Expired {
            expires_at: NOW - 1
        }
    );
    // Racing joins with one token: exactly one gateway.
    let mut joins = Vec::new();
    for i in 0..8 {
        let s = store.clone();
        joins.push(tokio::spawn(async move {
            s.join_gateway("g", NOW, &gateway(&format!("gw{i}")))
                .await
                .unwrap()
        }));
    }
    let mut usable = 0;
    for j in joins {
        match j.await.unwrap() {
            TokenCheck::Usable { .. } => usable += 1,
            other => assert_eq!(other, TokenCheck::Exhausted { max_uses: 1 }),
        }
    }
    assert_eq!(usable, 1);
    let all = store.gateways().await.unwrap();
    assert_eq!(all.len(), 1);
    let id = all[0].id.clone();
    assert!(all[0].report.is_none() && !all[0].revoked);

    let report = steward_proto::GatewayReport {
        external_name: "gw.example.net".into(),
        listen_port: 8443,
        thumbprints: vec!["AB".repeat(32)],
        version: "1".into(),
        health: "ok".into(),
        previous_ports: vec![],
        trust_anchors_pem: vec![],
        probes: vec![],
    };
    store.save_gateway_report(&id, &report, NOW).await.unwrap();
    let g = store.gateway(&id).await.unwrap().unwrap();
    assert_eq!((g.report, g.reported_at), (Some(report), Some(NOW)));
    assert!(store.revoke_gateway(&id, NOW).await.unwrap());
    assert!(!store.revoke_gateway(&id, NOW).await.unwrap());
    assert!(store.gateway(&id).await.unwrap().unwrap().revoked);
    // A revoked gateway's identity goes into the CRL.
    assert_eq!(
        store.revoked_serials().await.unwrap(),
        vec![("01".to_owned(), NOW)]
    );
}

#[tokio::test]
async fn last_seen_is_kept_in_memory_merged_on_read_and_flushed_in_one_go() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir).await;
        enrolled(&store, &["a", "b"]).await;
        store.note_seen(
            "a",
            Seen {
                at: NOW + 5,
                connection_path: Some("lan via s:4726".into()),
            },
        );
        store.note_seen(
            "a",
            Seen {
                at: NOW + 9,
                connection_path: None,
            },
        );
        // Merged on read before any flush.
        let a = store.device("a").await.unwrap().unwrap();
        assert_eq!(a.last_seen, Some(NOW + 9));
        assert_eq!(a.connection_path.as_deref(), Some("lan via s:4726"));
        assert_eq!(store.device("b").await.unwrap().unwrap().last_seen, None);
        // A store opened on the same file does not see unflushed values...
        let other = open(&dir).await;
        assert_eq!(other.device("a").await.unwrap().unwrap().last_seen, None);
        other.close().await;
        // ...until the flush commits them (read by a store opened afresh: `other` has cached
        // the device, as a store may, being its server's only writer).
        assert_eq!(store.flush_seen().await.unwrap(), 1);
        assert_eq!(store.flush_seen().await.unwrap(), 0);
        let observer = open(&dir).await;
        let a = observer.device("a").await.unwrap().unwrap();
        assert_eq!(a.last_seen, Some(NOW + 9));
        assert_eq!(a.connection_path.as_deref(), Some("lan via s:4726"));
        store.close().await;
        observer.close().await;
    }
    // And they survive a restart.
    let store = open(&dir).await;
    let a = store.device("a").await.unwrap().unwrap();
    assert_eq!(a.last_seen, Some(NOW + 9));
    // An older sighting never moves last_seen backwards.
    store.note_seen(
        "a",
        Seen {
            at: NOW,
            connection_path: None,
        },
    );
    store.flush_seen().await.unwrap();
    assert_eq!(
        store.device("a").await.unwrap().unwrap().last_seen,
        Some(NOW + 9)
    );
}

/// SQLite's `PRAGMA data_version` on a connection of its own: it changes exactly when another
/// connection (the store's writer) commits, so equal values before and after mean nothing was
/// written in between.
async fn data_version(observer: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(observer)
        .await
        .unwrap()
}

async fn observer(dir: &tempfile::TempDir) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("steward.db")),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_reads_of_an_unchanged_checkin_commit_nothing_until_the_batched_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    enrolled(&store, &["a", "b"]).await;
    let mut obs = observer(&dir).await;
    let before = data_version(&mut obs).await;
    let changes = store.total_changes().await.unwrap();
    // What the service does for an unchanged agent: look the device up, note it seen, ask for
    // pending tasks. Many times, for both devices.
    for i in 0..50 {
        for id in ["a", "b"] {
            assert!(store.device(id).await.unwrap().is_some());
            store.note_seen(
                id,
                Seen {
                    at: NOW + i,
                    connection_path: Some("lan via s:4726".into()),
                },
            );
            assert!(!store.has_pending_tasks(id).await.unwrap());
        }
    }
    assert_eq!(store.total_changes().await.unwrap(), changes);
    assert_eq!(
        data_version(&mut obs).await,
        before,
        "a check-in's reads or note_seen committed a write"
    );
    // The control: the batched flush is one commit of one row per device, and both see it.
    assert_eq!(store.flush_seen().await.unwrap(), 2);
    assert_eq!(store.total_changes().await.unwrap(), changes + 2);
    assert_ne!(data_version(&mut obs).await, before);
}

/// A flush writes every sighting in statements of up to 4,096 devices each (JSON arrays):
/// more devices than one statement takes, paths that JSON must escape, a path-less sighting
/// and a device that is gone all come back as they went in.
#[tokio::test]
async fn a_flush_of_more_devices_than_one_statement_takes_writes_each_once() {
    const N: usize = 4096 * 2 + 5;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let ids: Vec<String> = (0..N).map(|i| format!("dev-{i:05}")).collect();
    let fleet: Vec<ImportedDevice> = ids.iter().map(|id| imported(id, id)).collect();
    assert_eq!(store.import_devices(&fleet).await.unwrap(), N);
    let odd = "gateway \"gw\" via ☃\\x:443\n";
    for (i, id) in ids.iter().enumerate() {
        store.note_seen(
            id,
            Seen {
                at: NOW + i64::try_from(i).unwrap(),
                connection_path: match i % 3 {
                    0 => Some(format!("lan via s{i}:4726")),
                    1 => Some(odd.to_owned()),
                    _ => None,
                },
            },
        );
    }
    store.note_seen(
        "gone",
        Seen {
            at: NOW,
            connection_path: None,
        },
    );
    assert_eq!(store.flush_seen().await.unwrap(), N);
    store.close().await;

    // Read back by a store opened afresh: from the database, not the first one's cache.
    let fresh = open(&dir).await;
    for i in [0, 1, 2, 4095, 4096, 4097, N - 1] {
        let d = fresh.device(&ids[i]).await.unwrap().unwrap();
        assert_eq!(
            d.last_seen,
            Some(NOW + i64::try_from(i).unwrap()),
            "{}",
            ids[i]
        );
        // A path-less sighting keeps the path the device was imported with.
        let path = match i % 3 {
            0 => format!("lan via s{i}:4726"),
            1 => odd.to_owned(),
            _ => "lan via s:4726".to_owned(),
        };
        assert_eq!(d.connection_path, Some(path), "{}", ids[i]);
    }
    assert!(fresh.device("gone").await.unwrap().is_none());
    fresh.close().await;
}

fn imported(id: &str, name: &str) -> ImportedDevice {
    ImportedDevice {
        device: device(id, name),
        config_version_acked: 42,
        profile_version_acked: 7,
        inventory: Some((
            Inventory {
                hostname: name.into(),
                os_name: "Debian GNU/Linux".into(),
                os_version: "13".into(),
                kernel: "6.12".into(),
                cpu_model: "cpu".into(),
                cpu_count: 2,
                memory_total_bytes: 1 << 30,
                disks: vec![],
                interfaces: vec![],
                agent_version: "0.1.0".into(),
            },
            "H".into(),
        )),
        inventory_at: Some(NOW - 10),
        last_seen: Some(NOW - 5),
        connection_path: Some("lan via s:4726".into()),
    }
}

#[tokio::test]
async fn imported_devices_are_stored_like_enrolled_ones_all_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let n = store
        .import_devices(&[imported("a", "host-a"), imported("b", "host-b")])
        .await
        .unwrap();
    assert_eq!(n, 2);
    let a = store.device("a").await.unwrap().unwrap();
    assert_eq!(a.name, "host-a");
    assert_eq!(a.config_version_acked, 42);
    assert_eq!(a.inventory_hash.as_deref(), Some("H"));
    assert_eq!(a.os.as_deref(), Some("Debian GNU/Linux 13"));
    assert_eq!(a.last_seen, Some(NOW - 5));
    assert_eq!(a.tags, vec!["lab".to_owned()]);
    assert_eq!(
        store.device_inventory("a").await.unwrap().unwrap().hostname,
        "host-a"
    );
    assert_eq!(store.devices_named("HOST-B").await.unwrap().len(), 1);
    // A collision fails the whole import: "c" is not inserted either.
    let err = store
        .import_devices(&[imported("c", "host-c"), imported("a", "again")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Exists(ref m) if m.contains('a')),
        "{err}"
    );
    assert!(store.device("c").await.unwrap().is_none());
    assert_eq!(store.devices().await.unwrap().len(), 2);
}

#[tokio::test]
async fn results_are_stored_once_and_acknowledged_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    enrolled(&store, &["a", "b"]).await;
    let id = store
        .create_task(
            &NewTaskRecord {
                command: "echo".into(),
                args: vec!["hi".into()],
                timeout_secs: 30,
                target: "all".into(),
                created_at: NOW,
                created_by: "admin".into(),
            },
            &["a".into(), "b".into()],
        )
        .await
        .unwrap();
    assert!(store.has_pending_tasks("a").await.unwrap());
    assert!(store.has_open_tasks("a").await.unwrap());
    let taken = store.take_tasks("a", NOW, NOW - 60).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].args, vec!["hi".to_owned()]);
    assert!(!store.has_pending_tasks("a").await.unwrap());
    // Delivered but without a result: still open, not re-sent within the interval...
    assert!(store.has_open_tasks("a").await.unwrap());
    assert!(
        store
            .take_tasks("a", NOW + 10, NOW + 10 - 60)
            .await
            .unwrap()
            .is_empty()
    );
    // ...and re-sent once the interval has passed since its delivery (a lost answer).
    let again = store.take_tasks("a", NOW + 61, NOW + 1).await.unwrap();
    assert_eq!(
        again.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![id]
    );
    assert!(
        store
            .take_tasks("a", NOW + 62, NOW + 2)
            .await
            .unwrap()
            .is_empty(),
        "spaced by its new delivery time"
    );

    let first = result(id, TaskOutcome::Succeeded, "hi\n");
    assert_eq!(
        store
            .commit_results("a", std::slice::from_ref(&first), NOW)
            .await
            .unwrap(),
        vec![id]
    );
    // Re-sent (the acknowledgement was lost), with different content: acknowledged, not stored.
    let again = result(id, TaskOutcome::Failed, "second copy");
    assert_eq!(
        store
            .commit_results("a", &[again.clone(), again], NOW)
            .await
            .unwrap(),
        vec![id]
    );
    // A result for a task never given to this device is acknowledged (so the agent can drop
    // it) but stored nowhere; device b's row is untouched by a's results.
    assert_eq!(
        store
            .commit_results("a", &[result(id + 100, TaskOutcome::Succeeded, "x")], NOW)
            .await
            .unwrap(),
        vec![id + 100]
    );
    let rows = store.task_results(id).await.unwrap();
    assert_eq!(rows.len(), 2);
    let a = rows.iter().find(|r| r.device_id == "a").unwrap();
    assert_eq!(a.state, TaskState::Succeeded);
    assert_eq!(a.output.as_deref(), Some("hi\n"));
    assert_eq!(a.exit_code, Some(0));
    let b = rows.iter().find(|r| r.device_id == "b").unwrap();
    assert_eq!(b.state, TaskState::Pending);
    let t = store.task(id).await.unwrap().unwrap();
    assert_eq!((t.targets, t.finished), (2, 1));
    assert_eq!(store.tasks(10).await.unwrap().len(), 1);
    assert_eq!(store.device_tasks("a", 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn logins_lock_after_the_limit_and_unlock_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.create_admin("admin", "$argon2id$x").await.unwrap();
    assert!(matches!(
        store.create_admin("admin", "y").await,
        Err(StoreError::Exists(_))
    ));
    for _ in 0..4 {
        assert_eq!(
            store
                .record_login_failure("admin", NOW, 5, 300)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(
        store
            .record_login_failure("admin", NOW, 5, 300)
            .await
            .unwrap(),
        Some(NOW + 300)
    );
    let a = store.admin("admin").await.unwrap().unwrap();
    assert_eq!((a.failed_logins, a.locked_until), (0, Some(NOW + 300)));
    store.record_login_success("admin").await.unwrap();
    let a = store.admin("admin").await.unwrap().unwrap();
    assert_eq!((a.failed_logins, a.locked_until), (0, None));
    // Unknown accounts are not created by failures.
    assert_eq!(
        store
            .record_login_failure("ghost", NOW, 5, 300)
            .await
            .unwrap(),
        None
    );
    assert!(store.admin("ghost").await.unwrap().is_none());
}

#[tokio::test]
async fn sessions_settings_policies_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.create_session("h1", "admin", NOW + 10).await.unwrap();
    assert_eq!(
        store.session("h1", NOW).await.unwrap().as_deref(),
        Some("admin")
    );
    assert_eq!(store.session("h1", NOW + 10).await.unwrap(), None);
    assert_eq!(store.purge_expired_sessions(NOW + 10).await.unwrap(), 1);

    assert_eq!(store.next_counter("crl").await.unwrap(), 1);
    assert_eq!(store.next_counter("crl").await.unwrap(), 2);
    store.set_setting("k", "v").await.unwrap();
    assert_eq!(store.setting("k").await.unwrap().as_deref(), Some("v"));

    let p = PolicyRecord {
        name: "agent-settings".into(),
        target: "all".into(),
        values: BTreeMap::new(),
        updated_at: NOW,
    };
    assert!(store.ensure_policy(&p).await.unwrap());
    assert!(!store.ensure_policy(&p).await.unwrap());
    let mut changed = p.clone();
    changed
        .values
        .insert("checkin_interval_secs".into(), "5".into());
    store.put_policy(&changed).await.unwrap();
    assert_eq!(store.policies().await.unwrap(), vec![changed]);

    enrolled(&store, &["a"]).await;
    let inv = Inventory {
        hostname: "renamed".into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "13".into(),
        kernel: "6.12".into(),
        cpu_model: "x".into(),
        cpu_count: 2,
        memory_total_bytes: 1,
        disks: vec![],
        interfaces: vec![],
        agent_version: "0.1.0".into(),
    };
    store.save_inventory("a", &inv, "H1", NOW).await.unwrap();
    store
        .save_last_error(
            "a",
            &AgentError {
                id: "AGENT-TLS-UNTRUSTED".into(),
                message: "m".into(),
                at: "2027-01-01T00:00:00Z".into(),
            },
        )
        .await
        .unwrap();
    store.save_config_acked("a", 42).await.unwrap();
    let d = store.device("a").await.unwrap().unwrap();
    // Enrolled as "host-a", first inventory says "renamed": a name that was not the host name
    // (an enrollment --name) is kept. The host-name-following case is its own test below.
    assert_eq!(d.name, "host-a");
    assert_eq!(d.os.as_deref(), Some("Debian GNU/Linux 13"));
    assert_eq!(d.inventory_hash.as_deref(), Some("H1"));
    assert_eq!(d.config_version_acked, 42);
    assert_eq!(d.last_error.unwrap().id, "AGENT-TLS-UNTRUSTED");
    assert_eq!(store.device_inventory("a").await.unwrap(), Some(inv));
    assert_eq!(
        store.devices_named("HOST-A").await.unwrap().len(),
        1,
        "names match without case"
    );
}

/// The child half of `acknowledged_results_survive_kill_9`: commits a result, says so, and
/// waits to be killed. Does nothing unless the parent set the variable.
#[tokio::test]
async fn kill_9_child() {
    let Ok(path) = std::env::var("STEWARD_STORE_KILL_CHILD") else {
        return;
    };
    let store = SqliteStore::open(std::path::Path::new(&path))
        .await
        .unwrap();
    enrolled(&store, &["a"]).await;
    let id = store
        .create_task(
            &NewTaskRecord {
                command: "true".into(),
                args: vec![],
                timeout_secs: 5,
                target: "all".into(),
                created_at: NOW,
                created_by: "admin".into(),
            },
            &["a".into()],
        )
        .await
        .unwrap();
    store.take_tasks("a", NOW, NOW - 60).await.unwrap();
    let acked = store
        .commit_results("a", &[result(id, TaskOutcome::Succeeded, "done")], NOW)
        .await
        .unwrap();
    // What a server would now send to the agent as acknowledged.
    println!("\nACKED {}", acked[0]);
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
}

#[tokio::test]
async fn acknowledged_results_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("steward.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_9_child", "--nocapture", "--test-threads=1"])
        .env("STEWARD_STORE_KILL_CHILD", &db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let acked = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the child ended before acknowledging: {seen:?}"))
            .unwrap();
        seen.push(line.clone());
        // The harness prints "test kill_9_child ... " on the same line first.
        if let Some((_, id)) = line.split_once("ACKED ") {
            break id.trim().parse::<u64>().unwrap();
        }
    };
    // SIGKILL: no destructor, no close, no checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = SqliteStore::open(&db).await.unwrap();
    let rows = store.task_results(acked).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, TaskState::Succeeded);
    assert_eq!(rows[0].output.as_deref(), Some("done"));
}

#[tokio::test]
async fn the_name_follows_the_host_name_unless_one_was_chosen_at_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    enrolled(&store, &["a", "b"]).await;
    let inv = |host: &str| Inventory {
        hostname: host.into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "13".into(),
        kernel: "6.12".into(),
        cpu_model: "x".into(),
        cpu_count: 2,
        memory_total_bytes: 1,
        disks: vec![],
        interfaces: vec![],
        agent_version: "0.1.0".into(),
    };
    let name = |id: &'static str| {
        let store = &store;
        async move { store.device(id).await.unwrap().unwrap().name }
    };
    // "a" was enrolled under its host name: renaming the host renames the device.
    store
        .save_inventory("a", &inv("host-a"), "H1", NOW)
        .await
        .unwrap();
    assert_eq!(name("a").await, "host-a");
    store
        .save_inventory("a", &inv("web-7"), "H2", NOW)
        .await
        .unwrap();
    assert_eq!(name("a").await, "web-7");
    // An empty host name never blanks the name.
    store
        .save_inventory("a", &inv(""), "H3", NOW)
        .await
        .unwrap();
    assert_eq!(name("a").await, "web-7");
    // "b" was enrolled as "host-b" but its host is "lab-1" (a name chosen at enrollment):
    // the chosen name stays through inventories and host renames.
    store
        .save_inventory("b", &inv("lab-1"), "H1", NOW)
        .await
        .unwrap();
    store
        .save_inventory("b", &inv("lab-2"), "H2", NOW)
        .await
        .unwrap();
    assert_eq!(name("b").await, "host-b");
}

fn attempt(gateway: &str, address: &str, kind: FailureKind) -> FailedAttempt {
    FailedAttempt {
        gateway: Some(gateway.into()),
        address: address.into(),
        kind,
        id: "AGENT-CONNECTION-FAILED".into(),
        detail: "no answer in 10 s".into(),
        last_at: "2027-01-15T08:00:00Z".into(),
        count: 3,
    }
}

/// Migration 0004: a device holds the profile version it was enrolled with until it says
/// otherwise; the devices behind a version are listed (capped, by name) and counted, revoked
/// ones left out; failed attempts are stored as reported and found by report time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_acks_and_failed_attempts_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .create_enrollment_token(&token("t", 10, NOW + 60))
        .await
        .unwrap();
    for (id, version) in [("a", 3), ("b", 5), ("c", 3), ("d", 3)] {
        let mut d = device(id, &format!("host-{id}"));
        d.profile_version = version;
        store.enroll_device("t", NOW, &d).await.unwrap();
    }
    let a = store.device("a").await.unwrap().unwrap();
    assert_eq!(a.profile_version_acked, 3);
    assert!(a.failed_attempts.is_empty() && a.failed_attempts_at.is_none());

    assert!(store.revoke_device("d", NOW).await.unwrap());
    let lag = store.devices_behind_profile(5, 1).await.unwrap();
    assert_eq!(lag.total, 2, "a and c; d is revoked, b holds 5");
    assert_eq!(lag.devices, vec![("a".to_owned(), "host-a".to_owned())]);
    store.save_profile_acked("a", 5).await.unwrap();
    assert_eq!(
        store
            .device("a")
            .await
            .unwrap()
            .unwrap()
            .profile_version_acked,
        5
    );
    let lag = store.devices_behind_profile(5, 50).await.unwrap();
    assert_eq!(
        (lag.total, lag.devices),
        (1, vec![("c".to_owned(), "host-c".to_owned())])
    );
    assert_eq!(store.devices_behind_profile(0, 50).await.unwrap().total, 0);

    let first = vec![attempt("gw", "gw.example.net:8443", FailureKind::Timeout)];
    store.save_failed_attempts("b", &first, NOW).await.unwrap();
    let b = store.device("b").await.unwrap().unwrap();
    assert_eq!(b.failed_attempts, first);
    assert_eq!(b.failed_attempts_at, Some(NOW));
    let second = vec![
        attempt("gw", "gw.example.net:9443", FailureKind::Refused),
        attempt("gw", "gw.example.net:8443", FailureKind::Dns),
    ];
    store
        .save_failed_attempts("b", &second, NOW + 100)
        .await
        .unwrap();
    assert_eq!(
        store.device("b").await.unwrap().unwrap().failed_attempts,
        second,
        "a new report replaces the old one"
    );
    let recent = store.failures_since(NOW + 50).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(
        (recent[0].id.as_str(), recent[0].name.as_str(), recent[0].at),
        ("b", "host-b", NOW + 100)
    );
    assert_eq!(recent[0].attempts, second);
    assert_eq!(recent[0].connection_path, None, "never seen yet");
    // The path it got through by (buffered, then flushed) comes with the failures: the
    // server does not count failures of a gateway the device has since come through.
    store.note_seen(
        "b",
        Seen {
            at: NOW + 120,
            connection_path: Some("gateway g via gw:8443".into()),
        },
    );
    let path = |r: Vec<steward_store::DeviceFailures>| r[0].connection_path.clone();
    assert_eq!(
        path(store.failures_since(NOW + 50).await.unwrap()).as_deref(),
        Some("gateway g via gw:8443")
    );
    store.flush_seen().await.unwrap();
    assert_eq!(
        path(store.failures_since(NOW + 50).await.unwrap()).as_deref(),
        Some("gateway g via gw:8443")
    );
    assert!(store.failures_since(NOW + 101).await.unwrap().is_empty());

    // Imported devices keep the profile version they hold.
    store
        .import_devices(&[imported("e", "host-e")])
        .await
        .unwrap();
    assert_eq!(
        store
            .device("e")
            .await
            .unwrap()
            .unwrap()
            .profile_version_acked,
        7
    );
}

/// A gateway's entry mark starts at 0 (every device holds "no entry") and is kept with the
/// gateway, apart from its report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_entry_since_version_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .create_gateway_token(&token("g", 1, NOW + 60))
        .await
        .unwrap();
    store.join_gateway("g", NOW, &gateway("gw")).await.unwrap();
    assert_eq!(
        store
            .gateway("gw")
            .await
            .unwrap()
            .unwrap()
            .entry_since_version,
        0
    );
    store.set_gateway_entry_since("gw", 12).await.unwrap();
    let report = GatewayReport {
        external_name: "gw.example.net".into(),
        listen_port: 8443,
        thumbprints: vec!["AB".repeat(32)],
        version: "0.1.0".into(),
        health: "ok".into(),
        previous_ports: vec![7443],
        trust_anchors_pem: vec![],
        probes: vec![],
    };
    store.save_gateway_report("gw", &report, NOW).await.unwrap();
    let g = store.gateway("gw").await.unwrap().unwrap();
    assert_eq!(g.entry_since_version, 12);
    assert_eq!(g.report, Some(report));
    assert_eq!(store.gateways().await.unwrap()[0].entry_since_version, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_taken_in_order_with_their_own_definitions_and_targets_are_live_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store
        .create_enrollment_token(&token("setup", 10, NOW + 3600))
        .await
        .unwrap();
    for (id, tags) in [("a", vec!["lab"]), ("b", vec!["web", "lab"]), ("c", vec![])] {
        let mut d = device(id, &format!("host-{id}"));
        d.tags = tags.into_iter().map(String::from).collect();
        store.enroll_device("setup", NOW, &d).await.unwrap();
    }
    assert!(store.revoke_device("c", NOW).await.unwrap());
    let mut all = store.live_device_ids(None).await.unwrap();
    all.sort();
    assert_eq!(all, ["a", "b"], "a revoked device is no target");
    assert_eq!(store.live_device_ids(Some("web")).await.unwrap(), ["b"]);
    let mut lab = store.live_device_ids(Some("lab")).await.unwrap();
    lab.sort();
    assert_eq!(lab, ["a", "b"]);
    assert!(store.live_device_ids(Some("la")).await.unwrap().is_empty());

    let new = |command: &str, arg: &str, timeout_secs: u64| NewTaskRecord {
        command: command.into(),
        args: vec![arg.into()],
        timeout_secs,
        target: "all".into(),
        created_at: NOW,
        created_by: "admin".into(),
    };
    let ids = [("echo", "one", 10), ("ls", "two", 20), ("df", "three", 30)];
    let mut created = Vec::new();
    for (c, a, t) in ids {
        created.push(
            store
                .create_task(&new(c, a, t), &["a".into()])
                .await
                .unwrap(),
        );
    }
    // The second is finished before the agent asks: it is not handed out again.
    store
        .commit_results("a", &[result(created[1], TaskOutcome::Succeeded, "")], NOW)
        .await
        .unwrap();
    let taken = store.take_tasks("a", NOW, NOW - 60).await.unwrap();
    let got: Vec<(u64, &str, &str, u64)> = taken
        .iter()
        .map(|t| {
            (
                t.task_id,
                t.command.as_str(),
                t.args[0].as_str(),
                t.timeout_secs,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (created[0], "echo", "one", 10),
            (created[2], "df", "three", 30)
        ]
    );
    assert!(!store.has_pending_tasks("a").await.unwrap());
    assert!(
        store
            .take_tasks("b", NOW, NOW - 60)
            .await
            .unwrap()
            .is_empty()
    );
}
