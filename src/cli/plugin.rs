//! `kubectl dvo`: the decision trace of an AgentDeployment (why it is held and what would
//! release it), the requests I could approve, approving/rejecting/cancelling with the
//! annotations the admission webhook turns into signed acts, and the offline commands.

use std::fmt::Write as _;

use anyhow::{Context as _, Result, anyhow};
use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::Offline;
use crate::crd::approval_request::ApprovalPhase;
use crate::crd::{AgentDeployment, ApprovalRequest};

/// Governance of AI agent deployments, from kubectl.
#[derive(Parser)]
#[command(name = "kubectl dvo", version, about)]
pub struct Plugin {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Why AgentDeployments are where they are: phase, decision, what would release them.
    Status {
        /// One AgentDeployment (default: every one in the namespace).
        name: Option<String>,
        /// Namespace (default: the kubeconfig's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Pending ApprovalRequests I could approve (in every namespace with -A).
    Pending {
        /// Namespace (default: the kubeconfig's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Approve an ApprovalRequest.
    Approve(ActArgs),
    /// Reject an ApprovalRequest (a reason is required).
    Reject(ActArgs),
    /// Withdraw an ApprovalRequest (the requester or an admin).
    Cancel(ActArgs),
    /// What a policy change would do: every AgentDeployment decided under the policies in
    /// force and with the given ones added (or --remove'd), and those whose outcome changes.
    WhatIf(super::what_if::WhatIfArgs),
    #[command(flatten)]
    Offline(Offline),
}

#[derive(clap::Args)]
struct ActArgs {
    /// The ApprovalRequest.
    name: String,
    /// Comment (the reason, for reject).
    #[arg(short, long, default_value = "")]
    message: String,
    /// Namespace (default: the kubeconfig's).
    #[arg(short, long)]
    namespace: Option<String>,
}

impl Plugin {
    /// Runs the command, printing its output; the exit code.
    pub fn run(self) -> Result<u8> {
        let online = match self.command {
            Command::Offline(command) => return command.run(),
            online => online,
        };
        let runtime = tokio::runtime::Runtime::new()?;
        let (text, code) = runtime.block_on(run(online))?;
        print!("{text}");
        Ok(code)
    }
}

async fn client() -> Result<Client> {
    Client::try_default()
        .await
        .map_err(|e| anyhow!("cannot reach the API server: {e}"))
}

async fn run(command: Command) -> Result<(String, u8)> {
    let client = client().await?;
    let ns_or_default =
        |ns: Option<String>| ns.unwrap_or_else(|| client.default_namespace().to_owned());
    match command {
        Command::Status { name, namespace } => {
            let ns = ns_or_default(namespace);
            status(&client, &ns, name.as_deref()).await
        }
        Command::Pending {
            namespace,
            all_namespaces,
        } => {
            let api = if all_namespaces {
                Api::<ApprovalRequest>::all(client.clone())
            } else {
                Api::namespaced(client.clone(), &ns_or_default(namespace))
            };
            pending(&client, &api).await
        }
        Command::Approve(a) => act(&client, "approve", a, &ns_or_default).await,
        Command::Reject(a) => act(&client, "reject", a, &ns_or_default).await,
        Command::Cancel(a) => act(&client, "cancel", a, &ns_or_default).await,
        Command::WhatIf(args) => super::what_if::run(&client, &args).await,
        Command::Offline(_) => unreachable!("handled without a client"),
    }
}

async fn act(
    client: &Client,
    what: &str,
    a: ActArgs,
    ns_or_default: &impl Fn(Option<String>) -> String,
) -> Result<(String, u8)> {
    let ns = ns_or_default(a.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {format!("dvo.caat.io/{what}"): a.message}}});
    let api = Api::<ApprovalRequest>::namespaced(client.clone(), &ns);
    match api
        .patch(&a.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok((
            format!("{what} of approvalrequest {ns}/{} recorded\n", a.name),
            0,
        )),
        // The webhook's refusal, verbatim.
        Err(kube::Error::Api(e)) => Ok((format!("refused: {}\n", e.message), 1)),
        Err(e) => Err(e.into()),
    }
}

/// The pending requests `me` could approve: each is asked of the admission webhook itself with a
/// dry-run approval (no side effects), so the answer is exactly the webhook's.
async fn pending(client: &Client, api: &Api<ApprovalRequest>) -> Result<(String, u8)> {
    let me = crate::webhook::whoami(client).await?;
    let now = chrono::Utc::now();
    let mut out = String::new();
    for apr in api.list(&ListParams::default()).await?.items {
        let st = apr.status.clone().unwrap_or_default();
        if st.phase.is_some_and(|p| p != ApprovalPhase::Pending) || now >= apr.spec.expires_at {
            continue;
        }
        let ns = apr.namespace().unwrap_or_default();
        let name = apr.name_any();
        let probe = serde_json::json!({"metadata": {"annotations": {"dvo.caat.io/approve": ""}}});
        let dry = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let answer = Api::<ApprovalRequest>::namespaced(client.clone(), &ns)
            .patch(&name, &dry, &Patch::Merge(&probe))
            .await;
        let how = match answer {
            Ok(_) => "",
            Err(kube::Error::Api(e)) if e.message.contains("multi-factor") => {
                " (with dvo.caat.io/approve-token: this request requires MFA)"
            }
            Err(_) => continue,
        };
        let needs: Vec<String> = st
            .progress
            .iter()
            .filter(|p| !p.met)
            .map(|p| format!("{} {}/{}", p.source, p.approvers.len(), p.needed))
            .collect();
        let requester = apr
            .spec
            .requester
            .as_ref()
            .map_or("(unknown)", |r| r.username.as_str());
        writeln!(
            out,
            "{ns}/{name}  {} {} to {} requested by {requester}, expires {}\n  waiting for: {}\n  approve{how}: kubectl dvo approve {name} -n {ns} -m \"...\"",
            apr.spec.agent,
            apr.spec.action.as_str(),
            apr.spec.environment,
            apr.spec.expires_at.to_rfc3339(),
            needs.join("; "),
        )?;
    }
    if out.is_empty() {
        writeln!(out, "nothing waits for {}", me.username)?;
    }
    Ok((out, 0))
}

async fn status(client: &Client, ns: &str, name: Option<&str>) -> Result<(String, u8)> {
    let ads = Api::<AgentDeployment>::namespaced(client.clone(), ns);
    let list = match name {
        Some(n) => vec![
            ads.get(n)
                .await
                .with_context(|| format!("agentdeployment {ns}/{n}"))?,
        ],
        None => ads.list(&ListParams::default()).await?.items,
    };
    let aprs = Api::<ApprovalRequest>::namespaced(client.clone(), ns);
    let mut out = String::new();
    for ad in &list {
        let st = ad.status.clone().unwrap_or_default();
        let phase = st
            .phase
            .map_or("(not evaluated yet)".to_owned(), |p| format!("{p:?}"));
        writeln!(
            out,
            "{}/{}  {} {} -> {}  {phase}",
            ns,
            ad.name_any(),
            ad.spec.agent,
            ad.spec.action.as_str(),
            ad.spec.environment
        )?;
        if let Some(m) = &st.message {
            writeln!(out, "  {m}")?;
        }
        let Some(d) = &st.decision else {
            continue;
        };
        writeln!(
            out,
            "  decision: {:?} at {}",
            d.outcome,
            d.evaluated_at.to_rfc3339()
        )?;
        for p in &d.matched_policies {
            writeln!(
                out,
                "    matched policy/{} ({:?}): {}",
                p.name, p.action, p.reason
            )?;
        }
        for v in &d.violations {
            writeln!(
                out,
                "    refused by {} ({:?}): {}",
                v.source, v.kind, v.message
            )?;
        }
        for w in &d.warnings {
            writeln!(out, "    warning: {w}")?;
        }
        writeln!(out, "  what would release it:")?;
        if let Some(at) = d.next_window_opens_at {
            writeln!(
                out,
                "    time: it is re-evaluated at {} when the window opens",
                at.to_rfc3339()
            )?;
        }
        // What break-glass would lift is the core's word (Violation::break_glass_lifts), the
        // same that the operator applies and the webhook checks.
        for v in &d.violations {
            let change = if v.is_temporal() {
                "wait for it".to_owned()
            } else {
                format!("change what {} refuses", v.source)
            };
            if v.break_glass_lifts {
                writeln!(
                    out,
                    "    {change}, or break-glass by a holder of bypass_approval (kubectl annotate adep {} dvo.caat.io/break-glass=\"reason\")",
                    ad.name_any()
                )?;
            } else {
                writeln!(
                    out,
                    "    {change} ({}: break-glass does not lift it)",
                    v.source
                )?;
            }
        }
        for i in &d.manual_instructions {
            writeln!(out, "    a person: {i}")?;
        }
        if let Some(apr_name) = &st.approval_request {
            match aprs.get_opt(apr_name).await? {
                Some(apr) => {
                    let ast = apr.status.unwrap_or_default();
                    for p in &ast.progress {
                        let who = if p.approvers.is_empty() {
                            "nobody yet".to_owned()
                        } else {
                            p.approvers.join(", ")
                        };
                        writeln!(
                            out,
                            "    approval {}: {}/{} ({who}){}",
                            p.source,
                            p.approvers.len(),
                            p.needed,
                            if p.met { " met" } else { "" }
                        )?;
                    }
                    if ast.phase == Some(ApprovalPhase::Pending) {
                        writeln!(
                            out,
                            "    approve with: kubectl dvo approve {apr_name} -n {ns} -m \"...\""
                        )?;
                    }
                }
                None => writeln!(out, "    approvalrequest {apr_name} is not there yet")?,
            }
        }
    }
    if list.is_empty() {
        writeln!(out, "no AgentDeployments in {ns}")?;
    }
    Ok((out, 0))
}
