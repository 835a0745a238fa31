//! Who calls the HTTP API, and with what standing: a person or an application with an Entra ID
//! token, or automation with an API key. Pure: tokens are verified and keys read elsewhere.

use std::collections::BTreeSet;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::admission::approval_request::Actor;
use crate::approval::signed::Via;
use crate::identity::entra::EntraIdentity;
use crate::identity::{Role, RoleMapping, Subject};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A person's Entra ID token.
    Person(EntraIdentity),
    /// An application's own token (service principal, managed identity): a machine.
    Application(EntraIdentity),
    /// An API key: a machine holding the key's roles and no others.
    Key {
        /// The key's name.
        name: String,
        /// The roles it is scoped to.
        roles: BTreeSet<Role>,
        /// Its rate.
        requests_per_minute: u32,
    },
}

impl Caller {
    /// The name audit entries and acts give the caller.
    pub fn username(&self) -> String {
        match self {
            Caller::Person(id) | Caller::Application(id) => id.username.clone(),
            Caller::Key { name, .. } => format!("apikey:{name}"),
        }
    }

    /// The seed's `auth_method`.
    pub fn auth_method(&self) -> &'static str {
        match self {
            Caller::Person(_) => "azure_ad",
            Caller::Application(_) => "service_principal",
            Caller::Key { .. } => "api_key",
        }
    }

    /// The caller with the roles they hold in `environment`: a token's from the role mapping
    /// (user name and groups) and its app roles; a key's from the key alone. Applications and
    /// keys are machines: they never count as human approvers.
    pub fn subject(&self, mapping: &RoleMapping, environment: &str) -> Subject {
        match self {
            Caller::Person(id) | Caller::Application(id) => {
                let mut subject = mapping.subject(&id.identity(), environment);
                subject.roles.extend(id.roles(mapping, environment));
                if subject.roles.len() > 1 {
                    subject.roles.remove(&Role::Viewer);
                }
                subject.machine |= matches!(self, Caller::Application(_));
                subject
            }
            Caller::Key { roles, .. } => Subject {
                username: self.username(),
                groups: vec![],
                roles: roles.clone(),
                machine: true,
            },
        }
    }

    /// The caller acting on a request in `environment` through the HTTP API.
    pub fn actor(&self, mapping: &RoleMapping, environment: &str) -> Actor {
        let (uid, mfa, entra) = match self {
            Caller::Person(id) | Caller::Application(id) => {
                (Some(id.oid.clone()), id.mfa, Some(id.entra_id()))
            }
            Caller::Key { .. } => (None, false, None),
        };
        Actor {
            subject: self.subject(mapping, environment),
            uid,
            mfa,
            entra,
            via: Some(Via::Http),
        }
    }
}

/// One API key as configured: only the SHA-256 of the key is stored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKey {
    /// The key's name (audit entries say `apikey:NAME`).
    pub name: String,
    /// Lowercase hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The roles the key holds, in every environment (never a human approver's).
    pub roles: BTreeSet<Role>,
    /// Calls allowed per minute (a token bucket holding a minute's worth). Default 60.
    #[serde(default = "default_rate")]
    pub requests_per_minute: u32,
}

fn default_rate() -> u32 {
    60
}

/// The configured API keys (a Secret's `keys.yaml`: `keys: [...]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

/// The shortest key accepted when presented: shorter keys are guessable.
pub const MIN_KEY_LENGTH: usize = 32;

impl ApiKeys {
    /// Reads and checks the keys file: names unique (lowercase letters, digits, dashes),
    /// digests of 64 lowercase hex digits and unique, roles given, a rate of 1 to 6000.
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let keys: ApiKeys = if text.trim().is_empty() {
            ApiKeys::default()
        } else {
            crate::yaml::from_str(text).map_err(|e| format!("invalid API keys: {e}"))?
        };
        let mut names = BTreeSet::new();
        let mut digests = BTreeSet::new();
        for k in &keys.keys {
            let named = !k.name.is_empty()
                && k.name.len() <= 63
                && k.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !named {
                return Err(format!(
                    "API key name {:?} must be 1 to 63 lowercase letters, digits and dashes",
                    k.name
                ));
            }
            if !names.insert(&k.name) {
                return Err(format!("API key {} is configured twice", k.name));
            }
            let hex = k.sha256.len() == 64
                && k.sha256
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            if !hex {
                return Err(format!(
                    "API key {}: sha256 must be 64 lowercase hex digits (the key's SHA-256, never the key)",
                    k.name
                ));
            }
            if !digests.insert(&k.sha256) {
                return Err(format!("API key {}: the same key as another", k.name));
            }
            if k.roles.is_empty() {
                return Err(format!("API key {}: give it at least one role", k.name));
            }
            if !(1..=6000).contains(&k.requests_per_minute) {
                return Err(format!(
                    "API key {}: requestsPerMinute must be 1 to 6000",
                    k.name
                ));
            }
        }
        Ok(keys)
    }

    /// The key `presented` is, if any: its full SHA-256 compared with every configured digest
    /// in constant time.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        if presented.len() < MIN_KEY_LENGTH {
            return None;
        }
        let digest = hex(&Sha256::digest(presented.as_bytes()));
        let mut found = None;
        for k in &self.keys {
            if same(k.sha256.as_bytes(), digest.as_bytes()) {
                found = Some(k);
            }
        }
        found
    }
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dvo_4f1c9a7e2b8d4c6f9e1a3b5c7d9f0e2a";

    fn keys(rate: u32) -> ApiKeys {
        ApiKeys::parse(&format!(
            "keys:\n- {{name: portal, sha256: {}, roles: [viewer], requestsPerMinute: {rate}}}\n",
            hex(&Sha256::digest(KEY.as_bytes()))
        ))
        .unwrap()
    }

    #[test]
    fn a_key_is_found_by_its_full_digest_only() {
        let k = keys(60);
        assert_eq!(k.find(KEY).map(|k| k.name.as_str()), Some("portal"));
        let mut near = KEY.to_owned();
        near.pop();
        near.push('b');
        assert_eq!(k.find(&near), None);
        assert_eq!(k.find(""), None);
        assert_eq!(
            k.find(&hex(&Sha256::digest(KEY.as_bytes()))),
            None,
            "the digest is no key"
        );
    }

    #[test]
    fn bad_key_files_are_refused_with_the_reason() {
        let digest = "a".repeat(64);
        let cases = [
            (
                "keys: [{name: P, sha256: x, roles: [viewer]}]",
                "lowercase letters",
            ),
            (
                "keys: [{name: p, sha256: x, roles: [viewer]}]",
                "64 lowercase hex",
            ),
            (
                &*format!("keys: [{{name: p, sha256: {digest}, roles: []}}]"),
                "at least one role",
            ),
            (
                &*format!(
                    "keys: [{{name: p, sha256: {digest}, roles: [viewer], requestsPerMinute: 0}}]"
                ),
                "1 to 6000",
            ),
            (
                &*format!(
                    "keys: [{{name: p, sha256: {digest}, roles: [viewer]}}, {{name: p, sha256: {}, roles: [viewer]}}]",
                    "b".repeat(64)
                ),
                "configured twice",
            ),
            (
                &*format!(
                    "keys: [{{name: p, sha256: {digest}, roles: [viewer]}}, {{name: q, sha256: {digest}, roles: [viewer]}}]"
                ),
                "the same key",
            ),
            (
                "keys: [{name: p, key: plain, roles: [viewer]}]",
                "invalid API keys",
            ),
            (
                &*format!("keys: [{{name: p, sha256: {digest}, roles: [god]}}]"),
                "invalid API keys",
            ),
        ];
        for (text, want) in cases {
            let err = ApiKeys::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert_eq!(ApiKeys::parse(""), Ok(ApiKeys::default()));
    }

    #[test]
    fn machines_never_approve_as_people_and_keys_hold_only_their_roles() {
        let mapping: RoleMapping = crate::yaml::from_str(
            "users: {rosa@example.com: [release_manager], app-oid: [release_manager]}",
        )
        .unwrap();
        let id = |username: &str, application: bool| EntraIdentity {
            oid: "o".into(),
            tid: "t".into(),
            username: username.into(),
            groups: vec![],
            app_roles: Default::default(),
            mfa: true,
            application,
        };
        let person = Caller::Person(id("rosa@example.com", false)).actor(&mapping, "production");
        assert!(person.subject.is_human());
        assert_eq!(person.subject.roles, [Role::ReleaseManager].into());
        assert_eq!((person.mfa, person.entra.as_deref()), (true, Some("t/o")));
        assert_eq!(
            person.uid.as_deref(),
            Some("o"),
            "the oid, as the API server's uid"
        );
        assert_eq!(person.via, Some(Via::Http));
        let app = Caller::Application(id("app-oid", true)).actor(&mapping, "production");
        assert!(!app.subject.is_human(), "an application is a machine");
        let key = Caller::Key {
            name: "portal".into(),
            roles: [Role::Admin].into(),
            requests_per_minute: 60,
        };
        let actor = key.actor(&mapping, "production");
        assert!(!actor.subject.is_human());
        assert_eq!(actor.subject.username, "apikey:portal");
        assert_eq!(
            actor.subject.roles,
            [Role::Admin].into(),
            "the key's roles only"
        );
    }
}
