//! Start-up: turns a validated [`Config`] into a running Pingora server.
//!
//! Two Pingora services run in one process: the data plane ([`crate::proxy::Gateway`]) and
//! the admin listener ([`crate::admin::Admin`]). Background work that the request path reads
//! from (credential refresh, DNS refresh) runs on a small runtime of its own, so it never
//! competes with request handling for a worker and survives whatever Pingora does with its
//! service runtimes.
//!
//! Stopping: SIGTERM and SIGINT drain (`/readyz` turns 503, the listeners close, requests in
//! flight run to their end within `server.grace_period`, then the process exits; see
//! [`crate::lifecycle`]); a second SIGTERM or SIGINT stops at once. SIGQUIT hands the
//! listeners to a new process (a binary upgrade), then drains the same way.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;

use crate::admin::{Admin, AdminListener};
use crate::audit::AuditSink;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::frontdoor::FrontDoors;
use crate::lifecycle::{self, DrainPlan, Lifecycle, Limited};
use crate::metrics::Metrics;
use crate::plugin::pipeline::Completions;
use crate::plugin::{HostServices, Pipeline, PluginEngine, PluginError};
use crate::proxy::{ClientLimits, Gateway};
use crate::reload::{Live, Reloader};
use crate::state::SharedStore;
use crate::upstream::route::Router;
use crate::upstream::Upstreams;

/// The data plane's per-connection write buffer.
const DOWNSTREAM_WRITE_BUFFER: usize = 16 * 1024;
/// The data plane's per-connection read buffer for plain HTTP: a request head and a small body
/// in one read (Pingora's default, 64 KiB zeroed per connection, is mostly never used).
const PLAIN_READ_BUFFER: usize = 4096;
/// The data plane's per-connection read buffer under TLS: one TLS record.
const TLS_READ_BUFFER: usize = 16 * 1024 + 256;
/// Seconds past the grace period after which Pingora itself ends a stop the drain has not.
const DRAIN_BACKSTOP_SECONDS: u64 = 5;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The background runtime could not be created.
    #[error("cannot start the background runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// A backend could not be set up.
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// The routes could not be built.
    #[error("{0}")]
    Routes(String),
    /// The TLS certificate or key could not be loaded.
    #[error("cannot load the TLS certificate and key: {0}")]
    Tls(String),
    /// The audit file could not be opened.
    #[error("cannot open the audit file: {0}")]
    Audit(std::io::Error),
    /// The admin listener could not be bound.
    #[error("cannot listen on server.admin_listen: {0}")]
    Admin(std::io::Error),
    /// A plugin could not be loaded.
    #[error("plugin {0}: {1}")]
    Plugin(String, PluginError),
    /// The state store could not be set up.
    #[error("[state]: {0}")]
    State(String),
}

/// SIGTERM and SIGINT both drain (requests in flight finish, audit records are flushed);
/// SIGQUIT hands the listeners to a new process, then drains. A second SIGTERM or SIGINT
/// during a drain stops at once.
struct ShutdownSignals {
    lifecycle: Arc<Lifecycle>,
    drain: std::sync::Mutex<Option<DrainPlan>>,
    audit: AuditSink,
    /// Kept answering during a drain (`/readyz` says 503); closed at an upgrade's hand-over,
    /// where the new process answers.
    admin: AdminListener,
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let signal = tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        };
        self.lifecycle.begin_drain();
        if matches!(signal, ShutdownSignal::GracefulUpgrade) {
            self.admin.close();
        }
        if let Some(mut plan) = self.drain.lock().ok().and_then(|mut d| d.take()) {
            plan.signalled = std::time::Instant::now();
            lifecycle::drain(plan);
        }
        let audit = self.audit.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!(
                "second stop signal: stopping now, without waiting for requests in flight"
            );
            audit.close();
            std::process::exit(1);
        });
        signal
    }
}

/// Raises the open-file soft limit to the hard limit (each open stream holds two sockets),
/// and says what it is.
fn raise_open_file_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed, which lives on
    // this stack frame.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !ok {
        tracing::warn!("cannot read the open-file limit");
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    let open_files = limit.rlim_cur as u64;
    tracing::info!(open_files, "open-file limit");
    let needed = 2 * max_connections as u64 + 256;
    if open_files < needed {
        tracing::warn!(
            open_files,
            max_connections,
            "the open-file limit is below what server.max_connections may need (two per stream); raise the hard limit (ulimit -Hn, LimitNOFILE=)"
        );
    }
}

/// Runs the gateway until it is told to stop, then flushes what must not be lost.
/// `config_path` is read again on every reload.
/// With `upgrade`, the listeners are taken over from a running gateway (which is then sent
/// `SIGQUIT`) instead of being bound anew.
pub fn run(config: Config, config_path: &std::path::Path, upgrade: bool) -> Result<(), StartError> {
    raise_open_file_limit(config.server.max_connections);
    let lifecycle = Lifecycle::new(config.server.max_connections);
    if let Ok(address) = config.server.listen.parse() {
        lifecycle.set_data_address(address);
    }
    let background = background_runtime()?;
    let upstreams = start_upstreams(&config, &background)?;

    let metrics = Arc::new(Metrics::new());
    let audit = open_audit(&config)?;
    let PluginHost {
        engine,
        pipeline,
        completions,
    } = start_plugins(&config, &metrics, &audit, &background)?;
    let router = Arc::new(ArcSwap::from_pointee(
        Router::new(&config, &upstreams).map_err(StartError::Routes)?,
    ));
    let live = Live {
        pipeline: Arc::clone(&pipeline),
        router: Arc::clone(&router),
        upstreams: Arc::clone(&upstreams),
    };
    let reloader = start_reloader(
        config_path,
        &config,
        &engine,
        live,
        &completions,
        &background,
        &metrics,
    );

    let mut server = pingora_server(&config, upgrade);

    let gateway = Gateway::new(
        Arc::clone(&metrics),
        FrontDoors::new(&config.front_doors),
        Arc::clone(&pipeline),
        router,
        Arc::clone(&upstreams),
        ClientLimits::from_config(&config.server),
        Arc::clone(&lifecycle),
    );
    let data_plane = data_plane_service(&server, &config, gateway, &lifecycle)?;
    let admin = admin_listener(
        &config,
        upstreams,
        &metrics,
        &reloader,
        &lifecycle,
        background.handle(),
    )?;
    server.add_service(data_plane);
    tracing::info!(
        listen = %config.server.listen,
        admin = %config.server.admin_listen,
        tls = config.server.tls_cert.is_some(),
        backends = config.backends.len(),
        "gateway starting"
    );
    let drain = drain_plan(&config, &lifecycle, &server, &completions, &audit);
    server.run(RunArgs {
        shutdown_signal: Box::new(ShutdownSignals {
            lifecycle,
            drain: std::sync::Mutex::new(Some(drain)),
            audit: audit.clone(),
            admin,
        }),
    });

    flush_after_stop(&config, &completions, &audit);
    drop(pipeline);
    background.shutdown_timeout(std::time::Duration::from_secs(1));
    tracing::info!("gateway stopped");
    Ok(())
}

/// The small runtime for background work the request path reads from (credential and DNS
/// refreshes, plugin loads, on-complete runs).
fn background_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gw-background")
        .enable_all()
        .build()
}

/// Starts the backends' refresh tasks on `background` and resolves every upstream host once,
/// before listening, so the first requests find addresses (a host that does not resolve yet
/// is only a warning).
fn start_upstreams(
    config: &Config,
    background: &tokio::runtime::Runtime,
) -> Result<Arc<Upstreams>, StartError> {
    let upstreams = Arc::new(Upstreams::start(config, background.handle())?);
    background.block_on(async {
        for b in upstreams.backends() {
            for e in b.endpoints() {
                if let Err(err) = e.resolve().await {
                    tracing::warn!(backend = %b.name, host = %e.host, error = %err, "cannot resolve upstream host yet");
                }
            }
        }
    });
    Ok(upstreams)
}

/// The audit sink: the configured file, or the log when there is none.
fn open_audit(config: &Config) -> Result<AuditSink, StartError> {
    match &config.audit {
        Some(a) => AuditSink::open(a).map_err(StartError::Audit),
        None => Ok(AuditSink::log_only()),
    }
}

/// The plugin host as started.
struct PluginHost {
    /// The engine, which reloads load new plugin versions on.
    engine: Arc<PluginEngine>,
    /// The pipeline serving new requests, swapped by reloads.
    pipeline: Arc<ArcSwap<Pipeline>>,
    /// The on-complete runs in flight, waited for before the audit sink closes.
    completions: Arc<Completions>,
}

/// The plugin host: the host services, the engine, every configured plugin loaded (on
/// `background`), and the pipeline that runs them with its tracker of on-complete runs.
fn start_plugins(
    config: &Config,
    metrics: &Arc<Metrics>,
    audit: &AuditSink,
    background: &tokio::runtime::Runtime,
) -> Result<PluginHost, StartError> {
    // The Redis store's connections and probes live on `background`.
    let state = SharedStore::from_config(
        &config.state,
        metrics.state_incidents.clone(),
        background.handle().clone(),
    )
    .map_err(|e| StartError::State(e.to_string()))?;
    let completions = Arc::new(Completions::default());
    let services = Arc::new(HostServices::new(
        state,
        audit.clone(),
        Arc::clone(metrics),
        Catalog::new(&config.models),
        Arc::clone(&completions),
    ));
    let engine = Arc::new(
        PluginEngine::new(&config.plugin_runtime, services)
            .map_err(|e| StartError::Plugin("(engine)".into(), e))?,
    );
    let plugins = background
        .block_on(engine.load_all(&config.plugins))
        .map_err(|(name, e)| StartError::Plugin(name, e))?
        .into_iter()
        .map(|l| {
            tracing::info!(plugin = %l.plugin.name, hash = %l.plugin.content_hash, isolation = ?l.plugin.isolation, on_error = ?l.plugin.on_error, "plugin loaded");
            l.plugin
        })
        .collect();
    let pipeline = Arc::new(ArcSwap::from_pointee(Pipeline::new(
        plugins,
        Arc::clone(&completions),
        background.handle().clone(),
    )));
    Ok(PluginHost {
        engine,
        pipeline,
        completions,
    })
}

/// The reloader of `config_path` over `live`: it recompiles the plugins with the optimizing
/// compiler later, watches the configuration's files, and reloads on SIGHUP.
fn start_reloader(
    config_path: &std::path::Path,
    config: &Config,
    engine: &Arc<PluginEngine>,
    live: Live,
    completions: &Arc<Completions>,
    background: &tokio::runtime::Runtime,
    metrics: &Metrics,
) -> Arc<Reloader> {
    let reloader = Reloader::new(
        config_path.to_path_buf(),
        config.clone(),
        Arc::clone(engine),
        live,
        Arc::clone(completions),
        background.handle().clone(),
        metrics,
    );
    reloader.optimize_later(1, config.plugins.clone());
    if let Err(e) = reloader.watch() {
        tracing::error!(error = %e, "configuration changes will not be picked up automatically; use SIGHUP or POST /admin/reload");
    }
    reloader.reload_on_sighup();
    reloader
}

/// Pingora's server configuration: worker threads, the stop timings, the upgrade socket.
fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        // The drain (crate::lifecycle) ends the process as soon as the last request is done;
        // Pingora's wait after closing the listeners is only the backstop.
        grace_period_seconds: Some(config.server.grace_period.0.as_secs() + DRAIN_BACKSTOP_SECONDS),
        upgrade_sock: config.server.upgrade_sock.clone(),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// The data plane service: `gateway` behind the connection limit, on `server.listen`, over
/// TLS (with HTTP/2) when a certificate and key are configured.
fn data_plane_service(
    server: &Server,
    config: &Config,
    gateway: Gateway,
    lifecycle: &Arc<Lifecycle>,
) -> Result<Service<Limited<HttpProxy<Gateway>>>, StartError> {
    let proxy = pingora_proxy::http_proxy(&server.configuration, gateway);
    let mut data_plane = Service::new(
        "data plane".to_string(),
        Limited::new(proxy, Arc::clone(lifecycle)),
    );
    // A write buffer large enough for a response head and a typical JSON answer (or one
    // stream chunk with its framing) makes them one `send` instead of two or three; Pingora
    // still flushes every streamed chunk at once. Reads: a small buffer for plain HTTP (a
    // request head and a small body in one read; Pingora's default is 64 KiB, zeroed, per
    // connection); TLS reads records, so it keeps a record's worth.
    let buffers = L4BufferSettings::default().write(DOWNSTREAM_WRITE_BUFFER);
    let listener = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => {
            let mut tls =
                TlsSettings::intermediate(cert, key).map_err(|e| StartError::Tls(e.to_string()))?;
            tls.enable_h2();
            ListenerConfig::tcp(config.server.listen.as_str())
                .l4_buffer(buffers.read(TLS_READ_BUFFER))
                .tls(tls)
        }
        _ => ListenerConfig::tcp(config.server.listen.as_str())
            .l4_buffer(buffers.read(PLAIN_READ_BUFFER)),
    };
    data_plane.add_listener(listener);
    Ok(data_plane)
}

/// The Pingora server, bootstrapped (with `upgrade`, it has taken the listeners over).
fn pingora_server(config: &Config, upgrade: bool) -> Server {
    let mut server = Server::new_with_opt_and_conf(
        pingora_core::server::configuration::Opt {
            upgrade,
            ..Default::default()
        },
        server_conf(config),
    );
    server.bootstrap();
    server
}

/// The admin listener on `server.admin_listen`, on the background runtime.
fn admin_listener(
    config: &Config,
    upstreams: Arc<Upstreams>,
    metrics: &Arc<Metrics>,
    reloader: &Arc<Reloader>,
    lifecycle: &Arc<Lifecycle>,
    runtime: &tokio::runtime::Handle,
) -> Result<AdminListener, StartError> {
    let admin = Admin::new(
        upstreams,
        Arc::clone(metrics),
        Arc::clone(reloader),
        config.admin.token.clone(),
        Arc::clone(lifecycle),
    );
    let addr =
        config.server.admin_listen.parse().map_err(|e| {
            StartError::Admin(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
    AdminListener::serve(addr, admin, runtime).map_err(StartError::Admin)
}

/// What the first stop signal starts: the drain of requests in flight, following `server`'s
/// execution phases (so the watch must be subscribed before `server.run`), then on-complete
/// runs settled and the audit sink closed.
fn drain_plan(
    config: &Config,
    lifecycle: &Arc<Lifecycle>,
    server: &Server,
    completions: &Arc<Completions>,
    audit: &AuditSink,
) -> DrainPlan {
    DrainPlan {
        lifecycle: Arc::clone(lifecycle),
        signalled: std::time::Instant::now(),
        grace: config.server.grace_period.0,
        phases: server.watch_execution_phase(),
        finish: {
            let completions = Arc::clone(completions);
            let audit = audit.clone();
            Box::new(move |settle| {
                // Requests have ended; let their `on-complete` runs write their records, then sync.
                if !completions.wait_idle(settle) {
                    tracing::error!("some on-complete runs did not finish in time");
                }
                audit.close();
            })
        },
    }
}

/// After the server has stopped: lets the `on-complete` runs of finished requests write their
/// records (within the grace period), then syncs and closes the audit sink.
fn flush_after_stop(config: &Config, completions: &Completions, audit: &AuditSink) {
    if !completions.wait_idle(config.server.grace_period.0) {
        tracing::error!("some on-complete runs did not finish before the grace period ended");
    }
    audit.close();
}
