//! Network policy in the maps (see `netpath_common::policy`): the rules
//! compiled for this node's containers, written under the generation not
//! in force, switched to in one word, then the old generation deleted, so
//! a change is atomic for every packet.

use std::{borrow::BorrowMut, collections::BTreeMap, net::IpAddr};

use anyhow::{Context, Result};
use aya::maps::{HashMap, LpmTrie, MapData, lpm_trie::Key};
use netpath_common::policy::{
    ALL_PORTS, DIRECTION_EGRESS, DIRECTION_INGRESS, EndpointPolicy, ISOLATED_EGRESS,
    ISOLATED_INGRESS, PEER_KEY_FIXED_BITS, PORT_KEY_FIXED_BITS, PeerRule, PolicyEndpointKey,
    PolicyPeerKey, PolicyPortKey, PolicyState,
};

use super::maps::Maps;
use crate::model::policy::{EndpointRules, PortRange, Ports, flatten, port_prefixes};

/// The map entries of one generation.
#[derive(Default)]
pub struct Tables {
    endpoints: Vec<(PolicyEndpointKey, EndpointPolicy)>,
    peers: Vec<(Key<PolicyPeerKey>, PeerRule)>,
    ports: Vec<(Key<PolicyPortKey>, u32)>,
}

impl Tables {
    /// The entries of `rules` under `generation`; `port_of` gives the
    /// host veth's ifindex of a local container's address (its counters).
    pub fn new(
        rules: &[EndpointRules],
        generation: u8,
        port_of: impl Fn(IpAddr) -> Option<u32>,
    ) -> Tables {
        let mut tables = Tables::default();
        // Rules with the same ports share one class: a few port entries
        // serve every peer prefix of every container they apply to.
        let mut classes: BTreeMap<Vec<PortRange>, u32> = BTreeMap::new();
        for endpoint in rules {
            let (family, addr) = address_bytes(endpoint.address);
            let mut flags = 0;
            for (direction, flag, rules) in [
                (DIRECTION_INGRESS, ISOLATED_INGRESS, &endpoint.ingress),
                (DIRECTION_EGRESS, ISOLATED_EGRESS, &endpoint.egress),
            ] {
                let Some(rules) = rules else { continue };
                flags |= flag;
                for (prefix, ports, _) in flatten(rules) {
                    let port_class = match ports {
                        Ports::All => ALL_PORTS,
                        Ports::Only(ranges) => {
                            let next = classes.len() as u32 + 1;
                            let class = *classes.entry(ranges.clone()).or_insert(next);
                            if class == next {
                                tables.add_class(generation, class, &ranges);
                            }
                            class
                        }
                    };
                    let prefix = prefix.trunc();
                    let (_, peer) = address_bytes(prefix.network());
                    let key = PolicyPeerKey {
                        generation,
                        direction,
                        family,
                        _pad: 0,
                        endpoint: addr,
                        peer,
                    };
                    let bits = PEER_KEY_FIXED_BITS + u32::from(prefix.prefix_len());
                    tables
                        .peers
                        .push((Key::new(bits, key), PeerRule { port_class }));
                }
            }
            if flags != 0 {
                let key = PolicyEndpointKey {
                    generation,
                    family,
                    _pad: [0; 2],
                    addr,
                };
                let ifindex = port_of(endpoint.address).unwrap_or(0);
                tables
                    .endpoints
                    .push((key, EndpointPolicy { flags, ifindex }));
            }
        }
        tables
    }

    /// A class's ports: each range as its few prefixes of the port's bits.
    fn add_class(&mut self, generation: u8, class: u32, ranges: &[PortRange]) {
        for range in ranges {
            for (port, len) in port_prefixes(range.first, range.last) {
                let key = PolicyPortKey {
                    generation,
                    protocol: range.protocol.number(),
                    _pad: [0; 2],
                    class: class.to_be_bytes(),
                    port: port.to_be_bytes(),
                };
                self.ports
                    .push((Key::new(PORT_KEY_FIXED_BITS + u32::from(len), key), 1));
            }
        }
    }

    /// Entries per map: containers, peer prefixes, port prefixes.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.endpoints.len(), self.peers.len(), self.ports.len())
    }

    fn write(&self, maps: &Maps) -> Result<()> {
        self.write_to(
            &mut maps.policy_ports()?,
            &mut maps.policy_peers()?,
            &mut maps.policy_endpoints()?,
        )
    }

    /// Writes the entries into these handles of the three rule maps:
    /// [`install`] gives the pinned ones; a test may give a loaded
    /// object's own, so the programs it runs read exactly what the loader
    /// writes.
    pub fn write_to<P, Q, E>(
        &self,
        ports: &mut LpmTrie<P, PolicyPortKey, u32>,
        peers: &mut LpmTrie<Q, PolicyPeerKey, PeerRule>,
        endpoints: &mut HashMap<E, PolicyEndpointKey, EndpointPolicy>,
    ) -> Result<()>
    where
        P: BorrowMut<MapData>,
        Q: BorrowMut<MapData>,
        E: BorrowMut<MapData>,
    {
        let full = |map: &str| {
            format!(
                "writing map {map} (it holds the policy in force and the new one while they change over: \
                 fewer containers or rules per policy fit)"
            )
        };
        for (key, value) in &self.ports {
            ports
                .insert(key, value, 0)
                .with_context(|| full("POLICY_PORTS"))?;
        }
        for (key, value) in &self.peers {
            peers
                .insert(key, value, 0)
                .with_context(|| full("POLICY_PEERS"))?;
        }
        for (key, value) in &self.endpoints {
            endpoints
                .insert(key, value, 0)
                .with_context(|| full("POLICY_ENDPOINTS"))?;
        }
        Ok(())
    }
}

/// Puts `rules` in force: the new generation is written whole, then
/// switched to, then the old one removed. Empty rules (no policy selects
/// any container here) switch policy off: the programs skip it then.
/// A failure before the switch leaves the old policy in force, whole.
pub fn install(
    maps: &Maps,
    rules: &[EndpointRules],
    port_of: impl Fn(IpAddr) -> Option<u32>,
) -> Result<Tables> {
    let mut state_map = maps.policy_state()?;
    let state = state_map.get(&0, 0).context("reading map POLICY_STATE")?;
    let old = state.generation as u8;
    let next = match (super::isolates(rules), old) {
        (false, _) => 0,
        (true, 1) => 2,
        (true, _) => 1,
    };
    let tables = Tables::new(rules, next, port_of);
    if next != 0 {
        // Leftovers of an install that died halfway.
        remove_generation(maps, next)?;
        if let Err(e) = tables.write(maps) {
            remove_generation(maps, next)?;
            return Err(e);
        }
    }
    state_map
        .set(
            0,
            PolicyState {
                generation: u32::from(next),
                _pad: 0,
            },
            0,
        )
        .context("writing map POLICY_STATE")?;
    if old != 0 && old != next {
        remove_generation(maps, old)?;
    }
    Ok(tables)
}

/// The generation in force (0: none).
pub fn generation(maps: &Maps) -> Result<u32> {
    Ok(maps
        .policy_state()?
        .get(&0, 0)
        .context("reading map POLICY_STATE")?
        .generation)
}

/// Deletes every entry of `generation` from the three rule maps.
fn remove_generation(maps: &Maps, generation: u8) -> Result<()> {
    let mut peers = maps.policy_peers()?;
    let stale = matching(peers.keys(), |key| key.data().generation == generation);
    for key in stale {
        peers
            .remove(&key)
            .context("removing from map POLICY_PEERS")?;
    }
    let mut ports = maps.policy_ports()?;
    let stale = matching(ports.keys(), |key| key.data().generation == generation);
    for key in stale {
        ports
            .remove(&key)
            .context("removing from map POLICY_PORTS")?;
    }
    let mut endpoints = maps.policy_endpoints()?;
    let stale = matching(endpoints.keys(), |key| key.generation == generation);
    for key in stale {
        endpoints
            .remove(&key)
            .context("removing from map POLICY_ENDPOINTS")?;
    }
    Ok(())
}

/// The keys a map iteration yields that `wanted` takes, collected before
/// any is removed (removing while iterating restarts the walk).
fn matching<K, E>(keys: impl Iterator<Item = Result<K, E>>, wanted: impl Fn(&K) -> bool) -> Vec<K> {
    keys.filter_map(Result::ok)
        .filter(|key| wanted(key))
        .collect()
}

/// An address as the maps hold it: family, and IPv4 in the first four
/// bytes.
fn address_bytes(address: IpAddr) -> (u8, [u8; 16]) {
    let mut bytes = [0; 16];
    match address {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (4, bytes)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}
