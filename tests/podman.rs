//! A real container runtime drives netpath-cni: podman 4 (Debian 12) with its
//! CNI backend runs containers on a netpath network, they talk over the
//! fast path, and `podman rm` / `podman network rm` leave nothing behind.
//!
//! podman is configured for the test alone, never globally: a
//! containers.conf of its own (`CONTAINERS_CONF`, which replaces every other
//! containers.conf), its own image/container storage (`--root`,
//! `--runroot`), its own CNI plugin and network config directories, and it
//! runs inside the test's private host namespace (`common::Host`), so the
//! bridge, the host veths and the nftables counter are the test's alone.
//! The image is built here from busybox-static: nothing is pulled. The
//! traffic of the fast-path check runs in the containers' namespaces
//! (common/runtime.rs, shared with the containerd tests).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
    time::Duration,
};

use common::{
    Host,
    runtime::{Endpoint, assert_fast_path, busybox_rootfs, plugin_dir, run_within, tar, text},
    unique_name,
};
use netpath::{datapath::object::pin_dir, model::naming::cni_datapath, store};
use serde_json::json;

/// A podman of this test's own on a host namespace of its own, with one
/// netpath-cni network (named like its bridge) and one image. Dropping it
/// removes every container, the network, the storage and the host.
struct Podman {
    host: Arc<Host>,
    /// Holds containers.conf, the storage, podman's tmp dir, the CNI plugin
    /// dir and the network config dir.
    dir: PathBuf,
    /// The podman network and the bridge the plugin makes for it.
    network: String,
    image: String,
}

/// A container podman started on the network.
struct Container {
    name: String,
    /// Its network namespace, by name under /run/netns (podman's `netns-…`).
    netns: String,
    ip: String,
}

impl Podman {
    /// A private podman whose network `netpath-cni` serves from `subnet`
    /// (netpath's own IPAM), and the test image imported into its storage.
    fn new(subnet: &str) -> Self {
        let host = Host::new();
        let network = unique_name("pm");
        let dir = std::env::temp_dir().join(format!("netpath-podman-{network}"));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["storage", "run", "tmp", "networks"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let plugins = plugin_dir(&dir.join("plugins"));
        // runc: crun refuses this VM's hybrid cgroups. No default ulimits:
        // raising nofile needs CAP_SYS_RESOURCE, which we lack. File locks
        // in our tmp dir: podman's default shm lock (/dev/shm/libpod_lock)
        // is shared by every podman on the machine and reset by a fresh one.
        let conf = format!(
            r#"[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
lock_type = "file"
tmp_dir = "{tmp}"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{plugins}"]
network_config_dir = "{networks}"
"#,
            tmp = dir.join("tmp").display(),
            plugins = plugins.display(),
            networks = dir.join("networks").display(),
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{
                "type": "netpath-cni",
                "bridge": network,
                "mode": "tc",
                "ipam": {"type": "netpath", "subnet": subnet},
            }],
        });
        std::fs::write(
            dir.join("networks").join(format!("{network}.conflist")),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .unwrap();
        let podman = Podman {
            host,
            image: format!("localhost/netpath-test:{network}"),
            dir,
            network,
        };
        // Cleanup from here on is Drop's.
        let tar = podman.build_rootfs();
        podman.ok(
            &["import", tar.to_str().unwrap(), &podman.image],
            Duration::from_secs(120),
        );
        assert!(
            podman
                .ok(
                    &["network", "ls", "--format", "{{.Name}}"],
                    Duration::from_secs(30)
                )
                .lines()
                .any(|n| n == podman.network),
            "podman does not see the netpath network"
        );
        podman
    }

    /// podman with the test's configuration and storage, run in the test's
    /// host namespace (so the plugins it runs make their links there).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.host.command("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            // vfs: plain directories, no overlay mounts to leak; the image is small.
            .args(["--storage-driver", "vfs"])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str], limit: Duration) -> Result<Output, String> {
        run_within(self.command(args), limit)
    }

    /// Runs podman and asserts success (in time); returns stdout.
    #[track_caller]
    fn ok(&self, args: &[&str], limit: Duration) -> String {
        let out = self
            .run(args, limit)
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"));
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// The test image's rootfs (busybox), as a tarball for `podman import`.
    fn build_rootfs(&self) -> PathBuf {
        let rootfs = busybox_rootfs(&self.dir.join("rootfs"));
        let tarball = self.dir.join("rootfs.tar");
        tar(&rootfs, &tarball);
        tarball
    }

    fn container_name(&self, tag: &str) -> String {
        format!("{}-{tag}", self.network)
    }

    /// `podman run -d` of `command` on the network, as the image's root
    /// with CAP_NET_RAW (busybox ping needs a raw socket).
    fn try_start(&self, tag: &str, command: &[&str]) -> Result<Output, String> {
        let name = self.container_name(tag);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.network,
            "--cap-add",
            "NET_RAW",
            &self.image,
        ];
        args.extend_from_slice(command);
        self.run(&args, Duration::from_secs(60))
    }

    #[track_caller]
    fn start(&self, tag: &str, command: &[&str]) -> Container {
        let out = self
            .try_start(tag, command)
            .unwrap_or_else(|e| panic!("podman run {tag}: {e}"));
        assert!(
            out.status.success(),
            "podman run of {tag} on {} failed: {}",
            self.network,
            text(&out.stderr)
        );
        self.container(tag)
    }

    /// A started container's namespace and address, as podman reports them.
    fn container(&self, tag: &str) -> Container {
        let name = self.container_name(tag);
        let format = format!(
            "{{{{.NetworkSettings.SandboxKey}}}} {{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        let out = self.ok(
            &["inspect", "--format", &format, &name],
            Duration::from_secs(30),
        );
        let (sandbox, ip) = out.split_once(' ').expect("sandbox and address");
        Container {
            name,
            netns: Path::new(sandbox)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            ip: ip.to_owned(),
        }
    }

    /// `podman exec` in `container`, in time.
    fn exec(&self, container: &Container, args: &[&str], limit: Duration) -> Output {
        let mut full = vec!["exec", &container.name];
        full.extend_from_slice(args);
        self.run(&full, limit)
            .unwrap_or_else(|e| panic!("podman exec: {e}"))
    }

    /// The container's host-side veth: the host link whose ifindex the
    /// container's eth0 names as its peer (asked of the kernel, not of the
    /// plugin's record).
    fn host_veth(&self, container: &Container) -> String {
        let out = self.exec(
            container,
            &["cat", "/sys/class/net/eth0/iflink"],
            Duration::from_secs(30),
        );
        let peer: u64 = text(&out.stdout).parse().expect("eth0's iflink");
        self.host
            .links()
            .iter()
            .find(|l| l["ifindex"].as_u64() == Some(peer))
            .and_then(|l| l["ifname"].as_str())
            .unwrap_or_else(|| panic!("no host link with ifindex {peer} for {}", container.name))
            .to_owned()
    }

    /// After `podman rm` of `containers` and `podman network rm`: no link
    /// on the host but lo (no veth, no bridge), no pins and no record of the
    /// plugin, no namespace of podman's, no libcni cache entry.
    fn assert_nothing_left(&self, containers: &[&Container]) {
        assert_eq!(self.host.link_names(), ["lo"], "links left on the host");
        let pins = pin_dir(&cni_datapath(&self.network));
        assert!(!pins.exists(), "pins left: {}", pins.display());
        let record = store::cni::path(&self.network);
        assert!(!record.exists(), "plugin record left: {}", record.display());
        for c in containers {
            assert!(
                !Path::new("/run/netns").join(&c.netns).exists(),
                "{}'s namespace {} left",
                c.name,
                c.netns
            );
        }
        // libcni's cache of results: NETWORK-CONTAINERID-IFNAME.
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
            let prefix = format!("{}-", self.network);
            let cached: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect();
            assert!(cached.is_empty(), "libcni cache entries left: {cached:?}");
        }
        let all = self.ok(
            &["ps", "-a", "--format", "{{.Names}}"],
            Duration::from_secs(30),
        );
        assert!(all.is_empty(), "containers left: {all}");
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Whatever a failed test left: containers (DEL through the plugin),
        // the network, the storage. Errors are reported, not raised.
        let steps: [&[&str]; 3] = [
            &["rm", "-a", "-f", "-t", "0"],
            &["network", "rm", "-f", &self.network],
            &["rmi", "-a", "-f"],
        ];
        for args in steps {
            match self.run(args, Duration::from_secs(60)) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("cleanup: podman {args:?}: {}", text(&out.stderr)),
                Err(e) => eprintln!("cleanup: {e}"),
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: removing {}: {e}", self.dir.display());
        }
        // The host namespace goes with the last handle, after this.
    }
}

/// `from` reaches `to` over the fast path (see common::runtime).
#[track_caller]
fn assert_fast_path_between(podman: &Podman, from: &Container, to: &Container) {
    assert_fast_path(
        &podman.host,
        &podman.network,
        &Endpoint {
            name: &from.name,
            netns: &from.netns,
            ip: &from.ip,
        },
        &Endpoint {
            name: &to.name,
            netns: &to.netns,
            ip: &to.ip,
        },
    );
}

/// Two podman containers on a netpath-cni network reach each other over the
/// fast path; `podman rm -f` and `podman network rm` leave nothing.
#[test]
fn podman_containers_talk_over_the_fast_path_and_leave_nothing() {
    let podman = Podman::new("10.187.0.0/24");
    let a = podman.start("a", &["sleep", "600"]);
    let b = podman.start("b", &["sleep", "600"]);
    assert_fast_path_between(&podman, &a, &b);

    podman.ok(
        &["rm", "-f", "-t", "0", &a.name, &b.name],
        Duration::from_secs(60),
    );
    podman.ok(&["network", "rm", &podman.network], Duration::from_secs(30));
    podman.assert_nothing_left(&[&a, &b]);
}

/// A pod whose host veth vanished behind podman's back (deleted by hand, a
/// crashed node agent) must not break the network: the next `podman run`
/// succeeds and its container reaches another over the fast path, and
/// `podman rm -f` of the stale one still succeeds and leaves nothing.
#[test]
fn a_stale_pod_does_not_break_the_network() {
    let podman = Podman::new("10.188.0.0/24");
    let a = podman.start("a", &["sleep", "600"]);
    let c = podman.start("c", &["sleep", "600"]);
    let veth = podman.host_veth(&a);
    let del = podman.host.sh("ip", &["link", "del", &veth]);
    assert!(
        del.status.success(),
        "ip link del {veth}: {}",
        text(&del.stderr)
    );

    let started = podman
        .try_start("b", &["sleep", "600"])
        .unwrap_or_else(|e| panic!("podman run b: {e}"));
    assert!(
        started.status.success(),
        "podman run of b after {}'s host veth {veth} vanished failed: {}",
        a.name,
        text(&started.stderr)
    );
    let b = podman.container("b");
    assert_fast_path_between(&podman, &b, &c);

    podman.ok(&["rm", "-f", "-t", "0", &a.name], Duration::from_secs(60));
    podman.ok(
        &["rm", "-f", "-t", "0", &b.name, &c.name],
        Duration::from_secs(60),
    );
    podman.ok(&["network", "rm", &podman.network], Duration::from_secs(30));
    podman.assert_nothing_left(&[&a, &b, &c]);
}
