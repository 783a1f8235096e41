//! Upstreams: the providers the gateway calls, how to reach them and how to authenticate.
//!
//! [`Upstreams`] holds every configured backend (Bedrock with SigV4, Vertex AI with Google
//! OAuth, the Anthropic API with an API key). [`route`] decides which of them serve a request;
//! [`Upstreams::prepare`] turns the request (already translated for the backend's protocol by
//! [`crate::wire::translate`]) into what goes on the wire: the peer to connect to (with its
//! timeouts), and the request head with the client's headers minus everything that must not
//! cross the gateway (client credentials, `x-amz-*`, hop-by-hop headers), plus the backend's
//! own authentication.
//!
//! Background work (DNS refresh, credential and token refresh) runs on a runtime of its own,
//! so the request path only ever reads ready values.

pub mod anthropic;
pub mod bedrock;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod fetch;
pub mod google;
pub mod provider;
pub mod route;
pub mod vertex;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;

pub use endpoint::{Endpoint, EndpointError};

use crate::config::{BackendConfig, Config, TimeoutsConfig};
use crate::protocol::error::GatewayError;
use crate::protocol::BackendKind;
use crate::wire::translate::{AcceptedBetas, BetaHeader, Outgoing};
use anthropic::AnthropicBackend;
use bedrock::BedrockBackend;
pub use provider::Provider;
use provider::{set_header as insert, Signable};
use route::Health;
use vertex::VertexBackend;

/// Why the backends could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// An endpoint URL is unusable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A backend's credentials could not be loaded.
    #[error("backend {backend}: {reason}")]
    Credentials {
        /// The backend's name.
        backend: String,
        /// What went wrong (never the secret itself).
        reason: String,
    },
}

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One configured backend.
#[derive(Debug)]
pub struct Backend {
    /// Its configured name.
    pub name: Arc<str>,
    /// The provider-specific part.
    pub provider: Box<dyn Provider>,
    /// The `anthropic-beta` values it accepts.
    pub betas: AcceptedBetas,
    /// Passive health from real traffic.
    pub health: Health,
}

impl Backend {
    /// The provider kind, as configured.
    pub fn kind(&self) -> BackendKind {
        self.provider.kind()
    }

    /// Whether the backend can serve requests now; the reason when not.
    pub fn ready(&self) -> Result<(), String> {
        self.provider.ready()
    }

    /// Vertex: the project and location put in the path.
    pub fn vertex_location(&self) -> (&str, &str) {
        self.provider.location()
    }

    /// Every endpoint the backend calls (for name resolution).
    pub fn endpoints(&self) -> Vec<&Arc<Endpoint>> {
        self.provider.endpoints()
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
    ) -> Result<Upstreams, UpstreamError> {
        let mut backends = Vec::new();
        for b in &config.backends {
            let provider: Box<dyn Provider> = match b {
                BackendConfig::Bedrock(c) => Box::new(BedrockBackend::from_config(c)?),
                BackendConfig::Vertex(c) => Box::new(VertexBackend::from_config(c)?),
                BackendConfig::Anthropic(c) => Box::new(AnthropicBackend::from_config(c)?),
            };
            provider.start_refresh(b.name(), runtime);
            let backend = Backend {
                name: b.name().into(),
                provider,
                betas: AcceptedBetas::new(b.kind(), b.accepted_betas()),
                health: Health::default(),
            };
            for e in backend.endpoints() {
                e.spawn_resolver(runtime);
            }
            backends.push(Arc::new(backend));
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

    /// Prepares the upstream request for `backend`: peer, head (client headers filtered,
    /// translation's header changes and authentication added) and body.
    pub fn prepare(
        &self,
        backend: &Backend,
        outgoing: Outgoing,
        method: &http::Method,
        client_headers: &http::HeaderMap,
        request_id: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        let endpoint = backend.provider.endpoint_for(outgoing.operation);
        let path = format!("{}{}", endpoint.base_path, outgoing.path);
        let body = outgoing.body;

        let mut header = RequestHeader::build(method.clone(), path.as_bytes(), None)
            .map_err(|e| GatewayError::BadRequest(format!("cannot forward this path: {e}")))?;
        copy_request_headers(client_headers, &mut header)?;
        match &outgoing.beta_header {
            BetaHeader::Keep => {}
            BetaHeader::Remove => {
                header.remove_header("anthropic-beta");
            }
            BetaHeader::Set(v) => insert(&mut header, "anthropic-beta", v)?,
        }
        if let Some(v) = outgoing.version_header {
            if !header.headers.contains_key("anthropic-version") {
                insert(&mut header, "anthropic-version", v)?;
            }
        }
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
        let signable = Signable {
            method: method.as_str(),
            path_and_query: &path,
            host: &endpoint.authority,
            content_type: content_type.as_deref(),
            body: &body,
        };
        backend
            .provider
            .authenticate(&backend.name, signable, &mut header)?;
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
            "[server]\nlisten=\"127.0.0.1:1\"\nadmin_listen=\"127.0.0.1:2\"\n[[backends]]\nname=\"b\"\nkind=\"bedrock\"\nregion=\"us-east-1\"\nendpoint=\"http://127.0.0.1:9/base\"\n{}\n[[backends]]\nname=\"a\"\nkind=\"anthropic\"\nendpoint=\"http://127.0.0.1:8\"\napi_key=\"sk-ant-upstream\"\n",
            bearer.map(|t| format!("bearer_token=\"{t}\"\n")).unwrap_or_default()
        );
        let config = Config::parse_with_env(&text, &|_| None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Upstreams::start(&config, rt.handle()).unwrap()
    }

    fn outgoing(
        u: &Upstreams,
        backend: usize,
        info: &crate::protocol::RequestInfo,
        client: &RequestHeader,
        body: &'static [u8],
    ) -> Outgoing {
        let b = &u.backends()[backend];
        let model = match b.kind() {
            BackendKind::Anthropic => "claude-sonnet-4-5-20250929",
            _ => info.model_id.as_deref().unwrap(),
        };
        let target = crate::wire::translate::Target {
            kind: b.kind(),
            model,
            project: "",
            region: "",
            betas: &b.betas,
        };
        crate::wire::translate::request(
            info,
            info.model_id.as_deref(),
            &target,
            &client.headers,
            &Bytes::from_static(body),
        )
        .unwrap()
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
        client
            .insert_header("anthropic-beta", "context-1m-2025-08-07")
            .unwrap();
        client
            .insert_header("connection", "keep-alive, x-drop-me")
            .unwrap();
        client.insert_header("x-drop-me", "1").unwrap();
        let out = outgoing(&u, 0, &info, &client, b"{}");
        let backend = u.backends()[0].clone();
        let r = u
            .prepare(&backend, out, &client.method, &client.headers, "rid-1")
            .unwrap();
        assert_eq!(r.header.raw_path(), b"/base/model/a%3A0/invoke");
        assert_eq!(r.header.headers["authorization"], "Bearer bedrock-api-key");
        assert_eq!(r.header.headers["anthropic-beta"], "context-1m-2025-08-07");
        assert_eq!(r.header.headers["host"], "127.0.0.1:9");
        assert_eq!(r.header.headers["content-length"], "2");
        assert!(r.header.headers.get("x-drop-me").is_none());
    }

    #[test]
    fn anthropic_backend_gets_its_api_key_and_never_the_clients() {
        let u = upstreams(Some("k"));
        let info = crate::frontdoor::bedrock::parse(
            &http::Method::POST,
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        )
        .unwrap();
        let mut client = RequestHeader::build("POST", b"/bedrock/model/x/invoke", None).unwrap();
        client.insert_header("x-api-key", "sk-gw-client").unwrap();
        client
            .insert_header("authorization", "Bearer sk-gw-client")
            .unwrap();
        let out = outgoing(
            &u,
            1,
            &info,
            &client,
            br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":1,"messages":[]}"#,
        );
        let backend = u.backends()[1].clone();
        let r = u
            .prepare(&backend, out, &client.method, &client.headers, "rid-2")
            .unwrap();
        assert_eq!(r.header.raw_path(), b"/v1/messages");
        assert_eq!(r.header.headers["x-api-key"], "sk-ant-upstream");
        assert_eq!(r.header.headers["anthropic-version"], "2023-06-01");
        assert!(r.header.headers.get("authorization").is_none());
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["model"], "claude-sonnet-4-5-20250929");
    }

    #[test]
    fn sigv4_without_credentials_is_unavailable_not_unsigned() {
        let u = upstreams(None);
        let info =
            crate::frontdoor::bedrock::parse(&http::Method::POST, "/model/a/invoke").unwrap();
        let client = RequestHeader::build("POST", b"/bedrock/model/a/invoke", None).unwrap();
        let out = outgoing(&u, 0, &info, &client, b"");
        let backend = u.backends()[0].clone();
        let e = u
            .prepare(&backend, out, &client.method, &client.headers, "r")
            .unwrap_err();
        assert_eq!(e.status(), 503);
    }
}
