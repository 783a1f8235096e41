//! [`Decision`]: what [`Plugin::on_request`](crate::Plugin::on_request) answers.

/// Whether the request goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on to the next plugin, then the upstream.
    Continue,
    /// Stop here: the gateway answers the client with this error, in the client's protocol
    /// (Bedrock, Vertex or Anthropic error shape), and never calls an upstream.
    Deny(Denial),
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status, 400 to 599.
    pub status: u16,
    /// Shown to the client.
    pub message: String,
    /// Sent as `retry-after` (seconds); meaningful with 429 and 503.
    pub retry_after_seconds: Option<u32>,
}

impl Decision {
    /// Denies with `status` (400 to 599) and a message shown to the client.
    pub fn deny(status: u16, message: impl Into<String>) -> Self {
        Decision::Deny(Denial {
            status,
            message: message.into(),
            retry_after_seconds: None,
        })
    }

    /// Denies with 401: the caller is not authenticated.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::deny(401, message)
    }

    /// Denies with 403: the caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::deny(403, message)
    }

    /// Denies with 429 and a `retry-after` of `retry_after_seconds`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        Self::deny(429, message).with_retry_after(retry_after_seconds)
    }

    /// Adds a `retry-after` (seconds) to a denial; no effect on `Continue`.
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        if let Decision::Deny(d) = &mut self {
            d.retry_after_seconds = Some(seconds);
        }
        self
    }

    /// Whether this is a denial.
    pub fn is_deny(&self) -> bool {
        matches!(self, Decision::Deny(_))
    }

    /// The denial, if this is one.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Decision::Deny(d) => Some(d),
            Decision::Continue => None,
        }
    }
}
