use llm_gateway_plugin::serde_json::{json, Value};
use llm_gateway_plugin::testing::{Exchange, MockRequest, MockResponse, TestHost};
use llm_gateway_plugin::{Completion, Operation, Outcome, Usage};

use super::*;

/// 2025-06-15T12:00:00.000Z, on a minute boundary.
const NOW_MS: u64 = 1_749_988_800_000;
const MINUTE: u64 = NOW_MS / 60_000;
/// 2025-07-01T00:00:00Z − NOW, in seconds.
const TO_MONTH_END_S: u32 = 1_339_200;
const OPUS: &str = "us.anthropic.claude-opus-4-5";
const SONNET: &str = "us.anthropic.claude-sonnet-4-5";

fn prices() -> Value {
    json!({
        "*opus*": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_write": 18.75},
        "*sonnet*": {"input": 3.0, "output": 15.0},
    })
}

fn host(rules: Value) -> TestHost<RateLimit> {
    TestHost::with_clock(json!({"rules": rules, "prices": prices()}), NOW_MS).unwrap()
}

fn req(principal: &str, team: Option<&str>) -> MockRequest {
    MockRequest::bedrock_invoke(OPUS).identity(principal, team)
}

fn ok(usage: Usage) -> Completion {
    Completion::new(200, Outcome::Ok).with_usage(usage)
}

fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
    }
}

fn run(h: &mut TestHost<RateLimit>, r: MockRequest, c: &Completion) -> Exchange {
    h.run(r, MockResponse::new(200), c)
}

fn status(ex: &Exchange) -> Option<u16> {
    ex.denial().map(|d| d.status)
}

#[test]
fn requests_per_minute_deny_with_retry_after_and_a_message() {
    let mut h = host(
        json!([{"match": {"team": "research"}, "per": "principal", "requests_per_minute": 2, "name": "rpm"}]),
    );
    for _ in 0..2 {
        assert!(!run(
            &mut h,
            req("alice", Some("research")),
            &ok(Usage::default())
        )
        .is_denied());
    }
    h.advance_clock_ms(15_000);
    let third = h.on_request(req("alice", Some("research")));
    let d = third.denial().unwrap();
    assert_eq!(d.status, 429);
    assert_eq!(d.retry_after_seconds, Some(45));
    assert!(
        d.message
            .contains("principal alice is over 2 requests per minute")
            && d.message.contains("`rpm`"),
        "{}",
        d.message
    );
    assert_eq!(
        h.counter(
            "denied_total",
            &[("limit", "requests_per_minute"), ("team", "research")]
        ),
        1
    );
    // Per principal: bob has his own window; another team is not matched at all.
    assert!(!h.on_request(req("bob", Some("research"))).is_denied());
    for _ in 0..5 {
        assert!(!h.on_request(req("eve", Some("sales"))).is_denied());
    }
    // The window slides: two minutes later alice is fine again.
    h.advance_clock_ms(120_000);
    assert!(!h.on_request(req("alice", Some("research"))).is_denied());
}

#[test]
fn per_team_and_global_share_one_counter() {
    let mut h = host(json!([
        {"match": {"team": "research"}, "per": "team", "requests_per_minute": 2, "name": "team"},
        {"match": {}, "per": "global", "requests_per_minute": 4, "name": "all"},
    ]));
    assert!(!h.on_request(req("alice", Some("research"))).is_denied());
    assert!(!h.on_request(req("bob", Some("research"))).is_denied());
    let carol = h.on_request(req("carol", Some("research")));
    assert!(carol.denial().unwrap().message.contains("team research"));
    // carol was refused by the team rule before the global rule was checked: the global
    // window holds alice and bob only.
    assert!(!h.on_request(req("dan", Some("sales"))).is_denied());
    assert!(!h.on_request(req("erin", None)).is_denied());
    let fred = h.on_request(req("fred", None));
    assert!(fred
        .denial()
        .unwrap()
        .message
        .contains("the gateway is over 4"));
}

#[test]
fn all_matching_rules_apply_layered_by_team_principal_and_model_glob() {
    let mut h = host(json!([
        {"match": {"team": "research"}, "per": "team", "requests_per_minute": 3, "name": "team"},
        {"match": {"principal": "intern-*"}, "requests_per_minute": 1, "name": "interns"},
        {"match": {"model": "*opus*"}, "requests_per_minute": 2, "name": "opus"},
    ]));
    // intern-1: the interns rule (1/min) binds first.
    assert!(!h.on_request(req("intern-1", Some("research"))).is_denied());
    let again = h.on_request(req("intern-1", Some("research")));
    assert!(again.denial().unwrap().message.contains("`interns`"));
    // alice: opus limited to 2/min per principal; sonnet is not matched by "opus".
    assert!(!h.on_request(req("alice", Some("other"))).is_denied());
    assert!(!h.on_request(req("alice", Some("other"))).is_denied());
    let third = h.on_request(req("alice", Some("other")));
    assert!(third.denial().unwrap().message.contains("`opus`"));
    assert!(!h
        .on_request(MockRequest::bedrock_invoke(SONNET).identity("alice", Some("other")))
        .is_denied());
    // The research team rule counts intern-1's two tries (the refused one too: rate windows
    // are not refunded) and bob's first; bob's second is over the team's 3.
    assert!(!h
        .on_request(MockRequest::bedrock_invoke(SONNET).identity("bob", Some("research")))
        .is_denied());
    let bob = h.on_request(MockRequest::bedrock_invoke(SONNET).identity("bob", Some("research")));
    assert!(
        bob.denial().unwrap().message.contains("team research"),
        "{:?}",
        bob.denial()
    );
}

fn tpm_host(limit: u64) -> TestHost<RateLimit> {
    host(json!([{"match": {}, "tokens_per_minute": limit, "name": "tpm"}]))
}

fn tpm_key(minute: u64) -> String {
    format!("tpm:tpm:p:alice:{minute}")
}

fn body(max_tokens: u64, text_len: usize) -> Value {
    json!({"max_tokens": max_tokens, "messages": [{"role": "user", "content": "x".repeat(text_len)}]})
}

#[test]
fn tokens_per_minute_charge_an_estimate_then_settle_the_real_use() {
    let mut h = tpm_host(10_000);
    let b = body(1_000, 3_960);
    let bytes = b.to_string().len() as u64;
    let estimate = bytes.div_ceil(4) + 1_000;
    let mut ex = h.on_request(req("alice", None).body_json(b.clone()));
    assert!(!ex.is_denied());
    assert_eq!(h.state_counter(&tpm_key(MINUTE)), Some(estimate as i64));
    // Settled with the real use: input + cache writes + output (cache reads do not count).
    h.on_complete(&mut ex, &ok(usage(100, 50, 5_000, 10)));
    assert_eq!(h.state_counter(&tpm_key(MINUTE)), Some(160));

    // content-length, when sent, is the body size used.
    let ex = h.on_request(
        req("alice", None)
            .header("content-length", "20000")
            .body_json(b),
    );
    assert!(!ex.is_denied());
    assert_eq!(h.state_counter(&tpm_key(MINUTE)), Some(160 + 5_000 + 1_000));
    // An estimate over the whole limit is charged as the limit, so it passes an idle window.
    let mut h = tpm_host(10_000);
    let huge = h.on_request(req("alice", None).header("content-length", "4000000"));
    assert!(!huge.is_denied());
    assert_eq!(h.state_counter(&tpm_key(MINUTE)), Some(10_000));
}

#[test]
fn tokens_per_minute_refuse_over_the_limit_and_refund_requests_that_used_nothing() {
    let mut h = tpm_host(5_000);
    // max_tokens is capped at max_output_tokens (4096) for the estimate.
    let mut first = h.on_request(req("alice", None).body_json(body(64_000, 100)));
    assert!(!first.is_denied());
    let charged = h.state_counter(&tpm_key(MINUTE)).unwrap();
    assert!((4_096..4_200).contains(&charged), "{charged}");
    let second = h.on_request(req("alice", None).body_json(body(2_000, 100)));
    let d = second.denial().unwrap();
    assert_eq!(d.status, 429);
    assert!(
        d.message.contains("over 5000 tokens per minute"),
        "{}",
        d.message
    );
    assert!(d.retry_after_seconds.unwrap() >= 60);
    // The refusal took nothing.
    assert_eq!(h.state_counter(&tpm_key(MINUTE)), Some(charged));
    // A later plugin denied the first request: no tokens used, all refunded.
    let mut denied = Completion::new(403, Outcome::Denied);
    denied.denied_by = Some("model-rewrite".into());
    h.on_complete(&mut first, &denied);
    assert_eq!(h.state_counter(&tpm_key(MINUTE)), Some(0));
    assert!(!h
        .on_request(req("alice", None).body_json(body(2_000, 100)))
        .is_denied());
}

#[test]
fn tokens_per_minute_slide_over_the_previous_minute() {
    let mut h = tpm_host(10_000);
    let mut ex = h.on_request(req("alice", None).body_json(body(100, 10)));
    h.on_complete(&mut ex, &ok(usage(8_000, 0, 0, 0)));
    // Half-way through the next minute, half of the previous 8000 still counts.
    h.advance_clock_ms(90_000);
    let big = body(4_096, 4 * 3_000);
    let refused = h.on_request(req("alice", None).body_json(big.clone()));
    let d = refused.denial().unwrap();
    assert!(d.retry_after_seconds.unwrap() <= 30, "{d:?}");
    h.advance_clock_ms(u64::from(d.retry_after_seconds.unwrap()) * 1000);
    assert!(!h.on_request(req("alice", None).body_json(big)).is_denied());
}

#[test]
fn a_request_outliving_its_minute_is_settled_in_the_minute_it_ends() {
    let mut h = tpm_host(100_000);
    let mut ex = h.on_request(req("alice", None).body_json(body(1_000, 100)));
    let charged = h.state_counter(&tpm_key(MINUTE)).unwrap();
    assert!(charged > 1_000);
    h.advance_clock_ms(70_000);
    h.on_complete(&mut ex, &ok(usage(300, 200, 0, 0)));
    assert_eq!(h.state_counter(&tpm_key(MINUTE)), Some(0));
    assert_eq!(h.state_counter(&tpm_key(MINUTE + 1)), Some(500));
}

#[test]
fn cache_token_counting_is_configurable() {
    for (mode, expected) in [("none", 150), ("write", 160), ("all", 5_160)] {
        let mut h = TestHost::<RateLimit>::with_clock(
            json!({"rules": [{"tokens_per_minute": 100_000, "name": "tpm"}], "tpm_cache_tokens": mode}),
            NOW_MS,
        )
        .unwrap();
        let mut ex = h.on_request(req("alice", None).body_json(body(10, 10)));
        h.on_complete(&mut ex, &ok(usage(100, 50, 5_000, 10)));
        assert_eq!(h.state_counter(&tpm_key(MINUTE)), Some(expected), "{mode}");
    }
}

fn stream(principal: &str) -> MockRequest {
    req(principal, Some("research")).operation(Operation::Stream)
}

#[test]
fn concurrent_streams_are_acquired_and_released() {
    let mut h = host(
        json!([{"match": {"team": "research"}, "max_concurrent_streams": 2, "name": "streams"}]),
    );
    let mut a = h.on_request(stream("alice"));
    let b = h.on_request(stream("alice").operation(Operation::ConverseStream));
    assert!(!a.is_denied() && !b.is_denied());
    // Non-streaming requests are not counted.
    assert!(!h.on_request(req("alice", Some("research"))).is_denied());
    let c = h.on_request(stream("alice"));
    let d = c.denial().unwrap();
    assert_eq!(
        (d.status, d.retry_after_seconds),
        (429, Some(STREAM_RETRY_SECONDS))
    );
    assert!(d.message.contains("2 streaming requests in flight"));
    assert!(!h.on_request(stream("bob")).is_denied(), "per principal");
    // alice's first stream ends (even with a client abort): a slot frees up.
    h.advance_clock_ms(30_000);
    h.on_complete(&mut a, &Completion::new(200, Outcome::ClientAborted));
    assert!(!h.on_request(stream("alice")).is_denied());
    assert!(h.on_request(stream("alice")).is_denied());
}

#[test]
fn leaked_stream_slots_expire() {
    let mut h = host(json!([{"max_concurrent_streams": 1, "name": "s"}]));
    // A stream whose on_complete never comes (the instance died).
    assert!(!h.on_request(stream("alice")).is_denied());
    assert!(h.on_request(stream("alice")).is_denied());
    h.advance_clock_ms(600_000);
    assert!(
        h.on_request(stream("alice")).is_denied(),
        "the previous epoch still counts"
    );
    h.advance_clock_ms(600_000);
    assert!(!h.on_request(stream("alice")).is_denied());
}

fn budget_key(principal: &str) -> String {
    format!("budget:b:p:{principal}:2025-06")
}

#[test]
fn budgets_count_every_token_kind_at_its_price_and_refuse_until_the_month_ends() {
    let mut h = host(json!([{"match": {}, "budget_usd": 1.0, "name": "b"}]));
    // opus: 10k input * 15 + 4k output * 75 + 100k cache read * 1.5 + 8k cache write * 18.75
    //     = 150000 + 300000 + 150000 + 150000 micro-USD = $0.75
    let spend = ok(usage(10_000, 4_000, 100_000, 8_000));
    assert!(!run(&mut h, req("alice", None), &spend).is_denied());
    assert_eq!(h.state_counter(&budget_key("alice")), Some(750_000));
    assert_eq!(
        h.counter("spent_micro_usd_total", &[("team", "none")]),
        750_000
    );
    // Sonnet has no cache prices: 0.1x / 1.25x input. 100k read * 0.3 + 100k write * 3.75
    let sonnet = MockRequest::bedrock_invoke(SONNET).identity("alice", None);
    assert!(!run(&mut h, sonnet, &ok(usage(0, 0, 100_000, 100_000))).is_denied());
    assert_eq!(
        h.state_counter(&budget_key("alice")),
        Some(750_000 + 30_000 + 375_000)
    );
    // Now over $1: refused until the month ends.
    let over = h.on_request(req("alice", None));
    let d = over.denial().unwrap();
    assert_eq!(d.status, 429);
    assert_eq!(d.retry_after_seconds, Some(TO_MONTH_END_S));
    assert!(
        d.message
            .contains("spent $1.16 of its $1.00 budget for 2025-06"),
        "{}",
        d.message
    );
    assert!(d.message.contains("2025-07-01T00:00:00.000Z"));
    assert_eq!(
        h.counter("denied_total", &[("limit", "budget"), ("team", "none")]),
        1
    );
    // Token counting and listing are not refused over budget.
    assert!(!h
        .on_request(req("alice", None).operation(Operation::CountTokens))
        .is_denied());
    assert!(!h.on_request(req("bob", None)).is_denied());
    // A new month, a new budget.
    h.set_clock_ms(NOW_MS + u64::from(TO_MONTH_END_S) * 1000);
    assert!(!h.on_request(req("alice", None)).is_denied());
}

#[test]
fn over_budget_with_downgrade_to_rewrites_the_model() {
    let mut h = host(json!([{
        "match": {"team": "research"}, "per": "team", "budget_usd": 0.5,
        "downgrade_to": SONNET, "name": "b",
    }]));
    let big = ok(usage(0, 10_000, 0, 0)); // opus: $0.75
    assert!(!run(&mut h, req("alice", Some("research")), &big).is_denied());
    let mut ex = h.on_request(req("bob", Some("research")));
    assert!(!ex.is_denied());
    assert_eq!(ex.model(), Some(SONNET));
    assert_eq!(ex.metadata("rate_limit_downgraded_from"), Some(OPUS));
    assert_eq!(h.counter("downgraded_total", &[("team", "research")]), 1);
    // The downgraded request is charged at the served model's price.
    let mut served = ok(usage(0, 1_000, 0, 0));
    served.model_served = Some(SONNET.into());
    h.on_complete(&mut ex, &served);
    assert_eq!(
        h.state_counter("budget:b:t:research:2025-06"),
        Some(750_000 + 15_000)
    );
    // A hard budget among the matching rules wins over a downgrade.
    let mut h = host(json!([
        {"match": {}, "per": "team", "budget_usd": 0.0, "downgrade_to": SONNET, "name": "soft"},
        {"match": {}, "budget_usd": 0.0, "name": "hard"},
    ]));
    assert_eq!(status(&h.on_request(req("alice", Some("x")))), Some(429));
}

#[test]
fn default_rule_names_and_config_errors() {
    let h = host(json!([
        {"match": {"team": "research"}, "requests_per_minute": 1},
        {"requests_per_minute": 1, "per": "team"},
    ]));
    let names: Vec<&str> = h.plugin().rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["team=research/per-principal", "all/per-team"]);
    for bad in [
        json!({"rules": [{"match": {}}]}),
        json!({"rules": [{"requests_per_minute": 0}]}),
        json!({"rules": [{"requests_per_minute": 1, "per": "user"}]}),
        json!({"rules": [{"requests_per_minute": 1, "downgrade_to": "m"}]}),
        json!({"rules": [{"budget_usd": 5}]}),
        json!({"rules": [{"requests_per_minute": 1}, {"requests_per_minute": 2}]}),
        json!({"rules": [{"requests_per_minute": 1, "match": {"teams": "x"}}]}),
        json!({"rules": [], "tpm_cache_tokens": "some"}),
        json!({"rules": [], "estimate": {"bytes_per_tok": 3}}),
        json!({"rulez": []}),
    ] {
        assert!(TestHost::<RateLimit>::new(bad.clone()).is_err(), "{bad}");
    }
}

#[test]
fn interleaved_requests_each_settle_their_own_charges_on_any_instance() {
    let rules = json!([{
        "match": {}, "tokens_per_minute": 100_000, "max_concurrent_streams": 4,
        "budget_usd": 100.0, "name": "r",
    }]);
    let mut h = host(rules.clone());
    let epoch = NOW_MS / 600_000;
    let tpm = |p: &str| format!("tpm:r:p:{p}:{MINUTE}");
    let streams = |p: &str| format!("streams:r:p:{p}:{epoch}");
    let budget = |p: &str| format!("budget:r:p:{p}:2025-06");

    // A (alice, opus) and B (bob, sonnet) are both in flight on one instance.
    let mut a = h.on_request(stream("alice").body_json(body(1_000, 100)));
    let mut b = h.on_request(
        MockRequest::bedrock_invoke(SONNET)
            .identity("bob", Some("research"))
            .operation(Operation::Stream)
            .body_json(body(2_000, 100)),
    );
    assert!(!a.is_denied() && !b.is_denied());
    let b_estimate = h.state_counter(&tpm("bob")).unwrap();
    assert!(b_estimate > 2_000, "{b_estimate}");
    assert_eq!(h.state_counter(&streams("alice")), Some(1));
    assert_eq!(h.state_counter(&streams("bob")), Some(1));

    // A completes first: only alice's charges settle.
    h.on_complete(&mut a, &ok(usage(100, 50, 0, 0)));
    assert_eq!(h.state_counter(&tpm("alice")), Some(150));
    assert_eq!(h.state_counter(&streams("alice")), Some(0));
    // opus: 100 * 15 + 50 * 75 micro-USD
    assert_eq!(h.state_counter(&budget("alice")), Some(1_500 + 3_750));
    assert_eq!(h.state_counter(&tpm("bob")), Some(b_estimate));
    assert_eq!(h.state_counter(&streams("bob")), Some(1));
    assert_eq!(h.state_counter(&budget("bob")), None);

    // B completes on another instance (the gateway lends one per phase call): what B took
    // travels with the request, not in the plugin's memory.
    let mut other = host(rules);
    std::mem::swap(h.plugin_mut(), other.plugin_mut());
    h.on_complete(&mut b, &ok(usage(200, 100, 0, 0)));
    assert_eq!(h.state_counter(&tpm("bob")), Some(300));
    assert_eq!(h.state_counter(&streams("bob")), Some(0));
    // sonnet: 200 * 3 + 100 * 15 micro-USD
    assert_eq!(h.state_counter(&budget("bob")), Some(600 + 1_500));
    assert_eq!(
        h.counter("spent_micro_usd_total", &[("team", "research")]),
        5_250 + 2_100
    );
    // Alice's counters did not move.
    assert_eq!(h.state_counter(&tpm("alice")), Some(150));
    assert_eq!(h.state_counter(&streams("alice")), Some(0));
}

#[test]
fn refused_and_unmatched_requests_leave_nothing_to_settle() {
    let mut h =
        host(json!([{"match": {"team": "research"}, "max_concurrent_streams": 1, "name": "s"}]));
    let epoch = NOW_MS / 600_000;
    let key = format!("streams:s:p:alice:{epoch}");
    let mut held = h.on_request(stream("alice"));
    let mut refused = h.on_request(stream("alice"));
    assert!(refused.is_denied());
    let mut unmatched = h.on_request(req("alice", None).operation(Operation::Stream));
    assert!(!unmatched.is_denied());
    assert_eq!(h.state_counter(&key), Some(1));
    // Completing the refused and the unmatched request releases nothing; the held one does.
    h.on_complete(&mut refused, &Completion::new(429, Outcome::Denied));
    h.on_complete(&mut unmatched, &ok(Usage::default()));
    assert_eq!(h.state_counter(&key), Some(1));
    h.on_complete(&mut held, &ok(Usage::default()));
    assert_eq!(h.state_counter(&key), Some(0));
}
