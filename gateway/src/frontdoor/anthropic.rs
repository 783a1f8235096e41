//! The Anthropic API front door.
//!
//! `POST /v1/messages` (with or without Claude Code's `?beta=true` marker),
//! `POST /v1/messages/count_tokens`, and `GET /v1/models` (answered by the gateway from its
//! model catalog, so Claude Code's gateway model discovery lists what the gateway serves).
//! The model is named in the body; the proxy reads it from there once the body is in.

use percent_encoding::percent_decode_str;

use super::{FrontDoor, Operation, RequestInfo};
use crate::protocol::error::GatewayError;

/// Parses an Anthropic API request path (after the front door's prefix).
pub fn parse(method: &http::Method, path_and_query: &str) -> Result<RequestInfo, GatewayError> {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    let info = |operation, model_id| RequestInfo {
        front_door: FrontDoor::Anthropic,
        operation,
        model_id,
        upstream_path: path_and_query.to_string(),
    };
    let post_only = |what: &str| {
        if method == http::Method::POST {
            Ok(())
        } else {
            Err(GatewayError::BadRequest(format!(
                "{what} takes POST, not {method}"
            )))
        }
    };
    match path {
        "/v1/messages" => {
            post_only(path)?;
            // Streaming or not is decided by the body's `stream`.
            Ok(info(Operation::Invoke, None))
        }
        "/v1/messages/count_tokens" => {
            post_only(path)?;
            Ok(info(Operation::CountTokens, None))
        }
        "/v1/models" if method == http::Method::GET => Ok(info(Operation::ListModels, None)),
        _ => {
            if let Some(id) = path.strip_prefix("/v1/models/") {
                if method == http::Method::GET && !id.is_empty() && !id.contains('/') {
                    let id = percent_decode_str(id).decode_utf8_lossy().into_owned();
                    return Ok(info(Operation::ListModels, Some(id)));
                }
            }
            Err(GatewayError::NotFound(format!(
                "unknown Anthropic API operation: {method} {path}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn messages_count_tokens_and_models() {
        let r = parse(&Method::POST, "/v1/messages?beta=true").unwrap();
        assert_eq!(
            (r.front_door, r.operation),
            (FrontDoor::Anthropic, Operation::Invoke)
        );
        assert_eq!(r.upstream_path, "/v1/messages?beta=true");
        assert_eq!(
            parse(&Method::POST, "/v1/messages/count_tokens?beta=true")
                .unwrap()
                .operation,
            Operation::CountTokens
        );
        assert_eq!(
            parse(&Method::GET, "/v1/models").unwrap().operation,
            Operation::ListModels
        );
        let one = parse(&Method::GET, "/v1/models/claude-sonnet-4-5").unwrap();
        assert_eq!(one.model_id.as_deref(), Some("claude-sonnet-4-5"));
    }

    #[test]
    fn wrong_methods_and_paths() {
        assert!(matches!(
            parse(&Method::GET, "/v1/messages"),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            parse(&Method::POST, "/v1/complete"),
            Err(GatewayError::NotFound(_))
        ));
        assert!(matches!(
            parse(&Method::POST, "/v1/models"),
            Err(GatewayError::NotFound(_))
        ));
    }
}
