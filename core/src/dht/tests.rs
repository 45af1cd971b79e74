//! Tests of the DHT building blocks, one file per module, and helpers they share.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use quickcheck::{Arbitrary, Gen};

use super::node_id::NodeId;

mod krpc;
mod lookup;
mod node;
mod store;
mod table;

/// A quickcheck runner with a fixed seed and case count, so failures reproduce.
fn qc(seed: u64, tests: u64) -> quickcheck::QuickCheck {
    quickcheck::QuickCheck::new()
        .rng(Gen::from_size_and_seed(60, seed))
        .tests(tests)
        .max_tests(tests * 10)
}

fn arb_id(g: &mut Gen) -> NodeId {
    let mut b = [0u8; 20];
    for x in &mut b {
        *x = u8::arbitrary(g);
    }
    NodeId(b)
}

/// An IPv4 or IPv6 socket address from a small space, so values repeat.
fn arb_addr(g: &mut Gen) -> SocketAddr {
    let port = u16::arbitrary(g);
    if bool::arbitrary(g) {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, u8::arbitrary(g) % 4, u8::arbitrary(g))),
            port,
        )
    } else {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                u16::arbitrary(g),
            )),
            port,
        )
    }
}

fn v4(a: u8, b: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, a, b)), port)
}

fn v6(x: u16, port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, x)),
        port,
    )
}
