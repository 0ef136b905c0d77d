//! Kerberos end to end, against a real MIT KDC on loopback with a throwaway realm: `kinit`,
//! then `curl --negotiate -u :` and the `steward` CLI reach the admin API as the right
//! principal; the 401 offers the providers in order; password fallback on and off; NTLM is
//! refused with its reason; per-connection persistence counted in GSSAPI accepts; and
//! `steward doctor kerberos` names a keytab without the SPN, a stale key version, a missing
//! keytab and a KDC whose clock is skewed; a name a canonicalising client turns into another
//! SPN (KRB-NAME-MISMATCH); duplicate SPNs searched in a real OpenLDAP directory (`slapd` on
//! loopback, with AD's `servicePrincipalName` in its schema); `--check-config` checking the
//! keytab; and malformed Negotiate tokens answered 400 on every route that takes one.
//!
//! Every process gets KRB5_CONFIG / KRB5_KDC_PROFILE / KRB5CCNAME / KRB5_KTNAME pointing into
//! the test's directories (never /etc/krb5.conf). Everything listens on 127.0.0.1; every wait
//! is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod procs;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use procs::{Proc, agent_bin, ok, run, steward, wait_for};
use steward_kerberos::testkdc::TestKdc;
use steward_kerberos::testldap::{ADMIN_PASSWORD as LDAP_ADMIN_PASSWORD, TestLdap};

const REALM: &str = "STEWARD.TEST";
const ALICE_PW: &str = "alice-kerberos-pw";
const BOB_PW: &str = "bob-kerberos-pw";
const ADMIN_PW: &str = "correct horse battery staple";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A realm with alice (admin), bob (no role) and HTTP/localhost exported to a keytab.
fn realm() -> (TestKdc, PathBuf) {
    let kdc = TestKdc::start(REALM, None).expect("the KDC starts");
    kdc.add_user("alice", ALICE_PW).unwrap();
    kdc.add_user("bob", BOB_PW).unwrap();
    kdc.add_service("HTTP/localhost").unwrap();
    let keytab = kdc.dir().join("http.keytab");
    kdc.export("HTTP/localhost", &keytab).unwrap();
    (kdc, keytab)
}

/// `kinit` as `user` into a cache of its own.
fn ticket(kdc: &TestKdc, user: &str, pw: &str) -> PathBuf {
    let cc = kdc.dir().join(format!("cc-{user}"));
    kdc.kinit(&format!("{user}@{REALM}"), pw, &cc)
        .expect("kinit");
    cc
}

fn krb_env(cmd: &mut Command, kdc: &TestKdc, ccache: &Path) {
    for (k, v) in kdc.env() {
        cmd.env(k, v);
    }
    cmd.env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
        .env_remove("KRB5_KTNAME")
        .env_remove("STEWARD_PASSWORD")
        .env_remove("STEWARD_AUTH");
}

struct Server {
    _proc: Proc,
    dir: PathBuf,
    log: PathBuf,
    url: String,
    agent_url: String,
    ca: PathBuf,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log with `needle`.
    fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }
}

/// `steward server init` + an `[auth]` section, then `steward server run` with the realm's
/// environment (the server sets KRB5_KTNAME itself from `[auth] keytab`). The ports are picked
/// free but may be taken by a parallel test before the server binds them: a SERVER-BIND exit is
/// retried with new ports, at most three times.
fn server(tmp: &Path, kdc: &TestKdc, keytab: &Path, auth: &str) -> Server {
    let pw = tmp.join("admin-pw");
    std::fs::write(&pw, format!("{ADMIN_PW}\n")).unwrap();
    for attempt in 0..3 {
        let dir = tmp.join(format!("server-{attempt}"));
        ok(Command::new(steward())
            .args(["server", "init", "--fqdn", "localhost", "--ip", "127.0.0.1"])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--agent-addr", &format!("127.0.0.1:{}", free_port())])
            // The console port is read back from addresses.json: no race for it.
            .args(["--console-addr", "127.0.0.1:0"])
            .args(["--crl-addr", &format!("127.0.0.1:{}", free_port())])
            .arg("--admin-password-file")
            .arg(&pw));
        let toml = dir.join("steward.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        let cut = text
            .find("\n[auth]")
            .expect("init writes an [auth] section");
        std::fs::write(
            &toml,
            format!(
                "{}\n[auth]\nkeytab = \"{}\"\n{auth}\n",
                &text[..cut],
                keytab.display()
            ),
        )
        .unwrap();
        let log = tmp.join(format!("server-{attempt}.log"));
        let mut cmd = Command::new(steward());
        cmd.args(["server", "run", "--data-dir"]).arg(&dir);
        krb_env(&mut cmd, kdc, &kdc.dir().join("no-cache"));
        let mut proc = Proc::spawn(&mut cmd, &log);
        let addresses = dir.join("run").join("addresses.json");
        let listening = wait_for("the server to listen", Duration::from_secs(30), || {
            if proc.0.try_wait().unwrap().is_some() {
                return Some(false);
            }
            addresses.exists().then_some(true)
        });
        if !listening {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(text.contains("SERVER-BIND"), "the server exited: {text}");
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&addresses).unwrap()).unwrap();
        let port = |l: &str| {
            v[l].as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_owned()
        };
        return Server {
            _proc: proc,
            ca: dir.join("pki").join("root.crt"),
            dir,
            log,
            url: format!("https://localhost:{}", port("console")),
            agent_url: format!("https://localhost:{}", port("agent")),
        };
    }
    panic!("the server could not bind free ports in three attempts");
}

/// curl's answer: status, headers (lower-cased names, in order), body.
struct Curl {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Curl {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Runs curl against the server (several URLs share one connection, each with `args`);
/// returns each answer.
fn curl(s: &Server, kdc: &TestKdc, ccache: &Path, args: &[&str], paths: &[&str]) -> Vec<Curl> {
    curl_each(s, kdc, ccache, &vec![args; paths.len()], paths)
}

/// As [`curl`], with the arguments of each URL (`--next` between them keeps the connection).
fn curl_each(
    s: &Server,
    kdc: &TestKdc,
    ccache: &Path,
    args: &[&[&str]],
    paths: &[&str],
) -> Vec<Curl> {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("curl");
    let mut outs = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let h = tmp.path().join(format!("h{i}"));
        let b = tmp.path().join(format!("b{i}"));
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&s.ca)
            .args(args[i]);
        cmd.arg("-D")
            .arg(&h)
            .arg("-o")
            .arg(&b)
            .arg(if p.starts_with("https://") {
                (*p).to_owned()
            } else {
                format!("{}{p}", s.url)
            });
        outs.push((h, b));
    }
    krb_env(&mut cmd, kdc, ccache);
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    outs.iter()
        .map(|(h, b)| {
            let head = std::fs::read_to_string(h).unwrap();
            // With --negotiate curl records the 401 before the authenticated answer: keep
            // the last response.
            let last = head
                .split("\r\n\r\n")
                .filter(|r| r.starts_with("HTTP/"))
                .last()
                .unwrap()
                .to_owned();
            let mut lines = last.lines();
            let status = lines
                .next()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            Curl {
                status,
                headers,
                body: std::fs::read_to_string(b).unwrap_or_default(),
            }
        })
        .collect()
}

fn steward_cli(s: &Server, kdc: &TestKdc, ccache: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(steward());
    cmd.args(args).args(["--server", &s.url, "--ca"]).arg(&s.ca);
    krb_env(&mut cmd, kdc, ccache);
    run(&mut cmd)
}

#[test]
fn kinit_then_curl_and_the_cli_reach_the_api_as_the_right_principal() {
    let tmp = tempfile::tempdir().unwrap();
    let (kdc, keytab) = realm();
    let s = server(
        tmp.path(),
        &kdc,
        &keytab,
        "providers = [\"negotiate\", \"password\"]\npersist_per_connection = false\n\
         [auth.roles]\n\"alice@STEWARD.TEST\" = \"admin\"\n",
    );
    let alice = ticket(&kdc, "alice", ALICE_PW);
    let nobody = kdc.dir().join("empty-cache");

    // curl --negotiate -u : with alice's ticket: 200, the server proves itself (mutual
    // authentication token in WWW-Authenticate), and the log names alice and the provider.
    let r = curl(
        &s,
        &kdc,
        &alice,
        &["--negotiate", "-u", ":"],
        &["/api/v1/devices"],
    );
    assert_eq!(r[0].status, 200, "{}\n{}", r[0].body, s.log());
    assert_eq!(r[0].body.trim(), "[]");
    let www = r[0].header_values("www-authenticate");
    assert!(
        www.iter()
            .any(|v| v.starts_with("Negotiate ") && v.len() > 20),
        "mutual authentication token missing: {www:?}"
    );
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains("principal=alice@STEWARD.TEST")
                && l.contains("provider=\"negotiate\"")
                && l.contains("/api/v1/devices")),
        "{log}"
    );

    // The doctor with the server's data directory (keytab and names from steward.toml) finds
    // nothing wrong.
    let mut cmd = Command::new(steward());
    cmd.args(["doctor", "kerberos", "--format", "json", "--data-dir"])
        .arg(&s.dir);
    krb_env(&mut cmd, &kdc, &alice);
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("KRB-KVNO-OK") && text.contains("KRB-TICKET-OK"),
        "{text}"
    );

    // The Steward CLI: Negotiate by default because a ticket exists.
    let before = s.count("admin request");
    let out = steward_cli(&s, &kdc, &alice, &["devices", "list", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert_eq!(s.count("admin request"), before + 1);
    assert!(
        s.log()
            .lines()
            .last()
            .is_some_and(|l| l.contains("alice@STEWARD.TEST"))
    );

    // No ticket: 401 offering Negotiate, then the password scheme, in that order.
    let r = curl(&s, &kdc, &nobody, &[], &["/api/v1/devices"]);
    assert_eq!(r[0].status, 401);
    let www = r[0].header_values("www-authenticate");
    assert_eq!(www.len(), 2, "{www:?}");
    assert_eq!(www[0], "Negotiate");
    assert!(www[1].starts_with("Basic "), "{www:?}");
    assert!(r[0].body.contains("AUTH-REQUIRED"), "{}", r[0].body);
    // The CLI without a ticket nor a password says so.
    let out = steward_cli(
        &s,
        &kdc,
        &nobody,
        &["devices", "list", "--auth", "negotiate"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kinit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Password fallback is configured: Basic and the CLI's password login both work.
    let r = curl(
        &s,
        &kdc,
        &nobody,
        &["-u", &format!("admin:{ADMIN_PW}")],
        &["/api/v1/devices"],
    );
    assert_eq!(r[0].status, 200, "{}", r[0].body);
    let pwfile = tmp.path().join("admin-pw");
    let out = steward_cli(
        &s,
        &kdc,
        &alice,
        &[
            "devices",
            "list",
            "--auth",
            "password",
            "--password-file",
            pwfile.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        s.log()
            .lines()
            .any(|l| l.contains("principal=admin") && l.contains("provider=\"password\"")),
        "{}",
        s.log()
    );

    // The console's Kerberos sign-in: a session cookie for alice, and a page that shows her.
    let r = curl(
        &s,
        &kdc,
        &alice,
        &["--negotiate", "-u", ":"],
        &["/login/negotiate?next=/devices"],
    );
    assert_eq!(r[0].status, 303, "{}", r[0].body);
    assert_eq!(r[0].header_values("location"), vec!["/devices"]);
    let cookie = r[0].header_values("set-cookie")[0]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = curl(
        &s,
        &kdc,
        &nobody,
        &["-H", &format!("Cookie: {cookie}")],
        &["/devices"],
    );
    assert_eq!(r[0].status, 200);
    assert!(r[0].body.contains("alice@STEWARD.TEST"), "{}", r[0].body);
    // Without a ticket the sign-in page asks the browser for one.
    let r = curl(&s, &kdc, &nobody, &[], &["/login/negotiate"]);
    assert_eq!(r[0].status, 401);
    assert_eq!(r[0].header_values("www-authenticate"), vec!["Negotiate"]);

    // bob is a valid principal without a role: authenticated, not authorised, and both the
    // answer and the log name him.
    let bob = ticket(&kdc, "bob", BOB_PW);
    let r = curl(
        &s,
        &kdc,
        &bob,
        &["--negotiate", "-u", ":"],
        &["/api/v1/devices"],
    );
    assert_eq!(r[0].status, 403, "{}", r[0].body);
    assert!(
        r[0].body.contains("AUTH-PRINCIPAL-UNKNOWN"),
        "{}",
        r[0].body
    );
    assert!(r[0].body.contains("bob@STEWARD.TEST"), "{}", r[0].body);
    assert!(
        s.log()
            .lines()
            .any(|l| l.contains("AUTH-PRINCIPAL-UNKNOWN") && l.contains("bob@STEWARD.TEST")),
        "{}",
        s.log()
    );

    // A client offering only NTLM (raw, and as a Negotiate token) is told NTLM is not
    // supported and why.
    let ntlm_type1 = "TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==";
    for header in [
        format!("NTLM {ntlm_type1}"),
        format!("Negotiate {ntlm_type1}"),
    ] {
        let r = curl(
            &s,
            &kdc,
            &nobody,
            &["-H", &format!("Authorization: {header}")],
            &["/api/v1/devices"],
        );
        assert_eq!(r[0].status, 401);
        assert!(
            r[0].body.contains("AUTH-NTLM-NOT-SUPPORTED"),
            "{}",
            r[0].body
        );
        assert!(r[0].body.contains("NTLM is not supported"), "{}", r[0].body);
        assert!(r[0].body.contains("mutual authentication"), "{}", r[0].body);
    }
    assert!(s.count("AUTH-NTLM-NOT-SUPPORTED") >= 2, "{}", s.log());

    // A Negotiate header that is not a token at all — not base64, empty, base64 of something
    // that is not a GSS-API token, bytes that are not ASCII — is a 400 with its own ID and a
    // JSON body, on every console-listener route (the admin API, the Kerberos sign-in, a
    // console page), and the server keeps serving.
    let garbage = [
        "Authorization: Negotiate !!!not-base64!!!".to_owned(),
        "Authorization: Negotiate".to_owned(),
        "Authorization: Negotiate    ".to_owned(),
        "Authorization: Negotiate Z2FyYmFnZSwgbm90IGEgdG9rZW4=".to_owned(),
        "Authorization: Negotiate YII=@@".to_owned(),
        format!("Authorization: Negotiate {}", "A".repeat(100_001)),
        "Authorization: Negotiate \u{e9}t\u{e9}".to_owned(),
    ];
    for path in [
        "/api/v1/devices",
        "/login/negotiate?next=/devices",
        "/devices",
    ] {
        for header in &garbage {
            let r = curl(&s, &kdc, &nobody, &["-H", header], &[path]);
            let shown = &header[..header.len().min(60)];
            assert_eq!(r[0].status, 400, "{path} {shown}: {}", r[0].body);
            let v: serde_json::Value = serde_json::from_str(&r[0].body)
                .unwrap_or_else(|e| panic!("{path} {shown}: {e}: {}", r[0].body));
            assert_eq!(v["id"], "AUTH-NEGOTIATE-MALFORMED", "{path} {shown}: {v}");
        }
    }
    assert!(s.count("AUTH-NEGOTIATE-MALFORMED") >= 21, "{}", s.log());
    // Shaped like a token but garbage inside: GSSAPI refuses it (401), nothing panics.
    let r = curl(
        &s,
        &kdc,
        &nobody,
        &[
            "-H",
            "Authorization: Negotiate YIIBAgYGKwYBBQUCoIH3MIH0oDAwLgYJKoZIgvcSAQICBgkqhkiG9xIBAgI=",
        ],
        &["/api/v1/devices"],
    );
    assert_eq!(r[0].status, 401, "{}", r[0].body);
    assert!(r[0].body.contains("AUTH-NEGOTIATE-FAILED"), "{}", r[0].body);
    let r = curl(
        &s,
        &kdc,
        &alice,
        &["--negotiate", "-u", ":"],
        &["/api/v1/devices"],
    );
    assert_eq!(r[0].status, 200, "the server still serves: {}", s.log());

    // persist_per_connection = false: three requests on one connection, each with a token:
    // three accepts.
    let before = s.count("gssapi accept");
    let r = curl(
        &s,
        &kdc,
        &alice,
        &["--negotiate", "-u", ":"],
        &["/api/v1/devices", "/api/v1/tasks", "/api/v1/policies"],
    );
    assert!(r.iter().all(|c| c.status == 200));
    assert_eq!(s.count("gssapi accept") - before, 3, "{}", s.log());
    // And a request without credentials after an authenticated one on the same connection is
    // not authenticated: every request stands alone.
    let before = s.count("gssapi accept");
    let negotiate: &[&str] = &["--negotiate", "-u", ":"];
    let r = curl_each(
        &s,
        &kdc,
        &alice,
        &[negotiate, &[]],
        &["/api/v1/devices", "/api/v1/tasks"],
    );
    assert_eq!(r[0].status, 200);
    assert_eq!(r[1].status, 401, "{}", r[1].body);
    assert_eq!(s.count("gssapi accept") - before, 1, "{}", s.log());
}

#[test]
fn negotiate_only_refuses_passwords_and_persists_per_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let (kdc, keytab) = realm();
    let s = server(
        tmp.path(),
        &kdc,
        &keytab,
        "providers = [\"negotiate\"]\npersist_per_connection = true\n\
         [auth.roles]\n\"alice@STEWARD.TEST\" = \"viewer\"\n",
    );
    let alice = ticket(&kdc, "alice", ALICE_PW);
    let nobody = kdc.dir().join("empty-cache");

    // Only Negotiate is offered, and passwords are refused (Basic and the login route).
    let r = curl(&s, &kdc, &nobody, &[], &["/api/v1/devices"]);
    assert_eq!(r[0].status, 401);
    assert_eq!(r[0].header_values("www-authenticate"), vec!["Negotiate"]);
    let r = curl(
        &s,
        &kdc,
        &nobody,
        &["-u", &format!("admin:{ADMIN_PW}")],
        &["/api/v1/devices"],
    );
    assert_eq!(r[0].status, 403, "{}", r[0].body);
    assert!(
        r[0].body.contains("AUTH-PASSWORD-DISABLED"),
        "{}",
        r[0].body
    );
    let r = curl(
        &s,
        &kdc,
        &nobody,
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            &format!("{{\"username\":\"admin\",\"password\":\"{ADMIN_PW}\"}}"),
        ],
        &["/api/v1/login"],
    );
    assert_eq!(r[0].status, 403, "{}", r[0].body);
    assert!(
        r[0].body.contains("AUTH-PASSWORD-DISABLED"),
        "{}",
        r[0].body
    );

    // persist_per_connection = true: the first request on a connection authenticates, the
    // next two on it carry no credentials and are served as alice: one accept, three requests
    // logged with alice and negotiate.
    let accepts = s.count("gssapi accept");
    let requests = s.count("admin request");
    let negotiate: &[&str] = &["--negotiate", "-u", ":"];
    let r = curl_each(
        &s,
        &kdc,
        &alice,
        &[negotiate, &[], &[]],
        &["/api/v1/devices", "/api/v1/tasks", "/api/v1/policies"],
    );
    assert!(r.iter().all(|c| c.status == 200), "{}", s.log());
    assert_eq!(s.count("gssapi accept") - accepts, 1, "{}", s.log());
    assert_eq!(s.count("admin request") - requests, 3, "{}", s.log());
    let log = s.log();
    let persisted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin request") && l.contains("persisted=true"))
        .collect();
    assert_eq!(persisted.len(), 2, "{log}");
    assert!(persisted.iter().all(|l| l.contains("alice@STEWARD.TEST")));

    // Kerberos enrollment is off by default: a host with a valid keytab is refused, by name.
    let host = this_host();
    kdc.add_service(&format!("host/{host}")).unwrap();
    let host_keytab = kdc.dir().join("host.keytab");
    kdc.export(&format!("host/{host}"), &host_keytab).unwrap();
    let out = agent_enroll_kerberos(&kdc, &s, tmp.path(), &host_keytab, "agent");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ENROLL-KERBEROS-DISABLED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A viewer may read but not change.
    let out = steward_cli(&s, &kdc, &alice, &["devices", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = curl(
        &s,
        &kdc,
        &alice,
        &[
            "--negotiate",
            "-u",
            ":",
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"name\":\"p\",\"target\":\"all\",\"values\":{}}",
        ],
        &["/api/v1/policies"],
    );
    assert_eq!(r[0].status, 403, "{}", r[0].body);
    assert!(r[0].body.contains("AUTH-ROLE-FORBIDDEN"), "{}", r[0].body);
}

/// `steward-agent enroll --kerberos` as this host, with `keytab` as the client keytab.
fn agent_enroll_kerberos(
    kdc: &TestKdc,
    s: &Server,
    tmp: &Path,
    keytab: &Path,
    dir: &str,
) -> std::process::Output {
    let package = tmp.join("agent.pkg");
    if !package.exists() {
        ok(Command::new(steward())
            .args(["package", "agent", "--data-dir"])
            .arg(&s.dir)
            .args(["--auth", "token", "--out"])
            .arg(&package));
    }
    let mut cmd = Command::new(agent_bin());
    cmd.args(["enroll", "--kerberos", "--package"])
        .arg(&package)
        .arg("--data-dir")
        .arg(tmp.join(dir));
    krb_env(&mut cmd, kdc, &tmp.join(format!("{dir}-cc")));
    cmd.env("KRB5_CLIENT_KTNAME", format!("FILE:{}", keytab.display()));
    run(&mut cmd)
}

/// This machine's host name as MIT Kerberos puts it in `host/<name>` (canonicalisation is off
/// in the test realm's krb5.conf).
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_ascii_lowercase()
}

#[test]
fn a_domain_joined_agent_enrolls_with_its_host_keytab_when_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let (kdc, keytab) = realm();
    let host = this_host();
    kdc.add_service(&format!("host/{host}")).unwrap();
    let host_keytab = kdc.dir().join("host.keytab");
    kdc.export(&format!("host/{host}"), &host_keytab).unwrap();
    let s = server(
        tmp.path(),
        &kdc,
        &keytab,
        "providers = [\"negotiate\", \"password\"]\nagent_kerberos_enrollment = true\n\
         agent_kerberos_tags = [\"domain\"]\n[auth.roles]\n\"alice@STEWARD.TEST\" = \"admin\"\n",
    );

    let out = agent_enroll_kerberos(&kdc, &s, tmp.path(), &host_keytab, "agent");
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    // The device is named after the host principal and has the configured tags; the server
    // log names the principal.
    let alice = ticket(&kdc, "alice", ALICE_PW);
    let out = steward_cli(&s, &kdc, &alice, &["devices", "list", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["name"], host.as_str());
    assert!(
        devices[0]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "domain"),
        "{devices:?}"
    );
    let principal = format!("host/{host}@{REALM}");
    assert!(
        s.log()
            .lines()
            .any(|l| l.contains(&principal) && l.contains("agent enrolls")),
        "{}",
        s.log()
    );

    // A token that is not one, in the enrollment body: 400 AUTH-NEGOTIATE-MALFORMED too.
    for token in ["", "%%%", "bm90IGEgdG9rZW4="] {
        let body = serde_json::json!({
            "negotiate_token": token,
            "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n",
            "agent_version": "0.1.0",
        })
        .to_string();
        let url = format!("{}/agent/v1/enroll/kerberos", s.agent_url);
        let r = curl(
            &s,
            &kdc,
            &kdc.dir().join("none"),
            &["-H", "Content-Type: application/json", "--data", &body],
            &[&url],
        );
        assert_eq!(r[0].status, 400, "{token:?}: {}", r[0].body);
        assert!(
            r[0].body.contains("AUTH-NEGOTIATE-MALFORMED"),
            "{token:?}: {}",
            r[0].body
        );
    }

    // Without the host's key (an empty keytab) the agent says why, under its ID.
    let empty = kdc.dir().join("empty.keytab");
    let out = agent_enroll_kerberos(&kdc, &s, tmp.path(), &empty, "agent-2");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AGENT-ENROLL-KERBEROS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `steward doctor kerberos --format json`: the IDs of the findings with their severities.
fn doctor(kdc: &TestKdc, ccache: &Path, keytab: &Path) -> (i32, Vec<(String, String, String)>) {
    let mut cmd = Command::new(steward());
    cmd.args([
        "doctor",
        "kerberos",
        "--name",
        "localhost",
        "--format",
        "json",
        "--keytab",
    ])
    .arg(keytab);
    krb_env(&mut cmd, kdc, ccache);
    let out = run(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["severity"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (out.status.code().unwrap_or(-1), findings)
}

fn has(findings: &[(String, String, String)], id: &str, severity: &str) -> bool {
    findings.iter().any(|(i, s, _)| i == id && s == severity)
}

#[test]
fn the_doctor_names_a_missing_spn_a_stale_kvno_a_missing_keytab_and_a_skewed_clock() {
    let (kdc, keytab) = realm();
    let alice = ticket(&kdc, "alice", ALICE_PW);

    // A sound setup: no error; the klist check and the key version agree.
    let (code, f) = doctor(&kdc, &alice, &keytab);
    assert_eq!(code, 0, "{f:?}");
    for id in [
        "KRB-KEYTAB-OK",
        "KRB-SPN-OK",
        "KRB-KDC-OK",
        "KRB-CLOCK-OK",
        "KRB-TICKET-OK",
        "KRB-KVNO-OK",
    ] {
        assert!(has(&f, id, "ok"), "{id}: {f:?}");
    }
    assert!(has(&f, "KRB-DUPLICATE-SPN-UNCHECKED", "warning"), "{f:?}");

    // A keytab for another name only: the SPN for localhost is missing.
    kdc.add_service("HTTP/other.steward.test").unwrap();
    let other = kdc.dir().join("other.keytab");
    kdc.export("HTTP/other.steward.test", &other).unwrap();
    let (code, f) = doctor(&kdc, &alice, &other);
    assert_eq!(code, 1);
    assert!(has(&f, "KRB-SPN-MISSING", "error"), "{f:?}");
    assert!(
        f.iter()
            .any(|(i, _, m)| i == "KRB-SPN-MISSING" && m.contains("HTTP/localhost"))
    );

    // The key is changed in the KDC (and exported elsewhere): the first keytab is stale.
    kdc.rekey("HTTP/localhost", &kdc.dir().join("new.keytab"))
        .unwrap();
    // A fresh cache: the old one still holds the service ticket issued under key version 1.
    let cc = kdc.dir().join("cc-alice-2");
    kdc.kinit(&format!("alice@{REALM}"), ALICE_PW, &cc).unwrap();
    let (code, f) = doctor(&kdc, &cc, &keytab);
    assert_eq!(code, 1);
    let m = f
        .iter()
        .find(|(i, s, _)| i == "KRB-KVNO-MISMATCH" && s == "error")
        .unwrap_or_else(|| panic!("{f:?}"));
    assert!(
        m.2.contains("key version 2") && m.2.contains("version(s) 1"),
        "{}",
        m.2
    );

    // No keytab at all.
    let (code, f) = doctor(&kdc, &alice, &kdc.dir().join("absent.keytab"));
    assert_eq!(code, 1);
    assert!(has(&f, "KRB-KEYTAB-MISSING", "error"), "{f:?}");

    // No ticket: the doctor says the ticket checks did not run (and that NTLM is no fallback).
    let (_, f) = doctor(&kdc, &kdc.dir().join("empty-cache"), &keytab);
    assert!(has(&f, "KRB-NO-TICKET", "warning"), "{f:?}");
    assert!(
        f.iter()
            .any(|(_, _, m)| m.contains("NTLM is not supported"))
    );

    drop(kdc);

    // A KDC fifteen minutes ahead of this machine: clock skew, with both times.
    let skewed = TestKdc::start("SKEWED.TEST", Some("+15m")).unwrap();
    let (code, f) = doctor(&skewed, &skewed.dir().join("none"), &keytab);
    assert_eq!(code, 1);
    let m = f
        .iter()
        .find(|(i, s, _)| i == "KRB-CLOCK-SKEW" && s == "error")
        .unwrap_or_else(|| panic!("{f:?}"));
    assert!(m.2.contains("ahead of"), "{}", m.2);
    let addr = skewed.addr();
    let dir = tempfile::tempdir().unwrap();
    // Keep its krb5.conf, stop the KDC: now it is unreachable.
    let conf = std::fs::read_to_string(skewed.krb5_conf()).unwrap();
    drop(skewed);
    let conf_path = dir.path().join("krb5.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new(steward());
    cmd.args([
        "doctor",
        "kerberos",
        "--name",
        "localhost",
        "--format",
        "json",
        "--timeout",
        "2",
        "--keytab",
    ])
    .arg(&keytab)
    .env("KRB5_CONFIG", &conf_path)
    .env(
        "KRB5CCNAME",
        format!("FILE:{}", dir.path().join("cc").display()),
    );
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("KRB-KDC-UNREACHABLE") && text.contains(&addr.to_string()),
        "{text}"
    );
}

/// `steward server init` into `tmp/<name>` with an `[auth]` section of its own (`keytab` first,
/// then `auth`), without running the server.
fn init_data_dir(tmp: &Path, name: &str, keytab: &Path, auth: &str) -> PathBuf {
    let pw = tmp.join("admin-pw");
    std::fs::write(&pw, format!("{ADMIN_PW}\n")).unwrap();
    let dir = tmp.join(name);
    ok(Command::new(steward())
        .args(["server", "init", "--fqdn", "localhost", "--ip", "127.0.0.1"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--agent-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--console-addr", "127.0.0.1:0"])
        .args(["--crl-addr", &format!("127.0.0.1:{}", free_port())])
        .arg("--admin-password-file")
        .arg(&pw));
    set_auth(&dir, keytab, auth);
    dir
}

/// Replaces the `[auth]` section of `dir/steward.toml`.
fn set_auth(dir: &Path, keytab: &Path, auth: &str) {
    let toml = dir.join("steward.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let cut = text.find("\n[auth]").expect("an [auth] section");
    std::fs::write(
        &toml,
        format!(
            "{}\n[auth]\nkeytab = \"{}\"\n{auth}\n",
            &text[..cut],
            keytab.display()
        ),
    )
    .unwrap();
}

/// `steward doctor kerberos --format json` with `args`, the realm's environment and
/// optionally another krb5.conf.
fn doctor_with(
    kdc: &TestKdc,
    ccache: &Path,
    args: &[&str],
    krb5_conf: Option<&Path>,
) -> (i32, Vec<(String, String, String)>) {
    let mut cmd = Command::new(steward());
    cmd.args(["doctor", "kerberos", "--format", "json"])
        .args(args);
    krb_env(&mut cmd, kdc, ccache);
    if let Some(c) = krb5_conf {
        cmd.env("KRB5_CONFIG", c);
    }
    let out = run(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["severity"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (out.status.code().unwrap_or(-1), findings)
}

fn message<'a>(f: &'a [(String, String, String)], id: &str, severity: &str) -> &'a str {
    f.iter()
        .find(|(i, s, _)| i == id && s == severity)
        .map(|(_, _, m)| m.as_str())
        .unwrap_or_else(|| panic!("no {severity} {id}: {f:#?}"))
}

#[test]
fn the_doctor_searches_an_ldap_directory_for_duplicate_spns() {
    let tmp = tempfile::tempdir().unwrap();
    let (kdc, keytab) = realm();
    let alice = ticket(&kdc, "alice", ALICE_PW);
    let mut ldap = TestLdap::start("dc=steward,dc=test").expect("slapd starts (Debian: slapd)");
    let url = ldap.url();
    let dir = init_data_dir(
        tmp.path(),
        "server",
        &keytab,
        &format!(
            "providers = [\"negotiate\", \"password\"]\nldap_url = \"{url}\"\n\
             ldap_base = \"dc=steward,dc=test\"\n"
        ),
    );
    let by_dir = ["--data-dir", dir.to_str().unwrap()];

    // Nobody holds HTTP/localhost yet: not registered (a warning), and no error.
    let (code, f) = doctor_with(&kdc, &alice, &by_dir, None);
    assert_eq!(code, 0, "{f:#?}");
    let m = message(&f, "KRB-SPN-UNREGISTERED", "warning");
    assert!(m.contains("HTTP/localhost") && m.contains(&url), "{m}");
    assert!(!has(&f, "KRB-DUPLICATE-SPN-UNCHECKED", "warning"), "{f:#?}");

    // The server's account holds it: once, OK, naming the object.
    let svc = ldap
        .add_spn_holder(
            "steward-svc",
            &["HTTP/localhost", "HTTP/localhost.steward.test"],
        )
        .unwrap();
    let (code, f) = doctor_with(&kdc, &alice, &by_dir, None);
    assert_eq!(code, 0, "{f:#?}");
    assert!(message(&f, "KRB-SPN-UNIQUE", "ok").contains(&svc), "{f:#?}");
    assert!(has(&f, "KRB-KVNO-OK", "ok"), "{f:#?}");

    // A stale computer account holds it too, in other case (AD compares case-insensitively):
    // an error naming both objects.
    let stale = ldap
        .add_spn_holder("OLDWEB01", &["http/LOCALHOST"])
        .unwrap();
    let (code, f) = doctor_with(&kdc, &alice, &by_dir, None);
    assert_eq!(code, 1, "{f:#?}");
    let m = message(&f, "KRB-DUPLICATE-SPN", "error");
    assert!(
        m.contains(&svc) && m.contains(&stale) && m.contains("HTTP/localhost"),
        "{m}"
    );
    // The text form says it too.
    let mut cmd = Command::new(steward());
    cmd.args(["doctor", "kerberos", "--data-dir"]).arg(&dir);
    krb_env(&mut cmd, &kdc, &alice);
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[error] KRB-DUPLICATE-SPN:") && text.contains("setspn -D"),
        "{text}"
    );

    // A bind with the right password finds the same; a wrong one is named.
    let good = tmp.path().join("ldap-pw");
    std::fs::write(&good, format!("{LDAP_ADMIN_PASSWORD}\n")).unwrap();
    let bad = tmp.path().join("ldap-pw-bad");
    std::fs::write(&bad, "wrong\n").unwrap();
    let admin_dn = ldap.admin_dn();
    let bound = |file: &Path| {
        set_auth(
            &dir,
            &keytab,
            &format!(
                "providers = [\"negotiate\", \"password\"]\nldap_url = \"{url}\"\n\
                 ldap_base = \"dc=steward,dc=test\"\nldap_bind_dn = \"{admin_dn}\"\n\
                 ldap_bind_password_file = \"{}\"\n",
                file.display()
            ),
        );
    };
    bound(&good);
    let (code, f) = doctor_with(&kdc, &alice, &by_dir, None);
    assert_eq!(code, 1, "{f:#?}");
    assert!(has(&f, "KRB-DUPLICATE-SPN", "error"), "{f:#?}");
    bound(&bad);
    let (code, f) = doctor_with(&kdc, &alice, &by_dir, None);
    assert_eq!(code, 0, "{f:#?}");
    let m = message(&f, "KRB-LDAP-BIND-FAILED", "warning");
    assert!(
        m.contains(&admin_dn) && m.contains("49") && m.contains("not checked"),
        "{m}"
    );

    // The flags override the data directory: a base that does not exist.
    let (_, f) = doctor_with(
        &kdc,
        &alice,
        &[
            "--name",
            "localhost",
            "--keytab",
            keytab.to_str().unwrap(),
            "--ldap-url",
            &url,
            "--ldap-base",
            "dc=elsewhere,dc=test",
        ],
        None,
    );
    let m = message(&f, "KRB-LDAP-SEARCH-FAILED", "warning");
    assert!(
        m.contains("dc=elsewhere,dc=test") && m.contains("noSuchObject"),
        "{m}"
    );

    // The directory is down: named with its URL and the error.
    ldap.stop();
    let (code, f) = doctor_with(&kdc, &alice, &by_dir, None);
    assert_eq!(code, 0, "{f:#?}");
    let m = message(&f, "KRB-LDAP-UNREACHABLE", "warning");
    assert!(m.contains(&url) && m.contains("not checked"), "{m}");

    // No directory configured: said plainly.
    set_auth(&dir, &keytab, "providers = [\"negotiate\", \"password\"]\n");
    let (_, f) = doctor_with(&kdc, &alice, &by_dir, None);
    let m = message(&f, "KRB-DUPLICATE-SPN-UNCHECKED", "warning");
    assert!(
        m.contains("cannot be checked") && m.contains("no LDAP directory is configured"),
        "{m}"
    );
}

#[test]
fn the_doctor_names_a_name_that_canonicalises_to_another_spn() {
    let (kdc, _) = realm();
    let alice = ticket(&kdc, "alice", ALICE_PW);
    // The server answers to 127.0.0.1 and its keytab has HTTP/127.0.0.1 only.
    kdc.add_service("HTTP/127.0.0.1").unwrap();
    let ip_keytab = kdc.dir().join("ip.keytab");
    kdc.export("HTTP/127.0.0.1", &ip_keytab).unwrap();
    let args = [
        "--name",
        "127.0.0.1",
        "--keytab",
        ip_keytab.to_str().unwrap(),
    ];
    // The test realm's krb5.conf turns canonicalisation off: the SPN is the name as given.
    let (_, f) = doctor_with(&kdc, &alice, &args, None);
    assert!(has(&f, "KRB-SPN-OK", "ok"), "{f:#?}");
    assert!(
        !f.iter().any(|(i, _, _)| i == "KRB-NAME-MISMATCH"),
        "{f:#?}"
    );

    // MIT's defaults (dns_canonicalize_hostname and rdns on): a client resolves 127.0.0.1
    // back to localhost (its PTR, here /etc/hosts) and asks for HTTP/localhost, which the
    // keytab does not have.
    let conf = std::fs::read_to_string(kdc.krb5_conf())
        .unwrap()
        .replace("rdns = false", "rdns = true")
        .replace(
            "dns_canonicalize_hostname = false",
            "dns_canonicalize_hostname = true",
        );
    let canon = kdc.dir().join("krb5-canonicalising.conf");
    std::fs::write(&canon, conf).unwrap();
    let (_, f) = doctor_with(&kdc, &alice, &args, Some(&canon));
    let m = message(&f, "KRB-NAME-MISMATCH", "warning");
    // The name a client really asks for: the PTR of 127.0.0.1 (localhost on Debian).
    let asked = m
        .split_once("ask for HTTP/")
        .and_then(|(_, rest)| rest.split_once(','))
        .map(|(host, _)| host.to_owned())
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        m.starts_with("127.0.0.1 resolves to 127.0.0.1")
            && m.contains(&format!("reverse: {asked}"))
            && asked.starts_with("localhost"),
        "{m}"
    );

    // With HTTP/<that name> in the keytab as well, the name a client really uses has its key.
    if asked != "localhost" {
        kdc.add_service(&format!("HTTP/{asked}")).unwrap();
    }
    let both = kdc.dir().join("both.keytab");
    kdc.export("HTTP/127.0.0.1", &both).unwrap();
    kdc.export(&format!("HTTP/{asked}"), &both).unwrap();
    let (_, f) = doctor_with(
        &kdc,
        &alice,
        &["--name", "127.0.0.1", "--keytab", both.to_str().unwrap()],
        Some(&canon),
    );
    assert!(
        !f.iter().any(|(i, _, _)| i == "KRB-NAME-MISMATCH"),
        "{f:#?}"
    );
}

/// `steward server run --check-config`: exit status and output.
fn check_config(dir: &Path) -> (i32, String) {
    let out = run(Command::new(steward())
        .args(["server", "run", "--check-config", "--data-dir"])
        .arg(dir));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_config_checks_the_keytab_and_the_directory_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let (kdc, keytab) = realm();
    let negotiate = "providers = [\"negotiate\", \"password\"]\n";
    let dir = init_data_dir(tmp.path(), "server", &keytab, negotiate);

    // The keytab has HTTP/localhost for the one name: fine.
    let (code, out) = check_config(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("KRB-KEYTAB-OK") && out.contains("KRB-SPN-OK"),
        "{out}"
    );

    // A keytab for another name: the SPN for localhost is missing, an error.
    kdc.add_service("HTTP/other.steward.test").unwrap();
    let other = kdc.dir().join("other.keytab");
    kdc.export("HTTP/other.steward.test", &other).unwrap();
    set_auth(&dir, &other, negotiate);
    let (code, out) = check_config(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("error")
            && l.contains("KRB-SPN-MISSING")
            && l.contains("HTTP/localhost")),
        "{out}"
    );

    // No keytab at the path; a file that is not a keytab.
    set_auth(&dir, &tmp.path().join("absent.keytab"), negotiate);
    let (code, out) = check_config(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("KRB-KEYTAB-MISSING"), "{out}");
    let junk = tmp.path().join("junk.keytab");
    std::fs::write(&junk, "not a keytab").unwrap();
    set_auth(&dir, &junk, negotiate);
    let (code, out) = check_config(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("KRB-KEYTAB-UNREADABLE"), "{out}");

    // Password only: the keytab is not needed, so not checked.
    set_auth(&dir, &junk, "providers = [\"password\"]\n");
    let (code, out) = check_config(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("KRB-"), "{out}");

    // The directory settings are validated with the rest of the configuration.
    for (auth, words) in [
        (
            "ldap_url = \"http://dc1\"\nldap_base = \"dc=x\"\n",
            "ldap://",
        ),
        (
            "ldap_url = \"ldap://127.0.0.1:3389\"\n",
            "ldap_base is not set",
        ),
        (
            "ldap_url = \"ldap://127.0.0.1:3389\"\nldap_base = \"steward.test\"\n",
            "not a DN",
        ),
        (
            "ldap_url = \"ldap://127.0.0.1:3389\"\nldap_base = \"dc=x\"\n\
             ldap_bind_dn = \"cn=admin,dc=x\"\n",
            "ldap_bind_password_file",
        ),
        ("ldap_base = \"dc=x\"\n", "need auth.ldap_url"),
    ] {
        set_auth(&dir, &keytab, &format!("{negotiate}{auth}"));
        let (code, out) = check_config(&dir);
        assert_ne!(code, 0, "{auth}: {out}");
        assert!(out.contains(words), "{auth}: {words}: {out}");
    }
    set_auth(
        &dir,
        &keytab,
        &format!("{negotiate}ldap_url = \"ldap://127.0.0.1:3389\"\nldap_base = \"dc=x\"\n"),
    );
    let (code, out) = check_config(&dir);
    assert_eq!(code, 0, "{out}");
}
