//! The shared state store behind plugin counters, rate limits, leases and budgets.
//!
//! [`StateStore`] is the one interface plugins' `state` host calls reach; its primitive is
//! [`StateStore::batch`]: several [`Op`]s in one round trip, each atomic on its own. Three
//! stores implement it:
//! - [`MemoryStore`]: everything in this process (one replica; the default);
//! - [`RedisStore`]: a Redis node or cluster shared by every replica, each operation a
//!   server-side script or a single command;
//! - [`SharedStore`]: a [`RedisStore`] with a deadline on every batch, what to do while Redis
//!   is unreachable (count locally, allow or deny), one log line and one counted incident per
//!   outage, and reconnection in the background.
//!
//! Keys arrive already namespaced by plugin (`<plugin>:<key>`).
//!
//! A *capacity* (since contract 1.2) is a counter (its settled use) plus *holds* on it: a
//! lease (a stream slot) or a reservation (a budget's worst case). A hold is granted only if
//! settled use + open holds + its amount fit the limit, and it ends when released or, by
//! itself, when its TTL runs out, so the holds of a replica that died stop counting.

mod memory;
mod redis;
mod shared;

use std::time::Duration;

pub use self::redis::RedisStore;
pub use memory::MemoryStore;
pub use shared::{SharedStore, StoreStatus};

/// The longest any key is kept: a TTL of 0 ("no expiry") means this, so a shared Redis never
/// grows without bound.
pub const MAX_TTL: Duration = Duration::from_secs(400 * 86_400);

/// Why a state operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The store could not be reached or answered with an error.
    #[error("state store: {0}")]
    Backend(String),
    /// The store is unreachable and `on_unavailable = "deny"`.
    #[error("state store unavailable")]
    Unavailable,
    /// A value held under the key is not of the kind the operation needs.
    #[error("state store: key {0} holds another kind of value")]
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

/// A hold to take on a capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The capacity (its counter is the settled use).
    pub key: String,
    /// Who holds it (unique per request); taking it again replaces the holder's hold.
    pub holder: String,
    /// How much it holds.
    pub amount: i64,
    /// The capacity's limit.
    pub limit: i64,
    /// The hold ends by itself this long after it was taken.
    pub ttl: Duration,
}

/// The answer of an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldState {
    /// Whether the hold was taken.
    pub granted: bool,
    /// Settled use.
    pub used: i64,
    /// The open holds' sum, this one included when granted.
    pub held: i64,
}

/// Ends a hold and settles what it really used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The capacity.
    pub key: String,
    /// Whose hold ends.
    pub holder: String,
    /// Added to the settled use.
    pub settle: i64,
    /// The settled counter's TTL when this creates it.
    pub ttl: Duration,
}

/// One store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds `delta` to a counter (created at 0, expiring `ttl` after creation).
    Incr {
        /// The counter.
        key: String,
        /// What to add.
        delta: i64,
        /// Expiry after creation (zero: [`MAX_TTL`]).
        ttl: Duration,
    },
    /// A counter's value.
    Get {
        /// The counter.
        key: String,
    },
    /// Sliding-window check: if `cost` more fits under `limit` per `window`, consume it.
    CheckRate {
        /// The window.
        key: String,
        /// The most per window.
        limit: u64,
        /// The window's length.
        window: Duration,
        /// What this check consumes.
        cost: u64,
    },
    /// Takes a hold if it fits.
    Acquire(Hold),
    /// Ends a hold and settles.
    Release(Settlement),
}

impl Op {
    /// The key the operation works on.
    pub fn key(&self) -> &str {
        match self {
            Op::Incr { key, .. } | Op::Get { key } | Op::CheckRate { key, .. } => key,
            Op::Acquire(h) => &h.key,
            Op::Release(s) => &s.key,
        }
    }

    /// The answer of this operation when the store is down and `on_unavailable = "allow"`:
    /// every limit has room, nothing is counted.
    pub fn permissive_answer(&self) -> Answer {
        match self {
            Op::Incr { delta, .. } => Answer::Counter(*delta),
            Op::Get { .. } => Answer::Value(None),
            Op::CheckRate { limit, cost, .. } => Answer::Rate(RateCheck {
                allowed: true,
                remaining: limit.saturating_sub(*cost),
                retry_after: Duration::ZERO,
            }),
            Op::Acquire(h) => Answer::Acquired(HoldState {
                granted: true,
                used: 0,
                held: h.amount,
            }),
            Op::Release(_) => Answer::Released(false),
        }
    }
}

/// The answer of one [`Op`], of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Incr: the new value.
    Counter(i64),
    /// Get: the value, if any.
    Value(Option<i64>),
    /// CheckRate.
    Rate(RateCheck),
    /// Acquire.
    Acquired(HoldState),
    /// Release: whether the hold was still open.
    Released(bool),
}

/// The answers of a batch, in the order of its operations.
pub type Answers = Vec<Result<Answer, StateError>>;

/// Counters, sliding-window rate checks and holds on capacities.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Runs `ops` in order, in one round trip where the store is remote; each one is atomic,
    /// the batch is not. `Err` when none of it could be run.
    async fn batch(&self, ops: &[Op]) -> Result<Answers, StateError>;

    /// What `/status` shows of the store.
    fn status(&self) -> StoreStatus {
        StoreStatus::memory()
    }

    /// Adds `delta` to counter `key` (created at 0, expiring `ttl` after creation when non-zero)
    /// and returns the new value.
    async fn incr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StateError> {
        let op = Op::Incr {
            key: key.into(),
            delta,
            ttl,
        };
        match one(self.batch(std::slice::from_ref(&op)).await)? {
            Answer::Counter(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// The counter's value, if it exists.
    async fn get(&self, key: &str) -> Result<Option<i64>, StateError> {
        let op = Op::Get { key: key.into() };
        match one(self.batch(std::slice::from_ref(&op)).await)? {
            Answer::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Sliding-window check: if `cost` more fits under `limit` per `window`, consume it.
    async fn check_rate(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
    ) -> Result<RateCheck, StateError> {
        let op = Op::CheckRate {
            key: key.into(),
            limit,
            window,
            cost,
        };
        match one(self.batch(std::slice::from_ref(&op)).await)? {
            Answer::Rate(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}

/// The single answer of a one-operation batch.
fn one(answers: Result<Answers, StateError>) -> Result<Answer, StateError> {
    answers?
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(StateError::Backend("the store gave no answer".into())))
}

fn unexpected(answer: Answer) -> StateError {
    StateError::Backend(format!("the store answered with {answer:?}"))
}

/// A TTL as the store keeps it: zero means [`MAX_TTL`], and nothing is kept longer.
pub fn effective_ttl(ttl: Duration) -> Duration {
    if ttl.is_zero() {
        MAX_TTL
    } else {
        ttl.min(MAX_TTL)
    }
}
