//! Bad bootstrap packages are named precisely, each as AGENT-PACKAGE-INVALID.

mod common;

use steward_agent::events::ids;
use steward_agent::package::{PackageError, parse_package, read_package};
use steward_proto::BootstrapPackage;

fn good() -> String {
    let pki = common::Pki::new("Package");
    let p = BootstrapPackage {
        format: BootstrapPackage::FORMAT.to_owned(),
        profile: pki.profile(4726),
        token: "s3cret-token".to_owned(),
        expires_at: "2030-01-01T00:00:00Z".to_owned(),
    };
    serde_json::to_string_pretty(&p).expect("json")
}

fn err(bytes: &[u8]) -> PackageError {
    let e = parse_package(bytes).expect_err("must be refused");
    assert_eq!(e.id(), ids::PACKAGE_INVALID);
    let line = e.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    e
}

#[test]
fn a_good_package_parses() {
    let p = parse_package(good().as_bytes()).expect("good package");
    assert_eq!(p.token, "s3cret-token");
    // A UTF-8 BOM (Windows editors) is tolerated.
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), good().as_bytes()].concat();
    parse_package(&with_bom).expect("BOM");
}

#[test]
fn every_truncation_is_called_truncated() {
    let text = good();
    // Every cut inside the document (past the opening brace, before the end) is a partial
    // copy; none may be misreported as something else, and none may panic.
    let end = text.trim_end().len();
    for cut in 1..end {
        let Some(prefix) = text.get(..cut) else {
            continue;
        };
        let e = err(prefix.as_bytes());
        assert!(
            matches!(e, PackageError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
        assert!(e.to_string().contains("truncated"));
    }
}

#[test]
fn corrupt_bytes_are_not_json() {
    let e = err(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    assert!(matches!(e, PackageError::NotJson { .. }), "{e}");
    // One damaged byte in the structure (a text converter's or a bad disk's work).
    let damaged = good().replacen(':', "#", 1);
    let e = err(damaged.as_bytes());
    assert!(matches!(e, PackageError::NotJson { .. }), "{e}");
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn empty_files_are_empty() {
    assert!(matches!(err(b""), PackageError::Empty));
    assert!(matches!(err(b" \n\t"), PackageError::Empty));
}

#[test]
fn other_json_is_foreign() {
    for doc in [
        r#"[1,2,3]"#,
        r#""a string""#,
        r#"{"name":"package.json","version":"1.0.0"}"#,
        r#"{"format":42}"#,
    ] {
        let e = err(doc.as_bytes());
        assert!(matches!(e, PackageError::Foreign(_)), "{doc}: {e}");
        assert!(e.to_string().contains("not a Steward bootstrap package"));
    }
}

#[test]
fn another_format_is_named() {
    let text = good().replace(BootstrapPackage::FORMAT, "steward-bootstrap/2");
    let e = err(text.as_bytes());
    assert!(
        matches!(&e, PackageError::WrongFormat { found, .. } if found == "steward-bootstrap/2"),
        "{e}"
    );
    assert!(e.to_string().contains("steward-bootstrap/1"));
}

#[test]
fn damage_inside_a_package_is_named() {
    let mut v: serde_json::Value = serde_json::from_str(&good()).expect("json");
    let obj = v.as_object_mut().expect("object");
    obj.remove("token");
    let e = err(v.to_string().as_bytes());
    assert!(matches!(e, PackageError::Malformed(_)), "{e}");
    assert!(e.to_string().contains("token"), "{e}");

    let mut v: serde_json::Value = serde_json::from_str(&good()).expect("json");
    v["profile"]["servers"] = serde_json::json!([]);
    assert!(matches!(
        err(v.to_string().as_bytes()),
        PackageError::NoServers
    ));

    let mut v: serde_json::Value = serde_json::from_str(&good()).expect("json");
    v["profile"]["trust_anchors_pem"] = serde_json::json!([]);
    assert!(matches!(
        err(v.to_string().as_bytes()),
        PackageError::NoTrustAnchors
    ));

    let mut v: serde_json::Value = serde_json::from_str(&good()).expect("json");
    v["profile"]["trust_anchors_pem"] = serde_json::json!([
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    ]);
    assert!(matches!(
        err(v.to_string().as_bytes()),
        PackageError::BadTrustAnchor { index: 1, .. }
    ));

    let mut v: serde_json::Value = serde_json::from_str(&good()).expect("json");
    v["profile"]["servers"][0]["port"] = serde_json::json!(0);
    assert!(matches!(
        err(v.to_string().as_bytes()),
        PackageError::BadServer { index: 1, .. }
    ));

    let mut v: serde_json::Value = serde_json::from_str(&good()).expect("json");
    v["token"] = serde_json::json!("  ");
    assert!(matches!(
        err(v.to_string().as_bytes()),
        PackageError::NoToken
    ));
}

#[test]
fn files_are_read_with_their_problems_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.json");
    assert!(matches!(read_package(&missing), Err(PackageError::Missing)));
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![b' '; 2 * 1024 * 1024]).expect("write");
    assert!(matches!(read_package(&big), Err(PackageError::TooLarge(_))));
    let ok = dir.path().join("pkg.json");
    std::fs::write(&ok, good()).expect("write");
    read_package(&ok).expect("good file");
}
