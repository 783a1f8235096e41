//! The epoch ticker: the clock that lets a store's epoch callback interrupt a plugin that ran
//! past its CPU budget. It advances every engine's epoch every [`EPOCH_TICK`] while plugins
//! run, and parks when none has run for a while.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks without a plugin call before the ticker parks.
const IDLE_TICKS_BEFORE_PARK: u32 = 100;

/// The epoch ticker's shared state. The ticker advances the epoch every [`EPOCH_TICK`] while
/// plugins run and parks once none has run for [`IDLE_TICKS_BEFORE_PARK`] ticks, so a gateway
/// without plugin traffic is not woken a thousand times a second; the next call unparks it.
#[derive(Debug, Default)]
pub struct Ticker {
    pub(super) stop: AtomicBool,
    parked: AtomicBool,
    calls: std::sync::atomic::AtomicU64,
    pub(super) thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Ticker {
    pub(super) fn run(&self, engines: Vec<wasmtime::EngineWeak>) {
        let mut idle = 0;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(EPOCH_TICK);
            let mut alive = false;
            for engine in engines.iter().filter_map(wasmtime::EngineWeak::upgrade) {
                engine.increment_epoch();
                alive = true;
            }
            if !alive {
                break;
            }
            if self.calls.swap(0, Ordering::SeqCst) > 0 {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle >= IDLE_TICKS_BEFORE_PARK {
                self.parked.store(true, Ordering::SeqCst);
                // A call that started before `parked` was set is seen here; one that starts
                // after it unparks this thread (an unpark before the park is not lost).
                if self.calls.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst) {
                    std::thread::park();
                }
                self.parked.store(false, Ordering::SeqCst);
                idle = 0;
            }
        }
    }

    /// Tells the ticker a plugin call is starting (wakes it if it was parked).
    pub fn call_started(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}
