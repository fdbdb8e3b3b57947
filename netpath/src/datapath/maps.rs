//! The one typed facade over the datapath's BPF maps: every map name is
//! known here, the loader pins each of them, and everyone else opens them
//! through [`Maps`] after its layout version was checked.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::maps::{
    Array, DevMapHash, HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuHashMap, RingBuf,
};
use netpath_common::{
    DatapathConfig, FdbEntry, FdbKey, LAYOUT_VERSION, NodeAddr, OverlayStats, PortState, maps,
};

/// Every map of the BPF object. A map the object declares that is missing
/// here fails the load (see `object::load`), so none is left unpinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapName {
    Layout,
    Config,
    FdbStatic,
    FdbLearned,
    PortLearned,
    Ports,
    PortState,
    Trace,
    RemoteFdb,
    RemoteIpv4,
    Nodes,
    NodeList,
    OverlayStats,
    /// aya-log's ring buffer: each loaded object has its own, read by
    /// program id (`run` forwards it), so it is the one map never pinned.
    AyaLogs,
}

impl MapName {
    pub const ALL: [MapName; 14] = [
        MapName::Layout,
        MapName::Config,
        MapName::FdbStatic,
        MapName::FdbLearned,
        MapName::PortLearned,
        MapName::Ports,
        MapName::PortState,
        MapName::Trace,
        MapName::RemoteFdb,
        MapName::RemoteIpv4,
        MapName::Nodes,
        MapName::NodeList,
        MapName::OverlayStats,
        MapName::AyaLogs,
    ];

    pub fn pinned(self) -> bool {
        self != MapName::AyaLogs
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MapName::Layout => maps::LAYOUT,
            MapName::Config => maps::CONFIG,
            MapName::FdbStatic => maps::FDB_STATIC,
            MapName::FdbLearned => maps::FDB_LEARNED,
            MapName::PortLearned => maps::PORT_LEARNED,
            MapName::Ports => maps::PORTS,
            MapName::PortState => maps::PORT_STATE,
            MapName::Trace => maps::TRACE,
            MapName::RemoteFdb => maps::REMOTE_FDB,
            MapName::RemoteIpv4 => maps::REMOTE_IPV4,
            MapName::Nodes => maps::NODES,
            MapName::NodeList => maps::NODE_LIST,
            MapName::OverlayStats => maps::OVERLAY_STATS,
            MapName::AyaLogs => "AYA_LOGS",
        }
    }

    pub fn known(name: &str) -> bool {
        Self::ALL.iter().any(|m| m.as_str() == name)
    }
}

/// The pinned maps of one datapath.
pub struct Maps {
    dir: PathBuf,
}

impl Maps {
    /// Opens the maps pinned in `dir` (see `object::pin_dir`), checking
    /// first that they are of this binary's layout.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join(maps::CONFIG).exists() {
            bail!("no datapath is pinned in {}", dir.display());
        }
        check_layout(dir, None)?;
        Ok(Maps {
            dir: dir.to_owned(),
        })
    }

    fn open_map<T>(&self, name: MapName) -> Result<T>
    where
        T: TryFrom<Map, Error = aya::maps::MapError>,
    {
        let path = self.dir.join(name.as_str());
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
        T::try_from(map)
            .with_context(|| format!("pinned map {} has an unexpected type", path.display()))
    }

    pub fn config(&self) -> Result<Array<MapData, DatapathConfig>> {
        self.open_map(MapName::Config)
    }

    pub fn fdb_static(&self) -> Result<HashMap<MapData, FdbKey, u32>> {
        self.open_map(MapName::FdbStatic)
    }

    pub fn fdb_learned(&self) -> Result<HashMap<MapData, FdbKey, FdbEntry>> {
        self.open_map(MapName::FdbLearned)
    }

    pub fn port_learned(&self) -> Result<HashMap<MapData, u32, u32>> {
        self.open_map(MapName::PortLearned)
    }

    pub fn ports(&self) -> Result<DevMapHash<MapData>> {
        self.open_map(MapName::Ports)
    }

    pub fn port_state(&self) -> Result<PerCpuHashMap<MapData, u32, PortState>> {
        self.open_map(MapName::PortState)
    }

    pub fn trace(&self) -> Result<RingBuf<MapData>> {
        self.open_map(MapName::Trace)
    }

    pub fn remote_fdb(&self) -> Result<HashMap<MapData, FdbKey, NodeAddr>> {
        self.open_map(MapName::RemoteFdb)
    }

    pub fn remote_ipv4(&self) -> Result<HashMap<MapData, [u8; 4], [u8; 6]>> {
        self.open_map(MapName::RemoteIpv4)
    }

    pub fn nodes(&self) -> Result<HashMap<MapData, NodeAddr, u32>> {
        self.open_map(MapName::Nodes)
    }

    pub fn node_list(&self) -> Result<Array<MapData, NodeAddr>> {
        self.open_map(MapName::NodeList)
    }

    pub fn overlay_stats(&self) -> Result<PerCpuArray<MapData, OverlayStats>> {
        self.open_map(MapName::OverlayStats)
    }
}

/// Refuses pins in `dir` made by a netpath of another map layout, or (when
/// `fdb_size` is given) with an FDB of another capacity: reusing them would
/// misread every entry. Nothing pinned yet is fine.
pub fn check_layout(dir: &Path, fdb_size: Option<u32>) -> Result<()> {
    let fix = format!(
        "take the datapath down with the netpath that made it, or remove {} (forwarding through those \
         programs stops; `netpath up` then builds it anew)",
        dir.display()
    );
    let layout = dir.join(maps::LAYOUT);
    let version = if layout.exists() {
        let map: Array<MapData, u32> = Array::try_from(Map::from_map_data(
            MapData::from_pin(&layout)
                .with_context(|| format!("opening pinned map {}", layout.display()))?,
        )?)
        .with_context(|| format!("pinned map {} has an unexpected type", layout.display()))?;
        map.get(&0, 0)
            .with_context(|| format!("reading {}", layout.display()))?
    } else if dir.join(maps::CONFIG).exists() {
        0
    } else {
        return Ok(());
    };
    if version != LAYOUT_VERSION {
        let made_by = if version == 0 {
            "an unversioned layout".to_owned()
        } else {
            format!("map layout {version}")
        };
        bail!(
            "the pins in {} are of {made_by}, this netpath uses layout {LAYOUT_VERSION}: {fix}",
            dir.display()
        );
    }
    if let Some(want) = fdb_size {
        let fdb = dir.join(maps::FDB_STATIC);
        if let Ok(info) = MapInfo::from_pin(&fdb) {
            let have = info.max_entries();
            if have != want {
                bail!(
                    "the FDB pinned in {} holds {have} entries, {want} were asked: {fix}",
                    dir.display()
                );
            }
        }
    }
    Ok(())
}
