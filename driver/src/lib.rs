//! The kp-torrent driver: everything that touches sockets, files, threads and clocks.

pub mod conn;
pub mod progress;
pub mod resolver;
pub mod signals;
pub mod tls;
pub mod tracker_io;
pub mod units;
