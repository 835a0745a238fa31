//! The decision core: evaluation context, conditions, time windows, policy compilation and
//! `decide()`. Pure code: no Kubernetes client, no clock (the moment is an input).

mod condition;
mod context;
mod decide;
pub mod decision;
mod evidence;
mod rules;
pub mod time;

pub use context::Request;
pub use decide::decide;
pub use decision::{Decision, Outcome};
pub use evidence::staging_validated;
pub use rules::{Policy, Rules, validate};

/// Parses an approval expiry such as `24h`, `90m` or `1h30m`.
pub fn parse_expiry(s: &str) -> Result<chrono::Duration, String> {
    let bad = || format!("approval.expiry {s:?} is not a duration such as 24h, 90m or 1h30m");
    let (hours, rest) = match s.split_once('h') {
        Some((h, rest)) => (h.parse::<i64>().map_err(|_| bad())?, rest),
        None => (0, s),
    };
    let minutes = match rest.strip_suffix('m') {
        Some(m) => m.parse::<i64>().map_err(|_| bad())?,
        None if rest.is_empty() => 0,
        None => return Err(bad()),
    };
    let total = chrono::Duration::hours(hours) + chrono::Duration::minutes(minutes);
    if total <= chrono::Duration::zero() || total > chrono::Duration::days(30) {
        return Err(format!(
            "approval.expiry {s:?} must be more than 0 and at most 30 days (720h)"
        ));
    }
    Ok(total)
}
