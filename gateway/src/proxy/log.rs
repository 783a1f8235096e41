//! The end of a request: one log line, the request metrics, then the plugins' `on-complete`
//! (off the client's path, on the background runtime). Everything here reads the context
//! through its accessors; nothing writes it.

use std::time::Duration;

use super::ctx::{Outcome, RequestCtx};
use super::Gateway;
use crate::frontdoor::FrontDoor;
use crate::plugin::{Completion, WitOutcome, WitUsage};
use crate::wire::usage::Usage;

impl Gateway {
    /// Logs the request, counts it, and hands it to the plugins' `on-complete`.
    pub(super) fn log(&self, ctx: &mut RequestCtx) {
        let latency = ctx.started().map(|s| s.elapsed()).unwrap_or_default();
        let usage = ctx.usage();
        let (principal, team) = ctx
            .plugins_mut()
            .map(|r| {
                let v = r.view();
                (v.principal.clone(), v.team.clone())
            })
            .unwrap_or_default();
        let info = ctx.info();
        self.record_metrics(ctx, latency, usage, team.as_deref());
        let observation = ctx.observation();
        tracing::info!(
            target: "gateway::request",
            request_id = %ctx.request_id(),
            session_id = ctx.session_id().unwrap_or("-"),
            front_door = ctx.front_door().map(FrontDoor::as_str).unwrap_or("-"),
            operation = info.map(|i| i.operation.as_str()).unwrap_or("-"),
            model = info.and_then(|i| i.model_id.as_deref()).unwrap_or("-"),
            model_served = ctx.model_served().unwrap_or("-"),
            backend = ctx.backend().unwrap_or("-"),
            principal = principal.as_deref().unwrap_or("-"),
            team = team.as_deref().unwrap_or("-"),
            denied_by = ctx.denied_by().unwrap_or("-"),
            attempts = %ctx.attempts().join(" "),
            dropped_betas = %ctx.dropped_betas().join(","),
            status = ctx.status(),
            outcome = ctx.outcome().as_str(),
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            output_estimated = observation.is_some_and(|o| o.output_estimated),
            cache_read_tokens = usage.cache_read_tokens,
            cache_write_tokens = usage.cache_write_tokens,
            latency_ms = latency.as_secs_f64() * 1000.0,
            ttfb_ms = ctx.time_to_first_byte().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(-1.0),
            request_bytes = ctx.request_bytes(),
            response_bytes = ctx.response_bytes(),
            stream_error = observation.and_then(|o| o.stream_error.as_deref()).unwrap_or("-"),
            usage_parse_error = observation.and_then(|o| o.parse_error.as_deref()).unwrap_or("-"),
            error = ctx.error().unwrap_or("-"),
            "request"
        );
        // After the log line, so that no audit record is ever written before its request's line.
        if let Some(mut run) = ctx.take_plugins() {
            let view = run.view_mut();
            if !ctx.attempts().is_empty() {
                view.metadata
                    .insert("gateway.attempts".into(), ctx.attempts().join(" "));
            }
            if ctx.outcome() == Outcome::GatewayStopped {
                view.metadata
                    .insert("gateway.outcome".into(), ctx.outcome().as_str().into());
            }
            if usage.cache_write_1h_tokens > 0 {
                let n = usage.cache_write_1h_tokens.to_string();
                view.metadata
                    .insert("gateway.cache_write_1h_tokens".into(), n);
            }
            run.complete(completion(ctx, latency));
        }
    }

    /// Counts the request, its latency, time to first byte, tokens and denial.
    fn record_metrics(
        &self,
        ctx: &RequestCtx,
        latency: Duration,
        usage: Usage,
        team: Option<&str>,
    ) {
        let m = &self.metrics;
        let front_door = ctx.front_door().map(FrontDoor::as_str).unwrap_or("-");
        let backend = ctx.backend().unwrap_or("-");
        let model = ctx.model_served().unwrap_or("-");
        let status = ctx.status().to_string();
        let outcome = ctx.outcome().as_str();
        m.requests
            .with_label_values(&[front_door, backend, model, &status, outcome])
            .inc();
        m.request_seconds
            .with_label_values(&[front_door, outcome])
            .observe(latency.as_secs_f64());
        if let Some(ttfb) = ctx.time_to_first_byte() {
            m.first_byte_seconds
                .with_label_values(&[front_door, backend])
                .observe(ttfb.as_secs_f64());
        }
        let team = team.unwrap_or("-");
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ] {
            if n > 0 {
                m.tokens.with_label_values(&[team, model, kind]).inc_by(n);
            }
        }
        if let Some(plugin) = ctx.denied_by() {
            m.denials.with_label_values(&[plugin, &status]).inc();
        }
    }
}

/// What plugins' `on-complete` is told about a finished request.
fn completion(ctx: &RequestCtx, latency: Duration) -> Completion {
    let usage = ctx.usage();
    Completion {
        status: ctx.status(),
        outcome: match ctx.outcome() {
            Outcome::Ok | Outcome::Pending => WitOutcome::Ok,
            Outcome::UpstreamError => WitOutcome::UpstreamError,
            Outcome::Rejected => WitOutcome::Rejected,
            Outcome::Denied => WitOutcome::Denied,
            // The contract's outcomes predate this one: the answer was cut after it started,
            // as when an upstream fails; `gateway.outcome` says which.
            Outcome::UpstreamFailed | Outcome::GatewayStopped => WitOutcome::UpstreamFailed,
            Outcome::ClientAborted => WitOutcome::ClientAborted,
        },
        usage: WitUsage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
        },
        latency_ms: latency.as_millis() as u64,
        time_to_first_token_ms: ctx.time_to_first_byte().map(|d| d.as_millis() as u64),
        request_bytes: ctx.request_bytes() as u64,
        response_bytes: ctx.response_bytes() as u64,
        backend: ctx.backend().map(str::to_string),
        model_served: ctx.model_served().map(str::to_string),
        denied_by: ctx.denied_by().map(str::to_string),
    }
}
