//! The admin listener: health and readiness for load balancers and orchestrators.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 when every backend can authenticate (credentials loaded or an API key
//!   set) and has a resolved address, and the data-plane listener accepts connections; 503
//!   with the reasons otherwise (`"listening": false` while the data listener is not up yet),
//!   and 503 with `"draining": true` from the moment a stop begins.
//! - `GET /metrics`: Prometheus text.
//! - `GET /status`: version, uptime, configuration generation, plugins with their content
//!   hashes, backends with their health, the last reload error.
//! - `POST /admin/reload`: reloads the configuration; answers the new generation or the error.
//!
//! With `[admin] token` set, `/status`, `/metrics` and `/admin/*` require
//! `Authorization: Bearer <token>`; the health checks never do.
//!
//! It listens on its own address (loopback by default), apart from client traffic, and is
//! served by [`AdminListener`] on the background runtime rather than as a Pingora service, so
//! that it keeps answering (`/readyz` 503) while the data plane drains after SIGTERM.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::http::ServerSession;

use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::upstream::Upstreams;

/// The admin HTTP application.
pub struct Admin {
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    token: Option<String>,
    lifecycle: Arc<Lifecycle>,
}

impl Admin {
    /// Admin endpoints over the gateway's upstreams, metrics and reloader.
    pub fn new(
        upstreams: Arc<Upstreams>,
        metrics: Arc<Metrics>,
        reloader: Arc<Reloader>,
        token: Option<String>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Self {
            upstreams,
            metrics,
            reloader,
            token: token.filter(|t| !t.is_empty()),
            lifecycle,
        }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), token.as_bytes())
    }

    fn backends(&self) -> serde_json::Value {
        self.upstreams
            .backends()
            .iter()
            .map(|b| {
                let health = match b.ready() {
                    Ok(()) => serde_json::json!({ "ready": true }),
                    Err(why) => serde_json::json!({ "ready": false, "reason": why }),
                };
                serde_json::json!({ "name": &*b.name, "kind": b.kind().as_str(), "health": health })
            })
            .collect()
    }

    async fn readiness(&self) -> (u16, serde_json::Value) {
        if self.lifecycle.draining() {
            return (503, serde_json::json!({ "ready": false, "draining": true }));
        }
        if !self.lifecycle.data_plane_listening().await {
            return (
                503,
                serde_json::json!({ "ready": false, "listening": false }),
            );
        }
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

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (method, path) = {
            let head = session.req_header();
            (
                head.method.as_str().to_string(),
                head.uri.path().to_string(),
            )
        };
        let open = matches!(path.as_str(), "/healthz" | "/readyz");
        if !open && !self.authorized(session) {
            return json(401, serde_json::json!({ "error": "admin token required" }));
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/status") => json(200, self.reloader.status(self.backends())),
            ("POST", "/admin/reload") => match self.reloader.reload("admin API").await {
                Ok(report) => json(200, serde_json::to_value(report).unwrap_or_default()),
                Err(error) => json(
                    422,
                    serde_json::json!({ "error": error, "generation": self.reloader.generation() }),
                ),
            },
            ("GET", "/healthz") => json(200, serde_json::json!({ "status": "ok" })),
            ("GET", "/readyz") => {
                let (status, body) = self.readiness().await;
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

/// The admin listener, accepting on the background runtime until the process exits or
/// [`AdminListener::close`]. The socket is bound with `SO_REUSEPORT`, so the new process of a
/// binary upgrade binds the same address while the old one still runs; the old one closes its
/// own at the hand-over.
pub struct AdminListener {
    stop: tokio::sync::watch::Sender<bool>,
}

impl AdminListener {
    /// Binds `addr` and serves `admin` there on `runtime`.
    pub fn serve(
        addr: std::net::SocketAddr,
        admin: Admin,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<AdminListener> {
        let _entered = runtime.enter();
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(128)?;
        let app = Arc::new(HttpServer::new_app(admin));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        // The HTTP app's own shutdown signal: never raised, connections end with the process.
        let (_never, shutdown) = tokio::sync::watch::channel(false);
        runtime.spawn(async move {
            let _never = _never;
            // Closed on request only: dropping the handle (Pingora drops its signal watcher
            // once a stop begins) leaves the admin answering until the process exits.
            let closed = async move {
                if stopped.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::pin!(closed);
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = &mut closed => break,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let app = Arc::clone(&app);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let stream: pingora_core::protocols::Stream =
                        Box::new(pingora_core::protocols::l4::stream::Stream::from(tcp));
                    app.process_new(stream, &shutdown).await;
                });
            }
        });
        Ok(AdminListener { stop })
    }

    /// Stops accepting (the new process of a binary upgrade has its own).
    pub fn close(&self) {
        self.stop.send_replace(true);
    }
}
