//! Routing: which backends may serve a request, in which order, and passive health.
//!
//! A [`Router`] holds the model catalog and the `[[routes]]`. For a request it makes a plan:
//! the first route whose model globs match any ID of the requested model (and whose front
//! doors include the client's) gives the backends; without one, the backends of the front
//! door's own kind serve it, in configuration order. `failover` keeps the route's order,
//! `weighted` draws the order at random by weight (the first pick spreads the load, the
//! others are the fallbacks).
//!
//! Each backend in the plan comes with the model ID to send it (the catalog's ID for its
//! kind); a backend that cannot serve the model or the operation is left out. Backends that
//! keep failing are skipped for a cool-down ([`Health`]) but stay at the end of the plan, so
//! a request still has somewhere to go when every backend has been failing.
//!
//! The router is part of a configuration generation (routes and models reload live); health
//! belongs to the backends and survives reloads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Backend, Upstreams};
use crate::catalog::Catalog;
use crate::config::{Config, HealthConfig, Strategy};
use crate::protocol::error::GatewayError;
use crate::protocol::{FrontDoor, RequestInfo};

/// Passive health of one backend, from the answers real requests got.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    down_until_ms: AtomicU64,
}

impl Health {
    /// Whether the backend is being skipped now.
    pub fn cooling_down(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Records an answer; returns true when this failure started a cool-down.
    pub fn record(&self, ok: bool, config: &HealthConfig) -> bool {
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.down_until_ms.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= config.failure_threshold && !self.cooling_down() {
            let until = now_ms() + config.cooldown.0.as_millis() as u64;
            self.down_until_ms.store(until, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[derive(Debug)]
struct Route {
    models: Vec<String>,
    front_doors: Option<Vec<String>>,
    backends: Vec<Arc<Backend>>,
    strategy: Strategy,
    weights: Vec<u32>,
}

/// One backend a request may go to, and the model ID to send it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The backend.
    pub backend: Arc<Backend>,
    /// The model ID on that backend (`None` for calls without a model, such as the control plane).
    pub model: Option<String>,
}

/// The catalog and the routes of one configuration generation.
#[derive(Debug)]
pub struct Router {
    catalog: Catalog,
    routes: Vec<Route>,
    health: HealthConfig,
}

impl Router {
    /// Builds the router for `config` over the running backends.
    pub fn new(config: &Config, upstreams: &Upstreams) -> Result<Router, String> {
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let mut backends = Vec::new();
            for name in &r.backends {
                let b = upstreams
                    .backends()
                    .iter()
                    .find(|b| &*b.name == name)
                    .ok_or_else(|| {
                        format!(
                            "routes[{i}].backends: `{name}` is not a running backend (backends change on restart)"
                        )
                    })?;
                backends.push(Arc::clone(b));
            }
            routes.push(Route {
                models: r.models.clone(),
                front_doors: r.front_doors.clone(),
                weights: r.weights.clone().unwrap_or_else(|| vec![1; backends.len()]),
                backends,
                strategy: r.strategy,
            });
        }
        Ok(Router {
            catalog: Catalog::new(&config.models),
            routes,
            health: config.health.clone(),
        })
    }

    /// The model catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Passive health settings.
    pub fn health(&self) -> &HealthConfig {
        &self.health
    }

    /// The backends to try for a request, in order, each with its model ID.
    pub fn plan(
        &self,
        upstreams: &Upstreams,
        info: &RequestInfo,
    ) -> Result<Vec<Candidate>, GatewayError> {
        let requested = info.model_id.as_deref();
        let ordered: Vec<Arc<Backend>> = match self.route_for(info, requested) {
            Some(r) => order(r),
            None => upstreams
                .backends()
                .iter()
                .filter(|b| b.kind() == info.front_door.kind())
                .cloned()
                .collect(),
        };
        if ordered.is_empty() {
            return Err(GatewayError::Unavailable(format!(
                "no backend is configured for the {} front door",
                info.front_door.as_str()
            )));
        }
        let mut healthy = Vec::new();
        let mut cooling = Vec::new();
        let mut unusable = Vec::new();
        for backend in ordered {
            match self.candidate(backend, info, requested) {
                Ok(candidate) if candidate.backend.health.cooling_down() => cooling.push(candidate),
                Ok(candidate) => healthy.push(candidate),
                Err(why) => unusable.push(why),
            }
        }
        healthy.extend(cooling);
        if healthy.is_empty() {
            return Err(GatewayError::BadRequest(format!(
                "model `{}` cannot be served here: {}",
                requested.unwrap_or("-"),
                unusable.join("; ")
            )));
        }
        Ok(healthy)
    }

    /// The first route for the client's front door whose model globs match the requested
    /// model ID or any of the catalog's IDs for that model.
    fn route_for(&self, info: &RequestInfo, requested: Option<&str>) -> Option<&Route> {
        let entry = requested.and_then(|m| self.catalog.lookup(m));
        self.routes.iter().find(|r| {
            let door_ok = r
                .front_doors
                .as_ref()
                .is_none_or(|d| d.iter().any(|d| d == info.front_door.as_str()));
            let ids = requested
                .into_iter()
                .chain(entry.into_iter().flat_map(|e| e.ids()));
            door_ok
                && ids
                    .into_iter()
                    .any(|id| r.models.iter().any(|g| glob(g, id)))
        })
    }

    /// `backend` as a candidate for the request, with the catalog's model ID for its kind; or
    /// why it cannot serve the request (the operation is Bedrock-only, or the catalog has no ID
    /// for the model on that kind of backend).
    fn candidate(
        &self,
        backend: Arc<Backend>,
        info: &RequestInfo,
        requested: Option<&str>,
    ) -> Result<Candidate, String> {
        if info.operation.bedrock_only() && backend.kind() != crate::protocol::BackendKind::Bedrock
        {
            return Err(format!(
                "{} cannot serve {}",
                backend.name,
                info.operation.as_str()
            ));
        }
        let same_kind = backend.kind() == info.front_door.kind();
        let model = match requested {
            Some(m) => match self.catalog.model_for(m, backend.kind(), same_kind) {
                Some(id) => Some(id),
                None => {
                    return Err(format!(
                        "{} ({}) has no ID for it in the model catalog",
                        backend.name,
                        backend.kind().as_str()
                    ))
                }
            },
            None => None,
        };
        Ok(Candidate { backend, model })
    }

    /// The catalog models a client of `front_door` can be served, for `GET /v1/models`.
    pub fn servable_models(
        &self,
        upstreams: &Upstreams,
        front_door: FrontDoor,
    ) -> Vec<&crate::catalog::ModelEntry> {
        self.catalog
            .entries()
            .iter()
            .filter(|e| {
                let info = RequestInfo {
                    front_door,
                    operation: crate::protocol::Operation::Invoke,
                    model_id: Some(e.name.clone()),
                    upstream_path: String::new(),
                };
                self.plan(upstreams, &info).is_ok()
            })
            .collect()
    }
}

/// The route's backends in the order to try them.
fn order(route: &Route) -> Vec<Arc<Backend>> {
    match route.strategy {
        Strategy::Failover => route.backends.clone(),
        Strategy::Weighted => {
            // Weighted sampling without replacement: each draw picks among the rest by weight.
            let mut rest: Vec<(u32, &Arc<Backend>)> =
                route.weights.iter().copied().zip(&route.backends).collect();
            let mut out = Vec::with_capacity(rest.len());
            while !rest.is_empty() {
                let total: u64 = rest.iter().map(|(w, _)| u64::from(*w)).sum();
                let i = if total == 0 {
                    0
                } else {
                    let mut pick = fastrand::u64(0..total);
                    rest.iter()
                        .position(|(w, _)| {
                            let w = u64::from(*w);
                            if pick < w {
                                true
                            } else {
                                pick -= w;
                                false
                            }
                        })
                        .unwrap_or(0)
                };
                out.push(Arc::clone(rest.remove(i).1));
            }
            out
        }
    }
}

/// Glob match with `*` (any run) and `?` (one character), case-sensitive.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(
            "*sonnet*",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        ));
        assert!(glob("*", ""));
        assert!(glob("claude-?-5", "claude-x-5"));
        assert!(!glob("*opus*", "claude-sonnet-4-5"));
        assert!(!glob("claude", "claude-sonnet"));
    }

    #[test]
    fn health_cools_down_after_the_threshold_and_recovers() {
        let h = Health::default();
        let cfg = HealthConfig {
            failure_threshold: 2,
            cooldown: crate::config::HumanDuration(Duration::from_secs(30)),
        };
        assert!(!h.record(false, &cfg));
        assert!(!h.cooling_down());
        assert!(h.record(false, &cfg));
        assert!(h.cooling_down());
        h.record(true, &cfg);
        assert!(!h.cooling_down());
        assert_eq!(h.failures(), 0);
    }
}
