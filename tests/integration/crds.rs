//! The CRDs on a real API server: installation, the examples, and what the schema refuses.
//! Objects are written as the operator's identity, which the admission webhook lets through
//! untouched: these tests are about the schema alone.

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::support::{TEST_MANAGER, as_operator, control_plane, namespace, wait_for};
use dvo_operator::crd::{AgentDeployment, ApprovalRequest, Capability, DeploymentPolicy};

fn resource(kind: &str) -> (ApiResource, bool) {
    let gvk = GroupVersionKind::gvk("dvo.caat.io", "v1alpha1", kind);
    let plural = match kind {
        "AgentDeployment" => "agentdeployments",
        "DeploymentPolicy" => "deploymentpolicies",
        "ApprovalRequest" => "approvalrequests",
        "Capability" => "capabilities",
        other => panic!("unexpected kind {other}"),
    };
    (
        ApiResource::from_gvk_with_plural(&gvk, plural),
        matches!(kind, "AgentDeployment" | "ApprovalRequest"),
    )
}

fn api_for(client: &kube::Client, kind: &str, ns: &str) -> Api<DynamicObject> {
    let (ar, namespaced) = resource(kind);
    if namespaced {
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    }
}

/// Every Kubernetes manifest (a document with apiVersion and kind) under examples/.
fn example_manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for file in dvo_operator::cli::load::yaml_files(&root).unwrap() {
        let text = std::fs::read_to_string(&file).unwrap();
        for v in dvo_operator::yaml::documents::<Value>(&text).unwrap() {
            if v.get("apiVersion").is_some() && v.get("kind").is_some() {
                out.push((file.display().to_string(), v));
            }
        }
    }
    out
}

#[tokio::test]
async fn crds_are_established_and_every_example_applies() {
    // The examples include Capability objects, which every test sees.
    let _lock = crate::support::CLUSTER_SCOPED.lock().await;
    let client = as_operator().await;
    let ns = namespace(&client, "examples").await;
    let manifests = example_manifests();
    let mut kinds: Vec<&str> = manifests
        .iter()
        .map(|(_, v)| v["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        vec![
            "AgentDeployment",
            "ApprovalRequest",
            "Capability",
            "DeploymentPolicy"
        ]
    );
    for (file, manifest) in &manifests {
        let kind = manifest["kind"].as_str().unwrap();
        let name = manifest["metadata"]["name"].as_str().unwrap();
        let api = api_for(&client, kind, &ns);
        let mut manifest = manifest.clone();
        if kind == "DeploymentPolicy" {
            // Policies are cluster-wide: keep the examples' policies to this test's namespace.
            manifest["spec"]["scope"]["namespaces"] = json!([ns]);
        }
        let obj: DynamicObject = serde_json::from_value(manifest).unwrap();
        api.patch(
            name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("{file}: {kind} {name} refused: {e}"));
    }
    // Read back as typed objects: defaults were applied by the API server.
    let policy = Api::<DeploymentPolicy>::all(client.clone())
        .get("mc-audit-all")
        .await
        .unwrap();
    assert_eq!(
        (
            policy.spec.priority,
            policy.spec.enabled,
            policy.spec.time_zone.as_str()
        ),
        (1000, true, "UTC")
    );
    let adep = Api::<AgentDeployment>::namespaced(client.clone(), &ns)
        .get("gha-staging")
        .await
        .unwrap();
    assert_eq!(adep.spec.action, dvo_operator::crd::DeployAction::Deploy);
    assert!(adep.spec.steps.health_check && adep.spec.steps.auto_rollback);
    assert_eq!(
        adep.spec
            .steps
            .integration_tests
            .unwrap()
            .active_deadline_seconds,
        600
    );
    let cap = Api::<Capability>::all(client.clone())
        .get("deploy-to-production")
        .await
        .unwrap();
    assert!(cap.spec.requires_approval);
    let apr = Api::<ApprovalRequest>::namespaced(client.clone(), &ns)
        .get("gha-production-3c9a1f")
        .await
        .unwrap();
    assert_eq!(apr.spec.requirements[0].min_approvals, 1);

    // `kubectl get dvo` lists every kind through the category; short names work.
    let (out, ok) = control_plane().kubectl("admin", &["get", "dvo", "-n", &ns, "-o", "name"]);
    assert!(ok, "{out}");
    for want in [
        "agentdeployment.dvo.caat.io/gha-staging",
        "approvalrequest.dvo.caat.io/gha-production-3c9a1f",
        "deploymentpolicy.dvo.caat.io/mc-weekend-block",
        "capability.dvo.caat.io/kb-sync",
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "kubectl get dvo lacks {want}:\n{out}"
        );
    }
    let (out, ok) = control_plane().kubectl("admin", &["get", "adep,apr", "-n", &ns]);
    assert!(
        ok && out.contains("gha-staging") && out.contains("ENVIRONMENT"),
        "{out}"
    );
    let (out, ok) = control_plane().kubectl("admin", &["get", "dpol,cap"]);
    assert!(
        ok && out.contains("mc-prod-approval")
            && out.contains("RequireApproval")
            && out.contains("FALLBACK"),
        "{out}"
    );
    // The OpenAPI document behind `kubectl explain` is published asynchronously: poll it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (out, ok) =
            control_plane().kubectl("admin", &["explain", "agentdeployments.spec.environment"]);
        if ok {
            assert!(out.contains("The target environment"), "{out}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl explain never worked: {out}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn status_is_a_subresource() {
    let client = as_operator().await;
    let ns = namespace(&client, "status").await;
    let api = Api::<AgentDeployment>::namespaced(client.clone(), &ns);
    let adep: AgentDeployment = serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
        "metadata": {"name": "sub"},
        "spec": {"agent": "GHA", "platform": "copilot-studio", "environment": "development"},
        "status": {"phase": "Deployed"},
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &adep).await.unwrap();
    assert_eq!(created.status, None, "status is ignored on create");
    let patch = json!({"status": {"phase": "ManualActionRequired", "observedGeneration": 1}});
    api.patch_status("sub", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let got = wait_for(
        &api,
        "sub",
        |o: Option<&AgentDeployment>| o.and_then(|o| o.status.as_ref()).is_some(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.status.unwrap().observed_generation, Some(1));
    assert_eq!(
        got.metadata.generation,
        Some(1),
        "a status write does not bump the generation"
    );
}

/// Manifests the API server must refuse, with the message a user sees from `kubectl apply`.
#[tokio::test]
async fn invalid_manifests_are_refused_with_clear_messages() {
    let client = as_operator().await;
    let ns = namespace(&client, "invalid").await;
    let adep = |spec: Value| {
        (
            "AgentDeployment",
            json!({"agent": "GHA", "platform": "langchain", "environment": "staging", "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}}),
            spec,
        )
    };
    let dpol = |spec: Value| ("DeploymentPolicy", json!({"action": "Deny"}), spec);
    let cap = |spec: Value| {
        (
            "Capability",
            json!({"enabled": true, "fallback": "Error"}),
            spec,
        )
    };
    let window = json!({"days": ["monday"], "start": "06:00", "end": "18:00"});
    // ((kind, valid spec, overlay: a field set, or removed when null), object name, message)
    type Case = (
        (&'static str, Value, Value),
        Option<&'static str>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            adep(json!({"platform": "lambda"})),
            None,
            "spec.platform: Unsupported value: \"lambda\": supported values: \"langchain\", \"fastapi\", \"copilot-studio\"",
        ),
        (
            adep(json!({"agent": null})),
            None,
            "spec.agent: Required value",
        ),
        (
            adep(json!({"environment": "Prod_EU"})),
            None,
            "spec.environment: Invalid value: \"Prod_EU\": spec.environment in body should match",
        ),
        (
            adep(json!({"replicas": -1})),
            None,
            "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
        ),
        (
            adep(json!({"action": "delete"})),
            None,
            "spec.action: Unsupported value: \"delete\"",
        ),
        (
            adep(json!({"template": null})),
            None,
            "spec.template is required for platforms that run in the cluster (langchain, fastapi)",
        ),
        (
            adep(json!({"platform": "copilot-studio"})),
            None,
            "spec.template must be empty for copilot-studio",
        ),
        (
            adep(json!({"strategy": "YOLO"})),
            None,
            "spec.strategy: Unsupported value: \"YOLO\"",
        ),
        (
            dpol(
                json!({"blackouts": [{"start": "2026-12-20", "end": "2026-01-02", "reason": "Holiday freeze"}]}),
            ),
            None,
            "blackout end 2026-01-02 is before its start 2026-12-20",
        ),
        (
            dpol(
                json!({"blackouts": [{"start": "2026-12-20", "end": "2027-01-02T10:00", "reason": "x"}]}),
            ),
            None,
            "blackout start and end must both be dates (YYYY-MM-DD) or both date-times",
        ),
        (
            dpol(
                json!({"blackouts": [{"start": "2026-13-01", "end": "2026-13-02", "reason": "x"}]}),
            ),
            None,
            "spec.blackouts[0].start: Invalid value: \"2026-13-01\"",
        ),
        (
            dpol(json!({"action": "RequireApproval"})),
            None,
            "spec.approval: Invalid value: spec.approval is required when action is RequireApproval",
        ),
        (
            dpol(json!({"action": "Warn", "approval": {"roles": ["admin"]}})),
            None,
            "spec.approval is only allowed when action is RequireApproval",
        ),
        (
            dpol(
                json!({"action": "RequireApproval", "approval": {"roles": ["admin"], "minApprovals": 0}}),
            ),
            None,
            "spec.approval.minApprovals: Invalid value: 0: spec.approval.minApprovals in body should be greater than or equal to 1",
        ),
        (
            dpol(json!({"action": "RequireApproval", "approval": {"roles": []}})),
            None,
            "spec.approval.roles: Invalid value: 0: spec.approval.roles in body should have at least 1 items",
        ),
        (
            dpol(json!({"action": "RequireApproval", "approval": {"roles": ["root"]}})),
            None,
            "spec.approval.roles[0]: Unsupported value: \"root\"",
        ),
        (
            dpol(json!({"action": "RequireApproval", "approval": {"roles": ["admin", "admin"]}})),
            None,
            "approval.roles must not repeat a role",
        ),
        (
            dpol(
                json!({"action": "RequireApproval", "approval": {"roles": ["admin"], "expiry": "1d"}}),
            ),
            None,
            "spec.approval.expiry: Invalid value: \"1d\"",
        ),
        (
            dpol(json!({"action": "Block"})),
            None,
            "spec.action: Unsupported value: \"Block\"",
        ),
        (
            dpol(json!({"action": null})),
            None,
            "spec.action: Required value",
        ),
        (
            dpol(json!({"priority": -5})),
            None,
            "spec.priority: Invalid value: -5: spec.priority in body should be greater than or equal to 0",
        ),
        (
            dpol(
                json!({"conditions": [{"field": "environment", "operator": "Like", "value": "prod"}]}),
            ),
            None,
            "spec.conditions[0].operator: Unsupported value: \"Like\"",
        ),
        (
            dpol(json!({"conditions": [{"field": "bad path!", "operator": "Equals", "value": 1}]})),
            None,
            "spec.conditions[0].field: Invalid value: \"bad path!\"",
        ),
        (
            dpol(json!({"windows": [{"days": [], "start": "06:00", "end": "18:00"}]})),
            None,
            "spec.windows[0].days: Invalid value: 0: spec.windows[0].days in body should have at least 1 items",
        ),
        (
            dpol(json!({"windows": [{"days": ["funday"], "start": "06:00", "end": "18:00"}]})),
            None,
            "spec.windows[0].days[0]: Unsupported value: \"funday\"",
        ),
        (
            dpol(json!({"windows": [{"days": ["monday"], "start": "6am", "end": "18:00"}]})),
            None,
            "spec.windows[0].start: Invalid value: \"6am\"",
        ),
        (
            dpol(json!({"windows": [{"days": ["monday"], "start": "09:00", "end": "09:00"}]})),
            None,
            "window start and end must differ",
        ),
        (
            dpol(
                json!({"windows": [window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window.clone(), window]}),
            ),
            None,
            "spec.windows: Too many: 33: must have at most 32 items",
        ),
        (
            dpol(json!({"blockedActions": ["deploy", "deploy"]})),
            None,
            "blockedActions must not repeat an action",
        ),
        (
            dpol(json!({"failurePolicy": "Maybe"})),
            None,
            "spec.failurePolicy: Unsupported value: \"Maybe\"",
        ),
        (
            cap(json!({})),
            Some("teleport"),
            "metadata.name must be a capability: deploy-langchain",
        ),
        (
            cap(json!({"fallback": "Retry"})),
            None,
            "spec.fallback: Unsupported value: \"Retry\"",
        ),
        (
            cap(json!({"enabled": null})),
            None,
            "spec.enabled: Required value",
        ),
        (
            cap(json!({"requiredPermissions": ["fly"]})),
            None,
            "spec.requiredPermissions[0]: Unsupported value: \"fly\"",
        ),
        (
            (
                "ApprovalRequest",
                json!({"deploymentRef": {"name": "a", "uid": "u"}, "environment": "production", "agent": "GHA", "platform": "langchain", "requirements": [{"source": "policy/p", "roles": ["admin"], "minApprovals": 1}], "expiresAt": "2026-11-24T12:00:00Z"}),
                json!({"specDigest": "abc"}),
            ),
            None,
            "spec.specDigest: Invalid value: \"abc\": spec.specDigest in body should match '^sha256:[0-9a-f]{64}$'",
        ),
    ];
    assert!(cases.len() >= 15);
    for (i, ((kind, base, overlay), name, want)) in cases.into_iter().enumerate() {
        let mut spec = base;
        for (k, v) in overlay.as_object().unwrap() {
            if v.is_null() {
                spec.as_object_mut().unwrap().remove(k);
            } else {
                spec[k] = v.clone();
            }
        }
        let name = name.map(str::to_owned).unwrap_or_else(|| match kind {
            "Capability" => "kb-sync".into(),
            _ => format!("invalid-{i}"),
        });
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        let params = PostParams {
            dry_run: true,
            field_manager: None,
        };
        match api_for(&client, kind, &ns).create(&params, &obj).await {
            Ok(_) => panic!("case {i}: {kind} with {overlay} was accepted; expected: {want}"),
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "case {i}: {e:?}");
                assert!(
                    e.message.contains(want),
                    "case {i}: {kind} {overlay}\n  wanted: {want}\n  got:    {}",
                    e.message
                );
            }
            Err(e) => panic!("case {i}: unexpected error {e}"),
        }
    }
}

#[tokio::test]
async fn approval_request_spec_is_immutable() {
    let client = as_operator().await;
    let ns = namespace(&client, "immutable").await;
    let api = Api::<ApprovalRequest>::namespaced(client.clone(), &ns);
    let apr: ApprovalRequest = serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "ApprovalRequest", "metadata": {"name": "r"},
        "spec": {"deploymentRef": {"name": "a", "uid": "u"}, "specDigest": format!("sha256:{}", "a".repeat(64)),
                 "environment": "production", "agent": "GHA", "platform": "langchain",
                 "requirements": [{"source": "policy/p", "roles": ["admin"], "minApprovals": 1}],
                 "expiresAt": "2026-11-24T12:00:00Z"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &apr).await.unwrap();
    let patch = json!({"spec": {"specDigest": format!("sha256:{}", "b".repeat(64))}});
    let err = api
        .patch("r", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec is immutable: a changed deployment gets a new ApprovalRequest"),
        "{err}"
    );
    // Metadata (labels, annotations) still changes.
    let patch = json!({"metadata": {"labels": {"x": "y"}}});
    api.patch("r", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}
