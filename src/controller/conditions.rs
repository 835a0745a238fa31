//! `metav1.Condition` bookkeeping: a condition keeps its `lastTransitionTime` while its status
//! does not change.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets (adds or replaces) condition `type_`.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let previous = conditions.iter_mut().find(|c| c.type_ == type_);
    let last_transition_time = match &previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => to_time(now),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

/// Whether condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// A Kubernetes `Time` from a chrono instant (second precision, as the API stores it); an
/// instant beyond what Kubernetes represents (years past 9999) reads as the epoch.
pub fn to_time(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0: DateTime<Utc> = "2026-11-24T10:00:00Z".parse().unwrap();
        let t1: DateTime<Utc> = "2026-11-24T11:00:00Z".parse().unwrap();
        let mut cs = vec![];
        set(&mut cs, "Ready", false, "Pending", "waiting", Some(1), t0);
        set(
            &mut cs,
            "Ready",
            false,
            "Blocked",
            "still waiting",
            Some(2),
            t1,
        );
        assert_eq!(
            (cs.len(), cs[0].reason.as_str(), cs[0].observed_generation),
            (1, "Blocked", Some(2))
        );
        assert_eq!(cs[0].last_transition_time, to_time(t0));
        set(&mut cs, "Ready", true, "Deployed", "ok", Some(2), t1);
        assert_eq!(cs[0].last_transition_time, to_time(t1));
        assert!(is_true(&cs, "Ready") && !is_true(&cs, "Approved"));
    }
}
