//! netpath as a CNI plugin (spec 1.1.0, and configurations of 0.3.0 on):
//! containers that a runtime creates are plugged into a bridge with
//! netpath's datapath, one datapath shared by every container the plugin
//! attaches to that bridge on this host.
//!
//! One container's state never blocks another's: every ADD, DEL and GC
//! first forgets the attachments whose veth or namespace is gone (a runtime
//! that crashed, a pod killed without DEL), with their FDB entries, port
//! state and addresses.

use std::time::Duration;

use rtnetlink::Handle;
use serde_json::{Value, json};

mod add;
mod addresses;
mod check;
mod remove;
mod result;

use crate::{
    model::{
        cni::{self, CniError, CniResult, Env, NetConf, SUPPORTED_VERSIONS},
        overlay::OverlaySpec,
    },
    store::{
        cni::{Attachment, NetworkRecord},
        lock::{Lock, Purpose},
    },
};

/// Gives a configuration without a mode the network's (the mode its pods
/// were added in), or for a new network the kernel's best (see
/// `ops::default_mode`); refuses an ADD that asks for netkit mode where
/// the kernel has no netkit, before anything changes.
async fn settle_mode(handle: &Handle, conf: &mut NetConf, env: &Env) -> CniResult<()> {
    let owner = conf.datapath_name();
    match conf.mode {
        None => {
            let recorded = NetworkRecord::load(&conf.bridge)
                .map_err(CniError::io)?
                .mode;
            let mode = super::default_mode(handle, &owner, recorded)
                .await
                .map_err(CniError::io)?;
            conf.mode = Some(mode);
        }
        Some(asked) if env.command == "ADD" => super::require_mode(handle, &owner, asked)
            .await
            .map_err(|e| CniError::new(CniError::INVALID_CONFIG, format!("{e:#}")))?,
        Some(_) => {}
    }
    Ok(())
}

/// Runtimes call the plugin for many containers at once: each waits its turn.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);

fn take_lock(datapath: &str) -> CniResult<Lock> {
    Lock::acquire_waiting(datapath, Purpose::Change, LOCK_PATIENCE)
        .map_err(|e| CniError::new(CniError::TRY_AGAIN_LATER, format!("{e:#}")))
}

/// One run of the plugin: the network it is for and the runtime's request,
/// which every step of ADD, DEL and GC needs.
#[derive(Clone, Copy)]
struct Call<'a> {
    handle: &'a Handle,
    conf: &'a NetConf,
    /// The configuration as the runtime gave it, for host-local.
    conf_bytes: &'a [u8],
    env: &'a Env,
}

/// "overlay VNI 42 as node n1 (192.168.77.1)", or "no overlay", for
/// messages.
fn describe(overlay: Option<&OverlaySpec>) -> String {
    match overlay {
        Some(o) => format!("overlay VNI {} as node {} ({})", o.vni, o.node, o.underlay),
        None => "no overlay".into(),
    }
}

/// Whether an attachment's veth and namespace are still there.
fn is_live(a: &Attachment) -> bool {
    a.netns.exists() && nix::net::if_::if_nametoindex(a.host_veth.as_str()).is_ok()
}

pub fn version() -> Value {
    json!({"cniVersion": SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1], "supportedVersions": SUPPORTED_VERSIONS})
}

/// Runs one CNI command; returns what to print on stdout and the exit code.
pub async fn run(env_vars: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (Value, i32) {
    let newest = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1];
    let env = match Env::from_vars(&env_vars) {
        Ok(env) => env,
        Err(e) => return (e.to_json(newest), 1),
    };
    if env.command == "VERSION" {
        return (version(), 0);
    }
    let mut conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(e) => return (e.to_json(newest), 1),
    };
    let version = conf.cni_version.clone();
    if matches!(env.command.as_str(), "STATUS" | "GC") && !conf.is_1_1() {
        let msg = format!(
            "{} needs cniVersion {}, the configuration has {version}",
            env.command,
            cni::VERSION_1_1
        );
        return (
            CniError::new(CniError::INCOMPATIBLE_VERSION, msg).to_json(&version),
            1,
        );
    }
    let handle = match rtnetlink::new_connection() {
        Ok((connection, handle, _)) => {
            tokio::spawn(connection);
            handle
        }
        Err(e) => return (CniError::io(e.into()).to_json(&version), 1),
    };
    if let Err(e) = settle_mode(&handle, &mut conf, &env).await {
        return (e.to_json(&version), 1);
    }
    let call = Call {
        handle: &handle,
        conf: &conf,
        conf_bytes: stdin,
        env: &env,
    };
    let outcome = match env.command.as_str() {
        "ADD" => add::add(&call).await,
        "DEL" => remove::del(&call).await.map(|()| Value::Null),
        "CHECK" => check::check(&handle, &conf, &env)
            .await
            .map(|()| Value::Null),
        "GC" => remove::gc(&call).await.map(|()| Value::Null),
        "STATUS" => check::status(&handle, &conf).await.map(|()| Value::Null),
        other => Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other} is not supported"),
        )),
    };
    match outcome {
        Ok(value) => (value, 0),
        Err(e) => (e.to_json(&version), 1),
    }
}
