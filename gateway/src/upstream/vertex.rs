//! The Vertex AI backend: its endpoint, project and location, and Google OAuth tokens.
//!
//! Requests carry `Authorization: Bearer <access token>`; the token comes from
//! [`GoogleCredentials`] (a service-account key, an `authorized_user` file or the metadata
//! server), refreshed in the background, so a request only reads the current one.

use std::sync::Arc;

use pingora_http::RequestHeader;

use super::endpoint::Endpoint;
use super::google::GoogleCredentials;
use super::provider::{set_header, Provider, Signable};
use super::UpstreamError;
use crate::config::VertexBackendConfig;
use crate::protocol::error::GatewayError;
use crate::protocol::{BackendKind, Operation};

/// One Vertex AI backend (a location of a project).
#[derive(Debug)]
pub struct VertexBackend {
    /// The project billed for the calls.
    pub project: String,
    /// The location (`us-east5`, `global`, ...).
    pub region: String,
    /// The `aiplatform` endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Access tokens.
    pub auth: Arc<GoogleCredentials>,
}

impl VertexBackend {
    /// Builds the backend from its (validated) configuration.
    pub fn from_config(config: &VertexBackendConfig) -> Result<Self, UpstreamError> {
        let region = config.region.clone().unwrap_or_default();
        let endpoint = match &config.endpoint {
            Some(url) => Endpoint::parse(url)?,
            None if region == "global" => Endpoint::parse("https://aiplatform.googleapis.com")?,
            None => Endpoint::parse(&format!("https://{region}-aiplatform.googleapis.com"))?,
        };
        let auth =
            GoogleCredentials::discover(config.credentials_file.as_deref()).map_err(|e| {
                UpstreamError::Credentials {
                    backend: config.name.clone(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            project: config.project.clone().unwrap_or_default(),
            region,
            endpoint: Arc::new(endpoint),
            auth: Arc::new(auth),
        })
    }

    /// Whether a token is at hand.
    fn token_ready(&self) -> Result<(), String> {
        match self.auth.token() {
            Some(_) => Ok(()),
            None => Err(self
                .auth
                .last_error()
                .unwrap_or_else(|| "the Google access token is still loading".into())),
        }
    }

    /// The `authorization` header for a request.
    pub fn auth_header(&self, backend_name: &str) -> Result<String, GatewayError> {
        let token = self.auth.token().ok_or_else(|| {
            GatewayError::Unavailable(format!(
                "the gateway has no Google access token for backend {backend_name}: {}",
                self.auth
                    .last_error()
                    .unwrap_or_else(|| "still loading".into())
            ))
        })?;
        Ok(format!("Bearer {token}"))
    }
}

impl Provider for VertexBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vertex
    }

    fn ready(&self) -> Result<(), String> {
        self.token_ready()
    }

    fn endpoints(&self) -> Vec<&Arc<Endpoint>> {
        vec![&self.endpoint]
    }

    fn endpoint_for(&self, _operation: Operation) -> &Arc<Endpoint> {
        &self.endpoint
    }

    fn location(&self) -> (&str, &str) {
        (&self.project, &self.region)
    }

    fn authenticate(
        &self,
        backend: &str,
        _request: Signable<'_>,
        header: &mut RequestHeader,
    ) -> Result<(), GatewayError> {
        set_header(header, "authorization", &self.auth_header(backend)?)
    }

    fn start_refresh(&self, backend: &str, runtime: &tokio::runtime::Handle) {
        self.auth.spawn_refresh(runtime, backend.to_string());
    }
}
