//! A [`Message`] as each channel takes it: a Slack Block Kit message, a Teams Adaptive Card (as
//! a Workflows webhook expects it), a plain-text mail, or JSON for a generic webhook.
//!
//! Everything in a message can come from a user (names, reasons, justifications): it is written
//! as text, never as markup, so it cannot add a link, a mention or a header.

use serde_json::{Value, json};

use super::{Message, Severity};
use crate::audit::Entry;

/// At most this many characters of any one value.
const MAX_VALUE: usize = 1000;

fn cut(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .collect();
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
    }
    out
}

/// Slack's escaping of `&`, `<` and `>` (which would otherwise open links and mentions).
fn slack_text(s: &str) -> String {
    cut(s, MAX_VALUE)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Link brackets written literally (Teams renders a subset of Markdown in cards, links among
/// it; bold or a list in a reason is harmless, a link is not).
fn card_text(s: &str) -> String {
    let mut out = String::new();
    for c in cut(s, MAX_VALUE).chars() {
        if "\\[]".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One line of user text: newlines folded, so a value cannot fake a line of its own.
fn line(s: &str) -> String {
    cut(s, MAX_VALUE).replace('\n', " ")
}

/// A Slack incoming-webhook payload (Block Kit), with `text` as the notification fallback.
/// Values are plain text (Slack reads no links, mentions or formatting in them); only the
/// commands, made of Kubernetes names, are mrkdwn (a code block).
pub fn slack(m: &Message) -> Value {
    let emoji = match m.kind.severity() {
        Severity::Info => ":white_check_mark:",
        Severity::Notice => ":information_source:",
        Severity::Warning => ":warning:",
        Severity::Critical => ":rotating_light:",
    };
    let plain = |text: String| json!({"type": "plain_text", "text": text, "emoji": false});
    let fields: Vec<Value> = m
        .facts
        .iter()
        .take(10)
        .map(|(k, v)| plain(format!("{k}\n{}", line(v))))
        .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&format!("{emoji} {}", line(&m.title)), 150), "emoji": true}}),
        json!({"type": "section", "fields": fields}),
    ];
    if !m.why.is_empty() {
        let why: Vec<String> = m
            .why
            .iter()
            .take(10)
            .map(|w| format!("• {}", line(w)))
            .collect();
        blocks.push(json!({"type": "section", "text": plain(cut(&why.join("\n"), 2900))}));
    }
    if !m.commands.is_empty() {
        let commands: Vec<String> = m.commands.iter().map(|c| slack_text(c)).collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "verbatim": true, "text": format!("```{}```", commands.join("\n"))}}));
    }
    blocks.push(json!({"type": "context", "elements": [plain(format!("dvo-operator · delivery {}", m.key))]}));
    json!({"text": slack_text(&line(&m.title)), "blocks": blocks})
}

/// A Teams message with one Adaptive Card, as the "When a Teams webhook request is received"
/// workflow posts it to a channel.
pub fn teams(m: &Message) -> Value {
    let color = match m.kind.severity() {
        Severity::Info => "Good",
        Severity::Notice => "Accent",
        Severity::Warning => "Warning",
        Severity::Critical => "Attention",
    };
    let facts: Vec<Value> = m
        .facts
        .iter()
        .map(|(k, v)| json!({"title": k, "value": card_text(&line(v))}))
        .collect();
    let mut body = vec![
        json!({"type": "TextBlock", "text": card_text(&m.title), "weight": "Bolder", "size": "Medium", "color": color, "wrap": true}),
        json!({"type": "FactSet", "facts": facts}),
    ];
    for w in m.why.iter().take(10) {
        body.push(
            json!({"type": "TextBlock", "text": card_text(w), "wrap": true, "spacing": "Small"}),
        );
    }
    for c in &m.commands {
        body.push(json!({"type": "TextBlock", "text": card_text(c), "fontType": "Monospace", "wrap": true, "spacing": "Small"}));
    }
    body.push(json!({"type": "TextBlock", "text": card_text(&format!("dvo-operator · delivery {}", m.key)), "isSubtle": true, "size": "Small", "wrap": true}));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": {"width": "Full"},
                "body": body,
            },
        }],
    })
}

/// A mail's subject and plain-text body.
pub fn mail(m: &Message) -> (String, String) {
    let subject = cut(&m.title, 200).replace('\n', " ");
    let mut body = format!("{subject}\n\n");
    for (k, v) in &m.facts {
        body.push_str(&format!("{k}: {}\n", cut(v, MAX_VALUE).replace('\n', " ")));
    }
    if !m.why.is_empty() {
        body.push_str("\nWhy:\n");
        for w in m.why.iter().take(20) {
            body.push_str(&format!("  - {}\n", cut(w, MAX_VALUE).replace('\n', " ")));
        }
    }
    if !m.commands.is_empty() {
        body.push_str("\nTo act on it:\n");
        for c in &m.commands {
            body.push_str(&format!("  {c}\n"));
        }
    }
    body.push_str(&format!("\n-- \ndvo-operator, delivery {}\n", m.key));
    (subject, body)
}

/// What a generic webhook receives: the message and the audit entry it comes from.
pub fn webhook(m: &Message, entry: &Entry) -> Value {
    json!({
        "kind": m.kind,
        "title": m.title,
        "facts": m.facts.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "why": m.why,
        "commands": m.commands,
        "delivery": m.key,
        "entry": entry,
    })
}
