//! One exchange with one backend, up to the answer's head: connect (or reuse a pooled
//! connection), write the request, wait for the head within the first-byte timeout, all while
//! watching the client and the gateway's stop.
//!
//! What fails here has sent nothing to the client, so the failover loop may try the next
//! backend; the [`FailureKind`] is what the attempts log and the failover decision see.

use std::time::Duration;

use bytes::Bytes;
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_proxy::Session;

use super::ctx::Outcome;
use super::{Gateway, Stop};
use crate::protocol::error::GatewayError;

/// How an exchange failed before an answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// No connection could be made.
    ConnectError,
    /// The answer's head did not come within the first-byte timeout.
    Timeout,
    /// The connection broke while the request was written or the head read.
    Broken,
}

impl FailureKind {
    /// The name in the attempts log (`backend:connect-error`).
    pub(super) fn as_str(self) -> &'static str {
        match self {
            FailureKind::ConnectError => "connect-error",
            FailureKind::Timeout => "timeout",
            FailureKind::Broken => "error",
        }
    }
}

/// Why an upstream exchange failed before an answer came: its kind and the error to answer
/// with when no other backend is left.
pub(super) struct SendFailure {
    pub(super) kind: FailureKind,
    pub(super) error: GatewayError,
}

impl Gateway {
    /// Connects, writes the request and waits for the response head. A pooled connection that
    /// turns out to be closed is retried once on a fresh one, since the upstream never saw the request.
    pub(super) async fn send(
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
                        kind: FailureKind::ConnectError,
                        error: GatewayError::Unavailable(format!(
                            "backend {backend} is unreachable: {}",
                            e.etype().as_str()
                        )),
                    })?;
            let answered = match write_request(&mut upstream, &header, &body).await {
                Ok(()) => {
                    // Pingora's own read timeout (a lazily registered timer) rather than a
                    // tokio timeout around the read.
                    upstream.set_read_timeout(Some(first_byte));
                    match upstream.read_response_header().await {
                        Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                            return Err(SendFailure {
                                kind: FailureKind::Timeout,
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
                Err(e) => return Err(broken(backend, e.etype().as_str())),
            }
        }
        Err(broken(backend, &last_error))
    }

    /// Waits for `upstream` (a send, up to the answer's head) while watching the client: a
    /// client that hangs up releases the upstream at once (the send is dropped with its
    /// connection), and so does the end of the grace period when the gateway stops.
    pub(super) async fn while_client_waits<T>(
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
}

/// Writes the request head and body (the head is cloned: a stale pooled connection retries it).
async fn write_request(
    upstream: &mut UpstreamSession,
    header: &pingora_http::RequestHeader,
    body: &Bytes,
) -> Result<(), Box<Error>> {
    upstream
        .write_request_header(Box::new(header.clone()))
        .await?;
    if !body.is_empty() {
        upstream.write_request_body(body.clone(), true).await?;
    }
    upstream.finish_request_body().await
}

/// The exchange broke before an answer came.
fn broken(backend: &str, why: &str) -> SendFailure {
    SendFailure {
        kind: FailureKind::Broken,
        error: GatewayError::Unavailable(format!(
            "backend {backend} failed before answering: {why}"
        )),
    }
}
