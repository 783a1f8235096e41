//! Prometheus metrics, served on the admin listener's `/metrics`.
//!
//! The gateway's own series are registered once at start-up. Plugins add their own through the
//! `metrics` host call; those are created on first use as `plugin_<plugin>_<name>` with the
//! label names of that first use, and later uses must keep the same label names.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by front door, backend, model (as served), status and outcome.
    pub requests: IntCounterVec,
    /// Request durations by front door and outcome.
    pub request_seconds: HistogramVec,
    /// Time to the first byte of the upstream answer, by front door and backend.
    pub first_byte_seconds: HistogramVec,
    /// Tokens by team, model and kind (`input`, `output`, `cache_read`, `cache_write`).
    pub tokens: IntCounterVec,
    /// Requests denied by plugins, by plugin and status (rate-limit denials are status 429).
    pub denials: IntCounterVec,
    /// Requests moved to another backend after a failure (routing with failover).
    pub failovers: IntCounterVec,
    /// Plugin calls by plugin, phase and result (`ok`, `error`, `trap`, `timeout`, `skipped`).
    pub plugin_calls: IntCounterVec,
    /// Outages of the shared state store.
    pub state_incidents: prometheus::IntCounter,
    /// Submitted state operations that failed.
    pub state_submit_failures: prometheus::IntCounter,
    /// Plugin call durations by plugin and phase.
    pub plugin_call_seconds: HistogramVec,
    plugin_counters: Mutex<HashMap<String, (CounterVec, Vec<String>)>>,
    plugin_gauges: Mutex<HashMap<String, (GaugeVec, Vec<String>)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the gateway's series.
    pub fn new() -> Self {
        let registry = Registry::new();
        let (plugin_calls, plugin_call_seconds) = register_plugin_call_series(&registry);
        let requests = register_counter(
            &registry,
            "gateway_requests_total",
            "Requests by front door, backend, model, status and outcome",
            &["front_door", "backend", "model", "status", "outcome"],
        );
        let (request_seconds, first_byte_seconds) = register_latency_series(&registry);
        let tokens = register_counter(
            &registry,
            "gateway_tokens_total",
            "Tokens by team, model and kind",
            &["team", "model", "kind"],
        );
        let denials = register_counter(
            &registry,
            "gateway_plugin_denials_total",
            "Requests denied by plugins",
            &["plugin", "status"],
        );
        let failovers = register_counter(
            &registry,
            "gateway_upstream_failovers_total",
            "Requests moved to another backend after a failure",
            &["from_backend"],
        );
        let state_incidents = prometheus::IntCounter::new(
            "gateway_state_store_incidents_total",
            "Times the shared state store became unreachable (one per outage)",
        )
        .expect("static metric definition");
        let state_submit_failures = prometheus::IntCounter::new(
            "gateway_state_submit_failures_total",
            "State operations plugins submitted off the request path that failed",
        )
        .expect("static metric definition");
        for c in [&state_incidents, &state_submit_failures] {
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
        }
        Self {
            registry,
            requests,
            state_incidents,
            state_submit_failures,
            request_seconds,
            first_byte_seconds,
            tokens,
            denials,
            failovers,
            plugin_calls,
            plugin_call_seconds,
            plugin_counters: Mutex::new(HashMap::new()),
            plugin_gauges: Mutex::new(HashMap::new()),
        }
    }

    /// The registry, for registering more series.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Adds to a plugin-defined counter.
    pub fn plugin_counter_add(
        &self,
        plugin: &str,
        name: &str,
        labels: &[(String, String)],
        value: u64,
    ) -> Result<(), String> {
        let counter =
            self.plugin_metric(&self.plugin_counters, plugin, name, labels, CounterVec::new)?;
        counter
            .with_label_values(&label_refs(labels))
            .inc_by(value as f64);
        Ok(())
    }

    /// Sets a plugin-defined gauge.
    pub fn plugin_gauge_set(
        &self,
        plugin: &str,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> Result<(), String> {
        let gauge = self.plugin_metric(&self.plugin_gauges, plugin, name, labels, GaugeVec::new)?;
        gauge.with_label_values(&label_refs(labels)).set(value);
        Ok(())
    }

    /// The plugin metric `name`, created and registered on first use with the label names of
    /// that use; later uses must name the same labels.
    fn plugin_metric<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metrics: &Mutex<HashMap<String, (M, Vec<String>)>>,
        plugin: &str,
        name: &str,
        labels: &[(String, String)],
        make: impl FnOnce(Opts, &[&str]) -> prometheus::Result<M>,
    ) -> Result<M, String> {
        let full = metric_name(plugin, name)?;
        let mut map = metrics
            .lock()
            .map_err(|_| "metrics lock poisoned".to_string())?;
        if let Some((metric, names)) = map.get(&full) {
            check_labels(names, labels)?;
            return Ok(metric.clone());
        }
        let names: Vec<String> = labels.iter().map(|(k, _)| k.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let metric = make(
            Opts::new(full.clone(), format!("plugin {plugin}: {name}")),
            &refs,
        )
        .map_err(|e| e.to_string())?;
        self.registry
            .register(Box::new(metric.clone()))
            .map_err(|e| e.to_string())?;
        map.insert(full, (metric.clone(), names));
        Ok(metric)
    }
}

/// Histogram buckets (seconds) for request-scale durations: a millisecond to five minutes.
const REQUEST_SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Histogram buckets (seconds) for plugin calls: a microsecond to 50 milliseconds.
const PLUGIN_CALL_SECONDS_BUCKETS: [f64; 12] = [
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2,
];

/// Creates the static counter family `name` and registers it in `registry`.
fn register_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter =
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(counter.clone()))
        .expect("unique metric");
    counter
}

/// Creates the static histogram family `name` with `buckets` and registers it in `registry`.
fn register_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let histogram = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("static metric definition");
    registry
        .register(Box::new(histogram.clone()))
        .expect("unique metric");
    histogram
}

/// The plugin call series: calls by result, and call durations on microsecond buckets.
fn register_plugin_call_series(registry: &Registry) -> (IntCounterVec, HistogramVec) {
    let calls = register_counter(
        registry,
        "gateway_plugin_calls_total",
        "Plugin phase calls by result",
        &["plugin", "phase", "result"],
    );
    let seconds = register_histogram(
        registry,
        "gateway_plugin_call_seconds",
        "Plugin phase call duration",
        &["plugin", "phase"],
        &PLUGIN_CALL_SECONDS_BUCKETS,
    );
    (calls, seconds)
}

/// The request latency series: whole-request duration, and time to the upstream's first byte.
fn register_latency_series(registry: &Registry) -> (HistogramVec, HistogramVec) {
    let request_seconds = register_histogram(
        registry,
        "gateway_request_duration_seconds",
        "Request duration, first byte in to last byte out",
        &["front_door", "outcome"],
        &REQUEST_SECONDS_BUCKETS,
    );
    let first_byte_seconds = register_histogram(
        registry,
        "gateway_time_to_first_byte_seconds",
        "Time to the upstream's first byte",
        &["front_door", "backend"],
        &REQUEST_SECONDS_BUCKETS,
    );
    (request_seconds, first_byte_seconds)
}

fn metric_name(plugin: &str, name: &str) -> Result<String, String> {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    if name.is_empty() || name.len() > 100 {
        return Err("metric names have 1 to 100 characters".into());
    }
    Ok(format!("plugin_{}_{}", clean(plugin), clean(name)))
}

fn check_labels(names: &[String], labels: &[(String, String)]) -> Result<(), String> {
    if names.len() != labels.len() || names.iter().zip(labels).any(|(n, (k, _))| n != k) {
        return Err(format!("this metric's labels are {names:?}"));
    }
    Ok(())
}

fn label_refs(labels: &[(String, String)]) -> Vec<&str> {
    labels.iter().map(|(_, v)| v.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_metrics_are_namespaced_and_keep_their_labels() {
        let m = Metrics::new();
        let l = vec![("team".to_string(), "a".to_string())];
        m.plugin_counter_add("rate-limit", "denied", &l, 2).unwrap();
        m.plugin_counter_add("rate-limit", "denied", &l, 1).unwrap();
        assert!(m
            .plugin_counter_add("rate-limit", "denied", &[], 1)
            .is_err());
        m.plugin_gauge_set("p", "g", &[], 1.5).unwrap();
        let text = m.render();
        assert!(
            text.contains("plugin_rate_limit_denied{team=\"a\"} 3"),
            "{text}"
        );
        assert!(text.contains("plugin_p_g 1.5"));
    }
}
