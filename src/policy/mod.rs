//! The decision core: evaluation context, conditions, time windows, policy compilation and
//! `decide()`. Pure code: no Kubernetes client, no clock (the moment is an input).

mod condition;
mod context;
mod decide;
pub mod decision;
mod evidence;
mod rules;
pub mod time;

pub mod break_glass;

pub use context::Request;
pub use decide::decide;
pub use decision::{Decision, Outcome};
pub use evidence::staging_validated;
pub use rules::{Policy, Rules, validate};

/// Parses an approval expiry such as `24h`, `90m`, `1h30m` or `45s`.
pub fn parse_expiry(s: &str) -> Result<chrono::Duration, String> {
    let bad = || format!("approval.expiry {s:?} is not a duration such as 24h, 90m, 1h30m or 45s");
    let mut total = chrono::Duration::zero();
    let mut rest = s;
    for (unit, seconds) in [('h', 3600), ('m', 60), ('s', 1)] {
        if let Some((n, tail)) = rest.split_once(unit) {
            total += chrono::Duration::seconds(n.parse::<i64>().map_err(|_| bad())? * seconds);
            rest = tail;
        }
    }
    if !rest.is_empty() || s.is_empty() {
        return Err(bad());
    }
    if total <= chrono::Duration::zero() || total > chrono::Duration::days(30) {
        return Err(format!(
            "approval.expiry {s:?} must be more than 0 and at most 30 days (720h)"
        ));
    }
    Ok(total)
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
        for bad in ["", "1d", "h", "10", "1m1h", "0m", "721h", "-1h", "1.5h"] {
            assert!(super::parse_expiry(bad).is_err(), "{bad}");
        }
    }
}
