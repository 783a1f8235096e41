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
            // Writing every byte makes the pages real, not just reserved.
            let step = vec![0xa5u8; 1 << 20];
            hoard.push(std::hint::black_box(step));
        }
    }
}

export_plugin!(MemBomb);
