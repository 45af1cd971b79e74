//! The core session, optionally recording its run to a trace file (`--record TRACE`).

use std::fs::File;
use std::io::BufWriter;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::session::{Action, Event, Input, Session, SessionConfig, Torrent};
use kp_torrent_core::time::Time;
use kp_torrent_core::trace::Recorder;

/// A session, plain or recorded. Getters reach the session through `Deref`; inputs and outputs go
/// through the recorder when there is one, so the trace holds exactly what the session saw.
pub(crate) enum Engine {
    Plain(Box<Session>),
    Recording(Box<Recorder<BufWriter<File>>>, PathBuf),
}

impl Engine {
    /// Builds the session; with `record`, creates the trace file first.
    pub(crate) fn new(
        config: SessionConfig,
        torrent: Torrent,
        have: Bitfield,
        now: Time,
        record: Option<&Path>,
    ) -> std::io::Result<Engine> {
        Ok(match record {
            None => Engine::Plain(Box::new(Session::new(config, torrent, have, now))),
            Some(path) => {
                let out = BufWriter::with_capacity(1 << 20, File::create(path)?);
                Engine::Recording(
                    Box::new(Recorder::new(out, config, torrent, have, now)),
                    path.to_path_buf(),
                )
            }
        })
    }

    pub(crate) fn handle_input(&mut self, now: Time, input: Input<'_>) {
        match self {
            Engine::Plain(s) => s.handle_input(now, input),
            Engine::Recording(r, _) => r.handle_input(now, input),
        }
    }

    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        match self {
            Engine::Plain(s) => s.poll_action(),
            Engine::Recording(r, _) => r.poll_action(),
        }
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        match self {
            Engine::Plain(s) => s.poll_event(),
            Engine::Recording(r, _) => r.poll_event(),
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        match self {
            Engine::Plain(s) => s.poll_timeout(),
            Engine::Recording(r, _) => r.poll_timeout(),
        }
    }

    /// Ends the trace (writes its end record and flushes); the error names the file.
    pub(crate) fn finish(self) -> Result<(), String> {
        match self {
            Engine::Plain(_) => Ok(()),
            Engine::Recording(r, path) => {
                let (_, out) = r.finish();
                out.and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                    .and_then(|f| f.sync_all())
                    .map_err(|e| format!("trace {}: {e}", path.display()))
            }
        }
    }
}

impl Deref for Engine {
    type Target = Session;

    fn deref(&self) -> &Session {
        match self {
            Engine::Plain(s) => s,
            Engine::Recording(r, _) => r.session(),
        }
    }
}
