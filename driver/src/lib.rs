//! The kp-torrent driver: everything that touches sockets, files, threads and clocks.
//!
//! The data path: [`storage`] maps pieces onto the files on disk, [`disk`] runs storage work and
//! SHA-1 on a small worker pool so the event loop never blocks on the disk, and [`resume`] keeps
//! the verified-piece bitfield across restarts.

pub mod client;
pub mod cmd;
pub mod conn;
pub mod disk;
pub mod hasher;
pub mod json;
pub mod progress;
pub mod resolver;
pub mod resume;
pub mod signals;
pub mod storage;
pub mod tls;
pub mod tracker_io;
pub mod units;

#[cfg(test)]
mod testdir;
