//! The data plane: Pingora's `ProxyHttp` phases, where one request reads top to bottom.
//!
//! Pingora streams a request body upstream while it still arrives, but an AWS signature
//! covers the hash of the whole body, and plugins and translation need to see it before
//! anything goes upstream. So the gateway serves each request itself inside
//! `request_filter`: read the body (bounded), parse it through its front door, run the
//! plugins, ask the router which backends may serve it, then for each in turn translate the
//! request for its protocol, sign it and exchange it over Pingora's pooled connector, until
//! one answers (failover on connect errors, timeouts before the first byte, 429 and 5xx, as
//! long as nothing has been sent to the client). The answer streams back chunk by chunk,
//! translated per event when it crossed providers. Pingora still owns the listeners, TLS,
//! HTTP/1 and HTTP/2 framing, keep-alive and connection pools; `logging` runs once per
//! request at the end.
//!
//! Invariants kept here:
//! - client credentials never go upstream (see [`crate::upstream::forwards_request_header`]);
//! - the answer is never buffered: each upstream chunk is written to the client as soon as it
//!   is read, as the same `Bytes` handle (chunks that arrived together are joined into one
//!   write; across providers, the events a chunk completes are written), and the usage
//!   observer only looks at it;
//! - a client that goes away mid-stream makes the gateway drop the upstream connection at
//!   once, instead of paying for tokens nobody reads;
//! - errors the gateway decides are rendered in the client's protocol; upstream errors pass
//!   through unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use arc_swap::ArcSwap;

use crate::frontdoor::{FrontDoor, FrontDoors, Operation, RequestInfo};
use crate::lifecycle::Lifecycle;
use crate::plugin::{Completion, Pipeline, PipelineRun, RequestView, WitOutcome, WitUsage};
use crate::protocol::error::{ErrorResponse, GatewayError};
use crate::upstream::route::Router;
use crate::upstream::{
    forwards_response_header, Backend, UpstreamRequest, Upstreams, POOL_IDLE_TIMEOUT,
};
use crate::wire::translate::{self, ResponseTranslation, Target};
use crate::wire::usage::{Observation, ResponseShape, UsageObserver};

/// Largest answer read whole for translation (token counts and error bodies are far smaller).
const MAX_BUFFERED_ANSWER: usize = 1024 * 1024;

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
}

/// Everything known about one request, from its first byte to its log line.
#[derive(Debug, Default)]
pub struct RequestCtx {
    /// The request ID (the client's `x-request-id` when it sent a usable one).
    pub request_id: String,
    /// Claude Code's `X-Claude-Code-Session-Id`, when present.
    pub session_id: Option<String>,
    /// The parsed request, once the front door has read it.
    pub info: Option<RequestInfo>,
    /// The front door whose error shape applies (known even when parsing failed).
    pub front_door: Option<FrontDoor>,
    /// The backend that served it.
    pub backend: Option<Arc<str>>,
    /// Status sent to the client.
    pub status: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Usage and stream errors seen in the answer.
    pub observation: Option<Observation>,
    /// When the request arrived.
    pub started: Option<Instant>,
    /// Time from arrival to the first byte of the upstream answer.
    pub time_to_first_byte: Option<Duration>,
    /// Request body bytes received.
    pub request_bytes: usize,
    /// Response body bytes sent to the client.
    pub response_bytes: usize,
    /// Whether a response head has been written to the client.
    pub response_started: bool,
    /// This request's run through the plugin pipeline. Only ever used through `&mut`, so the
    /// mutex is never locked; it makes the context `Sync` as Pingora requires.
    pub plugins: Option<SyncCell<PipelineRun>>,
    /// The model ID sent upstream (after any rewrite).
    pub model_served: Option<String>,
    /// The plugin that denied the request.
    pub denied_by: Option<String>,
    /// Each backend tried, with how it answered (`name:429`, `name:connect error`, `name:200`).
    pub attempts: Vec<String>,
    /// `anthropic-beta` values dropped because the backend would have refused them.
    pub dropped_betas: Vec<String>,
}

/// Exclusive-access cell: `Sync` for any `Send` value because it only hands out `&mut`
/// (the mutex inside is never locked).
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

/// Why serving a request stopped early.
enum Stop {
    /// Answer with this error in the client's protocol (nothing has been sent yet).
    Answer(GatewayError),
    /// The response had started; the connection must be closed to signal a cut answer.
    Abort(Outcome, String),
}

/// Why an upstream exchange failed before an answer came: a short kind for the attempts log
/// (`connect-error`, `timeout`, `error`) and the error to answer with.
struct SendFailure {
    kind: &'static str,
    error: GatewayError,
}

impl From<GatewayError> for Stop {
    fn from(e: GatewayError) -> Self {
        Stop::Answer(e)
    }
}

/// What a client may send and how long it may take (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Largest request body.
    pub max_request_body: u64,
    /// Largest request head (request line and headers).
    pub max_request_headers: u64,
    /// The whole body must arrive within this, from the request head.
    pub client_body_timeout: Duration,
    /// A write the client does not read for this long drops it.
    pub client_write_timeout: Duration,
}

impl ClientLimits {
    /// The limits `[server]` sets.
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            max_request_body: server.max_request_body.0,
            max_request_headers: server.max_request_headers.0,
            client_body_timeout: server.client_body_timeout.0,
            client_write_timeout: server.client_write_timeout.0,
        }
    }
}

/// The gateway's `ProxyHttp` implementation.
pub struct Gateway {
    metrics: Arc<crate::metrics::Metrics>,
    front_doors: FrontDoors,
    pipeline: Arc<ArcSwap<Pipeline>>,
    router: Arc<ArcSwap<Router>>,
    upstreams: Arc<Upstreams>,
    connector: Connector,
    limits: ClientLimits,
    lifecycle: Arc<Lifecycle>,
}

impl Gateway {
    /// A gateway serving `front_doors` with `upstreams`.
    pub fn new(
        metrics: Arc<crate::metrics::Metrics>,
        front_doors: FrontDoors,
        pipeline: Arc<ArcSwap<Pipeline>>,
        router: Arc<ArcSwap<Router>>,
        upstreams: Arc<Upstreams>,
        limits: ClientLimits,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Self {
            metrics,
            front_doors,
            pipeline,
            router,
            upstreams,
            connector: Connector::new(None),
            limits,
            lifecycle,
        }
    }

    /// Serves one request; `Err` says how it stopped early.
    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Stop> {
        // 1. Which front door, which operation, which model.
        let head = session.req_header();
        let path = head
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let parsed = self.front_doors.parse(&head.method, &path);
        let head_size = request_head_size(head);
        if head_size > self.limits.max_request_headers {
            ctx.front_door = Some(match &parsed {
                Ok(info) => info.front_door,
                Err((front_door, _)) => *front_door,
            });
            // The body is left unread: the connection is not reused.
            session.set_keepalive(None);
            return Err(GatewayError::HeadersTooLarge {
                limit: self.limits.max_request_headers,
            }
            .into());
        }
        let info = match parsed {
            Ok(info) => info,
            Err((front_door, e)) => {
                ctx.front_door = Some(front_door);
                return Err(e.into());
            }
        };
        ctx.front_door = Some(info.front_door);
        ctx.info = Some(info.clone());

        // 2. The whole body, bounded, because the signature covers its hash. The Anthropic
        //    and Vertex protocols put the model or `stream` in it.
        let body = self.read_body(session, ctx).await?;
        let mut info = info;
        info.complete_from_body(&body)?;
        ctx.info = Some(info.clone());
        let requested_model = info.model_id.clone();

        // 3. The plugins: they may deny, rewrite the model, edit headers, set the identity.
        // Plugins edit a copy of the headers; without plugins the client's are used as they are.
        let mut edited_headers = None;
        let pipeline = self.pipeline.load_full();
        if !pipeline.is_empty() {
            let view = RequestView::new(
                session.req_header().method.to_string(),
                path,
                info.front_door,
                info.operation,
                info.model_id.clone(),
                session.req_header().headers.clone(),
                session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip().to_string()),
                ctx.request_id.clone(),
                body.clone(),
            );
            let mut run = pipeline.start(Box::new(view));
            let decided = run.on_request().await;
            let view = run.view();
            edited_headers = Some(view.headers.clone());
            if view.model.is_some() && view.model != info.model_id {
                info.model_id = view.model.clone();
            }
            ctx.plugins = Some(SyncCell::new(run));
            if let Err(denial) = decided {
                ctx.denied_by = Some(denial.plugin.clone());
                return Err(GatewayError::Denied {
                    status: denial.status,
                    message: denial.message,
                    retry_after: denial.retry_after.map(u64::from),
                }
                .into());
            }
        }
        ctx.model_served = info.model_id.clone();
        let router = self.router.load_full();
        if info.operation == Operation::ListModels {
            return self.answer_models(session, ctx, &router, &info).await;
        }

        // 4. Which backends, in which order; then each in turn until one answers.
        let plan = match router.plan(&self.upstreams, &info) {
            Ok(plan) => plan,
            // Bedrock clients list inference profiles at start-up (Claude Code does); when no
            // Bedrock backend is there to ask, the catalog answers for the models routed elsewhere.
            Err(_)
                if info.operation == Operation::ControlPlane
                    && info.upstream_path.starts_with("/inference-profiles") =>
            {
                return self
                    .answer_inference_profiles(session, ctx, &router, &info)
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        let first_byte = self.upstreams.timeouts().first_byte.0;
        for (i, candidate) in plan.iter().enumerate() {
            let last = i + 1 == plan.len();
            let backend = &candidate.backend;
            ctx.backend = Some(Arc::clone(&backend.name));
            ctx.model_served = candidate.model.clone();
            let prepared = self.prepare(
                session,
                ctx,
                &info,
                requested_model.as_deref(),
                candidate,
                edited_headers.as_ref(),
                &body,
            );
            let prepared = match prepared {
                Ok(p) => p,
                Err(e) if last => return Err(e.into()),
                Err(e) => {
                    tracing::info!(request_id = %ctx.request_id, backend = %backend.name, error = %e, "backend skipped: the request cannot be prepared for it");
                    ctx.attempts.push(format!("{}:unprepared", backend.name));
                    continue;
                }
            };
            let UpstreamRequest { peer, header, body } = prepared;
            let sent = self.send(&peer, header, body, &backend.name, first_byte);
            let upstream = match self.while_client_waits(session, sent).await? {
                Ok(upstream) => upstream,
                Err(failure) => {
                    ctx.attempts
                        .push(format!("{}:{}", backend.name, failure.kind));
                    self.record_health(backend, false);
                    if last {
                        return Err(failure.error.into());
                    }
                    self.failover(ctx, backend, &failure.error.to_string());
                    continue;
                }
            };
            let status = upstream
                .response_header()
                .map(|h| h.status.as_u16())
                .unwrap_or(0);
            let retryable = status == 429 || status >= 500;
            self.record_health(backend, !retryable);
            ctx.attempts.push(format!("{}:{status}", backend.name));
            if retryable && !last {
                // Nothing has reached the client yet; the answer is dropped with its connection.
                self.failover(ctx, backend, &format!("status {status}"));
                continue;
            }
            ctx.time_to_first_byte = ctx.started.map(|s| s.elapsed());
            let translation = ResponseTranslation::choose(
                info.front_door,
                backend.kind(),
                info.operation,
                status,
                ctx.started.unwrap_or_else(Instant::now),
            );
            let shape = ResponseShape::of(info.operation, backend.kind());
            return self
                .exchange(session, ctx, upstream, peer, shape, translation)
                .await;
        }
        Err(GatewayError::Unavailable("no backend could take the request".into()).into())
    }

    /// Waits for `upstream` (a send, up to the answer's head) while watching the client: a
    /// client that hangs up releases the upstream at once (the send is dropped with its
    /// connection), and so does the end of the grace period when the gateway stops.
    async fn while_client_waits<T>(
        &self,
        session: &mut Session,
        upstream: impl std::future::Future<Output = T>,
    ) -> Result<T, Stop> {
        tokio::select! {
            biased;
            answered = upstream => Ok(answered),
            // The request body is done, so this only returns when the client hangs up.
            gone = session.downstream_session.read_body_or_idle(true) => {
                let why = match gone { Err(e) => e.to_string(), Ok(_) => "closed".into() };
                Err(Stop::Abort(Outcome::ClientAborted, format!("client went away while the upstream was answering: {why}")))
            }
            () = self.lifecycle.stopped() => Err(Stop::Answer(GatewayError::ShuttingDown(
                "the gateway stopped before the upstream answered; retry the request".into(),
            ))),
        }
    }

    /// Translates and signs the request for one candidate backend.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        info: &RequestInfo,
        requested_model: Option<&str>,
        candidate: &crate::upstream::route::Candidate,
        edited_headers: Option<&http::HeaderMap>,
        body: &Bytes,
    ) -> Result<UpstreamRequest, GatewayError> {
        let backend = &candidate.backend;
        let client = session.req_header();
        let headers = edited_headers.unwrap_or(&client.headers);
        let (project, region) = backend.vertex_location();
        let target = Target {
            kind: backend.kind(),
            model: candidate.model.as_deref().unwrap_or_default(),
            project,
            region,
            betas: &backend.betas,
        };
        let outgoing = translate::request(info, requested_model, &target, headers, body)?;
        if !outgoing.dropped_betas.is_empty() {
            tracing::info!(
                request_id = %ctx.request_id,
                backend = %backend.name,
                dropped = %outgoing.dropped_betas.join(","),
                "dropped anthropic-beta values the backend does not accept"
            );
            for b in &outgoing.dropped_betas {
                if !ctx.dropped_betas.contains(b) {
                    ctx.dropped_betas.push(b.clone());
                }
            }
        }
        self.upstreams
            .prepare(backend, outgoing, &client.method, headers, &ctx.request_id)
    }

    fn record_health(&self, backend: &Backend, ok: bool) {
        let router = self.router.load();
        if backend.health.record(ok, router.health()) {
            tracing::warn!(
                backend = %backend.name,
                cooldown = %humantime::format_duration(router.health().cooldown.0),
                "backend keeps failing; skipping it while it cools down"
            );
        }
    }

    fn failover(&self, ctx: &RequestCtx, backend: &Backend, why: &str) {
        tracing::info!(request_id = %ctx.request_id, backend = %backend.name, reason = %why, "failing over to the next backend");
        self.metrics
            .failovers
            .with_label_values(&[&backend.name])
            .inc();
    }

    /// Answers Bedrock's `GET /inference-profiles` from the model catalog: the system-defined
    /// profiles of the models some backend serves to Bedrock clients.
    async fn answer_inference_profiles(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        router: &Router,
        info: &RequestInfo,
    ) -> Result<(), Stop> {
        let query = info.upstream_path.split_once('?').map_or("", |(_, q)| q);
        let application_only = query.split('&').any(|kv| kv == "type=APPLICATION");
        let profiles: Vec<serde_json::Value> = if application_only {
            Vec::new()
        } else {
            router
                .servable_models(&self.upstreams, FrontDoor::Bedrock)
                .into_iter()
                .filter_map(|e| {
                    let id = e.bedrock.as_deref()?;
                    let (_, base) = id
                        .split_once('.')
                        .filter(|(_, base)| base.starts_with("anthropic."))?;
                    Some(serde_json::json!({
                        "inferenceProfileId": id,
                        "inferenceProfileName": e.display_name,
                        "inferenceProfileArn": format!("arn:aws:bedrock:us-east-1::inference-profile/{id}"),
                        "models": [{ "modelArn": format!("arn:aws:bedrock:us-east-1::foundation-model/{base}") }],
                        "status": "ACTIVE",
                        "type": "SYSTEM_DEFINED",
                    }))
                })
                .collect()
        };
        let body = serde_json::json!({ "inferenceProfileSummaries": profiles });
        self.answer_json(session, ctx, body).await
    }

    /// Writes a 200 JSON answer the gateway made itself.
    async fn answer_json(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: serde_json::Value,
    ) -> Result<(), Stop> {
        let answer = ErrorResponse {
            status: 200,
            headers: Vec::new(),
            content_type: "application/json",
            body: Bytes::from(body.to_string()),
        };
        let head = whole_head(&answer, &ctx.request_id)?;
        ctx.status = 200;
        write_whole(session, ctx, head, answer.body).await?;
        ctx.outcome = Outcome::Ok;
        Ok(())
    }

    /// Answers `GET /v1/models` (and `/v1/models/{id}`) from the model catalog: the models
    /// some backend can serve to this front door.
    async fn answer_models(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        router: &Router,
        info: &RequestInfo,
    ) -> Result<(), Stop> {
        let entry = |e: &crate::catalog::ModelEntry| {
            serde_json::json!({
                "type": "model",
                "id": e.name,
                "display_name": e.display_name,
                "created_at": "2025-01-01T00:00:00Z",
            })
        };
        let models = router.servable_models(&self.upstreams, info.front_door);
        let body = match &info.model_id {
            Some(id) => {
                let found = router
                    .catalog()
                    .lookup(id)
                    .filter(|e| models.iter().any(|m| m.name == e.name))
                    .ok_or_else(|| {
                        GatewayError::NotFound(format!("model: {id} is not served by this gateway"))
                    })?;
                entry(found)
            }
            None => serde_json::json!({
                "data": models.iter().map(|e| entry(e)).collect::<Vec<_>>(),
                "has_more": false,
                "first_id": models.first().map(|e| e.name.as_str()),
                "last_id": models.last().map(|e| e.name.as_str()),
            }),
        };
        self.answer_json(session, ctx, body).await
    }

    /// Reads the request body up to `max_request_body`.
    async fn read_body(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Bytes, Stop> {
        let max_request_body = self.limits.max_request_body;
        let too_large = GatewayError::BodyTooLarge {
            limit: max_request_body,
        };
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_request_body) {
            // Refuse before reading; the connection is not reused since the body is unread.
            session.set_keepalive(None);
            return Err(too_large.into());
        }
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        // One deadline for the whole body, from the request head: a client trickling bytes
        // cannot hold the connection past it (a read timeout alone restarts on every byte).
        let deadline = ctx.started.unwrap_or_else(Instant::now) + self.limits.client_body_timeout;
        let timed_out = || {
            GatewayError::BodyTimeout(format!(
                "the request body did not arrive within {}",
                humantime::format_duration(self.limits.client_body_timeout)
            ))
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                session.set_keepalive(None);
                return Err(timed_out().into());
            }
            session.set_read_timeout(Some(left));
            let chunk = match session.read_request_body().await {
                Ok(chunk) => chunk,
                Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                    session.set_keepalive(None);
                    return Err(timed_out().into());
                }
                Err(e) => {
                    return Err(GatewayError::BadRequest(format!(
                        "could not read the request body: {e}"
                    ))
                    .into())
                }
            };
            let Some(chunk) = chunk else { break };
            if (body.len() + chunk.len()) as u64 > max_request_body {
                session.set_keepalive(None);
                return Err(too_large.into());
            }
            body.extend_from_slice(&chunk);
        }
        // From here on the client only waits; never time its silence out.
        session.set_read_timeout(None);
        ctx.request_bytes = body.len();
        Ok(body.freeze())
    }

    /// Streams the answer (its head already read) to the client, translated when it crossed
    /// providers.
    async fn exchange(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut upstream: UpstreamSession,
        peer: HttpPeer,
        shape: ResponseShape,
        mut translation: ResponseTranslation,
    ) -> Result<(), Stop> {
        let backend = ctx.backend.clone().unwrap_or_else(|| "?".into());
        let idle = self.upstreams.timeouts().idle.0;

        let upstream_head = upstream
            .response_header()
            .ok_or_else(|| GatewayError::Internal("upstream response head missing".into()))?;
        let status = upstream_head.status.as_u16();
        let upstream_headers = upstream_head.headers.clone();
        let mut observer = UsageObserver::new(if status < 400 {
            shape
        } else {
            ResponseShape::Opaque
        });
        observer.observe_headers(&upstream_headers);
        ctx.status = status;
        upstream.set_read_timeout(Some(idle));

        // Answers that are translated whole (token counts, errors) are small: read them first.
        if translation.buffers() {
            let mut body = BytesMut::new();
            loop {
                match upstream.read_response_body().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > MAX_BUFFERED_ANSWER {
                            return Err(GatewayError::Unavailable(format!(
                                "backend {backend} sent an answer too large to translate"
                            ))
                            .into());
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(GatewayError::Unavailable(format!(
                            "backend {backend} failed mid-answer: {}",
                            e.etype().as_str()
                        ))
                        .into())
                    }
                }
            }
            let retry_after = upstream_headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let rendered = translation.whole(status, &body, retry_after);
            let mut head = whole_head(&rendered, &ctx.request_id)?;
            self.plugin_response_headers(ctx, status, &upstream_headers, &mut head)
                .await;
            ctx.status = rendered.status;
            write_whole(session, ctx, head, rendered.body).await?;
            ctx.observation = Some(observer.finish(true));
            ctx.outcome = if status < 400 {
                Outcome::Ok
            } else {
                Outcome::UpstreamError
            };
            if upstream.response_done() {
                self.connector
                    .release_http_session(upstream, &peer, Some(POOL_IDLE_TIMEOUT))
                    .await;
            }
            return Ok(());
        }

        // The response head: pass it through, minus hop-by-hop headers.
        let mut head = ResponseHeader::build(status, Some(upstream_headers.len() + 1))
            .map_err(|e| GatewayError::Internal(format!("response head: {e}")))?;
        for (name, value) in upstream_headers.iter() {
            if forwards_response_header(name.as_str()) {
                head.append_header(name.clone(), value.clone())
                    .map_err(|e| GatewayError::Internal(format!("response header: {e}")))?;
            }
        }
        if let Some(content_type) = translation.content_type() {
            // The body changes length when its framing is translated.
            head.remove_header(&http::header::CONTENT_LENGTH);
            let _ = head.insert_header(http::header::CONTENT_TYPE, content_type);
        }
        let _ = head.insert_header("x-request-id", ctx.request_id.as_str());
        // An answer without a length (every stream) is re-framed as chunked for HTTP/1.1
        // clients; without it the client could only read to the end of the connection, which
        // costs a new connection per stream and hides truncation.
        if !head.headers.contains_key(http::header::CONTENT_LENGTH)
            && head.status != http::StatusCode::NO_CONTENT
        {
            let _ = head.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
        self.plugin_response_headers(ctx, status, &upstream_headers, &mut head)
            .await;

        session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(|e| {
                Stop::Abort(
                    Outcome::ClientAborted,
                    format!("writing response head: {e}"),
                )
            })?;
        ctx.response_started = true;

        // The body: each chunk goes to the client as it arrives, untouched unless translated.
        let translating = !matches!(translation, ResponseTranslation::None);
        let mut translated = Vec::new();
        let mut arrived: Vec<Bytes> = Vec::new();
        // Registered once per stream, woken only when the gateway's grace period ends.
        let stopped = self.lifecycle.stopped();
        tokio::pin!(stopped);
        let result = loop {
            tokio::select! {
                chunk = upstream.read_response_body() => match chunk {
                    Ok(Some(chunk)) => {
                        // Chunks that arrived together leave together: what the upstream sent
                        // in one burst costs one write to the client, not one per chunk. A
                        // chunk that arrived alone is passed on as the same `Bytes` handle.
                        arrived.push(chunk);
                        let (ended, failed) = take_ready_chunks(&mut upstream, &mut arrived);
                        for chunk in &arrived {
                            observer.observe(chunk);
                        }
                        let out = if translating {
                            let mut bad = None;
                            for chunk in arrived.drain(..) {
                                if let Err(e) = translation.chunk(&chunk, &mut translated) {
                                    bad = Some(e);
                                    break;
                                }
                            }
                            if let Some(e) = bad {
                                break Err(Stop::Abort(Outcome::UpstreamFailed, format!("backend {backend} sent a stream that cannot be translated: {e}")));
                            }
                            join(&mut translated)
                        } else {
                            join(&mut arrived)
                        };
                        if let Some(out) = out {
                            ctx.response_bytes += out.len();
                            if let Err(e) = session.write_response_body(Some(out), false).await {
                                break Err(Stop::Abort(Outcome::ClientAborted, format!("writing to client: {e}")));
                            }
                        }
                        if let Some(e) = failed {
                            break Err(Stop::Abort(Outcome::UpstreamFailed, format!("backend {backend} failed mid-answer: {e}")));
                        }
                        if ended {
                            break Ok(());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(Stop::Abort(Outcome::UpstreamFailed, format!("backend {backend} failed mid-answer: {e}"))),
                },
                // The request body is done, so this only returns when the client hangs up.
                gone = session.downstream_session.read_body_or_idle(true) => {
                    let why = match gone { Err(e) => e.to_string(), Ok(_) => "closed".into() };
                    break Err(Stop::Abort(Outcome::ClientAborted, format!("client went away: {why}")));
                }
                () = &mut stopped => {
                    break Err(Stop::Abort(Outcome::GatewayStopped, "the gateway stopped: its grace period ended before the answer did".into()));
                }
            }
        };
        ctx.observation = Some(observer.finish(result.is_ok()));
        match result {
            Ok(()) => {
                session.write_response_body(None, true).await.map_err(|e| {
                    Stop::Abort(Outcome::ClientAborted, format!("finishing response: {e}"))
                })?;
                ctx.outcome = if status < 400 {
                    Outcome::Ok
                } else {
                    Outcome::UpstreamError
                };
                if upstream.response_done() {
                    self.connector
                        .release_http_session(upstream, &peer, Some(POOL_IDLE_TIMEOUT))
                        .await;
                }
                Ok(())
            }
            // Dropping `upstream` here closes the upstream connection: nothing more is read or paid for.
            Err(stop) => Err(stop),
        }
    }

    /// Lets the plugins' `on-response` set headers on the answer.
    async fn plugin_response_headers(
        &self,
        ctx: &mut RequestCtx,
        status: u16,
        upstream_headers: &http::HeaderMap,
        head: &mut ResponseHeader,
    ) {
        if let Some(run) = ctx.plugins.as_mut() {
            for (name, value) in run.get_mut().on_response(status, upstream_headers).await {
                let _ = head.insert_header(name, value);
            }
        }
    }

    /// Connects, writes the request and waits for the response head. A pooled connection that
    /// turns out to be closed is retried once on a fresh one, since the upstream never saw the request.
    async fn send(
        &self,
        peer: &HttpPeer,
        header: pingora_http::RequestHeader,
        body: Bytes,
        backend: &str,
        first_byte: Duration,
    ) -> Result<UpstreamSession, SendFailure> {
        let mut last_error = String::new();
        for _attempt in 0..2 {
            let (mut upstream, reused) =
                self.connector
                    .get_http_session(peer)
                    .await
                    .map_err(|e| SendFailure {
                        kind: "connect-error",
                        error: GatewayError::Unavailable(format!(
                            "backend {backend} is unreachable: {}",
                            e.etype().as_str()
                        )),
                    })?;
            let sent = async {
                upstream
                    .write_request_header(Box::new(header.clone()))
                    .await?;
                if !body.is_empty() {
                    upstream.write_request_body(body.clone(), true).await?;
                }
                upstream.finish_request_body().await?;
                Ok::<_, Box<Error>>(())
            }
            .await;
            let answered = match sent {
                Ok(()) => {
                    // Pingora's own read timeout (a lazily registered timer) rather than a
                    // tokio timeout around the read.
                    upstream.set_read_timeout(Some(first_byte));
                    match upstream.read_response_header().await {
                        Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                            return Err(SendFailure {
                                kind: "timeout",
                                error: GatewayError::Unavailable(format!(
                                    "backend {backend} did not answer within {}",
                                    humantime::format_duration(first_byte)
                                )),
                            })
                        }
                        r => r,
                    }
                }
                Err(e) => Err(e),
            };
            match answered {
                Ok(()) => return Ok(upstream),
                Err(e) if reused => {
                    last_error = e.to_string();
                    tracing::debug!(backend, error = %e, "pooled upstream connection was stale; retrying on a new one");
                }
                Err(e) => {
                    return Err(SendFailure {
                        kind: "error",
                        error: GatewayError::Unavailable(format!(
                            "backend {backend} failed before answering: {}",
                            e.etype().as_str()
                        )),
                    })
                }
            }
        }
        Err(SendFailure {
            kind: "error",
            error: GatewayError::Unavailable(format!(
                "backend {backend} failed before answering: {last_error}"
            )),
        })
    }

    /// Writes a gateway error in the client's protocol.
    async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &GatewayError,
    ) {
        let front_door = ctx.front_door.unwrap_or(FrontDoor::Bedrock);
        let rendered = error.render(front_door);
        ctx.status = rendered.status;
        ctx.outcome = match error {
            GatewayError::Denied { .. } => Outcome::Denied,
            GatewayError::ShuttingDown(_) => Outcome::GatewayStopped,
            _ => Outcome::Rejected,
        };
        ctx.error = Some(error.to_string());
        if let Ok(head) = whole_head(&rendered, &ctx.request_id) {
            // The client may be gone; there is nobody left to tell.
            let _ = write_whole(session, ctx, head, rendered.body).await;
        }
    }
}

impl Gateway {
    fn record_metrics(
        &self,
        ctx: &RequestCtx,
        latency: Duration,
        usage: crate::wire::usage::Usage,
        team: Option<&str>,
    ) {
        let m = &self.metrics;
        let front_door = ctx.front_door.map(FrontDoor::as_str).unwrap_or("-");
        let backend = ctx.backend.as_deref().unwrap_or("-");
        let model = ctx.model_served.as_deref().unwrap_or("-");
        let status = ctx.status.to_string();
        let outcome = ctx.outcome.as_str();
        m.requests
            .with_label_values(&[front_door, backend, model, &status, outcome])
            .inc();
        m.request_seconds
            .with_label_values(&[front_door, outcome])
            .observe(latency.as_secs_f64());
        if let Some(ttfb) = ctx.time_to_first_byte {
            m.first_byte_seconds
                .with_label_values(&[front_door, backend])
                .observe(ttfb.as_secs_f64());
        }
        let team = team.unwrap_or("-");
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ] {
            if n > 0 {
                m.tokens.with_label_values(&[team, model, kind]).inc_by(n);
            }
        }
        if let Some(plugin) = &ctx.denied_by {
            m.denials.with_label_values(&[plugin, &status]).inc();
        }
    }
}

/// The request ID to use: the client's own `x-request-id` when it is short printable ASCII,
/// otherwise a fresh UUID.
fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// A random (version 4) UUID from the thread's fast generator: request IDs must be unique,
/// not unguessable, and the OS generator costs a system call per request.
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        // A client that stops reading its answer is dropped instead of holding the stream.
        session.set_write_timeout(Some(self.limits.client_write_timeout));
        ctx.request_id = request_id(session);
        ctx.session_id = session
            .req_header()
            .headers
            .get("x-claude-code-session-id")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(128).collect());
        match self.serve(session, ctx).await {
            Ok(()) => Ok(true),
            Err(Stop::Answer(e)) => {
                self.answer_error(session, ctx, &e).await;
                Ok(true)
            }
            Err(Stop::Abort(outcome, why)) => {
                ctx.outcome = outcome;
                ctx.error = Some(why.clone());
                // An error here makes Pingora close the client connection without finishing
                // the body, which is how a client learns its stream was cut.
                Error::e_explain(ErrorType::ConnectionClosed, why)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Every request is answered in `request_filter`; Pingora never gets this far.
        Error::e_explain(
            ErrorType::InternalError,
            "requests are served in request_filter",
        )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if !ctx.response_started {
            let error =
                GatewayError::Internal(format!("the gateway failed: {}", e.etype().as_str()));
            self.answer_error(session, ctx, &error).await;
        }
        FailToProxy {
            error_code: ctx.status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        // Aborted streams are logged once, by `logging`, with the request's context.
        ctx.outcome == Outcome::ClientAborted || ctx.outcome == Outcome::UpstreamFailed
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let latency = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        let usage = ctx
            .observation
            .as_ref()
            .and_then(|o| o.usage)
            .unwrap_or_default();
        let (principal, team) = ctx
            .plugins
            .as_mut()
            .map(|r| {
                let v = r.get_mut().view();
                (v.principal.clone(), v.team.clone())
            })
            .unwrap_or_default();
        let info = ctx.info.as_ref();
        self.record_metrics(ctx, latency, usage, team.as_deref());
        tracing::info!(
            target: "gateway::request",
            request_id = %ctx.request_id,
            session_id = ctx.session_id.as_deref().unwrap_or("-"),
            front_door = ctx.front_door.map(FrontDoor::as_str).unwrap_or("-"),
            operation = info.map(|i| i.operation.as_str()).unwrap_or("-"),
            model = info.and_then(|i| i.model_id.as_deref()).unwrap_or("-"),
            model_served = ctx.model_served.as_deref().unwrap_or("-"),
            backend = ctx.backend.as_deref().unwrap_or("-"),
            principal = principal.as_deref().unwrap_or("-"),
            team = team.as_deref().unwrap_or("-"),
            denied_by = ctx.denied_by.as_deref().unwrap_or("-"),
            attempts = %ctx.attempts.join(" "),
            dropped_betas = %ctx.dropped_betas.join(","),
            status = ctx.status,
            outcome = ctx.outcome.as_str(),
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            cache_read_tokens = usage.cache_read_tokens,
            cache_write_tokens = usage.cache_write_tokens,
            latency_ms = latency.as_secs_f64() * 1000.0,
            ttfb_ms = ctx.time_to_first_byte.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(-1.0),
            request_bytes = ctx.request_bytes,
            response_bytes = ctx.response_bytes,
            stream_error = ctx.observation.as_ref().and_then(|o| o.stream_error.as_deref()).unwrap_or("-"),
            usage_parse_error = ctx.observation.as_ref().and_then(|o| o.parse_error.as_deref()).unwrap_or("-"),
            error = ctx.error.as_deref().unwrap_or("-"),
            "request"
        );
        // After the log line, so that no audit record is ever written before its request's line.
        if let Some(mut run) = ctx.plugins.take() {
            let view = run.get_mut().view_mut();
            if !ctx.attempts.is_empty() {
                view.metadata
                    .insert("gateway.attempts".into(), ctx.attempts.join(" "));
            }
            if ctx.outcome == Outcome::GatewayStopped {
                view.metadata
                    .insert("gateway.outcome".into(), ctx.outcome.as_str().into());
            }
            run.into_inner().complete(completion(ctx, latency));
        }
    }
}

/// Bytes of a request head as it came on the wire: request line and header lines.
fn request_head_size(head: &pingora_http::RequestHeader) -> u64 {
    let line = head.method.as_str().len()
        + head.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + "  HTTP/1.1\r\n".len();
    let headers: usize = head
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    (line + headers) as u64
}

/// The head of an answer the gateway holds whole (its own error, a translated error or token
/// count, a catalog listing).
fn whole_head(answer: &ErrorResponse, request_id: &str) -> Result<ResponseHeader, GatewayError> {
    let mut head = ResponseHeader::build(answer.status, Some(answer.headers.len() + 3))
        .map_err(|e| GatewayError::Internal(format!("response head: {e}")))?;
    let _ = head.insert_header("content-type", answer.content_type);
    let _ = head.insert_header("content-length", answer.body.len().to_string());
    let _ = head.insert_header("x-request-id", request_id);
    for (name, value) in &answer.headers {
        let _ = head.insert_header(*name, value.as_str());
    }
    Ok(head)
}

/// Writes an answer held whole: its head, then its body.
async fn write_whole(
    session: &mut Session,
    ctx: &mut RequestCtx,
    head: ResponseHeader,
    body: Bytes,
) -> Result<(), Stop> {
    ctx.response_started = true;
    session
        .write_response_header(Box::new(head), false)
        .await
        .map_err(|e| {
            Stop::Abort(
                Outcome::ClientAborted,
                format!("writing response head: {e}"),
            )
        })?;
    ctx.response_bytes = body.len();
    session
        .write_response_body(Some(body), true)
        .await
        .map_err(|e| Stop::Abort(Outcome::ClientAborted, format!("finishing response: {e}")))
}

/// Most bytes of already-arrived chunks joined into one write.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Appends to `arrived` the body chunks the upstream has already delivered (those a read
/// returns without waiting), up to [`COALESCE_LIMIT`] bytes. Returns whether the body ended
/// and the error that cut it, if one did.
fn take_ready_chunks(
    upstream: &mut UpstreamSession,
    arrived: &mut Vec<Bytes>,
) -> (bool, Option<Box<Error>>) {
    let mut total: usize = arrived.iter().map(Bytes::len).sum();
    while total < COALESCE_LIMIT {
        // Reading the body is cancel-safe (the loop above relies on it in `select!`): a read
        // that is not ready is dropped without losing anything.
        let read = std::pin::pin!(upstream.read_response_body());
        match poll_now(read) {
            Some(Ok(Some(chunk))) => {
                total += chunk.len();
                arrived.push(chunk);
            }
            Some(Ok(None)) => return (true, None),
            Some(Err(e)) => return (false, Some(e)),
            None => break,
        }
    }
    (false, None)
}

/// Polls a future once; its output if it was ready.
fn poll_now<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// One write out of `pieces` (emptied): the piece itself when there is one, else a copy of
/// them all.
fn join(pieces: &mut Vec<Bytes>) -> Option<Bytes> {
    match pieces.len() {
        0 => None,
        1 => pieces.pop(),
        _ => {
            let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
            for p in pieces.drain(..) {
                out.extend_from_slice(&p);
            }
            Some(out.freeze())
        }
    }
}

/// What plugins' `on-complete` is told about a finished request.
fn completion(ctx: &RequestCtx, latency: Duration) -> Completion {
    let usage = ctx
        .observation
        .as_ref()
        .and_then(|o| o.usage)
        .unwrap_or_default();
    Completion {
        status: ctx.status,
        outcome: match ctx.outcome {
            Outcome::Ok | Outcome::Pending => WitOutcome::Ok,
            Outcome::UpstreamError => WitOutcome::UpstreamError,
            Outcome::Rejected => WitOutcome::Rejected,
            Outcome::Denied => WitOutcome::Denied,
            // The contract's outcomes predate this one: the answer was cut after it started,
            // as when an upstream fails; `gateway.outcome` says which.
            Outcome::UpstreamFailed | Outcome::GatewayStopped => WitOutcome::UpstreamFailed,
            Outcome::ClientAborted => WitOutcome::ClientAborted,
        },
        usage: WitUsage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
        },
        latency_ms: latency.as_millis() as u64,
        time_to_first_token_ms: ctx.time_to_first_byte.map(|d| d.as_millis() as u64),
        request_bytes: ctx.request_bytes as u64,
        response_bytes: ctx.response_bytes as u64,
        backend: ctx.backend.as_deref().map(str::to_string),
        model_served: ctx.model_served.clone(),
        denied_by: ctx.denied_by.clone(),
    }
}
