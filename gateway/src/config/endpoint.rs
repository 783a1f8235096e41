//! Endpoint URLs as configured: a pure parse, so the configuration can be checked without
//! resolving or connecting anything (the upstream layer resolves them).

/// Why an endpoint URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL the gateway can call.
    #[error("`{url}` is not a valid endpoint: {reason}")]
    Invalid {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// An endpoint URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// Whether to speak TLS.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// TCP port (the scheme's default when the URL names none).
    pub port: u16,
    /// The `Host` header value (with the port when it is not the scheme's default).
    pub authority: String,
    /// A path prefix put before every request path (no trailing `/`).
    pub base_path: String,
}

impl EndpointUrl {
    /// Parses `http(s)://host[:port][/base]`.
    pub fn parse(url: &str) -> Result<EndpointUrl, EndpointError> {
        let invalid = |reason| EndpointError::Invalid {
            url: url.to_string(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if uri.query().is_some() {
            return Err(invalid("an endpoint cannot have a query"));
        }
        let default_port = if tls { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = match uri.port_u16() {
            Some(p) if p != default_port => uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_else(|| format!("{host}:{p}")),
            _ => uri.host().unwrap_or(&host).to_string(),
        };
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(EndpointUrl {
            tls,
            host,
            port,
            authority,
            base_path,
        })
    }
}
