//! Code shared by the stock plugins (`rate-limit`, `model-rewrite`, `audit-log`):
//!
//! - [`glob`]: `*` / `?` patterns, ASCII case-insensitive;
//! - [`matcher`]: the `match = { principal, team, model, operation }` table of rules;
//! - [`pricing`]: the `[plugins.config.prices]` table (USD per million tokens by model glob)
//!   and the cost of a request's usage;
//! - [`calendar`]: UTC dates from the host clock (month keys, RFC 3339 times);
//! - [`config`]: small helpers to read `[plugins.config]` strictly (unknown keys are errors).

pub mod calendar;
pub mod config;
pub mod glob;
pub mod matcher;
pub mod pricing;
