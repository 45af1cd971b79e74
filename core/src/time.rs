//! Virtual time for the core: a monotonic instant measured from an arbitrary origin.
//!
//! The core never reads a clock. The driver converts its `std::time::Instant` into a [`Time`] (the
//! time since the driver started) and passes it to every `handle_*` call; simulations and trace
//! replay pass virtual time instead. Nanosecond resolution in a `u64` covers 584 years.

use std::fmt;
use std::ops::{Add, AddAssign};
use std::time::Duration;

/// A point in time, in nanoseconds since an origin chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    /// A time `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// A time `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1_000_000))
    }

    /// A time `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Time {
        Time(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// This time plus `d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}s",
            self.0 / 1_000_000_000,
            (self.0 % 1_000_000_000) / 1_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_secs(2);
        assert_eq!(t + Duration::from_millis(500), Time::from_millis(2500));
        assert_eq!(t.saturating_since(Time::from_secs(3)), Duration::ZERO);
        assert_eq!(
            Time::from_nanos(u64::MAX) + Duration::from_secs(1),
            Time::from_nanos(u64::MAX)
        );
        assert_eq!(Time::from_millis(1500).to_string(), "1.500000s");
    }
}
