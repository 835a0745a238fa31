//! The change-management report of a period, read from the audit log: each change (an
//! AgentDeployment spec, by digest) in the environments asked for, with who requested it, who
//! approved it with which roles and when, the policy outcomes, the rollout and any rollback,
//! break-glass, and refused attempts; totals, approval latency, changes per week and refusals by
//! reason; and what the verification of the chain found. Rendered as Markdown or as one
//! self-contained HTML page with SVG charts. Pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde::Serialize;

use super::query::{self, rfc3339, time};
use super::{Entry, EventType};

/// One approval given.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Who.
    pub user: String,
    /// Their roles when they acted.
    pub roles: Vec<String>,
    /// When.
    pub at: String,
    /// `kubernetes` or `http`.
    pub via: String,
    /// Whether they proved MFA.
    pub mfa: bool,
    /// Their comment.
    pub comment: Option<String>,
}

/// Something that happened to a change, in the log's words.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When.
    pub at: String,
    /// Who.
    pub user: String,
    /// The event type.
    pub event: String,
    /// Its status.
    pub status: String,
    /// Its message, if any.
    pub message: Option<String>,
    /// The entry's `seq`.
    pub seq: u64,
}

/// One change: an AgentDeployment spec (by digest) in an environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `namespace/name`.
    pub agent_deployment: String,
    /// Its generation with this spec.
    pub generation: i64,
    /// The spec digest.
    pub digest: String,
    /// The agent.
    pub agent: String,
    /// The environment.
    pub environment: String,
    /// The images it runs.
    pub images: Vec<String>,
    /// Who requested it (as the API server authenticated them).
    pub requester: Option<String>,
    /// Why, in the requester's words.
    pub justification: Option<String>,
    /// When it was first seen.
    pub first_seen: Option<String>,
    /// When approval was asked for.
    pub approval_requested: Option<String>,
    /// Approvals given.
    pub approvals: Vec<Approval>,
    /// Rejections and cancellations given, with their reasons.
    pub rejections: Vec<Event>,
    /// When its approval was complete.
    pub approved: Option<String>,
    /// Seconds from the request for approval to its completion.
    pub approval_latency_seconds: Option<i64>,
    /// Phases it went through, as decided.
    pub phases: Vec<String>,
    /// Where it ended: the last phase.
    pub outcome: String,
    /// Rollbacks.
    pub rollbacks: Vec<Event>,
    /// Break-glass overrides.
    pub break_glass: Vec<Event>,
    /// Refused attempts (permissions, tokens, acts).
    pub refused: Vec<Event>,
}

/// The report.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The period: from.
    pub since: Option<String>,
    /// The period: until.
    pub until: Option<String>,
    /// The environments reported on.
    pub environments: Vec<String>,
    /// What the verification of the chain found.
    pub verification: String,
    /// Whether the chain verified.
    pub intact: bool,
    /// The changes, oldest first.
    pub changes: Vec<Change>,
    /// Totals by outcome, and `changes`, `approved`, `breakGlass`, `refused`, `rolledBack`.
    pub totals: BTreeMap<String, usize>,
    /// Approval latency: median, 90th percentile and longest, in seconds.
    pub latency: Option<[i64; 3]>,
    /// Changes per week (the Monday it starts).
    pub weekly: BTreeMap<String, usize>,
    /// Refusals by reason.
    pub refusals: BTreeMap<String, usize>,
}

fn text<'a>(m: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    m.get(key).and_then(|v| v.as_str())
}

fn event(e: &Entry) -> Event {
    let d = &e.draft;
    Event {
        at: d.timestamp.clone(),
        user: d.user_id.clone(),
        event: d.event_type.as_str().to_owned(),
        status: d.status.clone(),
        message: d.error_message.clone(),
        seq: e.seq,
    }
}

/// The change an entry belongs to: the AgentDeployment (`namespace/name`), the generation and
/// the digest. Going back to an earlier spec is a new generation, so a new change.
fn change_of(e: &Entry) -> Option<(String, i64, String)> {
    let d = &e.draft;
    let m = &d.metadata;
    let generation = m.get("generation").and_then(|g| g.as_i64())?;
    match d.resource_type.as_str() {
        "AgentDeployment" => Some((
            d.resource.clone(),
            generation,
            text(m, "digest")?.to_owned(),
        )),
        "ApprovalRequest" => {
            let ns = query::namespace(e)?;
            let digest = text(m, "digest").or_else(|| text(m, "specDigest"))?;
            let deployment = text(m, "deployment")?;
            Some((format!("{ns}/{deployment}"), generation, digest.to_owned()))
        }
        _ => None,
    }
}

/// The reason a refusal is counted under. An approval outcome is counted from the
/// ApprovalRequest's entry only (the AgentDeployment records its phase too).
fn refusal_reason(e: &Entry) -> Option<String> {
    let d = &e.draft;
    let from_request = d.resource_type == "ApprovalRequest";
    let kind = match (d.event_type, d.status.as_str(), from_request) {
        (EventType::PermissionDenied, _, _) => "permission denied",
        (EventType::AuthFailure, _, _) => "authentication failed",
        (EventType::PolicyViolation, "blocked", _) => "blocked by policy",
        (EventType::ApprovalDenied, "rejected", true) => "rejected by an approver",
        (EventType::ApprovalDenied, "expired", true) => "approval expired",
        (EventType::CapabilityBlocked, _, _) => "capability blocked",
        _ => return None,
    };
    Some(kind.to_owned())
}

/// Adds `n` to the count of `key`.
fn bump(counts: &mut BTreeMap<String, usize>, key: impl Into<String>, n: usize) {
    let count = counts.entry(key.into()).or_default();
    *count = count.saturating_add(n);
}

fn monday(t: DateTime<Utc>) -> NaiveDate {
    let day = t.date_naive();
    day.checked_sub_signed(Duration::days(i64::from(
        day.weekday().num_days_from_monday(),
    )))
    .unwrap_or(day)
}

/// The nearest-rank `p`th percentile of `sorted`.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    let rank = sorted.len().saturating_mul(p).div_ceil(100);
    sorted
        .get(rank.saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// The report of `entries` (already verified, as `verification` says) for the changes in
/// `environments` first seen in `[since, until)`, and, when `namespaces` is not empty, in those
/// namespaces only.
pub fn build(
    entries: &[&Entry],
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    environments: &[String],
    namespaces: &[String],
    verification: (bool, String),
) -> Report {
    let wanted = |e: &Entry| {
        e.draft
            .environment
            .as_ref()
            .is_some_and(|env| environments.contains(env))
            && (namespaces.is_empty()
                || query::namespace(e).is_some_and(|ns| namespaces.iter().any(|n| n == ns)))
    };
    let mut changes: BTreeMap<(String, i64, String), Change> = BTreeMap::new();
    let mut order: Vec<(String, i64, String)> = vec![];
    for e in entries.iter().copied().filter(|e| wanted(e)) {
        let Some(key) = change_of(e) else { continue };
        let d = &e.draft;
        let m = &d.metadata;
        let c = changes.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Change {
                agent_deployment: key.0.clone(),
                generation: key.1,
                digest: key.2.clone(),
                ..Change::default()
            }
        });
        if c.first_seen.is_none() {
            c.first_seen = Some(d.timestamp.clone());
        }
        if c.agent.is_empty() {
            c.agent = d.agents.first().cloned().unwrap_or_default();
            c.environment = d.environment.clone().unwrap_or_default();
        }
        let from_request = d.resource_type == "ApprovalRequest";
        if !from_request && d.auth_method == "kubernetes" && c.requester.is_none() {
            let operator = d.user_id == super::OPERATOR;
            let break_glass = d.event_type == EventType::BreakGlassUsed;
            if !operator && !break_glass {
                c.requester = Some(d.user_id.clone());
            }
        }
        match (d.event_type, d.status.as_str(), from_request) {
            (EventType::ApprovalRequested, _, false) => {
                c.approval_requested
                    .get_or_insert_with(|| d.timestamp.clone());
                if let Some(j) = text(m, "justification") {
                    c.justification = Some(j.to_owned());
                }
            }
            (EventType::ApprovalGranted, "approval_recorded", true) => {
                c.approvals.push(Approval {
                    user: d.user_id.clone(),
                    roles: d.user_roles.clone(),
                    at: d.timestamp.clone(),
                    via: text(m, "via").unwrap_or("kubernetes").to_owned(),
                    mfa: m.get("mfa").and_then(|v| v.as_bool()).unwrap_or(false),
                    comment: text(m, "comment").map(str::to_owned),
                });
            }
            (EventType::ApprovalDenied, "rejection_recorded" | "cancellation_recorded", true) => {
                c.rejections.push(Event {
                    message: text(m, "comment").map(str::to_owned),
                    ..event(e)
                });
            }
            (EventType::ApprovalGranted, "approved", true) => {
                c.approved = Some(d.timestamp.clone());
            }
            (EventType::DeploymentStarted, "success", false) => {
                if let Some(images) = m.get("images").and_then(|v| v.as_array()) {
                    c.images = images
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect();
                }
            }
            (EventType::RollbackStarted | EventType::RollbackCompleted, _, false) => {
                c.rollbacks.push(event(e));
            }
            (EventType::BreakGlassUsed, _, false) => c.break_glass.push(Event {
                message: text(m, "reason").map(str::to_owned),
                ..event(e)
            }),
            _ => {}
        }
        if refusal_reason(e).is_some() {
            c.refused.push(event(e));
        }
        // A phase transition (recorded once per phase and change) names the phase.
        let transition = !from_request && d.idempotency_key.starts_with("phase/");
        if transition && c.phases.last() != Some(&d.operation) {
            c.phases.push(d.operation.clone());
        }
    }
    let in_period = |c: &Change| match c.first_seen.as_deref().and_then(rfc3339) {
        None => since.is_none() && until.is_none(),
        Some(t) => since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u),
    };
    let mut list: Vec<Change> = order
        .into_iter()
        .filter_map(|k| changes.remove(&k))
        .filter(|c| in_period(c))
        .collect();
    let parse = |t: &Option<String>| t.as_deref().and_then(rfc3339);
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut weekly: BTreeMap<String, usize> = BTreeMap::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut latencies = vec![];
    // A change left unfinished when a later generation of its AgentDeployment came was
    // superseded by it.
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    for c in &list {
        let g = newest.entry(c.agent_deployment.clone()).or_default();
        *g = (*g).max(c.generation);
    }
    for c in &mut list {
        c.outcome = c.phases.last().cloned().unwrap_or_else(|| "Pending".into());
        let unfinished = matches!(
            c.outcome.as_str(),
            "Pending" | "PendingApproval" | "Progressing"
        );
        if unfinished
            && newest
                .get(&c.agent_deployment)
                .is_some_and(|g| *g > c.generation)
        {
            c.outcome = "Superseded".into();
        }
        c.approval_latency_seconds = match (parse(&c.approval_requested), parse(&c.approved)) {
            (Some(asked), Some(done)) => {
                Some(done.signed_duration_since(asked).num_seconds().max(0))
            }
            _ => None,
        };
        latencies.extend(c.approval_latency_seconds);
        bump(&mut totals, "changes", 1);
        bump(&mut totals, format!("outcome {}", c.outcome), 1);
        if c.approved.is_some() {
            bump(&mut totals, "approved", 1);
        }
        if !c.break_glass.is_empty() {
            bump(&mut totals, "breakGlass", 1);
        }
        if !c.rollbacks.is_empty() {
            bump(&mut totals, "rolledBack", 1);
        }
        bump(&mut totals, "refused", c.refused.len());
        if let Some(t) = parse(&c.first_seen) {
            bump(&mut weekly, monday(t).to_string(), 1);
        }
    }
    for e in entries.iter().copied().filter(|e| wanted(e)) {
        let seen =
            time(e).is_some_and(|t| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u));
        if let (true, Some(reason)) = (seen, refusal_reason(e)) {
            bump(&mut refusals, reason, 1);
        }
    }
    // Weeks without changes are shown as such, not left out.
    let first = weekly
        .keys()
        .next()
        .and_then(|w| w.parse::<NaiveDate>().ok());
    let last = weekly
        .keys()
        .last()
        .and_then(|w| w.parse::<NaiveDate>().ok());
    if let (Some(mut week), Some(last)) = (first, last) {
        while week < last {
            week = week.checked_add_signed(Duration::days(7)).unwrap_or(last);
            weekly.entry(week.to_string()).or_default();
        }
    }
    latencies.sort_unstable();
    let latency = (!latencies.is_empty()).then(|| {
        [
            percentile(&latencies, 50),
            percentile(&latencies, 90),
            latencies.last().copied().unwrap_or_default(),
        ]
    });
    Report {
        since: since.map(|t| t.to_rfc3339()),
        until: until.map(|t| t.to_rfc3339()),
        environments: environments.to_vec(),
        verification: verification.1,
        intact: verification.0,
        changes: list,
        totals,
        latency,
        weekly,
        refusals,
    }
}

fn title(r: &Report) -> String {
    format!(
        "Change report: {} ({})",
        r.environments.join(", "),
        period(r)
    )
}

fn period(r: &Report) -> String {
    format!(
        "{} to {}",
        r.since.as_deref().unwrap_or("the first entry"),
        r.until.as_deref().unwrap_or("now")
    )
}

fn duration(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

fn requested_line(c: &Change) -> String {
    let who = c.requester.as_deref().unwrap_or("(unknown)");
    match &c.justification {
        Some(j) => format!("{who}: {j}"),
        None => who.to_owned(),
    }
}

fn approvals_line(c: &Change) -> String {
    let given = c.approvals.iter().map(|a| {
        format!(
            "{} ({}) at {} via {}{}{}",
            a.user,
            a.roles.join(", "),
            a.at,
            a.via,
            if a.mfa { ", MFA" } else { "" },
            a.comment
                .as_deref()
                .map(|t| format!(": {t}"))
                .unwrap_or_default()
        )
    });
    let refused = c.rejections.iter().map(|r| {
        let what = r.status.trim_end_matches("_recorded");
        format!(
            "{what} by {} at {}: {}",
            r.user,
            r.at,
            r.message.as_deref().unwrap_or("")
        )
    });
    given.chain(refused).collect::<Vec<_>>().join("; ")
}

/// One Markdown table cell of user text: it stays text (no HTML, link, autolink, image,
/// emphasis or code span can be made of it) and cannot break the table.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            '\\' | '|' | '[' | ']' | '`' | '*' | '_' | '~' | '@' => {
                out.push('\\');
                out.push(c);
            }
            // `scheme://` and `www.` would be linked by GitHub's autolinks.
            ':' if chars.peek() == Some(&'/') => out.push_str("\\:"),
            '.' if out.ends_with("www") || out.ends_with("WWW") => out.push_str("\\."),
            c => out.push(c),
        }
    }
    out
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", title(r));
    let _ = writeln!(
        s,
        "**Audit log:** {}{}\n",
        r.verification,
        if r.intact {
            ""
        } else {
            " — the figures below cannot be trusted"
        }
    );
    let _ = writeln!(s, "## Totals\n");
    for (k, v) in &r.totals {
        let _ = writeln!(s, "- {k}: {v}");
    }
    if let Some([p50, p90, max]) = r.latency {
        let _ = writeln!(
            s,
            "- approval latency: median {}, 90th percentile {}, longest {}",
            duration(p50),
            duration(p90),
            duration(max)
        );
    }
    let _ = writeln!(s, "\n## Changes per week\n");
    for (week, n) in &r.weekly {
        let _ = writeln!(s, "- week of {week}: {n}");
    }
    let _ = writeln!(s, "\n## Refusals by reason\n");
    for (reason, n) in &r.refusals {
        let _ = writeln!(s, "- {reason}: {n}");
    }
    let _ = writeln!(
        s,
        "\n## Changes\n\n| AgentDeployment | Agent | Spec | Images | Requested by | Approvals | Latency | Outcome | Break-glass | Rollback | Refused |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in &r.changes {
        let _ = writeln!(
            s,
            "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
            md(&c.agent_deployment),
            md(&c.agent),
            md(&c.digest),
            md(&c.images.join(", ")),
            md(&requested_line(c)),
            md(&approvals_line(c)),
            c.approval_latency_seconds.map(duration).unwrap_or_default(),
            md(&c.outcome),
            md(&c
                .break_glass
                .iter()
                .map(|b| format!("{} at {}", b.user, b.at))
                .collect::<Vec<_>>()
                .join("; ")),
            c.rollbacks.len(),
            md(&c
                .refused
                .iter()
                .map(|f| format!(
                    "{} {} ({})",
                    f.user,
                    f.event,
                    f.message.as_deref().unwrap_or("")
                ))
                .collect::<Vec<_>>()
                .join("; ")),
        );
    }
    s
}

/// HTML text: nothing a user wrote can become markup.
fn h(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A horizontal bar chart as inline SVG, with its numbers written on the bars.
fn bars(title: &str, id: &str, rows: &[(String, usize)]) -> String {
    let max = rows.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let height = rows.len().saturating_mul(26).saturating_add(30);
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg id=\"{id}\" role=\"img\" aria-label=\"{}\" width=\"560\" height=\"{height}\" viewBox=\"0 0 560 {height}\">",
        h(title),
        h(title)
    );
    for (i, (label, n)) in rows.iter().enumerate() {
        let y = i.saturating_mul(26).saturating_add(10);
        let w = n.saturating_mul(300).checked_div(max).unwrap_or(0);
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" class=\"label\">{}</text><rect class=\"bar\" x=\"200\" y=\"{y}\" width=\"{}\" height=\"18\" data-value=\"{n}\"></rect><text x=\"{}\" y=\"{}\" class=\"value\">{n}</text>",
            y.saturating_add(14),
            h(label),
            w.max(1),
            w.saturating_add(206),
            y.saturating_add(14),
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// The report as one self-contained HTML page (no scripts, no outside resources).
pub fn html(r: &Report) -> String {
    let mut s = String::new();
    let title = title(r);
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\"><title>{}</title><style>\
body{{font-family:system-ui,sans-serif;margin:2rem;color:#1b1f24}}\
.ok{{background:#e6f4ea;border-left:6px solid #1e8e3e;padding:.6rem 1rem}}\
.bad{{background:#fce8e6;border-left:6px solid #d93025;padding:.6rem 1rem}}\
.cards{{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}}\
.card{{border:1px solid #d0d7de;border-radius:8px;padding:.6rem 1rem;min-width:8rem}}\
.card b{{display:block;font-size:1.6rem}}\
.charts{{display:flex;gap:2rem;flex-wrap:wrap}}\
.bar{{fill:#4c6ef5}} .label,.value{{font-size:12px}}\
table{{border-collapse:collapse;width:100%;font-size:13px}}\
th,td{{border:1px solid #d0d7de;padding:4px 6px;text-align:left;vertical-align:top}}\
th{{background:#f6f8fa}} code{{font-size:11px;word-break:break-all}}\
</style></head><body><h1>{}</h1>",
        h(&title),
        h(&title)
    );
    let _ = write!(
        s,
        "<p id=\"verification\" class=\"{}\"><strong>Audit log:</strong> {}</p>",
        if r.intact { "ok" } else { "bad" },
        h(&r.verification)
    );
    s.push_str("<div class=\"cards\" id=\"totals\">");
    for (k, v) in &r.totals {
        let _ = write!(s, "<div class=\"card\"><b>{v}</b>{}</div>", h(k));
    }
    if let Some([p50, p90, max]) = r.latency {
        let _ = write!(
            s,
            "<div class=\"card\"><b>{}</b>median approval latency (90th {}, longest {})</div>",
            duration(p50),
            duration(p90),
            duration(max)
        );
    }
    s.push_str("</div><div class=\"charts\">");
    let weekly: Vec<(String, usize)> = r
        .weekly
        .iter()
        .map(|(w, n)| (format!("week of {w}"), *n))
        .collect();
    s.push_str(&bars("Changes per week", "weekly", &weekly));
    let mut buckets: Vec<(String, usize)> = [
        ("under 5 min", 0, 300),
        ("5 min to 1 h", 300, 3600),
        ("1 h to 8 h", 3600, 28_800),
        ("8 h and more", 28_800, i64::MAX),
    ]
    .iter()
    .map(|(label, _, _)| ((*label).to_owned(), 0))
    .collect();
    for c in &r.changes {
        if let Some(l) = c.approval_latency_seconds {
            let i = match l {
                l if l < 300 => 0,
                l if l < 3600 => 1,
                l if l < 28_800 => 2,
                _ => 3,
            };
            if let Some(b) = buckets.get_mut(i) {
                b.1 = b.1.saturating_add(1);
            }
        }
    }
    s.push_str(&bars("Approval latency", "latency", &buckets));
    let refusals: Vec<(String, usize)> = r.refusals.iter().map(|(k, v)| (k.clone(), *v)).collect();
    s.push_str(&bars("Refusals by reason", "refusals", &refusals));
    s.push_str("</div><h2>Changes</h2><table id=\"changes\"><thead><tr><th>AgentDeployment</th><th>Agent</th><th>Spec and images</th><th>Requested by</th><th>Approvals</th><th>Latency</th><th>Phases</th><th>Break-glass</th><th>Rollbacks</th><th>Refused attempts</th></tr></thead><tbody>");
    for c in &r.changes {
        let events = |list: &[Event]| {
            list.iter()
                .map(|e| {
                    format!(
                        "{} {} {} at {}{}",
                        h(&e.user),
                        h(&e.event),
                        h(&e.status),
                        h(&e.at),
                        e.message
                            .as_deref()
                            .map(|m| format!(": {}", h(m)))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code><br>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            h(&c.agent_deployment),
            h(&c.agent),
            h(&c.digest),
            h(&c.images.join(", ")),
            h(&requested_line(c)),
            h(&approvals_line(c)),
            c.approval_latency_seconds.map(duration).unwrap_or_default(),
            h(&c.phases.join(" → ")),
            events(&c.break_glass),
            events(&c.rollbacks),
            events(&c.refused),
        );
    }
    s.push_str("</tbody></table></body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Draft, append};
    use serde_json::json;

    struct Log(Vec<Entry>);

    impl Log {
        #[allow(clippy::too_many_arguments)]
        fn add(
            &mut self,
            event: EventType,
            user: &str,
            kind: &str,
            resource: &str,
            operation: &str,
            status: &str,
            at: &str,
            metadata: serde_json::Value,
        ) {
            let mut d = Draft::new(event, user, operation, resource, kind, status);
            d.timestamp = at.into();
            d.environment = Some("production".into());
            d.agents = vec!["GHA".into()];
            d.auth_method = "kubernetes".into();
            d.metadata = metadata;
            d.idempotency_key = if operation.starts_with(char::is_uppercase) {
                format!("phase/{operation}/{}", self.0.len())
            } else {
                format!("k{}", self.0.len())
            };
            let e = append(self.0.last().map(Entry::link).as_ref(), d).unwrap();
            self.0.push(e);
        }
    }

    fn log() -> Log {
        let ad = "AgentDeployment";
        let apr = "ApprovalRequest";
        let d = json!({"digest": "sha256:one", "generation": 1});
        let mut l = Log(vec![]);
        l.add(
            EventType::PolicyEvaluated,
            "ops",
            ad,
            "team/gha",
            "PendingApproval",
            "success",
            "2026-11-02T09:00:00Z",
            d.clone(),
        );
        l.add(
            EventType::ApprovalRequested,
            "ops",
            ad,
            "team/gha",
            "request approval",
            "pending",
            "2026-11-02T09:00:00Z",
            json!({"digest": "sha256:one", "generation": 1,
                   "justification": "fix CVE-1, see www.evil.example *now*"}),
        );
        l.add(
            EventType::PermissionDenied,
            "eve",
            apr,
            "team/gha-g1",
            "act",
            "denied",
            "2026-11-02T09:05:00Z",
            json!({"specDigest": "sha256:one", "deployment": "gha", "generation": 1}),
        );
        l.add(
            EventType::ApprovalGranted,
            "rosa",
            apr,
            "team/gha-g1",
            "approval_recorded",
            "approval_recorded",
            "2026-11-02T09:30:00Z",
            json!({"specDigest": "sha256:one", "deployment": "gha", "generation": 1, "via": "http", "mfa": true, "comment": "looks good"}),
        );
        l.add(
            EventType::ApprovalGranted,
            crate::audit::OPERATOR,
            apr,
            "team/gha-g1",
            "approved",
            "approved",
            "2026-11-02T09:30:00Z",
            json!({"digest": "sha256:one", "deployment": "gha", "generation": 1}),
        );
        l.add(
            EventType::DeploymentStarted,
            "ops",
            ad,
            "team/gha",
            "roll out",
            "success",
            "2026-11-02T09:31:00Z",
            json!({"digest": "sha256:one", "generation": 1, "images": ["gha:1"]}),
        );
        l.add(
            EventType::DeploymentCompleted,
            "ops",
            ad,
            "team/gha",
            "Deployed",
            "success",
            "2026-11-02T09:32:00Z",
            d,
        );
        // Another change, a week later, by break-glass, with hostile text.
        let two = json!({"digest": "sha256:two", "generation": 2});
        l.add(
            EventType::BreakGlassUsed,
            "alice",
            ad,
            "team/gha",
            "break_glass",
            "success",
            "2026-11-10T03:00:00Z",
            json!({"digest": "sha256:two", "generation": 2, "reason": "INC-7 outage"}),
        );
        l.add(
            EventType::DeploymentCompleted,
            "<script>x</script>",
            ad,
            "team/gha",
            "Deployed",
            "success",
            "2026-11-10T03:01:00Z",
            two,
        );
        l
    }

    fn report(since: Option<&str>) -> Report {
        let l = log();
        let entries: Vec<&Entry> = l.0.iter().collect();
        build(
            &entries,
            since.map(|s| s.parse().unwrap()),
            None,
            &["production".to_owned()],
            &[],
            (true, "chain intact".into()),
        )
    }

    #[test]
    fn each_change_tells_who_asked_who_approved_and_how_it_ended() {
        let r = report(None);
        assert_eq!(r.changes.len(), 2);
        let one = &r.changes[0];
        assert_eq!(one.requester.as_deref(), Some("ops"));
        assert_eq!(one.approvals.len(), 1);
        assert_eq!(
            (one.approvals[0].via.as_str(), one.approvals[0].mfa),
            ("http", true)
        );
        assert_eq!(one.approval_latency_seconds, Some(1800));
        assert_eq!(one.images, ["gha:1"]);
        assert_eq!(one.phases, ["PendingApproval", "Deployed"]);
        assert_eq!(one.refused.len(), 1, "eve's refused act");
        assert_eq!(
            one.justification.as_deref(),
            Some("fix CVE-1, see www.evil.example *now*")
        );
        assert_eq!(one.approvals[0].comment.as_deref(), Some("looks good"));
        let two = &r.changes[1];
        assert_eq!(two.break_glass.len(), 1);
        assert_eq!(
            two.requester.as_deref(),
            Some("<script>x</script>"),
            "the requester the API server vouched for, not who used break-glass"
        );
        assert_eq!(two.break_glass[0].user, "alice");
        assert_eq!(two.break_glass[0].message.as_deref(), Some("INC-7 outage"));
        let text = markdown(&r);
        assert!(
            text.contains("ops: fix CVE-1, see www\\.evil.example \\*now\\*"),
            "no autolink, no emphasis: {text}"
        );
        assert_eq!(r.totals["changes"], 2);
        assert_eq!(r.totals["breakGlass"], 1);
        assert_eq!(r.latency, Some([1800, 1800, 1800]));
        assert_eq!(
            r.weekly.keys().collect::<Vec<_>>(),
            ["2026-11-02", "2026-11-09"]
        );
        assert_eq!(r.refusals["permission denied"], 1);
        // The period is that of the changes' first entries.
        let later = report(Some("2026-11-05T00:00:00Z"));
        assert_eq!(later.changes.len(), 1);
        assert_eq!(later.changes[0].digest, "sha256:two");
    }

    #[test]
    fn a_spec_gone_back_to_is_a_new_change_and_outcomes_count_once() {
        let mut l = log();
        let back = json!({"digest": "sha256:one", "generation": 3});
        l.add(
            EventType::PolicyEvaluated,
            "ops",
            "AgentDeployment",
            "team/gha",
            "PendingApproval",
            "success",
            "2026-11-20T09:00:00Z",
            back.clone(),
        );
        l.add(
            EventType::ApprovalDenied,
            "ops",
            "AgentDeployment",
            "team/gha",
            "ApprovalExpired",
            "expired",
            "2026-11-21T09:00:00Z",
            back,
        );
        l.add(
            EventType::ApprovalDenied,
            crate::audit::OPERATOR,
            "ApprovalRequest",
            "team/gha-g3",
            "expired",
            "expired",
            "2026-11-21T09:00:00Z",
            json!({"digest": "sha256:one", "deployment": "gha", "generation": 3}),
        );
        let entries: Vec<&Entry> = l.0.iter().collect();
        let r = build(
            &entries,
            None,
            None,
            &["production".to_owned()],
            &[],
            (true, String::new()),
        );
        assert_eq!(r.changes.len(), 3, "{:?}", r.changes);
        let back = &r.changes[2];
        assert_eq!((back.generation, back.digest.as_str()), (3, "sha256:one"));
        assert_eq!(back.outcome, "ApprovalExpired");
        assert!(
            back.approvals.is_empty(),
            "generation 1's approvals stay with it"
        );
        assert_eq!(r.changes[0].approval_latency_seconds, Some(1800));
        assert_eq!(r.refusals["approval expired"], 1, "counted once");
        // A change still held when a newer generation came was superseded.
        let mut l2 = Log(l.0.clone());
        for (generation, at) in [(5, "2026-11-22T09:00:00Z"), (6, "2026-11-22T10:00:00Z")] {
            l2.add(
                EventType::PolicyEvaluated,
                "ops",
                "AgentDeployment",
                "team/gha",
                "PendingApproval",
                "success",
                at,
                json!({"digest": format!("sha256:g{generation}"), "generation": generation}),
            );
        }
        let entries2: Vec<&Entry> = l2.0.iter().collect();
        let r2 = build(
            &entries2,
            None,
            None,
            &["production".to_owned()],
            &[],
            (true, String::new()),
        );
        let outcomes: Vec<(i64, &str)> = r2
            .changes
            .iter()
            .map(|c| (c.generation, c.outcome.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            [
                (1, "Deployed"),
                (2, "Deployed"),
                (3, "ApprovalExpired"),
                (5, "Superseded"),
                (6, "PendingApproval")
            ]
        );
        // A week without changes shows as one.
        let without_second: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.draft.metadata.get("generation") != Some(&json!(2)))
            .collect();
        let gap = build(
            &without_second,
            None,
            None,
            &["production".to_owned()],
            &[],
            (true, String::new()),
        );
        assert_eq!(
            gap.weekly.into_iter().collect::<Vec<_>>(),
            [
                ("2026-11-02".to_owned(), 1),
                ("2026-11-09".to_owned(), 0),
                ("2026-11-16".to_owned(), 1)
            ]
        );
        // Since the revert, only the revert.
        let later = build(
            &entries,
            Some("2026-11-15T00:00:00Z".parse().unwrap()),
            None,
            &["production".to_owned()],
            &[],
            (true, String::new()),
        );
        assert_eq!(later.changes.len(), 1);
        assert_eq!(later.changes[0].generation, 3);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[10, 20], 50), 10);
        let ten: Vec<i64> = (1..=10).collect();
        assert_eq!(
            (
                percentile(&ten, 50),
                percentile(&ten, 90),
                percentile(&ten, 100)
            ),
            (5, 9, 10)
        );
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn renderings_keep_user_text_as_text() {
        let r = report(None);
        let page = html(&r);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(
            !page.contains("src=") && !page.contains("href="),
            "self-contained"
        );
        let mut piped = r.clone();
        piped.changes[0].agent = "a|b\nc".into();
        piped.changes[0].digest =
            "<img src=x onerror=alert(1)> [x](javascript:y) ![t](https://t)".into();
        let text = markdown(&piped);
        assert!(text.contains("| a\\|b c |"), "{text}");
        assert!(text.contains("https\\://t"), "no autolink: {text}");
        assert!(!text.contains("<img") && !text.contains("[x]("), "{text}");
        assert!(
            text.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{text}"
        );
        assert!(page.contains("Content-Security-Policy"));
    }
}
