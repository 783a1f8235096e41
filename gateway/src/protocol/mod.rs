//! The protocol core: what a request is, independent of how it arrived or where it goes.
//!
//! Front doors parse client requests into these types, the wire codecs and translation speak
//! them, and everything above reads them. This module depends on nothing else in the crate
//! (`scripts/check-architecture.py` keeps it so).
//!
//! - [`request`]: [`FrontDoor`], [`Operation`], [`RequestInfo`], [`BodyFields`].
//! - [`kind`]: [`BackendKind`], the providers a backend speaks to.
//! - [`model_path`]: Bedrock runtime paths with the model ID encoded as the AWS SDKs do.
//! - [`error`]: [`GatewayError`], the errors the gateway answers itself, rendered per protocol.

pub mod error;
pub mod kind;
pub mod model_path;
pub mod request;

pub use error::{ErrorResponse, GatewayError};
pub use kind::BackendKind;
pub use request::{BodyFields, FrontDoor, Operation, RequestInfo};
