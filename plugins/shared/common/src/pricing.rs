//! Price tables: what a request cost.
//!
//! ```toml
//! [plugins.config.prices]                 # USD per million tokens, by model glob
//! "*opus*"   = { input = 15.0, output = 75.0, cache_read = 1.5, cache_write = 18.75 }
//! "*sonnet*" = { input = 3.0, output = 15.0 }
//! [plugins.config.default_price]          # optional: for models no glob matches
//! input = 3.0
//! output = 15.0
//! ```
//!
//! `cache_read` defaults to 0.1 × `input` and `cache_write` to 1.25 × `input` (Anthropic's
//! prompt-caching multipliers for 5-minute cache writes) when not given. When several globs
//! match a model, the most specific wins (most non-wildcard characters; ties by the pattern's
//! alphabetical order), because a TOML table's key order is not kept. A model no glob matches
//! costs `default_price`, or nothing when there is none (logged once per model and instance
//! as a warning).
//!
//! USD per million tokens is micro-USD per token, so costs are kept in whole micro-USD.

use std::collections::HashSet;

use llm_gateway_plugin::serde_json::Value;
use llm_gateway_plugin::{log, Error, Usage};

use crate::config;
use crate::glob::Glob;

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Plain input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Tokens read from the prompt cache.
    pub cache_read: f64,
    /// Tokens written to the prompt cache.
    pub cache_write: f64,
}

impl Price {
    /// Parses `{ input, output, cache_read?, cache_write? }`.
    pub fn parse(value: &Value, what: &str) -> Result<Self, Error> {
        let map = match value {
            Value::Object(map) => map,
            _ => {
                return Err(Error::new(format!(
                    "bad config: `{what}` must be a table like {{ input = 3.0, output = 15.0 }}"
                )))
            }
        };
        config::only_keys(map, &["input", "output", "cache_read", "cache_write"], what)?;
        let need = |key: &str| {
            config::opt_f64(map, key, what)?
                .ok_or_else(|| Error::new(format!("bad config: `{what}.{key}` is required")))
        };
        let input = need("input")?;
        let output = need("output")?;
        Ok(Self {
            input,
            output,
            cache_read: config::opt_f64(map, "cache_read", what)?.unwrap_or(input * 0.1),
            cache_write: config::opt_f64(map, "cache_write", what)?.unwrap_or(input * 1.25),
        })
    }

    /// The cost of `usage`, in micro-USD (rounded to the nearest).
    pub fn cost_micro_usd(&self, usage: &Usage) -> u64 {
        let micro = usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + usage.cache_read_tokens as f64 * self.cache_read
            + usage.cache_write_tokens as f64 * self.cache_write;
        micro.round() as u64
    }
}

/// A parsed `prices` table plus `default_price`.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    /// Most specific first.
    entries: Vec<(Glob, Price)>,
    default: Option<Price>,
    warned: HashSet<String>,
}

/// How many unknown models one instance remembers having warned about.
const WARN_MEMORY: usize = 256;

impl PriceTable {
    /// Reads `prices` and `default_price` from a plugin's config object.
    pub fn from_config(config: &Value) -> Result<Self, Error> {
        let prices = config::object(&config["prices"], "prices")?;
        let mut entries = prices
            .iter()
            .map(|(pattern, price)| {
                Ok((
                    Glob::new(pattern),
                    Price::parse(price, &format!("prices.\"{pattern}\""))?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        entries.sort_by(|(a, _), (b, _)| {
            b.specificity()
                .cmp(&a.specificity())
                .then_with(|| a.as_str().cmp(b.as_str()))
        });
        let default = match &config["default_price"] {
            Value::Null => None,
            v => Some(Price::parse(v, "default_price")?),
        };
        Ok(Self {
            entries,
            default,
            warned: HashSet::new(),
        })
    }

    /// Whether no price at all is configured (every cost is 0).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.default.is_none()
    }

    /// The price of `model`: the most specific matching glob, else `default_price`.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.entries
            .iter()
            .find(|(glob, _)| glob.matches(model))
            .map(|(_, price)| price)
            .or(self.default.as_ref())
    }

    /// The cost of `usage` on `model` in micro-USD. An unpriced model costs 0 and is logged
    /// as a warning the first time this instance sees it (when there was usage to price).
    pub fn cost_micro_usd(&mut self, model: Option<&str>, usage: &Usage) -> u64 {
        let model = model.unwrap_or("");
        match self.price(model) {
            Some(price) => price.cost_micro_usd(usage),
            None => {
                let used = usage.input_tokens
                    + usage.output_tokens
                    + usage.cache_read_tokens
                    + usage.cache_write_tokens;
                if used > 0
                    && self.warned.len() < WARN_MEMORY
                    && self.warned.insert(model.to_string())
                {
                    log::warn(&format!(
                        "no price for model `{model}` (add it to [plugins.config.prices] or set default_price): counted as costing 0"
                    ));
                }
                0
            }
        }
    }
}

/// Micro-USD as USD.
pub fn micro_to_usd(micro: u64) -> f64 {
    micro as f64 / 1_000_000.0
}

/// USD as whole micro-USD (rounded).
pub fn usd_to_micro(usd: f64) -> u64 {
    (usd * 1_000_000.0).round() as u64
}

#[cfg(test)]
mod tests {
    use llm_gateway_plugin::serde_json::json;

    use super::*;

    #[test]
    fn defaults_specificity_and_costs() {
        let t = PriceTable::from_config(&json!({"prices": {
            "*": {"input": 1.0, "output": 2.0},
            "*opus*": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_write": 18.75},
            "*opus-4-5*": {"input": 5.0, "output": 25.0},
        }}))
        .unwrap();
        assert_eq!(t.price("claude-opus-4-1").unwrap().input, 15.0);
        let p = t.price("us.anthropic.claude-opus-4-5").unwrap();
        assert_eq!((p.input, p.cache_read, p.cache_write), (5.0, 0.5, 6.25));
        assert_eq!(t.price("nova").unwrap().input, 1.0);
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000,
            cache_read_tokens: 10,
            cache_write_tokens: 100,
        };
        // 1e6*5 + 1e3*25 + 10*0.5 + 100*6.25
        assert_eq!(p.cost_micro_usd(&usage), 5_000_000 + 25_000 + 5 + 625);
        assert!(PriceTable::from_config(&json!({"prices": {"x": {"input": 1}}})).is_err());
        assert!(
            PriceTable::from_config(&json!({"prices": {"x": {"input": 1, "output": -1}}})).is_err()
        );
        assert!(PriceTable::from_config(&json!({})).unwrap().is_empty());
        assert_eq!(usd_to_micro(500.0), 500_000_000);
        assert_eq!(micro_to_usd(1_500_000), 1.5);
    }
}
