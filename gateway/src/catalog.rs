//! The model catalog: one logical model, its ID on each provider.
//!
//! Clients name a model the way their protocol does: a Bedrock inference profile
//! (`us.anthropic.claude-sonnet-4-5-20250929-v1:0`), a Vertex ID (`claude-sonnet-4-5@20250929`),
//! an Anthropic ID (`claude-sonnet-4-5-20250929`) or the logical name (`claude-sonnet-4-5`).
//! The catalog maps any of them to one [`ModelEntry`], so a request can be served by a
//! backend of another kind, and routes can match a model whatever its spelling.
//!
//! Built-in entries cover current Claude models; `[[models]]` in the configuration adds
//! entries or replaces built-in ones of the same name. Bedrock IDs are also found without
//! their geographic prefix (`eu.`, `apac.`, `global.`...), so every regional profile of a
//! model maps to it.
//!
//! Each entry may carry a [`Price`]: built in for the catalog's models (Anthropic's list prices),
//! set by `[[models]] price`, or, for a configured entry without one (an application inference
//! profile ARN, a private name), inherited from the built-in model that any of its IDs names.
//! Plugins price usage by what a model *is* through this, not by how its ID is spelled.

use std::collections::HashMap;

use crate::config::{ModelConfig, PriceConfig};
use crate::protocol::BackendKind;

/// One logical model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// Logical name, such as `claude-sonnet-4-5`; what `GET /v1/models` lists.
    pub name: String,
    /// Shown in model pickers.
    pub display_name: String,
    /// Bedrock model, inference profile ID or ARN.
    pub bedrock: Option<String>,
    /// Vertex AI model ID.
    pub vertex: Option<String>,
    /// Anthropic API model ID.
    pub anthropic: Option<String>,
    /// What it costs, if known.
    pub price: Option<Price>,
}

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
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

impl Price {
    /// A model's price from its input and output prices, with Anthropic's prompt-caching
    /// multipliers: reads 0.1x input, 5-minute writes 1.25x, 1-hour writes 2x.
    pub const fn list(input: f64, output: f64) -> Self {
        Self {
            input,
            output,
            cache_read: input * 0.1,
            cache_write: input * 1.25,
            cache_write_1h: input * 2.0,
        }
    }

    /// `[[models]] price`, its cache prices defaulting to the multipliers of [`Price::list`].
    pub fn from_config(c: &PriceConfig) -> Self {
        let list = Self::list(c.input, c.output);
        Self {
            cache_read: c.cache_read.unwrap_or(list.cache_read),
            cache_write: c.cache_write.unwrap_or(list.cache_write),
            cache_write_1h: c.cache_write_1h.unwrap_or(list.cache_write_1h),
            ..list
        }
    }
}

impl ModelEntry {
    /// The model's ID on a provider.
    pub fn id_for(&self, kind: BackendKind) -> Option<&str> {
        match kind {
            BackendKind::Bedrock => self.bedrock.as_deref(),
            BackendKind::Vertex => self.vertex.as_deref(),
            BackendKind::Anthropic => self.anthropic.as_deref(),
        }
    }

    /// Every name of the model: the logical name, then each provider ID.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str())
            .chain(self.bedrock.as_deref())
            .chain(self.vertex.as_deref())
            .chain(self.anthropic.as_deref())
    }
}

/// (name, display name, Bedrock, Vertex, Anthropic, list price).
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Price,
);

/// Opus 4.5 and later Opus models.
const OPUS: Price = Price::list(5.0, 25.0);
/// Opus 4 and 4.1.
const OPUS_4: Price = Price::list(15.0, 75.0);
/// Every Sonnet.
const SONNET: Price = Price::list(3.0, 15.0);
/// Haiku 4.5.
const HAIKU: Price = Price::list(1.0, 5.0);
/// Haiku 3.5.
const HAIKU_3_5: Price = Price::list(0.8, 4.0);

/// Current Claude models. Newer models use undated IDs on every provider.
const BUILTIN: &[Builtin] = &[
    (
        "claude-opus-5-5",
        "Claude Opus 5.5",
        "us.anthropic.claude-opus-5-5",
        "claude-opus-5-5",
        "claude-opus-5-5",
        OPUS,
    ),
    (
        "claude-sonnet-5-5",
        "Claude Sonnet 5.5",
        "us.anthropic.claude-sonnet-5-5",
        "claude-sonnet-5-5",
        "claude-sonnet-5-5",
        SONNET,
    ),
    (
        "claude-opus-4-8",
        "Claude Opus 4.8",
        "us.anthropic.claude-opus-4-8",
        "claude-opus-4-8",
        "claude-opus-4-8",
        OPUS,
    ),
    (
        "claude-opus-4-5",
        "Claude Opus 4.5",
        "us.anthropic.claude-opus-4-5-20251101-v1:0",
        "claude-opus-4-5@20251101",
        "claude-opus-4-5-20251101",
        OPUS,
    ),
    (
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "claude-sonnet-4-5@20250929",
        "claude-sonnet-4-5-20250929",
        SONNET,
    ),
    (
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        "us.anthropic.claude-haiku-4-5-20251001-v1:0",
        "claude-haiku-4-5@20251001",
        "claude-haiku-4-5-20251001",
        HAIKU,
    ),
    (
        "claude-opus-4-1",
        "Claude Opus 4.1",
        "us.anthropic.claude-opus-4-1-20250805-v1:0",
        "claude-opus-4-1@20250805",
        "claude-opus-4-1-20250805",
        OPUS_4,
    ),
    (
        "claude-opus-4",
        "Claude Opus 4",
        "us.anthropic.claude-opus-4-20250514-v1:0",
        "claude-opus-4@20250514",
        "claude-opus-4-20250514",
        OPUS_4,
    ),
    (
        "claude-sonnet-4",
        "Claude Sonnet 4",
        "us.anthropic.claude-sonnet-4-20250514-v1:0",
        "claude-sonnet-4@20250514",
        "claude-sonnet-4-20250514",
        SONNET,
    ),
    (
        "claude-3-7-sonnet",
        "Claude Sonnet 3.7",
        "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        "claude-3-7-sonnet@20250219",
        "claude-3-7-sonnet-20250219",
        SONNET,
    ),
    (
        "claude-3-5-haiku",
        "Claude Haiku 3.5",
        "us.anthropic.claude-3-5-haiku-20241022-v1:0",
        "claude-3-5-haiku@20241022",
        "claude-3-5-haiku-20241022",
        HAIKU_3_5,
    ),
];

/// Geographic prefixes of Bedrock cross-region inference profiles.
const BEDROCK_GEO_PREFIXES: &[&str] = &[
    "us.", "eu.", "apac.", "global.", "jp.", "au.", "ca.", "us-gov.",
];

/// Every known model, found by any of its IDs.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<ModelEntry>,
    index: HashMap<String, usize>,
}

impl Catalog {
    /// The built-in entries, extended and overridden by `models`.
    pub fn new(models: &[ModelConfig]) -> Self {
        let mut entries: Vec<ModelEntry> = BUILTIN
            .iter()
            .map(
                |(name, display, bedrock, vertex, anthropic, price)| ModelEntry {
                    name: name.to_string(),
                    display_name: display.to_string(),
                    bedrock: Some(bedrock.to_string()),
                    vertex: Some(vertex.to_string()),
                    anthropic: Some(anthropic.to_string()),
                    price: Some(*price),
                },
            )
            .collect();
        let builtin = Self::index(entries.clone());
        for m in models {
            let mut entry = ModelEntry {
                name: m.name.clone(),
                display_name: m.display_name.clone().unwrap_or_else(|| m.name.clone()),
                bedrock: m.bedrock.clone(),
                vertex: m.vertex.clone(),
                anthropic: m.anthropic.clone(),
                price: m.price.as_ref().map(Price::from_config),
            };
            if entry.price.is_none() {
                // The built-in model that any of its names names.
                let inherited = entry
                    .ids()
                    .find_map(|id| builtin.lookup(id))
                    .and_then(|e| e.price);
                entry.price = inherited;
            }
            match entries.iter_mut().find(|e| e.name == m.name) {
                Some(existing) => *existing = entry,
                // Configured models come first in listings.
                None => entries.insert(0, entry),
            }
        }
        Self::index(entries)
    }

    /// The catalog of `entries`, indexed by every ID.
    fn index(entries: Vec<ModelEntry>) -> Self {
        // Index configured entries last so that they win any ID shared with a built-in one.
        // Exact IDs are indexed after the prefix-stripped ones so that they win over them.
        let mut index = HashMap::new();
        for (i, e) in entries.iter().enumerate().rev() {
            for base in e.ids().filter_map(strip_geo_prefix) {
                index.insert(base.to_string(), i);
            }
        }
        for (i, e) in entries.iter().enumerate().rev() {
            for id in e.ids() {
                index.insert(id.to_string(), i);
            }
        }
        Self { entries, index }
    }

    /// The entry for a model named by any of its IDs.
    pub fn lookup(&self, id: &str) -> Option<&ModelEntry> {
        let i = self
            .index
            .get(id)
            .or_else(|| strip_geo_prefix(id).and_then(|base| self.index.get(base)))?;
        Some(&self.entries[*i])
    }

    /// Every entry, configured ones first.
    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// The ID to send to a backend of `kind` for a model the client named `requested`.
    ///
    /// A backend of the client's own kind gets the client's ID unchanged (it may be a regional
    /// profile or an ARN the catalog does not know), unless the client used a logical name
    /// that is not that provider's ID. Another kind gets the catalog's ID for it; `None` when
    /// the model is unknown or has no ID there.
    pub fn model_for(&self, requested: &str, kind: BackendKind, same_kind: bool) -> Option<String> {
        let entry = self.lookup(requested);
        if same_kind {
            return match entry {
                // The built-in logical names are the Anthropic API's own aliases: the client's
                // ID (and so its body, byte for byte) goes upstream unchanged.
                Some(e)
                    if e.name == requested
                        && kind == BackendKind::Anthropic
                        && BUILTIN.iter().any(|b| {
                            b.0 == requested && b.4 == e.anthropic.as_deref().unwrap_or_default()
                        }) =>
                {
                    Some(requested.to_string())
                }
                // Another logical name is no provider's ID: only the catalog's ID for `kind`.
                Some(e) if e.name == requested => e.id_for(kind).map(str::to_string),
                _ => Some(requested.to_string()),
            };
        }
        entry?.id_for(kind).map(str::to_string)
    }
}

/// What `GET /v1/models/{id}` answers for one model: an Anthropic model object.
pub fn model_object(entry: &ModelEntry) -> serde_json::Value {
    serde_json::json!({
        "type": "model",
        "id": entry.name,
        "display_name": entry.display_name,
        "created_at": "2025-01-01T00:00:00Z",
    })
}

/// What `GET /v1/models` answers: one page listing `models` (as [`model_object`]s).
pub fn model_list(models: &[&ModelEntry]) -> serde_json::Value {
    serde_json::json!({
        "data": models.iter().map(|e| model_object(e)).collect::<Vec<_>>(),
        "has_more": false,
        "first_id": models.first().map(|e| e.name.as_str()),
        "last_id": models.last().map(|e| e.name.as_str()),
    })
}

/// What Bedrock's `GET /inference-profiles` answers for `models`: the system-defined
/// cross-region profile of each model whose Bedrock ID is one (`us.anthropic....`); models
/// named by a bare model ID or an ARN have none and are left out.
pub fn inference_profiles(models: &[&ModelEntry]) -> serde_json::Value {
    let profiles: Vec<serde_json::Value> = models
        .iter()
        .filter_map(|e| {
            let id = e.bedrock.as_deref()?;
            let (_, base) = id
                .split_once('.')
                .filter(|(_, base)| base.starts_with("anthropic."))?;
            Some(serde_json::json!({
                "inferenceProfileId": id,
                "inferenceProfileName": e.display_name,
                "inferenceProfileArn": format!("arn:aws:bedrock:us-east-1::inference-profile/{id}"),
                "models": [{ "modelArn": format!("arn:aws:bedrock:us-east-1::foundation-model/{base}") }],
                "status": "ACTIVE",
                "type": "SYSTEM_DEFINED",
            }))
        })
        .collect();
    serde_json::json!({ "inferenceProfileSummaries": profiles })
}

fn strip_geo_prefix(id: &str) -> Option<&str> {
    BEDROCK_GEO_PREFIXES
        .iter()
        .find_map(|p| id.strip_prefix(p))
        .filter(|rest| rest.starts_with("anthropic."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::new(&[ModelConfig {
            name: "team-sonnet".into(),
            bedrock: Some(
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc".into(),
            ),
            vertex: Some("claude-sonnet-4-5@20250929".into()),
            anthropic: None,
            display_name: None,
            price: None,
        }])
    }

    #[test]
    fn an_anthropic_alias_stays_as_the_client_sent_it_on_an_anthropic_backend() {
        let c = Catalog::new(&[]);
        let a = BackendKind::Anthropic;
        assert_eq!(
            c.model_for("claude-sonnet-4-5", a, true).as_deref(),
            Some("claude-sonnet-4-5")
        );
        // Across providers, and on Bedrock or Vertex, the alias becomes the provider's ID.
        assert_eq!(
            c.model_for("claude-sonnet-4-5", a, false).as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(
            c.model_for("claude-sonnet-4-5", BackendKind::Vertex, true)
                .as_deref(),
            Some("claude-sonnet-4-5@20250929")
        );
        // A configured logical name is no Anthropic alias.
        let custom = catalog();
        assert_eq!(
            custom
                .model_for("team-sonnet", BackendKind::Vertex, true)
                .as_deref(),
            Some("claude-sonnet-4-5@20250929")
        );
    }

    #[test]
    fn models_are_priced_by_what_they_are() {
        let c = catalog();
        let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc";
        // An application inference profile inherits the price of the model its other IDs name.
        assert_eq!(c.lookup(arn).unwrap().price, Some(SONNET));
        assert_eq!(
            c.lookup("eu.anthropic.claude-haiku-4-5-20251001-v1:0")
                .unwrap()
                .price,
            Some(HAIKU)
        );
        assert_eq!(
            c.lookup("claude-opus-4-1@20250805").unwrap().price,
            Some(OPUS_4)
        );
        let p = c.lookup("claude-opus-4-5").unwrap().price.unwrap();
        assert_eq!(
            (p.cache_read, p.cache_write, p.cache_write_1h),
            (0.5, 6.25, 10.0)
        );
        // A configured price wins; cache prices default to the list multipliers.
        let priced = Catalog::new(&[ModelConfig {
            name: "private".into(),
            bedrock: Some("arn:aws:bedrock:us-east-1:1:application-inference-profile/p".into()),
            vertex: None,
            anthropic: None,
            display_name: None,
            price: Some(PriceConfig {
                input: 2.0,
                output: 8.0,
                cache_read: Some(0.1),
                cache_write: None,
                cache_write_1h: None,
            }),
        }]);
        let p = priced.lookup("private").unwrap().price.unwrap();
        assert_eq!(
            (p.input, p.cache_read, p.cache_write, p.cache_write_1h),
            (2.0, 0.1, 2.5, 4.0)
        );
        // A model nobody configured has no price.
        assert!(Catalog::new(&[]).lookup("mystery-model").is_none());
    }

    #[test]
    fn any_id_of_a_model_finds_it() {
        let c = catalog();
        for id in [
            "claude-sonnet-4-5",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5-20250929",
        ] {
            assert_eq!(c.lookup(id).unwrap().name, "claude-sonnet-4-5", "{id}");
        }
        assert!(c.lookup("amazon.nova-pro-v1:0").is_none());
    }

    #[test]
    fn configured_models_extend_and_win_shared_ids() {
        let c = catalog();
        assert_eq!(c.entries()[0].name, "team-sonnet");
        assert_eq!(
            c.lookup("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc")
                .unwrap()
                .name,
            "team-sonnet"
        );
        // The configured entry shares its Vertex ID with the built-in one and wins it.
        assert_eq!(
            c.lookup("claude-sonnet-4-5@20250929").unwrap().name,
            "team-sonnet"
        );
    }

    #[test]
    fn the_model_list_names_each_model_in_order() {
        let c = catalog();
        let models: Vec<&ModelEntry> = c.entries().iter().take(2).collect();
        let list = model_list(&models);
        assert_eq!(list["has_more"], false);
        assert_eq!(list["first_id"], "team-sonnet");
        assert_eq!(list["last_id"], models[1].name.as_str());
        assert_eq!(list["data"].as_array().unwrap().len(), 2);
        assert_eq!(list["data"][0], model_object(models[0]));
        let one = model_object(c.lookup("claude-sonnet-4-5").unwrap());
        assert_eq!(one["type"], "model");
        assert_eq!(one["id"], "claude-sonnet-4-5");
        assert_eq!(one["display_name"], "Claude Sonnet 4.5");
        let empty = model_list(&[]);
        assert_eq!(empty["data"], serde_json::json!([]));
        assert!(empty["first_id"].is_null() && empty["last_id"].is_null());
    }

    #[test]
    fn inference_profiles_list_system_profiles_only() {
        let c = catalog();
        let sonnet = c.lookup("claude-sonnet-4-5").unwrap();
        let team = c.lookup("team-sonnet").unwrap();
        let bare = ModelEntry {
            bedrock: Some("anthropic.claude-3-haiku-20240307-v1:0".into()),
            ..sonnet.clone()
        };
        let answer = inference_profiles(&[sonnet, team, &bare]);
        let profiles = answer["inferenceProfileSummaries"].as_array().unwrap();
        // The ARN and the bare model ID are no system-defined profile.
        assert_eq!(profiles.len(), 1);
        let p = &profiles[0];
        let id = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
        assert_eq!(p["inferenceProfileId"], id);
        assert_eq!(p["inferenceProfileName"], "Claude Sonnet 4.5");
        assert_eq!(
            p["inferenceProfileArn"],
            format!("arn:aws:bedrock:us-east-1::inference-profile/{id}")
        );
        assert_eq!(
            p["models"][0]["modelArn"],
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-sonnet-4-5-20250929-v1:0"
        );
        assert_eq!(p["type"], "SYSTEM_DEFINED");
        assert_eq!(p["status"], "ACTIVE");
        assert_eq!(
            inference_profiles(&[]),
            serde_json::json!({ "inferenceProfileSummaries": [] })
        );
    }

    #[test]
    fn ids_for_each_provider() {
        let c = catalog();
        let id = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
        assert_eq!(
            c.model_for(id, BackendKind::Anthropic, false).as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        // Same kind: the client's own (regional) ID is kept.
        let eu = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0";
        assert_eq!(
            c.model_for(eu, BackendKind::Bedrock, true).as_deref(),
            Some(eu)
        );
        // A logical name is translated even for the same kind.
        assert_eq!(
            c.model_for("claude-opus-4-5", BackendKind::Vertex, true)
                .as_deref(),
            Some("claude-opus-4-5@20251101")
        );
        // A configured model without an ID for a provider cannot go there, even by its name.
        assert_eq!(
            c.model_for("team-sonnet", BackendKind::Anthropic, true),
            None
        );
        // Unknown models cross no provider boundary.
        assert_eq!(c.model_for("mystery", BackendKind::Vertex, false), None);
        assert_eq!(
            c.model_for("mystery", BackendKind::Vertex, true).as_deref(),
            Some("mystery")
        );
    }
}
