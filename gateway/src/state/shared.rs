//! The Redis store as the gateway uses it: bounded, and useful while Redis is down.
//!
//! Every batch gets `timeout`; a batch that fails to reach Redis (refused, dropped, timed out)
//! starts an *incident*: one warning, one increment of `gateway_state_store_incidents_total`,
//! `/status` turns unhealthy, and from then on batches do not touch Redis at all (no request
//! waits on a dead server) but get `on_unavailable`'s answer:
//! - `local`: this replica's [`MemoryStore`] counts instead (limits hold per replica);
//! - `allow`: every limit has room and nothing is counted;
//! - `deny`: every call fails, and plugins refuse what they cannot check.
//!
//! A background task probes Redis (a `PING` every half second) and ends the incident, with
//! one log line, as soon as it answers; batches go to Redis again from then on. What was
//! counted locally during the incident stays local.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Answers, MemoryStore, Op, RedisStore, StateError, StateStore};
use crate::config::state::{OnUnavailable, StateBackend, StateConfig};

/// How often an unhealthy store probes Redis.
const PROBE_EVERY: Duration = Duration::from_millis(500);

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
                // Back when it answers, with the scripts loaded (a restarted server has none).
                if let Ok(Ok(())) = tokio::time::timeout(wait, redis.load_scripts()).await {
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

#[async_trait::async_trait]
impl StateStore for SharedStore {
    async fn batch(&self, ops: &[Op]) -> Result<Answers, StateError> {
        if !self.health.healthy.load(Ordering::Acquire) {
            return self.unavailable(ops).await;
        }
        match tokio::time::timeout(self.timeout, self.redis.batch(ops)).await {
            Ok(Ok(answers)) => Ok(answers),
            Ok(Err(e)) => {
                self.incident(&e.to_string());
                self.unavailable(ops).await
            }
            Err(_) => {
                self.incident(&format!("no answer within {:?}", self.timeout));
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
