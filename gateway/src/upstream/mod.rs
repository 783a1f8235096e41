//! Upstreams: the providers the gateway calls, how to reach them and how to authenticate.
//!
//! [`Upstreams`] holds every configured backend. For a parsed request it picks a backend and
//! prepares the upstream request: the peer to connect to (with its timeouts), and the request
//! head with the client's headers minus everything that must not cross the gateway (client
//! credentials, `x-amz-*`, hop-by-hop headers), plus the backend's own authentication.
//!
//! Background work (DNS refresh, credential refresh) runs on a runtime of its own, so the
//! request path only ever reads ready values.

pub mod bedrock;
pub mod credentials;
pub mod endpoint;
pub mod fetch;
pub mod google;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;

pub use endpoint::{Endpoint, EndpointError};

use crate::config::{BackendKind, Config, TimeoutsConfig};
use crate::frontdoor::{FrontDoor, RequestInfo};
use crate::wire::error::GatewayError;
use bedrock::{BedrockAuth, BedrockBackend};

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One configured backend.
#[derive(Debug)]
pub struct Backend {
    /// Its configured name.
    pub name: Arc<str>,
    /// The provider-specific part.
    pub provider: Provider,
}

/// The provider a backend calls.
#[derive(Debug)]
pub enum Provider {
    /// Amazon Bedrock.
    Bedrock(BedrockBackend),
}

impl Backend {
    /// The provider kind, as configured.
    pub fn kind(&self) -> &'static str {
        match &self.provider {
            Provider::Bedrock(_) => "bedrock",
        }
    }

    /// Whether the backend can serve requests now; the reason when not.
    pub fn ready(&self) -> Result<(), String> {
        match &self.provider {
            Provider::Bedrock(b) => b.ready(),
        }
    }
}

/// A request ready to go upstream.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// Where to connect.
    pub peer: HttpPeer,
    /// The request head, authenticated.
    pub header: RequestHeader,
    /// The body, as it will be sent.
    pub body: Bytes,
}

/// Every configured backend, and the timeouts to use with them.
#[derive(Debug)]
pub struct Upstreams {
    backends: Vec<Arc<Backend>>,
    timeouts: TimeoutsConfig,
}

impl Upstreams {
    /// Builds the backends and starts their background refreshers on `runtime`.
    pub fn start(
        config: &Config,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Upstreams, EndpointError> {
        let mut backends = Vec::new();
        for b in &config.backends {
            let provider = match b.kind {
                BackendKind::Bedrock => {
                    let backend = BedrockBackend::from_config(b)?;
                    backend.runtime.spawn_resolver(runtime);
                    backend.control.spawn_resolver(runtime);
                    if let BedrockAuth::SigV4(creds) = &backend.auth {
                        creds.spawn_refresh(
                            runtime,
                            b.name.clone(),
                            backend.region.clone(),
                            b.profile.clone(),
                        );
                    }
                    Provider::Bedrock(backend)
                }
            };
            backends.push(Arc::new(Backend {
                name: b.name.as_str().into(),
                provider,
            }));
        }
        Ok(Upstreams {
            backends,
            timeouts: config.timeouts.clone(),
        })
    }

    /// Every backend, in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The configured timeouts.
    pub fn timeouts(&self) -> &TimeoutsConfig {
        &self.timeouts
    }

    /// The backend that serves a request: the first backend of the front door's own kind.
    pub fn pick(&self, info: &RequestInfo) -> Result<&Arc<Backend>, GatewayError> {
        let kind_matches = |b: &&Arc<Backend>| match (&b.provider, info.front_door) {
            (Provider::Bedrock(_), FrontDoor::Bedrock) => true,
        };
        self.backends.iter().find(kind_matches).ok_or_else(|| {
            GatewayError::Unavailable(format!(
                "no backend is configured for the {} front door",
                info.front_door.as_str()
            ))
        })
    }

    /// Prepares the upstream request for `backend`: peer, head (client headers filtered,
    /// authentication added) and body.
    pub fn prepare(
        &self,
        backend: &Backend,
        info: &RequestInfo,
        method: &http::Method,
        client_headers: &http::HeaderMap,
        request_id: &str,
        body: Bytes,
    ) -> Result<UpstreamRequest, GatewayError> {
        let Provider::Bedrock(bedrock) = &backend.provider;
        let endpoint = bedrock.endpoint_for(info.operation);
        let path = format!("{}{}", endpoint.base_path, info.upstream_path);

        let mut header = RequestHeader::build(method.clone(), path.as_bytes(), None)
            .map_err(|e| GatewayError::BadRequest(format!("cannot forward this path: {e}")))?;
        copy_request_headers(client_headers, &mut header)?;
        let content_type = client_headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| (!body.is_empty()).then(|| "application/json".to_string()));
        insert(&mut header, "host", &endpoint.authority)?;
        if let Some(ct) = &content_type {
            insert(&mut header, "content-type", ct)?;
        }
        if !body.is_empty() || method == http::Method::POST {
            insert(&mut header, "content-length", &body.len().to_string())?;
        }
        insert(&mut header, "x-request-id", request_id)?;
        for (name, value) in bedrock.auth_headers(
            &backend.name,
            method.as_str(),
            &path,
            &endpoint.authority,
            content_type.as_deref(),
            &body,
        )? {
            insert(&mut header, name, &value)?;
        }
        let peer = self.peer(&backend.name, endpoint)?;
        Ok(UpstreamRequest { peer, header, body })
    }

    fn peer(&self, backend: &str, endpoint: &Endpoint) -> Result<HttpPeer, GatewayError> {
        let addr = endpoint.addr().ok_or_else(|| {
            GatewayError::Unavailable(format!(
                "backend {backend}: {} has not resolved yet",
                endpoint.host
            ))
        })?;
        let mut peer = HttpPeer::new(addr, endpoint.tls, endpoint.host.clone());
        peer.options.connection_timeout = Some(self.timeouts.connect.0);
        peer.options.total_connection_timeout = Some(self.timeouts.connect.0);
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        peer.options.write_timeout = Some(self.timeouts.idle.0);
        Ok(peer)
    }
}

/// Request headers that never cross the gateway: client credentials, AWS signing headers
/// (the gateway signs anew), and hop-by-hop headers. `accept-encoding` is dropped so answers
/// arrive uncompressed and their usage can be read.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "accept-encoding",
    "x-request-id",
];

/// Whether a client request header is forwarded upstream.
pub fn forwards_request_header(name: &str) -> bool {
    // `x-amz-*` carries the client's own signature material; `x-amzn-*` (e.g.
    // `x-amzn-bedrock-trace`, guardrail and performance settings) are request parameters.
    !(DROPPED_REQUEST_HEADERS.contains(&name) || name.starts_with("x-amz-"))
}

/// Response headers that belong to one hop and are not passed to the client.
pub fn forwards_response_header(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

fn copy_request_headers(
    client: &http::HeaderMap,
    upstream: &mut RequestHeader,
) -> Result<(), GatewayError> {
    // Headers the client named in `Connection` are hop-by-hop too.
    let nominated: Vec<String> = client
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in client.iter() {
        let n = name.as_str();
        if forwards_request_header(n) && !nominated.iter().any(|t| t == n) {
            upstream
                .append_header(name.clone(), value.clone())
                .map_err(|e| GatewayError::BadRequest(format!("header {n}: {e}")))?;
        }
    }
    Ok(())
}

fn insert(header: &mut RequestHeader, name: &'static str, value: &str) -> Result<(), GatewayError> {
    header
        .insert_header(name, value)
        .map_err(|e| GatewayError::Internal(format!("header {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_and_signing_headers_are_not_forwarded() {
        for h in [
            "authorization",
            "x-api-key",
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-content-sha256",
            "connection",
            "transfer-encoding",
            "host",
        ] {
            assert!(!forwards_request_header(h), "{h}");
        }
        for h in [
            "anthropic-beta",
            "anthropic-version",
            "x-claude-code-session-id",
            "x-amzn-bedrock-trace",
            "user-agent",
            "x-stainless-os",
        ] {
            assert!(forwards_request_header(h), "{h}");
        }
    }

    fn upstreams(bearer: Option<&str>) -> Upstreams {
        let text = format!(
            "[server]\nlisten=\"127.0.0.1:1\"\nadmin_listen=\"127.0.0.1:2\"\n[[backends]]\nname=\"b\"\nkind=\"bedrock\"\nregion=\"us-east-1\"\nendpoint=\"http://127.0.0.1:9/base\"\n{}",
            bearer.map(|t| format!("bearer_token=\"{t}\"\n")).unwrap_or_default()
        );
        let config = Config::parse_with_env(&text, &|_| None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Upstreams::start(&config, rt.handle()).unwrap()
    }

    #[test]
    fn prepared_request_keeps_client_headers_path_bytes_and_adds_auth() {
        let u = upstreams(Some("bedrock-api-key"));
        let info =
            crate::frontdoor::bedrock::parse(&http::Method::POST, "/model/a%3A0/invoke").unwrap();
        let mut client =
            RequestHeader::build("POST", b"/bedrock/model/a%3A0/invoke", None).unwrap();
        client
            .insert_header("authorization", "Bearer sk-gw-client")
            .unwrap();
        client.insert_header("anthropic-beta", "a,b").unwrap();
        client
            .insert_header("connection", "keep-alive, x-drop-me")
            .unwrap();
        client.insert_header("x-drop-me", "1").unwrap();
        let backend = u.pick(&info).unwrap().clone();
        let r = u
            .prepare(
                &backend,
                &info,
                &client.method,
                &client.headers,
                "rid-1",
                Bytes::from_static(b"{}"),
            )
            .unwrap();
        assert_eq!(r.header.raw_path(), b"/base/model/a%3A0/invoke");
        assert_eq!(r.header.headers["authorization"], "Bearer bedrock-api-key");
        assert_eq!(r.header.headers["anthropic-beta"], "a,b");
        assert_eq!(r.header.headers["host"], "127.0.0.1:9");
        assert_eq!(r.header.headers["content-length"], "2");
        assert!(r.header.headers.get("x-drop-me").is_none());
    }

    #[test]
    fn sigv4_without_credentials_is_unavailable_not_unsigned() {
        let u = upstreams(None);
        let info =
            crate::frontdoor::bedrock::parse(&http::Method::POST, "/model/a/invoke").unwrap();
        let client = RequestHeader::build("POST", b"/bedrock/model/a/invoke", None).unwrap();
        let backend = u.pick(&info).unwrap().clone();
        let e = u
            .prepare(
                &backend,
                &info,
                &client.method,
                &client.headers,
                "r",
                Bytes::new(),
            )
            .unwrap_err();
        assert_eq!(e.status(), 503);
    }
}
