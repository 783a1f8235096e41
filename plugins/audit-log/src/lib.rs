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
        let text = self.record(c);
        match audit::emit_text(&text) {
            Ok(()) => {
                let _ = metrics::counter_add("records_total", &[], 1);
            }
            Err(e) => {
                let _ = metrics::counter_add("emit_errors_total", &[], 1);
                log::error(&format!(
                    "could not write the audit record of request {} ({} bytes): {e}",
                    c.request().request_id(),
                    text.len()
                ));
            }
        }
    }
}

/// A JSON object written field by field straight into its text (no map of values is built:
/// this runs for every request).
struct ObjectWriter {
    out: Vec<u8>,
}

impl ObjectWriter {
    fn new() -> Self {
        let mut out = Vec::with_capacity(1024);
        out.push(b'{');
        Self { out }
    }

    fn put(&mut self, key: &str, value: &Value) {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.out, key);
        self.out.push(b':');
        let _ = serde_json::to_writer(&mut self.out, value);
    }

    /// Appends a field whose value is already JSON text.
    fn put_raw(&mut self, key: &str, json_text: &str) {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        let _ = serde_json::to_writer(&mut self.out, key);
        self.out.push(b':');
        self.out.extend_from_slice(json_text.as_bytes());
    }

    fn len(&self) -> usize {
        self.out.len() + 1
    }

    fn finish(mut self) -> String {
        self.out.push(b'}');
        String::from_utf8(self.out).expect("serde_json writes UTF-8")
    }
}

impl AuditLog {
    /// The record of a finished request, as JSON text.
    fn record(&mut self, c: &Completion) -> String {
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
        let mut r = ObjectWriter::new();
        r.put("time", &json!(rfc3339(seen.started_ms)));
        r.put("request_id", &json!(request_id));
        r.put("principal", &json!(req.principal()));
        r.put("team", &json!(req.team()));
        r.put("client_address", &json!(req.client_address()));
        r.put("front_door", &json!(req.front_door().as_str()));
        r.put("operation", &json!(req.operation().as_str()));
        r.put("method", &json!(req.method()));
        r.put("backend", &json!(c.backend));
        // Every backend tried when the request failed over (`name:status ...`), set by the host.
        r.put("attempts", &json!(req.metadata("gateway.attempts")));
        r.put("model_requested", &json!(seen.model_requested));
        r.put("model_served", &json!(model_served));
        r.put("status", &json!(c.status));
        r.put("outcome", &json!(c.outcome.as_str()));
        r.put("denied_by", &json!(c.denied_by));
        r.put("input_tokens", &json!(c.usage.input_tokens));
        r.put("output_tokens", &json!(c.usage.output_tokens));
        r.put("cache_read_tokens", &json!(c.usage.cache_read_tokens));
        r.put("cache_write_tokens", &json!(c.usage.cache_write_tokens));
        r.put("cost_usd", &json!(micro_to_usd(cost_micro)));
        r.put("latency_ms", &json!(c.latency_ms));
        r.put("time_to_first_token_ms", &json!(c.time_to_first_token_ms));
        r.put("request_bytes", &json!(c.request_bytes));
        r.put("response_bytes", &json!(c.response_bytes));
        r.put("session_id", &json!(req.header(&self.session_header)));
        r.put("user_agent", &json!(req.header("user-agent")));
        if !self.headers.is_empty() {
            let headers: Map<String, Value> = self
                .headers
                .iter()
                .filter_map(|h| req.header(h).map(|v| (h.clone(), json!(v))))
                .collect();
            r.put("headers", &Value::Object(headers));
        }
        if self.capture_bodies {
            match req.body_json_text("") {
                // The host hands the body as compact JSON text; it goes in as it is, if the
                // record stays within its size limit.
                Some(text) if r.len() + text.len() + 20 <= self.max_record_bytes => {
                    r.put_raw("request_body", &text)
                }
                Some(text) => r.put(
                    "request_body_omitted",
                    &json!(format!("{} bytes, over max_record_bytes", text.len())),
                ),
                None => r.put("request_body", &Value::Null),
            }
        }
        r.finish()
    }
}

export_plugin!(AuditLog);

#[cfg(test)]
mod tests;
