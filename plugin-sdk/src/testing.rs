//! Unit-test plugins natively with an in-memory gateway.
//!
//! [`TestHost`] plays the gateway for one plugin: it runs `init` with a config, then runs the
//! phases on [`MockRequest`]s the way the gateway does, and keeps what the plugin did where a
//! test can look: the [`Exchange`] of each request (decision, headers set, model rewrite,
//! identity, metadata, response headers) and the host's sinks (audit records, metrics, log
//! lines). The state store and the clock are in memory, the clock is set by the test (holds
//! expire on it), every state store call is recorded ([`TestHost::state_calls`]), the model
//! catalog holds the models a test registers ([`TestHost::add_model`]), and JWTs are
//! verified for real (HS256, RS256, ES256; JWKS documents registered per URL).
//!
//! ```
//! use llm_gateway_plugin::testing::{MockRequest, TestHost};
//! use llm_gateway_plugin::{Decision, Error, Plugin, Request};
//!
//! struct NeedsTeam;
//!
//! impl Plugin for NeedsTeam {
//!     fn init(_: &serde_json::Value) -> Result<Self, Error> {
//!         Ok(NeedsTeam)
//!     }
//!     fn on_request(&mut self, req: &mut Request) -> Decision {
//!         match req.header("x-team") {
//!             Some(_) => Decision::Continue,
//!             None => Decision::forbidden("no team"),
//!         }
//!     }
//! }
//!
//! let mut host = TestHost::<NeedsTeam>::new(serde_json::json!({})).unwrap();
//! let denied = host.on_request(MockRequest::bedrock_invoke("m"));
//! assert_eq!(denied.denial().unwrap().status, 403);
//! let allowed = host.on_request(MockRequest::bedrock_invoke("m").header("x-team", "a"));
//! assert!(!allowed.is_denied());
//! ```
//!
//! Only in native builds: a plugin's tests run with `cargo test`, its release with `wasm32`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::catalog::{Model, Price};
use crate::host::{self, CatalogEntry, Context, Phase, RequestState, ResponseState, Services};
use crate::log::Level;
use crate::{Completion, Decision, Denial, Error, FrontDoor, Operation, Outcome, Plugin, Request};

/// A request to run through a plugin, built step by step.
///
/// Defaults: `POST /`, Bedrock, `invoke`, no model, no headers, no body, request ID
/// `test-request-<n>`.
#[derive(Debug, Clone)]
pub struct MockRequest {
    state: RequestState,
    request_id_set: bool,
}

impl MockRequest {
    /// A request with this method and path (and the defaults above).
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            state: RequestState {
                method: method.to_string(),
                path: path.to_string(),
                ..RequestState::default()
            },
            request_id_set: false,
        }
    }

    /// A Bedrock `InvokeModel` of `model`: `POST /model/<model>/invoke`.
    pub fn bedrock_invoke(model: &str) -> Self {
        Self::new("POST", &format!("/model/{model}/invoke")).model(model)
    }

    /// Reads the sample-request format of `gateway plugin test --request REQ.json` (see the
    /// SDK's README): `method`, `path`, `front_door`, `operation`, `model`, `headers`,
    /// `client_address`, `request_id`, `body`; other keys (such as `completion`) are ignored.
    pub fn from_json(sample: &serde_json::Value) -> Result<Self, Error> {
        let text = |key: &str| sample.get(key).and_then(|v| v.as_str());
        let mut req = Self::new(
            text("method").unwrap_or("POST"),
            text("path").unwrap_or("/"),
        );
        if let Some(fd) = text("front_door") {
            req = req.front_door(match fd {
                "bedrock" => FrontDoor::Bedrock,
                "vertex" => FrontDoor::Vertex,
                "anthropic" => FrontDoor::Anthropic,
                other => return Err(Error::new(format!("unknown front_door `{other}`"))),
            });
        }
        if let Some(op) = text("operation") {
            req = req.operation(match op {
                "invoke" => Operation::Invoke,
                "stream" => Operation::Stream,
                "converse" => Operation::Converse,
                "converse-stream" => Operation::ConverseStream,
                "count-tokens" => Operation::CountTokens,
                "control-plane" => Operation::ControlPlane,
                "list-models" => Operation::ListModels,
                other => return Err(Error::new(format!("unknown operation `{other}`"))),
            });
        }
        if let Some(model) = text("model") {
            req = req.model(model);
        }
        if let Some(headers) = sample.get("headers").and_then(|v| v.as_object()) {
            for (name, value) in headers {
                let value = value
                    .as_str()
                    .ok_or_else(|| Error::new(format!("header `{name}` is not a string")))?;
                req = req.header(name, value);
            }
        }
        if let Some(addr) = text("client_address") {
            req = req.client_address(addr);
        }
        if let Some(id) = text("request_id") {
            req = req.request_id(id);
        }
        if let Some(body) = sample.get("body") {
            req = req.body_json(body.clone());
        }
        Ok(req)
    }

    /// Sets the front door.
    pub fn front_door(mut self, front_door: FrontDoor) -> Self {
        self.state.front_door = front_door;
        self
    }

    /// Sets the operation.
    pub fn operation(mut self, operation: Operation) -> Self {
        self.state.operation = operation;
        self
    }

    /// Sets the model ID.
    pub fn model(mut self, model: &str) -> Self {
        self.state.model = Some(model.to_string());
        self
    }

    /// Adds a header (the name is lower-cased).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.state
            .headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets a JSON body.
    pub fn body_json(mut self, body: serde_json::Value) -> Self {
        self.state.body = Some(body.to_string());
        self
    }

    /// Sets a raw body (not necessarily JSON).
    pub fn body_text(mut self, body: &str) -> Self {
        self.state.body = Some(body.to_string());
        self
    }

    /// Sets the client's address.
    pub fn client_address(mut self, address: &str) -> Self {
        self.state.client_address = Some(address.to_string());
        self
    }

    /// Sets the request ID.
    pub fn request_id(mut self, id: &str) -> Self {
        self.state.request_id = id.to_string();
        self.request_id_set = true;
        self
    }

    /// Sets the identity an earlier plugin would have set.
    pub fn identity(mut self, principal: &str, team: Option<&str>) -> Self {
        self.state.principal = Some(principal.to_string());
        self.state.team = team.map(str::to_string);
        self
    }

    /// Sets metadata an earlier plugin would have set.
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.state
            .metadata
            .insert(key.to_string(), value.to_string());
        self
    }
}

/// An upstream answer head for [`TestHost::on_response`].
#[derive(Debug, Clone)]
pub struct MockResponse {
    state: ResponseState,
}

impl MockResponse {
    /// An answer with this status and no headers.
    pub fn new(status: u16) -> Self {
        Self {
            state: ResponseState {
                status,
                ..ResponseState::default()
            },
        }
    }

    /// Adds a header (the name is lower-cased).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.state
            .headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
}

/// One call a plugin made to the state store: one round trip (or, for `submit`, one hand-off
/// to run off the request's path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCall {
    /// The function called, by its contract name: `incr`, `get`, `check-rate`, `acquire`,
    /// `release`, `batch` or `submit`.
    pub function: &'static str,
    /// For `batch` and `submit`, the operations' names in order (empty for the others).
    pub ops: Vec<&'static str>,
}

/// One request's trip through the plugin: what it decided and what it changed.
#[derive(Debug, Clone)]
pub struct Exchange {
    request: RequestState,
    response: Option<ResponseState>,
    decision: Option<Decision>,
}

impl Exchange {
    /// What `on_request` decided (`Continue` before it ran).
    pub fn decision(&self) -> &Decision {
        self.decision.as_ref().unwrap_or(&Decision::Continue)
    }

    /// Whether `on_request` denied.
    pub fn is_denied(&self) -> bool {
        self.decision().is_deny()
    }

    /// The denial, if `on_request` denied.
    pub fn denial(&self) -> Option<&Denial> {
        self.decision().denial()
    }

    /// A request header as it would go upstream (before the gateway's own filtering).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every request header after the plugin's edits.
    pub fn headers(&self) -> &[(String, String)] {
        &self.request.headers
    }

    /// The request headers the plugin set, in order (last value per name).
    pub fn headers_set(&self) -> &[(String, String)] {
        &self.request.headers_set
    }

    /// The request headers the plugin removed.
    pub fn headers_removed(&self) -> &[String] {
        &self.request.headers_removed
    }

    /// The model ID after any rewrite.
    pub fn model(&self) -> Option<&str> {
        self.request.model.as_deref()
    }

    /// Whether the plugin rewrote the model.
    pub fn model_rewritten(&self) -> bool {
        self.request.model_rewritten
    }

    /// The principal, as set by the plugin (or the mock request).
    pub fn principal(&self) -> Option<&str> {
        self.request.principal.as_deref()
    }

    /// The team, as set by the plugin (or the mock request).
    pub fn team(&self) -> Option<&str> {
        self.request.team.as_deref()
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.request.metadata.get(key).map(String::as_str)
    }

    /// The request ID.
    pub fn request_id(&self) -> &str {
        &self.request.request_id
    }

    /// A response header after `on_response`'s edits.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response
            .as_ref()?
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets metadata the way the gateway does between phases (keys starting `gateway.`, such
    /// as [`Completion::CACHE_WRITE_1H_TOKENS`], which it sets before `on_complete`).
    pub fn set_host_metadata(&mut self, key: &str, value: &str) {
        self.request
            .metadata
            .insert(key.to_string(), value.to_string());
    }

    /// The response headers the plugin set.
    pub fn response_headers_set(&self) -> &[(String, String)] {
        self.response
            .as_ref()
            .map_or(&[], |r| r.headers_set.as_slice())
    }
}

/// The in-memory gateway around one plugin instance.
///
/// Like a pooled instance in the gateway, one `TestHost` keeps one plugin value across all
/// the requests it runs; make a new `TestHost` to model `isolation = "request"`.
pub struct TestHost<P: Plugin> {
    plugin: P,
    services: Services,
    requests: u64,
}

impl<P: Plugin> std::fmt::Debug for TestHost<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

/// Moves a phase's context into the thread-local host and back out, even when the plugin
/// panics.
struct Installed<'a> {
    services: &'a mut Services,
    request: &'a mut RequestState,
    response: &'a mut Option<ResponseState>,
}

impl<'a> Installed<'a> {
    fn new(
        phase: Phase,
        services: &'a mut Services,
        request: &'a mut RequestState,
        response: &'a mut Option<ResponseState>,
    ) -> Self {
        host::install(Context {
            phase,
            request: std::mem::take(request),
            response: response.take(),
            services: std::mem::take(services),
        });
        Self {
            services,
            request,
            response,
        }
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if let Some(context) = host::uninstall() {
            *self.services = context.services;
            *self.request = context.request;
            *self.response = context.response;
        }
    }
}

fn system_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<P: Plugin> TestHost<P> {
    /// Runs the plugin's `init` with `config` (what `[plugins.config]` would hold, as JSON).
    /// The clock starts at the real time.
    pub fn new(config: serde_json::Value) -> Result<Self, Error> {
        Self::with_clock(config, system_clock_ms())
    }

    /// Like [`new`](TestHost::new), with the clock starting at `clock_ms`.
    pub fn with_clock(config: serde_json::Value, clock_ms: u64) -> Result<Self, Error> {
        let mut services = Services {
            clock_ms,
            ..Services::default()
        };
        let mut request = RequestState::default();
        let mut response = None;
        let plugin = {
            let _installed =
                Installed::new(Phase::Init, &mut services, &mut request, &mut response);
            P::init(&config)?
        };
        Ok(Self {
            plugin,
            services,
            requests: 0,
        })
    }

    /// Runs `on_request`, as the gateway does before choosing an upstream.
    pub fn on_request(&mut self, request: MockRequest) -> Exchange {
        self.requests += 1;
        let mut state = request.state;
        if !request.request_id_set {
            state.request_id = format!("test-request-{}", self.requests);
        }
        let mut exchange = Exchange {
            request: state,
            response: None,
            decision: None,
        };
        let decision = {
            let _installed = Installed::new(
                Phase::Request,
                &mut self.services,
                &mut exchange.request,
                &mut exchange.response,
            );
            self.plugin.on_request(&mut Request::handle_mut())
        };
        exchange.decision = Some(decision);
        exchange
    }

    /// Runs `on_response` with this answer head, as the gateway does when it arrives.
    pub fn on_response(&mut self, exchange: &mut Exchange, response: MockResponse) {
        exchange.response = Some(response.state);
        let _installed = Installed::new(
            Phase::Response,
            &mut self.services,
            &mut exchange.request,
            &mut exchange.response,
        );
        self.plugin.on_response(&mut crate::Response::handle_mut());
    }

    /// Runs `on_complete`, as the gateway does once the request is over.
    pub fn on_complete(&mut self, exchange: &mut Exchange, completion: &Completion) {
        let _installed = Installed::new(
            Phase::Complete,
            &mut self.services,
            &mut exchange.request,
            &mut exchange.response,
        );
        self.plugin.on_complete(completion);
    }

    /// Runs every phase the way the gateway would: `on_request`; if it continues,
    /// `on_response` with `response` and `on_complete` with `completion`; if it denies,
    /// `on_complete` with a completion of the denial (its status, outcome `denied`).
    pub fn run(
        &mut self,
        request: MockRequest,
        response: MockResponse,
        completion: &Completion,
    ) -> Exchange {
        let mut exchange = self.on_request(request);
        match exchange.denial() {
            Some(denial) => {
                let mut denied = Completion::new(denial.status, Outcome::Denied);
                denied.denied_by = Some("plugin-under-test".into());
                self.on_complete(&mut exchange, &denied);
            }
            None => {
                self.on_response(&mut exchange, response);
                self.on_complete(&mut exchange, completion);
            }
        }
        exchange
    }

    /// The plugin value.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// The plugin value, to change between requests.
    pub fn plugin_mut(&mut self) -> &mut P {
        &mut self.plugin
    }

    /// The clock, in milliseconds since the Unix epoch.
    pub fn clock_ms(&self) -> u64 {
        self.services.clock_ms
    }

    /// Sets the clock.
    pub fn set_clock_ms(&mut self, ms: u64) {
        self.services.clock_ms = ms;
    }

    /// Moves the clock forward.
    pub fn advance_clock_ms(&mut self, ms: u64) {
        self.services.clock_ms += ms;
    }

    /// Serves `jwks` (a JWKS JSON document) for `url` to `jwt::Key::JwksUrl`.
    pub fn register_jwks(&mut self, url: &str, jwks: &serde_json::Value) {
        self.services.jwks.insert(url.to_string(), jwks.to_string());
    }

    /// A counter's value in the state store (as `state::get` would answer; not recorded as a
    /// call).
    pub fn state_counter(&self, key: &str) -> Option<i64> {
        host::counter_value(&self.services, key).ok().flatten()
    }

    /// The holds open on the capacity `key` (not expired on the test clock), by holder, in
    /// holder order.
    pub fn state_holds(&self, key: &str) -> Vec<(String, i64)> {
        host::open_holds(&self.services, key)
    }

    /// What the holds open on `key` add up to (0 when there are none).
    pub fn state_held(&self, key: &str) -> i64 {
        self.state_holds(key).iter().map(|(_, amount)| amount).sum()
    }

    /// Every state store call made so far, in order.
    pub fn state_calls(&self) -> &[StateCall] {
        &self.services.state_calls
    }

    /// The state store calls made since the last time this was called (and forgets them),
    /// to check what one phase did.
    pub fn take_state_calls(&mut self) -> Vec<StateCall> {
        std::mem::take(&mut self.services.state_calls)
    }

    /// Makes the state store unreachable (`true`) or reachable again: every call answers an
    /// error (each operation of a batch too) and submitted operations are lost, as when the
    /// gateway's `[state] on_unavailable` is `"deny"`.
    pub fn set_state_unavailable(&mut self, unavailable: bool) {
        self.services.state_unavailable = unavailable;
    }

    /// Adds a model to the catalog: `catalog::lookup` answers it for its `name` and for each
    /// of `ids` (provider IDs, inference profiles, application inference profile ARNs), with
    /// `display_name` = `name`. As in the gateway, a Bedrock ID with a geographic prefix
    /// (`us.`, `eu.`, `global.`, …) finds the model registered under `anthropic.…`. A model
    /// added again with the same name replaces the first.
    ///
    /// ```
    /// use llm_gateway_plugin::catalog::Price;
    /// # use llm_gateway_plugin::{Error, Plugin};
    /// # struct P;
    /// # impl Plugin for P { fn init(_: &serde_json::Value) -> Result<Self, Error> { Ok(P) } }
    /// # let mut host = llm_gateway_plugin::testing::TestHost::<P>::new(serde_json::json!({})).unwrap();
    /// host.add_model(
    ///     "claude-sonnet-4-5",
    ///     &["us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    ///       "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"],
    ///     Some(Price { input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.75, cache_write_1h: 6.0 }),
    /// );
    /// ```
    pub fn add_model(&mut self, name: &str, ids: &[&str], price: Option<Price>) {
        self.services.catalog.retain(|e| e.model.name != name);
        self.services.catalog.push(CatalogEntry {
            model: Model {
                name: name.to_string(),
                display_name: name.to_string(),
                price,
            },
            ids: ids.iter().map(|id| id.to_string()).collect(),
        });
    }

    /// Every audit record emitted so far.
    pub fn audit_records(&self) -> &[serde_json::Value] {
        &self.services.audit
    }

    /// A counter's value for exactly these labels (0 if never added to).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.services
            .counters
            .get(&host::metric_key(name, labels))
            .copied()
            .unwrap_or(0)
    }

    /// A gauge's value for exactly these labels.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.services
            .gauges
            .get(&host::metric_key(name, labels))
            .copied()
    }

    /// Every log line written so far.
    pub fn logs(&self) -> &[(Level, String)] {
        &self.services.logs
    }

    /// Whether a log line containing `text` was written.
    pub fn logged(&self, text: &str) -> bool {
        self.services
            .logs
            .iter()
            .any(|(_, line)| line.contains(text))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::{audit, clock, jwt, log, metrics, state, Response, Usage};

    /// A plugin touching every capability, configured like a real one.
    struct Gate {
        secret: String,
        limit: u64,
    }

    impl Plugin for Gate {
        fn init(config: &Value) -> Result<Self, Error> {
            let secret = config["secret"]
                .as_str()
                .ok_or("bad config: `secret` is required")?
                .to_string();
            let limit = config["limit"].as_u64().unwrap_or(2);
            Ok(Gate { secret, limit })
        }

        fn on_request(&mut self, req: &mut Request) -> Decision {
            if req.header("x-block").is_some() {
                return Decision::forbidden("blocked");
            }
            let Some(token) = req.bearer_token() else {
                return Decision::unauthorized("no token");
            };
            let key = jwt::Key::Hs256Secret(self.secret.clone());
            let claims = match jwt::verify(&token, &key, &jwt::Validation::default()) {
                Ok(c) => c,
                Err(e) => return Decision::unauthorized(e.to_string()),
            };
            let sub = claims["sub"].as_str().unwrap_or("?").to_string();
            req.set_identity(&sub, claims["team"].as_str()).unwrap();
            let rate = state::check_rate(&format!("user:{sub}"), self.limit, 60_000, 1).unwrap();
            if !rate.allowed {
                return Decision::too_many_requests("slow down", rate.retry_after_seconds());
            }
            if req.body_json("/max_tokens").and_then(|v| v.as_u64()) > Some(1000) {
                req.set_model("small-model").unwrap();
            }
            req.set_header("x-gate", "passed").unwrap();
            req.set_metadata("seen_at", &clock::now_ms().to_string())
                .unwrap();
            // The host's own keys cannot be written.
            assert!(req.set_metadata("gateway.attempts", "forged").is_err());
            metrics::counter_add("passed", &[("team", "t")], 1).unwrap();
            log::info(&format!("passed {sub}"));
            Decision::Continue
        }

        fn on_response(&mut self, resp: &mut Response) {
            let status = resp.status().to_string();
            resp.set_header("x-upstream-status", &status).unwrap();
        }

        fn on_complete(&mut self, c: &Completion) {
            audit::emit(&json!({
                "principal": c.request().principal(),
                "outcome": c.outcome.as_str(),
                "output_tokens": c.usage.output_tokens,
            }))
            .unwrap();
        }
    }

    const NOW_MS: u64 = 1_700_000_000_000;

    fn token(sub: &str, exp_s: u64) -> String {
        let claims = json!({"sub": sub, "team": "blue", "exp": exp_s});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    }

    fn host() -> TestHost<Gate> {
        TestHost::with_clock(json!({"secret": "s3cret", "limit": 2}), NOW_MS).unwrap()
    }

    fn authed(sub: &str) -> MockRequest {
        MockRequest::bedrock_invoke("big-model").header(
            "Authorization",
            &format!("Bearer {}", token(sub, NOW_MS / 1000 + 3600)),
        )
    }

    #[test]
    fn init_errors_reach_the_caller() {
        let err = TestHost::<Gate>::new(json!({})).unwrap_err();
        assert_eq!(err.message(), "bad config: `secret` is required");
    }

    #[test]
    fn denials_carry_status_and_message() {
        let mut h = host();
        let ex = h.on_request(authed("ann").header("x-block", "1"));
        assert_eq!(ex.denial().unwrap().status, 403);
        assert_eq!(ex.denial().unwrap().message, "blocked");
        assert_eq!(
            h.on_request(MockRequest::bedrock_invoke("m"))
                .denial()
                .unwrap()
                .status,
            401
        );
    }

    #[test]
    fn a_valid_hs256_token_sets_identity_headers_and_metadata() {
        let mut h = host();
        let ex = h.on_request(authed("ann"));
        assert_eq!(ex.decision(), &Decision::Continue);
        assert_eq!(ex.principal(), Some("ann"));
        assert_eq!(ex.team(), Some("blue"));
        assert_eq!(ex.header("x-gate"), Some("passed"));
        assert_eq!(
            ex.headers_set(),
            &[("x-gate".to_string(), "passed".to_string())]
        );
        assert_eq!(ex.metadata("seen_at"), Some(NOW_MS.to_string().as_str()));
        assert_eq!(h.counter("passed", &[("team", "t")]), 1);
        assert!(h.logged("passed ann"));
    }

    #[test]
    fn bad_and_expired_tokens_are_refused_against_the_test_clock() {
        let mut h = host();
        let forged =
            h.on_request(MockRequest::bedrock_invoke("m").header("authorization", "Bearer a.b.c"));
        assert!(forged
            .denial()
            .unwrap()
            .message
            .starts_with("invalid token"));
        let ok = h.on_request(authed("ann"));
        assert!(!ok.is_denied());
        h.advance_clock_ms(3_601_000);
        let expired = h.on_request(authed("ann"));
        assert_eq!(expired.denial().unwrap().status, 401);
        assert!(expired.denial().unwrap().message.contains("Expired"));
    }

    #[test]
    fn the_rate_window_refuses_over_the_limit_and_frees_up_with_time() {
        let mut h = host();
        assert!(!h.on_request(authed("ann")).is_denied());
        assert!(!h.on_request(authed("ann")).is_denied());
        let third = h.on_request(authed("ann"));
        let denial = third.denial().unwrap();
        assert_eq!(denial.status, 429);
        assert!(denial.retry_after_seconds.unwrap() >= 1);
        // Another principal has its own window.
        assert!(!h.on_request(authed("bob")).is_denied());
        // Two windows later everything has rolled off.
        h.advance_clock_ms(120_000);
        assert!(!h.on_request(authed("ann")).is_denied());
    }

    #[test]
    fn model_rewrite_and_response_headers_and_audit() {
        let mut h = host();
        let req = authed("ann").body_json(json!({"max_tokens": 4096, "messages": []}));
        let done = Completion::new(200, Outcome::Ok).with_usage(Usage {
            output_tokens: 7,
            ..Usage::default()
        });
        let ex = h.run(req, MockResponse::new(200), &done);
        assert_eq!(ex.model(), Some("small-model"));
        assert!(ex.model_rewritten());
        assert_eq!(ex.response_header("x-upstream-status"), Some("200"));
        assert_eq!(
            h.audit_records(),
            &[json!({"principal": "ann", "outcome": "ok", "output_tokens": 7})]
        );
    }

    #[test]
    fn a_denied_run_still_completes() {
        let mut h = host();
        let ex = h.run(
            authed("ann").header("x-block", "1"),
            MockResponse::new(200),
            &Completion::new(200, Outcome::Ok),
        );
        assert!(ex.is_denied());
        assert_eq!(ex.response_header("x-upstream-status"), None);
        assert_eq!(h.audit_records()[0]["outcome"], "denied");
    }

    /// A plugin probing the contract's write rules.
    struct Writer;

    impl Plugin for Writer {
        fn init(_: &Value) -> Result<Self, Error> {
            Ok(Writer)
        }
        fn on_request(&mut self, req: &mut Request) -> Decision {
            let refused = [
                "authorization",
                "x-api-key",
                "x-amz-date",
                "host",
                "content-length",
            ]
            .iter()
            .filter(|h| req.set_header(h, "x").is_err())
            .count();
            req.set_header("x-refused", &refused.to_string()).unwrap();
            assert!(req.set_header("bad name", "x").is_err());
            req.remove_header("x-drop");
            Decision::Continue
        }
    }

    #[test]
    fn credentials_and_framing_headers_cannot_be_set() {
        let mut h = TestHost::<Writer>::new(json!({})).unwrap();
        let ex = h.on_request(MockRequest::new("GET", "/").header("x-drop", "1"));
        assert_eq!(ex.header("x-refused"), Some("5"));
        assert_eq!(ex.header("x-drop"), None);
        assert_eq!(ex.headers_removed(), &["x-drop".to_string()]);
    }

    #[test]
    fn counters_expire_with_their_ttl() {
        let mut h = host();
        let mut count = || {
            let mut services = std::mem::take(&mut h.services);
            let mut request = RequestState::default();
            let mut response = None;
            let v = {
                let _i = Installed::new(Phase::Request, &mut services, &mut request, &mut response);
                state::incr("k", 1, 1_000).unwrap()
            };
            h.services = services;
            v
        };
        assert_eq!(count(), 1);
        assert_eq!(count(), 2);
        assert_eq!(h.state_counter("k"), Some(2));
        h.advance_clock_ms(1_000);
        assert_eq!(h.state_counter("k"), None);
    }

    /// Runs `f` as plugin code in an `on_request` of `h`'s host.
    fn in_phase<R>(h: &mut TestHost<Gate>, f: impl FnOnce() -> R) -> R {
        let mut request = RequestState::default();
        let mut response = None;
        let _i = Installed::new(Phase::Request, &mut h.services, &mut request, &mut response);
        f()
    }

    #[test]
    fn holds_fit_under_the_limit_beside_settled_use_and_other_holds() {
        let mut h = host();
        in_phase(&mut h, || state::incr("cap", 3, 0)).unwrap();
        let a = in_phase(&mut h, || state::acquire("cap", "a", 4, 10, 1_000)).unwrap();
        assert_eq!(
            a,
            state::HoldState {
                granted: true,
                used: 3,
                held: 4
            }
        );
        // b does not fit beside a: refused, nothing changes.
        let b = in_phase(&mut h, || state::acquire("cap", "b", 4, 10, 1_000)).unwrap();
        assert_eq!(
            b,
            state::HoldState {
                granted: false,
                used: 3,
                held: 4
            }
        );
        assert_eq!(h.state_holds("cap"), vec![("a".to_string(), 4)]);
        // a takes its hold again: it replaces the old one instead of adding to it.
        let again = in_phase(&mut h, || state::acquire("cap", "a", 7, 10, 1_000)).unwrap();
        assert!(again.granted && again.held == 7);
        // Refused when taken again too big: the earlier hold has ended all the same.
        let too_big = in_phase(&mut h, || state::acquire("cap", "a", 8, 10, 1_000)).unwrap();
        assert!(!too_big.granted && too_big.held == 0);
        assert_eq!(h.state_held("cap"), 0);
        in_phase(&mut h, || state::acquire("cap", "a", 7, 10, 1_000)).unwrap();
        // Releasing settles the real use into the counter `get` reads.
        assert!(in_phase(&mut h, || state::release("cap", "a", 2, 0)).unwrap());
        assert_eq!((h.state_counter("cap"), h.state_held("cap")), (Some(5), 0));
        // A lease released with 0 leaves the counter alone (and creates none).
        in_phase(&mut h, || state::acquire("lease", "a", 1, 1, 1_000)).unwrap();
        assert!(in_phase(&mut h, || state::release("lease", "a", 0, 0)).unwrap());
        assert_eq!(h.state_counter("lease"), None);
        // Bad holds are errors, as are holds on a rate window.
        assert!(in_phase(&mut h, || state::acquire("cap", "a", -1, 10, 1_000)).is_err());
        assert!(in_phase(&mut h, || state::acquire("cap", "a", 1, 10, 0)).is_err());
        in_phase(&mut h, || state::check_rate("window", 5, 60_000, 1)).unwrap();
        assert!(in_phase(&mut h, || state::acquire("window", "a", 1, 10, 1_000)).is_err());
    }

    #[test]
    fn holds_expire_on_the_test_clock_and_late_settlements_still_count() {
        let mut h = host();
        let take = |h: &mut TestHost<Gate>, holder: &'static str| {
            in_phase(h, || state::acquire("streams", holder, 1, 1, 10_000))
                .unwrap()
                .granted
        };
        assert!(take(&mut h, "a"));
        assert!(!take(&mut h, "b"));
        h.advance_clock_ms(9_999);
        assert!(!take(&mut h, "b"));
        h.advance_clock_ms(1);
        assert_eq!(h.state_held("streams"), 0);
        assert!(take(&mut h, "b"));
        // a's hold had expired: releasing it answers false but still settles.
        assert!(!in_phase(&mut h, || state::release("streams", "a", 5, 60_000)).unwrap());
        assert_eq!(h.state_counter("streams"), Some(5));
        assert_eq!(h.state_holds("streams"), vec![("b".to_string(), 1)]);
        // The settled counter expires with the ttl it was created with.
        h.advance_clock_ms(60_000);
        assert_eq!(h.state_counter("streams"), None);
    }

    #[test]
    fn a_batch_is_one_call_with_an_answer_per_op_and_submit_runs_off_the_path() {
        use state::{Answer, Op};
        let mut h = host();
        h.take_state_calls();
        let answers = in_phase(&mut h, || {
            state::batch(&[
                Op::incr("n", 2, 0),
                Op::get("n"),
                Op::check_rate("n", 1, 1_000, 1), // a counter is not a window
                Op::acquire("cap", "r1", 3, 3, 1_000),
                Op::acquire("cap", "r2", 1, 3, 1_000),
                Op::release("cap", "r1", 3, 0),
            ])
        });
        assert_eq!(answers[0], Ok(Answer::Counter(2)));
        assert_eq!(answers[1].as_ref().unwrap().value(), Some(Some(2)));
        assert!(answers[2].is_err());
        assert!(answers[3].as_ref().unwrap().acquired().unwrap().granted);
        assert!(!answers[4].as_ref().unwrap().acquired().unwrap().granted);
        assert_eq!(answers[5], Ok(Answer::Released(true)));
        assert_eq!(
            h.take_state_calls(),
            vec![StateCall {
                function: "batch",
                ops: vec!["incr", "get", "check-rate", "acquire", "acquire", "release"],
            }]
        );
        // submit: no answers, errors dropped, the rest still runs.
        in_phase(&mut h, || {
            state::submit(&[Op::check_rate("n", 1, 1_000, 1), Op::incr("n", 1, 0)])
        });
        assert_eq!(h.state_counter("n"), Some(3));
        assert_eq!(h.state_calls()[0].function, "submit");
        // Empty batches and submits make no call.
        in_phase(&mut h, || {
            assert!(state::batch(&[]).is_empty());
            state::submit(&[]);
        });
        assert_eq!(h.state_calls().len(), 1);
    }

    #[test]
    fn an_unavailable_store_fails_every_call_and_loses_submissions() {
        use state::Op;
        let mut h = host();
        h.set_state_unavailable(true);
        let answers = in_phase(&mut h, || {
            in_phase_unavailable_checks();
            state::submit(&[Op::incr("n", 1, 0)]);
            state::batch(&[Op::get("n"), Op::incr("n", 1, 0)])
        });
        assert!(answers.iter().all(Result::is_err));
        h.set_state_unavailable(false);
        assert_eq!(h.state_counter("n"), None);
    }

    fn in_phase_unavailable_checks() {
        assert!(state::incr("n", 1, 0).is_err());
        assert!(state::get("n").is_err());
        assert!(state::acquire("n", "a", 1, 1, 1).is_err());
        assert!(state::release("n", "a", 1, 0).is_err());
    }

    #[test]
    fn the_catalog_answers_registered_models_by_any_id() {
        use crate::catalog;
        let mut h = host();
        let price = Price {
            input: 3.0,
            output: 15.0,
            cache_read: 0.3,
            cache_write: 3.75,
            cache_write_1h: 6.0,
        };
        h.add_model(
            "claude-sonnet-4-5",
            &["arn:x/abc", "anthropic.claude-sonnet-4-5-v1:0"],
            Some(price),
        );
        h.add_model("nova", &[], None);
        let found = in_phase(&mut h, || {
            [
                "claude-sonnet-4-5",
                "arn:x/abc",
                "eu.anthropic.claude-sonnet-4-5-v1:0",
                "nova",
                "eu.nova",
            ]
            .map(catalog::lookup)
        });
        let sonnet = found[0].clone().unwrap();
        assert_eq!(
            (sonnet.name.as_str(), sonnet.display_name.as_str()),
            ("claude-sonnet-4-5", "claude-sonnet-4-5")
        );
        assert_eq!(sonnet.price, Some(price));
        assert_eq!(found[1], found[0]);
        assert_eq!(found[2], found[0]);
        assert_eq!(found[3].as_ref().unwrap().price, None);
        assert_eq!(found[4], None);
    }

    /// Reads the 1-hour cache writes in on_complete.
    struct CacheWrites;

    impl Plugin for CacheWrites {
        fn init(_: &Value) -> Result<Self, Error> {
            Ok(CacheWrites)
        }
        fn on_complete(&mut self, c: &Completion) {
            metrics::counter_add("cw1h", &[], c.cache_write_1h_tokens()).unwrap();
        }
    }

    #[test]
    fn one_hour_cache_writes_come_from_the_gateway_metadata() {
        let mut h = TestHost::<CacheWrites>::new(json!({})).unwrap();
        let done = Completion::new(200, Outcome::Ok).with_usage(Usage {
            cache_write_tokens: 100,
            ..Usage::default()
        });
        let mut ex = h.on_request(MockRequest::bedrock_invoke("m"));
        h.on_complete(&mut ex, &done);
        assert_eq!(h.counter("cw1h", &[]), 0, "absent: 0");
        ex.set_host_metadata(Completion::CACHE_WRITE_1H_TOKENS, "40");
        h.on_complete(&mut ex, &done);
        assert_eq!(h.counter("cw1h", &[]), 40);
        ex.set_host_metadata(Completion::CACHE_WRITE_1H_TOKENS, "400");
        h.on_complete(&mut ex, &done);
        assert_eq!(
            h.counter("cw1h", &[]),
            140,
            "never more than the cache writes"
        );
    }

    #[test]
    fn sample_requests_parse_like_the_cli() {
        let sample = json!({
            "method": "POST", "path": "/model/m/invoke", "front_door": "bedrock",
            "operation": "invoke", "model": "m", "headers": {"authorization": "Bearer x"},
            "client_address": "10.0.0.1", "body": {"max_tokens": 5},
            "completion": {"status": 200}
        });
        let req = MockRequest::from_json(&sample).unwrap();
        assert_eq!(req.state.model.as_deref(), Some("m"));
        assert_eq!(
            req.state.headers,
            vec![("authorization".into(), "Bearer x".into())]
        );
        assert!(MockRequest::from_json(&json!({"operation": "nope"})).is_err());
    }
}
