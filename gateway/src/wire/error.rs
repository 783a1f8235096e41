//! Errors the gateway itself decides, and how each client protocol expects to see them.
//!
//! Only these are rendered by the gateway: malformed requests, limits, missing upstreams.
//! Errors that come from an upstream are never rendered here; they pass through byte for byte,
//! because clients (Claude Code above all) recover by matching their wording.
//!
//! Bedrock's shape is JSON `{"message": ...}` with the error name in `x-amzn-errortype`, which
//! is what boto3 and the AWS JS SDK map to an exception class.

use bytes::Bytes;

use crate::frontdoor::FrontDoor;

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
        }
    }

    fn render_bedrock(&self) -> ErrorResponse {
        let name = match self {
            GatewayError::BadRequest(_) | GatewayError::BodyTooLarge { .. } => {
                "ValidationException"
            }
            GatewayError::NotFound(_) => "ResourceNotFoundException",
            GatewayError::Forbidden(_) => "AccessDeniedException",
            GatewayError::Throttled { .. } => "ThrottlingException",
            GatewayError::Unavailable(_) => "ServiceUnavailableException",
            GatewayError::Internal(_) => "InternalServerException",
            GatewayError::Denied { status, .. } => match status {
                401 | 403 => "AccessDeniedException",
                404 => "ResourceNotFoundException",
                408 => "ModelTimeoutException",
                429 => "ThrottlingException",
                503 => "ServiceUnavailableException",
                400..=499 => "ValidationException",
                _ => "InternalServerException",
            },
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
}
