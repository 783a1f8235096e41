//! An LLM edge gateway: a Pingora reverse proxy between LLM clients (Claude Code, the AWS and
//! Anthropic SDKs) and Amazon Bedrock.
//!
//! # One request's life
//!
//! 1. A client connects to the data-plane listener (plain HTTP or TLS via rustls); Pingora
//!    parses the request head and hands it to [`proxy::Gateway`].
//! 2. The front door for the path prefix ([`frontdoor`]) turns method and path into a
//!    [`frontdoor::RequestInfo`]: the client's protocol, the operation, the model ID and the
//!    path to send upstream. Malformed requests stop here with an error in the client's shape
//!    ([`protocol::error`]).
//! 3. The body is read, up to `server.max_request_body`.
//! 4. [`upstream::Upstreams`] picks the backend and prepares the upstream request: client
//!    credentials and hop-by-hop headers are dropped, everything else (including
//!    `anthropic-beta` and the untouched body) is kept, and the request is signed with SigV4
//!    over exactly the bytes sent.
//! 5. The request goes out over Pingora's pooled connector. The answer's head is passed
//!    through, then every body chunk is written to the client as it arrives while a
//!    [`wire::usage::UsageObserver`] reads token usage from it (AWS event-stream frames,
//!    decoded by [`wire::eventstream`]).
//! 6. When the answer ends (or the client leaves, which drops the upstream connection at once)
//!    the request is logged with its ID, Claude Code session ID, usage and outcome.
//!
//! [`config`] reads the TOML file, [`server`] starts everything, [`admin`] serves health and
//! readiness on a separate listener. See `ARCHITECTURE.md` for the map and the invariants.

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
