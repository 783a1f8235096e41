//! [`Request`]: the request being handled, as a handle on the gateway's copy.
//!
//! Nothing is copied into the plugin until it asks: every accessor is one host call. Reads
//! work in every phase; writes take `&mut Request`, which only
//! [`Plugin::on_request`](crate::Plugin::on_request) is given, so the type system keeps the
//! contract's "writes in on-request only".

use crate::error::Error;
use crate::host;

/// The protocol the client speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrontDoor {
    /// Amazon Bedrock runtime and control plane.
    Bedrock,
    /// Google Vertex AI.
    Vertex,
    /// The Anthropic API.
    Anthropic,
}

impl FrontDoor {
    /// The name used in the contract and in configs (`bedrock`, `vertex`, `anthropic`).
    pub fn as_str(self) -> &'static str {
        match self {
            FrontDoor::Bedrock => "bedrock",
            FrontDoor::Vertex => "vertex",
            FrontDoor::Anthropic => "anthropic",
        }
    }
}

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// One answer as JSON (Bedrock invoke, Vertex rawPredict, Anthropic messages).
    Invoke,
    /// A streamed answer.
    Stream,
    /// Bedrock Converse.
    Converse,
    /// Bedrock ConverseStream.
    ConverseStream,
    /// Token counting.
    CountTokens,
    /// A read-only control-plane call (Bedrock inference profiles, foundation models).
    ControlPlane,
    /// Model listing (`GET /v1/models`).
    ListModels,
}

impl Operation {
    /// The name used in the contract (`invoke`, `stream`, `converse`, `converse-stream`,
    /// `count-tokens`, `control-plane`, `list-models`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Invoke => "invoke",
            Operation::Stream => "stream",
            Operation::Converse => "converse",
            Operation::ConverseStream => "converse-stream",
            Operation::CountTokens => "count-tokens",
            Operation::ControlPlane => "control-plane",
            Operation::ListModels => "list-models",
        }
    }

    /// Whether the answer is streamed (`stream`, `converse-stream`).
    pub fn is_streaming(self) -> bool {
        matches!(self, Operation::Stream | Operation::ConverseStream)
    }
}

/// The request being handled.
///
/// A handle: the request itself stays in the gateway. Obtained as `&mut Request` in
/// [`Plugin::on_request`](crate::Plugin::on_request) and as `&Request` through
/// [`Response::request`](crate::Response::request) and
/// [`Completion::request`](crate::Completion::request).
#[derive(Debug)]
pub struct Request {
    _handle: (),
}

impl Request {
    pub(crate) const HANDLE: Request = Request { _handle: () };

    pub(crate) fn handle() -> &'static Request {
        const { &Request::HANDLE }
    }

    pub(crate) fn handle_mut() -> Request {
        Request { _handle: () }
    }

    /// HTTP method, e.g. `POST`.
    pub fn method(&self) -> String {
        host::method()
    }

    /// Path and query as the client sent them.
    pub fn path(&self) -> String {
        host::path()
    }

    /// The front door the request came in through.
    pub fn front_door(&self) -> FrontDoor {
        host::front_door()
    }

    /// The operation asked for.
    pub fn operation(&self) -> Operation {
        host::operation()
    }

    /// The model ID (percent-decoded), as rewritten so far; `None` for operations that name
    /// no model (control plane, model listing).
    pub fn model(&self) -> Option<String> {
        host::model()
    }

    /// Rewrites the model ID; the gateway encodes and signs it for whichever upstream serves
    /// it. Fails when the operation names no model or the ID is malformed.
    pub fn set_model(&mut self, model: &str) -> Result<(), Error> {
        host::set_model(model).map_err(Error::from)
    }

    /// A request header by (case-insensitive) name; the first value if repeated.
    pub fn header(&self, name: &str) -> Option<String> {
        host::header(name)
    }

    /// Every request header, names lower-case.
    pub fn headers(&self) -> Vec<(String, String)> {
        host::headers()
    }

    /// The token of an `authorization: Bearer <token>` header.
    pub fn bearer_token(&self) -> Option<String> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
    }

    /// Sets (replaces) a header sent upstream. Credentials and hop-by-hop headers
    /// (`authorization`, `x-api-key`, `x-amz-*`, `host`, `content-length`, `connection`, …)
    /// cannot be set: see `CONTRACT.md`.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        host::set_header(name, value).map_err(Error::from)
    }

    /// Removes a header before the request goes upstream.
    pub fn remove_header(&mut self, name: &str) {
        host::remove_header(name)
    }

    /// The client's IP address.
    pub fn client_address(&self) -> Option<String> {
        host::client_address()
    }

    /// The gateway's request ID (also sent to the client as `x-request-id`).
    pub fn request_id(&self) -> String {
        host::request_id()
    }

    /// The authenticated principal, set by an earlier plugin (or this one).
    pub fn principal(&self) -> Option<String> {
        host::principal()
    }

    /// The principal's team, set by an earlier plugin (or this one).
    pub fn team(&self) -> Option<String> {
        host::team()
    }

    /// Sets who is calling, for later plugins, the log line and the audit record.
    pub fn set_identity(&mut self, principal: &str, team: Option<&str>) -> Result<(), Error> {
        host::set_identity(principal, team).map_err(Error::from)
    }

    /// Metadata set by an earlier plugin (or this one).
    pub fn metadata(&self, key: &str) -> Option<String> {
        host::metadata(key)
    }

    /// Sets metadata for later plugins and the audit record. Keys starting `gateway.` are the
    /// gateway's (such as `gateway.attempts`) and are refused.
    pub fn set_metadata(&mut self, key: &str, value: &str) -> Result<(), Error> {
        host::set_metadata(key, value).map_err(Error::from)
    }

    /// The value at a JSON pointer (RFC 6901: `"/max_tokens"`, `"/messages/0/role"`, `""` for
    /// the whole body) of the JSON request body. `None` when the body is not JSON, the
    /// pointer finds nothing or the value is over the host's size limit (1 MiB by default).
    pub fn body_json(&self, pointer: &str) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body_json_text(pointer)?).ok()
    }

    /// Like [`body_json`](Request::body_json), as the JSON text the host returned.
    pub fn body_json_text(&self, pointer: &str) -> Option<String> {
        host::body_json(pointer)
    }

    /// What this plugin stored for this request with [`set_state`](Request::set_state) in an
    /// earlier phase, or `None` (nothing stored, or stored as another type).
    ///
    /// An instance is lent for one phase call, so `on_complete` may run on another instance
    /// than `on_request`: per-request data belongs here, not in the plugin's fields. The
    /// gateway holds the value (as JSON) and drops it when the request is over.
    ///
    /// ```
    /// # use llm_gateway_plugin::Request;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Seen { started_ms: u64 }
    /// # fn on_request(req: &mut Request) {
    /// let _ = req.set_state(&Seen { started_ms: 42 });
    /// # }
    /// # fn on_complete(req: &Request) {
    /// let started = req.state::<Seen>().map(|s| s.started_ms);
    /// # }
    /// ```
    pub fn state<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&host::request_state_get()?).ok()
    }

    /// Keeps `value` for this request, for this plugin's later phases (replacing what was
    /// stored). Fails when its JSON is over the host's limit (64 KiB by default).
    pub fn set_state<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        set_state(value)
    }
}

/// Stores a plugin's per-request state (shared by [`Request`] and [`Response`](crate::Response)).
pub(crate) fn set_state<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::new(format!("request state is not representable as JSON: {e}")))?;
    host::request_state_set(&bytes).map_err(Error::from)
}
