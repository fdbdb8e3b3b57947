//! The protocol numbers the programs read frames by, once: EtherTypes in
//! network order (compared with the header's bytes as they are) and IP
//! protocol / IPv6 next-header numbers.

pub const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();
pub const ETH_P_ARP: [u8; 2] = 0x0806u16.to_be_bytes();
pub const ETH_P_IPV6: [u8; 2] = 0x86ddu16.to_be_bytes();

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_MOBILITY: u8 = 135;
pub const IPPROTO_HIP: u8 = 139;
pub const IPPROTO_SHIM6: u8 = 140;
/// RFC 3692's experimental header numbers.
pub const IPPROTO_EXPERIMENT1: u8 = 253;
pub const IPPROTO_EXPERIMENT2: u8 = 254;
