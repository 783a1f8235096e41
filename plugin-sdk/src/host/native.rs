//! Host calls answered in memory (native builds, for `cargo test`).
//!
//! [`crate::testing::TestHost`] moves a [`Context`] (the phase, the request, the response and
//! the host's services) into a thread-local slot for the duration of one phase call and takes
//! it back afterwards. The functions below follow the gateway's rules (phase-bound writes,
//! protected headers, the state store's arithmetic, holds and their expiry, the catalog's
//! lookups) so a plugin that passes here behaves the same in the gateway. Each state store
//! call is also recorded ([`StateCall`]), so tests can count round trips.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::catalog::Model;
use crate::jwt::{Key, Validation};
use crate::log::Level;
use crate::request::{FrontDoor, Operation};
use crate::state::{Answer, Hold, HoldState, Op, RateCheck, Settlement};
use crate::testing::StateCall;

/// Request headers a plugin can neither set nor remove: credentials, framing and hop-by-hop
/// headers, and the gateway's own (`x-amz-*` too, checked separately).
pub(crate) const PROTECTED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "accept-encoding",
    "x-request-id",
];

/// Response headers a plugin cannot set.
pub(crate) const PROTECTED_RESPONSE_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "content-type",
    "x-request-id",
];

/// The largest `body-json` result the host hands back.
const BODY_JSON_LIMIT: usize = 1 << 20;

/// Which phase is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Init,
    Request,
    Response,
    Complete,
}

/// One request as the in-memory host holds it.
#[derive(Debug, Clone)]
pub(crate) struct RequestState {
    pub method: String,
    pub path: String,
    pub front_door: FrontDoor,
    pub operation: Operation,
    pub model: Option<String>,
    pub headers: Vec<(String, String)>,
    pub client_address: Option<String>,
    pub request_id: String,
    pub principal: Option<String>,
    pub team: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub body: Option<String>,
    pub headers_set: Vec<(String, String)>,
    pub headers_removed: Vec<String>,
    pub model_rewritten: bool,
    /// What the plugin keeps for this request between phases (`request-state`).
    pub plugin_state: Option<Vec<u8>>,
}

impl Default for RequestState {
    fn default() -> Self {
        Self {
            method: "POST".into(),
            path: "/".into(),
            front_door: FrontDoor::Bedrock,
            operation: Operation::Invoke,
            model: None,
            headers: Vec::new(),
            client_address: None,
            request_id: "test-request".into(),
            principal: None,
            team: None,
            metadata: BTreeMap::new(),
            body: None,
            headers_set: Vec::new(),
            headers_removed: Vec::new(),
            model_rewritten: false,
            plugin_state: None,
        }
    }
}

/// The upstream answer as the in-memory host holds it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResponseState {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub headers_set: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Counter {
        value: i64,
        expires_ms: Option<u64>,
    },
    Window {
        start_ms: u64,
        window_ms: u64,
        current: u64,
        previous: u64,
    },
}

/// One open hold on a capacity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenHold {
    pub amount: i64,
    pub expires_ms: u64,
}

/// A catalog model and every ID that names it.
#[derive(Debug, Clone)]
pub(crate) struct CatalogEntry {
    pub model: Model,
    pub ids: Vec<String>,
}

/// A metric's name and its sorted labels.
pub(crate) type MetricKey = (String, Vec<(String, String)>);

/// What outlives a request: the clock, the state store, the catalog, JWKS documents and what
/// the plugin wrote to the host's sinks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Services {
    pub clock_ms: u64,
    pub entries: HashMap<String, Entry>,
    /// Open holds per capacity key, by holder.
    pub holds: HashMap<String, BTreeMap<String, OpenHold>>,
    /// Every state store call, in order.
    pub state_calls: Vec<StateCall>,
    /// The store answers every call with an error (`TestHost::set_state_unavailable`).
    pub state_unavailable: bool,
    pub catalog: Vec<CatalogEntry>,
    pub jwks: HashMap<String, String>,
    pub audit: Vec<serde_json::Value>,
    pub counters: BTreeMap<MetricKey, u64>,
    pub gauges: BTreeMap<MetricKey, f64>,
    pub logs: Vec<(Level, String)>,
}

/// Everything a phase call can reach.
#[derive(Debug)]
pub(crate) struct Context {
    pub phase: Phase,
    pub request: RequestState,
    pub response: Option<ResponseState>,
    pub services: Services,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Makes `context` the current thread's host.
pub(crate) fn install(context: Context) {
    CONTEXT.with(|c| *c.borrow_mut() = Some(context));
}

/// Takes the current thread's host back.
pub(crate) fn uninstall() -> Option<Context> {
    CONTEXT.with(|c| c.borrow_mut().take())
}

fn with<R>(f: impl FnOnce(&mut Context) -> R) -> R {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        let context = c.as_mut().expect(
            "a plugin host call ran outside a phase: drive plugins with llm_gateway_plugin::testing::TestHost",
        );
        f(context)
    })
}

fn with_request<R>(f: impl FnOnce(&mut RequestState, Phase) -> R) -> R {
    with(|c| {
        assert!(
            c.phase != Phase::Init,
            "there is no request during init: read the request in a phase"
        );
        f(&mut c.request, c.phase)
    })
}

fn check_header(name: &str, value: &str) -> Result<String, String> {
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err(format!("`{name}` is not a valid header name"));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "the value for `{name}` is not a valid header value"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn request_header_protected(name: &str) -> bool {
    PROTECTED_REQUEST_HEADERS.contains(&name) || name.starts_with("x-amz-")
}

fn find(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn replace(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    headers.retain(|(n, _)| n != name);
    headers.push((name.to_string(), value.to_string()));
}

pub(crate) fn method() -> String {
    with_request(|r, _| r.method.clone())
}

pub(crate) fn path() -> String {
    with_request(|r, _| r.path.clone())
}

pub(crate) fn front_door() -> FrontDoor {
    with_request(|r, _| r.front_door)
}

pub(crate) fn operation() -> Operation {
    with_request(|r, _| r.operation)
}

pub(crate) fn model() -> Option<String> {
    with_request(|r, _| r.model.clone())
}

pub(crate) fn set_model(model: &str) -> Result<(), String> {
    with_request(|r, phase| {
        if phase != Phase::Request {
            return Err("the model can only be rewritten in on-request".into());
        }
        if r.model.is_none() {
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
        r.model = Some(model.to_string());
        r.model_rewritten = true;
        Ok(())
    })
}

pub(crate) fn header(name: &str) -> Option<String> {
    with_request(|r, _| find(&r.headers, name))
}

pub(crate) fn headers() -> Vec<(String, String)> {
    with_request(|r, _| r.headers.clone())
}

pub(crate) fn set_header(name: &str, value: &str) -> Result<(), String> {
    with_request(|r, phase| {
        if phase != Phase::Request {
            return Err("request headers can only be set in on-request".into());
        }
        let name = check_header(name, value)?;
        if request_header_protected(&name) {
            return Err(format!(
                "`{name}` is managed by the gateway and cannot be set"
            ));
        }
        replace(&mut r.headers, &name, value);
        replace(&mut r.headers_set, &name, value);
        Ok(())
    })
}

pub(crate) fn remove_header(name: &str) {
    with_request(|r, phase| {
        let name = name.to_ascii_lowercase();
        if phase == Phase::Request && !request_header_protected(&name) {
            r.headers.retain(|(n, _)| *n != name);
            r.headers_set.retain(|(n, _)| *n != name);
            r.headers_removed.push(name);
        }
    })
}

pub(crate) fn client_address() -> Option<String> {
    with_request(|r, _| r.client_address.clone())
}

pub(crate) fn request_id() -> String {
    with_request(|r, _| r.request_id.clone())
}

pub(crate) fn principal() -> Option<String> {
    with_request(|r, _| r.principal.clone())
}

pub(crate) fn team() -> Option<String> {
    with_request(|r, _| r.team.clone())
}

pub(crate) fn set_identity(principal: &str, team: Option<&str>) -> Result<(), String> {
    with_request(|r, phase| {
        if phase != Phase::Request {
            return Err("the identity can only be set in on-request".into());
        }
        if principal.is_empty() {
            return Err("the principal is empty".into());
        }
        r.principal = Some(principal.to_string());
        r.team = team.map(str::to_string);
        Ok(())
    })
}

pub(crate) fn metadata(key: &str) -> Option<String> {
    with_request(|r, _| r.metadata.get(key).cloned())
}

pub(crate) fn set_metadata(key: &str, value: &str) -> Result<(), String> {
    with_request(|r, phase| {
        if phase != Phase::Request {
            return Err("metadata can only be set in on-request".into());
        }
        // As the gateway: `gateway.` keys are the host's (CONTRACT.md).
        if key.starts_with("gateway.") {
            return Err("metadata keys starting `gateway.` are set by the gateway".into());
        }
        r.metadata.insert(key.to_string(), value.to_string());
        Ok(())
    })
}

pub(crate) fn body_json(pointer: &str) -> Option<String> {
    with_request(|r, _| {
        let body: serde_json::Value = serde_json::from_str(r.body.as_deref()?).ok()?;
        let text = body.pointer(pointer)?.to_string();
        (text.len() <= BODY_JSON_LIMIT).then_some(text)
    })
}

/// As the gateway's default return limit: the most a plugin keeps per request.
const REQUEST_STATE_LIMIT: usize = 64 * 1024;

pub(crate) fn request_state_get() -> Option<Vec<u8>> {
    with_request(|r, _| r.plugin_state.clone())
}

pub(crate) fn request_state_set(value: &[u8]) -> Result<(), String> {
    with_request(|r, phase| {
        if phase == Phase::Complete {
            return Err("request state can only be set in on-request and on-response".into());
        }
        if value.len() > REQUEST_STATE_LIMIT {
            return Err(format!(
                "request state is {} bytes, over the plugin's limit of {REQUEST_STATE_LIMIT}",
                value.len()
            ));
        }
        r.plugin_state = Some(value.to_vec());
        Ok(())
    })
}

pub(crate) fn response_status() -> u16 {
    with(|c| c.response.as_ref().map_or(0, |r| r.status))
}

pub(crate) fn response_header(name: &str) -> Option<String> {
    with(|c| find(&c.response.as_ref()?.headers, name))
}

pub(crate) fn response_headers() -> Vec<(String, String)> {
    with(|c| {
        c.response
            .as_ref()
            .map(|r| r.headers.clone())
            .unwrap_or_default()
    })
}

pub(crate) fn response_set_header(name: &str, value: &str) -> Result<(), String> {
    with(|c| {
        if c.phase != Phase::Response {
            return Err("response headers can only be set in on-response".into());
        }
        let name = check_header(name, value)?;
        if PROTECTED_RESPONSE_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "`{name}` is managed by the gateway and cannot be set"
            ));
        }
        let Some(response) = c.response.as_mut() else {
            return Err("there is no response".into());
        };
        replace(&mut response.headers, &name, value);
        replace(&mut response.headers_set, &name, value);
        Ok(())
    })
}

pub(crate) fn log(level: Level, message: &str) {
    with(|c| c.services.logs.push((level, message.to_string())))
}

pub(crate) fn now_ms() -> u64 {
    with(|c| c.services.clock_ms)
}

fn wrong_type(key: &str) -> String {
    format!("state store: key {key} does not hold a counter")
}

const UNAVAILABLE: &str =
    "state store unavailable (the test host's store is down: TestHost::set_state_unavailable)";

/// Records a state call and runs it on the store, unless the store is down.
fn with_store<R>(
    function: &'static str,
    ops: &[Op],
    f: impl FnOnce(&mut Services) -> Result<R, String>,
) -> Result<R, String> {
    with(|c| {
        c.services.state_calls.push(StateCall {
            function,
            ops: ops.iter().map(Op::name).collect(),
        });
        if c.services.state_unavailable {
            return Err(UNAVAILABLE.to_string());
        }
        f(&mut c.services)
    })
}

/// The live value of a counter (`None` for a missing or expired one).
pub(crate) fn counter_value(s: &Services, key: &str) -> Result<Option<i64>, String> {
    let now = s.clock_ms;
    match s.entries.get(key) {
        Some(Entry::Counter { value, expires_ms }) if expires_ms.is_none_or(|t| t > now) => {
            Ok(Some(*value))
        }
        Some(Entry::Counter { .. }) | None => Ok(None),
        Some(Entry::Window { .. }) => Err(wrong_type(key)),
    }
}

/// The open (unexpired) holds on `key`, by holder.
pub(crate) fn open_holds(s: &Services, key: &str) -> Vec<(String, i64)> {
    let now = s.clock_ms;
    s.holds
        .get(key)
        .map(|holds| {
            holds
                .iter()
                .filter(|(_, h)| h.expires_ms > now)
                .map(|(holder, h)| (holder.clone(), h.amount))
                .collect()
        })
        .unwrap_or_default()
}

fn incr_in(s: &mut Services, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String> {
    let now = s.clock_ms;
    let fresh = || Entry::Counter {
        value: 0,
        expires_ms: (ttl_ms > 0).then(|| now.saturating_add(ttl_ms)),
    };
    let entry = s.entries.entry(key.to_string()).or_insert_with(fresh);
    if let Entry::Counter {
        expires_ms: Some(t),
        ..
    } = entry
    {
        if *t <= now {
            *entry = fresh();
        }
    }
    match entry {
        Entry::Counter { value, .. } => {
            *value = value.saturating_add(delta);
            Ok(*value)
        }
        Entry::Window { .. } => Err(wrong_type(key)),
    }
}

/// The sliding-window counter of `CONTRACT.md`: fixed periods of `window_ms` aligned on the
/// clock's zero; what counts is the current period's total plus the previous period's,
/// weighted by how much of it still overlaps the window ending now.
fn check_rate_in(
    s: &mut Services,
    key: &str,
    limit: u64,
    window_ms: u64,
    cost: u64,
) -> Result<RateCheck, String> {
    let now = s.clock_ms;
    let window = window_ms.max(1);
    let aligned = now - now % window;
    let entry = s.entries.entry(key.to_string()).or_insert(Entry::Window {
        start_ms: aligned,
        window_ms: window,
        current: 0,
        previous: 0,
    });
    let Entry::Window {
        start_ms,
        window_ms: w,
        current,
        previous,
    } = entry
    else {
        return Err(format!(
            "state store: key {key} holds a counter, not a rate window"
        ));
    };
    if *w != window || aligned > *start_ms {
        let periods = if *w == window {
            (aligned - *start_ms) / window
        } else {
            2
        };
        *previous = if periods == 1 { *current } else { 0 };
        *current = 0;
        *start_ms = aligned;
        *w = window;
    }
    let elapsed = (now - *start_ms) as f64 / window as f64;
    let weighted_previous = (*previous as f64 * (1.0 - elapsed)).ceil() as u64;
    let used = weighted_previous + *current;
    if used + cost <= limit {
        *current += cost;
        return Ok(RateCheck {
            allowed: true,
            remaining: limit - used - cost,
            retry_after_ms: 0,
        });
    }
    let retry_after_ms = if *previous > 0 && *current + cost <= limit {
        let need = (used + cost - limit) as f64;
        (window as f64 * (need / *previous as f64).min(1.0)).ceil() as u64
    } else {
        *start_ms + window - now
    };
    Ok(RateCheck {
        allowed: false,
        remaining: limit.saturating_sub(used),
        retry_after_ms: retry_after_ms.max(1),
    })
}

/// A hold as the contract says: expired holds and the holder's earlier hold go first;
/// granted when settled use + the other holders' holds + `amount` fit under `limit`.
fn acquire_in(s: &mut Services, hold: &Hold) -> Result<HoldState, String> {
    if hold.amount < 0 {
        return Err(format!(
            "state store: a hold's amount is at least 0 (got {})",
            hold.amount
        ));
    }
    if hold.ttl_ms == 0 {
        return Err("state store: a hold's ttl is at least 1 ms".into());
    }
    let used = counter_value(s, &hold.key)?.unwrap_or(0);
    let now = s.clock_ms;
    let holds = s.holds.entry(hold.key.clone()).or_default();
    holds.retain(|_, h| h.expires_ms > now);
    // As the gateway's stores do: the holder's earlier hold ends whatever the answer.
    holds.remove(&hold.holder);
    let others = holds
        .values()
        .fold(0i64, |sum, h| sum.saturating_add(h.amount));
    let granted = used.saturating_add(others).saturating_add(hold.amount) <= hold.limit;
    if granted {
        holds.insert(
            hold.holder.clone(),
            OpenHold {
                amount: hold.amount,
                expires_ms: now.saturating_add(hold.ttl_ms),
            },
        );
    }
    if holds.is_empty() {
        s.holds.remove(&hold.key);
    }
    Ok(HoldState {
        granted,
        used,
        held: if granted {
            others.saturating_add(hold.amount)
        } else {
            others
        },
    })
}

/// Ends a hold (whether it was still open is the answer) and settles `settle` into the
/// counter, even when the hold had expired.
fn release_in(s: &mut Services, settlement: &Settlement) -> Result<bool, String> {
    // A rate window is not a capacity: refuse before changing anything.
    counter_value(s, &settlement.key)?;
    let now = s.clock_ms;
    let mut was_open = false;
    if let Some(holds) = s.holds.get_mut(&settlement.key) {
        was_open = holds
            .remove(&settlement.holder)
            .is_some_and(|h| h.expires_ms > now);
        holds.retain(|_, h| h.expires_ms > now);
        if holds.is_empty() {
            s.holds.remove(&settlement.key);
        }
    }
    if settlement.settle != 0 {
        incr_in(s, &settlement.key, settlement.settle, settlement.ttl_ms)?;
    }
    Ok(was_open)
}

fn run_op(s: &mut Services, op: &Op) -> Result<Answer, String> {
    match op {
        Op::Incr { key, delta, ttl_ms } => incr_in(s, key, *delta, *ttl_ms).map(Answer::Counter),
        Op::Get { key } => counter_value(s, key).map(Answer::Value),
        Op::CheckRate {
            key,
            limit,
            window_ms,
            cost,
        } => check_rate_in(s, key, *limit, *window_ms, *cost).map(Answer::Rate),
        Op::Acquire(hold) => acquire_in(s, hold).map(Answer::Acquired),
        Op::Release(settlement) => release_in(s, settlement).map(Answer::Released),
    }
}

pub(crate) fn state_incr(key: &str, delta: i64, ttl_ms: u64) -> Result<i64, String> {
    with_store("incr", &[], |s| incr_in(s, key, delta, ttl_ms))
}

pub(crate) fn state_get(key: &str) -> Result<Option<i64>, String> {
    with_store("get", &[], |s| counter_value(s, key))
}

pub(crate) fn state_check_rate(
    key: &str,
    limit: u64,
    window_ms: u64,
    cost: u64,
) -> Result<RateCheck, String> {
    with_store("check-rate", &[], |s| {
        check_rate_in(s, key, limit, window_ms, cost)
    })
}

pub(crate) fn state_acquire(hold: &Hold) -> Result<HoldState, String> {
    with_store("acquire", &[], |s| acquire_in(s, hold))
}

pub(crate) fn state_release(settlement: &Settlement) -> Result<bool, String> {
    with_store("release", &[], |s| release_in(s, settlement))
}

pub(crate) fn state_batch(ops: &[Op]) -> Vec<Result<Answer, String>> {
    let answers = with_store("batch", ops, |s| {
        Ok(ops.iter().map(|op| run_op(s, op)).collect::<Vec<_>>())
    });
    answers.unwrap_or_else(|e| ops.iter().map(|_| Err(e.clone())).collect())
}

/// The gateway runs submitted operations after the call returns; here they run at once (the
/// test host has no "later"), and failures are dropped as the gateway drops them (after
/// logging them on its side).
pub(crate) fn state_submit(ops: &[Op]) {
    let _ = with_store("submit", ops, |s| {
        for op in ops {
            let _ = run_op(s, op);
        }
        Ok(())
    });
}

/// Bedrock's geographic inference-profile prefixes: `us.anthropic.…` names the model that
/// `anthropic.…` does, as in the gateway's catalog.
const BEDROCK_GEO_PREFIXES: &[&str] = &[
    "us.", "eu.", "apac.", "global.", "jp.", "au.", "ca.", "us-gov.",
];

pub(crate) fn catalog_lookup(id: &str) -> Option<Model> {
    let find = |catalog: &[CatalogEntry], id: &str| {
        catalog
            .iter()
            .find(|e| e.model.name == id || e.ids.iter().any(|i| i == id))
            .map(|e| e.model.clone())
    };
    with(|c| {
        find(&c.services.catalog, id).or_else(|| {
            let base = BEDROCK_GEO_PREFIXES
                .iter()
                .find_map(|p| id.strip_prefix(p))
                .filter(|rest| rest.starts_with("anthropic."))?;
            find(&c.services.catalog, base)
        })
    })
}

pub(crate) fn jwt_verify(
    token: &str,
    key: &Key,
    validation: &Validation,
) -> Result<Vec<(String, String)>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey};

    let invalid = |e: jsonwebtoken::errors::Error| format!("invalid token: {e}");
    let header = decode_header(token).map_err(invalid)?;
    let (decoding_key, algorithm) = match key {
        Key::Hs256Secret(secret) => (
            DecodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        ),
        Key::PublicKeyPem(pem) => {
            if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                (k, Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                (k, Algorithm::ES256)
            } else {
                return Err("the key is not an RSA or P-256 public key in PEM".into());
            }
        }
        Key::JwksUrl(url) => {
            let document = with(|c| c.services.jwks.get(url).cloned()).ok_or_else(|| {
                format!("no JWKS at {url} (register one with TestHost::register_jwks)")
            })?;
            let set: JwkSet = serde_json::from_str(&document)
                .map_err(|e| format!("the JWKS at {url} is invalid: {e}"))?;
            let kid = header.kid.as_deref().ok_or("the token has no `kid`")?;
            let jwk = set
                .find(kid)
                .ok_or_else(|| format!("no key `{kid}` in the JWKS at {url}"))?;
            let algorithm = match jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                AlgorithmParameters::OctetKeyPair(_) => {
                    return Err("EdDSA keys are not supported".into())
                }
            };
            (DecodingKey::from_jwk(jwk).map_err(invalid)?, algorithm)
        }
    };

    // Signature, algorithm, issuer and audience by jsonwebtoken; `exp` and `nbf` against the
    // test clock below, so tests can move time.
    let mut v = jsonwebtoken::Validation::new(algorithm);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims.clear();
    if let Some(issuer) = &validation.issuer {
        v.set_issuer(&[issuer]);
    }
    match &validation.audience {
        Some(audience) => v.set_audience(&[audience]),
        None => v.validate_aud = false,
    }
    let claims = decode::<serde_json::Map<String, serde_json::Value>>(token, &decoding_key, &v)
        .map_err(invalid)?
        .claims;

    let now = now_ms() / 1000;
    let leeway = u64::from(validation.leeway_seconds);
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .ok_or("invalid token: no `exp` claim")?;
    if now > exp.saturating_add(leeway) {
        return Err("invalid token: ExpiredSignature".into());
    }
    if let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_u64) {
        if now.saturating_add(leeway) < nbf {
            return Err("invalid token: ImmatureSignature".into());
        }
    }
    Ok(claims
        .into_iter()
        .map(|(name, value)| (name, value.to_string()))
        .collect())
}

pub(crate) fn audit_emit(record: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(record).map_err(|e| format!("the audit record is not JSON: {e}"))?;
    if !value.is_object() {
        return Err("an audit record is a JSON object".into());
    }
    with(|c| c.services.audit.push(value));
    Ok(())
}

pub(crate) fn metric_key(name: &str, labels: &[(&str, &str)]) -> MetricKey {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    (name.to_string(), labels)
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid
        .then_some(())
        .ok_or_else(|| format!("`{name}` is not a metric name ([a-zA-Z_][a-zA-Z0-9_]*)"))
}

pub(crate) fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) -> Result<(), String> {
    check_metric_name(name)?;
    with(|c| {
        *c.services
            .counters
            .entry(metric_key(name, labels))
            .or_default() += value
    });
    Ok(())
}

pub(crate) fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), String> {
    check_metric_name(name)?;
    with(|c| c.services.gauges.insert(metric_key(name, labels), value));
    Ok(())
}
