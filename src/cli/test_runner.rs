//! `dvo test DIR`: runs policy test suites (YAML) offline and reports like a test runner.
//!
//! A suite file:
//! ```yaml
//! name: seed default policies
//! policies: ../policies            # directory or file, relative to this file
//! capabilities: ../capabilities    # optional (built-in defaults otherwise)
//! roleMapping: role-mapping.yaml   # optional
//! resources: [agentdeployments.yaml]
//! cases:
//! - name: production is blocked on Saturdays
//!   resource: gha-production       # metadata.name of an AgentDeployment in `resources`
//!   at: 2026-11-21T15:00:00Z
//!   as: {username: rosa, groups: [release-managers]}   # optional
//!   stagingValidated: true         # optional
//!   expect:
//!     outcome: Deny
//!     violations: [blocked on weekends]   # each text appears in some "source: message"
//!     warnings: []                         # each text appears in some warning
//!     approvals: [policy/mc-prod-approval] # exactly these requirement sources
//!     matchedPolicies: [mc-weekend-block]  # exactly these, in evaluation order
//!     nextWindowOpensAt: 2026-11-23T00:00:00Z
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::evaluate::request_for;
use super::load;
use crate::crd::AgentDeployment;
use crate::identity::Identity;
use crate::policy::{self, Decision, Outcome, Rules};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Suite {
    name: String,
    policies: PathBuf,
    #[serde(default)]
    capabilities: Option<PathBuf>,
    #[serde(default)]
    role_mapping: Option<PathBuf>,
    resources: Vec<PathBuf>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    name: String,
    resource: String,
    at: DateTime<Utc>,
    #[serde(default, rename = "as")]
    as_user: Option<Identity>,
    #[serde(default)]
    staging_validated: bool,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Expect {
    outcome: Outcome,
    #[serde(default)]
    violations: Option<Vec<String>>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
    #[serde(default)]
    approvals: Option<Vec<String>>,
    #[serde(default)]
    matched_policies: Option<Vec<String>>,
    #[serde(default)]
    next_window_opens_at: Option<DateTime<Utc>>,
}

/// Counts of a run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases whose expectations held.
    pub passed: usize,
    /// Cases that did not (or could not run).
    pub failed: usize,
}

/// Runs every suite file under `path`; returns the report and the counts.
pub fn run(path: &Path) -> Result<(String, Summary)> {
    let mut out = String::new();
    let mut summary = Summary::default();
    let files = load::yaml_files(path)?;
    if files.is_empty() {
        return Err(anyhow!("{}: no test suites (*.yaml) found", path.display()));
    }
    for file in files {
        match run_suite(&file, &mut out, &mut summary) {
            Ok(()) => {}
            Err(e) => {
                summary.failed = summary.failed.saturating_add(1);
                let _ = writeln!(out, "ERROR {}: {e:#}", file.display());
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} passed, {} failed",
        summary.passed, summary.failed
    );
    Ok((out, summary))
}

fn run_suite(file: &Path, out: &mut String, summary: &mut Summary) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let suite: Suite =
        crate::yaml::from_str(&text).map_err(|e| anyhow!("not a test suite: {e}"))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let rules = Rules::new(
        load::policies(&base.join(&suite.policies))?,
        load::capabilities(suite.capabilities.map(|p| base.join(p)).as_deref())?,
        load::role_mapping(suite.role_mapping.map(|p| base.join(p)).as_deref())?,
    );
    let mut resources: Vec<AgentDeployment> = Vec::new();
    for r in &suite.resources {
        let found = load::objects::<AgentDeployment>(&base.join(r), "AgentDeployment")?;
        resources.extend(found.into_iter().map(|(_, a)| a));
    }
    let _ = writeln!(out, "{} ({})", suite.name, file.display());
    for case in &suite.cases {
        let adep = resources
            .iter()
            .find(|a| a.metadata.name.as_deref() == Some(case.resource.as_str()))
            .ok_or_else(|| {
                anyhow!(
                    "case {:?}: no AgentDeployment named {:?} in resources",
                    case.name,
                    case.resource
                )
            })?;
        let request = request_for(adep, case.as_user.clone(), case.staging_validated);
        let decision = policy::decide(&rules, &request, case.at);
        let failures = check(&case.expect, &decision);
        if failures.is_empty() {
            summary.passed = summary.passed.saturating_add(1);
            let _ = writeln!(out, "  PASS {}", case.name);
        } else {
            summary.failed = summary.failed.saturating_add(1);
            let _ = writeln!(out, "  FAIL {}", case.name);
            for f in failures {
                let _ = writeln!(out, "       {f}");
            }
        }
    }
    Ok(())
}

/// Every way `d` differs from `e`, in words.
fn check(e: &Expect, d: &Decision) -> Vec<String> {
    let mut f = Vec::new();
    if e.outcome != d.outcome {
        f.push(format!(
            "outcome: expected {:?}, got {:?}",
            e.outcome, d.outcome
        ));
    }
    let texts = |want: &Option<Vec<String>>, have: Vec<String>, what: &str, f: &mut Vec<String>| {
        let Some(want) = want else { return };
        if want.is_empty() && !have.is_empty() {
            f.push(format!("{what}: expected none, got {have:?}"));
        }
        for w in want {
            if !have.iter().any(|h| h.contains(w.as_str())) {
                f.push(format!(
                    "{what}: expected one containing {w:?}, got {have:?}"
                ));
            }
        }
    };
    let violations = d
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.source, v.message))
        .collect();
    texts(&e.violations, violations, "violations", &mut f);
    texts(&e.warnings, d.warnings.clone(), "warnings", &mut f);
    if let Some(want) = &e.approvals {
        let mut have: Vec<_> = d
            .approval_requirements
            .iter()
            .map(|r| r.source.clone())
            .collect();
        let mut want = want.clone();
        have.sort();
        want.sort();
        if have != want {
            f.push(format!("approvals: expected {want:?}, got {have:?}"));
        }
    }
    if let Some(want) = &e.matched_policies {
        let have: Vec<_> = d.matched_policies.iter().map(|m| m.name.clone()).collect();
        if &have != want {
            f.push(format!("matchedPolicies: expected {want:?}, got {have:?}"));
        }
    }
    if e.next_window_opens_at.is_some() && e.next_window_opens_at != d.next_window_opens_at {
        f.push(format!(
            "nextWindowOpensAt: expected {:?}, got {:?}",
            e.next_window_opens_at, d.next_window_opens_at
        ));
    }
    f
}
