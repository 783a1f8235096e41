//! AWS credentials for SigV4, from the standard chain, kept fresh by one background task.
//!
//! `aws-config` finds credentials the way every AWS SDK does: environment variables, the
//! shared config and credentials files (profiles, SSO, credential processes), web identity,
//! ECS container credentials, EC2 instance metadata (IMDSv2). One task per backend fetches
//! them and fetches again five minutes before they expire, so requests only read an
//! `ArcSwap` and no two requests ever refresh at once. Credentials are never logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;

/// Refresh this long before credentials expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// Re-read credentials without an expiry this often (rotated files, changed profiles).
const REFRESH_STATIC: Duration = Duration::from_secs(600);

/// The current credentials of one backend.
#[derive(Debug, Default)]
pub struct AwsCredentials {
    current: ArcSwapOption<Credentials>,
    last_error: Mutex<Option<String>>,
}

impl AwsCredentials {
    /// Credentials usable now, if any (expired ones are not returned).
    pub fn get(&self) -> Option<Arc<Credentials>> {
        let creds = self.current.load_full()?;
        match creds.expiry() {
            Some(t) if t <= SystemTime::now() => None,
            _ => Some(creds),
        }
    }

    /// Why the last fetch failed, for error messages and readiness.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Starts the refresh task on `runtime`; `region` and `profile` select what the chain reads.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        backend: String,
        region: String,
        profile: Option<String>,
    ) {
        let this = Arc::clone(self);
        runtime.spawn(async move {
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .region(aws_config::Region::new(region));
            if let Some(p) = &profile {
                loader = loader.profile_name(p);
            }
            let config = loader.load().await;
            let Some(provider) = config.credentials_provider() else {
                this.set_error(&backend, "the AWS credential chain is empty".into());
                return;
            };
            let mut backoff = Duration::from_secs(1);
            loop {
                let wait = match provider.provide_credentials().await {
                    Ok(creds) => {
                        backoff = Duration::from_secs(1);
                        let wait = creds
                            .expiry()
                            .and_then(|t| t.duration_since(SystemTime::now()).ok())
                            .map(|left| left.saturating_sub(REFRESH_BEFORE_EXPIRY))
                            .unwrap_or(REFRESH_STATIC)
                            .max(Duration::from_secs(5));
                        tracing::info!(
                            backend = %backend,
                            access_key_suffix = %key_suffix(creds.access_key_id()),
                            temporary = creds.session_token().is_some(),
                            "AWS credentials loaded"
                        );
                        this.current.store(Some(Arc::new(creds)));
                        if let Ok(mut e) = this.last_error.lock() {
                            *e = None;
                        }
                        wait
                    }
                    Err(e) => {
                        this.set_error(&backend, format!("{e}"));
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        wait
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    fn set_error(&self, backend: &str, message: String) {
        tracing::warn!(backend = %backend, error = %message, "cannot load AWS credentials");
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(message);
        }
    }

    /// Sets credentials directly (tests, and static keys given in code).
    pub fn set(&self, creds: Credentials) {
        self.current.store(Some(Arc::new(creds)));
    }
}

/// The last four characters of an access key ID: enough to tell keys apart in logs, not a secret.
fn key_suffix(key: &str) -> String {
    let n = key.len();
    format!("…{}", &key[n.saturating_sub(4)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_credentials_are_not_served() {
        let c = AwsCredentials::default();
        assert!(c.get().is_none());
        c.set(Credentials::new(
            "AKID",
            "secret",
            None,
            Some(SystemTime::now() - Duration::from_secs(1)),
            "test",
        ));
        assert!(c.get().is_none());
        c.set(Credentials::new("AKID", "secret", None, None, "test"));
        assert!(c.get().is_some());
    }

    #[test]
    fn key_suffix_shows_only_the_end() {
        assert_eq!(key_suffix("AKIDEXAMPLE1234"), "…1234");
        assert_eq!(key_suffix("AB"), "…AB");
    }
}
