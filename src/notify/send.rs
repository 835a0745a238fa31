//! The shell of notifications: a channel as an [`Outbox`] of the audit log. Each entry that
//! makes a message for the channel ends a batch, so the cursor is stored right after each
//! message is acknowledged: a restart repeats nothing that was acknowledged and loses nothing
//! that was not. A message carries its delivery key (`X-DVO-Delivery`, the mail's Message-ID)
//! so a receiver can drop the one repeat a crash between acknowledgement and cursor can cause.

use std::sync::Arc;

use futures::future::BoxFuture;
use lettre::AsyncTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};

use super::config::{Channel, Endpoint, Security};
use super::{Message, message, notice, render};
use crate::audit::Entry;
use crate::audit::sink::{Failure, Outbox, Promise, http};
use crate::identity::RoleMapping;

/// The role mapping in force now (approvers are looked up when a request is announced), or why
/// there is none yet.
pub type Mapping = Arc<dyn Fn() -> Result<RoleMapping, String> + Send + Sync>;

/// Where a channel's messages go, with its secrets read.
enum Target {
    Slack(String),
    Teams(String),
    Webhook {
        url: String,
        secret: Option<String>,
    },
    Smtp {
        transport: Box<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
        from: lettre::message::Mailbox,
    },
}

/// A notification channel fed from the audit log.
pub struct Notifier {
    channel: Channel,
    target: Target,
    https: Option<http::Https>,
    mapping: Mapping,
}

/// A message that cannot be sent as it is, ever: sending it again would fail the same way.
fn refused(message: String) -> Failure {
    Failure {
        message,
        retry_after: None,
        permanent: true,
    }
}

/// Reads a secret by the name of its environment variable (`std::env::var` in `dvo run`).
pub type Secrets<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Checks that every channel can be set up, as `dvo run` does before connecting: its secrets
/// set, the URLs they hold valid, its CA file readable.
pub fn check(config: &super::Config, secrets: Secrets) -> Result<(), String> {
    config
        .channels
        .iter()
        .try_for_each(|c| Target::of(c, secrets).map(drop))
}

impl Target {
    /// Where `channel` delivers, with its secrets read (every one must be there).
    fn of(channel: &Channel, secrets: Secrets) -> Result<Target, String> {
        let name = channel.name.clone();
        let env = |var: &str| {
            secrets(var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("channel {name}: environment variable {var} is not set"))
        };
        // A URL from a Secret is checked as one in the settings is; its text is never shown.
        let url = |h: &super::config::Hook| match (&h.url, &h.url_env) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(var)) => {
                let url = env(var)?.trim().to_owned();
                let valid =
                    url.parse::<hyper::Uri>().is_ok() && super::config::url_problem(&url).is_none();
                match valid {
                    true => Ok(url),
                    false => Err(format!(
                        "channel {name}: environment variable {var} does not hold an https:// URL"
                    )),
                }
            }
            (None, None) => Err(format!("channel {name}: no URL")),
        };
        let target = match &channel.endpoint {
            Endpoint::Slack(h) => Target::Slack(url(h)?),
            Endpoint::Teams(h) => Target::Teams(url(h)?),
            Endpoint::Webhook(h) => Target::Webhook {
                url: url(h)?,
                secret: match &h.secret_env {
                    Some(var) => Some(env(var)?),
                    None => None,
                },
            },
            Endpoint::Smtp(s) => {
                let (host, port) = s
                    .server
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .ok_or_else(|| format!("channel {name}: server must be host:port"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let tls = if s.security == Security::None {
                    Tls::None
                } else {
                    let mut params = TlsParameters::builder(host.to_owned());
                    if let Some(file) = &s.ca_file {
                        let pem = std::fs::read(file)
                            .map_err(|e| format!("channel {name}: cannot read {file}: {e}"))?;
                        let cert = Certificate::from_pem(&pem)
                            .map_err(|e| format!("channel {name}: {file}: {e}"))?;
                        params = params.add_root_certificate(cert);
                    }
                    let params = params
                        .build()
                        .map_err(|e| format!("channel {name}: TLS: {e}"))?;
                    match s.security {
                        Security::Tls => Tls::Wrapper(params),
                        _ => Tls::Required(params),
                    }
                };
                let mut builder =
                    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
                        .port(port)
                        .tls(tls)
                        .timeout(Some(std::time::Duration::from_secs(30)));
                if let (Some(u), Some(p)) = (&s.user_env, &s.password_env) {
                    builder = builder.credentials(Credentials::new(env(u)?, env(p)?));
                }
                let from = s
                    .from
                    .parse()
                    .map_err(|e| format!("channel {name}: from {:?}: {e}", s.from))?;
                Target::Smtp {
                    transport: Box::new(builder.build()),
                    from,
                }
            }
        };
        Ok(target)
    }
}

impl Notifier {
    /// A channel with its secrets read (every one must be there).
    pub fn new(channel: Channel, mapping: Mapping, secrets: Secrets) -> Result<Notifier, String> {
        Ok(Notifier {
            target: Target::of(&channel, secrets)?,
            channel,
            https: None,
            mapping,
        })
    }

    fn message(&self, entry: &Entry, mapping: &RoleMapping) -> Option<Message> {
        message(&notice(entry)?, &self.channel, mapping)
    }

    /// The role mapping, which only mail needs (to find those who may approve): a chat or
    /// webhook channel never waits for it.
    fn mapping(&self) -> Result<RoleMapping, String> {
        match self.target {
            Target::Smtp { .. } => (self.mapping)(),
            _ => Ok(RoleMapping::default()),
        }
    }

    async fn send(&mut self, m: &Message, entry: &Entry) -> Result<(), Failure> {
        let https = match &mut self.https {
            Some(c) => c,
            slot @ None => slot.insert(http::client()?),
        };
        let delivery = ("x-dvo-delivery", m.key.clone());
        match &self.target {
            Target::Slack(url) => {
                let body = render::slack(m).to_string();
                http::notify(https, url, &[delivery], body).await
            }
            Target::Teams(url) => {
                let body = render::teams(m).to_string();
                http::notify(https, url, &[delivery], body).await
            }
            Target::Webhook { url, secret } => {
                let body = render::webhook(m, entry).to_string();
                let mut headers = vec![delivery];
                if let Some(s) = secret {
                    headers.push((http::SIGNATURE_HEADER, http::signature(s, &body)));
                }
                http::notify(https, url, &headers, body).await
            }
            Target::Smtp { transport, from } => {
                let (subject, body) = render::mail(m);
                let mut mail = lettre::Message::builder()
                    .from(from.clone())
                    .subject(subject)
                    .message_id(Some(format!("<{}@dvo-operator>", m.key)))
                    .header(lettre::message::header::ContentType::TEXT_PLAIN);
                for to in &m.to {
                    let mailbox = to
                        .parse()
                        .map_err(|e| refused(format!("recipient {to:?}: {e}")))?;
                    mail = mail.to(mailbox);
                }
                let mail = mail
                    .body(body)
                    .map_err(|e| refused(format!("cannot write the mail: {e}")))?;
                let sent = transport.send(mail).await;
                sent.map(|_| ()).map_err(|e| Failure {
                    message: format!("SMTP: {e}"),
                    retry_after: None,
                    permanent: e.is_permanent(),
                })
            }
        }
    }
}

impl Outbox for Notifier {
    fn name(&self) -> &str {
        &self.channel.name
    }

    fn cursor(&self) -> String {
        format!("dvo-notify-cursor-{}", self.channel.name)
    }

    fn promise(&self) -> Promise {
        Promise::FromItsStart
    }

    fn batches(&self, entries: &[Entry]) -> Result<Vec<usize>, String> {
        let mapping = self.mapping()?;
        let mut cuts = vec![];
        let mut since: usize = 0;
        for e in entries {
            since = since.saturating_add(1);
            if self.message(e, &mapping).is_some() {
                cuts.push(since);
                since = 0;
            }
        }
        if since > 0 {
            cuts.push(since);
        }
        Ok(cuts)
    }

    fn deliver<'a>(&'a mut self, entries: &'a [Entry]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let Some(last) = entries.last() else {
                return Ok(());
            };
            let mapping = self.mapping()?;
            let Some(m) = self.message(last, &mapping) else {
                return Ok(());
            };
            let outcome = self.send(&m, last).await;
            let label = match &outcome {
                Ok(()) => "delivered",
                Err(f) if f.permanent => "dropped",
                Err(_) => "failed",
            };
            crate::metrics::METRICS
                .notifications
                .get_or_create(&crate::metrics::ChannelLabel {
                    channel: self.channel.name.clone(),
                    outcome: label.to_owned(),
                })
                .inc();
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_secret_must_be_set() {
        let c = super::super::Config::parse(
            "channels:
- {name: a, slack: {urlEnv: A_URL}}
- {name: m, smtp: {server: 'm:587', from: a@b.c, userEnv: M_USER, passwordEnv: M_PW}}",
        )
        .unwrap();
        let have = |set: &'static [&'static str]| {
            move |v: &str| {
                set.contains(&v).then(|| {
                    if v == "A_URL" {
                        "https://hooks.example.com/x"
                    } else {
                        "x"
                    }
                    .to_owned()
                })
            }
        };
        assert_eq!(check(&c, &have(&["A_URL", "M_USER", "M_PW"])), Ok(()));
        assert_eq!(
            check(&c, &have(&["A_URL", "M_USER"])),
            Err("channel m: environment variable M_PW is not set".into())
        );
        assert!(check(&c, &have(&[])).unwrap_err().contains("A_URL"));
        // A URL from a Secret is checked, and never shown.
        let bad =
            |v: &str| (v == "A_URL").then(|| "http://hooks.example.com/secret-path\n".to_owned());
        let one =
            super::super::Config::parse("channels: [{name: a, slack: {urlEnv: A_URL}}]").unwrap();
        let err = check(&one, &bad).unwrap_err();
        assert_eq!(
            err,
            "channel a: environment variable A_URL does not hold an https:// URL"
        );
    }
}
