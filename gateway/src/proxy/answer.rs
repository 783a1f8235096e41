//! Step 6 of a request, for answers held whole, and where every answer starts.
//!
//! [`Gateway::answer_upstream`] takes the upstream's answer once its head came and sends it
//! down one of two paths: answers translated whole (a token count or an error crossing
//! providers, both small) are read here, bounded by [`MAX_BUFFERED_ANSWER`], and written in
//! one piece; everything else streams (`stream.rs`). The gateway's own answers are written
//! here too: its errors, rendered in the client's protocol in one place
//! ([`Gateway::answer_error`]), and the catalog's listings, whose JSON the catalog builds.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::{Outcome, RequestCtx};
use super::{Gateway, Stop};
use crate::catalog;
use crate::frontdoor::{FrontDoor, RequestInfo};
use crate::protocol::error::{ErrorResponse, GatewayError};
use crate::upstream::route::Router;
use crate::upstream::{Backend, POOL_IDLE_TIMEOUT};
use crate::wire::translate::ResponseTranslation;
use crate::wire::usage::{ResponseShape, UsageObserver};

/// Largest answer read whole for translation (token counts and error bodies are far smaller).
const MAX_BUFFERED_ANSWER: usize = 1024 * 1024;

/// An upstream answer whose head has come, on its way to the client.
pub(super) struct UpstreamAnswer {
    /// The connection, to read the body from (and to pool again once it is read).
    pub(super) session: UpstreamSession,
    /// Where it goes back to in the pool.
    pub(super) peer: HttpPeer,
    /// The upstream's status.
    pub(super) status: u16,
    /// The upstream's headers.
    pub(super) headers: http::HeaderMap,
    /// Reads usage from the answer as it passes.
    pub(super) observer: UsageObserver,
    /// How the answer changes when it crossed providers.
    pub(super) translation: ResponseTranslation,
}

impl Gateway {
    /// Serves the answer of the backend that took the request (its head already read): whole
    /// when it is translated whole, streamed otherwise.
    pub(super) async fn answer_upstream(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut upstream: UpstreamSession,
        peer: HttpPeer,
        info: &RequestInfo,
        backend: &Backend,
    ) -> Result<(), Stop> {
        ctx.mark_first_byte();
        let kind = backend.kind();
        let upstream_head = upstream
            .response_header()
            .ok_or_else(|| GatewayError::Internal("upstream response head missing".into()))?;
        let status = upstream_head.status.as_u16();
        let headers = upstream_head.headers.clone();
        let started = ctx.started().unwrap_or_else(Instant::now);
        let translation =
            ResponseTranslation::choose(info.front_door, kind, info.operation, status, started);
        let mut observer = UsageObserver::new(if status < 400 {
            ResponseShape::of(info.operation, kind)
        } else {
            ResponseShape::Opaque
        });
        observer.observe_headers(&headers);
        ctx.set_status(status);
        upstream.set_read_timeout(Some(self.upstreams.timeouts().idle.0));
        let answer = UpstreamAnswer {
            session: upstream,
            peer,
            status,
            headers,
            observer,
            translation,
        };
        if answer.translation.buffers() {
            self.answer_whole(session, ctx, answer, &backend.name).await
        } else {
            self.answer_stream(session, ctx, answer, &backend.name)
                .await
        }
    }

    /// Reads a small answer whole, translates it and writes it in one piece.
    async fn answer_whole(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        answer: UpstreamAnswer,
        backend: &str,
    ) -> Result<(), Stop> {
        let UpstreamAnswer {
            session: mut upstream,
            peer,
            status,
            headers,
            observer,
            translation,
        } = answer;
        let body = read_whole_answer(&mut upstream, backend).await?;
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let rendered = translation.whole(status, &body, retry_after);
        let mut head = whole_head(&rendered, ctx.request_id())?;
        self.plugin_response_headers(ctx, status, &headers, &mut head)
            .await;
        ctx.set_status(rendered.status);
        write_whole(session, ctx, head, rendered.body).await?;
        ctx.set_observation(observer.finish(true));
        ctx.settle(Outcome::of_upstream_status(status));
        self.release_upstream(upstream, &peer).await;
        Ok(())
    }

    /// Gives a fully read upstream connection back to the pool (one not fully read is
    /// dropped, which closes it).
    pub(super) async fn release_upstream(&self, mut upstream: UpstreamSession, peer: &HttpPeer) {
        if upstream.response_done() {
            self.connector
                .release_http_session(upstream, peer, Some(POOL_IDLE_TIMEOUT))
                .await;
        }
    }

    /// Writes a gateway error in the client's protocol.
    pub(super) async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &GatewayError,
    ) {
        let front_door = ctx.front_door().unwrap_or(FrontDoor::Bedrock);
        let rendered = error.render(front_door);
        ctx.set_status(rendered.status);
        let outcome = match error {
            GatewayError::Denied { .. } => Outcome::Denied,
            GatewayError::ShuttingDown(_) => Outcome::GatewayStopped,
            _ => Outcome::Rejected,
        };
        ctx.settle_with_error(outcome, error.to_string());
        if let Ok(head) = whole_head(&rendered, ctx.request_id()) {
            // The client may be gone; there is nobody left to tell.
            let _ = write_whole(session, ctx, head, rendered.body).await;
        }
    }

    /// Answers Bedrock's `GET /inference-profiles` from the model catalog: the system-defined
    /// profiles of the models some backend serves to Bedrock clients.
    pub(super) async fn answer_inference_profiles(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        router: &Router,
        info: &RequestInfo,
    ) -> Result<(), Stop> {
        let query = info.upstream_path.split_once('?').map_or("", |(_, q)| q);
        // The catalog knows no application profiles (those are an account's own).
        let application_only = query.split('&').any(|kv| kv == "type=APPLICATION");
        let models = if application_only {
            Vec::new()
        } else {
            router.servable_models(&self.upstreams, FrontDoor::Bedrock)
        };
        let body = catalog::inference_profiles(&models);
        self.answer_json(session, ctx, body).await
    }

    /// Answers `GET /v1/models` (and `/v1/models/{id}`) from the model catalog: the models
    /// some backend can serve to this front door.
    pub(super) async fn answer_models(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        router: &Router,
        info: &RequestInfo,
    ) -> Result<(), Stop> {
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
                catalog::model_object(found)
            }
            None => catalog::model_list(&models),
        };
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
        let head = whole_head(&answer, ctx.request_id())?;
        ctx.set_status(200);
        write_whole(session, ctx, head, answer.body).await?;
        ctx.settle(Outcome::Ok);
        Ok(())
    }
}

/// Reads an answer that is translated whole, up to [`MAX_BUFFERED_ANSWER`].
async fn read_whole_answer(
    upstream: &mut UpstreamSession,
    backend: &str,
) -> Result<BytesMut, Stop> {
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
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(GatewayError::Unavailable(format!(
                    "backend {backend} failed mid-answer: {}",
                    e.etype().as_str()
                ))
                .into())
            }
        }
    }
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
    ctx.mark_response_started();
    session
        .write_response_header(Box::new(head), false)
        .await
        .map_err(|e| {
            Stop::Abort(
                Outcome::ClientAborted,
                format!("writing response head: {e}"),
            )
        })?;
    ctx.set_response_bytes(body.len());
    session
        .write_response_body(Some(body), true)
        .await
        .map_err(|e| Stop::Abort(Outcome::ClientAborted, format!("finishing response: {e}")))
}
