//! `policy apply|list|show|delete|check`: Kubernetes NetworkPolicy for the
//! containers of a topology or the pods of a CNI network.

use std::{io::Read, path::PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{NameArg, netlink_handle, render, require_root};
use crate::{
    model::policy::{Decision, Direction, Judgement, NetworkPolicy, has_type, policy_key},
    ops::policy::{self, Applied},
};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Apply the NetworkPolicy documents of a YAML file (networking.k8s.io/v1,
    /// as for kubectl); each replaces the policy of its namespace and name.
    /// An invalid document refuses the whole file.
    Apply {
        #[command(flatten)]
        name: NameArg,
        /// The YAML file, `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List the policies: namespace, name, pod selector, types.
    List {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        json: bool,
    },
    /// Print one policy as applied (YAML, or JSON).
    Show {
        #[command(flatten)]
        name: NameArg,
        /// NAMESPACE/NAME, or NAME in namespace default.
        policy: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete policies by NAMESPACE/NAME (or NAME in namespace default).
    Delete {
        #[command(flatten)]
        name: NameArg,
        #[arg(required_unless_present = "all")]
        policies: Vec<String>,
        /// Every policy of the network.
        #[arg(long, conflicts_with = "policies")]
        all: bool,
    },
    /// Whether a new flow between two containers (a topology's names, a CNI
    /// network's pod names or container IDs) would be allowed, and by
    /// which policies.
    Check {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// PROTOCOL/PORT: tcp/80, udp/53, sctp/9.
        #[arg(long)]
        port: String,
        #[arg(long)]
        json: bool,
    },
}

impl PolicyCommand {
    pub fn name(&self) -> &NameArg {
        match self {
            PolicyCommand::Apply { name, .. }
            | PolicyCommand::List { name, .. }
            | PolicyCommand::Show { name, .. }
            | PolicyCommand::Delete { name, .. }
            | PolicyCommand::Check { name, .. } => name,
        }
    }
}

pub async fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Apply { name, file } => {
            let text = read(&file)?;
            require_root()?;
            let handle = netlink_handle().await?;
            for (key, applied) in policy::apply(&handle, &name.network()?, &text).await? {
                let done = match applied {
                    Applied::Created => "created",
                    Applied::Configured => "configured",
                    Applied::Unchanged => "unchanged",
                };
                println!("networkpolicy {key} {done}");
            }
            Ok(())
        }
        PolicyCommand::List { name, json } => {
            let policies = policy::list(&name.network()?)?;
            if json {
                return render::json_line(&policies);
            }
            print!("{}", table(&policies));
            Ok(())
        }
        PolicyCommand::Show { name, policy, json } => {
            let policy = policy::show(&name.network()?, &policy)?;
            if json {
                return render::json_pretty(&policy);
            }
            print!("{}", serde_norway::to_string(&policy)?);
            Ok(())
        }
        PolicyCommand::Delete {
            name,
            policies,
            all,
        } => {
            require_root()?;
            let handle = netlink_handle().await?;
            for key in policy::delete(&handle, &name.network()?, &policies, all).await? {
                println!("networkpolicy {key} deleted");
            }
            Ok(())
        }
        PolicyCommand::Check {
            name,
            from,
            to,
            port,
            json,
        } => {
            let (protocol, number) = policy::parse_port(&port)?;
            let decision = policy::check(&name.network()?, &from, &to, protocol, number)?;
            if json {
                return render::json_line(&decision);
            }
            print!("{}", explain(&decision, &from, &to, &port));
            Ok(())
        }
    }
}

fn read(file: &PathBuf) -> Result<String> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading policies from standard input")?;
    } else {
        text = std::fs::read_to_string(file)
            .with_context(|| format!("reading policy file {}", file.display()))?;
    }
    Ok(text)
}

/// As `kubectl get networkpolicy`: one line per policy.
fn table(policies: &[NetworkPolicy]) -> String {
    if policies.is_empty() {
        return "No network policies.\n".into();
    }
    let rows: Vec<[String; 4]> = policies
        .iter()
        .map(|p| {
            let spec = p.spec.clone().unwrap_or_default();
            let key = policy_key(p);
            let (namespace, name) = key.split_once('/').unwrap_or(("", &key));
            [
                namespace.to_owned(),
                name.to_owned(),
                selector_text(spec.pod_selector.as_ref()),
                types_text(p),
            ]
        })
        .collect();
    render::aligned(&["NAMESPACE", "NAME", "POD-SELECTOR", "TYPES"], &rows)
}

/// A selector as kubectl prints one: `app=web,tier in (a,b)`, or `<none>`
/// for the empty selector (every pod).
fn selector_text(selector: Option<&LabelSelector>) -> String {
    let Some(selector) = selector else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        parts.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            _ => format!("!{}", expression.key),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// The policy's types as Kubernetes defaults them (the compiler's rule).
fn types_text(policy: &NetworkPolicy) -> String {
    let types: Vec<&str> = [
        (Direction::Ingress, "Ingress"),
        (Direction::Egress, "Egress"),
    ]
    .into_iter()
    .filter(|(direction, _)| has_type(policy, *direction))
    .map(|(_, name)| name)
    .collect();
    types.join(",")
}

/// `policy check`'s verdict, then each direction's reason.
fn explain(decision: &Decision, from: &str, to: &str, port: &str) -> String {
    let verdict = if decision.allowed {
        "allowed"
    } else {
        "denied"
    };
    let judged = |judgement: &Judgement, what: &str| match judgement {
        Judgement::Unrestricted => {
            format!("  {what}: unrestricted (no policy of that type selects it)\n")
        }
        Judgement::AllowedBy(by) => format!("  {what}: allowed by {}\n", by.join(", ")),
        Judgement::Denied { isolated_by } => format!(
            "  {what}: denied (isolated by {}; no rule of theirs allows it)\n",
            isolated_by.join(", ")
        ),
    };
    format!(
        "{port} from {from} to {to}: {verdict}\n{}{}",
        judged(&decision.egress, &format!("egress of {from}")),
        judged(&decision.ingress, &format!("ingress of {to}"))
    )
}
