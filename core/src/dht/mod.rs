//! The DHT (BEP 5, with BEP 32 for IPv6): pure, sans-IO building blocks of a DHT node.
//!
//! - [`krpc`]: the KRPC message codec (queries, responses, errors), bounded and tolerant.
//! - [`node_id`]: 160-bit ids, the XOR metric, ranges of ids.
//! - [`table`]: the routing table of k-buckets, with liveness, replacement caches and refresh.
//! - [`token`]: announce tokens bound to the requester's IP, with rotating secrets.
//! - [`store`]: the peers other nodes announced to us, bounded and expiring.
//! - [`lookup`]: one iterative lookup (find_node or get_peers) as its own state machine.
//!
//! Nothing here reads a clock or draws from a global RNG: time is an argument, randomness comes
//! from seeds or RNGs the caller passes.

pub mod krpc;
pub mod lookup;
pub mod node_id;
pub mod store;
pub mod table;
pub mod token;

#[cfg(test)]
mod tests;
