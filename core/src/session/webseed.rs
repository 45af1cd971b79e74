//! Web seeds' side of the swarm (BEP 19): a web seed claims runs of whole pieces nobody has
//! started from the picker ([`Session::claim_web_seed_run`]), and its bytes go, block by block,
//! into the same write-and-verify path as a peer's ([`Session::web_seed_block`]). The web seed's
//! HTTP state machine lives in [`crate::webseed`]; the torrent task joins the two.
//!
//! A web seed is known to the picker by a pseudo handle ([`web_seed_handle`]) far above any slab
//! index, and to verification by a pseudo peer id, so a piece it sent that fails is refetched
//! like any other (and a peer's blocks mixed with it are judged as usual).

use super::Session;
use crate::id::PeerHandle;
use crate::picker::Block;
use crate::time::Time;
use crate::webseed::MAX_WEB_SEEDS;

/// Blocks waiting to be written, in the whole session, beyond which no web seed takes a new run:
/// HTTP bytes are not held back by the driver's read backpressure, so the core holds back the
/// requests instead (1,024 blocks: 16 MiB).
pub const MAX_WEB_SEED_BACKLOG: u32 = 1024;

/// The picker handle of web seed number `source` (below [`MAX_WEB_SEEDS`]): never a slab index.
pub fn web_seed_handle(source: usize) -> PeerHandle {
    PeerHandle(usize::MAX - (source % MAX_WEB_SEEDS))
}

/// The sender id the verification records for web seed number `source`.
fn web_seed_sender(source: usize) -> [u8; 20] {
    let mut id = *b"-KPWEBSEED-000000000";
    let digits = format!("{:09}", source % MAX_WEB_SEEDS);
    id[11..].copy_from_slice(digits.as_bytes());
    id
}

impl Session {
    /// Claims for web seed `source` a run of at most `max_pieces` consecutive pieces that no peer
    /// is fetching, every block requested by the web seed; `None` when there is nothing to claim,
    /// the metadata is missing, the session is stopping or too many writes are pending.
    pub fn claim_web_seed_run(&mut self, source: usize, max_pieces: u32) -> Option<(u32, u32)> {
        if self.magnet.is_some() || self.needed == 0 || self.shutting_down {
            return None;
        }
        let backlog: u32 = self.pieces.values().map(|p| p.pending_writes).sum();
        if backlog >= MAX_WEB_SEED_BACKLOG {
            return None;
        }
        let failed = &self.failed_attempts;
        // A failed piece is refetched by one peer (it finds the liar); a web seed leaves it.
        self.picker
            .claim_run(web_seed_handle(source), max_pieces, |p| {
                failed.contains_key(&p)
            })
    }

    /// A whole block of `piece` from web seed `source` (its length is the block's): written and
    /// verified like a peer's block. A block it was not asked for is counted as wasted.
    pub fn web_seed_block(
        &mut self,
        now: Time,
        source: usize,
        piece: u32,
        begin: u32,
        data: Vec<u8>,
    ) {
        self.now = self.now.max(now);
        let block = Block {
            piece,
            begin,
            length: u32::try_from(data.len()).unwrap_or(u32::MAX),
        };
        self.accept_block(
            now,
            web_seed_handle(source),
            web_seed_sender(source),
            block,
            data,
        );
    }

    /// Web seed `source` gave up what it had claimed: its blocks still missing are free for
    /// peers (and for web seeds' later runs).
    pub fn release_web_seed(&mut self, now: Time, source: usize) {
        self.now = self.now.max(now);
        self.picker.drop_requests(web_seed_handle(source));
        self.fill_all(now);
    }

    /// Blocks waiting to be written.
    pub fn pending_writes(&self) -> u32 {
        self.pieces.values().map(|p| p.pending_writes).sum()
    }
}
