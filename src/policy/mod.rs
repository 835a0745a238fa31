//! The decision core: evaluation context, conditions, time windows, policy compilation and
//! `decide()`. Pure code: no Kubernetes client, no clock (the moment is an input).

mod condition;
mod context;
mod decide;
pub mod decision;
mod evidence;
pub mod report;
mod rules;
pub mod time;
pub mod what_if;

pub mod break_glass;

pub use context::Request;
pub use decide::{decide, decide_for_status};
pub use decision::{Decision, Outcome};
pub use evidence::staging_validated;
pub use rules::{Affected, Policy, Rules, in_scope, validate};

/// The longest approval expiry a policy may ask for.
pub const MAX_EXPIRY: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// Parses an approval expiry such as `24h`, `90m`, `1h30m` or `45s`: units in that order, each
/// a plain decimal number of at most 7 digits, more than 0 and at most 30 days in total.
pub fn parse_expiry(s: &str) -> Result<chrono::Duration, String> {
    let shown: String = s.chars().take(64).collect();
    let bad =
        || format!("approval.expiry {shown:?} is not a duration such as 24h, 90m, 1h30m or 45s");
    let mut total: i64 = 0;
    let mut rest = s;
    for (unit, seconds) in [('h', 3600i64), ('m', 60), ('s', 1)] {
        if let Some((n, tail)) = rest.split_once(unit) {
            if n.is_empty() || n.len() > 7 || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let n: i64 = n.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(seconds)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            rest = tail;
        }
    }
    if !rest.is_empty() || s.is_empty() {
        return Err(bad());
    }
    match chrono::TimeDelta::try_seconds(total) {
        Some(d) if d > chrono::TimeDelta::zero() && d <= MAX_EXPIRY => Ok(d),
        _ => Err(format!(
            "approval.expiry {shown:?} must be more than 0 and at most 30 days (720h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expiry_durations() {
        let ok = [
            ("24h", 86400),
            ("90m", 5400),
            ("1h30m", 5400),
            ("45s", 45),
            ("1h1m1s", 3661),
            ("720h", 2592000),
        ];
        for (s, secs) in ok {
            assert_eq!(super::parse_expiry(s).unwrap().num_seconds(), secs, "{s}");
        }
        let huge = [
            "99999999999999h",
            "9223372036854775807s",
            "99999999999999999999999h",
            "1h99999999999999999m",
        ];
        for bad in [
            "", "1d", "h", "10", "1m1h", "0m", "721h", "-1h", "1.5h", "+1h", " 1h",
        ]
        .into_iter()
        .chain(huge)
        {
            assert!(super::parse_expiry(bad).is_err(), "{bad}");
        }
    }
}
