//! Write plugins for the LLM gateway in Rust.
//!
//! A plugin is a WebAssembly component that the gateway runs for every request. It sees the
//! request before an upstream is chosen ([`Plugin::on_request`]), the upstream's response head
//! ([`Plugin::on_response`]) and, after the last byte, how the request ended
//! ([`Plugin::on_complete`]). On the way it can deny the request, rewrite the model, set
//! headers, record who is calling, count and hold capacity in the gateway's shared state,
//! look models up in the gateway's catalog, verify JWTs, write audit records and export
//! metrics.
//!
//! The contract is the WIT package `llm-gateway:plugin@1.2.0` in `wit/plugin.wit`; this crate
//! hides its generated bindings and offers a [`Plugin`] trait, typed [`Request`] and
//! [`Response`] handles and one small module per host service ([`log`], [`clock`], [`state`],
//! [`catalog`], [`jwt`], [`audit`], [`metrics`]). `CONTRACT.md` beside this crate says what the types cannot:
//! phase order, what may change when, limits, errors, isolation and versioning.
//!
//! ```
//! use llm_gateway_plugin::{export_plugin, Decision, Error, Plugin, Request, Response};
//!
//! /// Refuses requests without an `x-team` header and tags every answer.
//! struct RequireTeam;
//!
//! impl Plugin for RequireTeam {
//!     fn init(_config: &serde_json::Value) -> Result<Self, Error> {
//!         Ok(RequireTeam)
//!     }
//!
//!     fn on_request(&mut self, req: &mut Request) -> Decision {
//!         match req.header("x-team") {
//!             Some(team) => {
//!                 let _ = req.set_metadata("team", &team);
//!                 Decision::Continue
//!             }
//!             None => Decision::deny(403, "an x-team header is required"),
//!         }
//!     }
//!
//!     fn on_response(&mut self, resp: &mut Response) {
//!         let _ = resp.set_header("x-checked-by", "require-team");
//!     }
//! }
//!
//! export_plugin!(RequireTeam);
//! ```
//!
//! Built for `wasm32`, the host services are the component's imports. Built natively, they
//! are an in-memory host, so plugins are unit-tested with plain `cargo test` through
//! [`testing::TestHost`].

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod audit;
pub mod catalog;
pub mod clock;
mod completion;
mod decision;
mod error;
mod export;
mod host;
pub mod jwt;
pub mod log;
pub mod metrics;
mod request;
mod response;
pub mod state;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use completion::{Completion, Outcome, Usage};
pub use decision::{Decision, Denial};
pub use error::Error;
pub use request::{FrontDoor, Operation, Request};
pub use response::Response;
/// The serialization framework behind typed per-request state ([`Request::state`]).
pub use serde;
/// The JSON library the SDK's API speaks (configs, body values, audit records).
pub use serde_json;

#[doc(hidden)]
pub use export::__private;

/// A gateway plugin: one value of this type lives in each plugin instance.
///
/// [`init`](Plugin::init) builds it from the plugin's `[plugins.config]` table; the phases are
/// then called for each request the instance serves. With `isolation = "pooled"` (the
/// default) one instance serves many requests one after another, so fields (and any other
/// global) persist across requests; with `isolation = "request"` every request gets a fresh
/// instance and `init` runs each time. An instance is lent for one phase call, not a whole
/// request: `on_request` and `on_complete` of one request may run on different instances, so
/// per-request data goes in [`Request::set_state`] / [`Request::state`], never in `self`.
///
/// Register the type with [`export_plugin!`].
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its config (the `[plugins.config]` table as JSON; an empty
    /// object when there is none). An error fails the plugin's load and is shown to the
    /// operator.
    fn init(config: &serde_json::Value) -> Result<Self, Error>;

    /// Called before an upstream is chosen. Return [`Decision::Continue`] to go on, or a
    /// denial to answer the client with an error right away. The request may be changed here
    /// (model, headers, identity, metadata) and only here.
    fn on_request(&mut self, req: &mut Request) -> Decision {
        let _ = req;
        Decision::Continue
    }

    /// Called when the upstream's response head arrives (not for denied requests). Response
    /// headers may be set; the request is readable through [`Response::request`].
    fn on_response(&mut self, resp: &mut Response) {
        let _ = resp;
    }

    /// Called once the request is over, for every plugin whose `on_request` ran (also when
    /// the request was denied or aborted). It runs off the client's path: use it for
    /// accounting and audit. Everything is read-only here.
    fn on_complete(&mut self, completion: &Completion) {
        let _ = completion;
    }
}
