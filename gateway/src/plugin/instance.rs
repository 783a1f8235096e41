//! Loaded plugins, their instances, and the calls into them.
//!
//! A [`LoadedPlugin`] is one plugin version: its linked `PluginPre`, its settings and a pool
//! of warm instances. A [`PluginInstance`] is a store plus the instantiated component, lent
//! for one phase call (a plugin built for contract 1.0 keeps one instance for all phases of a
//! request, as that version promised). Every call moves the request's view into the store,
//! sets the CPU budget, calls the export, moves the view back, and classifies what went wrong
//! if anything did. An instance that failed is never reused.
//!
//! The breaker: after `breaker_failures` consecutive failures the plugin is not called for
//! `breaker_cooldown`; then exactly one request probes it. A failed probe keeps it open for
//! twice as long (up to [`MAX_BACKOFF_FACTOR`] times the cool-down), a good one closes it.
//! Failures that one request's own input caused (a memory or size failure on an input large
//! for the plugin) apply `on_error` to that request but do not count.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};

use super::bindings::{types, Plugin, PluginPre};
use super::epoch::Ticker;
use super::host::{HostServices, HostState, Limits, PluginIdentity};
use super::view::RequestView;
use super::{FailureKind, PluginError, PluginFailure};
use crate::config::{Isolation, OnError, PluginConfig, PluginRuntimeConfig};

/// Warm instances kept per plugin; more returned at once are dropped.
const MAX_IDLE_INSTANCES: usize = 64;
/// `init` may use this many times the per-call CPU budget.
const INIT_BUDGET_FACTOR: u32 = 20;
/// The longest a breaker stays open after failed probes, in cool-downs.
pub const MAX_BACKOFF_FACTOR: u32 = 16;

/// The error a store's epoch callback raises when the guest used up its CPU budget.
#[derive(Debug)]
struct CpuBudgetExceeded;

impl std::fmt::Display for CpuBudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CPU time budget exceeded")
    }
}

impl std::error::Error for CpuBudgetExceeded {}

/// Which compiler made a plugin's machine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Winch, a baseline compiler: compiles about eight times faster, runs a little slower.
    /// New plugins start on it so that a reload is quick.
    Baseline,
    /// Cranelift, the optimizing compiler; replaces the baseline code in the background.
    Optimized,
}

impl Tier {
    /// The compiler's name, for `/status` and logs.
    pub fn compiler(self) -> &'static str {
        match self {
            Tier::Baseline => "winch",
            Tier::Optimized => "cranelift",
        }
    }
}

/// One plugin version, ready to instantiate.
pub struct LoadedPlugin {
    /// Its configured name.
    pub name: Arc<str>,
    /// SHA-256 of its file.
    pub content_hash: String,
    /// What a failure does to the request.
    pub on_error: OnError,
    /// Instance sharing.
    pub isolation: Isolation,
    /// When it was loaded.
    pub loaded_at: std::time::SystemTime,
    /// Which compiler made its code.
    pub tier: Tier,
    /// Built for contract 1.0: one instance serves all phases of a request (1.1 plugins keep
    /// per-request data in `request-state` and get an instance per phase call).
    pub pinned: bool,
    ticker: Arc<Ticker>,
    runtime: PluginRuntimeConfig,
    services: Arc<HostServices>,
    pre: PluginPre<HostState>,
    config_json: String,
    memory_limit: usize,
    cpu_limit: Duration,
    return_limit: usize,
    max_requests_per_instance: u64,
    idle: Mutex<Vec<PluginInstance>>,
    breaker: Breaker,
    /// Per phase (request, response, complete): the call-duration histogram and the counter
    /// of successful calls, looked up once instead of by label on every call.
    phase_metrics: [(prometheus::Histogram, prometheus::IntCounter); 3],
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("hash", &self.content_hash)
            .finish()
    }
}

/// An instance of a plugin: its store and exports.
pub struct PluginInstance {
    store: Store<HostState>,
    bindings: Plugin,
    uses: u64,
}

/// What every loaded plugin shares: the epoch ticker, the runtime settings (breaker
/// thresholds) and the host services.
#[derive(Clone)]
pub struct Shared {
    /// The epoch ticker, woken when a call starts.
    pub ticker: Arc<Ticker>,
    /// `[plugin_runtime]`.
    pub runtime: PluginRuntimeConfig,
    /// The host services plugins import.
    pub services: Arc<HostServices>,
}

impl LoadedPlugin {
    pub(super) fn new(
        shared: Shared,
        config: &PluginConfig,
        pre: PluginPre<HostState>,
        content_hash: String,
        tier: Tier,
        pinned: bool,
    ) -> Result<Self, PluginError> {
        let Shared {
            ticker,
            runtime,
            services,
        } = shared;
        let config_json = serde_json::to_string(&config.config).map_err(|e| {
            PluginError::Init(format!(
                "the plugin's config is not representable as JSON: {e}"
            ))
        })?;
        let m = &services.metrics;
        let phase_metrics = PHASES.map(|phase| {
            (
                m.plugin_call_seconds
                    .with_label_values(&[config.name.as_str(), phase]),
                m.plugin_calls
                    .with_label_values(&[config.name.as_str(), phase, "ok"]),
            )
        });
        Ok(Self {
            phase_metrics,
            name: config.name.as_str().into(),
            content_hash,
            on_error: config.on_error,
            isolation: config.isolation,
            loaded_at: std::time::SystemTime::now(),
            tier,
            pinned,
            ticker,
            runtime,
            services,
            pre,
            config_json,
            memory_limit: config.memory_limit.0 as usize,
            cpu_limit: config.cpu_limit.0,
            return_limit: config.return_limit.0 as usize,
            max_requests_per_instance: config.max_requests_per_instance,
            idle: Mutex::new(Vec::new()),
            breaker: Breaker::default(),
        })
    }

    /// A fresh instance with `init` already called.
    pub async fn instantiate(&self) -> Result<PluginInstance, PluginError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .memories(4)
            .tables(16)
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        let limits = Limits::new(limits, self.memory_limit);
        let identity = PluginIdentity {
            name: Arc::clone(&self.name),
            return_limit: self.return_limit,
        };
        let mut store = Store::new(
            self.pre.instance_pre().engine(),
            HostState::new(identity, Arc::clone(&self.services), limits),
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.guest_time() > state.budget {
                Err(CpuBudgetExceeded.into())
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        self.ticker.call_started();
        store.data_mut().budget = self.cpu_limit * INIT_BUDGET_FACTOR;
        store.data_mut().begin_call();
        store.set_epoch_deadline(1);
        let bindings = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| PluginError::Init(format!("instantiation failed: {e:#}")))?;
        let init = bindings
            .llm_gateway_plugin_handler()
            .call_init(&mut store, &self.config_json)
            .await;
        store.data_mut().drain_stdio();
        match init {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(PluginError::Init(format!(
                    "init refused its config: {message}"
                )))
            }
            Err(e) => {
                return Err(PluginError::Init(format!(
                    "init failed: {}",
                    classify(&e).message
                )))
            }
        }
        store.data_mut().budget = self.cpu_limit;
        Ok(PluginInstance {
            store,
            bindings,
            uses: 0,
        })
    }

    /// An instance for one request: a warm one in pooled mode, a fresh one otherwise.
    pub async fn checkout(&self) -> Result<PluginInstance, PluginFailure> {
        if self.isolation == Isolation::Pooled {
            if let Some(instance) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
                return Ok(instance);
            }
        }
        // Boxed: instantiating is the rare path, and its future is large; inline, it would
        // make every phase call's future (and the copies made of it) that large.
        Box::pin(self.instantiate())
            .await
            .map_err(|e| PluginFailure {
                kind: FailureKind::Instantiate,
                message: e.to_string(),
            })
    }

    /// Returns an instance after a call: kept warm in pooled mode unless worn out (it served
    /// `max_requests_per_instance` requests' `on-request`).
    pub fn give_back(&self, instance: PluginInstance) {
        if instance.uses >= self.max_requests_per_instance {
            return;
        }
        self.keep_warm(instance);
    }

    /// Keeps an instance for later requests (pooled mode only).
    pub(super) fn keep_warm(&self, instance: PluginInstance) {
        if self.isolation != Isolation::Pooled {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE_INSTANCES {
                idle.push(instance);
            }
        }
    }

    /// Whether `on-request` may call the plugin: yes, no (the breaker is open), or yes as the
    /// one probe after a cool-down.
    pub fn admit(&self) -> Admit {
        self.breaker.admit()
    }

    /// Records the result of a call for the breaker.
    pub fn record(&self, verdict: Verdict) {
        match verdict {
            Verdict::Ok => self.breaker.success(&self.name),
            Verdict::Fault => {
                let runtime = &self.runtime;
                self.breaker.failure(
                    &self.name,
                    runtime.breaker_failures,
                    runtime.breaker_cooldown.0,
                );
            }
            Verdict::NotCounted => self.breaker.release_probe(),
        }
    }

    /// How a failure on a request with `input_bytes` of client input counts for the breaker:
    /// a memory or size failure on an input large for this plugin is the request's doing.
    pub fn verdict_for(&self, failure: &PluginFailure, input_bytes: usize) -> Verdict {
        let input_heavy = match failure.kind {
            FailureKind::Memory => input_bytes.saturating_mul(16) >= self.memory_limit,
            FailureKind::Oversized => input_bytes >= self.return_limit / 2,
            _ => false,
        };
        if input_heavy {
            Verdict::NotCounted
        } else {
            Verdict::Fault
        }
    }

    /// The largest value the plugin may hand over.
    pub fn return_limit(&self) -> usize {
        self.return_limit
    }

    fn observe(&self, phase: usize, started: Instant, result: &'static str) {
        let (seconds, ok) = &self.phase_metrics[phase];
        if result == "ok" {
            ok.inc();
        } else {
            self.services
                .metrics
                .plugin_calls
                .with_label_values(&[&self.name, PHASES[phase], result])
                .inc();
        }
        seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// The phases whose calls are measured, in the order of `LoadedPlugin::phase_metrics`.
const PHASES: [&str; 3] = ["on_request", "on_response", "on_complete"];

impl PluginInstance {
    fn begin(&mut self, plugin: &LoadedPlugin, view: Box<RequestView>) {
        plugin.ticker.call_started();
        let state = self.store.data_mut();
        state.view = Some(view);
        state.begin_call();
        self.store.set_epoch_deadline(1);
    }

    fn end(&mut self) -> Box<RequestView> {
        let state = self.store.data_mut();
        state.drain_stdio();
        state.view.take().expect("the view was moved in by begin()")
    }

    /// Calls `on-request`.
    pub async fn on_request(
        &mut self,
        plugin: &LoadedPlugin,
        view: Box<RequestView>,
    ) -> (Box<RequestView>, Result<types::Decision, PluginFailure>) {
        let started = Instant::now();
        self.uses += 1;
        self.begin(plugin, view);
        let result = self
            .bindings
            .llm_gateway_plugin_handler()
            .call_on_request(&mut self.store)
            .await;
        let view = self.end();
        let result = match result {
            Ok(types::Decision::Deny(d)) if d.message.len() > plugin.return_limit() => {
                Err(PluginFailure {
                    kind: FailureKind::Oversized,
                    message: format!(
                        "its denial message is {} bytes, over the limit of {}",
                        d.message.len(),
                        plugin.return_limit()
                    ),
                })
            }
            Ok(types::Decision::Deny(d)) if !(400..=599).contains(&d.status) => {
                Err(PluginFailure {
                    kind: FailureKind::Invalid,
                    message: format!("it denied with status {}, outside 400-599", d.status),
                })
            }
            Ok(decision) => Ok(decision),
            Err(e) => Err(classify(&e)),
        };
        plugin.observe(0, started, result_label(&result));
        (view, result)
    }

    /// Calls `on-response`.
    pub async fn on_response(
        &mut self,
        plugin: &LoadedPlugin,
        view: Box<RequestView>,
    ) -> (Box<RequestView>, Result<(), PluginFailure>) {
        let started = Instant::now();
        self.begin(plugin, view);
        let result = self
            .bindings
            .llm_gateway_plugin_handler()
            .call_on_response(&mut self.store)
            .await;
        let view = self.end();
        let result = result.map_err(|e| classify(&e));
        plugin.observe(1, started, result_label(&result));
        (view, result)
    }

    /// Calls `on-complete`.
    pub async fn on_complete(
        &mut self,
        plugin: &LoadedPlugin,
        view: Box<RequestView>,
        completion: &types::Completion,
    ) -> (Box<RequestView>, Result<(), PluginFailure>) {
        let started = Instant::now();
        self.begin(plugin, view);
        let result = self
            .bindings
            .llm_gateway_plugin_handler()
            .call_on_complete(&mut self.store, completion)
            .await;
        let view = self.end();
        let result = result.map_err(|e| classify(&e));
        plugin.observe(2, started, result_label(&result));
        (view, result)
    }
}

fn result_label<T>(r: &Result<T, PluginFailure>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(f) => f.kind.as_str(),
    }
}

/// Sorts a wasmtime error into what the operator needs to know.
fn classify(e: &wasmtime::Error) -> PluginFailure {
    if e.downcast_ref::<CpuBudgetExceeded>().is_some() {
        return PluginFailure {
            kind: FailureKind::Timeout,
            message: "it ran past its CPU time limit".into(),
        };
    }
    let text = format!("{e:#}");
    let kind = if text.contains("grow") && text.contains("memory")
        || text.contains("memory") && text.contains("limit")
    {
        FailureKind::Memory
    } else {
        FailureKind::Trap
    };
    let message = match kind {
        FailureKind::Memory => format!("it went over its memory limit ({text})"),
        _ => format!("it trapped: {text}"),
    };
    PluginFailure { kind, message }
}

/// What the breaker says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: call the plugin.
    Yes,
    /// Open, cool-down over: this request is the one probe.
    Probe,
    /// Open: apply `on_error` without calling the plugin.
    No,
}

/// How a call's result counts for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It worked.
    Ok,
    /// The plugin failed.
    Fault,
    /// It failed because of the request's own input: not counted (a probe is given back).
    NotCounted,
}

/// Opens after `threshold` consecutive failures and short-circuits the plugin for a cool-down;
/// then admits exactly one probe, backing off while probes fail.
#[derive(Default)]
struct Breaker {
    consecutive: AtomicU32,
    /// Set while open or probing; the closed path reads only this and `consecutive`.
    tripped: AtomicBool,
    open: Mutex<OpenState>,
}

#[derive(Default)]
struct OpenState {
    until: Option<Instant>,
    cooldown: Duration,
    probing: bool,
}

impl Breaker {
    fn admit(&self) -> Admit {
        if !self.tripped.load(Ordering::Acquire) {
            return Admit::Yes;
        }
        let Ok(mut open) = self.open.lock() else {
            return Admit::Yes;
        };
        match open.until {
            None => Admit::Yes,
            Some(until) if Instant::now() < until => Admit::No,
            Some(_) if open.probing => Admit::No,
            Some(_) => {
                open.probing = true;
                Admit::Probe
            }
        }
    }

    fn success(&self, name: &str) {
        if self.consecutive.load(Ordering::Relaxed) == 0 && !self.tripped.load(Ordering::Acquire) {
            return;
        }
        self.consecutive.store(0, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            if open.until.take().is_some() {
                tracing::warn!(target: "gateway::plugin", plugin = name, "breaker closed: the plugin works again");
            }
            open.probing = false;
            open.cooldown = Duration::ZERO;
            self.tripped.store(false, Ordering::Release);
        }
    }

    fn failure(&self, name: &str, threshold: u32, cooldown: Duration) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        if open.probing {
            open.probing = false;
            open.cooldown = (open.cooldown * 2)
                .max(cooldown)
                .min(cooldown * MAX_BACKOFF_FACTOR);
            open.until = Some(Instant::now() + open.cooldown);
            tracing::error!(target: "gateway::plugin", plugin = name, cooldown_s = open.cooldown.as_secs_f64(), "breaker stays open: the probe request failed too");
            return;
        }
        if open.until.is_none() && n >= threshold.max(1) {
            open.cooldown = cooldown;
            open.until = Some(Instant::now() + cooldown);
            self.tripped.store(true, Ordering::Release);
            tracing::error!(target: "gateway::plugin", plugin = name, failures = n, cooldown_s = cooldown.as_secs_f64(), "breaker open: the plugin keeps failing; applying its on_error policy without calling it");
        }
    }

    /// A probe whose failure did not count: the next request probes instead.
    fn release_probe(&self) {
        if self.tripped.load(Ordering::Acquire) {
            if let Ok(mut open) = self.open.lock() {
                open.probing = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_closes_on_success() {
        let b = Breaker::default();
        for _ in 0..2 {
            b.failure("p", 3, Duration::from_secs(60));
            assert_eq!(b.admit(), Admit::Yes);
        }
        b.failure("p", 3, Duration::from_secs(60));
        assert_eq!(b.admit(), Admit::No);
        b.success("p");
        assert_eq!(b.admit(), Admit::Yes);
    }

    #[test]
    fn after_the_cooldown_exactly_one_request_probes() {
        let b = Breaker::default();
        b.failure("p", 1, Duration::ZERO);
        assert_eq!(b.admit(), Admit::Probe, "the cool-down is over");
        for _ in 0..10 {
            assert_eq!(b.admit(), Admit::No, "one probe at a time");
        }
        b.success("p");
        assert_eq!(b.admit(), Admit::Yes, "a good probe closes it");
    }

    #[test]
    fn failed_probes_back_off_and_uncounted_ones_hand_the_probe_on() {
        let base = Duration::from_millis(20);
        let b = Breaker::default();
        b.failure("p", 1, base);
        std::thread::sleep(base);
        assert_eq!(b.admit(), Admit::Probe);
        b.release_probe();
        assert_eq!(
            b.admit(),
            Admit::Probe,
            "an input-caused failure hands the probe on"
        );
        b.failure("p", 1, base);
        std::thread::sleep(base + Duration::from_millis(5));
        assert_eq!(
            b.admit(),
            Admit::No,
            "twice the cool-down after a failed probe"
        );
        std::thread::sleep(base);
        assert_eq!(b.admit(), Admit::Probe);
        for _ in 0..10 {
            b.failure("p", 1, base);
            if let Ok(open) = b.open.lock() {
                assert!(open.cooldown <= base * MAX_BACKOFF_FACTOR);
            }
            b.open.lock().unwrap().until = Some(Instant::now());
            assert_eq!(b.admit(), Admit::Probe);
        }
    }
}
