//! Node ids bound to the node's external IP (BEP 42), so that one host cannot pick ids at will to
//! surround a target.
//!
//! The first 21 bits of the id are the top of CRC-32C over the masked IP (IPv4: the address and
//! `03 0f 3f ff`; IPv6: its first 8 bytes and `01 03 07 0f 1f 3f 7f ff`) with three random bits
//! `r` in the top of the first byte; the last byte of the id carries `r`. The other bits are
//! free. Local addresses (loopback, private, link-local, unique-local) are exempt: any id goes
//! with them.

use core::net::IpAddr;

use rand::{Rng, RngExt};

use super::node_id::NodeId;

const V4_MASK: [u8; 4] = [0x03, 0x0f, 0x3f, 0xff];
const V6_MASK: [u8; 8] = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];

/// CRC-32C (Castagnoli, reflected polynomial `0x82f63b78`), as BEP 42 uses it.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82f6_3b78 & mask);
        }
    }
    !crc
}

/// The CRC whose top 21 bits an id for `ip` with random bits `r` (0–7) must start with.
fn prefix_crc(ip: IpAddr, r: u8) -> u32 {
    let mut buf = [0u8; 8];
    let n = match ip {
        IpAddr::V4(v4) => {
            for (i, (o, m)) in v4.octets().iter().zip(V4_MASK).enumerate() {
                buf[i] = o & m;
            }
            4
        }
        IpAddr::V6(v6) => {
            for (i, (o, m)) in v6.octets().iter().zip(V6_MASK).enumerate() {
                buf[i] = o & m;
            }
            8
        }
    };
    buf[0] |= (r & 7) << 5;
    crc32c(&buf[..n])
}

/// True for addresses BEP 42 exempts: loopback, private (10/8, 172.16/12, 192.168/16),
/// link-local (169.254/16, fe80::/10), unique-local (fc00::/7), unspecified.
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_exempt(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xffc0) == 0xfe80
                || (first & 0xfe00) == 0xfc00
        }
    }
}

/// A node id for external address `ip` (BEP 42), its free bits and `r` drawn from `rng`.
pub fn id_for<R: Rng + ?Sized>(ip: IpAddr, rng: &mut R) -> NodeId {
    let mut id = NodeId::random(rng);
    let r = id.0[19] & 7;
    let crc = prefix_crc(ip, r);
    id.0[0] = (crc >> 24) as u8;
    id.0[1] = (crc >> 16) as u8;
    id.0[2] = ((crc >> 8) as u8 & 0xf8) | (id.0[2] & 0x07);
    id.0[19] = rng.random::<u8>() & 0xf8 | r;
    id
}

/// True when `id` is a valid BEP 42 id for `ip`, or `ip` is exempt.
pub fn is_valid(id: &NodeId, ip: IpAddr) -> bool {
    if is_exempt(ip) {
        return true;
    }
    let crc = prefix_crc(ip, id.0[19] & 7);
    id.0[0] == (crc >> 24) as u8
        && id.0[1] == (crc >> 16) as u8
        && (id.0[2] & 0xf8) == ((crc >> 8) as u8 & 0xf8)
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use rand::SeedableRng;
    use rand::rngs::ChaCha8Rng;

    use super::*;

    fn hex_id(s: &str) -> NodeId {
        let mut b = [0u8; 20];
        for (i, o) in b.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        NodeId(b)
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        // The standard check input and result of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    /// The examples table of BEP 42: IP, the id's last byte (`rand`), and the id.
    #[test]
    fn the_bep_42_examples_are_valid_and_their_prefixes_are_reproduced() {
        let examples = [
            (
                [124, 31, 75, 21],
                "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401",
            ),
            (
                [21, 75, 31, 124],
                "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256",
            ),
            (
                [65, 23, 51, 170],
                "a5d43220bc8f112a3d426c84764f8c2a1150e616",
            ),
            (
                [84, 124, 73, 14],
                "1b0321dd1bb1fe518101ceef99462b947a01ff41",
            ),
            (
                [43, 213, 53, 83],
                "e56f6cbf5b7c4be0237986d5243b87aa6d51305a",
            ),
        ];
        for (ip, hex) in examples {
            let ip = IpAddr::V4(Ipv4Addr::from(ip));
            let id = hex_id(hex);
            assert!(is_valid(&id, ip), "{ip} {hex}");
            // Another IP does not fit the same id (the first 21 bits differ).
            let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
            assert!(!is_valid(&id, other), "{hex} should not fit {other}");
            let crc = prefix_crc(ip, id.0[19] & 7);
            assert_eq!((crc >> 24) as u8, id.0[0]);
            assert_eq!((crc >> 16) as u8, id.0[1]);
            assert_eq!((crc >> 8) as u8 & 0xf8, id.0[2] & 0xf8);
        }
    }

    #[test]
    fn ids_made_for_an_ip_are_valid_for_it_and_differ() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let ips = [
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1234, 0x5678, 0, 0, 0, 1)),
        ];
        for ip in ips {
            let a = id_for(ip, &mut rng);
            let b = id_for(ip, &mut rng);
            assert!(is_valid(&a, ip) && is_valid(&b, ip), "{ip}");
            assert_ne!(a, b);
            // The bits past the mask do not matter: the host part of a /64 for IPv6.
            if let IpAddr::V6(v6) = ip {
                let mut o = v6.octets();
                o[15] ^= 0xff;
                assert!(is_valid(&a, IpAddr::V6(Ipv6Addr::from(o))));
            }
        }
        let random = NodeId([0x11; 20]);
        assert!(!is_valid(&random, ips[0]));
    }

    #[test]
    fn local_addresses_are_exempt() {
        let id = NodeId([0x11; 20]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.3.4",
            "::1",
            "fe80::1",
            "fd00::5",
            "::ffff:192.168.0.9",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_exempt(ip) && is_valid(&id, ip), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_exempt(ip), "{ip}");
        }
    }
}
