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
//!
//! A stream that ends before its final usage (the client went away, the upstream failed) is
//! still billed for what it generated: the observer estimates the output tokens from the text
//! of every content delta it sees (`content_block_delta` events, ConverseStream
//! `contentBlockDelta` events), at a token per started 4 bytes of each delta and at least one a
//! delta, and bills the larger of that estimate and the count reported so far, saying so in
//! [`Observation::output_estimated`]. When the final count arrived, it alone is billed.

use std::borrow::Cow;

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
    /// Input tokens written to the prompt cache (for 5 minutes and for an hour).
    pub cache_write_tokens: u64,
    /// The part of `cache_write_tokens` written for an hour (priced apart from 5-minute
    /// writes); zero where the upstream does not break writes down.
    pub cache_write_1h_tokens: u64,
}

impl Usage {
    /// All tokens, of every kind (1-hour cache writes are counted once, in `cache_write_tokens`).
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
    /// `usage.output_tokens` is the gateway's estimate, not the upstream's count: the stream
    /// ended before its final usage, so the larger of the count reported so far and the
    /// estimate from the content deltas seen was taken.
    pub output_estimated: bool,
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
    /// Output tokens estimated from the content deltas seen so far.
    estimated_output: u64,
    /// The upstream's final output count was seen (the last `message_delta`, the Bedrock
    /// invocation metrics or the ConverseStream `metadata` event).
    final_output: bool,
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
            estimated_output: 0,
            final_output: false,
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
                cache_write_1h_tokens: 0,
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

    /// The usage reported so far in the body (without the estimate from content deltas).
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
        let mut usage = self.usage.or(self.header_usage);
        let streamed = matches!(
            self.shape,
            ResponseShape::BedrockAnthropicStream
                | ResponseShape::BedrockConverseStream
                | ResponseShape::AnthropicSse
        );
        // Without the final count, what was generated is at least what the deltas carried.
        let output_estimated =
            streamed && !self.final_output && (usage.is_some() || self.estimated_output > 0);
        if output_estimated {
            let u = usage.get_or_insert_with(Usage::default);
            u.output_tokens = u.output_tokens.max(self.estimated_output);
        }
        Observation {
            usage,
            stream_error: self.stream_error,
            parse_error: self.parse_error,
            output_estimated,
        }
    }

    /// Adds one content delta of `bytes` bytes of text to the output estimate.
    fn count_delta(&mut self, bytes: usize) {
        self.estimated_output += (bytes as u64).div_ceil(4).max(1);
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
            match header_str(message, ":event-type") {
                Some("contentBlockDelta") => {
                    match serde_json::from_slice::<ConverseDeltaEvent>(payload) {
                        Ok(ConverseDeltaEvent { delta: Some(d) }) => {
                            if let Some(bytes) = d.text_len() {
                                self.count_delta(bytes);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => self.parse_error = Some(format!("converse delta: {e}")),
                    }
                }
                Some("metadata") => match serde_json::from_slice::<ConverseBody>(payload) {
                    Ok(ConverseBody { usage: Some(u) }) => {
                        self.final_output |= u.output_tokens.is_some();
                        self.usage = Some(u.into_usage());
                    }
                    Ok(_) => {}
                    Err(e) => self.parse_error = Some(format!("converse metadata: {e}")),
                },
                _ => {}
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
        match event.kind.as_ref() {
            "content_block_delta" => {
                if let Some(bytes) = event.delta.and_then(|d| d.text_len()) {
                    self.count_delta(bytes);
                }
            }
            "message_start" => {
                if let Some(u) = event.message.and_then(|m| m.usage) {
                    self.usage = Some(u.apply(current));
                }
            }
            "message_delta" => {
                if let Some(u) = event.usage {
                    self.final_output |= u.output_tokens.is_some();
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
            self.final_output |= m.output_token_count.is_some();
            self.usage = Some(Usage {
                input_tokens: m.input_token_count.unwrap_or(current.input_tokens),
                output_tokens: m.output_token_count.unwrap_or(current.output_tokens),
                cache_read_tokens: m
                    .cache_read_input_token_count
                    .unwrap_or(self.usage.unwrap_or_default().cache_read_tokens),
                cache_write_tokens: m
                    .cache_write_input_token_count
                    .unwrap_or(self.usage.unwrap_or_default().cache_write_tokens),
                // The metrics do not break writes down by lifetime.
                cache_write_1h_tokens: self.usage.unwrap_or_default().cache_write_1h_tokens,
            });
        }
    }
}

#[derive(Deserialize)]
struct ChunkPayload {
    bytes: String,
}

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    message: Option<AnthropicBody>,
    usage: Option<AnthropicUsage>,
    delta: Option<AnthropicDelta>,
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

/// The `delta` of an Anthropic event: the generated text of a `content_block_delta`
/// (`text_delta`, `input_json_delta`, `thinking_delta`), or a `message_delta`'s stop reason,
/// which has none of these fields. Signature and citation deltas carry no generated text.
#[derive(Deserialize)]
struct AnthropicDelta {
    text: Option<TextLen>,
    partial_json: Option<TextLen>,
    thinking: Option<TextLen>,
}

impl AnthropicDelta {
    /// The bytes of generated text in the delta, if it carries any field of text.
    fn text_len(&self) -> Option<usize> {
        [&self.text, &self.partial_json, &self.thinking]
            .into_iter()
            .flatten()
            .map(|t| t.0)
            .reduce(|a, b| a + b)
    }
}

/// The length in bytes of a JSON string, read without keeping (or allocating) the string.
struct TextLen(usize);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Len;
        impl serde::de::Visitor<'_> for Len {
            type Value = TextLen;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TextLen, E> {
                Ok(TextLen(s.len()))
            }
        }
        deserializer.deserialize_str(Len)
    }
}

/// Anthropic usage: every count optional, because `message_delta` carries only some.
#[derive(Deserialize)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_creation: Option<AnthropicCacheCreation>,
}

/// The breakdown of `cache_creation_input_tokens` by cache lifetime.
#[derive(Deserialize)]
struct AnthropicCacheCreation {
    ephemeral_1h_input_tokens: Option<u64>,
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
            cache_write_1h_tokens: self
                .cache_creation
                .and_then(|c| c.ephemeral_1h_input_tokens)
                .unwrap_or(base.cache_write_1h_tokens),
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
            cache_write_1h_tokens: 0,
        }
    }
}

/// A ConverseStream `contentBlockDelta` event.
#[derive(Deserialize)]
struct ConverseDeltaEvent {
    delta: Option<ConverseDelta>,
}

/// A Converse content delta: text, tool input (JSON text) or reasoning text.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseDelta {
    text: Option<TextLen>,
    tool_use: Option<ConverseToolUseDelta>,
    reasoning_content: Option<ConverseReasoningDelta>,
}

/// `delta.toolUse`: a piece of the tool input's JSON text.
#[derive(Deserialize)]
struct ConverseToolUseDelta {
    input: Option<TextLen>,
}

/// `delta.reasoningContent`: a piece of reasoning text (or its signature, not counted).
#[derive(Deserialize)]
struct ConverseReasoningDelta {
    text: Option<TextLen>,
}

impl ConverseDelta {
    /// The bytes of generated text in the delta, if it carries any field of text.
    fn text_len(&self) -> Option<usize> {
        [
            self.text.as_ref(),
            self.tool_use.as_ref().and_then(|t| t.input.as_ref()),
            self.reasoning_content
                .as_ref()
                .and_then(|r| r.text.as_ref()),
        ]
        .into_iter()
        .flatten()
        .map(|t| t.0)
        .reduce(|a, b| a + b)
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
                    cache_write_tokens: 40,
                    cache_write_1h_tokens: 0
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
                cache_write_tokens: 6,
                cache_write_1h_tokens: 0
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
                    cache_write_tokens: 30,
                    cache_write_1h_tokens: 0
                })
            );
        }
        let error = Bytes::from_static(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        let o = observe_in_pieces(ResponseShape::AnthropicSse, &error, 4);
        assert_eq!(o.stream_error.as_deref(), Some("overloaded_error"));
    }

    /// An SSE event line pair for one Anthropic event.
    fn sse(event: &str) -> String {
        let kind = event.split('"').nth(3).unwrap();
        format!("event: {kind}\ndata: {event}\n\n")
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"cache_read_input_tokens":900,"cache_creation_input_tokens":40,"output_tokens":1}}}"#;
    const BLOCK: &str =
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    /// Six deltas of 1, 4, 5, 0, 12 and 7 bytes once unescaped: 1 + 1 + 2 + 1 + 3 + 2 = 10 tokens.
    const DELTAS: [&str; 6] = [
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"H"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ello"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm.."}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"path\": \"a\""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\nb\"c\u00e9"}}"#,
    ];
    const DELTAS_ESTIMATE: u64 = 10;

    fn observe_cut(shape: ResponseShape, body: &Bytes, piece: usize) -> Observation {
        let mut o = UsageObserver::new(shape);
        for start in (0..body.len()).step_by(piece) {
            o.observe(&body.slice(start..(start + piece).min(body.len())));
        }
        o.finish(false)
    }

    #[test]
    fn aborted_sse_stream_is_billed_for_its_deltas() {
        let mut text = sse(START) + &sse(BLOCK);
        for d in DELTAS {
            text += &sse(d);
        }
        // The client went away in the middle of the seventh delta.
        text += "event: content_block_delta\ndata: {\"type\":\"content_blo";
        let body = Bytes::from(text);
        for piece in [1, 7, 64, 100_000] {
            let o = observe_cut(ResponseShape::AnthropicSse, &body, piece);
            assert_eq!(o.parse_error, None);
            assert!(o.output_estimated);
            let u = o.usage.unwrap();
            assert!(u.output_tokens >= 6);
            assert_eq!(u.output_tokens, DELTAS_ESTIMATE, "piece {piece}");
            assert_eq!((u.input_tokens, u.cache_read_tokens), (12, 900));
        }
    }

    #[test]
    fn aborted_bedrock_stream_is_billed_for_its_deltas() {
        let mut frames = vec![chunk(START), chunk(BLOCK)];
        frames.extend(DELTAS.iter().map(|d| chunk(d)));
        let mut body = frames.concat();
        let next = chunk(DELTAS[0]);
        body.extend_from_slice(&next[..next.len() / 2]);
        let body = Bytes::from(body);
        for piece in [1, 13, 4096] {
            let o = observe_cut(ResponseShape::BedrockAnthropicStream, &body, piece);
            assert_eq!(o.parse_error, None);
            assert!(o.output_estimated);
            assert_eq!(
                o.usage.unwrap().output_tokens,
                DELTAS_ESTIMATE,
                "piece {piece}"
            );
        }
    }

    #[test]
    fn estimate_only_raises_the_count_reported_so_far() {
        // message_start said 1, no delta: the reported count stands, marked as not final.
        let o = observe_cut(ResponseShape::AnthropicSse, &Bytes::from(sse(START)), 9);
        assert!(o.output_estimated);
        assert_eq!(o.usage.unwrap().output_tokens, 1);
        // A stream that ends cleanly without its message_delta is estimated too.
        let body = Bytes::from(sse(START) + &sse(DELTAS[4]) + &sse(r#"{"type":"message_stop"}"#));
        let o = observe_in_pieces(ResponseShape::AnthropicSse, &body, 5);
        assert!(o.output_estimated);
        assert_eq!(o.usage.unwrap().output_tokens, 3);
    }

    #[test]
    fn complete_stream_keeps_the_final_count() {
        // The deltas alone would be estimated at 101 tokens; the final count says 6.
        let long = format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#,
            "x".repeat(401)
        );
        let end = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":6}}"#;
        let text = sse(START) + &sse(BLOCK) + &sse(&long) + &sse(end);
        let o = observe_in_pieces(ResponseShape::AnthropicSse, &Bytes::from(text), 11);
        assert!(!o.output_estimated);
        assert_eq!(o.usage.unwrap().output_tokens, 6);

        for with_metrics in [false, true] {
            let o = observe_in_pieces(
                ResponseShape::BedrockAnthropicStream,
                &claude_stream(with_metrics),
                30,
            );
            assert!(!o.output_estimated);
            assert_eq!(
                o.usage.unwrap().output_tokens,
                if with_metrics { 7 } else { 6 }
            );
        }
        // Cut after the final count (before message_stop): still the reported count.
        let body = claude_stream(false);
        let last = chunk(r#"{"type":"message_stop"}"#).len();
        let o = observe_cut(
            ResponseShape::BedrockAnthropicStream,
            &body.slice(..body.len() - last),
            50,
        );
        assert!(!o.output_estimated);
        assert_eq!(o.usage.unwrap().output_tokens, 6);
    }

    fn converse_event(kind: &str, payload: &'static str) -> Bytes {
        encode_message(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            Bytes::from_static(payload.as_bytes()),
        )
    }

    #[test]
    fn aborted_converse_stream_is_billed_for_its_deltas() {
        let mut body = [
            converse_event("messageStart", r#"{"role":"assistant"}"#),
            converse_event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"Let me think"}},"p":"ab"}"#),
            converse_event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"c2lnbmF0dXJl"}}}"#),
            converse_event("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            converse_event("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":"Hello there"}}"#),
            converse_event("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":"!"}}"#),
            converse_event("contentBlockStart", r#"{"contentBlockIndex":2,"start":{"toolUse":{"toolUseId":"t","name":"read"}}}"#),
            converse_event("contentBlockDelta", r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"path\":"}}}"#),
        ]
        .concat();
        let half = converse_event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"\"a\"}"}}}"#,
        );
        body.extend_from_slice(&half[..20]);
        let body = Bytes::from(body);
        for piece in [1, 9, 4096] {
            let o = observe_cut(ResponseShape::BedrockConverseStream, &body, piece);
            assert_eq!(o.parse_error, None);
            assert!(o.output_estimated);
            // 12 bytes of reasoning (3), 11 and 1 of text (3 + 1), 8 of tool input (2).
            assert_eq!(o.usage.unwrap().output_tokens, 9, "piece {piece}");
        }

        // With its metadata event, the stream's reported count is billed.
        let mut whole = body[..body.len() - 20].to_vec();
        whole.extend_from_slice(&half);
        whole.extend_from_slice(&converse_event(
            "messageStop",
            r#"{"stopReason":"tool_use"}"#,
        ));
        whole.extend_from_slice(&converse_event(
            "metadata",
            r#"{"usage":{"inputTokens":9,"outputTokens":40,"totalTokens":49},"metrics":{"latencyMs":5}}"#,
        ));
        let o = observe_in_pieces(ResponseShape::BedrockConverseStream, &Bytes::from(whole), 7);
        assert_eq!(o.parse_error, None);
        assert!(!o.output_estimated);
        assert_eq!(o.usage.unwrap().output_tokens, 40);
    }

    #[test]
    fn one_hour_cache_writes_from_message_start_and_json_answers() {
        let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":4,"cache_creation_input_tokens":1500,"cache_creation":{"ephemeral_5m_input_tokens":300,"ephemeral_1h_input_tokens":1200},"cache_read_input_tokens":0,"output_tokens":1}}}"#;
        let end = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#;
        let expected = Usage {
            input_tokens: 4,
            output_tokens: 5,
            cache_read_tokens: 0,
            cache_write_tokens: 1500,
            cache_write_1h_tokens: 1200,
        };
        let o = observe_in_pieces(
            ResponseShape::AnthropicSse,
            &Bytes::from(sse(start) + &sse(end)),
            13,
        );
        assert_eq!(o.usage, Some(expected));
        assert_eq!(expected.total(), 4 + 5 + 1500);

        let stream: Bytes = [chunk(start), chunk(end)].concat().into();
        let o = observe_in_pieces(ResponseShape::BedrockAnthropicStream, &stream, 21);
        assert_eq!(o.usage, Some(expected));

        // Invocation metrics override the total but do not break it down: the 1h part stays.
        let stop = r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":4,"outputTokenCount":5,"cacheWriteInputTokenCount":1500}}"#;
        let stream: Bytes = [chunk(start), chunk(end), chunk(stop)].concat().into();
        let o = observe_in_pieces(ResponseShape::BedrockAnthropicStream, &stream, 21);
        assert_eq!(o.usage, Some(expected));

        // A JSON answer (Anthropic API, Vertex AI, Bedrock invoke).
        let body = Bytes::from_static(br#"{"id":"x","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":5,"cache_creation_input_tokens":60,"cache_creation":{"ephemeral_5m_input_tokens":20,"ephemeral_1h_input_tokens":40}}}"#);
        let o = observe_in_pieces(ResponseShape::AnthropicJson, &body, 9);
        assert!(!o.output_estimated);
        assert_eq!(
            o.usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 4,
                cache_read_tokens: 5,
                cache_write_tokens: 60,
                cache_write_1h_tokens: 40
            })
        );

        // A message_delta with a cumulative breakdown replaces the one from message_start.
        let end = r#"{"type":"message_delta","usage":{"output_tokens":5,"cache_creation_input_tokens":1600,"cache_creation":{"ephemeral_1h_input_tokens":1300}}}"#;
        let o = observe_in_pieces(
            ResponseShape::AnthropicSse,
            &Bytes::from(sse(start) + &sse(end)),
            64,
        );
        let u = o.usage.unwrap();
        assert_eq!(
            (u.cache_write_tokens, u.cache_write_1h_tokens),
            (1600, 1300)
        );
    }
}
