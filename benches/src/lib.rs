//! Load benchmarks for the gateway.
//!
//! Two binaries share this library:
//!
//! - `mock-upstream` imitates the Amazon Bedrock runtime (`InvokeModel` and
//!   `InvokeModelWithResponseStream`) with answers that are encoded once at start-up, so the
//!   mock costs as little as possible per request and the figures measure the gateway.
//! - `loadgen` drives keep-alive HTTP/1.1 connections at a base URL (the mock directly, or the
//!   gateway's Bedrock front door) and reports latency percentiles and throughput.
//!
//! `benches/run-load.sh` starts both around the real gateway binary and prints the latency the
//! gateway adds (via gateway minus direct). The modules here hold what both sides must agree on:
//! the AWS event-stream framing ([`eventstream`]), the request and answer bodies
//! ([`fixtures`]), percentile summaries ([`stats`]) and the tiny flag parser ([`args`]).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod args;
pub mod eventstream;
pub mod fixtures;
pub mod stats;
