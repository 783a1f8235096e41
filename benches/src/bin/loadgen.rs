//! `loadgen`: a keep-alive HTTP/1.1 load generator for the Bedrock runtime API.
//!
//! It opens `--connections` TCP connections (TCP_NODELAY) to a base URL, sends `--warmup`
//! requests that are checked but not timed, then `--requests` timed ones, spread over the
//! connections (each connection sends its next request as soon as the previous answer is
//! read: a closed loop). A request is timed from just before it is written until the last
//! byte of its answer is read; for streams the time to the first body byte is reported too.
//!
//! The client is hyper's bare HTTP/1 connection over one `TcpStream` per connection (no pool,
//! no TLS), on a current-thread runtime, so the client adds the same small cost whether it
//! talks to the mock or to the gateway.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_benches::args::Args;
use gateway_benches::fixtures;
use gateway_benches::stats::Summary;
use gateway_benches::target::split_base_url;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

const USAGE: &str = "\
loadgen: closed-loop keep-alive load against a Bedrock runtime base URL

  --target URL         base URL, e.g. http://127.0.0.1:18080 or http://127.0.0.1:8080/bedrock
  --kind KIND          invoke | stream (default invoke)
  --connections C      keep-alive connections (default 1)
  --requests N         timed requests (default 2000)
  --warmup W           untimed, checked requests first (default 200)
  --body-bytes B       request body size (default 2048)
  --model ID           model path segment (default us.anthropic.claude-sonnet-4-5-20250929-v1%3A0)
  --header 'K: V'      extra request header (repeatable)
  --timeout-ms T       per-request timeout (default 30000)
  --json               print one JSON object instead of text";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Invoke,
    Stream,
}

struct Plan {
    kind: Kind,
    host: String,
    authority: String,
    path: String,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

/// What one connection measured.
#[derive(Default)]
struct Samples {
    total: Vec<u64>,
    first_byte: Vec<u64>,
    head: Vec<u64>,
    errors: usize,
    first_errors: Vec<String>,
    reconnects: usize,
    length_mismatches: usize,
    response_bytes: usize,
}

impl Samples {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_errors.len() < 5 {
            self.first_errors.push(e);
        }
    }
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<bool, String> {
    let mut args = Args::parse(std::env::args().skip(1), &["json", "help"])?;
    if args.switch("help") {
        println!("{USAGE}");
        return Ok(true);
    }
    let target: String = args.opt("target")?.ok_or("--target is required")?;
    let kind = match args.get("kind", "invoke".to_string())?.as_str() {
        "invoke" => Kind::Invoke,
        "stream" => Kind::Stream,
        other => return Err(format!("--kind {other:?}: invoke or stream")),
    };
    let connections: usize = args.get("connections", 1)?;
    let requests: usize = args.get("requests", 2000)?;
    let warmup: usize = args.get("warmup", 200)?;
    let body_bytes: usize = args.get("body-bytes", 2048)?;
    let model: String = args.get("model", fixtures::MODEL_PATH_SEGMENT.to_string())?;
    let timeout_ms: u64 = args.get("timeout-ms", 30_000)?;
    let as_json = args.switch("json");
    let extra = args.all("header");
    args.finish()?;
    if connections == 0 || requests == 0 {
        return Err("--connections and --requests must be positive".into());
    }

    let (authority, prefix) = split_base_url(&target)?;
    let op = match kind {
        Kind::Invoke => "invoke",
        Kind::Stream => "invoke-with-response-stream",
    };
    let mut headers = Vec::new();
    for h in extra {
        let (k, v) = h
            .split_once(':')
            .ok_or(format!("--header {h:?}: want 'Name: value'"))?;
        let name = HeaderName::try_from(k.trim()).map_err(|e| format!("--header {h:?}: {e}"))?;
        let value = HeaderValue::try_from(v.trim()).map_err(|e| format!("--header {h:?}: {e}"))?;
        headers.push((name, value));
    }
    let plan = Arc::new(Plan {
        kind,
        host: authority.clone(),
        authority,
        path: format!("{prefix}/model/{model}/{op}"),
        body: Bytes::from(fixtures::request_body(body_bytes)),
        headers,
        timeout: Duration::from_millis(timeout_ms),
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // From here on a failure is the target's, not the command line's: no usage text.
    let (samples, elapsed) =
        match runtime.block_on(drive(plan.clone(), connections, warmup, requests)) {
            Ok(done) => done,
            Err(e) => {
                eprintln!("loadgen: {e}");
                return Ok(false);
            }
        };

    let mut merged = Samples::default();
    for s in samples {
        merged.total.extend(s.total);
        merged.first_byte.extend(s.first_byte);
        merged.head.extend(s.head);
        merged.errors += s.errors;
        merged.reconnects += s.reconnects;
        merged.length_mismatches += s.length_mismatches;
        merged.response_bytes = merged.response_bytes.max(s.response_bytes);
        merged.first_errors.extend(s.first_errors);
    }
    let ok = merged.total.len();
    let total = Summary::from_nanos(&mut merged.total);
    let first_byte = if kind == Kind::Stream {
        Summary::from_nanos(&mut merged.first_byte)
    } else {
        None
    };
    let head = Summary::from_nanos(&mut merged.head);
    let rps = ok as f64 / elapsed.as_secs_f64();
    let kind_name = if kind == Kind::Invoke {
        "invoke"
    } else {
        "stream"
    };

    if as_json {
        let summary =
            |s: Option<Summary>| s.map(|s| s.to_json()).unwrap_or(serde_json::Value::Null);
        let out = json!({
            "kind": kind_name,
            "target": target,
            "connections": connections,
            "requests": requests,
            "warmup": warmup,
            "ok": ok,
            "errors": merged.errors,
            "first_errors": merged.first_errors,
            "reconnects": merged.reconnects,
            "length_mismatches": merged.length_mismatches,
            "request_bytes": plan.body.len(),
            "response_bytes": merged.response_bytes,
            "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "rps": rps.round(),
            "total_us": summary(total),
            "first_byte_us": summary(first_byte),
            "head_us": summary(head),
        });
        println!("{out}");
    } else {
        println!(
            "{kind_name} x{requests} over {connections} connection(s) to {target}: {ok} ok, {} errors, {} reconnects, {:.0} req/s, request {} B, answer {} B",
            merged.errors, merged.reconnects, rps, plan.body.len(), merged.response_bytes
        );
        let line = |name: &str, s: Option<Summary>| {
            if let Some(s) = s {
                println!(
                    "  {name:<11} p50 {:>9.1} µs  p90 {:>9.1} µs  p99 {:>9.1} µs  max {:>9.1} µs  mean {:>9.1} µs",
                    s.p50, s.p90, s.p99, s.max, s.mean
                );
            }
        };
        line("total", total);
        line("first byte", first_byte);
        line("head", head);
        for e in &merged.first_errors {
            println!("  error: {e}");
        }
        if merged.length_mismatches > 0 {
            println!(
                "  warning: {} answers differed in length from the first",
                merged.length_mismatches
            );
        }
    }
    Ok(merged.errors == 0 && ok > 0)
}

async fn drive(
    plan: Arc<Plan>,
    connections: usize,
    warmup: usize,
    requests: usize,
) -> Result<(Vec<Samples>, Duration), String> {
    // A first connection proves the target is there before anything is measured.
    let first = connect(&plan).await?;
    let warmup_left = Arc::new(AtomicUsize::new(warmup));
    let timed_left = Arc::new(AtomicUsize::new(requests));
    let barrier = Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::new();
    let mut first = Some(first);
    for _ in 0..connections {
        let sender = match first.take() {
            Some(s) => s,
            None => connect(&plan).await?,
        };
        let (plan, warmup_left, timed_left, barrier) = (
            plan.clone(),
            warmup_left.clone(),
            timed_left.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection {
                plan,
                sender,
                expected_len: None,
            };
            let mut samples = Samples::default();
            while take(&warmup_left) {
                conn.one(&mut samples, false).await;
            }
            // Warm-up samples only prove the answers are right; drop their timings.
            samples.total.clear();
            samples.first_byte.clear();
            samples.head.clear();
            barrier.wait().await;
            while take(&timed_left) {
                conn.one(&mut samples, true).await;
            }
            samples
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())?);
    }
    Ok((out, start.elapsed()))
}

fn take(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

async fn connect(plan: &Plan) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(&plan.authority)
        .await
        .map_err(|e| format!("connect {}: {e}", plan.authority))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

struct Connection {
    plan: Arc<Plan>,
    sender: SendRequest<Full<Bytes>>,
    expected_len: Option<usize>,
}

impl Connection {
    /// Sends one request and reads its whole answer. Warm-up answers (`timed == false`) are
    /// also checked for content; timed ones only for status and length, so that checking
    /// costs nothing inside the measurement.
    async fn one(&mut self, samples: &mut Samples, timed: bool) {
        let plan = self.plan.clone();
        let result = tokio::time::timeout(plan.timeout, self.exchange(&plan, !timed)).await;
        match result {
            Ok(Ok(m)) => {
                samples.total.push(m.total);
                samples.head.push(m.head);
                if let Some(fb) = m.first_byte {
                    samples.first_byte.push(fb);
                }
                samples.response_bytes = samples.response_bytes.max(m.len);
                match self.expected_len {
                    None => self.expected_len = Some(m.len),
                    Some(len) if len != m.len => samples.length_mismatches += 1,
                    Some(_) => {}
                }
            }
            Ok(Err(e)) => samples.error(e),
            Err(_) => samples.error(format!("timed out after {:?}", plan.timeout)),
        }
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            match connect(&plan).await {
                Ok(s) => {
                    self.sender = s;
                    samples.reconnects += 1;
                }
                Err(e) => {
                    samples.error(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn exchange(&mut self, plan: &Plan, check: bool) -> Result<Measure, String> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(plan.path.as_str())
            .header("host", plan.host.as_str())
            .header("content-type", "application/json")
            .header(
                "accept",
                if plan.kind == Kind::Stream {
                    "application/vnd.amazon.eventstream"
                } else {
                    "application/json"
                },
            );
        for (k, v) in &plan.headers {
            builder = builder.header(k, v);
        }
        let req = builder
            .body(Full::new(plan.body.clone()))
            .map_err(|e| e.to_string())?;

        let start = Instant::now();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let head = start.elapsed().as_nanos() as u64;
        let status = resp.status();
        let content_type = resp.headers().get("content-type").cloned();
        let mut body = resp.into_body();
        let mut first_byte = None;
        let mut len = 0;
        let mut kept = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            if let Ok(data) = frame.into_data() {
                if first_byte.is_none() && !data.is_empty() {
                    first_byte = Some(start.elapsed().as_nanos() as u64);
                }
                len += data.len();
                if check || !status.is_success() {
                    kept.extend_from_slice(&data);
                }
            }
        }
        let total = start.elapsed().as_nanos() as u64;

        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&kept)
            ));
        }
        if check {
            let want = match plan.kind {
                Kind::Invoke => "application/json",
                Kind::Stream => "application/vnd.amazon.eventstream",
            };
            let got = content_type
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !got.starts_with(want) {
                return Err(format!("content-type {content_type:?}, want {want}"));
            }
            match plan.kind {
                Kind::Invoke => fixtures::check_invoke_answer(&kept)?,
                Kind::Stream => {
                    fixtures::check_stream_answer(&kept)?;
                }
            }
        }
        Ok(Measure {
            total,
            head,
            first_byte,
            len,
        })
    }
}

struct Measure {
    total: u64,
    head: u64,
    first_byte: Option<u64>,
    len: usize,
}
