//! Counters and rate-limit windows in the gateway's shared state store.
//!
//! The store is the gateway's (in memory, or Redis shared by every replica), not the
//! plugin's: values survive instance recycling and are seen by every instance of the plugin.
//! Keys are namespaced per plugin, so two plugins never see each other's keys. A call fails
//! (`Err`) when the store cannot be reached or the key holds the other kind of value; decide
//! whether to fail open or closed.
//!
//! ```
//! use llm_gateway_plugin::{state, Decision};
//! # fn check(team: &str) -> Decision {
//! match state::check_rate(&format!("team:{team}"), 100, 60_000, 1) {
//!     Ok(r) if !r.allowed => Decision::too_many_requests("over the team's limit", r.retry_after_seconds()),
//!     _ => Decision::Continue, // allowed, or the store is down: fail open
//! }
//! # }
//! ```

use crate::error::Error;
use crate::host;

/// The answer of a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCheck {
    /// Whether the cost fitted in the window (and was consumed).
    pub allowed: bool,
    /// What is left in the window after this check.
    pub remaining: u64,
    /// When not allowed: milliseconds until enough of the window frees up.
    pub retry_after_ms: u64,
}

impl RateCheck {
    /// `retry_after_ms` in whole seconds, rounded up, for a `retry-after` header.
    pub fn retry_after_seconds(&self) -> u32 {
        u32::try_from(self.retry_after_ms.div_ceil(1000)).unwrap_or(u32::MAX)
    }
}

/// Adds `delta` to the counter `key` (created at 0) and returns the new value. The key
/// expires `ttl_ms` after it was created (0: never).
pub fn incr(key: &str, delta: i64, ttl_ms: u64) -> Result<i64, Error> {
    host::state_incr(key, delta, ttl_ms).map_err(Error::from)
}

/// The value of a counter, if it exists (and has not expired).
pub fn get(key: &str) -> Result<Option<i64>, Error> {
    host::state_get(key).map_err(Error::from)
}

/// Sliding-window rate check: if `cost` more fits under `limit` per `window_ms`, consumes it
/// and allows; otherwise consumes nothing. See `CONTRACT.md` for the window's arithmetic.
pub fn check_rate(key: &str, limit: u64, window_ms: u64, cost: u64) -> Result<RateCheck, Error> {
    host::state_check_rate(key, limit, window_ms, cost).map_err(Error::from)
}
