//! Rate limits as token buckets, and a writer that spends tokens.

use std::io::{self, IoSlice, Write};

use crate::conn::MAX_IOVECS;
use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes per second, holding at most a tenth of a second's worth (and at
/// least one 16 KiB block plus headers, so a slow limit still moves whole blocks).
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: Option<u64>,
    tokens: u64,
    cap: u64,
    last: Instant,
}

impl Bucket {
    /// A bucket for `rate` bytes per second; `None` means unlimited.
    pub(crate) fn new(rate: Option<u64>, now: Instant) -> Bucket {
        let cap = rate.map_or(u64::MAX, |r| (r / 10).max(16 * 1024 + 64));
        Bucket {
            rate,
            tokens: cap,
            cap,
            last: now,
        }
    }

    /// Adds the tokens earned since the last refill.
    pub(crate) fn refill(&mut self, now: Instant) {
        let Some(rate) = self.rate else {
            return;
        };
        let dt = now.saturating_duration_since(self.last);
        let earned = (dt.as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(self.cap);
            self.last = now;
        }
    }

    /// Bytes that may move now.
    pub(crate) fn available(&self) -> u64 {
        self.tokens
    }

    /// Records that `n` bytes moved.
    pub(crate) fn spend(&mut self, n: u64) {
        if self.rate.is_some() {
            self.tokens = self.tokens.saturating_sub(n);
        }
    }

    /// When tokens will be there again, if the bucket is empty.
    pub(crate) fn next_refill(&self) -> Option<Instant> {
        match self.rate {
            Some(rate) if self.tokens == 0 => {
                // Wait for one block's worth, so we don't wake for a handful of bytes.
                let want = (16 * 1024u64).min(self.cap);
                Some(self.last + Duration::from_nanos(want * 1_000_000_000 / rate.max(1)))
            }
            _ => None,
        }
    }
}

/// A writer that passes at most the bucket's tokens through and then reports `WouldBlock`.
pub(crate) struct Limited<'a, W> {
    pub(crate) inner: &'a mut W,
    pub(crate) bucket: &'a mut Bucket,
}

impl<W: Write> Write for Limited<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let allowed = self.bucket.available().min(buf.len() as u64) as usize;
        if allowed == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.inner.write(&buf[..allowed])?;
        self.bucket.spend(n as u64);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut allowed = self.bucket.available();
        if allowed == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // The slices up to the tokens left, the last one cut short.
        let mut within = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for buf in bufs.iter().take(MAX_IOVECS) {
            if allowed == 0 {
                break;
            }
            let take = allowed.min(buf.len() as u64) as usize;
            within[count] = IoSlice::new(&buf[..take]);
            count += 1;
            allowed -= take as u64;
        }
        let n = self.inner.write_vectored(&within[..count])?;
        self.bucket.spend(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_bucket_never_runs_dry() {
        let t = Instant::now();
        let mut b = Bucket::new(None, t);
        b.spend(u64::MAX);
        assert_eq!(b.available(), u64::MAX);
        assert_eq!(b.next_refill(), None);
    }

    #[test]
    fn limited_bucket_refills_at_its_rate_up_to_its_cap() {
        let t = Instant::now();
        let mut b = Bucket::new(Some(1_000_000), t);
        assert_eq!(b.available(), 100_000);
        b.spend(100_000);
        assert_eq!(b.available(), 0);
        assert_eq!(
            b.next_refill(),
            Some(t + Duration::from_nanos(16_384 * 1000))
        );
        b.refill(t + Duration::from_millis(50));
        assert_eq!(b.available(), 50_000);
        b.refill(t + Duration::from_secs(10));
        assert_eq!(b.available(), 100_000);
    }

    #[test]
    fn limited_writer_stops_at_the_tokens() {
        let t = Instant::now();
        let mut b = Bucket::new(Some(200_000), t);
        let mut sink = Vec::new();
        let mut w = Limited {
            inner: &mut sink,
            bucket: &mut b,
        };
        let data = vec![1u8; 50_000];
        assert_eq!(w.write(&data).unwrap(), 20_000);
        assert_eq!(
            w.write(&data).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn limited_vectored_writer_stops_at_the_tokens_across_slices() {
        let t = Instant::now();
        let mut b = Bucket::new(Some(200_000), t);
        let mut sink = Vec::new();
        let mut w = Limited {
            inner: &mut sink,
            bucket: &mut b,
        };
        let (a, c) = (vec![1u8; 15_000], vec![2u8; 15_000]);
        let slices = [IoSlice::new(&a), IoSlice::new(&c)];
        // 20,000 tokens: all of the first slice, a third of the second.
        assert_eq!(w.write_vectored(&slices).unwrap(), 20_000);
        assert_eq!(
            w.write_vectored(&slices).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(sink[..15_000], a[..]);
        assert_eq!(sink[15_000..], c[..5_000]);
    }
}
