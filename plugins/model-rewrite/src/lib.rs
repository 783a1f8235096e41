//! `model-rewrite`: rewrites or refuses the model a request asks for, by rules on the model ID
//! (as the client sent it), the principal, the team and the operation. The first matching
//! rule wins:
//!
//! - `rewrite_to = "<model>"`: the request goes upstream with that model ID (pin a team to an
//!   application inference profile ARN, alias short names, move a team to a cheaper model);
//! - `deny = true`: refused with 403 (`status` to change it) in the client's protocol, with
//!   `message` or a default naming the model;
//! - neither: the request goes on unchanged and no later rule is tried (an exception placed
//!   before broader rules).
//!
//! See `plugins/README.md`.

use llm_gateway_plugin::serde_json::Value;
use llm_gateway_plugin::{export_plugin, log, metrics, Decision, Error, Plugin, Request};
use plugin_common::config;
use plugin_common::matcher::{Match, RequestFacts};

#[derive(Debug, Clone)]
enum Action {
    Rewrite(String),
    Deny {
        status: u16,
        message: Option<String>,
    },
    Keep,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    matcher: Match,
    action: Action,
}

/// The plugin.
#[derive(Debug)]
pub struct ModelRewrite {
    rules: Vec<Rule>,
}

fn valid_model_id(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= 2048
        && !model.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn parse_rule(i: usize, value: &Value) -> Result<Rule, Error> {
    let what = format!("rules[{i}]");
    let map = value
        .as_object()
        .ok_or_else(|| Error::new(format!("bad config: `{what}` must be a table")))?;
    config::only_keys(
        map,
        &["name", "match", "rewrite_to", "deny", "message", "status"],
        &what,
    )?;
    let matcher = Match::parse(
        map.get("match").unwrap_or(&Value::Null),
        &format!("{what}.match"),
    )?;
    let rewrite_to = config::opt_str(map, "rewrite_to", &what)?;
    let deny = config::opt_bool(map, "deny", &what)?.unwrap_or(false);
    let message = config::opt_str(map, "message", &what)?;
    let status = config::opt_u64(map, "status", &what)?;
    let action = match (rewrite_to, deny) {
        (Some(_), true) => {
            return Err(Error::new(format!(
                "bad config: `{what}` sets both `rewrite_to` and `deny`: a rule rewrites or denies, not both"
            )))
        }
        (Some(model), false) => {
            if !valid_model_id(&model) {
                return Err(Error::new(format!(
                    "bad config: `{what}.rewrite_to` must be a model ID (1 to 2048 characters, no spaces)"
                )));
            }
            if message.is_some() || status.is_some() {
                return Err(Error::new(format!(
                    "bad config: `{what}`: `message` and `status` go with `deny = true`"
                )));
            }
            Action::Rewrite(model)
        }
        (None, true) => {
            let status = status.unwrap_or(403);
            if !(400..=599).contains(&status) {
                return Err(Error::new(format!(
                    "bad config: `{what}.status` must be 400 to 599"
                )));
            }
            Action::Deny {
                status: status as u16,
                message,
            }
        }
        (None, false) => {
            if message.is_some() || status.is_some() {
                return Err(Error::new(format!(
                    "bad config: `{what}`: `message` and `status` go with `deny = true`"
                )));
            }
            Action::Keep
        }
    };
    let name = config::opt_str(map, "name", &what)?.unwrap_or_else(|| format!("{}", i + 1));
    Ok(Rule {
        name,
        matcher,
        action,
    })
}

impl Plugin for ModelRewrite {
    fn init(config: &Value) -> Result<Self, Error> {
        let map = config::object(config, "plugins.config")?;
        config::only_keys(map, &["rules"], "plugins.config")?;
        let rules = match map.get("rules") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_rule(i, v))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("bad config: `rules` must be a list of tables".into()),
        };
        Ok(ModelRewrite { rules })
    }

    fn on_request(&mut self, req: &mut Request) -> Decision {
        if self.rules.is_empty() {
            return Decision::Continue;
        }
        let facts = RequestFacts::read(req);
        let subject = facts.subject();
        let Some(rule) = self.rules.iter().find(|r| r.matcher.matches(&subject)) else {
            return Decision::Continue;
        };
        let model = facts.model.as_deref().unwrap_or("-");
        let team = facts.team.as_deref().unwrap_or("none");
        match &rule.action {
            Action::Keep => Decision::Continue,
            Action::Rewrite(to) => {
                // Nothing to rewrite (model listing, control plane), or already that model.
                if facts.model.is_none() || facts.model.as_deref() == Some(to.as_str()) {
                    return Decision::Continue;
                }
                match req.set_model(to) {
                    Ok(()) => {
                        let _ = req.set_metadata("model_rewrite_rule", &rule.name);
                        let _ = metrics::counter_add(
                            "rewritten_total",
                            &[("rule", &rule.name), ("team", team)],
                            1,
                        );
                        log::debug(&format!(
                            "rule {}: {model} -> {to} (request {})",
                            rule.name,
                            req.request_id()
                        ));
                    }
                    Err(e) => log::warn(&format!(
                        "rule {}: could not rewrite {model} to {to}: {e}",
                        rule.name
                    )),
                }
                Decision::Continue
            }
            Action::Deny { status, message } => {
                let _ = metrics::counter_add(
                    "denied_total",
                    &[("rule", &rule.name), ("team", team)],
                    1,
                );
                let message = message.clone().unwrap_or_else(|| match &facts.model {
                    Some(m) => {
                        format!("model `{m}` is not allowed for you by the gateway's policy")
                    }
                    None => "this request is not allowed for you by the gateway's policy".into(),
                });
                Decision::deny(*status, message)
            }
        }
    }
}

export_plugin!(ModelRewrite);

#[cfg(test)]
mod tests {
    use llm_gateway_plugin::serde_json::json;
    use llm_gateway_plugin::testing::{MockRequest, TestHost};
    use llm_gateway_plugin::Operation;

    use super::*;

    const PROFILE: &str =
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/research";

    fn host() -> TestHost<ModelRewrite> {
        TestHost::new(json!({"rules": [
            {"match": {"model": "*opus*", "team": "interns"}, "rewrite_to": "us.anthropic.claude-sonnet-5-5"},
            {"match": {"model": "*", "team": "contractors"}, "deny": true},
            {"match": {"principal": "ceo"}},
            {"match": {"model": "*opus*", "principal": ["temp-*", "guest"]}, "deny": true,
             "message": "Opus is reserved for staff; use Sonnet"},
            {"match": {"team": "research"}, "rewrite_to": PROFILE},
            {"match": {"model": "sonnet"}, "rewrite_to": "us.anthropic.claude-sonnet-4-5-20250929-v1:0"},
            {"match": {"model": "*"}, "deny": true, "status": 404, "name": "catch-all",
             "message": "no such model"},
        ]}))
        .unwrap()
    }

    fn req(model: &str, principal: &str, team: Option<&str>) -> MockRequest {
        MockRequest::bedrock_invoke(model).identity(principal, team)
    }

    #[test]
    fn the_first_matching_rule_rewrites() {
        let mut h = host();
        let ex = h.on_request(req("us.anthropic.claude-opus-4-5", "ivan", Some("interns")));
        assert!(!ex.is_denied());
        assert_eq!(ex.model(), Some("us.anthropic.claude-sonnet-5-5"));
        assert!(ex.model_rewritten());
        assert_eq!(ex.metadata("model_rewrite_rule"), Some("1"));
        assert_eq!(
            h.counter("rewritten_total", &[("rule", "1"), ("team", "interns")]),
            1
        );
        // An intern asking for Sonnet skips rule 1, matches nothing else that applies until
        // the catch-all.
        let sonnet = h.on_request(req("sonnet", "ivan", Some("interns")));
        assert_eq!(
            sonnet.model(),
            Some("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
        );
    }

    #[test]
    fn glob_on_the_model_is_case_insensitive_and_team_pins_a_profile() {
        let mut h = host();
        let ex = h.on_request(req("US.ANTHROPIC.CLAUDE-OPUS-4-5", "ivan", Some("interns")));
        assert_eq!(ex.model(), Some("us.anthropic.claude-sonnet-5-5"));
        let research = h.on_request(req(
            "us.anthropic.claude-haiku-4-5",
            "rita",
            Some("research"),
        ));
        assert_eq!(research.model(), Some(PROFILE));
    }

    #[test]
    fn deny_rules_refuse_with_403_and_a_message() {
        let mut h = host();
        let ex = h.on_request(req(
            "us.anthropic.claude-haiku-4-5",
            "carl",
            Some("contractors"),
        ));
        let d = ex.denial().unwrap();
        assert_eq!(d.status, 403);
        assert!(d.message.contains("us.anthropic.claude-haiku-4-5"));
        assert_eq!(
            h.counter("denied_total", &[("rule", "2"), ("team", "contractors")]),
            1
        );
        let temp = h.on_request(req("claude-opus-4", "temp-42", None));
        assert_eq!(
            temp.denial().unwrap().message,
            "Opus is reserved for staff; use Sonnet"
        );
        let other = h.on_request(req("mystery", "zed", None));
        assert_eq!(other.denial().unwrap().status, 404);
        assert_eq!(
            h.counter("denied_total", &[("rule", "catch-all"), ("team", "none")]),
            1
        );
    }

    #[test]
    fn a_rule_without_action_is_an_exception() {
        let mut h = host();
        // ceo is matched by rule 3 before the catch-all deny.
        let ex = h.on_request(req("mystery", "ceo", Some("contractors")).model("x"));
        assert!(ex.is_denied(), "rule 2 comes first for contractors");
        let ex = h.on_request(req("mystery", "ceo", Some("board")));
        assert!(!ex.is_denied());
        assert!(!ex.model_rewritten());
    }

    #[test]
    fn requests_without_a_model_do_not_match_model_globs() {
        let mut h = host();
        let ex = h.on_request(
            MockRequest::new("GET", "/v1/models")
                .operation(Operation::ListModels)
                .identity("carl", Some("research")),
        );
        // rule 5 (team research, no model) matches, but there is no model to rewrite.
        assert!(!ex.is_denied());
        assert!(!ex.model_rewritten());
        assert!(h.logs().is_empty());
        let contractors = h.on_request(
            MockRequest::new("GET", "/v1/models")
                .operation(Operation::ListModels)
                .identity("carl", Some("contractors")),
        );
        assert!(!contractors.is_denied());
    }

    #[test]
    fn no_rules_no_change_and_bad_configs_fail() {
        let mut h = TestHost::<ModelRewrite>::new(json!({})).unwrap();
        assert!(!h.on_request(req("m", "p", None)).model_rewritten());
        for bad in [
            json!({"rules": [{"match": {"model": "*"}, "rewrite_to": "x", "deny": true}]}),
            json!({"rules": [{"match": {"model": "*"}, "rewrite_to": "has space"}]}),
            json!({"rules": [{"match": {"modle": "*"}, "deny": true}]}),
            json!({"rules": [{"deny": true, "status": 200}]}),
            json!({"rules": [{"rewrite_to": "x", "message": "m"}]}),
            json!({"rules": {"a": 1}}),
            json!({"rulez": []}),
        ] {
            assert!(TestHost::<ModelRewrite>::new(bad.clone()).is_err(), "{bad}");
        }
    }
}
