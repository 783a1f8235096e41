//! The providers a backend can speak to.

use serde::Deserialize;

/// The provider a backend speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Amazon Bedrock runtime (and its control plane).
    Bedrock,
    /// Google Vertex AI.
    Vertex,
    /// The Anthropic API.
    Anthropic,
}

impl BackendKind {
    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Bedrock => "bedrock",
            BackendKind::Vertex => "vertex",
            BackendKind::Anthropic => "anthropic",
        }
    }
}
