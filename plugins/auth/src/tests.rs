use llm_gateway_plugin::serde_json::{json, Value};
use llm_gateway_plugin::testing::{MockRequest, TestHost};

use super::*;

const NOW_MS: u64 = 1_750_000_000_000;
const SECRET: &str = "idp-shared-secret";
const ALICE_KEY: &str = "sk-gw-alice-0123456789";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn config() -> Value {
    json!({
        "keys": [
            {"key_sha256": hex(&sha256(ALICE_KEY.as_bytes())), "principal": "alice", "team": "research"},
            {"key": "sk-gw-dev-bob", "principal": "bob", "team": "platform"},
            {"key": "sk-gw-carol", "principal": "carol"},
        ],
        "jwt": {
            "issuer": "https://idp.example.com",
            "audience": "llm-gateway",
            "hs256_secret": SECRET,
            "principal_claim": "sub",
            "team_claim": "team",
            "leeway_seconds": 30,
        }
    })
}

fn host() -> TestHost<Auth> {
    TestHost::with_clock(config(), NOW_MS).unwrap()
}

fn req() -> MockRequest {
    MockRequest::bedrock_invoke("us.anthropic.claude-sonnet-4-5").client_address("10.0.0.7")
}

fn bearer(token: &str) -> MockRequest {
    req().header("authorization", &format!("Bearer {token}"))
}

fn token(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "dana@example.com",
        "team": "ml",
        "iss": "https://idp.example.com",
        "aud": "llm-gateway",
        "exp": NOW_MS / 1000 + 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn message(ex: &llm_gateway_plugin::testing::Exchange) -> &str {
    &ex.denial().unwrap().message
}

#[test]
fn a_hashed_static_key_sets_principal_and_team() {
    let mut h = host();
    let ex = h.on_request(bearer(ALICE_KEY));
    assert!(!ex.is_denied(), "{:?}", ex.denial());
    assert_eq!(ex.principal(), Some("alice"));
    assert_eq!(ex.team(), Some("research"));
    assert_eq!(ex.metadata("auth_method"), Some("key"));
    assert_eq!(h.counter("authenticated_total", &[("method", "key")]), 1);
}

#[test]
fn a_plain_static_key_works_and_the_team_is_optional() {
    let mut h = host();
    let bob = h.on_request(bearer("sk-gw-dev-bob"));
    assert_eq!(
        (bob.principal(), bob.team()),
        (Some("bob"), Some("platform"))
    );
    let carol = h.on_request(req().header("authorization", "bearer   sk-gw-carol  "));
    assert_eq!((carol.principal(), carol.team()), (Some("carol"), None));
}

#[test]
fn an_unknown_key_is_refused_without_echoing_it() {
    let mut h = host();
    let ex = h.on_request(bearer("sk-gw-dev-bobX"));
    let d = ex.denial().unwrap();
    assert_eq!(d.status, 401);
    assert_eq!(d.message, UNKNOWN_KEY);
    assert!(!d.message.contains("bobX"));
    assert!(h.logs().iter().all(|(_, l)| !l.contains("sk-gw")));
    assert_eq!(ex.principal(), None);
    assert_eq!(h.counter("denied_total", &[("reason", "invalid_key")]), 1);
}

#[test]
fn missing_credentials_are_refused_with_a_helpful_message() {
    let mut h = host();
    let ex = h.on_request(req());
    assert_eq!(ex.denial().unwrap().status, 401);
    assert!(message(&ex).starts_with("missing gateway credentials"));
    let empty = h.on_request(req().header("authorization", "Bearer "));
    assert!(message(&empty).starts_with("missing gateway credentials"));
    let basic = h.on_request(req().header("authorization", "Basic dXNlcjpwYXNz"));
    assert!(message(&basic).starts_with("missing gateway credentials"));
    assert_eq!(h.counter("denied_total", &[("reason", "missing")]), 3);
}

#[test]
fn x_api_key_is_accepted_also_beside_a_sigv4_authorization() {
    let mut h = host();
    let ex = h.on_request(req().header("x-api-key", "sk-gw-dev-bob"));
    assert_eq!(ex.principal(), Some("bob"));
    let sigv4 = "AWS4-HMAC-SHA256 Credential=AKIA/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=abc";
    let boto = h.on_request(
        req()
            .header("authorization", sigv4)
            .header("x-api-key", ALICE_KEY),
    );
    assert_eq!(boto.principal(), Some("alice"));
    // SigV4 alone is not a gateway credential.
    let only = h.on_request(req().header("authorization", sigv4));
    assert_eq!(only.denial().unwrap().status, 401);
    assert!(message(&only).contains("SigV4"));
}

#[test]
fn x_api_key_can_be_turned_off_and_a_custom_header_used() {
    let mut cfg = config();
    cfg["accept_x_api_key"] = json!(false);
    let mut h = TestHost::<Auth>::with_clock(cfg, NOW_MS).unwrap();
    assert!(h
        .on_request(req().header("x-api-key", "sk-gw-dev-bob"))
        .is_denied());

    let mut cfg = config();
    cfg["header"] = json!("X-Gateway-Key");
    let mut h = TestHost::<Auth>::with_clock(cfg, NOW_MS).unwrap();
    let raw = h.on_request(req().header("x-gateway-key", "sk-gw-dev-bob"));
    assert_eq!(raw.principal(), Some("bob"));
    let prefixed = h.on_request(req().header("x-gateway-key", "Bearer sk-gw-carol"));
    assert_eq!(prefixed.principal(), Some("carol"));
}

#[test]
fn a_valid_hs256_jwt_sets_identity_from_its_claims() {
    let mut h = host();
    let ex = h.on_request(bearer(&token(claims(json!({})), SECRET)));
    assert!(!ex.is_denied(), "{:?}", ex.denial());
    assert_eq!(ex.principal(), Some("dana@example.com"));
    assert_eq!(ex.team(), Some("ml"));
    assert_eq!(ex.metadata("auth_method"), Some("jwt"));
    assert_eq!(h.counter("authenticated_total", &[("method", "jwt")]), 1);
}

#[test]
fn a_jwt_signed_with_another_key_is_refused() {
    let mut h = host();
    let ex = h.on_request(bearer(&token(claims(json!({})), "not-the-secret")));
    assert_eq!(ex.denial().unwrap().status, 401);
    assert_eq!(
        message(&ex),
        "invalid gateway token: the token's signature is not valid"
    );
    assert_eq!(h.counter("denied_total", &[("reason", "invalid_token")]), 1);
}

#[test]
fn an_expired_jwt_is_refused_after_the_leeway() {
    let mut h = host();
    // Expired 10 s ago: inside the 30 s leeway.
    let fresh_enough = token(claims(json!({"exp": NOW_MS / 1000 - 10})), SECRET);
    assert!(!h.on_request(bearer(&fresh_enough)).is_denied());
    let expired = token(claims(json!({"exp": NOW_MS / 1000 - 120})), SECRET);
    let ex = h.on_request(bearer(&expired));
    assert_eq!(ex.denial().unwrap().status, 401);
    assert_eq!(message(&ex), "invalid gateway token: the token has expired");
}

#[test]
fn a_jwt_from_another_issuer_or_for_another_audience_is_refused() {
    let mut h = host();
    let iss = h.on_request(bearer(&token(
        claims(json!({"iss": "https://evil.example.com"})),
        SECRET,
    )));
    assert_eq!(
        message(&iss),
        "invalid gateway token: the token's issuer is not accepted"
    );
    let aud = h.on_request(bearer(&token(claims(json!({"aud": "other"})), SECRET)));
    assert_eq!(
        message(&aud),
        "invalid gateway token: the token's audience is not accepted"
    );
}

#[test]
fn a_jwt_without_the_principal_claim_is_refused() {
    let mut h = host();
    let mut c = claims(json!({}));
    c.as_object_mut().unwrap().remove("sub");
    let ex = h.on_request(bearer(&token(c, SECRET)));
    assert_eq!(message(&ex), "invalid gateway token: it names no principal");
}

#[test]
fn claims_can_be_read_by_pointer_and_the_team_defaulted() {
    let cfg = json!({"jwt": {
        "hs256_secret": SECRET,
        "issuer": "https://idp.example.com",
        "principal_claim": "email",
        "team_claim": "/groups",
        "default_team": "everyone",
    }});
    let mut h = TestHost::<Auth>::with_clock(cfg, NOW_MS).unwrap();
    let with_groups = token(
        claims(json!({"email": "e@example.com", "groups": ["platform", "admins"]})),
        SECRET,
    );
    let ex = h.on_request(bearer(&with_groups));
    assert_eq!(
        (ex.principal(), ex.team()),
        (Some("e@example.com"), Some("platform"))
    );
    let without = token(claims(json!({"email": "f@example.com"})), SECRET);
    let ex = h.on_request(bearer(&without));
    assert_eq!(ex.team(), Some("everyone"));
    // With only JWTs configured, a non-JWT token is an unknown key.
    assert_eq!(message(&h.on_request(bearer("sk-whatever"))), UNKNOWN_KEY);
}

#[test]
fn jwts_are_unknown_keys_when_jwt_is_not_configured() {
    let mut h =
        TestHost::<Auth>::with_clock(json!({"keys": [{"key": "k", "principal": "p"}]}), NOW_MS)
            .unwrap();
    let ex = h.on_request(bearer(&token(claims(json!({})), SECRET)));
    assert_eq!(message(&ex), UNKNOWN_KEY);
}

#[test]
fn config_errors_fail_the_load() {
    let bad = [
        json!({}),
        json!({"keys": [{"principal": "p"}]}),
        json!({"keys": [{"key": "a", "key_sha256": "00", "principal": "p"}]}),
        json!({"keys": [{"key_sha256": "xyz", "principal": "p"}]}),
        json!({"keys": [{"key": "a"}]}),
        json!({"keys": [{"key": "a", "principal": "p"}, {"key": "a", "principal": "q"}]}),
        json!({"keys": [{"key": "a", "principal": "p", "tem": "x"}]}),
        json!({"jwt": {"issuer": "x"}}),
        json!({"jwt": {"hs256_secret": "s", "jwks_url": "https://x"}}),
        json!({"keys": [], "headr": "x"}),
    ];
    for cfg in bad {
        assert!(TestHost::<Auth>::new(cfg.clone()).is_err(), "{cfg}");
    }
}

#[test]
fn helpers() {
    assert!(looks_like_jwt("eyJh.eyJz.sig"));
    assert!(!looks_like_jwt("sk-gw-dev-bob"));
    assert!(!looks_like_jwt("a.b.c.d"));
    assert!(ct_eq(&sha256(b"x"), &sha256(b"x")));
    assert!(!ct_eq(&sha256(b"x"), &sha256(b"y")));
    assert_eq!(
        parse_hex(&hex(&sha256(b"sk-gw-dev-bob"))),
        Some(sha256(b"sk-gw-dev-bob"))
    );
}
