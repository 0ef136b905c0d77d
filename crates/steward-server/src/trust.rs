//! `GET /trust/bundle.json` on the CRL listener: the profile's trust anchors signed by the
//! platform root key. An agent that slept through a certificate rollover (its TLS to the agent
//! site fails as untrusted: the new certificate's root reached the others in a profile it
//! never got) fetches this over plain HTTP from the distribution point named in its own
//! certificate, verifies the signature with the platform root it already trusts, adds the
//! anchors, and retries. Plain HTTP is deliberate, as for CRLs: the signature is what makes it
//! trustworthy, and TLS is exactly what the agent cannot verify at that moment.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use steward_proto::{SignedTrustBundle, TRUST_BUNDLE_PATH, TrustBundle};

use crate::service::{Service, rfc3339};

/// The signed bundle of one profile version, reused until the profile changes (the route is
/// unauthenticated: a signature per request would hand out CPU to anyone).
#[derive(Debug, Default)]
pub(crate) struct TrustCache {
    signed: Mutex<Option<(u64, Bytes)>>,
}

/// The router of the trust-bundle route, to merge into the CRL listener's.
pub(crate) fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(TRUST_BUNDLE_PATH, get(bundle))
        .with_state((service, Arc::new(TrustCache::default())))
}

async fn bundle(State((svc, cache)): State<(Arc<Service>, Arc<TrustCache>)>) -> Response {
    let profile = svc.profile();
    let mut slot = cache.signed.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((v, bytes)) = slot.as_ref()
        && *v == profile.version
    {
        return json(bytes.clone());
    }
    let bundle = TrustBundle {
        format: TrustBundle::FORMAT.to_owned(),
        profile_version: profile.version,
        issued_at: rfc3339(steward_pki::OffsetDateTime::now_utc().unix_timestamp()),
        trust_anchors_pem: profile.trust_anchors_pem.clone(),
    };
    let signed = serde_json::to_vec(&bundle)
        .map_err(|e| e.to_string())
        .and_then(|raw| {
            let sig = svc.sign_with_root(&raw)?;
            let b64 = base64::engine::general_purpose::STANDARD;
            serde_json::to_vec(&SignedTrustBundle {
                bundle_base64: b64.encode(&raw),
                signature_base64: b64.encode(sig),
            })
            .map_err(|e| e.to_string())
        });
    match signed {
        Ok(bytes) => {
            let bytes = Bytes::from(bytes);
            *slot = Some((profile.version, bytes.clone()));
            json(bytes)
        }
        Err(e) => {
            tracing::error!(error = %e, "signing the trust bundle failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn json(bytes: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}
