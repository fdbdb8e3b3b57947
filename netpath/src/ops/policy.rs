//! The network policies of a topology (`netpath policy ...`): Kubernetes
//! NetworkPolicy objects, kept per datapath (`store::policy`) and put in
//! force by compiling them for the topology's containers. A change is
//! checked whole before anything is kept, made under the datapath's lock,
//! and undone if the datapath refuses it, so the policy in force is always
//! one that was asked for, whole.

use anyhow::{Context, Result, bail};
use rtnetlink::Handle;
use serde::Serialize;

use crate::{
    datapath,
    model::policy::{self, Decision, Endpoint, NetworkPolicy, Protocol, policy_key},
    network::{self, Network, topology::datapath as datapath_of},
    store::{
        self,
        lock::{Lock, Purpose},
    },
};

/// What `apply` did to one policy, as `kubectl apply` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

/// Applies every policy of `text` (YAML, one or more documents) to the
/// topology `network`: each replaces the one of the same namespace and
/// name, or is added. An invalid document refuses the whole file, before
/// anything changes.
pub async fn apply(
    handle: &Handle,
    network: &Network,
    text: &str,
) -> Result<Vec<(String, Applied)>> {
    let topology = policy_network(network)?;
    let incoming = policy::parse(text)?;
    let _lock = Lock::acquire(&network.datapath(), Purpose::Change)?;
    let before = store::policy::load(&network.datapath())?;
    let mut after = before.clone();
    let mut outcome = Vec::new();
    for policy in incoming {
        let key = policy_key(&policy);
        let applied = match after.iter_mut().find(|p| policy_key(p) == key) {
            Some(existing) if *existing == policy => Applied::Unchanged,
            Some(existing) => {
                *existing = policy;
                Applied::Configured
            }
            None => {
                after.push(policy);
                Applied::Created
            }
        };
        outcome.push((key, applied));
    }
    change(handle, topology, &before, &after).await?;
    Ok(outcome)
}

/// Deletes the policies named `NAMESPACE/NAME` or `NAME` (in namespace
/// default), or every one with `all`; an unknown name refuses them all.
pub async fn delete(
    handle: &Handle,
    network: &Network,
    names: &[String],
    all: bool,
) -> Result<Vec<String>> {
    let topology = policy_network(network)?;
    let _lock = Lock::acquire(&network.datapath(), Purpose::Change)?;
    let before = store::policy::load(&network.datapath())?;
    let keys: Vec<String> = if all {
        before.iter().map(policy_key).collect()
    } else {
        names.iter().map(|name| qualified(name)).collect()
    };
    if let Some(unknown) = keys
        .iter()
        .find(|key| !before.iter().any(|p| policy_key(p) == **key))
    {
        bail!("{network} has no network policy {unknown} (see `netpath policy list`)");
    }
    let after: Vec<NetworkPolicy> = before
        .iter()
        .filter(|p| !keys.contains(&policy_key(p)))
        .cloned()
        .collect();
    change(handle, topology, &before, &after).await?;
    Ok(keys)
}

/// The policies of `network`, as applied.
pub fn list(network: &Network) -> Result<Vec<NetworkPolicy>> {
    policy_network(network)?;
    store::policy::load(&network.datapath())
}

/// One policy, by `NAMESPACE/NAME` or `NAME`.
pub fn show(network: &Network, name: &str) -> Result<NetworkPolicy> {
    let key = qualified(name);
    list(network)?
        .into_iter()
        .find(|p| policy_key(p) == key)
        .with_context(|| {
            format!("{network} has no network policy {key} (see `netpath policy list`)")
        })
}

/// Whether a new flow from container `from` to container `to` on
/// `protocol`/`port` would be allowed now, and by which policies.
pub fn check(
    network: &Network,
    from: &str,
    to: &str,
    protocol: Protocol,
    port: u16,
) -> Result<Decision> {
    let policies = list(network)?;
    let view = network.load()?;
    let endpoints: Vec<Endpoint> = view
        .containers
        .iter()
        .map(|c| network::endpoint(&c.id, &c.identity, c.port.addresses.iter().copied()))
        .collect();
    let find = |name: &str| {
        endpoints
            .iter()
            .find(|e| e.name == name)
            .with_context(|| format!("{network} has no container {name}"))
    };
    Ok(policy::check(
        &policies,
        &endpoints,
        &[],
        find(from)?,
        find(to)?,
        protocol,
        port,
    ))
}

/// `protocol/port` as `policy check` takes it: `tcp/80`, `udp/53`.
pub fn parse_port(text: &str) -> Result<(Protocol, u16)> {
    let (protocol, port) = text
        .split_once('/')
        .with_context(|| format!("{text:?} is not PROTOCOL/PORT (e.g. tcp/80)"))?;
    let protocol: Protocol = protocol
        .parse()
        .map_err(|e| anyhow::anyhow!("{text:?}: {e}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|port| *port != 0)
        .with_context(|| format!("{text:?}: the port must be 1 to 65535"))?;
    Ok((protocol, port))
}

/// The topology name of `network`: policies are for topologies for now.
fn policy_network(network: &Network) -> Result<&str> {
    network.topology_name().context(
        "network policy is offered for topologies; CNI networks need the pods' namespaces and \
         labels from the runtime first",
    )
}

/// `NAME` means `default/NAME`, as kubectl's default namespace.
fn qualified(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{}/{name}", policy::DEFAULT_NAMESPACE)
    }
}

/// Keeps `after` and puts it in force in the running topology; if the
/// datapath refuses it, `before` is kept and put back.
async fn change(
    handle: &Handle,
    topology: &str,
    before: &[NetworkPolicy],
    after: &[NetworkPolicy],
) -> Result<()> {
    let rec = network::topology::load_complete(topology)?;
    store::policy::save(topology, after)?;
    let result = match datapath_of(&rec.spec) {
        Ok(dp) => datapath::enforce_policy(handle, &dp).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        store::policy::save(topology, before)?;
        if let Err(back) = datapath::enforce_policy(handle, &datapath_of(&rec.spec)?).await {
            log::warn!("topology {topology}: putting the previous policies back: {back:#}");
        }
        return Err(e.context(format!(
            "topology {topology}: the policies in force are still the previous ones"
        )));
    }
    Ok(())
}
