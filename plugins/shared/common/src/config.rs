//! Strict readers for `[plugins.config]` (handed to `init` as JSON): a typo in a key or a
//! value of the wrong type fails the plugin's load with a message naming the key, rather
//! than silently doing nothing.

use llm_gateway_plugin::serde_json::{Map, Value};
use llm_gateway_plugin::Error;

/// The object at `value`, or an error naming `what`. `null` (absent) reads as empty.
pub fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Error> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(EMPTY.get_or_init(Map::new)),
        _ => Err(Error::new(format!("bad config: `{what}` must be a table"))),
    }
}

/// Fails on any key of `map` not in `allowed`.
pub fn only_keys(map: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), Error> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(Error::new(format!(
                "bad config: unknown key `{key}` in `{what}` (expected one of: {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

/// An optional string.
pub fn opt_str(map: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, Error> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::new(format!(
            "bad config: `{what}.{key}` must be a string"
        ))),
    }
}

/// An optional boolean.
pub fn opt_bool(map: &Map<String, Value>, key: &str, what: &str) -> Result<Option<bool>, Error> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::new(format!(
            "bad config: `{what}.{key}` must be true or false"
        ))),
    }
}

/// An optional non-negative integer.
pub fn opt_u64(map: &Map<String, Value>, key: &str, what: &str) -> Result<Option<u64>, Error> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            Error::new(format!(
                "bad config: `{what}.{key}` must be a non-negative integer"
            ))
        }),
    }
}

/// An optional non-negative number (integer or float).
pub fn opt_f64(map: &Map<String, Value>, key: &str, what: &str) -> Result<Option<f64>, Error> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
            _ => Err(Error::new(format!(
                "bad config: `{what}.{key}` must be a non-negative number"
            ))),
        },
    }
}

/// An optional string or list of strings, as a list.
pub fn opt_strings(
    map: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<Vec<String>>, Error> {
    let bad = || {
        Error::new(format!(
            "bad config: `{what}.{key}` must be a string or a list of strings"
        ))
    };
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}
