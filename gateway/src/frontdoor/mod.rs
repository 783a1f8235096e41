//! Front doors: the client protocols the gateway speaks, each under its own path prefix.
//!
//! A front door turns the method and path of a client request into one [`RequestInfo`]: which
//! protocol the client speaks (so errors can be rendered in its shape), what operation it asks
//! for, which model, and the path to send upstream. It reads no body and does no I/O; the
//! Anthropic and Vertex protocols say some of this in the body (`model`, `stream`), which
//! [`BodyFields`] reads once the body is in.
//!
//! Prefixes: Bedrock under `/bedrock`, Vertex under `/vertex` (and `/v1/projects/...` at the
//! root), Anthropic at the root (`/v1/messages`), each configurable.

pub mod anthropic;
pub mod bedrock;
pub mod vertex;

use serde::Deserialize;

use crate::config::BackendKind;
use crate::wire::error::GatewayError;
use crate::wire::usage::ResponseShape;

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

    /// The shape of the answer a backend of `kind` gives, which decides how usage is read
    /// from it.
    pub fn response_shape(self, kind: BackendKind) -> ResponseShape {
        match self {
            Operation::Invoke => ResponseShape::AnthropicJson,
            Operation::InvokeStream if kind == BackendKind::Bedrock => {
                ResponseShape::BedrockAnthropicStream
            }
            Operation::InvokeStream => ResponseShape::AnthropicSse,
            Operation::Converse => ResponseShape::ConverseJson,
            Operation::ConverseStream => ResponseShape::BedrockConverseStream,
            Operation::CountTokens | Operation::ControlPlane | Operation::ListModels => {
                ResponseShape::Opaque
            }
        }
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

/// Routes a request path to its front door.
#[derive(Debug, Clone)]
pub struct FrontDoors {
    bedrock_prefix: String,
    vertex_prefix: String,
    anthropic_prefix: String,
}

impl FrontDoors {
    /// Front doors with the configured prefixes.
    pub fn new(config: &crate::config::FrontDoorsConfig) -> Self {
        Self {
            bedrock_prefix: config.bedrock.prefix.clone(),
            vertex_prefix: config.vertex.prefix.clone(),
            anthropic_prefix: config.anthropic.prefix.clone(),
        }
    }

    /// Parses a request, or says in which protocol to render the error when it is malformed.
    pub fn parse(
        &self,
        method: &http::Method,
        path_and_query: &str,
    ) -> Result<RequestInfo, (FrontDoor, GatewayError)> {
        let checked = |door: FrontDoor, parsed: Result<RequestInfo, GatewayError>| {
            parsed
                .and_then(|info| info.check_model_length().map(|()| info))
                .map_err(|e| (door, e))
        };
        if let Some(rest) = strip_prefix_segment(path_and_query, &self.bedrock_prefix) {
            return checked(FrontDoor::Bedrock, bedrock::parse(method, rest));
        }
        if let Some(rest) = strip_prefix_segment(path_and_query, &self.vertex_prefix) {
            return checked(FrontDoor::Vertex, vertex::parse(method, rest));
        }
        // `ANTHROPIC_VERTEX_BASE_URL` may also be the gateway's `/v1`.
        if path_and_query.starts_with("/v1/projects/") {
            return checked(FrontDoor::Vertex, vertex::parse(method, path_and_query));
        }
        if let Some(rest) = strip_prefix_segment(path_and_query, &self.anthropic_prefix) {
            if rest.starts_with("/v1/") {
                return checked(FrontDoor::Anthropic, anthropic::parse(method, rest));
            }
        }
        Err((
            FrontDoor::Anthropic,
            GatewayError::NotFound(format!(
                "no front door serves this path; clients use the base URL {} (Bedrock), {} (Vertex) or {} (Anthropic)",
                self.bedrock_prefix,
                self.vertex_prefix,
                if self.anthropic_prefix.is_empty() { "/" } else { &self.anthropic_prefix }
            )),
        ))
    }
}

/// `rest` after `prefix` when `prefix` is a whole number of path segments of `path`.
fn strip_prefix_segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (prefix.is_empty() || rest.starts_with('/') || rest.starts_with('?') || rest.is_empty())
        .then_some(rest)
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

    fn doors() -> FrontDoors {
        FrontDoors::new(&crate::config::FrontDoorsConfig::default())
    }

    #[test]
    fn model_ids_longer_than_the_provider_takes_are_refused() {
        let d = doors();
        let post = http::Method::POST;
        let ok = "a".repeat(2048);
        assert!(d
            .parse(&post, &format!("/bedrock/model/{ok}/invoke"))
            .is_ok());
        let long = "a".repeat(2049);
        let (door, e) = d
            .parse(&post, &format!("/bedrock/model/{long}/invoke"))
            .unwrap_err();
        assert_eq!((door, e.status()), (FrontDoor::Bedrock, 400));
        let long = "m".repeat(257);
        let vertex =
            format!("/vertex/projects/p/locations/l/publishers/anthropic/models/{long}:rawPredict");
        assert_eq!(d.parse(&post, &vertex).unwrap_err().0, FrontDoor::Vertex);
        let mut info = d.parse(&post, "/v1/messages").unwrap();
        let body = format!(r#"{{"model":"{long}","max_tokens":1,"messages":[]}}"#);
        assert_eq!(
            info.complete_from_body(body.as_bytes())
                .unwrap_err()
                .status(),
            400
        );
        let mut info = d.parse(&post, "/v1/messages").unwrap();
        let body = format!(
            r#"{{"model":"{}","max_tokens":1,"messages":[]}}"#,
            "m".repeat(256)
        );
        assert!(info.complete_from_body(body.as_bytes()).is_ok());
    }

    #[test]
    fn each_prefix_reaches_its_front_door() {
        let d = doors();
        let post = http::Method::POST;
        let r = d.parse(&post, "/bedrock/model/m/invoke").unwrap();
        assert_eq!(r.front_door, FrontDoor::Bedrock);
        let r = d
            .parse(
                &post,
                "/vertex/projects/p/locations/l/publishers/anthropic/models/m:rawPredict",
            )
            .unwrap();
        assert_eq!(r.front_door, FrontDoor::Vertex);
        let r = d
            .parse(
                &post,
                "/v1/projects/p/locations/l/publishers/anthropic/models/m:streamRawPredict",
            )
            .unwrap();
        assert_eq!(
            (r.front_door, r.operation),
            (FrontDoor::Vertex, Operation::InvokeStream)
        );
        let r = d.parse(&post, "/v1/messages?beta=true").unwrap();
        assert_eq!(r.front_door, FrontDoor::Anthropic);
        let (door, e) = d.parse(&post, "/nothing/here").unwrap_err();
        assert_eq!(door, FrontDoor::Anthropic);
        assert_eq!(e.status(), 404);
        let (door, _) = d.parse(&post, "/vertex/nope").unwrap_err();
        assert_eq!(door, FrontDoor::Vertex);
    }

    #[test]
    fn the_body_completes_anthropic_and_vertex_requests() {
        let d = doors();
        let post = http::Method::POST;
        let mut r = d.parse(&post, "/v1/messages").unwrap();
        r.complete_from_body(br#"{"model":"claude-sonnet-4-5","stream":true,"messages":[]}"#)
            .unwrap();
        assert_eq!(r.model_id.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(r.operation, Operation::InvokeStream);
        let mut r = d.parse(&post, "/v1/messages").unwrap();
        assert_eq!(
            r.complete_from_body(br#"{"messages":[]}"#)
                .unwrap_err()
                .status(),
            400
        );
        let mut r = d.parse(&post, "/v1/messages").unwrap();
        assert_eq!(r.complete_from_body(b"not json").unwrap_err().status(), 400);
        let mut r = d
            .parse(
                &post,
                "/vertex/projects/p/locations/l/publishers/anthropic/models/m:rawPredict",
            )
            .unwrap();
        r.complete_from_body(br#"{"stream":true}"#).unwrap();
        assert_eq!(
            (r.operation, r.model_id.as_deref()),
            (Operation::InvokeStream, Some("m"))
        );
        // Bedrock bodies are not read here.
        let mut r = d.parse(&post, "/bedrock/model/m/invoke").unwrap();
        r.complete_from_body(b"not json").unwrap();
    }
}
