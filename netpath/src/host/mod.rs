//! The machine side: netlink, network namespaces, the one plumbing that
//! plugs a container into a bridge (used by topologies, the CNI plugin and
//! the benchmark alike), ethtool offloads, NAT and nftables, the overlay's
//! vxlan and WireGuard devices, and network policy as nftables or iptables
//! rules (the policy benchmark's baselines).
//!
//! "Host" is whatever network namespace netpath runs in: the machine's own,
//! or a namespace a test (or a simulated host of an overlay) made for it.

pub mod ethtool;
pub mod interrupt;
pub mod iptables_policy;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nft_policy;
pub mod plumbing;
pub mod script;
pub mod vxlan;
pub mod wireguard;
