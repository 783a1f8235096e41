//! The shared state store behind plugin counters and rate limits.
//!
//! [`StateStore`] is the one interface plugins' `state` host calls reach. [`MemoryStore`] keeps
//! everything in this process; a Redis store (shared across replicas) implements the same
//! trait. Keys arrive already namespaced by plugin.

mod memory;

use std::time::Duration;

pub use memory::MemoryStore;

/// Why a state operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The store could not be reached or answered with an error.
    #[error("state store: {0}")]
    Backend(String),
    /// A value held under the key is not a counter.
    #[error("state store: key {0} does not hold a counter")]
    WrongType(String),
}

/// The answer of a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCheck {
    /// Whether the cost fitted (and was consumed).
    pub allowed: bool,
    /// What is left in the window after this check.
    pub remaining: u64,
    /// When refused: time until enough of the window frees up.
    pub retry_after: Duration,
}

/// Counters and sliding-window rate checks.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Adds `delta` to counter `key` (created at 0, expiring `ttl` after creation when non-zero)
    /// and returns the new value.
    async fn incr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StateError>;
    /// The counter's value, if it exists.
    async fn get(&self, key: &str) -> Result<Option<i64>, StateError>;
    /// Sliding-window check: if `cost` more fits under `limit` per `window`, consume it.
    async fn check_rate(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
    ) -> Result<RateCheck, StateError>;
}
