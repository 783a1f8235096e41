//! JSON Web Token verification, done by the host.
//!
//! The gateway checks the signature, `exp` (always), and the issuer and audience asked for,
//! and caches keys and JWKS documents; the plugin decides what the claims mean.
//!
//! ```
//! use llm_gateway_plugin::{jwt, Decision, Request};
//! # fn f(req: &mut Request, secret: &str) -> Decision {
//! let Some(token) = req.bearer_token() else {
//!     return Decision::unauthorized("a bearer token is required");
//! };
//! let key = jwt::Key::Hs256Secret(secret.to_string());
//! match jwt::verify(&token, &key, &jwt::Validation::default().issuer("https://idp.example")) {
//!     Ok(claims) => {
//!         let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("unknown");
//!         let _ = req.set_identity(sub, None);
//!         Decision::Continue
//!     }
//!     Err(e) => Decision::unauthorized(e.to_string()),
//! }
//! # }
//! ```

use crate::error::Error;
use crate::host;

/// A token's claims, by name.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Where the verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A shared secret (HS256).
    Hs256Secret(String),
    /// A PEM public key (RS256 for RSA keys, ES256 for P-256 keys).
    PublicKeyPem(String),
    /// A JWKS document URL, fetched and cached by the host; the token's `kid` picks the key.
    JwksUrl(String),
}

/// What the claims must satisfy besides a valid signature and `exp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences).
    pub audience: Option<String>,
    /// Clock skew allowed for `exp` and `nbf`, in seconds.
    pub leeway_seconds: u32,
}

impl Validation {
    /// Requires this issuer.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires this audience.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Allows this much clock skew.
    pub fn leeway_seconds(mut self, seconds: u32) -> Self {
        self.leeway_seconds = seconds;
        self
    }
}

/// Verifies `token` and returns its claims, or why it is not valid.
pub fn verify(token: &str, key: &Key, validation: &Validation) -> Result<Claims, Error> {
    let claims = host::jwt_verify(token, key, validation)?;
    claims
        .into_iter()
        .map(|(name, value)| {
            serde_json::from_str(&value)
                .map(|v| (name, v))
                .map_err(Error::from)
        })
        .collect()
}
