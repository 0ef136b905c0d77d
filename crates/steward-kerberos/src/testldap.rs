//! A throwaway OpenLDAP directory for tests (feature `testkdc`): `slapd` in the foreground on a
//! free 127.0.0.1 port, an mdb database and a slapd.conf in a temporary directory, killed on
//! drop. Its schema is OpenLDAP's core plus a tiny one for Active Directory's
//! `servicePrincipalName` (AD's OID 1.2.840.113556.1.4.771, a case-insensitive directory
//! string, multi-valued) carried by the auxiliary class `stewardSpnHolder`, so the
//! duplicate-SPN search runs against a real directory. Nothing touches the system's slapd.
//!
//! Needs Debian's `slapd` (the server) and `ldap-utils` (`ldapadd`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::testkdc::{TestKdcError, run_bounded};

/// How long slapd may take to listen.
const START_LIMIT: Duration = Duration::from_secs(15);

/// The schema: AD's `servicePrincipalName` and an auxiliary class to carry it (OID under the
/// example enterprise number of RFC 5612).
const SPN_SCHEMA: &str = "attributetype ( 1.2.840.113556.1.4.771 NAME 'servicePrincipalName'\n  \
     EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch\n  \
     SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )\n\
     objectclass ( 1.3.6.1.4.1.32473.1.1 NAME 'stewardSpnHolder' SUP top AUXILIARY\n  \
     MAY servicePrincipalName )\n";

/// The directory's root password (the rootdn's).
pub const ADMIN_PASSWORD: &str = "steward-test-ldap";

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestKdcError {
    let what = what.into();
    move |source| TestKdcError::Io { what, source }
}

/// A running throwaway directory.
#[derive(Debug)]
pub struct TestLdap {
    dir: tempfile::TempDir,
    suffix: String,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Drop for TestLdap {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestLdap {
    /// Creates a directory for `suffix` (`dc=steward,dc=test`) with its root entry and starts
    /// slapd. The port is picked free; if a parallel test takes it first slapd exits and the
    /// start is retried with another (three attempts).
    pub fn start(suffix: &str) -> Result<Self, TestKdcError> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(suffix) {
                Err(e @ TestKdcError::NotListening { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| TestKdcError::Command {
            command: "slapd".into(),
            detail: "did not start".into(),
        }))
    }

    fn start_once(suffix: &str) -> Result<Self, TestKdcError> {
        let dir = tempfile::tempdir().map_err(io("making the LDAP directory"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.path();
        let db = d.join("db");
        std::fs::create_dir(&db).map_err(io("making the database directory"))?;
        std::fs::write(d.join("spn.schema"), SPN_SCHEMA).map_err(io("writing the schema"))?;
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude {schema}\npidfile {pid}\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
             database mdb\nmaxsize 16777216\nsuffix \"{suffix}\"\nrootdn \"cn=admin,{suffix}\"\n\
             rootpw {ADMIN_PASSWORD}\ndirectory {db}\nindex objectClass eq\n",
            schema = d.join("spn.schema").display(),
            pid = d.join("slapd.pid").display(),
            db = db.display(),
        );
        std::fs::write(d.join("slapd.conf"), conf).map_err(io("writing slapd.conf"))?;
        let log = std::fs::File::create(d.join("slapd.log")).map_err(io("creating slapd.log"))?;
        let log2 = log.try_clone().map_err(io("creating slapd.log"))?;
        // `-d 0`: stay in the foreground (the child is slapd itself, so dropping kills it).
        let child = Command::new("slapd")
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .args(["-h", &format!("ldap://{addr}/"), "-d", "0"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io("starting slapd (Debian package slapd)"))?;
        let mut ldap = Self {
            dir,
            suffix: suffix.to_owned(),
            addr,
            child: Some(child),
        };
        let started = Instant::now();
        loop {
            let exited = ldap
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if !exited && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if exited || started.elapsed() > START_LIMIT {
                return Err(TestKdcError::NotListening {
                    addr,
                    secs: START_LIMIT.as_secs(),
                    log: std::fs::read_to_string(ldap.dir.path().join("slapd.log"))
                        .unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let dc = suffix
            .split(',')
            .next()
            .and_then(|rdn| rdn.strip_prefix("dc="))
            .unwrap_or("test");
        ldap.add(&format!(
            "dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\ndc: {dc}\no: {dc}\n"
        ))?;
        Ok(ldap)
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://{}", self.addr)
    }

    /// The address slapd listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The suffix (search base).
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The root DN (binds with [`ADMIN_PASSWORD`]).
    pub fn admin_dn(&self) -> String {
        format!("cn=admin,{}", self.suffix)
    }

    /// The directory holding the database and slapd's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ldapadd` of LDIF text, as the root DN.
    pub fn add(&self, ldif: &str) -> Result<(), TestKdcError> {
        let file = self.dir.path().join("add.ldif");
        std::fs::write(&file, ldif).map_err(io("writing LDIF"))?;
        let mut cmd = Command::new("ldapadd");
        cmd.args(["-x", "-H", &self.url(), "-D", &self.admin_dn(), "-w"])
            .arg(ADMIN_PASSWORD)
            .arg("-f")
            .arg(&file);
        run_bounded(cmd, None).map(|_| ())
    }

    /// Adds an object `cn=<cn>,<suffix>` (a `device`) holding these SPNs; returns its DN.
    pub fn add_spn_holder(&self, cn: &str, spns: &[&str]) -> Result<String, TestKdcError> {
        let dn = format!("cn={cn},{}", self.suffix);
        let mut ldif =
            format!("dn: {dn}\nobjectClass: device\nobjectClass: stewardSpnHolder\ncn: {cn}\n");
        for s in spns {
            ldif.push_str(&format!("servicePrincipalName: {s}\n"));
        }
        self.add(&ldif)?;
        Ok(dn)
    }

    /// Stops slapd (the directory is then unreachable at its address).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
