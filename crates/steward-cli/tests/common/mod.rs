//! Helpers for the `steward doctor cert` integration tests: running the built binary with a
//! bounded wait, reading its JSON findings, making fixtures with Steward's own CA and with the
//! `openssl` command-line tool, and tiny loopback servers (HTTP for CRLs, a plain-text
//! responder, `openssl s_server`) that stop when the test ends.
//!
//! Everything listens on 127.0.0.1 only, and every wait and retry is bounded in count and time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use steward_pki::{Authority, CertificateDer, KeySpec, LeafRequest, OffsetDateTime, Usage};

/// The longest any one `steward` run may take before the test gives up on it (and kills it).
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long a loopback server lives at most, even if the test forgets to stop it.
const SERVER_LIFETIME: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Running the binary

/// The outcome of one `steward` run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// One finding from the JSON report.
#[derive(Debug)]
pub(crate) struct Finding {
    pub(crate) severity: String,
    pub(crate) message: String,
}

/// A path as the `&str` the command line takes (temp dirs are UTF-8).
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Run `steward` with `args` and extra environment `env`, wait at most [`RUN_LIMIT`].
///
/// The environment is made neutral first: no inherited `STEWARD_PFX_PASSWORD`, and
/// `RUST_BACKTRACE=1` so that a panic, were there one, would show its backtrace (which every
/// run is then checked not to contain).
pub(crate) fn steward_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steward"));
    cmd.args(args)
        .env_remove("STEWARD_PFX_PASSWORD")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the steward binary starts");
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read_all(Box::new(out));
    let err = read_all(Box::new(err));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for steward") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("steward {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let run = Run {
        code: status
            .code()
            .unwrap_or_else(|| panic!("steward {args:?} was killed by a signal: {status}")),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("stack backtrace"),
        "steward {args:?} panicked:\n{}",
        run.stderr
    );
    run
}

/// Run `steward` with `args` in the neutral environment.
pub(crate) fn steward(args: &[&str]) -> Run {
    steward_env(args, &[])
}

/// `steward doctor cert TARGET ARGS... --format json`.
pub(crate) fn doctor(target: &str, args: &[&str]) -> Run {
    doctor_env(target, args, &[])
}

/// [`doctor`] with extra environment.
pub(crate) fn doctor_env(target: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec!["doctor", "cert", target];
    all.extend_from_slice(args);
    all.extend(["--format", "json"]);
    steward_env(&all, env)
}

impl Run {
    /// The JSON report on stdout.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}); exit {}\nstdout:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }

    /// The finding with `id`; panics (showing the whole report) when there is none or several.
    pub(crate) fn finding(&self, id: &str) -> Finding {
        let json = self.json();
        let found: Vec<&Value> = json["findings"]
            .as_array()
            .expect("findings is an array")
            .iter()
            .filter(|f| f["id"] == id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {id} finding in:\n{}",
            self.stdout
        );
        Finding {
            severity: found[0]["severity"].as_str().expect("severity").to_owned(),
            message: found[0]["message"].as_str().expect("message").to_owned(),
        }
    }

    /// Assert that finding `id` has `severity` and return its message.
    #[track_caller]
    pub(crate) fn expect(&self, id: &str, severity: &str) -> String {
        let f = self.finding(id);
        assert_eq!(
            f.severity, severity,
            "{id}: expected {severity}, got {} ({})\nfull report:\n{}",
            f.severity, f.message, self.stdout
        );
        f.message
    }

    /// Assert that finding `id` passed (ok) and was not merely skipped; return its message.
    #[track_caller]
    pub(crate) fn expect_pass(&self, id: &str) -> String {
        let m = self.expect(id, "ok");
        assert!(
            !m.starts_with("skipped"),
            "{id} was skipped, not checked: {m}"
        );
        m
    }

    /// Assert the exit status.
    #[track_caller]
    pub(crate) fn expect_code(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }

    /// The IDs of every finding that is not ok.
    pub(crate) fn failing(&self) -> Vec<String> {
        self.json()["findings"]
            .as_array()
            .expect("findings is an array")
            .iter()
            .filter(|f| f["severity"] != "ok")
            .map(|f| format!("{} {}", f["id"], f["severity"]))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// Standard base64 (with padding), for writing PEM.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// PEM armour around `der`.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Write a PEM bundle of `certs` (in order) to `dir/name`.
pub(crate) fn write_pem_certs(dir: &Path, name: &str, certs: &[&CertificateDer<'_>]) -> PathBuf {
    let text: String = certs.iter().map(|c| pem("CERTIFICATE", c)).collect();
    write(dir, name, text.as_bytes())
}

/// Write `bytes` to `dir/name`.
pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write fixture");
    p
}

// ---------------------------------------------------------------------------------------------
// Steward's own CA

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(crate) fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

/// A Steward root and issuing CA (ECDSA P-256, valid a year, no CRL distribution points on the
/// intermediate, so only the leaf's own distribution point is fetched).
pub(crate) struct StewardPki {
    pub(crate) root: Authority,
    pub(crate) inter: Authority,
}

impl StewardPki {
    pub(crate) fn new(inter_cn: &str) -> Self {
        let root = Authority::new_root(
            "Steward Test Root",
            KeySpec::EcdsaP256,
            now() - days(1),
            now() + days(3650),
        )
        .expect("root CA");
        let inter = root
            .new_intermediate(
                inter_cn,
                KeySpec::EcdsaP256,
                now() - days(1),
                now() + days(1825),
                &[],
            )
            .expect("issuing CA");
        Self { root, inter }
    }

    /// A server leaf for `dns_names`, valid a year, naming `crl_urls` as distribution points.
    pub(crate) fn leaf(&self, dns_names: &[&str], crl_urls: &[String]) -> steward_pki::IssuedCert {
        self.inter
            .issue(&LeafRequest {
                common_name: dns_names.first().copied().unwrap_or("leaf").to_owned(),
                dns_names: dns_names.iter().map(|d| (*d).to_owned()).collect(),
                ip_addrs: Vec::new(),
                usage: Usage::Server,
                not_before: now() - days(1),
                not_after: now() + days(365),
                crl_urls: crl_urls.to_vec(),
                key: KeySpec::EcdsaP256,
            })
            .expect("leaf certificate")
    }
}

// ---------------------------------------------------------------------------------------------
// OpenSSL, the independent implementation

/// The minimal OpenSSL configuration every `openssl` call here runs with (`OPENSSL_CONF`), so
/// the host's own openssl.cnf cannot change the fixtures.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
";

/// Run `openssl` in `dir` with the words of `cmd` (file names relative to `dir`, no spaces)
/// followed by `extra`; panics with its stderr when it fails. Returns stdout.
pub(crate) fn openssl(dir: &Path, cmd: &str, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(cmd.split_whitespace())
        .args(extra)
        .current_dir(dir)
        .env("OPENSSL_CONF", dir.join("openssl.cnf"))
        .stdin(Stdio::null())
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {cmd} {extra:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A root and an issuing CA made by `openssl` (RSA 2048) in `dir`.
pub(crate) struct OpensslPki {
    pub(crate) dir: PathBuf,
    /// root.pem
    pub(crate) root: PathBuf,
    /// inter.pem
    pub(crate) inter: PathBuf,
}

/// A leaf made by `openssl`: its certificate and its (unencrypted PKCS#8) key.
pub(crate) struct OpensslLeaf {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Extensions of a TLS server certificate with `sans` (e.g. `DNS:a,DNS:b`), plus `extra` lines.
pub(crate) fn server_ext(sans: &str, extra: &str) -> String {
    format!(
        "basicConstraints = CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = {sans}\n{extra}"
    )
}

impl OpensslPki {
    /// Root "`<prefix>` Root" (self-signed, SHA-256) and issuing CA "`<prefix>` Issuing CA"
    /// signed with digest `md` (`sha256`, `sha1`).
    pub(crate) fn new(dir: &Path, prefix: &str, md: &str) -> Self {
        write(dir, "openssl.cnf", OPENSSL_CNF.as_bytes());
        openssl(
            dir,
            "req -x509 -extensions ca_ext -newkey rsa:2048 -nodes -keyout root.key \
             -out root.pem -days 3650 -sha256",
            &["-subj", &format!("/O=Test/CN={prefix} Root")],
        );
        openssl(
            dir,
            "req -new -newkey rsa:2048 -nodes -keyout inter.key -out inter.csr",
            &["-subj", &format!("/O=Test/CN={prefix} Issuing CA")],
        );
        openssl(
            dir,
            &format!(
                "x509 -req -in inter.csr -CA root.pem -CAkey root.key -CAcreateserial \
                 -out inter.pem -days 1825 -extfile openssl.cnf -extensions ca_ext -{md}"
            ),
            &[],
        );
        Self {
            dir: dir.to_owned(),
            root: dir.join("root.pem"),
            inter: dir.join("inter.pem"),
        }
    }

    /// A leaf `name` (files `name.pem`, `name.key`) with subject CN `cn`, extensions `ext`,
    /// signed by the issuing CA with digest `md`, valid a year.
    pub(crate) fn leaf(&self, name: &str, cn: &str, ext: &str, md: &str) -> OpensslLeaf {
        let dir = &self.dir;
        write(dir, &format!("{name}.ext"), ext.as_bytes());
        openssl(
            dir,
            &format!("req -new -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr"),
            &["-subj", &format!("/CN={cn}")],
        );
        openssl(
            dir,
            &format!(
                "x509 -req -in {name}.csr -CA inter.pem -CAkey inter.key -CAcreateserial \
                 -out {name}.pem -days 365 -extfile {name}.ext -{md}"
            ),
            &[],
        );
        OpensslLeaf {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Revoke each of `leaves` with `openssl ca -revoke` and return the issuing CA's CRL made
    /// by `openssl ca -gencrl` (PEM), valid for 7 days.
    pub(crate) fn revoke_and_gencrl(&self, leaves: &[&Path]) -> Vec<u8> {
        let dir = &self.dir;
        let cnf = format!(
            "[ca]\ndefault_ca = issuing\n[issuing]\ndatabase = {d}/index.txt\n\
             certificate = {d}/inter.pem\nprivate_key = {d}/inter.key\n\
             default_md = sha256\ndefault_crl_days = 7\ncrlnumber = {d}/crlnumber\n",
            d = s(dir)
        );
        write(dir, "ca.cnf", cnf.as_bytes());
        write(dir, "index.txt", b"");
        write(dir, "crlnumber", b"01\n");
        for leaf in leaves {
            openssl(dir, "ca -config ca.cnf -revoke", &[s(leaf)]);
        }
        openssl(dir, "ca -config ca.cnf -gencrl -out issuing.crl", &[]);
        std::fs::read(dir.join("issuing.crl")).expect("read the CRL")
    }
}

/// `openssl x509 -noout <what> -in cert`, the value after `=`, without colons (serial and
/// fingerprints come out as upper-case hex).
pub(crate) fn openssl_x509_field(dir: &Path, cert: &Path, what: &str) -> String {
    let out = openssl(dir, &format!("x509 -noout {what}"), &["-in", s(cert)]);
    out.trim()
        .rsplit_once('=')
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("unexpected openssl output {out:?}"))
        .replace(':', "")
        .to_ascii_uppercase()
}

// ---------------------------------------------------------------------------------------------
// Loopback servers

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
pub(crate) fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().expect("local addr").port()
}

/// Accept connections on `listener` in a thread until `stop` is set or [`SERVER_LIFETIME`]
/// passes, handing each to `handle` (one at a time).
fn serve_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: impl Fn(TcpStream) + Send + 'static,
) -> JoinHandle<()> {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    std::thread::spawn(move || {
        let started = Instant::now();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < SERVER_LIFETIME {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(false).is_ok()
                        && stream
                            .set_read_timeout(Some(Duration::from_secs(5)))
                            .is_ok()
                        && stream
                            .set_write_timeout(Some(Duration::from_secs(5)))
                            .is_ok()
                    {
                        handle(stream);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
    })
}

/// A minimal HTTP/1.1 server on 127.0.0.1 serving fixed bodies by path (anything else: 404).
/// Stops when dropped.
pub(crate) struct HttpServer {
    pub(crate) addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let routes: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, h) = (Arc::clone(&routes), Arc::clone(&hits));
        let thread = serve_loop(listener, Arc::clone(&stop), move |mut stream| {
            h.fetch_add(1, Ordering::SeqCst);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the request head (bounded: 16 KiB or the read timeout).
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            let body = r.lock().expect("routes lock").get(&path).cloned();
            let reply = match body {
                Some(body) => {
                    let mut v = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    v.extend_from_slice(&body);
                    v
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\
                    Content-Length: 9\r\nConnection: close\r\n\r\nnot found"
                    .to_vec(),
            };
            let _ = stream.write_all(&reply);
        });
        Self {
            addr,
            routes,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serve `body` at `path` from now on.
    pub(crate) fn serve(&self, path: &str, body: Vec<u8>) {
        self.routes
            .lock()
            .expect("routes lock")
            .insert(path.to_owned(), body);
    }

    /// How many connections were accepted so far.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP service on 127.0.0.1 that is not TLS: it reads what the client sends and answers
/// `HTTP/1.1 400 Bad Request`, as a plain-HTTP server does to a TLS ClientHello.
pub(crate) struct PlainTextServer {
    pub(crate) port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PlainTextServer {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = serve_loop(listener, Arc::clone(&stop), |mut stream| {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PlainTextServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `openssl s_server` on 127.0.0.1, killed when dropped.
pub(crate) struct SServer {
    pub(crate) port: u16,
    child: Child,
}

impl SServer {
    /// Serve `cert`/`key` (and `chain`, when given, with `-cert_chain`) with `-www`. Retries on
    /// another port if the chosen one was taken meanwhile (at most 3 tries), and waits until the
    /// server accepts connections (at most 10 s per try).
    pub(crate) fn start(dir: &Path, cert: &Path, key: &Path, chain: Option<&Path>) -> Self {
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = closed_port();
            let accept = format!("127.0.0.1:{port}");
            let mut args = vec![
                "s_server",
                "-accept",
                &accept,
                "-cert",
                s(cert),
                "-key",
                s(key),
                "-www",
                "-quiet",
            ];
            if let Some(chain) = chain {
                args.extend(["-cert_chain", s(chain)]);
            }
            let child = Command::new("openssl")
                .args(&args)
                .current_dir(dir)
                .env("OPENSSL_CONF", dir.join("openssl.cnf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server starts");
            let mut server = SServer { port, child };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(status)) = server.child.try_wait() {
                    last_error = format!("s_server on port {port} exited: {status}");
                    break;
                }
                if TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_millis(200),
                )
                .is_ok()
                {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if last_error.is_empty() {
                last_error = format!("s_server on port {port} did not accept within 10 s");
            }
            drop(server);
        }
        panic!("openssl s_server could not be started: {last_error}");
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
