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
//!
//! Every value the record copies from the request is cut to a per-field cap (and named in the
//! record's `truncated` list), so no client input can push a record over the host's size
//! limit; a record still over `max_record_bytes` (many `headers`, a small limit) is written
//! again with tighter caps until it fits.

use llm_gateway_plugin::serde_json::{self, Map, Value};
use llm_gateway_plugin::{
    audit, clock, export_plugin, log, metrics, Completion, Decision, Error, Plugin, Request,
};
use plugin_common::calendar::rfc3339;
use plugin_common::config;
use plugin_common::pricing::{micro_to_usd, PriceTable};
use serde::{Deserialize, Serialize};

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

/// Caps on the values the record copies from a request, in bytes of the value as written in
/// the record: its JSON string without the quotes, so a character JSON escapes counts as its
/// escape (`\"` is 2 bytes, a control character 6). Cuts fall on a character boundary.
#[derive(Debug, Clone, Copy)]
struct Caps {
    /// `request_id` (the gateway's are UUIDs, a client's own at most 128 characters): kept
    /// longest, as the record's link to the gateway's log line.
    request_id: usize,
    /// IDs and names: `principal`, `team`, `client_address`, `method`, `backend`,
    /// `model_requested`, `model_served`, `denied_by`, `session_id`.
    id: usize,
    /// Free text: `user_agent`, `attempts`, each `headers` value.
    text: usize,
    /// Whether the `headers` object is written at all.
    headers: bool,
}

/// The caps a record is written with, in order, until it fits `max_record_bytes`. The first
/// keeps a record with a few `headers` far under the default limit whatever the client sent
/// (about 6 KiB plus 1 KiB per header); the last (at most about 920 bytes: numbers, the
/// request ID and the `truncated` list) fits the smallest allowed limit (1024).
const LEVELS: [Caps; 3] = [
    Caps {
        request_id: 256,
        id: 256,
        text: 1024,
        headers: true,
    },
    Caps {
        request_id: 64,
        id: 64,
        text: 64,
        headers: false,
    },
    Caps {
        request_id: 40,
        id: 0,
        text: 0,
        headers: false,
    },
];

/// What `on_request` saw, for `on_complete`. Kept in the request's state (held by the host):
/// the gateway lends an instance for one phase call, so `on_complete` may run elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    started_ms: u64,
    /// The model as the client asked, cut to the first level's cap (so the state stays
    /// small whatever the client sent).
    model_requested: Option<String>,
    /// Whether `model_requested` was cut.
    model_requested_truncated: bool,
}

impl Seen {
    fn new(started_ms: u64, model_requested: Option<String>) -> Self {
        let mut truncated = false;
        let model_requested = model_requested.map(|mut model| {
            if let Some(short) = cut(&model, LEVELS[0].id) {
                model.truncate(short.len());
                truncated = true;
            }
            model
        });
        Seen {
            started_ms,
            model_requested,
            model_requested_truncated: truncated,
        }
    }
}

/// The bytes `c` takes in a JSON string (as `serde_json` escapes it).
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest prefix of `value` whose JSON string takes at most `cap` bytes (cut on a
/// character boundary), or `None` when the whole of it does.
fn cut(value: &str, cap: usize) -> Option<&str> {
    let mut used = 0;
    for (at, c) in value.char_indices() {
        used += escaped_len(c);
        if used > cap {
            return Some(&value[..at]);
        }
    }
    None
}

/// The plugin.
#[derive(Debug)]
pub struct AuditLog {
    capture_bodies: bool,
    max_record_bytes: usize,
    session_header: String,
    headers: Vec<String>,
    prices: PriceTable,
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
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Decision {
        let seen = Seen::new(clock::now_ms(), req.model());
        if let Err(e) = req.set_state(&seen) {
            // on_complete falls back to what it can still tell.
            log::warn(&format!(
                "could not keep the start of request {}: {e}",
                req.request_id()
            ));
        }
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
/// this runs for every request), with the names of the fields it had to cut.
struct ObjectWriter {
    out: Vec<u8>,
    truncated: Vec<String>,
}

impl ObjectWriter {
    fn new() -> Self {
        let mut out = Vec::with_capacity(1024);
        out.push(b'{');
        Self {
            out,
            truncated: Vec::new(),
        }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.out, key);
        self.out.push(b':');
    }

    fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.out, value);
    }

    /// Appends a string taken from the request, cut to `cap` (and then named in `truncated`).
    fn put_text(&mut self, key: &str, value: Option<&str>, cap: usize) {
        let value = value.map(|v| match cut(v, cap) {
            Some(short) => {
                self.truncated.push(key.to_string());
                short
            }
            None => v,
        });
        self.put(key, &value);
    }

    /// Appends a field whose value is already JSON text.
    fn put_raw(&mut self, key: &str, json_text: &str) {
        self.key(key);
        self.out.extend_from_slice(json_text.as_bytes());
    }

    /// Appends `truncated`, when something was cut.
    fn put_truncated(&mut self) {
        if !self.truncated.is_empty() {
            let truncated = std::mem::take(&mut self.truncated);
            self.put("truncated", &truncated);
        }
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
    /// The record of a finished request, as JSON text: with the first caps that make it fit
    /// `max_record_bytes`.
    fn record(&mut self, c: &Completion) -> String {
        let req = c.request();
        // Without a state (on_request could not store it) the start is what the latency says
        // and the model is the one sent (after rewrites).
        let seen = req.state::<Seen>().unwrap_or_else(|| {
            Seen::new(clock::now_ms().saturating_sub(c.latency_ms), req.model())
        });
        let cost_micro = self.prices.cost_micro_usd(
            c.model_served
                .as_deref()
                .or(seen.model_requested.as_deref()),
            &c.usage,
            c.cache_write_1h_tokens(),
        );
        let body = self.capture_bodies.then(|| req.body_json_text(""));
        let mut text = String::new();
        for caps in LEVELS {
            text = self.render(c, &seen, cost_micro, body.as_ref(), caps);
            if text.len() <= self.max_record_bytes {
                break;
            }
        }
        text
    }

    /// The record written with `caps`. `body` is `Some` with `capture_bodies`.
    fn render(
        &self,
        c: &Completion,
        seen: &Seen,
        cost_micro: u64,
        body: Option<&Option<String>>,
        caps: Caps,
    ) -> String {
        let req = c.request();
        let mut r = ObjectWriter::new();
        r.put("time", &rfc3339(seen.started_ms));
        r.put_text("request_id", Some(&req.request_id()), caps.request_id);
        r.put_text("principal", req.principal().as_deref(), caps.id);
        r.put_text("team", req.team().as_deref(), caps.id);
        r.put_text("client_address", req.client_address().as_deref(), caps.id);
        r.put("front_door", req.front_door().as_str());
        r.put("operation", req.operation().as_str());
        r.put_text("method", Some(&req.method()), caps.id);
        r.put_text("backend", c.backend.as_deref(), caps.id);
        // Every backend tried when the request failed over (`name:status ...`), set by the host.
        r.put_text(
            "attempts",
            req.metadata("gateway.attempts").as_deref(),
            caps.text,
        );
        let cut_before = r.truncated.len();
        r.put_text("model_requested", seen.model_requested.as_deref(), caps.id);
        if seen.model_requested_truncated && r.truncated.len() == cut_before {
            // Cut already in on_request.
            r.truncated.push("model_requested".into());
        }
        r.put_text("model_served", c.model_served.as_deref(), caps.id);
        r.put("status", &c.status);
        // The host names outcomes newer than the contract's enum (`gateway-stopped`: the
        // gateway's stop ended the request) in `gateway.outcome`.
        match req.metadata("gateway.outcome").as_deref() {
            Some("gateway_stopped") => r.put("outcome", "gateway-stopped"),
            _ => r.put("outcome", c.outcome.as_str()),
        }
        r.put_text("denied_by", c.denied_by.as_deref(), caps.id);
        r.put("input_tokens", &c.usage.input_tokens);
        r.put("output_tokens", &c.usage.output_tokens);
        r.put("cache_read_tokens", &c.usage.cache_read_tokens);
        r.put("cache_write_tokens", &c.usage.cache_write_tokens);
        r.put("cost_usd", &micro_to_usd(cost_micro));
        r.put("latency_ms", &c.latency_ms);
        r.put("time_to_first_token_ms", &c.time_to_first_token_ms);
        r.put("request_bytes", &c.request_bytes);
        r.put("response_bytes", &c.response_bytes);
        r.put_text(
            "session_id",
            req.header(&self.session_header).as_deref(),
            caps.id,
        );
        r.put_text("user_agent", req.header("user-agent").as_deref(), caps.text);
        if !self.headers.is_empty() {
            if caps.headers {
                let mut headers = Map::new();
                for name in &self.headers {
                    let Some(mut value) = req.header(name) else {
                        continue;
                    };
                    if let Some(short) = cut(&value, caps.text) {
                        value.truncate(short.len());
                        r.truncated.push(format!("headers.{name}"));
                    }
                    headers.insert(name.clone(), Value::String(value));
                }
                r.put("headers", &headers);
            } else {
                r.truncated.push("headers".into());
            }
        }
        r.put_truncated();
        match body {
            None => {}
            // The host hands the body as compact JSON text; it goes in as it is, if the
            // record stays within its size limit.
            Some(Some(text)) if r.len() + text.len() + 20 <= self.max_record_bytes => {
                r.put_raw("request_body", text)
            }
            Some(Some(text)) => r.put(
                "request_body_omitted",
                &format!("{} bytes, over max_record_bytes", text.len()),
            ),
            Some(None) => r.put("request_body", &Value::Null),
        }
        r.finish()
    }
}

export_plugin!(AuditLog);

#[cfg(test)]
mod tests;
