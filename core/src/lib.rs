//! kp-torrent-core: the BitTorrent protocol engine, with no I/O.
//!
//! Everything here is a function from inputs to outputs. Nothing in this crate opens a socket or a
//! file, reads a clock or draws from a global random number generator: time is an argument, and
//! randomness comes from a seed given at construction. That makes every run reproducible from a
//! recorded trace of its inputs.
//!
//! Modules:
//! - [`bencode`]: strict decoder with exact byte spans, canonical encoder.
//! - [`bitfield`]: the set of pieces a peer has.
//! - [`id`]: info-hashes and BEP 20 peer ids.
//! - [`time`]: the virtual time every input carries.
//! - [`wire`]: the peer-wire codec: handshake, messages (BEP 3, 6, 10), incremental decoder.
//! - [`peer`]: one peer connection's protocol state machine (handshake, flags, timers, pipelining).
#![forbid(unsafe_code)]

pub mod bencode;
pub mod bitfield;
pub mod id;
pub mod peer;
pub mod time;
pub mod wire;
