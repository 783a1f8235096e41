//! Hot reload: new configuration generations without a restart.
//!
//! A reload is triggered by a change to the configuration file or to any plugin file (watched
//! with `notify`, debounced), by `SIGHUP`, or by `POST /admin/reload`. It reads and validates
//! the whole file, loads every plugin (unchanged plugin files come from the compiled-component
//! cache, so only new code is compiled, and off the request path), instantiates each once as a
//! smoke check, and only then swaps the pipeline (and the router: models and routes) in. Requests already running
//! keep the pipeline they started with, streams included; new requests get the new one.
//!
//! A configuration that fails anywhere (parse, validation, an invalid component, a wrong
//! contract version, a trap in `init`) changes nothing: the running generation stays, and the
//! error is logged and kept for `GET /status`. Settings that cannot change while the process
//! runs (listeners, TLS, threads, backends, timeouts, the audit sink, the plugin engine's size)
//! are reported as needing a restart instead of being silently ignored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::plugin::engine::Tier;
use crate::plugin::pipeline::Completions;
use crate::plugin::{Pipeline, PluginEngine};
use crate::upstream::route::Router;
use crate::upstream::Upstreams;

/// What a reload swaps (the pipeline and the router) and what it builds on (the backends,
/// which only a restart changes).
pub struct Live {
    /// The plugin pipeline serving new requests.
    pub pipeline: Arc<ArcSwap<Pipeline>>,
    /// The model catalog and routes serving new requests.
    pub router: Arc<ArcSwap<Router>>,
    /// The running backends.
    pub upstreams: Arc<Upstreams>,
}

/// A configuration generation built and ready to swap in.
type Built = (Config, Arc<Pipeline>, Arc<Router>, Vec<String>);

/// Events closer together than this are one change (editors write files in several steps).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// What a successful reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// The generation now serving new requests.
    pub generation: u64,
    /// How long building and swapping took.
    pub duration_ms: f64,
    /// Plugins compiled anew (the others came from the cache).
    pub compiled: Vec<String>,
    /// Changed settings that only a restart applies.
    pub restart_required: Vec<String>,
}

/// The last failed reload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadFailure {
    /// When it failed (seconds since the Unix epoch).
    pub at: u64,
    /// What triggered it.
    pub trigger: String,
    /// Why, with the cause.
    pub error: String,
}

/// Builds and swaps configuration generations.
pub struct Reloader {
    config_path: PathBuf,
    engine: Arc<PluginEngine>,
    pipeline: Arc<ArcSwap<Pipeline>>,
    router: Arc<ArcSwap<Router>>,
    upstreams: Arc<Upstreams>,
    completions: Arc<Completions>,
    background: tokio::runtime::Handle,
    running: Mutex<Config>,
    generation: AtomicU64,
    loaded_at: Mutex<SystemTime>,
    last_error: Mutex<Option<ReloadFailure>>,
    restart_required: Mutex<Vec<String>>,
    one_at_a_time: tokio::sync::Mutex<()>,
    reloads: IntCounterVec,
    started: Instant,
}

impl Reloader {
    /// A reloader for `config_path`, currently serving `running` as generation 1.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config_path: PathBuf,
        running: Config,
        engine: Arc<PluginEngine>,
        live: Live,
        completions: Arc<Completions>,
        background: tokio::runtime::Handle,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let Live {
            pipeline,
            router,
            upstreams,
        } = live;
        let reloads = IntCounterVec::new(
            prometheus::Opts::new("gateway_reloads_total", "Configuration reloads by result"),
            &["result"],
        )
        .expect("static metric definition");
        let _ = metrics.registry().register(Box::new(reloads.clone()));
        Arc::new(Self {
            config_path,
            engine,
            pipeline,
            router,
            upstreams,
            completions,
            background,
            running: Mutex::new(running),
            generation: AtomicU64::new(1),
            loaded_at: Mutex::new(SystemTime::now()),
            last_error: Mutex::new(None),
            restart_required: Mutex::new(Vec::new()),
            one_at_a_time: tokio::sync::Mutex::new(()),
            reloads,
            started: Instant::now(),
        })
    }

    /// The generation serving new requests.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the file again and, if everything in it loads, swaps the new generation in.
    pub async fn reload(self: &Arc<Self>, trigger: &str) -> Result<ReloadReport, String> {
        let _guard = self.one_at_a_time.lock().await;
        let started = Instant::now();
        let result = self.build().await;
        match result {
            Ok((config, pipeline, router, compiled)) => {
                let restart_required = {
                    let running = self.running.lock().map_err(|_| "reload state poisoned")?;
                    restart_required(&running, &config)
                };
                // Everything loaded: one atomic store, then bookkeeping.
                let plugins = config.plugins.clone();
                self.pipeline.store(pipeline);
                self.engine
                    .services()
                    .catalog
                    .store(Arc::new(router.catalog().clone()));
                self.router.store(router);
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                if let Ok(mut t) = self.loaded_at.lock() {
                    *t = SystemTime::now();
                }
                if let Ok(mut r) = self.running.lock() {
                    // Keep the settings a restart would apply as they run now, so the next
                    // reload still reports them.
                    let mut next = config;
                    next.server = r.server.clone();
                    next.backends = r.backends.clone();
                    next.timeouts = r.timeouts.clone();
                    next.front_doors = r.front_doors.clone();
                    next.audit = r.audit.clone();
                    next.plugin_runtime = r.plugin_runtime.clone();
                    next.state = r.state.clone();
                    *r = next;
                }
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                if let Ok(mut r) = self.restart_required.lock() {
                    *r = restart_required.clone();
                }
                if !restart_required.is_empty() {
                    tracing::warn!(settings = ?restart_required, "these changed settings apply only after a restart");
                }
                self.reloads.with_label_values(&["ok"]).inc();
                let report = ReloadReport {
                    generation,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    compiled,
                    restart_required,
                };
                tracing::info!(trigger, generation, duration_ms = report.duration_ms, compiled = ?report.compiled, "configuration reloaded");
                self.optimize_later(generation, plugins);
                Ok(report)
            }
            Err(error) => {
                self.reloads.with_label_values(&["error"]).inc();
                tracing::error!(trigger, error = %error, generation = self.generation(), "reload failed; the running configuration stays");
                let at = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = Some(ReloadFailure {
                        at,
                        trigger: trigger.to_string(),
                        error: error.clone(),
                    });
                }
                Err(error)
            }
        }
    }

    async fn build(&self) -> Result<Built, String> {
        let path = self.config_path.clone();
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| format!("reading the configuration: {e}"))?
            .map_err(|e| e.to_string())?;
        let router = Arc::new(Router::new(&config, &self.upstreams)?);
        let loaded = self
            .engine
            .load_all(&config.plugins)
            .await
            .map_err(|(name, e)| format!("plugin {name}: {e}"))?;
        let compiled = loaded
            .iter()
            .filter(|l| !l.was_cached)
            .map(|l| l.plugin.name.to_string())
            .collect();
        let plugins = loaded.into_iter().map(|l| l.plugin).collect();
        let generation = self.generation() + 1;
        let pipeline = Arc::new(
            Pipeline::new(
                plugins,
                Arc::clone(&self.completions),
                self.background.clone(),
            )
            .with_generation(generation),
        );
        Ok((config, pipeline, router, compiled))
    }

    /// Plugins new to a generation start on baseline code (quick to compile, so the reload is
    /// quick); this compiles them with the optimizing compiler in the background and swaps
    /// the same generation's pipeline for one running the optimized code. A newer generation
    /// makes it give up: that one is optimized in turn.
    pub fn optimize_later(
        self: &Arc<Self>,
        generation: u64,
        plugins: Vec<crate::config::PluginConfig>,
    ) {
        let baseline = self
            .pipeline
            .load()
            .plugins()
            .iter()
            .any(|p| p.tier != Tier::Optimized);
        if !baseline {
            return;
        }
        let this = Arc::clone(self);
        self.background.spawn(async move {
            let started = Instant::now();
            let loaded = match this.engine.load_all_optimized(&plugins).await {
                Ok(loaded) => loaded,
                Err((plugin, e)) => {
                    tracing::warn!(generation, plugin = %plugin, error = %e, "optimizing compilation failed; the plugins keep their baseline code");
                    return;
                }
            };
            let _guard = this.one_at_a_time.lock().await;
            if this.generation() != generation {
                return;
            }
            let pipeline = Pipeline::new(
                loaded.into_iter().map(|l| l.plugin).collect(),
                Arc::clone(&this.completions),
                this.background.clone(),
            )
            .with_generation(generation);
            this.pipeline.store(Arc::new(pipeline));
            tracing::info!(
                generation,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "plugins now run optimized code"
            );
        });
    }

    /// The `GET /status` document.
    pub fn status(&self, backends: serde_json::Value) -> serde_json::Value {
        let pipeline = self.pipeline.load();
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config": {
                "path": self.config_path.display().to_string(),
                "generation": self.generation(),
                "loaded_at": self.loaded_at.lock().map(|t| secs(*t)).unwrap_or(0),
                "restart_required": self.restart_required.lock().map(|r| r.clone()).unwrap_or_default(),
            },
            "plugins": pipeline.plugins().iter().map(|p| serde_json::json!({
                "name": &*p.name,
                "sha256": p.content_hash,
                "loaded_at": secs(p.loaded_at),
                "isolation": format!("{:?}", p.isolation).to_lowercase(),
                "compiler": p.tier.compiler(),
                "on_error": format!("{:?}", p.on_error).to_lowercase(),
            })).collect::<Vec<_>>(),
            "backends": backends,
            "state": self.engine.services().state.status(),
            "last_reload_error": self.last_error.lock().ok().and_then(|e| e.clone()),
        })
    }

    /// The files whose changes trigger a reload: the configuration and every plugin.
    fn watched_files(&self) -> HashSet<PathBuf> {
        let mut files = HashSet::new();
        files.insert(absolute(&self.config_path));
        if let Ok(running) = self.running.lock() {
            for p in &running.plugins {
                files.insert(absolute(Path::new(&p.path)));
            }
        }
        files
    }

    /// Watches the configuration and plugin files; a change (debounced) triggers a reload.
    pub fn watch(self: &Arc<Self>) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher =
            notify::recommended_watcher(tx).map_err(|e| format!("cannot watch files: {e}"))?;
        let mut dirs = HashSet::new();
        let watch_dirs = |watcher: &mut notify::RecommendedWatcher,
                          dirs: &mut HashSet<PathBuf>,
                          files: &HashSet<PathBuf>| {
            use notify::Watcher;
            for f in files {
                if let Some(dir) = f.parent() {
                    // Directories, not files: editors and `make` replace files by renaming.
                    if dirs.insert(dir.to_path_buf()) {
                        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                        }
                    }
                }
            }
        };
        let files = self.watched_files();
        watch_dirs(&mut watcher, &mut dirs, &files);
        let this = Arc::clone(self);
        std::thread::Builder::new()
            .name("gw-config-watch".into())
            .spawn(move || {
                let mut files = files;
                loop {
                    let Ok(event) = rx.recv() else { return };
                    if !touches(&event, &files) {
                        // Other files in the same directories (an audit log, say) are ignored.
                        continue;
                    }
                    // Debounce: wait until the watched files have been quiet for a moment;
                    // unrelated events neither count nor extend the wait.
                    let mut quiet_at = Instant::now() + DEBOUNCE;
                    loop {
                        let left = quiet_at.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(event) if touches(&event, &files) => {
                                quiet_at = Instant::now() + DEBOUNCE
                            }
                            Ok(_) => {}
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    let reloader = Arc::clone(&this);
                    let _ = this
                        .background
                        .block_on(async move { reloader.reload("file change").await });
                    files = this.watched_files();
                    watch_dirs(&mut watcher, &mut dirs, &files);
                }
            })
            .map_err(|e| format!("cannot start the file watcher: {e}"))?;
        Ok(())
    }

    /// Reloads on every SIGHUP.
    pub fn reload_on_sighup(self: &Arc<Self>) {
        let this = Arc::clone(self);
        self.background.spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::error!("cannot install the SIGHUP handler");
                return;
            };
            while hup.recv().await.is_some() {
                let _ = this.reload("SIGHUP").await;
            }
        });
    }
}

fn touches(event: &notify::Result<notify::Event>, files: &HashSet<PathBuf>) -> bool {
    match event {
        Ok(e) if !matches!(e.kind, notify::EventKind::Access(_)) => {
            e.paths.iter().any(|p| files.contains(&absolute(p)))
        }
        _ => false,
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The settings that differ between `running` and `next` but only apply after a restart.
fn restart_required(running: &Config, next: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let s = (&running.server, &next.server);
    for (key, differs) in [
        ("server.listen", s.0.listen != s.1.listen),
        ("server.admin_listen", s.0.admin_listen != s.1.admin_listen),
        (
            "server.tls_cert",
            s.0.tls_cert != s.1.tls_cert || s.0.tls_key != s.1.tls_key,
        ),
        ("server.threads", s.0.threads != s.1.threads),
        (
            "server.max_request_body",
            s.0.max_request_body != s.1.max_request_body,
        ),
        (
            "server.client_body_timeout",
            s.0.client_body_timeout != s.1.client_body_timeout,
        ),
        ("server.grace_period", s.0.grace_period != s.1.grace_period),
        ("timeouts", running.timeouts != next.timeouts),
        ("front_doors", running.front_doors != next.front_doors),
        ("backends", running.backends != next.backends),
        ("audit", running.audit != next.audit),
        (
            "plugin_runtime",
            running.plugin_runtime != next.plugin_runtime,
        ),
        ("admin", running.admin != next.admin),
        ("state", running.state != next.state),
    ] {
        if differs {
            changed.push(key.to_string());
        }
    }
    changed
}
