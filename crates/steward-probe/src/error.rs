//! Probe failures, classified by where they happened so the doctor can name them.

use std::fmt;

/// The stage of a probe that ran out of time. Each stage has its own timeout, so a timeout names
/// the one step that stalled rather than the probe as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Resolving the host name to addresses.
    Resolve,
    /// Opening the TCP connection.
    Connect,
    /// The TLS handshake.
    Handshake,
    /// Waiting for (and reading) an HTTP response.
    Response,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Resolve => "name resolution",
            Stage::Connect => "TCP connect",
            Stage::Handshake => "TLS handshake",
            Stage::Response => "HTTP response",
        })
    }
}

/// Where a probe failed, classified so the doctor can name it (DNS vs refused vs timeout vs
/// not-TLS). Every message carries its evidence: the address, the OS or TLS error text, the
/// elapsed time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The target could not be parsed as `host`, `host:port`, `[v6]:port` or a URL.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// The URL's scheme is not fetched (only `http://` CRL distribution points are); the string
    /// is the URL as given.
    #[error(
        "unsupported URL {0}: only http:// URLs are fetched (https, ldap and file CRL distribution points are not)"
    )]
    UnsupportedScheme(String),
    /// The host name does not resolve.
    #[error("DNS: {host} does not resolve: {reason}")]
    Dns {
        /// The name that was looked up.
        host: String,
        /// The resolver's error text.
        reason: String,
    },
    /// The peer answered the TCP SYN with a reset: nothing listens there, or a firewall rejects.
    #[error(
        "connection to {addr} refused (TCP reset: nothing listening, or a firewall rejected it)"
    )]
    Refused {
        /// The address that refused.
        addr: String,
    },
    /// A stage did not finish in time.
    #[error("{stage} with {addr} timed out: no answer after {after_ms} ms")]
    Timeout {
        /// The stage that stalled.
        stage: Stage,
        /// The address (or `host:port` while resolving) being talked to.
        addr: String,
        /// How long the probe waited, measured.
        after_ms: u64,
    },
    /// Any other connect failure: no route to host, network unreachable.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The address that could not be reached.
        addr: String,
        /// The OS error text.
        reason: String,
    },
    /// The peer answered, but not with TLS (a plain HTTP server, an SSH banner, ...).
    #[error("{addr} does not speak TLS: {detail}")]
    NotTls {
        /// The address that answered.
        addr: String,
        /// What the peer sent instead, in words.
        detail: String,
    },
    /// The peer speaks TLS but the handshake failed (an alert, no shared cipher, a client
    /// certificate demanded, a bad handshake signature).
    #[error("TLS handshake with {addr} failed: {detail}")]
    Tls {
        /// The address of the TLS peer.
        addr: String,
        /// What went wrong, in words.
        detail: String,
    },
    /// The HTTP server answered with a status other than 2xx (redirects are not followed).
    #[error("{url} answered HTTP {status}")]
    Http {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The response body is larger than the caller's limit.
    #[error("{url} sent a body larger than the {limit}-byte limit")]
    BodyTooLarge {
        /// The URL requested.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The connection broke after it was established (reset mid-way, closed early, garbled).
    #[error("connection with {addr} failed: {reason}")]
    Io {
        /// The address of the peer.
        addr: String,
        /// The OS or protocol error text.
        reason: String,
    },
}

impl ProbeError {
    /// The stable diagnosis ID for this failure, as shown by the doctor, the console and logs.
    pub fn id(&self) -> &'static str {
        match self {
            ProbeError::InvalidTarget(_) | ProbeError::UnsupportedScheme(_) => "PROBE-INPUT",
            ProbeError::Dns { .. } => "DNS-RESOLVE",
            ProbeError::Refused { .. } => "NET-REFUSED",
            ProbeError::Timeout { .. } => "NET-TIMEOUT",
            ProbeError::Unreachable { .. } => "NET-UNREACHABLE",
            ProbeError::NotTls { .. } => "TLS-NOT-TLS",
            ProbeError::Tls { .. } => "TLS-HANDSHAKE",
            ProbeError::Http { .. } => "HTTP-STATUS",
            ProbeError::BodyTooLarge { .. } => "HTTP-TOO-LARGE",
            ProbeError::Io { .. } => "NET-IO",
        }
    }

    /// One sentence on how an administrator fixes this failure.
    pub fn remedy(&self) -> &'static str {
        match self {
            ProbeError::InvalidTarget(_) => {
                "Give the target as host, host:port, [IPv6-address]:port or https://host:port/."
            }
            ProbeError::UnsupportedScheme(_) => {
                "Publish the CRL at an http:// URL and name that URL in the certificates' CRL distribution point; only plain HTTP is fetched, as relying parties expect."
            }
            ProbeError::Dns { .. } => {
                "The name does not resolve from this machine: check its spelling, the DNS record for it, and this machine's resolver configuration (DNS servers, search domains, hosts file)."
            }
            ProbeError::Refused { .. } => {
                "Nothing accepts connections on that port: check the service is running and listening on that address, and that no firewall rejects it."
            }
            ProbeError::Timeout { stage, .. } => match stage {
                Stage::Resolve => {
                    "The DNS servers did not answer in time: check this machine's resolver configuration and that its DNS servers are reachable."
                }
                Stage::Connect => {
                    "Nothing answered the connection attempt: check that the host is up, that the address and port are right, and that no firewall or security group silently drops the traffic."
                }
                Stage::Handshake => {
                    "The port accepted the connection but no TLS handshake completed in time: check that the port serves TLS (not a protocol that waits for the client to speak) and that no proxy or inspection device stalls it."
                }
                Stage::Response => {
                    "The server accepted the request but did not answer in time: check that the web server at that URL is healthy and that no proxy stalls the request."
                }
            },
            ProbeError::Unreachable { .. } => {
                "There is no network path to that address: check the address, this machine's routes and default gateway, and any VPN the path depends on."
            }
            ProbeError::NotTls { .. } => {
                "That port speaks another protocol, not TLS: point the client at the TLS port, or enable TLS on the service's listener."
            }
            ProbeError::Tls { .. } => {
                "The peer speaks TLS but refused the handshake: if it asked for a client certificate, present one from an issuer it accepts; otherwise enable TLS 1.2 or 1.3 with a modern cipher suite on the server."
            }
            ProbeError::Http { status, .. } => match status {
                300..=399 => {
                    "The URL redirects and CRL fetchers do not follow redirects: serve the file at the URL named in the certificates, or reissue them naming the final URL."
                }
                401 | 403 => {
                    "The web server refuses anonymous access: a CRL distribution point must be readable without authentication."
                }
                404 | 410 => {
                    "Nothing is published at that URL: publish the file there, or reissue the certificates with the right CRL distribution point."
                }
                500..=599 => {
                    "The web server failed to serve the URL: check its error log and the file it maps the URL to."
                }
                _ => {
                    "The web server did not serve the file: publish it at exactly that URL and check the server's access rules."
                }
            },
            ProbeError::BodyTooLarge { .. } => {
                "The response is larger than a CRL should be: check that the URL points at the CRL file itself, or raise the size limit if the CRL really is this large."
            }
            ProbeError::Io { .. } => {
                "The connection broke mid-exchange: check for proxies, load balancers or inspection devices that reset connections, and the server's log for crashes."
            }
        }
    }
}
