//! The web console in a real browser: Debian's headless Chromium (`/usr/bin/chromium`),
//! driven over the Chrome DevTools Protocol by a small client below (one WebSocket, a handful
//! of commands). A server runs in-process on 127.0.0.1 in a temporary directory; two fake
//! agents enroll and check in over real mutual TLS.
//!
//! Scenario: an unauthenticated page goes to the login form; a wrong password shows
//! AUTH-FAILED; logging in shows both devices Online; a task (`echo hello-console` on all)
//! started from the form reaches the agents, whose results show on the task page; the device
//! page shows the inventory; logging out ends the session.
//!
//! Chromium is not installed by the test: without it the test fails and says how to install
//! it (`apt-get install chromium`). Screenshots of the devices and task pages are written to
//! the test's temporary directory, and also to `$STEWARD_SCREENSHOT_DIR` when that is set.
//! Every wait is bounded; Chromium (its whole process group) is killed when the test ends,
//! passes or not; nothing leaves loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt as _, StreamExt as _};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use steward_pki::{KeySpec, make_csr};
use steward_proto::admin::NewPackage;
use steward_proto::{
    CheckinRequest, CheckinResponse, ConnectionPath, Disk, EnrollRequest, EnrollResponse,
    Inventory, NetInterface, TaskOutcome, TaskResult, paths,
};
use steward_server::{AdminUser, InitOptions, RunningServer, Server, ServerOverrides};
use tokio_tungstenite::tungstenite::Message;

/// Where Debian's package puts the browser (`apt-get install chromium`).
const CHROMIUM: &str = "/usr/bin/chromium";
const PASSWORD: &str = "correct horse battery";
/// The longest any single step may take (Chromium start, a page load, a DOM condition).
const STEP: Duration = Duration::from_secs(30);

// ---- server and fake agents (the minimum of tests/common) -------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// An HTTPS client trusting `root_pem`, optionally with a client certificate, never proxied.
fn client(
    root_pem: &str,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    resolve: Option<SocketAddr>,
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(STEP)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(addr) = resolve {
        builder = builder.resolve("localhost", addr);
    }
    builder.build().unwrap()
}

async fn start_server(dir: &Path) -> (RunningServer, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = InitOptions::new(dir.join("data"), vec!["localhost".into()]);
    opts.ip_addrs = vec!["127.0.0.1".parse().unwrap()];
    opts.admin_password = Some(PASSWORD.into());
    opts.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    let report = steward_server::init(opts).await.unwrap();
    let root_pem = std::fs::read_to_string(&report.root_cert_path).unwrap();
    let loopback = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::start(
        &dir.join("data"),
        ServerOverrides {
            agent_addr: loopback,
            console_addr: loopback,
            crl_addr: None,
        },
    )
    .await
    .unwrap();
    (server, root_pem)
}

/// An enrolled fake agent speaking the agent protocol over mutual TLS.
struct Agent {
    id: String,
    host: String,
    http: reqwest::Client,
    base: String,
}

impl Agent {
    async fn enroll(server: &RunningServer, root_pem: &str, token: &str, host: &str) -> Self {
        let (csr_pem, key) = make_csr(KeySpec::EcdsaP256, host).unwrap();
        let base = format!("https://localhost:{}", server.agent_addr.port());
        let resp = client(root_pem, None, Some(server.agent_addr))
            .post(format!("{base}{}", paths::ENROLL))
            .json(&EnrollRequest {
                token: token.into(),
                csr_pem,
                hostname: host.into(),
                agent_version: "0.1.0-test".into(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "enrollment of {host}");
        let enrolled: EnrollResponse = resp.json().await.unwrap();
        let mut chain = vec![CertificateDer::from_pem_slice(enrolled.cert_pem.as_bytes()).unwrap()];
        for c in &enrolled.chain_pem {
            chain.push(CertificateDer::from_pem_slice(c.as_bytes()).unwrap());
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        Self {
            id: enrolled.device_id,
            host: host.into(),
            http: client(root_pem, Some((chain, key)), Some(server.agent_addr)),
            base,
        }
    }

    fn inventory(&self) -> Inventory {
        Inventory {
            hostname: self.host.clone(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "13".into(),
            kernel: "6.12.0-test-amd64".into(),
            cpu_model: "Test CPU @ 2.0GHz".into(),
            cpu_count: 4,
            memory_total_bytes: 8 << 30,
            disks: vec![Disk {
                mount: "/".into(),
                fs: "ext4".into(),
                total_bytes: 64 << 30,
                available_bytes: 40 << 30,
            }],
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                addresses: vec!["192.0.2.10/24".into(), "2001:db8::10/64".into()],
            }],
            agent_version: "0.1.0-test".into(),
        }
    }

    async fn checkin(&self, inventory: bool, results: Vec<TaskResult>) -> CheckinResponse {
        let req = CheckinRequest {
            protocol: steward_proto::PROTOCOL_VERSION,
            agent_version: "0.1.0-test".into(),
            config_version: 0,
            inventory_hash: "H1".into(),
            inventory: inventory.then(|| self.inventory()),
            results,
            last_error: None,
            connection: ConnectionPath::Lan {
                server: format!("localhost:{}", self.base.rsplit(':').next().unwrap()),
            },
            profile_version: 0,
            failed_attempts: vec![],
        };
        let resp = self
            .http
            .post(format!("{}{}", self.base, paths::CHECKIN))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "check-in of {}", self.host);
        resp.json().await.unwrap()
    }
}

/// Base64 SHA-256 of the console certificate's SubjectPublicKeyInfo: what Chromium's
/// `--ignore-certificate-errors-spki-list` pins (the platform root is not in its trust store).
fn console_spki_pin(data_dir: &Path) -> String {
    let pem = std::fs::read(data_dir.join("pki/console.crt")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    B64.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki).as_ref())
}

// ---- Chromium ---------------------------------------------------------------------------------

/// A headless Chromium in its own process group, killed (group and all) on drop.
struct Chromium {
    child: Child,
    log: PathBuf,
    /// Its profile; removed after the process is gone (fields drop after `drop`).
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium and returns it with the browser's DevTools WebSocket URL.
    /// Fails the test (never skips it) when the browser is not installed.
    fn require() {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: this test drives Debian's Chromium and does not install it. \
             Install it with `apt-get install chromium` (the CI script does)."
        );
    }

    fn launch(spki_pin: &str, log_dir: &Path) -> (Self, String) {
        Self::require();
        let profile = tempfile::tempdir().unwrap();
        let log = log_dir.join("chromium.log");
        let out = std::fs::File::create(&log).unwrap();
        let scratch = profile.path().join("tmp");
        std::fs::create_dir(&scratch).unwrap();
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-dev-shm-usage",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--password-store=basic",
            "--mute-audio",
            "--hide-scrollbars",
            // Loopback only: no proxy, and every name lookup fails (the console is reached by
            // address).
            "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--ignore-certificate-errors-spki-list={spki_pin}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        // Its scratch files (with --disable-dev-shm-usage, its shared memory too) go in the
        // profile, removed with it, not as org.chromium.Chromium.* in /tmp: the browser is
        // killed at the end, so it never cleans up after itself.
        .env("TMPDIR", &scratch)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMIUM} could not be started: {e}"));
        let mut chromium = Self {
            child,
            log,
            _profile: profile,
        };
        // Chromium writes the port it chose and the browser target's path to this file.
        let port_file = chromium._profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    let url = format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                    return (chromium, url);
                }
            }
            if let Ok(Some(status)) = chromium.child.try_wait() {
                panic!(
                    "Chromium exited ({status}) before opening its DevTools port:\n{}",
                    chromium.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not open its DevTools port within {STEP:?}:\n{}",
                chromium.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Chromium log (last lines) ---\n{}", self.log_tail());
        }
        // The group holds the browser and its renderer, GPU and utility processes.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a minimal DevTools-protocol client ------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page of the browser, attached over the browser's WebSocket with a flat session: every
/// command carries the page's `sessionId`; events are read and dropped (the test polls the DOM
/// instead of following events, which keeps the client this small).
struct Page {
    ws: Ws,
    session: String,
    next_id: u64,
    origin: String,
    shots: PathBuf,
}

impl Page {
    async fn open(ws_url: &str, origin: &str, shots: &Path) -> Self {
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(ws_url))
            .await
            .expect("connecting to Chromium's DevTools timed out")
            .expect("connecting to Chromium's DevTools");
        let mut page = Self {
            ws,
            session: String::new(),
            next_id: 0,
            origin: origin.to_owned(),
            shots: shots.to_owned(),
        };
        let target = page
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let session = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        page.session = session["sessionId"].as_str().unwrap().to_owned();
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page
    }

    /// Sends a command (to the page once attached) and returns its result.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let deadline = tokio::time::Instant::now() + STEP;
        tokio::time::timeout_at(deadline, self.ws.send(Message::text(msg.to_string())))
            .await
            .map_err(|_| format!("{method}: sending timed out"))?
            .map_err(|e| format!("{method}: {e}"))?;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("{method}: no answer within {STEP:?}"))?
                .ok_or_else(|| format!("{method}: Chromium closed the DevTools connection"))?
                .map_err(|e| format!("{method}: {e}"))?;
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{method}: {e}"))?;
            if v["id"].as_u64() != Some(id) {
                continue; // an event
            }
            if let Some(e) = v.get("error") {
                return Err(format!("{method}: {e}"));
            }
            return Ok(v["result"].clone());
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("DevTools command failed: {e}"),
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn try_eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{expr}: {e}"));
        }
        Ok(r["result"]["value"].clone())
    }

    async fn eval(&mut self, expr: &str) -> Value {
        match self.try_eval(expr).await {
            Ok(v) => v,
            Err(e) => panic!("evaluating in the page failed: {e}"),
        }
    }

    /// Polls `expr` until it is truthy (not null/false/empty) and returns that value; fails
    /// after [`STEP`] with the page's address and text.
    async fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            // A page being replaced has no context for a moment: that is "not yet".
            if let Ok(v) = self.try_eval(expr).await
                && !matches!(&v, Value::Null | Value::Bool(false))
                && v != json!("")
            {
                return v;
            }
            if Instant::now() > deadline {
                let url = self.try_eval("location.href").await.unwrap_or_default();
                let text = self
                    .try_eval("document.body ? document.body.innerText : ''")
                    .await
                    .unwrap_or_default();
                panic!(
                    "timed out after {STEP:?} waiting for {what}; at {url}, the page reads:\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Marks the current document so a new one can be told from it.
    async fn mark(&mut self) {
        self.eval("window.__stewardOldPage = true").await;
    }

    /// Waits until the marked document has been replaced and the new one has loaded.
    async fn wait_new_page(&mut self, what: &str) -> String {
        self.wait_for(
            what,
            "window.__stewardOldPage === undefined && document.readyState === 'complete' \
             && location.pathname",
        )
        .await;
        self.path().await
    }

    async fn path(&mut self) -> String {
        let v = self.eval("location.pathname + location.search").await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Opens a console path and returns where the browser ended up (after redirects).
    async fn goto(&mut self, path: &str) -> String {
        self.mark().await;
        let url = format!("{}{path}", self.origin);
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(e) = r.get("errorText") {
            panic!("navigating to {url} failed: {e}");
        }
        self.wait_new_page(&format!("{url} to load")).await
    }

    /// Types `text` into a field as a user would (focus, replace the content).
    async fn type_into(&mut self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let focused = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false; \
                 e.focus(); e.select(); return document.activeElement === e; }})()"
            ))
            .await;
        assert_eq!(focused, json!(true), "no field {selector} to type into");
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Clicks the middle of an element with the mouse.
    async fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = match (at[0].as_f64(), at[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => panic!("nothing to click at {selector}"),
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Clicks a submit button and waits for the page the form leads to.
    async fn submit(&mut self, selector: &str) -> String {
        self.mark().await;
        self.click(selector).await;
        self.wait_new_page(&format!("the page after clicking {selector}"))
            .await
    }

    async fn text(&mut self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        let v = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); return e ? e.innerText : null; }})()"
            ))
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("no element {selector} on {}", self.origin))
            .to_owned()
    }

    /// A PNG of the whole page (at least the 1280×900 viewport), written to the screenshot
    /// directory.
    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let height = self
            .eval("Math.max(900, document.documentElement.scrollHeight)")
            .await
            .as_f64()
            .unwrap_or(900.0);
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
                }),
            )
            .await;
        let png = B64.decode(r["data"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = self.shots.join(name);
        std::fs::write(&path, &png).unwrap();
        if let Some(dir) = std::env::var_os("STEWARD_SCREENSHOT_DIR") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&path, Path::new(&dir).join(name)).unwrap();
        }
        path
    }
}

/// The test's directory; kept (and named) when the test fails, for the screenshots and logs.
struct Workdir(Option<tempfile::TempDir>);

impl Workdir {
    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            eprintln!("test directory kept: {}", d.keep().display());
        }
    }
}

fn log(start: Instant, step: &str) {
    eprintln!("[{:>6.2}s] {step}", start.elapsed().as_secs_f64());
}

// ---- the scenario -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_login_devices_and_a_task() {
    Chromium::require();
    let t0 = Instant::now();
    let work = Workdir(Some(tempfile::tempdir().unwrap()));
    let (server, root_pem) = start_server(work.path()).await;
    let origin = server.console_url().to_owned();
    assert!(origin.starts_with("https://127.0.0.1:"), "{origin}");
    log(t0, &format!("server started, console at {origin}"));

    // Two agents enroll and check in with their inventory: both Online.
    let svc = server.service();
    let admin = AdminUser {
        username: "test".into(),
    };
    let pkg = svc
        .new_package(
            &admin,
            NewPackage {
                expires_secs: 3600,
                max_uses: 2,
                tags: vec!["lab".into()],
            },
        )
        .await
        .unwrap();
    let mut agents = Vec::new();
    for host in ["web-1", "web-2"] {
        let a = Agent::enroll(&server, &root_pem, &pkg.token, host).await;
        let first = a.checkin(true, vec![]).await;
        assert!(first.config.is_some());
        agents.push(a);
    }
    log(t0, "two agents enrolled and checked in");

    // Without a session, pages send the browser to the login form (checked without a browser
    // first, for the exact answer).
    let https = client(&root_pem, None, None);
    let resp = https.get(format!("{origin}/devices")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(
        resp.headers()["location"].to_str().unwrap(),
        "/login?next=%2Fdevices"
    );
    let resp = https.get(format!("{origin}/login")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    // A login posted from another site is refused (CSRF), whatever the password.
    let resp = https
        .post(format!("{origin}/login"))
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=admin&password=correct+horse+battery")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(resp.text().await.unwrap().contains("CONSOLE-CSRF"));
    // With a session cookie but without the form's token, starting a task is refused too.
    let session = svc
        .login(steward_proto::admin::LoginRequest {
            username: "admin".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let resp = https
        .post(format!("{origin}/tasks"))
        .header("cookie", format!("steward_session={}", session.token))
        .header("origin", origin.as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("command=echo&args=forged&target=all&timeout_secs=30")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.text().await.unwrap().contains("CONSOLE-CSRF"));
    assert!(svc.tasks().await.unwrap().is_empty(), "no task was created");

    let spki = console_spki_pin(&work.path().join("data"));
    let shots = work.path().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let (chromium, ws_url) = Chromium::launch(&spki, work.path());
    let mut page = Page::open(&ws_url, &origin, &shots).await;
    log(t0, "Chromium started");

    // In the browser too: /devices without a session lands on the login form.
    let at = page.goto("/devices").await;
    assert_eq!(at, "/login?next=%2Fdevices");
    assert_eq!(page.text("h1").await, "Sign in");

    // A wrong password: the form again, with the failure's ID.
    page.type_into("#username", "admin").await;
    page.type_into("#password", "not the password").await;
    let at = page.submit("#login").await;
    assert_eq!(at, "/login");
    let error = page.text("#error").await;
    assert!(error.starts_with("AUTH-FAILED"), "{error}");
    log(t0, "wrong password refused with AUTH-FAILED");

    // The right one: the devices page, both agents Online.
    page.type_into("#username", "admin").await;
    page.type_into("#password", PASSWORD).await;
    let at = page.submit("#login").await;
    assert_eq!(at, "/devices");
    let cookie_visible = page.eval("document.cookie").await;
    assert_eq!(cookie_visible, json!(""), "the session cookie is HttpOnly");
    let rows = page
        .eval(
            "[...document.querySelectorAll('#devices tbody tr')].map(r => \
             [r.querySelector('.name').innerText, r.querySelector('.status').innerText])",
        )
        .await;
    let mut rows: Vec<(String, String)> = serde_json::from_value(rows).unwrap();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("web-1".to_owned(), "Online".to_owned()),
            ("web-2".to_owned(), "Online".to_owned())
        ]
    );
    let devices_png = page.screenshot("console-devices.png").await;
    log(t0, "logged in; both devices Online");

    // A task for no device is refused on the form, which keeps what was typed.
    assert_eq!(page.goto("/tasks").await, "/tasks");
    page.type_into("#command", "echo").await;
    page.type_into("#args", "hello-console").await;
    page.type_into("#target", "tag:nowhere").await;
    assert_eq!(page.submit("#start").await, "/tasks");
    let error = page.text("#error").await;
    assert!(error.starts_with("TASK-NO-TARGETS"), "{error}");
    let kept = page.eval("document.querySelector('#args').value").await;
    assert_eq!(kept, json!("hello-console"));

    // Start it on all devices.
    page.type_into("#target", "all").await;
    page.screenshot("console-tasks.png").await;
    let at = page.submit("#start").await;
    let task_id: u64 = at
        .strip_prefix("/tasks/")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("starting the task led to {at}"));
    let progress = page.text("#task-summary").await;
    assert!(progress.contains("0/2 finished"), "{progress}");
    log(t0, &format!("task {task_id} started from the form"));

    // The agents check in, get the task, run it and report.
    for a in &agents {
        let got = a.checkin(false, vec![]).await;
        assert_eq!(got.tasks.len(), 1, "{} got {:?}", a.host, got.tasks);
        let task = &got.tasks[0];
        assert_eq!(task.task_id, task_id);
        assert_eq!(
            (task.command.as_str(), task.args.clone()),
            ("echo", vec!["hello-console".to_owned()])
        );
        let started = steward_pki::rfc3339(steward_pki::OffsetDateTime::now_utc());
        let out = Command::new(&task.command)
            .args(&task.args)
            .output()
            .unwrap();
        let result = TaskResult {
            task_id,
            outcome: TaskOutcome::Succeeded,
            exit_code: out.status.code(),
            output: String::from_utf8_lossy(&out.stdout).into_owned(),
            truncated: false,
            started_at: started,
            finished_at: steward_pki::rfc3339(steward_pki::OffsetDateTime::now_utc()),
        };
        let acked = a.checkin(false, vec![result]).await;
        assert_eq!(acked.acked_results, vec![task_id]);
    }
    log(t0, "both agents reported");

    // The task page (reloaded) shows each device's output.
    page.goto(&format!("/tasks/{task_id}")).await;
    let results = page
        .wait_for(
            "both results on the task page",
            "(() => { const rows = [...document.querySelectorAll('#results tbody tr')].map(r => \
             ({ name: r.querySelector('.name').innerText, \
                state: r.querySelector('.state').innerText, \
                output: r.querySelector('pre.output') ? \
                        r.querySelector('pre.output').textContent : null })); \
             return rows.length === 2 && rows.every(r => r.output !== null) ? rows : null; })()",
        )
        .await;
    let mut results: Vec<(String, String, String)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
                r["output"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    results.sort();
    for (i, (name, state, output)) in results.iter().enumerate() {
        assert_eq!(name, &format!("web-{}", i + 1));
        assert_eq!(state, "Succeeded");
        assert_eq!(output, "hello-console\n");
    }
    assert!(page.text("#task-summary").await.contains("2/2 finished"));
    let refresh = page
        .eval("document.querySelector('meta[http-equiv=refresh]') !== null")
        .await;
    assert_eq!(refresh, json!(false), "a finished task stops refreshing");
    let task_png = page.screenshot("console-task.png").await;
    log(t0, "task outputs read from the page");

    // The device page: inventory, applied policies, the task.
    let web1 = agents.iter().find(|a| a.host == "web-1").unwrap();
    assert_eq!(
        page.goto(&format!("/devices/{}", web1.id)).await,
        format!("/devices/{}", web1.id)
    );
    let inventory = page.text("#inventory").await;
    for fact in [
        "6.12.0-test-amd64",
        "Test CPU @ 2.0GHz",
        "8.0 GiB",
        "0.1.0-test",
    ] {
        assert!(
            inventory.contains(fact),
            "{fact} missing from:\n{inventory}"
        );
    }
    assert!(page.text("#interfaces").await.contains("192.0.2.10/24"));
    assert!(page.text("#disks").await.contains("ext4"));
    assert!(page.text("main").await.contains("checkin_interval_secs"));
    assert!(
        page.text("#device-tasks")
            .await
            .contains("echo hello-console")
    );
    page.screenshot("console-device.png").await;

    // Log out: the session ends; pages go to the login form again.
    assert_eq!(page.submit("#logout").await, "/login");
    assert_eq!(page.goto("/tasks").await, "/login?next=%2Ftasks");
    log(t0, "logged out");

    drop(page);
    drop(chromium);
    server.shutdown().await.unwrap();
    eprintln!(
        "screenshots: {} and {} (set STEWARD_SCREENSHOT_DIR to keep copies)",
        devices_png.display(),
        task_png.display()
    );
    log(t0, "done");
}
