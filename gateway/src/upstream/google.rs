//! Google OAuth2 access tokens for Vertex AI, found the way Google's libraries find them and
//! kept fresh by one background task.
//!
//! [`GoogleCredentials::discover`] picks the source once, at start-up, in the order of Google's
//! Application Default Credentials: a configured key file, the file named by
//! `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
//! `~/.config/gcloud/application_default_credentials.json`, then the GCE metadata server.
//! Key files are either a `service_account` key (the gateway signs an RS256 JWT assertion and
//! trades it for a token) or an `authorized_user` refresh token (what `gcloud auth
//! application-default login` writes). A service account's private key is parsed and
//! test-signed at discovery, so a bad key stops the configuration from loading rather than
//! failing later.
//!
//! [`GoogleCredentials::spawn_refresh`] starts one task per backend that fetches a token and
//! fetches the next one before it expires, over Pingora's connector ([`super::fetch`]).
//! Requests only read the current token from an `ArcSwapOption`, so none ever waits on Google
//! and no two ever refresh at once. Tokens, keys, assertions, refresh tokens and client
//! secrets are never logged nor put in error text: logs name the source kind and the
//! service account's email, and say when the token expires.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora_core::connectors::http::Connector;
use serde_json::Value;

use super::error::FetchError;
use super::fetch::fetch;

/// The scope Vertex AI needs.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Where tokens come from when a key file names no `token_uri`.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's name on GCE, GKE, Cloud Run (`GCE_METADATA_HOST` overrides it).
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// gcloud's ADC file, under `$HOME`.
const GCLOUD_ADC_FILE: &str = ".config/gcloud/application_default_credentials.json";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long a signed assertion is valid (Google's maximum).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// Refresh a token this long before it expires...
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// ...but never later than this far (in fifths) into the life of a short-lived token.
const REFRESH_AT_FIFTHS: u32 = 4;
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Bounds one token request: resolving, connecting, sending, reading.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A token answer is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;
/// Longest error text kept in `last_error` (a token endpoint's error can be long).
const MAX_ERROR_TEXT: usize = 500;

/// Why Google credentials cannot be loaded.
///
/// The messages name the file and what is wrong with it, never the secrets it holds.
#[derive(Debug, thiserror::Error)]
pub enum GoogleAuthError {
    /// The credentials file cannot be read.
    #[error("cannot read the Google credentials file {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a JSON object.
    #[error("the Google credentials file {path} is not a JSON object: {reason}")]
    BadJson {
        /// The file.
        path: String,
        /// Where the JSON breaks (serde_json's position, not the content).
        reason: String,
    },
    /// The file's `type` is one the gateway cannot use.
    #[error(
        "the Google credentials file {path} has type `{kind}`; the gateway supports \
         `service_account` and `authorized_user`"
    )]
    UnsupportedType {
        /// The file.
        path: String,
        /// Its `type`.
        kind: String,
    },
    /// A field the file's type needs is missing or not a string.
    #[error("the Google credentials file {path} has no `{field}` string")]
    MissingField {
        /// The file.
        path: String,
        /// The field.
        field: &'static str,
    },
    /// The service account's `private_key` is not a usable RSA key.
    #[error(
        "the private key in the Google credentials file {path} is not a usable RSA PEM key: \
         {reason}"
    )]
    BadKey {
        /// The file.
        path: String,
        /// What `jsonwebtoken` said (it never quotes the key).
        reason: String,
    },
    /// A `token_uri` the gateway cannot call.
    #[error("the Google credentials file {path} has an unusable token_uri `{uri}`")]
    BadTokenUri {
        /// The file.
        path: String,
        /// The URI.
        uri: String,
    },
}

/// Why no access token could be had this time (the refresh task tries again).
///
/// Its text has every secret of the exchange (assertion, refresh token, client secret) taken
/// out, whatever the server echoed.
#[derive(Debug, thiserror::Error)]
pub enum GoogleTokenError {
    /// An assertion was asked of credentials that are not a service account's.
    #[error("not a service account")]
    NotServiceAccount,
    /// The service account's assertion could not be signed.
    #[error("cannot sign the token request: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The token endpoint or metadata server gave no token: unreachable, timed out, refused
    /// the grant (with Google's error text), or answered without a usable token.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl GoogleTokenError {
    /// Whether asking again soon may succeed (a connection, a timeout, a 429 or 5xx); a
    /// refused grant or a key that cannot sign needs someone to fix the credentials. The
    /// refresh task retries either way, with back-off: credentials get fixed.
    pub fn is_retryable(&self) -> bool {
        match self {
            GoogleTokenError::Fetch(e) => e.is_retryable(),
            GoogleTokenError::NotServiceAccount | GoogleTokenError::Sign(_) => false,
        }
    }
}

/// An access token and when it stops working.
struct Token {
    value: Arc<str>,
    expires_at: Instant,
}

/// Where tokens come from.
enum Source {
    ServiceAccount {
        path: String,
        client_email: String,
        private_key_id: Option<String>,
        key: EncodingKey,
        token_uri: String,
    },
    AuthorizedUser {
        path: String,
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    Metadata {
        url: String,
    },
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::ServiceAccount { .. } => "service_account",
            Source::AuthorizedUser { .. } => "authorized_user",
            Source::Metadata { .. } => "metadata",
        }
    }

    /// The key file, if the source is one.
    fn path(&self) -> Option<&str> {
        match self {
            Source::ServiceAccount { path, .. } | Source::AuthorizedUser { path, .. } => Some(path),
            Source::Metadata { .. } => None,
        }
    }

    /// Who the tokens are for, as far as it can be told without a secret: fit for logs.
    fn identity(&self) -> &str {
        match self {
            Source::ServiceAccount { client_email, .. } => client_email,
            Source::AuthorizedUser { path, .. } => path,
            Source::Metadata { url } => url,
        }
    }
}

/// A token fetched from the source, before it is published.
struct Fetched {
    token: String,
    expires_in: Duration,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The Google access token of one backend, and where it comes from.
///
/// Cheap to read from any thread: [`GoogleCredentials::token`] is one atomic load. Only the
/// task started by [`GoogleCredentials::spawn_refresh`] talks to Google.
pub struct GoogleCredentials {
    source: Source,
    current: ArcSwapOption<Token>,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for GoogleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let expires_in = self
            .current
            .load()
            .as_ref()
            .map(|t| t.expires_at.saturating_duration_since(Instant::now()));
        f.debug_struct("GoogleCredentials")
            .field("source", &self.source.kind())
            .field("identity", &self.source.identity())
            .field("file", &self.source.path())
            .field("token_expires_in", &expires_in)
            .field("last_error", &self.last_error())
            .finish()
    }
}

impl GoogleCredentials {
    /// Finds the source: `credentials_file` if given, else ADC order: env
    /// `GOOGLE_APPLICATION_CREDENTIALS`, then
    /// `~/.config/gcloud/application_default_credentials.json` (`$HOME`), then the metadata
    /// server (`GCE_METADATA_HOST` if set, else `metadata.google.internal`).
    ///
    /// Files are read and checked now; a metadata server is only tried by the refresh task.
    /// No token is fetched here: call [`GoogleCredentials::spawn_refresh`].
    pub fn discover(credentials_file: Option<&str>) -> Result<GoogleCredentials, GoogleAuthError> {
        Self::discover_in(credentials_file, &|name| std::env::var(name).ok())
    }

    /// [`GoogleCredentials::discover`] with the environment read through `env`.
    fn discover_in(
        credentials_file: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GoogleCredentials, GoogleAuthError> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let file = match credentials_file {
            Some(f) => Some(PathBuf::from(f)),
            None => var("GOOGLE_APPLICATION_CREDENTIALS")
                .map(PathBuf::from)
                .or_else(|| {
                    var("HOME")
                        .map(|home| Path::new(&home).join(GCLOUD_ADC_FILE))
                        .filter(|p| p.is_file())
                }),
        };
        let source = match file {
            Some(path) => load_file(&path)?,
            None => {
                let host = var("GCE_METADATA_HOST").unwrap_or_else(|| DEFAULT_METADATA_HOST.into());
                Source::Metadata {
                    url: format!("http://{host}{METADATA_TOKEN_PATH}"),
                }
            }
        };
        Ok(GoogleCredentials {
            source,
            current: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
        })
    }

    /// The access token, if there is one usable now (an expired token is not returned).
    pub fn token(&self) -> Option<Arc<str>> {
        let current = self.current.load();
        let token = current.as_ref()?;
        (token.expires_at > Instant::now()).then(|| Arc::clone(&token.value))
    }

    /// Why the last fetch failed, for error messages and readiness; `None` after a success.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Where tokens come from: `"service_account"`, `"authorized_user"` or `"metadata"`.
    pub fn source_kind(&self) -> &'static str {
        self.source.kind()
    }

    /// Starts the refresh task on `runtime`: it fetches a token at once, then again when the
    /// token has five minutes left (or at 80% of its life, for tokens that live less than 25
    /// minutes), retrying failures after 1 s, 2 s, 4 s... up to 60 s. The task ends when the
    /// last `Arc` of these credentials is dropped. `backend` names them in logs.
    pub fn spawn_refresh(self: &Arc<Self>, runtime: &tokio::runtime::Handle, backend: String) {
        let weak: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let connector = Connector::new(None);
            let mut backoff = MIN_BACKOFF;
            loop {
                // Holds the credentials only while fetching, so dropping them ends the task.
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let wait = match this.fetch_token(&connector).await {
                    Ok(fetched) => {
                        backoff = MIN_BACKOFF;
                        tracing::info!(
                            backend = %backend,
                            source = this.source.kind(),
                            identity = %this.source.identity(),
                            expires_in_secs = fetched.expires_in.as_secs(),
                            "Google access token loaded"
                        );
                        this.set(&fetched.token, fetched.expires_in);
                        if let Ok(mut e) = this.last_error.lock() {
                            *e = None;
                        }
                        refresh_after(fetched.expires_in)
                    }
                    Err(error) => {
                        // Shortened after the secrets were taken out (by `fetch_token`), so
                        // no partial secret survives at the cut.
                        let message: String =
                            error.to_string().chars().take(MAX_ERROR_TEXT).collect();
                        tracing::warn!(
                            backend = %backend,
                            source = this.source.kind(),
                            identity = %this.source.identity(),
                            error = %message,
                            retryable = error.is_retryable(),
                            "cannot load a Google access token"
                        );
                        if let Ok(mut e) = this.last_error.lock() {
                            *e = Some(message);
                        }
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                };
                drop(this);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Sets the token directly, valid for `expires_in` from now (tests).
    pub fn set(&self, token: &str, expires_in: Duration) {
        self.current.store(Some(Arc::new(Token {
            value: Arc::from(token),
            expires_at: Instant::now() + expires_in,
        })));
    }

    /// Asks the source for a new token. The error text has every secret of the exchange
    /// (assertion, refresh token, client secret) taken out, whatever the server echoed.
    async fn fetch_token(&self, connector: &Connector) -> Result<Fetched, GoogleTokenError> {
        let form = |pairs: &[(&str, &str)]| {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.extend_pairs(pairs);
            Bytes::from(form.finish())
        };
        const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
        const JSON: (&str, &str) = ("accept", "application/json");
        let (url, secrets, fetched) = match &self.source {
            Source::ServiceAccount { token_uri, .. } => {
                let assertion = self.assertion(unix_now())?;
                let body = form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)]);
                let fetched = fetch(
                    connector,
                    "POST",
                    token_uri,
                    &[FORM, JSON],
                    Some(body),
                    FETCH_TIMEOUT,
                    MAX_ANSWER,
                )
                .await;
                // The whole assertion and each of its parts: a server may quote a piece.
                let mut secrets: Vec<String> = assertion.split('.').map(String::from).collect();
                secrets.insert(0, assertion);
                (token_uri.as_str(), secrets, fetched)
            }
            Source::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
                ..
            } => {
                let body = form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id),
                    ("client_secret", client_secret),
                    ("refresh_token", refresh_token),
                ]);
                let fetched = fetch(
                    connector,
                    "POST",
                    token_uri,
                    &[FORM, JSON],
                    Some(body),
                    FETCH_TIMEOUT,
                    MAX_ANSWER,
                )
                .await;
                let secrets = vec![client_secret.clone(), refresh_token.clone()];
                (token_uri.as_str(), secrets, fetched)
            }
            Source::Metadata { url } => {
                let fetched = fetch(
                    connector,
                    "GET",
                    url,
                    &[("metadata-flavor", "Google"), JSON],
                    None,
                    FETCH_TIMEOUT,
                    MAX_ANSWER,
                )
                .await;
                (url.as_str(), Vec::new(), fetched)
            }
        };
        let outcome = fetched.and_then(|(status, body)| read_token_answer(url, status, &body));
        // Every text the server may have written, its error and what a broken exchange quotes
        // of its answer, has the secrets taken out.
        outcome.map_err(|e| GoogleTokenError::Fetch(e.redact(|text| redact(text, &secrets))))
    }

    /// The signed JWT a service account trades for a token, issued at `now` (Unix seconds).
    fn assertion(&self, now: u64) -> Result<String, GoogleTokenError> {
        let Source::ServiceAccount {
            client_email,
            private_key_id,
            key,
            token_uri,
            ..
        } = &self.source
        else {
            return Err(GoogleTokenError::NotServiceAccount);
        };
        sign_assertion(key, private_key_id.as_deref(), client_email, token_uri, now)
            .map_err(GoogleTokenError::Sign)
    }
}

/// Reads a key file: a `service_account` key or an `authorized_user` refresh token.
fn load_file(path: &Path) -> Result<Source, GoogleAuthError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| GoogleAuthError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    // Through `Value`, not typed structs: serde's type errors quote the offending value,
    // which here could be a key or a secret. Syntax errors only give a position.
    let json: Value = serde_json::from_slice(&text).map_err(|e| GoogleAuthError::BadJson {
        path: shown.clone(),
        reason: format!("line {} column {}", e.line(), e.column()),
    })?;
    if !json.is_object() {
        return Err(GoogleAuthError::BadJson {
            path: shown,
            reason: "not an object".into(),
        });
    }
    let field = |field: &'static str| -> Result<String, GoogleAuthError> {
        json.get(field)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .ok_or_else(|| GoogleAuthError::MissingField {
                path: shown.clone(),
                field,
            })
    };
    let token_uri = || -> Result<String, GoogleAuthError> {
        let uri = field("token_uri").unwrap_or_else(|_| DEFAULT_TOKEN_URI.into());
        match uri.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some() => {
                Ok(uri)
            }
            _ => Err(GoogleAuthError::BadTokenUri {
                path: shown.clone(),
                uri,
            }),
        }
    };
    match field("type")?.as_str() {
        "service_account" => {
            let client_email = field("client_email")?;
            let private_key_id = field("private_key_id").ok();
            let token_uri = token_uri()?;
            let bad_key = |reason: String| GoogleAuthError::BadKey {
                path: shown.clone(),
                reason,
            };
            let key = EncodingKey::from_rsa_pem(field("private_key")?.as_bytes())
                .map_err(|e| bad_key(e.to_string()))?;
            // `from_rsa_pem` only unwraps the PEM; ring parses the key when signing. Sign once
            // now so a broken key fails here, with the file's name, not in the refresh task.
            sign_assertion(&key, None, &client_email, &token_uri, unix_now())
                .map_err(|e| bad_key(e.to_string()))?;
            Ok(Source::ServiceAccount {
                path: shown.clone(),
                client_email,
                private_key_id,
                key,
                token_uri,
            })
        }
        "authorized_user" => Ok(Source::AuthorizedUser {
            path: shown.clone(),
            client_id: field("client_id")?,
            client_secret: field("client_secret")?,
            refresh_token: field("refresh_token")?,
            token_uri: token_uri()?,
        }),
        other => Err(GoogleAuthError::UnsupportedType {
            path: shown.clone(),
            kind: other.chars().take(64).collect(),
        }),
    }
}

/// The claims of a service account's token request.
#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

fn sign_assertion(
    key: &EncodingKey,
    kid: Option<&str>,
    client_email: &str,
    token_uri: &str,
    now: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::RS256); // `typ` is "JWT"
    header.kid = kid.map(String::from);
    let claims = AssertionClaims {
        iss: client_email,
        scope: SCOPE,
        aud: token_uri,
        iat: now,
        exp: now + ASSERTION_LIFETIME.as_secs(),
    };
    jsonwebtoken::encode(&header, &claims, key)
}

/// Reads a token endpoint's answer: `{"access_token", "expires_in", "token_type"}` on 200,
/// Google's `{"error", "error_description"}` otherwise. Never quotes the token.
fn read_token_answer(url: &str, status: u16, body: &[u8]) -> Result<Fetched, FetchError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let text = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(Value::as_str)
    };
    if status != 200 {
        // Google's OAuth errors, then the metadata server's and Google APIs' shapes.
        let error = text("error").or_else(|| {
            json.as_ref()
                .and_then(|j| j.pointer("/error/message"))
                .and_then(Value::as_str)
        });
        return Err(FetchError::Status {
            url: url.to_string(),
            status,
            error: error.map(String::from),
            description: text("error_description").map(String::from),
        });
    }
    let bad = |what: &'static str| FetchError::Malformed {
        url: url.to_string(),
        what,
    };
    let json = json.ok_or_else(|| bad("not with a JSON object"))?;
    let token = json
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("without an access_token"))?;
    if let Some(kind) = json.get("token_type") {
        if !kind
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("bearer"))
        {
            return Err(bad("with a token_type other than Bearer"));
        }
    }
    let expires_in = json
        .get("expires_in")
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
        .filter(|&s| s > 0)
        .ok_or_else(|| bad("without a positive expires_in"))?;
    Ok(Fetched {
        token: token.to_string(),
        expires_in: Duration::from_secs(expires_in),
    })
}

/// How long to wait before refreshing a token that lives `lifetime`: until five minutes are
/// left, or 80% of its life for short-lived tokens (where five minutes is more than a fifth
/// of it), so a short token is neither refetched in a loop nor left to expire; at least 1 s.
fn refresh_after(lifetime: Duration) -> Duration {
    let five_minutes_left = lifetime.saturating_sub(REFRESH_BEFORE_EXPIRY);
    let four_fifths = lifetime * REFRESH_AT_FIFTHS / 5;
    five_minutes_left.max(four_fifths).max(MIN_REFRESH)
}

/// Replaces every secret (of a useful length) found in `message`, as sent or form-encoded.
fn redact(mut message: String, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [secret.as_str(), encoded.as_str()] {
            if message.contains(form) {
                message = message.replace(form, "[redacted]");
            }
        }
    }
    message
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;
    use crate::upstream::fetch::test_server::{serve, Request};

    /// A throwaway RSA key pair made for these tests only (see tests/fixtures/README.md).
    const TEST_KEY: &str = include_str!("../../tests/fixtures/google-test-key.pem");
    const TEST_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/google-test-key.pub.pem");
    const EMAIL: &str = "gateway@test-project.iam.gserviceaccount.com";
    const REFRESH_TOKEN: &str = "1//refresh-token-secret-value";
    const CLIENT_SECRET: &str = "client-secret-value-xyz";

    /// A file under a directory of its own in the system's temp dir, both removed on drop.
    struct TempFile {
        dir: PathBuf,
        path: PathBuf,
    }

    impl TempFile {
        fn new(name: &str, contents: &str) -> TempFile {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "gateway-google-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            TempFile { dir, path }
        }

        fn path(&self) -> &str {
            self.path.to_str().unwrap()
        }

        /// The directory the file was made under: a stand-in `$HOME`.
        fn home(&self) -> &str {
            self.dir.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn service_account_json(token_uri: Option<&str>) -> String {
        let mut v = serde_json::json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "key-id-1",
            "private_key": TEST_KEY,
            "client_email": EMAIL,
            "client_id": "1234",
        });
        if let Some(uri) = token_uri {
            v["token_uri"] = uri.into();
        }
        v.to_string()
    }

    fn authorized_user_json(token_uri: Option<&str>) -> String {
        let mut v = serde_json::json!({
            "type": "authorized_user",
            "client_id": "client-id.apps.googleusercontent.com",
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
        });
        if let Some(uri) = token_uri {
            v["token_uri"] = uri.into();
        }
        v.to_string()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn load(json: &str) -> Result<GoogleCredentials, GoogleAuthError> {
        let file = TempFile::new("key.json", json);
        GoogleCredentials::discover_in(Some(file.path()), &no_env)
    }

    /// Checks a token request's grant against the test key and client; the token to answer.
    fn check_grant(r: &Request, token_uri: &str) -> Result<(), String> {
        if r.method != "POST"
            || r.header("content-type") != Some("application/x-www-form-urlencoded")
        {
            return Err(format!(
                "unexpected {} {:?}",
                r.method,
                r.header("content-type")
            ));
        }
        let form: HashMap<String, String> = r.form().into_iter().collect();
        match form.get("grant_type").map(String::as_str) {
            Some(JWT_BEARER_GRANT) => {
                let assertion = form.get("assertion").ok_or("no assertion")?;
                let claims = decode_assertion(assertion, token_uri).map_err(|e| e.to_string())?;
                if claims["iss"] != EMAIL {
                    return Err("wrong iss".into());
                }
                Ok(())
            }
            Some("refresh_token") => {
                if form.get("refresh_token").map(String::as_str) != Some(REFRESH_TOKEN)
                    || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
                    || form.get("client_id").map(String::as_str)
                        != Some("client-id.apps.googleusercontent.com")
                {
                    return Err("wrong refresh grant".into());
                }
                Ok(())
            }
            other => Err(format!("unexpected grant {other:?}")),
        }
    }

    /// Verifies an assertion's signature with the test public key and returns its claims.
    fn decode_assertion(
        assertion: &str,
        token_uri: &str,
    ) -> Result<HashMap<String, Value>, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[token_uri]);
        validation.set_issuer(&[EMAIL]);
        validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        let key = DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes())?;
        Ok(jsonwebtoken::decode(assertion, &key, &validation)?.claims)
    }

    /// A token server that checks every grant and issues tokens living `expires_in` seconds.
    async fn token_server(expires_in: u64) -> (String, Arc<AtomicUsize>) {
        let issued = Arc::new(AtomicUsize::new(0));
        let uri = Arc::new(Mutex::new(String::new()));
        let (base, served) = {
            let issued = Arc::clone(&issued);
            let uri = Arc::clone(&uri);
            serve(move |r| {
                let uri = uri.lock().unwrap().clone();
                match check_grant(r, &uri) {
                    Ok(()) => {
                        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                        let answer = serde_json::json!({
                            "access_token": format!("ya29.token-{n}"),
                            "expires_in": expires_in,
                            "token_type": "Bearer",
                        });
                        (200, answer.to_string())
                    }
                    Err(e) => (
                        400,
                        serde_json::json!({"error": "test_failure", "error_description": e})
                            .to_string(),
                    ),
                }
            })
            .await
        };
        *uri.lock().unwrap() = format!("{base}/token");
        (format!("{base}/token"), served)
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_service_account_file_is_loaded_with_its_key_and_token_uri() {
        let c = load(&service_account_json(Some(
            "https://oauth2.example.com/token",
        )))
        .unwrap();
        assert_eq!(c.source_kind(), "service_account");
        match &c.source {
            Source::ServiceAccount {
                client_email,
                private_key_id,
                token_uri,
                ..
            } => {
                assert_eq!(client_email, EMAIL);
                assert_eq!(private_key_id.as_deref(), Some("key-id-1"));
                assert_eq!(token_uri, "https://oauth2.example.com/token");
            }
            _ => unreachable!(),
        }
        assert!(c.token().is_none());
        let c = load(&service_account_json(None)).unwrap();
        assert!(matches!(
            &c.source,
            Source::ServiceAccount { token_uri, .. } if token_uri == DEFAULT_TOKEN_URI
        ));
    }

    #[test]
    fn an_authorized_user_file_is_loaded_with_the_default_token_uri() {
        let c = load(&authorized_user_json(None)).unwrap();
        assert_eq!(c.source_kind(), "authorized_user");
        assert!(matches!(
            &c.source,
            Source::AuthorizedUser { token_uri, refresh_token, .. }
                if token_uri == DEFAULT_TOKEN_URI && refresh_token == REFRESH_TOKEN
        ));
    }

    #[test]
    fn bad_files_are_refused_with_their_path_and_without_their_secrets() {
        let missing = GoogleCredentials::discover_in(Some("/nonexistent/key.json"), &no_env);
        assert!(matches!(
            &missing,
            Err(GoogleAuthError::Unreadable { path, .. }) if path == "/nonexistent/key.json"
        ));

        assert!(matches!(
            load("{not json"),
            Err(GoogleAuthError::BadJson { .. })
        ));
        assert!(matches!(
            load("[1, 2]"),
            Err(GoogleAuthError::BadJson { .. })
        ));
        assert!(matches!(
            load(r#"{"type": "external_account"}"#),
            Err(GoogleAuthError::UnsupportedType { kind, .. }) if kind == "external_account"
        ));
        assert!(matches!(
            load(r#"{"client_email": "x"}"#),
            Err(GoogleAuthError::MissingField { field: "type", .. })
        ));
        let mut no_secret: Value = serde_json::from_str(&authorized_user_json(None)).unwrap();
        no_secret["client_secret"] = 42.into();
        assert!(matches!(
            load(&no_secret.to_string()),
            Err(GoogleAuthError::MissingField {
                field: "client_secret",
                ..
            })
        ));
        let mut bad_uri: Value = serde_json::from_str(&authorized_user_json(None)).unwrap();
        bad_uri["token_uri"] = "ftp://x/token".into();
        assert!(matches!(
            load(&bad_uri.to_string()),
            Err(GoogleAuthError::BadTokenUri { .. })
        ));

        // Not a PEM block; a PEM block of garbage; the test key with a byte of its private
        // part changed (well-formed, so only signing finds it out): all fail at load, naming
        // the file but not quoting the key.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem = |der: &[u8]| {
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                b64.encode(der)
            )
        };
        let body: String = TEST_KEY
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let mut der = b64.decode(&body).unwrap();
        let n = der.len();
        der[n - 10] ^= 0x55;
        let body = "MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEAzzzzzzzzzzzzzzzz";
        for key in [
            "not a pem".to_string(),
            pem(&b64.decode(body).unwrap()),
            pem(&der),
        ] {
            let mut sa: Value = serde_json::from_str(&service_account_json(None)).unwrap();
            sa["private_key"] = key.into();
            let file = TempFile::new("sa.json", &sa.to_string());
            let err = GoogleCredentials::discover_in(Some(file.path()), &no_env).unwrap_err();
            assert!(matches!(err, GoogleAuthError::BadKey { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(file.path()), "{text}");
            assert!(!text.contains("MII"), "{text}");
        }
    }

    #[test]
    fn discovery_follows_the_adc_order() {
        let explicit = TempFile::new("explicit.json", &service_account_json(None));
        let from_env = TempFile::new("env.json", &authorized_user_json(None));
        let gcloud = TempFile::new(GCLOUD_ADC_FILE, &authorized_user_json(None));
        let home = gcloud.home();
        let path_of = |c: &GoogleCredentials| match &c.source {
            Source::ServiceAccount { path, .. } | Source::AuthorizedUser { path, .. } => {
                path.clone()
            }
            Source::Metadata { url } => url.clone(),
        };
        let all = env_of(&[
            ("GOOGLE_APPLICATION_CREDENTIALS", from_env.path()),
            ("HOME", home),
            ("GCE_METADATA_HOST", "10.0.0.1:8080"),
        ]);

        // A configured file wins over everything.
        let c = GoogleCredentials::discover_in(Some(explicit.path()), &all).unwrap();
        assert_eq!(path_of(&c), explicit.path());
        // Then GOOGLE_APPLICATION_CREDENTIALS.
        let c = GoogleCredentials::discover_in(None, &all).unwrap();
        assert_eq!(path_of(&c), from_env.path());
        // Then gcloud's file under $HOME.
        let c = GoogleCredentials::discover_in(None, &env_of(&[("HOME", home)])).unwrap();
        assert_eq!(path_of(&c), gcloud.path());
        // Then the metadata server, at GCE_METADATA_HOST or its usual name.
        let c = GoogleCredentials::discover_in(
            None,
            &env_of(&[
                ("HOME", "/nonexistent"),
                ("GCE_METADATA_HOST", "10.0.0.1:8080"),
            ]),
        )
        .unwrap();
        assert_eq!(c.source_kind(), "metadata");
        assert_eq!(
            path_of(&c),
            format!("http://10.0.0.1:8080{METADATA_TOKEN_PATH}")
        );
        let c = GoogleCredentials::discover_in(None, &no_env).unwrap();
        assert_eq!(
            path_of(&c),
            format!("http://metadata.google.internal{METADATA_TOKEN_PATH}")
        );

        // A GOOGLE_APPLICATION_CREDENTIALS naming a missing file is an error, not a fallback.
        let err = GoogleCredentials::discover_in(
            None,
            &env_of(&[("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")]),
        )
        .unwrap_err();
        assert!(matches!(err, GoogleAuthError::Unreadable { .. }));
    }

    #[test]
    fn the_assertion_carries_googles_header_and_claims() {
        let token_uri = "https://oauth2.example.com/token";
        let c = load(&service_account_json(Some(token_uri))).unwrap();
        let now = unix_now();
        let assertion = c.assertion(now).unwrap();

        let header = jsonwebtoken::decode_header(&assertion).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("key-id-1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));

        let claims = decode_assertion(&assertion, token_uri).unwrap();
        assert_eq!(claims["iss"], EMAIL);
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], token_uri);
        assert_eq!(claims["iat"], now);
        assert_eq!(claims["exp"], now + 3600);
        assert_eq!(claims.len(), 5, "{claims:?}");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let c = load(&authorized_user_json(None)).unwrap();
        c.set("ya29.secret-access-token", Duration::from_secs(60));
        let shown = format!("{c:?}");
        for secret in [REFRESH_TOKEN, CLIENT_SECRET, "ya29.secret-access-token"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("authorized_user"), "{shown}");

        let c = load(&service_account_json(None)).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("PRIVATE KEY") && shown.contains(EMAIL),
            "{shown}"
        );
    }

    #[test]
    fn tokens_are_served_until_they_expire() {
        let c = load(&authorized_user_json(None)).unwrap();
        c.set("t1", Duration::from_secs(60));
        assert_eq!(c.token().as_deref(), Some("t1"));
        c.set("t2", Duration::ZERO);
        assert!(c.token().is_none());
    }

    #[test]
    fn refreshes_five_minutes_before_expiry_or_at_four_fifths_of_a_short_life() {
        let s = Duration::from_secs;
        assert_eq!(refresh_after(s(3600)), s(3300));
        assert_eq!(refresh_after(s(1500)), s(1200));
        assert_eq!(refresh_after(s(600)), s(480));
        assert_eq!(refresh_after(s(10)), s(8));
        assert_eq!(refresh_after(Duration::from_millis(2500)), s(2));
        assert_eq!(refresh_after(s(1)), s(1));
    }

    #[test]
    fn token_answers_are_read_without_quoting_the_token() {
        let ok = read_token_answer(
            "u",
            200,
            br#"{"access_token":"ya29.a","expires_in":3599,"token_type":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.token.as_str(), ok.expires_in),
            ("ya29.a", Duration::from_secs(3599))
        );
        let err = read_token_answer(
            "u",
            200,
            br#"{"access_token":"ya29.b","expires_in":3599,"token_type":"mac"}"#,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("ya29.b"), "{err}");
        assert!(!err.is_retryable());
        assert!(read_token_answer("u", 200, br#"{"access_token":"ya29.c"}"#).is_err());
        let err = read_token_answer(
            "u",
            400,
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "u answered 400: invalid_grant: Invalid JWT Signature."
        );
        assert!(!err.is_retryable(), "a refused grant stays refused");
        let err = read_token_answer("u", 502, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(err.to_string(), "u answered 502");
        assert!(err.is_retryable());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_readers_share_one_fetch_of_a_service_account_token() {
        let (token_uri, served) = token_server(3600).await;
        let c = Arc::new(load(&service_account_json(Some(&token_uri))).unwrap());
        c.spawn_refresh(&tokio::runtime::Handle::current(), "vertex".into());
        // Readers start before the token arrives and keep reading after.
        let readers: Vec<_> = (0..64)
            .map(|_| {
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    loop {
                        if let Some(t) = c.token() {
                            for _ in 0..100 {
                                assert_eq!(c.token().as_deref(), Some(&*t));
                                tokio::task::yield_now().await;
                            }
                            return t;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        for r in readers {
            assert_eq!(&*r.await.unwrap(), "ya29.token-1");
        }
        assert_eq!(served.load(Ordering::SeqCst), 1);
        assert!(c.last_error().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_lived_tokens_are_replaced_before_they_expire() {
        let (token_uri, served) = token_server(3).await;
        let c = Arc::new(load(&authorized_user_json(Some(&token_uri))).unwrap());
        c.spawn_refresh(&tokio::runtime::Handle::current(), "vertex".into());
        wait_for("the first token", || c.token().is_some()).await;
        let mut seen = vec![c.token().unwrap()];
        // Three-second tokens, refreshed at 2.4 s: over 5.5 s there must always be a token,
        // and at least three different ones.
        let until = Instant::now() + Duration::from_millis(5500);
        while Instant::now() < until {
            let t = c
                .token()
                .expect("the token lapsed before its replacement came");
            if seen.last() != Some(&t) {
                seen.push(t);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen.len() >= 3, "{seen:?}");
        // One fetch per token (one more may have landed after the last look).
        let fetches = served.load(Ordering::SeqCst);
        assert!(
            fetches == seen.len() || fetches == seen.len() + 1,
            "{fetches} {seen:?}"
        );
        assert!(c.last_error().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_metadata_server_is_asked_with_its_flavor_header() {
        let (base, served) = serve(|r| {
            if r.method == "GET"
                && r.target == METADATA_TOKEN_PATH
                && r.header("metadata-flavor") == Some("Google")
            {
                (
                    200,
                    r#"{"access_token":"ya29.gce","expires_in":3599,"token_type":"Bearer"}"#.into(),
                )
            } else {
                (403, "{}".into())
            }
        })
        .await;
        let host = base.trim_start_matches("http://");
        let c = Arc::new(
            GoogleCredentials::discover_in(None, &env_of(&[("GCE_METADATA_HOST", host)])).unwrap(),
        );
        c.spawn_refresh(&tokio::runtime::Handle::current(), "vertex".into());
        wait_for("the metadata token", || c.token().is_some()).await;
        assert_eq!(c.token().as_deref(), Some("ya29.gce"));
        assert_eq!(served.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_server_leaves_an_error_without_secrets_and_is_retried() {
        // The server refuses every grant and quotes the whole request back, raw and decoded,
        // as a careless server might: the recorded error must still hold none of the secrets.
        for service_account in [true, false] {
            let assertions = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&assertions);
            let (base, served) = serve(move |r| {
                if let Some((_, a)) = r.form().into_iter().find(|(k, _)| k == "assertion") {
                    seen.lock().unwrap().push(a);
                }
                let raw = String::from_utf8_lossy(&r.body).into_owned();
                let decoded: Vec<String> = r.form().into_iter().map(|(_, v)| v).collect();
                let description = format!("bad request {raw} {}", decoded.join(" "));
                let answer =
                    serde_json::json!({"error": "invalid_grant", "error_description": description});
                (400, answer.to_string())
            })
            .await;
            let token_uri = format!("{base}/token");
            let json = if service_account {
                service_account_json(Some(&token_uri))
            } else {
                authorized_user_json(Some(&token_uri))
            };
            let c = Arc::new(load(&json).unwrap());
            c.spawn_refresh(&tokio::runtime::Handle::current(), "vertex".into());
            wait_for("a retry", || served.load(Ordering::SeqCst) >= 2).await;
            wait_for("the error", || c.last_error().is_some()).await;
            let err = c.last_error().unwrap();
            assert!(err.contains("/token answered 400: invalid_grant"), "{err}");
            // Not the assertion nor any of its three parts; not the refresh token, whose tail
            // survives form-encoding; not the client secret.
            let assertions = assertions.lock().unwrap().clone();
            assert_eq!(assertions.is_empty(), !service_account);
            let parts = assertions.iter().flat_map(|a| a.split('.'));
            for secret in parts.chain(["refresh-token-secret-value", CLIENT_SECRET]) {
                assert!(!err.contains(secret), "{err}");
            }
            assert!(c.token().is_none());
        }
    }
}
