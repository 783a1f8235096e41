//! The Redis store as the gateway uses it: bounded, and useful while Redis is down.
//!
//! Every batch gets `timeout`. A batch that cannot reach Redis (refused, dropped), or the
//! third batch in a row to miss the timeout, starts an *incident*: one warning, one increment
//! of `gateway_state_store_incidents_total`, `/status` turns unhealthy, and from then on
//! batches do not touch Redis at all (no request waits on a dead server) but get
//! `on_unavailable`'s answer:
//! - `local`: this replica's [`MemoryStore`] counts instead (limits hold per replica);
//! - `allow`: every limit has room and nothing is counted;
//! - `deny`: every call fails, and plugins refuse what they cannot check.
//!
//! A single batch that misses the timeout gets that answer for itself only.
//!
//! Nothing is lost or left held in Redis by an incident or a late answer:
//! - a batch that missed the timeout may still run when Redis wakes up; releases of the holds
//!   it took follow it on the same connection, so a late reservation or lease does not hold
//!   capacity until its TTL for a request that is long over;
//! - releases made while Redis was down (stream slots ended, budget spend settled) are kept,
//!   up to 100,000 operations, and sent to Redis before the incident ends, so settled spend
//!   reaches the shared counter.
//!
//! A background task probes Redis (every half second: the scripts loaded, then what Redis is
//! owed) and ends the incident, with one log line, once both went through; batches go to
//! Redis again from then on. Counters and windows counted locally meanwhile stay local.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Answers, MemoryStore, Op, RedisStore, StateError, StateStore};
use crate::config::state::{OnUnavailable, StateBackend, StateConfig};

/// How often an unhealthy store probes Redis.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Batches in a row that miss the timeout before it counts as an outage (one slow answer
/// under a burst gets the fallback for itself, without switching every call over).
const TIMEOUTS_FOR_INCIDENT: u32 = 3;
/// Operations kept for Redis while it cannot take them; older ones are dropped past this.
const REPLAY_MAX: usize = 100_000;
/// Operations sent per replay batch.
const REPLAY_CHUNK: usize = 256;

/// What `/status` shows of the state store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// Whether the store answers (always true for memory).
    pub healthy: bool,
    /// Redis: what calls do while it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_unavailable: Option<&'static str>,
    /// Redis: outages since start.
    pub incidents: u64,
    /// Redis, while down: since when (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_since_ms: Option<u64>,
}

impl StoreStatus {
    /// The in-process store's status.
    pub fn memory() -> Self {
        Self {
            backend: "memory",
            healthy: true,
            on_unavailable: None,
            incidents: 0,
            unavailable_since_ms: None,
        }
    }
}

/// What the incident state is shared with the probe task.
struct Health {
    healthy: AtomicBool,
    incidents: AtomicU64,
    since_ms: AtomicU64,
    counter: prometheus::IntCounter,
    /// Batches in a row that missed the timeout.
    timeouts: std::sync::atomic::AtomicU32,
    /// What Redis still has to be told (see [`SharedStore::owed`]).
    replay: std::sync::Mutex<Vec<Op>>,
}

impl Health {
    fn owe(&self, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        if let Ok(mut q) = self.replay.lock() {
            q.extend(ops);
            let over = q.len().saturating_sub(REPLAY_MAX);
            if over > 0 {
                q.drain(..over);
                tracing::warn!(
                    dropped = over,
                    "state store: too many operations waiting for Redis; the oldest are dropped"
                );
            }
        }
    }

    fn take_owed(&self) -> Vec<Op> {
        self.replay
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

/// Sends what Redis is owed, in chunks; what it does not take stays owed. True when all went.
async fn pay(redis: &RedisStore, health: &Health, wait: Duration) -> bool {
    let owed = health.take_owed();
    let mut chunks = owed.chunks(REPLAY_CHUNK);
    for chunk in chunks.by_ref() {
        if !matches!(
            tokio::time::timeout(wait, redis.batch(chunk)).await,
            Ok(Ok(_))
        ) {
            let mut rest = chunk.to_vec();
            rest.extend(chunks.flatten().cloned());
            health.owe(rest);
            return false;
        }
    }
    true
}

/// A [`RedisStore`] with a deadline, an outage policy and background reconnection.
pub struct SharedStore {
    redis: Arc<RedisStore>,
    runtime: tokio::runtime::Handle,
    local: MemoryStore,
    timeout: Duration,
    on_unavailable: OnUnavailable,
    health: Arc<Health>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SharedStore {
    /// The store `[state]` asks for; `incidents` is the counter to bump per outage; Redis
    /// connections and probes live on `runtime`.
    pub fn from_config(
        config: &StateConfig,
        incidents: prometheus::IntCounter,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<dyn StateStore>, StateError> {
        match (config.backend, &config.url) {
            (StateBackend::Memory, _) => Ok(Arc::new(MemoryStore::new())),
            (StateBackend::Redis, None) => {
                Err(StateError::Backend("backend \"redis\" needs a url".into()))
            }
            (StateBackend::Redis, Some(urls)) => {
                let redis = Arc::new(RedisStore::new(
                    urls,
                    &config.key_prefix,
                    config.timeout.0,
                    runtime.clone(),
                )?);
                // Best effort: if Redis is down now, the first batch starts an incident and the
                // probe loads them when it is back.
                let preload = Arc::clone(&redis);
                runtime.spawn(async move {
                    if let Err(e) = preload.load_scripts().await {
                        tracing::warn!(error = %e, "state store: could not load the scripts into Redis at start");
                    }
                });
                Ok(Arc::new(Self {
                    runtime,
                    redis,
                    local: MemoryStore::new(),
                    timeout: config.timeout.0,
                    on_unavailable: config.on_unavailable,
                    health: Arc::new(Health {
                        healthy: AtomicBool::new(true),
                        incidents: AtomicU64::new(0),
                        since_ms: AtomicU64::new(0),
                        counter: incidents,
                        timeouts: std::sync::atomic::AtomicU32::new(0),
                        replay: std::sync::Mutex::new(Vec::new()),
                    }),
                }))
            }
        }
    }

    /// What a batch gets while Redis is down.
    async fn unavailable(&self, ops: &[Op]) -> Result<Answers, StateError> {
        match self.on_unavailable {
            OnUnavailable::Local => self.local.batch(ops).await,
            OnUnavailable::Allow => Ok(ops.iter().map(|op| Ok(op.permissive_answer())).collect()),
            OnUnavailable::Deny => Err(StateError::Unavailable),
        }
    }

    /// Starts an incident (once), and the probe that ends it.
    fn incident(&self, why: &str) {
        let health = &self.health;
        if !health.healthy.swap(false, Ordering::AcqRel) {
            return;
        }
        health.incidents.fetch_add(1, Ordering::Relaxed);
        health.since_ms.store(now_ms(), Ordering::Relaxed);
        health.counter.inc();
        tracing::warn!(
            error = why,
            on_unavailable = self.on_unavailable.as_str(),
            "state store unavailable: Redis did not answer; calls get on_unavailable's answer until it does"
        );
        let (redis, health, timeout) = (self.redis.clone(), self.health.clone(), self.timeout);
        let probe = async move {
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let wait = timeout.max(Duration::from_secs(1));
                // Back when it answers, with the scripts loaded (a restarted server has none),
                // and once it has what it is owed.
                if let Ok(Ok(())) = tokio::time::timeout(wait, redis.load_scripts()).await {
                    if !pay(&redis, &health, wait).await {
                        continue;
                    }
                    health.timeouts.store(0, Ordering::Relaxed);
                    health.healthy.store(true, Ordering::Release);
                    tracing::info!(
                        down_for_ms = started.elapsed().as_millis() as u64,
                        "state store available again: Redis answers"
                    );
                    return;
                }
            }
        };
        self.runtime.spawn(probe);
    }
}

impl SharedStore {
    /// What Redis is owed for `ops` that did not reach it, or may reach it late:
    /// - every hold they took is released (a late `acquire` would otherwise hold capacity
    ///   until its TTL for a request that is long over);
    /// - with `releases`, their releases and settlements are sent again: those that certainly
    ///   did not run (refused, or made while Redis was known to be down), so spend settled
    ///   meanwhile still reaches the shared counter.
    fn owed(ops: &[Op], releases: bool) -> Vec<Op> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Acquire(h) => Some(Op::Release(super::Settlement {
                    key: h.key.clone(),
                    holder: h.holder.clone(),
                    settle: 0,
                    ttl: h.ttl,
                })),
                Op::Release(_) if releases => Some(op.clone()),
                _ => None,
            })
            .collect()
    }

    /// A batch that missed the timeout: Redis may still run it, after which its holds must
    /// end; sent behind it on the same connection, the releases run after it.
    fn timed_out(&self, ops: &[Op]) {
        self.health.owe(Self::owed(ops, false));
        let timeouts = self.health.timeouts.fetch_add(1, Ordering::AcqRel) + 1;
        if timeouts >= TIMEOUTS_FOR_INCIDENT {
            self.incident(&format!(
                "{timeouts} batches in a row without an answer within {:?}",
                self.timeout
            ));
        } else {
            let (redis, health, wait) = (
                Arc::clone(&self.redis),
                Arc::clone(&self.health),
                self.timeout.max(Duration::from_secs(1)),
            );
            self.runtime
                .spawn(async move { pay(&redis, &health, wait).await });
        }
    }
}

#[async_trait::async_trait]
impl StateStore for SharedStore {
    async fn batch(&self, ops: &[Op]) -> Result<Answers, StateError> {
        if !self.health.healthy.load(Ordering::Acquire) {
            // Releases made meanwhile end holds Redis may have and settle real spend: Redis
            // gets them when it is back. (Holds taken meanwhile never reached it.)
            let releases = ops.iter().filter(|op| matches!(op, Op::Release(_)));
            self.health.owe(releases.cloned().collect());
            return self.unavailable(ops).await;
        }
        match tokio::time::timeout(self.timeout, self.redis.batch(ops)).await {
            Ok(Ok(answers)) => {
                self.health.timeouts.store(0, Ordering::Relaxed);
                Ok(answers)
            }
            Ok(Err(e)) => {
                // Refused or dropped: what it released is sent again once Redis is back.
                self.health.owe(Self::owed(ops, true));
                self.incident(&e.to_string());
                self.unavailable(ops).await
            }
            Err(_) => {
                self.timed_out(ops);
                self.unavailable(ops).await
            }
        }
    }

    fn status(&self) -> StoreStatus {
        let healthy = self.health.healthy.load(Ordering::Acquire);
        StoreStatus {
            backend: "redis",
            healthy,
            on_unavailable: Some(self.on_unavailable.as_str()),
            incidents: self.health.incidents.load(Ordering::Relaxed),
            unavailable_since_ms: (!healthy).then(|| self.health.since_ms.load(Ordering::Relaxed)),
        }
    }
}
