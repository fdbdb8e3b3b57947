//! The network policies of a network (`netpath policy ...`), a topology
//! or a CNI network alike: Kubernetes NetworkPolicy objects, kept per
//! datapath (`store::policy`) and put in force by compiling them for the
//! network's containers. A change is
//! checked whole before anything is kept, made under the datapath's lock,
//! and undone if the datapath refuses it, so the policy in force is always
//! one that was asked for, whole.

use anyhow::{Context, Result, bail};
use rtnetlink::Handle;
use serde::Serialize;

use crate::{
    datapath,
    model::{
        Mode,
        policy::{self, Decision, Endpoint, NetworkPolicy, Protocol, policy_key},
    },
    network::{self, Kind, Network},
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
    let incoming = policy::parse(text)?;
    let _lock = Lock::acquire_waiting(&network.datapath(), Purpose::Change, LOCK_PATIENCE)?;
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
    change(handle, network, &before, &after).await?;
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
    let _lock = Lock::acquire_waiting(&network.datapath(), Purpose::Change, LOCK_PATIENCE)?;
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
    change(handle, network, &before, &after).await?;
    Ok(keys)
}

/// Puts the policies of `network` in force again after the overlay's
/// other nodes changed (their containers' addresses, namespaces and
/// labels, which selectors select): compiled anew and written to the maps,
/// under the datapath's lock. For the overlay's control plane, which holds
/// no lock; nothing to do where no policy is applied.
pub fn refresh(network: &Network) -> Result<()> {
    if store::policy::load(&network.datapath())?.is_empty() {
        return Ok(());
    }
    let _lock = Lock::acquire_waiting(&network.datapath(), Purpose::Change, LOCK_PATIENCE)?;
    datapath::refresh_policy(&network.datapath_now()?)
        .with_context(|| format!("{network}: compiling its network policies for the new peers"))
}

/// How long a policy change waits for another change in progress (an
/// `up`, a CNI ADD) to finish.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The policies of `network`, as applied.
pub fn list(network: &Network) -> Result<Vec<NetworkPolicy>> {
    network.load()?;
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
        .map(|c| network::endpoint(&c.name, &c.identity, c.port.addresses.iter().copied()))
        .collect();
    // A CNI pod by its name, or by its container ID.
    let find = |wanted: &str| {
        view.containers
            .iter()
            .position(|c| c.name == wanted || c.id == wanted)
            .map(|i| &endpoints[i])
            .with_context(|| format!("{network} has no container {wanted}"))
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

/// `NAME` means `default/NAME`, as kubectl's default namespace.
fn qualified(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{}/{name}", policy::DEFAULT_NAMESPACE)
    }
}

/// Keeps `after` and puts it in force in the running network; if the
/// datapath refuses it, `before` is kept and put back.
async fn change(
    handle: &Handle,
    network: &Network,
    before: &[NetworkPolicy],
    after: &[NetworkPolicy],
) -> Result<()> {
    let datapath = network.datapath();
    let was_recorded = store::policy::is_recorded(&datapath);
    store::policy::save(&datapath, after)?;
    let result = match network.datapath_now() {
        Ok(dp) => enforce(handle, network, &dp).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        // A record that was lost stays lost: an empty one would say the
        // policies the maps still enforce were deleted.
        if was_recorded {
            store::policy::save(&datapath, before)?;
        } else {
            store::policy::remove(&datapath)?;
        }
        let back = match network.datapath_now() {
            Ok(dp) => enforce(handle, network, &dp).await,
            Err(e) => Err(e),
        };
        if let Err(back) = back {
            log::warn!("{network}: putting the previous policies back: {back:#}");
        }
        return Err(e.context(format!(
            "{network}: the policies in force are still the previous ones"
        )));
    }
    Ok(())
}

/// Puts `dp`'s compiled policies in force; a CNI network in bridge mode
/// is refused, as its pods have no programs to judge their flows.
async fn enforce(handle: &Handle, network: &Network, dp: &datapath::Datapath) -> Result<()> {
    if network.kind() == Kind::Cni && dp.mode == Mode::Bridge {
        bail!(
            "{network} is in bridge mode, where its pods have no programs to judge their flows: \
             network policy on a CNI network needs \"mode\": \"tc\" or \"xdp\" in its conflist"
        );
    }
    datapath::enforce_policy(handle, dp).await
}
