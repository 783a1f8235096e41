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

use super::{Answer, Answers, Hold, HoldState, Op, RateCheck, Settlement, StateError, StateStore};

/// The open holds on one capacity: holder -> (amount, expiry).
type Holds = HashMap<String, (i64, Instant)>;

/// Everything behind the store's one lock.
#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    holds: HashMap<String, Holds>,
}

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

/// Counters, windows and holds in this process's memory.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
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
            inner: Mutex::new(Inner::default()),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StateError> {
        self.inner
            .lock()
            .map_err(|_| StateError::Backend("memory store lock poisoned".into()))
    }

    /// Drops expired counters and windows idle for two periods (called on writes, amortized).
    fn sweep(inner: &mut Inner, now: Instant) {
        if inner.entries.len() >= 4096 {
            inner.entries.retain(|_, e| match e {
                Entry::Counter { expires, .. } => expires.is_none_or(|t| t > now),
                Entry::Window { start, window, .. } => now.duration_since(*start) < *window * 2,
            });
        }
        if inner.holds.len() >= 4096 {
            inner.holds.retain(|_, h| {
                h.retain(|_, (_, expires)| *expires > now);
                !h.is_empty()
            });
        }
    }

    #[cfg(test)]
    fn rate_at(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
        now: Instant,
    ) -> Result<RateCheck, StateError> {
        let mut inner = self.lock()?;
        Self::sweep(&mut inner, now);
        self.rate_in(&mut inner.entries, key, limit, window, cost, now)
    }

    fn rate_in(
        &self,
        map: &mut HashMap<String, Entry>,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
        now: Instant,
    ) -> Result<RateCheck, StateError> {
        let window = window.max(Duration::from_millis(1));
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

impl MemoryStore {
    fn incr_at(
        map: &mut HashMap<String, Entry>,
        key: &str,
        delta: i64,
        ttl: Duration,
        now: Instant,
    ) -> Result<i64, StateError> {
        let ttl = super::effective_ttl(ttl);
        let fresh = || Entry::Counter {
            value: 0,
            expires: Some(now + ttl),
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

    fn get_at(
        map: &HashMap<String, Entry>,
        key: &str,
        now: Instant,
    ) -> Result<Option<i64>, StateError> {
        match map.get(key) {
            Some(Entry::Counter { value, expires }) if expires.is_none_or(|t| t > now) => {
                Ok(Some(*value))
            }
            Some(Entry::Counter { .. }) | None => Ok(None),
            Some(Entry::Window { .. }) => Err(StateError::WrongType(key.to_string())),
        }
    }

    /// The open holds on `key`, expired ones dropped.
    fn open_holds<'a>(
        holds: &'a mut HashMap<String, Holds>,
        key: &str,
        now: Instant,
    ) -> &'a mut Holds {
        let h = holds.entry(key.to_string()).or_default();
        h.retain(|_, (_, expires)| *expires > now);
        h
    }

    fn acquire_at(inner: &mut Inner, hold: &Hold, now: Instant) -> Result<HoldState, StateError> {
        let used = Self::get_at(&inner.entries, &hold.key, now)?.unwrap_or(0);
        let holds = Self::open_holds(&mut inner.holds, &hold.key, now);
        holds.remove(&hold.holder);
        let held: i64 = holds.values().map(|(a, _)| *a).sum();
        let fits = used.saturating_add(held).saturating_add(hold.amount.max(0)) <= hold.limit;
        if fits {
            let ttl = super::effective_ttl(hold.ttl);
            holds.insert(hold.holder.clone(), (hold.amount.max(0), now + ttl));
        }
        Ok(HoldState {
            granted: fits,
            used,
            held: if fits {
                held + hold.amount.max(0)
            } else {
                held
            },
        })
    }

    fn release_at(inner: &mut Inner, s: &Settlement, now: Instant) -> Result<bool, StateError> {
        let holds = Self::open_holds(&mut inner.holds, &s.key, now);
        let was_open = holds.remove(&s.holder).is_some();
        if holds.is_empty() {
            inner.holds.remove(&s.key);
        }
        if s.settle != 0 {
            Self::incr_at(&mut inner.entries, &s.key, s.settle, s.ttl, now)?;
        }
        Ok(was_open)
    }

    fn apply(&self, inner: &mut Inner, op: &Op, now: Instant) -> Result<Answer, StateError> {
        match op {
            Op::Incr { key, delta, ttl } => {
                Self::incr_at(&mut inner.entries, key, *delta, *ttl, now).map(Answer::Counter)
            }
            Op::Get { key } => Self::get_at(&inner.entries, key, now).map(Answer::Value),
            Op::CheckRate {
                key,
                limit,
                window,
                cost,
            } => self
                .rate_in(&mut inner.entries, key, *limit, *window, *cost, now)
                .map(Answer::Rate),
            Op::Acquire(hold) => Self::acquire_at(inner, hold, now).map(Answer::Acquired),
            Op::Release(s) => Self::release_at(inner, s, now).map(Answer::Released),
        }
    }

    /// Runs `ops` at `now` (tests drive the clock).
    fn batch_at(&self, ops: &[Op], now: Instant) -> Result<Answers, StateError> {
        let mut inner = self.lock()?;
        Self::sweep(&mut inner, now);
        Ok(ops
            .iter()
            .map(|op| self.apply(&mut inner, op, now))
            .collect())
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn batch(&self, ops: &[Op]) -> Result<Answers, StateError> {
        self.batch_at(ops, Instant::now())
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

    fn hold(holder: &str, amount: i64, limit: i64, ttl_ms: u64) -> Op {
        Op::Acquire(Hold {
            key: "cap".into(),
            holder: holder.into(),
            amount,
            limit,
            ttl: Duration::from_millis(ttl_ms),
        })
    }

    fn granted(a: &Result<Answer, StateError>) -> bool {
        matches!(a, Ok(Answer::Acquired(HoldState { granted: true, .. })))
    }

    #[test]
    fn holds_fit_the_limit_settle_into_the_counter_and_expire() {
        let s = MemoryStore::new();
        let t0 = Instant::now();
        let a = s
            .batch_at(&[hold("a", 60, 100, 1_000), hold("b", 60, 100, 1_000)], t0)
            .unwrap();
        assert!(granted(&a[0]) && !granted(&a[1]), "{a:?}");
        // Settling a's real use (30) frees the rest of its reservation.
        let settle = Op::Release(Settlement {
            key: "cap".into(),
            holder: "a".into(),
            settle: 30,
            ttl: Duration::ZERO,
        });
        assert_eq!(
            s.batch_at(std::slice::from_ref(&settle), t0).unwrap()[0]
                .as_ref()
                .unwrap(),
            &Answer::Released(true)
        );
        let b = s.batch_at(&[hold("b", 60, 100, 1_000)], t0).unwrap();
        assert_eq!(
            b[0].as_ref().unwrap(),
            &Answer::Acquired(HoldState {
                granted: true,
                used: 30,
                held: 60
            })
        );
        // b's holder dies: its hold expires and stops counting; the settled 30 stay.
        let later = t0 + Duration::from_millis(1_001);
        let c = s.batch_at(&[hold("c", 70, 100, 1_000)], later).unwrap();
        assert!(granted(&c[0]), "{c:?}");
        // A late release still settles, but ends nothing.
        let late = s.batch_at(&[settle], later).unwrap();
        assert_eq!(late[0].as_ref().unwrap(), &Answer::Released(false));
        assert_eq!(
            s.batch_at(&[Op::Get { key: "cap".into() }], later).unwrap()[0]
                .as_ref()
                .unwrap(),
            &Answer::Value(Some(60))
        );
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
