//! Changes to a datapath's FDB by hand (`fdb add|del|flush`), under the
//! datapath's lock like every other change, so an edit never races a
//! `port del` (an entry for a port being removed) or a mode switch.

use anyhow::{Result, bail, ensure};
use rtnetlink::Handle;

use crate::{
    datapath::{self, fdb::Fdb},
    model::Mac,
    network::Network,
    store::lock::{Lock, Purpose},
};

/// Adds a static entry: frames to `mac` go to `port` of the topology or
/// CNI network `network`; returns the port's host veth.
pub async fn add(handle: &Handle, network: &Network, mac: Mac, port: &str) -> Result<String> {
    ensure!(mac.is_unicast(), "{mac} is not a unicast MAC address");
    let datapath = network.datapath();
    let _lock = Lock::acquire(&datapath, Purpose::Change)?;
    let (host_veth, ifindex) = network.port_ifindex(handle, port).await?;
    Fdb::open(&datapath::reconcile(&datapath)?)?.add_static(mac, ifindex)?;
    Ok(host_veth)
}

/// Deletes the entry for `mac`.
pub fn del(datapath: &str, shown_name: &str, mac: Mac) -> Result<()> {
    let _lock = Lock::acquire(datapath, Purpose::Change)?;
    if !datapath::forget_mac(datapath, mac)? {
        bail!("{shown_name} has no FDB entry for {mac}");
    }
    Ok(())
}

/// Deletes every learned entry; returns how many.
pub fn flush(datapath: &str) -> Result<usize> {
    let _lock = Lock::acquire(datapath, Purpose::Change)?;
    Fdb::open(&datapath::reconcile(datapath)?)?.flush_learned()
}
