//! Announce tokens (BEP 5): a `get_peers` reply carries a token that the querier must present in
//! its `announce_peer`, proving that it receives datagrams at the address it announces from.
//!
//! A token is the first [`TOKEN_LEN`] bytes of SHA-1(secret ‖ requester's IP). The secret
//! rotates every [`ROTATE_EVERY`] (5 minutes) and a secret is accepted for two periods after it
//! was drawn, so a token handed out stays valid between 5 and 10 minutes, and never 10 minutes or
//! more, however late the caller rotates. The time is an argument and the secrets come from the
//! RNG the caller passes; nothing is stored per requester, so the memory is two secrets.

use core::net::IpAddr;
use std::time::Duration;

use rand::Rng;
use sha1::{Digest, Sha1};

use crate::time::Time;

/// How often the secret changes.
pub const ROTATE_EVERY: Duration = Duration::from_secs(5 * 60);

/// How long a secret is accepted after it was drawn: two rotation periods.
pub const SECRET_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Bytes of a token we hand out: short, since it travels in every reply, and still 2^-64 to
/// guess.
pub const TOKEN_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Secret {
    bytes: [u8; 20],
    drawn_at: Time,
}

impl Secret {
    fn draw<R: Rng + ?Sized>(rng: &mut R, now: Time) -> Secret {
        let mut bytes = [0u8; 20];
        rng.fill_bytes(&mut bytes);
        Secret {
            bytes,
            drawn_at: now,
        }
    }

    fn token(&self, ip: IpAddr) -> [u8; TOKEN_LEN] {
        let mut h = Sha1::new();
        h.update(self.bytes);
        match ip.to_canonical() {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        let digest = h.finalize();
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(&digest[..TOKEN_LEN]);
        t
    }

    fn accepts(&self, now: Time, ip: IpAddr, token: &[u8]) -> bool {
        now.saturating_since(self.drawn_at) < SECRET_LIFETIME
            && token.len() == TOKEN_LEN
            && self
                .token(ip)
                .iter()
                .zip(token)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The current and previous secret (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSecrets {
    current: Secret,
    previous: Option<Secret>,
}

impl TokenSecrets {
    /// Fresh secrets drawn from `rng` at `now`.
    pub fn new<R: Rng + ?Sized>(now: Time, rng: &mut R) -> TokenSecrets {
        TokenSecrets {
            current: Secret::draw(rng, now),
            previous: None,
        }
    }

    /// The token to give a `get_peers` querier at `ip`.
    pub fn token(&self, ip: IpAddr) -> [u8; TOKEN_LEN] {
        self.current.token(ip)
    }

    /// True when `token`, presented at `now` by a querier at `ip`, is one we handed to `ip`
    /// less than [`SECRET_LIFETIME`] after its secret was drawn.
    pub fn verify(&self, now: Time, ip: IpAddr, token: &[u8]) -> bool {
        self.current.accepts(now, ip, token)
            || self.previous.is_some_and(|p| p.accepts(now, ip, token))
    }

    /// When the secret rotates next.
    pub fn poll_timeout(&self) -> Time {
        self.current.drawn_at + ROTATE_EVERY
    }

    /// Call at [`TokenSecrets::poll_timeout`]: the current secret becomes the previous one and a
    /// new one is drawn from `rng`. Early calls do nothing and draw nothing.
    pub fn handle_timeout<R: Rng + ?Sized>(&mut self, now: Time, rng: &mut R) {
        if now < self.poll_timeout() {
            return;
        }
        self.previous = Some(self.current);
        self.current = Secret::draw(rng, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use rand::SeedableRng;
    use rand::rngs::ChaCha8Rng;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn secs(s: u64) -> Time {
        Time::from_secs(s)
    }

    #[test]
    fn dht_token_is_bound_to_the_ip() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let s = TokenSecrets::new(Time::ZERO, &mut rng);
        let t = s.token(ip(1));
        assert!(s.verify(secs(1), ip(1), &t));
        assert!(!s.verify(secs(1), ip(2), &t));
        assert!(!s.verify(secs(1), ip(1), &t[..7]));
        let mut forged = t;
        forged[3] ^= 1;
        assert!(!s.verify(secs(1), ip(1), &forged));
        // An IPv4-mapped IPv6 address is the same host.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(s.token(mapped), t);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert!(s.verify(secs(1), v6, &s.token(v6)));
        assert!(!s.verify(secs(1), v6, &t));
        // Other secrets, other tokens; the same seed, the same tokens.
        let other = TokenSecrets::new(Time::ZERO, &mut rng);
        assert_ne!(other.token(ip(1)), t);
        let again = TokenSecrets::new(Time::ZERO, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(again.token(ip(1)), t);
    }

    #[test]
    fn dht_token_survives_one_rotation_not_two() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut s = TokenSecrets::new(Time::ZERO, &mut rng);
        let t = s.token(ip(1));
        assert_eq!(s.poll_timeout(), secs(300));
        s.handle_timeout(secs(299), &mut rng);
        assert_eq!(s.token(ip(1)), t, "early timeout does nothing");
        s.handle_timeout(secs(300), &mut rng);
        let t2 = s.token(ip(1));
        assert_ne!(t2, t);
        assert!(
            s.verify(secs(301), ip(1), &t),
            "previous secret still accepted"
        );
        assert!(s.verify(secs(301), ip(1), &t2));
        s.handle_timeout(secs(600), &mut rng);
        assert!(!s.verify(secs(600), ip(1), &t), "two rotations: expired");
        assert!(s.verify(secs(600), ip(1), &t2));
    }

    #[test]
    fn dht_token_expires_after_10_minutes_even_without_rotation() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let s = TokenSecrets::new(Time::ZERO, &mut rng);
        let t = s.token(ip(1));
        assert!(s.verify(Time::from_nanos(600_000_000_000 - 1), ip(1), &t));
        assert!(!s.verify(secs(600), ip(1), &t));
    }

    #[test]
    fn prop_dht_token_valid_5_to_10_minutes() {
        // The caller rotates on time (it calls every second); a token issued at `issue` is
        // accepted `age` later when age < 5 min and refused when age >= 10 min. A caller that
        // calls only at some arbitrary times still never gets a token accepted at 10 min.
        fn prop(seed: u64, issue: u16, age: u16, late_calls: Vec<u16>) -> bool {
            let issue = u64::from(issue % 3600);
            let check = issue + u64::from(age % 1500);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut punctual = TokenSecrets::new(Time::ZERO, &mut rng);
            let mut late = punctual.clone();
            let late_calls: Vec<u64> = late_calls.iter().map(|&c| u64::from(c) % 5400).collect();
            let (mut token, mut late_token) = (None, None);
            for now in 0..=check {
                punctual.handle_timeout(secs(now), &mut rng);
                if late_calls.contains(&now) {
                    late.handle_timeout(secs(now), &mut rng);
                }
                if now == issue {
                    token = Some(punctual.token(ip(9)));
                    late_token = Some(late.token(ip(9)));
                }
            }
            let ok = punctual.verify(secs(check), ip(9), &token.unwrap());
            let late_ok = late.verify(secs(check), ip(9), &late_token.unwrap());
            let age = Duration::from_secs(check - issue);
            let upper = age < SECRET_LIFETIME || (!ok && !late_ok);
            let lower = age >= ROTATE_EVERY || ok;
            upper && lower
        }
        quickcheck::QuickCheck::new()
            .rng(quickcheck::Gen::from_size_and_seed(20, 0x746f_6b6e))
            .tests(500)
            .quickcheck(prop as fn(u64, u16, u16, Vec<u16>) -> bool);
    }
}
