//! Log lines, written to the gateway's log and attributed to the plugin by name.
//!
//! The gateway rate-limits each plugin's lines, so logging on every request is safe but not
//! free. Anything a plugin writes to stdout or stderr also becomes a log line.
//!
//! ```
//! use llm_gateway_plugin::log;
//! # fn f(model: &str) {
//! log::info(&format!("routing {model} to the fallback"));
//! # }
//! ```

use crate::host;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// Something failed.
    Error,
}

/// Writes a log line at `level`.
pub fn log(level: Level, message: &str) {
    host::log(level, message)
}

/// Writes a `trace` line.
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// Writes a `debug` line.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Writes an `info` line.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Writes a `warn` line.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Writes an `error` line.
pub fn error(message: &str) {
    log(Level::Error, message)
}
