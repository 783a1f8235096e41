//! `[state]`: where plugin counters, rate windows, leases and budgets live (the stores
//! themselves are `crate::state`).
//!
//! ```toml
//! [state]
//! backend = "redis"                 # or "memory" (the default: this process only)
//! url = "redis://127.0.0.1:6379"    # rediss:// for TLS; a list of node URLs for a cluster
//! timeout = "50ms"                  # the longest a request waits on the store
//! on_unavailable = "local"          # "local", "allow" or "deny" while Redis is down
//! key_prefix = "llm-gateway"        # every key's namespace in a shared Redis
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::HumanDuration;

/// `[state]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Which store.
    #[serde(default)]
    pub backend: StateBackend,
    /// Redis: one URL (a single node), or a list of node URLs (a Redis Cluster).
    pub url: Option<RedisUrls>,
    /// Redis: the longest one batch of operations may take before the store counts as down.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Redis: what plugins' store calls do while Redis is unreachable.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Redis: the prefix of every key the gateway writes (`<prefix>:<plugin>:<key>`).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::default(),
            url: None,
            timeout: default_timeout(),
            on_unavailable: OnUnavailable::default(),
            key_prefix: default_key_prefix(),
        }
    }
}

/// The store behind plugins' `state` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In this process: right for a single replica.
    #[default]
    Memory,
    /// Redis, shared by every replica.
    Redis,
}

/// One Redis URL, or the nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RedisUrls {
    /// A single node.
    One(String),
    /// A Redis Cluster, found through any of these nodes.
    Cluster(Vec<String>),
}

impl RedisUrls {
    /// Every URL given.
    pub fn all(&self) -> Vec<&str> {
        match self {
            RedisUrls::One(u) => vec![u.as_str()],
            RedisUrls::Cluster(us) => us.iter().map(String::as_str).collect(),
        }
    }
}

/// What store calls do while the shared store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Count in this replica's memory until Redis answers again (limits hold per replica).
    #[default]
    Local,
    /// Answer as if every limit had room: nothing is counted.
    Allow,
    /// Fail every call: plugins refuse what they cannot check.
    Deny,
}

impl OnUnavailable {
    /// The name used in the config, logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Local => "local",
            OnUnavailable::Allow => "allow",
            OnUnavailable::Deny => "deny",
        }
    }
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(50))
}
fn default_key_prefix() -> String {
    "llm-gateway".into()
}

/// Problems of `[state]`, as (key path, message).
pub fn problems(state: &StateConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut problem = |k: &str, m: String| out.push((format!("state.{k}"), m));
    match (state.backend, &state.url) {
        (StateBackend::Redis, None) => problem(
            "url",
            "backend \"redis\" needs a url, like \"redis://127.0.0.1:6379\"".into(),
        ),
        (StateBackend::Redis, Some(urls)) => {
            let all = urls.all();
            if all.is_empty() {
                problem("url", "the list of cluster nodes is empty".into());
            }
            for url in all {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    problem(
                        "url",
                        "must start with redis:// or rediss:// (credentials, if any, in the URL)"
                            .into(),
                    );
                }
            }
        }
        (StateBackend::Memory, Some(_)) => problem(
            "url",
            "is only used with backend = \"redis\" (the memory store has no URL)".into(),
        ),
        (StateBackend::Memory, None) => {}
    }
    if state.timeout.0.is_zero() || state.timeout.0 > Duration::from_secs(10) {
        problem(
            "timeout",
            "must be more than 0 and at most 10s: requests wait this long on the store".into(),
        );
    }
    if state.key_prefix.is_empty()
        || state
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        problem(
            "key_prefix",
            "must be non-empty, without spaces or braces".into(),
        );
    }
    out
}
