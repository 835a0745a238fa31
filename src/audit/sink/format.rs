//! What sinks send: CEF (with the header and extension escaping of the CEF rules), JSON, and the
//! RFC 5424 syslog frame with octet counting. Pure.

use crate::audit::{Entry, EventType};

/// CEF severity 0-10, from the seed's rules; break-glass is always the highest.
pub fn severity(entry: &Entry) -> u8 {
    let d = &entry.draft;
    let event = d.event_type.as_str();
    if d.event_type == EventType::BreakGlassUsed {
        10
    } else if d.status.contains("failure")
        || d.status.contains("denied")
        || d.status.contains("rejected")
    {
        7
    } else if d.status.contains("blocked") || event.contains("violation") {
        5
    } else if d.status.contains("degraded") {
        3
    } else {
        1
    }
}

fn header(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\r', '\n'], " ")
}

fn extension(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// The entry as a CEF line: `CEF:0|KesselDigital|CAAT-DVO|1.0|<event type>|<operation>|<severity>|<extension>`,
/// with the seed's `cs1` (environment) and `cs2` (platform) labels and the chain position.
pub fn cef(entry: &Entry) -> String {
    let d = &entry.draft;
    let event = d.event_type.as_str();
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", d.timestamp.clone()),
        (
            "suser",
            d.user_email.clone().unwrap_or_else(|| d.user_id.clone()),
        ),
        ("outcome", d.status.clone()),
    ];
    if let Some(ip) = &d.ip_address {
        ext.push(("src", ip.clone()));
    }
    if let Some(reason) = &d.error_message {
        ext.push(("reason", reason.clone()));
    }
    ext.push(("cs1", d.environment.clone().unwrap_or_default()));
    ext.push(("cs1Label", "Environment".into()));
    ext.push(("cs2", d.platform.clone().unwrap_or_default()));
    ext.push(("cs2Label", "Platform".into()));
    ext.push(("cs3", d.resource.clone()));
    ext.push(("cs3Label", "Resource".into()));
    ext.push(("cn1", entry.seq.to_string()));
    ext.push(("cn1Label", "Seq".into()));
    ext.push(("cs4", entry.entry_hash.clone()));
    ext.push(("cs4Label", "EntryHash".into()));
    let ext: Vec<String> = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", extension(&v)))
        .collect();
    format!(
        "CEF:0|KesselDigital|CAAT-DVO|1.0|{}|{}|{}|{}",
        header(event),
        header(&d.operation),
        severity(entry),
        ext.join(" ")
    )
}

/// Payload of a syslog message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// A CEF line.
    Cef,
    /// The entry as JSON.
    Json,
}

/// RFC 5424 severity from CEF severity.
fn syslog_severity(cef: u8) -> u8 {
    match cef {
        9..=10 => 2, // critical
        7..=8 => 3,  // error
        5..=6 => 4,  // warning
        3..=4 => 5,  // notice
        _ => 6,      // informational
    }
}

/// One RFC 5424 message (facility 13, log audit) framed with octet counting (RFC 6587).
pub fn syslog_frame(entry: &Entry, payload: Payload, hostname: &str) -> String {
    let pri = 13 * 8 + u32::from(syslog_severity(severity(entry)));
    let body = match payload {
        Payload::Cef => cef(entry),
        Payload::Json => crate::json::to_string(entry),
    };
    let ts = if entry.draft.timestamp.is_empty() {
        "-"
    } else {
        entry.draft.timestamp.as_str()
    };
    let msg = format!(
        "<{pri}>1 {ts} {hostname} dvo-operator - audit [dvo@32473 seq=\"{}\"] {body}",
        entry.seq
    );
    format!("{} {msg}", msg.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Draft, append};

    fn entry(event: EventType, status: &str) -> Entry {
        let mut d = Draft::new(
            event,
            "rosa|release",
            "approve=now",
            "agents/gha",
            "ApprovalRequest",
            status,
        );
        d.timestamp = "2026-11-24T10:00:00Z".into();
        d.environment = Some("production".into());
        d.platform = Some("langchain".into());
        d.error_message = Some("line one\nline=two \\ end".into());
        append(None, d).unwrap()
    }

    #[test]
    fn severity_follows_the_seed() {
        let table = [
            (EventType::DeploymentFailed, "failure", 7),
            (EventType::PermissionDenied, "denied", 7),
            (EventType::ApprovalDenied, "rejected", 7),
            (EventType::PolicyViolation, "blocked", 5),
            (EventType::PolicyViolation, "success", 5),
            (EventType::CapabilityDegraded, "degraded", 3),
            (EventType::DeploymentCompleted, "success", 1),
            (EventType::BreakGlassUsed, "success", 10),
        ];
        for (event, status, want) in table {
            assert_eq!(severity(&entry(event, status)), want, "{event:?} {status}");
        }
    }

    #[test]
    fn cef_escapes_header_and_extension() {
        let line = cef(&entry(EventType::ApprovalGranted, "success"));
        assert!(line.starts_with("CEF:0|KesselDigital|CAAT-DVO|1.0|approval_granted|approve=now|1|rt=2026-11-24T10:00:00Z "), "{line}");
        assert!(
            line.contains("suser=rosa|release "),
            "a pipe needs no escaping in the extension: {line}"
        );
        assert!(
            line.contains("reason=line one\\nline\\=two \\\\ end "),
            "{line}"
        );
        assert!(
            line.contains("cs1=production cs1Label=Environment cs2=langchain cs2Label=Platform"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let mut e = entry(EventType::ApprovalGranted, "success");
        e.draft.operation = "a|b\\c".into();
        assert!(cef(&e).contains("|a\\|b\\\\c|"), "{}", cef(&e));
    }

    #[test]
    fn syslog_frames_count_octets() {
        let e = entry(EventType::DeploymentFailed, "failure");
        let frame = syslog_frame(&e, Payload::Cef, "op-0");
        let (len, msg) = frame.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(
            msg.starts_with(
                "<107>1 2026-11-24T10:00:00Z op-0 dvo-operator - audit [dvo@32473 seq=\"1\"] CEF:0|"
            ),
            "{msg}"
        );
        let json = syslog_frame(&e, Payload::Json, "op-0");
        let body = json.split_once("] ").unwrap().1;
        assert_eq!(serde_json::from_str::<Entry>(body).unwrap(), e);
    }
}
