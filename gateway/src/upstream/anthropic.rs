//! The Anthropic API backend: an endpoint and an API key, sent as `x-api-key`.

use std::sync::Arc;

use pingora_http::RequestHeader;

use super::endpoint::Endpoint;
use super::provider::{set_header, Provider, Signable};
use super::UpstreamError;
use crate::config::AnthropicBackendConfig;
use crate::protocol::error::GatewayError;
use crate::protocol::{BackendKind, Operation};

/// The Anthropic API's own endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://api.anthropic.com";

/// One Anthropic API backend.
pub struct AnthropicBackend {
    /// The API endpoint.
    pub endpoint: Arc<Endpoint>,
    /// The key, sent as `x-api-key`.
    pub api_key: String,
}

impl std::fmt::Debug for AnthropicBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicBackend")
            .field("endpoint", &self.endpoint)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

impl AnthropicBackend {
    /// Builds the backend from its (validated) configuration.
    pub fn from_config(config: &AnthropicBackendConfig) -> Result<Self, UpstreamError> {
        let endpoint = Endpoint::parse(config.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT))?;
        Ok(Self {
            endpoint: Arc::new(endpoint),
            api_key: config.api_key.clone().unwrap_or_default(),
        })
    }
}

impl Provider for AnthropicBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Anthropic
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    fn endpoints(&self) -> Vec<&Arc<Endpoint>> {
        vec![&self.endpoint]
    }

    fn endpoint_for(&self, _operation: Operation) -> &Arc<Endpoint> {
        &self.endpoint
    }

    fn authenticate(
        &self,
        _backend: &str,
        _request: Signable<'_>,
        header: &mut RequestHeader,
    ) -> Result<(), GatewayError> {
        set_header(header, "x-api-key", &self.api_key)
    }
}
