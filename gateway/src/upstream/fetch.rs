//! One-shot HTTP requests the gateway makes on its own behalf: JWKS documents, OAuth tokens.
//!
//! These are not client traffic, so they skip everything in [`super::Upstreams`]: no header
//! filtering, no signing, no streaming. They still go over Pingora's [`Connector`], like every
//! other upstream call, so the gateway has one HTTP client and one TLS stack (rustls, with
//! certificates verified for `https://` URLs). The whole exchange runs under one deadline and
//! the answer's body is read into memory up to a limit, which is why this is only for small
//! documents fetched off the request path.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;

use super::endpoint::Endpoint;
use super::error::{BoxError, FetchError, FetchTarget};

/// Sends one request to `url` and returns the answer's status and body, whatever the status.
///
/// `url` is `http(s)://host[:port]/path[?query]`; the host is resolved on each call. The
/// `host` header is set from the URL and `content-length` from `body`; `headers` adds the rest.
/// `timeout` bounds the whole exchange (and each connect, read and write within it). A body
/// longer than `max_body` bytes is an error. Errors say what failed and whether asking again
/// may help ([`FetchError::is_retryable`]); their text names the URL but never carries the
/// request's headers or body, so secrets sent in them cannot leak there.
pub async fn fetch(
    connector: &Connector,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), FetchError> {
    let target = || FetchTarget::new(method, url);
    let exchange = exchange(connector, method, url, headers, body, timeout, max_body);
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(failed)) => Err(failed.into_error(target())),
        Err(_) => Err(FetchError::Timeout {
            target: target(),
            after: timeout,
        }),
    }
}

/// What failed inside [`exchange`], before [`fetch`] names the request it was.
enum Failed {
    Invalid(String),
    Resolve(String),
    Connect(Box<pingora_error::Error>),
    Broken(Box<pingora_error::Error>),
    TooLarge(usize),
}

impl Failed {
    fn into_error(self, target: FetchTarget) -> FetchError {
        match self {
            Failed::Invalid(reason) => FetchError::Invalid { target, reason },
            Failed::Resolve(reason) => FetchError::Resolve { target, reason },
            Failed::Connect(e) => FetchError::connecting(target, e),
            Failed::Broken(e) => FetchError::Broken {
                target,
                source: e as BoxError,
            },
            Failed::TooLarge(limit) => FetchError::TooLarge { target, limit },
        }
    }
}

/// The exchange [`fetch`] runs under its deadline: resolve, connect, send, read the answer.
async fn exchange(
    connector: &Connector,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), Failed> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Failed::Invalid("not a URL".into()))?;
    let (endpoint, peer) = resolve_peer(&uri, timeout).await?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = request_head(method, path, &endpoint.authority, headers, body.as_ref())?;
    let (mut session, _reused) = connector
        .get_http_session(&peer)
        .await
        .map_err(Failed::Connect)?;
    send_request(&mut session, req, body)
        .await
        .map_err(Failed::Broken)?;
    // The session is dropped, not returned to the pool: these calls are minutes apart.
    read_answer(&mut session, max_body).await
}

/// The endpoint of `uri`'s origin, its host resolved now, and a peer for it with `timeout` on
/// every connect, read and write.
async fn resolve_peer(uri: &http::Uri, timeout: Duration) -> Result<(Endpoint, HttpPeer), Failed> {
    // `Endpoint` takes an origin (it refuses queries, which belong to the request here).
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    let endpoint = Endpoint::parse(&origin).map_err(|e| Failed::Invalid(e.to_string()))?;
    endpoint
        .resolve()
        .await
        .map_err(|e| Failed::Resolve(format!("cannot resolve {}: {e}", endpoint.host)))?;
    let addr = endpoint
        .addr()
        .ok_or_else(|| Failed::Resolve(format!("{} has no address", endpoint.host)))?;
    let mut peer = HttpPeer::new(addr, endpoint.tls, endpoint.host.clone());
    peer.options.connection_timeout = Some(timeout);
    peer.options.total_connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    Ok((endpoint, peer))
}

/// The request head: `method` on `path`, `host` set to `authority`, then `headers`, and
/// `content-length` when there is a body. An invalid header value is reported by the
/// header's name only, never its value, which may be a credential.
fn request_head(
    method: &str,
    path: &str,
    authority: &str,
    headers: &[(&str, &str)],
    body: Option<&Bytes>,
) -> Result<RequestHeader, Failed> {
    let invalid = |e: Box<pingora_error::Error>| Failed::Invalid(e.to_string());
    let mut req = RequestHeader::build(method, path.as_bytes(), None).map_err(invalid)?;
    req.insert_header("host", authority).map_err(invalid)?;
    for (name, value) in headers {
        // The header's name only: its value may be a credential.
        req.insert_header(name.to_string(), *value)
            .map_err(|_| Failed::Invalid(format!("invalid value for header {name}")))?;
    }
    if let Some(b) = body {
        req.insert_header("content-length", b.len().to_string())
            .map_err(invalid)?;
    }
    Ok(req)
}

/// Writes the request head and the body (if any, and not empty), and ends the request.
async fn send_request(
    session: &mut HttpSession,
    req: RequestHeader,
    body: Option<Bytes>,
) -> pingora_error::Result<()> {
    session.write_request_header(Box::new(req)).await?;
    if let Some(b) = body.filter(|b| !b.is_empty()) {
        session.write_request_body(b, true).await?;
    }
    session.finish_request_body().await
}

/// Reads the answer's status and whole body; a body longer than `max_body` bytes is an error.
async fn read_answer(session: &mut HttpSession, max_body: usize) -> Result<(u16, Bytes), Failed> {
    session
        .read_response_header()
        .await
        .map_err(Failed::Broken)?;
    let status = session
        .response_header()
        .map(|h| h.status.as_u16())
        .unwrap_or(0);
    let mut answer = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await.map_err(Failed::Broken)? {
        if answer.len() + chunk.len() > max_body {
            return Err(Failed::TooLarge(max_body));
        }
        answer.extend_from_slice(&chunk);
    }
    Ok((status, answer.freeze()))
}

/// A tiny HTTP/1.1 server for tests of code that calls [`fetch`].
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A request as the server read it.
    #[derive(Debug)]
    pub struct Request {
        pub method: String,
        pub target: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Request {
        /// The first header called `name`, in any case.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// The body read as an `application/x-www-form-urlencoded` form.
        pub fn form(&self) -> Vec<(String, String)> {
            form_urlencoded::parse(&self.body).into_owned().collect()
        }
    }

    /// Serves on a free loopback port for as long as the test's runtime runs: one request per
    /// connection, answered with `handler`'s status and body (`content-length` set, connection
    /// closed). Returns the base URL and the number of requests answered so far.
    pub async fn serve<F>(handler: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(&Request) -> (u16, String) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&served);
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut conn).await else {
                        return;
                    };
                    let (status, body) = handler(&request);
                    count.fetch_add(1, Ordering::SeqCst);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        (base, served)
    }

    async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Request> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = conn.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&buf[..n]);
            if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
        };
        let head = String::from_utf8(seen[..head_end].to_vec()).ok()?;
        let mut lines = head.split("\r\n");
        let mut start = lines.next()?.split(' ');
        let method = start.next()?.to_string();
        let target = start.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = seen[head_end + 4..].to_vec();
        while body.len() < len {
            let n = conn.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&buf[..n]);
        }
        Some(Request {
            method,
            target,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::test_server::serve;
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn posts_a_body_with_its_length_and_reads_the_answer() {
        let (base, served) = serve(|r| {
            assert_eq!(
                (r.method.as_str(), r.target.as_str()),
                ("POST", "/token?x=1")
            );
            assert_eq!(r.header("content-length"), Some("3"));
            assert_eq!(r.header("content-type"), Some("text/plain"));
            assert!(r
                .header("host")
                .is_some_and(|h| h.starts_with("127.0.0.1:")));
            assert_eq!(r.body, b"a=b");
            (201, "hello".into())
        })
        .await;
        let (status, body) = fetch(
            &Connector::new(None),
            "POST",
            &format!("{base}/token?x=1"),
            &[("content-type", "text/plain")],
            Some(Bytes::from_static(b"a=b")),
            Duration::from_secs(5),
            1024,
        )
        .await
        .unwrap();
        assert_eq!((status, &body[..]), (201, &b"hello"[..]));
        assert_eq!(served.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn error_statuses_are_answers_not_errors() {
        let (base, _) = serve(|_| (503, "busy".into())).await;
        let (status, body) = fetch(
            &Connector::new(None),
            "GET",
            &base,
            &[],
            None,
            Duration::from_secs(5),
            1024,
        )
        .await
        .unwrap();
        assert_eq!((status, &body[..]), (503, &b"busy"[..]));
    }

    #[tokio::test]
    async fn answers_larger_than_the_limit_are_refused() {
        let (base, _) = serve(|_| (200, "0123456789".into())).await;
        let err = fetch(
            &Connector::new(None),
            "GET",
            &base,
            &[],
            None,
            Duration::from_secs(5),
            4,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 4, .. }),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("larger than 4 bytes"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let _hold = tokio::spawn(async move {
            let (_conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let err = fetch(
            &Connector::new(None),
            "GET",
            &url,
            &[],
            None,
            Duration::from_millis(300),
            1024,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("timed"), "{err}");
        assert!(err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_retryable_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let err = fetch(
            &Connector::new(None),
            "GET",
            &url,
            &[],
            None,
            Duration::from_secs(5),
            1024,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, FetchError::Connect { .. }), "{err}");
        assert!(err.is_retryable());
        assert!(
            err.to_string().starts_with(&format!("GET {url}: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn refuses_urls_it_cannot_call() {
        for bad in ["ftp://example.com/x", "not a url"] {
            let fetched = fetch(
                &Connector::new(None),
                "GET",
                bad,
                &[],
                None,
                Duration::from_secs(1),
                1024,
            )
            .await;
            let err = fetched.unwrap_err();
            assert!(matches!(err, FetchError::Invalid { .. }), "{bad}: {err}");
            assert!(!err.is_retryable(), "{bad}");
        }
    }
}
