//! The web console: server-rendered HTML pages on the console listener, next to the admin
//! API. Pages call [`crate::Service`] directly (never the JSON API), authenticate with the
//! [`crate::service::SESSION_COOKIE`] cookie (the same token `Service::login` returns; the
//! [`crate::AdminUser`] extractor accepts it), and render [`crate::ApiFailure`]s as HTML.
//!
//! For now there is one placeholder page; the console pages are added here.

use std::sync::Arc;

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use crate::service::Service;

/// The console's routes, merged with the admin API's on the console listener.
pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new().route("/", get(index))
}

async fn index() -> Html<&'static str> {
    Html(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Steward</title>\
         </head><body><h1>Steward</h1><p>The admin API is described at \
         <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p></body></html>",
    )
}
