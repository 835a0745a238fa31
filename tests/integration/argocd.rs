//! The Argo CD health checks, run in gopher-lua (the interpreter Argo CD embeds, built by
//! tests/controlplane/build.sh as `luahealth`) over status fixtures of every phase.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const SCRIPTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/dvo-operator/files/argocd"
);
const LUA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/controlplane/bin/luahealth"
);

/// (status, message) of each object, as Argo CD would compute them.
fn health(kind: &str, objects: &[Value]) -> Vec<(String, String)> {
    let mut child = Command::new(LUA)
        .arg(format!("{SCRIPTS}/{kind}.lua"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tests/controlplane/bin/luahealth (make controlplane builds it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(objects.to_vec()).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_owned(),
                r["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn object(generation: i64, status: Value) -> Value {
    json!({"metadata": {"name": "x", "generation": generation}, "status": status})
}

fn check(kind: &str, table: &[(Value, &str, &str)]) {
    let objects: Vec<Value> = table.iter().map(|(o, _, _)| o.clone()).collect();
    for ((obj, status, message), (got_status, got_message)) in
        table.iter().zip(health(kind, &objects))
    {
        assert_eq!(&got_status, status, "{kind} {obj}");
        assert!(got_message.contains(message), "{kind} {obj}: {got_message}");
    }
}

#[test]
fn agent_deployments_are_suspended_while_waiting_and_degraded_when_refused() {
    let phase = |p: &str, msg: &str| {
        object(
            2,
            json!({"phase": p, "observedGeneration": 2, "message": msg}),
        )
    };
    let mut table = vec![
        (
            json!({"metadata": {"name": "x", "generation": 1}}),
            "Progressing",
            "waiting for the dvo operator",
        ),
        (
            object(3, json!({"phase": "Deployed", "observedGeneration": 2})),
            "Progressing",
            "has not evaluated the latest spec",
        ),
        (phase("Pending", "evaluating"), "Progressing", "evaluating"),
        (
            phase("Progressing", "rolling out sha256:aa"),
            "Progressing",
            "rolling out",
        ),
        (phase("Deployed", "rolled out"), "Healthy", "rolled out"),
        (
            phase("PendingApproval", "waiting for approvals"),
            "Suspended",
            "waiting for approvals",
        ),
        (
            phase("ManualActionRequired", "deploy it in Copilot Studio"),
            "Suspended",
            "Copilot Studio",
        ),
        (
            phase("Blocked", "policy/freeze: blackout"),
            "Degraded",
            "blackout",
        ),
        (
            phase("Rejected", "rejected by rosa-release"),
            "Degraded",
            "rejected by rosa-release",
        ),
        (phase("ApprovalExpired", "expired"), "Degraded", "expired"),
        (
            phase("Failed", "rollout failed"),
            "Degraded",
            "rollout failed",
        ),
        (
            phase("Degraded", "integration tests skipped"),
            "Degraded",
            "skipped",
        ),
    ];
    table.push((
        object(
            2,
            json!({"phase": "Blocked", "observedGeneration": 2, "message": "outside the window",
            "decision": {"outcome": "Deny", "nextWindowOpensAt": "2026-11-23T06:00:00Z"}}),
        ),
        "Suspended",
        "window opens at 2026-11-23T06:00:00Z",
    ));
    check("AgentDeployment", &table);
}

#[test]
fn approval_requests_policies_and_capabilities() {
    let apr = |p: &str| {
        object(
            1,
            json!({"phase": p, "conditions": [{"type": "Approved", "status": "False", "reason": p, "message": format!("{p} message")}]}),
        )
    };
    check(
        "ApprovalRequest",
        &[
            (
                json!({"metadata": {"name": "x"}}),
                "Suspended",
                "waiting for approvals",
            ),
            (apr("Pending"), "Suspended", "Pending message"),
            (apr("Approved"), "Healthy", "Approved message"),
            (apr("Superseded"), "Healthy", "Superseded"),
            (apr("Rejected"), "Degraded", "Rejected message"),
            (apr("Expired"), "Degraded", "Expired"),
            (apr("Cancelled"), "Degraded", "Cancelled"),
        ],
    );
    let accepted = |s: &str, m: &str| {
        object(
            1,
            json!({"observedGeneration": 1, "conditions": [{"type": "Accepted", "status": s, "reason": "R", "message": m}]}),
        )
    };
    check(
        "DeploymentPolicy",
        &[
            (
                json!({"metadata": {"name": "x", "generation": 1}}),
                "Progressing",
                "waiting",
            ),
            (accepted("True", "compiled"), "Healthy", "compiled"),
            (
                accepted("False", "unknown time zone"),
                "Degraded",
                "unknown time zone",
            ),
            (
                object(
                    2,
                    json!({"observedGeneration": 1, "conditions": [{"type": "Accepted", "status": "True"}]}),
                ),
                "Progressing",
                "waiting",
            ),
        ],
    );
    check(
        "Capability",
        &[
            (json!({"spec": {"enabled": true}}), "Healthy", "enabled"),
            (
                json!({"spec": {"enabled": false, "fallback": "Manual"}}),
                "Healthy",
                "disabled (fallback Manual)",
            ),
        ],
    );
}

#[test]
fn the_chart_ships_every_script_as_an_argocd_customization() {
    let (out, err, ok) = crate::support::helm(&[
        "template",
        "dvo",
        concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dvo-operator"),
        "--set",
        "argocd.healthChecks=true",
        "--show-only",
        "templates/argocd.yaml",
    ]);
    assert!(ok, "{err}");
    let cm: Value = dvo_operator::yaml::from_str(&out).unwrap();
    for kind in [
        "AgentDeployment",
        "ApprovalRequest",
        "DeploymentPolicy",
        "Capability",
    ] {
        let script = std::fs::read_to_string(format!("{SCRIPTS}/{kind}.lua")).unwrap();
        assert_eq!(
            cm["data"][format!("resource.customizations.health.dvo.caat.io_{kind}")].as_str(),
            Some(script.as_str()),
            "{kind}"
        );
    }
}
