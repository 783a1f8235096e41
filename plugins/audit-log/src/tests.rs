use llm_gateway_plugin::serde_json::{json, Value};
use llm_gateway_plugin::testing::{MockRequest, MockResponse, TestHost};
use llm_gateway_plugin::{Completion, Operation, Outcome, Usage};

use super::*;

/// 2025-06-15T12:00:00.000Z
const NOW_MS: u64 = 1_749_988_800_000;

fn prices() -> Value {
    json!({
        "*opus*": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_write": 18.75},
        "*sonnet*": {"input": 3.0, "output": 15.0},
    })
}

fn host(extra: Value) -> TestHost<AuditLog> {
    let mut cfg = json!({"prices": prices()});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    TestHost::with_clock(cfg, NOW_MS).unwrap()
}

fn request() -> MockRequest {
    MockRequest::bedrock_invoke("us.anthropic.claude-opus-4-5")
        .operation(Operation::Stream)
        .request_id("req-1")
        .client_address("10.0.0.1")
        .header("authorization", "Bearer sk-gw-secret")
        .header("user-agent", "claude-cli/2.0.0 (external, cli)")
        .header("x-claude-code-session-id", "sess-42")
        .header("anthropic-beta", "context-1m")
        .body_json(
            json!({"max_tokens": 100, "messages": [{"role": "user", "content": "secret prompt"}]}),
        )
}

fn completion() -> Completion {
    let mut c = Completion::new(200, Outcome::Ok).with_usage(Usage {
        input_tokens: 1_000,
        output_tokens: 2_000,
        cache_read_tokens: 10_000,
        cache_write_tokens: 4_000,
    });
    c.latency_ms = 1234;
    c.time_to_first_token_ms = Some(321);
    c.request_bytes = 99;
    c.response_bytes = 4567;
    c.backend = Some("bedrock-us-east-1".into());
    c.model_served = Some("us.anthropic.claude-sonnet-4-5".into());
    c
}

#[test]
fn one_record_with_every_field() {
    let mut h = host(json!({}));
    let mut ex = h.on_request(request().identity("alice", Some("research")));
    h.advance_clock_ms(1234);
    h.on_response(&mut ex, MockResponse::new(200));
    h.on_complete(&mut ex, &completion());
    assert_eq!(h.audit_records().len(), 1);
    let r = &h.audit_records()[0];
    // sonnet prices: 1000*3 + 2000*15 + 10000*0.3 + 4000*3.75 micro-USD
    let cost = (3_000.0 + 30_000.0 + 3_000.0 + 15_000.0) / 1e6;
    assert_eq!(
        r,
        &json!({
            "time": "2025-06-15T12:00:00.000Z",
            "request_id": "req-1",
            "principal": "alice",
            "team": "research",
            "client_address": "10.0.0.1",
            "front_door": "bedrock",
            "operation": "stream",
            "method": "POST",
            "backend": "bedrock-us-east-1",
            "attempts": null,
            "model_requested": "us.anthropic.claude-opus-4-5",
            "model_served": "us.anthropic.claude-sonnet-4-5",
            "status": 200,
            "outcome": "ok",
            "denied_by": null,
            "input_tokens": 1000,
            "output_tokens": 2000,
            "cache_read_tokens": 10000,
            "cache_write_tokens": 4000,
            "cost_usd": cost,
            "latency_ms": 1234,
            "time_to_first_token_ms": 321,
            "request_bytes": 99,
            "response_bytes": 4567,
            "session_id": "sess-42",
            "user_agent": "claude-cli/2.0.0 (external, cli)",
        })
    );
    let text = r.to_string();
    assert!(!text.contains("secret prompt") && !text.contains("sk-gw-secret"));
    assert_eq!(h.counter("records_total", &[]), 1);
}

#[test]
fn a_request_denied_by_a_later_plugin_is_recorded() {
    let mut h = host(json!({}));
    let mut ex = h.on_request(
        MockRequest::bedrock_invoke("us.anthropic.claude-opus-4-5").client_address("10.9.9.9"),
    );
    let mut denied = Completion::new(401, Outcome::Denied);
    denied.denied_by = Some("auth".into());
    denied.latency_ms = 2;
    h.on_complete(&mut ex, &denied);
    let r = &h.audit_records()[0];
    assert_eq!(r["outcome"], "denied");
    assert_eq!(r["denied_by"], "auth");
    assert_eq!(r["status"], 401);
    assert_eq!(r["principal"], Value::Null);
    assert_eq!(r["model_requested"], "us.anthropic.claude-opus-4-5");
    assert_eq!(r["model_served"], Value::Null);
    assert_eq!(r["cost_usd"], 0.0);
    assert_eq!(r["client_address"], "10.9.9.9");
    assert_eq!(r["session_id"], Value::Null);
}

#[test]
fn prompts_are_recorded_only_with_capture_bodies() {
    let mut off = host(json!({}));
    let mut ex = off.on_request(request());
    off.on_complete(&mut ex, &completion());
    assert!(off.audit_records()[0].get("request_body").is_none());

    let mut on = host(json!({"capture_bodies": true}));
    let mut ex = on.on_request(request());
    on.on_complete(&mut ex, &completion());
    assert_eq!(
        on.audit_records()[0]["request_body"]["messages"][0]["content"],
        "secret prompt"
    );
}

#[test]
fn a_body_too_large_for_the_record_is_left_out() {
    let mut h = host(json!({"capture_bodies": true, "max_record_bytes": 2048}));
    let big = "x".repeat(5000);
    let mut ex = h.on_request(request().body_json(json!({"messages": [{"content": big}]})));
    h.on_complete(&mut ex, &completion());
    let r = &h.audit_records()[0];
    assert!(r.get("request_body").is_none());
    assert!(r["request_body_omitted"]
        .as_str()
        .unwrap()
        .contains("over max_record_bytes"));
    assert_eq!(r["input_tokens"], 1000);
}

#[test]
fn listed_headers_are_recorded_but_never_credentials() {
    let mut h =
        host(json!({"headers": ["Anthropic-Beta", "x-missing"], "session_header": "x-session"}));
    let mut ex = h.on_request(request().header("x-session", "s-1"));
    h.on_complete(&mut ex, &completion());
    let r = &h.audit_records()[0];
    assert_eq!(r["headers"], json!({"anthropic-beta": "context-1m"}));
    assert_eq!(r["session_id"], "s-1");
    assert!(TestHost::<AuditLog>::new(json!({"headers": ["Authorization"]})).is_err());
    assert!(TestHost::<AuditLog>::new(json!({"capture_body": true})).is_err());
}

#[test]
fn unknown_models_cost_the_default_price_or_zero_with_one_warning() {
    let mut h = host(json!({}));
    for _ in 0..2 {
        let mut ex = h.on_request(MockRequest::bedrock_invoke("amazon.nova-pro"));
        let mut c = completion();
        c.model_served = None;
        h.on_complete(&mut ex, &c);
    }
    assert_eq!(h.audit_records()[1]["cost_usd"], 0.0);
    assert_eq!(
        h.logs()
            .iter()
            .filter(|(_, l)| l.contains("no price for model `amazon.nova-pro`"))
            .count(),
        1
    );
    let mut d = host(
        json!({"default_price": {"input": 1.0, "output": 1.0, "cache_read": 0, "cache_write": 0}}),
    );
    let mut ex = d.on_request(MockRequest::bedrock_invoke("amazon.nova-pro"));
    let mut c = completion();
    c.model_served = None;
    d.on_complete(&mut ex, &c);
    assert_eq!(d.audit_records()[0]["cost_usd"], 0.003);
}

#[test]
fn a_pooled_instance_does_not_mix_requests() {
    let mut h = host(json!({}));
    let mut first = h.on_request(MockRequest::bedrock_invoke("model-a"));
    h.on_complete(&mut first, &Completion::new(200, Outcome::Ok));
    h.advance_clock_ms(60_000);
    let mut second =
        h.on_request(MockRequest::new("GET", "/v1/models").operation(Operation::ListModels));
    h.on_complete(&mut second, &Completion::new(200, Outcome::Ok));
    let r = &h.audit_records()[1];
    assert_eq!(r["model_requested"], Value::Null);
    assert_eq!(r["time"], "2025-06-15T12:01:00.000Z");
    assert_eq!(r["operation"], "list-models");
}

#[test]
fn failover_attempts_set_by_the_host_are_recorded() {
    let mut h = host(json!({}));
    let mut ex =
        h.on_request(request().metadata("gateway.attempts", "bedrock-use1:429 vertex-east5:200"));
    h.on_complete(&mut ex, &completion());
    assert_eq!(
        h.audit_records()[0]["attempts"],
        "bedrock-use1:429 vertex-east5:200"
    );
}

/// 70 KB of client input: more than a whole record may hold.
fn huge(c: char) -> String {
    std::iter::repeat_n(c, 70_000).collect()
}

/// The one record written, checked to be within `limit` bytes.
fn only_record(h: &TestHost<AuditLog>, limit: usize) -> &Value {
    assert_eq!(h.audit_records().len(), 1);
    let r = &h.audit_records()[0];
    let size = r.to_string().len();
    assert!(size <= limit, "the record is {size} bytes, over {limit}");
    r
}

fn run(h: &mut TestHost<AuditLog>, req: MockRequest) {
    let mut ex = h.on_request(req);
    h.on_response(&mut ex, MockResponse::new(200));
    h.on_complete(&mut ex, &completion());
}

const LIMIT: usize = 60 * 1024;

#[test]
fn a_huge_user_agent_is_cut_and_marked() {
    let mut h = host(json!({}));
    let req = MockRequest::bedrock_invoke("us.anthropic.claude-opus-4-5")
        .header("user-agent", &huge('a'))
        .header("x-claude-code-session-id", "sess-42");
    run(&mut h, req);
    let r = only_record(&h, LIMIT);
    assert_eq!(r["user_agent"], "a".repeat(1024));
    assert_eq!(r["truncated"], json!(["user_agent"]));
    assert_eq!(r["session_id"], "sess-42");
    assert_eq!(r["input_tokens"], 1000);
}

#[test]
fn a_huge_session_header_is_cut_and_marked() {
    let mut h = host(json!({}));
    let req = MockRequest::bedrock_invoke("us.anthropic.claude-opus-4-5")
        .header("x-claude-code-session-id", &huge('s'));
    run(&mut h, req);
    let r = only_record(&h, LIMIT);
    assert_eq!(r["session_id"], "s".repeat(256));
    assert_eq!(r["truncated"], json!(["session_id"]));
}

#[test]
fn a_huge_recorded_header_value_is_cut_and_marked() {
    let mut h = host(json!({"headers": ["x-app", "anthropic-beta"]}));
    run(&mut h, request().header("x-app", &huge('h')));
    let r = only_record(&h, LIMIT);
    assert_eq!(r["headers"]["x-app"], "h".repeat(1024));
    assert_eq!(r["headers"]["anthropic-beta"], "context-1m");
    assert_eq!(r["truncated"], json!(["headers.x-app"]));
}

#[test]
fn a_huge_metadata_value_is_cut_and_marked() {
    let mut h = host(json!({}));
    run(&mut h, request().metadata("gateway.attempts", &huge('m')));
    let r = only_record(&h, LIMIT);
    assert_eq!(r["attempts"], "m".repeat(1024));
    assert_eq!(r["truncated"], json!(["attempts"]));
}

#[test]
fn huge_identity_and_models_are_cut_and_still_priced_by_the_model_served() {
    let mut h = host(json!({}));
    let model = format!("us.anthropic.claude-opus-4-5{}", huge('x'));
    let req = MockRequest::bedrock_invoke(&model)
        .identity(&huge('p'), Some(&huge('t')))
        .request_id(&huge('r'))
        .client_address(&huge('1'));
    let mut ex = h.on_request(req);
    let mut done = completion();
    done.model_served = Some(format!("us.anthropic.claude-sonnet-4-5{}", huge('y')));
    done.backend = Some(huge('b'));
    done.denied_by = Some(huge('d'));
    h.on_complete(&mut ex, &done);
    let r = only_record(&h, LIMIT);
    for field in [
        "request_id",
        "principal",
        "team",
        "client_address",
        "backend",
    ] {
        assert_eq!(r[field].as_str().unwrap().len(), 256, "{field}");
    }
    assert!(r["model_requested"]
        .as_str()
        .unwrap()
        .starts_with("us.anthropic.claude-opus-4-5xxx"));
    assert_eq!(r["model_served"].as_str().unwrap().len(), 256);
    assert_eq!(
        r["truncated"],
        json!([
            "request_id",
            "principal",
            "team",
            "client_address",
            "backend",
            "model_requested",
            "model_served",
            "denied_by"
        ])
    );
    // Priced as in `one_record_with_every_field`: the full model served is sonnet.
    assert_eq!(r["cost_usd"], 0.051);
}

#[test]
fn cuts_fall_on_character_boundaries_and_count_json_escapes() {
    // 2-byte characters: 1024 / 2 of them.
    assert_eq!(cut(&"é".repeat(1000), 1023), Some("é".repeat(511).as_str()));
    // Escaped quotes take 2 bytes, control characters 6.
    assert_eq!(cut(&"\"".repeat(10), 5), Some("\"\"".to_string().as_str()));
    assert_eq!(cut("ab\u{1}c", 7), Some("ab"));
    assert_eq!(cut("ab\u{1}c", 8), Some("ab\u{1}"));
    assert_eq!(cut("short", 5), None);
    for value in [huge('"'), huge('\u{2}'), huge('€'), huge('a')] {
        let short = cut(&value, 1024).unwrap();
        let written = serde_json::to_string(short).unwrap().len() - 2;
        assert!(written <= 1024 && written > 1024 - 6, "{written}");
    }
}

/// A request where everything the client controls is huge.
fn hostile() -> MockRequest {
    MockRequest::bedrock_invoke(&huge('x'))
        .operation(Operation::ConverseStream)
        .identity(&huge('"'), Some(&huge('\u{1}')))
        .request_id(&huge('r'))
        .client_address(&huge('1'))
        .header("user-agent", &huge('\\'))
        .header("x-claude-code-session-id", &huge('s'))
        .header("x-app", &huge('é'))
        .metadata("gateway.attempts", &huge('m'))
        .body_json(json!({"messages": [{"role": "user", "content": huge('b')}]}))
}

fn hostile_completion() -> Completion {
    let mut c = completion();
    // As many digits as the usage can have (the sum must still fit a u64).
    let tokens = u64::MAX / 4;
    c.usage = Usage {
        input_tokens: tokens,
        output_tokens: tokens,
        cache_read_tokens: tokens,
        cache_write_tokens: tokens,
    };
    c.latency_ms = u64::MAX;
    c.time_to_first_token_ms = Some(u64::MAX);
    c.request_bytes = u64::MAX;
    c.response_bytes = u64::MAX;
    // Priced (sonnet), so the cost is a long number too.
    c.model_served = Some(format!("sonnet{}", huge('y')));
    c.backend = Some(huge('b'));
    c.denied_by = Some(huge('d'));
    c
}

#[test]
fn a_record_with_everything_huge_and_a_captured_body_stays_under_the_limit() {
    let mut h = host(json!({"capture_bodies": true, "headers": ["x-app"]}));
    let mut ex = h.on_request(hostile());
    h.on_complete(&mut ex, &hostile_completion());
    let r = only_record(&h, LIMIT);
    assert!(r.get("request_body").is_none());
    assert!(r["request_body_omitted"]
        .as_str()
        .unwrap()
        .contains("over max_record_bytes"));
    assert_eq!(
        r["user_agent"].as_str().unwrap().len(),
        512,
        "\\ escapes to 2 bytes"
    );
    assert_eq!(r["headers"]["x-app"].as_str().unwrap().len(), 1024);
    assert_eq!(r["truncated"].as_array().unwrap().len(), 12);
}

#[test]
fn tighter_caps_keep_a_record_under_a_small_limit_or_many_headers() {
    // Many recorded headers, each at its cap: the headers go, the rest is cut harder.
    let names: Vec<String> = (0..80).map(|i| format!("x-h{i}")).collect();
    let mut h = host(json!({"headers": names}));
    let mut req = request();
    for name in &names {
        req = req.header(name, &huge('v'));
    }
    run(&mut h, req);
    let r = only_record(&h, LIMIT);
    assert!(r.get("headers").is_none());
    let truncated = r["truncated"].as_array().unwrap();
    assert!(truncated.contains(&json!("headers")), "{truncated:?}");
    assert_eq!(r["request_id"], "req-1");
    assert_eq!(r["user_agent"], "claude-cli/2.0.0 (external, cli)");

    // The smallest limit allowed, with everything huge: still exactly one record under it.
    for limit in [1024, 2048, 4096] {
        let mut h =
            host(json!({"capture_bodies": true, "headers": ["x-app"], "max_record_bytes": limit}));
        let mut ex = h.on_request(hostile());
        h.on_complete(&mut ex, &hostile_completion());
        let r = only_record(&h, limit);
        assert_eq!(r["input_tokens"], u64::MAX / 4, "{limit}");
        assert!(
            r["request_id"].as_str().unwrap().starts_with("rrrr"),
            "{limit}"
        );
        assert!(r["truncated"]
            .as_array()
            .unwrap()
            .contains(&json!("principal")));
    }
}
