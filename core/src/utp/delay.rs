//! One-way delay bookkeeping for LEDBAT: the base delay over minutes and the current delay.
//!
//! Samples are the peer's `timestamp_difference` fields: its clock when our packet arrived minus
//! our clock when we sent it. The two clocks are unrelated, so a sample means nothing alone; its
//! excess over the smallest sample seen lately (the base delay, kept as one minimum per minute
//! over [`BASE_HISTORY`] minutes, so a route change or clock drift ages out) is the queuing
//! delay our packets see. Values wrap at 2^32 µs and are compared as wrapping differences.

use core::time::Duration;

use crate::time::Time;

/// Minutes of base delay history (RFC 6817 suggests 10).
pub(crate) const BASE_HISTORY: usize = 10;
/// How long one slot of the history covers.
const SLOT: Duration = Duration::from_secs(60);
/// The current delay is the smallest of this many latest samples (RFC 6817's filter).
const CURRENT_FILTER: usize = 4;

/// `a < b` in wrapping u32 arithmetic.
fn wrapping_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Base and current delay of one connection.
#[derive(Debug, Clone)]
pub(crate) struct DelayTracker {
    history: [Option<u32>; BASE_HISTORY],
    slot: usize,
    slot_start: Time,
    recent: [u32; CURRENT_FILTER],
    recent_len: usize,
    recent_at: usize,
}

impl DelayTracker {
    pub(crate) fn new(now: Time) -> DelayTracker {
        DelayTracker {
            history: [None; BASE_HISTORY],
            slot: 0,
            slot_start: now,
            recent: [0; CURRENT_FILTER],
            recent_len: 0,
            recent_at: 0,
        }
    }

    /// Records one `timestamp_difference` sample.
    pub(crate) fn sample(&mut self, now: Time, diff_us: u32) {
        while now.saturating_since(self.slot_start) >= SLOT {
            self.slot = (self.slot + 1) % BASE_HISTORY;
            self.history[self.slot] = None;
            self.slot_start += SLOT;
            if now.saturating_since(self.slot_start) >= SLOT * BASE_HISTORY as u32 {
                // Silent for the whole history: start afresh rather than loop per minute.
                self.history = [None; BASE_HISTORY];
                self.slot_start = now;
            }
        }
        let cur = &mut self.history[self.slot];
        if cur.is_none_or(|m| wrapping_lt(diff_us, m)) {
            *cur = Some(diff_us);
        }
        self.recent[self.recent_at] = diff_us;
        self.recent_at = (self.recent_at + 1) % CURRENT_FILTER;
        self.recent_len = (self.recent_len + 1).min(CURRENT_FILTER);
    }

    /// The smallest sample of the history, if any.
    pub(crate) fn base(&self) -> Option<u32> {
        self.history
            .iter()
            .flatten()
            .copied()
            .reduce(|a, b| if wrapping_lt(b, a) { b } else { a })
    }

    /// The queuing delay: the current delay above the base, in microseconds.
    pub(crate) fn queuing_us(&self) -> Option<u32> {
        let base = self.base()?;
        self.recent[..self.recent_len]
            .iter()
            .map(|&s| {
                let d = s.wrapping_sub(base) as i32;
                d.max(0) as u32
            })
            .min()
    }
}
