//! The CRL distribution point: `GET /crl/issuing.crl` and `/crl/root.crl` over plain HTTP
//! (CRLs are signed; TLS would make fetching them depend on the very certificates they judge).

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::pki::Crls;

/// The CRLs being served, replaced at each re-signing.
#[derive(Debug)]
pub(crate) struct CrlStore {
    current: RwLock<(Bytes, Bytes)>,
}

impl CrlStore {
    pub(crate) fn new(crls: &Crls) -> Self {
        Self {
            current: RwLock::new(Self::bytes(crls)),
        }
    }

    fn bytes(crls: &Crls) -> (Bytes, Bytes) {
        (
            Bytes::copy_from_slice(crls.issuing.as_ref()),
            Bytes::copy_from_slice(crls.root.as_ref()),
        )
    }

    pub(crate) fn set(&self, crls: &Crls) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Self::bytes(crls);
    }

    fn get(&self) -> (Bytes, Bytes) {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The CRL listener's router.
pub(crate) fn router(store: Arc<CrlStore>) -> Router {
    Router::new()
        .route("/crl/issuing.crl", get(issuing))
        .route("/crl/root.crl", get(root))
        .fallback(crate::agent::not_found)
        .with_state(store)
}

fn crl(bytes: Bytes) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            // Caches may keep it for a few minutes; it is re-signed hourly.
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        bytes,
    )
}

async fn issuing(State(s): State<Arc<CrlStore>>) -> impl IntoResponse {
    crl(s.get().0)
}

async fn root(State(s): State<Arc<CrlStore>>) -> impl IntoResponse {
    crl(s.get().1)
}
