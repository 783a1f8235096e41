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
//! [`Gateway::serve`] names the steps; each lives in the file named for it:
//! - `request.rs`: parse the head through its front door, read the body (bounded);
//! - `pipeline.rs`: the plugins' `on-request` (deny, rewrite, edit headers) and `on-response`;
//! - `failover.rs`: the plan's backends in turn, and which outcomes move on to the next;
//! - `send.rs`: one exchange with one backend, up to the answer's head, while the client waits;
//! - `answer.rs`: answers held whole (the gateway's own errors and catalog listings, upstream
//!   answers translated whole);
//! - `stream.rs`: the streamed answer, chunk by chunk;
//! - `log.rs`: the log line, metrics and the plugins' `on-complete`;
//! - `ctx.rs`: [`RequestCtx`], which each step above writes its own part of.
//!
//! Invariants kept here:
//! - client credentials never go upstream (see [`crate::upstream::forwards_request_header`]);
//! - the answer is never buffered: each upstream chunk is written to the client as soon as it
//!   is read, as the same `Bytes` handle (chunks that arrived together are joined into one
//!   write; across providers, the events a chunk completes are written), and the usage
//!   observer only looks at it;
//! - failover happens only before the first byte to the client;
//! - a client that goes away mid-stream makes the gateway drop the upstream connection at
//!   once, instead of paying for tokens nobody reads; while the upstream has not answered yet,
//!   a client hang-up or the gateway's stop ends the wait;
//! - errors the gateway decides are rendered in the client's protocol; upstream errors pass
//!   through unchanged.

mod answer;
mod ctx;
mod failover;
mod log;
mod pipeline;
mod request;
mod send;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use arc_swap::ArcSwap;

use crate::frontdoor::{FrontDoors, Operation, RequestInfo};
use crate::lifecycle::Lifecycle;
use crate::plugin::Pipeline;
use crate::protocol::error::GatewayError;
use crate::upstream::route::Router;
use crate::upstream::Upstreams;

pub use ctx::{Outcome, RequestCtx, SyncCell};

/// Why serving a request stopped early.
enum Stop {
    /// Answer with this error in the client's protocol (nothing has been sent yet).
    Answer(GatewayError),
    /// The response had started; the connection must be closed to signal a cut answer.
    Abort(Outcome, String),
}

impl From<GatewayError> for Stop {
    fn from(e: GatewayError) -> Self {
        Stop::Answer(e)
    }
}

/// The client's request as the steps before the upstream left it: what every backend tried
/// is sent (each translated and signed for itself).
struct ClientRequest {
    /// The parsed request, with the model as the plugins left it.
    info: RequestInfo,
    /// The model as the client named it (before any plugin rewrite).
    requested_model: Option<String>,
    /// The headers as plugins edited them; `None` without plugins (the client's are used).
    edited_headers: Option<http::HeaderMap>,
    /// The whole body.
    body: Bytes,
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

    /// Serves one request, step by step; `Err` says how it stopped early.
    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Stop> {
        // 1. Which front door, which operation, which model.
        let (info, path) = self.parse(session, ctx)?;

        // 2. The whole body, bounded, because the signature covers its hash. The Anthropic
        //    and Vertex protocols put the model or `stream` in it.
        // The steps before the answer run boxed: their futures (the plugins' above all) would
        // otherwise stay part of the request's future, and of its memory, for as long as a
        // stream is open.
        let body = Box::pin(self.read_body(session, ctx)).await?;
        let mut info = info;
        info.complete_from_body(&body)?;
        ctx.set_info(info.clone());
        let requested_model = info.model_id.clone();

        // 3. The plugins: they may deny, rewrite the model, edit headers, set the identity.
        let edited_headers =
            Box::pin(self.run_plugins(session, ctx, &mut info, path, &body)).await?;
        ctx.set_model_served(info.model_id.clone());
        let router = self.router.load_full();
        if info.operation == Operation::ListModels {
            return self.answer_models(session, ctx, &router, &info).await;
        }

        // 4. Which backends, in which order.
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

        // 5. Each backend in turn until one answers, then 6. its answer, whole or streamed.
        let request = ClientRequest {
            info,
            requested_model,
            edited_headers,
            body,
        };
        self.try_backends(session, ctx, &request, &plan).await
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

/// Claude Code's `X-Claude-Code-Session-Id`, cut to 128 characters.
fn session_id(session: &Session) -> Option<String> {
    session
        .req_header()
        .headers
        .get("x-claude-code-session-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(128).collect())
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
        let started = Instant::now();
        // A client that stops reading its answer is dropped instead of holding the stream.
        session.set_write_timeout(Some(self.limits.client_write_timeout));
        ctx.begin(started, request_id(session), session_id(session));
        match self.serve(session, ctx).await {
            Ok(()) => Ok(true),
            Err(Stop::Answer(e)) => {
                self.answer_error(session, ctx, &e).await;
                Ok(true)
            }
            Err(Stop::Abort(outcome, why)) => {
                ctx.settle_with_error(outcome, why.clone());
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
        // A request that ended on purpose (the client left, the gateway stopped) keeps its
        // outcome; only a real failure before any answer is told to the client.
        let ended = matches!(
            ctx.outcome(),
            Outcome::ClientAborted | Outcome::GatewayStopped
        );
        if !ctx.response_started() && !ended {
            let error =
                GatewayError::Internal(format!("the gateway failed: {}", e.etype().as_str()));
            self.answer_error(session, ctx, &error).await;
        }
        FailToProxy {
            error_code: ctx.status(),
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        // Aborted streams are logged once, by `logging`, with the request's context.
        matches!(
            ctx.outcome(),
            Outcome::ClientAborted | Outcome::UpstreamFailed | Outcome::GatewayStopped
        )
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.log(ctx);
    }
}
