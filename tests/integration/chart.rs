//! The Helm chart: lint, its values schema, its rendered manifests checked by the real API
//! server (server-side dry run), and its RBAC — least privilege for the operator, aggregated
//! roles for people. The whole integration suite runs the operator with the token of the
//! chart's ServiceAccount after `helm install` (see support), which proves the RBAC sufficient.

use crate::support::{OPERATOR_NS, admin, control_plane, helm};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dvo-operator");

/// The rendered manifests (or helm's complaint) and whether rendering succeeded.
fn render(args: &[&str]) -> (String, bool) {
    let mut all = vec!["template", "dvo", CHART, "--namespace", OPERATOR_NS];
    all.extend(args);
    let (out, err, ok) = helm(&all);
    (if ok { out } else { err }, ok)
}

#[tokio::test]
async fn the_chart_lints_and_its_manifests_pass_the_api_server() {
    admin().await;
    let (out, _, ok) = helm(&["lint", "--strict", CHART]);
    assert!(ok && out.contains("0 chart(s) failed"), "{out}");
    let (manifests, ok) = render(&[
        "--set",
        "baselinePolicies.enabled=true",
        "--set",
        "audit.sinks[0].name=siem",
        "--set",
        "audit.sinks[0].url=syslog+tls://siem.example:6514",
        "--set",
        "entra.audience=api://dvo",
        "--set",
        "webhook.clientCAConfigMap=apiserver-webhook-client-ca",
        "--set",
        "webhook.networkPolicy.apiServerCIDRs[0]=10.0.0.0/16",
        "--set",
        "notifications.channels[0].name=release-managers",
        "--set",
        "notifications.channels[0].teams.urlEnv=TEAMS_URL",
        "--set",
        "notifications.channels[0].roles[0]=release_manager",
        "--set",
        "notifications.secret=dvo-notify",
        "--set",
        "notifications.apiUrl=https://dvo.example.com:8443",
        "--set",
        "policyReports.enabled=true",
        "--set",
        "policyReports.installCRDs=true",
        "--set",
        "api.enabled=true",
        "--set",
        "api.keysSecret=dvo-api-keys",
        "--set",
        "api.allowedFrom[0].namespaceSelector.matchLabels.team=portal",
    ]);
    assert!(ok, "{manifests}");
    // The notification settings the chart renders are what `dvo run` reads.
    assert!(
        manifests.contains("- --notifications=/etc/dvo/notifications/notifications.yaml")
            && manifests.contains("secretRef: {name: dvo-notify}"),
        "{manifests}"
    );
    let settings = manifests
        .split("---")
        .find(|doc| doc.contains("name: dvo-notifications"))
        .and_then(|doc| doc.split_once("notifications.yaml: |\n"))
        .map(|(_, text)| {
            text.lines()
                .map(|l| l.strip_prefix("    ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .expect("the notifications ConfigMap");
    let config = dvo_operator::notify::Config::parse(&settings)
        .unwrap_or_else(|e| panic!("{e}: {settings}"));
    assert_eq!(config.channels[0].name, "release-managers");
    assert_eq!(
        config.api_url.as_deref(),
        Some("https://dvo.example.com:8443")
    );
    assert!(
        manifests.contains("- --webhook-client-ca=/etc/dvo/webhook-client-ca/ca.crt")
            && manifests.contains("configMap: {name: apiserver-webhook-client-ca}")
            && manifests.contains("ipBlock: {cidr: \"10.0.0.0/16\"}"),
        "{manifests}"
    );
    // The HTTP API: its flags, port, Service port, keys from the Secret, who may reach it, and
    // the one extra permission it needs (storing acts).
    for want in [
        "- --api-addr=0.0.0.0:8443",
        "- --api-keys=/etc/dvo/api-keys/keys.yaml",
        "- {name: api, containerPort: 8443}",
        "secret: {secretName: dvo-api-keys}",
        "targetPort: api",
        "port: 8443}\n      from:\n        - namespaceSelector:",
        "resources: [approvalrequests]\n    verbs: [patch]",
        "resources: [subjectaccessreviews]\n    verbs: [create]",
        "- --policy-reports",
        "name: policyreports.wgpolicyk8s.io",
        "resources: [policyreports, clusterpolicyreports]\n    resourceNames: [dvo]\n    verbs: [get, patch, delete]",
    ] {
        assert!(manifests.contains(want), "{want}: {manifests}");
    }
    let (plain, ok) = render(&[]);
    assert!(ok, "{plain}");
    assert!(
        !plain.contains("--api-addr") && !plain.contains("verbs: [patch]\n"),
        "off by default, and without its permission: {plain}"
    );
    for kind in [
        "NetworkPolicy",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "DeploymentPolicy",
    ] {
        assert!(
            manifests.contains(&format!("kind: {kind}\n")),
            "{kind} rendered"
        );
    }
    let file = std::env::temp_dir().join(format!("dvo-chart-{}.yaml", std::process::id()));
    std::fs::write(&file, &manifests).unwrap();
    let (out, ok) = control_plane().kubectl(
        "admin",
        &[
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "--field-manager=dvo-chart-test",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(&file).unwrap();
    assert!(ok, "the API server refuses the rendered chart: {out}");
    assert!(
        out.contains("deployment.apps/dvo-operator serverside-applied (server dry run)"),
        "{out}"
    );
    // The pod is locked down.
    for want in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "drop:\n              - ALL",
        "type: RuntimeDefault",
        "path: /readyz",
    ] {
        assert!(manifests.contains(want), "{want}");
    }
    let (out, ok) = render(&["--set", "webhook.certificates=cert-manager"]);
    assert!(
        ok && out.contains("kind: Certificate\n")
            && out.contains("secretName: dvo-operator-webhook-tls"),
        "{out}"
    );
}

#[tokio::test]
async fn the_values_schema_refuses_mistakes() {
    admin().await;
    let cases = [
        (vec!["--set", "replicaCount=-1"], "/replicaCount"),
        (
            vec!["--set", "roleMapping.groups.g[0]=superuser"],
            "/roleMapping/groups/g/0",
        ),
        (
            vec![
                "--set",
                "audit.sinks[0].name=s",
                "--set",
                "audit.sinks[0].url=ftp://x",
            ],
            "/audit/sinks/0/url",
        ),
        (
            vec!["--set", "webhook.certificates=vault"],
            "/webhook/certificates",
        ),
        (
            vec!["--set", "replicas=3"],
            "additional properties 'replicas' not allowed",
        ),
    ];
    for (args, want) in cases {
        let (out, ok) = render(&args);
        assert!(!ok && out.contains(want), "{args:?}: {out}");
    }
}

#[tokio::test]
async fn the_operator_gets_what_it_needs_and_people_get_aggregated_roles() {
    let client = admin().await;
    let (out, _, ok) = helm(&["status", "dvo", "--namespace", OPERATOR_NS]);
    assert!(ok && out.contains("STATUS: deployed"), "{out}");
    let sa = format!("system:serviceaccount:{OPERATOR_NS}:dvo-operator");
    let can = |who: &str, args: &[&str]| {
        let mut all = vec!["auth", "can-i", "--as", who];
        all.extend(args);
        // The answer is the first line; warnings may follow.
        let (out, _) = control_plane().kubectl("admin", &all);
        out.lines().next().unwrap_or_default().trim().to_owned()
    };
    for (args, want) in [
        (
            vec!["create", "approvalrequests.dvo.caat.io", "-n", "team"],
            "yes",
        ),
        (
            vec!["delete", "approvalrequests.dvo.caat.io", "-n", "team"],
            "yes",
        ),
        (
            vec![
                "patch",
                "agentdeployments.dvo.caat.io",
                "--subresource=status",
                "-n",
                "team",
            ],
            "yes",
        ),
        (vec!["patch", "deployments.apps", "-n", "team"], "yes"),
        (vec!["create", "configmaps", "-n", OPERATOR_NS], "yes"),
        (vec!["create", "configmaps", "-n", "team"], "no"),
        (vec!["get", "secrets", "-n", "team"], "no"),
        (vec!["delete", "secrets", "-n", OPERATOR_NS], "no"),
        (vec!["create", "deploymentpolicies.dvo.caat.io"], "no"),
        // The suite installs the chart with the HTTP API on, which stores acts (off by
        // default, the rule is not rendered: see the test above).
        (
            vec!["patch", "approvalrequests.dvo.caat.io", "-n", "team"],
            "yes",
        ),
        (
            vec!["update", "approvalrequests.dvo.caat.io", "-n", "team"],
            "no",
        ),
        (
            vec!["create", "subjectaccessreviews.authorization.k8s.io"],
            "yes",
        ),
        (vec!["delete", "pods", "-n", "team"], "no"),
    ] {
        assert_eq!(can(&sa, &args), want, "the operator: {args:?}");
    }
    // People: bind the built-in roles and see what aggregation gave them.
    for role in ["view", "edit", "admin"] {
        crate::support::apply(
            &client,
            ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
            None,
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("dvo-test-{role}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "User", "name": format!("{role}-user")}],
            }),
        )
        .await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Aggregation is done by the controller-manager: poll until it is.
    while can("admin-user", &["create", "deploymentpolicies.dvo.caat.io"]) != "yes" {
        assert!(
            std::time::Instant::now() < deadline,
            "aggregation never happened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for (who, args, want) in [
        (
            "view-user",
            vec!["list", "agentdeployments.dvo.caat.io", "-n", "team"],
            "yes",
        ),
        (
            "view-user",
            vec!["patch", "approvalrequests.dvo.caat.io", "-n", "team"],
            "no",
        ),
        (
            "edit-user",
            vec!["patch", "approvalrequests.dvo.caat.io", "-n", "team"],
            "yes",
        ),
        (
            "edit-user",
            vec!["create", "agentdeployments.dvo.caat.io", "-n", "team"],
            "yes",
        ),
        (
            "edit-user",
            vec!["create", "deploymentpolicies.dvo.caat.io"],
            "no",
        ),
        (
            "edit-user",
            vec![
                "patch",
                "approvalrequests.dvo.caat.io",
                "--subresource=status",
                "-n",
                "team",
            ],
            "no",
        ),
        (
            "admin-user",
            vec!["delete", "capabilities.dvo.caat.io"],
            "yes",
        ),
    ] {
        assert_eq!(can(who, &args), want, "{who}: {args:?}");
    }
}
