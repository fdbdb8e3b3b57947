//! containerd (Debian's 1.6, its CRI plugin and ctr) as a Kubernetes node
//! runs it, for the test alone: a [`Containerd`] daemon started by the test
//! with its own root, state, sockets, configuration, CNI configuration and
//! plugin directories, inside the test's private host namespace
//! ([`Host`]), so that the netpath-cni it runs makes its bridge and veths
//! there. The sandbox ("pause") image is built here from busybox-static and
//! imported with `ctr images import`: nothing is pulled. It is driven
//! through the CRI gRPC API over its unix socket, as the kubelet drives it
//! (k8s-cri's v1 client, tonic).
//!
//! Dropping it removes what a failed test left, in order: the pods (through
//! CRI, which DELs them), ctr's containers, the daemon (SIGTERM, then
//! SIGKILL), its shims and their containers, any attachment netpath still
//! records (DEL by hand), mounts under its directory, the pod namespaces
//! it learned of, its cgroups and its directory.

use std::{
    collections::HashMap,
    future::Future,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxFilter, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest, StopPodSandboxRequest,
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use netpath::{datapath::object::pin_dir, model::naming::cni_datapath, store};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    Host, outside, patience,
    runtime::{busybox_rootfs, oci_image, ok_within, plugin_dir, run_within, text},
    unique_name, waiting_for, within,
};

/// The Kubernetes namespace of the tests' pods.
pub const POD_NAMESPACE: &str = "netpath-test";

/// The CRI plugin's containerd namespace.
const K8S_NAMESPACE: &str = "k8s.io";

/// The variables through which the test's hold step (see
/// [`HOLD_STEP`]) learns where its marker files are: containerd hands its
/// environment down to the CNI plugins it runs.
const HOLD_ENV: &str = "NETPATH_TEST_HOLD";
const HELD_ENV: &str = "NETPATH_TEST_HELD";

/// A chained CNI step after netpath-cni, for the test of a runtime that
/// dies in the middle of a sandbox's set-up: it passes the previous
/// result on, and holds the first ADD that finds the marker file
/// `$NETPATH_TEST_HOLD` (which it removes) until the test removes the file
/// `$NETPATH_TEST_HELD`, where it wrote its container ID and namespace: the
/// window in which the test kills containerd, with netpath-cni's ADD done.
/// It gives up after 60 s, so it never outlives a failed test for long.
/// libcni marshals a plugin's configuration with its keys sorted, so the
/// previous result is what lies between `"prevResult":` and this step's
/// `"type"`, the last key.
const HOLD_STEP: &str = r#"#!/bin/sh
conf=$(cat)
case "$CNI_COMMAND" in
VERSION)
    echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}' ;;
ADD)
    if rm "$NETPATH_TEST_HOLD" 2>/dev/null; then
        echo "$CNI_CONTAINERID $CNI_NETNS" > "$NETPATH_TEST_HELD.tmp"
        mv "$NETPATH_TEST_HELD.tmp" "$NETPATH_TEST_HELD"
        i=0
        while [ -e "$NETPATH_TEST_HELD" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    fi
    result=$(printf '%s' "$conf" | sed -n 's/^.*"prevResult":\(.*\),"type":"netpath-test-hold"}$/\1/p')
    if [ -z "$result" ]; then
        echo '{"cniVersion":"1.0.0","code":999,"msg":"netpath-test-hold: no prevResult in its configuration"}'
        exit 1
    fi
    printf '%s' "$result" ;;
esac
"#;

/// How the test's containerd is set up.
#[derive(Clone, Copy)]
pub struct Options {
    /// netpath's IPAM subnet of the network.
    pub subnet: &'static str,
    /// Chain the hold step after netpath-cni, armed for the first ADD.
    pub hold: bool,
}

/// A RunPodSandbox under way (see [`Containerd::spawn_run_pod`]).
pub type RunPodCall = tokio::task::JoinHandle<
    Result<tonic::Response<k8s_cri::v1::RunPodSandboxResponse>, tonic::Status>,
>;

/// A pod the kubelet would ask for: its CRI metadata.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The pod's annotations (`kubernetes.io/egress-bandwidth`, say).
    pub annotations: HashMap<String, String>,
}

/// A pod sandbox containerd runs.
#[derive(Clone, Debug)]
pub struct Pod {
    pub spec: PodSpec,
    /// The sandbox's ID: netpath-cni's CNI_CONTAINERID.
    pub id: String,
    /// Its network namespace, by name under /run/netns (containerd's `cni-…`).
    pub netns: String,
    pub ip: String,
}

/// The CRI clients, on a runtime of their own (the tests are synchronous).
struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

pub struct Containerd {
    pub host: Arc<Host>,
    /// The network: the conflist's name, netpath's bridge, ctr's namespace
    /// and the tag of every name the test makes.
    pub network: String,
    /// Holds everything of this containerd (see [`Containerd::start`]).
    pub dir: PathBuf,
    /// The pause image, as `sandbox_image` names it.
    pub image: String,
    daemon: Option<Child>,
    rt: tokio::runtime::Runtime,
    cri: Option<Cri>,
    /// Network namespaces (by name) the test learned of: removed on drop
    /// if still there.
    netns: Mutex<Vec<String>>,
}

impl Containerd {
    /// A containerd of the test's own, up and ready (CRI's runtime and
    /// network conditions), with the pause image imported into the CRI's
    /// namespace and ctr's.
    pub fn start(options: Options) -> Containerd {
        let host = Host::new();
        let network = unique_name("ctd");
        let dir = std::env::temp_dir().join(format!("netpath-containerd-{network}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the CRI client");
        let mut containerd = Containerd {
            host,
            image: format!("localhost/netpath-pause:{network}"),
            network,
            dir,
            daemon: None,
            rt,
            cri: None,
            netns: Mutex::new(Vec::new()),
        };
        // Cleanup from here on is Drop's.
        containerd.configure(&options);
        containerd.spawn_daemon();
        containerd.import_image();
        containerd
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    /// The CNI configuration of the pods: netpath-cni in tc mode with its
    /// own IPAM, then (with `hold`) the hold step.
    pub fn conflist(&self, options: &Options) -> Value {
        // A Kubernetes node's: containerd passes the pod's bandwidth
        // annotations to the plugins that declare the capability.
        let mut plugins = vec![json!({
            "type": "netpath-cni",
            "bridge": self.network,
            "mode": "tc",
            "ipam": {"type": "netpath", "subnet": options.subnet},
            "capabilities": {"bandwidth": true},
        })];
        if options.hold {
            plugins.push(json!({"type": "netpath-test-hold"}));
        }
        json!({"cniVersion": "1.0.0", "name": self.network, "plugins": plugins})
    }

    /// The network as common::cni knows it, for its checks and DELs.
    pub fn cni_network(&self, options: &Options) -> super::cni::Network {
        let mut config = self.conflist(options)["plugins"][0].clone();
        config["cniVersion"] = json!("1.0.0");
        config["name"] = json!(self.network);
        super::cni::Network::with_config(&self.host, self.network.clone(), config)
    }

    /// containerd's configuration (version 2): root, state, sockets and
    /// every other path in the test's directory; the CRI plugin with the
    /// local pause image, the native snapshotter (plain directories: no
    /// overlay mounts to leak, and the image is small), runc through
    /// cgroupfs (crun refuses this VM's hybrid cgroups), and the test's CNI
    /// directories. The pod namespaces stay under /var/run/netns, where
    /// kubelet's containerd makes them (`ip netns` names them); the test
    /// removes those it made.
    fn configure(&self, options: &Options) {
        for sub in ["root", "state", "runc", "opt", "cni-conf"] {
            std::fs::create_dir_all(self.path(sub)).unwrap();
        }
        let bin = plugin_dir(&self.path("cni-bin"));
        if options.hold {
            let step = bin.join("netpath-test-hold");
            std::fs::write(&step, HOLD_STEP).unwrap();
            std::fs::set_permissions(&step, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(self.path("hold"), "").unwrap();
        }
        std::fs::write(
            self.path("cni-conf").join("10-netpath.conflist"),
            serde_json::to_string_pretty(&self.conflist(options)).unwrap(),
        )
        .unwrap();
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
# Snapshotters and services this test does not use (and that would look
# for kernel features or tools).
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{dir}/containerd.sock"

[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{dir}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{dir}/cni-conf"
    max_conf_num = 1
"#,
            dir = self.dir.display(),
            image = self.image,
            bin = bin.display(),
        );
        std::fs::write(self.path("config.toml"), config).unwrap();
    }

    /// Starts the daemon in the test's host namespace (its log appended to
    /// `containerd.log`) and waits until the CRI plugin says the runtime
    /// and the network are ready.
    fn spawn_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("containerd.log"))
            .unwrap();
        let child = self
            .host
            .command("containerd")
            .arg("--config")
            .arg(self.path("config.toml"))
            .env(HOLD_ENV, self.path("hold"))
            .env(HELD_ENV, self.path("held"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd (cargo xtask setup installs it)");
        self.daemon = Some(child);
        let ready = std::time::Instant::now();
        let limit = patience(Duration::from_secs(30));
        let _waiting = waiting_for("containerd's CRI to be ready");
        loop {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "containerd exited ({status}) while starting: {}",
                    self.log()
                );
            }
            let why = match self
                .connect()
                .and_then(|cri| self.conditions(&cri).map(|c| (cri, c)))
            {
                Ok((cri, conditions)) if conditions.iter().all(|(_, ok)| *ok) => {
                    self.cri = Some(cri);
                    return;
                }
                Ok((_, conditions)) => format!("conditions {conditions:?}"),
                Err(e) => e,
            };
            assert!(
                ready.elapsed() < limit,
                "containerd not ready after {limit:?} ({why}): {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the daemon logged (its last 60 lines), for failures.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.path("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// A CRI connection over the unix socket, as k8s-cri's docs make one.
    fn connect(&self) -> Result<Cri, String> {
        let socket = self.socket();
        let connecting = async move {
            Endpoint::try_from("http://[::]")
                .map_err(|e| e.to_string())?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| format!("connecting to containerd's socket: {e}"))
        };
        let channel = self.block_on("connecting", Duration::from_secs(5), connecting)??;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Runs `future` on the client's runtime for at most `limit` (scaled):
    /// a containerd that hangs fails the call, never the wait.
    fn block_on<T>(
        &self,
        what: &str,
        limit: Duration,
        future: impl Future<Output = T>,
    ) -> Result<T, String> {
        let limit = patience(limit);
        let _waiting = waiting_for(&format!("containerd: {what}"));
        // The timer is made inside the runtime, whose clock it needs.
        self.rt
            .block_on(async { tokio::time::timeout(limit, future).await })
            .map_err(|_| format!("{what}: no answer from containerd within {limit:?}"))
    }

    fn cri(&self) -> &Cri {
        self.cri.as_ref().expect("containerd is not running")
    }

    /// The CRI runtime client (a clone: calls take it mutably).
    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.cri().runtime.clone()
    }

    /// A CRI call of `what`, at most 60 s: the gRPC status as an error.
    fn call<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        self.block_on(what, Duration::from_secs(60), future)?
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("{what}: {} ({:?})", status.message(), status.code()))
    }

    /// The CRI Status conditions (RuntimeReady, NetworkReady) and whether
    /// each holds.
    fn conditions(&self, cri: &Cri) -> Result<Vec<(String, bool)>, String> {
        let mut client = cri.runtime.clone();
        let status = self.call("Status", client.status(StatusRequest { verbose: false }))?;
        Ok(status
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.r#type, c.status))
            .collect())
    }

    /// `ctr` against this containerd, in containerd namespace `namespace`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut cmd = self.host.command("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace]);
        cmd
    }

    /// ctr's namespace of the test's `ctr run` containers.
    pub fn ctr_namespace(&self) -> &str {
        &self.network
    }

    /// The pause image, built here (busybox, `sleep` as its entrypoint: the
    /// sandbox is stopped with SIGKILL) as an OCI image layout, imported
    /// into the CRI's namespace and ctr's, unpacked for the native
    /// snapshotter; waits until the CRI plugin knows it.
    fn import_image(&self) {
        let rootfs = busybox_rootfs(&self.path("image-rootfs"));
        let tarball = oci_image(
            &rootfs,
            &self.path("image"),
            &self.image,
            &["/bin/sleep", "2147483647"],
        );
        for namespace in [K8S_NAMESPACE, self.ctr_namespace()] {
            let mut import = self.ctr(namespace);
            import
                .args(["images", "import", "--snapshotter", "native"])
                .arg(&tarball);
            ok_within(
                import,
                Duration::from_secs(60),
                &format!("ctr images import into {namespace}"),
            );
        }
        let mut images = self.cri().images.clone();
        let image = self.image.clone();
        within(
            Duration::from_secs(10),
            &format!("the CRI plugin to know the imported image {}", self.image),
            || {
                let request = ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                };
                // An error (not known yet) is asked again.
                self.call("ImageStatus", images.image_status(request))
                    .is_ok_and(|status| status.image.is_some())
            },
        );
    }

    /// The pod named `NETWORK-tag` in [`POD_NAMESPACE`], with a UID of its own.
    pub fn pod_spec(&self, tag: &str) -> PodSpec {
        let name = format!("{}-{tag}", self.network);
        PodSpec {
            uid: format!("uid-{name}"),
            name,
            namespace: POD_NAMESPACE.to_owned(),
            annotations: HashMap::new(),
        }
    }

    /// The sandbox configuration the kubelet sends for `spec` (attempt
    /// `attempt`): metadata, the kubelet's labels, and the pod's cgroup
    /// under a parent of the test's own (removed on drop).
    fn sandbox_config(&self, spec: &PodSpec, attempt: u32) -> PodSandboxConfig {
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), spec.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                spec.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), spec.uid.clone()),
        ]);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt,
            }),
            hostname: spec.name.clone(),
            labels,
            annotations: spec.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The cgroup every container of this test goes under.
    pub fn cgroup_parent(&self) -> String {
        format!("/netpath-{}", self.network)
    }

    /// RunPodSandbox of `spec`, attempt `attempt`: the sandbox's ID, or
    /// containerd's error.
    pub fn try_run_pod(&self, spec: &PodSpec, attempt: u32) -> Result<String, String> {
        let request = RunPodSandboxRequest {
            config: Some(self.sandbox_config(spec, attempt)),
            runtime_handler: String::new(),
        };
        let mut client = self.runtime();
        self.call("RunPodSandbox", client.run_pod_sandbox(request))
            .map(|r| r.pod_sandbox_id)
    }

    /// RunPodSandbox of `spec` started on the client's runtime, without
    /// waiting for it: for a call containerd dies in.
    pub fn spawn_run_pod(&self, spec: &PodSpec) -> RunPodCall {
        let request = RunPodSandboxRequest {
            config: Some(self.sandbox_config(spec, 0)),
            runtime_handler: String::new(),
        };
        let mut client = self.runtime();
        self.rt
            .spawn(async move { client.run_pod_sandbox(request).await })
    }

    /// Waits (at most `limit`) for a RunPodSandbox from [`Self::spawn_run_pod`].
    pub fn join_run_pod(&self, call: RunPodCall, limit: Duration) -> Result<String, String> {
        match self.block_on("the RunPodSandbox under way", limit, call)? {
            Ok(Ok(response)) => Ok(response.into_inner().pod_sandbox_id),
            Ok(Err(status)) => Err(format!("{} ({:?})", status.message(), status.code())),
            Err(e) => Err(format!("the call's task: {e}")),
        }
    }

    /// RunPodSandbox of `spec` (attempt `attempt`), which must succeed,
    /// and the sandbox as PodSandboxStatus reports it: ready, with an
    /// address and a network namespace.
    #[track_caller]
    pub fn run_pod(&self, spec: &PodSpec, attempt: u32) -> Pod {
        let id = self
            .try_run_pod(spec, attempt)
            .unwrap_or_else(|e| panic!("RunPodSandbox of {}: {e}\n{}", spec.name, self.log()));
        self.pod(spec, &id)
    }

    /// Sandbox `id` of `spec`, as PodSandboxStatus (verbose) reports it.
    #[track_caller]
    pub fn pod(&self, spec: &PodSpec, id: &str) -> Pod {
        let mut client = self.runtime();
        let response = self
            .call(
                "PodSandboxStatus",
                client.pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_owned(),
                    verbose: true,
                }),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status.expect("a sandbox status");
        assert_eq!(
            status.state,
            PodSandboxState::SandboxReady as i32,
            "sandbox {} of {} is not ready",
            id,
            spec.name
        );
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        assert!(
            !ip.is_empty(),
            "sandbox {id} of {} has no address",
            spec.name
        );
        // containerd's verbose info: JSON with the sandbox container's
        // runtime spec, whose network namespace is the pod's.
        let info: Value = serde_json::from_str(
            response
                .info
                .get("info")
                .unwrap_or_else(|| panic!("no verbose info for sandbox {id}")),
        )
        .expect("the sandbox's info is JSON");
        let path = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .unwrap_or_else(|| panic!("no network namespace in sandbox {id}'s spec: {info}"));
        let netns = self.learn_netns(Path::new(path));
        Pod {
            spec: spec.clone(),
            id: id.to_owned(),
            netns,
            ip,
        }
    }

    /// Remembers a pod namespace the test learned of by its path (for
    /// Drop to remove, if containerd did not), and returns its name under
    /// /run/netns (containerd's /var/run/netns is the same directory).
    #[track_caller]
    pub fn learn_netns(&self, path: &Path) -> String {
        let name = path
            .file_name()
            .unwrap_or_else(|| panic!("namespace path {}", path.display()))
            .to_string_lossy()
            .into_owned();
        assert!(
            netpath::host::netns::path(&name).exists(),
            "{} is not a namespace `ip netns` knows",
            path.display()
        );
        self.netns.lock().unwrap().push(name.clone());
        name
    }

    /// The sandboxes of pod `spec` (ListPodSandbox by the kubelet's UID
    /// label): ID, attempt and whether it is ready.
    pub fn sandboxes_of(&self, spec: &PodSpec) -> Vec<(String, u32, bool)> {
        let filter = PodSandboxFilter {
            label_selector: HashMap::from([("io.kubernetes.pod.uid".to_owned(), spec.uid.clone())]),
            ..Default::default()
        };
        self.list_sandboxes(Some(filter))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn list_sandboxes(
        &self,
        filter: Option<PodSandboxFilter>,
    ) -> Result<Vec<(String, u32, bool)>, String> {
        let mut client = self.runtime();
        let list = self.call(
            "ListPodSandbox",
            client.list_pod_sandbox(ListPodSandboxRequest { filter }),
        )?;
        Ok(list
            .items
            .into_iter()
            .map(|s| {
                (
                    s.id,
                    s.metadata.map(|m| m.attempt).unwrap_or_default(),
                    s.state == PodSandboxState::SandboxReady as i32,
                )
            })
            .collect())
    }

    /// StopPodSandbox (which DELs the pod's network and removes its
    /// namespace), then RemovePodSandbox, as the kubelet ends a pod.
    pub fn try_remove_pod(&self, id: &str) -> Result<(), String> {
        let mut client = self.runtime();
        self.call(
            "StopPodSandbox",
            client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            }),
        )?;
        self.call(
            "RemovePodSandbox",
            client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            }),
        )?;
        Ok(())
    }

    #[track_caller]
    pub fn remove_pod(&self, id: &str) {
        self.try_remove_pod(id)
            .unwrap_or_else(|e| panic!("removing sandbox {id}: {e}\n{}", self.log()));
    }

    /// SIGKILL to the daemon alone (its shims and the CNI plugins it runs
    /// live on), as a crash or the OOM killer would.
    pub fn kill_daemon(&mut self) {
        self.cri = None;
        let mut daemon = self.daemon.take().expect("containerd is running");
        daemon.kill().expect("SIGKILL to containerd");
        daemon.wait().expect("reaping containerd");
    }

    /// Starts the daemon again on the same root, state and configuration.
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none(), "containerd is still running");
        self.spawn_daemon();
    }

    /// Whether the hold step holds an ADD: its container ID and namespace.
    pub fn held_file(&self) -> PathBuf {
        self.path("held")
    }

    /// What netpath-cni records of the network.
    pub fn record(&self) -> store::cni::NetworkRecord {
        store::cni::NetworkRecord::load(&self.network).expect("netpath's record of the network")
    }

    /// Fails the test if netpath's record of sandbox `pod` does not carry
    /// the identity containerd passed in CNI_ARGS.
    #[track_caller]
    pub fn assert_recorded(&self, pod: &Pod) {
        let record = self.record();
        let a = record
            .attachments
            .iter()
            .find(|a| a.container_id == pod.id)
            .unwrap_or_else(|| panic!("netpath has no attachment of sandbox {}", pod.id));
        assert_eq!(
            a.pod.as_deref(),
            Some(pod.spec.name.as_str()),
            "K8S_POD_NAME"
        );
        assert_eq!(
            a.identity.namespace, pod.spec.namespace,
            "K8S_POD_NAMESPACE"
        );
        assert_eq!(
            a.pod_uid.as_deref(),
            Some(pod.spec.uid.as_str()),
            "K8S_POD_UID"
        );
        // containerd says /var/run/netns/NAME, the same directory as /run/netns.
        assert_eq!(
            a.netns.file_name(),
            Some(std::ffi::OsStr::new(&pod.netns)),
            "CNI_NETNS"
        );
    }

    /// After the pods are removed: no link on the host but lo (no veth, no
    /// bridge), nothing of netpath's network (pins, record, `netpath list`),
    /// no pod namespace left, no sandbox in containerd.
    #[track_caller]
    pub fn assert_nothing_left(&self, network: &super::cni::Network, pods: &[&Pod]) {
        assert_eq!(self.host.link_names(), ["lo"], "links left on the host");
        network.assert_gone();
        assert!(
            self.host.listed(&self.network).is_none(),
            "`netpath list` still lists {}",
            self.network
        );
        let pins = pin_dir(&cni_datapath(&self.network));
        assert!(!pins.exists(), "pins left: {}", pins.display());
        for pod in pods {
            assert!(
                !netpath::host::netns::path(&pod.netns).exists(),
                "{}'s namespace {} left",
                pod.spec.name,
                pod.netns
            );
        }
        let left = self.list_sandboxes(None).unwrap_or_else(|e| panic!("{e}"));
        assert!(left.is_empty(), "sandboxes left in containerd: {left:?}");
        let cached = self.cni_cache_entries();
        assert!(cached.is_empty(), "libcni cache entries left: {cached:?}");
    }

    /// libcni's cache of results (containerd's go-cni keeps it in
    /// /var/lib/cni, which no option moves): NETWORK-CONTAINERID-IFNAME.
    fn cni_cache_entries(&self) -> Vec<PathBuf> {
        let prefix = format!("{}-", self.network);
        std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }

    /// `ip netns attach NAME PID`: a name for the network namespace of
    /// process `pid` (a `ctr run` container's), remembered for removal.
    pub fn attach_netns(&self, name: &str, pid: u32) -> String {
        let out = outside("ip", &["netns", "attach", name, &pid.to_string()]);
        assert!(
            out.status.success(),
            "ip netns attach {name} {pid}: {}",
            text(&out.stderr)
        );
        self.netns.lock().unwrap().push(name.to_owned());
        name.to_owned()
    }

    /// `ip netns del NAME` of a name the test gave (see [`Self::attach_netns`]).
    pub fn detach_netns(&self, name: &str) {
        let out = outside("ip", &["netns", "del", name]);
        assert!(
            out.status.success(),
            "ip netns del {name}: {}",
            text(&out.stderr)
        );
        self.netns.lock().unwrap().retain(|n| n != name);
    }

    /// `ctr run --rm --cni` of container `id` running `command`, in the
    /// foreground (only then does ctr DEL the network when the task ends),
    /// started and not waited for. ctr knows no other CNI directories than
    /// /etc/cni/net.d and /opt/cni/bin: it runs in a mount namespace of its
    /// own in which overlays over /etc and /opt (their upper layers in the
    /// test's directory) get those two directories, bind-mounted from the
    /// test's, so the machine's stay as they are. The task's pid goes to
    /// `DIR/ID.pid`, runc's state to `DIR/runc`, its cgroup under
    /// [`Self::cgroup_parent`].
    pub fn spawn_ctr_run(&self, id: &str, command: &[&str]) -> super::KillOnDrop {
        let scratch = self.path(&format!("ctr-mounts-{id}"));
        for sub in ["etc-upper", "etc-work", "opt-upper", "opt-work"] {
            std::fs::create_dir_all(scratch.join(sub)).unwrap();
        }
        let script = r#"set -e
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc-upper,workdir=$1/etc-work" /etc
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$1/opt-upper,workdir=$1/opt-work" /opt
mkdir -p /etc/cni/net.d /opt/cni/bin
mount --bind "$2" /etc/cni/net.d
mount --bind "$3" /opt/cni/bin
shift 3
exec ctr "$@""#;
        let mut cmd = self.host.command("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&scratch)
        .arg(self.path("cni-conf"))
        .arg(self.path("cni-bin"))
        .arg("--address")
        .arg(self.socket())
        .args(["--namespace", self.ctr_namespace()])
        .args([
            "run",
            "--rm",
            "--cni",
            "--null-io",
            "--snapshotter",
            "native",
        ])
        // runc's state in the test's directory, not /run/containerd/runc.
        .arg("--runc-root")
        .arg(self.path("runc"))
        .arg("--pid-file")
        .arg(self.path(&format!("{id}.pid")))
        .arg("--cgroup")
        .arg(format!("{}/{id}", self.cgroup_parent()))
        .args([self.image.as_str(), id])
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd.spawn().expect("starting ctr run").into()
    }

    /// The pid of `ctr run` container `id`'s task, once ctr wrote it.
    #[track_caller]
    pub fn ctr_task_pid(&self, id: &str) -> u32 {
        super::runtime::wait_for_file(
            &self.path(&format!("{id}.pid")),
            Duration::from_secs(30),
            &format!("ctr run to start container {id}"),
        )
        .trim()
        .parse()
        .expect("a pid in ctr's pid file")
    }

    /// The CNI DEL a runtime owed: of every attachment netpath still
    /// records on the network, by hand. Errors are reported, not raised.
    fn del_recorded(&self) {
        let Ok(record) = store::cni::NetworkRecord::load(&self.network) else {
            return;
        };
        if record.attachments.is_empty() {
            return;
        }
        let mut conf = self.conflist(&Options {
            subnet: "",
            hold: false,
        })["plugins"][0]
            .clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(self.network);
        // The IPAM's subnet is in the record's addresses; DEL needs it only
        // to be a valid configuration.
        if let Some(ip) = record.attachments.iter().flat_map(|a| &a.ips).next() {
            conf["ipam"]["subnet"] = json!(ip.trunc().to_string());
        }
        let conf_file = self.path("del.json");
        if std::fs::write(&conf_file, conf.to_string()).is_err() {
            return;
        }
        for a in &record.attachments {
            let mut del = self.host.command("sh");
            del.args(["-c", "exec \"$0\" < \"$1\""])
                .arg(env!("CARGO_BIN_EXE_netpath-cni"))
                .arg(&conf_file)
                .env("CNI_COMMAND", "DEL")
                .env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_PATH", "/usr/lib/cni");
            match run_within(del, Duration::from_secs(90)) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("cleanup: DEL of {}: {}", a.container_id, text(&out.stdout)),
                Err(e) => eprintln!("cleanup: DEL of {}: {e}", a.container_id),
            }
        }
    }

    /// Processes whose command line names this containerd's socket: its
    /// shims (`-address SOCKET`), a `ctr` left running.
    fn processes_of_mine(&self) -> Vec<i32> {
        let socket = self.socket().display().to_string();
        let me = std::process::id() as i32;
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| c.split(|b| *b == 0).any(|arg| arg == socket.as_bytes()))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Through containerd while it runs: the pods (StopPodSandbox DELs
        // them), ctr's containers.
        if self.cri.is_some() {
            match self.list_sandboxes(None) {
                Ok(sandboxes) => {
                    for (id, _, _) in sandboxes {
                        if let Err(e) = self.try_remove_pod(&id) {
                            eprintln!("cleanup: {e}");
                        }
                    }
                }
                Err(e) => eprintln!("cleanup: {e}"),
            }
            let namespace = self.ctr_namespace().to_owned();
            let mut list = self.ctr(&namespace);
            list.args(["containers", "list", "--quiet"]);
            let containers = run_within(list, Duration::from_secs(30))
                .map(|out| text(&out.stdout))
                .unwrap_or_default();
            for id in containers.lines() {
                let steps: [&[&str]; 3] = [
                    &["tasks", "kill", "--signal", "SIGKILL", id],
                    &["tasks", "delete", "--force", id],
                    &["containers", "delete", id],
                ];
                for args in steps {
                    let mut ctr = self.ctr(&namespace);
                    ctr.args(args);
                    let _ = run_within(ctr, Duration::from_secs(30));
                }
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let stopped = std::time::Instant::now();
            while daemon.try_wait().ok().flatten().is_none()
                && stopped.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // The containers of shims left running (a killed daemon's), in
        // runc's root of each containerd namespace (CRI's, ctr's), then the
        // shims themselves and any ctr still running.
        let namespaces = std::fs::read_dir(self.path("runc"))
            .into_iter()
            .flatten()
            .flatten();
        for runc_root in namespaces.map(|n| n.path()) {
            for e in std::fs::read_dir(&runc_root)
                .into_iter()
                .flatten()
                .flatten()
            {
                let mut runc = Command::new("runc");
                runc.arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force"])
                    .arg(e.file_name());
                let _ = run_within(runc, Duration::from_secs(30));
            }
        }
        for pid in self.processes_of_mine() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.del_recorded();
        // Mounts under the directory (rootfs binds, sandbox /dev/shm),
        // deepest first.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for name in self.netns.lock().unwrap().drain(..) {
            if netpath::host::netns::path(&name).exists() {
                eprintln!("cleanup: removing namespace {name}");
                let _ = outside("ip", &["netns", "del", &name]);
            }
        }
        remove_cgroups(&self.cgroup_parent());
        for entry in self.cni_cache_entries() {
            let _ = std::fs::remove_file(entry);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: removing {}: {e}", self.dir.display());
        }
        // The host namespace goes with the last handle, after this.
    }
}

/// Removes cgroup `parent` (and what is under it: cgroups runc left) from
/// every hierarchy, deepest first. Nothing to do where it is absent.
fn remove_cgroups(parent: &str) {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let relative = parent.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    remove(&root.join(relative)); // the unified hierarchy, on cgroup v2
    for hierarchy in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let dir = hierarchy.path().join(relative);
        if dir.exists() {
            remove(&dir);
        }
    }
}
