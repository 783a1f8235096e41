//! Denies requests that carry a configured header (say, a client that must be cut off), or
//! that lack a required one.
//!
//! ```toml
//! [[plugins]]
//! name = "deny-by-header"
//! path = "target/plugins/deny_by_header.wasm"
//! on_error = "deny"
//! [plugins.config]
//! deny_if_present = "x-legacy-client"
//! require = "x-team"
//! ```

use llm_gateway_plugin::serde_json::Value;
use llm_gateway_plugin::{export_plugin, log, Decision, Error, Plugin, Request};

struct DenyByHeader {
    deny_if_present: Option<String>,
    require: Option<String>,
}

fn header_name(config: &Value, key: &str) -> Result<Option<String>, Error> {
    match config.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.to_ascii_lowercase())),
        Some(_) => Err(Error::new(format!(
            "bad config: `{key}` must be a header name"
        ))),
    }
}

impl Plugin for DenyByHeader {
    fn init(config: &Value) -> Result<Self, Error> {
        Ok(DenyByHeader {
            deny_if_present: header_name(config, "deny_if_present")?,
            require: header_name(config, "require")?,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Decision {
        if let Some(name) = &self.deny_if_present {
            if req.header(name).is_some() {
                log::info(&format!("denied {}: {name} present", req.request_id()));
                return Decision::forbidden(format!("requests with `{name}` are not accepted"));
            }
        }
        if let Some(name) = &self.require {
            if req.header(name).is_none() {
                return Decision::deny(400, format!("the `{name}` header is required"));
            }
        }
        Decision::Continue
    }
}

export_plugin!(DenyByHeader);

#[cfg(test)]
mod tests {
    use llm_gateway_plugin::serde_json::json;
    use llm_gateway_plugin::testing::{MockRequest, TestHost};
    use llm_gateway_plugin::Decision;

    use super::DenyByHeader;

    fn host() -> TestHost<DenyByHeader> {
        TestHost::new(json!({"deny_if_present": "x-legacy-client", "require": "x-team"})).unwrap()
    }

    #[test]
    fn a_present_forbidden_header_is_denied_with_403() {
        let ex = host().on_request(
            MockRequest::bedrock_invoke("m")
                .header("x-team", "a")
                .header("X-Legacy-Client", "1"),
        );
        assert_eq!(ex.denial().unwrap().status, 403);
    }

    #[test]
    fn a_missing_required_header_is_denied_with_400() {
        let ex = host().on_request(MockRequest::bedrock_invoke("m"));
        assert_eq!(ex.denial().unwrap().status, 400);
    }

    #[test]
    fn everything_else_continues() {
        let ex = host().on_request(MockRequest::bedrock_invoke("m").header("x-team", "a"));
        assert_eq!(ex.decision(), &Decision::Continue);
    }

    #[test]
    fn a_bad_config_fails_the_load() {
        assert!(TestHost::<DenyByHeader>::new(json!({"require": 3})).is_err());
    }
}
