//! Plugin pipeline cost per request, with real components from `target/test-plugins/`
//! (`make plugins` builds them).
//!
//! Each iteration is one request's whole pipeline work: `on-request`, `on-response` and
//! `on-complete` for every plugin (run inline here; the gateway runs `on-complete` off the
//! client's path), including lending and returning pooled instances or, in request isolation,
//! instantiating fresh ones.
//!
//! ```sh
//! cargo bench -p gateway-benches --bench pipeline
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::audit::AuditSink;
use gateway::config::{PluginConfig, PluginRuntimeConfig};
use gateway::frontdoor::{FrontDoor, Operation};
use gateway::metrics::Metrics;
use gateway::plugin::pipeline::Completions;
use gateway::plugin::{
    Completion, HostServices, Pipeline, PluginEngine, RequestView, WitOutcome, WitUsage,
};
use gateway::state::MemoryStore;

fn plugin_config(name: &str, isolation: &str) -> PluginConfig {
    plugin_config_in(
        "test-plugins",
        name,
        &format!("isolation = \"{isolation}\""),
    )
}

fn plugin_config_in(dir: &str, name: &str, extra: &str) -> PluginConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(dir)
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make plugins` first",
        path.display()
    );
    toml::from_str(&format!(
        "name = \"{name}\"\npath = \"{}\"\n{extra}",
        path.display()
    ))
    .unwrap()
}

/// The four stock plugins as an org would run them: every request authenticated, checked
/// against model rules, rate-limited with every kind of limit, and audited.
fn stock_plugins() -> Vec<PluginConfig> {
    vec![
        plugin_config_in(
            "plugins",
            "audit-log",
            "[config.prices]\n\"*sonnet*\" = { input = 3.0, output = 15.0 }",
        ),
        plugin_config_in(
            "plugins",
            "auth",
            "[config]\nkeys = [{ key = \"sk-gw-test\", principal = \"dev\", team = \"research\" }]",
        ),
        plugin_config_in(
            "plugins",
            "model-rewrite",
            "[[config.rules]]\nmatch = { model = \"*opus*\", team = \"interns\" }\nrewrite_to = \"us.anthropic.claude-sonnet-4-5-20250929-v1:0\"",
        ),
        plugin_config_in(
            "plugins",
            "rate-limit",
            "[[config.rules]]\nper = \"principal\"\nrequests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\nmax_concurrent_streams = 1000000\nbudget_usd = 1000000000.0\n[config.prices]\n\"*sonnet*\" = { input = 3.0, output = 15.0 }",
        ),
    ]
}

fn view(body: &Bytes) -> Box<RequestView> {
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", "Bearer sk-gw-test".parse().unwrap());
    headers.insert("anthropic-version", "2023-06-01".parse().unwrap());
    // As every client sends it (the rate-limit plugin estimates tokens from it).
    headers.insert("content-length", body.len().into());
    headers.insert(
        "x-claude-code-session-id",
        "5b3c7a2e-0000-4000-8000-000000000000".parse().unwrap(),
    );
    Box::new(RequestView::new(
        "POST".into(),
        "/bedrock/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke".into(),
        FrontDoor::Bedrock,
        Operation::Invoke,
        Some("us.anthropic.claude-sonnet-4-5-20250929-v1:0".into()),
        headers,
        Some("127.0.0.1".into()),
        "bench".into(),
        body.clone(),
    ))
}

/// One request's whole pipeline work: every phase of every plugin.
async fn one_request(p: &Arc<Pipeline>, body: &Bytes, upstream_headers: &http::HeaderMap) {
    let mut run = p.start(view(body));
    run.on_request().await.unwrap();
    run.on_response(200, upstream_headers).await;
    run.finish(completion()).await;
}

fn completion() -> Completion {
    Completion {
        status: 200,
        outcome: WitOutcome::Ok,
        usage: WitUsage {
            input_tokens: 1000,
            output_tokens: 100,
            cache_read_tokens: 50_000,
            cache_write_tokens: 500,
        },
        latency_ms: 1,
        time_to_first_token_ms: Some(1),
        request_bytes: 2048,
        response_bytes: 2048,
        backend: Some("bench".into()),
        model_served: Some("m".into()),
        denied_by: None,
    }
}

fn body(size: usize) -> Bytes {
    let text = "x".repeat(size.saturating_sub(120));
    Bytes::from(format!(
        r#"{{"anthropic_version":"bedrock-2023-05-31","max_tokens":1024,"messages":[{{"role":"user","content":"{text}"}}]}}"#
    ))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let completions = Arc::new(Completions::default());
    let services = Arc::new(HostServices::new(
        Arc::new(MemoryStore::new()),
        AuditSink::collecting().0,
        Arc::new(Metrics::new()),
        gateway::catalog::Catalog::new(&[]),
        Arc::clone(&completions),
    ));
    let engine = Arc::new(PluginEngine::new(&PluginRuntimeConfig::default(), services).unwrap());
    let pipeline = |names: &[&str], isolation: &str| {
        let plugins = names
            .iter()
            .map(|n| {
                rt.block_on(engine.load_optimized(&plugin_config(n, isolation)))
                    .unwrap()
            })
            .collect();
        Arc::new(Pipeline::new(
            plugins,
            Arc::clone(&completions),
            rt.handle().clone(),
        ))
    };
    let upstream_headers = http::HeaderMap::new();
    let small = body(2 * 1024);
    let large = body(256 * 1024);

    let mut group = c.benchmark_group("pipeline per request");
    for isolation in ["pooled", "request"] {
        for (label, names) in [
            ("0 plugins", vec![]),
            ("1 trivial", vec!["noop"]),
            ("4 trivial", vec!["noop"; 4]),
        ] {
            let p = pipeline(&names, isolation);
            group.bench_function(BenchmarkId::new(isolation, label), |b| {
                b.iter(|| rt.block_on(one_request(&p, &small, &upstream_headers)))
            });
        }
    }
    group.finish();

    // The stock pipeline: what an org runs on day one.
    let mut group = c.benchmark_group("stock pipeline per request");
    let empty = Arc::new(Pipeline::new(
        Vec::new(),
        Arc::clone(&completions),
        rt.handle().clone(),
    ));
    let stock = {
        let plugins = stock_plugins()
            .iter()
            .map(|c| rt.block_on(engine.load_optimized(c)).unwrap())
            .collect();
        Arc::new(Pipeline::new(
            plugins,
            Arc::clone(&completions),
            rt.handle().clone(),
        ))
    };
    for (label, p) in [("0 plugins", &empty), ("4 stock plugins", &stock)] {
        group.bench_function(label, |b| {
            b.iter(|| rt.block_on(one_request(p, &small, &upstream_headers)))
        });
    }
    // The same pipeline on baseline (Winch) code: how requests run in the moments between a
    // reload and the end of its background optimization.
    let stock_baseline = {
        engine.retain_cached(&Default::default());
        let plugins = stock_plugins()
            .iter()
            .map(|c| rt.block_on(engine.load(c)).unwrap())
            .collect();
        Arc::new(Pipeline::new(
            plugins,
            Arc::clone(&completions),
            rt.handle().clone(),
        ))
    };
    group.bench_function("4 stock plugins, baseline code", |b| {
        b.iter(|| rt.block_on(one_request(&stock_baseline, &small, &upstream_headers)))
    });
    // Each stock plugin alone, to see where the pipeline's time goes.
    for config in stock_plugins() {
        let alone = Arc::new(Pipeline::new(
            vec![rt.block_on(engine.load_optimized(&config)).unwrap()],
            Arc::clone(&completions),
            rt.handle().clone(),
        ));
        group.bench_function(BenchmarkId::new("alone", &config.name), |b| {
            b.iter(|| rt.block_on(one_request(&alone, &small, &upstream_headers)))
        });
    }
    group.finish();

    // Reloading the four stock plugins: compile (cold cache) or not (warm), link, instantiate
    // and `init` each once, as a reload does.
    let mut group = c.benchmark_group("reload 4 stock plugins");
    group.sample_size(10);
    let configs = stock_plugins();
    // What a reload waits for: baseline (Winch) code, serving as soon as it is swapped in.
    group.bench_function("cold module cache", |b| {
        b.iter(|| {
            engine.retain_cached(&Default::default());
            rt.block_on(engine.load_all(&configs))
                .map_err(|(n, e)| format!("{n}: {e}"))
                .unwrap()
        })
    });
    // The background step that follows: the same plugins compiled by Cranelift.
    group.bench_function("cold, then optimized in the background", |b| {
        b.iter(|| {
            engine.retain_cached(&Default::default());
            rt.block_on(async {
                engine.load_all(&configs).await?;
                engine.load_all_optimized(&configs).await
            })
            .map_err(|(n, e)| format!("{n}: {e}"))
            .unwrap()
        })
    });
    group.bench_function("warm module cache", |b| {
        b.iter(|| {
            rt.block_on(engine.load_all(&configs))
                .map_err(|(n, e)| format!("{n}: {e}"))
                .unwrap()
        })
    });
    group.finish();

    // The body is handed to plugins only when they ask: a plugin that does not ask costs the
    // same whatever the body's size.
    let mut group = c.benchmark_group("body not asked for");
    let p = pipeline(&["noop"], "pooled");
    for (label, b) in [("2 KiB body", &small), ("256 KiB body", &large)] {
        group.bench_function(label, |bench| {
            bench.iter(|| {
                rt.block_on(async {
                    let mut run = p.start(view(b));
                    run.on_request().await.unwrap();
                    run.finish(completion()).await;
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
