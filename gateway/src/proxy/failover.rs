//! Steps 4 and 5 of a request: the plan's backends in turn, each prepared (translated and
//! signed for its protocol) and sent, until one answers.
//!
//! [`fails_over`] is the whole policy: a backend that failed before answering with a retryable
//! [`UpstreamFailure`] (it could not be prepared, could not be reached, did not answer within
//! the first-byte timeout, broke before answering), or answered 429 or 5xx, hands the request
//! to the next one, as long as nothing has reached the client and it is not the last. The
//! last one's answer, whatever it is, goes to the client unchanged; its failure is rendered
//! as a [`GatewayError`] only then. Each failure to send or answer also counts against the
//! backend's passive health.

use std::fmt::Display;

use bytes::Bytes;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::{ClientRequest, Gateway, Stop};
use crate::protocol::error::GatewayError;
use crate::upstream::error::{PrepareError, UpstreamFailure};
use crate::upstream::route::Candidate;
use crate::upstream::{Backend, UpstreamRequest};
use crate::wire::translate::{self, Target};

/// How one backend took the request, as failover sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tried {
    /// No answer came: it could not be prepared, reached, or failed before answering; whether
    /// another backend may take the request is the failure's to say.
    Failed {
        /// [`UpstreamFailure::is_retryable`].
        retryable: bool,
    },
    /// It answered with this status.
    Answered(u16),
}

impl From<&UpstreamFailure> for Tried {
    #[inline]
    fn from(failure: &UpstreamFailure) -> Self {
        Tried::Failed {
            retryable: failure.is_retryable(),
        }
    }
}

/// Whether a status says the backend could not take the request now (and another may).
#[inline]
pub(super) fn retryable_status(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Whether the request moves on to the next backend after `tried`: only before anything
/// reached the client, never from the last backend (its answer or error is the client's).
#[inline]
pub(super) fn fails_over(tried: Tried, last: bool, response_started: bool) -> bool {
    if last || response_started {
        return false;
    }
    match tried {
        Tried::Failed { retryable } => retryable,
        Tried::Answered(status) => retryable_status(status),
    }
}

impl Gateway {
    /// Tries each candidate in turn until one answers, then serves its answer.
    pub(super) async fn try_backends(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        request: &ClientRequest,
        plan: &[Candidate],
    ) -> Result<(), Stop> {
        let first_byte = self.upstreams.timeouts().first_byte.0;
        for (i, candidate) in plan.iter().enumerate() {
            let last = i + 1 == plan.len();
            let backend = &candidate.backend;
            ctx.try_backend(&backend.name, candidate.model.clone());
            let prepared = match self.prepare(session, ctx, request, candidate) {
                Ok(p) => p,
                Err(cause) => {
                    let failure = UpstreamFailure::unprepared(&backend.name, cause);
                    if !fails_over(Tried::from(&failure), last, ctx.response_started()) {
                        return Err(GatewayError::from(failure).into());
                    }
                    tracing::info!(request_id = %ctx.request_id(), backend = %backend.name, error = %failure, "backend skipped: the request cannot be prepared for it");
                    ctx.push_attempt(&backend.name, failure.attempt_label());
                    continue;
                }
            };
            let UpstreamRequest { peer, header, body } = prepared;
            let sent = self.send(&peer, header, body, &backend.name, first_byte);
            // Boxed, like the steps before it: a send's future is not kept for a stream's life.
            let upstream = match Box::pin(self.while_client_waits(session, sent)).await? {
                Ok(upstream) => upstream,
                Err(failure) => {
                    ctx.push_attempt(&backend.name, failure.attempt_label());
                    self.record_health(backend, false);
                    if !fails_over(Tried::from(&failure), last, ctx.response_started()) {
                        return Err(GatewayError::from(failure).into());
                    }
                    self.failover(ctx, backend, &failure);
                    continue;
                }
            };
            let status = upstream
                .response_header()
                .map(|h| h.status.as_u16())
                .unwrap_or(0);
            self.record_health(backend, !retryable_status(status));
            ctx.push_attempt(&backend.name, status);
            if fails_over(Tried::Answered(status), last, ctx.response_started()) {
                // Nothing has reached the client yet; the answer is dropped with its connection.
                self.failover(ctx, backend, &format_args!("status {status}"));
                continue;
            }
            return self
                .answer_upstream(session, ctx, upstream, peer, &request.info, backend)
                .await;
        }
        Err(GatewayError::Unavailable("no backend could take the request".into()).into())
    }

    /// Translates and signs the request for one candidate backend.
    fn prepare(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        request: &ClientRequest,
        candidate: &Candidate,
    ) -> Result<UpstreamRequest, PrepareError> {
        let backend = &candidate.backend;
        let client = session.req_header();
        let headers = request.edited_headers.as_ref().unwrap_or(&client.headers);
        let (project, region) = backend.vertex_location();
        let target = Target {
            kind: backend.kind(),
            model: candidate.model.as_deref().unwrap_or_default(),
            project,
            region,
            betas: &backend.betas,
        };
        let body: &Bytes = &request.body;
        let requested_model = request.requested_model.as_deref();
        let outgoing = translate::request(&request.info, requested_model, &target, headers, body)?;
        if !outgoing.dropped_betas.is_empty() {
            tracing::info!(
                request_id = %ctx.request_id(),
                backend = %backend.name,
                dropped = %outgoing.dropped_betas.join(","),
                "dropped anthropic-beta values the backend does not accept"
            );
            ctx.note_dropped_betas(&outgoing.dropped_betas);
        }
        let prepared =
            self.upstreams
                .prepare(backend, outgoing, &client.method, headers, ctx.request_id())?;
        Ok(prepared)
    }

    /// Counts one answer for or against the backend's passive health.
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

    /// Logs and counts a failover away from `backend`.
    fn failover(&self, ctx: &RequestCtx, backend: &Backend, why: &dyn Display) {
        tracing::info!(request_id = %ctx.request_id(), backend = %backend.name, reason = %why, "failing over to the next backend");
        self.metrics
            .failovers
            .with_label_values(&[&backend.name])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use pingora_error::{Error, ErrorType};

    use super::*;
    use crate::wire::error::TranslateError;

    /// One failure of each kind, as the data plane builds them.
    fn every_failure() -> Vec<UpstreamFailure> {
        let b: Arc<str> = Arc::from("b");
        vec![
            UpstreamFailure::unprepared(
                &b,
                TranslateError::BedrockOnly {
                    operation: "converse",
                },
            ),
            UpstreamFailure::unprepared(&b, GatewayError::Unavailable("no token yet".into())),
            UpstreamFailure::connect(&b, Error::new(ErrorType::ConnectRefused)),
            UpstreamFailure::connect(&b, Error::new(ErrorType::TLSHandshakeFailure)),
            UpstreamFailure::first_byte_timeout(
                &b,
                Duration::from_secs(30),
                Error::new(ErrorType::ReadTimedout),
            ),
            UpstreamFailure::send(&b, Error::new(ErrorType::ConnectionClosed)),
            UpstreamFailure::stale_connections(&b, Error::new(ErrorType::ConnectionClosed)),
        ]
    }

    fn every_failure_tried() -> Vec<Tried> {
        every_failure().iter().map(Tried::from).collect()
    }

    #[test]
    fn failures_before_an_answer_fail_over() {
        for failure in every_failure() {
            assert!(
                fails_over(Tried::from(&failure), false, false),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn a_failure_that_is_not_retryable_goes_to_the_client() {
        assert!(!fails_over(
            Tried::Failed { retryable: false },
            false,
            false
        ));
    }

    #[test]
    fn throttling_and_server_errors_fail_over() {
        for status in [429, 500, 502, 503, 504, 529] {
            assert!(
                fails_over(Tried::Answered(status), false, false),
                "{status}"
            );
        }
    }

    #[test]
    fn answers_and_client_errors_go_to_the_client() {
        for status in [200, 201, 204, 301, 400, 401, 403, 404, 408, 413, 422, 428] {
            assert!(
                !fails_over(Tried::Answered(status), false, false),
                "{status}"
            );
        }
    }

    #[test]
    fn the_last_backend_answers_whatever_happened() {
        for tried in every_failure_tried()
            .into_iter()
            .chain([429, 500, 503, 200, 400].map(Tried::Answered))
        {
            assert!(!fails_over(tried, true, false), "{tried:?}");
        }
    }

    #[test]
    fn nothing_fails_over_once_the_client_has_bytes() {
        for tried in every_failure_tried()
            .into_iter()
            .chain([429, 500, 503].map(Tried::Answered))
        {
            assert!(!fails_over(tried, false, true), "{tried:?}");
        }
    }

    #[test]
    fn health_counts_throttling_and_server_errors_against_a_backend() {
        assert!(retryable_status(429));
        assert!(retryable_status(500));
        assert!(retryable_status(599));
        assert!(!retryable_status(200));
        assert!(!retryable_status(404));
        assert!(!retryable_status(499));
    }

    #[test]
    fn the_last_backends_failure_is_answered_with_its_own_status() {
        let statuses: Vec<u16> = every_failure()
            .into_iter()
            .map(|f| GatewayError::from(f).status())
            .collect();
        assert_eq!(statuses, [400, 503, 503, 503, 503, 503, 503]);
    }
}
