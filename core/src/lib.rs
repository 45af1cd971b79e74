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
//! - [`choker`]: which peers we upload to (tit-for-tat with an optimistic unchoke).
//! - [`id`]: info-hashes and BEP 20 peer ids.
//! - [`magnet`]: magnet URIs (`xt=urn:btih:` in hex or base32, `dn`, `tr`, `x.pe`).
//! - [`metainfo`]: reading and writing `.torrent` files, with safe file paths.
//! - [`peer`]: one peer connection's protocol state machine (handshake, flags, timers, pipelining).
//! - [`picker`]: which blocks to request from which peer (rarest first, endgame, sequential).
//! - [`rate`]: transfer rates over a sliding window.
//! - [`session`]: one torrent's swarm: peers, picker, choker, verification, the driver's API.
//! - [`time`]: the virtual time every input carries.
//! - [`tracker`]: HTTP(S) and UDP tracker announce and scrape, BEP 12 tiers and the announce cycle.
//! - [`wire`]: the peer-wire codec: handshake, messages (BEP 3, 6, 10), incremental decoder.
#![forbid(unsafe_code)]

pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod id;
pub mod magnet;
pub mod metainfo;
pub mod peer;
pub mod picker;
pub mod rate;
pub mod session;
pub mod time;
pub mod tracker;
pub mod wire;
