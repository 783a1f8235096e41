//! What the gateway knows about one request, from its first byte to its log line.
//!
//! [`RequestCtx`] is Pingora's per-request context. Its fields are private: each step of a
//! request writes its own part through the methods grouped under that step below (the front
//! door and body fill in the request, the plugins their run, the failover loop the backend and
//! the attempts, the answer its status, bytes and outcome), and the log line and the plugins'
//! `on-complete` read it all through accessors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frontdoor::{FrontDoor, RequestInfo};
use crate::plugin::PipelineRun;
use crate::wire::usage::{Observation, Usage};

/// How a request ended, for logs and the usage record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Still running (never logged as such).
    #[default]
    Pending,
    /// The upstream answered with success and the client got all of it.
    Ok,
    /// The upstream answered with an error status, passed through.
    UpstreamError,
    /// The gateway answered with an error of its own (validation, limits, no upstream).
    Rejected,
    /// The upstream failed after the answer had started; the client saw a cut stream.
    UpstreamFailed,
    /// A plugin denied it.
    Denied,
    /// The client went away before the answer was complete.
    ClientAborted,
    /// The gateway stopped (its grace period ran out) before the answer was complete.
    GatewayStopped,
}

impl Outcome {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Denied => "denied",
            Outcome::ClientAborted => "client_aborted",
            Outcome::GatewayStopped => "gateway_stopped",
        }
    }

    /// How an answer the upstream gave in full ended: its status says whether it was an error.
    #[inline]
    pub fn of_upstream_status(status: u16) -> Self {
        if status < 400 {
            Outcome::Ok
        } else {
            Outcome::UpstreamError
        }
    }
}

/// Everything known about one request, from its first byte to its log line.
#[derive(Debug, Default)]
pub struct RequestCtx {
    // Written when the request arrives.
    /// The request ID (the client's `x-request-id` when it sent a usable one).
    request_id: String,
    /// Claude Code's `X-Claude-Code-Session-Id`, when present.
    session_id: Option<String>,
    /// When the request arrived.
    started: Option<Instant>,

    // Written by the front door and the body read.
    /// The front door whose error shape applies (known even when parsing failed).
    front_door: Option<FrontDoor>,
    /// The parsed request, once the front door has read it (model as the client named it).
    info: Option<RequestInfo>,
    /// Request body bytes received.
    request_bytes: usize,

    // Written by the plugin pipeline.
    /// This request's run through the plugin pipeline.
    plugins: Option<SyncCell<PipelineRun>>,
    /// The plugin that denied the request.
    denied_by: Option<String>,

    // Written by the plan and the failover loop.
    /// The backend that served it (the last one tried).
    backend: Option<Arc<str>>,
    /// The model ID sent upstream (after any rewrite).
    model_served: Option<String>,
    /// Each backend tried, with how it answered (`name:429`, `name:connect-error`, `name:200`).
    attempts: Vec<String>,
    /// `anthropic-beta` values dropped because the backend would have refused them.
    dropped_betas: Vec<String>,

    // Written by the answer (whole or streamed) and by the gateway's own answers.
    /// Status sent to the client.
    status: u16,
    /// How it ended.
    outcome: Outcome,
    /// Why it failed, when it did.
    error: Option<String>,
    /// Usage and stream errors seen in the answer.
    observation: Option<Observation>,
    /// Time from arrival to the first byte of the upstream answer.
    time_to_first_byte: Option<Duration>,
    /// Response body bytes sent to the client.
    response_bytes: usize,
    /// Whether a response head has been written to the client.
    response_started: bool,
}

/// Arrival: `request_filter`.
impl RequestCtx {
    /// The request arrived at `started`, with this ID and Claude Code session.
    pub(super) fn begin(
        &mut self,
        started: Instant,
        request_id: String,
        session_id: Option<String>,
    ) {
        self.started = Some(started);
        self.request_id = request_id;
        self.session_id = session_id;
    }
}

/// The front door and the body.
impl RequestCtx {
    /// The front door whose error shape applies, known before the request parsed.
    #[inline]
    pub(super) fn set_front_door(&mut self, front_door: FrontDoor) {
        self.front_door = Some(front_door);
    }

    /// The request as parsed (and completed from the body), before any plugin rewrote it.
    #[inline]
    pub(super) fn set_info(&mut self, info: RequestInfo) {
        self.front_door = Some(info.front_door);
        self.info = Some(info);
    }

    /// The body's size once it was read whole.
    #[inline]
    pub(super) fn set_request_bytes(&mut self, n: usize) {
        self.request_bytes = n;
    }
}

/// The plugin pipeline.
impl RequestCtx {
    /// Keeps this request's run through the pipeline, for `on-response` and `on-complete`.
    #[inline]
    pub(super) fn set_plugins(&mut self, run: PipelineRun) {
        self.plugins = Some(SyncCell::new(run));
    }

    /// The run through the pipeline, when plugins are configured.
    #[inline]
    pub(super) fn plugins_mut(&mut self) -> Option<&mut PipelineRun> {
        self.plugins.as_mut().map(SyncCell::get_mut)
    }

    /// Hands the run over for `on-complete` (the end of the request).
    #[inline]
    pub(super) fn take_plugins(&mut self) -> Option<PipelineRun> {
        self.plugins.take().map(SyncCell::into_inner)
    }

    /// A plugin denied the request.
    #[inline]
    pub(super) fn set_denied_by(&mut self, plugin: String) {
        self.denied_by = Some(plugin);
    }
}

/// The plan and the failover loop.
impl RequestCtx {
    /// The model ID to send upstream, before a backend is chosen (after any plugin rewrite).
    #[inline]
    pub(super) fn set_model_served(&mut self, model: Option<String>) {
        self.model_served = model;
    }

    /// The failover loop tries `backend` with `model`.
    #[inline]
    pub(super) fn try_backend(&mut self, backend: &Arc<str>, model: Option<String>) {
        self.backend = Some(Arc::clone(backend));
        self.model_served = model;
    }

    /// How a backend tried answered (`name:what`).
    #[inline]
    pub(super) fn push_attempt(&mut self, backend: &str, what: impl std::fmt::Display) {
        self.attempts.push(format!("{backend}:{what}"));
    }

    /// `anthropic-beta` values dropped for a backend (each listed once).
    pub(super) fn note_dropped_betas(&mut self, dropped: &[String]) {
        for b in dropped {
            if !self.dropped_betas.contains(b) {
                self.dropped_betas.push(b.clone());
            }
        }
    }
}

/// The answer.
impl RequestCtx {
    /// The upstream's answer head arrived now.
    #[inline]
    pub(super) fn mark_first_byte(&mut self) {
        self.time_to_first_byte = self.started.map(|s| s.elapsed());
    }

    /// The status the client gets.
    #[inline]
    pub(super) fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// A response head goes to the client: from here on the answer is the client's.
    #[inline]
    pub(super) fn mark_response_started(&mut self) {
        self.response_started = true;
    }

    /// The body of an answer written whole.
    #[inline]
    pub(super) fn set_response_bytes(&mut self, n: usize) {
        self.response_bytes = n;
    }

    /// Body bytes written to the client (one more piece of a streamed answer).
    #[inline]
    pub(super) fn add_response_bytes(&mut self, n: usize) {
        self.response_bytes += n;
    }

    /// What the usage observer saw in the answer.
    #[inline]
    pub(super) fn set_observation(&mut self, observation: Observation) {
        self.observation = Some(observation);
    }

    /// The request ended this way.
    #[inline]
    pub(super) fn settle(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// The request ended this way, for this reason.
    #[inline]
    pub(super) fn settle_with_error(&mut self, outcome: Outcome, error: String) {
        self.outcome = outcome;
        self.error = Some(error);
    }
}

/// Reading it all: the log line, metrics and `on-complete`.
impl RequestCtx {
    /// The request ID (the client's `x-request-id` when it sent a usable one).
    #[inline]
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Claude Code's `X-Claude-Code-Session-Id`, when present.
    #[inline]
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// When the request arrived.
    #[inline]
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// The front door whose error shape applies (known even when parsing failed).
    #[inline]
    pub fn front_door(&self) -> Option<FrontDoor> {
        self.front_door
    }

    /// The parsed request, with the model as the client named it.
    #[inline]
    pub fn info(&self) -> Option<&RequestInfo> {
        self.info.as_ref()
    }

    /// Request body bytes received.
    #[inline]
    pub fn request_bytes(&self) -> usize {
        self.request_bytes
    }

    /// The plugin that denied the request.
    #[inline]
    pub fn denied_by(&self) -> Option<&str> {
        self.denied_by.as_deref()
    }

    /// The backend that served it.
    #[inline]
    pub fn backend(&self) -> Option<&str> {
        self.backend.as_deref()
    }

    /// The model ID sent upstream (after any rewrite).
    #[inline]
    pub fn model_served(&self) -> Option<&str> {
        self.model_served.as_deref()
    }

    /// Each backend tried, with how it answered.
    #[inline]
    pub fn attempts(&self) -> &[String] {
        &self.attempts
    }

    /// `anthropic-beta` values dropped because a backend would have refused them.
    #[inline]
    pub fn dropped_betas(&self) -> &[String] {
        &self.dropped_betas
    }

    /// Status sent to the client.
    #[inline]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// How it ended.
    #[inline]
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Why it failed, when it did.
    #[inline]
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Usage and stream errors seen in the answer.
    #[inline]
    pub fn observation(&self) -> Option<&Observation> {
        self.observation.as_ref()
    }

    /// Token usage seen in the answer (zero when none was).
    #[inline]
    pub fn usage(&self) -> Usage {
        self.observation
            .as_ref()
            .and_then(|o| o.usage)
            .unwrap_or_default()
    }

    /// Time from arrival to the first byte of the upstream answer.
    #[inline]
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        self.time_to_first_byte
    }

    /// Response body bytes sent to the client.
    #[inline]
    pub fn response_bytes(&self) -> usize {
        self.response_bytes
    }

    /// Whether a response head has been written to the client.
    #[inline]
    pub fn response_started(&self) -> bool {
        self.response_started
    }
}

/// Exclusive-access cell: `Sync` for any `Send` value because it only hands out `&mut`
/// (the mutex inside is never locked). It makes the context `Sync` as Pingora requires.
#[derive(Debug)]
pub struct SyncCell<T>(std::sync::Mutex<T>);

impl<T> SyncCell<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    /// The value, through `&mut` (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}
