//! Kubernetes Events on phase transitions. Each transition is one Event (there is no series to
//! aggregate: events are published on transitions only), so nothing is cached: kube's
//! `Recorder` keeps every event it published for minutes and scans them all on each publish,
//! which at ten thousand objects is memory and time the operator does not have.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// Publishes Events as one reporter.
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
}

impl Events {
    /// A publisher for `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Events {
        Events { client, reporter }
    }

    /// Creates the Event `ev` about `regarding`, in its namespace.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let event = event(
            &self.reporter,
            ev,
            regarding,
            k8s_openapi::jiff::Timestamp::now(),
        );
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        Api::<K8sEvent>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }
}

/// What tells of a notification channel that starts failing (a Warning Event, with the error)
/// or delivers again (Normal), about the channel's cursor ConfigMap in `namespace`.
pub fn delivery(events: Events, namespace: &str, cursor: String) -> impl Fn(Option<&str>) {
    let namespace = namespace.to_owned();
    move |failing: Option<&str>| {
        let (type_, reason, note) = match failing {
            Some(why) => (EventType::Warning, "NotificationFailed", why),
            None => (
                EventType::Normal,
                "NotificationDelivered",
                "delivering again",
            ),
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(crate::json::truncate(note, 1000).to_owned()),
            action: "Notify".into(),
            secondary: None,
        };
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some(cursor.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        };
        let events = events.clone();
        tokio::spawn(async move {
            if let Err(e) = events.publish(&event, &regarding).await {
                tracing::warn!(%e, "cannot publish event");
            }
        });
    }
}

/// The `events.k8s.io/v1` Event for `ev` about `regarding` at `now`.
fn event(
    reporter: &Reporter,
    ev: &Event,
    regarding: &ObjectReference,
    now: k8s_openapi::jiff::Timestamp,
) -> K8sEvent {
    let subject = regarding.name.as_deref().unwrap_or(&reporter.controller);
    K8sEvent {
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        note: ev.note.clone(),
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!("{subject}.{:x}", now.as_nanosecond())),
            ..Default::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match ev.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        related: ev.secondary.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_object_reporter_and_moment() {
        let reporter = Reporter {
            controller: "dvo-operator".into(),
            instance: None,
        };
        let regarding = ObjectReference {
            name: Some("gha".into()),
            namespace: Some("agents".into()),
            kind: Some("AgentDeployment".into()),
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: "Blocked".into(),
            note: Some("held".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let e = event(&reporter, &ev, &regarding, now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("agents"));
        assert!(e.metadata.name.as_deref().unwrap().starts_with("gha."));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_instance.as_deref(), Some("dvo-operator"));
        assert_eq!(e.regarding, Some(regarding));
        assert!(e.series.is_none());
    }
}
