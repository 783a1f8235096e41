//! One client request as the rest of the gateway sees it: which protocol the client speaks,
//! what it asks for, which model, and where it goes upstream.

use serde::Deserialize;

use super::error::GatewayError;
use super::BackendKind;

/// The protocol a client speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontDoor {
    /// Amazon Bedrock runtime and control plane (AWS SDKs, Claude Code's Bedrock mode).
    Bedrock,
    /// Vertex AI `rawPredict` (Anthropic's Vertex SDK, Claude Code's Vertex mode).
    Vertex,
    /// The Anthropic Messages API (Anthropic SDKs, Claude Code with `ANTHROPIC_BASE_URL`).
    Anthropic,
}

impl FrontDoor {
    /// The name used in logs and the usage record.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontDoor::Bedrock => "bedrock",
            FrontDoor::Vertex => "vertex",
            FrontDoor::Anthropic => "anthropic",
        }
    }

    /// The longest model ID this protocol's provider accepts, in bytes: Bedrock takes IDs and
    /// ARNs up to 2,048 characters, Vertex AI and the Anthropic API model names up to 256.
    /// Longer ones are refused before any plugin sees them.
    pub fn max_model_id(self) -> usize {
        match self {
            FrontDoor::Bedrock => 2048,
            FrontDoor::Vertex | FrontDoor::Anthropic => 256,
        }
    }

    /// The backend kind that speaks the same protocol.
    pub fn kind(self) -> BackendKind {
        match self {
            FrontDoor::Bedrock => BackendKind::Bedrock,
            FrontDoor::Vertex => BackendKind::Vertex,
            FrontDoor::Anthropic => BackendKind::Anthropic,
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
    /// Model listing (`GET /v1/models`), answered from the gateway's catalog.
    ListModels,
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
            Operation::ListModels => "list-models",
        }
    }

    /// Whether the answer streams.
    pub fn is_streaming(self) -> bool {
        matches!(self, Operation::InvokeStream | Operation::ConverseStream)
    }

    /// Whether only Bedrock backends can serve it (nothing else speaks Converse or the
    /// Bedrock control plane).
    pub fn bedrock_only(self) -> bool {
        matches!(
            self,
            Operation::Converse | Operation::ConverseStream | Operation::ControlPlane
        )
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

/// The few body fields the Anthropic and Vertex protocols route by. Everything else in the
/// body is skipped without being built into values.
#[derive(Debug, Default, Deserialize)]
pub struct BodyFields {
    /// The model (Anthropic Messages and every count-tokens body).
    pub model: Option<String>,
    /// Whether the answer should stream.
    pub stream: Option<bool>,
}

impl BodyFields {
    /// Reads the fields from a JSON body; a body that is not a JSON object is refused.
    pub fn read(body: &[u8]) -> Result<BodyFields, GatewayError> {
        if body.is_empty() {
            return Err(GatewayError::BadRequest(
                "the request body is empty; a JSON object is expected".into(),
            ));
        }
        serde_json::from_slice(body).map_err(|e| {
            GatewayError::BadRequest(format!("the request body is not valid JSON: {e}"))
        })
    }
}

impl RequestInfo {
    /// Completes the request from its body where the protocol puts routing in it: the
    /// Anthropic `model`, and `stream` for Anthropic and Vertex `rawPredict`.
    pub fn complete_from_body(&mut self, body: &[u8]) -> Result<(), GatewayError> {
        let needs_body = match self.front_door {
            FrontDoor::Bedrock => false,
            FrontDoor::Vertex => {
                matches!(self.operation, Operation::Invoke | Operation::CountTokens)
            }
            FrontDoor::Anthropic => {
                matches!(self.operation, Operation::Invoke | Operation::CountTokens)
            }
        };
        if !needs_body {
            return Ok(());
        }
        let fields = BodyFields::read(body)?;
        if self.operation == Operation::Invoke && fields.stream == Some(true) {
            self.operation = Operation::InvokeStream;
        }
        if self.model_id.is_none() {
            match fields.model {
                Some(m) if !m.is_empty() => self.model_id = Some(m),
                _ => return Err(GatewayError::BadRequest("model: Field required".into())),
            }
        }
        self.check_model_length()
    }

    /// Refuses a model ID longer than the client's provider accepts.
    pub fn check_model_length(&self) -> Result<(), GatewayError> {
        let limit = self.front_door.max_model_id();
        match &self.model_id {
            Some(m) if m.len() > limit => Err(GatewayError::BadRequest(format!(
                "model: the model ID is {} bytes long; at most {limit} are accepted",
                m.len()
            ))),
            _ => Ok(()),
        }
    }
}
