//! What netpath remembers between runs, under /run/netpath (gone after a
//! reboot, like the namespaces and links it describes): records written
//! atomically, and per-datapath locks.

pub mod atomic;
pub mod cni;
pub mod lock;
pub mod nat;
pub mod overlay;
pub mod policy;
pub mod topology;

use std::{fs, io::ErrorKind, path::Path};

use anyhow::{Context, Result};

pub const STATE_DIR: &str = "/run/netpath";

/// The names of the JSON records in `dir` (file names without `.json`),
/// sorted; none when the directory does not exist yet.
fn record_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let file_name = entry.file_name();
        if let Some(name) = file_name.to_str().and_then(|f| f.strip_suffix(".json")) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_the_json_files_sorted() {
        let dir = std::env::temp_dir().join(format!("netpath-records-{}", std::process::id()));
        assert_eq!(record_names(&dir).unwrap(), Vec::<String>::new());
        fs::create_dir_all(&dir).unwrap();
        for file in ["b.json", "a.json", "a.lock", "c.json.tmp"] {
            fs::write(dir.join(file), "{}").unwrap();
        }
        let names = record_names(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names.unwrap(), ["a", "b"]);
    }
}
