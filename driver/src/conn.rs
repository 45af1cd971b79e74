//! A TCP connection's buffering in the event loop: read until `WouldBlock` within a budget, and
//! queue outgoing bytes with backpressure.
//!
//! mio readiness is edge-triggered: after an event we must read until `WouldBlock`, or remember
//! that bytes are left and come back without waiting for another event. [`read_budgeted`] (the
//! trackers' reads; the event loop's peer reads do the same, feeding each read to the engine)
//! stops after a budget so one fast peer cannot starve the others, and says whether it stopped
//! early.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

/// Chunks handed to one vectored write at most.
pub const MAX_IOVECS: usize = 64;

/// A message joins the queued chunk before it while both together stay below this.
const COALESCE_BELOW: usize = 4096;

/// Asks the kernel to acknowledge what `stream` received at once instead of after its
/// delayed-ACK timer (Linux's `TCP_QUICKACK`, which lasts until the kernel's next decision, so
/// it is asked again after each read). Why: a peer that writes small messages with Nagle's
/// algorithm on (libtorrent does) holds its next requests until its last small segment is
/// acknowledged; when we have nothing in flight to carry that acknowledgement, the requests
/// wait out the timer (about 40 ms on loopback) and a seeder's pipe runs dry. Best effort:
/// an error only means the acknowledgement comes later.
#[cfg(target_os = "linux")]
pub fn quick_ack(stream: &mio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: `setsockopt` reads `size_of::<c_int>()` bytes at the pointer, which points at
    // `one`, alive for the call; `stream` keeps the descriptor open for the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Elsewhere acknowledgements keep the kernel's timing.
#[cfg(not(target_os = "linux"))]
pub fn quick_ack(_stream: &mio::net::TcpStream) {}

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
        // Small messages join the chunk before them while it is small too (appending keeps
        // `front_written` valid even when the back chunk is the partly written front); a block
        // stays a chunk of its own, never copied: a flush hands the chunks to one `writev`.
        if let Some(back) = self.chunks.back_mut()
            && back.len() + bytes.len() <= COALESCE_BELOW
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

    /// Writes as much as `w` takes, up to [`MAX_IOVECS`] chunks per `write_vectored`; returns
    /// `Ok(true)` when everything was written.
    pub fn flush_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                let from = if i == 0 { self.front_written } else { 0 };
                slices[i] = IoSlice::new(&chunk[from..]);
                count += 1;
            }
            match w.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Drops `n` written bytes from the front.
    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                return;
            };
            let left = front.len() - self.front_written;
            if n < left {
                self.front_written += n;
                return;
            }
            n -= left;
            self.chunks.pop_front();
            self.front_written = 0;
        }
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
        match read_within(r, buf, budget - total)? {
            Ok(n) => {
                total += n;
                sink(&buf[..n]);
            }
            Err(outcome) => return Ok(outcome),
        }
    }
}

/// One step of a budgeted read: `Ok(n)` bytes read into `buf[..n]` (never more than `left`, nor
/// than `buf` holds), or why the reading stops — [`ReadOutcome::BudgetSpent`] when `left` is
/// 0, `Drained` at `WouldBlock`, `Closed` at the end of the stream. Interrupted reads are
/// retried.
pub fn read_within(
    r: &mut impl Read,
    buf: &mut [u8],
    left: usize,
) -> io::Result<Result<usize, ReadOutcome>> {
    if left == 0 {
        return Ok(Err(ReadOutcome::BudgetSpent));
    }
    // Never read past the budget: a rate limit hands out small budgets many times a second.
    let want = left.min(buf.len());
    loop {
        return match r.read(&mut buf[..want]) {
            Ok(0) => Ok(Err(ReadOutcome::Closed)),
            Ok(n) => Ok(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Err(ReadOutcome::Drained)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
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

    /// A writer that takes at most `per_call` bytes a call across the slices it is given.
    struct Gather {
        out: Vec<u8>,
        per_call: usize,
        calls: usize,
    }

    impl Write for Gather {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.per_call - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocks_are_queued_uncopied_and_written_together_in_order() {
        let mut q = SendQueue::default();
        let mut expected = Vec::new();
        for i in 0..100u8 {
            // Blocks, each with small messages between them.
            let block = vec![i; 16 * 1024 + 13];
            let small = vec![!i; 17];
            expected.extend_from_slice(&block);
            expected.extend_from_slice(&small);
            q.push(block);
            q.push(small);
        }
        // Each block stays its own chunk (the small message after it joins the next chunk).
        assert!(q.chunks.len() >= 100, "{} chunks", q.chunks.len());
        let mut w = Gather {
            out: Vec::new(),
            per_call: 100_000,
            calls: 0,
        };
        assert!(q.flush_to(&mut w).unwrap());
        assert_eq!(
            w.out, expected,
            "every byte once, in order, across partial writes"
        );
        // 1.6 MiB in writes of at most 100,000 bytes: every call was filled.
        assert_eq!(w.calls, expected.len().div_ceil(100_000));
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

#[cfg(all(test, target_os = "linux"))]
mod quick_ack_tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    use super::quick_ack;

    /// Linux's answer to `getsockopt(TCP_QUICKACK)`: 1 unless the socket is in its interactive
    /// ("ping-pong") mode, where acknowledgements wait for a reply to ride on.
    fn quick_ack_mode(s: &std::net::TcpStream) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `getsockopt` writes at most `len` bytes at the pointer, which points at `v`.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
        v
    }

    #[test]
    fn a_socket_that_answered_small_messages_acknowledges_at_once_again_after_quick_ack() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        // Requests and replies back and forth put the server's side in ping-pong mode (its
        // acknowledgements then wait for its next reply, or the delayed-ACK timer).
        let mut server_std = server.try_clone().unwrap();
        let mut byte = [0u8; 1];
        for _ in 0..50 {
            client.write_all(b"q").unwrap();
            server_std.read_exact(&mut byte).unwrap();
            server_std.write_all(b"r").unwrap();
            client.read_exact(&mut byte).unwrap();
            if quick_ack_mode(&server) == 0 {
                break;
            }
        }
        assert_eq!(
            quick_ack_mode(&server),
            0,
            "the kernel never delayed acknowledgements"
        );
        server.set_nonblocking(true).unwrap();
        let server = mio::net::TcpStream::from_std(server);
        quick_ack(&server);
        let server = std::net::TcpStream::from(std::os::fd::OwnedFd::from(server));
        assert_eq!(quick_ack_mode(&server), 1);
    }
}
