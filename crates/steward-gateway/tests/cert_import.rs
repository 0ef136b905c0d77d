//! `steward gateway cert import` with certificates made by the real `openssl` CLI: a SAN
//! certificate covering split domains (smp.example.net, gateway.example.com) from an
//! openssl-made CA is staged as the next certificate; one without serverAuth, one not covering
//! the external name, one expiring in 10 days and one exported without its root are refused,
//! each naming why, and nothing is staged.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{openssl, openssl_root};
use steward_doctor::Severity;
use steward_gateway::{CertSlots, GatewayConfig, GatewayDir, GatewayError, import_cert};
use steward_pki::{Authority, KeySpec, LeafRequest, OffsetDateTime, Usage};

const EXTERNAL: &str = "gateway.example.com";
const PASSWORD: &str = "pfx secret";

/// An openssl-made root and issuing CA (RSA 2048, SHA-256) in `dir`.
fn openssl_ca(dir: &Path) {
    openssl_root(dir);
    openssl(
        dir,
        "req -new -newkey rsa:2048 -nodes -keyout inter.key -out inter.csr",
        &["-subj", "/O=Example/CN=Example Issuing CA"],
    );
    openssl(
        dir,
        "x509 -req -in inter.csr -CA root.pem -CAkey root.key -CAcreateserial -out inter.pem \
         -days 1825 -extfile openssl.cnf -extensions ca_ext -sha256",
        &[],
    );
}

/// A leaf `name` signed by the issuing CA with extensions `ext`, valid `days`, exported as
/// `name.pfx` (password [`PASSWORD`]) with the chain in `chain` (file names in `dir`).
fn openssl_leaf(dir: &Path, name: &str, ext: &str, days: u32, chain: &[&str]) -> PathBuf {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &format!("req -new -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr"),
        &["-subj", &format!("/O=Example/CN={name}")],
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA inter.pem -CAkey inter.key -CAcreateserial \
             -out {name}.pem -days {days} -extfile {name}.ext -sha256"
        ),
        &[],
    );
    let mut bundle = Vec::new();
    for c in chain {
        bundle.extend(std::fs::read(dir.join(c)).unwrap());
    }
    std::fs::write(dir.join(format!("{name}.chain.pem")), bundle).unwrap();
    openssl(
        dir,
        &format!(
            "pkcs12 -export -in {name}.pem -inkey {name}.key -certfile {name}.chain.pem \
             -out {name}.pfx"
        ),
        &["-passout", &format!("pass:{PASSWORD}")],
    );
    dir.join(format!("{name}.pfx"))
}

fn server_ext(sans: &str, eku: &str) -> String {
    format!(
        "basicConstraints = CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = {eku}\n\
         subjectAltName = {sans}\n"
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A gateway data directory as `join` leaves it: a platform-issued server certificate for
/// [`EXTERNAL`] (made here with Steward's own CA; no server is needed to import).
fn joined_gateway(dir: &Path) -> GatewayDir {
    std::fs::create_dir_all(dir).unwrap();
    let now = OffsetDateTime::now_utc();
    let ca = Authority::new_root(
        "Steward Platform Root",
        KeySpec::EcdsaP256,
        now - time::Duration::hours(1),
        now + time::Duration::days(3650),
    )
    .unwrap();
    let leaf = ca
        .issue(&LeafRequest {
            common_name: EXTERNAL.into(),
            dns_names: vec![EXTERNAL.into()],
            ip_addrs: vec![],
            usage: Usage::Server,
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(365),
            crl_urls: vec![],
            key: KeySpec::EcdsaP256,
        })
        .unwrap();
    let gw = GatewayDir::new(dir);
    std::fs::write(gw.server_cert(), pem("CERTIFICATE", &leaf.cert)).unwrap();
    std::fs::write(gw.server_key(), pem("PRIVATE KEY", &leaf.key_pkcs8)).unwrap();
    std::fs::write(gw.chain(), pem("CERTIFICATE", ca.cert())).unwrap();
    gw.write_config(&GatewayConfig {
        gateway_id: "gw-test".into(),
        server_url: "https://127.0.0.1:1".into(),
        external_name: EXTERNAL.into(),
        listen: "127.0.0.1:8443".parse().unwrap(),
        previous_listen: vec![],
        crl_url: "http://127.0.0.1:1/crl".into(),
    })
    .unwrap();
    gw
}

fn import(
    gw_dir: &Path,
    file: &Path,
    password: Option<&str>,
) -> Result<steward_gateway::Staged, GatewayError> {
    let bytes = std::fs::read(file).unwrap();
    import_cert(
        gw_dir,
        &bytes,
        password,
        &file.display().to_string(),
        OffsetDateTime::now_utc(),
    )
}

/// The import was refused, and the findings name `id` as a problem.
fn assert_refused_for(outcome: Result<steward_gateway::Staged, GatewayError>, id: &str) {
    let err = outcome.expect_err("the import must be refused");
    assert_eq!(err.id(), "GATEWAY-CERT-REFUSED", "{err}");
    assert!(err.to_string().contains(id), "{err}");
    let GatewayError::CertRefused { report } = err else {
        unreachable!()
    };
    let f = report.findings.iter().find(|f| f.id == id).unwrap();
    assert_ne!(f.severity, Severity::Ok, "{f:?}");
    assert!(f.remedy.is_some(), "{f:?}");
    // The text shown by the CLI holds the finding, its evidence and remedy.
    let text = report.to_text();
    assert!(text.contains(id), "{text}");
}

#[test]
fn a_split_domain_san_certificate_is_staged_and_bad_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    openssl_ca(&pki);
    let gw_dir = tmp.path().join("gateway");
    let gw = joined_gateway(&gw_dir);

    // Refused: no serverAuth EKU.
    let no_eku = openssl_leaf(
        &pki,
        "noeku",
        &server_ext("DNS:smp.example.net,DNS:gateway.example.com", "clientAuth"),
        365,
        &["inter.pem", "root.pem"],
    );
    assert_refused_for(
        import(&gw_dir, &no_eku, Some(PASSWORD)),
        "CERT-EKU-SERVER-AUTH",
    );

    // Refused: does not cover the gateway's external name.
    let other_name = openssl_leaf(
        &pki,
        "othername",
        &server_ext("DNS:smp.example.net", "serverAuth"),
        365,
        &["inter.pem", "root.pem"],
    );
    assert_refused_for(
        import(&gw_dir, &other_name, Some(PASSWORD)),
        "CERT-NAME-MISMATCH",
    );

    // Refused: ten days left (a warning for `doctor cert`, too little for a phased rollout).
    let soon = openssl_leaf(
        &pki,
        "soon",
        &server_ext("DNS:smp.example.net,DNS:gateway.example.com", "serverAuth"),
        10,
        &["inter.pem", "root.pem"],
    );
    assert_refused_for(import(&gw_dir, &soon, Some(PASSWORD)), "CERT-EXPIRES-SOON");

    // Refused: the wrong password names the rule.
    let good = openssl_leaf(
        &pki,
        "san",
        &server_ext("DNS:smp.example.net,DNS:gateway.example.com", "serverAuth"),
        365,
        &["inter.pem", "root.pem"],
    );
    assert_refused_for(import(&gw_dir, &good, Some("wrong")), "PFX-PASSWORD");

    // Refused: exported without the root; the message asks for the full chain.
    let no_root = openssl_leaf(
        &pki,
        "noroot",
        &server_ext("DNS:smp.example.net,DNS:gateway.example.com", "serverAuth"),
        365,
        &["inter.pem"],
    );
    let err = import(&gw_dir, &no_root, Some(PASSWORD)).err().unwrap();
    assert_eq!(err.id(), "GATEWAY-CERT-NO-ROOT", "{err}");
    assert!(err.to_string().contains("full chain"), "{err}");

    // Nothing was staged by any of them.
    assert_eq!(gw.read_slots().unwrap(), CertSlots::default());
    assert!(!gw.cert_slots().exists());

    // Accepted: the split-domain SAN certificate, its chain and root in the PFX.
    let staged = import(&gw_dir, &good, Some(PASSWORD)).unwrap();
    let fingerprint = openssl(&pki, "x509 -noout -fingerprint -sha256 -in san.pem", &[]);
    let fingerprint = fingerprint
        .trim()
        .rsplit_once('=')
        .unwrap()
        .1
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(staged.sha256.to_ascii_lowercase(), fingerprint);
    assert!(
        staged.root_subject.contains("Example Enterprise Root"),
        "{}",
        staged.root_subject
    );
    assert!(!staged.already_current);
    assert!(
        staged
            .report
            .findings
            .iter()
            .all(|f| f.severity != Severity::Error)
    );
    assert_eq!(
        gw.read_slots().unwrap(),
        CertSlots {
            current: None,
            next: Some(staged.sha256.clone()),
        }
    );
    // Staged in its own directory: key 0600, the chain without the root, the root apart.
    let staged_dir = gw.imported(&staged.sha256);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(staged_dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let served = std::fs::read_to_string(staged_dir.join("chain.pem")).unwrap();
    assert_eq!(
        served.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + issuing CA"
    );
    let root = std::fs::read_to_string(staged_dir.join("root.pem")).unwrap();
    let root_der = steward_pki::read_material(root.as_bytes(), None)
        .unwrap()
        .certs;
    let openssl_root =
        steward_pki::read_material(&std::fs::read(pki.join("root.pem")).unwrap(), None)
            .unwrap()
            .certs;
    assert_eq!(root_der, openssl_root);
    // The served chain verifies with openssl against the staged root.
    std::fs::write(pki.join("staged-chain.pem"), &served).unwrap();
    openssl(
        &pki,
        "verify -CAfile",
        &[
            staged_dir.join("root.pem").to_str().unwrap(),
            "-untrusted",
            "staged-chain.pem",
            "san.pem",
        ],
    );

    // A PEM bundle (key, leaf, chain in any order) is read as well; it replaces the staged one.
    let mut bundle = std::fs::read(pki.join("san.key")).unwrap();
    bundle.extend(std::fs::read(pki.join("root.pem")).unwrap());
    bundle.extend(std::fs::read(pki.join("inter.pem")).unwrap());
    bundle.extend(std::fs::read(pki.join("san.pem")).unwrap());
    std::fs::write(pki.join("bundle.pem"), bundle).unwrap();
    let again = import(&gw_dir, &pki.join("bundle.pem"), None).unwrap();
    assert_eq!(again.sha256, staged.sha256);
    assert_eq!(
        again.replaced_next, None,
        "the same certificate is not a replacement"
    );
}

#[test]
fn a_configuration_written_before_port_changes_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("gateway.json"),
        r#"{"gateway_id":"gw-1","server_url":"https://smp.example.net:4726",
            "external_name":"gateway.example.com","listen":"0.0.0.0:8443",
            "crl_url":"http://smp.example.net:4728/crl/issuing.crl"}"#,
    )
    .unwrap();
    let cfg = GatewayDir::new(tmp.path()).read_config().unwrap();
    assert!(cfg.previous_listen.is_empty());
    // And a port change on it keeps the old address as a previous one, written atomically.
    let change = steward_gateway::set_port(tmp.path(), "0.0.0.0:9443".parse().unwrap()).unwrap();
    assert_eq!(change.replaced, Some("0.0.0.0:8443".parse().unwrap()));
    let cfg = GatewayDir::new(tmp.path()).read_config().unwrap();
    assert_eq!(
        (cfg.listen, cfg.previous_listen),
        (
            "0.0.0.0:9443".parse().unwrap(),
            vec!["0.0.0.0:8443".parse().unwrap()]
        )
    );
    assert!(!tmp.path().join("gateway.tmp").exists());
    // Going back before the change completed: the address is current again, not previous.
    steward_gateway::set_port(tmp.path(), "0.0.0.0:8443".parse().unwrap()).unwrap();
    let cfg = GatewayDir::new(tmp.path()).read_config().unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(cfg.previous_listen, vec!["0.0.0.0:9443".parse().unwrap()]);
}
