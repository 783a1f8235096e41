//! Allocates and touches memory in 1 MiB steps in `on_request` until the host's memory limit
//! makes it trap.

use llm_gateway_plugin::{export_plugin, Decision, Error, Plugin, Request};

struct MemBomb;

impl Plugin for MemBomb {
    fn init(_config: &llm_gateway_plugin::serde_json::Value) -> Result<Self, Error> {
        Ok(MemBomb)
    }

    fn on_request(&mut self, _req: &mut Request) -> Decision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // One write per 4 KiB makes the pages real without spending the CPU budget on
            // memset: the memory limit, not the CPU deadline, must be what stops it.
            let mut block = vec![0u8; 1 << 20];
            for i in (0..block.len()).step_by(4096) {
                block[i] = 1;
            }
            hoard.push(std::hint::black_box(block));
        }
    }
}

export_plugin!(MemBomb);
