//! Crossing providers: a request in one protocol sent to a backend of another, and its answer
//! brought back in the client's protocol.
//!
//! All three providers serve the same Anthropic Messages API; they differ in the envelope:
//!
//! | | Bedrock | Vertex AI | Anthropic |
//! |---|---|---|---|
//! | model | in the path | in the path | `model` in the body |
//! | version | body `anthropic_version: bedrock-2023-05-31` | body `vertex-2023-10-16` | header `anthropic-version` |
//! | betas | body `anthropic_beta` array | header `anthropic-beta` | header `anthropic-beta` |
//! | streaming | the path (`invoke-with-response-stream`) | path or body `stream` | body `stream` |
//! | stream framing | AWS event-stream, base64 chunks | SSE | SSE |
//! | token counting | `count-tokens`, the invoke body in base64 | `count-tokens:rawPredict` | `count_tokens` |
//!
//! [`request`] builds what is sent upstream for one backend. A request that stays in its own
//! protocol keeps its body byte for byte (only a rewritten model or a beta the backend would
//! reject changes it); a request that crosses is rebuilt through a JSON object.
//!
//! [`ResponseTranslation`] turns the answer around, per event as it streams: SSE events become
//! event-stream `chunk` frames (with CRCs and `amazon-bedrock-invocationMetrics` on the last),
//! event-stream frames become SSE events, and error answers keep their status and wording in
//! the client's error shape.
//!
//! What cannot cross is a [`TranslateError`]: the data plane answers a request error as a bad
//! request (or tries another backend), and cuts a stream on a stream error.
//!
//! Beta flags: Bedrock and Vertex refuse some `anthropic-beta` values that the first-party API
//! accepts. Each backend has the list of betas it accepts ([`AcceptedBetas`]); the others are
//! dropped (and reported) instead of failing the call.

use std::time::Instant;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::TranslateError;
use super::eventstream::{encode_message, header_str, EventStreamDecoder};
use super::sse::{encode_event, SseDecoder};
use super::usage::{Usage, UsageObserver};
use crate::protocol::error::{anthropic_error_type, error_message, render_status, ErrorResponse};
use crate::protocol::BackendKind;
use crate::protocol::{FrontDoor, Operation, RequestInfo};

/// `anthropic_version` in Bedrock bodies.
pub const BEDROCK_VERSION: &str = "bedrock-2023-05-31";
/// `anthropic_version` in Vertex bodies.
pub const VERTEX_VERSION: &str = "vertex-2023-10-16";
/// The `anthropic-version` header the Anthropic API needs.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Betas Bedrock accepts for Claude models. The first-party API accepts more
/// (`claude-code-20250219`, `oauth-2025-04-20`, ...), which Bedrock refuses with a 400.
pub const BEDROCK_BETAS: &[&str] = &[
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
    "fine-grained-tool-streaming-2025-05-14",
];

/// Betas Vertex AI accepts: Bedrock's, plus the two Claude Code always sends in Vertex mode.
pub const VERTEX_BETAS: &[&str] = &[
    "claude-code-20250219",
    "web-search-2025-03-05",
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
    "fine-grained-tool-streaming-2025-05-14",
];

/// The `anthropic-beta` values a backend accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptedBetas {
    /// Every value (the Anthropic API).
    All,
    /// Only these.
    Only(Vec<String>),
}

impl AcceptedBetas {
    /// The configured list, or the default for the backend's kind.
    pub fn new(kind: BackendKind, configured: Option<&[String]>) -> Self {
        match configured {
            Some(list) if list.iter().any(|b| b == "*") => AcceptedBetas::All,
            Some(list) => AcceptedBetas::Only(list.to_vec()),
            None => match kind {
                BackendKind::Anthropic => AcceptedBetas::All,
                BackendKind::Bedrock => {
                    AcceptedBetas::Only(BEDROCK_BETAS.iter().map(|b| b.to_string()).collect())
                }
                BackendKind::Vertex => {
                    AcceptedBetas::Only(VERTEX_BETAS.iter().map(|b| b.to_string()).collect())
                }
            },
        }
    }

    /// Whether `beta` may be sent.
    pub fn accepts(&self, beta: &str) -> bool {
        match self {
            AcceptedBetas::All => true,
            AcceptedBetas::Only(list) => list.iter().any(|b| b == beta),
        }
    }
}

/// Where a request is going.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The backend's kind.
    pub kind: BackendKind,
    /// The model ID on that backend.
    pub model: &'a str,
    /// Vertex: the backend's project.
    pub project: &'a str,
    /// Vertex: the backend's location.
    pub region: &'a str,
    /// The betas it accepts.
    pub betas: &'a AcceptedBetas,
}

/// What to do with the client's `anthropic-beta` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BetaHeader {
    /// Forward it as the client sent it.
    Keep,
    /// Send this value instead.
    Set(String),
    /// Send none.
    Remove,
}

/// A request as it goes to one backend (before the backend adds its authentication).
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Path and query, relative to the backend's endpoint.
    pub path: String,
    /// The body.
    pub body: Bytes,
    /// The operation as the backend sees it.
    pub operation: Operation,
    /// The `anthropic-beta` header to send.
    pub beta_header: BetaHeader,
    /// An `anthropic-version` header to add when the client sent none.
    pub version_header: Option<&'static str>,
    /// Betas dropped because the backend would refuse them.
    pub dropped_betas: Vec<String>,
}

/// Builds the request for `target` from the client's request.
///
/// `original_model` is the model as the client named it; `info.model_id` is the model after
/// plugins (which may have rewritten it).
pub fn request(
    info: &RequestInfo,
    original_model: Option<&str>,
    target: &Target<'_>,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> Result<Outgoing, TranslateError> {
    let header_betas: Vec<String> = headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    if info.front_door.kind() == target.kind {
        same_protocol(info, original_model, target, header_betas, body)
    } else {
        cross_protocol(info, target, header_betas, body)
    }
}

/// Keeps `accepted` betas, reporting the rest in `dropped`.
fn filter_betas(
    betas: Vec<String>,
    accepted: &AcceptedBetas,
    dropped: &mut Vec<String>,
) -> Vec<String> {
    let (keep, drop): (Vec<_>, Vec<_>) = betas.into_iter().partition(|b| accepted.accepts(b));
    for d in drop {
        if !dropped.contains(&d) {
            dropped.push(d);
        }
    }
    keep
}

fn beta_header(kept: Vec<String>, had_any: bool, dropped_any: bool) -> BetaHeader {
    match (had_any, dropped_any, kept.is_empty()) {
        (false, _, _) | (true, false, _) => BetaHeader::Keep,
        (true, true, true) => BetaHeader::Remove,
        (true, true, false) => BetaHeader::Set(kept.join(",")),
    }
}

fn same_protocol(
    info: &RequestInfo,
    original_model: Option<&str>,
    target: &Target<'_>,
    header_betas: Vec<String>,
    body: &Bytes,
) -> Result<Outgoing, TranslateError> {
    let mut dropped = Vec::new();
    let had_header = !header_betas.is_empty();
    let kept = filter_betas(header_betas, target.betas, &mut dropped);
    let beta = beta_header(kept, had_header, !dropped.is_empty());
    let model_changed = original_model != Some(target.model);
    let mut out = Outgoing {
        path: String::new(),
        body: body.clone(),
        operation: info.operation,
        beta_header: beta,
        version_header: None,
        dropped_betas: dropped,
    };
    match target.kind {
        BackendKind::Bedrock => {
            out.path = if model_changed && info.model_id.is_some() {
                crate::protocol::model_path::with_model(info, target.model)
            } else {
                info.upstream_path.clone()
            };
            // Betas in the body: looked at only when the body names any.
            if matches!(info.operation, Operation::Invoke | Operation::InvokeStream)
                && memchr::memmem::find(body, b"\"anthropic_beta\"").is_some()
            {
                #[derive(Deserialize)]
                struct Betas {
                    anthropic_beta: Option<Vec<String>>,
                }
                if let Ok(Betas {
                    anthropic_beta: Some(betas),
                }) = serde_json::from_slice::<Betas>(body)
                {
                    if betas.iter().any(|b| !target.betas.accepts(b)) {
                        let mut object = parse_object(body)?;
                        let kept = filter_betas(betas, target.betas, &mut out.dropped_betas);
                        object.insert("anthropic_beta".into(), kept.into());
                        out.body = to_bytes(&object);
                    }
                }
            }
        }
        BackendKind::Vertex => {
            out.path = vertex_path(target, info.operation);
            if info.operation == Operation::CountTokens {
                let mut object = parse_object(body)?;
                if object.get("model").and_then(Value::as_str) != Some(target.model) {
                    object.insert("model".into(), target.model.into());
                    out.body = to_bytes(&object);
                }
            }
        }
        BackendKind::Anthropic => {
            let query = info
                .upstream_path
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            out.path = format!("{}{query}", anthropic_path(info.operation));
            if model_changed {
                let mut object = parse_object(body)?;
                object.insert("model".into(), target.model.into());
                out.body = to_bytes(&object);
            }
        }
    }
    Ok(out)
}

/// The request rebuilt for a backend of another provider: the client's envelope taken off
/// (step 1), the target's put on (step 2), with the betas the target refuses dropped.
fn cross_protocol(
    info: &RequestInfo,
    target: &Target<'_>,
    header_betas: Vec<String>,
    body: &Bytes,
) -> Result<Outgoing, TranslateError> {
    if info.operation.bedrock_only() {
        return Err(TranslateError::BedrockOnly {
            operation: info.operation.as_str(),
        });
    }

    // 1. The client's body, as a plain Messages request.
    let (object, betas) = plain_messages(info, header_betas, body)?;

    // 2. The target's envelope.
    let mut dropped = Vec::new();
    let betas = filter_betas(betas, target.betas, &mut dropped);
    let joined = (!betas.is_empty()).then(|| betas.join(","));
    let mut out = Outgoing {
        path: String::new(),
        body: Bytes::new(),
        operation: info.operation,
        beta_header: joined.map_or(BetaHeader::Remove, BetaHeader::Set),
        version_header: None,
        dropped_betas: dropped,
    };
    match target.kind {
        BackendKind::Bedrock => bedrock_envelope(info, target, object, betas, &mut out),
        BackendKind::Vertex => vertex_envelope(info, target, object, &mut out),
        BackendKind::Anthropic => anthropic_envelope(info, target, object, &mut out),
    }
    Ok(out)
}

/// The client's body without its provider's envelope (`anthropic_version`, `model`,
/// `stream`, body betas; a Bedrock count unwrapped from its base64 invoke body), and the
/// betas asked for in the headers and the body, each once.
fn plain_messages(
    info: &RequestInfo,
    header_betas: Vec<String>,
    body: &Bytes,
) -> Result<(Map<String, Value>, Vec<String>), TranslateError> {
    let counting = info.operation == Operation::CountTokens;
    let mut object = if counting && info.front_door == FrontDoor::Bedrock {
        unwrap_bedrock_count(body)?
    } else {
        parse_object(body)?
    };
    let mut betas = header_betas;
    if let Some(Value::Array(body_betas)) = object.remove("anthropic_beta") {
        for b in body_betas.iter().filter_map(Value::as_str) {
            if !betas.iter().any(|x| x == b) {
                betas.push(b.to_string());
            }
        }
    }
    object.remove("anthropic_version");
    object.remove("model");
    object.remove("stream");
    Ok((object, betas))
}

/// Bedrock's envelope: the model and the streaming choice in the path, version and betas in
/// the body (no beta header); a count is an invoke body in base64.
fn bedrock_envelope(
    info: &RequestInfo,
    target: &Target<'_>,
    mut object: Map<String, Value>,
    betas: Vec<String>,
    out: &mut Outgoing,
) {
    object.insert("anthropic_version".into(), BEDROCK_VERSION.into());
    if !betas.is_empty() {
        object.insert("anthropic_beta".into(), betas.into());
    }
    out.beta_header = BetaHeader::Remove;
    let op = match info.operation {
        Operation::InvokeStream => "invoke-with-response-stream",
        Operation::CountTokens => "count-tokens",
        _ => "invoke",
    };
    out.path = crate::protocol::model_path::model_path(target.model, op);
    out.body = if info.operation == Operation::CountTokens {
        // A count needs a valid invoke body, and invoke requires `max_tokens`.
        object.entry("max_tokens").or_insert(Value::from(1));
        let inner = base64::engine::general_purpose::STANDARD.encode(to_bytes(&object));
        to_bytes(
            serde_json::json!({ "input": { "invokeModel": { "body": inner } } })
                .as_object()
                .expect("an object literal"),
        )
    } else {
        to_bytes(&object)
    };
}

/// Vertex's envelope: the model in the path (and in the body of a count), version and
/// `stream` in the body.
fn vertex_envelope(
    info: &RequestInfo,
    target: &Target<'_>,
    mut object: Map<String, Value>,
    out: &mut Outgoing,
) {
    if info.operation == Operation::CountTokens {
        object.insert("model".into(), target.model.into());
    } else {
        object.insert("anthropic_version".into(), VERTEX_VERSION.into());
        if info.operation == Operation::InvokeStream {
            object.insert("stream".into(), true.into());
        }
    }
    out.path = vertex_path(target, info.operation);
    out.body = to_bytes(&object);
}

/// The Anthropic API's envelope: `model` and `stream` in the body, the version in a header.
fn anthropic_envelope(
    info: &RequestInfo,
    target: &Target<'_>,
    mut object: Map<String, Value>,
    out: &mut Outgoing,
) {
    object.insert("model".into(), target.model.into());
    if info.operation == Operation::InvokeStream {
        object.insert("stream".into(), true.into());
    }
    out.path = anthropic_path(info.operation).to_string();
    out.version_header = Some(ANTHROPIC_VERSION);
    out.body = to_bytes(&object);
}

/// Characters left as they are in a Vertex model segment: the AWS set plus `@`, which Google's
/// SDKs send raw.
const VERTEX_SEGMENT: &percent_encoding::AsciiSet =
    &crate::protocol::model_path::SEGMENT.remove(b'@');

fn vertex_path(target: &Target<'_>, operation: Operation) -> String {
    let encoded =
        || percent_encoding::utf8_percent_encode(target.model, VERTEX_SEGMENT).to_string();
    let (model, verb) = match operation {
        Operation::CountTokens => ("count-tokens".to_string(), "rawPredict"),
        Operation::InvokeStream => (encoded(), "streamRawPredict"),
        _ => (encoded(), "rawPredict"),
    };
    format!(
        "/v1/projects/{}/locations/{}/publishers/anthropic/models/{model}:{verb}",
        target.project, target.region
    )
}

fn anthropic_path(operation: Operation) -> &'static str {
    match operation {
        Operation::CountTokens => "/v1/messages/count_tokens",
        _ => "/v1/messages",
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(TranslateError::NotAnObject),
        Err(e) => Err(TranslateError::InvalidJson(e)),
    }
}

fn to_bytes(object: &Map<String, Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(object).expect("JSON values serialize"))
}

/// The invoke body inside a Bedrock `count-tokens` request.
fn unwrap_bedrock_count(body: &[u8]) -> Result<Map<String, Value>, TranslateError> {
    let outer = parse_object(body)?;
    let inner = outer
        .get("input")
        .and_then(|i| i.get("invokeModel"))
        .and_then(|i| i.get("body"))
        .and_then(Value::as_str)
        .ok_or(TranslateError::MissingCountBody)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .map_err(|_| TranslateError::CountBodyNotBase64)?;
    parse_object(&decoded)
}

/// How an answer is brought back into the client's protocol.
#[derive(Debug)]
pub enum ResponseTranslation {
    /// Forwarded as it is (the zero-copy path).
    None,
    /// SSE events → Bedrock event-stream `chunk` frames.
    SseToEventStream(Box<SseToEventStream>),
    /// Bedrock event-stream frames → SSE events.
    EventStreamToSse(Box<EventStreamToSse>),
    /// A token count in another provider's shape (small; read whole).
    CountTokens(FrontDoor),
    /// An upstream error in another provider's shape (small; read whole).
    Error(FrontDoor),
}

impl ResponseTranslation {
    /// The translation for an answer from a backend of `kind` to a client of `front_door`.
    pub fn choose(
        front_door: FrontDoor,
        kind: BackendKind,
        operation: Operation,
        status: u16,
        started: Instant,
    ) -> Self {
        if front_door.kind() == kind {
            return ResponseTranslation::None;
        }
        if status >= 400 {
            return ResponseTranslation::Error(front_door);
        }
        match operation {
            Operation::InvokeStream => match (front_door, kind) {
                (FrontDoor::Bedrock, _) => {
                    ResponseTranslation::SseToEventStream(Box::new(SseToEventStream::new(started)))
                }
                (_, BackendKind::Bedrock) => ResponseTranslation::EventStreamToSse(Box::default()),
                _ => ResponseTranslation::None,
            },
            Operation::CountTokens
                if front_door == FrontDoor::Bedrock || kind == BackendKind::Bedrock =>
            {
                ResponseTranslation::CountTokens(front_door)
            }
            _ => ResponseTranslation::None,
        }
    }

    /// Whether the answer must be read whole before it is translated.
    pub fn buffers(&self) -> bool {
        matches!(
            self,
            ResponseTranslation::CountTokens(_) | ResponseTranslation::Error(_)
        )
    }

    /// The `content-type` of the translated answer, when it changes.
    pub fn content_type(&self) -> Option<&'static str> {
        match self {
            ResponseTranslation::SseToEventStream(_) => Some("application/vnd.amazon.eventstream"),
            ResponseTranslation::EventStreamToSse(_) => Some("text/event-stream"),
            ResponseTranslation::CountTokens(_) | ResponseTranslation::Error(_) => {
                Some("application/json")
            }
            ResponseTranslation::None => None,
        }
    }

    /// Translates one streamed chunk, appending what the client gets to `out`.
    pub fn chunk(&mut self, chunk: &Bytes, out: &mut Vec<Bytes>) -> Result<(), TranslateError> {
        match self {
            ResponseTranslation::SseToEventStream(t) => t.chunk(chunk, out),
            ResponseTranslation::EventStreamToSse(t) => t.chunk(chunk, out),
            _ => {
                out.push(chunk.clone());
                Ok(())
            }
        }
    }

    /// Translates a whole buffered answer (count or error) with its status.
    pub fn whole(&self, status: u16, body: &[u8], retry_after: Option<u64>) -> ErrorResponse {
        match self {
            ResponseTranslation::CountTokens(front_door) => {
                let count = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                    v.get("input_tokens")
                        .or_else(|| v.get("inputTokens"))
                        .and_then(Value::as_u64)
                });
                let Some(count) = count else {
                    return render_status(
                        *front_door,
                        502,
                        "the backend's token count could not be read",
                        None,
                    );
                };
                let body = if *front_door == FrontDoor::Bedrock {
                    serde_json::json!({ "inputTokens": count })
                } else {
                    serde_json::json!({ "input_tokens": count })
                };
                ErrorResponse {
                    status,
                    headers: Vec::new(),
                    content_type: "application/json",
                    body: Bytes::from(body.to_string()),
                }
            }
            ResponseTranslation::Error(front_door) => {
                let message = error_message(body).unwrap_or_else(|| {
                    let text = String::from_utf8_lossy(body);
                    let text = text.trim();
                    if text.is_empty() {
                        format!("the backend answered with status {status}")
                    } else {
                        text.chars().take(1000).collect()
                    }
                });
                render_status(*front_door, status, &message, retry_after)
            }
            _ => ErrorResponse {
                status,
                headers: Vec::new(),
                content_type: "application/json",
                body: Bytes::copy_from_slice(body),
            },
        }
    }
}

/// SSE Anthropic events → Bedrock `invoke-with-response-stream` frames.
#[derive(Debug)]
pub struct SseToEventStream {
    sse: SseDecoder,
    usage: UsageObserver,
    started: Instant,
    first_event_ms: Option<u64>,
}

impl SseToEventStream {
    /// A translator for a request that started at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            sse: SseDecoder::new(),
            usage: UsageObserver::new(super::usage::ResponseShape::Opaque),
            started,
            first_event_ms: None,
        }
    }

    fn chunk(&mut self, chunk: &Bytes, out: &mut Vec<Bytes>) -> Result<(), TranslateError> {
        self.sse.push(chunk);
        while let Some(event) = self.sse.next_event()? {
            if event.data.is_empty() {
                continue;
            }
            let now_ms = self.started.elapsed().as_millis() as u64;
            self.first_event_ms.get_or_insert(now_ms);
            self.usage.on_anthropic_event(&event.data);
            out.push(self.frame(&event.data, now_ms)?);
        }
        Ok(())
    }

    fn frame(&self, data: &[u8], now_ms: u64) -> Result<Bytes, TranslateError> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        let kind: Kind<'_> = serde_json::from_slice(data).map_err(TranslateError::StreamEvent)?;
        match kind.kind.as_ref() {
            "error" => {
                let v: Value = serde_json::from_slice(data).unwrap_or_default();
                let error_type = v["error"]["type"].as_str().unwrap_or("api_error");
                let message = v["error"]["message"].as_str().unwrap_or("stream error");
                let exception = match error_type {
                    "overloaded_error" => "serviceUnavailableException",
                    "rate_limit_error" => "throttlingException",
                    "invalid_request_error" => "validationException",
                    "api_error" => "internalServerException",
                    _ => "modelStreamErrorException",
                };
                Ok(encode_message(
                    &[
                        (":message-type", "exception"),
                        (":exception-type", exception),
                        (":content-type", "application/json"),
                    ],
                    Bytes::from(serde_json::json!({ "message": message }).to_string()),
                ))
            }
            "message_stop" => {
                let mut v: Value = serde_json::from_slice(data).unwrap_or_default();
                let u: Usage = self.usage.usage().unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "amazon-bedrock-invocationMetrics".into(),
                        serde_json::json!({
                            "inputTokenCount": u.input_tokens,
                            "outputTokenCount": u.output_tokens,
                            "invocationLatency": now_ms,
                            "firstByteLatency": self.first_event_ms.unwrap_or(now_ms),
                            "cacheReadInputTokenCount": u.cache_read_tokens,
                            "cacheWriteInputTokenCount": u.cache_write_tokens,
                        }),
                    );
                }
                Ok(chunk_frame(v.to_string().as_bytes()))
            }
            _ => Ok(chunk_frame(data)),
        }
    }
}

/// One Bedrock `chunk` event carrying an Anthropic event.
fn chunk_frame(event: &[u8]) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD.encode(event);
    let mut payload = BytesMut::with_capacity(b64.len() + 12);
    payload.extend_from_slice(b"{\"bytes\":\"");
    payload.extend_from_slice(b64.as_bytes());
    payload.extend_from_slice(b"\"}");
    encode_message(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.freeze(),
    )
}

/// Bedrock `invoke-with-response-stream` frames → SSE Anthropic events.
#[derive(Debug, Default)]
pub struct EventStreamToSse {
    frames: EventStreamDecoder,
}

impl EventStreamToSse {
    fn chunk(&mut self, chunk: &Bytes, out: &mut Vec<Bytes>) -> Result<(), TranslateError> {
        self.frames.push(chunk.clone());
        while let Some(message) = self.frames.next_message()? {
            match header_str(&message, ":message-type") {
                Some("exception") | Some("error") => {
                    let exception = header_str(&message, ":exception-type")
                        .or_else(|| header_str(&message, ":error-code"))
                        .unwrap_or("internalServerException");
                    let status = match exception {
                        "throttlingException" => 429,
                        "validationException" => 400,
                        "serviceUnavailableException" => 529,
                        _ => 500,
                    };
                    let text =
                        error_message(message.payload()).unwrap_or_else(|| exception.to_string());
                    let event = serde_json::json!({
                        "type": "error",
                        "error": { "type": anthropic_error_type(status), "message": text },
                    });
                    out.push(encode_event("error", event.to_string().as_bytes()));
                }
                _ => {
                    #[derive(Deserialize)]
                    struct Chunk {
                        bytes: String,
                    }
                    let chunk: Chunk = serde_json::from_slice(message.payload())
                        .map_err(TranslateError::ChunkPayload)?;
                    let event = base64::engine::general_purpose::STANDARD
                        .decode(chunk.bytes.as_bytes())
                        .map_err(TranslateError::ChunkBase64)?;
                    let mut v: Value =
                        serde_json::from_slice(&event).map_err(TranslateError::StreamEvent)?;
                    let kind = v["type"].as_str().unwrap_or("message").to_string();
                    let removed = v
                        .as_object_mut()
                        .and_then(|o| o.remove("amazon-bedrock-invocationMetrics"))
                        .is_some();
                    let data = if removed {
                        Bytes::from(v.to_string())
                    } else {
                        Bytes::from(event)
                    };
                    out.push(encode_event(&kind, &data));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::usage::ResponseShape;

    fn info(front_door: FrontDoor, operation: Operation, model: &str, path: &str) -> RequestInfo {
        RequestInfo {
            front_door,
            operation,
            model_id: Some(model.into()),
            upstream_path: path.into(),
        }
    }

    fn headers(betas: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("anthropic-beta", betas.parse().unwrap());
        h
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    fn target<'a>(kind: BackendKind, model: &'a str, betas: &'a AcceptedBetas) -> Target<'a> {
        Target {
            kind,
            model,
            project: "proj",
            region: "us-east5",
            betas,
        }
    }

    fn translation(
        front_door: FrontDoor,
        kind: BackendKind,
        operation: Operation,
        status: u16,
    ) -> ResponseTranslation {
        ResponseTranslation::choose(front_door, kind, operation, status, Instant::now())
    }

    const CLOUD: fn() -> AcceptedBetas = || AcceptedBetas::new(BackendKind::Bedrock, None);

    #[test]
    fn anthropic_to_bedrock_moves_model_stream_and_betas() {
        let betas = CLOUD();
        let i = info(
            FrontDoor::Anthropic,
            Operation::InvokeStream,
            "claude-sonnet-4-5",
            "/v1/messages?beta=true",
        );
        let body = Bytes::from_static(br#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#);
        let t = target(
            BackendKind::Bedrock,
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            &betas,
        );
        let out = request(
            &i,
            Some("claude-sonnet-4-5"),
            &t,
            &headers("claude-code-20250219,interleaved-thinking-2025-05-14"),
            &body,
        )
        .unwrap();
        assert_eq!(
            out.path,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
        );
        let b = json(&out.body);
        assert_eq!(b["anthropic_version"], BEDROCK_VERSION);
        assert_eq!(
            b["anthropic_beta"],
            serde_json::json!(["interleaved-thinking-2025-05-14"])
        );
        assert!(b.get("model").is_none() && b.get("stream").is_none());
        assert_eq!(out.beta_header, BetaHeader::Remove);
        assert_eq!(out.dropped_betas, vec!["claude-code-20250219".to_string()]);
    }

    #[test]
    fn bedrock_to_vertex_puts_betas_in_the_header_and_streams() {
        let betas = CLOUD();
        let i = info(
            FrontDoor::Bedrock,
            Operation::InvokeStream,
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "/model/x/invoke-with-response-stream",
        );
        let body = Bytes::from_static(br#"{"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["context-1m-2025-08-07"],"max_tokens":5,"messages":[]}"#);
        let t = target(BackendKind::Vertex, "claude-sonnet-4-5@20250929", &betas);
        let out = request(
            &i,
            i.model_id.as_deref(),
            &t,
            &http::HeaderMap::new(),
            &body,
        )
        .unwrap();
        assert_eq!(out.path, "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict");
        let b = json(&out.body);
        assert_eq!(b["anthropic_version"], VERTEX_VERSION);
        assert_eq!(b["stream"], true);
        assert!(b.get("anthropic_beta").is_none());
        assert_eq!(
            out.beta_header,
            BetaHeader::Set("context-1m-2025-08-07".into())
        );
    }

    #[test]
    fn vertex_to_anthropic_adds_model_and_version_header() {
        let all = AcceptedBetas::All;
        let i = info(
            FrontDoor::Vertex,
            Operation::Invoke,
            "claude-haiku-4-5@20251001",
            "/projects/p/...",
        );
        let body = Bytes::from_static(
            br#"{"anthropic_version":"vertex-2023-10-16","max_tokens":5,"messages":[]}"#,
        );
        let t = target(BackendKind::Anthropic, "claude-haiku-4-5-20251001", &all);
        let out = request(
            &i,
            i.model_id.as_deref(),
            &t,
            &headers("oauth-2025-04-20"),
            &body,
        )
        .unwrap();
        assert_eq!(out.path, "/v1/messages");
        let b = json(&out.body);
        assert_eq!(b["model"], "claude-haiku-4-5-20251001");
        assert!(b.get("anthropic_version").is_none() && b.get("stream").is_none());
        assert_eq!(out.version_header, Some(ANTHROPIC_VERSION));
        assert_eq!(out.beta_header, BetaHeader::Set("oauth-2025-04-20".into()));
    }

    #[test]
    fn same_protocol_keeps_the_body_bytes() {
        let betas = CLOUD();
        let path = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke";
        let i = info(
            FrontDoor::Bedrock,
            Operation::Invoke,
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            path,
        );
        let body = Bytes::from_static(br#"{ "anthropic_version": "bedrock-2023-05-31", "anthropic_beta": ["context-1m-2025-08-07"], "messages": [] }"#);
        let t = target(
            BackendKind::Bedrock,
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            &betas,
        );
        let out = request(
            &i,
            i.model_id.as_deref(),
            &t,
            &http::HeaderMap::new(),
            &body,
        )
        .unwrap();
        assert_eq!(out.path, path);
        assert_eq!(out.body, body, "byte for byte");
        // A beta Bedrock refuses is dropped from the body.
        let body = Bytes::from_static(
            br#"{"anthropic_beta":["claude-code-20250219","context-1m-2025-08-07"],"messages":[]}"#,
        );
        let out = request(
            &i,
            i.model_id.as_deref(),
            &t,
            &headers("oauth-2025-04-20"),
            &body,
        )
        .unwrap();
        assert_eq!(
            json(&out.body)["anthropic_beta"],
            serde_json::json!(["context-1m-2025-08-07"])
        );
        assert_eq!(out.beta_header, BetaHeader::Remove);
        assert_eq!(out.dropped_betas.len(), 2);
        // Anthropic to Anthropic with a rewritten model: only `model` changes.
        let all = AcceptedBetas::All;
        let i = info(
            FrontDoor::Anthropic,
            Operation::Invoke,
            "claude-sonnet-4-5",
            "/v1/messages?beta=true",
        );
        let body = Bytes::from_static(br#"{"model":"claude-opus-4-5","messages":[]}"#);
        let t = target(BackendKind::Anthropic, "claude-sonnet-4-5", &all);
        let out = request(
            &i,
            Some("claude-opus-4-5"),
            &t,
            &http::HeaderMap::new(),
            &body,
        )
        .unwrap();
        assert_eq!(out.path, "/v1/messages?beta=true");
        assert_eq!(json(&out.body)["model"], "claude-sonnet-4-5");
    }

    #[test]
    fn count_tokens_across_bedrock() {
        let betas = CLOUD();
        let i = info(
            FrontDoor::Anthropic,
            Operation::CountTokens,
            "claude-sonnet-4-5",
            "/v1/messages/count_tokens",
        );
        let body = Bytes::from_static(
            br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}"#,
        );
        let t = target(
            BackendKind::Bedrock,
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            &betas,
        );
        let out = request(
            &i,
            i.model_id.as_deref(),
            &t,
            &http::HeaderMap::new(),
            &body,
        )
        .unwrap();
        assert!(out.path.ends_with("/count-tokens"));
        let b = json(&out.body);
        let inner = base64::engine::general_purpose::STANDARD
            .decode(b["input"]["invokeModel"]["body"].as_str().unwrap())
            .unwrap();
        let inner: Value = serde_json::from_slice(&inner).unwrap();
        assert_eq!(inner["anthropic_version"], BEDROCK_VERSION);
        assert_eq!(inner["max_tokens"], 1);
        let r = translation(
            FrontDoor::Anthropic,
            BackendKind::Bedrock,
            Operation::CountTokens,
            200,
        );
        assert!(r.buffers());
        let a = r.whole(200, br#"{"inputTokens":42}"#, None);
        assert_eq!(json(&a.body), serde_json::json!({"input_tokens": 42}));
        // Converse stays on Bedrock.
        let c = info(
            FrontDoor::Bedrock,
            Operation::Converse,
            "m",
            "/model/m/converse",
        );
        let t = target(BackendKind::Vertex, "m", &betas);
        assert!(request(&c, Some("m"), &t, &http::HeaderMap::new(), &body).is_err());
    }

    fn sse_stream() -> Bytes {
        Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":800,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    }

    fn run(t: &mut ResponseTranslation, body: &Bytes, piece: usize) -> Bytes {
        let mut out = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let end = (at + piece).min(body.len());
            t.chunk(&body.slice(at..end), &mut out).unwrap();
            at = end;
        }
        out.concat().into()
    }

    #[test]
    fn sse_becomes_event_stream_with_invocation_metrics_and_back() {
        for piece in [1, 7, 64, 10_000] {
            let mut to_es = translation(
                FrontDoor::Bedrock,
                BackendKind::Vertex,
                Operation::InvokeStream,
                200,
            );
            let frames = run(&mut to_es, &sse_stream(), piece);
            // The frames decode (CRCs) and carry the usage a Bedrock client reads.
            let mut o = UsageObserver::new(ResponseShape::BedrockAnthropicStream);
            o.observe(&frames);
            let obs = o.finish(true);
            assert_eq!(obs.parse_error, None);
            let u = obs.usage.unwrap();
            assert_eq!(
                (u.input_tokens, u.output_tokens, u.cache_read_tokens),
                (7, 9, 800)
            );
            // And back to SSE, without the Bedrock-only metrics.
            let mut to_sse = translation(
                FrontDoor::Anthropic,
                BackendKind::Bedrock,
                Operation::InvokeStream,
                200,
            );
            let sse = run(&mut to_sse, &frames, piece);
            let text = String::from_utf8(sse.to_vec()).unwrap();
            assert!(text.starts_with("event: message_start\ndata: {"), "{text}");
            assert!(text.contains("event: message_stop\n"));
            assert!(!text.contains("invocationMetrics"));
            let mut o = UsageObserver::new(ResponseShape::AnthropicSse);
            o.observe(&sse);
            assert_eq!(o.finish(true).usage.unwrap().output_tokens, 9);
        }
    }

    #[test]
    fn stream_errors_cross_as_each_protocol_signals_them() {
        let mut to_es = translation(
            FrontDoor::Bedrock,
            BackendKind::Anthropic,
            Operation::InvokeStream,
            200,
        );
        let err = Bytes::from_static(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        let frames = run(&mut to_es, &err, 5);
        let mut o = UsageObserver::new(ResponseShape::BedrockAnthropicStream);
        o.observe(&frames);
        assert_eq!(
            o.finish(true).stream_error.as_deref(),
            Some("serviceUnavailableException")
        );
        let mut to_sse = translation(
            FrontDoor::Vertex,
            BackendKind::Bedrock,
            Operation::InvokeStream,
            200,
        );
        let sse = run(&mut to_sse, &frames, 3);
        let text = String::from_utf8(sse.to_vec()).unwrap();
        assert!(
            text.contains("\"overloaded_error\"") && text.contains("Overloaded"),
            "{text}"
        );
    }

    #[test]
    fn upstream_errors_keep_status_and_wording_in_the_client_shape() {
        let r = translation(
            FrontDoor::Anthropic,
            BackendKind::Bedrock,
            Operation::Invoke,
            429,
        );
        let e = r.whole(
            429,
            br#"{"message":"Too many requests, please wait before trying again."}"#,
            Some(3),
        );
        assert_eq!(e.status, 429);
        let b = json(&e.body);
        assert_eq!(b["error"]["type"], "rate_limit_error");
        assert_eq!(
            b["error"]["message"],
            "Too many requests, please wait before trying again."
        );
        let r = translation(
            FrontDoor::Bedrock,
            BackendKind::Vertex,
            Operation::Invoke,
            400,
        );
        let e = r.whole(
            400,
            br#"{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}"#,
            None,
        );
        assert_eq!(
            e.headers[0],
            ("x-amzn-errortype", "ValidationException".to_string())
        );
        assert_eq!(json(&e.body)["message"], "bad");
        // Same protocol: untouched.
        assert!(matches!(
            translation(
                FrontDoor::Vertex,
                BackendKind::Vertex,
                Operation::Invoke,
                429
            ),
            ResponseTranslation::None
        ));
    }
}
