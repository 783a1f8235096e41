//! Start-up: turns a validated [`Config`] into a running Pingora server.
//!
//! Two Pingora services run in one process: the data plane ([`crate::proxy::Gateway`]) and
//! the admin listener ([`crate::admin::Admin`]). Background work that the request path reads
//! from (credential refresh, DNS refresh) runs on a small runtime of its own, so it never
//! competes with request handling for a worker and survives whatever Pingora does with its
//! service runtimes. Pingora handles the signals: SIGTERM and SIGINT shut down after requests
//! in flight finish (up to `server.grace_period`), SIGQUIT hands the listeners to a new process.

use std::sync::Arc;

use pingora_core::apps::http_app::HttpServer;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;

use crate::admin::Admin;
use crate::config::Config;
use crate::frontdoor::FrontDoors;
use crate::proxy::Gateway;
use crate::upstream::Upstreams;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The background runtime could not be created.
    #[error("cannot start the background runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// An endpoint could not be used.
    #[error(transparent)]
    Endpoint(#[from] crate::upstream::EndpointError),
    /// The TLS certificate or key could not be loaded.
    #[error("cannot load the TLS certificate and key: {0}")]
    Tls(String),
}

/// Runs the gateway until it is told to stop. Never returns on success.
pub fn run(config: Config) -> Result<(), StartError> {
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gw-background")
        .enable_all()
        .build()?;
    let upstreams = Arc::new(Upstreams::start(&config, background.handle())?);
    // Resolve names once before listening, so the first requests find addresses.
    background.block_on(async {
        for b in upstreams.backends() {
            let crate::upstream::Provider::Bedrock(bedrock) = &b.provider;
            for e in [&bedrock.runtime, &bedrock.control] {
                if let Err(err) = e.resolve().await {
                    tracing::warn!(backend = %b.name, host = %e.host, error = %err, "cannot resolve upstream host yet");
                }
            }
        }
    });

    let conf = ServerConf {
        threads: config.server.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(config.server.grace_period.0.as_secs()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let gateway = Gateway::new(
        FrontDoors::new(&config.front_doors),
        Arc::clone(&upstreams),
        config.server.max_request_body.0,
        config.server.client_body_timeout.0,
    );
    let mut data_plane =
        pingora_proxy::http_proxy_service_with_name(&server.configuration, gateway, "data plane");
    match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => {
            let mut tls =
                TlsSettings::intermediate(cert, key).map_err(|e| StartError::Tls(e.to_string()))?;
            tls.enable_h2();
            data_plane.add_tls_with_settings(&config.server.listen, None, tls);
        }
        _ => data_plane.add_tcp(&config.server.listen),
    }

    let mut admin = Service::new(
        "admin".to_string(),
        HttpServer::new_app(Admin::new(upstreams)),
    );
    admin.add_tcp(&config.server.admin_listen);

    server.add_service(data_plane);
    server.add_service(admin);
    tracing::info!(
        listen = %config.server.listen,
        admin = %config.server.admin_listen,
        tls = config.server.tls_cert.is_some(),
        backends = config.backends.len(),
        "gateway starting"
    );
    // `background` must live as long as the process: `run_forever` never returns.
    let _background = background;
    server.run_forever()
}
