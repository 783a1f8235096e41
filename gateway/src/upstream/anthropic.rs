//! The Anthropic API backend: an endpoint and an API key, sent as `x-api-key`.

use std::sync::Arc;

use super::endpoint::Endpoint;
use super::UpstreamError;
use crate::config::BackendConfig;

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
    pub fn from_config(config: &BackendConfig) -> Result<Self, UpstreamError> {
        let endpoint = Endpoint::parse(config.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT))?;
        Ok(Self {
            endpoint: Arc::new(endpoint),
            api_key: config.api_key.clone().unwrap_or_default(),
        })
    }
}
