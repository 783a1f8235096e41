//! Steps 1 and 2 of a request: its head through the front door, then its body, bounded.
//!
//! Both limits (`server.max_request_headers`, `server.max_request_body`) are checked before
//! anything is read past them; a request refused for its size or for a body that trickles in
//! past `server.client_body_timeout` leaves its connection unreusable, since its body is unread.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora_error::ErrorType;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::{Gateway, Stop};
use crate::frontdoor::RequestInfo;
use crate::protocol::error::GatewayError;

impl Gateway {
    /// Parses method and path through the front doors: the request as the client asked for it,
    /// and its path and query (for the plugins' view).
    pub(super) fn parse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(RequestInfo, String), Stop> {
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
            ctx.set_front_door(match &parsed {
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
        match parsed {
            Ok(info) => {
                ctx.set_info(info.clone());
                Ok((info, path))
            }
            Err((front_door, e)) => {
                ctx.set_front_door(front_door);
                Err(e.into())
            }
        }
    }

    /// Reads the request body up to `max_request_body`.
    pub(super) async fn read_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Bytes, Stop> {
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
        let deadline = ctx.started().unwrap_or_else(Instant::now) + self.limits.client_body_timeout;
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
        ctx.set_request_bytes(body.len());
        Ok(body.freeze())
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
