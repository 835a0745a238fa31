//! `dvo`: the dvo-operator binary.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dvo_operator::cli::Offline;

/// Governance for AI agent deployments on Kubernetes.
#[derive(Parser)]
#[command(name = "dvo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: the controllers, the admission webhook and the health endpoints. Uses
    /// the in-cluster service account, or the kubeconfig (KUBECONFIG, ~/.kube/config) out of
    /// cluster.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (what crds/ holds).
    Crds,
    #[command(flatten)]
    Offline(Offline),
}

/// Arguments of `dvo run`.
#[derive(clap::Args)]
struct RunArgs {
    /// The operator's namespace (role mapping ConfigMap, keys Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "dvo-system")]
    namespace: String,
    /// Address of the /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_addr: std::net::SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// An audit sink as NAME=TARGET, TARGET being `stdout` or
    /// `syslog+tcp://host:port?payload=cef|json` (repeat for several).
    #[arg(long = "audit-sink", value_parser = parse_sink)]
    audit_sinks: Vec<(String, dvo_operator::audit::sink::Target)>,
    /// Notification channels (YAML: `channels: [...]`, see README), fed from the audit log by
    /// the leader.
    #[arg(long, env = "DVO_NOTIFICATIONS")]
    notifications: Option<PathBuf>,
    /// Days audit segments are kept; whole sealed segments older than that are deleted (and the
    /// deletion is recorded). 0 keeps them forever.
    #[arg(long, default_value_t = 365)]
    audit_retention_days: i64,
    /// Address the admission webhook listens on (HTTPS).
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: std::net::SocketAddr,
    /// The https:// base URL the API server calls the webhook at, for an operator running
    /// outside the cluster (e.g. https://127.0.0.1:9443). Default: the Service.
    #[arg(long)]
    webhook_url: Option<String>,
    /// The Service in front of the webhook, in the operator's namespace.
    #[arg(long, default_value = "dvo-operator-webhook")]
    webhook_service: String,
    /// Who issues the webhook's certificate: `self` (generated and kept in a Secret) or
    /// `cert-manager` (a Certificate fills that Secret).
    #[arg(long, value_enum, default_value = "self")]
    webhook_certificates: dvo_operator::webhook::Certificates,
    /// Do not serve or register the admission webhook (local debugging only: without it no
    /// requester is stamped and no approval is accepted).
    #[arg(long)]
    no_webhook: bool,
    /// PEM file of the CA that issues the client certificate the API server presents to
    /// admission webhooks (its AdmissionConfiguration): only such callers are served, and only
    /// then does an audit entry of a refusal name the person refused.
    #[arg(long, env = "DVO_WEBHOOK_CLIENT_CA")]
    webhook_client_ca: Option<std::path::PathBuf>,
    /// Entra ID settings (YAML: tenants, audience, issuerVersion, jwksUrl or jwksFile, ...) for
    /// approvals that must prove MFA with `dvo.caat.io/approve-token`.
    #[arg(long)]
    entra_config: Option<PathBuf>,
    /// Keep dvo's decisions as wgpolicyk8s.io/v1alpha2 PolicyReports (one per namespace, named
    /// dvo) and a ClusterPolicyReport of the policies (the report kinds must be installed).
    #[arg(long, env = "DVO_POLICY_REPORTS")]
    policy_reports: bool,
    /// Serve the HTTP API (`/v1`, TLS with the webhook's certificate) on this address; off
    /// when not given. Needs the webhook.
    #[arg(long, env = "DVO_API_ADDR")]
    api_addr: Option<std::net::SocketAddr>,
    /// The HTTP API's keys (YAML `keys: [{name, sha256, roles, requestsPerMinute}]`, from a
    /// mounted Secret), read again when the file changes.
    #[arg(long, env = "DVO_API_KEYS", requires = "api_addr")]
    api_keys: Option<PathBuf>,
}

fn parse_sink(s: &str) -> Result<(String, dvo_operator::audit::sink::Target), String> {
    let (name, target) = s
        .split_once('=')
        .ok_or("expected NAME=TARGET, e.g. siem=syslog+tcp://siem:6514?payload=cef")?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(format!(
            "sink name {name:?} must be lowercase letters, digits and dashes"
        ));
    }
    Ok((name.to_owned(), target.parse()?))
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum LogFormat {
    Text,
    Json,
}

fn run(args: RunArgs) -> anyhow::Result<u8> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let client_ca = match &args.webhook_client_ca {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        ),
    };
    let entra = match &args.entra_config {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            Some(dvo_operator::yaml::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{} is not valid Entra ID settings: {e}", path.display())
            })?)
        }
    };
    let notifications = match &args.notifications {
        None => Default::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let config = dvo_operator::notify::Config::parse(&text).map_err(|e| {
                anyhow::anyhow!("{} is not valid notification settings: {e}", path.display())
            })?;
            dvo_operator::notify::send::check(&config, &|var| std::env::var(var).ok())
                .map_err(|e| anyhow::anyhow!("notifications: {e}"))?;
            config
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    // The webhook answers the API server within its timeout whatever the controllers are doing:
    // it runs on threads of its own, with a client of its own.
    let webhook_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dvo-webhook")
        .enable_all()
        .build()?;
    let webhook_handle = webhook_runtime.handle().clone();
    let result = runtime.block_on(async move {
        let client = dvo_operator::client::from_environment()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the API server: {e}"))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let webhook_ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Readiness is about traffic, and the only traffic is the webhook's: every replica
        // serves it, the leader and the followers alike. Without it, ready means leading with
        // synced caches.
        let readiness = if args.no_webhook {
            ready.clone()
        } else {
            webhook_ready.clone()
        };
        let health = tokio::spawn(dvo_operator::health::serve(
            args.health_addr,
            readiness,
            stopped(),
        ));
        let webhook = (!args.no_webhook).then(|| {
            let settings = dvo_operator::webhook::Settings {
                namespace: args.namespace.clone(),
                addr: args.webhook_addr,
                url: args.webhook_url.clone(),
                service: args.webhook_service.clone(),
                entra,
                certificates: args.webhook_certificates,
                client_ca,
                api: args.api_addr.map(|addr| dvo_operator::api::Settings {
                    addr,
                    api_keys: args.api_keys.clone(),
                }),
            };
            let stop = stopped();
            webhook_handle.spawn(async move {
                let client = dvo_operator::client::from_environment()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach the API server: {e}"))?;
                dvo_operator::webhook::serve(client, settings, webhook_ready, stop).await
            })
        });
        let settings = dvo_operator::controller::Settings {
            namespace: args.namespace,
            audit_retention: (args.audit_retention_days > 0)
                .then(|| chrono::Duration::days(args.audit_retention_days)),
            identity: std::env::var("POD_NAME").unwrap_or_else(|_| {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            }),
            audit_sinks: args.audit_sinks,
            notifications,
            policy_reports: args.policy_reports,
        };
        let controllers = dvo_operator::controller::run(client, settings, ready, stopped());
        let result = match webhook {
            None => controllers.await,
            Some(webhook) => {
                // Either failing stops the process; a clean stop waits for both.
                tokio::pin!(controllers);
                let mut webhook = webhook;
                tokio::select! {
                    r = &mut controllers => match r {
                        Ok(()) => webhook.await.map_err(anyhow::Error::from).and_then(|r| r),
                        Err(e) => Err(e),
                    },
                    r = &mut webhook => match r.map_err(anyhow::Error::from).and_then(|r| r) {
                        Ok(()) => controllers.await,
                        Err(e) => Err(e.context("admission webhook")),
                    },
                }
            }
        };
        health.abort();
        result.map(|()| 0)
    });
    webhook_runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(%e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Crds => dvo_operator::crd::crds_yaml()
            .map(|yaml| {
                print!("{yaml}");
                0
            })
            .map_err(anyhow::Error::msg),
        Command::Offline(command) => command.run(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
