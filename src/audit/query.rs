//! Questions asked of the audit log: which entries match a filter (time range, user, event type,
//! environment, namespace, agent, outcome, severity), and their rendering as a table, JSON,
//! JSON lines or CSV. Pure: the entries come from the cluster or an export.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::sink::format::severity;
use super::{Entry, EventType};

/// What to keep. Every field narrows; an empty list or `None` keeps everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
    /// Actors (`user_id`), exactly.
    pub users: Vec<String>,
    /// Event types.
    pub events: Vec<EventType>,
    /// Environments.
    pub environments: Vec<String>,
    /// Namespaces of the objects the entries are about.
    pub namespaces: Vec<String>,
    /// Agents.
    pub agents: Vec<String>,
    /// Outcomes (`status`: success, failure, denied, blocked, approved, ...).
    pub outcomes: Vec<String>,
    /// The lowest severity kept (0-10, as CEF and the sinks give it).
    pub min_severity: Option<u8>,
}

/// The namespace of the object an entry is about, when it is a namespaced object of ours or
/// of its workload (`namespace/name`); or the namespace named in an HTTP API call.
pub fn namespace(entry: &Entry) -> Option<&str> {
    let d = &entry.draft;
    match d.resource_type.as_str() {
        "AgentDeployment" | "ApprovalRequest" | "Deployment" | "Job" => {
            d.resource.split_once('/').map(|(ns, _)| ns)
        }
        "HttpApi" => d
            .resource
            .split_once(" /v1/approvals/")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(ns, _)| ns)
            .filter(|ns| !ns.contains('?')),
        _ => None,
    }
}

/// An RFC 3339 time in UTC, when it reads as one.
pub fn rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The entry's time, when it can be read (entries written by the operator always can).
pub fn time(entry: &Entry) -> Option<DateTime<Utc>> {
    rfc3339(&entry.draft.timestamp)
}

impl Filter {
    /// Whether `entry` is kept. An entry whose time cannot be read is kept only when no time
    /// range is asked for.
    pub fn matches(&self, entry: &Entry) -> bool {
        let d = &entry.draft;
        let any =
            |wanted: &[String], value: &str| wanted.is_empty() || wanted.iter().any(|w| w == value);
        if !(any(&self.users, &d.user_id)
            && (self.events.is_empty() || self.events.contains(&d.event_type))
            && any(&self.outcomes, &d.status)
            && (self.environments.is_empty()
                || d.environment
                    .as_ref()
                    .is_some_and(|e| self.environments.contains(e)))
            && (self.agents.is_empty() || d.agents.iter().any(|a| self.agents.contains(a)))
            && (self.namespaces.is_empty()
                || namespace(entry).is_some_and(|ns| self.namespaces.iter().any(|n| n == ns)))
            && self.min_severity.is_none_or(|min| severity(entry) >= min))
        {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        time(entry)
            .is_some_and(|t| self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u))
    }
}

/// The columns of the table and CSV renderings.
const COLUMNS: [&str; 12] = [
    "seq",
    "timestamp",
    "event",
    "severity",
    "user",
    "roles",
    "auth",
    "resource",
    "environment",
    "agents",
    "outcome",
    "message",
];

fn row(e: &Entry) -> [String; 12] {
    let d = &e.draft;
    [
        e.seq.to_string(),
        d.timestamp.clone(),
        d.event_type.as_str().to_owned(),
        severity(e).to_string(),
        d.user_id.clone(),
        d.user_roles.join(" "),
        d.auth_method.clone(),
        d.resource.clone(),
        d.environment.clone().unwrap_or_default(),
        d.agents.join(" "),
        d.status.clone(),
        d.error_message.clone().unwrap_or_default(),
    ]
}

/// One CSV field (RFC 4180 quoting); a field a spreadsheet would run as a formula (`=`, `+`,
/// `-`, `@`, tab, carriage return first) is prefixed with `'`.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The entries as CSV, with a header line.
pub fn csv(entries: &[&Entry]) -> String {
    let mut out = COLUMNS.join(",") + "\n";
    for e in entries {
        let fields: Vec<String> = row(e).iter().map(|f| csv_field(f)).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// The entries as an aligned table for people: one line each, fields cut to fit, control
/// characters shown as spaces.
pub fn table(entries: &[&Entry]) -> String {
    const WIDTH: [usize; 12] = [7, 20, 22, 8, 24, 16, 10, 40, 12, 12, 12, 60];
    let clean = |s: &str, w: usize| -> String {
        let s: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if s.chars().count() > w {
            let kept: String = s.chars().take(w.saturating_sub(1)).collect();
            format!("{kept}…")
        } else {
            s
        }
    };
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(WIDTH)
            .map(|(c, w)| format!("{:<w$}", clean(c, w)))
            .collect();
        let _ = writeln!(out, "{}", parts.join(" ").trim_end());
    };
    line(&COLUMNS.map(|c| c.to_uppercase()));
    for e in entries {
        line(&row(e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Draft, append};

    fn entry(
        seq_before: Option<&Entry>,
        event: EventType,
        user: &str,
        resource: &str,
        kind: &str,
        status: &str,
        at: &str,
    ) -> Entry {
        let mut d = Draft::new(event, user, "op", resource, kind, status);
        d.timestamp = at.into();
        d.environment = Some(
            if resource.contains("stage") {
                "staging"
            } else {
                "production"
            }
            .into(),
        );
        d.agents = vec!["GHA".into()];
        d.idempotency_key = format!("{user}/{at}/{status}");
        append(seq_before.map(Entry::link).as_ref(), d).unwrap()
    }

    fn log() -> Vec<Entry> {
        let rows = [
            (
                EventType::ApprovalGranted,
                "rosa",
                "prod-a/gha-g1",
                "ApprovalRequest",
                "approval_recorded",
                "2026-01-10T10:00:00Z",
            ),
            (
                EventType::BreakGlassUsed,
                "alice",
                "prod-a/gha",
                "AgentDeployment",
                "success",
                "2026-02-01T03:00:00Z",
            ),
            (
                EventType::PermissionDenied,
                "dana",
                "stage-b/gha",
                "AgentDeployment",
                "denied",
                "2026-02-02T09:00:00Z",
            ),
            (
                EventType::AuthFailure,
                "(anonymous)",
                "GET /v1/approvals/prod-a/gha-g1",
                "HttpApi",
                "denied",
                "2026-03-01T00:00:00Z",
            ),
            (
                EventType::DeploymentCompleted,
                "system:dvo-operator",
                "prod-a/gha",
                "AgentDeployment",
                "success",
                "not a time",
            ),
        ];
        let mut out: Vec<Entry> = vec![];
        for (event, user, resource, kind, status, at) in rows {
            let e = entry(out.last(), event, user, resource, kind, status, at);
            out.push(e);
        }
        out
    }

    fn seqs(f: &Filter) -> Vec<u64> {
        log()
            .iter()
            .filter(|e| f.matches(e))
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn filters_narrow_by_every_field() {
        let t = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        let cases: Vec<(Filter, Vec<u64>)> = vec![
            (Filter::default(), vec![1, 2, 3, 4, 5]),
            (
                Filter {
                    since: t("2026-02-01T03:00:00Z"),
                    ..Default::default()
                },
                vec![2, 3, 4],
            ),
            (
                Filter {
                    until: t("2026-02-01T03:00:00Z"),
                    ..Default::default()
                },
                vec![1],
            ),
            (
                Filter {
                    users: vec!["dana".into(), "rosa".into()],
                    ..Default::default()
                },
                vec![1, 3],
            ),
            (
                Filter {
                    events: vec![EventType::BreakGlassUsed],
                    ..Default::default()
                },
                vec![2],
            ),
            (
                Filter {
                    environments: vec!["staging".into()],
                    ..Default::default()
                },
                vec![3],
            ),
            (
                Filter {
                    namespaces: vec!["prod-a".into()],
                    ..Default::default()
                },
                vec![1, 2, 4, 5],
            ),
            (
                Filter {
                    agents: vec!["other".into()],
                    ..Default::default()
                },
                vec![],
            ),
            (
                Filter {
                    outcomes: vec!["denied".into()],
                    ..Default::default()
                },
                vec![3, 4],
            ),
            (
                Filter {
                    min_severity: Some(7),
                    ..Default::default()
                },
                vec![2, 3, 4],
            ),
            (
                Filter {
                    min_severity: Some(10),
                    ..Default::default()
                },
                vec![2],
            ),
            (
                Filter {
                    namespaces: vec!["prod-a".into()],
                    outcomes: vec!["success".into()],
                    since: t("2026-01-01T00:00:00Z"),
                    ..Default::default()
                },
                vec![2],
            ),
        ];
        for (f, want) in cases {
            assert_eq!(seqs(&f), want, "{f:?}");
        }
    }

    #[test]
    fn event_names_are_those_entries_carry() {
        for e in EventType::ALL {
            assert_eq!(crate::json::to_value(&e), serde_json::json!(e.as_str()));
            assert_eq!(EventType::named(e.as_str()), Some(e));
        }
        assert_eq!(EventType::named("approved_by_magic"), None);
    }

    #[test]
    fn a_cut_field_keeps_its_first_characters_whatever_their_width() {
        let mut e = log().remove(0);
        e.draft.user_id = "ü".repeat(40);
        let t = table(&[&e]);
        assert!(t.contains(&format!("{}…", "ü".repeat(23))), "{t}");
    }

    #[test]
    fn csv_quotes_and_defuses_formulas_and_the_table_stays_on_one_line() {
        let mut e = log().remove(2);
        e.draft.error_message = Some("=HYPERLINK(\"x\"),\nsecond line".into());
        let text = csv(&[&e]);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(COLUMNS.join(",").as_str()));
        assert!(
            text.ends_with(",denied,\"'=HYPERLINK(\"\"x\"\"),\nsecond line\"\n"),
            "{text}"
        );
        let table = table(&[&e]);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(table.contains("=HYPERLINK(\"x\"), second line"), "{table}");
    }
}
