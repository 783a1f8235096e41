//! Errors the gateway itself decides, and how each client protocol expects to see them.
//!
//! Only these are rendered by the gateway: malformed requests, limits, missing upstreams.
//! Errors that come from an upstream are never rendered here; they pass through byte for byte,
//! because clients (Claude Code above all) recover by matching their wording.
//!
//! - Bedrock: JSON `{"message": ...}` with the error name in `x-amzn-errortype`, which is
//!   what boto3 and the AWS JS SDK map to an exception class.
//! - Vertex AI: `{"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED"}}`.
//! - Anthropic: `{"type": "error", "error": {"type": "rate_limit_error", "message": ...}}`.
//!
//! [`render_status`] renders any status and message in a protocol's shape; it is also how an
//! upstream error is carried across providers (same status, same wording, the client's shape).

use bytes::Bytes;

use super::FrontDoor;

/// An error the gateway answers itself, in the client's protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed (path, method, body).
    #[error("{0}")]
    BadRequest(String),
    /// The request body is larger than `server.max_request_body`.
    #[error("request body is larger than the gateway's limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The request head is larger than `server.max_request_headers`.
    #[error("the request's headers are larger than the gateway's limit of {limit} bytes")]
    HeadersTooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The request body did not arrive within `server.client_body_timeout`.
    #[error("{0}")]
    BodyTimeout(String),
    /// The gateway stopped before the request could be answered.
    #[error("{0}")]
    ShuttingDown(String),
    /// Nothing is served at this path.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The caller is over a limit; `retry_after` seconds is a hint for when to retry.
    #[error("{message}")]
    Throttled {
        /// What limit was hit.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after: Option<u64>,
    },
    /// No upstream answered (connect failure, timeout, no credentials).
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside the gateway.
    #[error("{0}")]
    Internal(String),
    /// A plugin refused the request with this status.
    #[error("{message}")]
    Denied {
        /// HTTP status chosen by the plugin (400-599).
        status: u16,
        /// Message for the client.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after: Option<u64>,
    },
}

/// A rendered error response: status, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers beyond `content-type` and `content-length`.
    pub headers: Vec<(&'static str, String)>,
    /// `content-type` of the body.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl GatewayError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest(_) => 400,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::HeadersTooLarge { .. } => 431,
            GatewayError::BodyTimeout(_) => 408,
            GatewayError::ShuttingDown(_) => 503,
            GatewayError::NotFound(_) => 404,
            GatewayError::Forbidden(_) => 403,
            GatewayError::Throttled { .. } => 429,
            GatewayError::Unavailable(_) => 503,
            GatewayError::Internal(_) => 500,
            GatewayError::Denied { status, .. } => *status,
        }
    }

    /// Seconds the client should wait before retrying, when the error says.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::Throttled { retry_after, .. }
            | GatewayError::Denied { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Renders the error in the shape `front_door`'s clients understand.
    pub fn render(&self, front_door: FrontDoor) -> ErrorResponse {
        match front_door {
            FrontDoor::Bedrock => self.render_bedrock(),
            _ => render_status(
                front_door,
                self.status(),
                &self.to_string(),
                self.retry_after(),
            ),
        }
    }

    fn render_bedrock(&self) -> ErrorResponse {
        let name = match self {
            GatewayError::BadRequest(_)
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::HeadersTooLarge { .. }
            | GatewayError::BodyTimeout(_) => "ValidationException",
            GatewayError::ShuttingDown(_) => "ServiceUnavailableException",
            GatewayError::NotFound(_) => "ResourceNotFoundException",
            GatewayError::Forbidden(_) => "AccessDeniedException",
            GatewayError::Throttled { .. } => "ThrottlingException",
            GatewayError::Unavailable(_) => "ServiceUnavailableException",
            GatewayError::Internal(_) => "InternalServerException",
            GatewayError::Denied { status, .. } => bedrock_error_name(*status),
        };
        let body = serde_json::to_vec(&serde_json::json!({ "message": self.to_string() }))
            .expect("a JSON object of one string serializes");
        let mut headers = vec![("x-amzn-errortype", name.to_string())];
        if let Some(s) = self.retry_after() {
            headers.push(("retry-after", s.to_string()));
        }
        ErrorResponse {
            status: self.status(),
            headers,
            content_type: "application/json",
            body: Bytes::from(body),
        }
    }
}

/// The Bedrock exception name for an HTTP status.
pub fn bedrock_error_name(status: u16) -> &'static str {
    match status {
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        429 => "ThrottlingException",
        503 | 529 => "ServiceUnavailableException",
        400..=499 => "ValidationException",
        _ => "InternalServerException",
    }
}

/// The Vertex AI (Google RPC) status name for an HTTP status.
pub fn vertex_status_name(status: u16) -> &'static str {
    match status {
        400 | 413 | 431 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        503 | 529 => "UNAVAILABLE",
        400..=499 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

/// The Anthropic API error type for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// An error with this status and message in `front_door`'s shape.
pub fn render_status(
    front_door: FrontDoor,
    status: u16,
    message: &str,
    retry_after: Option<u64>,
) -> ErrorResponse {
    let (body, mut headers) = match front_door {
        FrontDoor::Bedrock => (
            serde_json::json!({ "message": message }),
            vec![("x-amzn-errortype", bedrock_error_name(status).to_string())],
        ),
        FrontDoor::Vertex => (
            serde_json::json!({ "error": {
                "code": status,
                "message": message,
                "status": vertex_status_name(status),
            }}),
            Vec::new(),
        ),
        FrontDoor::Anthropic => (
            serde_json::json!({ "type": "error", "error": {
                "type": anthropic_error_type(status),
                "message": message,
            }}),
            Vec::new(),
        ),
    };
    if let Some(s) = retry_after {
        headers.push(("retry-after", s.to_string()));
    }
    ErrorResponse {
        status,
        headers,
        content_type: "application/json",
        body: Bytes::from(serde_json::to_vec(&body).expect("JSON values serialize")),
    }
}

/// The message of an error body in any provider's shape (`message`, `error.message`, or a
/// string `error`), for carrying an upstream error across protocols with its wording.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("message")
        .or_else(|| v.get("Message"))
        .or_else(|| v.get("error").and_then(|e| e.get("message")))
        .or_else(|| v.get("error_description"))
        .or_else(|| v.get("error").filter(|e| e.is_string()))
        .and_then(|m| m.as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bedrock_errors_name_the_exception_boto3_raises() {
        let cases = [
            (
                GatewayError::BadRequest("x".into()),
                400,
                "ValidationException",
            ),
            (
                GatewayError::BodyTooLarge { limit: 10 },
                413,
                "ValidationException",
            ),
            (
                GatewayError::Forbidden("x".into()),
                403,
                "AccessDeniedException",
            ),
            (
                GatewayError::Unavailable("x".into()),
                503,
                "ServiceUnavailableException",
            ),
            (
                GatewayError::Internal("x".into()),
                500,
                "InternalServerException",
            ),
        ];
        for (err, status, name) in cases {
            let r = err.render(FrontDoor::Bedrock);
            assert_eq!(r.status, status);
            assert_eq!(r.headers[0], ("x-amzn-errortype", name.to_string()));
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert!(v["message"].is_string());
        }
    }

    #[test]
    fn plugin_denials_map_to_the_exception_of_their_status() {
        for (status, name) in [
            (401, "AccessDeniedException"),
            (403, "AccessDeniedException"),
            (429, "ThrottlingException"),
            (400, "ValidationException"),
            (503, "ServiceUnavailableException"),
        ] {
            let r = GatewayError::Denied {
                status,
                message: "m".into(),
                retry_after: Some(3),
            }
            .render(FrontDoor::Bedrock);
            assert_eq!(r.status, status);
            assert_eq!(r.headers[0].1, name);
            assert!(r.headers.contains(&("retry-after", "3".to_string())));
        }
    }

    #[test]
    fn throttling_carries_retry_after() {
        let r = GatewayError::Throttled {
            message: "over".into(),
            retry_after: Some(7),
        }
        .render(FrontDoor::Bedrock);
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("retry-after", "7".to_string())));
    }

    #[test]
    fn vertex_and_anthropic_shapes() {
        let e = GatewayError::Throttled {
            message: "over the limit".into(),
            retry_after: Some(5),
        };
        let v = e.render(FrontDoor::Vertex);
        let body: serde_json::Value = serde_json::from_slice(&v.body).unwrap();
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(body["error"]["code"], 429);
        assert!(v.headers.contains(&("retry-after", "5".to_string())));
        let a = e.render(FrontDoor::Anthropic);
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["message"], "over the limit");
        let d = GatewayError::Denied {
            status: 401,
            message: "no key".into(),
            retry_after: None,
        };
        let body: serde_json::Value =
            serde_json::from_slice(&d.render(FrontDoor::Anthropic).body).unwrap();
        assert_eq!(body["error"]["type"], "authentication_error");
    }

    #[test]
    fn upstream_messages_are_found_in_every_shape() {
        for body in [
            r#"{"message":"Too many requests"}"#,
            r#"{"error":{"code":429,"message":"Too many requests","status":"RESOURCE_EXHAUSTED"}}"#,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Too many requests"}}"#,
        ] {
            assert_eq!(
                error_message(body.as_bytes()).as_deref(),
                Some("Too many requests")
            );
        }
        assert_eq!(error_message(b"<html>"), None);
    }
}
