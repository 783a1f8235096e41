//! The Amazon Bedrock front door.
//!
//! Runtime: `POST /model/{modelId}/{invoke | invoke-with-response-stream | converse |
//! converse-stream | count-tokens}`. Control plane: `GET /inference-profiles` and
//! `GET /foundation-models` (with their sub-paths and queries).
//!
//! Model IDs arrive percent-encoded by the AWS SDKs (`...-v1%3A0`, ARNs with `%2F`) or with a
//! raw `:` from Claude Code's JS SDK. The path sent upstream keeps the client's bytes, so the
//! signature covers exactly what the client asked for; the decoded ID is what plugins, routes
//! and logs see. An ARN sent with raw `/` separators is re-joined with `%2F`, the one form AWS
//! routes. Dot segments, empty segments and control characters are refused.

use percent_encoding::percent_decode_str;

use super::{FrontDoor, Operation, RequestInfo};
use crate::protocol::GatewayError;

/// Longest model ID accepted (ARNs of application inference profiles are well below this).
const MAX_MODEL_ID: usize = 2048;

/// Control-plane resources clients may read through the gateway. Anything else on the
/// control plane (guardrails, logging configuration, jobs) stays out of reach.
const CONTROL_PLANE_RESOURCES: &[&str] = &["inference-profiles", "foundation-models"];

/// Parses a Bedrock request path (after the front door's prefix).
pub fn parse(method: &http::Method, path_and_query: &str) -> Result<RequestInfo, GatewayError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let segments = segments(path)?;
    match segments.first().copied() {
        Some("model") => parse_runtime(method, &segments, query),
        Some(resource) if CONTROL_PLANE_RESOURCES.contains(&resource) => {
            if method != http::Method::GET {
                return Err(GatewayError::BadRequest(format!(
                    "{method} is not supported on /{resource}; the gateway forwards read-only control-plane calls"
                )));
            }
            Ok(RequestInfo {
                front_door: FrontDoor::Bedrock,
                operation: Operation::ControlPlane,
                model_id: None,
                upstream_path: path_and_query.to_string(),
            })
        }
        _ => Err(GatewayError::NotFound(format!(
            "unknown Bedrock operation: {method} {path}"
        ))),
    }
}

fn parse_runtime(
    method: &http::Method,
    segments: &[&str],
    query: Option<&str>,
) -> Result<RequestInfo, GatewayError> {
    if segments.len() < 3 {
        return Err(GatewayError::BadRequest(
            "expected /model/{modelId}/{operation}".into(),
        ));
    }
    let op_name = segments[segments.len() - 1];
    let operation = match op_name {
        "invoke" => Operation::Invoke,
        "invoke-with-response-stream" => Operation::InvokeStream,
        "converse" => Operation::Converse,
        "converse-stream" => Operation::ConverseStream,
        "count-tokens" => Operation::CountTokens,
        other => {
            return Err(GatewayError::BadRequest(format!(
                "unknown Bedrock runtime operation `{other}`"
            )))
        }
    };
    if method != http::Method::POST {
        return Err(GatewayError::BadRequest(format!(
            "{op_name} takes POST, not {method}"
        )));
    }
    let id_segments = &segments[1..segments.len() - 1];
    let raw_id = if id_segments.len() == 1 {
        id_segments[0].to_string()
    } else if id_segments[0].starts_with("arn:") || id_segments[0].starts_with("arn%3A") {
        // An ARN whose `/` the client did not encode: AWS routes only the encoded form.
        id_segments.join("%2F")
    } else {
        return Err(GatewayError::BadRequest(
            "the model ID must be one path segment (percent-encode `/` as %2F)".into(),
        ));
    };
    let model_id = percent_decode_str(&raw_id)
        .decode_utf8()
        .map_err(|_| GatewayError::BadRequest("the model ID is not valid UTF-8".into()))?
        .into_owned();
    if model_id.is_empty() || model_id.len() > MAX_MODEL_ID {
        return Err(GatewayError::BadRequest(format!(
            "the model ID must have 1 to {MAX_MODEL_ID} characters"
        )));
    }
    if model_id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(GatewayError::BadRequest(
            "the model ID contains control characters or spaces".into(),
        ));
    }
    let mut upstream_path = format!("/model/{raw_id}/{op_name}");
    if let Some(q) = query {
        upstream_path.push('?');
        upstream_path.push_str(q);
    }
    Ok(RequestInfo {
        front_door: FrontDoor::Bedrock,
        operation,
        model_id: Some(model_id),
        upstream_path,
    })
}

/// Splits an absolute path into segments, refusing empty and dot segments (also encoded ones).
fn segments(path: &str) -> Result<Vec<&str>, GatewayError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| GatewayError::BadRequest("the path must start with /".into()))?;
    let segments: Vec<&str> = rest.split('/').collect();
    for s in &segments {
        let decoded = percent_decode_str(s).collect::<Vec<u8>>();
        if s.is_empty() || decoded == b"." || decoded == b".." {
            return Err(GatewayError::BadRequest(
                "empty, `.` and `..` path segments are not allowed".into(),
            ));
        }
        if decoded.iter().any(|b| b.is_ascii_control()) {
            return Err(GatewayError::BadRequest(
                "the path contains control characters".into(),
            ));
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn ok(method: Method, path: &str) -> RequestInfo {
        parse(&method, path).unwrap()
    }

    #[test]
    fn percent_encoded_model_ids_are_decoded_and_kept_raw_upstream() {
        let r = ok(
            Method::POST,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        );
        assert_eq!(r.operation, Operation::Invoke);
        assert_eq!(
            r.model_id.as_deref(),
            Some("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
        );
        assert_eq!(
            r.upstream_path,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
        );
    }

    #[test]
    fn raw_colon_from_claude_code_is_accepted() {
        let r = ok(
            Method::POST,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke-with-response-stream",
        );
        assert_eq!(r.operation, Operation::InvokeStream);
        assert_eq!(
            r.model_id.as_deref(),
            Some("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
        );
        assert!(r.upstream_path.contains("v1:0/"));
    }

    #[test]
    fn arns_encoded_or_not() {
        let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123";
        let r = ok(
            Method::POST,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123/converse",
        );
        assert_eq!(r.model_id.as_deref(), Some(arn));
        assert!(r.upstream_path.contains("%2Fabc123/converse"));
        let r = ok(Method::POST, &format!("/model/{arn}/converse-stream"));
        assert_eq!(r.model_id.as_deref(), Some(arn));
        assert_eq!(
            r.upstream_path,
            "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc123/converse-stream"
        );
    }

    #[test]
    fn rewritten_models_are_encoded_like_the_sdks_do() {
        let info = ok(Method::POST, "/model/m/invoke-with-response-stream?x=1");
        assert_eq!(
            crate::protocol::model_path::with_model(&info, "arn:aws:bedrock:us-east-1:1:application-inference-profile/p"),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Aapplication-inference-profile%2Fp/invoke-with-response-stream?x=1"
        );
        assert_eq!(
            crate::protocol::model_path::with_model(
                &info,
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
            ),
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream?x=1"
        );
    }

    #[test]
    fn every_runtime_operation() {
        for (op, want) in [
            ("invoke", Operation::Invoke),
            ("invoke-with-response-stream", Operation::InvokeStream),
            ("converse", Operation::Converse),
            ("converse-stream", Operation::ConverseStream),
            ("count-tokens", Operation::CountTokens),
        ] {
            assert_eq!(ok(Method::POST, &format!("/model/m/{op}")).operation, want);
        }
    }

    #[test]
    fn control_plane_reads_keep_their_query() {
        let r = ok(
            Method::GET,
            "/inference-profiles?type=SYSTEM_DEFINED&maxResults=100",
        );
        assert_eq!(r.operation, Operation::ControlPlane);
        assert_eq!(
            r.upstream_path,
            "/inference-profiles?type=SYSTEM_DEFINED&maxResults=100"
        );
        assert_eq!(
            ok(Method::GET, "/foundation-models").operation,
            Operation::ControlPlane
        );
        assert!(parse(&Method::DELETE, "/inference-profiles/x").is_err());
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        for p in [
            "/model/../x/invoke",
            "/model/%2E%2E/invoke",
            "/model/%2e/invoke",
            "/model//invoke",
            "/model/m/../invoke",
            "/model/m%00/invoke",
        ] {
            assert!(
                matches!(parse(&Method::POST, p), Err(GatewayError::BadRequest(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn unknown_operations_and_methods_are_refused() {
        assert!(matches!(
            parse(&Method::POST, "/model/m/delete"),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            parse(&Method::GET, "/model/m/invoke"),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            parse(&Method::GET, "/guardrails"),
            Err(GatewayError::NotFound(_))
        ));
        assert!(matches!(
            parse(&Method::POST, "/model/a/b/invoke"),
            Err(GatewayError::BadRequest(_))
        ));
    }
}
