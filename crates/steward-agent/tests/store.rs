//! The data directory's durability guarantees: the outbox keeps every result until it is
//! acknowledged, and nothing — not even kill -9 in the middle of a write — leaves a torn file.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use steward_agent::store::{
    self, DataDir, EXECUTED_CAPACITY, ExecutedSet, Outbox, PRIVATE, write_atomic,
};
use steward_proto::{AgentConfig, AgentSettings, TaskOutcome, TaskResult};

fn result(id: u64, finished: &str) -> TaskResult {
    TaskResult {
        task_id: id,
        outcome: TaskOutcome::Succeeded,
        exit_code: Some(0),
        output: format!("output of {id}\n"),
        truncated: false,
        started_at: "2026-11-05T10:00:00Z".to_owned(),
        finished_at: finished.to_owned(),
    }
}

#[test]
fn outbox_results_survive_a_restart_and_leave_only_when_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(dir.path().join("outbox")).expect("open");
    assert!(outbox.put(&result(7, "2026-11-05T10:00:03Z")).expect("put"));
    assert!(outbox.put(&result(5, "2026-11-05T10:00:01Z")).expect("put"));
    assert!(outbox.put(&result(9, "2026-11-05T10:00:02Z")).expect("put"));
    // A second result for the same task does not replace the first: the first one counts.
    let mut other = result(7, "2026-11-05T11:00:00Z");
    other.output = "a second run".to_owned();
    assert!(!outbox.put(&other).expect("put"));
    let mode = fs::metadata(dir.path().join("outbox/7.json"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "results may hold sensitive output");
    drop(outbox);

    // "Restart": a new Outbox over the same directory sees everything, oldest first.
    let outbox = Outbox::open(dir.path().join("outbox")).expect("reopen");
    let (waiting, bad) = outbox.load().expect("load");
    assert!(bad.is_empty());
    let ids: Vec<u64> = waiting.iter().map(|r| r.task_id).collect();
    assert_eq!(ids, vec![5, 9, 7]);
    assert_eq!(waiting[2].output, "output of 7\n");

    // Acks remove exactly what they name; unknown IDs are ignored.
    assert_eq!(outbox.ack(&[9, 1234]).expect("ack"), vec![9]);
    assert_eq!(outbox.ack(&[9]).expect("ack again"), Vec::<u64>::new());
    let (waiting, _) = Outbox::open(dir.path().join("outbox"))
        .expect("reopen")
        .load()
        .expect("load");
    let ids: Vec<u64> = waiting.iter().map(|r| r.task_id).collect();
    assert_eq!(ids, vec![5, 7]);
    assert_eq!(Outbox::count_waiting(&dir.path().join("outbox")), 2);
}

#[test]
fn crash_leftovers_are_swept_and_corrupt_files_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox");
    let outbox = Outbox::open(&path).expect("open");
    outbox.put(&result(1, "2026-11-05T10:00:00Z")).expect("put");
    // What a crash mid-write leaves: a partial temporary file. What a disk error leaves: a
    // damaged result file.
    fs::write(path.join(".2.json.999.0.tmp"), b"{\"task_id\":2,\"outc").expect("tmp");
    fs::write(path.join("3.json"), b"{\"task_id\":3,").expect("corrupt");
    fs::write(
        path.join("4.json"),
        serde_json::to_vec(&result(5, "x")).expect("json"),
    )
    .expect("mismatched");
    let outbox = Outbox::open(&path).expect("reopen");
    assert!(!path.join(".2.json.999.0.tmp").exists(), "temp swept");
    let (waiting, bad) = outbox.load().expect("load");
    assert_eq!(waiting.len(), 1);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(path.join("3.json.corrupt").exists());
    assert!(path.join("4.json.corrupt").exists());
    assert!(bad.iter().any(|b| b.reason.contains("task 5")));
}

#[test]
fn executed_tasks_are_remembered_across_restarts_with_their_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("executed.json");
    let mut set = ExecutedSet::load(&path).expect("load");
    assert!(set.is_empty());
    set.record(42).expect("record");
    set.record(43).expect("record");
    set.finish(42).expect("finish");
    // "Restart".
    let set = ExecutedSet::load(&path).expect("reload");
    assert!(set.contains(42) && set.contains(43) && !set.contains(44));
    assert!(set.is_finished(42) && !set.is_finished(43));
    assert_eq!(set.unfinished(), vec![43], "43 was cut off by the crash");
}

#[test]
fn the_executed_set_is_bounded_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("executed.json");
    // A full file as a long-running agent leaves it (written directly: thousands of durable
    // writes would only slow the test down).
    let full: Vec<serde_json::Value> = (0..EXECUTED_CAPACITY as u64)
        .map(|id| serde_json::json!({"task_id": id, "finished": true}))
        .collect();
    fs::write(&path, serde_json::to_vec(&full).expect("json")).expect("write");
    let mut set = ExecutedSet::load(&path).expect("load");
    assert_eq!(set.len(), EXECUTED_CAPACITY);
    set.record(1_000_000).expect("record");
    let set = ExecutedSet::load(&path).expect("reload");
    assert_eq!(set.len(), EXECUTED_CAPACITY);
    assert!(!set.contains(0), "the oldest ID is forgotten first");
    assert!(set.contains(1) && set.contains(1_000_000));
    assert_eq!(set.unfinished(), vec![1_000_000]);
}

#[test]
fn private_files_are_created_0600_from_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("agent.key");
    write_atomic(&key, b"-----BEGIN PRIVATE KEY-----\n", PRIVATE).expect("write");
    let mode = fs::metadata(&key).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Replacing keeps it private.
    write_atomic(&key, b"new", PRIVATE).expect("rewrite");
    let mode = fs::metadata(&key).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(fs::read(&key).expect("read"), b"new");
}

fn config(version: u64) -> AgentConfig {
    let pki_profile = steward_proto::CommunicationProfile {
        version,
        servers: vec![steward_proto::ServerEndpoint {
            host: "smp.example.net".to_owned(),
            port: 4726,
            http_port: None,
        }],
        protocol: Default::default(),
        // Large enough that a write takes several system calls, so kills land mid-write.
        trust_anchors_pem: vec!["x".repeat(256 * 1024)],
        gateways: Vec::new(),
    };
    AgentConfig {
        version,
        profile: pki_profile,
        settings: AgentSettings::default(),
        policies: vec![],
    }
}

const CHILD_ENV: &str = "STEWARD_AGENT_TEST_CONFIG_WRITER";

/// Not a test on its own: the child process of `a_kill_mid_write_leaves_the_old_or_the_new_config`,
/// which stores configurations as fast as it can until it is killed.
#[test]
fn config_writer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let data = DataDir::new(&dir);
    for v in 2.. {
        if data.store_config(&config(v)).is_err() {
            return;
        }
    }
}

#[test]
fn a_kill_mid_write_leaves_the_old_or_the_new_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    data.create().expect("create");
    data.store_config(&config(1)).expect("first config");
    let exe = std::env::current_exe().expect("test binary");
    let mut last = 1;
    for round in 0..12u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "config_writer_child", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn writer");
        // Kill at varying points of its write loop.
        std::thread::sleep(Duration::from_millis(40 + 13 * round));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let stored = data
            .load_config()
            .expect("config.json is always complete JSON")
            .expect("config.json always exists");
        assert!(
            stored.version >= 1,
            "round {round}: version {}",
            stored.version
        );
        assert_eq!(
            stored.profile.version, stored.version,
            "a torn mix of two writes"
        );
        last = stored.version;
    }
    assert!(
        last > 1,
        "the writer never completed a write: the test proved nothing"
    );
    // The temporaries the kills left behind are swept on the next start.
    store::sweep_temps(dir.path()).expect("sweep");
    let leftovers = fs::read_dir(dir.path())
        .expect("readdir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn an_interrupted_enrollment_commit_is_finished_on_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    data.create().expect("create");
    let pki = common::Pki::new("Commit");
    let (cert, chain, key) = pki.client_pem("device-9");
    let identity = store::Identity {
        device_id: "device-9".to_owned(),
        cert_pem: cert,
        chain_pem: chain,
        profile: pki.profile(4726),
        enrolled_at: "2026-11-05T10:00:00Z".to_owned(),
        enrolled_via: "https://127.0.0.1:4726".to_owned(),
    };
    // The crash fell between the two renames: the key is in place, the identity pending.
    write_atomic(&data.key_path(), key.as_bytes(), PRIVATE).expect("key");
    store::write_json(&data.pending_identity_path(), &identity, store::PUBLIC).expect("pending");
    assert!(data.is_enrolled());
    let loaded = data.load_identity().expect("load").expect("identity");
    assert_eq!(loaded.device_id, "device-9");
    assert!(Path::new(&data.identity_path()).exists());
    assert!(!data.pending_identity_path().exists());

    // Both still pending: the enrollment never committed; the old state stands.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let data2 = DataDir::new(dir2.path());
    data2.create().expect("create");
    write_atomic(&data2.pending_key_path(), key.as_bytes(), PRIVATE).expect("key");
    store::write_json(&data2.pending_identity_path(), &identity, store::PUBLIC).expect("pending");
    assert_eq!(data2.load_identity().expect("load"), None);
}

#[test]
fn one_process_per_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    data.create().expect("create");
    let held = data.lock().expect("first lock");
    let e = data.lock().expect_err("second lock");
    assert!(e.to_string().contains("another steward-agent"), "{e}");
    drop(held);
    data.lock().expect("free again");
}
