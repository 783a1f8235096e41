//! The pipeline: plugins in configured order, and one request's run through them.
//!
//! `on-request` runs plugin by plugin until one denies. `on-response` runs for every plugin
//! that ran `on-request`. `on-complete` runs for those same plugins after the request is over,
//! on the background runtime so it never delays the client. Each call borrows an instance from
//! the plugin's pool and returns it at once, so the instances a gateway needs scale with the
//! calls running at the same moment, not with the requests open (a stream holds none); what a
//! plugin keeps between its phases travels in the request's view (`request-state`). Plugins
//! built for contract 1.0 were promised one instance for the whole request and keep it.
//!
//! A plugin failure (trap, timeout, memory, bad return) is logged with the plugin's name and
//! then handled by its `on_error`: `deny` fails the request closed (503), `allow` skips the
//! plugin. A failed instance is discarded, never reused.

use std::sync::Arc;

use super::bindings::types;
use super::instance::{Admit, LoadedPlugin, PluginInstance, Verdict};
use super::view::{Phase, RequestView, ResponseView};
use super::{FailureKind, PluginFailure};
use crate::config::OnError;

/// A request refused by a plugin (or by a failing plugin whose `on_error` is `deny`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The plugin that decided.
    pub plugin: String,
    /// HTTP status.
    pub status: u16,
    /// Message for the client.
    pub message: String,
    /// `retry-after` seconds.
    pub retry_after: Option<u32>,
}

/// Plugins in the order requests run through them.
pub struct Pipeline {
    plugins: Vec<Arc<LoadedPlugin>>,
    generation: u64,
    completions: Arc<Completions>,
    background: tokio::runtime::Handle,
}

pub use super::host::Completions;

impl Pipeline {
    /// A pipeline of `plugins`, running `on-complete` on `background`.
    pub fn new(
        plugins: Vec<Arc<LoadedPlugin>>,
        completions: Arc<Completions>,
        background: tokio::runtime::Handle,
    ) -> Self {
        Self {
            plugins,
            generation: 1,
            completions,
            background,
        }
    }

    /// The same pipeline, labelled as configuration generation `generation`.
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// The configuration generation this pipeline belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The plugins, in order.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Starts a request's run.
    pub fn start(self: &Arc<Self>, mut view: Box<RequestView>) -> PipelineRun {
        view.generation = self.generation;
        PipelineRun {
            pipeline: Arc::clone(self),
            ran: Vec::with_capacity(self.plugins.len()),
            view: Some(view),
            denied_by: None,
        }
    }
}

impl std::fmt::Debug for PipelineRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRun")
            .field("plugins", &self.ran.len())
            .field("denied_by", &self.denied_by)
            .finish()
    }
}

/// Where a plugin stands in one request's run.
enum Slot {
    /// Its `on-request` failed or was skipped: no later phase is called.
    Skipped,
    /// Its `on-request` ran: later phases are called, on the instance kept here for a plugin
    /// built for contract 1.0, on one borrowed per call otherwise.
    Ran(Option<PluginInstance>),
}

/// One request's run through the pipeline.
pub struct PipelineRun {
    pipeline: Arc<Pipeline>,
    /// For each plugin whose turn came in `on-request`, in order.
    ran: Vec<Slot>,
    view: Option<Box<RequestView>>,
    denied_by: Option<String>,
}

impl PipelineRun {
    /// The request as the plugins left it.
    pub fn view(&self) -> &RequestView {
        self.view
            .as_deref()
            .expect("the view is only out during a call")
    }

    /// The request, for the host to note what happened after the plugins ran (such as the
    /// backends tried, in the `gateway.attempts` metadata).
    pub fn view_mut(&mut self) -> &mut RequestView {
        self.view
            .as_deref_mut()
            .expect("the view is only out during a call")
    }

    /// The plugin that denied the request, if one did.
    pub fn denied_by(&self) -> Option<&str> {
        self.denied_by.as_deref()
    }

    /// Runs `on-request` through the plugins in order, stopping at the first denial.
    pub async fn on_request(&mut self) -> Result<(), Denial> {
        let pipeline = Arc::clone(&self.pipeline);
        for plugin in pipeline.plugins.iter() {
            if plugin.admit() == Admit::No {
                self.ran.push(Slot::Skipped);
                let failure = PluginFailure {
                    kind: FailureKind::BreakerOpen,
                    message: "its breaker is open".into(),
                };
                self.fail(plugin, "on_request", &failure)?;
                continue;
            }
            let mut instance = match plugin.checkout().await {
                Ok(i) => i,
                Err(failure) => {
                    self.ran.push(Slot::Skipped);
                    plugin.record(Verdict::Fault);
                    self.fail(plugin, "on_request", &failure)?;
                    continue;
                }
            };
            let view = self.view.take().expect("view present between calls");
            let (view, result) = instance.on_request(plugin, view).await;
            self.view = Some(view);
            match result {
                Ok(decision) => {
                    plugin.record(Verdict::Ok);
                    self.ran.push(Slot::Ran(keep_or_return(plugin, instance)));
                    if let types::Decision::Deny(d) = decision {
                        self.denied_by = Some(plugin.name.to_string());
                        return Err(Denial {
                            plugin: plugin.name.to_string(),
                            status: d.status,
                            message: d.message,
                            retry_after: d.retry_after_seconds,
                        });
                    }
                }
                Err(failure) => {
                    // The instance is dropped: a plugin that failed is never reused.
                    self.ran.push(Slot::Skipped);
                    plugin.record(plugin.verdict_for(&failure, self.view().input_bytes()));
                    self.fail(plugin, "on_request", &failure)?;
                }
            }
        }
        Ok(())
    }

    /// Logs a failure and applies the plugin's `on_error`.
    fn fail(
        &mut self,
        plugin: &LoadedPlugin,
        phase: &str,
        failure: &PluginFailure,
    ) -> Result<(), Denial> {
        let request_id = self
            .view
            .as_ref()
            .map(|v| v.request_id.clone())
            .unwrap_or_default();
        tracing::warn!(
            target: "gateway::plugin",
            plugin = %plugin.name,
            phase,
            failure = failure.kind.as_str(),
            on_error = ?plugin.on_error,
            request_id = %request_id,
            "plugin failed: {}",
            failure.message
        );
        match plugin.on_error {
            OnError::Allow => Ok(()),
            OnError::Deny => {
                self.denied_by = Some(plugin.name.to_string());
                Err(Denial {
                    plugin: plugin.name.to_string(),
                    status: 503,
                    message: format!("the gateway's {} plugin is unavailable", plugin.name),
                    retry_after: None,
                })
            }
        }
    }

    /// Runs `on-response` for the plugins that ran `on-request`, and returns the headers they
    /// set for the client.
    pub async fn on_response(
        &mut self,
        status: u16,
        headers: &http::HeaderMap,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        {
            let view = self.view.as_mut().expect("view present between calls");
            view.phase = Phase::Response;
            view.response = Some(ResponseView {
                status,
                headers: headers.clone(),
                set: Vec::new(),
            });
        }
        let pipeline = Arc::clone(&self.pipeline);
        for (plugin, slot) in pipeline.plugins.iter().zip(self.ran.iter_mut()) {
            let Slot::Ran(kept) = slot else {
                continue;
            };
            let mut instance = match lend(plugin, kept).await {
                Ok(i) => i,
                Err(failure) => {
                    tracing::warn!(target: "gateway::plugin", plugin = %plugin.name, phase = "on_response", failure = failure.kind.as_str(), "plugin failed; its response changes are skipped: {}", failure.message);
                    *slot = Slot::Skipped;
                    continue;
                }
            };
            let view = self.view.take().expect("view present between calls");
            let (view, result) = instance.on_response(plugin, view).await;
            let verdict = result
                .as_ref()
                .err()
                .map(|failure| plugin.verdict_for(failure, view.input_bytes()));
            self.view = Some(view);
            match result {
                Ok(()) => *kept = keep_or_return(plugin, instance),
                Err(failure) => {
                    plugin.record(verdict.unwrap_or(Verdict::Fault));
                    *slot = Slot::Skipped;
                    tracing::warn!(target: "gateway::plugin", plugin = %plugin.name, phase = "on_response", failure = failure.kind.as_str(), "plugin failed; its response changes are skipped: {}", failure.message);
                }
            }
        }
        let view = self.view.as_mut().expect("view present between calls");
        view.response
            .as_mut()
            .map(|r| std::mem::take(&mut r.set))
            .unwrap_or_default()
    }

    /// Hands the completion to every plugin that ran, off the client's path (on the background
    /// runtime), then returns the instances to their pools.
    pub fn complete(self, completion: types::Completion) {
        let completions = Arc::clone(&self.pipeline.completions);
        completions.begin();
        let background = self.pipeline.background.clone();
        background.spawn(async move {
            self.finish(completion).await;
            completions.end();
        });
    }

    /// Runs `on-complete` for every plugin that ran, here and now, each on an instance
    /// borrowed for the call. [`PipelineRun::complete`] is this, off the client's path.
    pub async fn finish(mut self, completion: types::Completion) {
        let Some(mut view) = self.view.take() else {
            return;
        };
        view.phase = Phase::Complete;
        let ran = std::mem::take(&mut self.ran);
        for (plugin, slot) in self.pipeline.plugins.iter().zip(ran) {
            let Slot::Ran(mut kept) = slot else {
                continue;
            };
            let mut instance = match lend(plugin, &mut kept).await {
                Ok(i) => i,
                Err(failure) => {
                    tracing::warn!(target: "gateway::plugin", plugin = %plugin.name, phase = "on_complete", failure = failure.kind.as_str(), request_id = %view.request_id, "plugin failed: {}", failure.message);
                    continue;
                }
            };
            let (back, result) = instance.on_complete(plugin, view, &completion).await;
            view = back;
            match result {
                Ok(()) => plugin.give_back(instance),
                Err(failure) => {
                    plugin.record(plugin.verdict_for(&failure, view.input_bytes()));
                    tracing::warn!(target: "gateway::plugin", plugin = %plugin.name, phase = "on_complete", failure = failure.kind.as_str(), request_id = %view.request_id, "plugin failed: {}", failure.message);
                }
            }
        }
    }
}

/// After a good call: the instance stays with the request for a 1.0 plugin, and goes back to
/// the pool otherwise.
fn keep_or_return(plugin: &LoadedPlugin, instance: PluginInstance) -> Option<PluginInstance> {
    if plugin.pinned {
        Some(instance)
    } else {
        plugin.give_back(instance);
        None
    }
}

/// The instance for a later phase: the one a 1.0 plugin kept, or one borrowed from the pool.
async fn lend(
    plugin: &LoadedPlugin,
    kept: &mut Option<PluginInstance>,
) -> Result<PluginInstance, PluginFailure> {
    match kept.take() {
        Some(instance) => Ok(instance),
        None => plugin.checkout().await,
    }
}
