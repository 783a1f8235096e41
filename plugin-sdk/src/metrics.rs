//! Plugin-defined metrics, exported on the admin listener's `/metrics` as
//! `plugin_<plugin>_<name>`.
//!
//! Keep label values few (an operation, a team): every distinct label set is a time series.

use crate::error::Error;
use crate::host;

/// Adds `value` to the counter `name` with these labels.
pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) -> Result<(), Error> {
    host::counter_add(name, labels, value).map_err(Error::from)
}

/// Sets the gauge `name` with these labels to `value`.
pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), Error> {
    host::gauge_set(name, labels, value).map_err(Error::from)
}
