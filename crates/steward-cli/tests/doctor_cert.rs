//! Integration tests of `steward doctor cert`: the real binary, fixtures made at test time by
//! Steward's own CA and by the `openssl` command-line tool (an independent implementation), and
//! loopback servers for CRLs and TLS endpoints. Findings are read from `--format json` and
//! judged by ID and severity, with the exit status (0 no error, 1 an error, 2 could not run).
// Tests state their expectations with unwrap/expect: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{
    HttpServer, OpensslLeaf, OpensslPki, PlainTextServer, Run, SServer, StewardPki, closed_port,
    days, doctor, doctor_env, now, openssl, openssl_x509_field, s, server_ext, steward, write,
    write_pem_certs,
};
use steward_pki::{CertFacts, Pkcs12Encryption, Revoked, write_pkcs12};

/// The IDs of the three revocation checks.
const REVOCATION_IDS: [&str; 3] = ["CERT-REVOKED", "CERT-CRL-UNREACHABLE", "CERT-CRL-STALE"];

/// A temp dir for one test's fixtures.
fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Concatenate PEM files into `dir/name`.
fn bundle(dir: &Path, name: &str, parts: &[&Path]) -> PathBuf {
    let bytes: Vec<u8> = parts
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    write(dir, name, &bytes)
}

/// An openssl PKI with a SHA-256 server leaf for smp.example.net + gateway.example.com, and a
/// PKCS#12 export of it (leaf, key, intermediate) made with `pkcs12_args` and password "s3cret".
fn openssl_pfx(dir: &Path, pkcs12_args: &[&str]) -> (OpensslPki, OpensslLeaf, PathBuf) {
    let pki = OpensslPki::new(dir, "PFX Test", "sha256");
    let sans = "DNS:smp.example.net,DNS:gateway.example.com";
    let leaf = pki.leaf("leaf", "smp.example.net", &server_ext(sans, ""), "sha256");
    let pfx = export_pfx(&pki, &leaf, pkcs12_args);
    (pki, leaf, pfx)
}

/// `openssl pkcs12 -export` of `leaf` with the intermediate, password "s3cret", to leaf.pfx.
fn export_pfx(pki: &OpensslPki, leaf: &OpensslLeaf, extra: &[&str]) -> PathBuf {
    let mut args = vec!["-in", s(&leaf.cert), "-inkey", s(&leaf.key)];
    args.extend(["-certfile", s(&pki.inter)]);
    args.extend_from_slice(extra);
    openssl(
        &pki.dir,
        "pkcs12 -export -name smp -passout pass:s3cret -out leaf.pfx",
        &args,
    );
    pki.dir.join("leaf.pfx")
}

/// What `openssl pkcs12 -info` says about a PFX's encryption and MAC (it prints them on
/// stderr).
fn pkcs12_info(dir: &Path, pfx: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "pkcs12",
            "-info",
            "-noout",
            "-legacy",
            "-passin",
            "pass:s3cret",
        ])
        .args(["-in", s(pfx)])
        .env("OPENSSL_CONF", dir.join("openssl.cnf"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Assert that a PFX was read: parsed, opened, key present and matching, nothing failing.
#[track_caller]
fn assert_pfx_read(run: &Run) {
    let parse = run.expect_pass("CERT-PARSE");
    assert!(parse.contains("PKCS#12"), "{parse}");
    run.expect_pass("PFX-PASSWORD");
    run.expect_pass("PFX-NO-KEY");
    run.expect_pass("PFX-KEY-MISMATCH");
    run.expect_pass("CERT-CHAIN-INCOMPLETE");
    assert_eq!(run.failing(), Vec::<String>::new());
    run.expect_code(0);
}

// ---------------------------------------------------------------------------------------------
// 1. PKCS#12 made by openssl

#[test]
fn openssl_legacy_pfx_rc2_3des_sha1_mac_opens_with_password_file_or_env() {
    let dir = tmp();
    let (pki, _, pfx) = openssl_pfx(dir.path(), &["-legacy"]);
    // The fixture really is the legacy kind: RC2-40 certificate bag, 3DES key bag, SHA-1 MAC.
    let info = pkcs12_info(dir.path(), &pfx);
    assert!(info.contains("pbeWithSHA1And40BitRC2-CBC"), "{info}");
    assert!(info.contains("pbeWithSHA1And3-KeyTripleDES-CBC"), "{info}");
    assert!(info.contains("MAC: sha1"), "{info}");

    // `echo s3cret > file`: the line ending must not become part of the password.
    let pw = write(dir.path(), "password.txt", b"s3cret\n");
    let trust = ["--trust", s(&pki.root), "--fqdn", "smp.example.net"];
    let run = doctor(
        s(&pfx),
        &[&trust[..], &["--password-file", s(&pw)]].concat(),
    );
    assert_pfx_read(&run);

    let run = doctor_env(s(&pfx), &trust, &[("STEWARD_PFX_PASSWORD", "s3cret")]);
    assert_pfx_read(&run);
}

#[test]
fn openssl_legacy_pfx_wrong_or_missing_password_is_pfx_password_error() {
    let dir = tmp();
    let (pki, _, pfx) = openssl_pfx(dir.path(), &["-legacy"]);
    let trust = ["--trust", s(&pki.root)];

    let wrong = write(dir.path(), "wrong.txt", b"not-the-password\n");
    let run = doctor(
        s(&pfx),
        &[&trust[..], &["--password-file", s(&wrong)]].concat(),
    );
    let msg = run.expect("PFX-PASSWORD", "error");
    assert!(msg.contains("wrong"), "{msg}");
    // Parsing is not blamed for what the password prevents.
    run.expect("CERT-PARSE", "ok");
    assert!(run.json()["certificate"].is_null());
    run.expect_code(1);

    // A wrong password from the environment is just as wrong.
    let run = doctor_env(s(&pfx), &trust, &[("STEWARD_PFX_PASSWORD", "nope")]);
    assert!(run.expect("PFX-PASSWORD", "error").contains("wrong"));
    run.expect_code(1);

    // No password at all: the empty password fails, and the message says one is needed
    // (not that the one given is wrong).
    let run = doctor(s(&pfx), &trust);
    let msg = run.expect("PFX-PASSWORD", "error");
    assert!(
        msg.contains("password-protected") && msg.contains("no password was given"),
        "{msg}"
    );
    assert!(!msg.contains("wrong"), "{msg}");
    run.expect_code(1);
}

#[test]
fn openssl_modern_aes256_pfx_opens_with_password() {
    let dir = tmp();
    let (pki, _, pfx) = openssl_pfx(dir.path(), &[]);
    // OpenSSL 3's default: PBES2 with AES-256-CBC and an HMAC-SHA-256 MAC.
    let info = pkcs12_info(dir.path(), &pfx);
    assert!(info.contains("AES-256-CBC"), "{info}");
    assert!(info.contains("MAC: sha256"), "{info}");

    let pw = write(dir.path(), "password.txt", b"s3cret\r\n");
    let args = ["--trust", s(&pki.root), "--fqdn", "gateway.example.com"];
    let run = doctor(s(&pfx), &[&args[..], &["--password-file", s(&pw)]].concat());
    assert_pfx_read(&run);

    let wrong = write(dir.path(), "wrong.txt", b"S3CRET\n");
    let run = doctor(
        s(&pfx),
        &[&args[..], &["--password-file", s(&wrong)]].concat(),
    );
    run.expect("PFX-PASSWORD", "error");
    run.expect_code(1);
}

#[test]
fn openssl_macless_aes_pfx_wrong_or_missing_password_is_pfx_password_error() {
    // Without a MAC only the decryption can tell a wrong password, by its bad padding (which a
    // wrong key yields with probability 255/256). openssl is the oracle that it does for both
    // wrong passwords tried here; the file is exported again (bounded) in the rare case not.
    let dir = tmp();
    let d = dir.path();
    let pki = OpensslPki::new(d, "PFX Test", "sha256");
    let sans = "DNS:smp.example.net";
    let leaf = pki.leaf("leaf", "smp.example.net", &server_ext(sans, ""), "sha256");
    let bad_decrypt = |pfx: &Path, password: &str| {
        let out = std::process::Command::new("openssl")
            .args(["pkcs12", "-nodes", "-out", "/dev/null", "-in", s(pfx)])
            .arg("-passin")
            .arg(format!("pass:{password}"))
            .env("OPENSSL_CONF", d.join("openssl.cnf"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).contains("bad decrypt")
    };
    let pfx = (0..5)
        .map(|_| export_pfx(&pki, &leaf, &["-nomac"]))
        .find(|pfx| bad_decrypt(pfx, "wrong") && bad_decrypt(pfx, ""))
        .expect("an export whose wrong-password decryptions fail on padding");
    let info = pkcs12_info(d, &pfx);
    assert!(
        info.contains("AES-256-CBC") && !info.contains("MAC: "),
        "{info}"
    );
    let trust = ["--trust", s(&pki.root)];

    let run = doctor_env(s(&pfx), &trust, &[("STEWARD_PFX_PASSWORD", "s3cret")]);
    assert_pfx_read(&run);

    let run = doctor_env(s(&pfx), &trust, &[("STEWARD_PFX_PASSWORD", "wrong")]);
    assert!(run.expect("PFX-PASSWORD", "error").contains("wrong"));
    run.expect("CERT-PARSE", "ok");
    run.expect_code(1);

    let run = doctor(s(&pfx), &trust);
    let msg = run.expect("PFX-PASSWORD", "error");
    assert!(msg.contains("no password was given"), "{msg}");
    run.expect_code(1);
}

// ---------------------------------------------------------------------------------------------
// 2. SHA-1 signatures, judged per profile

#[test]
fn sha1_chain_is_hash_weak_error_under_steward_warning_under_itms88_ok_under_itms75() {
    let dir = tmp();
    let d = dir.path();
    let pki = OpensslPki::new(d, "SHA1 Test", "sha1");
    let sans = "DNS:smp.example.net";
    let leaf = pki.leaf("leaf", "smp.example.net", &server_ext(sans, ""), "sha1");
    let chain = bundle(d, "chain.pem", &[&leaf.cert, &pki.inter]);
    let run_with = |profile: &str| {
        let args = ["--trust", s(&pki.root), "--fqdn", "smp.example.net"];
        doctor(s(&chain), &[&args[..], &["--profile", profile]].concat())
    };

    let run = run_with("steward");
    let msg = run.expect("CERT-HASH-WEAK", "error");
    // Both SHA-1 signatures are named; the root's self-signature (SHA-256) does not matter.
    assert!(
        msg.contains("leaf") && msg.contains("intermediate") && msg.contains("sha1"),
        "{msg}"
    );
    // SHA-1 is weak, not broken, and the signatures do verify.
    run.expect_pass("CERT-HASH-BROKEN");
    run.expect_pass("CERT-SIGNATURE");
    assert_eq!(run.failing(), ["\"CERT-HASH-WEAK\" \"error\""]);
    run.expect_code(1);

    let run = run_with("itms-8.8");
    run.expect("CERT-HASH-WEAK", "warning");
    assert_eq!(run.json()["profile"], "itms-8.8");
    assert_eq!(run.failing(), ["\"CERT-HASH-WEAK\" \"warning\""]);
    run.expect_code(0);

    let run = run_with("itms-7.5");
    let msg = run.expect("CERT-HASH-WEAK", "ok");
    assert!(msg.contains("accepted under itms-7.5"), "{msg}");
    run.expect_code(0);
}

// ---------------------------------------------------------------------------------------------
// 3. Chain building: missing intermediate, trust anchors

#[test]
fn chain_missing_intermediate_is_chain_incomplete_naming_the_issuer() {
    let dir = tmp();
    let d = dir.path();

    // Steward's CA, exported as a PFX with the leaf only (3DES, as for old Windows servers).
    let pki = StewardPki::new("Steward Missing Issuing CA");
    let leaf = pki.leaf(&["smp.example.net"], &[]);
    let inter_subject = CertFacts::from_der(pki.inter.cert()).unwrap().subject;
    let pfx = write_pkcs12(
        &leaf.key_pkcs8,
        std::slice::from_ref(&leaf.cert),
        "pw",
        "smp",
        Pkcs12Encryption::TripleDes,
    )
    .unwrap();
    let pfx = write(d, "leaf-only.pfx", &pfx);
    let root = write_pem_certs(d, "steward-root.pem", &[pki.root.cert()]);
    let run = doctor_env(
        s(&pfx),
        &["--trust", s(&root)],
        &[("STEWARD_PFX_PASSWORD", "pw")],
    );
    run.expect_pass("PFX-PASSWORD");
    let msg = run.expect("CERT-CHAIN-INCOMPLETE", "error");
    assert!(
        msg.contains(&inter_subject),
        "{msg} should name {inter_subject}"
    );
    assert!(msg.contains("Steward Missing Issuing CA"), "{msg}");
    // The chain never reaches a root, so trust cannot be judged.
    assert!(
        run.expect("CERT-UNTRUSTED-ROOT", "ok")
            .starts_with("skipped")
    );
    let end = run.json()["chain_end"].as_str().unwrap().to_owned();
    assert!(end.starts_with("missing-issuer"), "{end}");
    run.expect_code(1);

    // openssl's chain, as a PEM with the leaf only.
    let ossl = OpensslPki::new(d, "Missing", "sha256");
    let sans = "DNS:smp.example.net";
    let oleaf = ossl.leaf("leaf", "smp.example.net", &server_ext(sans, ""), "sha256");
    let run = doctor(s(&oleaf.cert), &["--trust", s(&ossl.root)]);
    let msg = run.expect("CERT-CHAIN-INCOMPLETE", "error");
    assert!(msg.contains("Missing Issuing CA"), "{msg}");
    run.expect_code(1);
}

#[test]
fn chain_with_intermediate_is_complete_and_ends_at_trust_anchor() {
    let dir = tmp();
    let d = dir.path();

    // Steward's CA, as an AES-256 PFX with leaf and intermediate.
    let pki = StewardPki::new("Steward Issuing CA");
    let leaf = pki.leaf(&["smp.example.net"], &[]);
    let pfx = write_pkcs12(
        &leaf.key_pkcs8,
        &[leaf.cert.clone(), pki.inter.cert().clone()],
        "pw",
        "smp",
        Pkcs12Encryption::Aes256,
    )
    .unwrap();
    let pfx = write(d, "full.pfx", &pfx);
    let root = write_pem_certs(d, "steward-root.pem", &[pki.root.cert()]);
    let run = doctor_env(
        s(&pfx),
        &["--trust", s(&root)],
        &[("STEWARD_PFX_PASSWORD", "pw")],
    );
    run.expect_pass("CERT-CHAIN-INCOMPLETE");
    let msg = run.expect_pass("CERT-UNTRUSTED-ROOT");
    assert!(
        msg.contains("trust anchor") && msg.contains("Steward Test Root"),
        "{msg}"
    );
    let json = run.json();
    assert_eq!(json["chain_end"], "trust-anchor");
    assert_eq!(json["chain"].as_array().unwrap().len(), 3);
    assert_eq!(json["chain"][2]["source"], "trust-anchor");
    run.expect_code(0);

    // openssl's chain, as a PEM with the intermediate *before* the leaf (order must not matter).
    let ossl = OpensslPki::new(d, "Complete", "sha256");
    let sans = "DNS:smp.example.net";
    let oleaf = ossl.leaf("leaf", "smp.example.net", &server_ext(sans, ""), "sha256");
    let file = bundle(d, "bundle.pem", &[&ossl.inter, &oleaf.cert]);
    let run = doctor(s(&file), &["--trust", s(&ossl.root)]);
    assert_eq!(run.json()["certificate"]["subject"], "CN=smp.example.net");
    run.expect_pass("CERT-CHAIN-INCOMPLETE");
    run.expect_pass("CERT-UNTRUSTED-ROOT");
    run.expect_code(0);
}

#[test]
fn chain_ending_at_root_absent_from_system_store_is_untrusted_root() {
    let dir = tmp();
    let d = dir.path();
    let pki = StewardPki::new("Steward Issuing CA");
    let leaf = pki.leaf(&["smp.example.net"], &[]);
    let root_pem = write_pem_certs(d, "root.pem", &[pki.root.cert()]);
    // The file carries the whole chain, root included.
    let full = write_pem_certs(
        d,
        "full.pem",
        &[&leaf.cert, pki.inter.cert(), pki.root.cert()],
    );
    write(d, "openssl.cnf", b"");
    let root_sha1 = openssl_x509_field(d, &root_pem, "-fingerprint -sha1");

    let check_untrusted = |run: &Run| {
        let msg = run.expect("CERT-UNTRUSTED-ROOT", "error");
        assert!(msg.contains("Steward Test Root"), "{msg}");
        assert!(
            msg.contains(&root_sha1),
            "{msg} should give the SHA-1 {root_sha1}"
        );
        run.expect_pass("CERT-CHAIN-INCOMPLETE");
        assert_eq!(run.json()["chain_end"], "untrusted-root");
        run.expect_code(1);
    };

    // The system store as configured for this process (SSL_CERT_FILE/SSL_CERT_DIR or the
    // platform's default locations): a test root made a moment ago cannot be in it.
    let system_store_empty = rustls_native_certs::load_native_certs().certs.is_empty();
    let run = doctor(s(&full), &[]);
    if system_store_empty {
        // Documented: without anchors the check cannot run, and says how to give some.
        run.expect_code(2);
        assert!(run.stderr.contains("--trust"), "{}", run.stderr);
    } else {
        check_untrusted(&run);
    }

    // A system store (SSL_CERT_FILE, and an empty SSL_CERT_DIR) holding another root: still
    // untrusted...
    let no_dir = d.join("empty-cert-dir");
    std::fs::create_dir(&no_dir).unwrap();
    let other = StewardPki::new("Other Issuing CA");
    let other_root = write_pem_certs(d, "other-root.pem", &[other.root.cert()]);
    let run = doctor_env(
        s(&full),
        &[],
        &[
            ("SSL_CERT_FILE", s(&other_root)),
            ("SSL_CERT_DIR", s(&no_dir)),
        ],
    );
    check_untrusted(&run);

    // ...and one holding this root: trusted. So the store is really consulted.
    let run = doctor_env(
        s(&full),
        &[],
        &[
            ("SSL_CERT_FILE", s(&root_pem)),
            ("SSL_CERT_DIR", s(&no_dir)),
        ],
    );
    run.expect_pass("CERT-UNTRUSTED-ROOT");
    assert_eq!(run.json()["chain_end"], "trust-anchor");
    run.expect_code(0);
}

// ---------------------------------------------------------------------------------------------
// 4. Revocation, with CRLs served over loopback HTTP

/// Hex of a serial as openssl prints it (upper case, no leading zero octet).
fn serial_hex(raw: &[u8]) -> String {
    let raw = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => raw,
    };
    raw.iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn steward_ca_crl_over_http_marks_revoked_leaf_and_passes_its_sibling() {
    let dir = tmp();
    let d = dir.path();
    let http = HttpServer::start();
    let url = http.url("/issuing.crl");
    let pki = StewardPki::new("Steward Issuing CA");
    let revoked = pki.leaf(&["revoked.example.net"], std::slice::from_ref(&url));
    let sibling = pki.leaf(&["sibling.example.net"], std::slice::from_ref(&url));
    let revoked_serial = CertFacts::from_der(&revoked.cert).unwrap().serial_raw;
    let an_hour_ago = now() - time::Duration::hours(1);
    let entry = Revoked {
        serial: revoked_serial.clone(),
        at: an_hour_ago,
    };
    let crl = pki
        .inter
        .sign_crl(&[entry], an_hour_ago, now() + days(7), 1)
        .unwrap();
    http.serve("/issuing.crl", crl.to_vec());
    let root = write_pem_certs(d, "root.pem", &[pki.root.cert()]);
    let args = ["--trust", s(&root), "--timeout", "5"];

    let file = write_pem_certs(d, "revoked.pem", &[&revoked.cert, pki.inter.cert()]);
    let run = doctor(s(&file), &args);
    let msg = run.expect("CERT-REVOKED", "error");
    let serial = serial_hex(&revoked_serial);
    assert!(
        msg.contains(&serial),
        "{msg} should give the serial {serial}"
    );
    assert!(msg.contains(&url), "{msg} should give the CRL URL");
    assert_eq!(run.json()["certificate"]["serial"], serial.as_str());
    run.expect_pass("CERT-CRL-UNREACHABLE");
    run.expect_pass("CERT-CRL-STALE");
    run.expect_code(1);
    assert!(http.hits() >= 1, "the CRL was never fetched");

    let file = write_pem_certs(d, "sibling.pem", &[&sibling.cert, pki.inter.cert()]);
    let run = doctor(s(&file), &args);
    let msg = run.expect_pass("CERT-REVOKED");
    assert!(msg.contains("not listed"), "{msg}");
    run.expect_pass("CERT-CRL-STALE");
    run.expect_code(0);
}

#[test]
fn openssl_ca_gencrl_over_http_marks_revoked_leaf_and_passes_its_sibling() {
    let dir = tmp();
    let d = dir.path();
    let http = HttpServer::start();
    let url = http.url("/ossl/issuing.crl");
    let pki = OpensslPki::new(d, "CRL Test", "sha256");
    let cdp = format!("crlDistributionPoints = URI:{url}\n");
    let ext = |name: &str| server_ext(&format!("DNS:{name}"), &cdp);
    let revoked = pki.leaf(
        "revoked",
        "revoked.example.net",
        &ext("revoked.example.net"),
        "sha256",
    );
    let sibling = pki.leaf(
        "sibling",
        "sibling.example.net",
        &ext("sibling.example.net"),
        "sha256",
    );
    // `openssl ca -revoke` then `openssl ca -gencrl`; served as PEM, as openssl writes it.
    let crl = pki.revoke_and_gencrl(&[&revoked.cert]);
    assert!(crl.starts_with(b"-----BEGIN X509 CRL-----"));
    http.serve("/ossl/issuing.crl", crl);
    let serial = openssl_x509_field(d, &revoked.cert, "-serial");

    // The issuing CA is the trust anchor here, so the CRL's signature is checked against it.
    let run = doctor(
        s(&revoked.cert),
        &["--trust", s(&pki.inter), "--timeout", "5"],
    );
    let msg = run.expect("CERT-REVOKED", "error");
    assert!(
        msg.contains(&serial),
        "{msg} should give the serial {serial}"
    );
    run.expect_pass("CERT-CRL-STALE");
    run.expect_code(1);

    let chain = bundle(d, "sibling-chain.pem", &[&sibling.cert, &pki.inter]);
    let run = doctor(s(&chain), &["--trust", s(&pki.root), "--timeout", "5"]);
    run.expect_pass("CERT-REVOKED");
    run.expect_pass("CERT-CRL-UNREACHABLE");
    run.expect_pass("CERT-CRL-STALE");
    run.expect_code(0);
    assert!(
        http.hits() >= 2,
        "the CRL was not fetched for both certificates"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. CRLs that cannot be had, or are stale

/// Check a Steward leaf whose only distribution point is `url`, with `extra` arguments.
fn check_with_cdp(dir: &Path, url: &str, extra: &[&str]) -> Run {
    let pki = StewardPki::new("Steward Issuing CA");
    let leaf = pki.leaf(&["smp.example.net"], &[url.to_owned()]);
    let root = write_pem_certs(dir, "root.pem", &[pki.root.cert()]);
    let file = write_pem_certs(dir, "leaf.pem", &[&leaf.cert, pki.inter.cert()]);
    let args = ["--trust", s(&root), "--timeout", "5"];
    doctor(s(&file), &[&args[..], extra].concat())
}

#[test]
fn crl_on_closed_port_is_crl_unreachable_and_no_revocation_skips_it() {
    let dir = tmp();
    let url = format!("http://127.0.0.1:{}/issuing.crl", closed_port());
    let run = check_with_cdp(dir.path(), &url, &[]);
    let msg = run.expect("CERT-CRL-UNREACHABLE", "error");
    assert!(msg.contains(&url) && msg.contains("refused"), "{msg}");
    run.expect_code(1);

    let run = check_with_cdp(dir.path(), &url, &["--no-revocation"]);
    for id in REVOCATION_IDS {
        let msg = run.expect(id, "ok");
        assert!(
            msg.contains("skipped") && msg.contains("--no-revocation"),
            "{id}: {msg}"
        );
    }
    run.expect_code(0);
}

#[test]
fn crl_host_that_does_not_resolve_is_crl_unreachable_mentioning_dns() {
    let dir = tmp();
    let url = "http://crl.nonexistent.invalid/issuing.crl";
    let run = check_with_cdp(dir.path(), url, &[]);
    let msg = run.expect("CERT-CRL-UNREACHABLE", "error");
    assert!(
        msg.contains("DNS") && msg.contains("crl.nonexistent.invalid"),
        "{msg}"
    );
    run.expect_code(1);

    let run = check_with_cdp(dir.path(), url, &["--no-revocation"]);
    run.expect("CERT-CRL-UNREACHABLE", "ok");
    run.expect_code(0);
}

#[test]
fn crl_url_answering_404_is_crl_unreachable_and_no_revocation_fetches_nothing() {
    let dir = tmp();
    let http = HttpServer::start();
    let url = http.url("/missing.crl");
    let run = check_with_cdp(dir.path(), &url, &[]);
    let msg = run.expect("CERT-CRL-UNREACHABLE", "error");
    assert!(msg.contains("404"), "{msg}");
    run.expect_code(1);
    let hits = http.hits();
    assert!(hits >= 1);

    let run = check_with_cdp(dir.path(), &url, &["--no-revocation"]);
    for id in REVOCATION_IDS {
        assert!(run.expect(id, "ok").starts_with("skipped"));
    }
    run.expect_code(0);
    assert_eq!(http.hits(), hits, "--no-revocation must not fetch anything");
}

#[test]
fn crl_url_serving_html_is_crl_unreachable() {
    let dir = tmp();
    let http = HttpServer::start();
    http.serve(
        "/portal.crl",
        b"<html><body>Please log in</body></html>".to_vec(),
    );
    let run = check_with_cdp(dir.path(), &http.url("/portal.crl"), &[]);
    let msg = run.expect("CERT-CRL-UNREACHABLE", "error");
    assert!(msg.contains("not a CRL"), "{msg}");
    run.expect_code(1);
}

#[test]
fn crl_past_its_next_update_or_from_another_key_is_crl_stale() {
    let dir = tmp();
    let d = dir.path();
    let http = HttpServer::start();
    let url = http.url("/stale.crl");
    let pki = StewardPki::new("Steward Issuing CA");
    let leaf = pki.leaf(&["smp.example.net"], std::slice::from_ref(&url));
    let crl = pki
        .inter
        .sign_crl(&[], now() - days(10), now() - days(3), 7)
        .unwrap();
    http.serve("/stale.crl", crl.to_vec());
    let root = write_pem_certs(d, "root.pem", &[pki.root.cert()]);
    let file = write_pem_certs(d, "leaf.pem", &[&leaf.cert, pki.inter.cert()]);
    let args = ["--trust", s(&root), "--timeout", "5"];
    let run = doctor(s(&file), &args);
    let msg = run.expect("CERT-CRL-STALE", "error");
    assert!(msg.contains("next-update") && msg.contains(&url), "{msg}");
    // It was fetched fine, and does not list the leaf.
    run.expect_pass("CERT-CRL-UNREACHABLE");
    run.expect("CERT-REVOKED", "ok");
    run.expect_code(1);

    // A current CRL from another CA of the same name (wrong key) is no evidence either.
    let impostor = StewardPki::new("Steward Issuing CA");
    let forged = impostor
        .inter
        .sign_crl(&[], now() - days(1), now() + days(7), 1)
        .unwrap();
    http.serve("/stale.crl", forged.to_vec());
    let run = doctor(s(&file), &args);
    let msg = run.expect("CERT-CRL-STALE", "error");
    assert!(msg.contains("signature"), "{msg}");
    run.expect_code(1);
}

// ---------------------------------------------------------------------------------------------
// 6. Names: split-domain SANs and wildcards

#[test]
fn split_domain_sans_cover_both_names_and_any_other_name_is_a_mismatch() {
    let dir = tmp();
    let d = dir.path();
    let pki = OpensslPki::new(d, "Split", "sha256");
    let sans = "DNS:smp.example.net,DNS:gateway.example.com";
    let leaf = pki.leaf("gw", "smp.example.net", &server_ext(sans, ""), "sha256");
    let chain = bundle(d, "chain.pem", &[&leaf.cert, &pki.inter]);
    let base = [
        "--trust",
        s(&pki.root),
        "--fqdn",
        "smp.example.net",
        "--fqdn",
        "gateway.example.com",
    ];

    let run = doctor(s(&chain), &base);
    let msg = run.expect_pass("CERT-NAME-MISMATCH");
    assert!(
        msg.contains("smp.example.net") && msg.contains("gateway.example.com"),
        "{msg}"
    );
    run.expect_code(0);

    let run = doctor(
        s(&chain),
        &[&base[..], &["--fqdn", "other.example.org"]].concat(),
    );
    let msg = run.expect("CERT-NAME-MISMATCH", "error");
    let (missing, _) = msg.split_once("not covered").unwrap();
    assert!(missing.contains("other.example.org"), "{msg}");
    assert!(
        !missing.contains("smp.example.net") && !missing.contains("gateway.example.com"),
        "only the uncovered name is blamed: {msg}"
    );
    run.expect_code(1);
}

#[test]
fn wildcard_san_covers_exactly_one_label() {
    let dir = tmp();
    let d = dir.path();
    let pki = StewardPki::new("Steward Issuing CA");
    let leaf = pki.leaf(&["*.example.com"], &[]);
    let root = write_pem_certs(d, "root.pem", &[pki.root.cert()]);
    let file = write_pem_certs(d, "wild.pem", &[&leaf.cert, pki.inter.cert()]);
    let check = |name: &str| doctor(s(&file), &["--trust", s(&root), "--fqdn", name]);

    let run = check("gw.example.com");
    run.expect_pass("CERT-NAME-MISMATCH");
    run.expect_code(0);

    for name in ["a.b.example.com", "example.com"] {
        let run = check(name);
        let msg = run.expect("CERT-NAME-MISMATCH", "error");
        assert!(msg.starts_with(&format!("{name} not covered")), "{msg}");
        run.expect_code(1);
    }
}

// ---------------------------------------------------------------------------------------------
// 7. No subjectAltName

#[test]
fn cn_only_cert_is_no_san_error_under_steward_and_warning_under_itms88_when_cn_matches() {
    let dir = tmp();
    let d = dir.path();
    let pki = OpensslPki::new(d, "CN Only", "sha256");
    let ext = "basicConstraints = CA:FALSE\n\
               keyUsage = critical,digitalSignature,keyEncipherment\n\
               extendedKeyUsage = serverAuth\n";
    let leaf = pki.leaf("cn-only", "smp.example.net", ext, "sha256");
    let chain = bundle(d, "chain.pem", &[&leaf.cert, &pki.inter]);
    let run_with = |profile: &str, fqdn: &str| {
        let args = [
            "--trust",
            s(&pki.root),
            "--fqdn",
            fqdn,
            "--profile",
            profile,
        ];
        doctor(s(&chain), &args)
    };

    let run = run_with("steward", "smp.example.net");
    run.expect("CERT-NO-SAN", "error");
    // rustls ignores the CN, so the name is not covered for Steward's agents.
    run.expect("CERT-NAME-MISMATCH", "error");
    assert!(
        run.json()["certificate"]["sans"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    run.expect_code(1);

    let run = run_with("itms-8.8", "smp.example.net");
    let msg = run.expect("CERT-NO-SAN", "warning");
    assert!(msg.contains("smp.example.net"), "{msg}");
    // Windows clients fall back to the CN.
    run.expect_pass("CERT-NAME-MISMATCH");
    run.expect_code(0);

    // Under ITMS too, a CN that does not match is an error.
    let run = run_with("itms-8.8", "other.example.net");
    run.expect("CERT-NO-SAN", "error");
    run.expect("CERT-NAME-MISMATCH", "error");
    run.expect_code(1);
}

// ---------------------------------------------------------------------------------------------
// 8. Live endpoints: openssl s_server on loopback

/// An openssl PKI in `dir` with a leaf for smp.example.net and IP 127.0.0.1, whose CRL
/// distribution point is `cdp`.
fn endpoint_pki(dir: &Path, cdp: &str) -> (OpensslPki, OpensslLeaf) {
    let pki = OpensslPki::new(dir, "Endpoint", "sha256");
    let sans = "DNS:smp.example.net,IP:127.0.0.1";
    let ext = server_ext(sans, &format!("crlDistributionPoints = URI:{cdp}\n"));
    let leaf = pki.leaf("server", "smp.example.net", &ext, "sha256");
    (pki, leaf)
}

#[test]
fn endpoint_serving_its_intermediate_has_a_complete_trusted_chain() {
    let dir = tmp();
    let d = dir.path();
    let http = HttpServer::start();
    let (pki, leaf) = endpoint_pki(d, &http.url("/endpoint.crl"));
    let server = SServer::start(d, &leaf.cert, &leaf.key, Some(&pki.inter));

    for target in [
        format!("127.0.0.1:{}", server.port),
        format!("https://127.0.0.1:{}", server.port),
        format!("https://127.0.0.1:{}/", server.port),
    ] {
        let args = ["--fqdn", "smp.example.net", "--trust", s(&pki.root)];
        let run = doctor(
            &target,
            &[&args[..], &["--no-revocation", "--timeout", "5"]].concat(),
        );
        let parse = run.expect_pass("CERT-PARSE");
        assert!(
            parse.contains("2 certificate(s) received from 127.0.0.1"),
            "{target}: {parse}"
        );
        run.expect_pass("CERT-CHAIN-INCOMPLETE");
        run.expect_pass("CERT-UNTRUSTED-ROOT");
        run.expect_pass("CERT-NAME-MISMATCH");
        let json = run.json();
        assert_eq!(json["target"], target.as_str());
        assert_eq!(json["certificate"]["subject"], "CN=smp.example.net");
        assert_eq!(json["chain_end"], "trust-anchor");
        assert_eq!(run.failing(), Vec::<String>::new(), "{target}");
        run.expect_code(0);
    }
    assert_eq!(http.hits(), 0, "--no-revocation fetched a CRL");

    // With revocation checked against the CRL that openssl's CA serves (nothing revoked), and
    // without --fqdn: the endpoint's own host is then the name, covered by the IP SAN.
    http.serve("/endpoint.crl", pki.revoke_and_gencrl(&[]));
    let target = format!("127.0.0.1:{}", server.port);
    let run = doctor(&target, &["--trust", s(&pki.root), "--timeout", "5"]);
    assert!(run.expect_pass("CERT-NAME-MISMATCH").contains("127.0.0.1"));
    run.expect_pass("CERT-REVOKED");
    run.expect_pass("CERT-CRL-UNREACHABLE");
    run.expect_pass("CERT-CRL-STALE");
    run.expect_code(0);
    assert!(http.hits() >= 1, "the CRL was not fetched");
}

#[test]
fn endpoint_not_serving_its_intermediate_is_chain_incomplete() {
    let dir = tmp();
    let d = dir.path();
    let (pki, leaf) = endpoint_pki(d, &format!("http://127.0.0.1:{}/x.crl", closed_port()));
    let server = SServer::start(d, &leaf.cert, &leaf.key, None);
    let target = format!("https://127.0.0.1:{}", server.port);
    let args = ["--fqdn", "smp.example.net", "--trust", s(&pki.root)];
    let run = doctor(
        &target,
        &[&args[..], &["--no-revocation", "--timeout", "5"]].concat(),
    );
    let parse = run.expect_pass("CERT-PARSE");
    assert!(parse.contains("1 certificate(s) received"), "{parse}");
    let msg = run.expect("CERT-CHAIN-INCOMPLETE", "error");
    assert!(msg.contains("Endpoint Issuing CA"), "{msg}");
    run.expect_code(1);
}

// ---------------------------------------------------------------------------------------------
// 9. Bad input never panics

#[test]
fn unreadable_files_are_cert_parse_errors_not_panics() {
    let dir = tmp();
    let d = dir.path();
    let pki = StewardPki::new("Steward Issuing CA");
    let leaf = pki.leaf(&["smp.example.net"], &[]);
    let pfx = write_pkcs12(
        &leaf.key_pkcs8,
        &[leaf.cert.clone(), pki.inter.cert().clone()],
        "pw",
        "smp",
        Pkcs12Encryption::Aes256,
    )
    .unwrap();
    // Deterministic "random" bytes (xorshift), so a failure can be reproduced.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    let key_pem = common::pem("PRIVATE KEY", &leaf.key_pkcs8);
    let cert_pem = common::pem("CERTIFICATE", &leaf.cert);
    let half_pem = cert_pem.as_bytes()[..cert_pem.len() / 2].to_vec();
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("truncated.pfx", pfx[..pfx.len() / 2].to_vec(), "PKCS#12"),
        ("random.bin", noise, "not a certificate"),
        ("empty.pem", Vec::new(), "empty"),
        ("blank.pem", b"\n  \r\n".to_vec(), "empty"),
        ("key-only.pem", key_pem.into_bytes(), "PRIVATE KEY"),
        ("truncated.pem", half_pem, "PEM"),
    ];
    let trust = write_pem_certs(d, "root.pem", &[pki.root.cert()]);
    let pw = [("STEWARD_PFX_PASSWORD", "pw")];
    for (name, bytes, wanted) in cases {
        let file = write(d, name, &bytes);
        // The target gets a CERT-PARSE finding and exit 1...
        let run = doctor_env(s(&file), &["--trust", s(&trust)], &pw);
        let msg = run.expect("CERT-PARSE", "error");
        assert!(msg.contains(wanted), "{name}: {msg}");
        assert!(run.json()["certificate"].is_null(), "{name}");
        run.expect_code(1);
        // ...while the same bytes as the trust bundle make the check impossible: exit 2.
        let run = doctor_env(s(&file), &["--trust", s(&file)], &pw);
        assert_eq!(run.code, 2, "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains("trust bundle"),
            "{name}: {}",
            run.stderr
        );
    }
}

#[test]
fn directory_or_missing_path_exits_2_with_one_line_error() {
    let dir = tmp();
    let missing = dir.path().join("no-such-file.pfx");
    for target in [s(dir.path()), s(&missing)] {
        let run = doctor(target, &[]);
        run.expect_code(2);
        assert!(run.stdout.is_empty(), "{target}: {}", run.stdout);
        let err = run.stderr.trim_end();
        assert_eq!(
            err.lines().count(),
            1,
            "{target}: one line expected:\n{err}"
        );
        assert!(
            err.starts_with("steward: ") && err.contains(target),
            "{err}"
        );
    }
    // Bad arguments are exit 2 too.
    let run = steward(&["doctor", "cert", s(&missing), "--profile", "itms-9"]);
    run.expect_code(2);
}

#[test]
fn closed_port_endpoint_is_net_refused() {
    let target = format!("127.0.0.1:{}", closed_port());
    let run = doctor(&target, &["--timeout", "5"]);
    let msg = run.expect("NET-REFUSED", "error");
    assert!(msg.contains(&target), "{msg}");
    assert!(run.expect("CERT-PARSE", "ok").starts_with("skipped"));
    assert!(run.json()["certificate"].is_null());
    run.expect_code(1);
}

#[test]
fn plain_http_endpoint_is_tls_not_tls() {
    let server = PlainTextServer::start();
    let run = doctor(&format!("127.0.0.1:{}", server.port), &["--timeout", "5"]);
    let msg = run.expect("TLS-NOT-TLS", "error");
    assert!(msg.contains("HTTP"), "the first bytes are quoted: {msg}");
    run.expect_code(1);
}

#[test]
fn unresolvable_endpoint_is_dns_resolve() {
    let run = doctor("nonexistent.invalid:443", &["--timeout", "5"]);
    let msg = run.expect("DNS-RESOLVE", "error");
    assert!(msg.contains("nonexistent.invalid"), "{msg}");
    run.expect_code(1);
}

// ---------------------------------------------------------------------------------------------
// 10. Text output

#[test]
fn text_output_shows_the_id_error_and_fix_line() {
    let dir = tmp();
    let d = dir.path();
    let pki = StewardPki::new("Steward Issuing CA");
    let leaf = pki.leaf(&["smp.example.net"], &[]);
    let root = write_pem_certs(d, "root.pem", &[pki.root.cert()]);
    let file = write_pem_certs(d, "leaf.pem", &[&leaf.cert, pki.inter.cert()]);
    let run = steward(&[
        "doctor",
        "cert",
        s(&file),
        "--trust",
        s(&root),
        "--fqdn",
        "other.example.org",
        "--format",
        "text",
    ]);
    run.expect_code(1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("CERT-NAME-MISMATCH"))
        .unwrap_or_else(|| panic!("no CERT-NAME-MISMATCH line:\n{}", run.stdout));
    assert!(lines[at].contains("ERROR"), "{}", lines[at]);
    assert!(lines[at].contains("other.example.org"), "{}", lines[at]);
    let fix = lines.get(at + 1).copied().unwrap_or_default();
    assert!(
        fix.trim_start().starts_with("fix: "),
        "remedy line expected after:\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("FAIL: 1 error(s)"), "{}", run.stdout);
    // Text is not JSON.
    assert!(serde_json::from_str::<serde_json::Value>(&run.stdout).is_err());
}

// ---------------------------------------------------------------------------------------------
// 11. JSON shape, and thumbprints as openssl computes them

#[test]
fn json_report_has_documented_shape_and_openssl_thumbprints() {
    let dir = tmp();
    let d = dir.path();
    let pki = OpensslPki::new(d, "Shape", "sha256");
    let sans = "DNS:smp.example.net,IP:127.0.0.1";
    let leaf = pki.leaf("leaf", "smp.example.net", &server_ext(sans, ""), "sha256");
    let run = doctor(s(&leaf.cert), &["--trust", s(&pki.root)]);
    let json = run.json();
    let top: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in ["target", "certificate", "chain", "findings"] {
        assert!(top.contains(&key), "missing top-level {key}: {top:?}");
    }
    assert_eq!(json["target"], s(&leaf.cert));
    let cert = &json["certificate"];
    for key in [
        "subject",
        "issuer",
        "serial",
        "not_before",
        "not_after",
        "sans",
        "sha1",
        "sha256",
        "key",
        "signature",
    ] {
        assert!(!cert[key].is_null(), "certificate.{key} missing: {cert}");
    }
    assert_eq!(cert["subject"], "CN=smp.example.net");
    assert!(
        cert["issuer"]
            .as_str()
            .unwrap()
            .contains("Shape Issuing CA")
    );
    assert_eq!(
        cert["sans"],
        serde_json::json!(["DNS:smp.example.net", "IP:127.0.0.1"])
    );
    assert_eq!(cert["key"], "RSA 2048");
    assert_eq!(cert["signature"], "sha256WithRSAEncryption");

    // Thumbprints and serial agree with openssl's own computation.
    let sha1 = openssl_x509_field(d, &leaf.cert, "-fingerprint -sha1");
    let sha256 = openssl_x509_field(d, &leaf.cert, "-fingerprint -sha256");
    assert_eq!(cert["sha1"], sha1.as_str());
    assert_eq!(cert["sha256"], sha256.as_str());
    let serial = openssl_x509_field(d, &leaf.cert, "-serial");
    let ours = cert["serial"].as_str().unwrap();
    assert!(ours.ends_with(&serial), "{ours} vs openssl {serial}");
    // Dates are RFC 3339.
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    for key in ["not_before", "not_after"] {
        let t = cert[key].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(t, rfc3339).is_ok(),
            "{key} = {t}"
        );
    }

    // Leaf only in the file; the chain stops at the missing intermediate.
    let chain = json["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0]["sha1"], cert["sha1"]);
    assert_eq!(chain[0]["source"], "target");

    let findings = json["findings"].as_array().unwrap();
    assert!(
        findings.len() >= 20,
        "one finding per rule: {}",
        findings.len()
    );
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/diagnostics.md"),
    )
    .unwrap();
    for f in findings {
        let id = f["id"].as_str().unwrap();
        let severity = f["severity"].as_str().unwrap();
        assert!(
            ["ok", "warning", "error"].contains(&severity),
            "{id}: {severity}"
        );
        assert!(!f["message"].as_str().unwrap().is_empty(), "{id}");
        // A remedy accompanies every warning and error, and only them.
        assert_eq!(f["remedy"].is_string(), severity != "ok", "{id}: {f}");
        assert!(
            doc.contains(&format!("### {id}")),
            "{id} is not in docs/diagnostics.md"
        );
    }
    run.expect("CERT-CHAIN-INCOMPLETE", "error");
    run.expect_code(1);
}
