//! The plugin engine: one wasmtime `Engine` and `Linker` for every plugin, and loading.
//!
//! The engine uses the pooling allocator (instance slots, memories and fiber stacks are
//! reserved up front and reused; memories start from copy-on-write images of their initial
//! data) and epoch interruption (a ticker thread advances the epoch every millisecond while
//! plugins run, and parks when none has run for a while; a store's callback then compares the
//! guest's CPU time with its budget).
//!
//! Loading a plugin: read the file, turn a core module that carries a component type into a
//! component (`wit-component`), compile, check that it speaks version 1.x of the contract,
//! link its imports (the contract's host services, and WASI with an empty context), then
//! instantiate it once and call `init` as a smoke check. Compilation runs on the blocking pool.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{Plugin, PluginPre};
use super::epoch::Ticker;
pub use super::epoch::EPOCH_TICK;
use super::host::{HostServices, HostState};
pub use super::instance::Tier;
use super::instance::{LoadedPlugin, Shared};
use super::PluginError;
use crate::config::{PluginConfig, PluginRuntimeConfig};

/// The contract's package; its major version is what the host speaks.
pub const CONTRACT_PACKAGE: &str = "llm-gateway:plugin";
/// The contract major version the host speaks.
pub const CONTRACT_MAJOR: u64 = 1;
/// Largest plugin memory the pooling allocator reserves room for.
const MAX_PLUGIN_MEMORY: usize = 256 * 1024 * 1024;

/// One wasmtime engine (compiler settings, instance pool) with its linker and compiled cache.
struct TierEngine {
    engine: Engine,
    linker: Linker<HostState>,
    /// Compiled components by the SHA-256 of their file, so reloads skip unchanged plugins.
    components: std::sync::Mutex<std::collections::HashMap<String, Component>>,
}

/// The shared engines every plugin runs on: a baseline one and an optimizing one.
pub struct PluginEngine {
    baseline: TierEngine,
    optimized: TierEngine,
    services: Arc<HostServices>,
    runtime: PluginRuntimeConfig,
    ticker: Arc<Ticker>,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.thread.get() {
            t.unpark();
        }
    }
}

impl TierEngine {
    fn new(
        runtime: &PluginRuntimeConfig,
        strategy: wasmtime::Strategy,
    ) -> Result<Self, PluginError> {
        let instances = runtime.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size(MAX_PLUGIN_MEMORY)
            .linear_memory_keep_resident(64 * 1024)
            .table_keep_resident(4096);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .strategy(strategy)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::<HostState>::new(&engine);
        Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        Ok(Self {
            engine,
            linker,
            components: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn cached(&self, hash: &str) -> Option<Component> {
        self.components
            .lock()
            .ok()
            .and_then(|c| c.get(hash).cloned())
    }
}

impl PluginEngine {
    /// The host services every instance reaches.
    pub fn services(&self) -> &Arc<HostServices> {
        &self.services
    }

    /// An engine sized by `runtime`, whose plugins reach `services`.
    pub fn new(
        runtime: &PluginRuntimeConfig,
        services: Arc<HostServices>,
    ) -> Result<Self, PluginError> {
        let baseline = TierEngine::new(runtime, wasmtime::Strategy::Winch)?;
        let optimized = TierEngine::new(runtime, wasmtime::Strategy::Cranelift)?;

        let ticker = Arc::new(Ticker::default());
        let engines = vec![baseline.engine.weak(), optimized.engine.weak()];
        let state = Arc::clone(&ticker);
        let thread = std::thread::Builder::new()
            .name("gw-plugin-epoch".into())
            .spawn(move || state.run(engines))
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let _ = ticker.thread.set(thread.thread().clone());

        Ok(Self {
            baseline,
            optimized,
            services,
            runtime: runtime.clone(),
            ticker,
        })
    }

    /// Tells the epoch ticker a plugin call is starting (wakes it if it was parked).
    pub fn call_started(&self) {
        self.ticker.call_started();
    }

    fn tier(&self, tier: Tier) -> &TierEngine {
        match tier {
            Tier::Baseline => &self.baseline,
            Tier::Optimized => &self.optimized,
        }
    }

    /// The runtime settings (breaker thresholds).
    pub fn runtime(&self) -> &PluginRuntimeConfig {
        &self.runtime
    }

    /// Compiles component or core-module bytes with a tier's compiler (off the reactor: call
    /// from a blocking thread).
    pub fn compile(&self, bytes: &[u8], tier: Tier) -> Result<Component, PluginError> {
        let component_bytes = componentize(bytes)?;
        let bytes = &component_bytes[..];
        let engine = &self.tier(tier).engine;
        let component =
            Component::new(engine, bytes).map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
        check_contract(engine, &component)?;
        Ok(component)
    }

    /// Links a compiled component against the host services of its tier's engine.
    fn link(&self, component: &Component, tier: Tier) -> Result<PluginPre<HostState>, PluginError> {
        let pre = self
            .tier(tier)
            .linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::WrongWorld(format!("{e:#}")))?;
        PluginPre::new(pre).map_err(|e| PluginError::WrongWorld(format!("{e:#}")))
    }

    /// Whether the file at `path` was compiled before, by either compiler (reads and hashes it).
    pub async fn is_cached(&self, path: &std::path::Path) -> bool {
        match tokio::fs::read(path).await {
            Ok(bytes) => {
                let hash = content_hash(&bytes);
                self.optimized.cached(&hash).is_some() || self.baseline.cached(&hash).is_some()
            }
            Err(_) => false,
        }
    }

    /// Drops cached components no loaded plugin uses any more.
    pub fn retain_cached(&self, keep: &std::collections::HashSet<String>) {
        for tier in [&self.baseline, &self.optimized] {
            if let Ok(mut cache) = tier.components.lock() {
                cache.retain(|hash, _| keep.contains(hash));
            }
        }
    }

    /// Loads every configured plugin at once (new ones compile in parallel on the blocking
    /// pool, with the baseline compiler), in configuration order; the first failure names
    /// its plugin. Plugins compiled by the optimizing compiler before are loaded from it.
    pub async fn load_all(
        self: &Arc<Self>,
        configs: &[PluginConfig],
    ) -> Result<Vec<LoadedWithCache>, (String, PluginError)> {
        self.load_all_tier(configs, Tier::Baseline).await
    }

    /// Like [`PluginEngine::load_all`], but every plugin with optimized code (compiling what
    /// is missing with Cranelift): what replaces a fresh generation's baseline code.
    pub async fn load_all_optimized(
        self: &Arc<Self>,
        configs: &[PluginConfig],
    ) -> Result<Vec<LoadedWithCache>, (String, PluginError)> {
        self.load_all_tier(configs, Tier::Optimized).await
    }

    async fn load_all_tier(
        self: &Arc<Self>,
        configs: &[PluginConfig],
        want: Tier,
    ) -> Result<Vec<LoadedWithCache>, (String, PluginError)> {
        let tasks: Vec<_> = configs
            .iter()
            .cloned()
            .map(|config| {
                let engine = Arc::clone(self);
                tokio::spawn(async move {
                    let was_cached = engine.is_cached(std::path::Path::new(&config.path)).await;
                    match engine.load_tier(&config, want).await {
                        Ok(plugin) => Ok(LoadedWithCache { plugin, was_cached }),
                        Err(e) => Err((config.name, e)),
                    }
                })
            })
            .collect();
        let mut loaded = Vec::with_capacity(tasks.len());
        for task in tasks {
            let result = task.await.map_err(|e| {
                (
                    "(loader)".to_string(),
                    PluginError::Engine(format!("load task failed: {e}")),
                )
            })?;
            loaded.push(result?);
        }
        Ok(loaded)
    }

    /// Loads, links and smoke-tests one configured plugin (baseline code unless optimized
    /// code is cached).
    pub async fn load(
        self: &Arc<Self>,
        config: &PluginConfig,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        self.load_tier(config, Tier::Baseline).await
    }

    /// Loads one plugin with optimized code, compiling it with Cranelift if needed.
    pub async fn load_optimized(
        self: &Arc<Self>,
        config: &PluginConfig,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        self.load_tier(config, Tier::Optimized).await
    }

    async fn load_tier(
        self: &Arc<Self>,
        config: &PluginConfig,
        want: Tier,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let bytes = tokio::fs::read(&config.path)
            .await
            .map_err(|e| PluginError::Io(format!("{}: {e}", config.path)))?;
        self.load_bytes_tier(config, bytes, want).await
    }

    /// Like [`PluginEngine::load`], from bytes already read.
    pub async fn load_bytes(
        self: &Arc<Self>,
        config: &PluginConfig,
        bytes: Vec<u8>,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        self.load_bytes_tier(config, bytes, Tier::Baseline).await
    }

    async fn load_bytes_tier(
        self: &Arc<Self>,
        config: &PluginConfig,
        bytes: Vec<u8>,
        want: Tier,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let hash = content_hash(&bytes);
        // Optimized code is used whenever it exists; baseline code only when asked for and
        // nothing better is at hand.
        let cached = match self.optimized.cached(&hash) {
            Some(c) => Some((c, Tier::Optimized)),
            None if want == Tier::Baseline => {
                self.baseline.cached(&hash).map(|c| (c, Tier::Baseline))
            }
            None => None,
        };
        let (component, tier) = match cached {
            Some(found) => found,
            None => {
                let this = Arc::clone(self);
                let component = tokio::task::spawn_blocking(move || this.compile(&bytes, want))
                    .await
                    .map_err(|e| PluginError::Engine(format!("compilation task failed: {e}")))??;
                if let Ok(mut cache) = self.tier(want).components.lock() {
                    cache.insert(hash.clone(), component.clone());
                }
                (component, want)
            }
        };
        let pre = self.link(&component, tier)?;
        // A 1.0 plugin was promised one instance for all phases of a request.
        let pinned = contract_minor(&self.tier(tier).engine, &component) == Some(0);
        let shared = Shared {
            ticker: Arc::clone(&self.ticker),
            runtime: self.runtime.clone(),
            services: Arc::clone(&self.services),
        };
        let plugin = Arc::new(LoadedPlugin::new(shared, config, pre, hash, tier, pinned)?);
        // Instantiate once and run `init`: a plugin that cannot start fails its load, not a request.
        let instance = plugin.instantiate().await?;
        plugin.keep_warm(instance);
        Ok(plugin)
    }
}

/// Refuses components that do not speak a 1.x contract, with a message naming what they speak.
fn check_contract(engine: &Engine, component: &Component) -> Result<(), PluginError> {
    let ty = component.component_type();
    let handler = format!("{CONTRACT_PACKAGE}/handler@");
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let Some(version) = exports.iter().find_map(|n| n.strip_prefix(&handler)) else {
        return Err(PluginError::WrongWorld(format!(
            "it does not export {CONTRACT_PACKAGE}/handler (it exports: {})",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        )));
    };
    check_major(version)?;
    for (name, _) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix(&format!("{CONTRACT_PACKAGE}/")) {
            if let Some((_, version)) = rest.split_once('@') {
                check_major(version)?;
            }
        }
    }
    Ok(())
}

/// The minor version of the contract a component's `handler` export was built for.
fn contract_minor(engine: &Engine, component: &Component) -> Option<u64> {
    let handler = format!("{CONTRACT_PACKAGE}/handler@");
    let ty = component.component_type();
    let version = ty
        .exports(engine)
        .find_map(|(n, _)| n.strip_prefix(&handler).map(str::to_string))?;
    version.split('.').nth(1)?.parse().ok()
}

/// Turns a core module carrying a component type (what `wit-bindgen` guests build to) into a
/// component; a component is returned as it is.
pub fn componentize(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, PluginError> {
    if wasmparser::Parser::is_component(bytes) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Err(PluginError::Invalid(
            "not a WebAssembly module or component".into(),
        ));
    }
    wit_component::ComponentEncoder::default()
        .module(bytes)
        .and_then(|e| e.validate(true).encode())
        .map(std::borrow::Cow::Owned)
        .map_err(|e| {
            PluginError::Invalid(format!(
                "a core module that cannot become a component (was it built with the plugin SDK?): {e:#}"
            ))
        })
}

/// A loaded plugin, and whether its component came from the cache.
pub struct LoadedWithCache {
    /// The plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// Whether it was compiled before (no compilation this time).
    pub was_cached: bool,
}

fn check_major(version: &str) -> Result<(), PluginError> {
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok());
    match major {
        Some(CONTRACT_MAJOR) => Ok(()),
        _ => Err(PluginError::WrongVersion(format!(
            "it is built for {CONTRACT_PACKAGE}@{version}; this gateway speaks {CONTRACT_PACKAGE}@{CONTRACT_MAJOR}.x"
        ))),
    }
}

/// The hex SHA-256 of a plugin file: its identity in logs and the admin API.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_major_one_is_spoken() {
        assert!(check_major("1.0.0").is_ok());
        assert!(check_major("1.4.2").is_ok());
        let e = check_major("2.0.0").unwrap_err().to_string();
        assert!(
            e.contains("llm-gateway:plugin@2.0.0") && e.contains("1.x"),
            "{e}"
        );
        assert!(check_major("x").is_err());
    }
}
