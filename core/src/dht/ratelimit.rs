//! Per-address rate limits on the queries a DHT node answers: a token bucket per IP address
//! (IPv4-mapped IPv6 counts as the IPv4 address), with a bounded number of addresses tracked.
//!
//! Each address may send [`RateConfig::burst`] queries at once and [`RateConfig::per_second`]
//! on average. At most [`RateConfig::max_tracked`] addresses are remembered; a new address
//! pushes out the one heard from longest ago, which had the most time to refill anyway.

use core::net::IpAddr;
use std::collections::{BTreeMap, BTreeSet};

use crate::time::Time;

/// Limits of a [`RateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    /// Queries an address may send at once. Default 20.
    pub burst: u32,
    /// Queries an address may send per second on average. Default 5.
    pub per_second: u32,
    /// Addresses tracked at most. Default 4,096 (about 100 bytes each).
    pub max_tracked: usize,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            burst: 20,
            per_second: 5,
            max_tracked: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a query.
    milli: u64,
    last: Time,
}

/// Token buckets by IP address (see the module doc).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    config: RateConfig,
    buckets: BTreeMap<IpAddr, Bucket>,
    by_time: BTreeSet<(Time, IpAddr)>,
}

impl RateLimiter {
    /// No address seen yet.
    pub fn new(config: RateConfig) -> RateLimiter {
        RateLimiter {
            config,
            buckets: BTreeMap::new(),
            by_time: BTreeSet::new(),
        }
    }

    /// Addresses tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// True when a query from `ip` at `now` is within its limit (and counts it).
    pub fn allow(&mut self, now: Time, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let cap = u64::from(self.config.burst) * 1000;
        let bucket = match self.buckets.get(&ip) {
            Some(b) => {
                let mut b = *b;
                self.by_time.remove(&(b.last, ip));
                let ms =
                    u64::try_from(now.saturating_since(b.last).as_millis()).unwrap_or(u64::MAX);
                b.milli = b
                    .milli
                    .saturating_add(ms.saturating_mul(u64::from(self.config.per_second)))
                    .min(cap);
                b.last = now.max(b.last);
                b
            }
            None => {
                if self.config.max_tracked == 0 {
                    return false;
                }
                if self.buckets.len() >= self.config.max_tracked
                    && let Some((_, stale)) = self.by_time.pop_first()
                {
                    self.buckets.remove(&stale);
                }
                Bucket {
                    milli: cap,
                    last: now,
                }
            }
        };
        let (bucket, allowed) = if bucket.milli >= 1000 {
            (
                Bucket {
                    milli: bucket.milli - 1000,
                    ..bucket
                },
                true,
            )
        } else {
            (bucket, false)
        };
        self.buckets.insert(ip, bucket);
        self.by_time.insert((bucket.last, ip));
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn dht_rate_limit_burst_then_steady_rate() {
        let mut r = RateLimiter::new(RateConfig {
            burst: 5,
            per_second: 2,
            max_tracked: 10,
        });
        let t0 = Time::from_secs(100);
        assert_eq!((0..8).filter(|_| r.allow(t0, ip(1))).count(), 5);
        assert!(r.allow(t0, ip(2)), "other addresses are not affected");
        // Half a second refills one query; ten seconds refill only up to the burst.
        assert!(r.allow(t0 + std::time::Duration::from_millis(500), ip(1)));
        assert!(!r.allow(t0 + std::time::Duration::from_millis(500), ip(1)));
        let later = t0 + std::time::Duration::from_secs(10);
        assert_eq!((0..8).filter(|_| r.allow(later, ip(1))).count(), 5);
        // A mapped IPv6 address is the same host.
        let mapped = IpAddr::V6(Ipv4Addr::from(0x0a00_0001).to_ipv6_mapped());
        assert!(!r.allow(later, mapped));
    }

    #[test]
    fn dht_rate_limit_tracks_a_bounded_number_of_addresses() {
        let mut r = RateLimiter::new(RateConfig {
            burst: 1,
            per_second: 1,
            max_tracked: 100,
        });
        for n in 0..10_000 {
            let _ = r.allow(Time::from_millis(u64::from(n)), ip(n));
            assert!(r.tracked() <= 100);
        }
        assert_eq!(r.by_time.len(), r.buckets.len());
    }
}
