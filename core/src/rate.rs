//! Transfer rate over a sliding window: for the choker's ranking, request pipelining and the
//! progress display.
//!
//! Bytes are added to one-second buckets in a ring; the rate is the sum of the buckets inside the
//! window divided by the time the window covers. A connection younger than the window is divided
//! by its age instead, so a new fast peer shows its real rate at once. With no traffic the rate
//! falls to 0 once the window has passed. Both calls are O(window in seconds) at worst, O(1) in
//! the steady state, and never allocate after construction.

use std::time::Duration;

use crate::time::Time;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The default window, 10 s: long enough to smooth bursts of 16 KiB blocks, short enough that
/// the choker notices a peer slowing down within a round or two.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// A sliding-window rate estimator for one direction of one connection (or a sum of them).
#[derive(Debug, Clone)]
pub struct Rate {
    /// Bytes per second of time, indexed by `second % len`.
    buckets: Vec<u64>,
    /// The latest second recorded into `buckets`.
    head: u64,
    /// Time of the first record.
    start: Option<Time>,
    total: u64,
}

impl Default for Rate {
    fn default() -> Rate {
        Rate::new(DEFAULT_WINDOW)
    }
}

impl Rate {
    /// An estimator averaging over `window`, rounded up to whole seconds (1 s to 1 hour).
    pub fn new(window: Duration) -> Rate {
        let secs = window
            .as_secs()
            .saturating_add(u64::from(window.subsec_nanos() > 0))
            .clamp(1, 3600);
        Rate {
            buckets: vec![0; secs as usize],
            head: 0,
            start: None,
            total: 0,
        }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.len())
    }

    /// Counts `bytes` transferred at `now`. Bytes older than the window (time going backwards)
    /// count only in [`Rate::total`].
    pub fn record(&mut self, now: Time, bytes: u64) {
        self.total = self.total.saturating_add(bytes);
        let sec = now.as_nanos() / NANOS_PER_SEC;
        if self.start.is_none() {
            self.start = Some(now);
            self.head = sec;
        }
        self.advance(sec);
        if sec + self.len() > self.head {
            let i = self.index(sec);
            if let Some(b) = self.buckets.get_mut(i) {
                *b = b.saturating_add(bytes);
            }
        }
    }

    /// Bytes per second over the window ending at `now`; 0 before any record and once the
    /// window has passed without traffic.
    pub fn bytes_per_sec(&self, now: Time) -> u64 {
        let Some(start) = self.start else {
            return 0;
        };
        let len = self.len();
        let sec = now.as_nanos() / NANOS_PER_SEC;
        let mut sum: u64 = 0;
        for k in 0..len.min(self.head.saturating_add(1)) {
            let s = self.head - k;
            if s <= sec && s + len > sec {
                sum = sum.saturating_add(self.buckets.get(self.index(s)).copied().unwrap_or(0));
            }
        }
        if sum == 0 {
            return 0;
        }
        // The window runs from the start of the oldest bucket to `now`.
        let into_second = now.as_nanos() - sec * NANOS_PER_SEC;
        let span = (len - 1) * NANOS_PER_SEC + into_second;
        let age = now.saturating_since(start).as_nanos();
        // At least a second, so the first block of a connection does not read as a huge rate.
        let span = u128::from(span).min(age).max(u128::from(NANOS_PER_SEC));
        let rate = u128::from(sum) * u128::from(NANOS_PER_SEC) / span;
        u64::try_from(rate).unwrap_or(u64::MAX)
    }

    /// Every byte ever recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn index(&self, sec: u64) -> usize {
        (sec % self.len()) as usize
    }

    /// Moves the head to `sec`, emptying the buckets of the seconds skipped over.
    fn advance(&mut self, sec: u64) {
        if sec <= self.head {
            return;
        }
        let skipped = (sec - self.head).min(self.len());
        for k in 1..=skipped {
            let i = self.index(self.head + k);
            if let Some(b) = self.buckets.get_mut(i) {
                *b = 0;
            }
        }
        self.head = sec;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: u64) -> Time {
        Time::from_millis(t)
    }

    #[test]
    fn a_steady_stream_is_measured_at_its_rate() {
        for (window, chunk, every_ms) in [(10, 16_384, 100), (5, 1000, 7), (20, 1, 1000)] {
            let mut r = Rate::new(Duration::from_secs(window));
            let mut t = 0;
            while t < 60_000 {
                r.record(ms(t), chunk);
                t += every_ms;
            }
            let expected = chunk * 1000 / every_ms;
            let got = r.bytes_per_sec(ms(t));
            let err = got.abs_diff(expected);
            // One record's worth of quantisation over the window.
            let tolerance = expected / 20 + chunk / window;
            assert!(err <= tolerance, "window {window}: {got} vs {expected}");
            assert_eq!(r.total(), chunk * t.div_ceil(every_ms));
        }
    }

    #[test]
    fn the_rate_decays_to_zero_when_idle() {
        let mut r = Rate::default();
        for t in 0..20 {
            r.record(Time::from_secs(t), 10_000);
        }
        let busy = r.bytes_per_sec(Time::from_secs(20));
        assert!(busy >= 9_000, "{busy}");
        let half = r.bytes_per_sec(Time::from_secs(25));
        assert!(half < busy && half > 0, "{half}");
        assert_eq!(r.bytes_per_sec(Time::from_secs(31)), 0);
        assert_eq!(r.bytes_per_sec(Time::from_secs(1_000_000)), 0);
        // Traffic after a long silence starts from a clean window.
        r.record(Time::from_secs(1_000_000), 5_000);
        let back = r.bytes_per_sec(Time::from_secs(1_000_000) + Duration::from_millis(500));
        assert!(back <= 5_000, "{back}");
    }

    #[test]
    fn a_new_connection_is_not_diluted_by_the_window() {
        let mut r = Rate::new(Duration::from_secs(20));
        for t in 0..10 {
            r.record(ms(100 * t), 10_000);
        }
        // 100,000 bytes in the first second: about 100,000 B/s, not 5,000.
        let got = r.bytes_per_sec(ms(1000));
        assert!((90_000..=110_000).contains(&got), "{got}");
        assert_eq!(Rate::default().bytes_per_sec(ms(5)), 0);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let mut r = Rate::new(Duration::ZERO);
        assert_eq!(r.window(), Duration::from_secs(1));
        r.record(Time::from_secs(100), u64::MAX);
        r.record(Time::from_secs(100), u64::MAX);
        assert_eq!(r.total(), u64::MAX);
        assert!(r.bytes_per_sec(Time::from_secs(100)) > 0);
        // Time going backwards: within the window still counted, older only in the total.
        let mut r = Rate::new(Duration::from_millis(4500));
        assert_eq!(r.window(), Duration::from_secs(5));
        r.record(Time::from_secs(50), 100);
        r.record(Time::from_secs(48), 100);
        r.record(Time::from_secs(10), 100);
        assert_eq!(r.total(), 300);
        let got = r.bytes_per_sec(Time::from_secs(50));
        assert!(got > 0 && got <= 200, "{got}");
        assert_eq!(Rate::new(Duration::MAX).window(), Duration::from_secs(3600));
        let mut r = Rate::default();
        r.record(Time::from_nanos(u64::MAX), 1);
        assert_eq!(r.bytes_per_sec(Time::from_nanos(u64::MAX)), 1);
    }
}
