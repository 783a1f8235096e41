//! The Vertex AI front door.
//!
//! `POST [/v1]/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:rawPredict`
//! (one answer, or a stream when the body says `"stream": true`), `...:streamRawPredict` (a
//! stream), and `.../models/count-tokens:rawPredict` (token counting, the model in the body).
//!
//! The client's project and location say nothing about where the request goes: the backend
//! that serves it puts its own in the path. The model ID (`claude-sonnet-4-5@20250929`) is
//! percent-decoded for plugins, routes and logs.

use percent_encoding::percent_decode_str;

use super::{FrontDoor, Operation, RequestInfo};
use crate::protocol::error::GatewayError;

/// Parses a Vertex request path (after the front door's prefix).
pub fn parse(method: &http::Method, path_and_query: &str) -> Result<RequestInfo, GatewayError> {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let malformed = || {
        GatewayError::NotFound(format!(
            "unknown Vertex AI operation: {method} {path}; expected \
             projects/{{project}}/locations/{{location}}/publishers/anthropic/models/{{model}}:rawPredict"
        ))
    };
    let [projects, _project, locations, _location, publishers, publisher, models, model_verb] =
        segments[..]
    else {
        return Err(malformed());
    };
    if projects != "projects"
        || locations != "locations"
        || publishers != "publishers"
        || models != "models"
    {
        return Err(malformed());
    }
    if publisher != "anthropic" {
        return Err(GatewayError::NotFound(format!(
            "publisher `{publisher}` is not served by this gateway; only anthropic models are"
        )));
    }
    let (raw_model, verb) = model_verb.rsplit_once(':').ok_or_else(malformed)?;
    let model = percent_decode_str(raw_model)
        .decode_utf8()
        .map_err(|_| GatewayError::BadRequest("the model ID is not valid UTF-8".into()))?
        .into_owned();
    if model.is_empty()
        || model.len() > 256
        || model
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        return Err(GatewayError::BadRequest(
            "the model ID must be 1 to 256 printable characters".into(),
        ));
    }
    let operation = match (model.as_str(), verb) {
        ("count-tokens", "rawPredict") => Operation::CountTokens,
        (_, "rawPredict") => Operation::Invoke,
        (_, "streamRawPredict") => Operation::InvokeStream,
        (_, other) => {
            return Err(GatewayError::BadRequest(format!(
                "unknown method `{other}`; the gateway serves rawPredict and streamRawPredict"
            )))
        }
    };
    if method != http::Method::POST {
        return Err(GatewayError::BadRequest(format!(
            "{verb} takes POST, not {method}"
        )));
    }
    Ok(RequestInfo {
        front_door: FrontDoor::Vertex,
        operation,
        model_id: (operation != Operation::CountTokens).then_some(model),
        upstream_path: path_and_query.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn raw_and_stream_predict_with_or_without_v1() {
        for prefix in ["", "/v1"] {
            let r = parse(
                &Method::POST,
                &format!("{prefix}/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"),
            )
            .unwrap();
            assert_eq!(r.front_door, FrontDoor::Vertex);
            assert_eq!(r.operation, Operation::InvokeStream);
            assert_eq!(r.model_id.as_deref(), Some("claude-sonnet-4-5@20250929"));
        }
        let r = parse(
            &Method::POST,
            "/projects/p/locations/global/publishers/anthropic/models/claude-opus-4-5%4020251101:rawPredict",
        )
        .unwrap();
        assert_eq!(r.operation, Operation::Invoke);
        assert_eq!(r.model_id.as_deref(), Some("claude-opus-4-5@20251101"));
    }

    #[test]
    fn count_tokens_has_its_model_in_the_body() {
        let r = parse(
            &Method::POST,
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict",
        )
        .unwrap();
        assert_eq!(r.operation, Operation::CountTokens);
        assert_eq!(r.model_id, None);
    }

    #[test]
    fn other_paths_publishers_verbs_and_methods_are_refused() {
        for (m, p) in [
            (
                Method::POST,
                "/projects/p/locations/l/publishers/google/models/gemini:rawPredict",
            ),
            (
                Method::POST,
                "/projects/p/locations/l/publishers/anthropic/models/m:predict",
            ),
            (
                Method::GET,
                "/projects/p/locations/l/publishers/anthropic/models/m:rawPredict",
            ),
            (Method::POST, "/projects/p/locations/l/models/m:rawPredict"),
            (
                Method::POST,
                "/projects/p/locations/l/publishers/anthropic/models/m",
            ),
        ] {
            assert!(parse(&m, p).is_err(), "{p}");
        }
    }
}
