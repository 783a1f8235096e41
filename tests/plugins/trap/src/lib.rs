//! Panics in `on_request`, which traps the instance: the host must apply `on_error` and
//! discard the instance.

use llm_gateway_plugin::{export_plugin, Decision, Error, Plugin, Request};

struct Trap;

impl Plugin for Trap {
    fn init(_config: &llm_gateway_plugin::serde_json::Value) -> Result<Self, Error> {
        Ok(Trap)
    }

    fn on_request(&mut self, _req: &mut Request) -> Decision {
        panic!("the trap test plugin panics in on_request by design");
    }
}

export_plugin!(Trap);
