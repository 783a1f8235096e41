//! The Amazon Bedrock backend: endpoints, credentials and SigV4 signing.
//!
//! Requests are signed with `aws-sigv4` for service `bedrock` in the backend's region, over
//! exactly the bytes that are sent: the path as the client encoded it (the signer encodes it
//! once more for the canonical URI, as AWS does for every service but S3) and the hash of the
//! body as forwarded. With a Bedrock API key (`bearer_token`) the key is sent as
//! `Authorization: Bearer` instead.

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use super::credentials::AwsCredentials;
use pingora_http::RequestHeader;

use super::endpoint::Endpoint;
use super::provider::{set_header, Provider, Signable};
use crate::config::BedrockBackendConfig;
use crate::protocol::error::GatewayError;
use crate::protocol::{BackendKind, Operation};

/// SigV4 service name of both the runtime and the control plane.
const SIGNING_SERVICE: &str = "bedrock";

/// How a Bedrock backend authenticates.
pub enum BedrockAuth {
    /// SigV4 with credentials from the AWS chain.
    SigV4(Arc<AwsCredentials>),
    /// A Bedrock API key.
    Bearer(String),
}

impl std::fmt::Debug for BedrockAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BedrockAuth::SigV4(_) => f.write_str("SigV4"),
            // The key itself never reaches a log line.
            BedrockAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// One Bedrock backend (a region of an account).
#[derive(Debug)]
pub struct BedrockBackend {
    /// The SigV4 region.
    pub region: String,
    /// `bedrock-runtime` endpoint.
    pub runtime: Arc<Endpoint>,
    /// `bedrock` control-plane endpoint.
    pub control: Arc<Endpoint>,
    /// Credentials.
    pub auth: BedrockAuth,
    /// The shared-config profile credentials come from, instead of the chain's choice.
    pub profile: Option<String>,
}

impl BedrockBackend {
    /// Builds the backend from its (validated) configuration.
    pub fn from_config(
        config: &BedrockBackendConfig,
    ) -> Result<Self, super::endpoint::EndpointError> {
        let region = config.region.clone().unwrap_or_default();
        let runtime = match &config.endpoint {
            Some(url) => Endpoint::parse(url)?,
            None => Endpoint::parse(&format!("https://bedrock-runtime.{region}.amazonaws.com"))?,
        };
        let control = match &config.control_endpoint {
            Some(url) => Endpoint::parse(url)?,
            None => Endpoint::parse(&format!("https://bedrock.{region}.amazonaws.com"))?,
        };
        let auth = match &config.bearer_token {
            Some(token) => BedrockAuth::Bearer(token.clone()),
            None => BedrockAuth::SigV4(Arc::new(AwsCredentials::default())),
        };
        Ok(Self {
            region,
            runtime: Arc::new(runtime),
            control: Arc::new(control),
            auth,
            profile: config.profile.clone(),
        })
    }

    /// Whether requests can be authenticated now.
    fn credentials_ready(&self) -> Result<(), String> {
        match &self.auth {
            BedrockAuth::Bearer(_) => Ok(()),
            BedrockAuth::SigV4(c) => match c.get() {
                Some(_) => Ok(()),
                None => Err(c
                    .last_error()
                    .unwrap_or_else(|| "AWS credentials are still loading".into())),
            },
        }
    }

    /// The headers that authenticate a request: `authorization`, `x-amz-date` and, with
    /// temporary credentials, `x-amz-security-token`.
    pub fn auth_headers(
        &self,
        backend_name: &str,
        method: &str,
        path_and_query: &str,
        host: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, GatewayError> {
        match &self.auth {
            BedrockAuth::Bearer(token) => Ok(vec![("authorization", format!("Bearer {token}"))]),
            BedrockAuth::SigV4(cell) => {
                let creds = cell.get().ok_or_else(|| {
                    GatewayError::Unavailable(format!(
                        "the gateway has no AWS credentials for backend {backend_name}: {}",
                        cell.last_error().unwrap_or_else(|| "still loading".into())
                    ))
                })?;
                sigv4_headers(
                    &creds,
                    &self.region,
                    method,
                    path_and_query,
                    host,
                    content_type,
                    body,
                    SystemTime::now(),
                )
            }
        }
    }
}

/// Signs a request with SigV4 and returns the headers to add.
#[allow(clippy::too_many_arguments)]
pub fn sigv4_headers(
    creds: &Credentials,
    region: &str,
    method: &str,
    path_and_query: &str,
    host: &str,
    content_type: Option<&str>,
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, GatewayError> {
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| GatewayError::Internal(format!("SigV4 parameters: {e}")))?
        .into();
    let mut headers = vec![("host", host)];
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    let request = SignableRequest::new(
        method,
        path_and_query,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| GatewayError::BadRequest(format!("cannot sign this request path: {e}")))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| GatewayError::Internal(format!("SigV4 signing failed: {e}")))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

impl Provider for BedrockBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Bedrock
    }

    fn ready(&self) -> Result<(), String> {
        self.credentials_ready()
    }

    fn endpoints(&self) -> Vec<&Arc<Endpoint>> {
        vec![&self.runtime, &self.control]
    }

    fn endpoint_for(&self, operation: Operation) -> &Arc<Endpoint> {
        match operation {
            Operation::ControlPlane => &self.control,
            _ => &self.runtime,
        }
    }

    fn authenticate(
        &self,
        backend: &str,
        request: Signable<'_>,
        header: &mut RequestHeader,
    ) -> Result<(), GatewayError> {
        for (name, value) in self.auth_headers(
            backend,
            request.method,
            request.path_and_query,
            request.host,
            request.content_type,
            request.body,
        )? {
            set_header(header, name, &value)?;
        }
        Ok(())
    }

    fn start_refresh(&self, backend: &str, runtime: &tokio::runtime::Handle) {
        if let BedrockAuth::SigV4(creds) = &self.auth {
            creds.spawn_refresh(
                runtime,
                backend.to_string(),
                self.region.clone(),
                self.profile.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(String::from),
            None,
            "test",
        )
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn signs_host_date_and_content_type_for_bedrock_in_the_region() {
        let h = sigv4_headers(
            &creds(None),
            "us-east-1",
            "POST",
            "/model/m%3A0/invoke",
            "bedrock-runtime.us-east-1.amazonaws.com",
            Some("application/json"),
            b"{}",
            at(),
        )
        .unwrap();
        let auth = header(&h, "authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="), "{auth}");
        assert_eq!(header(&h, "x-amz-date"), Some("20231114T221320Z"));
        assert!(header(&h, "x-amz-security-token").is_none());
    }

    #[test]
    fn session_token_is_sent_and_signed() {
        let h = sigv4_headers(
            &creds(Some("TOKEN")),
            "eu-west-1",
            "GET",
            "/inference-profiles?type=SYSTEM_DEFINED",
            "h",
            None,
            b"",
            at(),
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-security-token"), Some("TOKEN"));
        assert!(header(&h, "authorization")
            .unwrap()
            .contains("host;x-amz-date;x-amz-security-token"));
    }

    #[test]
    fn encoded_and_raw_colons_sign_differently_because_they_are_different_paths() {
        let sig = |p: &str| {
            header(
                &sigv4_headers(&creds(None), "us-east-1", "POST", p, "h", None, b"", at()).unwrap(),
                "authorization",
            )
            .unwrap()
            .to_string()
        };
        // Both canonicalize by encoding once more: `%3A` -> `%253A`, `:` -> `%3A`.
        assert_ne!(sig("/model/a%3A0/invoke"), sig("/model/a:0/invoke"));
    }
}
