//! Host calls as component imports (`wasm32`).
//!
//! `bindings` is generated from `plugin-sdk/wit`; it is public only so that
//! [`export_plugin!`](crate::export_plugin) can name its export glue from the plugin's crate.

#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__llm_gateway_plugin_export_world",
    });
}

use bindings::llm_gateway::plugin::{
    audit, catalog, clock, jwt, log as wit_log, metrics, request, request_state, response, state,
    types,
};

use crate::jwt::{Key, Validation};
use crate::log::Level;
use crate::request::{FrontDoor, Operation};
use crate::state::{Answer, Hold, HoldState, Op, RateCheck, Settlement};

pub(crate) fn method() -> String {
    request::method()
}

pub(crate) fn path() -> String {
    request::path()
}

pub(crate) fn front_door() -> FrontDoor {
    match request::front_door() {
        types::FrontDoor::Bedrock => FrontDoor::Bedrock,
        types::FrontDoor::Vertex => FrontDoor::Vertex,
        types::FrontDoor::Anthropic => FrontDoor::Anthropic,
    }
}

pub(crate) fn operation() -> Operation {
    match request::operation() {
        types::Operation::Invoke => Operation::Invoke,
        types::Operation::Stream => Operation::Stream,
        types::Operation::Converse => Operation::Converse,
        types::Operation::ConverseStream => Operation::ConverseStream,
        types::Operation::CountTokens => Operation::CountTokens,
        types::Operation::ControlPlane => Operation::ControlPlane,
        types::Operation::ListModels => Operation::ListModels,
    }
}

pub(crate) fn model() -> Option<String> {
    request::model()
}

pub(crate) fn set_model(model: &str) -> Result<(), String> {
    request::set_model(model)
}

pub(crate) fn header(name: &str) -> Option<String> {
    request::header(name)
}

pub(crate) fn headers() -> Vec<(String, String)> {
    request::headers()
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect()
}

pub(crate) fn set_header(name: &str, value: &str) -> Result<(), String> {
    request::set_header(name, value)
}

pub(crate) fn remove_header(name: &str) {
    request::remove_header(name)
}

pub(crate) fn client_address() -> Option<String> {
    request::client_address()
}

pub(crate) fn request_id() -> String {
    request::request_id()
}

pub(crate) fn principal() -> Option<String> {
    request::principal()
}

pub(crate) fn team() -> Option<String> {
    request::team()
}

pub(crate) fn set_identity(principal: &str, team: Option<&str>) -> Result<(), String> {
    request::set_identity(principal, team)
}

pub(crate) fn metadata(key: &str) -> Option<String> {
    request::metadata(key)
}

pub(crate) fn set_metadata(key: &str, value: &str) -> Result<(), String> {
    request::set_metadata(key, value)
}

pub(crate) fn body_json(pointer: &str) -> Option<String> {
    request::body_json(pointer)
}

pub(crate) fn request_state_get() -> Option<Vec<u8>> {
    request_state::get()
}

pub(crate) fn request_state_set(value: &[u8]) -> Result<(), String> {
    request_state::set(value)
}

pub(crate) fn response_status() -> u16 {
    response::status()
}

pub(crate) fn response_header(name: &str) -> Option<String> {
    response::header(name)
}

pub(crate) fn response_headers() -> Vec<(String, String)> {
    response::headers()
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect()
}

pub(crate) fn response_set_header(name: &str, value: &str) -> Result<(), String> {
    response::set_header(name, value)
}

pub(crate) fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => types::LogLevel::Trace,
        Level::Debug => types::LogLevel::Debug,
        Level::Info => types::LogLevel::Info,
        Level::Warn => types::LogLevel::Warn,
        Level::Error => types::LogLevel::Error,
    };
    wit_log::log(level, message)
}

pub(crate) fn now_ms() -> u64 {
    clock::now_ms()
}

pub(crate) fn state_incr(key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String> {
    state::incr(key, delta, ttl_ms)
}

pub(crate) fn state_get(key: &str) -> Result<Option<i64>, String> {
    state::get(key)
}

pub(crate) fn state_check_rate(
    key: &str,
    limit: u64,
    window_ms: u64,
    cost: u64,
) -> Result<RateCheck, String> {
    state::check_rate(key, limit, window_ms, cost).map(rate_check)
}

fn rate_check(r: state::RateCheck) -> RateCheck {
    RateCheck {
        allowed: r.allowed,
        remaining: r.remaining,
        retry_after_ms: r.retry_after_ms,
    }
}

fn hold_request(hold: &Hold) -> state::HoldRequest {
    state::HoldRequest {
        key: hold.key.clone(),
        holder: hold.holder.clone(),
        amount: hold.amount,
        limit: hold.limit,
        ttl_ms: hold.ttl_ms,
    }
}

fn hold_state(h: state::HoldState) -> HoldState {
    HoldState {
        granted: h.granted,
        used: h.used,
        held: h.held,
    }
}

fn settlement(s: &Settlement) -> state::Settlement {
    state::Settlement {
        key: s.key.clone(),
        holder: s.holder.clone(),
        settle: s.settle,
        ttl_ms: s.ttl_ms,
    }
}

fn wit_op(op: &Op) -> state::Op {
    match op {
        Op::Incr { key, delta, ttl_ms } => state::Op::Incr(state::IncrOp {
            key: key.clone(),
            delta: *delta,
            ttl_ms: *ttl_ms,
        }),
        Op::Get { key } => state::Op::Get(key.clone()),
        Op::CheckRate {
            key,
            limit,
            window_ms,
            cost,
        } => state::Op::CheckRate(state::RateOp {
            key: key.clone(),
            limit: *limit,
            window_ms: *window_ms,
            cost: *cost,
        }),
        Op::Acquire(hold) => state::Op::Acquire(hold_request(hold)),
        Op::Release(s) => state::Op::Release(settlement(s)),
    }
}

pub(crate) fn state_acquire(hold: &Hold) -> Result<HoldState, String> {
    state::acquire(&hold_request(hold)).map(hold_state)
}

pub(crate) fn state_release(s: &Settlement) -> Result<bool, String> {
    state::release(&settlement(s))
}

pub(crate) fn state_batch(ops: &[Op]) -> Vec<Result<Answer, String>> {
    let ops: Vec<state::Op> = ops.iter().map(wit_op).collect();
    state::batch(&ops)
        .into_iter()
        .map(|answer| {
            answer.map(|a| match a {
                state::Answer::Counter(v) => Answer::Counter(v),
                state::Answer::Value(v) => Answer::Value(v),
                state::Answer::Rate(r) => Answer::Rate(rate_check(r)),
                state::Answer::Acquired(h) => Answer::Acquired(hold_state(h)),
                state::Answer::Released(r) => Answer::Released(r),
            })
        })
        .collect()
}

pub(crate) fn state_submit(ops: &[Op]) {
    let ops: Vec<state::Op> = ops.iter().map(wit_op).collect();
    state::submit(&ops)
}

pub(crate) fn catalog_lookup(id: &str) -> Option<crate::catalog::Model> {
    catalog::lookup(id).map(|m| crate::catalog::Model {
        name: m.name,
        display_name: m.display_name,
        price: m.price.map(|p| crate::catalog::Price {
            input: p.input,
            output: p.output,
            cache_read: p.cache_read,
            cache_write: p.cache_write,
            cache_write_1h: p.cache_write_1h,
        }),
    })
}

pub(crate) fn jwt_verify(
    token: &str,
    key: &Key,
    validation: &Validation,
) -> Result<Vec<(String, String)>, String> {
    let key = match key {
        Key::Hs256Secret(s) => jwt::Key::Hs256Secret(s.clone()),
        Key::PublicKeyPem(s) => jwt::Key::PublicKeyPem(s.clone()),
        Key::JwksUrl(s) => jwt::Key::JwksUrl(s.clone()),
    };
    let validation = jwt::Validation {
        issuer: validation.issuer.clone(),
        audience: validation.audience.clone(),
        leeway_seconds: validation.leeway_seconds,
    };
    jwt::verify(token, &key, &validation)
        .map(|claims| claims.into_iter().map(|c| (c.name, c.value)).collect())
}

pub(crate) fn audit_emit(record: &str) -> Result<(), String> {
    audit::emit(record)
}

fn owned_labels(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) -> Result<(), String> {
    metrics::counter_add(name, &owned_labels(labels), value)
}

pub(crate) fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), String> {
    metrics::gauge_set(name, &owned_labels(labels), value)
}
