//! The in-process state store.
//!
//! Counters live in a map behind a mutex that is never held across an `.await` (every
//! operation is a few arithmetic steps). Rate checks use the sliding-window counter: the
//! current fixed window's count plus the previous window's count weighted by how much of it
//! still overlaps the sliding window. It needs two integers per key and is accurate to within
//! a few percent, which is what limits need.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{RateCheck, StateError, StateStore};

#[derive(Debug)]
enum Entry {
    Counter {
        value: i64,
        expires: Option<Instant>,
    },
    Window {
        start: Instant,
        window: Duration,
        current: u64,
        previous: u64,
    },
}

/// Counters and windows in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, Entry>>,
    epoch: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Entry>>, StateError> {
        self.entries
            .lock()
            .map_err(|_| StateError::Backend("memory store lock poisoned".into()))
    }

    /// Drops expired counters and windows idle for two periods (called on writes, amortized).
    fn sweep(map: &mut HashMap<String, Entry>, now: Instant) {
        if map.len() < 4096 {
            return;
        }
        map.retain(|_, e| match e {
            Entry::Counter { expires, .. } => expires.is_none_or(|t| t > now),
            Entry::Window { start, window, .. } => now.duration_since(*start) < *window * 2,
        });
    }

    fn rate_at(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
        now: Instant,
    ) -> Result<RateCheck, StateError> {
        let window = window.max(Duration::from_millis(1));
        let mut map = self.lock()?;
        Self::sweep(&mut map, now);
        // Windows are aligned on the store's epoch so every key rolls at the same instants.
        let since = now.duration_since(self.epoch).as_nanos();
        let aligned = since - since % window.as_nanos();
        let start = self.epoch + Duration::from_nanos(aligned as u64);
        let entry = map.entry(key.to_string()).or_insert(Entry::Window {
            start,
            window,
            current: 0,
            previous: 0,
        });
        let Entry::Window {
            start: s,
            window: w,
            current,
            previous,
        } = entry
        else {
            return Err(StateError::WrongType(key.to_string()));
        };
        if *w != window || start > *s {
            let periods = if *w == window {
                (start.duration_since(*s).as_nanos() / window.as_nanos()) as u64
            } else {
                2
            };
            *previous = if periods == 1 { *current } else { 0 };
            *current = 0;
            *s = start;
            *w = window;
        }
        let elapsed = now.duration_since(*s).as_secs_f64() / window.as_secs_f64();
        let weighted_previous = (*previous as f64 * (1.0 - elapsed)).ceil() as u64;
        let used = weighted_previous + *current;
        if used + cost <= limit {
            *current += cost;
            Ok(RateCheck {
                allowed: true,
                remaining: limit - used - cost,
                retry_after: Duration::ZERO,
            })
        } else {
            // Enough frees up when the previous window's weight has decayed, or at the next roll.
            let retry_after = if *previous > 0 && *current + cost <= limit {
                let need = used + cost - limit;
                let frac = need as f64 / *previous as f64;
                window.mul_f64(frac.min(1.0))
            } else {
                (*s + window).saturating_duration_since(now)
            };
            Ok(RateCheck {
                allowed: false,
                remaining: limit.saturating_sub(used),
                retry_after: retry_after.max(Duration::from_millis(1)),
            })
        }
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn incr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, StateError> {
        let now = Instant::now();
        let mut map = self.lock()?;
        Self::sweep(&mut map, now);
        let fresh = || Entry::Counter {
            value: 0,
            expires: (!ttl.is_zero()).then(|| now + ttl),
        };
        let entry = map.entry(key.to_string()).or_insert_with(fresh);
        if let Entry::Counter {
            expires: Some(t), ..
        } = entry
        {
            if *t <= now {
                *entry = fresh();
            }
        }
        match entry {
            Entry::Counter { value, .. } => {
                *value = value.saturating_add(delta);
                Ok(*value)
            }
            Entry::Window { .. } => Err(StateError::WrongType(key.to_string())),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<i64>, StateError> {
        let now = Instant::now();
        match self.lock()?.get(key) {
            Some(Entry::Counter { value, expires }) if expires.is_none_or(|t| t > now) => {
                Ok(Some(*value))
            }
            Some(Entry::Counter { .. }) | None => Ok(None),
            Some(Entry::Window { .. }) => Err(StateError::WrongType(key.to_string())),
        }
    }

    async fn check_rate(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
    ) -> Result<RateCheck, StateError> {
        self.rate_at(key, limit, window, cost, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_add_expire_and_report() {
        let s = MemoryStore::new();
        assert_eq!(s.incr("a", 2, Duration::ZERO).await.unwrap(), 2);
        assert_eq!(s.incr("a", -5, Duration::ZERO).await.unwrap(), -3);
        assert_eq!(s.get("a").await.unwrap(), Some(-3));
        assert_eq!(s.get("b").await.unwrap(), None);
        s.incr("t", 1, Duration::from_millis(20)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(s.get("t").await.unwrap(), None);
        assert_eq!(s.incr("t", 1, Duration::from_millis(20)).await.unwrap(), 1);
    }

    #[test]
    fn rate_window_allows_up_to_the_limit_then_refuses_with_a_retry_hint() {
        let s = MemoryStore::new();
        let w = Duration::from_secs(60);
        let t0 = s.epoch + Duration::from_secs(600);
        for i in 0..3 {
            let r = s.rate_at("k", 3, w, 1, t0).unwrap();
            assert!(r.allowed);
            assert_eq!(r.remaining, 2 - i);
        }
        let r = s.rate_at("k", 3, w, 1, t0).unwrap();
        assert!(!r.allowed);
        assert!(r.retry_after > Duration::ZERO && r.retry_after <= w);
        // Refusals consume nothing; a cost larger than the limit never fits.
        assert!(!s.rate_at("big", 3, w, 4, t0).unwrap().allowed);
    }

    #[test]
    fn previous_window_weighs_on_the_next_one() {
        let s = MemoryStore::new();
        let w = Duration::from_secs(60);
        let t0 = s.epoch + Duration::from_secs(600);
        for _ in 0..10 {
            assert!(s.rate_at("k", 10, w, 1, t0).unwrap().allowed);
        }
        // A quarter into the next window, 75% of the previous 10 still count.
        let t1 = t0 + Duration::from_secs(75);
        let r = s.rate_at("k", 10, w, 1, t1).unwrap();
        assert!(r.allowed, "{r:?}");
        assert_eq!(r.remaining, 10 - 8 - 1);
        // Two windows later everything has rolled off.
        let t2 = t0 + Duration::from_secs(200);
        assert_eq!(s.rate_at("k", 10, w, 1, t2).unwrap().remaining, 9);
    }

    #[tokio::test]
    async fn counters_and_windows_do_not_mix() {
        let s = MemoryStore::new();
        s.incr("x", 1, Duration::ZERO).await.unwrap();
        assert!(s
            .check_rate("x", 1, Duration::from_secs(1), 1)
            .await
            .is_err());
    }
}
