//! [`Completion`]: how a request ended, handed to
//! [`Plugin::on_complete`](crate::Plugin::on_complete).

use crate::request::Request;
use crate::response::Response;

/// Tokens used by a request. Cache reads and writes are separate from plain input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens not read from or written to the prompt cache.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write_tokens: u64,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The upstream answered with success and the client got all of it.
    Ok,
    /// The upstream answered with an error status, passed through to the client.
    UpstreamError,
    /// A plugin denied it.
    Denied,
    /// The gateway refused it (malformed, too large, no upstream reachable).
    Rejected,
    /// The upstream failed after the answer had started.
    UpstreamFailed,
    /// The client went away before the answer was complete.
    ClientAborted,
}

impl Outcome {
    /// The name used in the contract and audit records (`ok`, `upstream-error`, `denied`,
    /// `rejected`, `upstream-failed`, `client-aborted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream-error",
            Outcome::Denied => "denied",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamFailed => "upstream-failed",
            Outcome::ClientAborted => "client-aborted",
        }
    }
}

/// Everything known about a request once it is over.
///
/// The request and the response stay readable through [`request`](Completion::request) and
/// [`response`](Completion::response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Status sent to the client (0 if none was sent).
    pub status: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// Tokens used (zero when the upstream never answered).
    pub usage: Usage,
    /// From the first byte of the request to the end of the answer.
    pub latency_ms: u64,
    /// From the first byte of the request to the first byte of the answer.
    pub time_to_first_token_ms: Option<u64>,
    /// Bytes of request body received.
    pub request_bytes: u64,
    /// Bytes of response body sent.
    pub response_bytes: u64,
    /// The backend that served it.
    pub backend: Option<String>,
    /// The model ID sent upstream (after any rewrite).
    pub model_served: Option<String>,
    /// The plugin that denied it, for [`Outcome::Denied`].
    pub denied_by: Option<String>,
}

impl Completion {
    /// The request metadata key under which the gateway puts, before `on_complete`, how many
    /// of the cache writes were 1-hour writes (see [`cache_write_1h_tokens`](Self::cache_write_1h_tokens)).
    pub const CACHE_WRITE_1H_TOKENS: &'static str = "gateway.cache_write_1h_tokens";

    /// A completion with this status and outcome and nothing else (zero usage and timings);
    /// set the public fields for the rest. Mostly for tests.
    pub fn new(status: u16, outcome: Outcome) -> Self {
        Self {
            status,
            outcome,
            usage: Usage::default(),
            latency_ms: 0,
            time_to_first_token_ms: None,
            request_bytes: 0,
            response_bytes: 0,
            backend: None,
            model_served: None,
            denied_by: None,
        }
    }

    /// The same completion with this usage.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// How many of `usage.cache_write_tokens` were written to the prompt cache for 1 hour
    /// (the rest were 5-minute writes, priced lower). The gateway says so in the request's
    /// metadata under [`CACHE_WRITE_1H_TOKENS`](Self::CACHE_WRITE_1H_TOKENS); 0 when it is
    /// absent (or not a number), and never more than `usage.cache_write_tokens`.
    pub fn cache_write_1h_tokens(&self) -> u64 {
        self.request()
            .metadata(Self::CACHE_WRITE_1H_TOKENS)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(self.usage.cache_write_tokens)
    }

    /// The request (read-only).
    pub fn request(&self) -> &Request {
        Request::handle()
    }

    /// The upstream's answer (read-only; status 0 and no headers when there was none).
    pub fn response(&self) -> &Response {
        Response::handle()
    }
}
