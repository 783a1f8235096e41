//! The host services a plugin imports, and the per-instance state behind them.
//!
//! Each plugin instance owns a wasmtime `Store<HostState>`. While a phase runs, the request's
//! [`RequestView`] is moved into the store (a pointer move, no copy) so the `request` and
//! `response` host calls can read and edit it; it is moved out again when the call returns.
//! No memory is shared between requests: a pooled instance holds no view between calls.
//!
//! Every value a plugin hands over is bounded by its `return_limit`; writes are refused
//! outside the phase that may make them; state keys are prefixed with the plugin's name.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::llm_gateway::plugin::{
    audit, catalog, clock, jwt, log, metrics, request, request_state, response, state, types,
};
use super::jwt::JwtVerifier;
use super::view::{Phase, RequestView};
use crate::audit::AuditSink;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::state::{self as store, StateStore};

/// Bytes a plugin may print on stdout/stderr per call before the rest is dropped.
const STDIO_CAPTURE: usize = 16 * 1024;
/// Log lines a plugin may write per call; more are counted and dropped.
const LOG_LINES_PER_CALL: u32 = 32;
/// Operations in one state batch or submit.
const MAX_BATCH: usize = 256;

/// Counts work still under way after a request's answer (`on-complete` runs, submitted state
/// operations), so shutdown can wait for it.
#[derive(Default)]
pub struct Completions {
    pending: std::sync::atomic::AtomicUsize,
}

impl Completions {
    /// One more piece of work under way.
    pub fn begin(&self) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// One piece of work done.
    pub fn end(&self) {
        self.pending
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Waits (polling, from a plain thread) until nothing is pending or `timeout` passes.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.pending.load(std::sync::atomic::Ordering::Acquire) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// Services shared by every plugin instance.
pub struct HostServices {
    /// Counters, rate windows and holds.
    pub state: Arc<dyn StateStore>,
    /// The model catalog plugins look models up in (swapped by reloads).
    pub catalog: arc_swap::ArcSwap<Catalog>,
    /// Work under way after answers; submitted state operations count here.
    pub completions: Arc<Completions>,
    /// The audit sink.
    pub audit: AuditSink,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// JWT verification with cached keys.
    pub jwt: JwtVerifier,
}

impl HostServices {
    /// Services over `state`, with the model `catalog`; `completions` counts the state
    /// operations plugins submit off the request path.
    pub fn new(
        state: Arc<dyn StateStore>,
        audit: AuditSink,
        metrics: Arc<Metrics>,
        catalog: Catalog,
        completions: Arc<Completions>,
    ) -> Self {
        Self {
            state,
            catalog: arc_swap::ArcSwap::from_pointee(catalog),
            completions,
            audit,
            metrics,
            jwt: JwtVerifier::new(),
        }
    }

    /// Services for running plugins outside a server (`gateway check`, `gateway plugin
    /// test`): an in-memory store.
    pub fn local(audit: AuditSink, metrics: Arc<Metrics>, catalog: Catalog) -> Self {
        Self::new(
            Arc::new(crate::state::MemoryStore::new()),
            audit,
            metrics,
            catalog,
            Arc::default(),
        )
    }
}

/// What a plugin instance knows about itself.
#[derive(Debug, Clone)]
pub struct PluginIdentity {
    /// The configured name.
    pub name: Arc<str>,
    /// The largest value it may hand over in one call.
    pub return_limit: usize,
}

/// A store's resource limits, remembering how large its memory has grown so host calls can
/// tell whether a value still fits in the plugin.
pub struct Limits {
    inner: StoreLimits,
    /// The memory limit.
    memory_limit: usize,
    /// The largest linear memory size granted so far.
    memory: usize,
}

impl Limits {
    /// `inner`, for a plugin whose memory may grow to `memory_limit` bytes.
    pub fn new(inner: StoreLimits, memory_limit: usize) -> Self {
        Self {
            inner,
            memory_limit,
            memory: 0,
        }
    }

    /// Whether a value of `len` bytes can still be handed to the plugin: its memory can grow
    /// by that much (with room left for the plugin's own copy). A value that cannot fit would
    /// trap the plugin inside its allocator; refusing it lets the plugin handle the refusal.
    pub fn fits(&self, len: usize) -> bool {
        len.saturating_mul(2) <= self.memory_limit.saturating_sub(self.memory)
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let granted = self.inner.memory_growing(current, desired, maximum)?;
        if granted {
            self.memory = self.memory.max(desired);
        }
        Ok(granted)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The data of one plugin instance's store.
pub struct HostState {
    pub(super) plugin: PluginIdentity,
    pub(super) services: Arc<HostServices>,
    pub(super) view: Option<Box<RequestView>>,
    pub(super) limits: Limits,
    /// When the current call started, and how long it has waited on host I/O since.
    pub(super) call_started: Instant,
    pub(super) host_wait: Duration,
    /// Thread CPU accounting, started by the epoch callback once a call has run a full tick.
    cpu: Option<CpuTrack>,
    /// The CPU budget of the current call.
    pub(super) budget: Duration,
    pub(super) log_lines: u32,
    wasi: WasiCtx,
    table: ResourceTable,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl HostState {
    /// Fresh state for a new instance of `plugin`.
    pub fn new(plugin: PluginIdentity, services: Arc<HostServices>, limits: Limits) -> Self {
        let stdout = MemoryOutputPipe::new(STDIO_CAPTURE);
        let stderr = MemoryOutputPipe::new(STDIO_CAPTURE);
        // WASI with nothing in it: no files, no environment, no network, no clock skew tricks
        // beyond what the contract's own clock gives. Output is captured and logged.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        Self {
            plugin,
            services,
            view: None,
            limits,
            call_started: Instant::now(),
            host_wait: Duration::ZERO,
            cpu: None,
            budget: Duration::from_millis(5),
            log_lines: 0,
            wasi,
            table: ResourceTable::new(),
            stdout,
            stderr,
        }
    }

    /// Guest CPU time of the current call so far, as the epoch callback sees it.
    ///
    /// Calls are timed by the wall clock until their first epoch tick (nearly every call ends
    /// before one). From then on the thread's CPU clock is read, so a guest preempted on a busy
    /// machine is not charged for time it did not run; time in async host calls is excluded.
    pub(super) fn guest_time(&mut self) -> Duration {
        let now = thread_cpu_time();
        let thread = std::thread::current().id();
        match &mut self.cpu {
            None => {
                // The untracked first stretch ran until the first tick's check; anything beyond
                // two ticks of it was the thread waiting for a core, not the guest running.
                let first = self
                    .call_started
                    .elapsed()
                    .saturating_sub(self.host_wait)
                    .min(super::epoch::EPOCH_TICK * 2);
                self.cpu = Some(CpuTrack {
                    thread,
                    base: now,
                    guest: first,
                });
                first
            }
            Some(t) => {
                if t.thread == thread {
                    t.guest += now.saturating_sub(t.base);
                }
                t.thread = thread;
                t.base = now;
                t.guest
            }
        }
    }

    /// Starts timing a call.
    pub(super) fn begin_call(&mut self) {
        self.call_started = Instant::now();
        self.host_wait = Duration::ZERO;
        self.cpu = None;
        self.log_lines = 0;
    }

    /// Before an async host call: charge the guest for what it ran so far.
    fn enter_host(&mut self) -> Instant {
        if self.cpu.is_some() {
            self.guest_time();
        }
        Instant::now()
    }

    /// After an async host call: the wait is not the guest's.
    fn leave_host(&mut self, entered: Instant) {
        self.host_wait += entered.elapsed();
        if let Some(t) = &mut self.cpu {
            t.thread = std::thread::current().id();
            t.base = thread_cpu_time();
        }
    }

    /// Logs what the plugin printed on stdout/stderr during the call. Costs one lock per
    /// pipe when nothing was printed, which is the common case.
    pub(super) fn drain_stdio(&mut self) {
        let mut printed = false;
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            if !bytes.is_empty() {
                printed = true;
                for line in String::from_utf8_lossy(&bytes)
                    .lines()
                    .take(LOG_LINES_PER_CALL as usize)
                {
                    tracing::info!(target: "gateway::plugin", plugin = %self.plugin.name, stream, "{line}");
                }
            }
        }
        if printed {
            // Start the next call with empty pipes.
            self.stdout = MemoryOutputPipe::new(STDIO_CAPTURE);
            self.stderr = MemoryOutputPipe::new(STDIO_CAPTURE);
            self.wasi = wasmtime_wasi::WasiCtxBuilder::new()
                .stdout(self.stdout.clone())
                .stderr(self.stderr.clone())
                .build();
        }
    }

    fn view(&mut self) -> wasmtime::Result<&mut RequestView> {
        self.view.as_deref_mut().ok_or_else(|| {
            wasmtime::format_err!("request accessors are only valid during a phase call")
        })
    }

    fn check_size(&self, what: &str, len: usize) -> Result<(), String> {
        if len > self.plugin.return_limit {
            Err(format!(
                "{what} is {len} bytes, over the plugin's limit of {}",
                self.plugin.return_limit
            ))
        } else {
            Ok(())
        }
    }

    fn state_key(&self, key: &str) -> String {
        format!("{}:{key}", self.plugin.name)
    }
}

/// Where thread CPU accounting of a call stands.
#[derive(Debug, Clone, Copy)]
struct CpuTrack {
    thread: std::thread::ThreadId,
    base: Duration,
    guest: Duration,
}

/// CPU time consumed by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` only writes the `timespec` we pass, which lives on this stack
    // frame; CLOCK_THREAD_CPUTIME_ID is supported on every Linux and macOS kernel.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl request::Host for HostState {
    fn method(&mut self) -> wasmtime::Result<String> {
        Ok(self.view()?.method.clone())
    }

    fn path(&mut self) -> wasmtime::Result<String> {
        Ok(self.view()?.path.clone())
    }

    fn front_door(&mut self) -> wasmtime::Result<types::FrontDoor> {
        Ok(self.view()?.front_door_wit())
    }

    fn operation(&mut self) -> wasmtime::Result<types::Operation> {
        Ok(self.view()?.operation_wit())
    }

    fn model(&mut self) -> wasmtime::Result<Option<String>> {
        let model = self.view()?.model.clone();
        Ok(model.filter(|m| self.limits.fits(m.len())))
    }

    fn set_model(&mut self, model: String) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = self.check_size("model", model.len()) {
            return Ok(Err(e));
        }
        let name = self.plugin.name.clone();
        Ok(self.view()?.set_model(&name, model))
    }

    fn header(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        let value = self.view()?.header(&name);
        Ok(value.filter(|v| self.limits.fits(v.len())))
    }

    fn headers(&mut self) -> wasmtime::Result<Vec<types::Header>> {
        let headers = self.view()?.request_headers();
        let total: usize = headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 16)
            .sum();
        if !self.limits.fits(total) {
            // Too large for the plugin to hold: the headers that fit, in order.
            let mut budget = self.limits.memory_limit.saturating_sub(self.limits.memory) / 2;
            return Ok(headers
                .into_iter()
                .take_while(|h| {
                    let cost = h.name.len() + h.value.len() + 16;
                    let fits = cost <= budget;
                    budget = budget.saturating_sub(cost);
                    fits
                })
                .collect());
        }
        Ok(headers)
    }

    fn set_header(&mut self, name: String, value: String) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = self.check_size("header", name.len() + value.len()) {
            return Ok(Err(e));
        }
        Ok(self.view()?.set_request_header(&name, &value))
    }

    fn remove_header(&mut self, name: String) -> wasmtime::Result<()> {
        self.view()?.remove_request_header(&name);
        Ok(())
    }

    fn client_address(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.view()?.client_address.clone())
    }

    fn request_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.view()?.request_id.clone())
    }

    fn principal(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.view()?.principal.clone())
    }

    fn team(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.view()?.team.clone())
    }

    fn set_identity(
        &mut self,
        principal: String,
        team: Option<String>,
    ) -> wasmtime::Result<Result<(), String>> {
        let len = principal.len() + team.as_ref().map_or(0, String::len);
        if let Err(e) = self.check_size("identity", len) {
            return Ok(Err(e));
        }
        let view = self.view()?;
        if view.phase != Phase::Request {
            return Ok(Err("the identity can only be set in on-request".into()));
        }
        view.principal = Some(principal);
        view.team = team;
        Ok(Ok(()))
    }

    fn metadata(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let value = self.view()?.metadata.get(&key).cloned();
        Ok(value.filter(|v| self.limits.fits(v.len())))
    }

    fn set_metadata(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = self.check_size("metadata", key.len() + value.len()) {
            return Ok(Err(e));
        }
        let view = self.view()?;
        if view.phase != Phase::Request {
            return Ok(Err("metadata can only be set in on-request".into()));
        }
        if key.starts_with(HOST_METADATA_PREFIX) {
            return Ok(Err(format!(
                "metadata keys starting `{HOST_METADATA_PREFIX}` are set by the gateway"
            )));
        }
        if view.metadata.len() >= 64 && !view.metadata.contains_key(&key) {
            return Ok(Err("a request carries at most 64 metadata entries".into()));
        }
        view.metadata.insert(key, value);
        Ok(Ok(()))
    }

    fn body_json(&mut self, pointer: String) -> wasmtime::Result<Option<String>> {
        let limit = self.plugin.return_limit.max(1024 * 1024);
        let value = self.view()?.body_json(&pointer, limit);
        Ok(value.filter(|v| self.limits.fits(v.len())))
    }
}

impl request_state::Host for HostState {
    fn get(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        let name = Arc::clone(&self.plugin.name);
        Ok(self.view()?.plugin_state(&name).map(<[u8]>::to_vec))
    }

    fn set(&mut self, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = self.check_size("request state", value.len()) {
            return Ok(Err(e));
        }
        let name = Arc::clone(&self.plugin.name);
        Ok(self.view()?.set_plugin_state(&name, value))
    }
}

impl response::Host for HostState {
    fn status(&mut self) -> wasmtime::Result<u16> {
        Ok(self.view()?.response_status())
    }

    fn header(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.view()?.response_header(&name))
    }

    fn headers(&mut self) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self.view()?.response_headers())
    }

    fn set_header(&mut self, name: String, value: String) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = self.check_size("header", name.len() + value.len()) {
            return Ok(Err(e));
        }
        Ok(self.view()?.set_response_header(&name, &value))
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            return Ok(());
        }
        let message: String = message.chars().take(4096).collect();
        let plugin = &*self.plugin.name;
        let request_id = self
            .view
            .as_ref()
            .map(|v| v.request_id.as_str())
            .unwrap_or("-");
        match level {
            types::LogLevel::Trace => {
                tracing::trace!(target: "gateway::plugin", plugin, request_id, "{message}")
            }
            types::LogLevel::Debug => {
                tracing::debug!(target: "gateway::plugin", plugin, request_id, "{message}")
            }
            types::LogLevel::Info => {
                tracing::info!(target: "gateway::plugin", plugin, request_id, "{message}")
            }
            types::LogLevel::Warn => {
                tracing::warn!(target: "gateway::plugin", plugin, request_id, "{message}")
            }
            types::LogLevel::Error => {
                tracing::error!(target: "gateway::plugin", plugin, request_id, "{message}")
            }
        }
        Ok(())
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0))
    }
}

impl HostState {
    /// A plugin's operation as the store's, its key namespaced; `Err` when it is malformed.
    fn store_op(&self, op: state::Op) -> Result<store::Op, String> {
        let key = |k: &str| -> Result<String, String> {
            self.check_size("key", k.len())?;
            Ok(self.state_key(k))
        };
        Ok(match op {
            state::Op::Incr(o) => store::Op::Incr {
                key: key(&o.key)?,
                delta: o.delta,
                ttl: Duration::from_millis(o.ttl_ms),
            },
            state::Op::Get(k) => store::Op::Get { key: key(&k)? },
            state::Op::CheckRate(o) => {
                if o.window_ms == 0 {
                    return Err("window-ms must be larger than zero".into());
                }
                store::Op::CheckRate {
                    key: key(&o.key)?,
                    limit: o.limit,
                    window: Duration::from_millis(o.window_ms),
                    cost: o.cost,
                }
            }
            state::Op::Acquire(h) => {
                self.check_size("holder", h.holder.len())?;
                if h.ttl_ms == 0 || h.amount < 0 {
                    return Err(
                        "a hold needs ttl-ms of at least 1 and an amount of at least 0".into(),
                    );
                }
                store::Op::Acquire(store::Hold {
                    key: key(&h.key)?,
                    holder: h.holder,
                    amount: h.amount,
                    limit: h.limit,
                    ttl: Duration::from_millis(h.ttl_ms),
                })
            }
            state::Op::Release(r) => {
                self.check_size("holder", r.holder.len())?;
                store::Op::Release(store::Settlement {
                    key: key(&r.key)?,
                    holder: r.holder,
                    settle: r.settle,
                    ttl: Duration::from_millis(r.ttl_ms),
                })
            }
        })
    }

    /// Runs a plugin's batch: malformed operations fail alone, the rest go in one round trip.
    async fn run_batch(&mut self, ops: Vec<state::Op>) -> Vec<Result<state::Answer, String>> {
        // The valid operations go to the store (moved, not copied); each malformed one keeps
        // its refusal in its place.
        let mut valid = Vec::with_capacity(ops.len());
        let refused: Vec<Option<String>> = ops
            .into_iter()
            .map(|op| match self.store_op(op) {
                Ok(op) => {
                    valid.push(op);
                    None
                }
                Err(e) => Some(e),
            })
            .collect();
        let entered = self.enter_host();
        let answers = self.services.state.batch(&valid).await;
        self.leave_host(entered);
        let mut answers = match answers {
            Ok(a) => a.into_iter(),
            Err(e) => {
                let e = e.to_string();
                return refused
                    .into_iter()
                    .map(|r| Err(r.unwrap_or_else(|| e.clone())))
                    .collect();
            }
        };
        refused
            .into_iter()
            .map(|r| match r {
                Some(e) => Err(e),
                None => match answers.next() {
                    Some(Ok(a)) => Ok(wit_answer(a)),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the store gave no answer".into()),
                },
            })
            .collect()
    }

    /// Runs one operation and returns its answer.
    async fn run_one(&mut self, op: state::Op) -> Result<state::Answer, String> {
        self.run_batch(vec![op])
            .await
            .pop()
            .unwrap_or_else(|| Err("the store gave no answer".into()))
    }
}

fn wit_answer(a: store::Answer) -> state::Answer {
    match a {
        store::Answer::Counter(v) => state::Answer::Counter(v),
        store::Answer::Value(v) => state::Answer::Value(v),
        store::Answer::Rate(r) => state::Answer::Rate(state::RateCheck {
            allowed: r.allowed,
            remaining: r.remaining,
            retry_after_ms: r.retry_after.as_millis() as u64,
        }),
        store::Answer::Acquired(h) => state::Answer::Acquired(state::HoldState {
            granted: h.granted,
            used: h.used,
            held: h.held,
        }),
        store::Answer::Released(b) => state::Answer::Released(b),
    }
}

fn mismatch<T>(a: state::Answer) -> Result<T, String> {
    Err(format!(
        "the store answered with another kind of value ({a:?})"
    ))
}

impl state::Host for HostState {
    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<i64, String>> {
        let op = state::Op::Incr(state::IncrOp { key, delta, ttl_ms });
        Ok(match self.run_one(op).await {
            Ok(state::Answer::Counter(v)) => Ok(v),
            Ok(other) => mismatch(other),
            Err(e) => Err(e),
        })
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<i64>, String>> {
        Ok(match self.run_one(state::Op::Get(key)).await {
            Ok(state::Answer::Value(v)) => Ok(v),
            Ok(other) => mismatch(other),
            Err(e) => Err(e),
        })
    }

    async fn check_rate(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
        cost: u64,
    ) -> wasmtime::Result<Result<state::RateCheck, String>> {
        let op = state::Op::CheckRate(state::RateOp {
            key,
            limit,
            window_ms,
            cost,
        });
        Ok(match self.run_one(op).await {
            Ok(state::Answer::Rate(r)) => Ok(r),
            Ok(other) => mismatch(other),
            Err(e) => Err(e),
        })
    }

    async fn acquire(
        &mut self,
        hold: state::HoldRequest,
    ) -> wasmtime::Result<Result<state::HoldState, String>> {
        Ok(match self.run_one(state::Op::Acquire(hold)).await {
            Ok(state::Answer::Acquired(h)) => Ok(h),
            Ok(other) => mismatch(other),
            Err(e) => Err(e),
        })
    }

    async fn release(
        &mut self,
        settlement: state::Settlement,
    ) -> wasmtime::Result<Result<bool, String>> {
        Ok(match self.run_one(state::Op::Release(settlement)).await {
            Ok(state::Answer::Released(b)) => Ok(b),
            Ok(other) => mismatch(other),
            Err(e) => Err(e),
        })
    }

    async fn batch(
        &mut self,
        ops: Vec<state::Op>,
    ) -> wasmtime::Result<Vec<Result<state::Answer, String>>> {
        if ops.len() > MAX_BATCH {
            let e = format!("a batch holds at most {MAX_BATCH} operations");
            return Ok(ops.iter().map(|_| Err(e.clone())).collect());
        }
        Ok(self.run_batch(ops).await)
    }

    async fn submit(&mut self, ops: Vec<state::Op>) -> wasmtime::Result<()> {
        let plugin = self.plugin.name.clone();
        if ops.len() > MAX_BATCH {
            tracing::warn!(%plugin, ops = ops.len(), "state submit refused: more than {MAX_BATCH} operations");
            return Ok(());
        }
        let mut valid = Vec::with_capacity(ops.len());
        for op in ops {
            match self.store_op(op) {
                Ok(op) => valid.push(op),
                Err(e) => tracing::warn!(%plugin, error = %e, "state submit: operation refused"),
            }
        }
        let state = Arc::clone(&self.services.state);
        let failed = self.services.metrics.state_submit_failures.clone();
        let completions = Arc::clone(&self.services.completions);
        completions.begin();
        let mut work = Box::pin(async move {
            let errors = match state.batch(&valid).await {
                Ok(answers) => answers.iter().filter(|a| a.is_err()).count(),
                Err(_) => valid.len(),
            };
            if errors > 0 {
                failed.inc_by(errors as u64);
                tracing::warn!(%plugin, errors, "state submit: operations failed");
            }
            completions.end();
        });
        // A store that answers at once (the memory store) is done here, without a hand-off to
        // another task; one that waits (Redis) goes on off the request's path: the call
        // returns before the store has answered.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if work.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(work);
        }
        Ok(())
    }
}

impl catalog::Host for HostState {
    fn lookup(&mut self, id: String) -> wasmtime::Result<Option<catalog::Model>> {
        if self.check_size("model id", id.len()).is_err() {
            return Ok(None);
        }
        let catalog = self.services.catalog.load();
        Ok(catalog.lookup(&id).map(|e| catalog::Model {
            name: e.name.clone(),
            display_name: e.display_name.clone(),
            price: e.price.map(|p| catalog::Price {
                input: p.input,
                output: p.output,
                cache_read: p.cache_read,
                cache_write: p.cache_write,
                cache_write_1h: p.cache_write_1h,
            }),
        }))
    }
}

impl jwt::Host for HostState {
    async fn verify(
        &mut self,
        token: String,
        key: jwt::Key,
        validation: jwt::Validation,
    ) -> wasmtime::Result<Result<Vec<jwt::Claim>, String>> {
        if let Err(e) = self.check_size("token", token.len()) {
            return Ok(Err(e));
        }
        let entered = self.enter_host();
        let r = self.services.jwt.verify(&token, key, validation).await;
        self.leave_host(entered);
        Ok(r)
    }
}

/// Metadata keys the host sets (such as `gateway.attempts`); plugins may read, not write them.
pub const HOST_METADATA_PREFIX: &str = "gateway.";

impl audit::Host for HostState {
    fn emit(&mut self, record: String) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = self.check_size("audit record", record.len()) {
            return Ok(Err(e));
        }
        let generation = self.view.as_ref().map(|v| v.generation);
        // The common case costs one validating scan and one copy: a compact object without
        // its own `config_generation` gets the host's appended as text.
        match splice_generation(&record, generation) {
            Spliced::Line(line) => {
                self.services.audit.emit_line(line);
                return Ok(Ok(()));
            }
            Spliced::NotAnObject(e) => return Ok(Err(e)),
            Spliced::Rebuild => {}
        }
        match serde_json::from_str::<serde_json::Value>(&record) {
            Ok(serde_json::Value::Object(mut fields)) => {
                // The host vouches for which configuration served the request.
                if let Some(generation) = generation {
                    fields.insert("config_generation".into(), generation.into());
                }
                self.services.audit.emit(&serde_json::Value::Object(fields));
                Ok(Ok(()))
            }
            Ok(_) => Ok(Err("an audit record must be a JSON object".into())),
            Err(e) => Ok(Err(format!("an audit record must be JSON: {e}"))),
        }
    }
}

/// What [`splice_generation`] made of a record.
#[derive(Debug, PartialEq, Eq)]
enum Spliced {
    /// The line to write.
    Line(String),
    /// The record must be parsed and written anew (it has line breaks or its own
    /// `config_generation`).
    Rebuild,
    /// Not a JSON object; why.
    NotAnObject(String),
}

/// Validates `record` as one JSON object without building it, and appends
/// `"config_generation"` to its text.
fn splice_generation(record: &str, generation: Option<u64>) -> Spliced {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut has_generation = false;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                has_generation |= key == "config_generation";
                map.next_value::<IgnoredAny>()?;
            }
            Ok(has_generation)
        }
    }

    let mut de = serde_json::Deserializer::from_str(record);
    let has_generation = match de.deserialize_map(Keys).and_then(|h| de.end().map(|_| h)) {
        Ok(h) => h,
        Err(e) if e.is_data() => {
            return Spliced::NotAnObject("an audit record must be a JSON object".into())
        }
        Err(e) => return Spliced::NotAnObject(format!("an audit record must be JSON: {e}")),
    };
    if has_generation || memchr::memchr2(b'\n', b'\r', record.as_bytes()).is_some() {
        return Spliced::Rebuild;
    }
    let Some(generation) = generation else {
        return Spliced::Line(record.trim().to_string());
    };
    let body = record.trim();
    // `{` ... `}`: the scan above proved the text is one object.
    let inner = body[1..body.len() - 1].trim();
    let mut line = String::with_capacity(body.len() + 32);
    line.push('{');
    line.push_str(inner);
    if !inner.is_empty() {
        line.push(',');
    }
    line.push_str("\"config_generation\":");
    line.push_str(&generation.to_string());
    line.push('}');
    Spliced::Line(line)
}

impl metrics::Host for HostState {
    fn counter_add(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self
            .services
            .metrics
            .plugin_counter_add(&self.plugin.name, &name, &labels, value))
    }

    fn gauge_set(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self
            .services
            .metrics
            .plugin_gauge_set(&self.plugin.name, &name, &labels, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_records_get_the_generation_appended_or_are_rebuilt() {
        assert_eq!(
            splice_generation(r#"{"a":1,"b":"x}"}"#, Some(7)),
            Spliced::Line(r#"{"a":1,"b":"x}","config_generation":7}"#.into())
        );
        assert_eq!(
            splice_generation(" {} ", Some(2)),
            Spliced::Line(r#"{"config_generation":2}"#.into())
        );
        // A record that claims a generation, or spans lines, is rebuilt by the slow path.
        assert_eq!(
            splice_generation(r#"{"config_generation":99}"#, Some(1)),
            Spliced::Rebuild
        );
        assert_eq!(
            splice_generation("{\n\"a\": 1\n}", Some(1)),
            Spliced::Rebuild
        );
        for bad in ["[1]", "\"x\"", "{\"a\":1} {}", "{\"a\":", "nope"] {
            assert!(
                matches!(splice_generation(bad, Some(1)), Spliced::NotAnObject(_)),
                "{bad}"
            );
        }
    }
}
