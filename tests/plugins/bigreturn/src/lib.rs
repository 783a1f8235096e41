//! Denies with a 1 MiB message, over the host's 64 KiB limit on returned strings: the host
//! must treat it as a plugin error, not pass it to the client.

use llm_gateway_plugin::{export_plugin, Decision, Error, Plugin, Request};

struct BigReturn;

impl Plugin for BigReturn {
    fn init(_config: &llm_gateway_plugin::serde_json::Value) -> Result<Self, Error> {
        Ok(BigReturn)
    }

    fn on_request(&mut self, _req: &mut Request) -> Decision {
        Decision::deny(403, "x".repeat(1 << 20))
    }
}

export_plugin!(BigReturn);
