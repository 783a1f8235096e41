//! The process's lifecycle on the data plane: client connections counted and capped, and a
//! stop that drains instead of cutting.
//!
//! - [`Limited`] wraps the data plane's Pingora app: every accepted connection is counted
//!   while it is open, and one beyond `server.max_connections` is closed at once.
//! - [`Lifecycle`] is what the rest of the gateway reads: whether the gateway is draining
//!   (`/readyz` answers 503 then), and the signal that ends requests still open when the grace
//!   period is over ([`Lifecycle::stopped`]).
//! - [`drain`] runs the stop: once Pingora has closed the listeners it waits until no client
//!   connection is open (streams included) or `server.grace_period` has passed since the
//!   signal; then it ends what is still open (each request still gets its log line, audit
//!   record and settlement), waits for the plugins' `on-complete` runs, flushes the audit sink
//!   and exits the process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::{ExecutionPhase, ShutdownWatch};

/// How often the drain looks at what is still open.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long requests ended at the deadline get to write their log lines and records.
const CUT_SETTLE: Duration = Duration::from_secs(3);

/// Shared lifecycle state of one gateway process.
#[derive(Debug)]
pub struct Lifecycle {
    draining: AtomicBool,
    connections: AtomicUsize,
    max_connections: usize,
    refused: AtomicUsize,
    stopped: tokio::sync::watch::Sender<bool>,
    /// The data-plane listener's address, once known, and whether it has been seen accepting.
    data_address: std::sync::OnceLock<std::net::SocketAddr>,
    listening: AtomicBool,
}

impl Lifecycle {
    /// A running gateway that accepts up to `max_connections` client connections at once.
    pub fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            max_connections,
            refused: AtomicUsize::new(0),
            stopped: tokio::sync::watch::channel(false).0,
            data_address: std::sync::OnceLock::new(),
            listening: AtomicBool::new(false),
        })
    }

    /// Where the data plane listens (an unspecified address is reached on loopback).
    pub fn set_data_address(&self, mut address: std::net::SocketAddr) {
        if address.ip().is_unspecified() {
            address.set_ip(if address.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = self.data_address.set(address);
    }

    /// Whether the data-plane listener accepts connections. The admin listener starts first, so
    /// until a connection to the data address has gone through once, readiness tries one.
    pub async fn data_plane_listening(&self) -> bool {
        if self.listening.load(Ordering::Acquire) {
            return true;
        }
        let Some(address) = self.data_address.get() else {
            return true;
        };
        let connect = tokio::net::TcpStream::connect(*address);
        let up = matches!(
            tokio::time::timeout(Duration::from_millis(500), connect).await,
            Ok(Ok(_))
        );
        if up {
            self.listening.store(true, Ordering::Release);
        }
        up
    }

    /// Whether a stop has begun (the gateway is no longer ready for new traffic).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Connections closed at accept because the cap was reached, since start.
    pub fn refused_connections(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Marks the start of a stop: readiness turns false at once.
    pub fn begin_drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            tracing::info!(
                connections = self.connections(),
                "draining: not ready for new traffic; requests in flight run to their end"
            );
        }
    }

    /// Resolves once the grace period is over and requests still open must end. A request
    /// waits on it beside its upstream; it costs nothing until then.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopped.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    /// Ends what is still open (see [`Lifecycle::stopped`]).
    fn cut(&self) {
        self.stopped.send_replace(true);
    }

    fn open(self: &Arc<Self>) -> Option<ConnectionGuard> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        let guard = ConnectionGuard(Arc::clone(self));
        if before >= self.max_connections {
            if self
                .refused
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1000)
            {
                tracing::warn!(
                    max_connections = self.max_connections,
                    "client connection refused: server.max_connections are open"
                );
            }
            return None;
        }
        Some(guard)
    }
}

/// One open client connection; counted until dropped.
struct ConnectionGuard(Arc<Lifecycle>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A Pingora app whose connections are counted and capped.
pub struct Limited<A> {
    inner: Arc<A>,
    lifecycle: Arc<Lifecycle>,
}

impl<A> Limited<A> {
    /// `inner`, counting its connections in `lifecycle`.
    pub fn new(inner: A, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            inner: Arc::new(inner),
            lifecycle,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Over the cap the connection is dropped (closed) before a byte is read.
        let _guard = self.lifecycle.open()?;
        // An HTTP app serves every request of the connection before it returns.
        let mut next = self.inner.process_new(session, shutdown).await;
        while let Some(session) = next {
            next = self.inner.process_new(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// What the drain needs to finish the process cleanly.
pub struct DrainPlan {
    /// The lifecycle whose connections are waited for.
    pub lifecycle: Arc<Lifecycle>,
    /// When the stop signal came.
    pub signalled: Instant,
    /// `server.grace_period`.
    pub grace: Duration,
    /// Pingora's execution phases, to know when its listeners are closed.
    pub phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    /// Runs after the last request ended: waits for `on-complete` runs, flushes the audit sink.
    pub finish: Box<dyn FnOnce(Duration) + Send>,
}

/// Runs a stop to its end on a thread of its own, then exits the process (see the module
/// docs). Pingora's own wait is only the backstop.
pub fn drain(plan: DrainPlan) {
    let spawned = std::thread::Builder::new()
        .name("gw-drain".into())
        .spawn(move || run_drain(plan));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the drain thread; requests in flight are cut at the grace period's end");
    }
}

fn run_drain(mut plan: DrainPlan) {
    let deadline = plan.signalled + plan.grace;
    // Until Pingora has closed the listeners (after handing them over, in an upgrade), new
    // connections may still arrive.
    loop {
        match plan.phases.blocking_recv() {
            Ok(
                ExecutionPhase::ShutdownStarted
                | ExecutionPhase::ShutdownGracePeriod
                | ExecutionPhase::ShutdownRuntimes
                | ExecutionPhase::Terminated,
            ) => break,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
    let lifecycle = &plan.lifecycle;
    while lifecycle.connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(DRAIN_POLL);
    }
    let open = lifecycle.connections();
    if open > 0 {
        tracing::warn!(
            open,
            grace_period = %humantime::format_duration(plan.grace),
            "grace period over: ending the requests still open"
        );
        lifecycle.cut();
        let settle = Instant::now() + CUT_SETTLE;
        while lifecycle.connections() > 0 && Instant::now() < settle {
            std::thread::sleep(DRAIN_POLL);
        }
    } else {
        tracing::info!(
            drained_in_ms = plan.signalled.elapsed().as_millis() as u64,
            "every request in flight has finished"
        );
    }
    (plan.finish)(CUT_SETTLE);
    tracing::info!("gateway stopped");
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_over_the_cap_are_refused_and_counted_until_closed() {
        let l = Lifecycle::new(2);
        let a = l.open().expect("first");
        let b = l.open().expect("second");
        assert!(l.open().is_none(), "the third is over the cap");
        assert_eq!(l.connections(), 2, "a refused connection is not counted");
        assert_eq!(l.refused_connections(), 1);
        drop(a);
        let c = l.open().expect("room again");
        drop((b, c));
        assert_eq!(l.connections(), 0);
    }

    #[tokio::test]
    async fn stopped_resolves_once_cut() {
        let l = Lifecycle::new(1);
        let stopped = l.stopped();
        assert!(!l.draining());
        l.begin_drain();
        assert!(l.draining());
        let waiter = tokio::spawn(stopped);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        l.cut();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resolves")
            .expect("no panic");
    }
}
