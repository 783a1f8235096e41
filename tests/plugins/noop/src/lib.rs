//! The trivial plugin: continues every request and does nothing else (the bench's baseline).

use llm_gateway_plugin::{export_plugin, Error, Plugin};

struct Noop;

impl Plugin for Noop {
    fn init(_config: &llm_gateway_plugin::serde_json::Value) -> Result<Self, Error> {
        Ok(Noop)
    }
}

export_plugin!(Noop);
