//! `gateway plugin test`: one plugin, run offline through all its phases on a sample request.
//!
//! The sample is JSON: method, path, front door, operation, model, headers, client address,
//! body, and optionally the upstream response (`response: {status, headers}`) and the
//! completion (`completion: {status, outcome, usage{…}, latency_ms}`). The report says what
//! the plugin decided and changed in each phase.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::bindings::types;
use super::host::HostServices;
use super::instance::{LoadedPlugin, PluginInstance};
use super::view::{Phase, RequestView, ResponseView};
use super::{PluginEngine, PluginError, PluginFailure};
use crate::config::{PluginConfig, PluginRuntimeConfig};
use crate::protocol::{FrontDoor, Operation};

/// A sample request for an offline run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    front_door: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    client_address: Option<String>,
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default)]
    response: Option<SampleResponse>,
    #[serde(default)]
    completion: Option<SampleCompletion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleResponse {
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl Default for SampleResponse {
    fn default() -> Self {
        Self {
            status: default_status(),
            headers: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleCompletion {
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    usage: SampleUsage,
    #[serde(default)]
    latency_ms: u64,
}

impl Default for SampleCompletion {
    fn default() -> Self {
        Self {
            status: default_status(),
            outcome: None,
            usage: SampleUsage::default(),
            latency_ms: 0,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SampleUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_tokens: u64,
    #[serde(default)]
    cache_write_tokens: u64,
}

fn default_method() -> String {
    "POST".into()
}
fn default_path() -> String {
    "/bedrock/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke".into()
}
fn default_status() -> u16 {
    200
}

/// Runs `config`'s plugin through every phase on `sample` and returns a JSON report.
pub async fn run(
    config: PluginConfig,
    mut sample: SampleRequest,
    services: Arc<HostServices>,
) -> Result<serde_json::Value, PluginError> {
    // The engine lives until the end of the run: dropping it stops the epoch ticker that
    // enforces the plugin's CPU limit.
    let engine = offline_engine(services)?;
    let plugin = engine.load(&config).await?;
    let response = sample.response.take().unwrap_or_default();
    let completion = sample.completion.take().unwrap_or_default();
    let original_model = sample.model.clone();
    let view = sample.into_view()?;
    let original_headers = view.headers.clone();

    let mut instance = plugin
        .checkout()
        .await
        .map_err(|f| PluginError::Init(f.message))?;
    let (mut view, decided) = instance.on_request(&plugin, view).await;
    let mut report = serde_json::Map::new();
    report.insert(
        "on_request".into(),
        on_request_report(&plugin, &decided, &original_headers, &original_model, &view),
    );

    let denied = !matches!(decided, Ok(types::Decision::Continue));
    if decided.is_ok() && !denied {
        let on_response;
        (view, on_response) = run_on_response(&plugin, &mut instance, view, response).await?;
        report.insert("on_response".into(), on_response);
    }

    if decided.is_ok() {
        let completion = sample_completion(completion, denied, &plugin, &view);
        let on_complete = run_on_complete(&plugin, &mut instance, view, &completion).await?;
        report.insert("on_complete".into(), on_complete);
    }
    Ok(report.into())
}

/// A plugin engine of its own, sized for one offline run.
fn offline_engine(services: Arc<HostServices>) -> Result<Arc<PluginEngine>, PluginError> {
    Ok(Arc::new(PluginEngine::new(
        &PluginRuntimeConfig {
            max_instances: 8,
            ..Default::default()
        },
        services,
    )?))
}

impl SampleRequest {
    /// The request as the plugin sees it in on-request; an unknown front door or operation, or
    /// a header that is not valid HTTP, is an error.
    fn into_view(self) -> Result<Box<RequestView>, PluginError> {
        let front_door = parse_front_door(self.front_door.as_deref().unwrap_or("bedrock"))?;
        let operation = parse_operation(self.operation.as_deref().unwrap_or("invoke"))?;
        let mut headers = http::HeaderMap::new();
        for (k, v) in &self.headers {
            let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| PluginError::Init(format!("bad header name {k}")))?;
            let value = http::HeaderValue::from_str(v)
                .map_err(|_| PluginError::Init(format!("bad header value for {k}")))?;
            headers.append(name, value);
        }
        let body = self
            .body
            .as_ref()
            .map(|b| Bytes::from(b.to_string()))
            .unwrap_or_default();
        Ok(Box::new(RequestView::new(
            self.method,
            self.path,
            front_door,
            operation,
            self.model,
            headers,
            self.client_address,
            "offline-request".into(),
            body,
        )))
    }
}

/// The sample's `front_door` name as a front door.
fn parse_front_door(name: &str) -> Result<FrontDoor, PluginError> {
    match name {
        "bedrock" => Ok(FrontDoor::Bedrock),
        "vertex" => Ok(FrontDoor::Vertex),
        "anthropic" => Ok(FrontDoor::Anthropic),
        other => Err(PluginError::Init(format!("unknown front_door `{other}`"))),
    }
}

/// The sample's `operation` name as an operation.
fn parse_operation(name: &str) -> Result<Operation, PluginError> {
    match name {
        "invoke" => Ok(Operation::Invoke),
        "stream" => Ok(Operation::InvokeStream),
        "converse" => Ok(Operation::Converse),
        "converse-stream" => Ok(Operation::ConverseStream),
        "count-tokens" => Ok(Operation::CountTokens),
        "control-plane" => Ok(Operation::ControlPlane),
        "list-models" => Ok(Operation::ListModels),
        other => Err(PluginError::Init(format!("unknown operation `{other}`"))),
    }
}

/// The on-request part of the report: the decision (or the failure and the plugin's
/// `on_error`), the headers changed, the model and whether it was rewritten, and the identity
/// and metadata the plugin set.
fn on_request_report(
    plugin: &LoadedPlugin,
    decided: &Result<types::Decision, PluginFailure>,
    original_headers: &http::HeaderMap,
    original_model: &Option<String>,
    view: &RequestView,
) -> serde_json::Value {
    let decision = match decided {
        Ok(types::Decision::Continue) => serde_json::json!({ "decision": "continue" }),
        Ok(types::Decision::Deny(d)) => {
            serde_json::json!({ "decision": "deny", "status": d.status, "message": d.message, "retry_after_seconds": d.retry_after_seconds })
        }
        Err(f) => {
            serde_json::json!({ "decision": "error", "failure": f.kind.as_str(), "message": f.message, "on_error": format!("{:?}", plugin.on_error).to_lowercase() })
        }
    };
    let mut on_request = decision.as_object().cloned().unwrap_or_default();
    on_request.insert(
        "headers_changed".into(),
        header_diff(original_headers, &view.headers),
    );
    on_request.insert("model".into(), serde_json::json!(view.model));
    on_request.insert(
        "model_rewritten".into(),
        serde_json::json!(view.model != *original_model),
    );
    on_request.insert("principal".into(), serde_json::json!(view.principal));
    on_request.insert("team".into(), serde_json::json!(view.team));
    on_request.insert("metadata".into(), serde_json::json!(view.metadata));
    on_request.into()
}

/// Runs on-response on the sample's upstream answer (headers that are not valid HTTP are
/// skipped) and reports the headers the plugin set, or its failure.
async fn run_on_response(
    plugin: &LoadedPlugin,
    instance: &mut PluginInstance,
    mut view: Box<RequestView>,
    response: SampleResponse,
) -> Result<(Box<RequestView>, serde_json::Value), PluginError> {
    let mut rh = http::HeaderMap::new();
    for (k, v) in &response.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            rh.append(n, v);
        }
    }
    next_instance(plugin, instance).await?;
    view.phase = Phase::Response;
    view.response = Some(ResponseView {
        status: response.status,
        headers: rh,
        set: Vec::new(),
    });
    let (view, result) = instance.on_response(plugin, view).await;
    let set: BTreeMap<String, String> = view
        .response
        .as_ref()
        .map(|r| {
            r.set
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let report = match result {
        Ok(()) => serde_json::json!({ "headers_set": set }),
        Err(f) => serde_json::json!({ "error": f.kind.as_str(), "message": f.message }),
    };
    Ok((view, report))
}

/// The completion on-complete sees: the sample's, with the outcome defaulting to `denied` or
/// `ok` from the on-request decision, and the size and model of the request as it went.
fn sample_completion(
    c: SampleCompletion,
    denied: bool,
    plugin: &LoadedPlugin,
    view: &RequestView,
) -> types::Completion {
    types::Completion {
        status: c.status,
        outcome: match c
            .outcome
            .as_deref()
            .unwrap_or(if denied { "denied" } else { "ok" })
        {
            "upstream-error" | "upstream_error" => types::Outcome::UpstreamError,
            "denied" => types::Outcome::Denied,
            "rejected" => types::Outcome::Rejected,
            "upstream-failed" | "upstream_failed" => types::Outcome::UpstreamFailed,
            "client-aborted" | "client_aborted" => types::Outcome::ClientAborted,
            _ => types::Outcome::Ok,
        },
        usage: types::Usage {
            input_tokens: c.usage.input_tokens,
            output_tokens: c.usage.output_tokens,
            cache_read_tokens: c.usage.cache_read_tokens,
            cache_write_tokens: c.usage.cache_write_tokens,
        },
        latency_ms: c.latency_ms,
        time_to_first_token_ms: None,
        request_bytes: view.body().len() as u64,
        response_bytes: 0,
        backend: Some("offline".into()),
        model_served: view.model.clone(),
        denied_by: denied.then(|| plugin.name.to_string()),
    }
}

/// Runs on-complete with `completion` and reports success or the plugin's failure.
async fn run_on_complete(
    plugin: &LoadedPlugin,
    instance: &mut PluginInstance,
    mut view: Box<RequestView>,
    completion: &types::Completion,
) -> Result<serde_json::Value, PluginError> {
    next_instance(plugin, instance).await?;
    view.phase = Phase::Complete;
    let (_view, result) = instance.on_complete(plugin, view, completion).await;
    Ok(match result {
        Ok(()) => serde_json::json!({ "ok": true }),
        Err(f) => serde_json::json!({ "error": f.kind.as_str(), "message": f.message }),
    })
}

fn header_diff(before: &http::HeaderMap, after: &http::HeaderMap) -> serde_json::Value {
    let mut set = serde_json::Map::new();
    let mut removed = Vec::new();
    for (name, value) in after {
        if before.get(name) != Some(value) {
            set.insert(name.to_string(), value.to_str().unwrap_or("").into());
        }
    }
    for name in before.keys() {
        if !after.contains_key(name) {
            removed.push(name.to_string());
        }
    }
    serde_json::json!({ "set": set, "removed": removed })
}

/// The instance for the next phase: as in the gateway, a plugin built for contract 1.1 gets
/// another instance (a fresh one here, so that a plugin keeping one request's data in its
/// memory instead of `request-state` shows it); a 1.0 plugin keeps its own.
async fn next_instance(
    plugin: &LoadedPlugin,
    instance: &mut PluginInstance,
) -> Result<(), PluginError> {
    if !plugin.pinned {
        *instance = plugin.instantiate().await?;
    }
    Ok(())
}
