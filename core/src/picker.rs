//! The piece picker: which 16 KiB blocks to request next, and from which peer.
//!
//! One [`Picker`] per torrent. The session tells it what every peer has
//! ([`Picker::peer_has_bitfield`], [`Picker::peer_has_piece`], [`Picker::peer_has_all`],
//! [`Picker::peer_gone`]), asks it for blocks to request ([`Picker::pick`]), and reports what became
//! of each request ([`Picker::block_received`], [`Picker::request_dropped`]) and of each complete
//! piece's hash check ([`Picker::piece_verified`]).
//!
//! Order of choice for one peer, among pieces it has and we want:
//! 1. blocks nobody requested yet in pieces already started (finishing pieces early lets us verify
//!    and share them sooner, and bounds the data held in partial pieces);
//! 2. a new piece: the lowest index in sequential mode; a random one while we have fewer than
//!    [`PickerConfig::random_first_pieces`] pieces (the rarest pieces are slow to come, and a new
//!    peer needs something to trade); otherwise the rarest, ties broken by a per-piece random rank
//!    drawn from the seed;
//! 3. in endgame (every block we still need is requested), blocks already requested from other
//!    peers, up to [`PickerConfig::max_endgame_duplicates`] extra requesters per block, so that one
//!    slow peer cannot hold back the end of the download. When one copy arrives the others are
//!    returned for cancelling.
//!
//! Cost: availability updates, `block_received` and `request_dropped` are O(log n) in the number of
//! pieces; `pick` walks the started pieces with free blocks, then the rarity order until it meets
//! pieces the peer has (usually at once). Nothing here iterates a hash map, so the same inputs and
//! seed always give the same picks.
//!
//! Contract: every piece set in the `peer_has` given to [`Picker::pick`] must have been reported
//! for that peer through the `peer_has_*` calls (a subset is fine, such as the allowed-fast pieces
//! of a peer that chokes us). Indices from peers are checked: out-of-range ones are refused with a
//! return value, never a panic.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::bitfield::Bitfield;
use crate::id::PeerHandle;

pub use crate::wire::BLOCK_SIZE;

/// A range of one piece that is requested and sent as a unit: 16 KiB, less at the end of the
/// torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    /// Piece index.
    pub piece: u32,
    /// Byte offset in the piece, a multiple of [`BLOCK_SIZE`].
    pub begin: u32,
    /// Length in bytes.
    pub length: u32,
}

/// Settings of a [`Picker`], fixed at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickerConfig {
    /// While we have fewer verified pieces than this, new pieces are chosen at random instead of
    /// rarest first. Default 4.
    pub random_first_pieces: u32,
    /// Pick pieces in index order (for streaming). Default false.
    pub sequential: bool,
    /// In endgame, how many peers besides the first may be asked for the same block. Default 2;
    /// 0 disables endgame.
    pub max_endgame_duplicates: u32,
}

impl Default for PickerConfig {
    fn default() -> PickerConfig {
        PickerConfig {
            random_first_pieces: 4,
            sequential: false,
            max_endgame_duplicates: 2,
        }
    }
}

/// What to do with a block that arrived, as told by [`Picker::block_received`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Received {
    /// We did not ask this peer for this block (or the block does not exist): drop the data.
    NotRequested,
    /// We have this block already (an endgame copy that crossed our cancel): drop the data.
    Duplicate,
    /// New data: write it.
    Accepted {
        /// Every block of the piece has now arrived: verify it, then call
        /// [`Picker::piece_verified`].
        piece_complete: bool,
        /// Endgame copies of this block still requested from other peers: send them `cancel`.
        cancel: Vec<(PeerHandle, Block)>,
    },
}

/// One block of a started piece.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// Peers with an outstanding request for it, oldest first.
    requesters: Vec<PeerHandle>,
    /// Who sent the data we kept.
    received_from: Option<PeerHandle>,
}

impl Slot {
    fn is_free(&self) -> bool {
        self.requesters.is_empty() && self.received_from.is_none()
    }
}

/// A piece with at least one block requested or received, not yet verified.
#[derive(Debug, Clone)]
struct Partial {
    blocks: Vec<Slot>,
    /// Blocks neither requested nor received.
    free: u32,
    received: u32,
}

/// Chooses blocks to request for one torrent; see the [module documentation](self).
#[derive(Debug)]
pub struct Picker {
    piece_length: u64,
    total_length: u64,
    num_pieces: u32,
    config: PickerConfig,
    rng: ChaCha8Rng,
    have: Bitfield,
    wanted: Bitfield,
    /// Wanted pieces not yet verified.
    remaining: u32,
    /// Per piece, how many peers (apart from those in `seeds`) have it.
    avail: Vec<u32>,
    /// Peers that have every piece; counted here rather than in `avail`, as it does not change
    /// the rarity order and keeps `peer_has_all` O(1).
    seeds: BTreeSet<PeerHandle>,
    /// Random rank per piece, the tie-break among equally rare pieces.
    rank: Vec<u32>,
    /// Wanted pieces we neither have nor started, by index.
    candidates: BTreeSet<u32>,
    /// The same pieces as `(availability, rank, index)`, rarest first.
    by_rarity: BTreeSet<(u32, u32, u32)>,
    /// Started, unverified pieces.
    partials: BTreeMap<u32, Partial>,
    /// Wanted started pieces that still have free blocks.
    open: BTreeSet<u32>,
    /// Each peer's outstanding requests.
    outstanding: BTreeMap<PeerHandle, BTreeSet<Block>>,
}

impl Picker {
    /// A picker for a torrent of `total_length` bytes in pieces of `piece_length` bytes, of which
    /// we already have (verified) the pieces set in `have`. Every piece is wanted until
    /// [`Picker::set_wanted`] says otherwise.
    pub fn new(
        piece_length: u64,
        total_length: u64,
        have: &Bitfield,
        seed: u64,
        config: PickerConfig,
    ) -> Picker {
        let num_pieces = if piece_length == 0 {
            0
        } else {
            u32::try_from(total_length.div_ceil(piece_length)).unwrap_or(u32::MAX)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rank: Vec<u32> = (0..num_pieces).map(|_| rng.random::<u32>()).collect();
        let mut own = Bitfield::new(num_pieces);
        for i in have.iter_ones().take_while(|&i| i < num_pieces) {
            own.set(i);
        }
        let candidates: BTreeSet<u32> = (0..num_pieces).filter(|&i| !own.get(i)).collect();
        let by_rarity = candidates
            .iter()
            .map(|&i| (0, rank.get(i as usize).copied().unwrap_or(0), i))
            .collect();
        Picker {
            piece_length,
            total_length,
            num_pieces,
            config,
            rng,
            remaining: num_pieces - own.count(),
            have: own,
            wanted: Bitfield::full(num_pieces),
            avail: vec![0; num_pieces as usize],
            seeds: BTreeSet::new(),
            rank,
            candidates,
            by_rarity,
            partials: BTreeMap::new(),
            open: BTreeSet::new(),
            outstanding: BTreeMap::new(),
        }
    }

    // ---- getters ----

    /// Number of pieces in the torrent.
    pub fn piece_count(&self) -> u32 {
        self.num_pieces
    }

    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// True when every wanted piece is verified (we are seeding what was selected).
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// Number of wanted pieces not yet verified.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// True when `piece` is wanted and not yet verified: a peer announcing it becomes interesting.
    pub fn wants_piece(&self, piece: u32) -> bool {
        self.wanted.get(piece) && !self.have.get(piece)
    }

    /// True when a peer with `peer_has` has a piece we want and lack: use it to set our interest.
    /// False for a bitfield of the wrong length.
    pub fn is_interesting(&self, peer_has: &Bitfield) -> bool {
        if peer_has.len() != self.num_pieces {
            return false;
        }
        peer_has
            .as_bytes()
            .iter()
            .zip(self.wanted.as_bytes())
            .zip(self.have.as_bytes())
            .any(|((p, w), h)| p & w & !h != 0)
    }

    /// How many known peers have `piece` (0 for an index out of range).
    pub fn availability(&self, piece: u32) -> u32 {
        let n = self.seeds.len() as u32;
        self.avail
            .get(piece as usize)
            .map_or(0, |a| a.saturating_add(n))
    }

    /// Number of requests `peer` has outstanding, for pipelining.
    pub fn outstanding(&self, peer: PeerHandle) -> usize {
        self.outstanding.get(&peer).map_or(0, BTreeSet::len)
    }

    /// True when every block we still need is requested, so [`Picker::pick`] hands out
    /// duplicates.
    pub fn in_endgame(&self) -> bool {
        self.remaining > 0 && self.candidates.is_empty() && self.open.is_empty()
    }

    /// The peers that sent blocks of `piece` (sorted, without repeats), so a failed hash check
    /// can be blamed on them. Call it before [`Picker::piece_verified`], which forgets them.
    pub fn piece_contributors(&self, piece: u32) -> Vec<PeerHandle> {
        let mut v: Vec<PeerHandle> = self
            .partials
            .get(&piece)
            .map(|p| p.blocks.iter().filter_map(|s| s.received_from).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Size of `piece` in bytes (0 out of range).
    pub fn piece_size(&self, piece: u32) -> u64 {
        if piece >= self.num_pieces {
            return 0;
        }
        piece_size(self.piece_length, self.total_length, piece)
    }

    /// Number of blocks in `piece` (0 out of range).
    pub fn blocks_in_piece(&self, piece: u32) -> u32 {
        u32::try_from(self.piece_size(piece).div_ceil(u64::from(BLOCK_SIZE))).unwrap_or(u32::MAX)
    }

    // ---- inputs: what peers have ----

    /// Selects the pieces to download (those of the selected files); other pieces are never
    /// picked. Returns false, changing nothing, when `wanted` has the wrong length.
    pub fn set_wanted(&mut self, wanted: &Bitfield) -> bool {
        if wanted.len() != self.num_pieces {
            return false;
        }
        self.wanted = wanted.clone();
        for p in 0..self.num_pieces {
            self.refresh(p);
        }
        self.remaining = self.count_remaining();
        true
    }

    /// A peer's bitfield arrived: count its pieces. Returns false, changing nothing, when the
    /// length is wrong.
    pub fn peer_has_bitfield(&mut self, peer: PeerHandle, bf: &Bitfield) -> bool {
        if bf.len() != self.num_pieces {
            return false;
        }
        if self.seeds.contains(&peer) {
            return true;
        }
        for p in bf.iter_ones() {
            self.change_availability(p, true);
        }
        true
    }

    /// A peer announced `piece` (a `have` message). Returns false for an index out of range.
    pub fn peer_has_piece(&mut self, peer: PeerHandle, piece: u32) -> bool {
        if piece >= self.num_pieces {
            return false;
        }
        if !self.seeds.contains(&peer) {
            self.change_availability(piece, true);
        }
        true
    }

    /// A peer has every piece (`have all`, or a full bitfield).
    pub fn peer_has_all(&mut self, peer: PeerHandle) {
        self.seeds.insert(peer);
    }

    /// A peer left: its pieces no longer count and its outstanding requests are free again.
    /// `bf` is everything it announced (bitfield plus haves); `had_all` is informational, the
    /// picker remembers which peers it was told have everything.
    pub fn peer_gone(&mut self, peer: PeerHandle, bf: &Bitfield, had_all: bool) {
        let _ = had_all;
        if !self.seeds.remove(&peer) && bf.len() == self.num_pieces {
            for p in bf.iter_ones() {
                self.change_availability(p, false);
            }
        }
        if let Some(blocks) = self.outstanding.remove(&peer) {
            for b in blocks {
                self.unrequest(peer, b);
            }
        }
    }

    // ---- inputs: requests ----

    /// Appends to `out` up to `max_blocks` blocks to request from `peer`, which has the pieces in
    /// `peer_has`, and records them as requested by it. Picks nothing for a bitfield of the wrong
    /// length.
    pub fn pick(
        &mut self,
        peer: PeerHandle,
        peer_has: &Bitfield,
        max_blocks: usize,
        out: &mut Vec<Block>,
    ) {
        if peer_has.len() != self.num_pieces || max_blocks == 0 {
            return;
        }
        let mut want = max_blocks;
        // 1. Started pieces.
        let mut from = 0u32;
        while want > 0 {
            let Some(p) = self.open.range(from..).copied().find(|&p| peer_has.get(p)) else {
                break;
            };
            self.take_free(peer, p, &mut want, out);
            match p.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        // 2. New pieces.
        while want > 0 {
            let Some(p) = self.choose_new(peer, peer_has) else {
                break;
            };
            let n = self.blocks_in_piece(p) as usize;
            self.partials.insert(
                p,
                Partial {
                    blocks: vec![Slot::default(); n],
                    free: n as u32,
                    received: 0,
                },
            );
            self.refresh(p);
            self.take_free(peer, p, &mut want, out);
        }
        // 3. Endgame duplicates, to the blocks with the fewest requesters first.
        if want > 0 && self.in_endgame() {
            for copies in 1..=self.config.max_endgame_duplicates as usize {
                for (&p, partial) in &mut self.partials {
                    if want == 0 {
                        return;
                    }
                    if !self.wanted.get(p) || !peer_has.get(p) {
                        continue;
                    }
                    let size = piece_size(self.piece_length, self.total_length, p);
                    for (k, slot) in partial.blocks.iter_mut().enumerate() {
                        if want == 0 {
                            break;
                        }
                        if slot.received_from.is_none()
                            && slot.requesters.len() == copies
                            && !slot.requesters.contains(&peer)
                        {
                            let b = block_at(p, size, k);
                            slot.requesters.push(peer);
                            self.outstanding.entry(peer).or_default().insert(b);
                            out.push(b);
                            want -= 1;
                        }
                    }
                }
            }
        }
    }

    /// Gives `source` (a web seed, which has every piece) a run of at most `max_pieces`
    /// consecutive wanted pieces that nobody has started, every block of them requested by it:
    /// the run starts at the rarest such piece (one no peer has, when there is one) and grows
    /// upwards while the next piece is also unstarted. Pieces for which `skip` is true are
    /// never claimed. Returns the first piece and the count, or `None` when there is nothing to
    /// claim.
    pub fn claim_run(
        &mut self,
        source: PeerHandle,
        max_pieces: u32,
        skip: impl Fn(u32) -> bool,
    ) -> Option<(u32, u32)> {
        if max_pieces == 0 {
            return None;
        }
        let first = self
            .by_rarity
            .iter()
            .map(|&(_, _, p)| p)
            .find(|&p| !skip(p))?;
        let mut count = 0u32;
        while count < max_pieces {
            let Some(p) = first.checked_add(count) else {
                break;
            };
            if !self.candidates.contains(&p) || skip(p) {
                break;
            }
            let n = self.blocks_in_piece(p) as usize;
            let size = self.piece_size(p);
            let set = self.outstanding.entry(source).or_default();
            let mut blocks = vec![Slot::default(); n];
            for (k, slot) in blocks.iter_mut().enumerate() {
                slot.requesters.push(source);
                set.insert(block_at(p, size, k));
            }
            self.partials.insert(
                p,
                Partial {
                    blocks,
                    free: 0,
                    received: 0,
                },
            );
            self.refresh(p);
            count += 1;
        }
        (count > 0).then_some((first, count))
    }

    /// Frees every block still requested from `peer` (a web seed that gave up its run), so any
    /// peer may fetch them; a piece left with nothing requested or received is unstarted again
    /// (a web seed may claim it in a later run).
    pub fn drop_requests(&mut self, peer: PeerHandle) {
        let Some(blocks) = self.outstanding.remove(&peer) else {
            return;
        };
        let mut pieces = BTreeSet::new();
        for b in blocks {
            self.unrequest(peer, b);
            pieces.insert(b.piece);
        }
        for p in pieces {
            let untouched = self
                .partials
                .get(&p)
                .is_some_and(|x| x.received == 0 && x.free as usize == x.blocks.len());
            if untouched {
                self.partials.remove(&p);
                self.refresh(p);
            }
        }
    }

    /// A block arrived from `peer`: says whether to keep it and which duplicates to cancel.
    pub fn block_received(&mut self, peer: PeerHandle, block: Block) -> Received {
        let Some(k) = self.block_index(block) else {
            return Received::NotRequested;
        };
        if self.have.get(block.piece) {
            return Received::Duplicate;
        }
        let Some(partial) = self.partials.get_mut(&block.piece) else {
            return Received::NotRequested;
        };
        let Some(slot) = partial.blocks.get_mut(k) else {
            return Received::NotRequested;
        };
        if slot.received_from.is_some() {
            return Received::Duplicate;
        }
        if !slot.requesters.contains(&peer) {
            return Received::NotRequested;
        }
        let requesters = std::mem::take(&mut slot.requesters);
        slot.received_from = Some(peer);
        partial.received += 1;
        let piece_complete = partial.received as usize == partial.blocks.len();
        let mut cancel = Vec::new();
        for r in requesters {
            if let Some(set) = self.outstanding.get_mut(&r) {
                set.remove(&block);
            }
            if r != peer {
                cancel.push((r, block));
            }
        }
        Received::Accepted {
            piece_complete,
            cancel,
        }
    }

    /// A request to `peer` will not be answered (we were choked, it was rejected or timed out):
    /// the block may be picked again, by any peer. A block that was not requested from `peer`
    /// (or does not exist) is ignored; [`Picker::outstanding`] shows the effect.
    pub fn request_dropped(&mut self, peer: PeerHandle, block: Block) {
        let removed = self
            .outstanding
            .get_mut(&peer)
            .is_some_and(|set| set.remove(&block));
        if removed {
            self.unrequest(peer, block);
        }
    }

    /// The hash check of `piece` finished. `ok`: we have it now. Not ok: its data is discarded
    /// and every block is free to be fetched again. Returns false for an index out of range.
    pub fn piece_verified(&mut self, piece: u32, ok: bool) -> bool {
        if piece >= self.num_pieces {
            return false;
        }
        if let Some(partial) = self.partials.remove(&piece) {
            let size = self.piece_size(piece);
            for (k, slot) in partial.blocks.iter().enumerate() {
                let b = block_at(piece, size, k);
                for r in &slot.requesters {
                    if let Some(set) = self.outstanding.get_mut(r) {
                        set.remove(&b);
                    }
                }
            }
        }
        let was_needed = self.wants_piece(piece);
        if ok {
            self.have.set(piece);
        } else {
            self.have.clear(piece);
        }
        match (was_needed, self.wants_piece(piece)) {
            (true, false) => self.remaining = self.remaining.saturating_sub(1),
            (false, true) => self.remaining = self.remaining.saturating_add(1),
            _ => {}
        }
        self.refresh(piece);
        true
    }

    // ---- internals ----

    fn count_remaining(&self) -> u32 {
        self.wanted
            .as_bytes()
            .iter()
            .zip(self.have.as_bytes())
            .map(|(w, h)| (w & !h).count_ones())
            .sum()
    }

    /// The block index of `block` when it is exactly one of our blocks.
    fn block_index(&self, block: Block) -> Option<usize> {
        if block.piece >= self.num_pieces || !block.begin.is_multiple_of(BLOCK_SIZE) {
            return None;
        }
        let k = (block.begin / BLOCK_SIZE) as usize;
        let size = self.piece_size(block.piece);
        if u64::from(block.begin) >= size {
            return None;
        }
        (block_at(block.piece, size, k) == block).then_some(k)
    }

    /// Keeps `candidates`, `by_rarity` and `open` in step with `piece`'s state.
    fn refresh(&mut self, piece: u32) {
        let i = piece as usize;
        let key = (
            self.avail.get(i).copied().unwrap_or(0),
            self.rank.get(i).copied().unwrap_or(0),
            piece,
        );
        let wanted = self.wanted.get(piece);
        if wanted && !self.have.get(piece) && !self.partials.contains_key(&piece) {
            if self.candidates.insert(piece) {
                self.by_rarity.insert(key);
            }
        } else if self.candidates.remove(&piece) {
            self.by_rarity.remove(&key);
        }
        if wanted && self.partials.get(&piece).is_some_and(|p| p.free > 0) {
            self.open.insert(piece);
        } else {
            self.open.remove(&piece);
        }
    }

    fn change_availability(&mut self, piece: u32, up: bool) {
        let i = piece as usize;
        let rank = self.rank.get(i).copied().unwrap_or(0);
        let Some(a) = self.avail.get_mut(i) else {
            return;
        };
        let old = *a;
        *a = if up {
            old.saturating_add(1)
        } else {
            old.saturating_sub(1)
        };
        let new = *a;
        if self.candidates.contains(&piece) {
            self.by_rarity.remove(&(old, rank, piece));
            self.by_rarity.insert((new, rank, piece));
        }
    }

    /// The next piece to start for `peer`, following the module's order.
    fn choose_new(&mut self, peer: PeerHandle, peer_has: &Bitfield) -> Option<u32> {
        if self.config.sequential {
            return self.candidates.iter().copied().find(|&p| peer_has.get(p));
        }
        if self.have.count() < self.config.random_first_pieces {
            // The first eligible piece from a random index on, wrapping around: as cheap as the
            // rarest-first walk, and random enough to spread newcomers over the torrent.
            let from = self.rng.random_range(0..self.num_pieces.max(1));
            return self
                .candidates
                .range(from..)
                .chain(self.candidates.range(..from))
                .copied()
                .find(|&p| peer_has.get(p));
        }
        // A peer that is not a seed counted itself in `avail` of each piece it has, so the pieces
        // nobody announced (often most of them early on) need not be walked.
        let start = if self.seeds.contains(&peer) { 0 } else { 1 };
        self.by_rarity
            .range((start, 0, 0)..)
            .map(|&(_, _, p)| p)
            .find(|&p| peer_has.get(p))
    }

    /// Gives `peer` free blocks of started piece `piece`, in order.
    fn take_free(&mut self, peer: PeerHandle, piece: u32, want: &mut usize, out: &mut Vec<Block>) {
        let size = self.piece_size(piece);
        let Some(partial) = self.partials.get_mut(&piece) else {
            return;
        };
        for (k, slot) in partial.blocks.iter_mut().enumerate() {
            if *want == 0 || partial.free == 0 {
                break;
            }
            if slot.is_free() {
                let b = block_at(piece, size, k);
                slot.requesters.push(peer);
                partial.free -= 1;
                self.outstanding.entry(peer).or_default().insert(b);
                out.push(b);
                *want -= 1;
            }
        }
        self.refresh(piece);
    }

    /// Removes `peer` from the requesters of `block`, freeing the block if it was the last.
    fn unrequest(&mut self, peer: PeerHandle, block: Block) {
        let Some(k) = self.block_index(block) else {
            return;
        };
        let Some(partial) = self.partials.get_mut(&block.piece) else {
            return;
        };
        let Some(slot) = partial.blocks.get_mut(k) else {
            return;
        };
        let before = slot.requesters.len();
        slot.requesters.retain(|&r| r != peer);
        if slot.requesters.len() < before && slot.is_free() {
            partial.free += 1;
            self.refresh(block.piece);
        }
    }
}

fn piece_size(piece_length: u64, total_length: u64, piece: u32) -> u64 {
    let start = u64::from(piece).saturating_mul(piece_length);
    piece_length.min(total_length.saturating_sub(start))
}

/// Block `k` of `piece`, which is `size` bytes long.
fn block_at(piece: u32, size: u64, k: usize) -> Block {
    let begin = (k as u64).saturating_mul(u64::from(BLOCK_SIZE));
    let length = size.saturating_sub(begin).min(u64::from(BLOCK_SIZE));
    Block {
        piece,
        begin: u32::try_from(begin).unwrap_or(u32::MAX),
        length: length as u32,
    }
}

#[cfg(test)]
mod tests;
