//! The kp-torrent driver: everything that touches sockets, files, threads and clocks.

pub mod progress;
pub mod tls;
pub mod units;
