//! Plain HTTP on the LAN (`protocol: http` in the profile): what replaces mutual TLS.
//!
//! Every request is signed with the agent's client-certificate key over
//! [`steward_proto::http_sig::request_message`] (method, path and query, device, time, a fresh
//! nonce, SHA-256 of the body) and carries the certificate, so the server checks the same
//! identity the TLS handshake would have shown it. Every answer must carry the agent site's
//! certificate chain and its key's signature over
//! [`steward_proto::http_sig::response_message`] (this request's nonce, the status, SHA-256 of
//! the body); the chain is verified exactly as a TLS server certificate would be (the
//! profile's trust anchors, the name dialled, validity, serverAuth) before anything in the
//! answer is believed. An answer that does not verify is `AGENT-HTTP-RESPONSE-UNVERIFIED`,
//! and the agent falls back to the server's HTTPS port.

use std::sync::Arc;

use base64::Engine;
use hyper::HeaderMap;
use rustls::SignatureScheme;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::SigningKey;
use steward_pki::CertFacts;
use steward_proto::http_sig;

/// Schemes the agent signs with, by its key's type (the encodings
/// `steward_pki::verify_detached` checks on the server).
const SCHEMES: [SignatureScheme; 4] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// Largest answer-chain header the agent reads (base64 text).
const MAX_CHAIN_HEADER: usize = 64 * 1024;

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A fresh nonce: 16 random bytes, hex.
fn nonce() -> String {
    use std::fmt::Write as _;
    let mut b = [0u8; 16];
    // The system RNG does not fail on supported platforms; a zero nonce would only be refused
    // as a replay by the server, never accepted twice.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().fold(String::with_capacity(32), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The agent's signing identity for plain HTTP, and the verifier for the server's answers.
pub struct HttpSigner {
    signer: SignOnly,
    verifier: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for HttpSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSigner")
            .field("device_id", &self.signer.device_id)
            .finish_non_exhaustive()
    }
}

/// One signed request's headers and the nonce its answer must be bound to.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    /// Header name and value, in order.
    pub headers: Vec<(&'static str, String)>,
    /// The nonce.
    pub nonce: String,
}

impl HttpSigner {
    /// From the client certificate (leaf first) and its key; `verifier` is the one the TLS
    /// connector uses for the server's certificate (the profile's anchors).
    pub fn new(
        chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'static>,
        verifier: Arc<WebPkiServerVerifier>,
    ) -> Result<Self, String> {
        let leaf = chain.first().ok_or("no client certificate")?;
        let facts = CertFacts::from_der(leaf)?;
        let device_id = facts
            .common_names
            .first()
            .cloned()
            .ok_or("the client certificate names no device (no CN)")?;
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(key)
            .map_err(|e| format!("the key cannot sign: {e}"))?;
        Ok(Self {
            signer: SignOnly {
                device_id,
                cert_b64: base64::engine::general_purpose::STANDARD.encode(leaf),
                key,
            },
            verifier,
        })
    }

    /// Signs one request made now.
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<SignedHeaders, String> {
        self.signer.sign_at(
            method,
            path_and_query,
            body,
            time::OffsetDateTime::now_utc().unix_timestamp(),
            nonce(),
        )
    }

    /// Verifies an answer: the chain it names is a valid server certificate for `name` under
    /// the profile's anchors, and its key signed this nonce, status and body.
    pub fn verify_response(
        &self,
        nonce: &str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        name: &ServerName<'_>,
    ) -> Result<(), String> {
        let text = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
        let (Some(chain), Some(sig)) = (
            text(http_sig::RESPONSE_CHAIN),
            text(http_sig::RESPONSE_SIGNATURE),
        ) else {
            return Err(format!(
                "the answer (HTTP {status}) is not signed (no {} and {} headers): not a Steward \
                 agent site, or something on the way altered it",
                http_sig::RESPONSE_SIGNATURE,
                http_sig::RESPONSE_CHAIN
            ));
        };
        if chain.len() > MAX_CHAIN_HEADER {
            return Err(format!(
                "the answer's certificate chain header is over {MAX_CHAIN_HEADER} bytes"
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let certs: Vec<CertificateDer<'static>> = chain
            .split(',')
            .map(|c| b64.decode(c.trim()).map(CertificateDer::from))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the answer's certificate chain is not base64: {e}"))?;
        let (leaf, intermediates) = certs
            .split_first()
            .ok_or("the answer's certificate chain is empty")?;
        self.verifier
            .verify_server_cert(leaf, intermediates, name, &[], UnixTime::now())
            .map_err(|e| {
                format!(
                    "the certificate that signed the answer is not the agent site's as the \
                     profile trusts it: {e}"
                )
            })?;
        let sig = b64
            .decode(sig.trim())
            .map_err(|e| format!("the answer's signature is not base64: {e}"))?;
        let msg = http_sig::response_message(nonce, status, &sha256_hex(body));
        if !steward_pki::verify_detached(leaf, &msg, &sig) {
            return Err(format!(
                "the answer's signature (HTTP {status}, {} bytes) does not verify with the agent \
                 site's key: it was altered, or is not the answer to this request",
                body.len()
            ));
        }
        Ok(())
    }
}

/// Signs one request as the agent with this identity would (PEM certificate, PKCS#8 PEM
/// key): for tools and tests that speak to the plain-HTTP agent site from outside the agent.
pub fn sign_once(
    cert_pem: &str,
    key_pem: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<SignedHeaders, String> {
    let chain = crate::net::parse_certs(cert_pem)?;
    let block = pem::parse(key_pem).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(block.into_contents().into());
    let leaf = chain.first().ok_or("no certificate")?;
    let device_id = CertFacts::from_der(leaf)?
        .common_names
        .first()
        .cloned()
        .ok_or("the certificate names no device (no CN)")?;
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("the key cannot sign: {e}"))?;
    let signer = SignOnly {
        device_id,
        cert_b64: base64::engine::general_purpose::STANDARD.encode(leaf),
        key,
    };
    signer.sign_at(
        method,
        path_and_query,
        body,
        time::OffsetDateTime::now_utc().unix_timestamp(),
        nonce(),
    )
}

/// The signing half of [`HttpSigner`].
struct SignOnly {
    device_id: String,
    cert_b64: String,
    key: Arc<dyn SigningKey>,
}

impl SignOnly {
    fn sign_at(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        time: i64,
        nonce: String,
    ) -> Result<SignedHeaders, String> {
        let msg = http_sig::request_message(
            method,
            path_and_query,
            &self.device_id,
            time,
            &nonce,
            &sha256_hex(body),
        );
        let signer = self
            .key
            .choose_scheme(&SCHEMES)
            .ok_or_else(|| format!("no signature scheme for a {:?} key", self.key.algorithm()))?;
        let sig = signer.sign(&msg).map_err(|e| e.to_string())?;
        Ok(SignedHeaders {
            headers: vec![
                (http_sig::DEVICE, self.device_id.clone()),
                (http_sig::TIME, time.to_string()),
                (http_sig::NONCE, nonce.clone()),
                (http_sig::CERT, self.cert_b64.clone()),
                (
                    http_sig::SIGNATURE,
                    base64::engine::general_purpose::STANDARD.encode(sig),
                ),
            ],
            nonce,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustls::RootCertStore;
    use steward_pki::{Authority, KeySpec, LeafRequest, OffsetDateTime, Usage};

    fn ca() -> Authority {
        let now = OffsetDateTime::now_utc();
        Authority::new_root(
            "Test Root",
            KeySpec::EcdsaP256,
            now - time::Duration::hours(1),
            now + time::Duration::days(30),
        )
        .unwrap()
    }

    fn leaf(ca: &Authority, cn: &str, usage: Usage) -> (CertificateDer<'static>, Vec<u8>) {
        let now = OffsetDateTime::now_utc();
        let i = ca
            .issue(&LeafRequest {
                common_name: cn.into(),
                dns_names: vec!["localhost".into()],
                ip_addrs: vec![],
                usage,
                not_before: now - time::Duration::hours(1),
                not_after: now + time::Duration::days(30),
                crl_urls: vec![],
                key: KeySpec::EcdsaP256,
            })
            .unwrap();
        (i.cert, i.key_pkcs8)
    }

    fn verifier(root: &Authority) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(root.cert().clone()).unwrap();
        WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap()
    }

    fn signer_for(root: &Authority, cn: &str) -> HttpSigner {
        let (cert, key) = leaf(root, cn, Usage::Client);
        HttpSigner::new(&[cert], &PrivateKeyDer::Pkcs8(key.into()), verifier(root)).unwrap()
    }

    /// An answer as the server signs it.
    fn answer(
        cert: &CertificateDer<'_>,
        key: &[u8],
        nonce: &str,
        status: u16,
        body: &[u8],
    ) -> HeaderMap {
        let k = rustls::crypto::aws_lc_rs::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            key.to_vec().into(),
        ))
        .unwrap();
        let msg = http_sig::response_message(nonce, status, &sha256_hex(body));
        let sig = k.choose_scheme(&SCHEMES).unwrap().sign(&msg).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut h = HeaderMap::new();
        h.insert(http_sig::RESPONSE_CHAIN, b64.encode(cert).parse().unwrap());
        h.insert(
            http_sig::RESPONSE_SIGNATURE,
            b64.encode(sig).parse().unwrap(),
        );
        h
    }

    #[test]
    fn requests_carry_the_device_a_fresh_nonce_and_a_verifiable_signature() {
        let root = ca();
        let (cert, key) = leaf(&root, "device-1", Usage::Client);
        let s = HttpSigner::new(
            std::slice::from_ref(&cert),
            &PrivateKeyDer::Pkcs8(key.into()),
            verifier(&root),
        )
        .unwrap();
        let a = s.sign("POST", "/agent/v1/checkin", b"{}").unwrap();
        let b = s.sign("POST", "/agent/v1/checkin", b"{}").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), 32);
        let get = |h: &SignedHeaders, n: &str| {
            h.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(&a, http_sig::DEVICE), "device-1");
        let time: i64 = get(&a, http_sig::TIME).parse().unwrap();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(get(&a, http_sig::SIGNATURE))
            .unwrap();
        let msg = http_sig::request_message(
            "POST",
            "/agent/v1/checkin",
            "device-1",
            time,
            &a.nonce,
            &sha256_hex(b"{}"),
        );
        assert!(steward_pki::verify_detached(&cert, &msg, &sig));
        let tampered = http_sig::request_message(
            "POST",
            "/agent/v1/checkin",
            "device-1",
            time,
            &a.nonce,
            &sha256_hex(b"{\"x\":1}"),
        );
        assert!(!steward_pki::verify_detached(&cert, &tampered, &sig));
    }

    #[test]
    fn answers_are_believed_only_when_the_agent_site_signed_them_for_this_request() {
        let root = ca();
        let s = signer_for(&root, "device-1");
        let (site, site_key) = leaf(&root, "localhost", Usage::Server);
        let name = ServerName::try_from("localhost").unwrap();
        let nonce = "00112233445566778899aabbccddeeff";
        let body = br#"{"tasks":[]}"#;
        let h = answer(&site, &site_key, nonce, 200, body);
        assert!(s.verify_response(nonce, 200, &h, body, &name).is_ok());

        // Injected or altered: another body, status or nonce.
        let e = s
            .verify_response(nonce, 200, &h, br#"{"tasks":[1]}"#, &name)
            .unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        assert!(s.verify_response(nonce, 204, &h, body, &name).is_err());
        assert!(
            s.verify_response("ffeeddccbbaa99887766554433221100", 200, &h, body, &name)
                .is_err()
        );
        // Unsigned.
        let e = s
            .verify_response(nonce, 200, &HeaderMap::new(), body, &name)
            .unwrap_err();
        assert!(e.contains("not signed"), "{e}");
        // Signed by a certificate of another root (an attacker's own CA).
        let other = ca();
        let (evil, evil_key) = leaf(&other, "localhost", Usage::Server);
        let h = answer(&evil, &evil_key, nonce, 200, body);
        let e = s.verify_response(nonce, 200, &h, body, &name).unwrap_err();
        assert!(e.contains("not the agent site's"), "{e}");
        // A certificate of the right root but for another name, or a client certificate.
        let other_name = ServerName::try_from("other.example.net").unwrap();
        let h = answer(&site, &site_key, nonce, 200, body);
        assert!(
            s.verify_response(nonce, 200, &h, body, &other_name)
                .is_err()
        );
        let (client, client_key) = leaf(&root, "device-2", Usage::Client);
        let h = answer(&client, &client_key, nonce, 200, body);
        assert!(s.verify_response(nonce, 200, &h, body, &name).is_err());
    }
}
