//! A throwaway MIT KDC for tests (feature `testkdc`): its own realm, database, krb5.conf and
//! kdc.conf in a temporary directory, `krb5kdc` listening on a free 127.0.0.1 port, killed on
//! drop. Nothing touches /etc/krb5.conf: every command gets `KRB5_CONFIG`/`KRB5_KDC_PROFILE`
//! pointing into the directory, and so must every process a test starts (see [`TestKdc::env`]).
//!
//! Needs Debian's `krb5-kdc`, `krb5-admin-server` (kadmin.local) and `krb5-user` (kinit);
//! `faketime` for a KDC with a skewed clock.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the KDC may take to listen.
const START_LIMIT: Duration = Duration::from_secs(15);
/// The longest any admin command may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// Why the test KDC could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestKdcError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A command exited unsuccessfully or ran too long.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its status and output.
        detail: String,
    },
    /// The KDC did not start listening in time.
    #[error("krb5kdc did not listen on {addr} within {secs} s; its log: {log}")]
    NotListening {
        /// The address.
        addr: SocketAddr,
        /// The limit.
        secs: u64,
        /// The KDC's log.
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestKdcError {
    let what = what.into();
    move |source| TestKdcError::Io { what, source }
}

/// A running throwaway KDC.
#[derive(Debug)]
pub struct TestKdc {
    dir: tempfile::TempDir,
    realm: String,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Drop for TestKdc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16, TestKdcError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

impl TestKdc {
    /// Creates realm `realm` and starts its KDC. `clock_offset` runs the KDC under
    /// `faketime` with that offset (e.g. `"+15m"`), for clock-skew tests.
    ///
    /// The port is picked free, but a parallel test may take it before krb5kdc binds it; the
    /// KDC then exits, and the start is retried with a new port (three attempts).
    pub fn start(realm: &str, clock_offset: Option<&str>) -> Result<Self, TestKdcError> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(realm, clock_offset) {
                Err(e @ TestKdcError::NotListening { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| TestKdcError::Command {
            command: "krb5kdc".into(),
            detail: "did not start".into(),
        }))
    }

    fn start_once(realm: &str, clock_offset: Option<&str>) -> Result<Self, TestKdcError> {
        let dir = tempfile::tempdir().map_err(io("making the KDC directory"))?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.path();
        let krb5_conf = format!(
            "[libdefaults]\n  default_realm = {realm}\n  dns_lookup_kdc = false\n  \
             dns_lookup_realm = false\n  rdns = false\n  dns_canonicalize_hostname = false\n  \
             kdc_timesync = 0\n  default_keytab_name = FILE:{kt}\n\n[realms]\n  {realm} = {{\n    \
             kdc = 127.0.0.1:{port}\n  }}\n\n[domain_realm]\n  localhost = {realm}\n",
            kt = d.join("default.keytab").display(),
        );
        let kdc_conf = format!(
            "[kdcdefaults]\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n\n\
             [realms]\n  {realm} = {{\n    database_name = {db}\n    key_stash_file = {stash}\n    \
             acl_file = {acl}\n    max_life = 1h\n    \
             supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n  \
             }}\n\n[logging]\n  kdc = FILE:{log}\n",
            db = d.join("principal").display(),
            stash = d.join("stash").display(),
            acl = d.join("kadm5.acl").display(),
            log = d.join("kdc.log").display(),
        );
        std::fs::write(d.join("krb5.conf"), krb5_conf).map_err(io("writing krb5.conf"))?;
        std::fs::write(d.join("kdc.conf"), kdc_conf).map_err(io("writing kdc.conf"))?;
        std::fs::write(d.join("kadm5.acl"), "").map_err(io("writing kadm5.acl"))?;
        let mut kdc = Self {
            dir,
            realm: realm.to_owned(),
            addr,
            child: None,
        };
        kdc.run(
            "kdb5_util",
            &["create", "-s", "-r", realm, "-P", "steward-test-master"],
            None,
        )?;
        let mut cmd = Command::new("krb5kdc");
        if let Some(off) = clock_offset {
            // libfaketime preloaded into krb5kdc itself: the `faketime` wrapper forks, and
            // killing it would leave the KDC running.
            cmd.env("LD_PRELOAD", find_libfaketime()?)
                .env("FAKETIME", off)
                .env("FAKETIME_DONT_RESET", "1");
        }
        cmd.args(["-n", "-r", realm]);
        kdc.apply_env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        kdc.child = Some(cmd.spawn().map_err(io("starting krb5kdc"))?);
        let started = Instant::now();
        loop {
            // krb5kdc exits when it cannot bind; then whatever answers is not our KDC.
            let exited = kdc
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if !exited && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
                let exited = kdc
                    .child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().ok().flatten().is_some());
                if !exited {
                    break;
                }
            }
            if exited || started.elapsed() > START_LIMIT {
                return Err(TestKdcError::NotListening {
                    addr,
                    secs: START_LIMIT.as_secs(),
                    log: std::fs::read_to_string(kdc.dir.path().join("kdc.log"))
                        .unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(kdc)
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The KDC's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory holding the realm's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The krb5.conf clients must use.
    pub fn krb5_conf(&self) -> PathBuf {
        self.dir.path().join("krb5.conf")
    }

    /// The environment every Kerberos process of the test needs (KRB5_CONFIG,
    /// KRB5_KDC_PROFILE), without a credential cache or keytab choice.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KRB5_CONFIG".into(), self.krb5_conf().display().to_string()),
            (
                "KRB5_KDC_PROFILE".into(),
                self.dir.path().join("kdc.conf").display().to_string(),
            ),
        ]
    }

    fn apply_env(&self, cmd: &mut Command) {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        // Never the caller's: a test names its own cache and keytab.
        cmd.env_remove("KRB5CCNAME").env_remove("KRB5_KTNAME");
    }

    fn run(&self, prog: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, TestKdcError> {
        let mut cmd = Command::new(prog);
        cmd.args(args);
        self.apply_env(&mut cmd);
        run_bounded(cmd, stdin)
    }

    /// `kadmin.local -q QUERY`.
    pub fn kadmin(&self, query: &str) -> Result<String, TestKdcError> {
        let out = self.run("kadmin.local", &["-r", &self.realm, "-q", query], None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds a user principal with a password.
    pub fn add_user(&self, name: &str, password: &str) -> Result<(), TestKdcError> {
        self.kadmin(&format!("addprinc -pw {password} {name}"))
            .map(|_| ())
    }

    /// Adds a service principal with a random key (e.g. `HTTP/localhost`).
    pub fn add_service(&self, name: &str) -> Result<(), TestKdcError> {
        self.kadmin(&format!("addprinc -randkey {name}"))
            .map(|_| ())
    }

    /// Exports the current key of `principal` into `keytab` without changing it.
    pub fn export(&self, principal: &str, keytab: &Path) -> Result<(), TestKdcError> {
        self.kadmin(&format!(
            "ktadd -norandkey -k {} {principal}",
            keytab.display()
        ))
        .map(|_| ())
    }

    /// Exports `principal` into `keytab` with a new random key (the key version goes up, so
    /// earlier exports go stale — how a kvno mismatch happens in the field).
    pub fn rekey(&self, principal: &str, keytab: &Path) -> Result<(), TestKdcError> {
        self.kadmin(&format!("ktadd -k {} {principal}", keytab.display()))
            .map(|_| ())
    }

    /// `kinit principal` with `password` on standard input, into the cache `ccache`.
    pub fn kinit(
        &self,
        principal: &str,
        password: &str,
        ccache: &Path,
    ) -> Result<(), TestKdcError> {
        let mut cmd = Command::new("kinit");
        cmd.arg(principal);
        self.apply_env(&mut cmd);
        cmd.env("KRB5CCNAME", format!("FILE:{}", ccache.display()));
        run_bounded(cmd, Some(&format!("{password}\n"))).map(|_| ())
    }
}

/// Where Debian's `faketime` package puts the preload library (multiarch directory).
fn find_libfaketime() -> Result<PathBuf, TestKdcError> {
    let lib = std::fs::read_dir("/usr/lib")
        .map_err(io("looking for libfaketime"))?
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists());
    lib.ok_or_else(|| TestKdcError::Command {
        command: "libfaketime".into(),
        detail: "not installed (Debian package faketime)".into(),
    })
}

/// Runs a command with a bounded wait; fails on a non-zero exit.
pub fn run_bounded(mut cmd: Command, stdin: Option<&str>) -> Result<Output, TestKdcError> {
    use std::io::Write as _;
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io(format!("starting {shown}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let started = Instant::now();
    loop {
        match child
            .try_wait()
            .map_err(io(format!("waiting for {shown}")))?
        {
            Some(_) => break,
            None if started.elapsed() > COMMAND_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestKdcError::Command {
                    command: shown,
                    detail: format!("still running after {} s", COMMAND_LIMIT.as_secs()),
                });
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(io(format!("reading {shown}")))?;
    if !out.status.success() {
        return Err(TestKdcError::Command {
            command: shown,
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}
