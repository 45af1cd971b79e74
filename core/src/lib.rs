//! kp-torrent-core: the BitTorrent protocol engine, with no I/O.
//!
//! Everything here is a function from inputs to outputs. Nothing in this crate opens a socket or a
//! file, reads a clock or draws from a global random number generator: time is an argument, and
//! randomness comes from a seed given at construction. That makes every run reproducible from a
//! recorded trace of its inputs.
//!
//! # The contract with a driver
//!
//! A torrent is one [`torrent::TorrentTask`]: its start-up check, its swarm
//! ([`session::Session`]: peers, picking, choking, verification) and its trackers
//! ([`tracker::manager::TrackerManager`]). The driver (the event loop in the `kp-torrent`
//! binary, a simulation, or a trace replayer) runs this loop:
//!
//! 1. Feed one input with [`TorrentTask::handle_input`](torrent::TorrentTask::handle_input)
//!    (a [`torrent::TorrentInput`]): what is on disk at start (file stamps and resume bytes); a
//!    swarm input ([`session::Input`]: a peer connected, was accepted, failed, sent bytes or
//!    closed; a disk write, read or hash finished or failed; peers were discovered; a timer is
//!    due; shutdown); or a tracker socket's news (connected, data, closed, resolved, datagram).
//!    One enum, so a trace of it records everything the torrent saw.
//! 2. Drain [`TorrentTask::poll_action`](torrent::TorrentTask::poll_action) until `None`,
//!    carrying out each [`torrent::TorrentAction`] in order: swarm and disk actions (connect,
//!    send, close, write, read, hash) and tracker socket actions (resolve, open, send, close,
//!    datagram).
//! 3. Drain [`TorrentTask::poll_event`](torrent::TorrentTask::poll_event) until `None` for the
//!    user interface ([`torrent::TorrentEvent`]: check finished, piece verified, peer banned,
//!    tracker errors, …).
//! 4. Sleep until [`TorrentTask::poll_timeout`](torrent::TorrentTask::poll_timeout) or the next
//!    I/O, whichever comes first; when the deadline passes feed `Input::Timeout` (calling it
//!    early or twice does nothing extra) and go back to step 2.
//!
//! `now` is a [`time::Time`] the driver reads from its own monotonic clock. It must not go
//! backwards; if it does, the task treats it as the latest time it has seen. Disk and hash
//! work may run on other threads: their completions come back as ordinary inputs, so a trace
//! captures their timing. The core decides everything else: which pieces count at start, what
//! to request, when to announce; a piece counts only after the driver reported its SHA-1 and
//! the core found it equal to the torrent's.
//!
//! Modules:
//! - [`bencode`]: strict decoder with exact byte spans, canonical encoder.
//! - [`bitfield`]: the set of pieces a peer has.
//! - [`choker`]: which peers we upload to (tit-for-tat with an optimistic unchoke).
//! - [`dht`]: BEP 5/32 DHT: KRPC, routing table, tokens, peer store, lookups, the `Dht` node
//!   (not yet wired into the driver).
//! - [`engine`]: the router above many torrents (incoming handshakes, shared limits, UDP).
//! - [`id`]: info-hashes and BEP 20 peer ids.
//! - [`magnet`]: magnet URIs (`xt=urn:btih:` in hex or base32, `dn`, `tr`, `x.pe`).
//! - [`metadata`]: BEP 9 `ut_metadata`: fetching the info dictionary from peers (magnet links),
//!   and serving it.
//! - [`metainfo`]: reading and writing `.torrent` files, with safe file paths.
//! - [`mse`]: MSE/PE, the BitTorrent stream encryption handshake (Diffie-Hellman, RC4, the
//!   plaintext fallback), one `Handshake` per connection (not yet wired into the driver).
//! - [`peer`]: one peer connection's protocol state machine (handshake, flags, timers, pipelining).
//! - [`pex`]: BEP 11 `ut_pex`: peer exchange messages, what to tell each peer, what to accept.
//! - [`picker`]: which blocks to request from which peer (rarest first, endgame, sequential).
//! - [`rate`]: transfer rates over a sliding window.
//! - [`resume`]: resume data and the start-up verdict (which pieces count before any peer).
//! - [`session`]: one torrent's swarm: peers, picker, choker, verification, the driver's API.
//! - [`time`]: the virtual time every input carries.
//! - [`torrent`]: one torrent whole (start-up check, swarm, trackers) behind one input enum.
//! - [`trace`]: recording a session's inputs and outputs to a compact trace, and replaying it.
//! - [`tracker`]: HTTP(S) and UDP tracker announce and scrape, BEP 12 tiers and the announce cycle.
//! - [`utp`]: BEP 29 uTP: packet codec, connections (selective ACK, RTO, LEDBAT), the endpoint
//!   that routes datagrams to them.
//! - [`wire`]: the peer-wire codec: handshake, messages (BEP 3, 6, 10), incremental decoder.
#![forbid(unsafe_code)]

pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod dht;
pub mod engine;
pub mod id;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod mse;
pub mod peer;
pub mod pex;
pub mod picker;
pub mod rate;
pub mod resume;
pub mod session;
pub mod time;
pub mod torrent;
pub mod trace;
pub mod tracker;
pub mod utp;
pub mod webseed;
pub mod wire;
