use llm_gateway_plugin::catalog;
use llm_gateway_plugin::serde_json::{json, Value};
use llm_gateway_plugin::testing::{Exchange, MockRequest, MockResponse, StateCall, TestHost};
use llm_gateway_plugin::{Completion, Operation, Outcome, Usage};

use super::*;

/// 2025-06-15T12:00:00.000Z, on a minute boundary.
const NOW_MS: u64 = 1_749_988_800_000;
const MINUTE: u64 = NOW_MS / 60_000;
/// 2025-07-01T00:00:00Z − NOW, in seconds.
const TO_MONTH_END_S: u32 = 1_339_200;
const OPUS: &str = "us.anthropic.claude-opus-4-5";
const SONNET: &str = "us.anthropic.claude-sonnet-4-5";
/// The reservation of a request without a body on Opus: no input, 4096 output tokens at $75.
const OPUS_WORST_CASE: i64 = 4_096 * 75;

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
    // Every rule's window is checked in the same round trip, so carol's refused request
    // counts in the global window too: alice, bob, carol, dan make four.
    assert!(!h.on_request(req("dan", Some("sales"))).is_denied());
    let erin = h.on_request(req("erin", None));
    assert!(erin
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
        (429, Some(IN_FLIGHT_RETRY_SECONDS))
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
fn leaked_stream_slots_expire_after_the_stream_ttl() {
    let mut h = host(json!([{"max_concurrent_streams": 1, "name": "s"}]));
    // A stream whose on_complete never comes (the replica died): its lease expires.
    assert!(!h.on_request(stream("alice")).is_denied());
    assert!(h.on_request(stream("alice")).is_denied());
    h.advance_clock_ms(599_999);
    assert!(h.on_request(stream("alice")).is_denied());
    assert_eq!(h.state_held("streams:s:p:alice"), 1);
    h.advance_clock_ms(1);
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
    h.take_state_calls();
    let mut ex = h.on_request(req("bob", Some("research")));
    assert!(!ex.is_denied());
    assert_eq!(ex.model(), Some(SONNET));
    assert_eq!(
        h.take_state_calls(),
        vec![batch(&["acquire"]), batch(&["acquire"])]
    );
    assert_eq!(ex.metadata("rate_limit_downgraded_from"), Some(OPUS));
    assert_eq!(h.counter("downgraded_total", &[("team", "research")]), 1);
    // The downgraded request reserved at the downgrade model's price, past the budget, in a
    // second batch (the first was refused).
    assert_eq!(h.state_held("budget:b:t:research:2025-06"), 4_096 * 15);
    // It is charged at the served model's price.
    let mut served = ok(usage(0, 1_000, 0, 0));
    served.model_served = Some(SONNET.into());
    h.on_complete(&mut ex, &served);
    assert_eq!(
        h.state_counter("budget:b:t:research:2025-06"),
        Some(750_000 + 15_000)
    );
    assert_eq!(h.state_held("budget:b:t:research:2025-06"), 0);
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
        json!({"rules": [{"requests_per_minute": 1}, {"requests_per_minute": 2}]}),
        json!({"rules": [{"requests_per_minute": 1, "match": {"teams": "x"}}]}),
        json!({"rules": [], "tpm_cache_tokens": "some"}),
        json!({"rules": [], "estimate": {"bytes_per_tok": 3}}),
        json!({"rulez": []}),
    ] {
        assert!(TestHost::<RateLimit>::new(bad.clone()).is_err(), "{bad}");
    }
    // A budget without a price table is fine: the catalog may price the models, and a model
    // priced nowhere is refused per request.
    assert!(TestHost::<RateLimit>::new(json!({"rules": [{"budget_usd": 5}]})).is_ok());
    // Refusing when the store fails is the default; failing open is a choice.
    assert!(!host(json!([])).plugin().fail_open);
}

#[test]
fn interleaved_requests_each_settle_their_own_charges_on_any_instance() {
    let rules = json!([{
        "match": {}, "tokens_per_minute": 100_000, "max_concurrent_streams": 4,
        "budget_usd": 100.0, "name": "r",
    }]);
    let mut h = host(rules.clone());
    let tpm = |p: &str| format!("tpm:r:p:{p}:{MINUTE}");
    let streams = |p: &str| format!("streams:r:p:{p}");
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
    assert_eq!(h.state_held(&streams("alice")), 1);
    assert_eq!(h.state_held(&streams("bob")), 1);
    // Both reserved their worst case; nothing is spent yet.
    assert!(h.state_held(&budget("alice")) > 1_000 * 75);
    assert!(h.state_held(&budget("bob")) > 2_000 * 15);
    assert_eq!(h.state_counter(&budget("alice")), None);

    // A completes first: only alice's charges settle.
    h.on_complete(&mut a, &ok(usage(100, 50, 0, 0)));
    assert_eq!(h.state_counter(&tpm("alice")), Some(150));
    assert_eq!(h.state_held(&streams("alice")), 0);
    // opus: 100 * 15 + 50 * 75 micro-USD
    assert_eq!(h.state_counter(&budget("alice")), Some(1_500 + 3_750));
    assert_eq!(h.state_held(&budget("alice")), 0);
    assert_eq!(h.state_counter(&tpm("bob")), Some(b_estimate));
    assert_eq!(h.state_held(&streams("bob")), 1);
    assert_eq!(h.state_counter(&budget("bob")), None);

    // B completes on another instance (the gateway lends one per phase call): what B took
    // travels with the request, not in the plugin's memory.
    let mut other = host(rules);
    std::mem::swap(h.plugin_mut(), other.plugin_mut());
    h.on_complete(&mut b, &ok(usage(200, 100, 0, 0)));
    assert_eq!(h.state_counter(&tpm("bob")), Some(300));
    assert_eq!(h.state_held(&streams("bob")), 0);
    // sonnet: 200 * 3 + 100 * 15 micro-USD
    assert_eq!(h.state_counter(&budget("bob")), Some(600 + 1_500));
    assert_eq!(
        h.counter("spent_micro_usd_total", &[("team", "research")]),
        5_250 + 2_100
    );
    // Alice's counters did not move.
    assert_eq!(h.state_counter(&tpm("alice")), Some(150));
    assert_eq!(h.state_held(&streams("alice")), 0);
}

#[test]
fn refused_and_unmatched_requests_leave_nothing_to_settle() {
    let mut h =
        host(json!([{"match": {"team": "research"}, "max_concurrent_streams": 1, "name": "s"}]));
    let key = "streams:s:p:alice";
    let mut held = h.on_request(stream("alice"));
    let mut refused = h.on_request(stream("alice"));
    assert!(refused.is_denied());
    let mut unmatched = h.on_request(req("alice", None).operation(Operation::Stream));
    assert!(!unmatched.is_denied());
    assert_eq!(h.state_held(key), 1);
    // Completing the refused and the unmatched request releases nothing; the held one does.
    h.take_state_calls();
    h.on_complete(&mut refused, &Completion::new(429, Outcome::Denied));
    h.on_complete(&mut unmatched, &ok(Usage::default()));
    assert_eq!(h.take_state_calls(), vec![]);
    assert_eq!(h.state_held(key), 1);
    h.on_complete(&mut held, &ok(Usage::default()));
    assert_eq!(h.state_held(key), 0);
}

fn batch(ops: &[&'static str]) -> StateCall {
    StateCall {
        function: "batch",
        ops: ops.to_vec(),
    }
}

fn submit(ops: &[&'static str]) -> StateCall {
    StateCall {
        function: "submit",
        ops: ops.to_vec(),
    }
}

#[test]
fn on_request_is_one_round_trip_and_settling_is_one_submission() {
    let mut h = host(json!([{
        "match": {}, "budget_usd": 100.0, "max_concurrent_streams": 2,
        "tokens_per_minute": 100_000, "requests_per_minute": 10, "name": "all4",
    }]));
    let mut ex = h.on_request(stream("alice").body_json(body(1_000, 100)));
    assert!(!ex.is_denied());
    assert_eq!(
        h.take_state_calls(),
        vec![batch(&["acquire", "acquire", "get", "incr", "check-rate"])]
    );
    h.on_complete(&mut ex, &ok(usage(100, 50, 0, 0)));
    assert_eq!(
        h.take_state_calls(),
        vec![submit(&["release", "release", "incr"])]
    );
    assert_eq!(h.state_held("streams:all4:p:alice"), 0);
    assert_eq!(h.state_held("budget:all4:p:alice:2025-06"), 0);
    assert_eq!(h.state_counter("budget:all4:p:alice:2025-06"), Some(5_250));

    // A rule of each kind on its own, and several rules: still one batch.
    let mut h = host(json!([
        {"match": {}, "requests_per_minute": 10, "name": "a"},
        {"match": {}, "per": "team", "requests_per_minute": 10, "name": "b"},
        {"match": {}, "per": "global", "tokens_per_minute": 10_000, "name": "c"},
    ]));
    assert!(!h.on_request(req("alice", Some("t"))).is_denied());
    assert_eq!(
        h.take_state_calls(),
        vec![batch(&["get", "incr", "check-rate", "check-rate"])]
    );
}

#[test]
fn a_refusal_gives_back_everything_the_batch_took_in_one_submission() {
    // The budget refuses (it is 0); the stream lease and the token charge after it in the
    // same batch were taken and must be given back.
    let mut h = host(json!([
        {"match": {}, "budget_usd": 0.0, "name": "hard"},
        {"match": {}, "max_concurrent_streams": 1, "tokens_per_minute": 100_000, "name": "s"},
    ]));
    let refused = h.on_request(stream("alice"));
    assert_eq!(status(&refused), Some(429));
    assert!(refused.denial().unwrap().message.contains("`hard`"));
    assert_eq!(
        h.take_state_calls(),
        vec![
            batch(&["acquire", "acquire", "get", "incr"]),
            submit(&["release", "incr"])
        ]
    );
    assert_eq!(h.state_held("streams:s:p:alice"), 0);
    assert_eq!(h.state_counter(&format!("tpm:s:p:alice:{MINUTE}")), Some(0));
}

fn haiku_price() -> catalog::Price {
    catalog::Price {
        input: 1.0,
        output: 5.0,
        cache_read: 0.1,
        cache_write: 1.25,
        cache_write_1h: 2.0,
    }
}

const PROFILE_ARN: &str =
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123";

#[test]
fn an_application_inference_profile_is_priced_through_the_catalog_and_cannot_pass_the_budget() {
    // No price table at all: the ARN's price comes from the catalog, which knows which model
    // the profile runs.
    let mut h = TestHost::<RateLimit>::with_clock(
        json!({"rules": [{"budget_usd": 0.2, "name": "b"}]}),
        NOW_MS,
    )
    .unwrap();
    h.add_model("claude-haiku-4-5", &[PROFILE_ARN], Some(haiku_price()));
    let arn = || MockRequest::bedrock_invoke(PROFILE_ARN).identity("alice", None);
    // 100k input * $1 + 10k output * $5 = $0.15 a request.
    let spend = ok(usage(100_000, 10_000, 0, 0));
    let mut first = h.on_request(arn());
    assert!(!first.is_denied());
    // The reservation is priced from the catalog too: 4096 output tokens at $5.
    assert_eq!(h.state_held("budget:b:p:alice:2025-06"), 4_096 * 5);
    h.on_complete(&mut first, &spend);
    assert_eq!(h.state_counter("budget:b:p:alice:2025-06"), Some(150_000));
    assert!(!run(&mut h, arn(), &spend).is_denied());
    let over = h.on_request(arn());
    let d = over.denial().unwrap();
    assert_eq!(d.status, 429);
    assert!(
        d.message.contains("has spent $0.30 of its $0.20 budget"),
        "{}",
        d.message
    );
    // An ARN the catalog does not know has no price: refused, not free.
    let unknown = h.on_request(
        MockRequest::bedrock_invoke(&PROFILE_ARN.replace("abc123", "zzz")).identity("bob", None),
    );
    assert_eq!(status(&unknown), Some(403));

    // A price-table glob on the catalog's logical name wins over the catalog's price.
    let mut h = TestHost::<RateLimit>::with_clock(
        json!({"rules": [{"budget_usd": 10.0, "name": "b"}],
               "prices": {"*haiku*": {"input": 2.0, "output": 10.0}}}),
        NOW_MS,
    )
    .unwrap();
    h.add_model("claude-haiku-4-5", &[PROFILE_ARN], Some(haiku_price()));
    assert!(!run(&mut h, arn(), &spend).is_denied());
    assert_eq!(
        h.state_counter("budget:b:p:alice:2025-06"),
        Some(200_000 + 100_000)
    );
}

#[test]
fn a_budget_rule_refuses_an_unpriced_model_unless_there_is_a_default_price() {
    let rules = json!([
        {"match": {}, "budget_usd": 100.0, "name": "monthly"},
        {"match": {}, "requests_per_minute": 100, "name": "rpm"},
    ]);
    let mut h = host(rules.clone());
    let nova = || MockRequest::bedrock_invoke("amazon.nova-pro").identity("alice", None);
    let refused = h.on_request(nova());
    let d = refused.denial().unwrap();
    assert_eq!(d.status, 403);
    for part in [
        "`amazon.nova-pro`",
        "rule `monthly`",
        "[plugins.config.prices]",
        "default_price",
    ] {
        assert!(d.message.contains(part), "{part}: {}", d.message);
    }
    // Refused before touching the store.
    assert_eq!(h.take_state_calls(), vec![]);
    assert_eq!(
        h.counter("denied_total", &[("limit", "unpriced"), ("team", "none")]),
        1
    );
    // Only inference is priced: token counting goes through.
    assert!(!h
        .on_request(nova().operation(Operation::CountTokens))
        .is_denied());

    // With a default price the model is priced (and charged) at it.
    let mut h = TestHost::<RateLimit>::with_clock(
        json!({"rules": rules, "prices": prices(),
               "default_price": {"input": 1.0, "output": 2.0}}),
        NOW_MS,
    )
    .unwrap();
    assert!(!run(&mut h, nova(), &ok(usage(1_000, 1_000, 0, 0))).is_denied());
    assert_eq!(
        h.state_counter("budget:monthly:p:alice:2025-06"),
        Some(1_000 + 2_000)
    );
}

fn sized(principal: &str, max_tokens: u64) -> MockRequest {
    req(principal, None).body_json(json!({ "max_tokens": max_tokens }))
}

#[test]
fn concurrent_requests_cannot_overspend_a_budget() {
    let mut h = host(json!([{"match": {}, "budget_usd": 1.0, "name": "b"}]));
    let key = "budget:b:p:alice:2025-06";
    // `{"max_tokens":4000}` is 19 bytes: 5 input tokens at $15, 4000 output tokens at $75.
    let worst = 5 * 15 + 4_000 * 75;
    // Five requests start before any completes: only the three whose worst cases fit in
    // $1 together are let in.
    let started: Vec<Exchange> = (0..5)
        .map(|_| h.on_request(sized("alice", 4_000)))
        .collect();
    let admitted: Vec<bool> = started.iter().map(|e| !e.is_denied()).collect();
    assert_eq!(admitted, [true, true, true, false, false]);
    assert_eq!(h.state_held(key), 3 * worst);
    let d = started[3].denial().unwrap();
    assert_eq!(
        (d.status, d.retry_after_seconds),
        (429, Some(IN_FLIGHT_RETRY_SECONDS))
    );
    assert!(
        d.message.contains(
            "has spent $0.90 (with $0.90 reserved by requests in flight) of its $1.00 budget for 2025-06, and this request could cost up to $0.30"
        ) && d.message.contains("retry when requests in flight finish"),
        "{}",
        d.message
    );
    let mut started: Vec<Exchange> = started.into_iter().take(3).collect();
    // The first one ends cheaply: room for one more.
    h.on_complete(&mut started[0], &ok(usage(5, 1_000, 0, 0)));
    assert_eq!(h.state_counter(key), Some(75 + 75_000));
    let mut fourth = h.on_request(sized("alice", 4_000));
    assert!(!fourth.is_denied());
    assert!(h.on_request(sized("alice", 4_000)).is_denied());
    // Every admitted request uses its worst case: the spend still stays within the budget.
    let worst_usage = ok(usage(5, 4_000, 0, 0));
    for ex in started.iter_mut().skip(1).chain([&mut fourth]) {
        h.on_complete(ex, &worst_usage);
    }
    let spent = h.state_counter(key).unwrap();
    assert_eq!(spent, 75_075 + 3 * worst);
    assert!(spent <= 1_000_000, "{spent}");
    assert_eq!(h.state_held(key), 0);
    // A request whose worst case alone is over what is left waits for the month.
    let big = h.on_request(sized("bob", 64_000));
    let d = big.denial().unwrap();
    assert_eq!(d.retry_after_seconds, Some(TO_MONTH_END_S));
    assert!(d.message.contains("lower max_tokens"), "{}", d.message);
}

#[test]
fn reservations_and_leases_of_a_dead_request_expire_after_their_ttl() {
    let mut h = TestHost::<RateLimit>::with_clock(
        json!({"rules": [{"budget_usd": 0.5, "max_concurrent_streams": 1, "name": "r"}],
               "prices": prices(), "stream_ttl_seconds": 60}),
        NOW_MS,
    )
    .unwrap();
    // A stream reserves $0.31 and takes the only slot, then its replica dies.
    assert!(!h.on_request(stream("alice")).is_denied());
    assert_eq!(h.state_held("budget:r:p:alice:2025-06"), OPUS_WORST_CASE);
    let blocked = h.on_request(stream("alice"));
    assert!(blocked.denial().unwrap().message.contains("$0.31 reserved"));
    h.advance_clock_ms(59_999);
    assert!(h.on_request(stream("alice")).is_denied());
    // Past the TTL both holds are gone: nothing was spent, a new stream gets in.
    h.advance_clock_ms(1);
    let mut next = h.on_request(stream("alice"));
    assert!(!next.is_denied());
    assert_eq!(h.state_held("budget:r:p:alice:2025-06"), OPUS_WORST_CASE);
    assert_eq!(h.state_counter("budget:r:p:alice:2025-06"), None);
    // A request that outlives its reservation is still charged its exact cost.
    h.advance_clock_ms(120_000);
    h.on_complete(&mut next, &ok(usage(0, 1_000, 0, 0)));
    assert_eq!(h.state_counter("budget:r:p:alice:2025-06"), Some(75_000));
}

#[test]
fn store_errors_refuse_by_default_and_pass_with_fail_open() {
    let rules =
        json!([{"match": {}, "requests_per_minute": 10, "max_concurrent_streams": 1, "name": "r"}]);
    let mut h = host(rules.clone());
    h.set_state_unavailable(true);
    let refused = h.on_request(stream("alice"));
    let d = refused.denial().unwrap();
    assert_eq!(
        (d.status, d.retry_after_seconds),
        (503, Some(STORE_DOWN_RETRY_SECONDS))
    );
    assert_eq!(h.counter("store_errors_total", &[]), 1);

    let mut open =
        TestHost::<RateLimit>::with_clock(json!({"rules": rules, "fail_open": true}), NOW_MS)
            .unwrap();
    open.set_state_unavailable(true);
    assert!(!open.on_request(stream("alice")).is_denied());
    assert!(open.logged("state store unavailable, not limiting"));
}

#[test]
fn settlement_prices_one_hour_cache_writes_and_falls_back_to_the_reserved_price() {
    let mut h = host(json!([{"match": {}, "budget_usd": 100.0, "name": "b"}]));
    let key = "budget:b:p:alice:2025-06";
    // 1000 cache writes, 400 of them 1-hour: 600 * 18.75 + 400 * 30 (2 x input by default).
    let mut ex = h.on_request(req("alice", None));
    ex.set_host_metadata(Completion::CACHE_WRITE_1H_TOKENS, "400");
    h.on_complete(&mut ex, &ok(usage(0, 0, 0, 1_000)));
    assert_eq!(h.state_counter(key), Some(11_250 + 12_000));
    // Served by a model without a price: charged at the price it reserved at (opus).
    let mut ex = h.on_request(req("alice", None));
    let mut done = ok(usage(0, 100, 0, 0));
    done.model_served = Some("some-unpriced-model".into());
    h.on_complete(&mut ex, &done);
    assert_eq!(h.state_counter(key), Some(23_250 + 7_500));
}
