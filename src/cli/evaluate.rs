//! `dvo evaluate`: the decision for one AgentDeployment, offline.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};

use super::load;
use crate::crd::AgentDeployment;
use crate::identity::Identity;
use crate::policy::{self, Decision, Outcome, Request, Rules};

/// Arguments of `dvo evaluate`.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// The AgentDeployment manifest.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Directory (or file) of DeploymentPolicy manifests.
    #[arg(long)]
    pub policies: PathBuf,
    /// Directory (or file) of Capability manifests; built-in defaults without it.
    #[arg(long)]
    pub capabilities: Option<PathBuf>,
    /// Role mapping file (users, groups, service accounts → roles).
    #[arg(long)]
    pub role_mapping: Option<PathBuf>,
    /// The moment to evaluate at, RFC 3339 (default: now).
    #[arg(long)]
    pub at: Option<DateTime<Utc>>,
    /// The requester's user name (default: an unknown requester, who is never privileged).
    #[arg(long = "as")]
    pub as_user: Option<String>,
    /// The requester's groups (repeat the flag for several).
    #[arg(long = "group", requires = "as_user")]
    pub groups: Vec<String>,
    /// Treat the agent as validated in staging (the operator computes this in the cluster).
    #[arg(long)]
    pub staging_validated: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable summary and trace.
    Table,
    /// The Decision as YAML (as in `status.decision`).
    Yaml,
    /// The Decision as JSON.
    Json,
}

/// The exit code of an outcome: 0 allow, 3 deny, 4 approval required, 5 manual action.
/// (1 is an error in the input, 2 a usage error.)
pub fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Allow => 0,
        Outcome::Deny => 3,
        Outcome::RequireApproval => 4,
        Outcome::ManualActionRequired => 5,
    }
}

/// The request `decide()` sees for an AgentDeployment read from a file.
pub fn request_for(
    adep: &AgentDeployment,
    requester: Option<Identity>,
    staging_validated: bool,
) -> Request {
    Request {
        namespace: adep
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        labels: adep.metadata.labels.clone().unwrap_or_default(),
        spec: adep.spec.clone(),
        requester,
        staging_validated,
    }
}

/// Runs `dvo evaluate`; returns the text to print and the exit code.
pub fn run(args: &EvaluateArgs) -> Result<(String, u8)> {
    let adep = load::agent_deployment(&args.file)?;
    let rules = Rules::new(
        load::policies(&args.policies)?,
        load::capabilities(args.capabilities.as_deref())?,
        load::role_mapping(args.role_mapping.as_deref())?,
    );
    let requester = args.as_user.clone().map(|username| Identity {
        username,
        uid: None,
        groups: args.groups.clone(),
    });
    let request = request_for(&adep, requester, args.staging_validated);
    let decision = policy::decide(&rules, &request, args.at.unwrap_or_else(Utc::now));
    let text = match args.output {
        Format::Table => table(&adep, &rules, &request, &decision),
        Format::Yaml => crate::yaml::to_string(&decision).map_err(anyhow::Error::msg)?,
        Format::Json => serde_json::to_string_pretty(&decision)? + "\n",
    };
    Ok((text, exit_code(decision.outcome)))
}

/// A human-readable rendering of a decision and its trace.
pub fn table(adep: &AgentDeployment, rules: &Rules, request: &Request, d: &Decision) -> String {
    let mut s = String::new();
    let spec = &adep.spec;
    let who = request
        .requester
        .as_ref()
        .map_or("(unknown requester)".to_owned(), |r| r.username.clone());
    let subject = rules.mapping().subject(
        request.requester.as_ref().unwrap_or(&Identity::default()),
        &spec.environment,
    );
    let roles: Vec<_> = subject.roles.iter().map(|r| r.as_str()).collect();
    let _ = writeln!(
        s,
        "AgentDeployment {}/{}: agent {} on {} to {} ({})",
        request.namespace,
        adep.metadata.name.as_deref().unwrap_or("<no name>"),
        spec.agent,
        spec.platform.as_str(),
        spec.environment,
        spec.action.as_str()
    );
    let _ = writeln!(s, "Requester:   {who} (roles: {})", roles.join(", "));
    let _ = writeln!(
        s,
        "Evaluated at {} ({})",
        d.evaluated_at.to_rfc3339(),
        d.evaluated_at.format("%A")
    );
    let _ = writeln!(s, "Outcome:     {:?}", d.outcome);
    if let Some(at) = d.next_window_opens_at {
        let _ = writeln!(s, "Next window: {} ({})", at.to_rfc3339(), at.format("%A"));
    }
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            let _ = writeln!(s, "\n{title}:");
            for l in lines {
                let _ = writeln!(s, "  - {l}");
            }
        }
    };
    section(
        "Violations",
        d.violations
            .iter()
            .map(|v| format!("[{:?}] {}: {}", v.kind, v.source, v.message))
            .collect(),
    );
    section(
        "Approvals required",
        d.approval_requirements
            .iter()
            .map(|r| {
                let roles: Vec<_> = r.roles.iter().map(|r| r.as_str()).collect();
                format!(
                    "{}: {} of {} within {}{}",
                    r.source,
                    r.min_approvals,
                    roles.join(" or "),
                    r.expiry,
                    if r.allow_self_approval {
                        " (self-approval allowed)"
                    } else {
                        ""
                    }
                )
            })
            .collect(),
    );
    section("Manual action", d.manual_instructions.clone());
    section("Warnings", d.warnings.clone());
    section(
        "Skipped steps",
        d.skipped_steps
            .iter()
            .map(|n| format!("{}: {}", n.capability, n.message))
            .collect(),
    );
    section(
        "Degraded steps",
        d.degraded_steps
            .iter()
            .map(|n| format!("{}: {}", n.capability, n.message))
            .collect(),
    );
    section(
        "Requirements",
        d.requirements.iter().map(|r| format!("{r:?}")).collect(),
    );
    section(
        "Matched policies",
        d.matched_policies
            .iter()
            .map(|m| format!("{} ({:?}): {}", m.name, m.action, m.reason))
            .collect(),
    );
    let _ = writeln!(s, "\nTrace (policies in scope, in evaluation order):");
    let _ = writeln!(
        s,
        "  {:<8} {:<32} {:<16} RESULT",
        "PRIORITY", "POLICY", "ACTION"
    );
    for t in &d.trace {
        let _ = writeln!(
            s,
            "  {:<8} {:<32} {:<16} {:?}",
            t.priority,
            t.policy,
            format!("{:?}", t.action),
            t.result
        );
        for c in &t.conditions {
            let verdict = match (&c.error, c.held) {
                (Some(e), _) => format!("error: {e}"),
                (None, true) => "held".into(),
                (None, false) => "did not hold".into(),
            };
            let _ = writeln!(
                s,
                "      {} {:?} {}: {verdict} (found {})",
                c.field, c.operator, c.expected, c.actual
            );
        }
        if let Some(n) = &t.note {
            let _ = writeln!(s, "      note: {n}");
        }
    }
    s
}

/// Parses an RFC 3339 time with a message naming it.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| anyhow!("{s:?} is not an RFC 3339 time such as 2026-11-21T15:00:00Z: {e}"))
}
