//! Leader election with a `coordination.k8s.io` Lease: only the leader reconciles and writes the
//! audit log; another replica waits and takes over when the lease is released or expires.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// The Lease's name in the operator's namespace.
pub const LEASE: &str = "dvo-operator-leader";
/// How long a lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a waiting replica retries.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Whether `me` may take (or keep) a lease in state `spec` at `now`: it is free, released,
/// expired, or already mine.
pub fn may_take(spec: Option<&LeaseSpec>, me: &str, now: DateTime<Utc>) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    let renewed = spec.renew_time.as_ref().map(|t| t.0.as_second());
    renewed.is_none_or(|r| r.saturating_add(duration) < now.timestamp())
}

fn micro(now: DateTime<Utc>) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(now.timestamp_micros()).unwrap_or_default(),
    )
}

/// One attempt to take or renew the lease; true when `me` holds it afterwards.
pub async fn try_acquire(client: &Client, namespace: &str, me: &str) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let now = Utc::now();
    let Some(mut lease) = api.get_opt(LEASE).await? else {
        let mut lease = Lease::default();
        lease.metadata.name = Some(LEASE.to_owned());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: Some(micro(now)),
            renew_time: Some(micro(now)),
            lease_transitions: Some(0),
            ..Default::default()
        });
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    if !may_take(lease.spec.as_ref(), me, now) {
        return Ok(false);
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(me) {
        spec.holder_identity = Some(me.to_owned());
        spec.acquire_time = Some(micro(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(micro(now));
    // replace carries the resourceVersion: of two replicas racing, one wins.
    match api
        .replace(&lease.name_any(), &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until `me` holds the lease.
pub async fn acquire(client: &Client, namespace: &str, me: &str) {
    loop {
        match try_acquire(client, namespace, me).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(%e, "cannot reach the leader Lease; retrying"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Renews the lease until it is lost (returns) or `stop` completes (releases it, then returns).
pub async fn hold(
    client: &Client,
    namespace: &str,
    me: &str,
    stop: impl std::future::Future<Output = ()>,
) -> bool {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => {
                release(client, namespace, me).await;
                return true;
            }
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
        match try_acquire(client, namespace, me).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => tracing::warn!(%e, "cannot renew the leader Lease; retrying"),
        }
    }
}

/// Gives the lease up so another replica takes over at once.
async fn release(client: &Client, namespace: &str, me: &str) {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let Ok(Some(mut lease)) = api.get_opt(LEASE).await else {
        return;
    };
    let mine = lease
        .spec
        .as_ref()
        .is_some_and(|s| s.holder_identity.as_deref() == Some(me));
    if mine {
        lease
            .spec
            .get_or_insert_with(Default::default)
            .holder_identity = None;
        // Best effort: if this fails the lease simply expires.
        let _ = api.replace(LEASE, &PostParams::default(), &lease).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_take_the_lease() {
        let now: DateTime<Utc> = "2026-11-24T10:00:30Z".parse().unwrap();
        let spec = |holder: Option<&str>, renewed: Option<&str>| LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: renewed.map(|r| micro(r.parse().unwrap())),
            ..Default::default()
        };
        let table = [
            (None, true),
            (Some(spec(None, None)), true),
            (Some(spec(Some(""), Some("2026-11-24T10:00:29Z"))), true),
            (Some(spec(Some("me"), Some("2026-11-24T10:00:29Z"))), true),
            (
                Some(spec(Some("other"), Some("2026-11-24T10:00:29Z"))),
                false,
            ),
            (
                Some(spec(Some("other"), Some("2026-11-24T10:00:15Z"))),
                false,
            ),
            (
                Some(spec(Some("other"), Some("2026-11-24T10:00:14Z"))),
                true,
            ),
            (Some(spec(Some("other"), None)), true),
        ];
        for (i, (s, want)) in table.into_iter().enumerate() {
            assert_eq!(may_take(s.as_ref(), "me", now), want, "case {i}");
        }
    }
}
