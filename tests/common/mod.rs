//! Helpers for the root-only integration tests: unique names, running the
//! netpath binary and `ip`, and a guard that tears a topology down even when
//! the test fails.
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Fails (never skips) when not root: these tests are the product's proof.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, BPF): run `sudo -E cargo xtask test`"
    );
}

/// A topology name unique to this process and call, short enough that
/// `NAME-cNN` fits in 15 bytes.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 1000;
    format!("{}{pid}{n}", &tag[..tag.len().min(3)])
}

pub fn netpath(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netpath"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running netpath")
}

/// Runs netpath and asserts success, returning stdout.
pub fn netpath_ok(args: &[&str]) -> String {
    let out = netpath(args);
    assert!(
        out.status.success(),
        "netpath {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
}

pub fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    sh("ip", &full)
}

pub fn ping(ns: &str, ip: &str) -> bool {
    in_ns(ns, &["ping", "-c", "1", "-W", "2", "-q", ip]).status.success()
}

/// Tears its topology down when dropped, so a failing test leaves nothing.
pub struct Topology {
    pub name: String,
}

impl Topology {
    pub fn up(tag: &str, extra: &[&str]) -> Self {
        require_root();
        let name = unique_name(tag);
        let topology = Topology { name: name.clone() };
        let mut args = vec!["up", "--name", &name];
        args.extend_from_slice(extra);
        netpath_ok(&args);
        topology
    }

    pub fn ns(&self, container: &str) -> String {
        format!("{}-{container}", self.name)
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&netpath_ok(&["status", "--name", &self.name, "--json"])).expect("status JSON")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = netpath(&["down", "--name", &self.name]);
    }
}

/// Names of links, namespaces, nftables tables and bpffs pins that carry
/// `prefix`: what must be empty after a failed or torn-down topology.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let links = String::from_utf8_lossy(&sh("ip", &["-o", "link", "show"]).stdout).into_owned();
    for line in links.lines() {
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(&format!("{prefix}-")) {
                found.push(format!("link {name}"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{prefix}-")) {
                found.push(format!("netns {n}"));
            }
        }
    }
    let tables = String::from_utf8_lossy(&sh("nft", &["list", "tables"]).stdout).into_owned();
    if tables.contains(&format!("netpath-{prefix}\n")) || tables.ends_with(&format!("netpath-{prefix}")) {
        found.push(format!("nft table netpath-{prefix}"));
    }
    if std::path::Path::new(&format!("/sys/fs/bpf/netpath/{prefix}")).exists() {
        found.push(format!("pins /sys/fs/bpf/netpath/{prefix}"));
    }
    if std::path::Path::new(&format!("/run/netpath/{prefix}.json")).exists() {
        found.push(format!("state /run/netpath/{prefix}.json"));
    }
    found
}
