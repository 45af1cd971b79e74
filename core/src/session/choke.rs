//! Who gets our upload slots: the session's side of the [`Choker`](crate::choker::Choker).

use super::{PeerHandle, Session};
use crate::choker::{Candidate, Decision};
use crate::time::Time;

impl Session {
    /// Runs the choker's round if due (or at once when `force`, for a slot that just freed or a
    /// newcomer that could use a free one) and sends the chokes and unchokes it decides.
    pub(super) fn choke_round(&mut self, now: Time, force: bool) {
        let candidates: Vec<Candidate> = self
            .peers
            .iter()
            .filter_map(|(k, s)| {
                let p = s.peer.as_ref().filter(|p| p.is_established())?;
                Some(Candidate {
                    peer: PeerHandle(k),
                    interested: p.peer_interested(),
                    download_rate: p.download_rate(now),
                    upload_rate: p.upload_rate(now),
                    connected_at: p.opened(),
                    snubbed: p.is_snubbed(),
                })
            })
            .collect();
        let seeding = self.is_complete();
        if force {
            self.choker.force_round(now, &candidates, seeding);
        } else {
            self.choker.handle_timeout(now, &candidates, seeding);
        }
        while let Some((h, decision)) = self.choker.poll_decision() {
            if let Some(p) = self.peer_mut(h) {
                p.set_choking(now, decision == Decision::Choke);
            }
        }
    }
}
