//! The kp-torrent driver: everything that touches sockets, files, threads and clocks.

pub mod conn;
pub mod progress;
pub mod signals;
pub mod tls;
pub mod units;
