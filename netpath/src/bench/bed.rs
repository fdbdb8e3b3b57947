//! What every bench target is measured over: a bed, two endpoints in
//! network namespaces of their own. `beds.rs` makes the one-host beds,
//! `overlay.rs` the two-host ones.

use super::report::Target;

/// Two endpoints to measure between: network namespaces, the server's at
/// `server_ip`.
pub(super) struct Bed {
    pub target: Target,
    pub name: String,
    pub client: String,
    pub server: String,
    pub server_ip: String,
    /// Sysctls the bed changed in a namespace of its own, with their
    /// values before, restored when it is removed.
    pub restore: Vec<(String, String)>,
    /// How it was built where the kernel decided, for the report.
    pub note: Option<String>,
}

/// `prefix` + pid + the target's initial: unique per process and target.
pub(super) fn bench_name(prefix: &str, target: Target) -> String {
    format!("{prefix}{}{}", std::process::id() % 10000, target.initial())
}
