//! An LLM edge gateway: a Pingora reverse proxy between LLM clients (Claude Code, the AWS and
//! Anthropic SDKs) and Amazon Bedrock, Google Vertex AI and the Anthropic API, running every
//! request through a pipeline of WebAssembly plugins.
//!
//! # One request's life
//!
//! 1. A client connects to the data-plane listener (plain HTTP or TLS via rustls); the
//!    connection is counted against `server.max_connections` ([`lifecycle`]) and Pingora
//!    parses the request head, bounded by `server.max_request_headers`, then hands it to
//!    [`proxy::Gateway`].
//! 2. The front door for the path prefix ([`frontdoor`]) turns method and path into a
//!    [`protocol::RequestInfo`]: the client's protocol (Bedrock, Vertex or Anthropic), the
//!    operation, the model ID and the path to send upstream. Malformed requests stop here with
//!    an error in the client's shape ([`protocol::error`]).
//! 3. The body is read (bounded in size and time); Anthropic and Vertex put the model and
//!    `stream` in it.
//! 4. The plugins run ([`plugin`]): each call borrows an instance of a WebAssembly component
//!    for that call only; plugins may deny, rewrite the model, edit headers and set who is
//!    calling.
//! 5. The router ([`upstream::route`]) orders the backends that may serve the model; for each
//!    in turn the request is translated for the backend's protocol when it crosses providers
//!    ([`wire::translate`]), its headers filtered (client credentials never go upstream) and
//!    authenticated by the backend's [`upstream::Provider`] (SigV4, a Google token, an API key),
//!    and sent over Pingora's pooled connector, failing over on connect errors, timeouts, 429
//!    and 5xx while nothing has reached the client.
//! 6. The answer streams back chunk by chunk, translated per event when it crossed providers,
//!    while [`wire::usage::UsageObserver`] reads token usage from it.
//! 7. When the answer ends (or the client leaves, which drops the upstream connection at once)
//!    the request is logged, and the plugins' `on-complete` (accounting, audit records) runs off
//!    the client's path.
//!
//! [`config`] reads the TOML file, [`server`] starts everything and stops it by draining,
//! [`reload`] swaps configuration generations without a restart, [`admin`] serves health,
//! readiness, metrics and status on a separate listener. See `ARCHITECTURE.md` for the layers
//! and the invariants.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod catalog;
pub mod config;
pub mod frontdoor;
pub mod lifecycle;
pub mod metrics;
pub mod plugin;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod state;
pub mod upstream;
pub mod wire;
