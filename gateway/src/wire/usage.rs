//! Token usage, read from responses while they stream past.
//!
//! A [`UsageObserver`] is chosen per request by the shape of the answer it expects and is fed
//! every body chunk on its way to the client. It never changes or delays a chunk; if what it
//! sees cannot be parsed it stops observing (and says so in [`Observation::parse_error`]), but
//! the client still gets every byte.
//!
//! Where the numbers come from:
//! - Bedrock `invoke-with-response-stream`: the Anthropic events inside the event-stream chunks
//!   (`message_start` gives input and cache counts, the last `message_delta` the cumulative output
//!   count), overridden by `amazon-bedrock-invocationMetrics` on the last event when present.
//! - Bedrock `invoke`: the `usage` object of the JSON answer, or the
//!   `x-amzn-bedrock-*-token-count` headers.
//! - Bedrock `converse` / `converse-stream`: `usage` in the answer, or the `metadata` event.
//! - Anthropic API and Vertex AI streams: the same Anthropic events, as server-sent events.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::eventstream::{header_str, EventStreamDecoder};
use super::sse::SseDecoder;
use crate::protocol::{BackendKind, Operation};

/// Tokens billed for one request. Cache reads and writes are counted apart from plain input
/// because they are priced apart (and are most of Claude Code's tokens).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Input tokens not read from or written to the prompt cache.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write_tokens: u64,
}

impl Usage {
    /// All tokens, of every kind.
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
}

/// The shape of answer a request expects, which decides how usage is read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseShape {
    /// Bedrock event stream whose chunks carry base64 Anthropic events.
    BedrockAnthropicStream,
    /// Bedrock event stream of Converse events.
    BedrockConverseStream,
    /// Server-sent Anthropic events (Anthropic API, Vertex AI).
    AnthropicSse,
    /// One JSON Anthropic Messages answer.
    AnthropicJson,
    /// One JSON Converse answer.
    ConverseJson,
    /// Nothing to observe (token counting, control plane).
    Opaque,
}

impl ResponseShape {
    /// The shape of the answer a backend of `kind` gives to `operation`, which decides how
    /// usage is read from it.
    pub fn of(operation: Operation, kind: BackendKind) -> ResponseShape {
        match operation {
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
}

/// What an observer learnt from a whole response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Usage, if the response carried any.
    pub usage: Option<Usage>,
    /// An error the upstream reported inside a stream that had already started
    /// (event-stream exception type, or the Anthropic `error` event's type).
    pub stream_error: Option<String>,
    /// Why observing stopped early, if it did (the response itself was still forwarded).
    pub parse_error: Option<String>,
}

/// JSON answers larger than this are forwarded but not parsed for usage.
const MAX_JSON_OBSERVED: usize = 8 * 1024 * 1024;

/// Reads usage from a response body as it streams past.
#[derive(Debug)]
pub struct UsageObserver {
    shape: ResponseShape,
    frames: EventStreamDecoder,
    sse: SseDecoder,
    json: BytesMut,
    usage: Option<Usage>,
    header_usage: Option<Usage>,
    stream_error: Option<String>,
    parse_error: Option<String>,
}

impl UsageObserver {
    /// An observer for a response of the given shape.
    pub fn new(shape: ResponseShape) -> Self {
        Self {
            shape,
            frames: EventStreamDecoder::new(),
            sse: SseDecoder::new(),
            json: BytesMut::new(),
            usage: None,
            header_usage: None,
            stream_error: None,
            parse_error: None,
        }
    }

    /// Takes the usage Bedrock reports in response headers, used when the body has none.
    pub fn observe_headers(&mut self, headers: &http::HeaderMap) {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let input = get("x-amzn-bedrock-input-token-count");
        let output = get("x-amzn-bedrock-output-token-count");
        if input.is_some() || output.is_some() {
            self.header_usage = Some(Usage {
                input_tokens: input.unwrap_or(0),
                output_tokens: output.unwrap_or(0),
                cache_read_tokens: get("x-amzn-bedrock-cache-read-input-token-count").unwrap_or(0),
                cache_write_tokens: get("x-amzn-bedrock-cache-write-input-token-count")
                    .unwrap_or(0),
            });
        }
    }

    /// Observes one body chunk. Cheap: a handle clone for streams, a bounded copy for JSON.
    pub fn observe(&mut self, chunk: &Bytes) {
        if self.parse_error.is_some() {
            return;
        }
        match self.shape {
            ResponseShape::BedrockAnthropicStream | ResponseShape::BedrockConverseStream => {
                self.frames.push(chunk.clone());
                loop {
                    match self.frames.next_message() {
                        Ok(Some(message)) => self.on_message(&message),
                        Ok(None) => break,
                        Err(e) => {
                            self.parse_error = Some(format!("event-stream frame: {e}"));
                            break;
                        }
                    }
                }
            }
            ResponseShape::AnthropicSse => {
                // SSE lines straddle chunks, so the observer keeps its own copy of the bytes
                // it has not parsed yet; the client still gets the original chunk.
                self.sse.push(chunk);
                loop {
                    match self.sse.next_event() {
                        Ok(Some(event)) => {
                            if !event.data.is_empty() {
                                self.on_anthropic_event(&event.data);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            self.parse_error = Some(format!("server-sent events: {e}"));
                            break;
                        }
                    }
                }
            }
            ResponseShape::AnthropicJson | ResponseShape::ConverseJson => {
                if self.json.len() + chunk.len() > MAX_JSON_OBSERVED {
                    self.parse_error = Some("JSON answer too large to observe".into());
                    self.json = BytesMut::new();
                } else {
                    self.json.extend_from_slice(chunk);
                }
            }
            ResponseShape::Opaque => {}
        }
    }

    /// The usage seen so far in the body.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Ends observation; `complete` says whether the body arrived whole.
    pub fn finish(mut self, complete: bool) -> Observation {
        match self.shape {
            ResponseShape::AnthropicJson | ResponseShape::ConverseJson
                if complete && self.parse_error.is_none() && !self.json.is_empty() =>
            {
                let parsed = if self.shape == ResponseShape::AnthropicJson {
                    serde_json::from_slice::<AnthropicBody>(&self.json)
                        .map(|b| b.usage.map(|u| u.apply(Usage::default())))
                } else {
                    serde_json::from_slice::<ConverseBody>(&self.json)
                        .map(|b| b.usage.map(ConverseUsage::into_usage))
                };
                // An error answer is not JSON of this shape; that is not a parse failure.
                if let Ok(usage) = parsed {
                    self.usage = usage.or(self.usage);
                }
            }
            ResponseShape::AnthropicSse
                if complete && self.parse_error.is_none() && self.sse.pending() > 0 =>
            {
                self.parse_error = Some(format!(
                    "stream ended inside an event ({} bytes pending)",
                    self.sse.pending()
                ));
            }
            ResponseShape::BedrockAnthropicStream | ResponseShape::BedrockConverseStream
                if complete && self.parse_error.is_none() && self.frames.pending() > 0 =>
            {
                self.parse_error = Some(format!(
                    "stream ended inside a frame ({} bytes pending)",
                    self.frames.pending()
                ));
            }
            _ => {}
        }
        Observation {
            usage: self.usage.or(self.header_usage),
            stream_error: self.stream_error,
            parse_error: self.parse_error,
        }
    }

    fn on_message(&mut self, message: &aws_smithy_types::event_stream::Message) {
        match header_str(message, ":message-type") {
            Some("exception") | Some("error") => {
                let kind = header_str(message, ":exception-type")
                    .or_else(|| header_str(message, ":error-code"))
                    .unwrap_or("exception");
                self.stream_error = Some(kind.to_string());
                return;
            }
            _ => {}
        }
        let payload = message.payload();
        if self.shape == ResponseShape::BedrockConverseStream {
            if header_str(message, ":event-type") == Some("metadata") {
                match serde_json::from_slice::<ConverseBody>(payload) {
                    Ok(ConverseBody { usage: Some(u) }) => self.usage = Some(u.into_usage()),
                    Ok(_) => {}
                    Err(e) => self.parse_error = Some(format!("converse metadata: {e}")),
                }
            }
            return;
        }
        let chunk: ChunkPayload = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                self.parse_error = Some(format!("chunk payload: {e}"));
                return;
            }
        };
        let event = match base64::engine::general_purpose::STANDARD.decode(chunk.bytes.as_bytes()) {
            Ok(event) => event,
            Err(e) => {
                self.parse_error = Some(format!("chunk base64: {e}"));
                return;
            }
        };
        self.on_anthropic_event(&event);
    }

    /// Applies one Anthropic streaming event (as JSON) to the usage so far.
    pub fn on_anthropic_event(&mut self, event: &[u8]) {
        let event: AnthropicEvent = match serde_json::from_slice(event) {
            Ok(e) => e,
            Err(e) => {
                self.parse_error = Some(format!("anthropic event: {e}"));
                return;
            }
        };
        let current = self.usage.unwrap_or_default();
        match event.kind.as_str() {
            "message_start" => {
                if let Some(u) = event.message.and_then(|m| m.usage) {
                    self.usage = Some(u.apply(current));
                }
            }
            "message_delta" => {
                if let Some(u) = event.usage {
                    self.usage = Some(u.apply(current));
                }
            }
            "error" => {
                let kind = event
                    .error
                    .map(|e| e.kind)
                    .unwrap_or_else(|| "error".to_string());
                self.stream_error = Some(kind);
            }
            _ => {}
        }
        if let Some(m) = event.metrics {
            self.usage = Some(Usage {
                input_tokens: m.input_token_count.unwrap_or(current.input_tokens),
                output_tokens: m.output_token_count.unwrap_or(current.output_tokens),
                cache_read_tokens: m
                    .cache_read_input_token_count
                    .unwrap_or(self.usage.unwrap_or_default().cache_read_tokens),
                cache_write_tokens: m
                    .cache_write_input_token_count
                    .unwrap_or(self.usage.unwrap_or_default().cache_write_tokens),
            });
        }
    }
}

#[derive(Deserialize)]
struct ChunkPayload {
    bytes: String,
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type")]
    kind: String,
    message: Option<AnthropicBody>,
    usage: Option<AnthropicUsage>,
    error: Option<AnthropicError>,
    #[serde(rename = "amazon-bedrock-invocationMetrics")]
    metrics: Option<InvocationMetrics>,
}

#[derive(Deserialize)]
struct AnthropicError {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct AnthropicBody {
    usage: Option<AnthropicUsage>,
}

/// Anthropic usage: every count optional, because `message_delta` carries only some.
#[derive(Deserialize)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Counts present here replace those in `base` (Anthropic counts are cumulative).
    fn apply(self, base: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.unwrap_or(base.input_tokens),
            output_tokens: self.output_tokens.unwrap_or(base.output_tokens),
            cache_read_tokens: self
                .cache_read_input_tokens
                .unwrap_or(base.cache_read_tokens),
            cache_write_tokens: self
                .cache_creation_input_tokens
                .unwrap_or(base.cache_write_tokens),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvocationMetrics {
    input_token_count: Option<u64>,
    output_token_count: Option<u64>,
    cache_read_input_token_count: Option<u64>,
    cache_write_input_token_count: Option<u64>,
}

#[derive(Deserialize)]
struct ConverseBody {
    usage: Option<ConverseUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_write_input_tokens: Option<u64>,
}

impl ConverseUsage {
    fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
            cache_read_tokens: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: self.cache_write_input_tokens.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::eventstream::encode_message;

    fn chunk(event: &str) -> Bytes {
        let b64 = base64::engine::general_purpose::STANDARD.encode(event);
        encode_message(
            &[
                (":event-type", "chunk"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            Bytes::from(format!(r#"{{"bytes":"{b64}","p":"abcdef"}}"#)),
        )
    }

    fn claude_stream(with_metrics: bool) -> Bytes {
        let stop = if with_metrics {
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":7,"invocationLatency":300,"firstByteLatency":100,"cacheReadInputTokenCount":900,"cacheWriteInputTokenCount":40}}"#
        } else {
            r#"{"type":"message_stop"}"#
        };
        [
            chunk(r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"usage":{"input_tokens":12,"cache_read_input_tokens":900,"cache_creation_input_tokens":40,"output_tokens":1}}}"#),
            chunk(r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel\"lo"}}"#),
            chunk(r#"{"type":"ping"}"#),
            chunk(r#"{"type":"content_block_stop","index":0}"#),
            chunk(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":6}}"#),
            chunk(stop),
        ]
        .concat()
        .into()
    }

    fn observe_in_pieces(shape: ResponseShape, body: &Bytes, piece: usize) -> Observation {
        let mut o = UsageObserver::new(shape);
        let mut at = 0;
        while at < body.len() {
            let end = (at + piece).min(body.len());
            o.observe(&body.slice(at..end));
            at = end;
        }
        o.finish(true)
    }

    #[test]
    fn stream_usage_from_anthropic_events_whatever_the_chunking() {
        let body = claude_stream(false);
        for piece in [1, 3, 17, 64, 4096] {
            let o = observe_in_pieces(ResponseShape::BedrockAnthropicStream, &body, piece);
            assert_eq!(o.parse_error, None);
            assert_eq!(
                o.usage,
                Some(Usage {
                    input_tokens: 12,
                    output_tokens: 6,
                    cache_read_tokens: 900,
                    cache_write_tokens: 40
                }),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn invocation_metrics_are_authoritative() {
        let o = observe_in_pieces(
            ResponseShape::BedrockAnthropicStream,
            &claude_stream(true),
            50,
        );
        assert_eq!(o.usage.unwrap().output_tokens, 7);
        assert_eq!(o.usage.unwrap().cache_read_tokens, 900);
    }

    #[test]
    fn mid_stream_exception_is_reported() {
        let body: Bytes = [
            chunk(r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}"#),
            encode_message(
                &[
                    (":message-type", "exception"),
                    (":exception-type", "throttlingException"),
                    (":content-type", "application/json"),
                ],
                Bytes::from_static(br#"{"message":"slow down"}"#),
            ),
        ]
        .concat()
        .into();
        let o = observe_in_pieces(ResponseShape::BedrockAnthropicStream, &body, 10);
        assert_eq!(o.stream_error.as_deref(), Some("throttlingException"));
        assert_eq!(o.usage.unwrap().input_tokens, 5);
    }

    #[test]
    fn corrupted_stream_stops_observing_but_is_reported() {
        let mut body = claude_stream(false).to_vec();
        body[20] ^= 0xff;
        let o = observe_in_pieces(ResponseShape::BedrockAnthropicStream, &Bytes::from(body), 7);
        assert!(o.parse_error.is_some());
    }

    #[test]
    fn truncated_stream_is_reported() {
        let body = claude_stream(false);
        let cut = body.slice(..body.len() - 5);
        let o = observe_in_pieces(ResponseShape::BedrockAnthropicStream, &cut, 100);
        assert!(o.parse_error.unwrap().contains("pending"));
    }

    #[test]
    fn json_answer_usage_including_cache() {
        let body = Bytes::from_static(br#"{"id":"x","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":5,"cache_creation_input_tokens":6}}"#);
        let o = observe_in_pieces(ResponseShape::AnthropicJson, &body, 9);
        assert_eq!(
            o.usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 4,
                cache_read_tokens: 5,
                cache_write_tokens: 6
            })
        );
    }

    #[test]
    fn headers_are_used_when_the_body_has_no_usage() {
        let mut h = http::HeaderMap::new();
        h.insert("x-amzn-bedrock-input-token-count", "11".parse().unwrap());
        h.insert("x-amzn-bedrock-output-token-count", "22".parse().unwrap());
        let mut o = UsageObserver::new(ResponseShape::AnthropicJson);
        o.observe_headers(&h);
        o.observe(&Bytes::from_static(b"{\"message\":\"error\"}"));
        let u = o.finish(true).usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (11, 22));
    }

    #[test]
    fn converse_answer_and_stream_metadata() {
        let body = Bytes::from_static(br#"{"output":{"message":{"content":[{"text":"hi"}]}},"usage":{"inputTokens":8,"outputTokens":2,"totalTokens":10,"cacheReadInputTokens":1}}"#);
        let o = observe_in_pieces(ResponseShape::ConverseJson, &body, 5);
        assert_eq!(o.usage.unwrap().input_tokens, 8);
        assert_eq!(o.usage.unwrap().cache_read_tokens, 1);

        let stream: Bytes = [
            encode_message(&[(":event-type", "messageStart"), (":message-type", "event")], Bytes::from_static(br#"{"role":"assistant"}"#)),
            encode_message(&[(":event-type", "metadata"), (":message-type", "event")], Bytes::from_static(br#"{"usage":{"inputTokens":9,"outputTokens":3,"totalTokens":12},"metrics":{"latencyMs":5}}"#)),
        ]
        .concat()
        .into();
        let o = observe_in_pieces(ResponseShape::BedrockConverseStream, &stream, 4);
        assert_eq!(o.usage.unwrap().output_tokens, 3);
    }

    #[test]
    fn sse_usage_from_message_start_and_the_last_delta() {
        let body = Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":800,\"cache_creation_input_tokens\":30,\"output_tokens\":1}}}\n\n\
event: ping\ndata: {\"type\":\"ping\"}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        for piece in [1, 5, 33, 1000] {
            let o = observe_in_pieces(ResponseShape::AnthropicSse, &body, piece);
            assert_eq!(o.parse_error, None);
            assert_eq!(
                o.usage,
                Some(Usage {
                    input_tokens: 7,
                    output_tokens: 9,
                    cache_read_tokens: 800,
                    cache_write_tokens: 30
                })
            );
        }
        let error = Bytes::from_static(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        let o = observe_in_pieces(ResponseShape::AnthropicSse, &error, 4);
        assert_eq!(o.stream_error.as_deref(), Some("overloaded_error"));
    }
}
