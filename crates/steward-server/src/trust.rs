//! `GET /trust/bundle.json` on the CRL listener: the profile's trust anchors signed by the
//! platform root key (during a root roll's overlap: by the previous root, and by the new one
//! in `more_signatures_base64`). An agent that slept through a certificate rollover (its TLS to the agent
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
    /// The last root CRL served below `/crl/roots/`: file, minute, DER.
    root_crl: Mutex<Option<(String, i64, Bytes)>>,
}

/// The router of the trust-bundle route (and of the CRLs of rolled-in roots, each at the
/// distribution point the issuing CA's certificate under it names), to merge into the CRL
/// listener's.
pub(crate) fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(TRUST_BUNDLE_PATH, get(bundle))
        .route("/crl/roots/{file}", get(root_crl))
        .with_state((service, Arc::new(TrustCache::default())))
}

/// A root's CRL (it revokes nothing: issuing CAs are not revoked in place), signed at most
/// once a minute.
async fn root_crl(
    State((svc, cache)): State<(Arc<Service>, Arc<TrustCache>)>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let minute = steward_pki::OffsetDateTime::now_utc().unix_timestamp() / 60;
    let found = {
        let mut slot = cache.root_crl.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((f, m, bytes)) if *f == file && *m == minute => Some(Ok(bytes.clone())),
            _ => svc.root_crl(&file).map(|r| {
                r.map(|der| {
                    let bytes = Bytes::from(der);
                    *slot = Some((file, minute, bytes.clone()));
                    bytes
                })
            }),
        }
    };
    match found {
        None => crate::agent::not_found().await.into_response(),
        Some(Ok(bytes)) => crl(bytes),
        Some(Err(e)) => {
            tracing::error!(error = %e, "signing a root CRL failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn crl(bytes: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        bytes,
    )
        .into_response()
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
            let mut sigs = svc.sign_with_root(&raw)?.into_iter();
            let b64 = base64::engine::general_purpose::STANDARD;
            let first = sigs.next().ok_or("no signature")?;
            serde_json::to_vec(&SignedTrustBundle {
                bundle_base64: b64.encode(&raw),
                signature_base64: b64.encode(first),
                more_signatures_base64: sigs.map(|s| b64.encode(s)).collect(),
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
