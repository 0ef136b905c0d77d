//! TLS session resumption on the sites agents connect to: the server's agent site and a
//! gateway's edge. Both rebuild their rustls configuration often (every CRL re-signing or
//! refresh, every certificate renewal); a session store or ticket key of each configuration's
//! own would make every agent pay a full mutual-TLS handshake after each rebuild. One
//! [`AgentResumption`] is made per process and handed to every rebuild.
//!
//! Resuming skips the certificate verification of the handshake, not the authorisation of the
//! request: the agent site matches the session's certificate against the device's current,
//! unrevoked one on every route, and the server does the same for what a gateway forwards.

use std::sync::Arc;

use rustls::server::{
    ProducesTickets, ServerConfig, ServerSessionMemoryCache, StoresServerSessions,
};

/// Stateful sessions kept for TLS 1.2 clients. TLS 1.3 clients get tickets, which cost the
/// server no memory.
const SESSION_CACHE_ENTRIES: usize = 16_384;

/// TLS 1.3 tickets sent after each handshake (rustls sends two unless told). A ticket is
/// single-use and an agent resumes its one connection: each resumption brings the ticket for
/// the next. The second ticket, encrypted with the client's certificate chain inside (over a
/// kilobyte), was made, sent and stored for nothing on both sides of every handshake: 10 % of
/// the agent site's instructions per resumed handshake (BENCHMARKS.md, round 12). An agent
/// that opens two connections at once makes one full handshake.
const TLS13_TICKETS_PER_HANDSHAKE: usize = 1;

/// A site's session store and ticket key, kept across rebuilds of its configuration.
#[derive(Debug, Clone)]
pub struct AgentResumption {
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl AgentResumption {
    /// A new session store and ticket key (rotated by rustls). Replacing a site's
    /// `AgentResumption` ends every session it issued: each agent's next connection is a full
    /// handshake.
    ///
    /// # Errors
    /// The crypto provider could not make the ticket key (no randomness).
    pub fn new() -> Result<Self, rustls::Error> {
        Ok(Self {
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
        })
    }

    /// Makes `cfg` issue and accept this site's sessions.
    pub fn apply(&self, cfg: &mut ServerConfig) {
        cfg.session_storage = self.sessions.clone();
        cfg.ticketer = self.ticketer.clone();
        cfg.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
    }
}
