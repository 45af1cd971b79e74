//! kp-torrent-core: the BitTorrent protocol engine, with no I/O.
//!
//! Everything here is a function from inputs to outputs. Nothing in this crate opens a socket or a
//! file, reads a clock or draws from a global random number generator: time is an argument, and
//! randomness comes from a seed given at construction. That makes every run reproducible from a
//! recorded trace of its inputs.
//!
//! # The contract with a driver
//!
//! A torrent is one [`session::Session`]. The driver (the event loop in the `kp-torrent` binary,
//! a simulation, or a trace replayer) runs this loop:
//!
//! 1. Feed one input with a `handle_*(now, …)` method: a peer connected, was accepted
//!    ([`Session::handle_incoming`](session::Session::handle_incoming) returns its handle),
//!    failed to connect, sent bytes or closed; a disk write, read or hash finished or failed;
//!    peers were discovered; a timer is due; shutdown. Every one of them goes through
//!    [`Session::handle_input`](session::Session::handle_input), which is what a trace records.
//! 2. Drain [`Session::poll_action`](session::Session::poll_action) until `None`, carrying out
//!    each [`session::Action`] in order: connect, send bytes, close (the handle is then free for
//!    reuse), write a block, read a block, hash a piece, announce.
//! 3. Drain [`Session::poll_event`](session::Session::poll_event) until `None` for the user
//!    interface ([`session::Event`]: piece verified, hash failed, complete, peer banned, …).
//! 4. Sleep until [`Session::poll_timeout`](session::Session::poll_timeout) or the next I/O,
//!    whichever comes first; when the deadline passes call
//!    [`Session::handle_timeout`](session::Session::handle_timeout) (calling it early or twice
//!    does nothing extra) and go back to step 2.
//!
//! `now` is a [`time::Time`] the driver reads from its own monotonic clock. It must not go
//! backwards; if it does, the session treats it as the latest time it has seen. Disk and hash
//! work may run on other threads: their completions come back as ordinary inputs, so a trace
//! captures their timing. The session decides everything else: a piece counts only after the
//! driver reported its SHA-1 and the session found it equal to the torrent's.
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
//! - [`trace`]: recording a session's inputs and outputs to a compact trace, and replaying it.
//! - [`tracker`]: HTTP(S) and UDP tracker announce and scrape, BEP 12 tiers and the announce cycle.
//! - [`wire`]: the peer-wire codec: handshake, messages (BEP 3, 6, 10), incremental decoder.
#![forbid(unsafe_code)]

pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod id;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod peer;
pub mod pex;
pub mod picker;
pub mod rate;
pub mod session;
pub mod time;
pub mod trace;
pub mod tracker;
pub mod wire;
