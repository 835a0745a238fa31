//! The bodies of the fuzz targets (`fuzz/`, `make fuzz`): every parser of untrusted data, fed
//! arbitrary bytes. Built only for fuzzing and for the tests that replay the committed corpora
//! and every crash found (`fuzz/corpus`, `fuzz/regressions`). A target fails only by panicking.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};

use crate::admission::{self, Env};
use crate::approval::signed::{ACTS, Acts};
use crate::audit::{Checkpoint, Entry, Segment, SigningKey};
use crate::capability::CapabilitySet;
use crate::crd::{AgentDeployment, ApprovalRequest, DeploymentPolicySpec};
use crate::identity::stamp::{BreakGlass, Stamp};
use crate::identity::{Identity, RoleMapping};
use crate::policy::{self, Request, Rules};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const OPERATOR: &str = "system:serviceaccount:dvo-system:dvo-operator";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

fn mapping() -> &'static RoleMapping {
    static MAPPING: OnceLock<RoleMapping> = OnceLock::new();
    MAPPING.get_or_init(|| {
        RoleMapping::parse(include_str!("../examples/role-mapping.yaml")).unwrap_or_default()
    })
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The webhook's paths.
const PATHS: [&str; 5] = [
    "agentdeployments",
    "agentdeployments-final",
    "approvalrequests",
    "deploymentpolicies",
    "status",
];

/// An AdmissionReview body through the admission core, on every path of the webhook.
pub fn admission_review(data: &[u8]) {
    let Ok(review) = serde_json::from_slice::<AdmissionReview<DynamicObject>>(data) else {
        return;
    };
    let Ok(req): Result<AdmissionRequest<DynamicObject>, _> = review.try_into() else {
        return;
    };
    let env = Env {
        mapping: mapping(),
        key: KEY,
        operator: OPERATOR,
    };
    for path in PATHS {
        let token = admission::request::approval_token(path, &req)
            .map(|_| Err("tokens are not verified here".to_owned()));
        if let Ok(verdict) = admission::request::review(&env, path, &req, token, None, now()) {
            // Whatever it allows carries a patch the API server can apply.
            let _ = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(
                verdict.patch,
            ));
        }
    }
}

fn request(spec_json: serde_json::Value) -> Option<Request> {
    let ad: AgentDeployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
        "metadata": {"name": "gha", "namespace": "team"}, "spec": spec_json,
    }))
    .ok()?;
    Some(Request {
        namespace: "team".into(),
        labels: Default::default(),
        spec: ad.spec,
        requester: Some(Identity {
            username: "dev-dana".into(),
            uid: None,
            groups: vec!["a7c4e2b9-1d3f-4a6b-8e5c-9f0a1b2c3d4e".into()],
        }),
        staging_validated: false,
    })
}

/// A DeploymentPolicy spec (YAML) through `validate()` and `decide()`: never a panic, and the
/// same decision twice.
pub fn policy(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(spec) = crate::yaml::from_str::<DeploymentPolicySpec>(text) else {
        return;
    };
    let _ = policy::validate(&spec);
    let rules = Rules::new(
        [("fuzzed".to_owned(), spec)],
        CapabilitySet::default(),
        mapping().clone(),
    );
    let spec = serde_json::json!({
        "agent": "GHA", "platform": "langchain", "environment": "production",
        "context": {"risk": 7, "team": "payments"},
        "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}},
    });
    let Some(req) = request(spec) else { return };
    let first = policy::decide(&rules, &req, now());
    let second = policy::decide(&rules, &req, now());
    assert_eq!(first, second, "decide() is deterministic");
    let _ = policy::break_glass::apply(&rules, first, "alice-admin", "fuzz");
}

/// An annotation value as a requester stamp, a break-glass stamp and a list of signed acts.
pub fn stamps(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(stamp) = Stamp::parse(text) {
        let _ = stamp.verify(KEY, "team", "gha", "sha256:0");
    }
    let _ = BreakGlass::verified(text, KEY, "team", "gha", "sha256:0");
    let apr: Result<ApprovalRequest, _> = serde_json::from_value(serde_json::json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "ApprovalRequest",
        "metadata": {"name": "gha-g1-000000000000", "namespace": "team", "uid": "u",
            "annotations": {(ACTS): text}},
        "spec": {"deploymentRef": {"name": "gha", "uid": "ad", "generation": 1},
            "specDigest": format!("sha256:{}", "0".repeat(64)), "environment": "production",
            "agent": "GHA", "platform": "langchain",
            "requirements": [{"source": "policy/p", "roles": ["release_manager"], "minApprovals": 2}],
            "expiresAt": "2026-11-30T00:00:00Z"},
    }));
    if let Ok(apr) = apr
        && let Ok(acts) = Acts::read(&apr, KEY)
    {
        let eval = acts.evaluate(&apr.spec, None, false, now());
        let _ = acts.quorum(&eval);
    }
}

/// A bearer token through Entra ID verification (against a fixed key set).
pub fn jwt(data: &[u8]) {
    static JWKS: OnceLock<Option<jsonwebtoken::jwk::JwkSet>> = OnceLock::new();
    let Some(text) = text(data) else { return };
    let jwks = JWKS.get_or_init(|| serde_json::from_str(include_str!("../fuzz/jwks.json")).ok());
    let Some(jwks) = jwks else { return };
    let Ok(cfg) =
        serde_json::from_value::<crate::identity::entra::EntraConfig>(serde_json::json!({
            "tenants": ["72f988bf-86f1-41af-91ab-2d7cd011db47"], "audience": "api://dvo-operator",
            "issuerVersion": "both", "jwksFile": "/dev/null",
        }))
    else {
        return;
    };
    let _ = crate::identity::entra::verify(text, jwks, &cfg, true);
}

/// Audit segment lines (JSON lines of entries and checkpoints) through `verify()`.
pub fn audit(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    for line in text.lines() {
        if let Ok(e) = serde_json::from_str::<Entry>(line) {
            entries.push(e);
        } else if let Ok(c) = serde_json::from_str::<Checkpoint>(line) {
            checkpoints.push(c);
        }
    }
    let split = entries.len() / 2;
    let rest = entries.split_off(split);
    let segments = [
        Segment {
            name: "a".into(),
            previous: None,
            entries,
            unreadable: None,
        },
        Segment {
            name: "b".into(),
            previous: None,
            entries: rest,
            unreadable: None,
        },
    ];
    let public = SigningKey::from_seed(&[7; 32])
        .map(|k| k.public_key())
        .unwrap_or_default();
    let _ = crate::audit::verify(&segments, &checkpoints, &public);
    let _ = crate::audit::verify(&segments[..1], &checkpoints, &public);
}

/// A role mapping (YAML) through parsing and role resolution.
pub fn role_mapping(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(mapping) = RoleMapping::parse(text) else {
        return;
    };
    for env in ["production", "staging", "qa"] {
        let _ = mapping.subject(
            &Identity {
                username: "dev-dana".into(),
                uid: None,
                groups: vec!["g".into()],
            },
            env,
        );
        let _ = mapping.tier(env);
    }
}

/// A fuzz target: bytes in, a panic on failure.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/` names them.
pub const TARGETS: [(&str, Target); 6] = [
    ("admission_review", admission_review),
    ("policy", policy),
    ("stamps", stamps),
    ("jwt", jwt),
    ("audit", audit),
    ("role_mapping", role_mapping),
];

#[cfg(test)]
mod tests {
    /// Every committed seed and every crash the fuzzers found runs through its target again.
    #[test]
    fn corpora_and_regressions_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for (name, target) in super::TARGETS {
            for dir in ["corpus", "regressions"] {
                let Ok(files) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for file in files.flatten() {
                    let data = std::fs::read(file.path()).unwrap();
                    target(&data);
                    replayed += 1;
                }
            }
        }
        assert!(
            replayed >= super::TARGETS.len(),
            "seed corpora are committed"
        );
    }
}
