//! The smallest useful plugin: tags every answer with a response header whose value comes
//! from the config.
//!
//! ```toml
//! [[plugins]]
//! name = "hello"
//! path = "target/plugins/hello.wasm"
//! [plugins.config]
//! greeting = "hello from the gateway"
//! ```

use llm_gateway_plugin::serde_json::Value;
use llm_gateway_plugin::{export_plugin, Error, Plugin, Response};

struct Hello {
    greeting: String,
}

impl Plugin for Hello {
    fn init(config: &Value) -> Result<Self, Error> {
        let greeting = config
            .get("greeting")
            .and_then(Value::as_str)
            .unwrap_or("hello");
        Ok(Hello {
            greeting: greeting.to_string(),
        })
    }

    fn on_response(&mut self, resp: &mut Response) {
        // A failure here only means the header is not sent; never fail the request for it.
        let _ = resp.set_header("x-hello", &self.greeting);
    }
}

export_plugin!(Hello);

#[cfg(test)]
mod tests {
    use llm_gateway_plugin::serde_json::json;
    use llm_gateway_plugin::testing::{MockRequest, MockResponse, TestHost};
    use llm_gateway_plugin::{Completion, Outcome};

    use super::Hello;

    #[test]
    fn every_answer_gets_the_configured_greeting() {
        let mut host = TestHost::<Hello>::new(json!({"greeting": "hi"})).unwrap();
        let ex = host.run(
            MockRequest::bedrock_invoke("anthropic.claude-3-haiku"),
            MockResponse::new(200),
            &Completion::new(200, Outcome::Ok),
        );
        assert_eq!(ex.response_header("x-hello"), Some("hi"));
    }
}
