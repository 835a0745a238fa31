//! Microsoft Entra ID access tokens, verified: RS256 only (Entra's keys carry no `alg`, so it is
//! pinned here), signature against the tenant's JWKS by `kid`, issuer (v1 or v2 form) of an
//! allowed tenant, audience, `exp`/`nbf` with leeway, `amr` containing `mfa` when required, and
//! no groups overage. The identity is `oid` + `tid`; groups and app roles map to roles.

use std::collections::{BTreeMap, BTreeSet};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};

use super::{Identity, Role};

/// Which issuer forms are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerVersion {
    /// `https://sts.windows.net/{tid}/`
    V1,
    /// `https://login.microsoftonline.com/{tid}/v2.0`
    V2,
    /// Either.
    Both,
}

/// How tokens are checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntraConfig {
    /// Tenant IDs whose tokens are accepted.
    pub tenants: Vec<String>,
    /// The expected audience (the application ID URI or client ID).
    pub audience: String,
    /// Accepted issuer forms.
    pub issuer_version: IssuerVersion,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// App role value → role (e.g. `DVO.ReleaseManager: release_manager`).
    #[serde(default)]
    pub app_roles: BTreeMap<String, Role>,
    /// Where the tenant's signing keys are published, e.g.
    /// `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWKS file instead of a URL (air-gapped clusters).
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// The JWKS is fetched again for an unknown `kid` (key rotation), at most once per this
    /// many seconds. Default 300.
    #[serde(default = "default_refetch")]
    pub jwks_min_refetch_seconds: u64,
    /// Trust what the API server passes on about a person's Entra ID sign-in
    /// (`userInfo.extra` keys `dvo.caat.io/amr` and `dvo.caat.io/tid`, from the claim mappings
    /// of its JWT authenticator) for `approval.requireMfa`, when the tenant is one of `tenants`.
    /// Default false: only approval tokens prove MFA.
    #[serde(default)]
    pub trust_api_server_sign_in: bool,
    /// The claim that names a person: the one your API server's authenticator maps to user
    /// names. Default `upn` (v2 access tokens carry it when the `upn` optional claim is
    /// configured). A person's token without it is refused: no other claim stands in.
    #[serde(default)]
    pub username_claim: UsernameClaim,
}

/// The claim that names a person.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsernameClaim {
    /// `upn`.
    #[default]
    Upn,
    /// `preferred_username` (mutable in Entra ID: only where the cluster maps it too).
    PreferredUsername,
    /// `unique_name` (v1 tokens).
    UniqueName,
    /// `email` (Entra ID does not verify it: only where the cluster maps it too and your
    /// tenant controls it).
    Email,
}

/// The longest user name a token may give (Entra ID's are at most 113 characters).
const MAX_USERNAME: usize = 256;

fn default_refetch() -> u64 {
    300
}

fn default_leeway() -> u64 {
    60
}

/// A verified token's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntraIdentity {
    /// Object ID of the user.
    pub oid: String,
    /// Tenant ID.
    pub tid: String,
    /// The configured name claim of a person; the `oid` of an application.
    pub username: String,
    /// Group object IDs.
    pub groups: Vec<String>,
    /// Roles from app role claims.
    pub app_roles: BTreeSet<Role>,
    /// Whether `amr` contains `mfa`.
    pub mfa: bool,
    /// An application's own token (a service principal or managed identity: `idtyp: app`, or
    /// no delegated scope and no user name): a machine, never a person.
    #[serde(default)]
    pub application: bool,
}

impl EntraIdentity {
    /// The person's Entra ID identity, `tid/oid`: the same whichever name a token gives.
    pub fn entra_id(&self) -> String {
        format!("{}/{}", self.tid, self.oid)
    }

    /// As a Kubernetes-style identity for the role mapping (uid: the `oid`, as the API server's
    /// claim mapping `uid: claims.oid` gives it).
    pub fn identity(&self) -> Identity {
        Identity {
            username: self.username.clone(),
            uid: Some(self.oid.clone()),
            groups: self.groups.clone(),
        }
    }

    /// The roles the token itself gives in `environment`: its user name's and groups' in the
    /// role mapping (but the default viewer) and its app roles.
    pub fn roles(&self, mapping: &super::RoleMapping, environment: &str) -> BTreeSet<Role> {
        let mut roles = mapping.subject(&self.identity(), environment).roles;
        roles.remove(&Role::Viewer);
        roles.extend(self.app_roles.iter().copied());
        roles
    }
}

/// The `userInfo.extra` key under which the API server's JWT authenticator passes the sign-in's
/// `amr` claim (claim mapping `key: dvo.caat.io/amr, valueExpression: claims.amr`).
pub const EXTRA_AMR: &str = "dvo.caat.io/amr";
/// The `userInfo.extra` key for the token's `tid` claim; with the user's UID mapped from `oid`,
/// acts name the Entra ID identity `tid/oid`.
pub const EXTRA_TID: &str = "dvo.caat.io/tid";

/// What the API server vouched for about how a person signed in, read from `userInfo.extra`:
/// only the API server (its authenticators, or impersonation it authorised) sets these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignIn {
    /// Whether the sign-in's `amr` contains `mfa`.
    pub mfa: bool,
    /// `tid/oid` when both are known.
    pub entra: Option<String>,
}

impl SignIn {
    /// Reads `extra` (and the user's UID, the `oid`) when `tenants` trust the API server's
    /// sign-in claims: nothing when they do not (`None`), or when the sign-in names no tenant,
    /// several, or one not listed.
    pub fn from_extra(
        extra: &BTreeMap<String, Vec<String>>,
        uid: Option<&str>,
        tenants: Option<&[String]>,
    ) -> SignIn {
        let mfa = extra
            .get(EXTRA_AMR)
            .is_some_and(|amr| amr.iter().any(|m| m == "mfa"));
        let tid = extra.get(EXTRA_TID).and_then(|t| match t.as_slice() {
            [one] if !one.is_empty() => Some(one),
            _ => None,
        });
        let Some(tid) = tid.filter(|t| tenants.is_some_and(|all| all.contains(t))) else {
            return SignIn::default();
        };
        let entra = uid
            .filter(|oid| !oid.is_empty())
            .map(|oid| format!("{tid}/{oid}"));
        SignIn { mfa, entra }
    }
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or missing claims.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// Any algorithm but RS256.
    #[error("the token is signed with {0}; only RS256 is accepted")]
    Algorithm(String),
    /// The key is not in the JWKS (refetch it, rate-limited, then retry once).
    #[error("the token's signing key {0:?} is not in the tenant's JWKS")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` not reached.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Wrong `aud`.
    #[error("the token is for another audience")]
    Audience,
    /// Wrong `iss`.
    #[error("the token's issuer is not an accepted Entra ID tenant issuer")]
    Issuer,
    /// `tid` not allowed.
    #[error("tenant {0} is not allowed")]
    Tenant(String),
    /// MFA required but not in `amr`.
    #[error(
        "this approval requires multi-factor authentication, and the token's amr claim has no mfa"
    )]
    NoMfa,
    /// Too many groups for the token.
    #[error(
        "the token has too many groups to list them (groups overage): give the approvers their roles through app roles, or assign fewer groups"
    )]
    GroupsOverage,
}

#[derive(Deserialize)]
struct Claims {
    tid: String,
    oid: String,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    upn: Option<String>,
    #[serde(default)]
    unique_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    amr: Vec<String>,
    #[serde(default, rename = "_claim_names")]
    claim_names: Option<serde_json::Value>,
    #[serde(default)]
    hasgroups: Option<bool>,
    #[serde(default)]
    idtyp: Option<String>,
    #[serde(default)]
    scp: Option<String>,
}

fn issuers(cfg: &EntraConfig) -> Vec<String> {
    cfg.tenants
        .iter()
        .flat_map(|t| {
            let v1 = format!("https://sts.windows.net/{t}/");
            let v2 = format!("https://login.microsoftonline.com/{t}/v2.0");
            match cfg.issuer_version {
                IssuerVersion::V1 => vec![v1],
                IssuerVersion::V2 => vec![v2],
                IssuerVersion::Both => vec![v1, v2],
            }
        })
        .collect()
}

/// Verifies `token` against `jwks`. `require_mfa` comes from the policy being approved.
pub fn verify(
    token: &str,
    jwks: &JwkSet,
    cfg: &EntraConfig,
    require_mfa: bool,
) -> Result<EntraIdentity, TokenError> {
    // A header naming an algorithm the library does not even know (`none`) is a refusal of that
    // algorithm, not a parse error.
    let header = decode_header(token).map_err(|e| match named_algorithm(token) {
        Some(alg) if alg != "RS256" => TokenError::Algorithm(alg),
        _ => TokenError::Malformed(e.to_string()),
    })?;
    if header.alg != Algorithm::RS256 {
        return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header
        .kid
        .ok_or_else(|| TokenError::Malformed("the token has no kid".into()))?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| TokenError::Malformed(format!("JWKS key {kid}: {e}")))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = cfg.leeway_seconds;
    validation.validate_nbf = true;
    validation.set_audience(&[cfg.audience.as_str()]);
    validation.set_issuer(&issuers(cfg));
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    let claims = decode::<Claims>(token, &key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::InvalidAlgorithm => TokenError::Algorithm("another algorithm".into()),
            _ => TokenError::Malformed(e.to_string()),
        })?
        .claims;
    if !cfg.tenants.contains(&claims.tid) {
        return Err(TokenError::Tenant(claims.tid));
    }
    let overage = claims.hasgroups == Some(true)
        || claims
            .claim_names
            .as_ref()
            .is_some_and(|c| c.get("groups").is_some());
    if overage {
        return Err(TokenError::GroupsOverage);
    }
    let mfa = claims.amr.iter().any(|m| m == "mfa");
    if require_mfa && !mfa {
        return Err(TokenError::NoMfa);
    }
    let person = claims.preferred_username.is_some()
        || claims.upn.is_some()
        || claims.unique_name.is_some()
        || claims.scp.is_some();
    let application = claims.idtyp.as_deref() == Some("app") || !person;
    // A person is named by the configured claim alone, as the API server names them; an
    // application by its object ID.
    let username = if application {
        claims.oid.clone()
    } else {
        let (name, claim) = match cfg.username_claim {
            UsernameClaim::Upn => (claims.upn, "upn"),
            UsernameClaim::PreferredUsername => (claims.preferred_username, "preferred_username"),
            UsernameClaim::UniqueName => (claims.unique_name, "unique_name"),
            UsernameClaim::Email => (claims.email, "email"),
        };
        name.ok_or_else(|| {
            TokenError::Malformed(format!(
                "the token has no {claim} claim, which names people here (usernameClaim)"
            ))
        })?
    };
    let plain = !username.is_empty()
        && username.len() <= MAX_USERNAME
        && username.trim() == username
        && !username.chars().any(char::is_control)
        && !username.starts_with("system:");
    if !plain {
        return Err(TokenError::Malformed(format!(
            "the token's user name is empty, longer than {MAX_USERNAME} bytes, padded, has control characters or starts with system:"
        )));
    }
    // Entra ID object IDs are GUIDs and a token lists at most 200 groups (then it is an
    // overage): anything larger is not Entra's, and would only swell what is recorded.
    let short = |s: &str| !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control);
    if !short(&claims.oid) || claims.groups.len() > 200 || !claims.groups.iter().all(|g| short(g)) {
        return Err(TokenError::Malformed(
            "the token's oid or groups are not object IDs (at most 64 bytes each, 200 groups)"
                .into(),
        ));
    }
    Ok(EntraIdentity {
        application,
        username,
        app_roles: claims
            .roles
            .iter()
            .filter_map(|r| cfg.app_roles.get(r).copied())
            .collect(),
        oid: claims.oid,
        tid: claims.tid,
        groups: claims.groups,
        mfa,
    })
}

/// The `alg` a token's header names, if the header is readable JSON.
fn named_algorithm(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_owned)
}

#[cfg(test)]
#[path = "entra_tests.rs"]
mod tests;
