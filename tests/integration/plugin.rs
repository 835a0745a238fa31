//! `kubectl dvo`, found by real kubectl plugin discovery (the plugin binary on PATH), as the
//! control plane's people.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::{agent_manifest, control_plane, namespace, operator, wait_for};
use dvo_operator::controller::agent_deployment::approval_request_name;
use dvo_operator::crd::agent_deployment::spec_digest;
use dvo_operator::crd::{AgentDeployment, ApprovalRequest};
use kube::api::Api;

/// `kubectl dvo ARGS` as `who`: output, exit code.
fn kubectl_dvo(who: &str, args: &[&str]) -> (String, i32) {
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-dvo"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/controlplane/bin/kubectl"
    ))
    .env("PATH", path)
    .env("KUBECONFIG", control_plane().kubeconfig(who))
    .arg("dvo")
    .args(args)
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .output()
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (text, out.status.code().unwrap_or(-1))
}

#[tokio::test]
async fn kubectl_dvo_explains_lists_and_acts() {
    let client = operator().await;
    let ns = namespace(&client, "plugin").await;
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-dvo"))
        .parent()
        .unwrap();
    let (list, _) = {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/controlplane/bin/kubectl"
        ))
        .env("PATH", format!("{}:/usr/bin:/bin", plugin_dir.display()))
        .args(["plugin", "list"])
        .output()
        .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code(),
        )
    };
    assert!(
        list.contains("kubectl-dvo"),
        "kubectl finds the plugin: {list}"
    );

    crate::support::scoped_policy(
        &client,
        &ns,
        "two",
        json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"], "minApprovals": 2}}),
    )
    .await;
    let ad = crate::support::create_as(
        "operator",
        &ns,
        json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "gha"},
        "spec": {"agent": "PLG", "platform": "langchain", "environment": "staging",
            "template": {"spec": {"containers": [{"name": "a", "image": "plg:1"}]}}},
    }),
    )
    .await;
    let apr = approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &spec_digest(&ad.spec),
    );
    wait_for(
        &Api::<ApprovalRequest>::namespaced(client.clone(), &ns),
        &apr,
        |o: Option<&ApprovalRequest>| {
            o.and_then(|a| a.status.as_ref())
                .is_some_and(|s| !s.progress.is_empty())
        },
        std::time::Duration::from_secs(60),
    )
    .await;

    // The request exists before the AgentDeployment's status points at it.
    wait_for(
        &Api::<AgentDeployment>::namespaced(client.clone(), &ns),
        "gha",
        |o: Option<&AgentDeployment>| {
            o.and_then(|a| a.status.as_ref())
                .and_then(|s| s.approval_request.as_ref())
                .is_some()
        },
        std::time::Duration::from_secs(60),
    )
    .await;
    let (out, code) = kubectl_dvo("operator", &["status", "gha", "-n", &ns]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "PendingApproval",
        "decision: RequireApproval",
        "what would release it:",
        &format!("approval policy/{ns}-two: 0/2 (nobody yet)"),
        &format!("approve with: kubectl dvo approve {apr} -n {ns}"),
    ] {
        assert!(out.contains(want), "{want} in:\n{out}");
    }
    println!("--- kubectl dvo status gha:\n{out}");

    // The webhook decides who sees it as theirs to approve.
    let (out, _) = kubectl_dvo("release-manager-1", &["pending", "-n", &ns]);
    assert!(
        out.contains(&format!("{ns}/{apr}")) && out.contains("requested by ops-omar"),
        "{out}"
    );
    let (out, _) = kubectl_dvo("developer", &["pending", "-n", &ns]);
    assert_eq!(out.trim(), "nothing waits for dev-dana");
    let (out, _) = kubectl_dvo("operator", &["pending", "-n", &ns]);
    assert_eq!(
        out.trim(),
        "nothing waits for ops-omar",
        "the requester cannot approve"
    );

    let (out, code) = kubectl_dvo("developer", &["approve", &apr, "-n", &ns, "-m", "lgtm"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("refused: admission webhook \"approvalrequests.dvo.caat.io\" denied the request: approval of ApprovalRequest")
            && out.contains("dev-dana (roles: developer) holds none of the roles release_manager"),
        "{out}"
    );
    let (out, code) = kubectl_dvo(
        "release-manager-1",
        &["approve", &apr, "-n", &ns, "-m", "lgtm"],
    );
    assert_eq!(
        (out.trim(), code),
        (
            format!("approve of approvalrequest {ns}/{apr} recorded").as_str(),
            0
        )
    );
    let (out, code) = kubectl_dvo("release-manager-2", &["reject", &apr, "-n", &ns]);
    assert!(
        code == 1 && out.contains("a rejection needs a reason"),
        "{out}"
    );

    // The offline commands and the audit log are there too.
    let (out, code) = kubectl_dvo("viewer", &["test", "examples/tests"]);
    assert_eq!(code, 0, "{out}");
    let (out, code) = kubectl_dvo("admin", &["audit", "verify", "--namespace", "dvo-system"]);
    assert!(code == 0 && out.starts_with("intact: "), "{out}");
    let (out, code) = kubectl_dvo(
        "admin",
        &["audit", "tail", "-n", "50", "--namespace", "dvo-system"],
    );
    assert!(
        code == 0 && out.contains(&format!("\"resource\":\"{ns}/{apr}\"")),
        "{out}"
    );
}

/// `kubectl dvo audit query` asks the real history of a real flow: a refused act, an approval,
/// a rollout; by namespace, user, event, severity and time, in every format, over a verified
/// chain.
#[tokio::test]
async fn kubectl_dvo_audit_query_answers_questions_of_a_real_history() {
    use dvo_operator::crd::agent_deployment::Phase;
    let client = operator().await;
    let ns = namespace(&client, "query").await;
    crate::support::scoped_policy(
        &client,
        &ns,
        "approve",
        json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"]}}),
    )
    .await;
    let ad =
        crate::support::create_as("operator", &ns, agent_manifest("gha", "staging", "gha:1")).await;
    crate::support::phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let apr = approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &spec_digest(&ad.spec),
    );
    let annotate = [
        "annotate",
        "approvalrequest",
        &apr,
        "-n",
        &ns,
        "dvo.caat.io/approve=ok",
    ];
    let (_, ok) = control_plane().kubectl("developer", &annotate);
    assert!(!ok, "a developer may not approve");
    let (out, ok) = control_plane().kubectl("release-manager-1", &annotate);
    assert!(ok, "{out}");
    crate::support::phase(&client, &ns, "gha", Phase::Deployed).await;

    let query = |extra: &[&str]| {
        let mut args = vec!["audit", "query", "--in-namespace", ns.as_str()];
        args.extend_from_slice(extra);
        kubectl_dvo("admin", &args)
    };
    let (out, code) = query(&["-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["verification"]["intact"], true, "{out}");
    let events: Vec<&str> = answer["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    for want in [
        "approval_requested",
        "permission_denied",
        "approval_granted",
        "deployment_completed",
    ] {
        assert!(events.contains(&want), "{want} in {events:?}");
    }
    assert_eq!(answer["matched"], events.len());

    let (csv, code) = query(&["--user", "rosa-release", "-o", "csv"]);
    assert_eq!(code, 0, "{csv}");
    let mut lines = csv.lines().filter(|l| !l.starts_with("chain intact"));
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("seq,timestamp,event,severity,user")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(!rows.is_empty(), "{csv}");
    assert!(rows.iter().all(|r| r.contains(",rosa-release,")), "{csv}");

    let (table, code) = query(&["--min-severity", "7"]);
    assert_eq!(code, 0, "{table}");
    assert!(table.starts_with("# chain intact: "), "{table}");
    assert!(
        table.contains("permission_denied") && table.contains("dev-dana"),
        "{table}"
    );
    assert!(!table.contains("deployment_completed"), "{table}");

    let (jsonl, code) = query(&[
        "--since",
        "1h",
        "--event",
        "deployment_completed",
        "-o",
        "jsonl",
    ]);
    assert_eq!(code, 0, "{jsonl}");
    let lines: Vec<&str> = jsonl.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{jsonl}");
    let (none, _) = query(&["--until", "2000-01-01T00:00:00Z", "-o", "json"]);
    let none: serde_json::Value = serde_json::from_str(&none).unwrap();
    assert_eq!(none["matched"], 0);
    let (bad, code) = query(&["--event", "approved_by_magic"]);
    assert_eq!(code, 2, "{bad}");
    assert!(bad.contains("is not an event type"), "{bad}");
}

/// `kubectl dvo what-if` decides the live AgentDeployments under the policies in force and under
/// the proposed ones, and lists those whose outcome would change, and why.
#[tokio::test]
async fn kubectl_dvo_what_if_lists_what_a_policy_change_would_change() {
    use dvo_operator::crd::agent_deployment::Phase;
    let client = operator().await;
    let ns = namespace(&client, "whatif").await;
    let hold = crate::support::scoped_policy(
        &client,
        &ns,
        "hold",
        json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"]},
               "scope": {"environments": ["staging"]}}),
    )
    .await;
    for (name, env) in [("held", "staging"), ("free", "development")] {
        crate::support::create_as("operator", &ns, agent_manifest(name, env, "gha:1")).await;
    }
    crate::support::phase(&client, &ns, "held", Phase::PendingApproval).await;
    crate::support::phase(&client, &ns, "free", Phase::Deployed).await;

    // A freeze of development, proposed from a file: only "free" would change.
    let dir = std::env::temp_dir().join(format!("dvo-whatif-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("freeze.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: dvo.caat.io/v1alpha1\nkind: DeploymentPolicy\nmetadata: {{name: {ns}-freeze}}\nspec:\n  action: Deny\n  message: development is frozen\n  scope: {{namespaces: [{ns}], environments: [development]}}\n"
        ),
    )
    .unwrap();
    let (out, code) = kubectl_dvo(
        "admin",
        &["what-if", "-n", &ns, "-f", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 AgentDeployments decided at"), "{out}");
    assert!(
        out.contains("(requesters as stamped, signatures not checked)"),
        "{out}"
    );
    assert!(out.contains(": 1 would change"), "{out}");
    assert!(
        out.contains(&format!("{ns}/free: Allow -> Deny")) && out.contains("development is frozen"),
        "{out}"
    );
    // Without the hold, "held" would go ahead.
    let (out, code) = kubectl_dvo(
        "admin",
        &["what-if", "-n", &ns, "--remove", &hold, "-o", "json"],
    );
    assert_eq!(code, 0, "{out}");
    let changes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        changes,
        json!([{"agentDeployment": format!("{ns}/held"), "now": "RequireApproval", "proposed": "Allow", "why": []}])
    );
    let twice = dir.join("twice.yaml");
    let doc = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&twice, format!("{doc}---\n{doc}")).unwrap();
    let (out, code) = kubectl_dvo("admin", &["what-if", "-f", twice.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is given twice"), "{out}");
    let (out, code) = kubectl_dvo("admin", &["what-if", "--remove", "no-such-policy"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no such DeploymentPolicy in force"), "{out}");
}

/// `kubectl dvo audit report` over a real history of production changes (an approval with a
/// refused act, a break-glass, a rejection), rendered by a real headless browser: the page shows
/// what the log holds.
#[tokio::test]
async fn kubectl_dvo_audit_report_shows_a_real_history_in_a_real_browser() {
    use dvo_operator::crd::agent_deployment::Phase;
    let client = operator().await;
    let ns = namespace(&client, "report").await;
    let manifest =
        |name: &str| agent_manifest(name, "production", &format!("registry.example/{name}:1"));
    let mut requests = vec![];
    for name in ["approved", "risky", "hotfix"] {
        let ad = crate::support::create_as("operator", &ns, manifest(name)).await;
        crate::support::phase(&client, &ns, name, Phase::PendingApproval).await;
        requests.push(approval_request_name(
            name,
            ad.metadata.generation.unwrap(),
            &spec_digest(&ad.spec),
        ));
    }
    let act = |who: &str, apr: &str, what: &str| {
        control_plane().kubectl(who, &["annotate", "approvalrequest", apr, "-n", &ns, what])
    };
    let (_, ok) = act("developer", &requests[0], "dvo.caat.io/approve=me too");
    assert!(!ok, "a developer may not approve");
    let (out, ok) = act("release-manager-1", &requests[0], "dvo.caat.io/approve=ok");
    assert!(ok, "{out}");
    crate::support::phase(&client, &ns, "approved", Phase::Deployed).await;
    let (out, ok) = act(
        "release-manager-1",
        &requests[1],
        "dvo.caat.io/reject=too risky",
    );
    assert!(ok, "{out}");
    crate::support::phase(&client, &ns, "risky", Phase::Rejected).await;
    let (out, ok) = control_plane().kubectl(
        "admin",
        &[
            "annotate",
            "adep/hotfix",
            "-n",
            &ns,
            "dvo.caat.io/break-glass=INC-7 outage",
        ],
    );
    assert!(ok, "{out}");
    crate::support::phase(&client, &ns, "hotfix", Phase::Deployed).await;

    let (markdown, code) = kubectl_dvo("admin", &["audit", "report", "--in-namespace", &ns]);
    assert_eq!(code, 0, "{markdown}");
    assert!(
        markdown.starts_with("# Change report: production"),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!("| {ns}/approved | GHA |"))
            && markdown.contains("registry.example/approved:1")
            && markdown.contains("rosa-release (release\\_manager)"),
        "{markdown}"
    );

    let (html, code) = kubectl_dvo(
        "admin",
        &["audit", "report", "--in-namespace", &ns, "-o", "html"],
    );
    assert_eq!(code, 0, "{html}");
    let dir = std::env::temp_dir().join(format!("dvo-report-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    std::fs::write(&page, &html).unwrap();
    let rendered = Command::new("chromium-headless-shell")
        .args(["--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect(
            "chromium-headless-shell (Debian package chromium-headless-shell) renders the report",
        );
    assert!(rendered.status.success(), "{rendered:?}");
    let dom = String::from_utf8(rendered.stdout).unwrap();
    let row = |name: &str| {
        let start = dom
            .find(&format!("<td>{ns}/{name}</td>"))
            .unwrap_or_else(|| panic!("no row for {name} in {dom}"));
        let end = dom[start..].find("</tr>").unwrap() + start;
        dom[start..end].to_owned()
    };
    assert!(
        dom.contains("class=\"ok\"><strong>Audit log:</strong> chain intact"),
        "{dom}"
    );
    let approved = row("approved");
    for want in [
        "ops-omar",
        "rosa-release (release_manager)",
        "via kubernetes",
        "Deployed",
        "registry.example/approved:1",
    ] {
        assert!(approved.contains(want), "{want} in {approved}");
    }
    assert!(
        approved.contains("dev-dana permission_denied denied"),
        "the refused act: {approved}"
    );
    let risky = row("risky");
    assert!(
        risky.contains("Rejected") && risky.contains("too risky"),
        "{risky}"
    );
    let hotfix = row("hotfix");
    assert!(
        hotfix.contains("alice-admin break_glass_used success"),
        "{hotfix}"
    );
    // The charts are drawn: three of them, with bars for what the log holds.
    for chart in ["weekly", "latency", "refusals"] {
        assert!(dom.contains(&format!("<svg id=\"{chart}\"")), "{chart}");
    }
    assert!(dom.contains("rejected by an approver"), "{dom}");
    assert!(
        dom.contains("data-value=\"3\""),
        "three changes this week: {dom}"
    );
}

/// dvo's decisions as PolicyReports, kept current: what a namespace's AgentDeployments are held
/// for or refused by shows in `kubectl get policyreport`, the cluster report lists the policies,
/// nothing is rewritten while nothing changes, and a namespace left without AgentDeployments
/// loses its report.
#[tokio::test]
async fn policy_reports_show_what_dvo_holds_back_and_why() {
    use dvo_operator::crd::agent_deployment::Phase;
    let client = operator().await;
    let ns = namespace(&client, "polr").await;
    crate::support::scoped_policy(
        &client,
        &ns,
        "hold",
        json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"]},
               "scope": {"environments": ["staging"]}}),
    )
    .await;
    crate::support::scoped_policy(
        &client,
        &ns,
        "freeze",
        json!({"action": "Deny", "message": "development is frozen",
               "scope": {"environments": ["development"]}}),
    )
    .await;
    for (name, env) in [("held", "staging"), ("frozen", "development")] {
        crate::support::create_as("operator", &ns, agent_manifest(name, env, "gha:1")).await;
    }
    crate::support::phase(&client, &ns, "held", Phase::PendingApproval).await;
    crate::support::phase(&client, &ns, "frozen", Phase::Blocked).await;

    let kubectl = |args: &[&str]| control_plane().kubectl("admin", args);
    let listed = crate::support::until(
        "the namespace's PolicyReport, with both results",
        || kubectl(&["get", "policyreport", "-n", &ns]),
        |(out, ok)| *ok && out.contains("dvo") && !out.contains("No resources"),
    )
    .await
    .0;
    assert!(
        listed.contains("PASS") && listed.contains("FAIL") && listed.contains("WARN"),
        "{listed}"
    );
    let polr: serde_json::Value = crate::support::until(
        "both AgentDeployments reported",
        || {
            let (out, _) = kubectl(&["get", "policyreport", "dvo", "-n", &ns, "-o", "json"]);
            serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()
        },
        |r| r["summary"]["warn"] == 1 && r["summary"]["fail"] == 1,
    )
    .await;
    let results = polr["results"].as_array().unwrap();
    let of = |name: &str| {
        results
            .iter()
            .find(|r| r["resources"][0]["name"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {polr}"))
    };
    assert_eq!(of("held")["result"], "warn");
    assert_eq!(of("held")["policy"], format!("{ns}-hold"));
    assert_eq!(of("frozen")["result"], "fail");
    assert_eq!(of("frozen")["message"], "development is frozen");

    // The cluster report lists the policies, accepted.
    let (out, ok) = kubectl(&["get", "clusterpolicyreport", "dvo", "-o", "json"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("\"policy\": \"{ns}-freeze\"")),
        "{out}"
    );

    // A report named dvo that is someone else's is left as it is, even where dvo has results;
    // one of dvo's that goes is written again.
    let theirs = namespace(&client, "polr-theirs").await;
    let foreign = json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
        "metadata": {"name": "dvo", "namespace": theirs, "labels": {"app.kubernetes.io/managed-by": "kyverno"}},
        "summary": {"pass": 1}, "results": [{"policy": "kyverno-rule", "result": "pass"}]});
    let file = std::env::temp_dir().join(format!("dvo-foreign-{theirs}.json"));
    std::fs::write(&file, foreign.to_string()).unwrap();
    let (out, ok) = kubectl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    crate::support::create_as(
        "operator",
        &theirs,
        agent_manifest("held", "production", "gha:1"),
    )
    .await;
    crate::support::phase(&client, &theirs, "held", Phase::PendingApproval).await;
    let (out, ok) = kubectl(&["delete", "policyreport", "dvo", "-n", &ns]);
    assert!(ok, "{out}");
    crate::support::until(
        "dvo's deleted report written again",
        || kubectl(&["get", "policyreport", "dvo", "-n", &ns]),
        |(out, ok)| *ok && out.contains("dvo"),
    )
    .await;
    let (out, _) = kubectl(&["get", "policyreport", "dvo", "-n", &theirs, "-o", "json"]);
    let still: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        still["metadata"]["labels"]["app.kubernetes.io/managed-by"], "kyverno",
        "{still}"
    );
    assert_eq!(still["results"][0]["policy"], "kyverno-rule", "{still}");

    // Without AgentDeployments, the namespace's report goes.
    for name in ["held", "frozen"] {
        let (out, ok) = kubectl(&["delete", "adep", name, "-n", &ns, "--wait=true"]);
        assert!(ok, "{out}");
    }
    crate::support::until(
        "the report deleted",
        || kubectl(&["get", "policyreport", "dvo", "-n", &ns]),
        |(out, ok)| !*ok && out.contains("NotFound"),
    )
    .await;
}
