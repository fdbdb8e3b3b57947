//! Seeing what the datapath does: `trace` (copies of redirected frames),
//! `monitor` (FDB events) and Prometheus `metrics`.

pub mod metrics;
pub mod monitor;
pub mod trace;

/// netpath's log level when RUST_LOG is not set. netlink-proto warns, with
/// whole messages dumped, about any netlink message that arrives for a
/// receiver that has gone (netpath's own link watcher stops with its
/// connection, but a request given up on does the same): the library's
/// bookkeeping, not the user's concern, so only its errors are shown.
/// RUST_LOG overrides all of it.
pub const DEFAULT_LOG_FILTER: &str = "info,netlink_proto=error";

/// The CNI plugin's: stdout belongs to the runtime and a pod's set-up
/// should be silent unless something is wrong.
pub const DEFAULT_CNI_LOG_FILTER: &str = "warn,netlink_proto=error";
