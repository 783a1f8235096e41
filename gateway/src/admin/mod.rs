//! The admin listener: health and readiness for load balancers and orchestrators.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 when every backend can authenticate (credentials loaded or an API key
//!   set) and has a resolved address; 503 with the reasons otherwise.
//! - `GET /metrics`: Prometheus text.
//!
//! It listens on its own address (loopback by default), apart from client traffic.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// The admin HTTP application.
pub struct Admin {
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
}

impl Admin {
    /// Admin endpoints over the gateway's upstreams and metrics.
    pub fn new(upstreams: Arc<Upstreams>, metrics: Arc<Metrics>) -> Self {
        Self { upstreams, metrics }
    }

    fn readiness(&self) -> (u16, serde_json::Value) {
        let mut problems = serde_json::Map::new();
        for b in self.upstreams.backends() {
            if let Err(why) = b.ready() {
                problems.insert(b.name.to_string(), why.into());
            }
        }
        if problems.is_empty() {
            (200, serde_json::json!({ "ready": true }))
        } else {
            (
                503,
                serde_json::json!({ "ready": false, "backends": problems }),
            )
        }
    }
}

fn json(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .expect("a static response head is valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        match (head.method.as_str(), head.uri.path()) {
            ("GET", "/healthz") => json(200, serde_json::json!({ "status": "ok" })),
            ("GET", "/readyz") => {
                let (status, body) = self.readiness();
                json(status, body)
            }
            ("GET", "/metrics") => {
                let body = self.metrics.render().into_bytes();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .expect("a static response head is valid")
            }
            _ => json(404, serde_json::json!({ "error": "not found" })),
        }
    }
}
