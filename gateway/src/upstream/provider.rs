//! [`Provider`]: what the gateway needs from each kind of backend, one implementation per
//! provider (`bedrock.rs`, `vertex.rs`, `anthropic.rs`), so provider differences live in one
//! place per provider instead of `match` arms across the crate.

use std::sync::Arc;

use pingora_http::RequestHeader;

use super::endpoint::Endpoint;
use crate::protocol::error::GatewayError;
use crate::protocol::{BackendKind, Operation};

/// What a request's authentication may cover: the request as it will be sent.
#[derive(Debug, Clone, Copy)]
pub struct Signable<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// Path and query as sent (with the endpoint's base path).
    pub path_and_query: &'a str,
    /// The `Host` header.
    pub host: &'a str,
    /// The `content-type` header, if any.
    pub content_type: Option<&'a str>,
    /// The body as sent.
    pub body: &'a [u8],
}

/// One kind of provider.
pub trait Provider: std::fmt::Debug + Send + Sync {
    /// Which kind it is.
    fn kind(&self) -> BackendKind;

    /// Whether requests can be authenticated now; the reason when not.
    fn ready(&self) -> Result<(), String>;

    /// Every endpoint it calls (for name resolution).
    fn endpoints(&self) -> Vec<&Arc<Endpoint>>;

    /// The endpoint that serves `operation`.
    fn endpoint_for(&self, operation: Operation) -> &Arc<Endpoint>;

    /// The project and location a Vertex AI path names (empty for the others).
    fn location(&self) -> (&str, &str) {
        ("", "")
    }

    /// Adds the backend's own authentication to the request head (SigV4 headers, a Google
    /// access token, an API key).
    fn authenticate(
        &self,
        backend: &str,
        request: Signable<'_>,
        header: &mut RequestHeader,
    ) -> Result<(), GatewayError>;

    /// Starts whatever keeps its credentials fresh, on the background runtime.
    fn start_refresh(&self, _backend: &str, _runtime: &tokio::runtime::Handle) {}
}

/// Sets a header on a request head, refusing values that are not valid header values.
pub fn set_header(
    header: &mut RequestHeader,
    name: &'static str,
    value: &str,
) -> Result<(), GatewayError> {
    header
        .insert_header(name, value)
        .map_err(|e| GatewayError::Internal(format!("header {name}: {e}")))
}
