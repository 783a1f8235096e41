//! An upstream endpoint URL, resolved in the background.
//!
//! `HttpPeer` wants a socket address, and resolving a name on the request path would block a
//! worker. So each endpoint keeps its last resolved addresses in an `ArcSwap`, refreshed by a
//! background task; a request only reads them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use crate::config::endpoint::{EndpointError, EndpointUrl};

/// How often names are resolved again (DNS answers for cloud endpoints change).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Where a backend is reached: scheme, host, port and an optional base path.
#[derive(Debug)]
pub struct Endpoint {
    /// Whether to speak TLS (certificates are verified against the system roots).
    pub tls: bool,
    /// Host name or IP literal, also the TLS SNI.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The `Host` header value (with the port when it is not the scheme's default).
    pub authority: String,
    /// A path prefix put before every request path (empty for the providers' own endpoints).
    pub base_path: String,
    addrs: ArcSwap<Vec<SocketAddr>>,
}

impl Endpoint {
    /// Parses `http(s)://host[:port][/base]` (see [`EndpointUrl::parse`]). IP literals are
    /// usable at once; names need [`Endpoint::resolve`].
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let EndpointUrl {
            tls,
            host,
            port,
            authority,
            base_path,
        } = EndpointUrl::parse(url)?;
        let addrs = host
            .parse::<std::net::IpAddr>()
            .map(|ip| vec![SocketAddr::new(ip, port)])
            .unwrap_or_default();
        Ok(Endpoint {
            tls,
            host,
            port,
            authority,
            base_path,
            addrs: ArcSwap::from_pointee(addrs),
        })
    }

    /// The address to connect to now, if the name has resolved.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addrs.load().first().copied()
    }

    /// Whether the host is a name that needs resolving (not an IP literal).
    pub fn needs_resolving(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_err()
    }

    /// Resolves the host name once, keeping the previous answer on failure.
    pub async fn resolve(&self) -> std::io::Result<()> {
        if !self.needs_resolving() {
            return Ok(());
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        if !found.is_empty() {
            self.addrs.store(Arc::new(found));
        }
        Ok(())
    }

    /// Keeps the resolved addresses fresh, on the background runtime.
    pub fn spawn_resolver(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        if !self.needs_resolving() {
            return;
        }
        let endpoint = Arc::clone(self);
        runtime.spawn(async move {
            loop {
                if let Err(e) = endpoint.resolve().await {
                    tracing::warn!(host = %endpoint.host, error = %e, "cannot resolve upstream host");
                }
                let wait = if endpoint.addr().is_some() {
                    RESOLVE_EVERY
                } else {
                    Duration::from_secs(2)
                };
                tokio::time::sleep(wait).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_default_and_explicit_ports() {
        let e = Endpoint::parse("https://bedrock-runtime.us-east-1.amazonaws.com").unwrap();
        assert!(e.tls);
        assert_eq!(e.port, 443);
        assert_eq!(e.authority, "bedrock-runtime.us-east-1.amazonaws.com");
        assert_eq!(e.base_path, "");
        assert!(e.addr().is_none());

        let e = Endpoint::parse("http://127.0.0.1:18080/base/").unwrap();
        assert!(!e.tls);
        assert_eq!(e.authority, "127.0.0.1:18080");
        assert_eq!(e.base_path, "/base");
        assert_eq!(e.addr(), Some("127.0.0.1:18080".parse().unwrap()));
    }

    #[test]
    fn refuses_what_it_cannot_call() {
        for bad in ["ftp://x", "127.0.0.1:80", "http://", "http://h/?q=1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
