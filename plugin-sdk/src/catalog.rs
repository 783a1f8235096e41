//! The gateway's model catalog (since contract 1.2): which model an ID names, and its price.
//!
//! One model goes by many IDs: a logical name (`claude-sonnet-4-5`), each provider's ID
//! (`us.anthropic.claude-sonnet-4-5-20250929-v1:0`, `claude-sonnet-4-5@20250929`), Bedrock
//! inference profiles with any geographic prefix, and the application inference profile ARNs
//! an operator lists in the gateway's `[[models]]`. [`lookup`] answers with the one logical
//! model behind any of them, so a plugin can write its rules and prices once per model
//! instead of once per spelling, and can price an ARN that hides which model it runs.
//!
//! ```
//! use llm_gateway_plugin::{catalog, Request};
//! # fn f(req: &Request) {
//! if let Some(model) = req.model().as_deref().and_then(catalog::lookup) {
//!     // e.g. "claude-sonnet-4-5", priced at $3 / $15 per million input / output tokens
//!     let input_price = model.price.map(|p| p.input);
//!     # let _ = input_price;
//! }
//! # }
//! ```

use crate::host;

/// Prices in USD per million tokens (which is also micro-USD per token).
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

/// One logical model of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The logical name, such as `claude-sonnet-4-5`.
    pub name: String,
    /// Shown in model pickers.
    pub display_name: String,
    /// Its price (built in for the catalog's models, or from `[[models]]`), if known.
    pub price: Option<Price>,
}

/// The model `id` names: a logical name, any provider's ID, a regional inference profile or
/// an ARN listed in the gateway's `[[models]]`. `None` when the catalog does not know it.
pub fn lookup(id: &str) -> Option<Model> {
    host::catalog_lookup(id)
}
