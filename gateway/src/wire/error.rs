//! [`TranslateError`]: why a request or an answer could not cross from one provider's protocol
//! to another's.
//!
//! Two sides, told apart by [`TranslateError::is_request_error`]: the client's request could not
//! be rebuilt for a backend (a body that is not a JSON object, an operation only Bedrock
//! serves, a malformed Bedrock count); or a backend's stream could not be turned into the
//! client's framing (an event too large, a broken frame, an event that is not JSON). The first
//! is the client's to fix, and only for this backend: another backend, of another kind, may take
//! the same request. The second happens once the answer has started, so it cuts the stream.
//!
//! Nothing here renders an error: the data plane turns a request error into
//! [`GatewayError::BadRequest`] (through `From`) where it answers the client, with the wording
//! the gateway has always used, and logs a stream error when it cuts the answer.

use super::eventstream::FrameError;
use super::sse::SseTooLarge;
use crate::protocol::error::GatewayError;

/// Why a request or an answer could not be translated across providers.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The operation exists only in Bedrock's protocol (Converse, the control plane).
    #[error("{operation} is served by Bedrock backends only")]
    BedrockOnly {
        /// The operation's name in logs (`converse`, ...).
        operation: &'static str,
    },
    /// The request body is JSON, but not an object.
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// The request body is not JSON.
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// A Bedrock `count-tokens` request without its invoke body.
    #[error("count-tokens served by another provider needs input.invokeModel.body")]
    MissingCountBody,
    /// A Bedrock `count-tokens` invoke body that is not base64.
    #[error("input.invokeModel.body is not base64")]
    CountBodyNotBase64,
    /// An SSE event in the backend's stream is larger than the decoder holds.
    #[error(transparent)]
    EventTooLarge(#[from] SseTooLarge),
    /// A broken AWS event-stream frame in the backend's stream.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A streamed event that is not the JSON object it should be.
    #[error("stream event: {0}")]
    StreamEvent(#[source] serde_json::Error),
    /// A Bedrock `chunk` frame whose payload is not `{"bytes": ...}`.
    #[error("chunk payload: {0}")]
    ChunkPayload(#[source] serde_json::Error),
    /// A Bedrock `chunk` frame whose `bytes` are not base64.
    #[error("chunk base64: {0}")]
    ChunkBase64(#[source] base64::DecodeError),
}

impl TranslateError {
    /// Whether the client's request could not be rebuilt (rather than a backend's stream).
    pub fn is_request_error(&self) -> bool {
        match self {
            TranslateError::BedrockOnly { .. }
            | TranslateError::NotAnObject
            | TranslateError::InvalidJson(_)
            | TranslateError::MissingCountBody
            | TranslateError::CountBodyNotBase64 => true,
            TranslateError::EventTooLarge(_)
            | TranslateError::Frame(_)
            | TranslateError::StreamEvent(_)
            | TranslateError::ChunkPayload(_)
            | TranslateError::ChunkBase64(_) => false,
        }
    }
}

impl From<TranslateError> for GatewayError {
    /// A request the backend's protocol cannot carry is a bad request, in the error's words. A
    /// stream error only ever cuts an answer already started; were one answered whole, it is
    /// the backend's fault, not the client's.
    fn from(e: TranslateError) -> Self {
        if e.is_request_error() {
            GatewayError::BadRequest(e.to_string())
        } else {
            GatewayError::Unavailable(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_are_bad_requests_in_todays_words() {
        let cases = [
            (
                TranslateError::BedrockOnly {
                    operation: "converse",
                },
                "converse is served by Bedrock backends only",
            ),
            (
                TranslateError::NotAnObject,
                "the request body must be a JSON object",
            ),
            (
                TranslateError::MissingCountBody,
                "count-tokens served by another provider needs input.invokeModel.body",
            ),
            (
                TranslateError::CountBodyNotBase64,
                "input.invokeModel.body is not base64",
            ),
        ];
        for (e, words) in cases {
            assert!(e.is_request_error(), "{e:?}");
            assert_eq!(
                GatewayError::from(e),
                GatewayError::BadRequest(words.into())
            );
        }
        let json = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        let e = TranslateError::InvalidJson(json);
        assert!(e
            .to_string()
            .starts_with("the request body is not valid JSON: "));
        assert_eq!(GatewayError::from(e).status(), 400);
    }

    #[test]
    fn stream_errors_are_not_the_clients() {
        let e = TranslateError::from(SseTooLarge);
        assert!(!e.is_request_error());
        assert_eq!(e.to_string(), SseTooLarge.to_string());
        assert_eq!(GatewayError::from(e).status(), 503);
        let json = serde_json::from_slice::<serde_json::Value>(b"x").unwrap_err();
        let e = TranslateError::StreamEvent(json);
        assert!(!e.is_request_error());
        assert!(e.to_string().starts_with("stream event: "));
    }
}
