//! A TCP connection's buffering in the event loop: read until `WouldBlock` within a budget, and
//! queue outgoing bytes with backpressure.
//!
//! mio readiness is edge-triggered: after an event we must read until `WouldBlock`, or remember
//! that bytes are left and come back without waiting for another event. [`Conn::read`] stops after
//! a budget so one fast peer cannot starve the others, and says whether it stopped early.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

/// Result of draining a socket's readable bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The socket has nothing more for now.
    Drained,
    /// The budget ran out with bytes possibly left: read again on the next loop turn.
    BudgetSpent,
    /// The peer closed its side.
    Closed,
}

/// Outgoing bytes waiting for a socket, in order.
#[derive(Debug, Default)]
pub struct SendQueue {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written.
    front_written: usize,
    queued: usize,
}

impl SendQueue {
    /// Appends bytes to send after everything already queued.
    pub fn push(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        // Coalesce small messages so a flush makes few syscalls (appending keeps
        // `front_written` valid even when the back chunk is the partly written front).
        if let Some(back) = self.chunks.back_mut()
            && back.len() + bytes.len() <= 64 * 1024
        {
            back.extend_from_slice(&bytes);
            return;
        }
        self.chunks.push_back(bytes);
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Writes as much as `w` takes; returns `Ok(true)` when everything was written.
    pub fn flush_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while let Some(front) = self.chunks.front() {
            match w.write(&front[self.front_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.front_written += n;
                    self.queued -= n;
                    if self.front_written == front.len() {
                        self.chunks.pop_front();
                        self.front_written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Reads from `r` into `buf` until it would block, the peer closes, or exactly `budget` bytes were
/// read (never more), handing each chunk to `sink`.
pub fn read_budgeted(
    r: &mut impl Read,
    buf: &mut [u8],
    budget: usize,
    mut sink: impl FnMut(&[u8]),
) -> io::Result<ReadOutcome> {
    let mut total = 0;
    loop {
        if total >= budget {
            return Ok(ReadOutcome::BudgetSpent);
        }
        // Never read past the budget: a rate limit hands out small budgets many times a second.
        let want = (budget - total).min(buf.len());
        match r.read(&mut buf[..want]) {
            Ok(0) => return Ok(ReadOutcome::Closed),
            Ok(n) => {
                total += n;
                sink(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `per_call` bytes a call and blocks after `capacity`.
    struct Throttled {
        out: Vec<u8>,
        per_call: usize,
        capacity: usize,
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self.capacity - self.out.len();
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.per_call).min(room);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn send_queue_keeps_order_across_partial_writes_and_backpressure() {
        let mut q = SendQueue::default();
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 1000 + usize::from(i) * 100];
            expected.extend_from_slice(&chunk);
            q.push(chunk);
        }
        assert_eq!(q.len(), expected.len());
        let mut w = Throttled {
            out: Vec::new(),
            per_call: 777,
            capacity: 20_000,
        };
        assert!(!q.flush_to(&mut w).unwrap());
        assert_eq!(q.len(), expected.len() - 20_000);
        q.push(vec![255; 10]);
        expected.extend_from_slice(&[255; 10]);
        w.capacity = usize::MAX;
        assert!(q.flush_to(&mut w).unwrap());
        assert!(q.is_empty());
        assert_eq!(w.out, expected);
    }

    #[test]
    fn read_stops_at_budget_would_block_or_close() {
        let data = vec![7u8; 10_000];
        let mut got = Vec::new();
        let mut r = &data[..];
        let mut buf = [0u8; 1024];
        let out = read_budgeted(&mut r, &mut buf, 4096, |c| got.extend_from_slice(c)).unwrap();
        assert_eq!(out, ReadOutcome::BudgetSpent);
        assert_eq!(got.len(), 4096);
        // A budget smaller than the buffer is not overshot.
        let out = read_budgeted(&mut r, &mut buf, 100, |c| got.extend_from_slice(c)).unwrap();
        assert_eq!(out, ReadOutcome::BudgetSpent);
        assert_eq!(got.len(), 4196);
        let out =
            read_budgeted(&mut r, &mut buf, usize::MAX, |c| got.extend_from_slice(c)).unwrap();
        assert_eq!(out, ReadOutcome::Closed);
        assert_eq!(got, data);

        struct Blocking;
        impl Read for Blocking {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        let out = read_budgeted(&mut Blocking, &mut buf, 10, |_| unreachable!()).unwrap();
        assert_eq!(out, ReadOutcome::Drained);
    }
}
