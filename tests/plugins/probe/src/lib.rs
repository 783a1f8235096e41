//! Exercises every host call and reports what it saw, so the host's tests can assert the
//! contract end to end. What it does, by phase:
//!
//! `on_request`
//! - sets request header `x-probe-seen` to
//!   `method=..;path=..;door=..;op=..;model=..;x-test=..;headers=<count>;client=..;rid=..;max_tokens=..;role=..`
//!   (`-` for anything absent);
//! - `x-rewrite-model: M` → `set_model(M)`;
//! - `set_identity("probe-user", Some("probe-team"))`, `set_metadata("probe", "1")`, metadata
//!   `now_ms` (the clock), then request header `x-probe-identity: principal/team/probe` read back;
//! - `state::incr("hits", 1, 60000)` → request header `x-probe-hits`; `state::get("hits")` →
//!   `x-probe-hits-get`;
//! - a global counter of `on_request` calls in this instance → `x-probe-instance-count` (1 on
//!   every request with `isolation = "request"`, growing with `pooled`);
//! - trying to set `authorization` → `x-probe-protected: refused` when the host refuses;
//! - `x-probe-remove: NAME` → `remove_header(NAME)`;
//! - `x-probe-ratelimit` present → `state::check_rate("rl", 2, 60000, 1)`; denies 429 with
//!   `retry-after` when refused, else sets `x-probe-rate-remaining`;
//! - `x-probe-jwt: TOKEN` → `jwt::verify` with HS256 secret `jwt_secret` from the config;
//!   denies 401 with the error message, or sets metadata `sub`;
//! - metrics: counter `requests{op}` +1, gauge `max_tokens` = the body's `max_tokens`;
//! - logs one `info` line `probe saw <request id>`;
//! - `x-probe-deny` present → denies 403 `denied by probe`.
//!
//! `on_response`: response header `x-probe-status` = the status, `x-probe-request-id` = the
//! request ID (reading the request in this phase).
//!
//! `on_complete`: one audit record `{"plugin":"probe","request_id","status","outcome",
//! "input_tokens","output_tokens","cache_read_tokens","cache_write_tokens","denied_by",
//! "model_served","principal","sub"}`.

use std::sync::atomic::{AtomicU64, Ordering};

use llm_gateway_plugin::serde_json::{json, Value};
use llm_gateway_plugin::{
    audit, clock, export_plugin, jwt, log, metrics, state, Completion, Decision, Error, Plugin,
    Request, Response,
};

/// `on_request` calls in this instance: the isolation signal.
static ON_REQUEST_CALLS: AtomicU64 = AtomicU64::new(0);

struct Probe {
    jwt_secret: Option<String>,
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

fn json_scalar(value: Option<Value>) -> String {
    match value {
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => "-".to_string(),
    }
}

impl Plugin for Probe {
    fn init(config: &Value) -> Result<Self, Error> {
        let jwt_secret = match config.get("jwt_secret") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Error::new("bad config: jwt_secret must be a string")),
        };
        Ok(Probe { jwt_secret })
    }

    fn on_request(&mut self, req: &mut Request) -> Decision {
        let calls = ON_REQUEST_CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let op = req.operation();
        let max_tokens = req.body_json("/max_tokens");
        let seen = format!(
            "method={};path={};door={};op={};model={};x-test={};headers={};client={};rid={};max_tokens={};role={}",
            req.method(),
            req.path(),
            req.front_door().as_str(),
            op.as_str(),
            or_dash(req.model()),
            or_dash(req.header("x-test")),
            req.headers().len(),
            or_dash(req.client_address()),
            req.request_id(),
            json_scalar(max_tokens.clone()),
            json_scalar(req.body_json("/messages/0/role")),
        );
        let _ = req.set_header("x-probe-seen", &seen);
        let _ = req.set_header("x-probe-instance-count", &calls.to_string());

        if let Some(model) = req.header("x-rewrite-model") {
            if let Err(e) = req.set_model(&model) {
                log::warn(&format!("set_model refused: {e}"));
            }
        }

        let _ = req.set_identity("probe-user", Some("probe-team"));
        // Per-request state, read back in on_complete (which may run on another instance).
        let _ = req.set_state(&json!({ "rid": req.request_id() }));
        let _ = req.set_metadata("probe", "1");
        let _ = req.set_metadata("now_ms", &clock::now_ms().to_string());
        let identity = format!(
            "{}/{}/{}",
            or_dash(req.principal()),
            or_dash(req.team()),
            or_dash(req.metadata("probe"))
        );
        let _ = req.set_header("x-probe-identity", &identity);

        match state::incr("hits", 1, 60_000) {
            Ok(hits) => {
                let _ = req.set_header("x-probe-hits", &hits.to_string());
            }
            Err(e) => log::error(&format!("state incr failed: {e}")),
        }
        if let Ok(got) = state::get("hits") {
            let _ = req.set_header("x-probe-hits-get", &or_dash(got.map(|v| v.to_string())));
        }

        if req
            .set_header("authorization", "Bearer from-probe")
            .is_err()
        {
            let _ = req.set_header("x-probe-protected", "refused");
        }

        if let Some(name) = req.header("x-probe-remove") {
            req.remove_header(&name);
        }

        if req.header("x-probe-ratelimit").is_some() {
            match state::check_rate("rl", 2, 60_000, 1) {
                Ok(r) if !r.allowed => {
                    return Decision::too_many_requests(
                        "rate limited by probe",
                        r.retry_after_seconds(),
                    );
                }
                Ok(r) => {
                    let _ = req.set_header("x-probe-rate-remaining", &r.remaining.to_string());
                }
                Err(e) => log::error(&format!("state check_rate failed: {e}")),
            }
        }

        if let Some(token) = req.header("x-probe-jwt") {
            let Some(secret) = &self.jwt_secret else {
                return Decision::unauthorized("probe has no jwt_secret configured");
            };
            let key = jwt::Key::Hs256Secret(secret.clone());
            match jwt::verify(&token, &key, &jwt::Validation::default()) {
                Ok(claims) => {
                    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("-");
                    let _ = req.set_metadata("sub", sub);
                }
                Err(e) => return Decision::unauthorized(e.to_string()),
            }
        }

        let _ = metrics::counter_add("requests", &[("op", op.as_str())], 1);
        if let Some(n) = max_tokens.as_ref().and_then(Value::as_f64) {
            let _ = metrics::gauge_set("max_tokens", &[], n);
        }
        log::info(&format!("probe saw {}", req.request_id()));

        if req.header("x-probe-deny").is_some() {
            return Decision::forbidden("denied by probe");
        }
        Decision::Continue
    }

    fn on_response(&mut self, resp: &mut Response) {
        let status = resp.status().to_string();
        let _ = resp.set_header("x-probe-status", &status);
        let request_id = resp.request().request_id();
        let _ = resp.set_header("x-probe-request-id", &request_id);
    }

    fn on_complete(&mut self, completion: &Completion) {
        let req = completion.request();
        let record = json!({
            "plugin": "probe",
            "request_id": req.request_id(),
            "status": completion.status,
            "outcome": completion.outcome.as_str(),
            "input_tokens": completion.usage.input_tokens,
            "output_tokens": completion.usage.output_tokens,
            "cache_read_tokens": completion.usage.cache_read_tokens,
            "cache_write_tokens": completion.usage.cache_write_tokens,
            "denied_by": completion.denied_by,
            "model_served": completion.model_served,
            "principal": req.principal(),
            "sub": req.metadata("sub"),
            "state": req.state::<Value>(),
        });
        if let Err(e) = audit::emit(&record) {
            log::error(&format!("audit emit failed: {e}"));
        }
    }
}

export_plugin!(Probe);
