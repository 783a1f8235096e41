//! A plugin built against `llm-gateway:plugin@1.0.0` (the contract before `request-state`),
//! without the SDK. 1.0 promised one instance for all phases of a request, so this plugin
//! remembers the request ID from `on-request` in its own memory and audits it in
//! `on-complete`: `{"plugin":"v1_0","request_id":<from the host>,"remembered":<from memory>}`.
//! The host must keep loading it and keep that promise.

wit_bindgen::generate!({
    world: "plugin",
    path: "wit",
});

use std::cell::RefCell;

use exports::llm_gateway::plugin::handler::Guest;
use llm_gateway::plugin::types::{Completion, Decision};
use llm_gateway::plugin::{audit, request};

thread_local! {
    static REMEMBERED: RefCell<Option<String>> = const { RefCell::new(None) };
}

struct V10;

impl Guest for V10 {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_request() -> Decision {
        REMEMBERED.with(|r| *r.borrow_mut() = Some(request::request_id()));
        Decision::Continue
    }

    fn on_response() {}

    fn on_complete(_completion: Completion) {
        let remembered = REMEMBERED.with(|r| r.borrow_mut().take()).unwrap_or_default();
        let record = format!(
            r#"{{"plugin":"v1_0","request_id":"{}","remembered":"{}"}}"#,
            request::request_id(),
            remembered
        );
        let _ = audit::emit(&record);
    }
}

export!(V10);
