//! Running tasks: real programs, real pipes, real kills.

use std::time::{Duration, Instant};

use steward_agent::task;
use steward_proto::{TaskAssignment, TaskOutcome};

fn assignment(command: &str, args: &[&str], timeout_secs: u64) -> TaskAssignment {
    TaskAssignment {
        task_id: 1,
        command: command.to_owned(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        timeout_secs,
    }
}

async fn run(
    command: &str,
    args: &[&str],
    timeout_secs: u64,
    cap: usize,
) -> steward_proto::TaskResult {
    task::run(
        &assignment(command, args, timeout_secs),
        cap,
        std::future::pending(),
    )
    .await
}

#[tokio::test]
async fn success_captures_stdout_and_stderr() {
    let r = run("sh", &["-c", "echo out; echo err >&2"], 10, 1024).await;
    assert_eq!(r.outcome, TaskOutcome::Succeeded);
    assert_eq!(r.exit_code, Some(0));
    assert!(
        r.output.contains("out\n") && r.output.contains("err\n"),
        "{:?}",
        r.output
    );
    assert!(!r.truncated);
    assert!(r.started_at <= r.finished_at);
}

#[tokio::test]
async fn arguments_are_passed_without_a_shell() {
    // A shell would expand these; without one they arrive verbatim.
    let r = run("echo", &["$HOME", "*", "a;b"], 10, 1024).await;
    assert_eq!(r.output, "$HOME * a;b\n");
}

#[tokio::test]
async fn a_non_zero_exit_is_a_failure_with_its_code() {
    let r = run("sh", &["-c", "echo nope; exit 3"], 10, 1024).await;
    assert_eq!(r.outcome, TaskOutcome::Failed);
    assert_eq!(r.exit_code, Some(3));
    assert!(r.output.starts_with("nope\n"));
}

#[tokio::test]
async fn a_timeout_kills_the_program_and_everything_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 60 & echo $! > {p}; echo $$ >> {p}; echo started; wait",
        p = pids.display()
    );
    let start = Instant::now();
    let r = run("sh", &["-c", &script], 1, 1024).await;
    let took = start.elapsed();
    assert_eq!(r.outcome, TaskOutcome::TimedOut);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(r.output.starts_with("started\n"), "{:?}", r.output);
    assert!(
        r.output.contains("killed after the 1 s timeout"),
        "{:?}",
        r.output
    );
    // Both the shell and the sleep it started in the background are gone. SIGKILL is delivered
    // at once but a process takes a moment to die (it shows as running meanwhile), so allow it
    // a bounded while; a process that ignored the kill would still be there after 3 s.
    let text = std::fs::read_to_string(&pids).expect("pids");
    for pid in text.split_whitespace() {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its (killed) parent's reaper.
            let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
            if stat.is_empty() || state == Some('Z') {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} survived the timeout: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn output_is_capped_and_flagged() {
    let r = run(
        "sh",
        &["-c", "head -c 100000 /dev/zero | tr '\\0' x; echo tail"],
        10,
        1000,
    )
    .await;
    assert_eq!(
        r.outcome,
        TaskOutcome::Succeeded,
        "the program was not blocked by the cap"
    );
    assert_eq!(r.output.len(), 1000);
    assert!(r.truncated);
}

#[tokio::test]
async fn a_cut_never_splits_a_character() {
    // "é" is two bytes; a 5-byte cap would split the third one.
    let r = run("printf", &["ééé"], 10, 5).await;
    assert!(r.truncated);
    assert_eq!(r.output, "éé");
}

#[tokio::test]
async fn a_missing_program_fails_with_the_reason() {
    let r = run("/nonexistent/program", &[], 10, 1024).await;
    assert_eq!(r.outcome, TaskOutcome::Failed);
    assert_eq!(r.exit_code, None);
    assert!(r.output.contains("cannot start"), "{}", r.output);
    assert!(r.output.contains("/nonexistent/program"), "{}", r.output);
    assert!(r.output.contains("No such file"), "{}", r.output);
}

#[tokio::test]
async fn a_signal_is_a_failure_that_names_it() {
    let r = run("sh", &["-c", "kill -TERM $$"], 10, 1024).await;
    assert_eq!(r.outcome, TaskOutcome::Failed);
    assert_eq!(r.exit_code, None);
    assert!(r.output.contains("signal 15"), "{}", r.output);
}

#[tokio::test]
async fn a_background_child_holding_the_pipes_does_not_hold_the_result() {
    let start = Instant::now();
    let r = run("sh", &["-c", "sleep 30 & echo done"], 60, 1024).await;
    assert_eq!(r.outcome, TaskOutcome::Succeeded);
    assert!(r.output.starts_with("done\n"));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn stopping_the_agent_kills_the_task_and_says_so() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = assignment("sleep", &["60"], 120);
    let handle = tokio::spawn(async move {
        task::run(&t, 1024, async move {
            let _ = rx.await;
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = tx.send(());
    let r = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("ends promptly")
        .expect("join");
    assert_eq!(r.outcome, TaskOutcome::Failed);
    assert!(r.output.contains("agent stopped"), "{}", r.output);
}
