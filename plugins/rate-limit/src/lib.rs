//! `rate-limit`: requests per minute, tokens per minute, concurrent streams and monthly
//! budgets, per principal, per team or globally, by rules matched on principal, team, model
//! and operation.
//!
//! EVERY matching rule applies (limits layer: a team cap and a per-person cap both hold). A
//! request over any limit is refused with 429, a `retry-after` and a message naming the limit
//! (Claude Code shows it); over a budget whose rule has `downgrade_to`, the model is rewritten
//! instead. Counters live in the gateway's state store (shared by replicas with Redis). See
//! `plugins/README.md` for the config and the arithmetic.
//!
//! Order of the checks, so that a refused request consumes as little as possible: budgets
//! (read only), concurrent streams and tokens per minute (counters, undone on a refusal), then
//! requests per minute (a rate window, which cannot be undone: a request refused by a later
//! rule's window still counts in an earlier rule's window).

use llm_gateway_plugin::serde_json::{Map, Value};
use llm_gateway_plugin::{
    clock, export_plugin, log, metrics, state, Completion, Decision, Error, Operation, Plugin,
    Request, Usage,
};
use plugin_common::calendar::{month_key, next_month_start_ms, rfc3339};
use plugin_common::config;
use plugin_common::matcher::{Match, RequestFacts};
use plugin_common::pricing::{micro_to_usd, usd_to_micro, PriceTable};
use serde::{Deserialize, Serialize};

const MINUTE_MS: u64 = 60_000;
/// Per-minute token counters live two minutes (the current one and the sliding previous one).
const TPM_TTL_MS: u64 = 2 * MINUTE_MS;
/// Budget counters outlive their month by a week.
const BUDGET_GRACE_MS: u64 = 7 * 86_400_000;
/// `retry-after` for a refused stream: there is no telling when one ends.
const STREAM_RETRY_SECONDS: u32 = 5;
/// `retry-after` when the state store is down and the plugin fails closed.
const STORE_DOWN_RETRY_SECONDS: u32 = 5;

/// Whose counter a rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Per {
    Principal,
    Team,
    Global,
}

/// Which cache tokens count toward tokens per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheCount {
    None,
    Write,
    All,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    matcher: Match,
    per: Per,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
    max_concurrent_streams: Option<u64>,
    budget_micro_usd: Option<u64>,
    downgrade_to: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    bytes_per_token: u64,
    max_input_tokens: u64,
    max_output_tokens: u64,
}

/// A token charge to settle.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TpmCharge {
    prefix: String,
    minute: u64,
    amount: i64,
}

/// A stream slot to release.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamHold {
    prefix: String,
    epoch: u64,
}

/// What on_request took, for on_complete to settle.
///
/// Kept in the request's state (held by the host, as JSON), not in the plugin: the gateway
/// lends an instance for one phase call, so on_complete may run on another instance than
/// on_request, after other requests' phases. The counter keys are stored whole, so a
/// request settles exactly what it took even if the rules changed (a reload) meanwhile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pending {
    tpm: Vec<TpmCharge>,
    streams: Vec<StreamHold>,
    /// Budget counter keys, with their TTL in ms.
    budgets: Vec<(String, u64)>,
    /// The metric label of the request's team (`none` without one).
    team: String,
}

impl Pending {
    /// Whether on_complete has anything to settle.
    fn holds_anything(&self) -> bool {
        !(self.tpm.is_empty() && self.streams.is_empty() && self.budgets.is_empty())
    }
}

/// The plugin.
#[derive(Debug)]
pub struct RateLimit {
    rules: Vec<Rule>,
    prices: PriceTable,
    estimate: Estimate,
    tpm_cache_tokens: CacheCount,
    fail_open: bool,
    stream_ttl_ms: u64,
}

/// Why a check could not be made (the state store failed).
struct StoreDown(String);

impl From<Error> for StoreDown {
    fn from(e: Error) -> Self {
        StoreDown(e.message().to_string())
    }
}

fn positive(map: &Map<String, Value>, key: &str, what: &str) -> Result<Option<u64>, Error> {
    match config::opt_u64(map, key, what)? {
        Some(0) => Err(Error::new(format!(
            "bad config: `{what}.{key}` must be at least 1"
        ))),
        other => Ok(other),
    }
}

fn parse_rule(i: usize, value: &Value) -> Result<Rule, Error> {
    let what = format!("rules[{i}]");
    let map = value
        .as_object()
        .ok_or_else(|| Error::new(format!("bad config: `{what}` must be a table")))?;
    config::only_keys(
        map,
        &[
            "name",
            "match",
            "per",
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrent_streams",
            "budget_usd",
            "downgrade_to",
        ],
        &what,
    )?;
    let matcher = Match::parse(
        map.get("match").unwrap_or(&Value::Null),
        &format!("{what}.match"),
    )?;
    let per = match config::opt_str(map, "per", &what)?.as_deref() {
        None | Some("principal") => Per::Principal,
        Some("team") => Per::Team,
        Some("global") => Per::Global,
        Some(other) => {
            return Err(Error::new(format!(
            "bad config: `{what}.per` is `{other}`: expected \"principal\", \"team\" or \"global\""
        )))
        }
    };
    let budget_micro_usd = config::opt_f64(map, "budget_usd", &what)?.map(usd_to_micro);
    let downgrade_to = config::opt_str(map, "downgrade_to", &what)?;
    if let Some(model) = &downgrade_to {
        if budget_micro_usd.is_none() {
            return Err(Error::new(format!(
                "bad config: `{what}.downgrade_to` needs `budget_usd`"
            )));
        }
        if model.is_empty() || model.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::new(format!(
                "bad config: `{what}.downgrade_to` must be a model ID"
            )));
        }
    }
    let rule = Rule {
        name: config::opt_str(map, "name", &what)?.unwrap_or_else(|| {
            let per = match per {
                Per::Principal => "principal",
                Per::Team => "team",
                Per::Global => "global",
            };
            format!("{}/per-{per}", matcher.describe())
        }),
        matcher,
        per,
        requests_per_minute: positive(map, "requests_per_minute", &what)?,
        tokens_per_minute: positive(map, "tokens_per_minute", &what)?,
        max_concurrent_streams: positive(map, "max_concurrent_streams", &what)?,
        budget_micro_usd,
        downgrade_to,
    };
    if rule.requests_per_minute.is_none()
        && rule.tokens_per_minute.is_none()
        && rule.max_concurrent_streams.is_none()
        && rule.budget_micro_usd.is_none()
    {
        return Err(Error::new(format!(
            "bad config: `{what}` sets no limit (requests_per_minute, tokens_per_minute, max_concurrent_streams or budget_usd)"
        )));
    }
    Ok(rule)
}

fn parse_estimate(value: &Value) -> Result<Estimate, Error> {
    let what = "estimate";
    let map = config::object(value, what)?;
    config::only_keys(
        map,
        &["bytes_per_token", "max_input_tokens", "max_output_tokens"],
        what,
    )?;
    Ok(Estimate {
        bytes_per_token: positive(map, "bytes_per_token", what)?.unwrap_or(4),
        max_input_tokens: config::opt_u64(map, "max_input_tokens", what)?.unwrap_or(200_000),
        max_output_tokens: config::opt_u64(map, "max_output_tokens", what)?.unwrap_or(4_096),
    })
}

fn is_inference(op: Operation) -> bool {
    matches!(
        op,
        Operation::Invoke | Operation::Stream | Operation::Converse | Operation::ConverseStream
    )
}

/// `value` decayed linearly over the minute: the sliding window's weight of the previous
/// minute, `elapsed_ms` into the current one.
fn decayed(previous: i64, elapsed_ms: u64) -> u64 {
    let previous = previous.max(0) as u64;
    (previous * (MINUTE_MS - elapsed_ms)).div_ceil(MINUTE_MS)
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
}

impl Plugin for RateLimit {
    fn init(config: &Value) -> Result<Self, Error> {
        let what = "plugins.config";
        let map = config::object(config, what)?;
        config::only_keys(
            map,
            &[
                "rules",
                "prices",
                "default_price",
                "estimate",
                "tpm_cache_tokens",
                "fail_open",
                "stream_ttl_seconds",
            ],
            what,
        )?;
        let rules: Vec<Rule> = match map.get("rules") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_rule(i, v))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("bad config: `rules` must be a list of tables".into()),
        };
        let mut names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::new(format!(
                "bad config: two rules are named `{}`: give them distinct `name`s (state counters are keyed by name)",
                w[0]
            )));
        }
        let prices = PriceTable::from_config(config)?;
        if prices.is_empty() {
            if let Some(r) = rules.iter().find(|r| r.budget_micro_usd.is_some()) {
                return Err(Error::new(format!(
                    "bad config: rule `{}` sets budget_usd but no [plugins.config.prices] (or default_price) are configured",
                    r.name
                )));
            }
        }
        let tpm_cache_tokens = match config::opt_str(map, "tpm_cache_tokens", what)?.as_deref() {
            None | Some("write") => CacheCount::Write,
            Some("none") => CacheCount::None,
            Some("all") => CacheCount::All,
            Some(other) => {
                return Err(Error::new(format!(
                    "bad config: `tpm_cache_tokens` is `{other}`: expected \"none\", \"write\" or \"all\""
                )))
            }
        };
        Ok(RateLimit {
            rules,
            prices,
            estimate: parse_estimate(map.get("estimate").unwrap_or(&Value::Null))?,
            tpm_cache_tokens,
            fail_open: config::opt_bool(map, "fail_open", what)?.unwrap_or(true),
            stream_ttl_ms: positive(map, "stream_ttl_seconds", what)?.unwrap_or(600) * 1000,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Decision {
        let facts = RequestFacts::read(req);
        let subject = facts.subject();
        let matched: Vec<usize> = (0..self.rules.len())
            .filter(|&i| self.rules[i].matcher.matches(&subject))
            .collect();
        if matched.is_empty() {
            return Decision::Continue;
        }
        let mut pending = Pending {
            team: facts.team.clone().unwrap_or_else(|| "none".into()),
            ..Pending::default()
        };
        match self.check(req, &facts, &matched, &mut pending) {
            Ok(Decision::Continue) => {
                if !pending.holds_anything() {
                    return Decision::Continue;
                }
                match req.set_state(&pending) {
                    Ok(()) => Decision::Continue,
                    // Unsettled charges would hold stream slots and estimates until their
                    // counters expire: give them back and treat it like a store failure.
                    Err(e) => {
                        self.undo(&pending);
                        self.unavailable("could not keep the request's charges", e.message())
                    }
                }
            }
            Ok(denial) => {
                self.undo(&pending);
                denial
            }
            Err(StoreDown(e)) => {
                self.undo(&pending);
                self.unavailable("state store unavailable", &e)
            }
        }
    }

    fn on_complete(&mut self, completion: &Completion) {
        // Nothing stored: no rule matched, the request was refused (and undone), or it took
        // nothing to settle.
        let Some(pending) = completion.request().state::<Pending>() else {
            return;
        };
        if let Err(StoreDown(e)) = self.settle(&pending, completion) {
            let _ = metrics::counter_add("store_errors_total", &[], 1);
            log::warn(&format!(
                "could not settle request {}: {e}",
                completion.request().request_id()
            ));
        }
    }
}

impl RateLimit {
    /// The counter key prefix of `rule` for this request.
    fn prefix(&self, kind: &str, rule: &Rule, facts: &RequestFacts) -> String {
        let principal = facts.principal.as_deref().unwrap_or("anonymous");
        let subject = match (rule.per, &facts.team) {
            (Per::Global, _) => "all".to_string(),
            (Per::Team, Some(team)) => format!("t:{team}"),
            // No team: the principal is its own team.
            (Per::Team, None) | (Per::Principal, _) => format!("p:{principal}"),
        };
        format!("{kind}:{}:{subject}", rule.name)
    }

    fn who(rule: &Rule, facts: &RequestFacts) -> String {
        let principal = facts.principal.as_deref().unwrap_or("anonymous");
        match (rule.per, &facts.team) {
            (Per::Global, _) => "the gateway".to_string(),
            (Per::Team, Some(team)) => format!("team {team}"),
            _ => format!("principal {principal}"),
        }
    }

    fn denied(&self, kind: &str, team: &str, message: String, retry_after: u32) -> Decision {
        let _ = metrics::counter_add("denied_total", &[("limit", kind), ("team", team)], 1);
        Decision::too_many_requests(message, retry_after)
    }

    /// The request could not be limited (`what`, because of `error`): let it through or
    /// refuse it, per `fail_open`.
    fn unavailable(&self, what: &str, error: &str) -> Decision {
        let _ = metrics::counter_add("store_errors_total", &[], 1);
        if self.fail_open {
            log::warn(&format!("{what}, not limiting: {error}"));
            Decision::Continue
        } else {
            log::error(&format!("{what}, refusing: {error}"));
            Decision::deny(
                503,
                "the gateway's rate limiter is unavailable; try again shortly",
            )
            .with_retry_after(STORE_DOWN_RETRY_SECONDS)
        }
    }

    /// The token estimate of a request: body bytes / bytes_per_token (capped) plus its
    /// max_tokens (capped).
    fn estimate_tokens(&self, req: &Request) -> u64 {
        let e = &self.estimate;
        let body_bytes = req
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or_else(|| req.body_json_text("").map(|t| t.len() as u64))
            .unwrap_or(0);
        let input = body_bytes
            .div_ceil(e.bytes_per_token)
            .min(e.max_input_tokens);
        let output = ["/max_tokens", "/inferenceConfig/maxTokens"]
            .iter()
            .find_map(|p| req.body_json(p).and_then(|v| v.as_u64()))
            .unwrap_or(e.max_output_tokens)
            .min(e.max_output_tokens);
        (input + output).max(1)
    }

    fn counted_tokens(&self, usage: &Usage) -> u64 {
        let base = usage.input_tokens + usage.output_tokens;
        match self.tpm_cache_tokens {
            CacheCount::None => base,
            CacheCount::Write => base + usage.cache_write_tokens,
            CacheCount::All => base + usage.cache_write_tokens + usage.cache_read_tokens,
        }
    }

    /// Checks every matched rule, recording in `pending` what it takes (to settle in
    /// on_complete, or to undo if the request is refused).
    fn check(
        &self,
        req: &mut Request,
        facts: &RequestFacts,
        matched: &[usize],
        pending: &mut Pending,
    ) -> Result<Decision, StoreDown> {
        let now = clock::now_ms();
        let op = req.operation();
        let inference = is_inference(op);

        // 1. Budgets (read only).
        if inference {
            let month = month_key(now);
            let month_end = next_month_start_ms(now);
            let mut downgrade: Option<&str> = None;
            for &i in matched {
                let rule = &self.rules[i];
                let Some(budget) = rule.budget_micro_usd else {
                    continue;
                };
                let key = format!("{}:{month}", self.prefix("budget", rule, facts));
                let spent = state::get(&key)?.unwrap_or(0).max(0) as u64;
                pending
                    .budgets
                    .push((key, month_end - now + BUDGET_GRACE_MS));
                if spent < budget {
                    continue;
                }
                match &rule.downgrade_to {
                    Some(to) => {
                        downgrade.get_or_insert(to);
                    }
                    None => {
                        let message = format!(
                            "monthly budget exhausted: {} has spent ${:.2} of its ${:.2} budget for {month} (gateway rule `{}`); it resets at {}",
                            Self::who(rule, facts),
                            micro_to_usd(spent),
                            micro_to_usd(budget),
                            rule.name,
                            rfc3339(month_end),
                        );
                        return Ok(self.denied(
                            "budget",
                            &pending.team,
                            message,
                            secs(month_end - now),
                        ));
                    }
                }
            }
            if let Some(to) = downgrade {
                if facts.model.as_deref() != Some(to) {
                    let to = to.to_string();
                    if let Err(e) = req.set_model(&to) {
                        log::error(&format!("could not downgrade to {to}: {e}"));
                        return Ok(self.denied(
                            "budget",
                            &pending.team,
                            "monthly budget exhausted and the downgrade model is not usable".into(),
                            secs(month_end - now),
                        ));
                    }
                    let _ = req.set_metadata(
                        "rate_limit_downgraded_from",
                        facts.model.as_deref().unwrap_or("-"),
                    );
                    let _ = metrics::counter_add("downgraded_total", &[("team", &pending.team)], 1);
                    log::info(&format!(
                        "over budget: {} -> {to} for {} (request {})",
                        facts.model.as_deref().unwrap_or("-"),
                        facts.principal.as_deref().unwrap_or("anonymous"),
                        req.request_id()
                    ));
                }
            }
        }

        // 2. Concurrent streams (counters, released at on_complete).
        if op.is_streaming() {
            let epoch = now / self.stream_ttl_ms;
            for &i in matched {
                let rule = &self.rules[i];
                let Some(limit) = rule.max_concurrent_streams else {
                    continue;
                };
                let prefix = self.prefix("streams", rule, facts);
                let previous = match epoch.checked_sub(1) {
                    Some(e) => state::get(&format!("{prefix}:{e}"))?.unwrap_or(0).max(0),
                    None => 0,
                };
                let key = format!("{prefix}:{epoch}");
                let current = state::incr(&key, 1, 2 * self.stream_ttl_ms)?;
                if previous + current > limit as i64 {
                    state::incr(&key, -1, 2 * self.stream_ttl_ms)?;
                    let message = format!(
                        "concurrency limit: {} already has {limit} streaming requests in flight (gateway rule `{}`); retry when one finishes",
                        Self::who(rule, facts),
                        rule.name
                    );
                    return Ok(self.denied(
                        "concurrent_streams",
                        &pending.team,
                        message,
                        STREAM_RETRY_SECONDS,
                    ));
                }
                pending.streams.push(StreamHold { prefix, epoch });
            }
        }

        // 3. Tokens per minute: charge the estimate now, settle at on_complete.
        if inference
            && matched
                .iter()
                .any(|&i| self.rules[i].tokens_per_minute.is_some())
        {
            let estimate = self.estimate_tokens(req);
            let minute = now / MINUTE_MS;
            let elapsed = now % MINUTE_MS;
            for &i in matched {
                let rule = &self.rules[i];
                let Some(limit) = rule.tokens_per_minute else {
                    continue;
                };
                let prefix = self.prefix("tpm", rule, facts);
                let previous = match minute.checked_sub(1) {
                    Some(m) => state::get(&format!("{prefix}:{m}"))?.unwrap_or(0).max(0),
                    None => 0,
                };
                // A request larger than the whole limit still passes an idle window.
                let charge = estimate.min(limit);
                let key = format!("{prefix}:{minute}");
                let current = state::incr(&key, charge as i64, TPM_TTL_MS)?.max(0) as u64;
                let used = decayed(previous, elapsed) + current;
                if used > limit {
                    state::incr(&key, -(charge as i64), TPM_TTL_MS)?;
                    let before = current.saturating_sub(charge);
                    let retry_ms = if before + charge <= limit && previous > 0 {
                        // Wait for the previous minute to decay enough.
                        let room = (limit - before - charge) as f64;
                        let weight_ok = room / previous as f64;
                        let at = (MINUTE_MS as f64 * (1.0 - weight_ok)).ceil() as u64;
                        at.saturating_sub(elapsed)
                    } else {
                        // This minute is full: the next one starts with it as its previous.
                        let room = limit.saturating_sub(charge) as f64;
                        let weight_ok = if before == 0 {
                            1.0
                        } else {
                            room / before as f64
                        };
                        MINUTE_MS - elapsed
                            + (MINUTE_MS as f64 * (1.0 - weight_ok.min(1.0))).ceil() as u64
                    };
                    let message = format!(
                        "rate limit: {} is over {limit} tokens per minute (gateway rule `{}`; this request is estimated at {estimate} tokens); retry in {} s",
                        Self::who(rule, facts),
                        rule.name,
                        secs(retry_ms)
                    );
                    return Ok(self.denied(
                        "tokens_per_minute",
                        &pending.team,
                        message,
                        secs(retry_ms),
                    ));
                }
                pending.tpm.push(TpmCharge {
                    prefix,
                    minute,
                    amount: charge as i64,
                });
            }
        }

        // 4. Requests per minute (rate windows: consumed when allowed, never undone).
        for &i in matched {
            let rule = &self.rules[i];
            let Some(limit) = rule.requests_per_minute else {
                continue;
            };
            let key = self.prefix("rpm", rule, facts);
            let check = state::check_rate(&key, limit, MINUTE_MS, 1)?;
            if !check.allowed {
                let message = format!(
                    "rate limit: {} is over {limit} requests per minute (gateway rule `{}`); retry in {} s",
                    Self::who(rule, facts),
                    rule.name,
                    check.retry_after_seconds()
                );
                return Ok(self.denied(
                    "requests_per_minute",
                    &pending.team,
                    message,
                    check.retry_after_seconds().max(1),
                ));
            }
        }
        Ok(Decision::Continue)
    }

    /// Gives back what a refused request took (stream slots, token charges).
    fn undo(&self, pending: &Pending) {
        for hold in &pending.streams {
            let _ = state::incr(
                &format!("{}:{}", hold.prefix, hold.epoch),
                -1,
                2 * self.stream_ttl_ms,
            );
        }
        for charge in &pending.tpm {
            let _ = state::incr(
                &format!("{}:{}", charge.prefix, charge.minute),
                -charge.amount,
                TPM_TTL_MS,
            );
        }
    }

    fn settle(&mut self, pending: &Pending, c: &Completion) -> Result<(), StoreDown> {
        let now = clock::now_ms();

        // Streams: release the slot unless its counter has expired (the leak guard).
        let epoch = now / self.stream_ttl_ms;
        for hold in &pending.streams {
            if epoch <= hold.epoch + 1 {
                state::incr(
                    &format!("{}:{}", hold.prefix, hold.epoch),
                    -1,
                    2 * self.stream_ttl_ms,
                )?;
            }
        }

        // Tokens: replace the estimate with the real count (a refund when it was smaller).
        let actual = self.counted_tokens(&c.usage) as i64;
        let minute = now / MINUTE_MS;
        for charge in &pending.tpm {
            let charged_key = format!("{}:{}", charge.prefix, charge.minute);
            if minute == charge.minute {
                let delta = actual - charge.amount;
                if delta != 0 {
                    state::incr(&charged_key, delta, TPM_TTL_MS)?;
                }
            } else {
                // The request outlived its minute: take the estimate back from that minute
                // (while its counter lives) and count the real use now.
                if minute == charge.minute + 1 {
                    state::incr(&charged_key, -charge.amount, TPM_TTL_MS)?;
                }
                if actual > 0 {
                    state::incr(&format!("{}:{minute}", charge.prefix), actual, TPM_TTL_MS)?;
                }
            }
        }

        // Budgets: the real cost, every token kind at its own price.
        if !pending.budgets.is_empty() {
            let model = c.model_served.clone().or_else(|| c.request().model());
            let cost = self.prices.cost_micro_usd(model.as_deref(), &c.usage);
            if cost > 0 {
                for (key, ttl) in &pending.budgets {
                    state::incr(key, cost as i64, *ttl)?;
                }
                let _ =
                    metrics::counter_add("spent_micro_usd_total", &[("team", &pending.team)], cost);
            }
        }
        Ok(())
    }
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests;
