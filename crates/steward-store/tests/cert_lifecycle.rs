//! Device certificates through renewal and deletion, against a real database file: a renewed
//! certificate is accepted alongside the old until promoted, the old one is then revoked, and
//! a deleted device's serials stay in the CRL.
#![allow(clippy::unwrap_used)]

use steward_store::{
    DeviceCert, NewDevice, NewEnrollmentToken, NewTaskRecord, Seen, SqliteStore, Store, TokenCheck,
};

const NOW: i64 = 1_800_000_000;

async fn with_device(dir: &tempfile::TempDir) -> SqliteStore {
    let store = SqliteStore::open(&dir.path().join("steward.db"))
        .await
        .unwrap();
    store
        .create_enrollment_token(&NewEnrollmentToken {
            token_hash: "t".into(),
            expires_at: NOW + 3600,
            max_uses: 2,
            tags: vec![],
            created_at: NOW,
            created_by: "admin".into(),
        })
        .await
        .unwrap();
    for id in ["d", "e"] {
        let v = store
            .enroll_device(
                "t",
                NOW,
                &NewDevice {
                    id: id.into(),
                    name: format!("host-{id}"),
                    cert_serial: format!("0{id}").to_uppercase(),
                    cert_sha256: format!("SHA-{id}"),
                    tags: vec![],
                    created_at: NOW,
                    profile_version: 1,
                    cert_not_after: Some(NOW + 100),
                },
            )
            .await
            .unwrap();
        assert!(matches!(v, TokenCheck::Usable { .. }));
    }
    store
}

fn cert(serial: &str) -> DeviceCert {
    DeviceCert {
        serial: serial.into(),
        sha256: format!("SHA-{serial}"),
        not_after: NOW + 1000,
    }
}

#[tokio::test]
async fn a_renewal_is_staged_promoted_once_and_retires_the_old_serial() {
    let dir = tempfile::tempdir().unwrap();
    let store = with_device(&dir).await;
    let d = store.device("d").await.unwrap().unwrap();
    assert_eq!(
        (d.cert_not_after, d.next_cert_sha256),
        (Some(NOW + 100), None)
    );

    // A first renewal whose answer was lost, then a second: the first is retired at once.
    assert!(
        store
            .stage_device_cert("d", &cert("A1"), NOW)
            .await
            .unwrap()
    );
    assert!(
        store
            .stage_device_cert("d", &cert("A2"), NOW)
            .await
            .unwrap()
    );
    assert!(
        !store
            .stage_device_cert("nope", &cert("A3"), NOW)
            .await
            .unwrap()
    );
    let d = store.device("d").await.unwrap().unwrap();
    assert_eq!(d.cert_sha256, "SHA-d", "the old certificate stays current");
    assert_eq!(d.next_cert_sha256.as_deref(), Some("SHA-A2"));
    assert_eq!(
        store.revoked_serials().await.unwrap(),
        vec![("A1".to_owned(), NOW)]
    );

    // Only the staged one is promoted (in any case), and only once.
    assert!(
        !store
            .promote_device_cert("d", "SHA-A1", NOW + 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .promote_device_cert("d", "sha-a2", NOW + 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .promote_device_cert("d", "SHA-A2", NOW + 2)
            .await
            .unwrap()
    );
    let d = store.device("d").await.unwrap().unwrap();
    assert_eq!(
        (
            d.cert_serial.as_str(),
            d.cert_sha256.as_str(),
            d.cert_not_after
        ),
        ("A2", "SHA-A2", Some(NOW + 1000))
    );
    assert_eq!(d.next_cert_sha256, None);
    let mut revoked = store.revoked_serials().await.unwrap();
    revoked.sort();
    assert_eq!(
        revoked,
        vec![("0D".to_owned(), NOW + 1), ("A1".to_owned(), NOW)]
    );
    // A revoked device cannot renew.
    assert!(store.revoke_device("e", NOW).await.unwrap());
    assert!(
        !store
            .stage_device_cert("e", &cert("B1"), NOW)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn deleting_a_device_keeps_its_serials_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = with_device(&dir).await;
    assert!(
        store
            .stage_device_cert("d", &cert("A1"), NOW)
            .await
            .unwrap()
    );
    store
        .create_task(
            &NewTaskRecord {
                command: "true".into(),
                args: vec![],
                timeout_secs: 10,
                target: "d".into(),
                created_at: NOW,
                created_by: "admin".into(),
            },
            &["d".to_owned()],
        )
        .await
        .unwrap();
    store.note_seen(
        "d",
        Seen {
            at: NOW,
            connection_path: Some("lan via x".into()),
        },
    );
    assert!(store.delete_device("d", NOW + 5).await.unwrap());
    assert!(!store.delete_device("d", NOW + 6).await.unwrap());
    assert!(store.device("d").await.unwrap().is_none());
    assert_eq!(store.devices().await.unwrap().len(), 1);
    let mut revoked = store.revoked_serials().await.unwrap();
    revoked.sort();
    assert_eq!(
        revoked,
        vec![("0D".to_owned(), NOW + 5), ("A1".to_owned(), NOW + 5)]
    );
    // A sighting noted before the deletion does not break the batched flush.
    store.flush_seen().await.unwrap();

    // A device revoked before deletion keeps its revocation time.
    assert!(store.revoke_device("e", NOW + 7).await.unwrap());
    assert!(store.delete_device("e", NOW + 9).await.unwrap());
    assert!(
        store
            .revoked_serials()
            .await
            .unwrap()
            .contains(&("0E".to_owned(), NOW + 7))
    );
}
