//! `rate-limit`: requests per minute, tokens per minute, concurrent streams and monthly
//! budgets, per principal, per team or globally, by rules matched on principal, team, model
//! and operation.
//!
//! EVERY matching rule applies (limits layer: a team cap and a per-person cap both hold). A
//! request over any limit is refused with 429, a `retry-after` and a message naming the limit
//! (Claude Code shows it); over a budget whose rule has `downgrade_to`, the model is rewritten
//! instead. Everything lives in the gateway's state store (shared by replicas with Redis).
//! See `plugins/README.md` for the config and the arithmetic.
//!
//! One round trip on the client's path: `on_request` builds the operations of every matched
//! rule into one `state::batch` (a downgrade adds a second one), then reads the answers in
//! rule-kind order (budgets, concurrent streams, tokens per minute, requests per minute); the
//! first refusal answers the client, and whatever the batch took for the request is given
//! back with one `state::submit`, off the client's path. `on_complete` settles the same way:
//! one `state::submit`.
//!
//! Budgets cannot be dodged: each request **reserves** its worst-case cost on the budget (a
//! hold in the store that fits under the budget atomically across replicas, beside the
//! settled spend and every other request's reservation), so requests running at the same
//! time cannot together spend past it; `on_complete` releases the reservation and settles the
//! exact cost. A request whose model cannot be priced is refused (403) by a budget rule
//! rather than counted as free. Concurrent streams are **leases** on the same mechanism. A
//! reservation or lease whose `on_complete` never comes (a replica died) ends by itself after
//! `stream_ttl_seconds`.

use llm_gateway_plugin::serde_json::{Map, Value};
use llm_gateway_plugin::state::{self, Answer, HoldState, Op};
use llm_gateway_plugin::{
    clock, export_plugin, log, metrics, Completion, Decision, Error, Operation, Plugin, Request,
    Usage,
};
use plugin_common::calendar::{month_key, next_month_start_ms, rfc3339};
use plugin_common::config;
use plugin_common::matcher::{Match, RequestFacts};
use plugin_common::pricing::{micro_to_usd, usd_to_micro, Price, PriceTable};
use serde::{Deserialize, Serialize};

const MINUTE_MS: u64 = 60_000;
/// Per-minute token counters live two minutes (the current one and the sliding previous one).
const TPM_TTL_MS: u64 = 2 * MINUTE_MS;
/// Budget counters outlive their month by a week.
const BUDGET_GRACE_MS: u64 = 7 * 86_400_000;
/// `retry-after` when waiting for requests in flight (a stream slot, a budget reservation):
/// there is no telling when one ends.
const IN_FLIGHT_RETRY_SECONDS: u32 = 5;
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

/// What a request may use, known before the call: its input estimated from the body's size,
/// and the output it asks for at most.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    input_tokens: u64,
    max_tokens: Option<u64>,
}

impl Size {
    /// The tokens-per-minute charge: input plus `max_tokens`, capped at `max_output_tokens`
    /// (which is also the guess without one).
    fn tokens(&self, e: &Estimate) -> u64 {
        let output = self
            .max_tokens
            .unwrap_or(e.max_output_tokens)
            .min(e.max_output_tokens);
        (self.input_tokens + output).max(1)
    }

    /// The most the request can cost, in micro-USD (rounded up): its input at the input price
    /// and all of `max_tokens` (`max_output_tokens` without one) at the output price.
    fn worst_case_micro_usd(&self, e: &Estimate, price: &Price) -> i64 {
        let output = self.max_tokens.unwrap_or(e.max_output_tokens);
        let micro = self.input_tokens as f64 * price.input + output as f64 * price.output;
        let micro = micro.ceil();
        if micro >= i64::MAX as f64 {
            i64::MAX
        } else {
            micro.max(0.0) as i64
        }
    }
}

/// A price as kept in the request's state (the one its reservations were made at).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct KeptPrice {
    input: f64,
    output: f64,
    cache_read: f64,
    cache_write: f64,
    cache_write_1h: f64,
}

impl From<Price> for KeptPrice {
    fn from(p: Price) -> Self {
        Self {
            input: p.input,
            output: p.output,
            cache_read: p.cache_read,
            cache_write: p.cache_write,
            cache_write_1h: p.cache_write_1h,
        }
    }
}

impl From<KeptPrice> for Price {
    fn from(p: KeptPrice) -> Self {
        Self {
            input: p.input,
            output: p.output,
            cache_read: p.cache_read,
            cache_write: p.cache_write,
            cache_write_1h: p.cache_write_1h,
        }
    }
}

/// A token charge to settle.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TpmCharge {
    prefix: String,
    minute: u64,
    amount: i64,
}

/// A budget reservation to settle.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reservation {
    /// The budget's key (`budget:<rule>:<subject>:<month>`).
    key: String,
    /// The budget counter's TTL, should the settlement create it.
    ttl_ms: u64,
}

/// What on_request took, for on_complete to settle (or for a refusal to give back).
///
/// Kept in the request's state (held by the host, as JSON), not in the plugin: the gateway
/// lends an instance for one phase call, so on_complete may run on another instance than
/// on_request, after other requests' phases. The keys are stored whole, so a request settles
/// exactly what it took even if the rules changed (a reload) meanwhile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pending {
    /// The holder of the request's reservations and leases: its request ID.
    holder: String,
    /// The metric label of the request's team (`none` without one).
    team: String,
    reservations: Vec<Reservation>,
    /// Stream lease keys (`streams:<rule>:<subject>`).
    leases: Vec<String>,
    tpm: Vec<TpmCharge>,
    /// The price the reservations were made at: the served model's price when it has none.
    price: Option<KeptPrice>,
}

impl Pending {
    /// Whether on_complete has anything to settle.
    fn holds_anything(&self) -> bool {
        !(self.tpm.is_empty() && self.leases.is_empty() && self.reservations.is_empty())
    }

    /// The operations that give back everything taken.
    fn undo(&self, stream_ttl_ms: u64) -> Vec<Op> {
        let mut ops = Vec::new();
        for r in &self.reservations {
            ops.push(Op::release(&r.key, &self.holder, 0, r.ttl_ms));
        }
        for key in &self.leases {
            ops.push(Op::release(key, &self.holder, 0, stream_ttl_ms));
        }
        for charge in &self.tpm {
            ops.push(Op::incr(
                format!("{}:{}", charge.prefix, charge.minute),
                -charge.amount,
                TPM_TTL_MS,
            ));
        }
        ops
    }
}

/// What the checks of one request share.
struct Ctx<'a> {
    facts: &'a RequestFacts,
    op: Operation,
    now: u64,
    size: Size,
    /// The request model's price, when a budget rule needs it.
    price: Option<Price>,
    /// The request ID, holder of its reservations and leases.
    holder: &'a str,
}

/// One limit of one rule to check, with where its operations start in the batch.
#[derive(Debug)]
struct Check<'r> {
    rule: &'r Rule,
    kind: CheckKind,
    first: usize,
}

#[derive(Debug)]
enum CheckKind {
    /// `acquire` of the worst case on the budget.
    Budget {
        key: String,
        ttl_ms: u64,
        amount: i64,
        budget: u64,
    },
    /// `acquire` of a stream lease.
    Streams { key: String, limit: u64 },
    /// `get` of the previous minute (when there is one), `incr` of the current one.
    Tokens(TokensCheck),
    /// `check-rate`.
    Requests { limit: u64 },
}

/// A tokens-per-minute charge to check.
#[derive(Debug)]
struct TokensCheck {
    prefix: String,
    minute: u64,
    /// What is charged: the estimate, capped at the limit.
    charge: u64,
    estimate: u64,
    limit: u64,
    /// Whether the batch reads the previous minute (before the charge).
    has_previous: bool,
}

/// The checks of one request and the batch that answers them.
#[derive(Debug, Default)]
struct Plan<'r> {
    checks: Vec<Check<'r>>,
    ops: Vec<Op>,
}

impl<'r> Plan<'r> {
    fn push(&mut self, rule: &'r Rule, kind: CheckKind, ops: impl IntoIterator<Item = Op>) {
        self.checks.push(Check {
            rule,
            kind,
            first: self.ops.len(),
        });
        self.ops.extend(ops);
    }
}

/// What one check concluded.
enum Verdict {
    Fits,
    /// Over the limit: refuse with 429.
    Refused {
        limit: &'static str,
        message: String,
        retry_after: u32,
    },
    /// Over a budget whose rule downgrades: reserve at the downgrade model's price instead.
    Downgrade {
        key: String,
        ttl_ms: u64,
    },
    /// The store failed (or answered out of contract).
    Failed(String),
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

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What the store answered for op `i`, as the kind expected (`pick`), or why not.
fn answer<T>(
    answers: &[Result<Answer, Error>],
    i: usize,
    pick: impl FnOnce(&Answer) -> Option<T>,
) -> Result<T, String> {
    match answers.get(i) {
        Some(Ok(a)) => pick(a).ok_or_else(|| format!("unexpected answer from the store: {a:?}")),
        Some(Err(e)) => Err(e.message().to_string()),
        None => Err("the store answered fewer operations than it was sent".into()),
    }
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
            // Budgets may also be priced by the gateway's catalog: an unpriced model is
            // refused per request (403), not at load.
            prices: PriceTable::from_config(config)?,
            estimate: parse_estimate(map.get("estimate").unwrap_or(&Value::Null))?,
            tpm_cache_tokens,
            // A store error reaching the plugin means the gateway's `[state] on_unavailable`
            // chose to refuse, so refuse by default.
            fail_open: config::opt_bool(map, "fail_open", what)?.unwrap_or(false),
            stream_ttl_ms: positive(map, "stream_ttl_seconds", what)?.unwrap_or(600) * 1000,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Decision {
        let facts = RequestFacts::read(req);
        let subject = facts.subject();
        let matched: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.matcher.matches(&subject))
            .collect();
        if matched.is_empty() {
            return Decision::Continue;
        }
        let mut pending = Pending {
            holder: req.request_id(),
            team: facts.team.clone().unwrap_or_else(|| "none".into()),
            ..Pending::default()
        };
        let decision = self.check(req, &facts, &matched, &mut pending);
        if decision.is_deny() {
            // Give back what the batch took, off the client's path.
            state::submit(&pending.undo(self.stream_ttl_ms));
            return decision;
        }
        if !pending.holds_anything() {
            return decision;
        }
        match req.set_state(&pending) {
            Ok(()) => decision,
            // Unsettled holds would count against the limits until they expire: give them
            // back and treat it like a store failure.
            Err(e) => {
                state::submit(&pending.undo(self.stream_ttl_ms));
                self.unavailable("could not keep the request's charges", e.message())
            }
        }
    }

    fn on_complete(&mut self, completion: &Completion) {
        // Nothing stored: no rule matched, the request was refused (and undone), or it took
        // nothing to settle.
        let Some(pending) = completion.request().state::<Pending>() else {
            return;
        };
        self.settle(&pending, completion);
    }
}

impl RateLimit {
    /// The key of `rule`'s `kind` of limit for this request's subject.
    fn prefix(kind: &str, rule: &Rule, facts: &RequestFacts) -> String {
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

    /// A budget rule cannot count a request it cannot price: refuse it rather than let it
    /// spend for free.
    fn unpriced(&self, model: &str, rule: &Rule, team: &str) -> Decision {
        let _ = metrics::counter_add("denied_total", &[("limit", "unpriced"), ("team", team)], 1);
        log::warn(&format!(
            "refusing model `{model}`: rule `{}` sets a budget and the model has no price",
            rule.name
        ));
        Decision::deny(
            403,
            format!(
                "model `{model}` has no price, so the gateway cannot count it against the budget of rule `{}`; ask the gateway's operator to add a price for it to the rate-limit plugin's [plugins.config.prices] or to set default_price",
                rule.name
            ),
        )
    }

    /// What the request may use: input tokens from the body's size (`content-length`, else
    /// the JSON body), capped; and the `max_tokens` it asks for.
    fn size(&self, req: &Request) -> Size {
        let e = &self.estimate;
        let body_bytes = req
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or_else(|| req.body_json_text("").map(|t| t.len() as u64))
            .unwrap_or(0);
        Size {
            input_tokens: body_bytes
                .div_ceil(e.bytes_per_token)
                .min(e.max_input_tokens),
            max_tokens: ["/max_tokens", "/inferenceConfig/maxTokens"]
                .iter()
                .find_map(|p| req.body_json(p).and_then(|v| v.as_u64())),
        }
    }

    fn counted_tokens(&self, usage: &Usage) -> u64 {
        let base = usage.input_tokens + usage.output_tokens;
        match self.tpm_cache_tokens {
            CacheCount::None => base,
            CacheCount::Write => base + usage.cache_write_tokens,
            CacheCount::All => base + usage.cache_write_tokens + usage.cache_read_tokens,
        }
    }

    /// Checks every matched rule with one batch, recording in `pending` what was taken (to
    /// settle in on_complete, or to give back when the answer is a refusal).
    fn check(
        &self,
        req: &mut Request,
        facts: &RequestFacts,
        matched: &[&Rule],
        pending: &mut Pending,
    ) -> Decision {
        let now = clock::now_ms();
        let op = req.operation();
        // Reading the body costs host calls (and a parse): only for the limits that need it.
        let sized = matched
            .iter()
            .any(|r| r.budget_micro_usd.is_some() || r.tokens_per_minute.is_some());
        let size = match is_inference(op) && sized {
            true => self.size(req),
            false => Size::default(),
        };
        // Budgets price the request before anything is taken.
        let mut price = None;
        if is_inference(op) {
            if let Some(rule) = matched.iter().find(|r| r.budget_micro_usd.is_some()) {
                let model = facts.model.as_deref().unwrap_or("");
                match self.prices.price(model) {
                    Some(p) => price = Some(p),
                    None => return self.unpriced(model, rule, &pending.team),
                }
            }
        }
        let holder = pending.holder.clone();
        let ctx = Ctx {
            facts,
            op,
            now,
            size,
            price,
            holder: &holder,
        };
        let plan = self.plan(&ctx, matched);
        if plan.ops.is_empty() {
            return Decision::Continue;
        }
        pending.price = price.map(KeptPrice::from);
        let answers = state::batch(&plan.ops);
        let mut first_refusal = None;
        let mut downgrades = Vec::new();
        for check in &plan.checks {
            let verdict = self.evaluate(check, &answers, &ctx, pending);
            match verdict {
                Verdict::Fits => {}
                Verdict::Downgrade { key, ttl_ms } => downgrades.push((check.rule, key, ttl_ms)),
                refusal => {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        match first_refusal {
            Some(Verdict::Refused {
                limit,
                message,
                retry_after,
            }) => self.denied(limit, &pending.team, message, retry_after),
            Some(Verdict::Failed(e)) => self.unavailable("state store unavailable", &e),
            _ if !downgrades.is_empty() => self.downgrade(req, facts, &downgrades, size, pending),
            _ => Decision::Continue,
        }
    }

    /// The operations of every matched rule's limits, in the order their answers are read:
    /// budgets, concurrent streams, tokens per minute, requests per minute.
    fn plan<'r>(&self, ctx: &Ctx<'_>, matched: &[&'r Rule]) -> Plan<'r> {
        let mut plan = Plan::default();
        let inference = is_inference(ctx.op);
        if let (true, Some(price)) = (inference, ctx.price) {
            self.plan_budgets(ctx, matched, &price, &mut plan);
        }
        if ctx.op.is_streaming() {
            for &rule in matched {
                let Some(limit) = rule.max_concurrent_streams else {
                    continue;
                };
                let key = Self::prefix("streams", rule, ctx.facts);
                let acquire = Op::acquire(&key, ctx.holder, 1, as_i64(limit), self.stream_ttl_ms);
                plan.push(rule, CheckKind::Streams { key, limit }, [acquire]);
            }
        }
        if inference {
            self.plan_tokens(ctx, matched, &mut plan);
        }
        for &rule in matched {
            let Some(limit) = rule.requests_per_minute else {
                continue;
            };
            let key = Self::prefix("rpm", rule, ctx.facts);
            let check_rate = Op::check_rate(key, limit, MINUTE_MS, 1);
            plan.push(rule, CheckKind::Requests { limit }, [check_rate]);
        }
        plan
    }

    /// A reservation of the request's worst case (at `price`) on each matched budget.
    fn plan_budgets<'r>(
        &self,
        ctx: &Ctx<'_>,
        matched: &[&'r Rule],
        price: &Price,
        plan: &mut Plan<'r>,
    ) {
        let month = month_key(ctx.now);
        let ttl_ms = next_month_start_ms(ctx.now) - ctx.now + BUDGET_GRACE_MS;
        let amount = ctx.size.worst_case_micro_usd(&self.estimate, price);
        for &rule in matched {
            let Some(budget) = rule.budget_micro_usd else {
                continue;
            };
            let key = format!("{}:{month}", Self::prefix("budget", rule, ctx.facts));
            let acquire = Op::acquire(&key, ctx.holder, amount, as_i64(budget), self.stream_ttl_ms);
            let kind = CheckKind::Budget {
                key,
                ttl_ms,
                amount,
                budget,
            };
            plan.push(rule, kind, [acquire]);
        }
    }

    /// The estimate charged to each matched tokens-per-minute limit, with a read of the
    /// previous minute for the sliding window.
    fn plan_tokens<'r>(&self, ctx: &Ctx<'_>, matched: &[&'r Rule], plan: &mut Plan<'r>) {
        let estimate = ctx.size.tokens(&self.estimate);
        let minute = ctx.now / MINUTE_MS;
        for &rule in matched {
            let Some(limit) = rule.tokens_per_minute else {
                continue;
            };
            let prefix = Self::prefix("tpm", rule, ctx.facts);
            let previous = minute
                .checked_sub(1)
                .map(|m| Op::get(format!("{prefix}:{m}")));
            // A request larger than the whole limit still passes an idle window.
            let charge = estimate.min(limit);
            let incr = Op::incr(format!("{prefix}:{minute}"), as_i64(charge), TPM_TTL_MS);
            let kind = CheckKind::Tokens(TokensCheck {
                has_previous: previous.is_some(),
                prefix,
                minute,
                charge,
                estimate,
                limit,
            });
            plan.push(rule, kind, previous.into_iter().chain([incr]));
        }
    }

    /// Reads one check's answers; whatever they show was taken goes into `pending`.
    fn evaluate(
        &self,
        check: &Check<'_>,
        answers: &[Result<Answer, Error>],
        ctx: &Ctx<'_>,
        pending: &mut Pending,
    ) -> Verdict {
        let (rule, facts, now) = (check.rule, ctx.facts, ctx.now);
        let i = check.first;
        match &check.kind {
            CheckKind::Budget {
                key,
                ttl_ms,
                amount,
                budget,
            } => match answer(answers, i, Answer::acquired) {
                Ok(h) if h.granted => {
                    pending.reservations.push(Reservation {
                        key: key.clone(),
                        ttl_ms: *ttl_ms,
                    });
                    Verdict::Fits
                }
                Ok(_) if rule.downgrade_to.is_some() => Verdict::Downgrade {
                    key: key.clone(),
                    ttl_ms: *ttl_ms,
                },
                Ok(h) => Self::over_budget(rule, facts, now, h, *amount, *budget),
                Err(e) => Verdict::Failed(e),
            },
            CheckKind::Streams { key, limit } => match answer(answers, i, Answer::acquired) {
                Ok(h) if h.granted => {
                    pending.leases.push(key.clone());
                    Verdict::Fits
                }
                Ok(_) => Verdict::Refused {
                    limit: "concurrent_streams",
                    message: format!(
                        "concurrency limit: {} already has {limit} streaming requests in flight (gateway rule `{}`); retry when one finishes",
                        Self::who(rule, facts),
                        rule.name
                    ),
                    retry_after: IN_FLIGHT_RETRY_SECONDS,
                },
                Err(e) => Verdict::Failed(e),
            },
            CheckKind::Tokens(tokens) => tokens.evaluate(rule, answers, i, ctx, pending),
            CheckKind::Requests { limit } => match answer(answers, i, Answer::rate) {
                Ok(r) if r.allowed => Verdict::Fits,
                Ok(r) => Verdict::Refused {
                    limit: "requests_per_minute",
                    message: format!(
                        "rate limit: {} is over {limit} requests per minute (gateway rule `{}`); retry in {} s",
                        Self::who(rule, facts),
                        rule.name,
                        r.retry_after_seconds()
                    ),
                    retry_after: r.retry_after_seconds().max(1),
                },
                Err(e) => Verdict::Failed(e),
            },
        }
    }

    /// The refusal of a budget reservation that did not fit.
    fn over_budget(
        rule: &Rule,
        facts: &RequestFacts,
        now: u64,
        h: HoldState,
        amount: i64,
        budget: u64,
    ) -> Verdict {
        let month = month_key(now);
        let month_end = next_month_start_ms(now);
        let used = h.used.max(0) as u64;
        let held = h.held.max(0) as u64;
        let spent = match held {
            0 => format!("${:.2}", micro_to_usd(used)),
            _ => format!(
                "${:.2} (with ${:.2} reserved by requests in flight)",
                micro_to_usd(used.saturating_add(held)),
                micro_to_usd(held)
            ),
        };
        let who = Self::who(rule, facts);
        let (message, retry_after) = if used >= budget {
            (
                format!(
                    "monthly budget exhausted: {who} has spent {spent} of its ${:.2} budget for {month} (gateway rule `{}`); it resets at {}",
                    micro_to_usd(budget),
                    rule.name,
                    rfc3339(month_end),
                ),
                secs(month_end - now),
            )
        } else {
            let fits_alone = used.saturating_add(amount.max(0) as u64) <= budget;
            let (advice, retry_after) = if fits_alone {
                (
                    "retry when requests in flight finish".to_string(),
                    IN_FLIGHT_RETRY_SECONDS,
                )
            } else {
                (
                    format!(
                        "lower max_tokens, or wait for the budget to reset at {}",
                        rfc3339(month_end)
                    ),
                    secs(month_end - now),
                )
            };
            (
                format!(
                    "monthly budget: {who} has spent {spent} of its ${:.2} budget for {month}, and this request could cost up to ${:.2} (gateway rule `{}`); {advice}",
                    micro_to_usd(budget),
                    micro_to_usd(amount.max(0) as u64),
                    rule.name,
                ),
                retry_after,
            )
        };
        Verdict::Refused {
            limit: "budget",
            message,
            retry_after,
        }
    }

    /// Over a budget whose rule downgrades (and under every other limit): rewrite the model
    /// and reserve its worst case at the downgrade model's price, past the budget (a second
    /// batch, only in this case), so the request is settled like any other.
    fn downgrade(
        &self,
        req: &mut Request,
        facts: &RequestFacts,
        over: &[(&Rule, String, u64)],
        size: Size,
        pending: &mut Pending,
    ) -> Decision {
        let (rule, _, _) = over[0];
        let to = rule.downgrade_to.as_deref().unwrap_or_default();
        let Some(price) = self.prices.price(to) else {
            return self.unpriced(to, rule, &pending.team);
        };
        let from = facts.model.as_deref().unwrap_or("-");
        if facts.model.as_deref() != Some(to) {
            if let Err(e) = req.set_model(to) {
                log::error(&format!("could not downgrade to {to}: {e}"));
                let now = clock::now_ms();
                return self.denied(
                    "budget",
                    &pending.team,
                    "monthly budget exhausted and the downgrade model is not usable".into(),
                    secs(next_month_start_ms(now) - now),
                );
            }
            let _ = req.set_metadata("rate_limit_downgraded_from", from);
            let _ = metrics::counter_add("downgraded_total", &[("team", &pending.team)], 1);
            log::info(&format!(
                "over budget: {from} -> {to} for {} (request {})",
                facts.principal.as_deref().unwrap_or("anonymous"),
                pending.holder
            ));
        }
        let amount = size.worst_case_micro_usd(&self.estimate, &price);
        let ops: Vec<Op> = over
            .iter()
            .map(|(_, key, _)| {
                Op::acquire(key, &pending.holder, amount, i64::MAX, self.stream_ttl_ms)
            })
            .collect();
        let answers = state::batch(&ops);
        for (i, (_, key, ttl_ms)) in over.iter().enumerate() {
            match answer(&answers, i, Answer::acquired) {
                Ok(h) if h.granted => pending.reservations.push(Reservation {
                    key: key.clone(),
                    ttl_ms: *ttl_ms,
                }),
                Ok(h) => {
                    return self.unavailable(
                        "state store refused an unlimited reservation",
                        &format!("{h:?}"),
                    )
                }
                Err(e) => return self.unavailable("state store unavailable", &e),
            }
        }
        pending.price = Some(price.into());
        Decision::Continue
    }

    /// Settles what the request took, in one submission off the client's path: budget
    /// reservations released with the exact cost, stream leases released, token estimates
    /// replaced by the real count.
    fn settle(&self, pending: &Pending, c: &Completion) {
        let mut ops = Vec::new();
        if !pending.reservations.is_empty() {
            let cost = as_i64(self.cost(pending, c));
            for r in &pending.reservations {
                ops.push(Op::release(&r.key, &pending.holder, cost, r.ttl_ms));
            }
            if cost > 0 {
                let _ = metrics::counter_add(
                    "spent_micro_usd_total",
                    &[("team", &pending.team)],
                    cost as u64,
                );
            }
        }
        for key in &pending.leases {
            ops.push(Op::release(key, &pending.holder, 0, self.stream_ttl_ms));
        }
        self.settle_tokens(pending, &c.usage, &mut ops);
        state::submit(&ops);
    }

    /// The exact cost: every token kind at its own price, for the model served (else the one
    /// requested), else at the price the request reserved at.
    fn cost(&self, pending: &Pending, c: &Completion) -> u64 {
        let model = c.model_served.clone().or_else(|| c.request().model());
        let price = model
            .as_deref()
            .and_then(|m| self.prices.price(m))
            .or(pending.price.map(Price::from));
        price.map_or(0, |p| p.cost_micro_usd(&c.usage, c.cache_write_1h_tokens()))
    }

    /// Replaces each token estimate with the real count (a refund when it was smaller).
    fn settle_tokens(&self, pending: &Pending, usage: &Usage, ops: &mut Vec<Op>) {
        let actual = as_i64(self.counted_tokens(usage));
        let minute = clock::now_ms() / MINUTE_MS;
        for charge in &pending.tpm {
            let charged_key = format!("{}:{}", charge.prefix, charge.minute);
            if minute == charge.minute {
                let delta = actual - charge.amount;
                if delta != 0 {
                    ops.push(Op::incr(charged_key, delta, TPM_TTL_MS));
                }
                continue;
            }
            // The request outlived its minute: take the estimate back from that minute
            // (while its counter lives) and count the real use now.
            if minute == charge.minute + 1 {
                ops.push(Op::incr(charged_key, -charge.amount, TPM_TTL_MS));
            }
            if actual > 0 {
                ops.push(Op::incr(
                    format!("{}:{minute}", charge.prefix),
                    actual,
                    TPM_TTL_MS,
                ));
            }
        }
    }
}

impl TokensCheck {
    /// Reads the charge's answers (the charge is taken whatever the verdict, so it goes into
    /// `pending` to be given back or settled).
    fn evaluate(
        &self,
        rule: &Rule,
        answers: &[Result<Answer, Error>],
        first: usize,
        ctx: &Ctx<'_>,
        pending: &mut Pending,
    ) -> Verdict {
        let incr_at = first + usize::from(self.has_previous);
        let current = match answer(answers, incr_at, Answer::counter) {
            Ok(current) => current.max(0) as u64,
            Err(e) => return Verdict::Failed(e),
        };
        pending.tpm.push(TpmCharge {
            prefix: self.prefix.clone(),
            minute: self.minute,
            amount: as_i64(self.charge),
        });
        let previous = match self.has_previous {
            true => match answer(answers, first, Answer::value) {
                Ok(v) => v.unwrap_or(0),
                Err(e) => return Verdict::Failed(e),
            },
            false => 0,
        };
        self.verdict(previous, current, rule, ctx.facts, ctx.now)
    }

    /// Whether the sliding minute holds the charge (`current`: this minute's total with it;
    /// `previous`: the previous minute's), and if not when it will.
    fn verdict(
        &self,
        previous: i64,
        current: u64,
        rule: &Rule,
        facts: &RequestFacts,
        now: u64,
    ) -> Verdict {
        let elapsed = now % MINUTE_MS;
        let (limit, charge) = (self.limit, self.charge);
        let used = decayed(previous, elapsed) + current;
        if used <= limit {
            return Verdict::Fits;
        }
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
            MINUTE_MS - elapsed + (MINUTE_MS as f64 * (1.0 - weight_ok.min(1.0))).ceil() as u64
        };
        Verdict::Refused {
            limit: "tokens_per_minute",
            message: format!(
                "rate limit: {} is over {limit} tokens per minute (gateway rule `{}`; this request is estimated at {} tokens); retry in {} s",
                RateLimit::who(rule, facts),
                rule.name,
                self.estimate,
                secs(retry_ms)
            ),
            retry_after: secs(retry_ms),
        }
    }
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests;
