//! `mock-upstream`: a fast stand-in for the Amazon Bedrock runtime, for load tests.
//!
//! `POST /model/{id}/invoke` answers a ~2 KiB JSON Messages body with Bedrock's token-count
//! headers; `POST /model/{id}/invoke-with-response-stream` answers a chunked
//! `application/vnd.amazon.eventstream` body of `chunk` frames (message_start, content block,
//! text deltas, message_delta, message_stop with `amazon-bedrock-invocationMetrics`). Every
//! body and frame is encoded once at start-up and handed to hyper as refcounted `Bytes`, so
//! a request costs the mock one body read and a few header clones. It reads the whole request
//! body but checks no signature (the end-to-end tests' mock does that).
//!
//! `GET /inference-profiles` and `GET /foundation-models` answer empty lists, so the mock can
//! also serve as a control endpoint.
//!
//! Pacing mode (`--stream-seconds 60 --events-per-second 1`, what `run-streams.sh` uses) spaces
//! a stream's frames like a model generating tokens: one frame every second for a minute, so
//! that thousands of streams stay open at once. A paced stream costs the mock one timer.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gateway_benches::args::Args;
use gateway_benches::fixtures;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::{sleep_until, Instant, Sleep};

const USAGE: &str = "\
mock-upstream: a fast mock of the Bedrock runtime for load tests

  --listen ADDR            address to listen on (default 127.0.0.1:18080)
  --threads N              tokio worker threads; 1 = current-thread runtime (default 1)
  --invoke-bytes N         size of the InvokeModel JSON answer (default 2048)
  --deltas N               content_block_delta events per stream (default 20)
  --delta-bytes N          text bytes per delta (default 40)
  --frame-interval-us N    time between stream frames, on a fixed schedule; 0 = none (default 0)
  --stream-seconds S       pacing mode: each stream lasts S seconds, one frame every
                           1/R s (S x R + 1 frames; sets --deltas and --frame-interval-us)
  --events-per-second R    with --stream-seconds (default 1)";

/// Everything a request can be answered with, built once.
struct Answers {
    invoke_body: Bytes,
    invoke_output_tokens: HeaderValue,
    stream_frames: Arc<[Bytes]>,
    frame_interval: Option<Duration>,
    input_tokens: HeaderValue,
    request_ids: AtomicU64,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("mock-upstream: {e}\n\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut args = Args::parse(std::env::args().skip(1), &["help"])?;
    if args.switch("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let listen: SocketAddr = args.get("listen", "127.0.0.1:18080".parse().expect("static"))?;
    let threads: usize = args.get("threads", 1)?;
    let invoke_bytes: usize = args.get("invoke-bytes", 2048)?;
    let mut deltas: usize = args.get("deltas", 20)?;
    let delta_bytes: usize = args.get("delta-bytes", 40)?;
    let mut interval_us: u64 = args.get("frame-interval-us", 0)?;
    let stream_seconds: Option<u64> = args.opt("stream-seconds")?;
    let events_per_second: u64 = args.get("events-per-second", 1)?;
    args.finish()?;
    if let Some(seconds) = stream_seconds {
        // The frames are message_start, content_block_start, the deltas and three closing
        // events; the first goes out at once, each of the others 1/R s after the one before.
        let frames = seconds * events_per_second + 1;
        if events_per_second == 0 || frames < 6 {
            return Err("--stream-seconds x --events-per-second must be at least 5".into());
        }
        deltas = (frames - 5) as usize;
        interval_us = 1_000_000 / events_per_second;
    }

    let (invoke_body, output_tokens) = fixtures::invoke_answer(invoke_bytes);
    let frames = fixtures::stream_frames(&fixtures::stream_events(deltas, delta_bytes));
    let stream_len: usize = frames.iter().map(Vec::len).sum();
    let answers = Arc::new(Answers {
        invoke_body: Bytes::from(invoke_body),
        invoke_output_tokens: HeaderValue::from(output_tokens),
        stream_frames: frames.into_iter().map(Bytes::from).collect(),
        frame_interval: (interval_us > 0).then(|| Duration::from_micros(interval_us)),
        input_tokens: HeaderValue::from(fixtures::INPUT_TOKENS),
        request_ids: AtomicU64::new(0),
    });

    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("runtime: {e}"))?;

    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        // run-load.sh waits for this line.
        println!(
            "mock-upstream listening on http://{local} (invoke answer {} B, stream {} frames / {stream_len} B{})",
            answers.invoke_body.len(),
            answers.stream_frames.len(),
            match answers.frame_interval {
                Some(i) => format!(", one every {i:?}"),
                None => String::new(),
            }
        );
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("mock-upstream: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let answers = answers.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, answers.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .header_read_timeout(None)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn answer(
    req: Request<Incoming>,
    answers: Arc<Answers>,
) -> Result<Response<MockBody>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Read the whole body, as Bedrock does before it answers.
    if req.into_body().collect().await.is_err() {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "unreadable body",
        ));
    }
    let id = answers.request_ids.fetch_add(1, Ordering::Relaxed);
    let request_id =
        HeaderValue::try_from(format!("00000000-bench-4000-8000-{id:012x}")).expect("ASCII");

    // Any prefix before `/model/` is accepted, so the mock can also stand in for a gateway.
    let is_model = method == Method::POST && path.contains("/model/");
    let response = if is_model && path.ends_with("/invoke") {
        let body = answers.invoke_body.clone();
        let mut r = Response::new(MockBody::Full(Some(body.clone())));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(header("x-amzn-requestid"), request_id);
        h.insert(
            header("x-amzn-bedrock-input-token-count"),
            answers.input_tokens.clone(),
        );
        h.insert(
            header("x-amzn-bedrock-output-token-count"),
            answers.invoke_output_tokens.clone(),
        );
        h.insert(
            header("x-amzn-bedrock-invocation-latency"),
            HeaderValue::from_static("412"),
        );
        r
    } else if is_model && path.ends_with("/invoke-with-response-stream") {
        let mut r = Response::new(MockBody::Frames {
            frames: answers.stream_frames.clone(),
            next: 0,
            interval: answers.frame_interval,
            started: None,
            sleep: None,
        });
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        h.insert(header("x-amzn-requestid"), request_id);
        h.insert(
            header("x-amzn-bedrock-content-type"),
            HeaderValue::from_static("application/json"),
        );
        r
    } else if method == Method::GET && path == "/inference-profiles" {
        json_ok(r#"{"inferenceProfileSummaries":[]}"#)
    } else if method == Method::GET && path == "/foundation-models" {
        json_ok(r#"{"modelSummaries":[]}"#)
    } else {
        error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "unknown operation",
        )
    };
    Ok(response)
}

fn header(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

fn json_ok(body: &'static str) -> Response<MockBody> {
    let mut r = Response::new(MockBody::Full(Some(Bytes::from_static(body.as_bytes()))));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, kind: &'static str, message: &str) -> Response<MockBody> {
    let body = format!(r#"{{"message":"{message}"}}"#);
    let mut r = Response::new(MockBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(header("x-amzn-errortype"), HeaderValue::from_static(kind));
    r
}

/// A response body: one pre-built buffer, or the pre-encoded event-stream frames, one HTTP
/// chunk each (no size hint, so hyper sends `Transfer-Encoding: chunked`).
enum MockBody {
    Full(Option<Bytes>),
    Frames {
        frames: Arc<[Bytes]>,
        next: usize,
        interval: Option<Duration>,
        /// When the first frame left: frame `n` is due `n` intervals after it (a fixed
        /// schedule, so a busy mock does not stretch a paced stream).
        started: Option<Instant>,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Frames {
                frames,
                next,
                interval,
                started,
                sleep,
            } => {
                if *next >= frames.len() {
                    return Poll::Ready(None);
                }
                if let Some(interval) = interval {
                    let start = *started.get_or_insert_with(Instant::now);
                    if *next > 0 {
                        let due = start + *interval * *next as u32;
                        let timer = sleep.get_or_insert_with(|| Box::pin(sleep_until(due)));
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        *sleep = None;
                    }
                }
                *next += 1;
                Poll::Ready(Some(Ok(Frame::data(frames[*next - 1].clone()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(body) => body.is_none(),
            MockBody::Frames { frames, next, .. } => *next >= frames.len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Frames { .. } => SizeHint::default(),
        }
    }
}
