//! The KDC probe against real MIT KDCs on loopback: one with this machine's clock, one
//! started under `faketime` fifteen minutes ahead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use steward_kerberos::probe::{KdcProbeError, probe_kdc, read_krb5_conf};
use steward_kerberos::testkdc::TestKdc;

#[test]
fn the_probe_reads_the_kdc_clock_and_names_an_unreachable_kdc() {
    let kdc = TestKdc::start("PROBE.TEST", None).expect("KDC starts");
    let conf = read_krb5_conf(&kdc.krb5_conf());
    assert_eq!(conf.default_realm.as_deref(), Some("PROBE.TEST"));
    let clock = probe_kdc(&conf, "PROBE.TEST", Duration::from_secs(5)).expect("KDC answers");
    assert_eq!(
        clock.error_code, 6,
        "the probe principal is unknown, as intended"
    );
    assert!(clock.skew_secs().abs() <= 2, "{clock:?}");

    let skewed = TestKdc::start("SKEW.TEST", Some("+15m")).expect("skewed KDC starts");
    let conf = read_krb5_conf(&skewed.krb5_conf());
    let clock = probe_kdc(&conf, "SKEW.TEST", Duration::from_secs(5)).expect("KDC answers");
    assert!(
        (880..=920).contains(&clock.skew_secs()),
        "the KDC runs 15 minutes ahead: {clock:?}"
    );

    let addr = skewed.addr();
    drop(skewed);
    let mut conf = conf;
    conf.kdcs = vec![("SKEW.TEST".into(), addr.to_string())];
    match probe_kdc(&conf, "SKEW.TEST", Duration::from_secs(2)) {
        Err(KdcProbeError::Unreachable(why)) => assert!(why.contains(&addr.to_string()), "{why}"),
        other => panic!("a stopped KDC must be unreachable: {other:?}"),
    }
}
