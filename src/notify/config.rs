//! The notification settings (`dvo run --notifications FILE`, the chart's `notifications`
//! values): channels, what each takes, and where their secrets are.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::Kind;
use crate::identity::Role;

/// The notification settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Where notifications go, each with its own cursor in the audit log: a channel that is
    /// down holds back nothing but itself.
    #[serde(default)]
    pub channels: Vec<Channel>,
    /// The HTTP API's address as approvers reach it (e.g. `https://dvo.example.com:8443`):
    /// approval notices then give its approve action too.
    #[serde(default)]
    pub api_url: Option<String>,
}

/// One place notifications are delivered to.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Channel {
    /// Lowercase letters, digits and dashes; names its cursor (`dvo-notify-cursor-NAME`) and
    /// the `channel:NAME` recipients of a policy's `notify` lists.
    pub name: String,
    /// How it is reached.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The kinds it takes (default: all but policy-named deliveries, which it takes anyway).
    #[serde(default)]
    pub events: BTreeSet<Kind>,
    /// Only for these environments (default: all).
    #[serde(default)]
    pub environments: BTreeSet<String>,
    /// Only for AgentDeployments in these namespaces (default: all).
    #[serde(default)]
    pub namespaces: BTreeSet<String>,
    /// Approval requests only when a holder of one of these roles may approve them (default:
    /// all requests).
    #[serde(default)]
    pub roles: BTreeSet<Role>,
    /// Mail only: addresses that get everything this channel takes.
    #[serde(default)]
    pub to: Vec<String>,
    /// The HTTP API's address (the settings' `apiUrl`, given to every channel).
    #[serde(skip)]
    pub api_url: Option<String>,
}

/// How a channel is reached. Secrets are named by environment variable (filled from a Secret).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Endpoint {
    /// A Slack incoming webhook (Block Kit message).
    Slack(Hook),
    /// A Microsoft Teams Workflows (Power Automate) webhook (Adaptive Card).
    Teams(Hook),
    /// A generic HTTPS webhook: the notice and its audit entry as JSON, HMAC-signed.
    Webhook(Hook),
    /// E-mail over SMTP.
    Smtp(Smtp),
}

/// A webhook URL and its secret.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    /// The URL itself (for URLs that are no secret).
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the URL (Slack and Teams URLs are secrets).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Generic webhooks: the environment variable holding the HMAC secret of
    /// `X-DVO-Signature`.
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// An SMTP relay.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Smtp {
    /// `host:port`.
    pub server: String,
    /// `starttls` (default; the upgrade is required), `tls` (implicit, port 465), or `none`
    /// (plain text, refused unless the host is a loopback address).
    #[serde(default)]
    pub security: Security,
    /// The sender, e.g. `dvo <dvo@example.com>`.
    pub from: String,
    /// The environment variable holding the user name (no authentication when unset).
    #[serde(default)]
    pub user_env: Option<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM file of the CA that issued the server's certificate (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Addresses of groups of the role mapping (group → address): the members of a group that
    /// may approve are reached through it.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
}

/// Transport security of an SMTP relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// STARTTLS, required.
    #[default]
    Starttls,
    /// Implicit TLS.
    Tls,
    /// None (loopback only).
    None,
}

/// The most channels one operator delivers to.
const MAX_CHANNELS: usize = 32;

impl Config {
    /// Reads and checks the settings: every problem is named, nothing is half-configured.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut config: Config = crate::yaml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        for c in &mut config.channels {
            c.api_url.clone_from(&config.api_url);
        }
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.channels.len() > MAX_CHANNELS {
            return Err(format!("at most {MAX_CHANNELS} channels"));
        }
        if let Some(problem) = self.api_url.as_deref().and_then(url_problem) {
            return Err(format!("apiUrl {problem}"));
        }
        let mut names = BTreeSet::new();
        for c in &self.channels {
            let valid = !c.name.is_empty()
                && c.name.len() <= 40
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
            if !valid {
                return Err(format!(
                    "channel name {:?} must be 1 to 40 lowercase letters, digits and dashes",
                    c.name
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("channel {} is named twice", c.name));
            }
            let problem = match &c.endpoint {
                Endpoint::Slack(h) | Endpoint::Teams(h) | Endpoint::Webhook(h) => {
                    match (&h.url, &h.url_env) {
                        (Some(_), Some(_)) => Some("give url or urlEnv, not both".to_owned()),
                        (None, None) => Some("needs url or urlEnv".to_owned()),
                        (Some(url), None) => url_problem(url),
                        (None, Some(_)) => None,
                    }
                    .or_else(|| {
                        (h.secret_env.is_some() && !matches!(c.endpoint, Endpoint::Webhook(_)))
                            .then(|| "secretEnv applies to webhook channels".to_owned())
                    })
                }
                Endpoint::Smtp(s) => smtp_problem(s),
            };
            if let Some(p) = problem {
                return Err(format!("channel {}: {p}", c.name));
            }
            if !c.to.is_empty() && !matches!(c.endpoint, Endpoint::Smtp(_)) {
                return Err(format!("channel {}: to applies to smtp channels", c.name));
            }
            if let Some(bad) = c.to.iter().find(|a| !is_address(a)) {
                return Err(format!("channel {}: {bad:?} is not a mail address", c.name));
            }
        }
        Ok(())
    }
}

/// What is wrong with a webhook URL: only https://, or http:// to a loopback address.
pub fn url_problem(url: &str) -> Option<String> {
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
    (!url.starts_with("https://") && !loopback.iter().any(|p| url.starts_with(p)))
        .then(|| format!("{url:?}: only https:// (http:// only to a loopback address)"))
}

fn smtp_problem(s: &Smtp) -> Option<String> {
    let host = s.server.rsplit_once(':').map(|(h, _)| h);
    let port_ok = s
        .server
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    if !port_ok {
        return Some(format!("server {:?} must be host:port", s.server));
    }
    if s.security == Security::None && !matches!(host, Some("127.0.0.1" | "localhost" | "[::1]")) {
        return Some("security none is allowed only to a loopback address".into());
    }
    if s.user_env.is_some() != s.password_env.is_some() {
        return Some("userEnv and passwordEnv go together".into());
    }
    if !is_address(mailbox_address(&s.from)) {
        return Some(format!("from {:?} is not a mail address", s.from));
    }
    s.groups
        .iter()
        .find(|(_, a)| !is_address(a))
        .map(|(g, a)| format!("group {g}: {a:?} is not a mail address"))
}

/// The address of `Name <address>`, or the text itself.
pub fn mailbox_address(text: &str) -> &str {
    match (text.rfind('<'), text.strip_suffix('>')) {
        (Some(at), Some(rest)) => rest.get(at.saturating_add(1)..).unwrap_or(text),
        _ => text,
    }
}

/// Whether `text` reads as one plain mail address, as lettre (which sends it) reads one, with
/// a dotted domain.
pub fn is_address(text: &str) -> bool {
    text.len() <= 254
        && text
            .parse::<lettre::Address>()
            .is_ok_and(|a| a.domain().contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_a_clear_message() {
        let ok = "channels:
- {name: rm, teams: {urlEnv: T}, events: [approvalRequested], roles: [release_manager]}
- {name: sec, slack: {url: 'https://hooks.slack.com/x'}, events: [breakGlassUsed]}
- {name: hook, webhook: {url: 'http://127.0.0.1:9/x', secretEnv: S}}
- {name: mail, smtp: {server: 'mail.example.com:587', from: 'dvo <dvo@example.com>', userEnv: U, passwordEnv: P, groups: {rm: rm@example.com}}, to: [ops@example.com]}
";
        let c = Config::parse(ok).unwrap();
        assert_eq!(c.channels.len(), 4);
        assert_eq!(c.channels[0].roles, [Role::ReleaseManager].into());
        let cases = [
            ("channels: [{name: Bad, slack: {urlEnv: X}}]", "lowercase"),
            (
                "channels: [{name: a, slack: {urlEnv: X}}, {name: a, teams: {urlEnv: Z2}}]",
                "named twice",
            ),
            ("channels: [{name: a, slack: {}}]", "needs url or urlEnv"),
            (
                "channels: [{name: a, slack: {url: 'https://x', urlEnv: X}}]",
                "not both",
            ),
            (
                "channels: [{name: a, slack: {url: 'http://hooks.example.com/x'}}]",
                "only https",
            ),
            (
                "channels: [{name: a, slack: {urlEnv: X, secretEnv: S}}]",
                "secretEnv applies",
            ),
            (
                "channels: [{name: a, slack: {urlEnv: X}, to: [a@b.c]}]",
                "to applies",
            ),
            (
                "channels: [{name: a, smtp: {server: mail, from: a@b.c}}]",
                "host:port",
            ),
            (
                "channels: [{name: a, smtp: {server: 'mail.example.com:25', security: none, from: a@b.c}}]",
                "loopback",
            ),
            (
                "channels: [{name: a, smtp: {server: 'm:25', from: a@b.c, userEnv: U}}]",
                "go together",
            ),
            (
                "channels: [{name: a, smtp: {server: 'm:25', from: nobody}}]",
                "not a mail address",
            ),
            (
                "channels: [{name: a, smtp: {server: 'm:25', from: a@b.c}, to: ['x y@b.c']}]",
                "not a mail address",
            ),
            (
                "channels: [{name: a, smtp: {server: 'm:25', from: a@b.c, groups: {g: 'x'}}}]",
                "group g",
            ),
            ("channels: [{name: a, pager: {url: x}}]", "pager"),
            (
                "channels: [{name: a, slack: {urlEnv: X}, events: [everything]}]",
                "everything",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn addresses() {
        for a in ["a@b.co", "first.last+tag@sub.example.com"] {
            assert!(is_address(a), "{a}");
        }
        for a in [
            "",
            "a",
            "@b.c",
            "a@b",
            "a@.b",
            "a@b.",
            "a b@c.d",
            "a@b.c>",
            "a@b@c.d",
            "a@b..c",
            "a\r\n@b.c",
        ] {
            assert!(!is_address(a), "{a:?}");
        }
        assert_eq!(mailbox_address("dvo <dvo@example.com>"), "dvo@example.com");
        assert_eq!(mailbox_address("dvo@example.com"), "dvo@example.com");
    }
}
