//! The one typed facade over the datapath's BPF maps: every map comes
//! from the one table (`netpath_common::datapath_maps!`), the loader pins
//! each of them, and everyone else opens them through [`Maps`] (an accessor
//! per row, of the row's kind and types) after the layout version was
//! checked.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::maps::{
    Array, DevMapHash, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray, PerCpuHashMap,
    ProgramArray, RingBuf,
};
use netpath_common::{DatapathConfig, LAYOUT_VERSION, maps};

/// Whether the BPF object's map `name` is a row of the table. The loader
/// refuses an object with any other, which would go unpinned.
pub fn known(name: &str) -> bool {
    maps::ALL.iter().any(|row| row.name == name)
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

    /// The datapath's settings as CONFIG holds them now (one entry).
    pub fn current_config(&self) -> Result<DatapathConfig> {
        self.config()?
            .get(&0, 0)
            .with_context(|| format!("reading map CONFIG in {}", self.dir.display()))
    }

    fn open_map<T>(&self, name: &str) -> Result<T>
    where
        T: TryFrom<Map, Error = aya::maps::MapError>,
    {
        let path = self.dir.join(name);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
        T::try_from(map)
            .with_context(|| format!("pinned map {} has an unexpected type", path.display()))
    }
}

/// An accessor per row of the table: `maps.fdb_static()` opens FDB_STATIC
/// as aya's handle of its kind, key and value.
macro_rules! accessors {
    ($($(#[$doc:meta])* $name:ident => $accessor:ident : $kind:ident $(<$($ty:ty),+>)?
        [$size:expr] $sizing:ident;)*) => {
        impl Maps {
            $(
                $(#[$doc])*
                pub fn $accessor(&self) -> Result<accessors!(@handle $kind $(<$($ty),+>)?)> {
                    self.open_map(maps::$name)
                }
            )*
        }
    };
    // Userspace reads an LRU hash map as any hash map.
    (@handle LruHashMap<$($ty:ty),+>) => { HashMap<MapData, $($ty),+> };
    (@handle $kind:ident<$($ty:ty),+>) => { $kind<MapData, $($ty),+> };
    (@handle $kind:ident) => { $kind<MapData> };
}

netpath_common::datapath_maps!(accessors);

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
