//! The plugin driven as a runtime drives it: [`run`] (one call: CNI_*
//! environment, configuration on stdin, JSON on stdout), a [`Network`] (a
//! bridge of the test's own and its configuration), [`Sandbox`] (a
//! namespace the runtime made) and [`Pod`] (a container in its sandbox,
//! DELeted and its namespace removed when dropped, so a failing test leaves
//! no bridge, veth, pin or state behind).

use std::sync::Arc;

use netpath::{datapath::object::pin_dir, host::netns, model::naming::cni_datapath, store};
use serde_json::{Value, json};

use super::{Host, output_within, outside, unique_name};

/// Runs the plugin on `host`, as a runtime there would; returns its exit
/// status and parsed stdout. A plugin still running after 90 s (longer
/// than its 60 s wait for the network's lock) fails the test.
pub fn run(
    host: &Host,
    command: &str,
    container: &str,
    netns: Option<&str>,
    ifname: &str,
    conf: &Value,
) -> (bool, Value) {
    run_with_args(host, command, container, netns, ifname, conf, None)
}

/// [`run`] with CNI_ARGS (`K=V;K=V`), as kubelet's runtimes pass a pod's
/// namespace and name.
pub fn run_with_args(
    host: &Host,
    command: &str,
    container: &str,
    netns: Option<&str>,
    ifname: &str,
    conf: &Value,
    cni_args: Option<&str>,
) -> (bool, Value) {
    let mut cmd = host.command(env!("CARGO_BIN_EXE_netpath-cni"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", ns);
    }
    if let Some(args) = cni_args {
        cmd.env("CNI_ARGS", args);
    }
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        conf.to_string().as_bytes(),
    )
    .unwrap();
    let out = output_within(
        child,
        std::time::Duration::from_secs(90),
        &format!("netpath-cni {command} of container {container}"),
    );
    let value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
    };
    (out.status.success(), value)
}

/// A CNI 1.0.0 network configuration ("testnet") of netpath-cni on `bridge`.
pub fn conf(bridge: &str, ipam: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": "testnet", "type": "netpath-cni", "bridge": bridge, "ipam": ipam})
}

/// The same in CNI 1.1.0, with netpath's IPAM on `subnet`.
pub fn conf_1_1(bridge: &str, subnet: &str) -> Value {
    json!({"cniVersion": "1.1.0", "name": "testnet", "type": "netpath-cni", "bridge": bridge,
           "ipam": {"type": "netpath", "subnet": subnet}})
}

/// The configuration of a CHECK: the network's, with the ADD's result as
/// prevResult, as a runtime sends it.
pub fn with_prev_result(config: &Value, add_result: &Value) -> Value {
    let mut config = config.clone();
    config["prevResult"] = add_result.clone();
    config
}

/// The first address of an ADD's result, without its prefix length.
pub fn first_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_owned()
}

/// A network of a test: a bridge name unique to it and the configuration a
/// runtime hands the plugin for it. Its pods are [`Pod`]s.
pub struct Network {
    pub host: Arc<Host>,
    pub bridge: String,
    pub config: Value,
}

impl Network {
    /// A CNI 1.0.0 network on a new bridge named after `tag`, with `ipam`.
    pub fn new(tag: &str, ipam: Value) -> Self {
        let bridge = unique_name(tag);
        let config = conf(&bridge, ipam);
        Self::with_config(&Host::new(), bridge, config)
    }

    /// A CNI 1.0.0 network on a new bridge named after `tag`, with
    /// netpath's IPAM on `subnet` (one, or a list).
    pub fn netpath(tag: &str, subnet: impl Into<Value>) -> Self {
        Self::new(tag, json!({"type": "netpath", "subnet": subnet.into()}))
    }

    /// A CNI 1.1.0 network on a new bridge named after `tag`, with
    /// netpath's IPAM on `subnet`.
    pub fn v1_1(tag: &str, subnet: &str) -> Self {
        let bridge = unique_name(tag);
        let config = conf_1_1(&bridge, subnet);
        Self::with_config(&Host::new(), bridge, config)
    }

    pub fn with_config(host: &Arc<Host>, bridge: String, config: Value) -> Self {
        Network {
            host: host.clone(),
            bridge,
            config,
        }
    }

    /// Fails the test if anything of this network is left on its host:
    /// the bridge, ports on it, its pins or its record.
    pub fn assert_gone(&self) {
        let bridge = &self.bridge;
        assert!(
            !self
                .host
                .sh("ip", &["link", "show", bridge])
                .status
                .success(),
            "bridge {bridge} left behind"
        );
        assert!(!pin_dir(&cni_datapath(bridge)).exists(), "pins left behind");
        assert!(!store::cni::path(bridge).exists(), "state left behind");
        let links = String::from_utf8_lossy(&self.host.sh("ip", &["-o", "link", "show"]).stdout)
            .into_owned();
        assert!(
            !links.contains(&format!("master {bridge} ")),
            "ports left on {bridge}"
        );
    }

    /// A namespace `BRIDGE-suffix` with nothing in it yet.
    pub fn sandbox(&self, suffix: &str) -> Sandbox {
        Sandbox::new(format!("{}-{suffix}", self.bridge))
    }

    /// Container `container` of this network in sandbox `BRIDGE-suffix`
    /// (not added yet).
    pub fn pod(&self, suffix: &str, container: &str) -> Pod {
        Pod {
            sandbox: self.sandbox(suffix),
            container: container.to_owned(),
            host: self.host.clone(),
            config: self.config.clone(),
            cni_args: None,
        }
    }

    /// Containers `ctr-0` .. `ctr-(n-1)` in sandboxes `BRIDGE-0` ..
    pub fn pods(&self, n: usize) -> Vec<Pod> {
        (0..n)
            .map(|i| self.pod(&i.to_string(), &format!("ctr-{i}")))
            .collect()
    }

    /// A call without a container (VERSION, STATUS, GC) with `config`.
    pub fn call(&self, command: &str, config: &Value) -> (bool, Value) {
        run(&self.host, command, "", None, "", config)
    }

    /// STATUS of the network's configuration.
    pub fn status(&self) -> (bool, Value) {
        self.call("STATUS", &self.config)
    }

    /// `netpath fdb dump --json` of the network: its rows.
    pub fn fdb(&self) -> Vec<Value> {
        let doc: Value = serde_json::from_str(&self.host.netpath_ok(&[
            "fdb",
            "dump",
            "--name",
            &self.bridge,
            "--json",
        ]))
        .expect("fdb JSON");
        doc.as_array().expect("fdb rows").clone()
    }

    /// `netpath stats --json` of the network.
    pub fn stats(&self) -> Value {
        serde_json::from_str(
            &self
                .host
                .netpath_ok(&["stats", "--name", &self.bridge, "--json"]),
        )
        .expect("stats JSON")
    }

    /// A conflist named after the bridge in a directory of its own (removed
    /// on drop), as libcni reads it: this network's plugin first (its
    /// bridge and IPAM), then `chained`.
    pub fn conflist(&self, chained: &[Value]) -> super::TempDir {
        let dir = std::env::temp_dir().join(format!("netpath-conf-{}", self.bridge));
        std::fs::create_dir_all(&dir).unwrap();
        let mut plugins = vec![json!({
            "type": "netpath-cni", "bridge": self.bridge, "ipam": self.config["ipam"],
        })];
        plugins.extend_from_slice(chained);
        let conflist = json!({
            "cniVersion": self.config["cniVersion"],
            "name": self.bridge,
            "plugins": plugins,
        });
        std::fs::write(dir.join("10-netpath.conflist"), conflist.to_string()).unwrap();
        super::TempDir(dir)
    }
}

/// A namespace the "runtime" made, removed on drop.
pub struct Sandbox(pub String);

impl Sandbox {
    pub fn new(name: String) -> Self {
        assert!(outside("ip", &["netns", "add", &name]).status.success());
        Sandbox(name)
    }

    /// Its name, as `ip netns` knows it.
    pub fn ns(&self) -> &str {
        &self.0
    }

    /// Its path, as CNI_NETNS carries it.
    pub fn path(&self) -> String {
        netns::path(&self.0).display().to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        outside("ip", &["netns", "del", &self.0]);
    }
}

/// A container of a network in its sandbox (interface eth0). Dropping it
/// DELs it (whatever became of it) and then removes its namespace.
pub struct Pod {
    pub sandbox: Sandbox,
    pub container: String,
    host: Arc<Host>,
    config: Value,
    /// CNI_ARGS of its calls.
    cni_args: Option<String>,
}

impl Pod {
    /// The pod as Kubernetes would name it to the plugin: its namespace
    /// and name in CNI_ARGS (the name: its container ID with `-pod`, so a
    /// test sees which of the two netpath shows), its labels in
    /// `args.cni.labels`.
    pub fn identified(mut self, namespace: &str, labels: &[(&str, &str)]) -> Pod {
        self.cni_args = Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={}-pod;\
             K8S_POD_INFRA_CONTAINER_ID={}",
            self.container, self.container
        ));
        let labels: Vec<Value> = labels
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value}))
            .collect();
        self.config["args"] = json!({"cni": {"labels": labels}});
        self
    }

    /// The pod's UID in CNI_ARGS too (K8S_POD_UID), as containerd passes
    /// it; after [`Pod::identified`].
    pub fn of_uid(mut self, uid: &str) -> Pod {
        let args = self
            .cni_args
            .take()
            .unwrap_or_else(|| "IgnoreUnknown=1".into());
        self.cni_args = Some(format!("{args};K8S_POD_UID={uid}"));
        self
    }

    pub fn ns(&self) -> &str {
        self.sandbox.ns()
    }

    pub fn path(&self) -> String {
        self.sandbox.path()
    }

    /// `command` for this container with `config`.
    pub fn call(&self, command: &str, config: &Value) -> (bool, Value) {
        run_with_args(
            &self.host,
            command,
            &self.container,
            Some(&self.path()),
            "eth0",
            config,
            self.cni_args.as_deref(),
        )
    }

    pub fn add(&self) -> (bool, Value) {
        self.call("ADD", &self.config)
    }

    pub fn del(&self) -> (bool, Value) {
        self.call("DEL", &self.config)
    }

    /// CHECK with `add_result` as prevResult.
    pub fn check(&self, add_result: &Value) -> (bool, Value) {
        self.call("CHECK", &with_prev_result(&self.config, add_result))
    }

    /// ADD, which must succeed; what it left on the host.
    pub fn attach(&self) -> Attached {
        let (ok, result) = self.add();
        assert!(ok, "ADD of {}: {result}", self.container);
        Attached::from_result(&self.host, &self.container, &result)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.del();
    }
}

/// A container as ADD left it on the host: its MAC (its static FDB entry)
/// and its host-side veth, by name and ifindex (its port in the datapath).
#[derive(Clone, Debug)]
pub struct Attached {
    pub container: String,
    /// Its first address, without the prefix length.
    pub ip: String,
    pub mac: String,
    pub host_veth: String,
    pub ifindex: u64,
}

impl Attached {
    pub fn from_result(host: &Host, container: &str, result: &Value) -> Self {
        let host_veth = result["interfaces"][0]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{container}: no host veth in {result}"));
        let link: Value = serde_json::from_slice(
            &host
                .sh("ip", &["-j", "link", "show", "dev", host_veth])
                .stdout,
        )
        .unwrap_or_else(|_| panic!("{container}: host veth {host_veth} missing"));
        Attached {
            container: container.to_owned(),
            ip: first_ip(result),
            mac: result["interfaces"][1]["mac"].as_str().unwrap().to_owned(),
            host_veth: host_veth.to_owned(),
            ifindex: link[0]["ifindex"].as_u64().unwrap(),
        }
    }
}
