//! `auth`: authenticates callers with gateway API keys or JWTs from the organisation's
//! identity provider, and sets the request's identity (principal, team) for later plugins,
//! the gateway's log line and the audit record.
//!
//! Credentials are read from the configured header (`authorization` by default) as
//! `Bearer <token>` (what Claude Code sends for `ANTHROPIC_AUTH_TOKEN`, and Bedrock clients
//! for `AWS_BEARER_TOKEN_BEDROCK`), or from `x-api-key` (what Anthropic SDKs send, and the way
//! for boto3 clients whose `authorization` carries their own SigV4 signature). Static keys
//! are compared by SHA-256 in constant time; tokens with three dot-separated parts are
//! verified as JWTs by the host when `[plugins.config.jwt]` is set. See `plugins/README.md`.
//!
//! Tokens are never logged or echoed back.

use llm_gateway_plugin::serde_json::{Map, Value};
use llm_gateway_plugin::{export_plugin, jwt, log, metrics, Decision, Error, Plugin, Request};
use sha2::{Digest, Sha256};

type Sha = [u8; 32];

/// One static key.
#[derive(Debug, Clone)]
struct KeyEntry {
    sha256: Sha,
    principal: String,
    team: Option<String>,
}

/// How the `team` (or principal) is found in a JWT's claims.
#[derive(Debug, Clone)]
enum ClaimPath {
    /// A top-level claim by name (`sub`, `custom:team`, `email`).
    Name(String),
    /// A JSON pointer into the claims (`/realm_access/roles/0`), when it starts with `/`.
    Pointer(String),
}

impl ClaimPath {
    fn new(s: &str) -> Self {
        if s.starts_with('/') {
            ClaimPath::Pointer(s.to_string())
        } else {
            ClaimPath::Name(s.to_string())
        }
    }

    /// The claim as a string: strings as is, numbers as text, lists by their first string.
    fn read(&self, claims: &Map<String, Value>) -> Option<String> {
        let value = match self {
            ClaimPath::Name(name) => claims.get(name)?,
            ClaimPath::Pointer(p) => {
                let (first, rest) = p[1..].split_once('/').unwrap_or((&p[1..], ""));
                let top = claims.get(&first.replace("~1", "/").replace("~0", "~"))?;
                if rest.is_empty() {
                    top
                } else {
                    top.pointer(&format!("/{rest}"))?
                }
            }
        };
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Array(items) => items.iter().find_map(|v| v.as_str())?.to_string(),
            _ => return None,
        };
        (!text.is_empty()).then_some(text)
    }
}

#[derive(Debug, Clone)]
struct JwtConfig {
    key: jwt::Key,
    validation: jwt::Validation,
    principal_claim: ClaimPath,
    team_claim: Option<ClaimPath>,
    default_team: Option<String>,
}

/// The plugin.
#[derive(Debug)]
pub struct Auth {
    header: String,
    accept_x_api_key: bool,
    keys: Vec<KeyEntry>,
    jwt: Option<JwtConfig>,
}

const MISSING: &str = "missing gateway credentials: send your gateway key as `Authorization: Bearer <key>` (Claude Code: ANTHROPIC_AUTH_TOKEN) or as an `x-api-key` header";
const SIGV4: &str = "AWS SigV4 credentials are not accepted by this gateway: send your gateway key as `Authorization: Bearer <key>` or as an `x-api-key` header (the gateway signs upstream requests itself)";
const UNKNOWN_KEY: &str = "invalid gateway credentials: the key is not recognised";

fn sha256(data: &[u8]) -> Sha {
    Sha256::digest(data).into()
}

/// Equality of two digests without an early exit.
fn ct_eq(a: &Sha, b: &Sha) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

fn parse_hex(s: &str) -> Option<Sha> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn opt_str(map: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, Error> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::new(format!(
            "bad config: `{what}.{key}` must be a string"
        ))),
    }
}

fn only_keys(map: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), Error> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Error::new(format!(
            "bad config: unknown key `{k}` in `{what}` (expected one of: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn parse_keys(value: &Value) -> Result<Vec<KeyEntry>, Error> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err("bad config: `keys` must be a list of tables".into()),
    };
    let mut keys: Vec<KeyEntry> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let what = format!("keys[{i}]");
        let map = item
            .as_object()
            .ok_or_else(|| Error::new(format!("bad config: `{what}` must be a table")))?;
        only_keys(map, &["key", "key_sha256", "principal", "team"], &what)?;
        let principal = opt_str(map, "principal", &what)?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::new(format!("bad config: `{what}.principal` is required")))?;
        let sha256 = match (
            opt_str(map, "key", &what)?,
            opt_str(map, "key_sha256", &what)?,
        ) {
            (Some(key), None) if !key.is_empty() => sha256(key.as_bytes()),
            (None, Some(hex)) => parse_hex(&hex).ok_or_else(|| {
                Error::new(format!(
                    "bad config: `{what}.key_sha256` must be 64 hex digits (sha256sum of the key)"
                ))
            })?,
            _ => {
                return Err(Error::new(format!(
                    "bad config: `{what}` needs exactly one of `key` or `key_sha256`"
                )))
            }
        };
        if keys.iter().any(|k| k.sha256 == sha256) {
            return Err(Error::new(format!(
                "bad config: `{what}` repeats the key of an earlier entry"
            )));
        }
        keys.push(KeyEntry {
            sha256,
            principal,
            team: opt_str(map, "team", &what)?.filter(|t| !t.is_empty()),
        });
    }
    Ok(keys)
}

fn parse_jwt(value: &Value) -> Result<Option<JwtConfig>, Error> {
    let map = match value {
        Value::Null => return Ok(None),
        Value::Object(map) => map,
        _ => return Err("bad config: `jwt` must be a table".into()),
    };
    let what = "jwt";
    only_keys(
        map,
        &[
            "issuer",
            "audience",
            "public_key_pem",
            "jwks_url",
            "hs256_secret",
            "principal_claim",
            "team_claim",
            "default_team",
            "leeway_seconds",
        ],
        what,
    )?;
    let sources = [
        opt_str(map, "public_key_pem", what)?.map(jwt::Key::PublicKeyPem),
        opt_str(map, "jwks_url", what)?.map(jwt::Key::JwksUrl),
        opt_str(map, "hs256_secret", what)?.map(jwt::Key::Hs256Secret),
    ];
    let mut sources = sources.into_iter().flatten();
    let key = match (sources.next(), sources.next()) {
        (Some(key), None) => key,
        _ => return Err(
            "bad config: `jwt` needs exactly one of `public_key_pem`, `jwks_url` or `hs256_secret`"
                .into(),
        ),
    };
    let leeway_seconds = match map.get("leeway_seconds") {
        None | Some(Value::Null) => 30,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("bad config: `jwt.leeway_seconds` must be a non-negative integer")?,
    };
    let issuer = opt_str(map, "issuer", what)?;
    if issuer.is_none() {
        log::warn(
            "auth: `jwt.issuer` is not set: tokens from any issuer the key signed are accepted",
        );
    }
    Ok(Some(JwtConfig {
        key,
        validation: jwt::Validation {
            issuer,
            audience: opt_str(map, "audience", what)?,
            leeway_seconds,
        },
        principal_claim: ClaimPath::new(
            &opt_str(map, "principal_claim", what)?.unwrap_or_else(|| "sub".into()),
        ),
        team_claim: Some(ClaimPath::new(
            &opt_str(map, "team_claim", what)?.unwrap_or_else(|| "team".into()),
        ))
        .filter(|c| !matches!(c, ClaimPath::Name(n) if n.is_empty())),
        default_team: opt_str(map, "default_team", what)?.filter(|t| !t.is_empty()),
    }))
}

/// Whether a token looks like a JWT: three dot-separated base64url parts.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

/// What the client presented.
enum Presented {
    Token(String, &'static str),
    SigV4,
    Nothing,
}

/// A client-safe reason for a JWT the host refused (the host's message is logged, not sent).
fn jwt_reason(host_message: &str) -> &'static str {
    let m = host_message.to_ascii_lowercase();
    if m.contains("expired") {
        "the token has expired"
    } else if m.contains("immature") {
        "the token is not valid yet"
    } else if m.contains("issuer") {
        "the token's issuer is not accepted"
    } else if m.contains("audience") {
        "the token's audience is not accepted"
    } else if m.contains("signature") || m.contains("algorithm") {
        "the token's signature is not valid"
    } else if m.contains("jwks") || m.contains("kid") {
        "the token's signing key is not known"
    } else {
        "the token is not valid"
    }
}

impl Auth {
    fn presented(&self, req: &Request) -> Presented {
        let mut sigv4 = false;
        if let Some(value) = req.header(&self.header) {
            let value = value.trim();
            match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    let token = token.trim();
                    if !token.is_empty() {
                        return Presented::Token(token.to_string(), "bearer");
                    }
                }
                Some((scheme, _)) if scheme.starts_with("AWS4-") => sigv4 = true,
                // Another scheme in `authorization` (Basic, …) is no gateway key; a custom
                // header holds the key as is.
                Some(_) if self.header == "authorization" => {}
                _ if !value.is_empty() && !value.eq_ignore_ascii_case("bearer") => {
                    return Presented::Token(value.to_string(), "header")
                }
                _ => {}
            }
        }
        if self.accept_x_api_key && self.header != "x-api-key" {
            if let Some(key) = req.header("x-api-key") {
                let key = key.trim();
                if !key.is_empty() {
                    return Presented::Token(key.to_string(), "x-api-key");
                }
            }
        }
        if sigv4 {
            Presented::SigV4
        } else {
            Presented::Nothing
        }
    }

    /// The static key entry whose hash matches, comparing against every entry.
    fn find_key(&self, token: &str) -> Option<&KeyEntry> {
        let digest = sha256(token.as_bytes());
        let mut found = None;
        for entry in &self.keys {
            if ct_eq(&entry.sha256, &digest) && found.is_none() {
                found = Some(entry);
            }
        }
        found
    }

    fn deny(&self, reason: &str, message: impl Into<String>) -> Decision {
        let _ = metrics::counter_add("denied_total", &[("reason", reason)], 1);
        Decision::unauthorized(message)
    }
}

impl Plugin for Auth {
    fn init(config: &Value) -> Result<Self, Error> {
        let map = match config {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            _ => return Err("bad config: [plugins.config] must be a table".into()),
        };
        only_keys(
            &map,
            &["header", "accept_x_api_key", "keys", "jwt"],
            "plugins.config",
        )?;
        let header = opt_str(&map, "header", "plugins.config")?
            .unwrap_or_else(|| "authorization".into())
            .to_ascii_lowercase();
        if header.is_empty() {
            return Err("bad config: `header` is empty".into());
        }
        let accept_x_api_key = match map.get("accept_x_api_key") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("bad config: `accept_x_api_key` must be true or false".into()),
        };
        let keys = parse_keys(map.get("keys").unwrap_or(&Value::Null))?;
        let jwt = parse_jwt(map.get("jwt").unwrap_or(&Value::Null))?;
        if keys.is_empty() && jwt.is_none() {
            return Err(
                "bad config: configure `keys` or `[plugins.config.jwt]` (or both): with neither, every request would be refused"
                    .into(),
            );
        }
        Ok(Auth {
            header,
            accept_x_api_key,
            keys,
            jwt,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Decision {
        let (token, source) = match self.presented(req) {
            Presented::Token(token, source) => (token, source),
            Presented::SigV4 => return self.deny("sigv4", SIGV4),
            Presented::Nothing => return self.deny("missing", MISSING),
        };

        if let Some(entry) = self.find_key(&token) {
            if let Err(e) = req.set_identity(&entry.principal, entry.team.as_deref()) {
                log::error(&format!("auth: could not set the identity: {e}"));
                return Decision::deny(500, "the gateway could not record the caller's identity");
            }
            let _ = req.set_metadata("auth_method", "key");
            let _ = metrics::counter_add("authenticated_total", &[("method", "key")], 1);
            return Decision::Continue;
        }

        let Some(jwt_config) = self.jwt.as_ref().filter(|_| looks_like_jwt(&token)) else {
            log::info(&format!(
                "auth: unknown key from {} (via {source}, request {})",
                req.client_address().unwrap_or_else(|| "?".into()),
                req.request_id()
            ));
            return self.deny("invalid_key", UNKNOWN_KEY);
        };

        let claims = match jwt::verify(&token, &jwt_config.key, &jwt_config.validation) {
            Ok(claims) => claims,
            Err(e) => {
                let reason = jwt_reason(e.message());
                log::info(&format!(
                    "auth: refused a token from {} (request {}): {}",
                    req.client_address().unwrap_or_else(|| "?".into()),
                    req.request_id(),
                    e.message()
                ));
                return self.deny("invalid_token", format!("invalid gateway token: {reason}"));
            }
        };
        let Some(principal) = jwt_config.principal_claim.read(&claims) else {
            return self.deny(
                "invalid_token",
                "invalid gateway token: it names no principal",
            );
        };
        let team = jwt_config
            .team_claim
            .as_ref()
            .and_then(|c| c.read(&claims))
            .or_else(|| jwt_config.default_team.clone());
        if let Err(e) = req.set_identity(&principal, team.as_deref()) {
            log::error(&format!("auth: could not set the identity: {e}"));
            return Decision::deny(500, "the gateway could not record the caller's identity");
        }
        let _ = req.set_metadata("auth_method", "jwt");
        let _ = metrics::counter_add("authenticated_total", &[("method", "jwt")], 1);
        Decision::Continue
    }
}

export_plugin!(Auth);

#[cfg(test)]
mod tests;
