//! A plugin built against `llm-gateway:plugin@2.0.0` (a copy of the contract with only the
//! version changed), without the SDK: the host accepts 1.x only and must refuse it clearly.

wit_bindgen::generate!({
    world: "plugin",
    path: "wit",
});

use exports::llm_gateway::plugin::handler::Guest;
use llm_gateway::plugin::types::{Completion, Decision};

struct V2;

impl Guest for V2 {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_request() -> Decision {
        Decision::Continue
    }

    fn on_response() {}

    fn on_complete(_completion: Completion) {}
}

export!(V2);
