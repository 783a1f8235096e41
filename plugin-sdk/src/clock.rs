//! Time, from the host (a plugin has no clock of its own: WASI's is not linked).

use crate::host;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    host::now_ms()
}
