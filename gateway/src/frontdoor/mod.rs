//! Front doors: the client protocols the gateway speaks, each under its own path prefix.
//!
//! A front door turns the method and path of a client request into one [`RequestInfo`]: which
//! protocol the client speaks (so errors can be rendered in its shape), what operation it asks
//! for, which model, and the path to send upstream. It reads no body and does no I/O.

pub mod bedrock;

use crate::wire::error::GatewayError;
use crate::wire::usage::ResponseShape;

/// The protocol a client speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontDoor {
    /// Amazon Bedrock runtime and control plane (AWS SDKs, Claude Code's Bedrock mode).
    Bedrock,
}

impl FrontDoor {
    /// The name used in logs and the usage record.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontDoor::Bedrock => "bedrock",
        }
    }
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// One answer as JSON (Bedrock `invoke`).
    Invoke,
    /// A streamed answer (Bedrock `invoke-with-response-stream`).
    InvokeStream,
    /// Bedrock Converse, one answer.
    Converse,
    /// Bedrock ConverseStream.
    ConverseStream,
    /// Token counting.
    CountTokens,
    /// A read-only control-plane call (Bedrock `GET /inference-profiles`, `/foundation-models`).
    ControlPlane,
}

impl Operation {
    /// The name used in logs and the usage record.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Invoke => "invoke",
            Operation::InvokeStream => "stream",
            Operation::Converse => "converse",
            Operation::ConverseStream => "converse-stream",
            Operation::CountTokens => "count-tokens",
            Operation::ControlPlane => "control-plane",
        }
    }

    /// Whether the answer streams.
    pub fn is_streaming(self) -> bool {
        matches!(self, Operation::InvokeStream | Operation::ConverseStream)
    }

    /// The shape of the answer, which decides how usage is read from it.
    pub fn response_shape(self) -> ResponseShape {
        match self {
            Operation::Invoke => ResponseShape::AnthropicJson,
            Operation::InvokeStream => ResponseShape::BedrockAnthropicStream,
            Operation::Converse => ResponseShape::ConverseJson,
            Operation::ConverseStream => ResponseShape::BedrockConverseStream,
            Operation::CountTokens | Operation::ControlPlane => ResponseShape::Opaque,
        }
    }
}

/// One client request, as the rest of the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The protocol the client speaks.
    pub front_door: FrontDoor,
    /// What it asks for.
    pub operation: Operation,
    /// The model ID, percent-decoded (`us.anthropic.claude-sonnet-4-5-20250929-v1:0`, an ARN, ...).
    pub model_id: Option<String>,
    /// Path and query to send upstream, relative to the backend's endpoint, with the client's
    /// own percent-encoding kept byte for byte.
    pub upstream_path: String,
}

/// Routes a request path to its front door.
#[derive(Debug, Clone)]
pub struct FrontDoors {
    bedrock_prefix: String,
}

impl FrontDoors {
    /// Front doors with the configured prefixes.
    pub fn new(config: &crate::config::FrontDoorsConfig) -> Self {
        Self {
            bedrock_prefix: config.bedrock.prefix.clone(),
        }
    }

    /// Parses a request, or says in which protocol to render the error when it is malformed.
    pub fn parse(
        &self,
        method: &http::Method,
        path_and_query: &str,
    ) -> Result<RequestInfo, (FrontDoor, GatewayError)> {
        if let Some(rest) = strip_prefix_segment(path_and_query, &self.bedrock_prefix) {
            return bedrock::parse(method, rest).map_err(|e| (FrontDoor::Bedrock, e));
        }
        // Only one front door exists yet, so it is the best guess at the client's protocol.
        Err((
            FrontDoor::Bedrock,
            GatewayError::NotFound(format!(
                "no front door serves this path; Bedrock clients use the base URL {}",
                self.bedrock_prefix
            )),
        ))
    }
}

/// `rest` after `prefix` when `prefix` is a whole number of path segments of `path`.
fn strip_prefix_segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.starts_with('/') || rest.starts_with('?') || rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_must_end_at_a_segment_boundary() {
        assert_eq!(
            strip_prefix_segment("/bedrock/model/x", "/bedrock"),
            Some("/model/x")
        );
        assert_eq!(strip_prefix_segment("/bedrockx/model", "/bedrock"), None);
        assert_eq!(strip_prefix_segment("/other", "/bedrock"), None);
    }
}
