//! Front doors: the client protocols the gateway speaks, each under its own path prefix.
//!
//! A front door turns the method and path of a client request into one [`RequestInfo`]: which
//! protocol the client speaks (so errors can be rendered in its shape), what operation it asks
//! for, which model, and the path to send upstream. It reads no body and does no I/O; the
//! Anthropic and Vertex protocols say some of this in the body (`model`, `stream`), which
//! [`BodyFields`] reads once the body is in.
//!
//! Prefixes: Bedrock under `/bedrock`, Vertex under `/vertex` (and `/v1/projects/...` at the
//! root), Anthropic at the root (`/v1/messages`), each configurable.

pub mod anthropic;
pub mod bedrock;
pub mod vertex;

use crate::protocol::GatewayError;
pub use crate::protocol::{BodyFields, FrontDoor, Operation, RequestInfo};

/// Routes a request path to its front door.
#[derive(Debug, Clone)]
pub struct FrontDoors {
    bedrock_prefix: String,
    vertex_prefix: String,
    anthropic_prefix: String,
}

impl FrontDoors {
    /// Front doors with the configured prefixes.
    pub fn new(config: &crate::config::FrontDoorsConfig) -> Self {
        Self {
            bedrock_prefix: config.bedrock.prefix.clone(),
            vertex_prefix: config.vertex.prefix.clone(),
            anthropic_prefix: config.anthropic.prefix.clone(),
        }
    }

    /// Parses a request, or says in which protocol to render the error when it is malformed.
    pub fn parse(
        &self,
        method: &http::Method,
        path_and_query: &str,
    ) -> Result<RequestInfo, (FrontDoor, GatewayError)> {
        let checked = |door: FrontDoor, parsed: Result<RequestInfo, GatewayError>| {
            parsed
                .and_then(|info| info.check_model_length().map(|()| info))
                .map_err(|e| (door, e))
        };
        if let Some(rest) = strip_prefix_segment(path_and_query, &self.bedrock_prefix) {
            return checked(FrontDoor::Bedrock, bedrock::parse(method, rest));
        }
        if let Some(rest) = strip_prefix_segment(path_and_query, &self.vertex_prefix) {
            return checked(FrontDoor::Vertex, vertex::parse(method, rest));
        }
        // `ANTHROPIC_VERTEX_BASE_URL` may also be the gateway's `/v1`.
        if path_and_query.starts_with("/v1/projects/") {
            return checked(FrontDoor::Vertex, vertex::parse(method, path_and_query));
        }
        if let Some(rest) = strip_prefix_segment(path_and_query, &self.anthropic_prefix) {
            if rest.starts_with("/v1/") {
                return checked(FrontDoor::Anthropic, anthropic::parse(method, rest));
            }
        }
        Err((
            FrontDoor::Anthropic,
            GatewayError::NotFound(format!(
                "no front door serves this path; clients use the base URL {} (Bedrock), {} (Vertex) or {} (Anthropic)",
                self.bedrock_prefix,
                self.vertex_prefix,
                if self.anthropic_prefix.is_empty() { "/" } else { &self.anthropic_prefix }
            )),
        ))
    }
}

/// `rest` after `prefix` when `prefix` is a whole number of path segments of `path`.
fn strip_prefix_segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (prefix.is_empty() || rest.starts_with('/') || rest.starts_with('?') || rest.is_empty())
        .then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_must_end_at_a_segment_boundary() {
        assert_eq!(
            strip_prefix_segment("/bedrock/model/x", "/bedrock"),
            Some("/model/x")
        );
        assert_eq!(strip_prefix_segment("/bedrockx/model", "/bedrock"), None);
        assert_eq!(strip_prefix_segment("/other", "/bedrock"), None);
    }

    fn doors() -> FrontDoors {
        FrontDoors::new(&crate::config::FrontDoorsConfig::default())
    }

    #[test]
    fn model_ids_longer_than_the_provider_takes_are_refused() {
        let d = doors();
        let post = http::Method::POST;
        let ok = "a".repeat(2048);
        assert!(d
            .parse(&post, &format!("/bedrock/model/{ok}/invoke"))
            .is_ok());
        let long = "a".repeat(2049);
        let (door, e) = d
            .parse(&post, &format!("/bedrock/model/{long}/invoke"))
            .unwrap_err();
        assert_eq!((door, e.status()), (FrontDoor::Bedrock, 400));
        let long = "m".repeat(257);
        let vertex =
            format!("/vertex/projects/p/locations/l/publishers/anthropic/models/{long}:rawPredict");
        assert_eq!(d.parse(&post, &vertex).unwrap_err().0, FrontDoor::Vertex);
        let mut info = d.parse(&post, "/v1/messages").unwrap();
        let body = format!(r#"{{"model":"{long}","max_tokens":1,"messages":[]}}"#);
        assert_eq!(
            info.complete_from_body(body.as_bytes())
                .unwrap_err()
                .status(),
            400
        );
        let mut info = d.parse(&post, "/v1/messages").unwrap();
        let body = format!(
            r#"{{"model":"{}","max_tokens":1,"messages":[]}}"#,
            "m".repeat(256)
        );
        assert!(info.complete_from_body(body.as_bytes()).is_ok());
    }

    #[test]
    fn each_prefix_reaches_its_front_door() {
        let d = doors();
        let post = http::Method::POST;
        let r = d.parse(&post, "/bedrock/model/m/invoke").unwrap();
        assert_eq!(r.front_door, FrontDoor::Bedrock);
        let r = d
            .parse(
                &post,
                "/vertex/projects/p/locations/l/publishers/anthropic/models/m:rawPredict",
            )
            .unwrap();
        assert_eq!(r.front_door, FrontDoor::Vertex);
        let r = d
            .parse(
                &post,
                "/v1/projects/p/locations/l/publishers/anthropic/models/m:streamRawPredict",
            )
            .unwrap();
        assert_eq!(
            (r.front_door, r.operation),
            (FrontDoor::Vertex, Operation::InvokeStream)
        );
        let r = d.parse(&post, "/v1/messages?beta=true").unwrap();
        assert_eq!(r.front_door, FrontDoor::Anthropic);
        let (door, e) = d.parse(&post, "/nothing/here").unwrap_err();
        assert_eq!(door, FrontDoor::Anthropic);
        assert_eq!(e.status(), 404);
        let (door, _) = d.parse(&post, "/vertex/nope").unwrap_err();
        assert_eq!(door, FrontDoor::Vertex);
    }

    #[test]
    fn the_body_completes_anthropic_and_vertex_requests() {
        let d = doors();
        let post = http::Method::POST;
        let mut r = d.parse(&post, "/v1/messages").unwrap();
        r.complete_from_body(br#"{"model":"claude-sonnet-4-5","stream":true,"messages":[]}"#)
            .unwrap();
        assert_eq!(r.model_id.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(r.operation, Operation::InvokeStream);
        let mut r = d.parse(&post, "/v1/messages").unwrap();
        assert_eq!(
            r.complete_from_body(br#"{"messages":[]}"#)
                .unwrap_err()
                .status(),
            400
        );
        let mut r = d.parse(&post, "/v1/messages").unwrap();
        assert_eq!(r.complete_from_body(b"not json").unwrap_err().status(), 400);
        let mut r = d
            .parse(
                &post,
                "/vertex/projects/p/locations/l/publishers/anthropic/models/m:rawPredict",
            )
            .unwrap();
        r.complete_from_body(br#"{"stream":true}"#).unwrap();
        assert_eq!(
            (r.operation, r.model_id.as_deref()),
            (Operation::InvokeStream, Some("m"))
        );
        // Bedrock bodies are not read here.
        let mut r = d.parse(&post, "/bedrock/model/m/invoke").unwrap();
        r.complete_from_body(b"not json").unwrap();
    }
}
