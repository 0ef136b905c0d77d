//! Admin commands over the admin API: `steward devices`, `steward task`, `steward package`.
//!
//! Where to connect and as whom comes from flags, then the environment, then the server's data
//! directory (when run on the server host: its console address, platform root and local admin
//! token), so `steward devices list --data-dir /var/lib/steward` needs nothing else.
//!
//! Authentication (`--auth`): `negotiate` (Kerberos from the user's credential cache, one
//! SPNEGO token per request, the server's answer checked for mutual authentication),
//! `password` (log in with a local account, then a bearer token) or `token` (the data
//! directory's admin token). Without `--auth`: a password if one is given, else Negotiate
//! when the credential cache holds a ticket, else the admin token.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;
use steward_proto::ApiError;
use steward_proto::admin::{
    DeviceSummary, LoginRequest, LoginResponse, NewPackage, NewTask, TaskCreated, TaskDetail,
    TaskState, paths,
};

use crate::cli::Format;

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub(crate) struct Conn {
    /// Console/admin API base URL, e.g. https://smp.example.net:4727.
    #[arg(long, env = "STEWARD_SERVER", value_name = "URL", global = true)]
    server: Option<String>,
    /// Account name for password login.
    #[arg(long, env = "STEWARD_USER", default_value = "admin", global = true)]
    user: String,
    /// File holding the password (first line); or set STEWARD_PASSWORD.
    #[arg(long, value_name = "FILE", global = true)]
    password_file: Option<PathBuf>,
    /// PEM file of the CA that issued the console certificate [default: the platform root in DATA_DIR].
    #[arg(long, env = "STEWARD_CA", value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// The server's data directory, when run on the server host.
    #[arg(long, env = "STEWARD_DATA_DIR", value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// How to authenticate [default: password if one is given, else negotiate when a Kerberos
    /// ticket exists, else the data directory's admin token].
    #[arg(long, env = "STEWARD_AUTH", value_enum, global = true)]
    auth: Option<AuthMethod>,
}

/// `--auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuthMethod {
    /// Kerberos (SPNEGO) with the ticket in the credential cache (kinit first).
    Negotiate,
    /// A local account's password (--password-file or STEWARD_PASSWORD).
    Password,
    /// The admin token in the server's data directory.
    Token,
}

/// The credential every request carries.
enum Credential {
    /// `Authorization: Bearer`.
    Bearer(String),
    /// `Authorization: Negotiate`, a fresh token per request for `HTTP/<host>`.
    Negotiate { host: String },
}

/// An authenticated admin API client.
pub(crate) struct Admin {
    http: reqwest::Client,
    base: String,
    cred: Credential,
}

impl Conn {
    /// Connect as the local admin of the server whose data directory this is.
    pub(crate) fn for_data_dir(dir: &Path) -> Self {
        Conn {
            server: None,
            user: "admin".into(),
            password_file: None,
            ca: None,
            data_dir: Some(dir.to_path_buf()),
            auth: Some(AuthMethod::Token),
        }
    }

    /// Resolve the connection and log in.
    pub(crate) async fn connect(&self) -> anyhow::Result<Admin> {
        let data_dir = self.data_dir.as_deref();
        let base = match (&self.server, data_dir) {
            (Some(s), _) => s.trim_end_matches('/').to_owned(),
            (None, Some(d)) => console_url_from(d)?,
            (None, None) => bail!(
                "no server given: use --server URL (or STEWARD_SERVER), or --data-dir on the server host"
            ),
        };
        let ca_path = match (&self.ca, data_dir) {
            (Some(c), _) => c.clone(),
            (None, Some(d)) => steward_server::DataDir::new(d).root_cert(),
            (None, None) => bail!(
                "no CA given for the console certificate: use --ca FILE (the platform root, pki/root.crt in the server data dir)"
            ),
        };
        let ca_pem = std::fs::read(&ca_path)
            .with_context(|| format!("cannot read the CA file {}", ca_path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&ca_pem)
            .with_context(|| format!("{} holds no PEM certificate", ca_path.display()))?;
        let http = reqwest::Client::builder()
            .tls_certs_only(certs)
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("steward-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTPS client")?;
        let password = match &self.password_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the password file {}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            ),
            None => std::env::var("STEWARD_PASSWORD").ok(),
        };
        let method = match self.auth {
            Some(m) => m,
            None if password.is_some() => AuthMethod::Password,
            None if steward_kerberos::have_ticket() => AuthMethod::Negotiate,
            None => AuthMethod::Token,
        };
        let cred = match method {
            AuthMethod::Negotiate => {
                let url =
                    reqwest::Url::parse(&base).with_context(|| format!("{base} is not a URL"))?;
                let host = url
                    .host_str()
                    .with_context(|| format!("{base} names no host"))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                Credential::Negotiate { host }
            }
            AuthMethod::Password => {
                let Some(password) = password else {
                    bail!("--auth password needs --password-file FILE or STEWARD_PASSWORD");
                };
                let login = LoginRequest {
                    username: self.user.clone(),
                    password,
                };
                let resp: LoginResponse = send(
                    http.post(format!("{base}{}", paths::LOGIN)).json(&login),
                    &base,
                )
                .await?;
                Credential::Bearer(resp.token)
            }
            AuthMethod::Token => {
                let Some(d) = data_dir else {
                    bail!(
                        "no credentials: kinit (Kerberos), --password-file FILE or \
                         STEWARD_PASSWORD, or --data-dir on the server host"
                    );
                };
                let f = steward_server::DataDir::new(d).admin_token();
                Credential::Bearer(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read the local admin token {} (run as the server's user, or give --password-file)", f.display()))?
                        .trim()
                        .to_owned(),
                )
            }
        };
        Ok(Admin { http, base, cred })
    }
}

/// The console URL from the data dir: the running server's bound address if it wrote one.
fn console_url_from(dir: &Path) -> anyhow::Result<String> {
    let f = steward_server::DataDir::new(dir).addresses();
    let text = std::fs::read_to_string(&f).with_context(|| {
        format!(
            "cannot read {} — is the server running? (or give --server URL)",
            f.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?;
    if let Some(url) = v.get("console_url").and_then(|u| u.as_str()) {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let addr = v
        .get("console")
        .and_then(|a| a.as_str())
        .with_context(|| format!("{} names no console address", f.display()))?;
    // A wildcard listen address is reached on loopback, which init puts in the certificate.
    let addr = addr
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    Ok(format!("https://{addr}"))
}

async fn send<T: DeserializeOwned>(req: reqwest::RequestBuilder, base: &str) -> anyhow::Result<T> {
    let resp = req.send().await.map_err(|e| describe(e, base))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| describe(e, base))?;
    if !status.is_success() {
        return Err(api_error(status, &body, base));
    }
    serde_json::from_slice(&body).with_context(|| format!("unexpected answer from {base}"))
}

/// A refusal as the user should see it: the server's error ID and message when it sent one.
fn api_error(status: reqwest::StatusCode, body: &[u8], base: &str) -> anyhow::Error {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => anyhow::anyhow!("{} ({}): {}", e.id, status.as_u16(), e.message),
        Err(_) => anyhow::anyhow!(
            "HTTP {status} from {base}: {}",
            String::from_utf8_lossy(body)
                .chars()
                .take(200)
                .collect::<String>()
        ),
    }
}

/// A connection error with its causes, so "certificate unknown issuer" or "connection refused"
/// is visible rather than reqwest's generic first line.
fn describe(e: reqwest::Error, base: &str) -> anyhow::Error {
    let mut msg = format!("cannot reach {base}: {e}");
    steward_proto::push_causes(&mut msg, &e);
    anyhow::anyhow!(msg)
}

impl Admin {
    /// Sends `req` with the credential; with Negotiate, checks the server's mutual
    /// authentication token on success.
    async fn exec(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, Vec<u8>)> {
        let (req, initiation) = match &self.cred {
            Credential::Bearer(t) => (req.bearer_auth(t), None),
            Credential::Negotiate { host } => {
                // GSSAPI blocks while it fetches a service ticket; this CLI runs one request
                // at a time on a current-thread runtime, so nothing else waits on it.
                let init = steward_kerberos::initiate(host)
                    .map_err(|e| anyhow::anyhow!("Negotiate (Kerberos) for HTTP/{host}: {e}"))?;
                let value = format!("Negotiate {}", init.token);
                (
                    req.header(reqwest::header::AUTHORIZATION, value),
                    Some(init),
                )
            }
        };
        let resp = req.send().await.map_err(|e| describe(e, &self.base))?;
        let status = resp.status();
        if let Some(init) = initiation
            && status.is_success()
        {
            let server_token = resp
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix("Negotiate "))
                .map(str::to_owned);
            init.finish(server_token.as_deref()).map_err(|e| {
                anyhow::anyhow!(
                    "{} answered, but {e}: refusing its answer (it may not be the server it \
                     claims to be)",
                    self.base
                )
            })?;
        }
        let body = resp.bytes().await.map_err(|e| describe(e, &self.base))?;
        Ok((status, body.to_vec()))
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let (status, body) = self.exec(req).await?;
        if !status.is_success() {
            return Err(api_error(status, &body, &self.base));
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected answer from {}", self.base))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// A POST without a body whose success is 204 No Content.
    pub(crate) async fn post_no_content(&self, path: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .exec(self.http.post(format!("{}{path}", self.base)))
            .await?;
        if status.is_success() {
            return Ok(());
        }
        Err(api_error(status, &body, &self.base))
    }

    pub(crate) async fn delete_no_content(&self, path: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .exec(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        if status.is_success() {
            return Ok(());
        }
        Err(api_error(status, &body, &self.base))
    }

    pub(crate) async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.json(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `steward devices list`.
pub(crate) fn devices_list(conn: &Conn, format: Format) -> anyhow::Result<ExitCode> {
    let devices: Vec<DeviceSummary> =
        runtime()?.block_on(async { conn.connect().await?.get(paths::DEVICES).await })?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&devices)?),
        Format::Text => {
            let rows: Vec<[String; 7]> = devices
                .iter()
                .map(|d| {
                    [
                        d.name.clone(),
                        d.os.clone().unwrap_or_else(|| "-".into()),
                        format!("{:?}", d.status),
                        // Holding its persistent connection now (tasks reach it at once).
                        if d.connected { "yes" } else { "no" }.to_owned(),
                        d.last_checkin.clone().unwrap_or_else(|| "never".into()),
                        d.connection_path.clone().unwrap_or_else(|| "-".into()),
                        d.last_error
                            .as_ref()
                            .map(|e| format!("{} {}", e.id, e.message))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "OS",
                    "STATUS",
                    "CONNECTED",
                    "LAST CHECK-IN",
                    "PATH",
                    "LAST ERROR",
                ],
                &rows,
            );
            // Certificates that expire within 30 days are not being renewed: said below the
            // table, so they are not lost in a column.
            for d in &devices {
                if let Some(w) = &d.cert_warning {
                    println!("warning: {}: {w}", d.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `steward devices revoke` / `steward gateway revoke`: POST to `path` with `{id}` filled in.
pub(crate) fn revoke(conn: &Conn, path: &str, what: &str, id: &str) -> anyhow::Result<ExitCode> {
    let path = path.replace("{id}", &percent_encode(id));
    runtime()?.block_on(async { conn.connect().await?.post_no_content(&path).await })?;
    println!("{what} {id} revoked; the CRL is re-signed and it is refused from now on");
    Ok(ExitCode::SUCCESS)
}

/// `steward devices delete`: the device's certificate is revoked and the row removed.
pub(crate) fn delete_device(conn: &Conn, id: &str) -> anyhow::Result<ExitCode> {
    let path = paths::DEVICE.replace("{id}", &percent_encode(id));
    runtime()?.block_on(async { conn.connect().await?.delete_no_content(&path).await })?;
    println!("device {id} deleted; its certificate is revoked and the CRL is re-signed");
    Ok(ExitCode::SUCCESS)
}

/// Percent-encode a path segment (device names may hold anything but `/` is the risk).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `steward task run`: start, wait for every device, print each result.
pub(crate) fn task_run(
    conn: &Conn,
    task: NewTask,
    wait: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let admin = conn.connect().await?;
        let created: TaskCreated = admin.post(paths::TASKS, &task).await?;
        let tty = std::io::stderr().is_terminal();
        if tty {
            eprintln!(
                "task {} started on {} device(s)",
                created.id, created.targets
            );
        }
        let path = paths::TASK.replace("{id}", &created.id.to_string());
        let deadline = Instant::now() + wait;
        let mut last_done = usize::MAX;
        let detail = loop {
            let detail: TaskDetail = admin.get(&path).await?;
            let done = detail.results.iter().filter(|r| r.state.is_final()).count();
            if tty && done != last_done {
                eprintln!("… {done}/{} finished", detail.results.len());
                last_done = done;
            }
            if done == detail.results.len() || Instant::now() >= deadline {
                break detail;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        print_task(&detail, format)?;
        Ok(task_exit(&detail))
    })
}

/// `steward task show ID`.
pub(crate) fn task_show(conn: &Conn, id: u64, format: Format) -> anyhow::Result<ExitCode> {
    let detail: TaskDetail = runtime()?.block_on(async {
        conn.connect()
            .await?
            .get(&paths::TASK.replace("{id}", &id.to_string()))
            .await
    })?;
    print_task(&detail, format)?;
    Ok(task_exit(&detail))
}

/// 0 when every device succeeded, 1 otherwise (failed, timed out, or still running).
fn task_exit(detail: &TaskDetail) -> ExitCode {
    if detail
        .results
        .iter()
        .all(|r| r.state == TaskState::Succeeded)
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_task(detail: &TaskDetail, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(detail)?),
        Format::Text => {
            let s = &detail.summary;
            println!(
                "task {}: {} {} → {} ({}/{} finished)",
                s.id,
                s.command,
                s.args.join(" "),
                s.target,
                s.finished,
                s.targets
            );
            for r in &detail.results {
                let exit = r
                    .exit_code
                    .map(|c| format!(" exit {c}"))
                    .unwrap_or_default();
                println!(
                    "\n== {} [{:?}{exit}]{}",
                    r.device_name,
                    r.state,
                    if r.truncated {
                        " (output truncated)"
                    } else {
                        ""
                    }
                );
                if let Some(out) = &r.output {
                    print!("{out}");
                    if !out.ends_with('\n') && !out.is_empty() {
                        println!();
                    }
                }
            }
        }
    }
    Ok(())
}

/// `steward package agent`.
pub(crate) fn package_agent(conn: &Conn, out: &Path, req: NewPackage) -> anyhow::Result<ExitCode> {
    let package: steward_proto::BootstrapPackage =
        runtime()?.block_on(async { conn.connect().await?.post(paths::PACKAGES, &req).await })?;
    let json = serde_json::to_vec_pretty(&package)?;
    write_private(out, &json)?;
    println!(
        "wrote {} (token valid until {}, {} use(s)); install with: steward-agent enroll --package {} --data-dir DIR",
        out.display(),
        package.expires_at,
        req.max_uses,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `steward gateway token`.
pub(crate) fn gateway_token(
    conn: &Conn,
    out: &Path,
    expires_secs: u64,
) -> anyhow::Result<ExitCode> {
    let req = steward_proto::admin::NewGatewayToken { expires_secs };
    let token: steward_proto::admin::GatewayToken = runtime()?.block_on(async {
        conn.connect()
            .await?
            .post(paths::GATEWAY_TOKENS, &req)
            .await
    })?;
    write_private(out, &serde_json::to_vec_pretty(&token)?)?;
    println!(
        "wrote {} (single use, valid until {}); on the gateway host: steward gateway join \
         --server URL --token {} --data-dir DIR --external-name FQDN",
        out.display(),
        token.expires_at,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `steward gateway list`.
pub(crate) fn gateway_list(conn: &Conn, format: Format) -> anyhow::Result<ExitCode> {
    let gateways: Vec<steward_proto::admin::GatewaySummary> =
        runtime()?.block_on(async { conn.connect().await?.get(paths::GATEWAYS).await })?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&gateways)?),
        Format::Text => {
            let rows: Vec<[String; 6]> = gateways
                .iter()
                .map(|g| {
                    let r = g.report.as_ref();
                    [
                        g.id.clone(),
                        r.map(|r| format!("{}:{}", r.external_name, r.listen_port))
                            .unwrap_or_else(|| "(never reported)".into()),
                        r.map(|r| r.health.clone()).unwrap_or_else(|| "-".into()),
                        if g.revoked { "revoked" } else { "enrolled" }.to_owned(),
                        g.reported_at.clone().unwrap_or_else(|| "never".into()),
                        r.map(|r| r.thumbprints.join(","))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "ADDRESS",
                    "HEALTH",
                    "STATE",
                    "REPORTED",
                    "THUMBPRINTS",
                ],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The package holds a live enrollment token: readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Parse `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

fn print_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let mut width = head.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }
}
