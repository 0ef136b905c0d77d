//! The agent log as written to disk is what `steward doctor logs` reads, and every event ID is
//! known to the doctor and documented. (One test binary: the log is process-global.)

mod common;

use std::time::Duration;

use steward_agent::events::{self, LogOptions, ids};
use steward_agent::{EnrollOptions, enroll};
use steward_doctor::Severity;
use steward_doctor::logs::{self, AGENT_EVENTS, EventKind};
use steward_proto::BootstrapPackage;
use tracing_subscriber::filter::LevelFilter;

#[tokio::test]
async fn the_log_on_disk_is_one_event_per_line_and_the_doctor_names_its_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs_dir = dir.path().join("data/logs");
    events::init(
        &logs_dir,
        &LogOptions {
            stderr: false,
            keep_files: 3,
            level: LevelFilter::INFO,
        },
    )
    .expect("log");

    // A real fault, logged by the library itself: enrolling against a closed port.
    let pki = common::Pki::new("Log");
    let package = BootstrapPackage {
        format: BootstrapPackage::FORMAT.to_owned(),
        profile: pki.profile(common::free_port()),
        token: "t".to_owned(),
        expires_at: "2030-01-01T00:00:00Z".to_owned(),
    };
    let pkg_path = dir.path().join("pkg.json");
    std::fs::write(&pkg_path, serde_json::to_vec(&package).expect("json")).expect("write");
    let err = enroll(&EnrollOptions {
        name: None,
        package: pkg_path,
        data_dir: dir.path().join("data"),
        force: false,
    })
    .await
    .expect_err("nothing listens");
    assert_eq!(err.id(), ids::CONNECTION_REFUSED);
    assert!(
        !dir.path().join("data/agent.key.pending").exists(),
        "a failed enrollment leaves no key behind"
    );

    // A message with a line break stays one line.
    tracing::info!(target: "steward_agent", id = ids::CONNECTED, "connected to https://a:1\nsecond line");
    // Events from elsewhere (dependencies) do not reach the agent log.
    tracing::error!(target: "hyper", "not ours");
    tokio::time::sleep(Duration::from_millis(50)).await;

    let text = std::fs::read_to_string(logs_dir.join("agent.log")).expect("agent.log link");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for l in &lines {
        assert!(
            logs::parse_line(l).is_some(),
            "not in the agent format: {l}"
        );
    }
    assert!(lines[0].contains(" ERROR AGENT-CONNECTION-REFUSED enrollment via https://127.0.0.1:"));
    assert!(
        lines[1].ends_with("connected to https://a:1\\nsecond line"),
        "{}",
        lines[1]
    );
    assert!(!text.contains("not ours"));
    // The dated file exists beside the link.
    let dated = std::fs::read_dir(&logs_dir)
        .expect("logs")
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("agent.") && n.ends_with(".log") && n != "agent.log"
        })
        .count();
    assert_eq!(dated, 1);

    let findings = logs::analyze(&text);
    let refused = findings
        .iter()
        .find(|f| f.id == ids::CONNECTION_REFUSED)
        .expect("the doctor names the fault");
    assert_eq!(
        refused.severity,
        Severity::Warning,
        "recovered by the later connection"
    );
    assert!(
        findings
            .iter()
            .any(|f| f.id == ids::CONNECTED && f.severity == Severity::Ok)
    );
}

#[test]
fn every_agent_event_is_known_to_the_doctor_and_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/diagnostics.md"
    ))
    .expect("diagnostics.md");
    for id in ids::ALL {
        assert!(
            AGENT_EVENTS.iter().any(|e| e.id == *id),
            "{id} is missing from steward_doctor::logs::AGENT_EVENTS"
        );
        assert!(
            doc.contains(&format!("### {id}\n")),
            "{id} is not documented"
        );
    }
    for e in AGENT_EVENTS {
        assert!(
            ids::ALL.contains(&e.id),
            "the doctor knows {} but the agent never writes it",
            e.id
        );
        if e.kind != EventKind::Info {
            assert!(!e.remedy.is_empty(), "{} has no remedy", e.id);
        }
    }
}
