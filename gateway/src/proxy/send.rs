//! One exchange with one backend, up to the answer's head: connect (or reuse a pooled
//! connection), write the request, wait for the head within the first-byte timeout, all while
//! watching the client and the gateway's stop.
//!
//! What fails here has sent nothing to the client, so the failover loop may try the next
//! backend; the [`UpstreamFailure`] (its kind, whether it is retryable, Pingora's error) is
//! what the attempts log and the failover decision see.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_proxy::Session;

use super::ctx::Outcome;
use super::{Gateway, Stop};
use crate::protocol::error::GatewayError;
use crate::upstream::error::UpstreamFailure;

impl Gateway {
    /// Connects, writes the request and waits for the response head. A pooled connection that
    /// turns out to be closed is retried once on a fresh one, since the upstream never saw the request.
    pub(super) async fn send(
        &self,
        peer: &HttpPeer,
        header: pingora_http::RequestHeader,
        body: Bytes,
        backend: &Arc<str>,
        first_byte: Duration,
    ) -> Result<UpstreamSession, UpstreamFailure> {
        let mut retried = false;
        loop {
            let (mut upstream, reused) = self
                .connector
                .get_http_session(peer)
                .await
                .map_err(|e| UpstreamFailure::connect(backend, e))?;
            let answered = match write_request(&mut upstream, &header, &body).await {
                Ok(()) => {
                    // Pingora's own read timeout (a lazily registered timer) rather than a
                    // tokio timeout around the read.
                    upstream.set_read_timeout(Some(first_byte));
                    match upstream.read_response_header().await {
                        Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                            return Err(UpstreamFailure::first_byte_timeout(backend, first_byte, e))
                        }
                        r => r,
                    }
                }
                Err(e) => Err(e),
            };
            match answered {
                Ok(()) => return Ok(upstream),
                Err(e) if reused => {
                    tracing::debug!(backend = %backend, error = %e, "pooled upstream connection was stale; retrying on a new one");
                    if retried {
                        return Err(UpstreamFailure::stale_connections(backend, e));
                    }
                    retried = true;
                }
                Err(e) => return Err(UpstreamFailure::send(backend, e)),
            }
        }
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
