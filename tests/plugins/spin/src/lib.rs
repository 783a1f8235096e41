//! Spins forever in `on_request`: the host's CPU deadline (epoch interruption) must stop it.

use llm_gateway_plugin::{export_plugin, Decision, Error, Plugin, Request};

struct Spin;

impl Plugin for Spin {
    fn init(_config: &llm_gateway_plugin::serde_json::Value) -> Result<Self, Error> {
        Ok(Spin)
    }

    fn on_request(&mut self, _req: &mut Request) -> Decision {
        // `black_box` keeps the optimizer from proving the loop useless.
        let mut turns: u64 = 0;
        loop {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
}

export_plugin!(Spin);
