//! Capturing the certificate chain a TLS server really sends, without trusting it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::net::{connect, resolve, within};
use crate::{ProbeError, Stage};

/// What a TLS server presented during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChain {
    /// The address the handshake was made with (the first resolved address that accepted).
    pub addr: SocketAddr,
    /// The certificates exactly as the server sent them, leaf first. Not validated: the chain
    /// may be incomplete, out of order, expired or untrusted, and that is for the doctor to say.
    pub certs: Vec<CertificateDer<'static>>,
    /// The negotiated protocol version as rustls names it, e.g. `TLSv1_3`, `TLSv1_2`.
    pub protocol: String,
    /// The negotiated cipher suite as rustls names it, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// `Some` when the server asked for a client certificate (the probe never presents one).
    pub client_auth: Option<ClientAuthRequest>,
}

/// A server's request for a client certificate, seen during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthRequest {
    /// The CAs the server said it accepts client certificates from, each a DER-encoded X.501
    /// `Name` as sent in the CertificateRequest (decode with x509-parser's `X509Name`). Empty
    /// when the server named none.
    pub acceptable_issuers: Vec<Vec<u8>>,
    /// Whether the server then rejected the connection for the missing certificate, in words.
    ///
    /// With TLS 1.3 the client finishes its side of the handshake before the server judges the
    /// (empty) client certificate, so a rejection only arrives after the handshake: the probe
    /// waits briefly for it and records it here. `None` means no rejection arrived within that
    /// wait (the server may accept anonymous clients, or be slow to say no). With TLS 1.2 a
    /// rejection fails the handshake itself and comes back as [`ProbeError::Tls`] instead.
    pub rejected: Option<String>,
}

/// Longest wait for a TLS 1.3 server's post-handshake verdict on the missing client
/// certificate. One round trip is enough on any sane network; capped so a server that accepts
/// anonymous clients does not cost the caller a whole timeout.
const CLIENT_AUTH_VERDICT_WAIT: Duration = Duration::from_secs(1);

/// Longest wait for sending close_notify after a successful probe.
const CLOSE_WAIT: Duration = Duration::from_millis(200);

/// How many of the peer's first bytes to keep: enough to quote an HTTP status line or an SSH
/// banner when the peer turns out not to speak TLS.
const KEEP_FIRST_BYTES: usize = 64;

/// Connect to `host:port`, do a TLS handshake with SNI (`None` sends no SNI, as for IP
/// literals), and return the certificate chain the server sent, leaf first, with the negotiated
/// protocol version and cipher suite.
///
/// The chain is captured without trusting it — trust is judged later by the doctor — but the
/// server's handshake signature is still verified against the leaf's key, so a returned chain
/// proves the peer holds that key. TLS 1.2 and 1.3 are offered. `timeout` applies separately to
/// name resolution, to each connection attempt, and to the handshake.
///
/// The probe never presents a client certificate. If the server asks for one, that is recorded
/// in [`PeerChain::client_auth`]; a server that insists fails a TLS 1.2 handshake
/// ([`ProbeError::Tls`], naming the request), while with TLS 1.3 the chain is still returned and
/// the server's post-handshake rejection is recorded (see [`ClientAuthRequest::rejected`]).
pub async fn fetch_chain(
    host: &str,
    port: u16,
    sni: Option<&str>,
    timeout: Duration,
) -> Result<PeerChain, ProbeError> {
    // Checked before any network traffic, so a bad name is an input error, not a TLS one.
    let sni_name = sni
        .map(|name| {
            ServerName::try_from(name.to_owned()).map_err(|e| {
                ProbeError::InvalidTarget(format!("{name:?} cannot be sent as an SNI name: {e}"))
            })
        })
        .transpose()?;
    if port == 0 {
        return Err(ProbeError::InvalidTarget(format!(
            "{host}:0: port 0 is not a port a service listens on"
        )));
    }
    let addrs = resolve(host, port, timeout).await?;
    let (tcp, addr) = connect(&addrs, timeout).await?;
    // rustls sends no SNI for an IP-address server name, which is what `None` asks for.
    let server_name = sni_name.unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    handshake(tcp, addr, server_name, timeout).await
}

pub(crate) async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    timeout: Duration,
) -> Result<PeerChain, ProbeError> {
    let shown = addr.to_string();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let evidence = Arc::new(Evidence::default());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ProbeError::Tls {
            addr: shown.clone(),
            detail: format!("the TLS client cannot be configured: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaptureChain {
            provider,
            evidence: evidence.clone(),
        }))
        .with_client_cert_resolver(Arc::new(NoteClientAuth {
            evidence: evidence.clone(),
        }));
    let connector = TlsConnector::from(Arc::new(config));
    let io = Recording {
        inner: tcp,
        first: Vec::new(),
    };
    let attempt = within(
        Stage::Handshake,
        &shown,
        timeout,
        connector.connect(server_name, io).into_fallible(),
    )
    .await?;
    let mut tls = match attempt {
        Ok(tls) => tls,
        Err((e, io)) => return Err(classify_handshake(&shown, &e, &io.first, &evidence)),
    };

    let (_, conn) = tls.get_ref();
    let protocol = match conn.protocol_version() {
        Some(v) => v.as_str().map_or_else(|| format!("{v:?}"), str::to_owned),
        None => "unknown".to_owned(),
    };
    let cipher_suite = match conn.negotiated_cipher_suite() {
        Some(s) => {
            let s = s.suite();
            s.as_str().map_or_else(|| format!("{s:?}"), str::to_owned)
        }
        None => "unknown".to_owned(),
    };
    // The verifier's record is the chain as the server sent it; the connection's own copy is
    // the same list and covers the (unexpected) case of the verifier not being consulted.
    let certs = lock(&evidence.chain).take().unwrap_or_else(|| {
        conn.peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    });
    let is_tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let requested = lock(&evidence.client_auth).take();

    let client_auth = match requested {
        None => None,
        Some(acceptable_issuers) => {
            let rejected = if is_tls13 {
                client_auth_verdict(&mut tls, timeout.min(CLIENT_AUTH_VERDICT_WAIT)).await
            } else {
                None
            };
            Some(ClientAuthRequest {
                acceptable_issuers,
                rejected,
            })
        }
    };
    // Say goodbye properly so the server logs a clean close rather than a truncated session;
    // best effort and bounded, since the evidence is already in hand.
    let _ = tokio::time::timeout(CLOSE_WAIT, tls.shutdown()).await;
    Ok(PeerChain {
        addr,
        certs,
        protocol,
        cipher_suite,
        client_auth,
    })
}

/// After a TLS 1.3 handshake in which we sent no client certificate, listen briefly for the
/// server's verdict: an alert or a close means it requires one.
async fn client_auth_verdict<S: AsyncRead + Unpin>(tls: &mut S, wait: Duration) -> Option<String> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, tls.read(&mut byte)).await {
        // Silence or application data: the server let an anonymous client through (so far).
        Err(_) | Ok(Ok(1..)) => None,
        Ok(Ok(0)) => Some(
            "the server closed the connection right after the handshake, without a client certificate"
                .to_owned(),
        ),
        Ok(Err(e)) => Some(match rustls_error(&e) {
            Some(rustls::Error::AlertReceived(a)) => alert_words(*a),
            Some(other) => other.to_string(),
            None => e.to_string(),
        }),
    }
}

/// What the handshake saw before it ended, shared between rustls callbacks and the probe.
#[derive(Debug, Default)]
struct Evidence {
    /// The chain the server sent, leaf first, once the verifier has seen it.
    chain: Mutex<Option<Vec<CertificateDer<'static>>>>,
    /// The acceptable-issuer names, once the server has asked for a client certificate.
    client_auth: Mutex<Option<Vec<Vec<u8>>>>,
}

/// A poisoned lock only means another callback panicked mid-record; the data is still the
/// best evidence there is, so take it rather than fail the probe.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records the chain and accepts it: the probe's job is to show what the server sends, and an
/// untrusted chain is exactly what the doctor needs to see. Handshake signatures are still
/// checked with the provider's algorithms, so a captured chain belongs to a peer holding its key.
#[derive(Debug)]
struct CaptureChain {
    provider: Arc<CryptoProvider>,
    evidence: Arc<Evidence>,
}

impl ServerCertVerifier for CaptureChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *lock(&self.evidence.chain) = Some(chain);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Notes that the server asked for a client certificate and which issuers it accepts, then
/// declines: the probe has no identity, and whether the server tolerates that is evidence too.
#[derive(Debug)]
struct NoteClientAuth {
    evidence: Arc<Evidence>,
}

impl ResolvesClientCert for NoteClientAuth {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        *lock(&self.evidence.client_auth) =
            Some(root_hint_subjects.iter().map(|s| s.to_vec()).collect());
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// A stream that keeps the first bytes the peer sent, so a peer that is not a TLS server can be
/// quoted ("HTTP/1.1 400 Bad Request", "SSH-2.0-OpenSSH_9.6") instead of described by a parser
/// error.
struct Recording<S> {
    inner: S,
    first: Vec<u8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let room = KEEP_FIRST_BYTES.saturating_sub(this.first.len());
            let new = buf.filled().get(before..).unwrap_or_default();
            this.first
                .extend_from_slice(new.get(..room.min(new.len())).unwrap_or_default());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if that is what it carries.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Whether `first` starts like a TLS record (a known content type, then major version 3), i.e.
/// the peer does speak TLS and a parse failure means a broken TLS peer, not another protocol.
fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x14..=0x18, 0x03, ..])
}

fn classify_handshake(addr: &str, e: &io::Error, first: &[u8], ev: &Evidence) -> ProbeError {
    let tls = |detail: String| ProbeError::Tls {
        addr: addr.to_owned(),
        detail: with_context(detail, ev),
    };
    let not_tls = || ProbeError::NotTls {
        addr: addr.to_owned(),
        detail: describe_non_tls(first),
    };
    if let Some(err) = rustls_error(e) {
        return match err {
            rustls::Error::InvalidMessage(m) if looks_like_tls(first) => {
                tls(format!("the server sent a malformed TLS message ({m:?})"))
            }
            rustls::Error::InvalidMessage(_) => not_tls(),
            rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
                if !looks_like_tls(first) =>
            {
                not_tls()
            }
            rustls::Error::AlertReceived(a) => tls(format!("the server sent alert {}", alert_words(*a))),
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => tls(
                "the server's handshake signature does not verify with the key in the certificate it sent: \
                 it does not hold that certificate's private key"
                    .to_owned(),
            ),
            rustls::Error::InvalidCertificate(c) => {
                tls(format!("the server's certificate is unusable for the handshake: {c:?}"))
            }
            other => tls(other.to_string()),
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof if !first.is_empty() && !looks_like_tls(first) => not_tls(),
        io::ErrorKind::UnexpectedEof => tls(
            "connection closed during handshake: the server closed the connection without \
             completing it (it may reject the SNI name or the offered TLS versions, or a proxy \
             may block TLS)"
                .to_owned(),
        ),
        // A server that asked for a client certificate, got none and refused may reset the
        // connection before its alert is read (openssl s_server does, when the client's last
        // flight is still unread): that is the TLS refusal, not a network fault.
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            if lock(&ev.client_auth).is_some() =>
        {
            tls(format!(
                "the server reset the connection during the TLS handshake ({e})"
            ))
        }
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ProbeError::Io {
            addr: addr.to_owned(),
            reason: with_context(format!("reset during the TLS handshake: {e}"), ev),
        },
        _ => ProbeError::Io {
            addr: addr.to_owned(),
            reason: with_context(format!("during the TLS handshake: {e}"), ev),
        },
    }
}

/// Add what the handshake had already shown: that the server presented a chain, and that it
/// asked for a client certificate — the usual reason a TLS 1.2 handshake fails late.
fn with_context(detail: String, ev: &Evidence) -> String {
    let mut out = detail;
    if let Some(issuers) = lock(&ev.client_auth).as_ref() {
        out.push_str(&format!(
            "; the server had requested a client certificate ({} acceptable issuer(s) named) and the probe sent none",
            issuers.len()
        ));
    }
    if let Some(chain) = lock(&ev.chain).as_ref() {
        out.push_str(&format!(
            "; the server had presented {} certificate(s)",
            chain.len()
        ));
    }
    out
}

/// An alert by its RFC name, with what it usually means for an administrator.
fn alert_words(a: AlertDescription) -> String {
    let (name, meaning) = match a {
        AlertDescription::HandshakeFailure => (
            "handshake_failure",
            "no protocol version, cipher suite or signature scheme in common, or the server requires something the client did not offer (such as a client certificate)",
        ),
        AlertDescription::ProtocolVersion => (
            "protocol_version",
            "the server accepts neither TLS 1.2 nor TLS 1.3",
        ),
        AlertDescription::InsufficientSecurity => (
            "insufficient_security",
            "the server requires stronger parameters than were offered",
        ),
        AlertDescription::CertificateRequired => (
            "certificate_required",
            "the server requires a client certificate",
        ),
        AlertDescription::UnrecognisedName => (
            "unrecognized_name",
            "the server has no certificate for the SNI name sent",
        ),
        AlertDescription::AccessDenied => {
            ("access_denied", "the server refused this client by policy")
        }
        AlertDescription::BadCertificate => (
            "bad_certificate",
            "the server rejected the client certificate",
        ),
        AlertDescription::UnknownCA => (
            "unknown_ca",
            "the server does not trust the issuer of the client certificate",
        ),
        AlertDescription::CertificateUnknown => (
            "certificate_unknown",
            "the server could not accept the client certificate",
        ),
        AlertDescription::DecryptError => (
            "decrypt_error",
            "a handshake signature or Finished message did not verify",
        ),
        AlertDescription::IllegalParameter => (
            "illegal_parameter",
            "the server objected to a field in the handshake",
        ),
        AlertDescription::InternalError => (
            "internal_error",
            "the server failed internally (check its log)",
        ),
        AlertDescription::NoApplicationProtocol => {
            ("no_application_protocol", "no ALPN protocol in common")
        }
        other => {
            return format!("{other:?}");
        }
    };
    format!("{name} ({meaning})")
}

/// Say what the peer sent instead of TLS, quoting it where it is text.
fn describe_non_tls(first: &[u8]) -> String {
    if first.is_empty() {
        return "its reply is not a TLS record".to_owned();
    }
    let line_end = first
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(first.len());
    let line = first.get(..line_end).unwrap_or(first);
    let printable = !line.is_empty() && line.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
    let quoted = format!("\"{}\"", line.escape_ascii());
    if first.starts_with(b"HTTP/") {
        format!("it answered with plain HTTP ({quoted}): this port serves HTTP, not HTTPS")
    } else if first.starts_with(b"SSH-") {
        format!("it sent an SSH banner ({quoted}): this port is an SSH server")
    } else if printable && line.first().is_some_and(u8::is_ascii_digit) {
        format!(
            "it sent a text greeting ({quoted}), as SMTP, FTP and similar servers do, instead of a TLS record"
        )
    } else if printable {
        format!("it sent text instead of a TLS record: {quoted}")
    } else {
        let hex: Vec<String> = first.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!(
            "it sent bytes that are not a TLS record (first bytes: {})",
            hex.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_tls_replies_are_quoted() {
        assert!(
            describe_non_tls(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .contains("plain HTTP (\"HTTP/1.1 400 Bad Request\")")
        );
        assert!(describe_non_tls(b"SSH-2.0-OpenSSH_9.6\r\n").contains("SSH banner"));
        assert!(describe_non_tls(b"220 mail ESMTP\r\n").contains("text greeting"));
        assert!(describe_non_tls(&[0, 1, 2, 0xff]).contains("00 01 02 ff"));
    }

    #[test]
    fn tls_records_are_recognised() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x03, 0x00, 0x10]));
        assert!(looks_like_tls(&[0x15, 0x03, 0x01]));
        assert!(!looks_like_tls(b"HTTP/1.1"));
        assert!(!looks_like_tls(&[]));
    }
}
