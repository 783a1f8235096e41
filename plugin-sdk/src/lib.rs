//! The Rust SDK for gateway plugins. The plugin contract arrives with the plugin runtime.
