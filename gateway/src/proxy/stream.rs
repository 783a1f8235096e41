//! Step 6 of a request, for answers that stream: the head passes through (minus hop-by-hop
//! headers, re-framed as chunked when it has no length), then each body chunk goes to the
//! client as soon as it is read, translated per event when it crossed providers.
//!
//! Chunks that had already arrived together leave in one write ([`take_ready_chunks`],
//! [`join`]); a chunk that arrived alone is passed on as the same `Bytes` handle, never
//! copied, and nothing is ever waited for to fill a write. While the body streams the
//! gateway watches the client (a hang-up drops the upstream connection, so nothing more is
//! read or paid for) and its own stop (the end of the grace period cuts the stream).
//!
//! The loop reads the upstream inside `select!`, and [`take_ready_chunks`] polls a read once
//! and drops it when it is not ready: both rely on Pingora's body reads being cancel-safe
//! (a read future dropped before it completes loses no bytes), which the tests below check
//! against a real Pingora client session.

use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_error::Error;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::answer::UpstreamAnswer;
use super::ctx::{Outcome, RequestCtx};
use super::{Gateway, Stop};
use crate::protocol::error::GatewayError;
use crate::upstream::forwards_response_header;
use crate::wire::error::TranslateError;
use crate::wire::translate::ResponseTranslation;
use crate::wire::usage::UsageObserver;

/// Most bytes of already-arrived chunks joined into one write.
const COALESCE_LIMIT: usize = 64 * 1024;

impl Gateway {
    /// Streams the answer (its head already read) to the client, translated when it crossed
    /// providers.
    pub(super) async fn answer_stream(
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
            mut observer,
            mut translation,
        } = answer;
        let mut head = stream_head(status, &headers, &translation, ctx.request_id())?;
        self.plugin_response_headers(ctx, status, &headers, &mut head)
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
        ctx.mark_response_started();

        let relayed = self
            .relay(
                session,
                ctx,
                &mut upstream,
                &mut observer,
                &mut translation,
                backend,
            )
            .await;
        ctx.set_observation(observer.finish(relayed.is_ok()));
        // On a stop, returning drops `upstream`, which closes the upstream connection:
        // nothing more is read or paid for.
        relayed?;
        session
            .write_response_body(None, true)
            .await
            .map_err(|e| Stop::Abort(Outcome::ClientAborted, format!("finishing response: {e}")))?;
        ctx.settle(Outcome::of_upstream_status(status));
        self.release_upstream(upstream, &peer).await;
        Ok(())
    }

    /// Moves the body from the upstream to the client until it ends, the upstream fails, the
    /// client goes away or the gateway's grace period ends.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        upstream: &mut UpstreamSession,
        observer: &mut UsageObserver,
        translation: &mut ResponseTranslation,
        backend: &str,
    ) -> Result<(), Stop> {
        let cut = |why: String| Stop::Abort(Outcome::UpstreamFailed, why);
        let translating = !matches!(translation, ResponseTranslation::None);
        let mut translated = Vec::new();
        let mut arrived: Vec<Bytes> = Vec::new();
        // Registered once per stream, woken only when the gateway's grace period ends.
        let stopped = self.lifecycle.stopped();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                chunk = upstream.read_response_body() => match chunk {
                    Ok(Some(chunk)) => {
                        // Chunks that arrived together leave together: what the upstream sent
                        // in one burst costs one write to the client, not one per chunk. A
                        // chunk that arrived alone is passed on as the same `Bytes` handle.
                        arrived.push(chunk);
                        let (ended, failed) = take_ready_chunks(upstream, &mut arrived);
                        for chunk in &arrived {
                            observer.observe(chunk);
                        }
                        let out = if translating {
                            translate_burst(translation, &mut arrived, &mut translated).map_err(|e| {
                                cut(format!("backend {backend} sent a stream that cannot be translated: {e}"))
                            })?
                        } else {
                            join(&mut arrived)
                        };
                        if let Some(out) = out {
                            ctx.add_response_bytes(out.len());
                            if let Err(e) = session.write_response_body(Some(out), false).await {
                                return Err(Stop::Abort(Outcome::ClientAborted, format!("writing to client: {e}")));
                            }
                        }
                        if let Some(e) = failed {
                            return Err(cut(format!("backend {backend} failed mid-answer: {e}")));
                        }
                        if ended {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(cut(format!("backend {backend} failed mid-answer: {e}"))),
                },
                // The request body is done, so this only returns when the client hangs up.
                gone = session.downstream_session.read_body_or_idle(true) => {
                    let why = match gone { Err(e) => e.to_string(), Ok(_) => "closed".into() };
                    return Err(Stop::Abort(Outcome::ClientAborted, format!("client went away: {why}")));
                }
                () = &mut stopped => {
                    return Err(Stop::Abort(Outcome::GatewayStopped, "the gateway stopped: its grace period ended before the answer did".into()));
                }
            }
        }
    }
}

/// The head of a streamed answer: the upstream's, minus hop-by-hop headers, with the
/// translated content type and the request ID.
fn stream_head(
    status: u16,
    upstream_headers: &http::HeaderMap,
    translation: &ResponseTranslation,
    request_id: &str,
) -> Result<ResponseHeader, GatewayError> {
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
    let _ = head.insert_header("x-request-id", request_id);
    // An answer without a length (every stream) is re-framed as chunked for HTTP/1.1
    // clients; without it the client could only read to the end of the connection, which
    // costs a new connection per stream and hides truncation.
    if !head.headers.contains_key(http::header::CONTENT_LENGTH)
        && head.status != http::StatusCode::NO_CONTENT
    {
        let _ = head.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    Ok(head)
}

/// Translates the chunks that arrived together (emptying `arrived`) into one write.
#[inline]
fn translate_burst(
    translation: &mut ResponseTranslation,
    arrived: &mut Vec<Bytes>,
    translated: &mut Vec<Bytes>,
) -> Result<Option<Bytes>, TranslateError> {
    for chunk in arrived.drain(..) {
        translation.chunk(&chunk, translated)?;
    }
    Ok(join(translated))
}

/// Appends to `arrived` the body chunks the upstream has already delivered (those a read
/// returns without waiting), up to [`COALESCE_LIMIT`] bytes. Returns whether the body ended
/// and the error that cut it, if one did.
fn take_ready_chunks(
    upstream: &mut UpstreamSession,
    arrived: &mut Vec<Bytes>,
) -> (bool, Option<Box<Error>>) {
    let mut total: usize = arrived.iter().map(Bytes::len).sum();
    while total < COALESCE_LIMIT {
        // Reading the body is cancel-safe (see the module docs and the tests): a read that is
        // not ready is dropped without losing anything.
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use pingora_core::connectors::http::Connector;
    use pingora_core::upstreams::peer::HttpPeer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// A tiny upstream on a loopback socket: it reads one request head, then writes each
    /// piece the test sends it, one `write_all` per piece, acknowledging each once written.
    struct Upstream {
        pieces: mpsc::UnboundedSender<(Vec<u8>, oneshot::Sender<()>)>,
    }

    impl Upstream {
        async fn start() -> (Self, SocketAddr) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, oneshot::Sender<()>)>();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    socket.read_exact(&mut byte).await.unwrap();
                    head.push(byte[0]);
                }
                while let Some((piece, written)) = rx.recv().await {
                    socket.write_all(&piece).await.unwrap();
                    socket.flush().await.unwrap();
                    let _ = written.send(());
                }
            });
            (Self { pieces: tx }, addr)
        }

        /// Writes `piece` and waits until it is in the client's socket.
        async fn send(&self, piece: &[u8]) {
            let (written, done) = oneshot::channel();
            self.pieces.send((piece.to_vec(), written)).unwrap();
            done.await.unwrap();
            // Loopback delivers a write at once; leave the kernel a moment all the same.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A Pingora client session to `addr` that has sent `GET /` and read the answer's head,
    /// which the upstream sends as `head`.
    async fn session_after_head(
        upstream: &Upstream,
        addr: SocketAddr,
        head: &[u8],
    ) -> UpstreamSession {
        let peer = HttpPeer::new(addr, false, String::new());
        let (mut session, _) = Connector::new(None).get_http_session(&peer).await.unwrap();
        let mut request = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        request.insert_header("host", "upstream").unwrap();
        session
            .write_request_header(Box::new(request))
            .await
            .unwrap();
        session.finish_request_body().await.unwrap();
        upstream.send(head).await;
        session.read_response_header().await.unwrap();
        session
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

    /// Polls one read once and drops it: what `select!` and `take_ready_chunks` do.
    fn read_once(session: &mut UpstreamSession) -> Option<Option<Bytes>> {
        let read = std::pin::pin!(session.read_response_body());
        poll_now(read).map(|r| r.unwrap())
    }

    /// Sends the body in `pieces`, and around each one polls reads once and drops them (when
    /// nothing new has come, and again until nothing is ready); then reads to the end. What
    /// the reads returned, and how many reads were dropped pending.
    async fn read_with_dropped_polls(
        upstream: &Upstream,
        session: &mut UpstreamSession,
        pieces: &[&[u8]],
    ) -> (Vec<u8>, usize) {
        let mut got = Vec::new();
        let (mut ended, mut dropped) = (false, 0);
        for piece in pieces {
            // Nothing new is there: the read is pending, and dropped.
            if !ended {
                match read_once(session) {
                    None => dropped += 1,
                    Some(Some(b)) => got.extend_from_slice(&b),
                    Some(None) => ended = true,
                }
            }
            upstream.send(piece).await;
            while !ended {
                match read_once(session) {
                    None => {
                        dropped += 1;
                        break;
                    }
                    Some(Some(b)) => got.extend_from_slice(&b),
                    Some(None) => ended = true,
                }
            }
        }
        while !ended {
            let read = tokio::time::timeout(Duration::from_secs(5), session.read_response_body());
            match read.await.expect("the body ends").unwrap() {
                Some(b) => got.extend_from_slice(&b),
                None => ended = true,
            }
        }
        (got, dropped)
    }

    #[tokio::test]
    async fn a_chunked_body_read_dropped_before_it_completes_loses_nothing() {
        let (upstream, addr) = Upstream::start().await;
        let mut session = session_after_head(&upstream, addr, CHUNKED).await;
        // Cut inside a chunk size, a chunk's data, its CRLF and the last chunk.
        let pieces: &[&[u8]] = &[
            b"5",
            b"\r\nhel",
            b"lo\r",
            b"\n1",
            b"0\r\n wor",
            b"ld, again!!!\r\n0\r",
            b"\n\r\n",
        ];
        let (got, dropped) = read_with_dropped_polls(&upstream, &mut session, pieces).await;
        assert_eq!(got, b"hello world, again!!!");
        assert!(dropped >= pieces.len(), "{dropped} reads dropped");
        assert!(session.response_done());
    }

    #[tokio::test]
    async fn a_sized_body_read_dropped_before_it_completes_loses_nothing() {
        let (upstream, addr) = Upstream::start().await;
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 18\r\n\r\n";
        let mut session = session_after_head(&upstream, addr, head).await;
        let pieces: &[&[u8]] = &[b"hel", b"lo wo", b"rld, ", b"again"];
        let (got, dropped) = read_with_dropped_polls(&upstream, &mut session, pieces).await;
        assert_eq!(got, b"hello world, again");
        assert!(dropped >= pieces.len(), "{dropped} reads dropped");
        assert!(session.response_done());
    }

    #[tokio::test]
    async fn chunks_that_arrived_together_leave_in_one_write() {
        let (upstream, addr) = Upstream::start().await;
        let mut session = session_after_head(&upstream, addr, CHUNKED).await;
        upstream
            .send(b"5\r\nhello\r\n6\r\n world\r\n1\r\n!\r\n")
            .await;
        let first = session.read_response_body().await.unwrap().unwrap();
        let mut arrived = vec![first];
        let (ended, failed) = take_ready_chunks(&mut session, &mut arrived);
        assert!(!ended && failed.is_none());
        assert_eq!(arrived, [&b"hello"[..], b" world", b"!"]);
        assert_eq!(join(&mut arrived).unwrap(), &b"hello world!"[..]);
        assert!(arrived.is_empty());

        // The end of the body is seen without waiting when it has arrived.
        upstream.send(b"3\r\nbye\r\n0\r\n\r\n").await;
        let last = session.read_response_body().await.unwrap().unwrap();
        let mut arrived = vec![last];
        let (ended, failed) = take_ready_chunks(&mut session, &mut arrived);
        assert!(ended && failed.is_none());
        assert_eq!(arrived, [&b"bye"[..]]);
    }

    #[tokio::test]
    async fn a_chunk_that_arrived_alone_is_passed_on_as_the_same_bytes() {
        let (upstream, addr) = Upstream::start().await;
        let mut session = session_after_head(&upstream, addr, CHUNKED).await;
        upstream.send(b"3\r\nabc\r\n").await;
        let chunk = session.read_response_body().await.unwrap().unwrap();
        let (ptr, len) = (chunk.as_ptr(), chunk.len());
        let mut arrived = vec![chunk];
        // Nothing else has come: nothing is waited for.
        let (ended, failed) = take_ready_chunks(&mut session, &mut arrived);
        assert!(!ended && failed.is_none());
        assert_eq!(arrived.len(), 1);
        let out = join(&mut arrived).unwrap();
        assert_eq!((out.as_ptr(), out.len()), (ptr, len));
        assert!(arrived.is_empty());
        // And the next chunk, sent later, is still there to read.
        upstream.send(b"2\r\nde\r\n0\r\n\r\n").await;
        assert_eq!(
            session.read_response_body().await.unwrap().unwrap(),
            &b"de"[..]
        );
        assert_eq!(session.read_response_body().await.unwrap(), None);
    }

    #[test]
    fn join_passes_one_piece_on_and_copies_several_into_one() {
        assert_eq!(join(&mut Vec::new()), None);

        let lone = Bytes::from(vec![7u8; 100]);
        let (ptr, len) = (lone.as_ptr(), lone.len());
        let out = join(&mut vec![lone]).unwrap();
        assert_eq!((out.as_ptr(), out.len()), (ptr, len));

        let mut pieces = vec![
            Bytes::from_static(b"data: a\n\n"),
            Bytes::from_static(b"data: b\n\n"),
        ];
        assert_eq!(join(&mut pieces).unwrap(), &b"data: a\n\ndata: b\n\n"[..]);
        assert!(pieces.is_empty());
    }

    #[test]
    fn poll_now_reports_ready_and_pending() {
        assert_eq!(poll_now(std::pin::pin!(async { 3 })), Some(3));
        assert_eq!(poll_now(std::pin::pin!(std::future::pending::<u8>())), None);
    }
}
