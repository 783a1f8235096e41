//! The gateway's configuration: one TOML file, read at start-up.
//!
//! Loading runs in three steps, each of which reports problems with the key path they
//! concern (`backends[1].region: ...`):
//!
//! 1. the file is parsed as TOML;
//! 2. `${VAR}` and `${VAR:-default}` in every string value are replaced from the environment
//!    (so secrets such as a Bedrock API key stay out of the file);
//! 3. the tree is deserialized into [`Config`] (unknown keys are errors) and then validated as a
//!    whole: every problem is collected before [`Config::load`] fails, so `gateway check` prints
//!    them all at once.
//!
//! Defaults live in this module only, in the `Default` impls and `default_*` functions below.

pub mod audit;
pub mod endpoint;
mod env;
pub mod state;
mod units;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::BackendKind;

pub use units::{ByteSize, HumanDuration};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and server-wide limits.
    pub server: ServerConfig,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Where each client protocol is served.
    #[serde(default)]
    pub front_doors: FrontDoorsConfig,
    /// The upstream providers the gateway may call.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Entries added to (or replacing) the built-in model catalog.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Which backends serve which models; the first matching route wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Passive health: when a failing backend is skipped.
    #[serde(default)]
    pub health: HealthConfig,
    /// The plugin pipeline, in the order requests run through it.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Engine-wide plugin settings.
    #[serde(default)]
    pub plugin_runtime: PluginRuntimeConfig,
    /// The durable audit sink; without it, audit records go to the log.
    pub audit: Option<audit::AuditConfig>,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The store behind plugins' counters, limits, leases and budgets.
    #[serde(default)]
    pub state: state::StateConfig,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token required for `/status`, `/metrics` and `/admin/*` (health checks stay open).
    /// Required when `server.admin_listen` is not a loopback address.
    pub token: Option<String>,
}

/// What happens to a request when a plugin fails (trap, timeout, memory overrun, bad return).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: the request is refused with 503 in the client's protocol.
    #[default]
    Deny,
    /// Skip the plugin and go on.
    Allow,
}

/// How plugin instances are shared between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Warm instances lent to one request at a time (globals persist across requests).
    #[default]
    Pooled,
    /// A fresh instance for every request.
    Request,
}

/// `[[plugins]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name: in logs, metrics, state-key namespaces and `denied_by`.
    pub name: String,
    /// The component (or core module with an embedded component type) to load.
    pub path: String,
    /// What a plugin failure does to the request.
    #[serde(default)]
    pub on_error: OnError,
    /// Instance sharing.
    #[serde(default)]
    pub isolation: Isolation,
    /// A pooled instance is replaced after serving this many requests.
    #[serde(default = "default_max_requests_per_instance")]
    pub max_requests_per_instance: u64,
    /// Linear memory limit per instance.
    #[serde(default = "default_plugin_memory")]
    pub memory_limit: ByteSize,
    /// CPU time limit per phase call (time spent waiting on host I/O does not count).
    #[serde(default = "default_plugin_cpu")]
    pub cpu_limit: HumanDuration,
    /// Largest string or value a plugin may hand the host in one call.
    #[serde(default = "default_plugin_return")]
    pub return_limit: ByteSize,
    /// Free-form settings handed to the plugin's `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

/// `[plugin_runtime]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRuntimeConfig {
    /// Most plugin instances alive at once, all plugins together (the pooling allocator's size).
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Consecutive failures after which a plugin's breaker opens.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker short-circuits the plugin (applying its `on_error`).
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown: HumanDuration,
}

impl Default for PluginRuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: default_max_instances(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown: default_breaker_cooldown(),
        }
    }
}

fn default_max_requests_per_instance() -> u64 {
    10_000
}
fn default_plugin_memory() -> ByteSize {
    ByteSize(16 * 1024 * 1024)
}
fn default_plugin_cpu() -> HumanDuration {
    HumanDuration(Duration::from_millis(5))
}
fn default_plugin_return() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_max_instances() -> u32 {
    1000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Data-plane listen address.
    pub listen: String,
    /// Admin listen address (health and readiness).
    pub admin_listen: String,
    /// Largest request body accepted; larger ones get 413 in the client's protocol.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: ByteSize,
    /// PEM certificate chain for the data plane; with `tls_key` the listener speaks HTTPS.
    pub tls_cert: Option<String>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<String>,
    /// Worker threads for the data plane (default: the number of cores).
    pub threads: Option<usize>,
    /// How long a client may take to send its whole request body, counted from the request
    /// head (not per read): a trickling client cannot hold a connection for longer.
    #[serde(default = "default_client_body_timeout")]
    pub client_body_timeout: HumanDuration,
    /// Largest request head (request line and every header); larger ones get 431 in the
    /// client's protocol before any plugin runs.
    #[serde(default = "default_max_request_headers")]
    pub max_request_headers: ByteSize,
    /// Most client connections open at once; more are closed as they are accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a write to a client may wait for it to read: a client that stops reading its
    /// answer is dropped after this.
    #[serde(default = "default_client_write_timeout")]
    pub client_write_timeout: HumanDuration,
    /// How long shutdown waits for requests in flight to finish.
    #[serde(default = "default_grace_period")]
    pub grace_period: HumanDuration,
    /// The Unix socket through which a new process takes over the listeners on `SIGQUIT`
    /// (binary upgrades without dropping connections).
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
}

/// `[timeouts]`: how long the gateway waits on an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP and TLS connection set-up.
    #[serde(default = "default_connect")]
    pub connect: HumanDuration,
    /// From the request sent to the first byte of the response head.
    #[serde(default = "default_first_byte")]
    pub first_byte: HumanDuration,
    /// Between two reads of the response body. A stream that keeps sending is never cut.
    #[serde(default = "default_idle")]
    pub idle: HumanDuration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            first_byte: default_first_byte(),
            idle: default_idle(),
        }
    }
}

/// `[front_doors]`: the client protocols and their path prefixes.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FrontDoorsConfig {
    /// The Amazon Bedrock front door.
    #[serde(default)]
    pub bedrock: BedrockFrontDoorConfig,
    /// The Vertex AI front door.
    #[serde(default)]
    pub vertex: VertexFrontDoorConfig,
    /// The Anthropic API front door.
    #[serde(default)]
    pub anthropic: AnthropicFrontDoorConfig,
}

/// `[front_doors.vertex]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexFrontDoorConfig {
    /// Path prefix clients put in `ANTHROPIC_VERTEX_BASE_URL` / `base_url` (requests to
    /// `/v1/projects/...` at the root are served too).
    #[serde(default = "default_vertex_prefix")]
    pub prefix: String,
}

impl Default for VertexFrontDoorConfig {
    fn default() -> Self {
        Self {
            prefix: default_vertex_prefix(),
        }
    }
}

/// `[front_doors.anthropic]`
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AnthropicFrontDoorConfig {
    /// Path prefix before `/v1/messages` (empty: `ANTHROPIC_BASE_URL` is the gateway's root).
    #[serde(default)]
    pub prefix: String,
}

/// `[[models]]`: one logical model and its ID on each provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The logical name (listed by `GET /v1/models`), such as `claude-sonnet-4-5`.
    pub name: String,
    /// Its Bedrock model or inference-profile ID (or ARN).
    pub bedrock: Option<String>,
    /// Its Vertex AI model ID, such as `claude-sonnet-4-5@20250929`.
    pub vertex: Option<String>,
    /// Its Anthropic API model ID.
    pub anthropic: Option<String>,
    /// The name shown in model pickers.
    pub display_name: Option<String>,
    /// What it costs (USD per million tokens); without it, the price of the built-in model
    /// one of its IDs names, if any.
    pub price: Option<PriceConfig>,
}

/// `[[models]] price`: USD per million tokens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Plain input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Prompt-cache reads (default 0.1 x input).
    pub cache_read: Option<f64>,
    /// 5-minute prompt-cache writes (default 1.25 x input).
    pub cache_write: Option<f64>,
    /// 1-hour prompt-cache writes (default 2 x input).
    pub cache_write_1h: Option<f64>,
}

/// How a route orders its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// In the configured order; the next one when one fails.
    #[default]
    Failover,
    /// The first pick at random by `weights`, then the others (by weight) on failure.
    Weighted,
}

/// `[[routes]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Globs (`*`, `?`) matched against every ID of the requested model.
    pub models: Vec<String>,
    /// Only requests that came in through these front doors (default: all).
    pub front_doors: Option<Vec<String>>,
    /// Backend names, of any kind.
    pub backends: Vec<String>,
    /// How the backends are ordered.
    #[serde(default)]
    pub strategy: Strategy,
    /// One weight per backend, for `strategy = "weighted"`.
    pub weights: Option<Vec<u32>>,
}

/// `[health]`: passive health checks from real traffic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Consecutive failures (connect error, timeout, 429, 5xx) after which a backend is skipped.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long a failing backend is skipped (it is still tried when nothing else is left).
    #[serde(default = "default_health_cooldown")]
    pub cooldown: HumanDuration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            cooldown: default_health_cooldown(),
        }
    }
}

/// `[front_doors.bedrock]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockFrontDoorConfig {
    /// Path prefix clients put in `ANTHROPIC_BEDROCK_BASE_URL` / `endpoint_url`.
    #[serde(default = "default_bedrock_prefix")]
    pub prefix: String,
}

impl Default for BedrockFrontDoorConfig {
    fn default() -> Self {
        Self {
            prefix: default_bedrock_prefix(),
        }
    }
}

/// `[[backends]]`: one table per backend. `kind` says which provider it calls and so which
/// keys it takes; a key of another kind (`project` on a Bedrock backend) is a parse error at
/// its key path.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendConfig {
    /// Amazon Bedrock runtime (and its control plane).
    Bedrock(BedrockBackendConfig),
    /// Google Vertex AI.
    Vertex(VertexBackendConfig),
    /// The Anthropic API.
    Anthropic(AnthropicBackendConfig),
}

/// `[[backends]]` with `kind = "bedrock"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockBackendConfig {
    /// Unique name, used by routes, logs and the usage record.
    pub name: String,
    /// The SigV4 region and the default endpoints' region (required).
    pub region: Option<String>,
    /// Runtime endpoint; default `https://bedrock-runtime.{region}.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Control-plane endpoint; default `https://bedrock.{region}.amazonaws.com`.
    pub control_endpoint: Option<String>,
    /// A profile from the shared AWS config files, instead of the default chain's choice.
    pub profile: Option<String>,
    /// A Bedrock API key, sent as `Authorization: Bearer` instead of a SigV4 signature.
    pub bearer_token: Option<String>,
    /// The `anthropic-beta` values this backend accepts (replaces Bedrock's documented list;
    /// `["*"]` accepts all). Others are dropped before the request is sent.
    pub accepted_betas: Option<Vec<String>>,
}

/// `[[backends]]` with `kind = "vertex"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexBackendConfig {
    /// Unique name, used by routes, logs and the usage record.
    pub name: String,
    /// The location (`us-east5`, `global`, ...; required).
    pub region: Option<String>,
    /// The Google Cloud project that is billed (required).
    pub project: Option<String>,
    /// Endpoint; default `https://{region}-aiplatform.googleapis.com`.
    pub endpoint: Option<String>,
    /// A service-account key or `authorized_user` file; default Application Default
    /// Credentials.
    pub credentials_file: Option<String>,
    /// The `anthropic-beta` values this backend accepts (replaces Vertex AI's documented
    /// list; `["*"]` accepts all).
    pub accepted_betas: Option<Vec<String>>,
}

/// `[[backends]]` with `kind = "anthropic"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicBackendConfig {
    /// Unique name, used by routes, logs and the usage record.
    pub name: String,
    /// The API key, sent as `x-api-key` (required).
    pub api_key: Option<String>,
    /// Endpoint; default `https://api.anthropic.com`.
    pub endpoint: Option<String>,
    /// The `anthropic-beta` values this backend accepts (default: all).
    pub accepted_betas: Option<Vec<String>>,
}

impl BackendConfig {
    /// Its unique name.
    pub fn name(&self) -> &str {
        match self {
            BackendConfig::Bedrock(c) => &c.name,
            BackendConfig::Vertex(c) => &c.name,
            BackendConfig::Anthropic(c) => &c.name,
        }
    }

    /// Which provider it calls.
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::Bedrock(_) => BackendKind::Bedrock,
            BackendConfig::Vertex(_) => BackendKind::Vertex,
            BackendConfig::Anthropic(_) => BackendKind::Anthropic,
        }
    }

    /// The `anthropic-beta` values it accepts, when configured.
    pub fn accepted_betas(&self) -> Option<&[String]> {
        match self {
            BackendConfig::Bedrock(c) => c.accepted_betas.as_deref(),
            BackendConfig::Vertex(c) => c.accepted_betas.as_deref(),
            BackendConfig::Anthropic(c) => c.accepted_betas.as_deref(),
        }
    }

    /// The endpoint URLs it sets, with their keys.
    fn endpoint_urls(&self) -> Vec<(&'static str, &str)> {
        let (runtime, control) = match self {
            BackendConfig::Bedrock(c) => (&c.endpoint, &c.control_endpoint),
            BackendConfig::Vertex(c) => (&c.endpoint, &None),
            BackendConfig::Anthropic(c) => (&c.endpoint, &None),
        };
        [("endpoint", runtime), ("control_endpoint", control)]
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .collect()
    }

    /// What is missing or malformed in it, as (key, message).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        for (key, url) in self.endpoint_urls() {
            if let Err(e) = endpoint::EndpointUrl::parse(url) {
                found.push((key, e.to_string()));
            }
        }
        // A secret that usually comes from the environment, and the region, where the kind
        // has them.
        type Keyed<'a> = (&'static str, &'a Option<String>);
        let (region, secret): (Option<&Option<String>>, Keyed<'_>) = match self {
            BackendConfig::Bedrock(c) => (Some(&c.region), ("bearer_token", &c.bearer_token)),
            BackendConfig::Vertex(c) => {
                (Some(&c.region), ("credentials_file", &c.credentials_file))
            }
            BackendConfig::Anthropic(c) => (None, ("api_key", &c.api_key)),
        };
        match (self, region) {
            (BackendConfig::Vertex(_), Some(None)) => found.push((
                "region",
                "required for a vertex backend (a location such as us-east5, or global)".into(),
            )),
            (_, Some(None)) => found.push((
                "region",
                format!("required for a {} backend", self.kind().as_str()),
            )),
            (_, Some(Some(r))) if !is_region(r) => {
                found.push(("region", format!("`{r}` is not a region name")))
            }
            _ => {}
        }
        match self {
            BackendConfig::Vertex(c) => match &c.project {
                None => found.push(("project", "required for a vertex backend".into())),
                Some(p) if !is_project(p) => {
                    found.push(("project", format!("`{p}` is not a project ID")))
                }
                Some(_) => {}
            },
            BackendConfig::Anthropic(c) if c.api_key.is_none() => {
                found.push(("api_key", "required for an anthropic backend".into()))
            }
            _ => {}
        }
        // Values that usually come from the environment: empty means it was not set.
        let (key, value) = secret;
        if matches!(value, Some(v) if v.is_empty()) {
            found.push((key, "is empty (is its environment variable set?)".into()));
        }
        if let Some(betas) = self.accepted_betas() {
            if betas.iter().any(|b| b.is_empty() || b.contains(',')) {
                found.push((
                    "accepted_betas",
                    "values must be single beta names (or \"*\")".into(),
                ));
            }
        }
        found
    }
}

fn default_max_request_body() -> ByteSize {
    ByteSize(20 * 1024 * 1024)
}
fn default_client_body_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_request_headers() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_max_connections() -> usize {
    16_384
}
fn default_client_write_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_grace_period() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_upgrade_sock() -> String {
    "/tmp/llm-gateway-upgrade.sock".to_string()
}
fn default_connect() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_first_byte() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
fn default_bedrock_prefix() -> String {
    "/bedrock".to_string()
}
fn default_vertex_prefix() -> String {
    "/vertex".to_string()
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_health_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// One thing wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, such as `backends[1].region`; empty for the file as a whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be loaded: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<Problem>);

impl ConfigError {
    fn one(path: &str, message: impl Into<String>) -> Self {
        Self(vec![Problem {
            path: path.to_string(),
            message: message.into(),
        }])
    }
}

impl Config {
    /// Reads, expands, parses and validates the file at `path`. Relative plugin, audit and TLS
    /// paths are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one("", format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::parse(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut String| {
            if !p.is_empty() && Path::new(p.as_str()).is_relative() {
                *p = base.join(&*p).display().to_string();
            }
        };
        for plugin in &mut config.plugins {
            resolve(&mut plugin.path);
        }
        if let Some(audit) = &mut config.audit {
            resolve(&mut audit.path);
        }
        for backend in &mut config.backends {
            if let BackendConfig::Vertex(VertexBackendConfig {
                credentials_file: Some(file),
                ..
            }) = backend
            {
                resolve(file);
            }
        }
        for key in [&mut config.server.tls_cert, &mut config.server.tls_key]
            .into_iter()
            .flatten()
        {
            resolve(key);
        }
        let mut missing: Vec<Problem> = config
            .plugins
            .iter()
            .enumerate()
            .filter(|(_, p)| !Path::new(&p.path).is_file())
            .map(|(i, p)| Problem {
                path: format!("plugins[{i}].path"),
                message: format!("no such file: {} (run `make plugins`?)", p.path),
            })
            .collect();
        for (key, file) in [
            ("server.tls_cert", &config.server.tls_cert),
            ("server.tls_key", &config.server.tls_key),
        ] {
            if let Some(file) = file.as_ref().filter(|f| !Path::new(f.as_str()).is_file()) {
                missing.push(Problem {
                    path: key.into(),
                    message: format!("no such file: {file}"),
                });
            }
        }
        if missing.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(missing))
        }
    }

    /// Parses and validates configuration text, expanding `${VAR}` from the process environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::parse`], with the environment given as a lookup function.
    pub fn parse_with_env(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError::one("", e.message().to_string()))?;
        let mut problems = Vec::new();
        env::expand(&mut value, "", lookup, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = e.into_inner().message().to_string();
            ConfigError::one(&unknown_key_path(path, &message), message)
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// Every semantic problem in the configuration (empty when it is valid).
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| problems.push(Problem { path, message });
        self.validate_server(&mut problem);
        self.validate_timeouts_and_front_doors(&mut problem);
        self.validate_backends(&mut problem);
        self.validate_models(&mut problem);
        self.validate_routes(&mut problem);
        self.validate_plugins(&mut problem);
        for (path, message) in state::problems(&self.state) {
            problem(path, message);
        }
        problems
    }

    /// Problems of the configuration's server section(s).
    fn validate_server(&self, problem: &mut impl FnMut(String, String)) {
        for (key, value) in [
            ("server.listen", &self.server.listen),
            ("server.admin_listen", &self.server.admin_listen),
        ] {
            if value.parse::<SocketAddr>().is_err() {
                problem(
                    key.into(),
                    format!("`{value}` is not an address like 127.0.0.1:8080"),
                );
            }
        }
        if let Ok(addr) = self.server.admin_listen.parse::<SocketAddr>() {
            if !addr.ip().is_loopback() && self.admin.token.as_deref().unwrap_or("").is_empty() {
                problem(
                    "admin.token".into(),
                    "required when server.admin_listen is not a loopback address".into(),
                );
            }
        }
        if self.server.listen == self.server.admin_listen {
            problem(
                "server.admin_listen".into(),
                "must differ from server.listen".into(),
            );
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => problem(
                "server.tls_key".into(),
                "required when tls_cert is set".into(),
            ),
            (None, Some(_)) => problem(
                "server.tls_cert".into(),
                "required when tls_key is set".into(),
            ),
            _ => {}
        }
        if self.server.max_request_body.0 == 0 {
            problem(
                "server.max_request_body".into(),
                "must be larger than zero".into(),
            );
        }
        if self.server.max_request_headers.0 < 1024 {
            problem(
                "server.max_request_headers".into(),
                "must be at least 1KiB".into(),
            );
        }
        if self.server.max_connections == 0 {
            problem("server.max_connections".into(), "must be at least 1".into());
        }
        if self.server.threads == Some(0) {
            problem("server.threads".into(), "must be at least 1".into());
        }
    }

    /// Problems of the configuration's timeouts and front doors section(s).
    fn validate_timeouts_and_front_doors(&self, problem: &mut impl FnMut(String, String)) {
        for (key, d) in [
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.first_byte", self.timeouts.first_byte),
            ("timeouts.idle", self.timeouts.idle),
        ] {
            if d.0.is_zero() {
                problem(key.into(), "must be longer than zero".into());
            }
        }
        for (key, prefix, may_be_empty) in [
            (
                "front_doors.bedrock.prefix",
                &self.front_doors.bedrock.prefix,
                false,
            ),
            (
                "front_doors.vertex.prefix",
                &self.front_doors.vertex.prefix,
                false,
            ),
            (
                "front_doors.anthropic.prefix",
                &self.front_doors.anthropic.prefix,
                true,
            ),
        ] {
            let empty_ok = may_be_empty && prefix.is_empty();
            if !empty_ok
                && (!prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(".."))
            {
                problem(
                    key.into(),
                    format!("`{prefix}` must start with `/` and not end with one, like `/bedrock`"),
                );
            }
        }
        let doors = &self.front_doors;
        if doors.bedrock.prefix == doors.vertex.prefix
            || (doors.bedrock.prefix == "/v1" || doors.vertex.prefix == "/v1")
                && doors.anthropic.prefix.is_empty()
        {
            problem(
                "front_doors".into(),
                "the front doors' prefixes overlap; give each its own".into(),
            );
        }
    }

    /// Problems of the configuration's backends section(s).
    fn validate_backends(&self, problem: &mut impl FnMut(String, String)) {
        let mut names = std::collections::HashSet::new();
        for (i, backend) in self.backends.iter().enumerate() {
            let at = |key: &str| format!("backends[{i}].{key}");
            let name = backend.name();
            if name.is_empty() {
                problem(at("name"), "must not be empty".into());
            } else if !names.insert(name) {
                problem(at("name"), format!("`{name}` is used by another backend"));
            }
            for (key, message) in backend.problems() {
                problem(at(key), message);
            }
        }
    }

    /// Problems of the configuration's models section(s).
    fn validate_models(&self, problem: &mut impl FnMut(String, String)) {
        for (i, model) in self.models.iter().enumerate() {
            let at = |key: &str| format!("models[{i}].{key}");
            if model.name.is_empty() || model.name.contains(char::is_whitespace) {
                problem(at("name"), format!("`{}` is not a model name", model.name));
            }
            if model.bedrock.is_none() && model.vertex.is_none() && model.anthropic.is_none() {
                problem(
                    at("name"),
                    "give the model's ID on at least one provider (bedrock, vertex, anthropic)"
                        .into(),
                );
            }
            for (key, id) in [
                ("bedrock", &model.bedrock),
                ("vertex", &model.vertex),
                ("anthropic", &model.anthropic),
            ] {
                if matches!(id, Some(id) if id.is_empty() || id.contains(char::is_whitespace)) {
                    problem(at(key), "is not a model ID".into());
                }
            }
        }
    }

    /// Problems of the configuration's routes section(s).
    fn validate_routes(&self, problem: &mut impl FnMut(String, String)) {
        for (i, route) in self.routes.iter().enumerate() {
            let at = |key: &str| format!("routes[{i}].{key}");
            if route.models.is_empty() || route.models.iter().any(String::is_empty) {
                problem(
                    at("models"),
                    "give at least one glob (\"*\" for all)".into(),
                );
            }
            if let Some(doors) = &route.front_doors {
                for d in doors {
                    if !matches!(d.as_str(), "bedrock" | "vertex" | "anthropic") {
                        problem(
                            at("front_doors"),
                            format!("`{d}` is not a front door (bedrock, vertex, anthropic)"),
                        );
                    }
                }
            }
            if route.backends.is_empty() {
                problem(at("backends"), "give at least one backend".into());
            }
            for b in &route.backends {
                if !self.backends.iter().any(|c| c.name() == b) {
                    problem(at("backends"), format!("no backend is named `{b}`"));
                }
            }
            match (route.strategy, &route.weights) {
                (Strategy::Weighted, None) => problem(
                    at("weights"),
                    "required with strategy = \"weighted\"".into(),
                ),
                (Strategy::Weighted, Some(w)) if w.len() != route.backends.len() => problem(
                    at("weights"),
                    format!("give one weight per backend ({})", route.backends.len()),
                ),
                (Strategy::Weighted, Some(w)) if w.iter().all(|w| *w == 0) => {
                    problem(at("weights"), "at least one weight must be above 0".into())
                }
                (Strategy::Failover, Some(_)) => problem(
                    at("weights"),
                    "only used with strategy = \"weighted\"".into(),
                ),
                _ => {}
            }
        }
    }

    /// Problems of the configuration's plugins section(s).
    fn validate_plugins(&self, problem: &mut impl FnMut(String, String)) {
        if self.health.failure_threshold == 0 {
            problem(
                "health.failure_threshold".into(),
                "must be at least 1".into(),
            );
        }
        let mut plugin_names = std::collections::HashSet::new();
        for (i, plugin) in self.plugins.iter().enumerate() {
            let at = |key: &str| format!("plugins[{i}].{key}");
            if plugin.name.is_empty()
                || !plugin
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                problem(
                    at("name"),
                    format!("`{}` must be letters, digits, `-` or `_`", plugin.name),
                );
            } else if !plugin_names.insert(plugin.name.as_str()) {
                problem(
                    at("name"),
                    format!("`{}` is used by another plugin", plugin.name),
                );
            }
            if plugin.max_requests_per_instance == 0 {
                problem(at("max_requests_per_instance"), "must be at least 1".into());
            }
            if plugin.memory_limit.0 < 64 * 1024 || plugin.memory_limit.0 > 4 << 30 {
                problem(at("memory_limit"), "must be between 64KiB and 4GiB".into());
            }
            if plugin.cpu_limit.0.is_zero() {
                problem(at("cpu_limit"), "must be longer than zero".into());
            }
            if plugin.return_limit.0 < 1024 {
                problem(at("return_limit"), "must be at least 1KiB".into());
            }
        }
        if self.plugin_runtime.max_instances == 0 {
            problem(
                "plugin_runtime.max_instances".into(),
                "must be at least 1".into(),
            );
        }
        if let Some(audit) = &self.audit {
            if audit.path.is_empty() {
                problem("audit.path".into(), "must not be empty".into());
            }
            if audit.max_file_size.0 < 4096 {
                problem("audit.max_file_size".into(), "must be at least 4KiB".into());
            }
        }
        if self.backends.is_empty() {
            problem(
                "backends".into(),
                "no backend is configured: requests would have nowhere to go".into(),
            );
        }
    }
}

/// A Google Cloud project ID: 6 to 30 lower-case letters, digits and hyphens.
fn is_project(p: &str) -> bool {
    (6..=30).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The path of an unknown key: serde's path stops at a tagged table (`backends[0]`); the key
/// itself is only named in the message (``unknown field `project` ``).
fn unknown_key_path(path: String, message: &str) -> String {
    let key = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    match key {
        Some(key) if path.is_empty() => key.to_string(),
        Some(key) if !path.ends_with(&format!(".{key}")) => format!("{path}.{key}"),
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:8080"
        admin_listen = "127.0.0.1:9901"
        [[backends]]
        name = "b"
        kind = "bedrock"
        region = "us-east-1"
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse_with_env(MINIMAL, &|_| None).unwrap();
        assert_eq!(c.server.max_request_body.0, 20 * 1024 * 1024);
        assert_eq!(c.front_doors.bedrock.prefix, "/bedrock");
        assert_eq!(c.timeouts.connect.0, Duration::from_secs(5));
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let text = r#"
            [server]
            listen = "nope"
            admin_listen = "127.0.0.1:9901"
            tls_cert = "cert.pem"
            [[backends]]
            name = "b"
            kind = "bedrock"
            [[backends]]
            name = "b"
            kind = "bedrock"
            region = "Bad Region"
            endpoint = "ftp://x"
        "#;
        let err = Config::parse_with_env(text, &|_| None).unwrap_err();
        let paths: Vec<_> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.listen",
                "server.tls_key",
                "backends[0].region",
                "backends[1].name",
                "backends[1].endpoint",
                "backends[1].region"
            ]
        );
    }

    #[test]
    fn a_key_of_another_kind_is_a_parse_error_at_its_path() {
        let text = MINIMAL.replace(
            "region = \"us-east-1\"",
            "region = \"us-east-1\"\nproject = \"p\"",
        );
        let err = Config::parse_with_env(&text, &|_| None).unwrap_err();
        assert_eq!(err.0[0].path, "backends[0].project", "{err}");
        let text = MINIMAL.replace("kind = \"bedrock\"", "kind = \"nope\"");
        let err = Config::parse_with_env(&text, &|_| None).unwrap_err();
        assert!(err.0[0].message.contains("nope"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let text = MINIMAL.replace(
            "region = \"us-east-1\"",
            "region = \"us-east-1\"\nregoin = 1",
        );
        let err = Config::parse_with_env(&text, &|_| None).unwrap_err();
        assert_eq!(err.0[0].path, "backends[0].regoin");
        assert!(err.0[0].message.contains("regoin"), "{}", err);
    }

    #[test]
    fn env_vars_are_expanded_and_missing_ones_reported() {
        let text = MINIMAL.replace("us-east-1", "${REGION}") + "bearer_token = \"${TOKEN}\"\n";
        let c =
            Config::parse_with_env(&text, &|n| (n == "REGION").then(|| "eu-west-1".to_string()));
        let err = c.unwrap_err();
        assert_eq!(err.0[0].path, "backends[0].bearer_token");
        let c = Config::parse_with_env(&text, &|n| match n {
            "REGION" => Some("eu-west-1".into()),
            "TOKEN" => Some("abc".into()),
            _ => None,
        })
        .unwrap();
        let BackendConfig::Bedrock(b) = &c.backends[0] else {
            panic!("a bedrock backend")
        };
        assert_eq!(b.region.as_deref(), Some("eu-west-1"));
        assert_eq!(b.bearer_token.as_deref(), Some("abc"));
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../examples/gateway.toml");
        Config::parse_with_env(text, &|_| None).unwrap();
    }

    #[test]
    fn routes_models_and_other_backend_kinds_are_validated() {
        let text = r#"
            [server]
            listen = "127.0.0.1:8080"
            admin_listen = "127.0.0.1:9901"
            [[backends]]
            name = "v"
            kind = "vertex"
            region = "us-east5"
            [[backends]]
            name = "a"
            kind = "anthropic"
            [[models]]
            name = "m"
            [[routes]]
            models = ["*"]
            backends = ["v", "nope"]
            strategy = "weighted"
            weights = [1]
            front_doors = ["gopher"]
        "#;
        let err = Config::parse_with_env(text, &|_| None).unwrap_err();
        let paths: Vec<_> = err.0.iter().map(|p| p.path.as_str()).collect();
        // A key of another kind (`region` on an anthropic backend) is a parse error of its
        // own: see a_key_of_another_kind_is_a_parse_error_at_its_path.
        assert_eq!(
            paths,
            [
                "backends[0].project",
                "backends[1].api_key",
                "models[0].name",
                "routes[0].front_doors",
                "routes[0].backends",
                "routes[0].weights",
            ]
        );
        let ok = r#"
            [server]
            listen = "127.0.0.1:8080"
            admin_listen = "127.0.0.1:9901"
            [[backends]]
            name = "v"
            kind = "vertex"
            project = "my-project"
            region = "global"
            [[backends]]
            name = "a"
            kind = "anthropic"
            api_key = "k"
            accepted_betas = ["*"]
            [[routes]]
            models = ["*sonnet*"]
            backends = ["a", "v"]
            strategy = "weighted"
            weights = [3, 1]
        "#;
        let c = Config::parse_with_env(ok, &|_| None).unwrap();
        assert_eq!(c.routes[0].weights, Some(vec![3, 1]));
        assert_eq!(c.front_doors.vertex.prefix, "/vertex");
        assert_eq!(c.front_doors.anthropic.prefix, "");
    }
}
