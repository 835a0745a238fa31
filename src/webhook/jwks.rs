//! Entra ID token verification with the tenant's JWKS: fetched from a URL or read from a file,
//! cached, and fetched again when a token names an unknown `kid` (key rotation) — at most once
//! per `jwksMinRefetchSeconds`, so that a flood of made-up `kid`s cannot hammer the endpoint.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

use crate::audit::sink::http::{self, Https};
use crate::identity::entra::{self, EntraConfig, EntraIdentity, TokenError};

struct Cache {
    keys: Option<JwkSet>,
    fetched_at: Option<Instant>,
}

/// Verifies approval tokens against one tenant configuration.
pub struct Verifier {
    config: EntraConfig,
    http: Https,
    cache: tokio::sync::Mutex<Cache>,
}

impl Verifier {
    /// A verifier for `config`, which names a JWKS URL or file.
    pub fn new(config: EntraConfig) -> anyhow::Result<Verifier> {
        if config.jwks_url.is_some() == config.jwks_file.is_some() {
            anyhow::bail!("the Entra ID configuration needs exactly one of jwksUrl and jwksFile");
        }
        Ok(Verifier {
            config,
            http: http::client().map_err(anyhow::Error::msg)?,
            cache: tokio::sync::Mutex::new(Cache {
                keys: None,
                fetched_at: None,
            }),
        })
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let text = match (&self.config.jwks_url, &self.config.jwks_file) {
            (Some(url), _) => match http::get(&self.http, url).await? {
                (status, body) if status.is_success() => body,
                (status, _) => return Err(format!("the JWKS at {url} answered {status}")),
            },
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the JWKS file {}: {e}", file.display()))?,
            (None, None) => unreachable!("checked in new()"),
        };
        serde_json::from_str(&text).map_err(|e| format!("the JWKS is not a JSON Web Key Set: {e}"))
    }

    async fn refresh(&self, cache: &mut Cache) -> Result<(), String> {
        cache.fetched_at = Some(Instant::now());
        let keys = self.fetch().await?;
        tracing::info!(keys = keys.keys.len(), "fetched the Entra ID JWKS");
        cache.keys = Some(keys);
        Ok(())
    }

    /// The settings it verifies with.
    pub fn config(&self) -> &EntraConfig {
        &self.config
    }

    /// Verifies `token` (MFA is judged by the caller from the identity's `mfa`).
    pub async fn verify(&self, token: &str) -> Result<EntraIdentity, String> {
        let mut cache = self.cache.lock().await;
        let min_gap = Duration::from_secs(self.config.jwks_min_refetch_seconds);
        let may_fetch = |c: &Cache| c.fetched_at.is_none_or(|t| t.elapsed() >= min_gap);
        if cache.keys.is_none() && may_fetch(&cache) {
            self.refresh(&mut cache).await?;
        }
        let empty = JwkSet { keys: vec![] };
        let first = entra::verify(
            token,
            cache.keys.as_ref().unwrap_or(&empty),
            &self.config,
            false,
        );
        match first {
            Err(TokenError::UnknownKey(kid)) => {
                if !may_fetch(&cache) {
                    return Err(format!(
                        "{}; the JWKS was fetched less than {}s ago and is not fetched again yet",
                        TokenError::UnknownKey(kid),
                        min_gap.as_secs()
                    ));
                }
                self.refresh(&mut cache).await?;
                entra::verify(
                    token,
                    cache.keys.as_ref().unwrap_or(&empty),
                    &self.config,
                    false,
                )
                .map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }
}
