//! The `match` table of a rule:
//!
//! ```toml
//! match = { principal = "alice", team = ["research", "ml-*"], model = "*opus*", operation = "*stream" }
//! ```
//!
//! Each key is a glob (see [`crate::glob`]) or a list of globs (any may match). Every key
//! given must match (AND across keys, OR within a list); an absent or empty `match` matches
//! every request. A key given for a value the request does not have (no `team` because the
//! principal has none, no `model` on a model listing) does not match: `model = "*"` matches
//! every request that names a model.

use llm_gateway_plugin::serde_json::Value;
use llm_gateway_plugin::{Error, Request};

use crate::config;
use crate::glob::Glob;

/// What a request is matched on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// The authenticated principal.
    pub principal: Option<&'a str>,
    /// The principal's team.
    pub team: Option<&'a str>,
    /// The model ID.
    pub model: Option<&'a str>,
    /// The operation name (`invoke`, `stream`, `converse`, `converse-stream`, …).
    pub operation: &'a str,
}

/// The owned values of a [`Subject`], read from a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// The authenticated principal.
    pub principal: Option<String>,
    /// The principal's team.
    pub team: Option<String>,
    /// The model ID, as it is at this plugin.
    pub model: Option<String>,
    /// The operation name.
    pub operation: &'static str,
}

impl RequestFacts {
    /// Reads the facts from the request (four host calls).
    pub fn read(req: &Request) -> Self {
        Self {
            principal: req.principal(),
            team: req.team(),
            model: req.model(),
            operation: req.operation().as_str(),
        }
    }

    /// The facts as a [`Subject`].
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            principal: self.principal.as_deref(),
            team: self.team.as_deref(),
            model: self.model.as_deref(),
            operation: self.operation,
        }
    }
}

/// A parsed `match` table.
#[derive(Debug, Clone, Default)]
pub struct Match {
    principal: Option<Vec<Glob>>,
    team: Option<Vec<Glob>>,
    model: Option<Vec<Glob>>,
    operation: Option<Vec<Glob>>,
}

const KEYS: &[&str] = &["principal", "team", "model", "operation"];

fn any(globs: &Option<Vec<Glob>>, value: Option<&str>) -> bool {
    match globs {
        None => true,
        Some(globs) => value.is_some_and(|v| globs.iter().any(|g| g.matches(v))),
    }
}

impl Match {
    /// Parses a `match` table (`what` names it in errors, e.g. `rules[2].match`).
    pub fn parse(value: &Value, what: &str) -> Result<Self, Error> {
        let map = config::object(value, what)?;
        config::only_keys(map, KEYS, what)?;
        let globs = |key: &str| -> Result<Option<Vec<Glob>>, Error> {
            Ok(config::opt_strings(map, key, what)?
                .map(|list| list.iter().map(|p| Glob::new(p)).collect()))
        };
        Ok(Self {
            principal: globs("principal")?,
            team: globs("team")?,
            model: globs("model")?,
            operation: globs("operation")?,
        })
    }

    /// Whether the request matches.
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        any(&self.principal, s.principal)
            && any(&self.team, s.team)
            && any(&self.model, s.model)
            && any(&self.operation, Some(s.operation))
    }

    /// Whether the table is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        self.principal.is_none()
            && self.team.is_none()
            && self.model.is_none()
            && self.operation.is_none()
    }

    /// A short, stable description, e.g. `team=research,model=*opus*` (`all` when empty):
    /// used in messages and as a default rule name.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("principal", &self.principal),
            ("team", &self.team),
            ("model", &self.model),
            ("operation", &self.operation),
        ]
        .iter()
        .filter_map(|(key, globs)| {
            globs.as_ref().map(|g| {
                let list: Vec<&str> = g.iter().map(Glob::as_str).collect();
                format!("{key}={}", list.join("|"))
            })
        })
        .collect();
        if parts.is_empty() {
            "all".to_string()
        } else {
            parts.join(",")
        }
    }
}

#[cfg(test)]
mod tests {
    use llm_gateway_plugin::serde_json::json;

    use super::*;

    fn subject<'a>(p: &'a str, t: Option<&'a str>, m: Option<&'a str>) -> Subject<'a> {
        Subject {
            principal: Some(p),
            team: t,
            model: m,
            operation: "invoke",
        }
    }

    #[test]
    fn keys_are_anded_lists_are_ored() {
        let m = Match::parse(
            &json!({"team": ["research", "ml-*"], "model": "*opus*"}),
            "m",
        )
        .unwrap();
        assert!(m.matches(&subject("a", Some("ml-vision"), Some("claude-opus-4"))));
        assert!(!m.matches(&subject("a", Some("ml-vision"), Some("claude-sonnet-4"))));
        assert!(!m.matches(&subject("a", None, Some("claude-opus-4"))));
        assert_eq!(m.describe(), "team=research|ml-*,model=*opus*");
        let all = Match::parse(&json!({}), "m").unwrap();
        assert!(all.is_empty() && all.matches(&subject("a", None, None)));
        assert_eq!(all.describe(), "all");
        let any_model = Match::parse(&json!({"model": "*"}), "m").unwrap();
        assert!(!any_model.matches(&subject("a", None, None)));
        assert!(Match::parse(&json!({"teem": "x"}), "m").is_err());
        assert!(Match::parse(&json!({"team": 3}), "m").is_err());
    }
}
