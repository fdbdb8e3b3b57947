//! What the tests of real container runtimes (podman, containerd) share:
//! running a runtime's command with a deadline ([`run_within`]), the CNI
//! plugin directory a runtime is pointed at ([`plugin_dir`]), the test image
//! built from busybox-static ([`busybox_rootfs`], as a tarball or an OCI
//! image layout), and the check that two of a runtime's containers talk
//! over netpath's fast path ([`assert_fast_path`]). Nothing is pulled.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{BridgeForwardCounter, Host, in_ns, iperf3, link_packets, patience};

/// Runs `cmd` with its output collected, for at most `limit` (scaled by
/// NETPATH_TEST_SLOW): a runtime or tool that hangs is killed and reported
/// as an error, never waited for. No panics, so Drop can use it too.
pub fn run_within(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let limit = patience(limit);
    let shown = format!("{cmd:?}");
    let _waiting = super::waiting_for(&shown);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {shown}: {e}"))?;
    // Pipes are drained on threads so a chatty child never blocks on a full pipe.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(Output {
                status,
                stdout: stdout.join().unwrap_or_default(),
                stderr: stderr.join().unwrap_or_default(),
            });
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            // A grandchild (conmon, a containerd shim) may hold the pipes
            // open: don't join.
            return Err(format!("{shown}: still running after {limit:?}, killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`run_within`] that must succeed; returns stdout. `what` names the step
/// in the failure.
#[track_caller]
pub fn ok_within(cmd: Command, limit: Duration, what: &str) -> String {
    let out = run_within(cmd, limit).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// Where `command` is on PATH.
pub fn on_path(command: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{command} is not installed (cargo xtask setup)"))
}

/// A CNI plugin directory in `dir` (made here): the freshly built
/// netpath-cni beside Debian's standard plugins (loopback, host-local,
/// ...), as in /usr/lib/cni on a real node, all as symlinks.
pub fn plugin_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    symlink(env!("CARGO_BIN_EXE_netpath-cni"), dir.join("netpath-cni")).unwrap();
    for plugin in std::fs::read_dir("/usr/lib/cni").expect("containernetworking-plugins") {
        let plugin = plugin.unwrap();
        symlink(plugin.path(), dir.join(plugin.file_name())).unwrap();
    }
    dir.to_owned()
}

/// A container rootfs in `rootfs` (made here): busybox-static with its
/// applet links, /etc and /tmp. Enough for a pause container and for
/// `sleep`; the traffic of the tests is run in the containers' network
/// namespaces by the test itself.
pub fn busybox_rootfs(rootfs: &Path) -> PathBuf {
    copy_with_libraries(Path::new("/bin/busybox"), rootfs);
    let applets = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in text(&applets.stdout).lines() {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", link).unwrap();
        }
    }
    for sub in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    rootfs.to_owned()
}

/// Copies `binary` into `rootfs` at the same path, with every library ldd
/// lists for it (none for a static binary: ldd then fails, which is fine).
fn copy_with_libraries(binary: &Path, rootfs: &Path) {
    let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
    let libraries = text(&ldd.stdout);
    let files = std::iter::once(binary.to_owned()).chain(
        libraries
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from),
    );
    for file in files {
        let target = rootfs.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        // fs::copy follows symlinks and keeps the mode.
        std::fs::copy(&file, &target)
            .unwrap_or_else(|e| panic!("copying {} into the rootfs: {e}", file.display()));
    }
}

/// `tar -cf tar -C dir .`: a rootfs as `podman import` takes it, or an
/// image layout as `ctr images import` does.
pub fn tar(dir: &Path, tar: &Path) {
    let out = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar of {}: {}",
        dir.display(),
        text(&out.stderr)
    );
}

/// Writes `bytes` as a blob of OCI image layout `layout`; returns its
/// descriptor's digest and size.
fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let staged = blobs.join("staged");
    std::fs::write(&staged, bytes).unwrap();
    // sha256sum, not a hashing crate: the tests have it, and it is the
    // digest the runtime checks.
    let sum = Command::new("sha256sum").arg(&staged).output().unwrap();
    assert!(sum.status.success(), "sha256sum: {}", text(&sum.stderr));
    let hex = text(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    std::fs::rename(&staged, blobs.join(&hex)).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// An OCI image layout (oci-layout, index.json, blobs) of one image named
/// `name` whose one layer is the tarball of `rootfs` and whose entrypoint is
/// `entrypoint`, written in `layout` and tarred into `layout.tar`: what
/// `ctr images import` takes. The name is in `io.containerd.image.name`
/// (containerd names the image by it) and in the OCI ref annotation.
pub fn oci_image(rootfs: &Path, layout: &Path, name: &str, entrypoint: &[&str]) -> PathBuf {
    std::fs::create_dir_all(layout).unwrap();
    let layer_tar = layout.with_extension("layer.tar");
    tar(rootfs, &layer_tar);
    let (layer, layer_size) = blob(layout, &std::fs::read(&layer_tar).unwrap());
    std::fs::remove_file(&layer_tar).unwrap();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        // Uncompressed: the layer's digest is its diff ID.
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let (config, config_size) = blob(layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer, "size": layer_size}],
    });
    let (manifest, manifest_size) = blob(layout, manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
            },
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    )
    .unwrap();
    let tarball = layout.with_extension("tar");
    tar(layout, &tarball);
    tarball
}

/// A container of a runtime, as the fast-path check needs it: its network
/// namespace by name under /run/netns, and its address.
pub struct Endpoint<'a> {
    /// For messages: the runtime's name of the container or pod.
    pub name: &'a str,
    pub netns: &'a str,
    pub ip: &'a str,
}

/// `from` pings `to`, then sends it TCP with iperf3 for 3 s (run by the
/// test in the two namespaces, server in `to`'s): bulk data arrives, and the
/// bridge's forward hook sees at most 1% of the frames the two containers
/// sent, so netpath's programs carried them. The host namespace is the
/// test's, so the counter counts every frame any bridge there forwards.
#[track_caller]
pub fn assert_fast_path(host: &Arc<Host>, tag: &str, from: &Endpoint, to: &Endpoint) {
    let ping = in_ns(from.netns, &["ping", "-c", "3", "-W", "2", to.ip]);
    assert!(
        ping.status.success(),
        "{} cannot ping {} ({}): {}",
        from.name,
        to.name,
        to.ip,
        text(&ping.stdout)
    );
    let bridge = BridgeForwardCounter::new(host, tag, "");
    let sent = || link_packets(from.netns, "eth0").1 + link_packets(to.netns, "eth0").1;
    let before = sent();
    let report = iperf3::run(
        from.netns,
        to.netns,
        to.ip,
        5301,
        3,
        &["--connect-timeout", "3000"],
    );
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    let frames = sent() - before;
    let forwarded = bridge.packets();
    println!(
        "{} -> {}: {:.2} GB in 3 s; the containers sent {frames} frames, the bridge forwarded {forwarded}",
        from.name,
        to.name,
        bytes as f64 / 1e9
    );
    assert!(
        bytes > 100_000_000,
        "only {bytes} bytes of TCP arrived in 3 s"
    );
    assert!(
        frames > 10_000,
        "only {frames} frames sent: too few to judge"
    );
    assert!(
        forwarded * 100 <= frames,
        "the bridge forwarded {forwarded} of {frames} frames (> 1%): not on the fast path"
    );
}

/// The address of `ifname` in namespace `ns` (its first IPv4 one), as the
/// kernel has it.
pub fn address_in(ns: &str, ifname: &str) -> Option<String> {
    let out = super::outside("ip", &["-n", ns, "-j", "-4", "addr", "show", "dev", ifname]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    doc[0]["addr_info"][0]["local"].as_str().map(str::to_owned)
}

/// Waits up to `limit` for the file `path` and returns its contents
/// (written whole by a rename, or by one small write).
#[track_caller]
pub fn wait_for_file(path: &Path, limit: Duration, what: &str) -> String {
    let mut found = String::new();
    super::within(limit, what, || match std::fs::read_to_string(path) {
        Ok(s) if !s.is_empty() => {
            found = s;
            true
        }
        _ => false,
    });
    found
}
