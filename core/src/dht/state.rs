//! What a DHT node keeps across restarts: its id and the addresses of the nodes in its routing
//! table, as a small bencoded dictionary (`id`, `nodes` with 6-byte compact IPv4 addresses,
//! `nodes6` with 18-byte IPv6 ones). The driver writes it to the state folder and reads it back
//! at start; the saved nodes become bootstrap contacts.

use core::fmt;
use core::net::SocketAddr;

use super::krpc::{put_addr, read_addr};
use super::node_id::NodeId;
use crate::bencode::{self, Owned};

/// Saved nodes at most (the rest of a larger file is ignored).
pub const MAX_SAVED_NODES: usize = 512;

/// A node's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    /// Our node id, kept so the network's view of us stays put.
    pub node_id: NodeId,
    /// Nodes to bootstrap from next time, closest buckets first as the table gave them.
    pub nodes: Vec<SocketAddr>,
}

/// Why a saved state could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// Not a bencoded dictionary.
    NotBencode(String),
    /// The `id` key is missing or not 20 bytes.
    BadId,
    /// A node list's length is not a multiple of its entry size.
    BadNodes(&'static str),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::NotBencode(e) => write!(f, "not a saved DHT state: {e}"),
            StateError::BadId => f.write_str("saved DHT state: missing or malformed node id"),
            StateError::BadNodes(key) => write!(f, "saved DHT state: malformed `{key}` list"),
        }
    }
}

impl std::error::Error for StateError {}

impl SavedState {
    /// The bencoded form.
    pub fn encode(&self) -> Vec<u8> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for a in self.nodes.iter().take(MAX_SAVED_NODES) {
            let a = unmapped(*a);
            if a.is_ipv4() {
                put_addr(&a, &mut v4);
            } else {
                put_addr(&a, &mut v6);
            }
        }
        let mut d: Vec<(&[u8], Owned)> = vec![(b"id", Owned::bytes(self.node_id.0))];
        d.push((b"nodes", Owned::Bytes(v4)));
        d.push((b"nodes6", Owned::Bytes(v6)));
        d.into_iter().collect::<Owned>().encode()
    }

    /// Reads what [`SavedState::encode`] wrote. Unknown keys are ignored; addresses with port 0
    /// are skipped; at most [`MAX_SAVED_NODES`] are kept.
    pub fn decode(bytes: &[u8]) -> Result<SavedState, StateError> {
        let v = bencode::decode(bytes).map_err(|e| StateError::NotBencode(e.to_string()))?;
        let d = v
            .as_dict()
            .ok_or_else(|| StateError::NotBencode("not a dictionary".into()))?;
        let node_id = d
            .get_bytes(b"id")
            .and_then(NodeId::from_slice)
            .ok_or(StateError::BadId)?;
        let mut nodes = Vec::new();
        for (key, name, len) in [(&b"nodes"[..], "nodes", 6), (&b"nodes6"[..], "nodes6", 18)] {
            let Some(list) = d.get_bytes(key) else {
                continue;
            };
            if list.len() % len != 0 {
                return Err(StateError::BadNodes(name));
            }
            for chunk in list.chunks_exact(len) {
                if nodes.len() >= MAX_SAVED_NODES {
                    break;
                }
                if let Some(a) = read_addr(chunk).filter(|a| a.port() != 0) {
                    nodes.push(a);
                }
            }
        }
        Ok(SavedState { node_id, nodes })
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), a.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_trips_both_families() {
        let s = SavedState {
            node_id: NodeId([7; 20]),
            nodes: vec![
                addr("10.0.0.1:6881"),
                addr("[2001:db8::1]:51413"),
                addr("192.168.1.9:1"),
            ],
        };
        let back = SavedState::decode(&s.encode()).unwrap();
        assert_eq!(back.node_id, s.node_id);
        // IPv4 ones first, then IPv6 ones, each in order.
        assert_eq!(
            back.nodes,
            vec![
                addr("10.0.0.1:6881"),
                addr("192.168.1.9:1"),
                addr("[2001:db8::1]:51413")
            ]
        );
    }

    #[test]
    fn mapped_addresses_are_saved_as_ipv4() {
        let s = SavedState {
            node_id: NodeId([1; 20]),
            nodes: vec![addr("[::ffff:10.1.2.3]:80")],
        };
        let back = SavedState::decode(&s.encode()).unwrap();
        assert_eq!(back.nodes, vec![addr("10.1.2.3:80")]);
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        assert!(matches!(
            SavedState::decode(b"garbage"),
            Err(StateError::NotBencode(_))
        ));
        assert_eq!(SavedState::decode(b"d2:id3:abce"), Err(StateError::BadId));
        let mut bad = b"d2:id20:".to_vec();
        bad.extend_from_slice(&[0; 20]);
        bad.extend_from_slice(b"5:nodes7:1234567e");
        assert_eq!(SavedState::decode(&bad), Err(StateError::BadNodes("nodes")));
        for cut in 0..bad.len() {
            let _ = SavedState::decode(&bad[..cut]);
        }
    }

    #[test]
    fn at_most_the_bound_is_kept_and_port_zero_skipped() {
        let mut nodes: Vec<SocketAddr> = (0..MAX_SAVED_NODES as u32 + 50)
            .map(|i| SocketAddr::new(core::net::Ipv4Addr::from(i + 1).into(), 6881))
            .collect();
        nodes.insert(0, addr("1.2.3.4:0"));
        let s = SavedState {
            node_id: NodeId([2; 20]),
            nodes,
        };
        let back = SavedState::decode(&s.encode()).unwrap();
        assert_eq!(back.nodes.len(), MAX_SAVED_NODES - 1);
        assert!(back.nodes.iter().all(|a| a.port() != 0));
    }
}
