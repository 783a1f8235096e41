//! `streamgen`: holds thousands of event streams open through a gateway at once and measures
//! what they cost it.
//!
//! It opens `--streams` TCP connections evenly over `--ramp-s` seconds, sends one
//! `InvokeModelWithResponseStream` request on each and reads the answer to its end, checking
//! everything on the way: status 200, HTTP/1.1 chunked framing, every AWS event-stream frame
//! (lengths and both CRCs) a `chunk` event whose payload decodes to an Anthropic event,
//! `--expect-events` of them, the last `message_stop`. A stream that gets another status, is
//! cut, misses a frame or outlives `--timeout-s` is failed, with its reason. Against the mock's
//! pacing mode (one frame a second) every stream stays open for the whole answer, so once the
//! last connection has its answer's head, every stream is open at once: the plateau.
//!
//! With `--gateway-pid` it reads the gateway's memory (`VmRSS`, `VmHWM` in `/proc/PID/status`),
//! CPU time (`utime + stime` in `/proc/PID/stat`) and open files before the load (after
//! `--warmup` plain requests have warmed the plugin pools), at the plateau (`--settle-s` after
//! it is reached) and at the end, and reports the growth per open stream. `--probe` times one
//! plain `InvokeModel` on a fresh connection at the plateau: what another client waits while
//! the streams are held.
//!
//! The client is lean on purpose (it shares two cores with the gateway and the mock): raw
//! TCP, no HTTP library, one current-thread runtime, a 4 KiB read buffer per stream, frames
//! checked as they arrive and dropped. It raises its own open-file limit to the hard limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use gateway_benches::args::Args;
use gateway_benches::eventstream::decode_messages;
use gateway_benches::fixtures;
use gateway_benches::stats::Summary;
use gateway_benches::target::split_base_url;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const USAGE: &str = "\
streamgen: hold many concurrent event streams open through a gateway and measure their cost

  --target URL          base URL, e.g. http://127.0.0.1:8080/bedrock
  --streams N           concurrent streams (default 10000)
  --ramp-s S            open the connections evenly over S seconds (default 5)
  --expect-events E     frames every answer must carry; 0 = any number (default 0)
  --timeout-s T         per stream, connect to last byte (default 300)
  --settle-s S          wait this long after the plateau before sampling it (default 1)
  --gateway-pid PID     sample this process's memory, CPU and open files
  --warmup N            plain invokes before the first sample (default 20)
  --probe               at the plateau, time one plain invoke on a fresh connection
  --body-bytes B        request body size (default 2048)
  --model ID            model path segment (default us.anthropic.claude-sonnet-4-5-20250929-v1%3A0)
  --header 'K: V'       extra request header, e.g. the gateway key (repeatable)
  --json                print one JSON object instead of text";

/// Longest response head or error body read; more is an error.
const HEAD_LIMIT: usize = 16 * 1024;
const READ_BUF: usize = 4096;

struct Plan {
    addr: SocketAddr,
    stream_request: Vec<u8>,
    invoke_request: Vec<u8>,
    expect_events: usize,
    timeout: Duration,
}

/// Counters every stream updates, and the plateau signal.
#[derive(Default)]
struct Shared {
    /// Streams with their answer's head, or failed before one.
    answered: AtomicUsize,
    /// Streams with a 200 head that are still being read.
    open: AtomicUsize,
    max_open: AtomicUsize,
    all_answered: Notify,
    streams: usize,
}

impl Shared {
    /// Counts a stream as answered once (its head arrived, or it failed first).
    fn answer(&self, done: &AtomicBool) {
        if !done.swap(true, Ordering::Relaxed)
            && self.answered.fetch_add(1, Ordering::Relaxed) + 1 == self.streams
        {
            self.all_answered.notify_one();
        }
    }
}

/// Holds a stream's place in `Shared::open` while its body is read, however that ends.
struct OpenStream<'a>(&'a Shared);

impl<'a> OpenStream<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_open.fetch_max(now, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One stream that ended well.
struct StreamOk {
    head_ns: u64,
    total_ns: u64,
}

/// A process's figures from `/proc`.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_s: f64,
    threads: u64,
    fds: usize,
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("streamgen: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<bool, String> {
    let mut args = Args::parse(std::env::args().skip(1), &["json", "probe", "help"])?;
    if args.switch("help") {
        println!("{USAGE}");
        return Ok(true);
    }
    let target: String = args.opt("target")?.ok_or("--target is required")?;
    let streams: usize = args.get("streams", 10_000)?;
    let ramp = Duration::from_secs_f64(args.get("ramp-s", 5.0)?);
    let expect_events: usize = args.get("expect-events", 0)?;
    let timeout = Duration::from_secs_f64(args.get("timeout-s", 300.0)?);
    let settle = Duration::from_secs_f64(args.get("settle-s", 1.0)?);
    let gateway_pid: Option<u32> = args.opt("gateway-pid")?;
    let warmup: usize = args.get("warmup", 20)?;
    let probe = args.switch("probe");
    let body_bytes: usize = args.get("body-bytes", 2048)?;
    let model: String = args.get("model", fixtures::MODEL_PATH_SEGMENT.to_string())?;
    let extra = args.all("header");
    let as_json = args.switch("json");
    args.finish()?;
    if streams == 0 {
        return Err("--streams must be positive".into());
    }

    let (authority, prefix) = split_base_url(&target)?;
    let addr: SocketAddr = authority
        .parse()
        .map_err(|e| format!("{authority}: an IP address and port, please ({e})"))?;
    let body = fixtures::request_body(body_bytes);
    let request = |op: &str, accept: &str| {
        let mut head = format!(
            "POST {prefix}/model/{model}/{op} HTTP/1.1\r\nhost: {authority}\r\n\
             content-type: application/json\r\naccept: {accept}\r\ncontent-length: {}\r\n",
            body.len()
        );
        for h in &extra {
            head.push_str(h.trim());
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        out
    };
    let plan = Arc::new(Plan {
        addr,
        stream_request: request(
            "invoke-with-response-stream",
            "application/vnd.amazon.eventstream",
        ),
        invoke_request: request("invoke", "application/json"),
        expect_events,
        timeout,
    });
    let nofile = raise_nofile_limit()?;
    if (nofile as usize) < streams + 64 {
        return Err(format!(
            "this process may open {nofile} files (the hard limit); {streams} streams need {}",
            streams + 64
        ));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = match runtime.block_on(drive(
        plan,
        streams,
        ramp,
        settle,
        gateway_pid,
        warmup,
        probe,
    )) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("streamgen: {e}");
            return Ok(false);
        }
    };
    let ok = report["ok"].as_u64() == Some(streams as u64);
    if as_json {
        println!("{report}");
    } else {
        print_text(&target, &report);
    }
    Ok(ok)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    plan: Arc<Plan>,
    streams: usize,
    ramp: Duration,
    settle: Duration,
    pid: Option<u32>,
    warmup: usize,
    probe: bool,
) -> Result<Value, String> {
    for i in 0..warmup {
        plain_invoke(&plan)
            .await
            .map_err(|e| format!("warm-up request {i}: {e}"))?;
    }
    let before = sample_opt(pid)?;
    let shared = Arc::new(Shared {
        streams,
        ..Shared::default()
    });
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let (plan, shared) = (plan.clone(), shared.clone());
            let at = start + ramp.mul_f64(i as f64 / streams as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let answered = AtomicBool::new(false);
                let result =
                    match tokio::time::timeout(plan.timeout, one_stream(&plan, &shared, &answered))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(format!("timed out after {:?}", plan.timeout)),
                    };
                shared.answer(&answered);
                result
            })
        })
        .collect();

    // The plateau: every stream has its head (or has failed).
    let limit = ramp + plan.timeout;
    let reached = tokio::time::timeout(limit, shared.all_answered.notified())
        .await
        .is_ok();
    let plateau_at = start.elapsed();
    tokio::time::sleep(settle).await;
    let open_at_plateau = shared.open.load(Ordering::Relaxed);
    // Later samples may fail (the gateway died under the load): the streams still report.
    let at_plateau = sample_opt(pid).unwrap_or_else(|e| {
        eprintln!("streamgen: at the plateau: {e}");
        None
    });
    let probe_result = if probe {
        Some(plain_invoke(&plan).await)
    } else {
        None
    };

    let mut heads = Vec::new();
    let mut totals = Vec::new();
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for t in tasks {
        match t.await.map_err(|e| e.to_string())? {
            Ok(s) => {
                heads.push(s.head_ns);
                totals.push(s.total_ns);
            }
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let elapsed = start.elapsed();
    let after = sample_opt(pid).unwrap_or_else(|e| {
        eprintln!("streamgen: after the load: {e}");
        None
    });

    let ok = totals.len();
    let summary = |v: &mut Vec<u64>| {
        Summary::from_nanos(v)
            .map(|s| s.to_json())
            .unwrap_or(Value::Null)
    };
    let kib = |s: Option<Sample>, f: fn(&Sample) -> u64| s.map(|s| f(&s));
    let growth = match (before, at_plateau) {
        (Some(b), Some(p)) if open_at_plateau > 0 => Some(
            ((p.rss_kib as f64 - b.rss_kib as f64) / open_at_plateau as f64 * 10.0).round() / 10.0,
        ),
        _ => None,
    };
    // The peak (VmHWM) also counts buffers the streams filled after the plateau was sampled.
    let max_open = shared.max_open.load(Ordering::Relaxed);
    let peak_growth = match (before, after) {
        (Some(b), Some(a)) if max_open > 0 => {
            Some(((a.hwm_kib as f64 - b.rss_kib as f64) / max_open as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    };
    let cpu = |s: Option<Sample>| s.map(|s| (s.cpu_s * 100.0).round() / 100.0);
    let delta_cpu = |a: Option<Sample>, b: Option<Sample>| match (a, b) {
        (Some(a), Some(b)) => Some(((b.cpu_s - a.cpu_s) * 100.0).round() / 100.0),
        _ => None,
    };
    let mut error_list: Vec<(String, usize)> = errors.into_iter().collect();
    error_list.sort_by_key(|e| std::cmp::Reverse(e.1));
    Ok(json!({
        "streams": streams,
        "ok": ok,
        "failed": streams - ok,
        "errors": error_list.iter().take(10).map(|(e, n)| json!({"count": n, "error": e})).collect::<Vec<_>>(),
        "expect_events": plan.expect_events,
        "ramp_s": ramp.as_secs_f64(),
        "plateau_reached": reached,
        "plateau_at_s": (plateau_at.as_secs_f64() * 100.0).round() / 100.0,
        "open_at_plateau": open_at_plateau,
        "max_open": max_open,
        "duration_s": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        "gateway_pid": pid,
        "rss_before_kib": kib(before, |s| s.rss_kib),
        "rss_plateau_kib": kib(at_plateau, |s| s.rss_kib),
        "rss_after_kib": kib(after, |s| s.rss_kib),
        "hwm_kib": kib(after, |s| s.hwm_kib),
        "growth_per_stream_kib": growth,
        "peak_growth_per_stream_kib": peak_growth,
        "threads_plateau": kib(at_plateau, |s| s.threads),
        "fds_before": before.map(|s| s.fds),
        "fds_plateau": at_plateau.map(|s| s.fds),
        "cpu_before_s": cpu(before),
        "cpu_to_plateau_s": delta_cpu(before, at_plateau),
        "cpu_total_s": delta_cpu(before, after),
        "probe_ms": probe_result.as_ref().and_then(|r| r.as_ref().ok()).map(|d| (d.as_secs_f64() * 1e4).round() / 10.0),
        "probe_error": probe_result.as_ref().and_then(|r| r.as_ref().err()),
        "head_us": summary(&mut heads),
        "stream_us": summary(&mut totals),
    }))
}

fn print_text(target: &str, r: &Value) {
    println!(
        "{} streams to {target}: {} ok, {} failed; plateau at {} s with {} open (max {}); {} s in all",
        r["streams"],
        r["ok"],
        r["failed"],
        r["plateau_at_s"],
        r["open_at_plateau"],
        r["max_open"],
        r["duration_s"]
    );
    if !r["rss_before_kib"].is_null() {
        println!(
            "  gateway RSS {} KiB before, {} KiB at the plateau, {} KiB after (peak {} KiB): {} KiB per open stream ({} at the peak)",
            r["rss_before_kib"], r["rss_plateau_kib"], r["rss_after_kib"], r["hwm_kib"], r["growth_per_stream_kib"], r["peak_growth_per_stream_kib"]
        );
        println!(
            "  gateway CPU {} s to the plateau, {} s in all; open files {} before, {} at the plateau; {} threads",
            r["cpu_to_plateau_s"], r["cpu_total_s"], r["fds_before"], r["fds_plateau"], r["threads_plateau"]
        );
    }
    if !r["probe_ms"].is_null() || !r["probe_error"].is_null() {
        println!(
            "  plain invoke at the plateau: {} ms {}",
            r["probe_ms"],
            r["probe_error"].as_str().unwrap_or("")
        );
    }
    println!(
        "  time to head: {}\n  stream: {}",
        r["head_us"], r["stream_us"]
    );
    for e in r["errors"].as_array().into_iter().flatten() {
        println!("  {} x {}", e["count"], e["error"]);
    }
}

// ---- one stream ---------------------------------------------------------------------------

async fn one_stream(
    plan: &Plan,
    shared: &Shared,
    answered: &AtomicBool,
) -> Result<StreamOk, String> {
    let start = Instant::now();
    let mut sock = TcpStream::connect(plan.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.write_all(&plan.stream_request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(READ_BUF);
    let head = read_head(&mut sock, &mut buf).await?;
    let head_ns = start.elapsed().as_nanos() as u64;
    if head.status != 200 {
        let body = read_error_body(&mut sock, &mut buf, &head).await;
        return Err(format!("status {}: {body}", head.status));
    }
    if !head.chunked {
        return Err("a 200 answer without Transfer-Encoding: chunked".into());
    }
    shared.answer(answered);
    let _open = OpenStream::new(shared);

    let mut chunks = Chunked::default();
    let mut frames = Frames::default();
    let mut data = Vec::with_capacity(READ_BUF);
    chunks.feed(&buf, &mut data)?;
    frames.feed(&mut data)?;
    buf.resize(READ_BUF, 0);
    while !chunks.done() {
        let n = sock
            .read(&mut buf)
            .await
            .map_err(|e| format!("read after {} frames: {e}", frames.count))?;
        if n == 0 {
            return Err(format!("connection closed after {} frames", frames.count));
        }
        chunks.feed(&buf[..n], &mut data)?;
        frames.feed(&mut data)?;
    }
    if !data.is_empty() {
        return Err(format!("{} bytes after frame {}", data.len(), frames.count));
    }
    if frames.last_type != "message_stop" {
        return Err(format!(
            "the last of {} events is {:?}, not message_stop",
            frames.count, frames.last_type
        ));
    }
    if plan.expect_events > 0 && frames.count != plan.expect_events {
        return Err(format!(
            "{} events, want {}",
            frames.count, plan.expect_events
        ));
    }
    Ok(StreamOk {
        head_ns,
        total_ns: start.elapsed().as_nanos() as u64,
    })
}

/// A plain `InvokeModel` on a fresh connection, checked; how long it took.
async fn plain_invoke(plan: &Plan) -> Result<Duration, String> {
    let start = Instant::now();
    let mut sock = TcpStream::connect(plan.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.write_all(&plan.invoke_request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(READ_BUF);
    let head = read_head(&mut sock, &mut buf).await?;
    let body = read_error_body(&mut sock, &mut buf, &head).await;
    if head.status != 200 {
        return Err(format!("status {}: {body}", head.status));
    }
    fixtures::check_invoke_answer(body.as_bytes())?;
    Ok(start.elapsed())
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

/// Reads until the end of the response head; `buf` keeps what came after it.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, String> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return parse_head(&text);
        }
        if buf.len() > HEAD_LIMIT {
            return Err("response head too long".into());
        }
        let n = sock
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_head(text: &str) -> Result<Head, String> {
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        }
    }
    Ok(head)
}

/// The body of a non-streamed answer (an error, or a plain invoke), as text; best effort.
async fn read_error_body(sock: &mut TcpStream, buf: &mut Vec<u8>, head: &Head) -> String {
    let want = head.content_length.unwrap_or(HEAD_LIMIT).min(HEAD_LIMIT);
    let mut chunk = [0u8; 1024];
    while buf.len() < want {
        match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf[..buf.len().min(want)]).into_owned()
}

// ---- HTTP/1.1 chunked bodies and event-stream frames, decoded as they arrive ---------------

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// A chunked-transfer decoder that takes the bytes as they come.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
}

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes `input`, appending chunk data to `out`.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Done => return Err("bytes after the last chunk".into()),
                ChunkState::Data(n) => {
                    let take = n.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == n {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(n - take)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    match input.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            self.line.extend_from_slice(&input[..i]);
                            input = &input[i + 1..];
                            self.end_of_line()?;
                        }
                        None => {
                            self.line.extend_from_slice(input);
                            input = &[];
                            if self.line.len() > 1024 {
                                return Err("chunk size line too long".into());
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn end_of_line(&mut self) -> Result<(), String> {
        let line = std::mem::take(&mut self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        self.state = match self.state {
            ChunkState::Size => {
                let text = std::str::from_utf8(line).map_err(|_| "chunk size is not ASCII")?;
                let size = text.split(';').next().unwrap_or_default().trim();
                match usize::from_str_radix(size, 16) {
                    Ok(0) => ChunkState::Trailer,
                    Ok(n) => ChunkState::Data(n),
                    Err(_) => return Err(format!("bad chunk size {text:?}")),
                }
            }
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err("chunk data longer than its size".into()),
            ChunkState::Trailer if line.is_empty() => ChunkState::Done,
            other => other,
        };
        Ok(())
    }
}

/// Checks event-stream frames as they complete and forgets them.
#[derive(Default)]
struct Frames {
    count: usize,
    last_type: String,
}

impl Frames {
    /// Consumes every whole frame at the front of `data`.
    fn feed(&mut self, data: &mut Vec<u8>) -> Result<(), String> {
        let mut used = 0;
        while data.len() - used >= 12 {
            let rest = &data[used..];
            let total = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if total > 1 << 24 {
                return Err(format!("frame {}: length {total}", self.count));
            }
            if rest.len() < total {
                break;
            }
            let at = self.count;
            let messages =
                decode_messages(&rest[..total]).map_err(|e| format!("frame {at}: {e}"))?;
            let m = &messages[0];
            if m.header(":message-type") != Some("event")
                || m.header(":event-type") != Some("chunk")
            {
                return Err(format!(
                    "frame {at}: not a chunk event: {:?} {}",
                    m.headers,
                    String::from_utf8_lossy(&m.payload[..m.payload.len().min(200)])
                ));
            }
            self.last_type = chunk_event_type(m.payload).map_err(|e| format!("frame {at}: {e}"))?;
            self.count += 1;
            used += total;
        }
        data.drain(..used);
        Ok(())
    }
}

/// The `type` of the Anthropic event a `chunk` payload (`{"bytes": "<base64 JSON>"}`) carries.
fn chunk_event_type(payload: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?;
    let b64 = v["bytes"].as_str().ok_or("no \"bytes\" in the payload")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("base64: {e}"))?;
    let event: Value = serde_json::from_slice(&raw).map_err(|e| format!("event: {e}"))?;
    Ok(event["type"].as_str().unwrap_or_default().to_string())
}

// ---- the process -----------------------------------------------------------------------------

/// Raises this process's soft open-file limit to its hard limit; returns the limit.
fn raise_nofile_limit() -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(lim.rlim_cur)
}

fn sample_opt(pid: Option<u32>) -> Result<Option<Sample>, String> {
    pid.map(sample).transpose()
}

/// The gateway's memory, CPU time, threads and open files, from `/proc`.
fn sample(pid: u32) -> Result<Sample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e} (did the gateway exit?)"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may hold spaces): state is the 3rd field of the
    // line, utime the 14th and stime the 15th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(Sample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_s: (ticks(11) + ticks(12)) as f64 / hz,
        threads: field("Threads:"),
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        let mut k = 0;
        while i < body.len() {
            let n = sizes[k % sizes.len()].min(body.len() - i);
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&body[i..i + n]);
            out.extend_from_slice(b"\r\n");
            i += n;
            k += 1;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[test]
    fn decodes_chunks_and_frames_fed_in_awkward_pieces() {
        let events = fixtures::stream_events(3, 10);
        let body: Vec<u8> = fixtures::stream_frames(&events).concat();
        let wire = chunked(&body, &[5, 13, 1, 47, 300]);
        for piece in [1, 2, 7, 64, 4096] {
            let (mut c, mut f, mut data) = (Chunked::default(), Frames::default(), Vec::new());
            for p in wire.chunks(piece) {
                c.feed(p, &mut data).unwrap();
                f.feed(&mut data).unwrap();
            }
            assert!(c.done() && data.is_empty());
            assert_eq!(
                (f.count, f.last_type.as_str()),
                (events.len(), "message_stop")
            );
        }
    }

    #[test]
    fn rejects_corrupt_frames_and_framing() {
        let mut body: Vec<u8> = fixtures::stream_frames(&fixtures::stream_events(1, 4)).concat();
        body[20] ^= 1;
        let mut data = body.clone();
        assert!(Frames::default()
            .feed(&mut data)
            .unwrap_err()
            .contains("CRC"));
        let mut c = Chunked::default();
        assert!(c.feed(b"zz\r\n", &mut Vec::new()).is_err());
        let mut c = Chunked::default();
        assert!(c.feed(b"2\r\nabc\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn parses_heads() {
        let h = parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx: y").unwrap();
        assert!(h.status == 200 && h.chunked && h.content_length.is_none());
        let h = parse_head("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 12").unwrap();
        assert_eq!((h.status, h.content_length), (503, Some(12)));
        assert!(parse_head("garbage").is_err());
    }
}
