//! `[audit]`: where the durable audit sink writes (the sink itself is `crate::audit`).

use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, HumanDuration};

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The file records are appended to.
    pub path: String,
    /// `"always"`: sync after every batch of records; `"interval"`: every `fsync_interval`.
    #[serde(default)]
    pub fsync: FsyncMode,
    /// How often to sync with `fsync = "interval"`.
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval: HumanDuration,
    /// Rotate when the file would grow past this size.
    #[serde(default = "default_max_file_size")]
    pub max_file_size: ByteSize,
    /// How many rotated files to keep.
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

/// When the audit file is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// After every batch of records.
    #[default]
    Always,
    /// Every `fsync_interval`.
    Interval,
}

fn default_fsync_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_max_file_size() -> ByteSize {
    ByteSize(100 * 1024 * 1024)
}
fn default_max_files() -> u32 {
    10
}
