//! Counters, rate-limit windows and holds in the gateway's shared state store.
//!
//! The store is the gateway's (in memory, or Redis shared by every replica), not the
//! plugin's: values survive instance recycling and are seen by every instance of the plugin.
//! Keys are namespaced per plugin, so two plugins never see each other's keys. A call fails
//! (`Err`) when the key holds the other kind of value, or when the store cannot be reached
//! and the gateway's `[state] on_unavailable` is `"deny"` (with `"local"` or `"allow"` the
//! gateway answers by itself): an error means the operator chose to refuse what cannot be
//! checked, so failing closed is the usual answer.
//!
//! ```
//! use llm_gateway_plugin::{state, Decision};
//! # fn check(team: &str) -> Decision {
//! match state::check_rate(&format!("team:{team}"), 100, 60_000, 1) {
//!     Ok(r) if !r.allowed => Decision::too_many_requests("over the team's limit", r.retry_after_seconds()),
//!     Ok(_) => Decision::Continue,
//!     Err(_) => Decision::deny(503, "the rate limiter is unavailable"),
//! }
//! # }
//! ```
//!
//! # Holds (since contract 1.2)
//!
//! A capacity under a key is its counter (the *settled* use: what [`get`] reads and [`incr`]
//! changes) plus the *holds* open on it. [`acquire`] takes a hold only if settled use, the
//! other open holds and the new amount fit under a limit, atomically across replicas;
//! [`release`] ends it and adds what was really used to the counter. A hold that is never
//! released ends by itself `ttl_ms` after it was taken, so a replica that dies mid-request
//! leaks nothing for longer than that. Two uses:
//!
//! - a **lease**: amount 1 on a "how many at once" capacity (concurrent streams), released
//!   with `settle = 0`;
//! - a **reservation**: a request's worst-case cost on a budget, released with the exact
//!   cost, so requests running at the same time cannot together spend past the budget.
//!
//! # One round trip
//!
//! Each call above is a round trip to the store. [`batch`] runs several operations in one,
//! in order, with one answer each; [`submit`] hands operations to the gateway to run after
//! the call returns, off the request's path (settlements, undoing what a refused request
//! took), without answers.
//!
//! ```
//! use llm_gateway_plugin::state::{self, Op};
//! use llm_gateway_plugin::{Decision, Request};
//! # fn on_request(req: &mut Request) -> Decision {
//! let holder = req.request_id();
//! let ops = [
//!     // A stream slot: at most 4 at once for this team, for at most 10 minutes.
//!     Op::acquire("streams:research", &holder, 1, 4, 600_000),
//!     // 60 requests a minute.
//!     Op::check_rate("rpm:research", 60, 60_000, 1),
//! ];
//! let answers = state::batch(&ops);
//! let slot = answers[0].as_ref().ok().and_then(|a| a.acquired());
//! let rate = answers[1].as_ref().ok().and_then(|a| a.rate());
//! let granted = slot.is_some_and(|s| s.granted);
//! if granted && rate.is_some_and(|r| r.allowed) {
//!     return Decision::Continue; // release the slot in on_complete
//! }
//! if granted {
//!     // Refused by the rate (or it could not be checked): give the slot back, off the
//!     // client's path.
//!     state::submit(&[Op::release("streams:research", &holder, 0, 600_000)]);
//! }
//! match (slot, rate) {
//!     (Some(_), Some(_)) => Decision::too_many_requests("over the team's limits", 5),
//!     _ => Decision::deny(503, "the rate limiter is unavailable"),
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

/// A hold to take on a capacity (see the [module docs](self#holds-since-contract-12)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The capacity.
    pub key: String,
    /// Who holds it: unique per request (its request ID). Taking it again replaces the
    /// earlier hold (which ends even if the new one is refused).
    pub holder: String,
    /// How much it holds (at least 0).
    pub amount: i64,
    /// Granted only if settled use + the other open holds + `amount` stay within `limit`.
    pub limit: i64,
    /// The hold ends by itself this long after it was taken (at least 1).
    pub ttl_ms: u64,
}

/// The answer of [`acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldState {
    /// Whether the hold was taken.
    pub granted: bool,
    /// The capacity's settled use (its counter).
    pub used: i64,
    /// What the open holds add up to: this one included when granted; when refused, the
    /// other holders' (what `amount` did not fit beside).
    pub held: i64,
}

/// The end of a hold, with what it really used (see [`release`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The capacity.
    pub key: String,
    /// The holder whose hold ends (nothing to end when it has expired).
    pub holder: String,
    /// Added to the capacity's settled use: 0 for a lease, the exact cost for a reservation.
    pub settle: i64,
    /// The counter expires this long after it was created, when this creates it (0: never).
    pub ttl_ms: u64,
}

/// One operation of a [`batch`] or a [`submit`]: the single calls of this module, as values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// [`incr`].
    Incr {
        /// The counter.
        key: String,
        /// Added to it.
        delta: i64,
        /// Its expiry after creation (0: never).
        ttl_ms: u64,
    },
    /// [`get`].
    Get {
        /// The counter.
        key: String,
    },
    /// [`check_rate`].
    CheckRate {
        /// The window.
        key: String,
        /// At most this much per window.
        limit: u64,
        /// The window's length.
        window_ms: u64,
        /// What this check consumes when allowed.
        cost: u64,
    },
    /// [`acquire`].
    Acquire(Hold),
    /// [`release`].
    Release(Settlement),
}

impl Op {
    /// [`incr`] as an operation.
    pub fn incr(key: impl Into<String>, delta: i64, ttl_ms: u64) -> Self {
        Op::Incr {
            key: key.into(),
            delta,
            ttl_ms,
        }
    }

    /// [`get`] as an operation.
    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }

    /// [`check_rate`] as an operation.
    pub fn check_rate(key: impl Into<String>, limit: u64, window_ms: u64, cost: u64) -> Self {
        Op::CheckRate {
            key: key.into(),
            limit,
            window_ms,
            cost,
        }
    }

    /// [`acquire`] as an operation.
    pub fn acquire(
        key: impl Into<String>,
        holder: impl Into<String>,
        amount: i64,
        limit: i64,
        ttl_ms: u64,
    ) -> Self {
        Op::Acquire(Hold {
            key: key.into(),
            holder: holder.into(),
            amount,
            limit,
            ttl_ms,
        })
    }

    /// [`release`] as an operation.
    pub fn release(
        key: impl Into<String>,
        holder: impl Into<String>,
        settle: i64,
        ttl_ms: u64,
    ) -> Self {
        Op::Release(Settlement {
            key: key.into(),
            holder: holder.into(),
            settle,
            ttl_ms,
        })
    }

    /// The operation's name in the contract: `incr`, `get`, `check-rate`, `acquire`,
    /// `release`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Incr { .. } => "incr",
            Op::Get { .. } => "get",
            Op::CheckRate { .. } => "check-rate",
            Op::Acquire(_) => "acquire",
            Op::Release(_) => "release",
        }
    }

    /// The key the operation is on.
    pub fn key(&self) -> &str {
        match self {
            Op::Incr { key, .. } | Op::Get { key } | Op::CheckRate { key, .. } => key,
            Op::Acquire(hold) => &hold.key,
            Op::Release(settlement) => &settlement.key,
        }
    }
}

/// The answer of one operation of a [`batch`], of the operation's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `incr`: the new value.
    Counter(i64),
    /// `get`: the value, if any.
    Value(Option<i64>),
    /// `check-rate`.
    Rate(RateCheck),
    /// `acquire`.
    Acquired(HoldState),
    /// `release`: whether the hold was still open.
    Released(bool),
}

impl Answer {
    /// The new value, for an `incr`.
    pub fn counter(&self) -> Option<i64> {
        match *self {
            Answer::Counter(v) => Some(v),
            _ => None,
        }
    }

    /// The value read (`Some(None)`: no such counter), for a `get`.
    pub fn value(&self) -> Option<Option<i64>> {
        match *self {
            Answer::Value(v) => Some(v),
            _ => None,
        }
    }

    /// The check, for a `check-rate`.
    pub fn rate(&self) -> Option<RateCheck> {
        match *self {
            Answer::Rate(r) => Some(r),
            _ => None,
        }
    }

    /// The hold's state, for an `acquire`.
    pub fn acquired(&self) -> Option<HoldState> {
        match *self {
            Answer::Acquired(h) => Some(h),
            _ => None,
        }
    }

    /// Whether the hold was still open, for a `release`.
    pub fn released(&self) -> Option<bool> {
        match *self {
            Answer::Released(r) => Some(r),
            _ => None,
        }
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

/// Takes a hold of `amount` (at least 0) on the capacity `key` for `holder`, if it fits:
/// expired holds and `holder`'s earlier hold end, then the hold is granted when the counter
/// at `key` + the other holders' open holds + `amount` ≤ `limit`. A granted hold ends by
/// itself `ttl_ms` (at least 1) after now; a refused one leaves `holder` holding nothing.
///
/// ```
/// use llm_gateway_plugin::{state, Decision, Request};
/// # fn on_request(req: &mut Request) -> Decision {
/// match state::acquire("streams:alice", &req.request_id(), 1, 8, 600_000) {
///     Ok(h) if h.granted => Decision::Continue,   // release it in on_complete
///     Ok(h) => Decision::too_many_requests(format!("{} streams in flight", h.held), 5),
///     Err(_) => Decision::deny(503, "the rate limiter is unavailable"),
/// }
/// # }
/// ```
pub fn acquire(
    key: &str,
    holder: &str,
    amount: i64,
    limit: i64,
    ttl_ms: u64,
) -> Result<HoldState, Error> {
    let hold = Hold {
        key: key.to_string(),
        holder: holder.to_string(),
        amount,
        limit,
        ttl_ms,
    };
    host::state_acquire(&hold).map_err(Error::from)
}

/// Ends `holder`'s hold on `key` (`true` if it was still open) and adds `settle` to the
/// counter at `key`, even when the hold had already expired: a reservation's exact cost is
/// counted however late it comes. A counter this creates expires `ttl_ms` after (0: never);
/// `settle = 0` leaves the counter as it is.
///
/// ```
/// use llm_gateway_plugin::{state, Completion};
/// # fn on_complete(c: &Completion) {
/// // The request reserved its worst case on the budget; now its cost is known.
/// let cost_micro_usd = 1_234;
/// let _ = state::release("budget:alice:2025-06", &c.request().request_id(), cost_micro_usd, 0);
/// # }
/// ```
pub fn release(key: &str, holder: &str, settle: i64, ttl_ms: u64) -> Result<bool, Error> {
    let settlement = Settlement {
        key: key.to_string(),
        holder: holder.to_string(),
        settle,
        ttl_ms,
    };
    host::state_release(&settlement).map_err(Error::from)
}

/// Runs `ops` in one round trip to the store, in order, and answers each, in the same order.
/// Each operation is atomic on its own; the batch is not (an operation sees the ones before
/// it, and a failed one does not stop the rest). When the store cannot be reached every
/// answer is an `Err`.
///
/// ```
/// use llm_gateway_plugin::state::{self, Op};
/// # fn f() -> Option<()> {
/// let answers = state::batch(&[Op::get("tpm:alice:1"), Op::incr("tpm:alice:2", 500, 120_000)]);
/// let previous = answers[0].as_ref().ok()?.value()?.unwrap_or(0);
/// let current = answers[1].as_ref().ok()?.counter()?;
/// # let _ = (previous, current);
/// # Some(())
/// # }
/// ```
pub fn batch(ops: &[Op]) -> Vec<Result<Answer, Error>> {
    if ops.is_empty() {
        return Vec::new();
    }
    host::state_batch(ops)
        .into_iter()
        .map(|answer| answer.map_err(Error::from))
        .collect()
}

/// Hands `ops` to the gateway to run after this call returns, off the request's path: for
/// what nobody waits on (settling a request in `on_complete`, giving back what a refused
/// request took). They run in order, like a [`batch`]; there are no answers, and failures
/// are logged and counted by the gateway.
///
/// ```
/// use llm_gateway_plugin::state::{self, Op};
/// # fn settle(holder: &str, cost: i64) {
/// state::submit(&[
///     Op::release("budget:alice:2025-06", holder, cost, 0),
///     Op::release("streams:alice", holder, 0, 600_000),
/// ]);
/// # }
/// ```
pub fn submit(ops: &[Op]) {
    if !ops.is_empty() {
        host::state_submit(ops)
    }
}
