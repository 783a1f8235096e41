//! The plugin host: WebAssembly components, run for every request in configured order.
//!
//! - [`engine`]: one wasmtime engine (pooling allocator, epoch interruption) and linker; loads,
//!   checks and links components.
//! - [`instance`]: a loaded plugin version with its pool of warm instances, and the calls into
//!   an instance with their limits.
//! - [`host`]: the host services plugins import (request and response accessors, log, clock,
//!   state, JWT, audit, metrics) and the store data behind them.
//! - [`view`]: the request as plugins see and edit it.
//! - [`pipeline`]: the ordered plugins and one request's run through them.
//! - [`jwt`]: host-side JWT verification with cached keys.
//!
//! The contract is `plugin-sdk/wit/`; its semantics are in `plugin-sdk/CONTRACT.md`.

mod bindings;
pub mod engine;
pub mod epoch;
pub mod host;
pub mod instance;
pub mod jwt;
pub mod offline;
pub mod pipeline;
pub mod view;

pub use bindings::types::{Completion, Outcome as WitOutcome, Usage as WitUsage};
pub use engine::PluginEngine;
pub use host::HostServices;
pub use instance::LoadedPlugin;
pub use pipeline::{Denial, Pipeline, PipelineRun};
pub use view::RequestView;

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be set up.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The file could not be read.
    #[error("cannot read the plugin: {0}")]
    Io(String),
    /// Not a valid component (or core module with a component type).
    #[error("invalid plugin: {0}")]
    Invalid(String),
    /// A component that does not match the `plugin` world.
    #[error("the plugin does not match the llm-gateway:plugin world: {0}")]
    WrongWorld(String),
    /// Built for a contract major version the host does not speak.
    #[error("the plugin speaks another contract version: {0}")]
    WrongVersion(String),
    /// Instantiation or `init` failed.
    #[error("the plugin failed to start: {0}")]
    Init(String),
}

/// What went wrong in one call into a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// It ran past its CPU budget.
    Timeout,
    /// It went over its memory limit.
    Memory,
    /// It trapped (panic, unreachable, bad host-call use).
    Trap,
    /// It returned a value over its size limit.
    Oversized,
    /// It returned something the contract forbids.
    Invalid,
    /// No instance could be created for it.
    Instantiate,
    /// Its breaker is open.
    BreakerOpen,
}

impl FailureKind {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Trap => "trap",
            FailureKind::Oversized => "oversized",
            FailureKind::Invalid => "invalid",
            FailureKind::Instantiate => "instantiate",
            FailureKind::BreakerOpen => "breaker_open",
        }
    }
}

/// A failed call into a plugin.
#[derive(Debug, Clone)]
pub struct PluginFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What happened, for the log.
    pub message: String,
}
