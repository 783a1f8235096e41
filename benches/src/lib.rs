//! Load benchmarks for the gateway.
//!
//! Three binaries share this library:
//!
//! - `mock-upstream` imitates the Amazon Bedrock runtime (`InvokeModel` and
//!   `InvokeModelWithResponseStream`) with answers that are encoded once at start-up, so the
//!   mock costs as little as possible per request and the figures measure the gateway.
//! - `loadgen` drives keep-alive HTTP/1.1 connections at a base URL (the mock directly, or the
//!   gateway's Bedrock front door) and reports latency percentiles and throughput.
//! - `streamgen` holds thousands of slow event streams open at once (the mock's pacing mode)
//!   and reports what they cost the gateway: memory per open stream, CPU, failed streams.
//!
//! `benches/run-load.sh` starts the first two around the real gateway binary and prints the
//! latency the gateway adds (via gateway minus direct); `benches/run-streams.sh` runs the mock's
//! pacing mode, the gateway with the stock plugins and `streamgen`. The modules here hold what
//! the mock and the clients must agree on:
//! the AWS event-stream framing ([`eventstream`]), the request and answer bodies
//! ([`fixtures`]), percentile summaries ([`stats`]), the tiny flag parser ([`args`]) and base
//! URLs ([`target`]).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod args;
pub mod eventstream;
pub mod fixtures;
pub mod stats;
pub mod target;
