//! Integration tests against a real kube-apiserver, etcd and kube-controller-manager built from
//! the Kubernetes Go modules (tests/controlplane). One control plane serves the whole run;
//! each test works in its own namespace.

mod admission;
mod api;
mod argocd;
mod audit;
mod chart;
mod crds;
mod entra;
mod integrity;
mod notify;
mod operator;
mod plugin;
mod recovery;
mod run;
mod support;
mod webhook_auth;
