//! [`RequestView`]: the request (and later its response) as plugins see and edit it.
//!
//! The view is built once per request, moved into each plugin's store for the duration of a
//! phase call and moved back out. Edits land directly in it (headers, model, identity,
//! metadata); the proxy reads the result after the pipeline has run. The JSON body is parsed
//! only when a plugin first asks for it.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::bindings::types;
use crate::protocol::{FrontDoor, Operation};
use crate::upstream::forwards_request_header;

/// Which phase is running (writes are only allowed in some).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `on-request`: the request may be changed.
    Request,
    /// `on-response`: response headers may be changed.
    Response,
    /// `on-complete`: read-only.
    Complete,
}

/// The upstream answer's head, as plugins see it.
#[derive(Debug, Clone, Default)]
pub struct ResponseView {
    /// Status (0 when there was no answer).
    pub status: u16,
    /// Headers, with plugins' edits applied.
    pub headers: HeaderMap,
    /// Headers plugins set, to apply to the client's response.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

/// One request as the plugin pipeline sees it.
#[derive(Debug)]
pub struct RequestView {
    /// HTTP method.
    pub method: String,
    /// Path and query as the client sent them.
    pub path: String,
    /// Front door.
    pub front_door: FrontDoor,
    /// Operation.
    pub operation: Operation,
    /// Model ID, after any rewrite.
    pub model: Option<String>,
    /// The plugin that rewrote the model, if one did.
    pub model_rewritten_by: Option<String>,
    /// Request headers, with plugins' edits applied (these are what goes upstream, after the
    /// gateway's own filtering).
    pub headers: HeaderMap,
    /// Client IP address.
    pub client_address: Option<String>,
    /// The request ID.
    pub request_id: String,
    /// Authenticated principal.
    pub principal: Option<String>,
    /// The principal's team.
    pub team: Option<String>,
    /// Metadata for later plugins and the audit record.
    pub metadata: BTreeMap<String, String>,
    /// The running phase.
    pub phase: Phase,
    /// The upstream answer, once it arrived.
    pub response: Option<ResponseView>,
    /// The configuration generation serving the request.
    pub generation: u64,
    /// What each plugin keeps for this request between its phases (`request-state`), by
    /// plugin name. A handful of entries at most, so a list.
    plugin_state: Vec<(std::sync::Arc<str>, Vec<u8>)>,
    body: Bytes,
    body_json: Option<Option<serde_json::Value>>,
    body_scans: u8,
}

/// Pointer lookups answered by scanning the body before it is parsed whole.
const SCANS_BEFORE_PARSE: u8 = 2;

/// The value at a JSON pointer (RFC 6901) in `body`, found by walking the text: only the
/// value asked for is built, everything else is skipped.
fn scan_pointer(body: &[u8], pointer: &str) -> Option<serde_json::Value> {
    let path: Vec<String> = pointer
        .strip_prefix('/')?
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = serde::de::DeserializeSeed::deserialize(PointerSeed(&path), &mut de).ok()?;
    de.end().ok()?;
    found
}

/// Deserializes only what lies at `.0` (the remaining pointer segments).
struct PointerSeed<'p>(&'p [String]);

impl<'de> serde::de::DeserializeSeed<'de> for PointerSeed<'_> {
    type Value = Option<serde_json::Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.0.is_empty() {
            return serde::Deserialize::deserialize(d).map(Some);
        }
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PointerSeed<'_> {
    type Value = Option<serde_json::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (key, rest) = (&self.0[0], &self.0[1..]);
        let mut found = None;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if k == key.as_str() {
                // The last of duplicate keys wins, as when the body is parsed whole.
                found = map.next_value_seed(PointerSeed(rest))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let index = self.0[0].parse::<usize>().ok();
        let mut found = None;
        let mut i = 0;
        loop {
            if Some(i) == index {
                match seq.next_element_seed(PointerSeed(&self.0[1..]))? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

impl RequestView {
    /// A view of a request about to run through the pipeline.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        method: String,
        path: String,
        front_door: FrontDoor,
        operation: Operation,
        model: Option<String>,
        headers: HeaderMap,
        client_address: Option<String>,
        request_id: String,
        body: Bytes,
    ) -> Self {
        Self {
            method,
            path,
            front_door,
            operation,
            model,
            model_rewritten_by: None,
            headers,
            client_address,
            request_id,
            principal: None,
            team: None,
            metadata: BTreeMap::new(),
            phase: Phase::Request,
            response: None,
            generation: 0,
            plugin_state: Vec::new(),
            body,
            body_json: None,
            body_scans: 0,
        }
    }

    /// The request body (never copied into a plugin unless it asks through `body-json`).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Bytes of client input a plugin may be handed: path, headers and body. A plugin that
    /// runs out of memory on a request this large relative to its memory limit is put down
    /// to the request, not to the plugin (see [`super::instance`]).
    pub fn input_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        self.path.len() + headers + self.body.len()
    }

    /// What `plugin` stored for this request.
    pub(super) fn plugin_state(&self, plugin: &str) -> Option<&[u8]> {
        self.plugin_state
            .iter()
            .find(|(name, _)| &**name == plugin)
            .map(|(_, v)| v.as_slice())
    }

    /// Stores `value` for `plugin` (in `on-request` and `on-response`).
    pub(super) fn set_plugin_state(
        &mut self,
        plugin: &std::sync::Arc<str>,
        value: Vec<u8>,
    ) -> Result<(), String> {
        if self.phase == Phase::Complete {
            return Err("request state can only be set in on-request and on-response".into());
        }
        match self
            .plugin_state
            .iter_mut()
            .find(|(name, _)| name == plugin)
        {
            Some((_, slot)) => *slot = value,
            None => self
                .plugin_state
                .push((std::sync::Arc::clone(plugin), value)),
        }
        Ok(())
    }

    pub(super) fn front_door_wit(&self) -> types::FrontDoor {
        match self.front_door {
            FrontDoor::Bedrock => types::FrontDoor::Bedrock,
            FrontDoor::Vertex => types::FrontDoor::Vertex,
            FrontDoor::Anthropic => types::FrontDoor::Anthropic,
        }
    }

    pub(super) fn operation_wit(&self) -> types::Operation {
        match self.operation {
            Operation::Invoke => types::Operation::Invoke,
            Operation::InvokeStream => types::Operation::Stream,
            Operation::Converse => types::Operation::Converse,
            Operation::ConverseStream => types::Operation::ConverseStream,
            Operation::CountTokens => types::Operation::CountTokens,
            Operation::ControlPlane => types::Operation::ControlPlane,
            Operation::ListModels => types::Operation::ListModels,
        }
    }

    pub(super) fn set_model(&mut self, plugin: &str, model: String) -> Result<(), String> {
        if self.phase != Phase::Request {
            return Err("the model can only be rewritten in on-request".into());
        }
        if self.model.is_none() {
            return Err("this operation names no model".into());
        }
        if model.is_empty()
            || model.len() > 2048
            || model.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(
                "a model ID has 1 to 2048 characters, none of them spaces or control characters"
                    .into(),
            );
        }
        self.model = Some(model);
        self.model_rewritten_by = Some(plugin.to_string());
        Ok(())
    }

    pub(super) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name.to_ascii_lowercase().as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub(super) fn request_headers(&self) -> Vec<types::Header> {
        to_wit_headers(&self.headers)
    }

    pub(super) fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        if self.phase != Phase::Request {
            return Err("request headers can only be set in on-request".into());
        }
        let (name, value) = parse_header(name, value)?;
        if !forwards_request_header(name.as_str()) {
            return Err(format!(
                "`{name}` is managed by the gateway and cannot be set"
            ));
        }
        self.headers.insert(name, value);
        Ok(())
    }

    pub(super) fn remove_request_header(&mut self, name: &str) {
        if self.phase == Phase::Request {
            self.headers.remove(name.to_ascii_lowercase().as_str());
        }
    }

    pub(super) fn body_json(&mut self, pointer: &str, limit: usize) -> Option<String> {
        // The first few lookups scan the body for the one value asked for, without building
        // the rest (a Claude Code body is 50-80 KB of prompt and tools); a plugin that keeps
        // asking gets the body parsed once and for all.
        if self.body_json.is_none() && !pointer.is_empty() && self.body_scans < SCANS_BEFORE_PARSE {
            self.body_scans += 1;
            let value = scan_pointer(&self.body, pointer)?;
            let text = value.to_string();
            return (text.len() <= limit).then_some(text);
        }
        let body = &self.body;
        let parsed = self
            .body_json
            .get_or_insert_with(|| serde_json::from_slice::<serde_json::Value>(body).ok());
        let value = parsed.as_ref()?.pointer(pointer)?;
        let text = value.to_string();
        (text.len() <= limit).then_some(text)
    }

    pub(super) fn response_status(&self) -> u16 {
        self.response.as_ref().map_or(0, |r| r.status)
    }

    pub(super) fn response_header(&self, name: &str) -> Option<String> {
        self.response
            .as_ref()?
            .headers
            .get(name.to_ascii_lowercase().as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub(super) fn response_headers(&self) -> Vec<types::Header> {
        self.response
            .as_ref()
            .map(|r| to_wit_headers(&r.headers))
            .unwrap_or_default()
    }

    pub(super) fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        if self.phase != Phase::Response {
            return Err("response headers can only be set in on-response".into());
        }
        let (name, value) = parse_header(name, value)?;
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "content-type" | "x-request-id"
        ) {
            return Err(format!(
                "`{name}` is managed by the gateway and cannot be set"
            ));
        }
        let Some(response) = self.response.as_mut() else {
            return Err("there is no response".into());
        };
        response.headers.insert(name.clone(), value.clone());
        response.set.push((name, value));
        Ok(())
    }
}

fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("the value for `{name}` is not a valid header value"))?;
    Ok((name, value))
}

fn to_wit_headers(headers: &HeaderMap) -> Vec<types::Header> {
    headers
        .iter()
        .filter_map(|(n, v)| {
            v.to_str().ok().map(|v| types::Header {
                name: n.as_str().to_string(),
                value: v.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RequestView {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        RequestView::new(
            "POST".into(),
            "/bedrock/model/m/invoke".into(),
            FrontDoor::Bedrock,
            Operation::Invoke,
            Some("m".into()),
            h,
            Some("10.0.0.1".into()),
            "rid".into(),
            Bytes::from_static(br#"{"max_tokens":100,"messages":[{"role":"user"}]}"#),
        )
    }

    #[test]
    fn body_json_by_pointer_is_parsed_once_and_bounded() {
        let mut v = view();
        assert_eq!(v.body_json("/max_tokens", 1000).as_deref(), Some("100"));
        assert_eq!(
            v.body_json("/messages/0/role", 1000).as_deref(),
            Some("\"user\"")
        );
        assert_eq!(v.body_json("/nope", 1000), None);
        assert_eq!(v.body_json("", 5), None);
    }

    #[test]
    fn pointer_scans_agree_with_a_whole_parse() {
        let body = br#"{"a":{"b/c":[1,{"d~e":"x"}],"n":null},"a2":2,"s":"t","dup":1,"dup":2}"#;
        let whole: serde_json::Value = serde_json::from_slice(body).unwrap();
        for p in [
            "/a",
            "/a/b~1c",
            "/a/b~1c/1/d~0e",
            "/a/b~1c/0",
            "/a/b~1c/5",
            "/a/n",
            "/a2",
            "/s",
            "/s/x",
            "/dup",
            "/missing",
            "/a/b~1c/x",
            "nope",
        ] {
            assert_eq!(scan_pointer(body, p), whole.pointer(p).cloned(), "{p}");
        }
        assert_eq!(scan_pointer(b"{\"a\":1} trailing", "/a"), None);
    }

    #[test]
    fn writes_are_phase_bound_and_credentials_protected() {
        let mut v = view();
        assert!(v.set_request_header("x-team", "a").is_ok());
        assert!(v.set_request_header("authorization", "Bearer y").is_err());
        assert!(v.set_request_header("x-amz-date", "1").is_err());
        assert!(v.set_model("p", "other".into()).is_ok());
        assert_eq!(v.model_rewritten_by.as_deref(), Some("p"));
        v.phase = Phase::Response;
        assert!(v.set_request_header("x-team", "b").is_err());
        assert!(v.set_model("p", "x".into()).is_err());
        assert!(
            v.set_response_header("x-a", "1").is_err(),
            "no response yet"
        );
        v.response = Some(ResponseView {
            status: 200,
            ..Default::default()
        });
        assert!(v.set_response_header("x-a", "1").is_ok());
        assert!(v.set_response_header("content-length", "1").is_err());
    }
}
