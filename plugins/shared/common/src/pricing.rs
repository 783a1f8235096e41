//! Price tables: what a request cost.
//!
//! ```toml
//! [plugins.config.prices]                 # USD per million tokens, by model glob
//! "*opus*"   = { input = 15.0, output = 75.0, cache_read = 1.5, cache_write = 18.75, cache_write_1h = 30.0 }
//! "*sonnet*" = { input = 3.0, output = 15.0 }
//! [plugins.config.default_price]          # optional: for models priced nowhere else
//! input = 3.0
//! output = 15.0
//! ```
//!
//! `cache_read` defaults to 0.1 × `input`, `cache_write` (5-minute cache writes) to 1.25 ×
//! `input` and `cache_write_1h` (1-hour cache writes) to 2 × `input`: Anthropic's
//! prompt-caching multipliers.
//!
//! A model ID is priced by the first of these that gives a price:
//!
//! 1. a `prices` glob matching the ID as the request names it;
//! 2. a `prices` glob matching the logical name the gateway's model catalog gives the ID
//!    (`catalog::lookup`: `claude-sonnet-4-5` for any of its provider IDs, inference profiles,
//!    or an application inference profile ARN listed in the gateway's `[[models]]`);
//! 3. the catalog's own price for that model;
//! 4. `default_price`;
//!
//! and is unpriced otherwise. When several globs match, the most specific wins (most
//! non-wildcard characters; ties by the pattern's alphabetical order), because a TOML table's
//! key order is not kept.
//!
//! USD per million tokens is micro-USD per token, so costs are kept in whole micro-USD.

use std::collections::HashSet;

use llm_gateway_plugin::catalog::{self, Model};
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
    /// Tokens written to the prompt cache for 5 minutes.
    pub cache_write: f64,
    /// Tokens written to the prompt cache for 1 hour.
    pub cache_write_1h: f64,
}

impl From<catalog::Price> for Price {
    fn from(p: catalog::Price) -> Self {
        Self {
            input: p.input,
            output: p.output,
            cache_read: p.cache_read,
            cache_write: p.cache_write,
            cache_write_1h: p.cache_write_1h,
        }
    }
}

impl Price {
    /// Parses `{ input, output, cache_read?, cache_write?, cache_write_1h? }`.
    pub fn parse(value: &Value, what: &str) -> Result<Self, Error> {
        let map = match value {
            Value::Object(map) => map,
            _ => {
                return Err(Error::new(format!(
                    "bad config: `{what}` must be a table like {{ input = 3.0, output = 15.0 }}"
                )))
            }
        };
        config::only_keys(
            map,
            &[
                "input",
                "output",
                "cache_read",
                "cache_write",
                "cache_write_1h",
            ],
            what,
        )?;
        let need = |key: &str| {
            config::opt_f64(map, key, what)?
                .ok_or_else(|| Error::new(format!("bad config: `{what}.{key}` is required")))
        };
        let input = need("input")?;
        let output = need("output")?;
        let or = |key: &str, default: f64| -> Result<f64, Error> {
            Ok(config::opt_f64(map, key, what)?.unwrap_or(default))
        };
        Ok(Self {
            input,
            output,
            cache_read: or("cache_read", input * 0.1)?,
            cache_write: or("cache_write", input * 1.25)?,
            cache_write_1h: or("cache_write_1h", input * 2.0)?,
        })
    }

    /// The cost of `usage`, in micro-USD (rounded to the nearest), with
    /// `cache_write_1h_tokens` of its cache writes at the 1-hour price and the rest at the
    /// 5-minute one (`Completion::cache_write_1h_tokens` says how many).
    pub fn cost_micro_usd(&self, usage: &Usage, cache_write_1h_tokens: u64) -> u64 {
        let one_hour = cache_write_1h_tokens.min(usage.cache_write_tokens);
        let five_minutes = usage.cache_write_tokens - one_hour;
        let micro = usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + usage.cache_read_tokens as f64 * self.cache_read
            + five_minutes as f64 * self.cache_write
            + one_hour as f64 * self.cache_write_1h;
        micro.round() as u64
    }
}

/// A parsed `prices` table plus `default_price`, resolved with the gateway's catalog.
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

    /// Whether the config prices nothing (no `prices`, no `default_price`): models are then
    /// priced by the catalog only.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.default.is_none()
    }

    /// The price of the most specific `prices` glob matching `id`, if any.
    pub fn configured(&self, id: &str) -> Option<Price> {
        self.entries
            .iter()
            .find(|(glob, _)| glob.matches(id))
            .map(|(_, price)| *price)
    }

    /// The price of `model` (see the module docs for the order), looking it up in the
    /// gateway's catalog when no glob matches it as written. `None`: unpriced.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.price_with(model, catalog::lookup)
    }

    /// [`price`](Self::price) with `lookup` as the catalog (for tests, and for callers that
    /// already looked the model up).
    pub fn price_with(
        &self,
        model: &str,
        lookup: impl FnOnce(&str) -> Option<Model>,
    ) -> Option<Price> {
        if let Some(price) = self.configured(model) {
            return Some(price);
        }
        let known = if model.is_empty() {
            None
        } else {
            lookup(model)
        };
        if let Some(known) = known {
            if let Some(price) = self.configured(&known.name) {
                return Some(price);
            }
            if let Some(price) = known.price {
                return Some(price.into());
            }
        }
        self.default
    }

    /// The cost of `usage` on `model` in micro-USD (`cache_write_1h_tokens` of the cache
    /// writes at the 1-hour price). An unpriced model costs 0 and is logged as a warning the
    /// first time this instance sees it (when there was usage to price).
    pub fn cost_micro_usd(
        &mut self,
        model: Option<&str>,
        usage: &Usage,
        cache_write_1h_tokens: u64,
    ) -> u64 {
        let model = model.unwrap_or("");
        match self.price(model) {
            Some(price) => price.cost_micro_usd(usage, cache_write_1h_tokens),
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

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
        }
    }

    fn no_catalog(_: &str) -> Option<Model> {
        None
    }

    #[test]
    fn defaults_specificity_and_costs() {
        let t = PriceTable::from_config(&json!({"prices": {
            "*": {"input": 1.0, "output": 2.0},
            "*opus*": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_write": 18.75},
            "*opus-4-5*": {"input": 5.0, "output": 25.0},
        }}))
        .unwrap();
        let price = |m: &str| t.price_with(m, no_catalog).unwrap();
        assert_eq!(price("claude-opus-4-1").input, 15.0);
        assert_eq!(price("claude-opus-4-1").cache_write_1h, 30.0);
        let p = price("us.anthropic.claude-opus-4-5");
        assert_eq!(
            (p.input, p.cache_read, p.cache_write, p.cache_write_1h),
            (5.0, 0.5, 6.25, 10.0)
        );
        assert_eq!(price("nova").input, 1.0);
        // 1e6*5 + 1e3*25 + 10*0.5 + 100*6.25
        assert_eq!(
            p.cost_micro_usd(&usage(1_000_000, 1_000, 10, 100), 0),
            5_000_000 + 25_000 + 5 + 625
        );
        assert!(PriceTable::from_config(&json!({"prices": {"x": {"input": 1}}})).is_err());
        assert!(
            PriceTable::from_config(&json!({"prices": {"x": {"input": 1, "output": -1}}})).is_err()
        );
        assert!(PriceTable::from_config(
            &json!({"prices": {"x": {"input": 1, "output": 1, "cache_write_2h": 1}}})
        )
        .is_err());
        assert!(PriceTable::from_config(&json!({})).unwrap().is_empty());
        assert_eq!(usd_to_micro(500.0), 500_000_000);
        assert_eq!(micro_to_usd(1_500_000), 1.5);
    }

    #[test]
    fn one_hour_cache_writes_have_their_own_price() {
        let p = Price::parse(
            &json!({"input": 3.0, "output": 15.0, "cache_write_1h": 7.0}),
            "p",
        )
        .unwrap();
        // 1000 cache writes, 400 of them for an hour: 600 * 3.75 + 400 * 7
        assert_eq!(p.cost_micro_usd(&usage(0, 0, 0, 1_000), 400), 2_250 + 2_800);
        // More 1-hour writes than writes cannot make the 5-minute ones negative.
        assert_eq!(p.cost_micro_usd(&usage(0, 0, 0, 1_000), 5_000), 7_000);
        assert_eq!(p.cost_micro_usd(&usage(0, 0, 0, 1_000), 0), 3_750);
    }

    #[test]
    fn ids_resolve_through_the_catalog_after_globs_on_the_raw_id() {
        const ARN: &str = "arn:aws:bedrock:us-east-1:123:application-inference-profile/abc";
        let built_in = catalog::Price {
            input: 5.0,
            output: 25.0,
            cache_read: 0.5,
            cache_write: 6.25,
            cache_write_1h: 10.0,
        };
        let catalog = |id: &str| {
            (id == ARN || id == "claude-opus-4-5").then(|| Model {
                name: "claude-opus-4-5".into(),
                display_name: "Claude Opus 4.5".into(),
                price: Some(built_in),
            })
        };
        let input = |t: &PriceTable, id: &str| t.price_with(id, catalog).map(|p| p.input);

        // Only the catalog knows the ARN's model: its built-in price.
        let none = PriceTable::from_config(&json!({})).unwrap();
        assert_eq!(input(&none, ARN), Some(5.0));
        assert_eq!(input(&none, "amazon.nova-pro"), None);
        // A glob on the logical name beats the catalog's price...
        let by_name = PriceTable::from_config(&json!({"prices": {
            "*opus*": {"input": 15.0, "output": 75.0},
        }}))
        .unwrap();
        assert_eq!(input(&by_name, ARN), Some(15.0));
        // ...and a glob on the ID as written beats both.
        let by_id = PriceTable::from_config(&json!({"prices": {
            "*opus*": {"input": 15.0, "output": 75.0},
            "arn:*": {"input": 1.0, "output": 1.0},
        }}))
        .unwrap();
        assert_eq!(input(&by_id, ARN), Some(1.0));
        // default_price comes last: after the catalog's own price.
        let default = PriceTable::from_config(&json!({
            "default_price": {"input": 2.0, "output": 2.0},
        }))
        .unwrap();
        assert_eq!(input(&default, ARN), Some(5.0));
        assert_eq!(input(&default, "amazon.nova-pro"), Some(2.0));
    }
}
