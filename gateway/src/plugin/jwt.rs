//! JWT verification for plugins, with the keys cached on the host.
//!
//! Verification is `jsonwebtoken`'s. Parsed PEM keys are cached by their text, JWKS documents
//! by URL (for ten minutes, refetched early when a token names an unknown `kid`, at most every
//! thirty seconds), so a plugin verifying every request pays for parsing and fetching once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora_core::connectors::http::Connector;

use super::bindings::llm_gateway::plugin::jwt;
use crate::upstream::error::FetchError;
use crate::upstream::fetch::fetch;

const JWKS_TTL: Duration = Duration::from_secs(600);
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
const JWKS_MAX_BYTES: usize = 1024 * 1024;
/// Bounds a whole JWKS fetch: resolving, connecting, sending, reading.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a JWKS document could not be had. Plugins get its text (the WIT contract's `string`).
#[derive(Debug, thiserror::Error)]
enum JwksError {
    /// The URL could not be fetched (unreachable, timed out, too large...).
    #[error("fetching the JWKS: {0}")]
    Fetch(#[from] FetchError),
    /// The URL answered with another status than 200.
    #[error("fetching the JWKS from {url}: status {status}")]
    Status { url: String, status: u16 },
    /// The answer is not a JWKS document.
    #[error("the JWKS from {url} is not valid: {source}")]
    Invalid {
        url: String,
        source: serde_json::Error,
    },
}

struct CachedJwks {
    set: JwkSet,
    fetched: Instant,
}

/// Verifies tokens for plugins; shared by all of them.
pub struct JwtVerifier {
    pem_keys: Mutex<HashMap<String, (DecodingKey, Algorithm)>>,
    jwks: Mutex<HashMap<String, CachedJwks>>,
    connector: Connector,
}

impl Default for JwtVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl JwtVerifier {
    /// A verifier with empty caches.
    pub fn new() -> Self {
        Self {
            pem_keys: Mutex::new(HashMap::new()),
            jwks: Mutex::new(HashMap::new()),
            connector: Connector::new(None),
        }
    }

    /// Verifies `token` and returns its claims as (name, JSON text) pairs.
    pub async fn verify(
        &self,
        token: &str,
        key: jwt::Key,
        rules: jwt::Validation,
    ) -> Result<Vec<jwt::Claim>, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let (decoding_key, algorithm) = match key {
            jwt::Key::Hs256Secret(secret) => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            jwt::Key::PublicKeyPem(pem) => self.pem_key(&pem)?,
            jwt::Key::JwksUrl(url) => self.jwks_key(&url, header.kid.as_deref()).await?,
        };
        if header.alg != algorithm {
            return Err(format!(
                "token algorithm {:?} does not match the key ({algorithm:?})",
                header.alg
            ));
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = u64::from(rules.leeway_seconds);
        validation.set_required_spec_claims(&["exp"]);
        match &rules.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &rules.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &decoding_key,
            &validation,
        )
        .map_err(|e| format!("invalid token: {e}"))?;
        Ok(data
            .claims
            .into_iter()
            .map(|(name, value)| jwt::Claim {
                name,
                value: value.to_string(),
            })
            .collect())
    }

    fn pem_key(&self, pem: &str) -> Result<(DecodingKey, Algorithm), String> {
        if let Some(k) = self
            .pem_keys
            .lock()
            .map_err(|_| "key cache poisoned")?
            .get(pem)
        {
            return Ok(k.clone());
        }
        let parsed = DecodingKey::from_rsa_pem(pem.as_bytes())
            .map(|k| (k, Algorithm::RS256))
            .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()).map(|k| (k, Algorithm::ES256)))
            .map_err(|e| format!("the public key is neither an RSA nor a P-256 PEM key: {e}"))?;
        let mut cache = self.pem_keys.lock().map_err(|_| "key cache poisoned")?;
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(pem.to_string(), parsed.clone());
        Ok(parsed)
    }

    async fn jwks_key(
        &self,
        url: &str,
        kid: Option<&str>,
    ) -> Result<(DecodingKey, Algorithm), String> {
        let find = |set: &JwkSet| -> Option<Result<(DecodingKey, Algorithm), String>> {
            let jwk = match kid {
                Some(kid) => set.find(kid)?,
                None if set.keys.len() == 1 => &set.keys[0],
                None => {
                    return Some(Err(
                        "the token has no `kid` and the JWKS has several keys".into()
                    ))
                }
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                .unwrap_or(match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                    _ => Algorithm::RS256,
                });
            Some(
                DecodingKey::from_jwk(jwk)
                    .map(|k| (k, alg))
                    .map_err(|e| format!("unusable JWKS key: {e}")),
            )
        };
        let refetch = {
            let cache = self.jwks.lock().map_err(|_| "JWKS cache poisoned")?;
            match cache.get(url) {
                Some(c) if c.fetched.elapsed() < JWKS_TTL => match find(&c.set) {
                    Some(found) => return found,
                    None => c.fetched.elapsed() >= JWKS_MIN_REFETCH,
                },
                _ => true,
            }
        };
        if !refetch {
            return Err(format!("no key with kid {kid:?} in the JWKS"));
        }
        let set = self.fetch_jwks(url).await.map_err(|e| e.to_string())?;
        let found = find(&set);
        self.jwks.lock().map_err(|_| "JWKS cache poisoned")?.insert(
            url.to_string(),
            CachedJwks {
                set,
                fetched: Instant::now(),
            },
        );
        found.unwrap_or_else(|| Err(format!("no key with kid {kid:?} in the JWKS")))
    }

    async fn fetch_jwks(&self, url: &str) -> Result<JwkSet, JwksError> {
        let (status, body) = fetch(
            &self.connector,
            "GET",
            url,
            &[("accept", "application/json")],
            None,
            FETCH_TIMEOUT,
            JWKS_MAX_BYTES,
        )
        .await?;
        if status != 200 {
            return Err(JwksError::Status {
                url: url.to_string(),
                status,
            });
        }
        serde_json::from_slice(&body).map_err(|source| JwksError::Invalid {
            url: url.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn rules(issuer: Option<&str>, audience: Option<&str>) -> jwt::Validation {
        jwt::Validation {
            issuer: issuer.map(String::from),
            audience: audience.map(String::from),
            leeway_seconds: 0,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[tokio::test]
    async fn hs256_tokens_verify_with_issuer_and_audience() {
        let v = JwtVerifier::new();
        let t = token(
            "s3cret",
            serde_json::json!({"sub":"alice","team":"research","iss":"idp","aud":"gw","exp": now() + 60}),
        );
        let claims = v
            .verify(
                &t,
                jwt::Key::Hs256Secret("s3cret".into()),
                rules(Some("idp"), Some("gw")),
            )
            .await
            .unwrap();
        assert!(claims
            .iter()
            .any(|c| c.name == "sub" && c.value == "\"alice\""));
        assert!(v
            .verify(&t, jwt::Key::Hs256Secret("wrong".into()), rules(None, None))
            .await
            .is_err());
        assert!(v
            .verify(
                &t,
                jwt::Key::Hs256Secret("s3cret".into()),
                rules(Some("other"), None)
            )
            .await
            .is_err());
        assert!(v
            .verify(
                &t,
                jwt::Key::Hs256Secret("s3cret".into()),
                rules(None, Some("other"))
            )
            .await
            .is_err());
    }

    #[tokio::test]
    async fn expired_and_malformed_tokens_are_refused() {
        let v = JwtVerifier::new();
        let t = token("k", serde_json::json!({"sub":"a","exp": now() - 120}));
        assert!(v
            .verify(&t, jwt::Key::Hs256Secret("k".into()), rules(None, None))
            .await
            .unwrap_err()
            .contains("Expired"));
        assert!(v
            .verify(
                "not.a.jwt",
                jwt::Key::Hs256Secret("k".into()),
                rules(None, None)
            )
            .await
            .is_err());
        let no_exp = token("k", serde_json::json!({"sub":"a"}));
        assert!(v
            .verify(
                &no_exp,
                jwt::Key::Hs256Secret("k".into()),
                rules(None, None)
            )
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_key_of_the_wrong_kind_is_refused() {
        let v = JwtVerifier::new();
        let t = token("k", serde_json::json!({"sub":"a","exp": now() + 60}));
        assert!(v
            .verify(
                &t,
                jwt::Key::PublicKeyPem(
                    "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----".into()
                ),
                rules(None, None)
            )
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_jwks_url_is_fetched_once_and_its_keys_verify() {
        use crate::upstream::fetch::test_server::serve;
        use base64::Engine as _;
        use std::sync::atomic::Ordering;

        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("jwks-secret");
        let (base, served) = serve(move |r| {
            assert_eq!(r.header("accept"), Some("application/json"));
            match r.target.as_str() {
                "/jwks.json" => {
                    let key =
                        serde_json::json!({"kty": "oct", "kid": "k1", "alg": "HS256", "k": k});
                    (200, serde_json::json!({ "keys": [key] }).to_string())
                }
                _ => (404, "{}".into()),
            }
        })
        .await;
        let v = JwtVerifier::new();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let t = encode(
            &header,
            &serde_json::json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(b"jwks-secret"),
        )
        .unwrap();
        for _ in 0..3 {
            let claims = v
                .verify(
                    &t,
                    jwt::Key::JwksUrl(format!("{base}/jwks.json")),
                    rules(None, None),
                )
                .await
                .unwrap();
            assert!(claims.iter().any(|c| c.name == "sub"));
        }
        assert_eq!(served.load(Ordering::SeqCst), 1);

        let err = v
            .verify(
                &t,
                jwt::Key::JwksUrl(format!("{base}/missing.json")),
                rules(None, None),
            )
            .await
            .unwrap_err();
        assert!(err.contains("status 404"), "{err}");
    }

    #[tokio::test]
    async fn jwks_failures_reach_plugins_in_their_words() {
        use crate::upstream::fetch::test_server::serve;

        let (base, _) = serve(|_| (200, "not json".into())).await;
        let v = JwtVerifier::new();
        let invalid = v
            .fetch_jwks(&format!("{base}/jwks.json"))
            .await
            .unwrap_err();
        assert!(matches!(invalid, JwksError::Invalid { .. }), "{invalid}");
        assert!(invalid
            .to_string()
            .starts_with(&format!("the JWKS from {base}/jwks.json is not valid: ")));
        let unreachable = v.fetch_jwks("ftp://example.com/jwks").await.unwrap_err();
        assert!(
            matches!(&unreachable, JwksError::Fetch(e) if !e.is_retryable()),
            "{unreachable}"
        );
        assert!(unreachable
            .to_string()
            .starts_with("fetching the JWKS: GET ftp://example.com/jwks: "));
    }
}
