//! BEP 9 metadata for the swarm: fetching the info dictionary of a magnet link from the peers
//! that advertise it, and serving ours to peers that fetch it.
//!
//! While the metadata is missing the session has no pieces: its peers keep what they say about
//! their pieces raw (see [`Peer::set_piece_count`]), and a [`MetadataFetcher`] asks the peers
//! that offer `ut_metadata` for its 16 KiB pieces. Once the SHA-1 matches, the session reports
//! [`Event::MetadataReceived`] and waits for [`Session::set_torrent`], which the torrent task
//! calls after the start-up check; the connections stay open throughout.

use super::{Event, PeerHandle, Session, Torrent};
use crate::bitfield::Bitfield;
use crate::metadata::{self, MetadataAction, MetadataEvent, MetadataMessage};
use crate::peer::Peer;
use crate::picker::{Picker, PickerConfig};
use crate::time::Time;

impl Session {
    /// True while the session waits for a magnet link's metadata (fetching it, or holding it
    /// until [`Session::set_torrent`]).
    pub fn needs_metadata(&self) -> bool {
        self.magnet.is_some()
    }

    /// While fetching metadata: pieces of it received and pieces in all, once a size is chosen.
    pub fn metadata_progress(&self) -> Option<(u32, u32)> {
        self.magnet.as_ref().and_then(|m| m.progress())
    }

    /// The size of the info dictionary we serve, when we serve one (never for private torrents,
    /// as BEP 27 keeps their metadata to the tracker's members).
    pub(super) fn served_metadata_size(&self) -> Option<u64> {
        let info = &self.torrent.metadata;
        (!info.is_empty() && !self.torrent.private).then_some(info.len() as u64)
    }

    /// The metadata a magnet link lacked is here and checked: `torrent` is what it describes and
    /// `have` the pieces already on disk. Every connection learns the piece count (what each
    /// peer said about its pieces is checked now) and the download starts. Does nothing when the
    /// session already has its torrent or `torrent` names another info-hash.
    pub fn set_torrent(&mut self, now: Time, torrent: Torrent, have: Bitfield) {
        if self.magnet.is_none() || torrent.info_hash != self.torrent.info_hash {
            return;
        }
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        self.magnet = None;
        let count = torrent.piece_count();
        let have = if have.len() == count {
            have
        } else {
            Bitfield::new(count)
        };
        self.picker = Picker::new(
            torrent.piece_length,
            torrent.total_length,
            &have,
            self.picker_seed,
            PickerConfig {
                sequential: self.config.sequential,
                ..PickerConfig::default()
            },
        );
        self.wanted = Bitfield::full(count);
        self.have = have;
        self.torrent = torrent;
        self.recount_needed();
        let served = self.served_metadata_size();
        let keys: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(p) = self.peers.get_mut(k).and_then(|s| s.peer.as_mut()) {
                p.set_piece_count(now, count, served);
                // The peer heard at the handshake that we had nothing; a piece set cannot be
                // sent twice, so pieces found on disk go out as `have`s.
                for i in self.have.iter_ones() {
                    p.send_have(now, i);
                }
            }
            self.drive_peer(PeerHandle(k));
        }
        self.update_all_interest(now);
        self.fill_all(now);
        self.flush();
    }

    /// The peer's extended handshake arrived: a peer offering metadata becomes a source.
    pub(super) fn metadata_peer(&mut self, now: Time, h: PeerHandle) {
        let Some(p) = self.peer(h) else { return };
        let source = p.remote_metadata_id().and(p.remote_metadata_size());
        let Some(fetcher) = self.magnet.as_mut() else {
            return;
        };
        match source {
            Some(size) => {
                // A refused size (zero, above the limit) leaves the peer useful for pieces.
                let _ = fetcher.handle_peer(now, h, size);
            }
            None => fetcher.handle_peer_gone(now, h),
        }
        self.drain_fetcher(now);
    }

    /// A `ut_metadata` message from `h`.
    pub(super) fn metadata_received(&mut self, now: Time, h: PeerHandle, payload: &[u8]) {
        let msg = match MetadataMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.remove_peer(h, format!("bad ut_metadata message: {e}"), true);
                return;
            }
        };
        match (msg, self.magnet.as_mut()) {
            (MetadataMessage::Request { piece }, None) => {
                let reply = match self.served_metadata_size() {
                    Some(_) => metadata::serve(&self.torrent.metadata, piece).encode(),
                    None => MetadataMessage::Reject { piece }.encode(),
                };
                if let Some(p) = self.peer_mut(h) {
                    p.send_metadata(now, &reply);
                }
            }
            // We have nothing to serve yet.
            (MetadataMessage::Request { piece }, Some(_)) => {
                if let Some(p) = self.peer_mut(h) {
                    p.send_metadata(now, &MetadataMessage::Reject { piece }.encode());
                }
            }
            (msg, Some(fetcher)) => {
                fetcher.handle_message(now, h, &msg);
                self.drain_fetcher(now);
            }
            // Data or rejects we did not ask for (we have the metadata) are ignored.
            (_, None) => {}
        }
    }

    /// A connection closed: the fetcher stops counting on it.
    pub(super) fn metadata_peer_gone(&mut self, now: Time, h: PeerHandle) {
        if let Some(fetcher) = self.magnet.as_mut() {
            fetcher.handle_peer_gone(now, h);
            self.drain_fetcher(now);
        }
    }

    /// Fires the fetcher's request deadlines.
    pub(super) fn metadata_timeout(&mut self, now: Time) {
        if let Some(fetcher) = self.magnet.as_mut()
            && fetcher.poll_timeout().is_some_and(|t| t <= now)
        {
            fetcher.handle_timeout(now);
            self.drain_fetcher(now);
        }
    }

    /// When the fetcher needs [`Session::metadata_timeout`].
    pub(super) fn metadata_deadline(&self) -> Option<Time> {
        self.magnet.as_ref().and_then(|m| m.poll_timeout())
    }

    /// Carries out the fetcher's requests and acts on its verdicts.
    fn drain_fetcher(&mut self, now: Time) {
        loop {
            let Some(fetcher) = self.magnet.as_mut() else {
                return;
            };
            if let Some(MetadataAction::Request { peer, piece }) = fetcher.poll_action() {
                let msg = MetadataMessage::Request { piece }.encode();
                if let Some(p) = self.peers.get_mut(peer.0).and_then(|s| s.peer.as_mut()) {
                    p.send_metadata(now, &msg);
                }
                continue;
            }
            let Some(event) = fetcher.poll_event() else {
                return;
            };
            match event {
                MetadataEvent::Complete { info } => {
                    self.events.push_back(Event::MetadataReceived { info });
                }
                MetadataEvent::BadPeer { peer, reason } => {
                    // Never asked again: its id is refused and its address never dialed.
                    if let Some(id) = self.peer(peer).and_then(Peer::remote_id) {
                        self.banned_ids.insert(id.0);
                    }
                    if let Some(slot) = self.peers.get(peer.0).filter(|s| s.outgoing) {
                        let addr = slot.addr;
                        self.banned_addrs.insert(addr);
                        self.candidates.remove(&addr);
                    }
                    self.remove_peer(peer, format!("bad metadata: {reason}"), true);
                }
                MetadataEvent::HashFailed { peers } => {
                    self.events.push_back(Event::Error {
                        message: format!(
                            "metadata from {} peers did not match the info-hash; fetching it again",
                            peers.len()
                        ),
                    });
                }
            }
        }
    }
}
