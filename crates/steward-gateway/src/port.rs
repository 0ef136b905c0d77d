//! `steward gateway set-port`: a phased port change. The new address becomes current; the old
//! one is kept (and served by `run`) until the server says every agent has a profile with the
//! new port, because an agent on the internet can only learn the new port through the old.

use std::net::SocketAddr;
use std::path::Path;

use crate::GatewayError;
use crate::state::{GatewayConfig, GatewayDir};

/// What [`set_port`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortChange {
    /// The configuration as written.
    pub config: GatewayConfig,
    /// The address that was current before (now among the previous ones); `None` when the
    /// new address was already current and nothing changed.
    pub replaced: Option<SocketAddr>,
}

/// Makes `listen` the current listen address and keeps the current one as a previous address.
/// Written atomically; takes effect at the next `steward gateway run`.
pub fn set_port(data_dir: &Path, listen: SocketAddr) -> Result<PortChange, GatewayError> {
    let dir = GatewayDir::new(data_dir);
    let mut cfg = dir.read_config()?;
    if cfg.listen == listen {
        return Ok(PortChange {
            config: cfg,
            replaced: None,
        });
    }
    let old = cfg.listen;
    // Going back to a previous address: it is current again, not also previous.
    cfg.previous_listen.retain(|a| *a != listen);
    if !cfg.previous_listen.contains(&old) {
        cfg.previous_listen.push(old);
    }
    cfg.listen = listen;
    dir.write_config(&cfg)?;
    Ok(PortChange {
        config: cfg,
        replaced: Some(old),
    })
}
