//! The plugin runtime against real components: the test plugins in `tests/plugins/`, built to
//! `target/test-plugins/` by `make plugins` (which `make test` runs first).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway::audit::AuditSink;
use gateway::config::{PluginConfig, PluginRuntimeConfig};
use gateway::frontdoor::{FrontDoor, Operation};
use gateway::metrics::Metrics;
use gateway::plugin::pipeline::Completions;
use gateway::plugin::{
    Completion, HostServices, Pipeline, PluginEngine, PluginError, RequestView, WitOutcome,
    WitUsage,
};
use gateway::state::MemoryStore;

fn plugin_path(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-plugins")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `make plugins` first",
        p.display()
    );
    p
}

fn config(name: &str, extra: &str) -> PluginConfig {
    let text = format!(
        "name = \"{name}\"\npath = \"{}\"\n{extra}",
        plugin_path(name).display()
    );
    toml::from_str(&text).unwrap()
}

struct Host {
    engine: Arc<PluginEngine>,
    audit: Arc<Mutex<Vec<String>>>,
    metrics: Arc<Metrics>,
    completions: Arc<Completions>,
}

fn host(runtime: PluginRuntimeConfig) -> Host {
    let (audit_sink, audit) = AuditSink::collecting();
    let metrics = Arc::new(Metrics::new());
    let completions = Arc::new(Completions::default());
    let services = Arc::new(HostServices::new(
        Arc::new(MemoryStore::new()),
        audit_sink,
        Arc::clone(&metrics),
        gateway::catalog::Catalog::new(&[]),
        Arc::clone(&completions),
    ));
    Host {
        engine: Arc::new(PluginEngine::new(&runtime, services).unwrap()),
        audit,
        metrics,
        completions,
    }
}

impl Host {
    async fn pipeline(&self, configs: &[PluginConfig]) -> Arc<Pipeline> {
        let mut plugins = Vec::new();
        for c in configs {
            plugins.push(self.engine.load(c).await.unwrap());
        }
        Arc::new(Pipeline::new(
            plugins,
            Arc::clone(&self.completions),
            tokio::runtime::Handle::current(),
        ))
    }

    fn wait_completions(&self) {
        assert!(self.completions.wait_idle(Duration::from_secs(10)));
    }

    fn calls(&self, plugin: &str, result: &str) -> u64 {
        self.metrics
            .plugin_calls
            .with_label_values(&[plugin, "on_request", result])
            .get()
    }
}

fn view(headers: &[(&str, &str)]) -> Box<RequestView> {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Box::new(RequestView::new(
        "POST".into(),
        "/bedrock/model/us.anthropic.claude-opus-4-5/invoke".into(),
        FrontDoor::Bedrock,
        Operation::Invoke,
        Some("us.anthropic.claude-opus-4-5".into()),
        h,
        Some("10.1.2.3".into()),
        "req-1".into(),
        Bytes::from_static(br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#),
    ))
}

fn completion() -> Completion {
    Completion {
        status: 200,
        outcome: WitOutcome::Ok,
        usage: WitUsage {
            input_tokens: 11,
            output_tokens: 22,
            cache_read_tokens: 33,
            cache_write_tokens: 44,
        },
        latency_ms: 5,
        time_to_first_token_ms: Some(2),
        request_bytes: 100,
        response_bytes: 200,
        backend: Some("b".into()),
        model_served: Some("m".into()),
        denied_by: None,
    }
}

fn header(run: &gateway::plugin::PipelineRun, name: &str) -> Option<String> {
    run.view()
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_and_host_call_through_the_probe_plugin() {
    let h = host(PluginRuntimeConfig::default());
    let pipeline = h.pipeline(&[config("probe", "")]).await;
    let mut run = pipeline.start(view(&[
        ("x-test", "yes"),
        ("x-rewrite-model", "us.anthropic.claude-sonnet-4-5"),
    ]));
    run.on_request().await.unwrap();
    let seen = header(&run, "x-probe-seen").unwrap();
    for part in [
        "method=POST",
        "op=invoke",
        "door=bedrock",
        "model=us.anthropic.claude-opus-4-5",
        "x-test=yes",
        "client=10.1.2.3",
        "rid=req-1",
        "max_tokens=100",
        "role=user",
    ] {
        assert!(seen.contains(part), "{part} not in {seen}");
    }
    let v = run.view();
    assert_eq!(
        v.model.as_deref(),
        Some("us.anthropic.claude-sonnet-4-5"),
        "set-model"
    );
    assert_eq!(v.principal.as_deref(), Some("probe-user"));
    assert_eq!(v.team.as_deref(), Some("probe-team"));
    assert_eq!(v.metadata.get("probe").map(String::as_str), Some("1"));
    assert!(
        v.metadata.get("now_ms").unwrap().parse::<u64>().unwrap() > 1_700_000_000_000,
        "clock"
    );
    assert_eq!(
        header(&run, "x-probe-hits").as_deref(),
        Some("1"),
        "state incr"
    );
    assert_eq!(
        header(&run, "x-probe-protected").as_deref(),
        Some("refused"),
        "credentials cannot be set"
    );

    let mut upstream = http::HeaderMap::new();
    upstream.insert("x-amzn-requestid", "abc".parse().unwrap());
    let set = run.on_response(200, &upstream).await;
    assert!(
        set.iter().any(|(n, v)| n == "x-probe-status" && v == "200"),
        "{set:?}"
    );

    run.complete(completion());
    h.wait_completions();
    let audit = h.audit.lock().unwrap().clone();
    assert_eq!(audit.len(), 1, "{audit:?}");
    let record: serde_json::Value = serde_json::from_str(&audit[0]).unwrap();
    assert_eq!(record["input_tokens"], 11);
    assert_eq!(record["cache_write_tokens"], 44);
    assert_eq!(record["outcome"], "ok");
    let metrics = h.metrics.render();
    assert!(
        metrics.contains("plugin_probe_requests{op=\"invoke\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_counters_and_rate_checks_persist_across_requests() {
    let h = host(PluginRuntimeConfig::default());
    let pipeline = h.pipeline(&[config("probe", "")]).await;
    for i in 1..=2 {
        let mut run = pipeline.start(view(&[("x-probe-ratelimit", "1")]));
        run.on_request().await.unwrap();
        assert_eq!(header(&run, "x-probe-hits"), Some(i.to_string()));
        run.complete(completion());
        h.wait_completions();
    }
    let mut run = pipeline.start(view(&[("x-probe-ratelimit", "1")]));
    let denial = run.on_request().await.unwrap_err();
    assert_eq!(denial.status, 429);
    assert_eq!(denial.plugin, "probe");
    assert!(denial.retry_after.unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_verification_by_the_host() {
    let h = host(PluginRuntimeConfig::default());
    let pipeline = h
        .pipeline(&[config("probe", "[config]\njwt_secret = \"s3cret\"")])
        .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "alice", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    let mut run = pipeline.start(view(&[("x-probe-jwt", &good)]));
    let r = run.on_request().await;
    assert!(
        r.is_ok(),
        "{r:?} {}",
        h.metrics
            .render()
            .lines()
            .filter(|l| l.contains("calls_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        run.view().metadata.get("sub").map(String::as_str),
        Some("alice")
    );

    let bad = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "mallory", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    let mut run = pipeline.start(view(&[("x-probe-jwt", &bad)]));
    let denial = run.on_request().await.unwrap_err();
    assert_eq!(denial.status, 401);
    assert!(
        denial.message.contains("InvalidSignature"),
        "{}",
        denial.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_stops_the_pipeline() {
    let h = host(PluginRuntimeConfig::default());
    let pipeline = h.pipeline(&[config("probe", ""), config("noop", "")]).await;
    let mut run = pipeline.start(view(&[("x-probe-deny", "1")]));
    let denial = run.on_request().await.unwrap_err();
    assert_eq!((denial.status, denial.plugin.as_str()), (403, "probe"));
    assert_eq!(run.denied_by(), Some("probe"));
    assert_eq!(h.calls("noop", "ok"), 0, "plugins after a deny do not run");
}

async fn instance_counts(h: &Host, isolation: &str) -> Vec<String> {
    let pipeline = h
        .pipeline(&[config("probe", &format!("isolation = \"{isolation}\""))])
        .await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let mut run = pipeline.start(view(&[]));
        run.on_request().await.unwrap();
        counts.push(header(&run, "x-probe-instance-count").unwrap());
        run.complete(completion());
        h.wait_completions();
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_instances_keep_globals_fresh_ones_do_not() {
    let h = host(PluginRuntimeConfig::default());
    // The load's smoke instantiation is the first pooled instance: it serves request 1.
    assert_eq!(instance_counts(&h, "pooled").await, ["1", "2", "3"]);
    assert_eq!(instance_counts(&h, "request").await, ["1", "1", "1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_instances_are_recycled_after_max_requests() {
    let h = host(PluginRuntimeConfig::default());
    let pipeline = h
        .pipeline(&[config("probe", "max_requests_per_instance = 2")])
        .await;
    let mut counts = Vec::new();
    for _ in 0..4 {
        let mut run = pipeline.start(view(&[]));
        run.on_request().await.unwrap();
        counts.push(header(&run, "x-probe-instance-count").unwrap());
        run.complete(completion());
        h.wait_completions();
    }
    assert_eq!(counts, ["1", "2", "1", "2"]);
}

async fn failing(h: &Host, name: &str, on_error: &str) -> Result<(), gateway::plugin::Denial> {
    let pipeline = h
        .pipeline(&[config(name, &format!("on_error = \"{on_error}\""))])
        .await;
    let mut run = pipeline.start(view(&[]));
    run.on_request().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_by_the_cpu_limit() {
    let h = host(PluginRuntimeConfig::default());
    let pipeline = h.pipeline(&[config("spin", "")]).await;
    let mut run = pipeline.start(view(&[]));
    let started = Instant::now();
    let denial = run.on_request().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((denial.status, denial.plugin.as_str()), (503, "spin"));
    assert_eq!(h.calls("spin", "timeout"), 1);
    failing(&h, "spin", "allow").await.unwrap();
    assert_eq!(h.calls("spin", "timeout"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_limit_holds_after_the_epoch_ticker_went_idle() {
    let h = host(PluginRuntimeConfig::default());
    let pipeline = h.pipeline(&[config("spin", "")]).await;
    // Long enough without plugin calls for the ticker to park.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let denial = pipeline.start(view(&[])).on_request().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(denial.status, 503);
    assert_eq!(h.calls("spin", "timeout"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_at_the_memory_limit() {
    let h = host(PluginRuntimeConfig::default());
    // A generous CPU limit, so the memory limit is what stops it.
    let pipeline = h.pipeline(&[config("membomb", "cpu_limit = \"2s\"")]).await;
    let mut run = pipeline.start(view(&[]));
    assert_eq!(run.on_request().await.unwrap_err().status, 503);
    assert_eq!(h.calls("membomb", "memory"), 1, "{}", h.metrics.render());
    let pipeline = h
        .pipeline(&[config(
            "membomb",
            "cpu_limit = \"2s\"\non_error = \"allow\"",
        )])
        .await;
    pipeline.start(view(&[])).on_request().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_contained() {
    let h = host(PluginRuntimeConfig::default());
    assert_eq!(failing(&h, "trap", "deny").await.unwrap_err().status, 503);
    failing(&h, "trap", "allow").await.unwrap();
    assert_eq!(h.calls("trap", "trap"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_return_is_refused() {
    let h = host(PluginRuntimeConfig::default());
    let denial = failing(&h, "bigreturn", "deny").await.unwrap_err();
    assert_eq!(
        denial.status, 503,
        "the 1 MiB denial never reaches the client"
    );
    assert_eq!(h.calls("bigreturn", "oversized"), 1);
    failing(&h, "bigreturn", "allow").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_keeps_serving_after_failures() {
    let h = host(PluginRuntimeConfig::default());
    for name in ["spin", "membomb", "trap", "bigreturn"] {
        let _ = failing(&h, name, "deny").await;
    }
    let pipeline = h.pipeline(&[config("noop", ""), config("probe", "")]).await;
    let mut run = pipeline.start(view(&[]));
    run.on_request().await.unwrap();
    assert!(header(&run, "x-probe-seen").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_failing_trips_its_breaker() {
    let h = host(PluginRuntimeConfig {
        breaker_failures: 2,
        ..Default::default()
    });
    let pipeline = h.pipeline(&[config("trap", "on_error = \"allow\"")]).await;
    for _ in 0..5 {
        let mut run = pipeline.start(view(&[]));
        run.on_request().await.unwrap();
    }
    assert_eq!(
        h.calls("trap", "trap"),
        2,
        "calls stop once the breaker is open"
    );
}

fn load_error(name: &str) -> PluginError {
    let h = host(PluginRuntimeConfig::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(h.engine.load(&config(name, ""))).unwrap_err()
}

#[test]
fn a_component_of_another_world_is_refused() {
    let e = load_error("wrongworld");
    assert!(matches!(e, PluginError::WrongWorld(_)), "{e}");
    assert!(
        e.to_string()
            .contains("does not export llm-gateway:plugin/handler"),
        "{e}"
    );
}

#[test]
fn a_plugin_for_another_major_version_is_refused_with_a_clear_message() {
    let e = load_error("v2");
    assert!(matches!(e, PluginError::WrongVersion(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("llm-gateway:plugin@2.0.0") && text.contains("1.x"),
        "{text}"
    );
}

#[test]
fn a_failing_init_fails_the_load() {
    let e = load_error("failinit");
    assert!(matches!(e, PluginError::Init(_)), "{e}");
    assert!(e.to_string().contains("bad config"), "{e}");
}

#[tokio::test]
async fn bytes_that_are_not_webassembly_are_refused() {
    let h = host(PluginRuntimeConfig::default());
    let e = h
        .engine
        .load_bytes(&config("noop", ""), b"\0asm garbage".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::Invalid(_)), "{e}");
    let e = h
        .engine
        .load_bytes(&config("noop", ""), b"hello".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::Invalid(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_swap_atomically_and_runs_keep_their_own() {
    let h = host(PluginRuntimeConfig::default());
    let current = ArcSwap::new(h.pipeline(&[config("probe", "")]).await);
    let old = current.load_full();
    let mut running = old.start(view(&[]));
    current.store(h.pipeline(&[config("noop", "")]).await);
    running.on_request().await.unwrap();
    assert!(
        header(&running, "x-probe-seen").is_some(),
        "a started run finishes on its pipeline"
    );
    let mut fresh = current.load_full().start(view(&[]));
    fresh.on_request().await.unwrap();
    assert!(header(&fresh, "x-probe-seen").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_plugins_start_on_baseline_code_and_are_optimized_on_request() {
    use gateway::plugin::engine::Tier;
    let h = host(PluginRuntimeConfig::default());
    let configs = [config("probe", ""), config("noop", "")];
    let fast = h.engine.load_all(&configs).await.unwrap();
    assert!(fast
        .iter()
        .all(|l| l.plugin.tier == Tier::Baseline && !l.was_cached));
    // Baseline code serves like any other.
    let run_on = |plugins: Vec<_>| {
        Arc::new(Pipeline::new(
            plugins,
            Arc::clone(&h.completions),
            tokio::runtime::Handle::current(),
        ))
    };
    let pipeline = run_on(fast.into_iter().map(|l| l.plugin).collect());
    let mut run = pipeline.start(view(&[]));
    run.on_request().await.unwrap();
    assert!(header(&run, "x-probe-seen").is_some());

    let optimized = h.engine.load_all_optimized(&configs).await.unwrap();
    assert!(optimized
        .iter()
        .all(|l| l.plugin.tier == Tier::Optimized && l.was_cached));
    // Once optimized code exists, every later load uses it, compiling nothing.
    let again = h.engine.load_all(&configs).await.unwrap();
    assert!(again.iter().all(|l| l.plugin.tier == Tier::Optimized));
    let pipeline = run_on(again.into_iter().map(|l| l.plugin).collect());
    let mut run = pipeline.start(view(&[]));
    run.on_request().await.unwrap();
    assert!(header(&run, "x-probe-seen").is_some());
}

fn view_with_id(id: &str, body: Bytes) -> Box<RequestView> {
    Box::new(RequestView::new(
        "POST".into(),
        "/bedrock/model/m/invoke".into(),
        FrontDoor::Bedrock,
        Operation::Invoke,
        Some("m".into()),
        http::HeaderMap::new(),
        None,
        id.into(),
        body,
    ))
}

fn audit_records(h: &Host) -> Vec<serde_json::Value> {
    h.audit
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_requests_hold_no_instance_and_keep_their_state_in_the_host() {
    // Eight instance slots for both compilers' pools; 300 requests open at once.
    let h = host(PluginRuntimeConfig {
        max_instances: 8,
        ..Default::default()
    });
    let pipeline = h.pipeline(&[config("probe", "on_error = \"deny\"")]).await;
    assert!(
        !pipeline.plugins()[0].pinned,
        "a 1.1 plugin is lent per call"
    );
    let mut open = Vec::new();
    for i in 0..300 {
        let mut run = pipeline.start(view_with_id(&format!("r{i}"), Bytes::new()));
        run.on_request()
            .await
            .unwrap_or_else(|d| panic!("request {i} was refused: {d:?}"));
        run.on_response(200, &http::HeaderMap::new()).await;
        open.push(run);
    }
    // Completed in reverse: each on-complete runs on whichever instance is free.
    for run in open.into_iter().rev() {
        run.finish(completion()).await;
    }
    let records = audit_records(&h);
    assert_eq!(records.len(), 300);
    for r in &records {
        assert_eq!(
            r["state"]["rid"], r["request_id"],
            "each request's on-complete sees its own state: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_1_0_plugin_loads_and_keeps_one_instance_per_request() {
    let h = host(PluginRuntimeConfig::default());
    let pipeline = h.pipeline(&[config("v1_0", "")]).await;
    assert!(pipeline.plugins()[0].pinned);
    let mut a = pipeline.start(view_with_id("a", Bytes::new()));
    a.on_request().await.unwrap();
    let mut b = pipeline.start(view_with_id("b", Bytes::new()));
    b.on_request().await.unwrap();
    a.finish(completion()).await;
    b.finish(completion()).await;
    let records = audit_records(&h);
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r["remembered"], r["request_id"], "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_failures_on_oversized_input_do_not_open_the_breaker() {
    let h = host(PluginRuntimeConfig {
        breaker_failures: 2,
        ..Default::default()
    });
    let pipeline = h
        .pipeline(&[config(
            "membomb",
            "cpu_limit = \"2s\"\non_error = \"allow\"",
        )])
        .await;
    // 2 MiB of input against a 16 MiB plugin: the request's doing, not the plugin's.
    let big = Bytes::from(vec![b' '; 2 * 1024 * 1024]);
    for i in 0..5 {
        let mut run = pipeline.start(view_with_id(&format!("big{i}"), big.clone()));
        run.on_request().await.unwrap();
    }
    assert_eq!(
        h.calls("membomb", "memory"),
        5,
        "every request still calls it"
    );
    // A small request failing the same way is the plugin's fault.
    for i in 0..5 {
        let mut run = pipeline.start(view_with_id(&format!("small{i}"), Bytes::new()));
        run.on_request().await.unwrap();
    }
    assert_eq!(
        h.calls("membomb", "memory"),
        7,
        "two small failures open the breaker"
    );
}
