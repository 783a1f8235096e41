//! `audit-log`: one JSON record per request in the gateway's audit log: who called which
//! model, how it ended, the tokens it used and what it cost.
//!
//! Put it FIRST in the pipeline: a plugin's `on_complete` runs only if its `on_request` ran,
//! so only the first plugin sees every request (including those `auth` refuses), and only a
//! plugin before `model-rewrite` sees the model as the client asked for it. Identity set by
//! later plugins (`auth`) is read in `on_complete`, when it is known.
//!
//! The plugin never fails a request: `on_request` always continues, and errors (an audit sink
//! that refuses the record) are logged. Prompts are recorded only with `capture_bodies =
//! true`. See `plugins/README.md` for the record's fields.

use llm_gateway_plugin::serde_json::{self, json, Map, Value};
use llm_gateway_plugin::{
    audit, clock, export_plugin, log, metrics, Completion, Decision, Error, Plugin, Request,
};
use plugin_common::calendar::rfc3339;
use plugin_common::config;
use plugin_common::pricing::{micro_to_usd, PriceTable};

/// Headers that may not be listed in `headers` (credentials).
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
    "x-amz-security-token",
];

/// The default `max_record_bytes`: under the host's default 64 KiB return limit.
const DEFAULT_MAX_RECORD_BYTES: u64 = 60 * 1024;

/// What `on_request` saw, for `on_complete`.
#[derive(Debug, Clone, Default)]
struct Seen {
    request_id: String,
    started_ms: u64,
    model_requested: Option<String>,
}

/// The plugin.
#[derive(Debug)]
pub struct AuditLog {
    capture_bodies: bool,
    max_record_bytes: usize,
    session_header: String,
    headers: Vec<String>,
    prices: PriceTable,
    seen: Option<Seen>,
}

impl Plugin for AuditLog {
    fn init(config: &Value) -> Result<Self, Error> {
        let what = "plugins.config";
        let map = config::object(config, what)?;
        config::only_keys(
            map,
            &[
                "capture_bodies",
                "max_record_bytes",
                "session_header",
                "headers",
                "prices",
                "default_price",
            ],
            what,
        )?;
        let headers: Vec<String> = config::opt_strings(map, "headers", what)?
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if let Some(h) = headers
            .iter()
            .find(|h| SECRET_HEADERS.contains(&h.as_str()))
        {
            return Err(Error::new(format!(
                "bad config: `headers` lists `{h}`, a credential: it is never recorded"
            )));
        }
        let max_record_bytes =
            config::opt_u64(map, "max_record_bytes", what)?.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        if max_record_bytes < 1024 {
            return Err("bad config: `max_record_bytes` must be at least 1024".into());
        }
        Ok(AuditLog {
            capture_bodies: config::opt_bool(map, "capture_bodies", what)?.unwrap_or(false),
            max_record_bytes: max_record_bytes as usize,
            session_header: config::opt_str(map, "session_header", what)?
                .unwrap_or_else(|| "x-claude-code-session-id".into())
                .to_ascii_lowercase(),
            headers,
            prices: PriceTable::from_config(config)?,
            seen: None,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Decision {
        self.seen = Some(Seen {
            request_id: req.request_id(),
            started_ms: clock::now_ms(),
            model_requested: req.model(),
        });
        Decision::Continue
    }

    fn on_complete(&mut self, c: &Completion) {
        let mut record = self.record(c);
        // Serialized once (twice only when a captured body must be dropped for size).
        let mut text = record.to_string();
        if text.len() > self.max_record_bytes {
            // Only a captured body can make a record this large.
            if let Some(obj) = record.as_object_mut() {
                obj.remove("request_body");
                obj.insert("request_body_omitted".into(), json!("record too large"));
            }
            text = record.to_string();
        }
        let text_len = text.len();
        match audit::emit_text(&text) {
            Ok(()) => {
                let _ = metrics::counter_add("records_total", &[], 1);
            }
            Err(e) => {
                let _ = metrics::counter_add("emit_errors_total", &[], 1);
                log::error(&format!(
                    "could not write the audit record of request {} ({text_len} bytes): {e}",
                    record["request_id"].as_str().unwrap_or("?")
                ));
            }
        }
    }
}

impl AuditLog {
    fn record(&mut self, c: &Completion) -> Value {
        let req = c.request();
        let request_id = req.request_id();
        // `seen` belongs to this request unless on_request did not run on this instance
        // (it always does in the gateway: all phases of a request share one instance).
        let seen = self
            .seen
            .take()
            .filter(|s| s.request_id == request_id)
            .unwrap_or_else(|| Seen {
                request_id: request_id.clone(),
                started_ms: clock::now_ms().saturating_sub(c.latency_ms),
                model_requested: req.model(),
            });
        let model_served = c.model_served.clone();
        let cost_micro = self.prices.cost_micro_usd(
            model_served.as_deref().or(seen.model_requested.as_deref()),
            &c.usage,
        );
        let mut r = Map::new();
        let mut put = |k: &str, v: Value| {
            r.insert(k.to_string(), v);
        };
        put("time", json!(rfc3339(seen.started_ms)));
        put("request_id", json!(request_id));
        put("principal", json!(req.principal()));
        put("team", json!(req.team()));
        put("client_address", json!(req.client_address()));
        put("front_door", json!(req.front_door().as_str()));
        put("operation", json!(req.operation().as_str()));
        put("method", json!(req.method()));
        put("backend", json!(c.backend));
        // Every backend tried when the request failed over (`name:status ...`), set by the host.
        put("attempts", json!(req.metadata("gateway.attempts")));
        put("model_requested", json!(seen.model_requested));
        put("model_served", json!(model_served));
        put("status", json!(c.status));
        put("outcome", json!(c.outcome.as_str()));
        put("denied_by", json!(c.denied_by));
        put("input_tokens", json!(c.usage.input_tokens));
        put("output_tokens", json!(c.usage.output_tokens));
        put("cache_read_tokens", json!(c.usage.cache_read_tokens));
        put("cache_write_tokens", json!(c.usage.cache_write_tokens));
        put("cost_usd", json!(micro_to_usd(cost_micro)));
        put("latency_ms", json!(c.latency_ms));
        put("time_to_first_token_ms", json!(c.time_to_first_token_ms));
        put("request_bytes", json!(c.request_bytes));
        put("response_bytes", json!(c.response_bytes));
        put("session_id", json!(req.header(&self.session_header)));
        put("user_agent", json!(req.header("user-agent")));
        if !self.headers.is_empty() {
            let headers: Map<String, Value> = self
                .headers
                .iter()
                .filter_map(|h| req.header(h).map(|v| (h.clone(), json!(v))))
                .collect();
            put("headers", Value::Object(headers));
        }
        if self.capture_bodies {
            match req.body_json_text("") {
                // Parsed only when it can fit: the record's size limit applies anyway.
                Some(text) if text.len() <= self.max_record_bytes => {
                    match serde_json::from_str::<Value>(&text) {
                        Ok(body) => put("request_body", body),
                        Err(e) => log::warn(&format!("request body not recorded: {e}")),
                    }
                }
                Some(text) => put(
                    "request_body_omitted",
                    json!(format!("{} bytes, over max_record_bytes", text.len())),
                ),
                None => put("request_body", Value::Null),
            }
        }
        Value::Object(r)
    }
}

export_plugin!(AuditLog);

#[cfg(test)]
mod tests;
