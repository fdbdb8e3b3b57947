//! `up`, `down` and `mode`.

use anyhow::Result;

use super::{netlink_handle, require_root};
use crate::{
    model::{Mode, Settings, TopologySpec},
    ops::{
        self, overlay,
        topology::{self, UpOutcome},
    },
    store::topology as record,
};

/// The spec `up` and `run` build: containers on an overlay get the MTU
/// the underlay carries for them, unless --mtu says otherwise.
/// Without a mode, the one the topology has if it is up, else the
/// kernel's best (see `ops::default_mode`).
pub(super) async fn resolve(settings: Settings) -> Result<TopologySpec> {
    let settings = settings.with_file()?;
    let (asked_mtu, asked_mode) = (settings.mtu, settings.mode);
    let mut spec = TopologySpec::resolve(settings)?;
    require_root()?;
    let handle = netlink_handle().await?;
    if asked_mode.is_none() {
        let recorded = record::load(&spec.name)?.map(|r| r.spec.mode);
        spec.mode = ops::default_mode(&handle, &spec.name, recorded).await?;
    }
    if spec.overlay.is_some() {
        spec.mtu = overlay::network_mtu(&handle, spec.overlay.as_ref(), asked_mtu).await?;
    }
    spec.validate()?;
    Ok(spec)
}

pub async fn up(settings: Settings) -> Result<()> {
    let spec = resolve(settings).await?;
    let (name, count, mode) = (spec.name.clone(), spec.containers.len(), spec.mode);
    let started = std::time::Instant::now();
    match topology::up(&netlink_handle().await?, spec).await? {
        UpOutcome::Created => println!(
            "topology {name} up: {count} containers, mode {mode} ({:.2} s)",
            started.elapsed().as_secs_f64()
        ),
        UpOutcome::AlreadyUp => println!("topology {name} is already up as asked; nothing to do"),
    }
    Ok(())
}

pub async fn down(name: &str) -> Result<()> {
    require_root()?;
    if topology::down(&netlink_handle().await?, name).await? {
        println!("topology {name} removed");
    } else {
        println!("topology {name} is not up; nothing to remove");
    }
    Ok(())
}

pub async fn mode(name: &str, mode: Mode) -> Result<()> {
    require_root()?;
    topology::set_mode(&netlink_handle().await?, name, mode).await?;
    println!("topology {name}: mode {mode}");
    Ok(())
}

pub async fn upgrade(name: &str, datapath: &str, force: bool) -> Result<()> {
    require_root()?;
    let ports = crate::ops::upgrade(&netlink_handle().await?, datapath, force).await?;
    println!(
        "{name}: {ports} ports run the programs of netpath {}",
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}
