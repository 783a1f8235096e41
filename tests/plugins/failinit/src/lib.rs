//! Refuses to start: `init` fails, so the host must fail the plugin's load with this message.

use llm_gateway_plugin::{export_plugin, Error, Plugin};

struct FailInit;

impl Plugin for FailInit {
    fn init(_config: &llm_gateway_plugin::serde_json::Value) -> Result<Self, Error> {
        Err(Error::new("bad config: failinit always refuses to start"))
    }
}

export_plugin!(FailInit);
