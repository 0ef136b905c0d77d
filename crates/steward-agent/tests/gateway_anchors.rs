//! A gateway with a third-party certificate: the agent accepts its chain against the roots its
//! profile entry carries (and only for that gateway), and still only with a listed thumbprint.
//! Real rustls servers on 127.0.0.1 with certificates from two separate test CAs.

mod common;

use std::time::Duration;

use common::{Pki, server_config, tls_server};
use steward_agent::events::ids;
use steward_agent::net::{Connector, Fault};
use steward_pki::Thumbprint;
use steward_proto::{FailureKind, GatewayEntry};

fn timed(mut c: Connector) -> Connector {
    c.timeouts.connect = Duration::from_secs(5);
    c.timeouts.handshake = Duration::from_secs(5);
    c
}

#[tokio::test]
async fn a_third_party_rooted_gateway_is_accepted_only_with_its_roots_and_a_listed_thumbprint() {
    let platform = Pki::new("Platform");
    let third = Pki::new("Commercial");
    let leaf = third.good_leaf();
    let sha256 = Thumbprint::of(&leaf.cert).sha256_hex();
    let (port, _server) = tls_server(server_config(&third, &leaf, None)).await;
    let mut profile = platform.profile(port);
    let entry = GatewayEntry {
        name: "gw-1".to_owned(),
        host: "127.0.0.1".to_owned(),
        port,
        thumbprints: vec!["00".repeat(32), sha256.to_lowercase()],
        trust_anchors_pem: vec![third.root_pem()],
    };
    profile.gateways = vec![entry.clone()];

    // Its own roots and a listed thumbprint (any case): accepted.
    let gw = timed(Connector::for_gateway(&profile, &entry, None, Vec::new()).expect("connector"));
    let conn = gw
        .connect_gateway(&entry)
        .await
        .expect("the gateway is accepted");
    assert_eq!(conn.peer_sha256(), Some(sha256.as_str()));

    // The same roots, but the certificate is not among the listed ones: refused as WrongPeer.
    let unlisted = GatewayEntry {
        thumbprints: vec!["AB".repeat(32)],
        ..entry.clone()
    };
    let f = Connector::for_gateway(&profile, &unlisted, None, Vec::new())
        .map(timed)
        .expect("connector")
        .connect_gateway(&unlisted)
        .await
        .expect_err("thumbprint not listed");
    assert_eq!(f.id(), ids::GATEWAY_THUMBPRINT, "{f}");
    assert_eq!(f.kind(), FailureKind::WrongPeer);
    assert!(matches!(&f, Fault::GatewayThumbprint { presented, .. } if *presented == sha256));

    // Without the entry's roots the chain itself is untrusted, thumbprint or not.
    let bare = GatewayEntry {
        trust_anchors_pem: Vec::new(),
        ..entry.clone()
    };
    let f = Connector::for_gateway(&profile, &bare, None, Vec::new())
        .map(timed)
        .expect("connector")
        .connect_gateway(&bare)
        .await
        .expect_err("untrusted");
    assert_eq!(f.id(), ids::TLS_UNTRUSTED, "{f}");
    assert_eq!(f.kind(), FailureKind::Tls);

    // LAN servers are unaffected: the profile's connector never trusts a gateway's extra root.
    let lan = timed(Connector::new(&profile, None, Vec::new()).expect("connector"));
    let f = lan
        .connect(&profile.servers[0])
        .await
        .expect_err("the LAN connector trusts the platform root only");
    assert_eq!(f.id(), ids::TLS_UNTRUSTED, "{f}");
}
