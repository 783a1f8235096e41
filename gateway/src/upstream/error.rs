//! Errors of the upstream layer, typed by what failed and whether trying again may help.
//!
//! In the spirit of `pingora_error::Error` (an `ErrorType`, where it came from, a retry flag), a
//! caller decides failover or retry from the type, never from the text:
//!
//! - [`UpstreamFailure`]: one backend could not take a request before any answer came (it could
//!   not be prepared, reached, or did not answer in time), with its kind, whether another backend
//!   may take the request, the cause, and the backend's name;
//! - [`FetchError`]: what the small HTTP client for token and JWKS endpoints ([`super::fetch`])
//!   and its callers report: a connection refused, a TLS handshake, a timeout, an HTTP status
//!   with the body's error text, a malformed answer...
//!
//! Text is made only at the edges, in the wording the gateway has always used: the attempts
//! log ([`UpstreamFailure::attempt_label`]), log lines (`Display`), and the [`GatewayError`] a
//! client is answered with (`From<UpstreamFailure>`, called only where the answer is rendered).

use std::sync::Arc;
use std::time::Duration;

use pingora_error::ErrorType;

use crate::protocol::error::GatewayError;
use crate::wire::error::TranslateError;

/// Any error, boxed, as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong with one backend before an answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailureKind {
    /// The request could not be translated or authenticated for the backend.
    Prepare,
    /// No connection could be made.
    Connect,
    /// The answer's head did not come within the first-byte timeout.
    FirstByteTimeout(Duration),
    /// The connection broke while the request was written or the head read.
    Send,
    /// The request went out only on pooled connections, and each turned out closed.
    StaleConnections,
}

/// Why a request could not be prepared for one backend.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Its protocol cannot carry the request as it is.
    #[error(transparent)]
    Translate(#[from] TranslateError),
    /// It cannot be sent or authenticated now (a header, a path, no credentials yet, an
    /// unresolved host), as [`super::Upstreams::prepare`] decided.
    #[error(transparent)]
    Request(#[from] GatewayError),
}

impl From<PrepareError> for GatewayError {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::Translate(e) => e.into(),
            PrepareError::Request(e) => e,
        }
    }
}

/// The cause of an [`UpstreamFailure`].
#[derive(Debug)]
enum Cause {
    /// Pingora's error for the connection or the exchange.
    Exchange(Box<pingora_error::Error>),
    /// Why the request could not be prepared.
    Prepare(PrepareError),
}

/// One backend could not take a request before any answer came: nothing reached the client.
///
/// Built only on the failure path (the success path allocates nothing for it); the name is a
/// clone of the backend's `Arc<str>`.
#[derive(Debug)]
pub struct UpstreamFailure {
    kind: UpstreamFailureKind,
    retryable: bool,
    backend: Arc<str>,
    cause: Cause,
}

impl UpstreamFailure {
    /// The request could not be translated or authenticated for `backend`. Another backend may
    /// take it: each is prepared for its own protocol and with its own credentials.
    pub fn unprepared(backend: &Arc<str>, cause: impl Into<PrepareError>) -> Self {
        Self::new(
            UpstreamFailureKind::Prepare,
            backend,
            Cause::Prepare(cause.into()),
        )
    }

    /// No connection to `backend` could be made; nothing was sent, so another may serve it.
    pub fn connect(backend: &Arc<str>, source: Box<pingora_error::Error>) -> Self {
        Self::new(
            UpstreamFailureKind::Connect,
            backend,
            Cause::Exchange(source),
        )
    }

    /// The head of `backend`'s answer did not come within `after` (the first-byte timeout).
    pub fn first_byte_timeout(
        backend: &Arc<str>,
        after: Duration,
        source: Box<pingora_error::Error>,
    ) -> Self {
        Self::new(
            UpstreamFailureKind::FirstByteTimeout(after),
            backend,
            Cause::Exchange(source),
        )
    }

    /// The exchange with `backend` broke before its answer's head.
    pub fn send(backend: &Arc<str>, source: Box<pingora_error::Error>) -> Self {
        Self::new(UpstreamFailureKind::Send, backend, Cause::Exchange(source))
    }

    /// Every pooled connection to `backend` the request went out on was closed; `source` is
    /// the last one's error.
    pub fn stale_connections(backend: &Arc<str>, source: Box<pingora_error::Error>) -> Self {
        Self::new(
            UpstreamFailureKind::StaleConnections,
            backend,
            Cause::Exchange(source),
        )
    }

    /// Every failure before an answer is retryable on another backend: nothing reached the
    /// client, and the gateway fails over on each (an upstream that broke after reading the
    /// request may have run it; that is the cost of answering the client at all).
    fn new(kind: UpstreamFailureKind, backend: &Arc<str>, cause: Cause) -> Self {
        Self {
            kind,
            retryable: true,
            backend: Arc::clone(backend),
            cause,
        }
    }

    /// What went wrong.
    #[inline]
    pub fn kind(&self) -> UpstreamFailureKind {
        self.kind
    }

    /// Whether another backend may take the request.
    #[inline]
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The backend's name.
    #[inline]
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The name in the attempts log (`backend:connect-error`).
    pub fn attempt_label(&self) -> &'static str {
        match self.kind {
            UpstreamFailureKind::Prepare => "unprepared",
            UpstreamFailureKind::Connect => "connect-error",
            UpstreamFailureKind::FirstByteTimeout(_) => "timeout",
            UpstreamFailureKind::Send | UpstreamFailureKind::StaleConnections => "error",
        }
    }
}

impl std::fmt::Display for UpstreamFailure {
    /// The words the client gets when no other backend is left (and the failover log line's).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = &self.backend;
        let exchange = match &self.cause {
            Cause::Prepare(e) => return e.fmt(f),
            Cause::Exchange(e) => e,
        };
        match self.kind {
            UpstreamFailureKind::Connect => write!(
                f,
                "backend {backend} is unreachable: {}",
                exchange.etype().as_str()
            ),
            UpstreamFailureKind::FirstByteTimeout(after) => write!(
                f,
                "backend {backend} did not answer within {}",
                humantime::format_duration(after)
            ),
            UpstreamFailureKind::StaleConnections => {
                write!(f, "backend {backend} failed before answering: {exchange}")
            }
            UpstreamFailureKind::Send | UpstreamFailureKind::Prepare => write!(
                f,
                "backend {backend} failed before answering: {}",
                exchange.etype().as_str()
            ),
        }
    }
}

impl std::error::Error for UpstreamFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Exchange(e) => Some(e.as_ref()),
            Cause::Prepare(e) => Some(e),
        }
    }
}

impl From<UpstreamFailure> for GatewayError {
    /// The error the client is answered with: the preparation's own (a bad request stays a
    /// 400), or `503 Unavailable` in [`UpstreamFailure`]'s words.
    fn from(failure: UpstreamFailure) -> Self {
        let message = failure.to_string();
        match failure.cause {
            Cause::Prepare(e) => e.into(),
            Cause::Exchange(_) => GatewayError::Unavailable(message),
        }
    }
}

/// What a [`FetchError`] was asked: `METHOD url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTarget {
    /// The HTTP method.
    pub method: String,
    /// The URL as given.
    pub url: String,
}

impl FetchTarget {
    /// `method` on `url`.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_string(),
            url: url.to_string(),
        }
    }
}

impl std::fmt::Display for FetchTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// Why a request to a token or JWKS endpoint gave no usable answer.
///
/// The text names the URL, never the request's headers or body (which carry credentials);
/// a server may still quote them back, which is why [`FetchError::redact`] exists.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request cannot be made: not a URL, a scheme other than `http(s)`, a header value
    /// that is not one (named, never quoted).
    #[error("{target}: {reason}")]
    Invalid {
        /// What was asked.
        target: FetchTarget,
        /// Why it cannot be sent.
        reason: String,
    },
    /// The host's name did not resolve to an address.
    #[error("{target}: {reason}")]
    Resolve {
        /// What was asked.
        target: FetchTarget,
        /// What the resolver said.
        reason: String,
    },
    /// No connection could be made (refused, unreachable, timed out).
    #[error("{target}: {source}")]
    Connect {
        /// What was asked.
        target: FetchTarget,
        /// Pingora's error.
        source: BoxError,
    },
    /// The TLS handshake failed (a certificate not trusted, a protocol mismatch).
    #[error("{target}: {source}")]
    Tls {
        /// What was asked.
        target: FetchTarget,
        /// Pingora's error.
        source: BoxError,
    },
    /// The connection broke while the request was written or the answer read.
    #[error("{target}: {source}")]
    Broken {
        /// What was asked.
        target: FetchTarget,
        /// Pingora's error.
        source: BoxError,
    },
    /// The answer's body is longer than the caller allows.
    #[error("{target}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// What was asked.
        target: FetchTarget,
        /// The limit in bytes.
        limit: usize,
    },
    /// The whole exchange took longer than its deadline.
    #[error("{target} timed out after {after:?}")]
    Timeout {
        /// What was asked.
        target: FetchTarget,
        /// The deadline.
        after: Duration,
    },
    /// The endpoint answered with an error status, and the error text of its body if any
    /// (OAuth's `error` or Google APIs' `error.message`, then `error_description`).
    #[error("{url} answered {status}{}", Reasons(&[.error, .description]))]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: u16,
        /// The body's error (`invalid_grant`).
        error: Option<String>,
        /// The body's description of it.
        description: Option<String>,
    },
    /// The endpoint answered 200 with something other than what was asked for.
    #[error("{url} answered 200 but {what}")]
    Malformed {
        /// The URL asked.
        url: String,
        /// What is wrong (`without an access_token`); never quotes the answer.
        what: &'static str,
    },
}

/// `: a: b` for the reasons present.
struct Reasons<'a>(&'a [&'a Option<String>]);

impl std::fmt::Display for Reasons<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for reason in self.0.iter().filter_map(|r| r.as_deref()) {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

/// A cause whose text was rewritten (see [`FetchError::redact`]).
#[derive(Debug)]
struct Redacted(String);

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

impl FetchError {
    /// A connection that could not be made to `target`: a TLS failure when the handshake is
    /// what failed (a handshake that timed out is a connect timeout), otherwise a connect error.
    pub fn connecting(target: FetchTarget, source: Box<pingora_error::Error>) -> Self {
        match source.etype() {
            ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::TLSWantX509Lookup => FetchError::Tls {
                target,
                source: source as BoxError,
            },
            _ => FetchError::Connect {
                target,
                source: source as BoxError,
            },
        }
    }

    /// Whether asking again later may succeed: a connection or a DNS answer that may come
    /// back, a timeout, a status saying "later" (408, 429, 5xx). A request that cannot be
    /// made, a certificate, a refusal (4xx), an answer too large or malformed stay as they are.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Resolve { .. }
            | FetchError::Connect { .. }
            | FetchError::Broken { .. }
            | FetchError::Timeout { .. } => true,
            FetchError::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            FetchError::Invalid { .. }
            | FetchError::Tls { .. }
            | FetchError::TooLarge { .. }
            | FetchError::Malformed { .. } => false,
        }
    }

    /// The same error with `redact` applied to every text that may have come from the server
    /// (a status's error text, the causes of broken exchanges, which may quote the answer), for
    /// callers whose requests carry secrets a careless server could echo back.
    pub fn redact(self, redact: impl Fn(String) -> String) -> Self {
        let text = |source: BoxError| Box::new(Redacted(redact(source.to_string()))) as BoxError;
        match self {
            FetchError::Invalid { target, reason } => FetchError::Invalid {
                target,
                reason: redact(reason),
            },
            FetchError::Resolve { target, reason } => FetchError::Resolve {
                target,
                reason: redact(reason),
            },
            FetchError::Connect { target, source } => FetchError::Connect {
                target,
                source: text(source),
            },
            FetchError::Tls { target, source } => FetchError::Tls {
                target,
                source: text(source),
            },
            FetchError::Broken { target, source } => FetchError::Broken {
                target,
                source: text(source),
            },
            FetchError::Status {
                url,
                status,
                error,
                description,
            } => FetchError::Status {
                url,
                status,
                error: error.map(&redact),
                description: description.map(&redact),
            },
            e @ (FetchError::TooLarge { .. }
            | FetchError::Timeout { .. }
            | FetchError::Malformed { .. }) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_error::Error;

    fn backend() -> Arc<str> {
        Arc::from("mock-bedrock")
    }

    fn every_failure() -> Vec<UpstreamFailure> {
        let b = backend();
        vec![
            UpstreamFailure::unprepared(&b, TranslateError::NotAnObject),
            UpstreamFailure::unprepared(&b, GatewayError::Unavailable("no token".into())),
            UpstreamFailure::connect(&b, Error::new(ErrorType::ConnectRefused)),
            UpstreamFailure::first_byte_timeout(
                &b,
                Duration::from_secs(2),
                Error::new(ErrorType::ReadTimedout),
            ),
            UpstreamFailure::send(&b, Error::new(ErrorType::ConnectionClosed)),
            UpstreamFailure::stale_connections(
                &b,
                Error::explain(ErrorType::ConnectionClosed, "while reading"),
            ),
        ]
    }

    #[test]
    fn every_failure_before_an_answer_may_go_to_another_backend() {
        for failure in every_failure() {
            assert!(failure.is_retryable(), "{failure:?}");
            assert_eq!(failure.backend(), "mock-bedrock");
        }
    }

    #[test]
    fn attempt_labels_are_the_attempts_logs() {
        let labels: Vec<_> = every_failure()
            .iter()
            .map(UpstreamFailure::attempt_label)
            .collect();
        assert_eq!(
            labels,
            [
                "unprepared",
                "unprepared",
                "connect-error",
                "timeout",
                "error",
                "error"
            ]
        );
    }

    #[test]
    fn clients_get_todays_status_and_words() {
        let rendered: Vec<GatewayError> = every_failure().into_iter().map(Into::into).collect();
        assert_eq!(
            rendered,
            [
                GatewayError::BadRequest("the request body must be a JSON object".into()),
                GatewayError::Unavailable("no token".into()),
                GatewayError::Unavailable(
                    "backend mock-bedrock is unreachable: ConnectRefused".into()
                ),
                GatewayError::Unavailable("backend mock-bedrock did not answer within 2s".into()),
                GatewayError::Unavailable(
                    "backend mock-bedrock failed before answering: ConnectionClosed".into()
                ),
                GatewayError::Unavailable(
                    "backend mock-bedrock failed before answering:  ConnectionClosed context: while reading"
                        .into()
                ),
            ]
        );
    }

    fn target() -> FetchTarget {
        FetchTarget::new("POST", "https://oauth2.googleapis.com/token")
    }

    fn status(status: u16) -> FetchError {
        FetchError::Status {
            url: "u".into(),
            status,
            error: None,
            description: None,
        }
    }

    #[test]
    fn transient_fetch_failures_are_retryable() {
        let retryable = [
            FetchError::Resolve {
                target: target(),
                reason: "cannot resolve oauth2.googleapis.com: no answer".into(),
            },
            FetchError::connecting(target(), Error::new(ErrorType::ConnectRefused)),
            FetchError::connecting(target(), Error::new(ErrorType::TLSHandshakeTimedout)),
            FetchError::Broken {
                target: target(),
                source: Error::new(ErrorType::ConnectionClosed),
            },
            FetchError::Timeout {
                target: target(),
                after: Duration::from_secs(10),
            },
            status(408),
            status(429),
            status(500),
            status(503),
        ];
        for e in retryable {
            assert!(e.is_retryable(), "{e:?}");
        }
    }

    #[test]
    fn fetch_failures_that_stay_are_not_retryable() {
        let permanent = [
            FetchError::Invalid {
                target: target(),
                reason: "not a URL".into(),
            },
            FetchError::connecting(target(), Error::new(ErrorType::TLSHandshakeFailure)),
            FetchError::connecting(target(), Error::new(ErrorType::InvalidCert)),
            FetchError::TooLarge {
                target: target(),
                limit: 4,
            },
            FetchError::Malformed {
                url: "u".into(),
                what: "without an access_token",
            },
            status(400),
            status(401),
            status(403),
            status(404),
        ];
        for e in permanent {
            assert!(!e.is_retryable(), "{e:?}");
        }
        assert!(matches!(
            FetchError::connecting(target(), Error::new(ErrorType::InvalidCert)),
            FetchError::Tls { .. }
        ));
    }

    #[test]
    fn fetch_errors_read_as_before() {
        let e = FetchError::Timeout {
            target: target(),
            after: Duration::from_millis(300),
        };
        assert_eq!(
            e.to_string(),
            "POST https://oauth2.googleapis.com/token timed out after 300ms"
        );
        let e = FetchError::Status {
            url: "u".into(),
            status: 400,
            error: Some("invalid_grant".into()),
            description: Some("Invalid JWT Signature.".into()),
        };
        assert_eq!(
            e.to_string(),
            "u answered 400: invalid_grant: Invalid JWT Signature."
        );
        assert_eq!(status(502).to_string(), "u answered 502");
    }

    #[test]
    fn redaction_reaches_every_text_from_the_server() {
        let hide = |s: String| s.replace("s3cret", "[redacted]");
        let e = FetchError::Status {
            url: "u".into(),
            status: 400,
            error: Some("bad s3cret".into()),
            description: Some("s3cret again".into()),
        }
        .redact(hide);
        assert_eq!(
            e.to_string(),
            "u answered 400: bad [redacted]: [redacted] again"
        );
        let e = FetchError::Broken {
            target: target(),
            source: Error::explain(ErrorType::InvalidHTTPHeader, "buf: s3cret"),
        }
        .redact(hide);
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().contains("InvalidHTTPHeader"), "{e}");
        assert!(e.is_retryable());
    }
}
