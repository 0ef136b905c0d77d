//! The plain-HTTP agent site (`[listen] protocol = "http"`): the agent routes of the HTTPS site,
//! served without TLS, where every request must prove the agent's identity by a signature and
//! every answer proves the server's.
//!
//! A request carries the agent's client certificate, the device ID, its clock, a fresh nonce
//! and a signature by the certificate's key over
//! [`steward_proto::http_sig::request_message`] (method, path and query, device, time, nonce,
//! SHA-256 of the body). It is admitted only when the certificate verifies exactly as the
//! mutual-TLS handshake would verify it (the platform root, clientAuth, both CRLs: the same
//! verifier, rebuilt at each CRL re-signing), names the device the header names, the signature
//! verifies, the clock is within [`http_sig::MAX_SKEW_SECS`] and the nonce was not seen in that
//! window. Then the request goes to the very same router as on the HTTPS site with that
//! certificate as its peer certificate: the handlers match it against the device's current (or
//! staged-renewed) certificate and refuse revoked devices, as for mutual TLS.
//!
//! Every answer — refusals included — is signed by the agent-site certificate's key over
//! [`steward_proto::http_sig::response_message`] (the request's nonce, the status, SHA-256 of
//! the body), its chain in a header, so an agent believes nothing a LAN attacker could have
//! written. Enrollment and gateway routes are not served here: they are HTTPS only.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rustls::SignatureScheme;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::SigningKey;
use rustls_pki_types::{CertificateDer, UnixTime};
use steward_proto::{
    AGENT_CERT_HEADER, AGENT_CERT_SHA256_HEADER, MAX_AGENT_BODY_BYTES, http_sig, paths,
};

use crate::ApiFailure;
use crate::http::Peer;
use crate::pki::ListenerCert;
use crate::renew::{Listener, Listeners};
use crate::service::PeerCert;

/// Nonces remembered at most; past it the oldest are dropped and requests as old as them are
/// refused, so memory stays bounded and a replay is never let through.
const NONCE_CAPACITY: usize = 1 << 20;
/// Largest client certificate header (base64 text).
const MAX_CERT_HEADER: usize = 16 * 1024;
/// Signature schemes the server signs answers with, by its key's type.
const SCHEMES: [SignatureScheme; 4] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// The routes served over plain HTTP: everything an enrolled agent does after enrollment.
const ROUTES: [&str; 4] = [paths::CHECKIN, paths::WAIT, paths::PING, paths::RENEW];

/// Marks a request admitted by a verified signature on the plain-HTTP site (an extension), so
/// the check-in can record the transport the server saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignedHttp;

/// SHA-256 of `bytes`, lower-case hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Signs with a PKCS#8 key as rustls would for TLS (ECDSA ASN.1, Ed25519, RSA PKCS#1 SHA-256),
/// the encodings `steward_pki::verify_detached` checks.
pub(crate) fn sign_with(key: &dyn SigningKey, msg: &[u8]) -> Result<Vec<u8>, String> {
    let signer = key
        .choose_scheme(&SCHEMES)
        .ok_or_else(|| format!("no signature scheme for a {:?} key", key.algorithm()))?;
    signer.sign(msg).map_err(|e| e.to_string())
}

/// Nonces seen within the clock window, oldest first.
#[derive(Debug, Default)]
struct NonceCache {
    by_time: BTreeSet<(i64, String)>,
    seen: HashSet<String>,
    /// Requests at or before this time can no longer be told from replays (their nonces were
    /// dropped for room) and are refused.
    floor: i64,
    capacity: usize,
}

impl NonceCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            floor: i64::MIN,
            ..Self::default()
        }
    }

    /// Records `nonce` sent at `time`; `Err` with the reason when it is a replay (or too old
    /// to tell).
    fn admit(&mut self, nonce: &str, time: i64, now: i64) -> Result<(), String> {
        // Outside the window the clock check refuses a request anyway.
        let oldest = now.saturating_sub(http_sig::MAX_SKEW_SECS);
        while let Some(first) = self.by_time.first().cloned() {
            if first.0 >= oldest {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&first.1);
        }
        if self.seen.contains(nonce) {
            return Err(format!(
                "nonce {nonce} was already used within the last {} s: a replayed request",
                http_sig::MAX_SKEW_SECS
            ));
        }
        if time <= self.floor {
            return Err(format!(
                "the request's time {time} is not after {}, the oldest time the server still \
                 remembers nonces for (more than {} requests in the window); send it again",
                self.floor, self.capacity
            ));
        }
        while self.by_time.len() >= self.capacity.max(1) {
            let Some(first) = self.by_time.pop_first() else {
                break;
            };
            self.seen.remove(&first.1);
            self.floor = self.floor.max(first.0);
        }
        self.by_time.insert((time, nonce.to_owned()));
        self.seen.insert(nonce.to_owned());
        Ok(())
    }
}

/// Where the answer-signing key comes from: the agent site's live certificate (it follows
/// renewals and third-party replacements), or a fixed one in tests.
#[derive(Debug)]
enum KeySource {
    Listeners(Arc<Listeners>),
    #[cfg(test)]
    Fixed(Arc<ListenerCert>),
}

/// The signing key and chain header built for one listener certificate.
struct AnswerKey {
    cert: Arc<ListenerCert>,
    key: Arc<dyn SigningKey>,
    chain_header: HeaderValue,
}

/// The plain-HTTP agent site's state.
pub(crate) struct HttpSite {
    verifier: RwLock<Arc<dyn ClientCertVerifier>>,
    issuing: CertificateDer<'static>,
    source: KeySource,
    answer_key: Mutex<Option<Arc<AnswerKey>>>,
    nonces: Mutex<NonceCache>,
}

impl std::fmt::Debug for HttpSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSite").finish_non_exhaustive()
    }
}

fn refuse(status: StatusCode, id: &'static str, message: String, peer: &str) -> ApiFailure {
    tracing::warn!(id, peer, "plain-HTTP agent request refused: {message}");
    ApiFailure::new(status, id, message)
}

impl HttpSite {
    /// `verifier`: the agent-certificate verifier of the mutual-TLS path (platform root,
    /// clientAuth, both CRLs); `issuing`: the issuing CA, the chain above agent certificates.
    pub(crate) fn new(
        verifier: Arc<dyn ClientCertVerifier>,
        issuing: CertificateDer<'static>,
        listeners: Arc<Listeners>,
    ) -> Self {
        Self::with_source(verifier, issuing, KeySource::Listeners(listeners))
    }

    fn with_source(
        verifier: Arc<dyn ClientCertVerifier>,
        issuing: CertificateDer<'static>,
        source: KeySource,
    ) -> Self {
        Self {
            verifier: RwLock::new(verifier),
            issuing,
            source,
            answer_key: Mutex::new(None),
            nonces: Mutex::new(NonceCache::new(NONCE_CAPACITY)),
        }
    }

    /// New CRLs: the verifier is replaced (the same one the mutual-TLS path uses).
    pub(crate) fn set_verifier(&self, v: Arc<dyn ClientCertVerifier>) {
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = v;
    }

    fn current_cert(&self) -> Arc<ListenerCert> {
        match &self.source {
            KeySource::Listeners(l) => l.current(Listener::Agent),
            #[cfg(test)]
            KeySource::Fixed(c) => c.clone(),
        }
    }

    /// The key for the certificate the agent site serves now (rebuilt when it changed).
    fn answer_key(&self) -> Result<Arc<AnswerKey>, String> {
        let cert = self.current_cert();
        let mut slot = self.answer_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = slot.as_ref()
            && Arc::ptr_eq(&k.cert, &cert)
        {
            return Ok(k.clone());
        }
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&cert.key)
            .map_err(|e| format!("the agent-site key cannot sign: {e}"))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let chain: Vec<String> = cert.chain.iter().map(|c| b64.encode(c)).collect();
        let chain_header = HeaderValue::from_str(&chain.join(","))
            .map_err(|e| format!("the agent-site chain as a header: {e}"))?;
        let k = Arc::new(AnswerKey {
            cert,
            key,
            chain_header,
        });
        *slot = Some(k.clone());
        Ok(k)
    }

    /// Checks a request's signature (see the module documentation); the agent's certificate
    /// when it is admitted.
    pub(crate) fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
        peer: &str,
    ) -> Result<PeerCert, ApiFailure> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(device), Some(time), Some(nonce), Some(cert), Some(signature)) = (
            text(http_sig::DEVICE),
            text(http_sig::TIME),
            text(http_sig::NONCE),
            text(http_sig::CERT),
            text(http_sig::SIGNATURE),
        ) else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "AGENT-HTTP-SIGNATURE-REQUIRED",
                format!(
                    "plain-HTTP agent requests must be signed with the agent's client \
                     certificate key (headers {}, {}, {}, {}, {}); this one is not",
                    http_sig::DEVICE,
                    http_sig::TIME,
                    http_sig::NONCE,
                    http_sig::CERT,
                    http_sig::SIGNATURE
                ),
                peer,
            ));
        };
        let invalid = |m: String| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "AGENT-HTTP-SIGNATURE-INVALID",
                m,
                peer,
            )
        };
        if nonce.len() < 16 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "the nonce {nonce:?} is not 16 to 64 hex digits"
            )));
        }
        let time: i64 = time
            .parse()
            .map_err(|_| invalid(format!("the time {time:?} is not Unix seconds")))?;
        let skew = time.saturating_sub(now);
        if skew.abs() > http_sig::MAX_SKEW_SECS {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "AGENT-HTTP-CLOCK-SKEW",
                format!(
                    "the agent's clock is {} s {} the server's (request time {time}, server \
                     time {now}; at most {} s either way is accepted): set the agent's clock \
                     (NTP)",
                    skew.abs(),
                    if skew > 0 { "ahead of" } else { "behind" },
                    http_sig::MAX_SKEW_SECS
                ),
                peer,
            ));
        }
        let cert_invalid =
            |m: String| refuse(StatusCode::FORBIDDEN, "AGENT-HTTP-CERT-INVALID", m, peer);
        if cert.len() > MAX_CERT_HEADER {
            return Err(cert_invalid(format!(
                "the {} header is larger than {MAX_CERT_HEADER} bytes",
                http_sig::CERT
            )));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(cert.trim())
            .map_err(|e| cert_invalid(format!("the client certificate is not base64: {e}")))?;
        let leaf = CertificateDer::from(der);
        let verifier = self
            .verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        verifier
            .verify_client_cert(&leaf, std::slice::from_ref(&self.issuing), UnixTime::now())
            .map_err(|e| {
                cert_invalid(format!(
                    "the client certificate is refused (as the mutual-TLS handshake would \
                     refuse it): {e}"
                ))
            })?;
        let agent = PeerCert::from_der(&leaf)
            .ok_or_else(|| cert_invalid("the client certificate does not parse".to_owned()))?;
        if agent.common_name.as_deref() != Some(device) {
            return Err(invalid(format!(
                "the request names device {device} but its certificate (serial {}) belongs to \
                 {}",
                agent.serial,
                agent.common_name.as_deref().unwrap_or("no device (no CN)")
            )));
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|e| invalid(format!("the signature is not base64: {e}")))?;
        let msg = http_sig::request_message(
            method,
            path_and_query,
            device,
            time,
            nonce,
            &sha256_hex(body),
        );
        if !steward_pki::verify_detached(&leaf, &msg, &sig) {
            return Err(invalid(format!(
                "the signature of {method} {path_and_query} does not verify with the key of \
                 device {device}'s certificate (serial {}): the request was altered, or signed \
                 with another key",
                agent.serial
            )));
        }
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(nonce, time, now)
            .map_err(|m| refuse(StatusCode::UNAUTHORIZED, "AGENT-HTTP-REPLAY", m, peer))?;
        Ok(agent)
    }

    /// Signs an answer to the request that carried `nonce` (empty when it carried none).
    pub(crate) async fn sign(&self, response: Response, nonce: &str) -> Response {
        let (mut parts, body) = response.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return ApiFailure::internal("reading the answer to sign it", e).into_response();
            }
        };
        let signed = self.answer_key().and_then(|k| {
            let msg = http_sig::response_message(nonce, parts.status.as_u16(), &sha256_hex(&bytes));
            let sig = sign_with(k.key.as_ref(), &msg)?;
            Ok((k, sig))
        });
        match signed {
            Ok((k, sig)) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
                if let Ok(v) = HeaderValue::from_str(&b64) {
                    parts.headers.insert(http_sig::RESPONSE_SIGNATURE, v);
                }
                parts
                    .headers
                    .insert(http_sig::RESPONSE_CHAIN, k.chain_header.clone());
                Response::from_parts(parts, Body::from(bytes))
            }
            Err(e) => ApiFailure::internal("signing an answer on the plain-HTTP agent site", e)
                .into_response(),
        }
    }
}

/// Reads the whole body (bounded like every agent request).
async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiFailure> {
    match Limited::new(body, MAX_AGENT_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "REQUEST-TOO-LARGE",
            format!("the request body is larger than {MAX_AGENT_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(ApiFailure::bad_request(
            "REQUEST-MALFORMED",
            format!("the request body could not be read: {e}"),
        )),
    }
}

/// Admits a request: the route is one served here, no gateway header, the signature holds.
async fn admit(site: &HttpSite, req: Request) -> Result<Request, ApiFailure> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let peer = parts.extensions.get::<Peer>().cloned();
    let who = peer
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |p| p.addr.to_string());
    if !ROUTES.contains(&path.as_str()) {
        let why = if path == paths::ENROLL || path == paths::ENROLL_KERBEROS {
            "enrollment is served over HTTPS only (the token and the CSR must not cross the \
             LAN in clear); enroll against the HTTPS agent site the package names"
        } else if path.starts_with("/gateway/") {
            "gateway routes are served over HTTPS only (gateways always use mutual TLS)"
        } else {
            "no such route on the plain-HTTP agent site"
        };
        let status = if path.starts_with("/agent/") || path.starts_with("/gateway/") {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::NOT_FOUND
        };
        return Err(refuse(
            status,
            "AGENT-HTTP-ROUTE-REFUSED",
            format!("{path}: {why}"),
            &who,
        ));
    }
    if let Some(h) = [AGENT_CERT_HEADER, AGENT_CERT_SHA256_HEADER]
        .into_iter()
        .find(|h| parts.headers.contains_key(*h))
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "AGENT-HTTP-ROUTE-REFUSED",
            format!(
                "{h} on the plain-HTTP agent site: gateways always use the HTTPS agent site \
                 with mutual TLS"
            ),
            &who,
        ));
    }
    let bytes = read_body(body).await?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_owned());
    let agent = site.verify(
        parts.method.as_str(),
        &path_and_query,
        &parts.headers,
        &bytes,
        crate::service::now(),
        &who,
    )?;
    let peer = match peer {
        Some(p) => Peer {
            cert: Some(Arc::new(agent)),
            ..p
        },
        None => {
            return Err(ApiFailure::internal(
                "admitting a request",
                "no peer address",
            ));
        }
    };
    parts.extensions.insert(peer);
    parts.extensions.insert(SignedHttp);
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The middleware of the plain-HTTP agent site: admit, route, sign the answer.
pub(crate) async fn layer(State(site): State<Arc<HttpSite>>, req: Request, next: Next) -> Response {
    let nonce = req
        .headers()
        .get(http_sig::NONCE)
        .and_then(|v| v.to_str().ok())
        .filter(|n| n.len() <= 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_owned();
    let response = match admit(&site, req).await {
        Ok(req) => next.run(req).await,
        Err(f) => f.into_response(),
    };
    site.sign(response, &nonce).await
}

/// The plain-HTTP agent site's router: the HTTPS site's routes behind [`layer`].
pub(crate) fn router(service: Arc<crate::Service>, site: Arc<HttpSite>) -> axum::Router {
    crate::agent::router(service).layer(axum::middleware::from_fn_with_state(site, layer))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::DataDir;
    use crate::pki::Pki;
    use crate::tls::forwarded_verifier;
    use steward_pki::{CertFacts, LeafRequest, OffsetDateTime, Usage};

    struct Fx {
        _dir: tempfile::TempDir,
        pki: Pki,
        site: HttpSite,
        cert: CertificateDer<'static>,
        key: Arc<dyn SigningKey>,
        serial: String,
    }

    fn issue(pki: &Pki, cn: &str) -> (CertificateDer<'static>, Arc<dyn SigningKey>) {
        let now = OffsetDateTime::now_utc();
        let issued = pki
            .issuing
            .issue(&LeafRequest {
                common_name: cn.into(),
                dns_names: vec![],
                ip_addrs: vec![],
                usage: Usage::Client,
                not_before: now - time::Duration::hours(1),
                not_after: now + time::Duration::days(30),
                crl_urls: vec!["http://localhost:4728/crl/issuing.crl".into()],
                key: steward_pki::KeySpec::EcdsaP256,
            })
            .unwrap();
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(
            &rustls_pki_types::PrivateKeyDer::Pkcs8(issued.key_pkcs8.into()),
        )
        .unwrap();
        (issued.cert, key)
    }

    async fn fixture(revoked: bool) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut opts = crate::InitOptions::new(&data, vec!["localhost".into()]);
        opts.admin_password = Some("correct horse battery".into());
        crate::init(opts).await.unwrap();
        let dd = DataDir::new(&data);
        let pki = Pki::load(&dd).unwrap();
        let (cert, key) = issue(&pki, "device-1");
        let serial = CertFacts::from_der(&cert).unwrap().serial;
        let listed = if revoked {
            vec![(
                serial.clone(),
                OffsetDateTime::now_utc().unix_timestamp() - 60,
            )]
        } else {
            vec![]
        };
        let crls = pki
            .sign_crls(
                &listed,
                OffsetDateTime::now_utc(),
                time::Duration::hours(1),
                1,
            )
            .unwrap();
        let listener =
            Arc::new(ListenerCert::load(&dd.agent_cert(), &dd.agent_key(), &pki).unwrap());
        let site = HttpSite::with_source(
            forwarded_verifier(&pki, &crls).unwrap(),
            pki.issuing.cert().clone(),
            KeySource::Fixed(listener),
        );
        Fx {
            _dir: dir,
            pki,
            site,
            cert,
            key,
            serial,
        }
    }

    fn signed(
        cert: &CertificateDer<'_>,
        key: &dyn SigningKey,
        device: &str,
        path: &str,
        body: &[u8],
        time: i64,
        nonce: &str,
    ) -> HeaderMap {
        let b64 = base64::engine::general_purpose::STANDARD;
        let msg = http_sig::request_message("POST", path, device, time, nonce, &sha256_hex(body));
        let sig = sign_with(key, &msg).unwrap();
        let mut h = HeaderMap::new();
        h.insert(http_sig::DEVICE, device.parse().unwrap());
        h.insert(http_sig::TIME, time.to_string().parse().unwrap());
        h.insert(http_sig::NONCE, nonce.parse().unwrap());
        h.insert(http_sig::CERT, b64.encode(cert).parse().unwrap());
        h.insert(http_sig::SIGNATURE, b64.encode(sig).parse().unwrap());
        h
    }

    const N1: &str = "00112233445566778899aabbccddeeff";
    const N2: &str = "ffeeddccbbaa99887766554433221100";

    #[tokio::test]
    async fn signed_requests_are_admitted_and_tampering_replay_skew_and_revocation_refused() {
        let fx = fixture(false).await;
        let now = crate::service::now();
        let body = br#"{"x":1}"#;
        let path = "/agent/v1/checkin";
        let h = signed(&fx.cert, fx.key.as_ref(), "device-1", path, body, now, N1);
        let who = "192.0.2.1:5";
        let ok = fx.site.verify("POST", path, &h, body, now, who).unwrap();
        assert_eq!(ok.common_name.as_deref(), Some("device-1"));
        assert_eq!(ok.serial, fx.serial);

        // The same request again: a replay.
        let e = fx
            .site
            .verify("POST", path, &h, body, now, who)
            .unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-REPLAY", "{e}");

        // A tampered body, path or method.
        let h = signed(&fx.cert, fx.key.as_ref(), "device-1", path, body, now, N2);
        let e = fx
            .site
            .verify("POST", path, &h, br#"{"x":2}"#, now, who)
            .unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-SIGNATURE-INVALID", "{e}");
        let e = fx
            .site
            .verify("POST", "/agent/v1/renew", &h, body, now, who)
            .unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-SIGNATURE-INVALID", "{e}");
        let e = fx.site.verify("GET", path, &h, body, now, who).unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-SIGNATURE-INVALID", "{e}");

        // Signed with another key than the certificate's.
        let (_, other_key) = issue(&fx.pki, "device-2");
        let h = signed(
            &fx.cert,
            other_key.as_ref(),
            "device-1",
            path,
            body,
            now,
            N2,
        );
        let e = fx
            .site
            .verify("POST", path, &h, body, now, who)
            .unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-SIGNATURE-INVALID", "{e}");

        // Naming another device than the certificate's.
        let h = signed(&fx.cert, fx.key.as_ref(), "device-9", path, body, now, N2);
        let e = fx
            .site
            .verify("POST", path, &h, body, now, who)
            .unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-SIGNATURE-INVALID", "{e}");

        // Clock skew, named.
        let h = signed(
            &fx.cert,
            fx.key.as_ref(),
            "device-1",
            path,
            body,
            now - 400,
            N2,
        );
        let e = fx
            .site
            .verify("POST", path, &h, body, now, who)
            .unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-CLOCK-SKEW", "{e}");
        assert!(e.message.contains("400 s behind"), "{e}");

        // No signature at all.
        let e = fx
            .site
            .verify("POST", path, &HeaderMap::new(), body, now, who)
            .unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-SIGNATURE-REQUIRED", "{e}");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);

        // The fresh nonce of a valid request still passes after all these refusals.
        let h = signed(&fx.cert, fx.key.as_ref(), "device-1", path, body, now, N2);
        assert!(fx.site.verify("POST", path, &h, body, now, who).is_ok());
    }

    #[tokio::test]
    async fn a_revoked_certificate_is_refused() {
        let fx = fixture(true).await;
        let now = crate::service::now();
        let path = "/agent/v1/ping";
        let h = signed(&fx.cert, fx.key.as_ref(), "device-1", path, b"", now, N1);
        let e = fx.site.verify("POST", path, &h, b"", now, "x").unwrap_err();
        assert_eq!(e.id, "AGENT-HTTP-CERT-INVALID", "{e}");
        assert!(e.message.contains("Revoked"), "{e}");
    }

    #[tokio::test]
    async fn answers_are_signed_by_the_agent_site_key_and_bound_to_the_nonce() {
        let fx = fixture(false).await;
        let resp = (StatusCode::OK, "{\"ok\":true}").into_response();
        let resp = fx.site.sign(resp, N1).await;
        let chain = resp.headers()[http_sig::RESPONSE_CHAIN]
            .to_str()
            .unwrap()
            .to_owned();
        let sig = resp.headers()[http_sig::RESPONSE_SIGNATURE]
            .to_str()
            .unwrap()
            .to_owned();
        let b64 = base64::engine::general_purpose::STANDARD;
        let leaf = b64.decode(chain.split(',').next().unwrap()).unwrap();
        let sig = b64.decode(sig).unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let msg = http_sig::response_message(N1, 200, &sha256_hex(&body));
        assert!(steward_pki::verify_detached(&leaf, &msg, &sig));
        // Another nonce, status or body does not verify.
        let other = http_sig::response_message(N2, 200, &sha256_hex(&body));
        assert!(!steward_pki::verify_detached(&leaf, &other, &sig));
        let other = http_sig::response_message(N1, 204, &sha256_hex(&body));
        assert!(!steward_pki::verify_detached(&leaf, &other, &sig));
        let other = http_sig::response_message(N1, 200, &sha256_hex(b"{}"));
        assert!(!steward_pki::verify_detached(&leaf, &other, &sig));
    }

    #[test]
    fn the_nonce_cache_is_bounded_and_never_lets_a_replay_through() {
        let mut c = NonceCache::new(2);
        assert!(c.admit("a", 100, 100).is_ok());
        assert!(c.admit("a", 100, 100).is_err());
        assert!(c.admit("b", 101, 101).is_ok());
        // Full: "a" (time 100) is dropped, and time 100 becomes too old to tell.
        assert!(c.admit("c", 102, 102).is_ok());
        assert!(c.admit("a", 100, 102).is_err());
        assert!(c.admit("d", 100, 102).is_err());
        // Expired entries leave with the window.
        let later = 102 + http_sig::MAX_SKEW_SECS + 5;
        assert!(c.admit("e", later, later).is_ok());
        assert_eq!(c.by_time.len(), 1);
    }
}
