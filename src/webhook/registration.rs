//! The webhook configurations, applied by the operator with its CA as `caBundle` (Server-Side
//! Apply, so every replica and restart converges on the same objects): our API group only,
//! `failurePolicy: Fail`, `sideEffects: NoneOnDryRun`.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::Settings;
use crate::MANAGER;

/// Name of both configurations (mutating and validating).
pub const NAME: &str = "dvo-operator";

/// The names the serving certificate must cover.
pub fn hosts(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let (svc, ns) = (&settings.service, &settings.namespace);
    let mut hosts = vec![
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
    ];
    if let Some(url) = &settings.url {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow::anyhow!("the webhook URL {url} must start with https://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_matches(['[', ']']);
        hosts.insert(0, host.to_owned());
    }
    Ok(hosts)
}

fn client_config(settings: &Settings, path: &str, ca: &str) -> Value {
    use base64::Engine as _;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca);
    match &settings.url {
        Some(url) => {
            json!({"url": format!("{}{path}", url.trim_end_matches('/')), "caBundle": bundle})
        }
        None => json!({
            "service": {"name": settings.service, "namespace": settings.namespace, "path": path, "port": 443},
            "caBundle": bundle,
        }),
    }
}

fn webhook(settings: &Settings, ca: &str, name: &str, path: &str, rules: Value) -> Value {
    json!({
        "name": name,
        "clientConfig": client_config(settings, path, ca),
        "rules": rules,
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "NoneOnDryRun",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
    })
}

/// Whether the request is a DELETE by a cluster admin (`system:masters`), in CEL.
const CLUSTER_ADMIN_DELETE: &str = "request.operation == 'DELETE' && has(request.userInfo.groups) && 'system:masters' in request.userInfo.groups";

/// The way out when the operator is down: a cluster admin's DELETE of a DeploymentPolicy goes to
/// a webhook of its own that is ignored when it cannot be reached (and reviewed and recorded as
/// usual when it can); every other write goes to webhooks that fail closed.
fn policy_webhooks(settings: &Settings, ca: &str) -> [Value; 2] {
    let path = "/admit/deploymentpolicies";
    let mut guarded = webhook(
        settings,
        ca,
        "deploymentpolicies.dvo.caat.io",
        path,
        json!([rule(
            &["CREATE", "UPDATE", "DELETE"],
            &["deploymentpolicies"]
        )]),
    );
    crate::json::set(
        &mut guarded,
        "matchConditions",
        json!([{"name": "not-a-cluster-admin-delete", "expression": format!("!({CLUSTER_ADMIN_DELETE})")}]),
    );
    let mut way_out = webhook(
        settings,
        ca,
        "deploymentpolicies-admin-delete.dvo.caat.io",
        path,
        json!([rule(&["DELETE"], &["deploymentpolicies"])]),
    );
    crate::json::set(&mut way_out, "failurePolicy", "Ignore");
    crate::json::set(
        &mut way_out,
        "matchConditions",
        json!([{"name": "cluster-admin-delete", "expression": CLUSTER_ADMIN_DELETE}]),
    );
    [guarded, way_out]
}

fn rule(operations: &[&str], resources: &[&str]) -> Value {
    json!({
        "apiGroups": ["dvo.caat.io"], "apiVersions": ["*"],
        "operations": operations, "resources": resources, "scope": "*",
    })
}

/// The two configurations.
pub fn configurations(settings: &Settings, ca: &str) -> [(GroupVersionKind, Value); 2] {
    let gvk = |kind: &str| GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let mutating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": "dvo-operator"}},
        "webhooks": [
            webhook(settings, ca, "agentdeployments.dvo.caat.io", "/admit/agentdeployments",
                json!([rule(&["CREATE", "UPDATE"], &["agentdeployments"])])),
            webhook(settings, ca, "approvalrequests.dvo.caat.io", "/admit/approvalrequests",
                json!([rule(&["CREATE", "UPDATE"], &["approvalrequests"])])),
        ],
    });
    let [guarded_policies, policies_way_out] = policy_webhooks(settings, ca);
    let validating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": "dvo-operator"}},
        "webhooks": [
            webhook(settings, ca, "agentdeployments-final.dvo.caat.io", "/admit/agentdeployments-final",
                json!([rule(&["CREATE", "UPDATE"], &["agentdeployments"])])),
            guarded_policies,
            policies_way_out,
            webhook(settings, ca, "status.dvo.caat.io", "/admit/status",
                json!([rule(&["UPDATE"], &["agentdeployments/status", "approvalrequests/status"])])),
        ],
    });
    [
        (gvk("MutatingWebhookConfiguration"), mutating),
        (gvk("ValidatingWebhookConfiguration"), validating),
    ]
}

/// Applies both configurations.
pub async fn apply(client: &Client, settings: &Settings, ca: &str) -> anyhow::Result<()> {
    for (gvk, body) in configurations(settings, ca) {
        let plural = format!("{}s", gvk.kind.to_lowercase());
        let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
        Api::<DynamicObject>::all_with(client.clone(), &ar)
            .patch(
                NAME,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot register the {} {NAME}: {e}", gvk.kind))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: Option<&str>) -> Settings {
        Settings {
            namespace: "dvo-system".into(),
            addr: "127.0.0.1:9443".parse().unwrap(),
            url: url.map(str::to_owned),
            service: "dvo-operator-webhook".into(),
            entra: None,
            certificates: super::super::Certificates::Own,
            client_ca: None,
            api: None,
        }
    }

    #[test]
    fn hosts_cover_the_service_and_the_url() {
        assert_eq!(
            hosts(&settings(Some("https://127.0.0.1:9443"))).unwrap(),
            [
                "127.0.0.1",
                "dvo-operator-webhook.dvo-system.svc",
                "dvo-operator-webhook.dvo-system.svc.cluster.local"
            ]
        );
        assert_eq!(
            hosts(&settings(Some("https://[::1]:9443/"))).unwrap()[0],
            "::1"
        );
        assert!(hosts(&settings(Some("http://x"))).is_err());
    }

    #[test]
    fn every_webhook_fails_closed_and_is_scoped_to_our_group() {
        for (_, config) in configurations(&settings(None), "CA") {
            for hook in config["webhooks"].as_array().unwrap() {
                // The one exception: a cluster admin's DELETE of a policy (the way out).
                let way_out = hook["name"] == "deploymentpolicies-admin-delete.dvo.caat.io";
                assert_eq!(
                    hook["failurePolicy"],
                    if way_out { "Ignore" } else { "Fail" },
                    "{hook}"
                );
                if way_out {
                    assert_eq!(hook["rules"][0]["operations"], json!(["DELETE"]));
                    assert_eq!(
                        hook["matchConditions"][0]["expression"],
                        CLUSTER_ADMIN_DELETE
                    );
                }
                assert_eq!(hook["sideEffects"], "NoneOnDryRun");
                assert_eq!(hook["rules"][0]["apiGroups"], json!(["dvo.caat.io"]));
                assert_eq!(
                    hook["clientConfig"]["service"]["name"],
                    "dvo-operator-webhook"
                );
            }
        }
    }
}
