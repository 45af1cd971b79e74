//! Ctrl-C and SIGTERM as an event in the poll loop.
//!
//! The first signal asks for a clean shutdown (stop announces, flush, exit); the loop sees it as a
//! readable self-pipe. A second signal while shutting down ends the process at once with status
//! 130, for a user who does not want to wait.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGINT, SIGTERM};

/// The read end of the signal self-pipe, registered with the poll.
pub struct ShutdownSignals {
    reader: UnixStream,
}

impl ShutdownSignals {
    /// Installs the handlers and registers the pipe under `token`.
    pub fn register(registry: &Registry, token: Token) -> io::Result<ShutdownSignals> {
        let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let asked = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Registered before the flag is set, so only a second signal exits.
            signal_hook::flag::register_conditional_shutdown(sig, 130, asked.clone())?;
            signal_hook::flag::register(sig, asked.clone())?;
            signal_hook::low_level::pipe::register(sig, writer.try_clone()?)?;
        }
        let mut reader = UnixStream::from_std(reader);
        registry.register(&mut reader, token, Interest::READABLE)?;
        Ok(ShutdownSignals { reader })
    }

    /// Empties the pipe; true when a signal arrived since the last call.
    pub fn take(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let mut seen = false;
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return seen,
                Ok(_) => seen = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sigterm_wakes_the_poll_and_is_taken_once() {
        let mut poll = mio::Poll::new().unwrap();
        let mut signals = ShutdownSignals::register(poll.registry(), Token(7)).unwrap();
        assert!(!signals.take());
        signal_hook::low_level::raise(SIGTERM).unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(7)));
        assert!(signals.take());
        assert!(!signals.take());
    }
}
