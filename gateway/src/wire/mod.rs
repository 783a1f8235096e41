//! What travels on the wire, independent of where it goes: the AWS event-stream and SSE
//! codecs, token usage carried inside responses, translation between the providers'
//! protocols. Errors the gateway renders are in [`crate::protocol::error`]; why a request or a
//! stream could not be translated is typed in [`error`].
//!
//! Nothing here does I/O; every type is fed bytes or produces bytes, so it is all unit-tested
//! without a network.

pub mod error;
pub mod eventstream;
pub mod sse;
pub mod translate;
pub mod usage;
