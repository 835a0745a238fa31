//! The `dvo` binary as a user runs it: `crds`, `evaluate` and `test`.

use std::path::Path;
use std::process::Command;

fn dvo(args: &[&str]) -> (String, String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_dvo"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run dvo");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().expect("exit code"),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dvo-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn committed_crds_are_up_to_date() {
    let (out, _, code) = dvo(&["crds"]);
    assert_eq!(code, 0);
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/dvo-crds.yaml"))
            .unwrap();
    assert!(
        out == committed,
        "crds/dvo-crds.yaml is stale: run `make crds` and commit it"
    );
    for kind in [
        "AgentDeployment",
        "DeploymentPolicy",
        "ApprovalRequest",
        "Capability",
    ] {
        assert!(out.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }
}

const SEED: [&str; 8] = [
    "--policies",
    "examples/policies",
    "--capabilities",
    "examples/capabilities",
    "--role-mapping",
    "examples/role-mapping.yaml",
    "--group",
    "3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10",
];

fn evaluate(file: &str, at: &str, extra: &[&str]) -> (String, String, i32) {
    let mut args = vec!["evaluate", "-f", file, "--at", at, "--as", "rosa-release"];
    args.extend(SEED);
    args.extend(extra);
    dvo(&args)
}

#[test]
fn evaluate_production_on_a_saturday() {
    let (out, err, code) = evaluate(
        "examples/gha-production.yaml",
        "2026-11-21T15:00:00Z",
        &["--staging-validated"],
    );
    assert_eq!(code, 3, "deny exits 3: {out}{err}");
    for want in [
        "Requester:   rosa-release (roles: release_manager)",
        "Evaluated at 2026-11-21T15:00:00+00:00 (Saturday)",
        "Outcome:     Deny",
        "Next window: 2026-11-23T00:00:00+00:00 (Monday)",
        "[PolicyDenied] policy/mc-weekend-block: Production deployments blocked on weekends.",
        "  8        mc-weekend-block                 Deny             Matched",
        "      is_weekend Equals true: held (found true)",
        "  10       mc-prod-approval                 RequireApproval  NotReached",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn evaluate_exit_codes_and_formats() {
    // Tuesday, validated in staging: approval required (4).
    let (out, _, code) = evaluate(
        "examples/gha-production.yaml",
        "2026-11-24T14:00:00Z",
        &["--staging-validated", "-o", "json"],
    );
    assert_eq!(code, 4, "{out}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["outcome"], "RequireApproval");
    assert_eq!(
        d["approvalRequirements"][0]["source"],
        "policy/mc-prod-approval"
    );
    // Staging on a Tuesday morning by a release manager: allowed (0), as YAML.
    let (out, _, code) = evaluate(
        "examples/agentdeployment.yaml",
        "2026-11-24T10:00:00Z",
        &["-o", "yaml"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("outcome: Allow\n"), "{out}");
    // Copilot Studio: manual action (5).
    let (out, _, code) = evaluate(
        "examples/copilot-agentdeployment.yaml",
        "2026-11-24T10:00:00Z",
        &[],
    );
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("Manual action:\n  - Copilot Studio deployment requires manual action."),
        "{out}"
    );
}

#[test]
fn bad_input_names_the_file_and_field() {
    let dir = scratch("bad");
    let bad_adep = write(
        &dir,
        "adep.yaml",
        "apiVersion: dvo.caat.io/v1alpha1\nkind: AgentDeployment\nmetadata: {name: x}\nspec: {agent: GHA, platform: lambda, environment: staging}\n",
    );
    let (_, err, code) = dvo(&[
        "evaluate",
        "-f",
        &bad_adep,
        "--policies",
        "examples/policies",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("adep.yaml: AgentDeployment x:") && err.contains("unknown variant `lambda`"),
        "{err}"
    );

    let pol_dir = dir.join("policies");
    std::fs::create_dir_all(&pol_dir).unwrap();
    write(
        &pol_dir,
        "freeze.yaml",
        "apiVersion: dvo.caat.io/v1alpha1\nkind: DeploymentPolicy\nmetadata: {name: freeze}\nspec:\n  action: Deny\n  blackouts: [{start: '2026-12-20', end: '2026-01-02', reason: Holiday freeze}]\n",
    );
    let (_, err, code) = dvo(&[
        "evaluate",
        "-f",
        "examples/gha-production.yaml",
        "--policies",
        pol_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("freeze.yaml: DeploymentPolicy freeze is invalid: blackout \"Holiday freeze\": end 2026-01-02 is before its start 2026-12-20"), "{err}");

    let (_, err, code) = dvo(&[
        "evaluate",
        "-f",
        "no/such.yaml",
        "--policies",
        "examples/policies",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no/such.yaml"), "{err}");
    let (_, err, code) = dvo(&[
        "evaluate",
        "-f",
        "examples/gha-production.yaml",
        "--policies",
        "examples/policies",
        "--at",
        "tomorrow",
    ]);
    assert_eq!(code, 2, "usage error: {err}");
    assert!(err.contains("invalid value 'tomorrow' for '--at"), "{err}");
    let not_yaml = write(&dir, "broken.yaml", "kind: [unclosed\n");
    let (_, err, code) = dvo(&[
        "evaluate",
        "-f",
        &not_yaml,
        "--policies",
        "examples/policies",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("broken.yaml: invalid YAML: error: line 1 column 7: unclosed bracket '['"),
        "{err}"
    );
}

#[test]
fn policy_tests_pass_and_fail_like_a_test_runner() {
    let (out, err, code) = dvo(&["test", "examples/tests"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  PASS weekend production block (Saturday), reopening Monday 00:00 UTC"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("8 passed, 0 failed"), "{out}");

    let dir = scratch("suite");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    write(
        &dir,
        "suite.yaml",
        &format!(
            "name: wrong on purpose\npolicies: {0}/policies\nresources: [{0}/gha-production.yaml]\ncases:\n- name: expects allow on Saturday\n  resource: gha-production\n  at: 2026-11-21T15:00:00Z\n  stagingValidated: true\n  expect: {{outcome: Allow, violations: []}}\n- name: expects deny\n  resource: gha-production\n  at: 2026-11-21T15:00:00Z\n  stagingValidated: true\n  expect: {{outcome: Deny}}\n",
            examples.display()
        ),
    );
    let (out, _, code) = dvo(&["test", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("  FAIL expects allow on Saturday\n       outcome: expected Allow, got Deny"),
        "{out}"
    );
    assert!(out.contains("violations: expected none, got"), "{out}");
    assert!(out.contains("  PASS expects deny"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 1 failed"), "{out}");

    write(&dir, "suite.yaml", "name: typo\npolicy: x\n");
    let (out, _, code) = dvo(&["test", dir.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "suite.yaml: not a test suite: error: line 2 column 1: unknown field `policy`"
        ),
        "{out}"
    );
}

#[test]
fn audit_verify_reports_intact_and_tampered_exports() {
    use dvo_operator::audit::{Draft, EventType, Segment, SigningKey, append};
    let key = SigningKey::from_seed(&[3; 32]).unwrap();
    let mut entries = Vec::new();
    let mut head = None;
    for i in 0..6 {
        let mut d = Draft::new(
            EventType::DeploymentStarted,
            "dvo-operator",
            "rollout",
            &format!("agents/gha-{i}"),
            "AgentDeployment",
            "success",
        );
        d.idempotency_key = format!("k{i}");
        let e = append(head.as_ref(), d).unwrap();
        head = Some(e.link());
        entries.push(e);
    }
    let checkpoint = key.sign(6, &entries[5].entry_hash, "2026-11-24T10:00:00Z");
    let segment = Segment {
        name: "dvo-audit-0".into(),
        previous: None,
        entries,
        unreadable: None,
    };
    let dir = scratch("audit");
    let pubkey = dvo_operator::hex(&key.public_key());
    let write_export = |segment: &Segment| {
        write(
            &dir,
            "export.json",
            &serde_json::to_string(
                &serde_json::json!({"segments": [segment], "checkpoints": [checkpoint]}),
            )
            .unwrap(),
        )
    };
    let file = write_export(&segment);
    let (out, err, code) = dvo(&["audit", "verify", "-f", &file, "--public-key", &pubkey]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("intact: 6 entries, seq 1..6, head "),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("1 checkpoints (newest at seq 6)"),
        "{out}"
    );

    let mut tampered = segment.clone();
    tampered.entries[2].draft.user_id = "mallory".into();
    let file = write_export(&tampered);
    let (out, _, code) = dvo(&["audit", "verify", "-f", &file, "--public-key", &pubkey]);
    assert_eq!(code, 3);
    assert_eq!(
        out,
        "TAMPERED: HashMismatch at seq 3 (segment dvo-audit-0): the entry's content does not match its entry_hash: it was altered\n"
    );

    let mut truncated = segment;
    truncated.entries.truncate(4);
    let file = write_export(&truncated);
    let (out, _, code) = dvo(&["audit", "verify", "-f", &file, "--public-key", &pubkey]);
    assert_eq!(code, 3);
    assert!(out.starts_with("TAMPERED: Truncated at seq 5"), "{out}");

    let (_, err, code) = dvo(&["audit", "verify", "-f", &file, "--public-key", "abc"]);
    assert_eq!(code, 1);
    assert!(err.contains("--public-key must be 64 hex digits"), "{err}");
}

#[test]
fn run_refuses_malformed_audit_sinks_before_connecting() {
    let (_, err, code) = dvo(&["run", "--audit-sink", "x=ftp://a"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "unknown audit sink \"ftp://a\": use stdout, syslog+tcp://host:port?payload=cef|json, splunk+https://host:8088?index=NAME, azure+https://DCE?dcr=ID or webhook+https://host/path"
        ),
        "{err}"
    );
    let (_, err, code) = dvo(&["run", "--audit-sink", "Bad Name=stdout"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("must be lowercase letters, digits and dashes"),
        "{err}"
    );
}

#[test]
fn run_refuses_bad_notification_settings_before_connecting() {
    let dir = std::env::temp_dir().join(format!("dvo-cli-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("n.yaml");
    let path = file.display().to_string();
    let cases = [
        (
            "channels: [{name: rm, slack: {url: 'http://hooks.example.com/x'}}]",
            "channel rm: \"http://hooks.example.com/x\": only https://",
        ),
        (
            "channels: [{name: rm, teams: {urlEnv: DVO_TEST_SURELY_UNSET}}]",
            "notifications: channel rm: environment variable DVO_TEST_SURELY_UNSET is not set",
        ),
    ];
    for (yaml, want) in cases {
        std::fs::write(&file, yaml).unwrap();
        let (_, err, code) = dvo(&["run", "--notifications", &path]);
        assert_ne!(code, 0);
        assert!(err.contains(want), "{yaml}: {err}");
        assert!(
            !err.contains("kubeconfig") && !err.contains("connect"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `dvo evaluate` of the production example against the policies under `policies`.
fn evaluate_against(policies: &Path) -> (String, String, i32) {
    dvo(&[
        "evaluate",
        "-f",
        "examples/gha-production.yaml",
        "--policies",
        &policies.display().to_string(),
    ])
}

/// Hostile policy values are refused with the user's own text, never a panic (exit 101): an
/// expiry that overflows, 64k-deep nesting (refused by the parser's bounds, not parsed for
/// 40 s), a regex that is invalid as written but valid once wrapped in anchors.
#[test]
fn hostile_policy_values_are_refused_not_panicked_on() {
    let dir = scratch("hostile");
    let cases = [
        (
            "expiry",
            "{action: RequireApproval, approval: {roles: [release_manager], expiry: 99999999999999h}}".to_owned(),
            "approval.expiry \"99999999999999h\" is not a duration",
        ),
        (
            "nesting",
            "[".repeat(65_536) + &"]".repeat(65_536),
            "recursion limit exceeded",
        ),
        (
            "regex",
            "{priority: 1, action: Allow, conditions: [{field: agent, operator: Matches, value: 'GHA)|(.*'}]}".to_owned(),
            "invalid regular expression \"GHA)|(.*\"",
        ),
    ];
    for (name, spec, want) in cases {
        let policies = dir.join(name);
        std::fs::create_dir_all(&policies).unwrap();
        write(
            &policies,
            "p.yaml",
            &format!(
                "apiVersion: dvo.caat.io/v1alpha1\nkind: DeploymentPolicy\nmetadata: {{name: {name}}}\nspec: {spec}\n"
            ),
        );
        let (out, err, code) = evaluate_against(&policies);
        assert_ne!(code, 101, "{name} panicked: {err}");
        assert_ne!(code, 0, "{name} was accepted: {out}");
        assert!(err.contains(want), "{name}: {out}{err}");
    }
}

/// Offline accepts exactly what the API server accepts: a misspelled kind, an unknown field and
/// a directory with no policy (here: text in .yaml files) are errors, never "Allow, exit 0".
#[test]
fn offline_refuses_what_the_api_server_refuses() {
    let dir = scratch("strict");
    let policy = |spec: &str| {
        format!(
            "apiVersion: dvo.caat.io/v1alpha1\nkind: DeploymentPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
        )
    };
    let cases = [
        (
            "kind",
            policy("{action: Deny}").replace("kind: DeploymentPolicy", "kind: DeploymentPolicys"),
            "unknown kind \"DeploymentPolicys\" in dvo.caat.io/v1alpha1",
        ),
        (
            "field",
            policy(
                "{action: Deny, blackout: [{start: '2026-12-20T00:00:00Z', end: '2026-12-21T00:00:00Z'}]}",
            ),
            "DeploymentPolicy p: unknown field spec.blackout (the API server refuses them)",
        ),
        (
            "text",
            "deny everything in production\n".to_owned(),
            "not a Kubernetes object (a mapping with apiVersion and kind)",
        ),
        (
            "none",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n".to_owned(),
            "no DeploymentPolicy found (in .yaml or .yml files): nothing to evaluate against",
        ),
    ];
    for (name, text, want) in cases {
        let policies = dir.join(name);
        std::fs::create_dir_all(&policies).unwrap();
        write(&policies, "p.yaml", &text);
        let (out, err, code) = evaluate_against(&policies);
        assert!(code != 0 && code != 101, "{name}: exit {code}: {out}{err}");
        assert!(err.contains(want), "{name}: {out}{err}");
    }
}

/// The files of an OCI image archive made by `scripts/image.py`: (path, mode, uid) of each layer
/// entry, and the image config.
fn image_of(binary: &str, out: &Path) -> (Vec<(String, u32, u32)>, serde_json::Value, Vec<u8>) {
    let root = env!("CARGO_MANIFEST_DIR");
    let made = Command::new("python3")
        .arg(Path::new(root).join("scripts/image.py"))
        .args(["--binary", binary, "--out"])
        .arg(out)
        .output()
        .expect("run scripts/image.py");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let dir = out.with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let untar = Command::new("tar")
        .arg("xf")
        .arg(out)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(untar.success());
    let read = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()
    };
    let json = |bytes: Vec<u8>| -> serde_json::Value { serde_json::from_slice(&bytes).unwrap() };
    let index = json(std::fs::read(dir.join("index.json")).unwrap());
    let manifest = json(read(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(read(manifest["config"]["digest"].as_str().unwrap()));
    let layer = dir.join("layer.tar.gz");
    std::fs::write(
        &layer,
        read(manifest["layers"][0]["digest"].as_str().unwrap()),
    )
    .unwrap();
    // GNU tar's numeric listing: "drwxr-xr-x 0/0 0 1970-01-01 00:00 path".
    let listing = Command::new("tar")
        .args(["tzvf"])
        .arg(&layer)
        .arg("--numeric-owner")
        .output()
        .unwrap();
    let entries = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let mode = f[0]
                .chars()
                .skip(1)
                .fold(0u32, |m, c| (m << 1) | u32::from(c != '-'));
            let uid = f[1].split('/').next().unwrap().parse().unwrap();
            (f[5].trim_end_matches('/').to_owned(), mode, uid)
        })
        .collect();
    (entries, config, std::fs::read(out).unwrap())
}

/// `make image` builds the image without a base image or registry: the same binary gives the
/// same bytes, and it runs as the Dockerfile's image does (user, entrypoint, command, ports,
/// binary path), as the chart's security context expects (uid 65532, a read-only root), with
/// every library the binary loads.
#[test]
fn the_image_is_reproducible_and_runs_as_the_dockerfile_says() {
    let dir = scratch("image");
    let binary = env!("CARGO_BIN_EXE_dvo");
    let (files, config, first) = image_of(binary, &dir.join("a.tar"));
    let (_, _, second) = image_of(binary, &dir.join("b.tar"));
    assert!(first == second, "two builds of the same binary differ");

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let instruction = |name: &str| {
        last_stage
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("the Dockerfile's last stage has no {name}"))
            .trim()
            .to_owned()
    };
    let c = &config["config"];
    assert_eq!(c["User"], instruction("USER"));
    let as_json = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();
    assert_eq!(c["Entrypoint"], as_json(instruction("ENTRYPOINT")));
    assert_eq!(c["Cmd"], as_json(instruction("CMD")));
    let mut ports: Vec<String> = c["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    ports.sort();
    let expose: Vec<String> = instruction("EXPOSE")
        .split_whitespace()
        .map(|p| format!("{p}/tcp"))
        .collect();
    assert_eq!(ports, expose);
    let copied = instruction("COPY");
    let binary_path = copied.rsplit(' ').next().unwrap().trim_start_matches('/');
    let mode_of = |path: &str| {
        files
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, m, u)| (*m, *u))
    };
    assert_eq!(
        mode_of(binary_path),
        Some((0o755, 0)),
        "the binary, owned by root, executable"
    );

    let values = std::fs::read_to_string(root.join("charts/dvo-operator/values.yaml")).unwrap();
    assert!(values.contains("runAsUser: 65532") && values.contains("readOnlyRootFilesystem: true"));
    assert!(c["User"].as_str().unwrap().starts_with("65532:"));
    let rootfs = dir.join("a.d/rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(dir.join("a.d/layer.tar.gz"))
        .arg("-C")
        .arg(&rootfs)
        .arg("etc")
        .status()
        .unwrap();
    assert!(untar.success());
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    assert_eq!(
        mode_of("tmp"),
        Some((0o777, 0)),
        "a /tmp everyone may write"
    );

    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        assert!(
            files.iter().any(|(p, _, _)| *p == lib[1..]),
            "{lib} is not in the image"
        );
    }
    assert!(
        files
            .iter()
            .any(|(p, _, _)| p == "etc/ssl/certs/ca-certificates.crt")
    );
}

#[test]
fn audit_query_and_report_read_exports_and_say_what_verification_found() {
    use dvo_operator::audit::{Draft, EventType, Segment, SigningKey, append};
    let key = SigningKey::from_seed(&[4; 32]).unwrap();
    let mut entries = Vec::new();
    let mut head = None;
    for i in 0..6 {
        let mut d = Draft::new(
            if i == 2 {
                EventType::BreakGlassUsed
            } else {
                EventType::DeploymentStarted
            },
            if i == 2 { "alice" } else { "dvo-operator" },
            "rollout",
            &format!("agents/gha-{i}"),
            "AgentDeployment",
            "success",
        );
        d.environment = Some("production".into());
        d.timestamp = format!("2026-11-2{i}T10:00:00Z");
        d.metadata = serde_json::json!({"digest": format!("sha256:{i}"), "generation": 1});
        d.idempotency_key = format!("k{i}");
        let e = append(head.as_ref(), d).unwrap();
        head = Some(e.link());
        entries.push(e);
    }
    let checkpoint = key.sign(6, &entries[5].entry_hash, "2026-11-26T10:00:00Z");
    let dir = scratch("audit-query");
    let pubkey = dvo_operator::hex(&key.public_key());
    let export = |entries: &[dvo_operator::audit::Entry],
                  checkpoints: &[&dvo_operator::audit::Checkpoint]| {
        let segment = Segment {
            name: "dvo-audit-0".into(),
            previous: None,
            entries: entries.to_vec(),
            unreadable: None,
        };
        write(
            &dir,
            "export.json",
            &serde_json::json!({"segments": [segment], "checkpoints": checkpoints}).to_string(),
        )
    };
    let file = export(&entries, &[&checkpoint]);
    let (out, err, code) = dvo(&[
        "audit",
        "query",
        "-f",
        &file,
        "--public-key",
        &pubkey,
        "--event",
        "break_glass_used",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("# chain intact: 6 entries read"), "{out}");
    assert!(
        out.contains("signed checkpoints verified up to seq 6"),
        "{out}"
    );
    assert!(
        out.contains("# 1 of them match") && out.contains("alice"),
        "{out}"
    );
    let (out, _, code) = dvo(&[
        "audit",
        "report",
        "-f",
        &file,
        "--public-key",
        &pubkey,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["totals"]["changes"], 6, "{report}");
    assert_eq!(report["totals"]["breakGlass"], 1, "{report}");

    // Cut after seq 4, without its checkpoints: only a checkpoint kept outside tells.
    let file = export(&entries[..4], &[]);
    let (out, _, code) = dvo(&["audit", "query", "-f", &file, "--public-key", &pubkey]);
    assert_eq!(code, 0, "{out}");
    let outside = write(
        &dir,
        "trusted.jsonl",
        &(serde_json::to_string(&checkpoint).unwrap() + "\n"),
    );
    for command in ["query", "report"] {
        let (out, _, code) = dvo(&[
            "audit",
            command,
            "-f",
            &file,
            "--public-key",
            &pubkey,
            "--checkpoint",
            &outside,
        ]);
        assert_eq!(code, 3, "{command}: {out}");
        assert!(out.contains("CHAIN DAMAGED"), "{command}: {out}");
    }
    let (_, err, code) = dvo(&["audit", "query", "-f", &file]);
    assert_eq!(code, 1);
    assert!(err.contains("--public-key is required"), "{err}");
}
