//! The agent site over real mutual TLS on 127.0.0.1: enrollment, check-ins, long-polls,
//! results, and the refusals (tokens, certificates, bodies), each by its stable ID.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, checkin_request, client};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use steward_pki::{Authority, CertFacts, KeySpec, LeafRequest, OffsetDateTime, Usage};
use steward_proto::admin::{
    DeviceDetail, DeviceStatus, DeviceSummary, NewTask, Policy, TaskCreated, TaskDetail, TaskState,
    paths as admin,
};
use steward_proto::{
    CheckinRequest, CheckinResponse, Inventory, TaskOutcome, TaskResult, WakeUp, paths,
};

fn inventory(host: &str) -> Inventory {
    Inventory {
        hostname: host.into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "13".into(),
        kernel: "6.12.0".into(),
        cpu_model: "Test CPU".into(),
        cpu_count: 2,
        memory_total_bytes: 4 << 30,
        disks: vec![],
        interfaces: vec![],
        agent_version: "0.1.0-test".into(),
    }
}

/// An agent that asks (`tasks=carry`) gets its tasks in the wake-up itself, handed out as a
/// check-in would hand them out: once, marked running, with nothing left for the check-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_that_asks_carries_its_tasks() {
    let ts = TestServer::start().await;
    let pkg = ts.package(3600, 5, &["lab"]).await;
    let agent = ts.enroll(&pkg.token, "carry-1").await.unwrap();
    let version = agent
        .checkin(&checkin_request(0))
        .await
        .unwrap()
        .config
        .unwrap()
        .version;
    let new_task = |arg: &str| NewTask {
        command: "echo".into(),
        args: vec![arg.into()],
        timeout_secs: 30,
        target: "tag:lab".into(),
    };

    // Held, then woken by a new task: the task is in the answer.
    let waiter = tokio::spawn({
        let agent = agent.clone();
        async move { agent.wait_carry(version).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first: TaskCreated = ts.post_admin(admin::TASKS, &new_task("one")).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .expect("200 with a wake-up, not 204");
    assert_eq!(woke.reason, "tasks");
    assert_eq!(woke.tasks.len(), 1, "{woke:?}");
    assert_eq!(woke.tasks[0].task_id, first.id);
    assert_eq!(woke.tasks[0].args, vec!["one".to_owned()]);
    let detail: TaskDetail = ts
        .get_admin(&format!("/api/v1/tasks/{}", first.id))
        .await
        .unwrap();
    assert_eq!(detail.results[0].state, TaskState::Running);

    // Two tasks created before the next poll: both carried at once, and neither is handed
    // out again, by a check-in or a later poll.
    let second: TaskCreated = ts.post_admin(admin::TASKS, &new_task("two")).await.unwrap();
    let third: TaskCreated = ts
        .post_admin(admin::TASKS, &new_task("three"))
        .await
        .unwrap();
    let both = tokio::time::timeout(Duration::from_secs(5), agent.wait_carry(version))
        .await
        .unwrap()
        .unwrap();
    let mut ids: Vec<u64> = both.tasks.iter().map(|t| t.task_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![second.id, third.id]);
    assert!(agent.tasks_handed_out(version).await.is_empty());
    let query = format!(
        "config_version={version}&wait=3&{}",
        steward_proto::WAIT_CARRY_TASKS
    );
    let quiet = agent.long_poll(&query);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), quiet)
            .await
            .unwrap()
            .is_none(),
        "tasks already carried wake no one"
    );

    // The results come back by check-in, as for tasks a check-in handed out.
    let mut req = checkin_request(version);
    req.results = [first.id, second.id, third.id]
        .into_iter()
        .map(|task_id| TaskResult {
            task_id,
            outcome: TaskOutcome::Succeeded,
            exit_code: Some(0),
            output: String::new(),
            truncated: false,
            started_at: "2027-01-01T00:00:00Z".into(),
            finished_at: "2027-01-01T00:00:01Z".into(),
        })
        .collect();
    let mut acked = agent.checkin(&req).await.unwrap().acked_results;
    acked.sort_unstable();
    assert_eq!(acked, vec![first.id, second.id, third.id]);
}

/// Reads one newline-ended JSON line from a streamed body, within 10 s; `None` when the body
/// ended first (with nothing left over).
async fn next_line<T: serde::de::DeserializeOwned>(
    resp: &mut reqwest::Response,
    buf: &mut Vec<u8>,
) -> Option<T> {
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            return Some(serde_json::from_slice(&line).unwrap());
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the held answer went quiet")
            .unwrap();
        match chunk {
            Some(c) => buf.extend_from_slice(&c),
            None => {
                assert!(buf.is_empty(), "a partial line at the end: {buf:?}");
                return None;
            }
        }
    }
}

/// A check-in asked to go on as the long-poll (`wait=SECS`): its answer comes at once, and the
/// same response then carries the wake-up a long-poll would have given, or ends empty when the
/// hold runs out. An answer with something to do first is never held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_check_in_answers_at_once_then_waits_as_the_long_poll() {
    let ts = TestServer::start().await;
    let pkg = ts.package(3600, 5, &["lab"]).await;
    let agent = ts.enroll(&pkg.token, "held-1").await.unwrap();
    let mut first = checkin_request(0);
    first.inventory = Some(inventory("held-1"));
    let version = agent.checkin(&first).await.unwrap().config.unwrap().version;
    // An unchanged check-in from here on: no inventory wanted.
    let checkin_request = |v: u64| CheckinRequest {
        inventory_hash: first.inventory_hash.clone(),
        ..checkin_request(v)
    };
    let held = |secs: u64, req: CheckinRequest| {
        let url = format!(
            "{}{}?wait={secs}&{}",
            agent.base,
            paths::CHECKIN,
            steward_proto::WAIT_CARRY_TASKS
        );
        let http = agent.http.clone();
        async move { http.post(url).json(&req).send().await.unwrap() }
    };
    let content_type = |r: &reqwest::Response| {
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };

    // Nothing to do: the answer arrives while the hold goes on (no task exists yet), then a
    // new task ends it, carried in the wake-up line.
    let mut resp = held(30, checkin_request(version)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        content_type(&resp),
        steward_proto::CHECKIN_HELD_CONTENT_TYPE
    );
    let mut buf = Vec::new();
    let answer: CheckinResponse = next_line(&mut resp, &mut buf).await.unwrap();
    assert_eq!(answer.device_id, agent.id);
    assert!(answer.config.is_none() && answer.tasks.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let task: TaskCreated = ts
        .post_admin(
            admin::TASKS,
            &NewTask {
                command: "echo".into(),
                args: vec!["held".into()],
                timeout_secs: 30,
                target: "tag:lab".into(),
            },
        )
        .await
        .unwrap();
    let woke: WakeUp = next_line(&mut resp, &mut buf)
        .await
        .expect("a wake-up line");
    assert_eq!(woke.reason, "tasks");
    assert_eq!(woke.tasks.len(), 1);
    assert_eq!(woke.tasks[0].task_id, task.id);
    assert!(next_line::<WakeUp>(&mut resp, &mut buf).await.is_none());
    assert!(
        agent.tasks_handed_out(version).await.is_empty(),
        "carried once"
    );

    // The result, in a held check-in: acknowledged in the first line; with nothing more, the
    // hold (3 s asked, answered a margin earlier) ends the body after it.
    let mut req = checkin_request(version);
    req.results = vec![TaskResult {
        task_id: task.id,
        outcome: TaskOutcome::Succeeded,
        exit_code: Some(0),
        output: "held".into(),
        truncated: false,
        started_at: "2027-01-01T00:00:00Z".into(),
        finished_at: "2027-01-01T00:00:01Z".into(),
    }];
    let started = Instant::now();
    let mut resp = held(3, req).await;
    let mut buf = Vec::new();
    let answer: CheckinResponse = next_line(&mut resp, &mut buf).await.unwrap();
    assert_eq!(answer.acked_results, vec![task.id]);
    assert!(next_line::<WakeUp>(&mut resp, &mut buf).await.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "held past its wait"
    );
    let detail: TaskDetail = ts
        .get_admin(&format!("/api/v1/tasks/{}", task.id))
        .await
        .unwrap();
    assert_eq!(detail.results[0].state, TaskState::Succeeded);

    // Something to do first: a new configuration (an old version), or a task waiting. Plain
    // JSON, not held.
    let resp = held(30, checkin_request(0)).await;
    assert_eq!(content_type(&resp), "application/json");
    let answer: CheckinResponse = resp.json().await.unwrap();
    assert_eq!(answer.config.map(|c| c.version), Some(version));
    let waiting: TaskCreated = ts
        .post_admin(
            admin::TASKS,
            &NewTask {
                command: "echo".into(),
                args: vec!["waiting".into()],
                timeout_secs: 30,
                target: "tag:lab".into(),
            },
        )
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), held(30, checkin_request(version)))
        .await
        .unwrap();
    assert_eq!(content_type(&resp), "application/json");
    let answer: CheckinResponse = resp.json().await.unwrap();
    assert_eq!(
        answer.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![waiting.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_checkin_config_tasks_and_results() {
    let ts = TestServer::start().await;
    let pkg = ts.package(3600, 5, &["lab"]).await;
    assert_eq!(pkg.format, "steward-bootstrap/1");
    assert_eq!(pkg.profile.servers[0].host, "localhost");
    assert_eq!(pkg.profile.servers[0].port, ts.running().agent_addr.port());
    assert_eq!(pkg.profile.trust_anchors_pem, vec![ts.root_pem.clone()]);

    let agent = ts.enroll(&pkg.token, "web-1").await.unwrap();
    // The certificate names the device, is a client certificate, and points at the CRL.
    let leaf = CertFacts::from_der(
        &CertificateDer::from_pem_slice(agent.enrolled.cert_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(leaf.common_names, vec![agent.id.clone()]);
    assert!(leaf.eku.as_ref().unwrap().client_auth);
    assert_eq!(
        leaf.crl_urls,
        vec![format!(
            "http://localhost:{}/crl/issuing.crl",
            ts.running().crl_addr.port()
        )]
    );

    // First check-in: no configuration yet, no inventory on the server.
    let first = agent.checkin(&checkin_request(0)).await.unwrap();
    assert_eq!(first.device_id, agent.id);
    let config = first.config.expect("configuration on the first check-in");
    assert_eq!(config.settings.checkin_interval_secs, 60);
    assert!(first.send_inventory);
    assert!(first.tasks.is_empty());

    // Second: same version, inventory sent: nothing new.
    let mut req = checkin_request(config.version);
    req.inventory = Some(inventory("web-1"));
    req.inventory_hash = "H1".into();
    let second = agent.checkin(&req).await.unwrap();
    assert!(second.config.is_none(), "same version: no configuration");
    assert!(!second.send_inventory);
    // Same hash without a body: still nothing asked.
    let mut same = checkin_request(config.version);
    same.inventory_hash = "H1".into();
    assert!(!agent.checkin(&same).await.unwrap().send_inventory);
    // An unknown hash without a body: the server asks for the inventory.
    let mut r = checkin_request(config.version);
    r.inventory_hash = "H2".into();
    assert!(agent.checkin(&r).await.unwrap().send_inventory);

    let devices: Vec<DeviceSummary> = ts.get_admin(admin::DEVICES).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].status, DeviceStatus::Online);
    // Like a real agent, enrolled and inventoried under the same host name (how names follow
    // host renames, or stay when chosen at enrollment, is the store's naming test).
    assert_eq!(devices[0].name, "web-1");
    assert_eq!(devices[0].os.as_deref(), Some("Debian GNU/Linux 13"));
    assert_eq!(
        devices[0].connection_path.as_deref(),
        Some("lan via localhost:4726")
    );
    assert_eq!(devices[0].tags, vec!["lab".to_owned()]);

    // A waiting long-poll gets a new task within about a second.
    let waiter = {
        let http = agent.http.clone();
        let url = format!(
            "{}{}?config_version={}",
            agent.base,
            paths::WAIT,
            config.version
        );
        tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap(), Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created_at = Instant::now();
    let created: TaskCreated = ts
        .post_admin(
            admin::TASKS,
            &NewTask {
                command: "echo".into(),
                args: vec!["hello".into()],
                timeout_secs: 30,
                target: "tag:lab".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(created.targets, 1);
    let (status, body, woke_at) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tasks"), "{body}");
    let latency = woke_at.duration_since(created_at);
    assert!(latency < Duration::from_secs(2), "woken after {latency:?}");

    // The check-in hands the task out, once.
    let got = agent
        .checkin(&checkin_request(config.version))
        .await
        .unwrap();
    assert_eq!(got.tasks.len(), 1);
    assert_eq!(got.tasks[0].task_id, created.id);
    assert_eq!(got.tasks[0].args, vec!["hello".to_owned()]);
    assert!(
        agent
            .checkin(&checkin_request(config.version))
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    let running: TaskDetail = ts
        .get_admin(&format!("/api/v1/tasks/{}", created.id))
        .await
        .unwrap();
    assert_eq!(running.results[0].state, TaskState::Running);

    // The result is sent twice (the first acknowledgement "lost"): acknowledged both times,
    // stored once, the first copy kept.
    let result = TaskResult {
        task_id: created.id,
        outcome: TaskOutcome::Succeeded,
        exit_code: Some(0),
        output: "hello\n".into(),
        truncated: false,
        started_at: "2027-01-01T00:00:00Z".into(),
        finished_at: "2027-01-01T00:00:01Z".into(),
    };
    for copy in 0..2 {
        let mut req = checkin_request(config.version);
        let mut r = result.clone();
        if copy == 1 {
            r.output = "a different second copy".into();
        }
        req.results = vec![r];
        let resp = agent.checkin(&req).await.unwrap();
        assert_eq!(resp.acked_results, vec![created.id], "copy {copy}");
    }
    let done: TaskDetail = ts
        .get_admin(&format!("/api/v1/tasks/{}", created.id))
        .await
        .unwrap();
    assert_eq!(done.summary.finished, 1);
    assert_eq!(done.results.len(), 1);
    assert_eq!(done.results[0].state, TaskState::Succeeded);
    assert_eq!(done.results[0].output.as_deref(), Some("hello\n"));

    let detail: DeviceDetail = ts
        .get_admin(&format!("/api/v1/devices/{}", agent.id))
        .await
        .unwrap();
    assert_eq!(detail.inventory.unwrap().hostname, "web-1");
    assert_eq!(detail.applied_policies[0].name, "agent-settings");
    assert_eq!(detail.tasks.len(), 1);
    // By name too.
    let by_name: DeviceDetail = ts.get_admin("/api/v1/devices/web-1").await.unwrap();
    assert_eq!(by_name.summary.id, agent.id);
    let (status, e) = ts
        .get_admin::<DeviceDetail>("/api/v1/devices/nope")
        .await
        .unwrap_err();
    assert_eq!((status, e.id.as_str()), (404, "DEVICE-NOT-FOUND"));

    // No match: named.
    let (status, e) = ts
        .post_admin::<_, TaskCreated>(
            admin::TASKS,
            &NewTask {
                command: "echo".into(),
                args: vec![],
                timeout_secs: 30,
                target: "tag:nobody".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!((status, e.id.as_str()), (400, "TASK-NO-TARGETS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_with_the_reason() {
    let ts = TestServer::start().await;
    let (status, e) = match ts.enroll("forged-token", "h").await {
        Err(x) => x,
        Ok(_) => panic!("a forged token enrolled"),
    };
    assert_eq!((status, e.id.as_str()), (403, "ENROLL-TOKEN-INVALID"));

    let once = ts.package(3600, 1, &[]).await;
    ts.enroll(&once.token, "first").await.unwrap();
    let (status, e) = match ts.enroll(&once.token, "second").await {
        Err(x) => x,
        Ok(_) => panic!("an exhausted token enrolled"),
    };
    assert_eq!((status, e.id.as_str()), (403, "ENROLL-TOKEN-EXHAUSTED"));

    let short = ts.package(1, 5, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, e) = match ts.enroll(&short.token, "late").await {
        Err(x) => x,
        Ok(_) => panic!("an expired token enrolled"),
    };
    assert_eq!((status, e.id.as_str()), (403, "ENROLL-TOKEN-EXPIRED"));
    assert!(e.message.contains("expired at"), "{}", e.message);

    // A request that is not a CSR is refused as such, and does not use the token.
    let good = ts.package(3600, 1, &[]).await;
    let resp = ts
        .anonymous_agent()
        .post(ts.agent_url(paths::ENROLL))
        .json(&steward_proto::EnrollRequest {
            token: good.token.clone(),
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            hostname: "h".into(),
            agent_version: "0".into(),
        })
        .send()
        .await
        .unwrap();
    let (status, e) = common::decode::<serde_json::Value>(resp).await.unwrap_err();
    assert_eq!((status, e.id.as_str()), (400, "ENROLL-CSR-INVALID"));
    ts.enroll(&good.token, "still-usable").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_routes_need_a_platform_client_certificate() {
    let ts = TestServer::start().await;
    let pkg = ts.package(3600, 1, &[]).await;
    let agent = ts.enroll(&pkg.token, "h").await.unwrap();
    agent.checkin(&checkin_request(0)).await.unwrap();

    // No client certificate: the handshake succeeds (enrollment needs that) but every other
    // route answers 401 AGENT-CERT-REQUIRED.
    let anon = ts.anonymous_agent();
    let resp = anon
        .post(ts.agent_url(paths::CHECKIN))
        .json(&checkin_request(0))
        .send()
        .await
        .unwrap();
    let (status, e) = common::decode::<serde_json::Value>(resp).await.unwrap_err();
    assert_eq!((status, e.id.as_str()), (401, "AGENT-CERT-REQUIRED"));
    let resp = anon.get(ts.agent_url(paths::WAIT)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // A client certificate from another CA never gets past the TLS layer.
    let now = OffsetDateTime::now_utc();
    let other = Authority::new_root(
        "Other Root",
        KeySpec::EcdsaP256,
        now - time::Duration::hours(1),
        now + time::Duration::days(30),
    )
    .unwrap();
    let foreign = other
        .issue(&LeafRequest {
            common_name: agent.id.clone(),
            dns_names: vec![],
            ip_addrs: vec![],
            usage: Usage::Client,
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(30),
            crl_urls: vec![],
            key: KeySpec::EcdsaP256,
        })
        .unwrap();
    let stranger = client(
        &ts.root_pem,
        Some((
            vec![foreign.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(foreign.key_pkcs8.clone())),
        )),
        Some(ts.running().agent_addr),
    );
    let outcome = stranger
        .post(ts.agent_url(paths::CHECKIN))
        .json(&checkin_request(0))
        .send()
        .await;
    let err = match outcome {
        Err(e) => e,
        Ok(r) => panic!(
            "a foreign client certificate got an HTTP answer: {}",
            r.status()
        ),
    };
    // How reqwest words it varies: under TLS 1.3 the client finishes its side of the handshake
    // before the server judges the certificate, so the alert can arrive after the connection
    // pool gave up on it ("connection was not ready"). The refusal is what matters; check the
    // server's TLS alert deterministically over a raw rustls connection.
    eprintln!("foreign certificate refused: {err}");
    let alert = tls_alert_for(&ts, vec![foreign.cert.clone()], foreign.key_pkcs8.clone()).await;
    assert!(
        matches!(
            alert,
            rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
                    | rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::CertificateUnknown
            )
        ),
        "the server must refuse a foreign certificate with a TLS alert, got {alert:?}"
    );

    // The real agent still works.
    agent.checkin(&checkin_request(0)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_without_a_client_certificate_is_refused() {
    let ts = TestServer::start().await;
    let root = ts.data_dir().join("pki/root.crt");
    let port = ts.running().agent_addr.port();
    // curl blocks; run it off the runtime so the in-process server keeps serving.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                "--cacert",
                root.to_str().unwrap(),
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
                "--write-out",
                "\n%{http_code}",
                "--data",
                "{}",
                "--header",
                "content-type: application/json",
                &format!("https://localhost:{port}{}", paths::CHECKIN),
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("curl is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("\n401"), "{stdout}");
    assert!(stdout.contains("AGENT-CERT-REQUIRED"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_bodies_get_4xx_and_the_server_goes_on() {
    let ts = TestServer::start().await;
    let pkg = ts.package(3600, 1, &[]).await;
    let agent = ts.enroll(&pkg.token, "h").await.unwrap();
    let url = format!("{}{}", agent.base, paths::CHECKIN);

    // Declare one byte over the limit but send only the start of the body: the server must
    // refuse by the declared length, and the client reads the answer before it would have to
    // write more than the server will take (writing the whole body races the server's close).
    let answer = raw_mtls_request(
        &ts,
        &agent,
        &format!(
            "POST {} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            paths::CHECKIN,
            steward_proto::MAX_AGENT_BODY_BYTES + 1,
            "x".repeat(16 * 1024)
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("REQUEST-TOO-LARGE"), "{answer}");

    for bad in [&b"{not json"[..], b"{}", b"[]", b"\xff\xfe"] {
        let resp = agent
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(bad.to_vec())
            .send()
            .await
            .unwrap();
        let (status, e) = common::decode::<serde_json::Value>(resp).await.unwrap_err();
        assert_eq!(
            (status, e.id.as_str()),
            (400, "REQUEST-MALFORMED"),
            "{bad:?}"
        );
    }
    let resp = ts
        .anonymous_agent()
        .post(ts.agent_url(paths::ENROLL))
        .body("{\"token\":")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = ts
        .anonymous_agent()
        .get(ts.agent_url("/no/such/route"))
        .send()
        .await
        .unwrap();
    let (status, e) = common::decode::<serde_json::Value>(resp).await.unwrap_err();
    assert_eq!((status, e.id.as_str()), (404, "NOT-FOUND"));

    agent.checkin(&checkin_request(0)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_change_configuration_and_wake_long_polls() {
    let ts = TestServer::start().await;
    let lab = ts.package(3600, 1, &["lab"]).await;
    let office = ts.package(3600, 1, &[]).await;
    let a = ts.enroll(&lab.token, "lab-1").await.unwrap();
    let b = ts.enroll(&office.token, "office-1").await.unwrap();
    let va = a
        .checkin(&checkin_request(0))
        .await
        .unwrap()
        .config
        .unwrap();
    let vb = b
        .checkin(&checkin_request(0))
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(va.version, vb.version, "same settings, same version");

    // Short long-polls for the lab: a waiting lab agent is woken by the change itself.
    let waiter = {
        let http = a.http.clone();
        let url = format!("{}{}?config_version={}", a.base, paths::WAIT, va.version);
        tokio::spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let saved: Policy = ts
        .post_admin(
            admin::POLICIES,
            &Policy {
                name: "agent-settings".into(),
                target: "tag:lab".into(),
                values: [("long_poll_secs".to_owned(), "1".to_owned())].into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(saved.target, "tag:lab");
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(woke.contains("config"), "{woke}");

    let na = a
        .checkin(&checkin_request(va.version))
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(na.settings.long_poll_secs, 1);
    assert!(
        b.checkin(&checkin_request(vb.version))
            .await
            .unwrap()
            .config
            .is_none(),
        "the office device is not targeted"
    );
    // Nothing to do: the short long-poll ends with 204.
    let started = Instant::now();
    assert_eq!(a.wait(na.version).await, None);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A custom policy for everyone.
    let _: Policy = ts
        .post_admin(
            admin::POLICIES,
            &Policy {
                name: "motd".into(),
                target: "all".into(),
                values: [("text".to_owned(), "hello".to_owned())].into(),
            },
        )
        .await
        .unwrap();
    let nb = b
        .checkin(&checkin_request(vb.version))
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(nb.policies.len(), 1);
    assert_eq!(nb.policies[0].values["text"], "hello");
    let list: Vec<Policy> = ts.get_admin(admin::POLICIES).await.unwrap();
    assert_eq!(list.len(), 2);

    // Invalid values are named.
    for (name, target, key, value) in [
        ("agent-settings", "all", "checkin_interval_secs", "soon"),
        ("agent-settings", "all", "checkin_interval_secs", "1"),
        ("agent-settings", "all", "colour", "1"),
        ("x", "everyone", "k", "v"),
        ("bad name", "all", "k", "v"),
    ] {
        let (status, e) = ts
            .post_admin::<_, Policy>(
                admin::POLICIES,
                &Policy {
                    name: name.into(),
                    target: target.into(),
                    values: [(key.to_owned(), value.to_owned())].into(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            (status, e.id.as_str()),
            (400, "POLICY-INVALID"),
            "{name} {key}={value}"
        );
    }
}

/// Send `request` over mutual TLS as `agent` and return what the server answers (status line,
/// headers and as much body as arrives before it closes or 5 s pass).
async fn raw_mtls_request(ts: &TestServer, agent: &common::Agent, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ts.root_pem.as_bytes()).unwrap())
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(agent.key.clone().into());
    let cfg = rustls::ClientConfig::builder_with_provider(common::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(agent.chain.clone(), key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(ts.running().agent_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Handshake with the agent site presenting `chain`/`key`, then read: the TLS error the server
/// answers with (its alert about the client certificate).
async fn tls_alert_for(
    ts: &TestServer,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
) -> rustls::Error {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ts.root_pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(common::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(ts.running().agent_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let io_err = match connector.connect(name, tcp).await {
        // TLS 1.2: the alert ends the handshake itself.
        Err(e) => e,
        // TLS 1.3: it arrives on the first read after the handshake.
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
                Ok(Err(e)) => e,
                other => panic!("the server answered a foreign certificate: {other:?}"),
            }
        }
    };
    match io_err.into_inner().map(|e| e.downcast::<rustls::Error>()) {
        Some(Ok(e)) => *e,
        other => panic!("not a TLS error: {other:?}"),
    }
}

/// A mutual-TLS handshake with the agent site and one request (the session's certificate must
/// still be the device's): how the handshake went, and the status line.
async fn ping_over(
    ts: &TestServer,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
) -> (rustls::HandshakeKind, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(ts.running().agent_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET {} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
            steward_proto::paths::PING
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    (kind, text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_across_crl_resigning_and_still_meet_revocation() {
    let ts = TestServer::start().await;
    let pkg = ts.package(3600, 2, &[]).await;
    let agent = ts.enroll(&pkg.token, "pc-1").await.unwrap();
    let other = ts.enroll(&pkg.token, "pc-2").await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ts.root_pem.as_bytes()).unwrap())
        .unwrap();
    let client_cfg = |a: &common::Agent| {
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(common::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(
                    a.chain.clone(),
                    rustls::pki_types::PrivateKeyDer::Pkcs8(a.key.clone().into()),
                )
                .unwrap(),
        )
    };
    let (cfg, other_cfg) = (client_cfg(&agent), client_cfg(&other));
    let (kind, status) = ping_over(&ts, &cfg).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert!(status.contains(" 200 "), "{status}");
    let (kind, _) = ping_over(&ts, &other_cfg).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);

    // Revoking pc-2 re-signs the CRLs, which rebuilds the agent site's TLS configuration: pc-1
    // still resumes (no second full handshake for every agent at every re-signing)...
    let revoke = steward_proto::admin::paths::DEVICE_REVOKE.replace("{id}", &other.id);
    let resp = ts
        .admin
        .post(ts.console(&revoke))
        .bearer_auth(&ts.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (kind, status) = ping_over(&ts, &cfg).await;
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
    assert!(status.contains(" 200 "), "{status}");
    // ...and a resumed session does not bypass revocation: the request is refused.
    let (kind, status) = ping_over(&ts, &other_cfg).await;
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
    assert!(status.contains(" 403 "), "{status}");
}

/// A client session store that counts the TLS 1.3 tickets the server sends.
#[derive(Debug)]
struct CountingTickets {
    inner: std::sync::Arc<rustls::client::ClientSessionMemoryCache>,
    received: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group);
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value);
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.received
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handshake_brings_one_ticket_and_the_next_one_resumes_with_it() {
    let ts = TestServer::start().await;
    let pkg = ts.package(3600, 1, &[]).await;
    let agent = ts.enroll(&pkg.token, "pc-1").await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ts.root_pem.as_bytes()).unwrap())
        .unwrap();
    let tickets = std::sync::Arc::new(CountingTickets {
        inner: std::sync::Arc::new(rustls::client::ClientSessionMemoryCache::new(16)),
        received: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(common::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            agent.chain.clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(agent.key.clone().into()),
        )
        .unwrap();
    cfg.resumption = rustls::client::Resumption::store(tickets.clone());
    let cfg = std::sync::Arc::new(cfg);

    // Each ticket is single-use and each handshake brings exactly one: a second would be
    // encrypted (the client certificate inside) and sent for nothing on every connection.
    let (kind, status) = ping_over(&ts, &cfg).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        tickets.received.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    for n in 2..=4 {
        let (kind, status) = ping_over(&ts, &cfg).await;
        assert_eq!(kind, rustls::HandshakeKind::Resumed, "connection {n}");
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(
            tickets.received.load(std::sync::atomic::Ordering::SeqCst),
            n,
            "tickets after connection {n}"
        );
    }
}
