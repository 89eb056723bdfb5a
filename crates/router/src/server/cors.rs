//! Cross-origin calls from browsers (`--cors-allowed-origins`). Off by default: no CORS
//! headers at all, and `OPTIONS` is answered like any other method a route lacks. Fixed at
//! start: a reload that changes the origins asks for a restart.

use std::time::Duration;

use http::Method;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::config::{Config, CorsOrigins};
use crate::proxy::headers::{X_REQUEST_ID, X_VLLM_ROUTER_WORKER};

/// The layer answering preflights and marking responses for the allowed origins; `None` when
/// no origin is allowed.
pub(super) fn layer(config: &Config) -> Option<CorsLayer> {
    let origins = match &config.cors {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(origins) => AllowOrigin::list(origins.iter().cloned()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            // Whatever headers an allowed page asks to send: the OpenAI SDKs add their own
            // (`x-stainless-*`, `openai-*`), and the origin, not the header list, is what is
            // trusted.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([X_REQUEST_ID.clone(), X_VLLM_ROUTER_WORKER.clone()])
            .max_age(Duration::from_secs(600)),
    )
}
