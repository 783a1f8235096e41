//! [`Error`]: the one error type of the SDK.
//!
//! Host services fail with a message from the gateway (a write outside its phase, a protected
//! header, an unreachable state store, an invalid token). Plugins return the same type from
//! [`Plugin::init`](crate::Plugin::init), so `?` works on config parsing too.

use std::fmt;

/// Why a host call (or a plugin's `init`) failed, as a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::new(format!("invalid JSON: {e}"))
    }
}
