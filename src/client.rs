//! The operator's API client: the usual client, with every request counted by verb in
//! `dvo_api_requests_total` (what `make scale` reads to check the cost of a change).

use kube::client::{Body, ClientBuilder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::RequestLabels;

/// Requests counted by verb and resource.
pub type Counts = Family<RequestLabels, Counter>;

/// A client for `config` whose requests are counted in `dvo_api_requests_total`.
pub fn counted(config: kube::Config) -> Result<kube::Client, kube::Error> {
    counted_in(config, crate::metrics::METRICS.api_requests.clone())
}

/// A client for `config` whose requests are counted in `counts`.
pub fn counted_in(config: kube::Config, counts: Counts) -> Result<kube::Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<Body>| {
        let (verb, resource) = verb(req.method(), req.uri());
        counts
            .get_or_create(&RequestLabels {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
            })
            .inc();
        req
    });
    Ok(builder.with_layer(&count).build())
}

/// A client from the environment (in-cluster or kubeconfig), counted.
pub async fn from_environment() -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    counted(config)
}

/// The Kubernetes verb of a request (`list`, `watch`, `get`, `create`, `update`, `patch`,
/// `delete`, `deletecollection`, or `other`) and the resource it is about (empty when the path
/// is not a resource path).
pub fn verb<'u>(method: &http::Method, uri: &'u http::Uri) -> (&'static str, &'u str) {
    let watching = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // After /api/v1 or /apis/GROUP/VERSION, and after namespaces/NS: RESOURCE[/NAME[/SUB]].
    let rest = match segments.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => &[][..],
    };
    let rest = match rest {
        ["namespaces", _, more @ ..] if !more.is_empty() => more,
        other => other,
    };
    let collection = rest.len() == 1;
    let resource = rest.first().copied().unwrap_or("");
    let verb = match *method {
        http::Method::GET if watching => "watch",
        http::Method::GET if collection => "list",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if collection => "deletecollection",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_of_requests() {
        // (method, path, verb, resource)
        let table = [
            (
                "GET",
                "/apis/dvo.caat.io/v1alpha1/deploymentpolicies",
                "list",
                "deploymentpolicies",
            ),
            (
                "GET",
                "/apis/dvo.caat.io/v1alpha1/deploymentpolicies?watch=true&resourceVersion=5",
                "watch",
                "deploymentpolicies",
            ),
            (
                "GET",
                "/api/v1/namespaces/dvo/configmaps/dvo-audit-000001",
                "get",
                "configmaps",
            ),
            (
                "GET",
                "/api/v1/namespaces/dvo/configmaps",
                "list",
                "configmaps",
            ),
            ("GET", "/api/v1/namespaces/dvo", "get", "namespaces"),
            ("GET", "/api/v1/namespaces", "list", "namespaces"),
            (
                "PATCH",
                "/apis/dvo.caat.io/v1alpha1/namespaces/a/agentdeployments/x/status",
                "patch",
                "agentdeployments",
            ),
            (
                "PUT",
                "/api/v1/namespaces/dvo/configmaps/dvo-audit-000001",
                "update",
                "configmaps",
            ),
            (
                "POST",
                "/apis/apps/v1/namespaces/a/deployments",
                "create",
                "deployments",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/dvo/configmaps/x",
                "delete",
                "configmaps",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/dvo/configmaps",
                "deletecollection",
                "configmaps",
            ),
            ("GET", "/version", "get", ""),
        ];
        for (method, uri, want, resource) in table {
            let m: http::Method = method.parse().unwrap();
            let u: http::Uri = uri.parse().unwrap();
            assert_eq!(verb(&m, &u), (want, resource), "{method} {uri}");
        }
    }
}
