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
use super::{PluginEngine, PluginError};
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
    sample: SampleRequest,
    services: Arc<HostServices>,
) -> Result<serde_json::Value, PluginError> {
    let engine = Arc::new(PluginEngine::new(
        &PluginRuntimeConfig {
            max_instances: 8,
            ..Default::default()
        },
        services,
    )?);
    let plugin = engine.load(&config).await?;

    let front_door = match sample.front_door.as_deref().unwrap_or("bedrock") {
        "bedrock" => FrontDoor::Bedrock,
        "vertex" => FrontDoor::Vertex,
        "anthropic" => FrontDoor::Anthropic,
        other => return Err(PluginError::Init(format!("unknown front_door `{other}`"))),
    };
    let operation = match sample.operation.as_deref().unwrap_or("invoke") {
        "invoke" => Operation::Invoke,
        "stream" => Operation::InvokeStream,
        "converse" => Operation::Converse,
        "converse-stream" => Operation::ConverseStream,
        "count-tokens" => Operation::CountTokens,
        "control-plane" => Operation::ControlPlane,
        "list-models" => Operation::ListModels,
        other => return Err(PluginError::Init(format!("unknown operation `{other}`"))),
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &sample.headers {
        let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| PluginError::Init(format!("bad header name {k}")))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| PluginError::Init(format!("bad header value for {k}")))?;
        headers.append(name, value);
    }
    let body = sample
        .body
        .as_ref()
        .map(|b| Bytes::from(b.to_string()))
        .unwrap_or_default();
    let original_headers = headers.clone();
    let view = Box::new(RequestView::new(
        sample.method,
        sample.path,
        front_door,
        operation,
        sample.model.clone(),
        headers,
        sample.client_address,
        "offline-request".into(),
        body,
    ));

    let mut instance = plugin
        .checkout()
        .await
        .map_err(|f| PluginError::Init(f.message))?;
    let (mut view, decided) = instance.on_request(&plugin, view).await;
    let mut report = serde_json::Map::new();
    let decision = match &decided {
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
        header_diff(&original_headers, &view.headers),
    );
    on_request.insert("model".into(), serde_json::json!(view.model));
    on_request.insert(
        "model_rewritten".into(),
        serde_json::json!(view.model != sample.model),
    );
    on_request.insert("principal".into(), serde_json::json!(view.principal));
    on_request.insert("team".into(), serde_json::json!(view.team));
    on_request.insert("metadata".into(), serde_json::json!(view.metadata));
    report.insert("on_request".into(), on_request.into());

    let denied = !matches!(decided, Ok(types::Decision::Continue));
    if decided.is_ok() && !denied {
        let response = sample.response.unwrap_or_default();
        let mut rh = http::HeaderMap::new();
        for (k, v) in &response.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                rh.append(n, v);
            }
        }
        next_instance(&plugin, &mut instance).await?;
        view.phase = Phase::Response;
        view.response = Some(ResponseView {
            status: response.status,
            headers: rh,
            set: Vec::new(),
        });
        let (back, result) = instance.on_response(&plugin, view).await;
        view = back;
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
        report.insert(
            "on_response".into(),
            match result {
                Ok(()) => serde_json::json!({ "headers_set": set }),
                Err(f) => serde_json::json!({ "error": f.kind.as_str(), "message": f.message }),
            },
        );
    }

    if decided.is_ok() {
        let c = sample.completion.unwrap_or_default();
        let completion = types::Completion {
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
        };
        next_instance(&plugin, &mut instance).await?;
        view.phase = Phase::Complete;
        let (_view, result) = instance.on_complete(&plugin, view, &completion).await;
        report.insert(
            "on_complete".into(),
            match result {
                Ok(()) => serde_json::json!({ "ok": true }),
                Err(f) => serde_json::json!({ "error": f.kind.as_str(), "message": f.message }),
            },
        );
    }
    Ok(report.into())
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
