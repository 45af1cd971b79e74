//! The torrent's web seeds (BEP 19) joined to its swarm: each [`WebSeed`] machine takes runs of
//! pieces the session lets it claim, its bytes are cut into blocks for the session's
//! write-and-verify path, and a piece of its data that fails the hash check counts against it.
//!
//! Its sockets are the trackers' kind: connection ids from [`crate::webseed::CONN_BASE`] on,
//! carried out by the driver like a tracker's TCP connections and fed back as
//! [`TrackerInput`](super::TrackerInput)s, so a trace records them with the rest.

use std::collections::{BTreeMap, VecDeque};

use super::{TorrentAction, TorrentEvent};
use crate::picker::BLOCK_SIZE;
use crate::session::{Event, Session, Torrent};
use crate::time::Time;
use crate::tracker::manager::{ConnId, TrackerAction, TrackerId};
use crate::webseed::{
    Layout, MAX_WEB_SEEDS, WebSeed, WebSeedAction, WebSeedError, WebSeedEvent, WebSeedInput,
    conn_owner,
};

/// Bytes one request of a web seed covers at most (whole pieces: at least one).
pub const RUN_BYTES: u64 = 4 << 20;

/// The tracker id web seed connections carry in [`TrackerAction::OpenTcp`] (no tracker has it).
pub const WEB_SEED_TRACKER: TrackerId = TrackerId(usize::MAX);

/// What a web seed is fetching: the next block's place and the bytes of it received so far.
#[derive(Debug)]
struct Run {
    /// Piece and offset in it of the block being filled.
    piece: u32,
    begin: u32,
    /// The block's bytes so far (less than a block).
    buf: Vec<u8>,
    /// One past the run's last piece.
    end: u32,
}

#[derive(Debug)]
struct Slot {
    seed: WebSeed,
    run: Option<Run>,
}

/// Every web seed of one torrent.
#[derive(Debug, Default)]
pub(super) struct WebSeeds {
    slots: Vec<Slot>,
    layout: Option<Layout>,
    /// Pieces a web seed sent whole and whose hash check is pending: who to blame.
    delivered: BTreeMap<u32, usize>,
}

impl WebSeeds {
    /// The web seeds at `urls` (the first [`MAX_WEB_SEEDS`] usable ones); the unusable ones are
    /// reported in `events`.
    pub(super) fn new(urls: &[String], events: &mut VecDeque<TorrentEvent>) -> WebSeeds {
        let mut slots = Vec::new();
        for url in urls {
            if slots.len() == MAX_WEB_SEEDS {
                break;
            }
            match WebSeed::new(slots.len(), url) {
                Ok(seed) => slots.push(Slot { seed, run: None }),
                Err(error) => events.push_back(TorrentEvent::WebSeed {
                    url: url.clone(),
                    error,
                    dropped: true,
                }),
            }
        }
        WebSeeds {
            slots,
            layout: None,
            delivered: BTreeMap::new(),
        }
    }

    /// True when there is no web seed.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The torrent is known: the file names the URLs are built from.
    pub(super) fn set_torrent(&mut self, torrent: &Torrent, events: &mut VecDeque<TorrentEvent>) {
        if self.slots.is_empty() || self.layout.is_some() {
            return;
        }
        self.layout = Layout::from_metadata(&torrent.metadata);
        if self.layout.is_none() {
            for s in &mut self.slots {
                s.seed.shutdown();
                events.push_back(TorrentEvent::WebSeed {
                    url: s.seed.url().to_string(),
                    error: WebSeedError::BadUrl("the torrent has no file names to ask for".into()),
                    dropped: true,
                });
            }
        }
    }

    /// The web seed a connection belongs to, if any.
    pub(super) fn owns(&self, conn: ConnId) -> bool {
        conn_owner(conn).is_some_and(|i| i < self.slots.len())
    }

    /// A socket input for one of the web seeds' connections.
    pub(super) fn handle_input(&mut self, now: Time, input: WebSeedInput<'_>) {
        if let Some(s) = conn_owner(input.conn()).and_then(|i| self.slots.get_mut(i)) {
            s.seed.handle_input(now, input);
        }
    }

    /// Fires the web seeds' due timers (idempotent).
    pub(super) fn handle_timeout(&mut self, now: Time) {
        for s in &mut self.slots {
            if s.seed.poll_timeout().is_some_and(|t| t <= now) {
                s.seed.handle_timeout(now);
            }
        }
    }

    /// The earliest deadline of any web seed.
    pub(super) fn poll_timeout(&self) -> Option<Time> {
        self.slots
            .iter()
            .filter_map(|s| s.seed.poll_timeout())
            .min()
    }

    /// A swarm event: verdicts on pieces a web seed sent.
    pub(super) fn on_session_event(&mut self, now: Time, event: &Event) {
        match event {
            Event::PieceVerified { piece } => {
                self.delivered.remove(piece);
            }
            Event::HashFailed { piece } => {
                if let Some(s) = self
                    .delivered
                    .remove(piece)
                    .and_then(|i| self.slots.get_mut(i))
                {
                    s.seed.hash_failed(now, *piece);
                }
            }
            _ => {}
        }
    }

    /// Stops every web seed (shutdown): connections closed, nothing more asked.
    pub(super) fn shutdown(&mut self) {
        for s in &mut self.slots {
            s.seed.shutdown();
            s.run = None;
        }
    }

    /// Moves the web seeds on: their events into the session, new runs for the idle ones (when
    /// `session` is given and wants pieces), their socket actions out.
    pub(super) fn drive(
        &mut self,
        now: Time,
        mut session: Option<&mut Session>,
        actions: &mut VecDeque<TorrentAction>,
        events: &mut VecDeque<TorrentEvent>,
    ) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            for _ in 0..2 {
                s.deliver(now, i, session.as_deref_mut(), &mut self.delivered, events);
                let Some(session) = session.as_deref_mut() else {
                    break;
                };
                if session.is_complete() {
                    s.seed.close_idle();
                }
                let Some(layout) = self.layout.as_ref() else {
                    break;
                };
                if s.run.is_some() || !s.seed.is_ready(now) {
                    break;
                }
                let t = session.torrent();
                let pieces = (RUN_BYTES / t.piece_length.max(1)).clamp(1, u64::from(u32::MAX));
                let Some((first, count)) = session.claim_web_seed_run(i, pieces as u32) else {
                    break;
                };
                let t = session.torrent();
                let offset = u64::from(first) * t.piece_length;
                let end = first + count;
                let stop = (u64::from(end) * t.piece_length).min(t.total_length);
                s.run = Some(Run {
                    piece: first,
                    begin: 0,
                    buf: Vec::new(),
                    end,
                });
                s.seed.start(now, layout, offset, stop - offset);
            }
            while let Some(a) = s.seed.poll_action() {
                actions.push_back(TorrentAction::Tracker(match a {
                    WebSeedAction::OpenTcp {
                        conn,
                        host,
                        port,
                        tls,
                    } => TrackerAction::OpenTcp {
                        conn,
                        tracker: WEB_SEED_TRACKER,
                        host,
                        port,
                        tls,
                    },
                    WebSeedAction::SendTcp { conn, bytes } => {
                        TrackerAction::SendTcp { conn, bytes }
                    }
                    WebSeedAction::CloseTcp { conn } => TrackerAction::CloseTcp { conn },
                }));
            }
        }
    }
}

impl Slot {
    /// Hands the web seed's events on: bytes cut into blocks for the session, the end of the
    /// run, failures (releasing what it had claimed).
    fn deliver(
        &mut self,
        now: Time,
        index: usize,
        mut session: Option<&mut Session>,
        delivered: &mut BTreeMap<u32, usize>,
        events: &mut VecDeque<TorrentEvent>,
    ) {
        while let Some(e) = self.seed.poll_event() {
            match e {
                WebSeedEvent::Data(bytes) => {
                    self.take_bytes(now, index, &bytes, session.as_deref_mut(), delivered)
                }
                WebSeedEvent::Zeros(mut n) => {
                    let zeros = [0u8; BLOCK_SIZE as usize];
                    while n > 0 {
                        let k = n.min(u64::from(BLOCK_SIZE)) as usize;
                        self.take_bytes(now, index, &zeros[..k], session.as_deref_mut(), delivered);
                        n -= k as u64;
                    }
                }
                WebSeedEvent::Done => {
                    // Every byte arrived, so every block went to the session already.
                    self.run = None;
                }
                WebSeedEvent::Failed { error, dropped } => {
                    self.run = None;
                    if let Some(s) = session.as_deref_mut() {
                        s.release_web_seed(now, index);
                    }
                    events.push_back(TorrentEvent::WebSeed {
                        url: self.seed.url().to_string(),
                        error,
                        dropped,
                    });
                }
            }
        }
    }

    /// The next bytes of the run, in order: whole blocks go to the session.
    fn take_bytes(
        &mut self,
        now: Time,
        index: usize,
        mut bytes: &[u8],
        session: Option<&mut Session>,
        delivered: &mut BTreeMap<u32, usize>,
    ) {
        let Some(session) = session else {
            return;
        };
        let Some(run) = self.run.as_mut() else {
            return;
        };
        while !bytes.is_empty() && run.piece < run.end {
            let size = session.torrent().piece_size(run.piece);
            let block = u64::from(BLOCK_SIZE).min(size.saturating_sub(u64::from(run.begin)));
            let want = (block as usize).saturating_sub(run.buf.len());
            let k = want.min(bytes.len());
            run.buf.extend_from_slice(&bytes[..k]);
            bytes = &bytes[k..];
            if run.buf.len() as u64 == block {
                let data = std::mem::take(&mut run.buf);
                session.web_seed_block(now, index, run.piece, run.begin, data);
                run.begin += block as u32;
                if u64::from(run.begin) >= size {
                    delivered.insert(run.piece, index);
                    run.piece += 1;
                    run.begin = 0;
                }
            }
        }
    }
}
