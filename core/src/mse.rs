//! MSE/PE, the BitTorrent Message Stream Encryption (also "Protocol Encryption" or
//! "obfuscation") that libtorrent, Transmission, Vuze and µTorrent speak, as a state machine
//! with no I/O.
//!
//! # The protocol
//!
//! A 768-bit Diffie-Hellman exchange (generator 2, the prime [`P`]) gives both ends a shared
//! secret `S`; the torrent's info-hash is the pre-shared `SKEY`. `HASH` is SHA-1 over the
//! concatenated arguments. A is the side that opened the connection, B the one that accepted it.
//!
//! 1. A → B: `Ya`, then `PadA` (0 to 512 random bytes).
//! 2. B → A: `Yb`, then `PadB` (0 to 512 random bytes).
//! 3. A → B: `HASH('req1', S)`, `HASH('req2', SKEY) xor HASH('req3', S)`, then encrypted:
//!    `VC` (8 zero bytes), `crypto_provide` (4 bytes), `len(PadC)` (2), `PadC`, `len(IA)` (2),
//!    `IA` (the initial payload: usually A's BitTorrent handshake).
//! 4. B → A, encrypted: `VC`, `crypto_select` (4 bytes), `len(PadD)` (2), `PadD`; then B's
//!    payload, under the selected method.
//! 5. A's payload after `IA` goes under the selected method too.
//!
//! "Encrypted" is RC4: A → B keyed with `HASH('keyA', S, SKEY)`, B → A with
//! `HASH('keyB', S, SKEY)`, each keystream's first 1,024 bytes discarded. The methods
//! (`crypto_provide` offers a set of bits, `crypto_select` picks one) are `0x01` plaintext (after
//! the handshake the stream is clear) and `0x02` RC4 (the keystreams go on). Integers are
//! big-endian.
//!
//! The pads have no length field, so each side finds its place by searching: B looks for
//! `HASH('req1', S)` in the 512 bytes after `Ya` (so it must end within 628 bytes of the
//! connection's start), and A for the encrypted `VC` in the 512 bytes after `Yb` (ending
//! within 616 bytes). Past those bounds the handshake fails: nothing is buffered without limit.
//! `PadC` and `PadD` may be 0 to 512 bytes long; we send them empty, as Transmission does.
//! Our initiator puts `IA` in step 3 only when it offers RC4 alone, and otherwise sends it as
//! the first payload bytes (see [`Handshake::initiator`]).
//!
//! # Driving a handshake
//!
//! One [`Handshake`] per connection: [`Handshake::initiator`] for a connection we opened (it
//! knows the info-hash and may carry `IA`), [`Handshake::responder`] for one we accepted (it
//! finds the torrent by its `SKEY` hash through a [`SkeyLookup`], for instance a [`SkeyTable`] of
//! every torrent the process serves). Like rustls' connections:
//!
//! 1. Feed received bytes, split anywhere, to [`Handshake::handle_input`]. An error is fatal:
//!    close the connection (every later call returns the same error).
//! 2. Drain [`Handshake::poll_transmit`] until `None`, sending the bytes in order. A new
//!    initiator has bytes to send before any input.
//! 3. Then [`Handshake::poll_event`]: once `Some`, the handshake is over
//!    ([`Handshake::is_finished`]). [`MseEvent::Established`] carries the method, the
//!    info-hash, `IA`, the bytes that followed it (already decrypted) and the [`Cipher`] for the
//!    rest of the stream; [`MseEvent::Plaintext`] says the remote sent a plain BitTorrent
//!    handshake instead (responder only, when the [`Policy`] allows it): hand the bytes
//!    received so far to the peer-wire decoder.
//!
//! Time is not this module's business: the caller closes a connection whose handshake takes
//! too long (the specification suggests 30 s; [`crate::engine`] allows 10 s for accepted
//! connections and 5 s for its dials). Randomness (private keys, pad lengths and
//! bytes) comes from the RNG given at construction, so a run is reproducible from its seed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use num_bigint::BigUint;
use rand::{Rng, RngExt};
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

use crate::id::InfoHash;

#[cfg(test)]
mod tests;

/// The Diffie-Hellman prime of MSE (768 bits, big-endian); the generator is 2.
pub const P: [u8; 96] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC9, 0x0F, 0xDA, 0xA2, 0x21, 0x68, 0xC2, 0x34,
    0xC4, 0xC6, 0x62, 0x8B, 0x80, 0xDC, 0x1C, 0xD1, 0x29, 0x02, 0x4E, 0x08, 0x8A, 0x67, 0xCC, 0x74,
    0x02, 0x0B, 0xBE, 0xA6, 0x3B, 0x13, 0x9B, 0x22, 0x51, 0x4A, 0x08, 0x79, 0x8E, 0x34, 0x04, 0xDD,
    0xEF, 0x95, 0x19, 0xB3, 0xCD, 0x3A, 0x43, 0x1B, 0x30, 0x2B, 0x0A, 0x6D, 0xF2, 0x5F, 0x14, 0x37,
    0x4F, 0xE1, 0x35, 0x6D, 0x6D, 0x51, 0xC2, 0x45, 0xE4, 0x85, 0xB5, 0x76, 0x62, 0x5E, 0x7E, 0xC6,
    0xF4, 0x4C, 0x42, 0xE9, 0xA6, 0x3A, 0x36, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x05, 0x63,
];

/// The size of a public key (`Ya`, `Yb`) and of the shared secret `S` on the wire.
pub const KEY_LEN: usize = 96;

/// The longest `PadA`, `PadB`, `PadC` or `PadD`.
pub const MAX_PAD: usize = 512;

/// The longest initial payload (`IA`) the 2-byte `len(IA)` field can announce.
pub const MAX_IA: usize = u16::MAX as usize;

/// How many keystream bytes each RC4 stream drops before its first use.
pub const RC4_DISCARD: usize = 1024;

/// The verification constant: 8 zero bytes, encrypted.
const VC: [u8; 8] = [0; 8];

/// The size of a private key in bytes (160 bits, as the specification recommends).
const PRIVATE_KEY_LEN: usize = 20;

/// `crypto_provide` / `crypto_select` bit: plaintext after the handshake.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
/// `crypto_provide` / `crypto_select` bit: RC4 for the whole stream.
pub const CRYPTO_RC4: u32 = 0x02;

/// How a plain BEP 3 handshake starts: the length byte 19 and the protocol string.
const PLAIN_HEADER: &[u8; 20] = b"\x13BitTorrent protocol";

/// The responder's search bound: `Ya`, the longest `PadA` and `HASH('req1', S)`.
pub const REQ1_SYNC_BOUND: usize = KEY_LEN + MAX_PAD + 20;
/// The initiator's search bound: `Yb`, the longest `PadB` and the encrypted `VC`.
pub const VC_SYNC_BOUND: usize = KEY_LEN + MAX_PAD + VC.len();

/// How the stream is carried once the handshake is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Clear text: only the handshake was obfuscated.
    Plaintext,
    /// RC4 in both directions.
    Rc4,
}

impl Method {
    /// The `crypto_provide` / `crypto_select` bit of this method.
    pub fn bit(self) -> u32 {
        match self {
            Method::Plaintext => CRYPTO_PLAINTEXT,
            Method::Rc4 => CRYPTO_RC4,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Plaintext => "plaintext",
            Method::Rc4 => "RC4",
        })
    }
}

/// What we offer as initiator and accept as responder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Offer RC4 and plaintext (the responder picks); as responder pick plaintext when it is
    /// offered (the handshake stays obfuscated; libtorrent's default, `prefer_rc4` off, which
    /// spares both ends RC4 over the whole stream), RC4 when only RC4 is, and accept plain
    /// BitTorrent handshakes too.
    #[default]
    Prefer,
    /// Offer and accept RC4 only; refuse plain BitTorrent handshakes.
    Require,
    /// Never encrypt the stream: offer plaintext only (the handshake is still obfuscated); as
    /// responder accept plain BitTorrent handshakes, and MSE only when it offers plaintext.
    /// A driver with this policy normally opens connections without MSE at all
    /// ([`Policy::initiates_with_mse`]).
    Disable,
}

impl Policy {
    /// The `crypto_provide` bits an initiator with this policy sends.
    pub fn crypto_provide(self) -> u32 {
        match self {
            Policy::Prefer => CRYPTO_PLAINTEXT | CRYPTO_RC4,
            Policy::Require => CRYPTO_RC4,
            Policy::Disable => CRYPTO_PLAINTEXT,
        }
    }

    /// The method a responder with this policy selects among the `provided` bits, if any.
    pub fn select(self, provided: u32) -> Option<Method> {
        let rc4 = provided & CRYPTO_RC4 != 0;
        let plain = provided & CRYPTO_PLAINTEXT != 0;
        match self {
            Policy::Prefer | Policy::Disable if plain => Some(Method::Plaintext),
            Policy::Prefer | Policy::Require if rc4 => Some(Method::Rc4),
            _ => None,
        }
    }

    /// Whether a responder with this policy lets a plain BitTorrent handshake through.
    pub fn accepts_plaintext_handshake(self) -> bool {
        self != Policy::Require
    }

    /// Whether outgoing connections should start with MSE (`false`: a plain handshake).
    pub fn initiates_with_mse(self) -> bool {
        self != Policy::Disable
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Prefer => "prefer encryption",
            Policy::Require => "require encryption",
            Policy::Disable => "encryption disabled",
        })
    }
}

/// Why a handshake failed. Every error is fatal to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MseError {
    /// Responder: no `HASH('req1', S)` within [`REQ1_SYNC_BOUND`] bytes of the start.
    NoReq1Sync,
    /// Initiator: no encrypted verification constant within [`VC_SYNC_BOUND`] bytes of the
    /// responder's stream.
    NoVcSync,
    /// Responder: the `SKEY` hash names none of the torrents we serve.
    UnknownInfoHash,
    /// Responder: the verification constant did not decrypt to zeros.
    BadVc,
    /// Responder: `crypto_provide` offers nothing our policy accepts.
    NoCommonMethod {
        /// The bits the initiator offered.
        provided: u32,
        /// Our policy.
        policy: Policy,
    },
    /// Initiator: `crypto_select` is not exactly one of the methods we offered.
    BadSelect {
        /// The bits the responder sent.
        selected: u32,
        /// The bits we offered.
        provided: u32,
    },
    /// `len(PadC)` or `len(PadD)` over [`MAX_PAD`].
    PadTooLong {
        /// The announced length.
        len: u16,
    },
    /// The remote's public key is 0, 1, `P - 1` or not below `P` (the shared secret would be
    /// trivial or undefined).
    BadPublicKey,
    /// Responder: a plain BitTorrent handshake while our policy requires encryption.
    PlaintextRefused,
    /// Input after the handshake finished: it belongs to the [`Cipher`] and the peer wire.
    Finished,
}

impl fmt::Display for MseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MseError::NoReq1Sync => write!(
                f,
                "MSE: no HASH('req1', S) within the first {REQ1_SYNC_BOUND} bytes (not MSE, or a different secret)"
            ),
            MseError::NoVcSync => write!(
                f,
                "MSE: no verification constant within the first {VC_SYNC_BOUND} bytes of the answer"
            ),
            MseError::UnknownInfoHash => {
                f.write_str("MSE: the peer asked for a torrent we do not serve")
            }
            MseError::BadVc => {
                f.write_str("MSE: the verification constant did not decrypt to zeros")
            }
            MseError::NoCommonMethod { provided, policy } => write!(
                f,
                "MSE: the peer offers methods {provided:#x}, none acceptable ({policy})"
            ),
            MseError::BadSelect { selected, provided } => write!(
                f,
                "MSE: the peer selected {selected:#x}, not one of the methods offered ({provided:#x})"
            ),
            MseError::PadTooLong { len } => {
                write!(
                    f,
                    "MSE: a padding of {len} bytes, over the limit of {MAX_PAD}"
                )
            }
            MseError::BadPublicKey => f.write_str("MSE: the peer's public key is degenerate"),
            MseError::PlaintextRefused => {
                f.write_str("MSE: a plain BitTorrent handshake, but encryption is required")
            }
            MseError::Finished => f.write_str("MSE: input after the handshake finished"),
        }
    }
}

impl std::error::Error for MseError {}

/// `HASH('req2', SKEY)`: what a responder looks torrents up by.
pub fn skey_hash(info_hash: &InfoHash) -> [u8; 20] {
    hash(&[b"req2", &info_hash.0])
}

/// How a responder finds the torrent an initiator asks for: given `HASH('req2', SKEY)`, the
/// info-hash `SKEY` whose hash it is, if we serve it.
pub trait SkeyLookup {
    /// The info-hash whose [`skey_hash`] is `req2`, if any.
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash>;
}

impl SkeyLookup for [InfoHash] {
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        self.iter().copied().find(|ih| skey_hash(ih) == *req2)
    }
}

impl SkeyLookup for Vec<InfoHash> {
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        self.as_slice().find(req2)
    }
}

impl<T: SkeyLookup + ?Sized> SkeyLookup for Arc<T> {
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        (**self).find(req2)
    }
}

impl<F: Fn(&[u8; 20]) -> Option<InfoHash>> SkeyLookup for F {
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        self(req2)
    }
}

/// Info-hashes indexed by their [`skey_hash`]: a router keeps one for all its torrents (behind
/// an `Arc`, shared by every incoming handshake) so a lookup costs no hashing.
#[derive(Clone, Debug, Default)]
pub struct SkeyTable {
    by_hash: BTreeMap<[u8; 20], InfoHash>,
}

impl SkeyTable {
    /// An empty table.
    pub fn new() -> SkeyTable {
        SkeyTable::default()
    }

    /// Adds a torrent.
    pub fn insert(&mut self, info_hash: InfoHash) {
        self.by_hash.insert(skey_hash(&info_hash), info_hash);
    }

    /// Removes a torrent; `true` if it was there.
    pub fn remove(&mut self, info_hash: &InfoHash) -> bool {
        self.by_hash.remove(&skey_hash(info_hash)).is_some()
    }

    /// How many torrents the table holds.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the table holds no torrent.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl FromIterator<InfoHash> for SkeyTable {
    fn from_iter<I: IntoIterator<Item = InfoHash>>(iter: I) -> SkeyTable {
        let mut table = SkeyTable::new();
        for ih in iter {
            table.insert(ih);
        }
        table
    }
}

impl SkeyLookup for SkeyTable {
    fn find(&self, req2: &[u8; 20]) -> Option<InfoHash> {
        self.by_hash.get(req2).copied()
    }
}

/// The stream transform after the handshake: encrypt what we send, decrypt what we receive,
/// in place and in stream order. With [`Method::Plaintext`] both are no-ops.
pub struct Cipher {
    method: Method,
    /// Our outgoing keystream and the remote's, `None` in plaintext (boxed: 516 bytes).
    rc4: Option<Box<(Rc4, Rc4)>>,
}

impl Cipher {
    /// A cipher that changes nothing, for connections without MSE or with plaintext selected.
    pub fn plaintext() -> Cipher {
        Cipher {
            method: Method::Plaintext,
            rc4: None,
        }
    }

    /// The negotiated method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Encrypts bytes about to be sent, continuing the outgoing stream.
    pub fn encrypt(&mut self, buf: &mut [u8]) {
        if let Some(streams) = &mut self.rc4 {
            streams.0.apply_keystream(buf);
        }
    }

    /// Decrypts bytes just received, continuing the incoming stream.
    pub fn decrypt(&mut self, buf: &mut [u8]) {
        if let Some(streams) = &mut self.rc4 {
            streams.1.apply_keystream(buf);
        }
    }

    fn new(method: Method, out: Rc4, inc: Rc4) -> Cipher {
        match method {
            Method::Plaintext => Cipher::plaintext(),
            Method::Rc4 => Cipher {
                method,
                rc4: Some(Box::new((out, inc))),
            },
        }
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cipher")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// A finished MSE handshake.
#[derive(Debug)]
pub struct Established {
    /// The method the responder selected.
    pub method: Method,
    /// The torrent: the initiator's own, or the one the responder identified.
    pub info_hash: InfoHash,
    /// `IA` as received in step 3 (responder; usually the initiator's BitTorrent handshake,
    /// though an initiator may send it after the handshake instead, in `rest`). Empty for the
    /// initiator, whose `IA` was sent.
    pub initial_payload: Vec<u8>,
    /// Bytes that arrived after the handshake, already decrypted with `cipher`.
    pub rest: Vec<u8>,
    /// Encrypts what we send from now on and decrypts what we receive after `rest`.
    pub cipher: Cipher,
}

/// How a handshake ended well.
#[derive(Debug)]
pub enum MseEvent {
    /// MSE completed.
    Established(Established),
    /// Responder only: the remote sent a plain BitTorrent handshake, and the policy allows it.
    /// Carry on without MSE, starting with these bytes (every byte received so far).
    Plaintext {
        /// The bytes received, beginning with `\x13BitTorrent protocol`.
        received: Vec<u8>,
    },
}

/// One side of one connection's MSE handshake. See the [module documentation](self).
pub struct Handshake {
    role: Role,
    policy: Policy,
    private_key: BigUint,
    /// The pad after our public key, and `PadC`/`PadD` (sent empty).
    pad: Vec<u8>,
    state: State,
    /// Received bytes not yet consumed.
    buf: Vec<u8>,
    /// Bytes to send, in order.
    transmit: Vec<u8>,
    /// Our keystream and the remote's, once `S` and `SKEY` are known.
    rc4: Option<(Rc4, Rc4)>,
    secret: [u8; KEY_LEN],
    info_hash: Option<InfoHash>,
    event: Option<MseEvent>,
}

enum Role {
    Initiator { ia: Vec<u8> },
    Responder { lookup: Box<dyn SkeyLookup + Send> },
}

#[derive(Clone, Debug)]
enum State {
    /// Initiator: waiting for `Yb`.
    AwaitYb,
    /// Initiator: searching for the encrypted `VC` (the first 8 bytes of B's keystream).
    SyncVc {
        expected: [u8; 8],
    },
    /// Initiator: waiting for `crypto_select` and `len(PadD)`.
    ReadSelect,
    /// Initiator: skipping `PadD`.
    SkipPadD {
        len: usize,
        method: Method,
    },
    /// Responder: waiting for `Ya` (or a plain handshake's first 20 bytes).
    AwaitYa,
    /// Responder: searching for `HASH('req1', S)`.
    SyncReq1 {
        req1: [u8; 20],
    },
    /// Responder: waiting for the obfuscated `SKEY` hash.
    ReadSkey,
    /// Responder: waiting for `VC`, `crypto_provide` and `len(PadC)`.
    ReadProvide,
    /// Responder: waiting for `PadC` and `len(IA)`.
    ReadPadC {
        len: usize,
        method: Method,
    },
    /// Responder: waiting for `IA`.
    ReadIa {
        len: usize,
        method: Method,
    },
    Done,
    Failed(MseError),
}

impl Handshake {
    /// The handshake of a connection we opened for `info_hash`, carrying `ia` (often our
    /// BitTorrent handshake, possibly empty) to the responder. Its first bytes are ready in
    /// [`Handshake::poll_transmit`] at once.
    ///
    /// `ia` goes in step 3 when the policy offers RC4 alone. When it offers plaintext, `ia` is
    /// sent instead as the first bytes after the handshake, under the selected method (so in
    /// [`Handshake::poll_transmit`] before the outcome): Transmission 3.00, having selected
    /// plaintext, reads a step-3 `IA` as if it were clear and drops the connection. Either way
    /// the remote's peer wire sees `ia` first.
    ///
    /// # Panics
    /// If `ia` is longer than [`MAX_IA`].
    pub fn initiator<R: Rng + ?Sized>(
        policy: Policy,
        info_hash: InfoHash,
        ia: Vec<u8>,
        rng: &mut R,
    ) -> Handshake {
        assert!(ia.len() <= MAX_IA, "IA of {} bytes over {MAX_IA}", ia.len());
        let mut hs = Handshake::new(Role::Initiator { ia }, policy, State::AwaitYb, rng);
        hs.info_hash = Some(info_hash);
        hs.send_public_key();
        hs
    }

    /// The handshake of a connection we accepted: `lookup` finds the torrent the initiator asks
    /// for. Nothing is sent before the remote's first bytes show whether it speaks MSE.
    pub fn responder<R: Rng + ?Sized>(
        policy: Policy,
        lookup: impl SkeyLookup + Send + 'static,
        rng: &mut R,
    ) -> Handshake {
        let role = Role::Responder {
            lookup: Box::new(lookup),
        };
        Handshake::new(role, policy, State::AwaitYa, rng)
    }

    fn new<R: Rng + ?Sized>(role: Role, policy: Policy, state: State, rng: &mut R) -> Handshake {
        let mut private = [0u8; PRIVATE_KEY_LEN];
        rng.fill_bytes(&mut private);
        // A full 160 bits, never a tiny exponent.
        private[0] |= 0x80;
        let mut pad = vec![0u8; rng.random_range(0..=MAX_PAD)];
        rng.fill_bytes(&mut pad);
        Handshake {
            role,
            policy,
            private_key: BigUint::from_bytes_be(&private),
            pad,
            state,
            buf: Vec::new(),
            transmit: Vec::new(),
            rc4: None,
            secret: [0; KEY_LEN],
            info_hash: None,
            event: None,
        }
    }

    /// Feeds bytes received from the remote, split anywhere. After an error, every call returns
    /// it again: close the connection. Once the handshake is over, bytes belong to the
    /// [`Cipher`]: feeding more here is [`MseError::Finished`] (an empty slice is ignored).
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), MseError> {
        match &self.state {
            State::Failed(e) => return Err(*e),
            State::Done if bytes.is_empty() => return Ok(()),
            State::Done => return Err(MseError::Finished),
            _ => {}
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.step() {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    self.state = State::Failed(e);
                    self.buf = Vec::new();
                    self.transmit = Vec::new();
                    return Err(e);
                }
            }
        }
    }

    /// Bytes to send to the remote, in order, until `None`. Send them before anything the
    /// [`Cipher`] encrypts.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.transmit.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.transmit))
        }
    }

    /// The outcome, once: `None` while the handshake goes on or while
    /// [`Handshake::poll_transmit`] still has bytes (they must go out first).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<MseEvent> {
        if self.transmit.is_empty() {
            self.event.take()
        } else {
            None
        }
    }

    /// Whether the handshake is over (its outcome is, or was, in [`Handshake::poll_event`]).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The error that ended the handshake, if one did.
    pub fn error(&self) -> Option<&MseError> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// One step of the state machine: `Ok(true)` if it moved, `Ok(false)` if it needs input.
    fn step(&mut self) -> Result<bool, MseError> {
        match self.state.clone() {
            State::AwaitYb => {
                let Some(yb) = self.take_array::<KEY_LEN>() else {
                    return Ok(false);
                };
                self.agree(&yb)?;
                let info_hash = self.info_hash.expect("an initiator knows its info-hash");
                let skey = info_hash.0;
                let (mut out, mut inc) = self.keystreams(b"keyA", b"keyB", &skey);
                let mut expected = VC;
                inc.apply_keystream(&mut expected);
                let Role::Initiator { ia } = &mut self.role else {
                    unreachable!("AwaitYb is an initiator's state")
                };
                let ia = if self.policy.crypto_provide() == CRYPTO_RC4 {
                    std::mem::take(ia)
                } else {
                    Vec::new()
                };
                let req1 = hash(&[b"req1", &self.secret]);
                let req3 = hash(&[b"req3", &self.secret]);
                let obfuscated = xor20(&skey_hash(&info_hash), &req3);
                let mut tail = Vec::with_capacity(8 + 4 + 2 + 2 + ia.len());
                tail.extend_from_slice(&VC);
                tail.extend_from_slice(&self.policy.crypto_provide().to_be_bytes());
                tail.extend_from_slice(&0u16.to_be_bytes()); // PadC, empty
                tail.extend_from_slice(&(ia.len() as u16).to_be_bytes());
                tail.extend_from_slice(&ia);
                out.apply_keystream(&mut tail);
                self.transmit.extend_from_slice(&req1);
                self.transmit.extend_from_slice(&obfuscated);
                self.transmit.extend_from_slice(&tail);
                self.rc4 = Some((out, inc));
                self.state = State::SyncVc { expected };
                Ok(true)
            }
            State::SyncVc { expected } => {
                self.sync(&expected, State::ReadSelect, MseError::NoVcSync)
            }
            State::ReadSelect => {
                let Some(field) = self.take_decrypted::<6>() else {
                    return Ok(false);
                };
                let selected = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                let pad = u16::from_be_bytes([field[4], field[5]]);
                let provided = self.policy.crypto_provide();
                let method = match selected {
                    CRYPTO_PLAINTEXT if provided & selected != 0 => Method::Plaintext,
                    CRYPTO_RC4 if provided & selected != 0 => Method::Rc4,
                    _ => return Err(MseError::BadSelect { selected, provided }),
                };
                let len = checked_pad(pad)?;
                self.state = State::SkipPadD { len, method };
                Ok(true)
            }
            State::SkipPadD { len, method } => {
                if self.take_decrypted_vec(len).is_none() {
                    return Ok(false);
                }
                self.finish(method, Vec::new());
                Ok(true)
            }
            State::AwaitYa => {
                if self.buf.len() >= PLAIN_HEADER.len() && self.buf.starts_with(PLAIN_HEADER) {
                    if !self.policy.accepts_plaintext_handshake() {
                        return Err(MseError::PlaintextRefused);
                    }
                    let received = std::mem::take(&mut self.buf);
                    self.event = Some(MseEvent::Plaintext { received });
                    self.state = State::Done;
                    return Ok(true);
                }
                let Some(ya) = self.take_array::<KEY_LEN>() else {
                    return Ok(false);
                };
                self.agree(&ya)?;
                self.send_public_key();
                let req1 = hash(&[b"req1", &self.secret]);
                self.state = State::SyncReq1 { req1 };
                Ok(true)
            }
            State::SyncReq1 { req1 } => self.sync(&req1, State::ReadSkey, MseError::NoReq1Sync),
            State::ReadSkey => {
                let Some(obfuscated) = self.take_array::<20>() else {
                    return Ok(false);
                };
                let req3 = hash(&[b"req3", &self.secret]);
                let req2 = xor20(&obfuscated, &req3);
                let Role::Responder { lookup } = &self.role else {
                    unreachable!("ReadSkey is a responder's state")
                };
                let info_hash = lookup.find(&req2).ok_or(MseError::UnknownInfoHash)?;
                self.info_hash = Some(info_hash);
                self.rc4 = Some(self.keystreams(b"keyB", b"keyA", &info_hash.0));
                self.state = State::ReadProvide;
                Ok(true)
            }
            State::ReadProvide => {
                let Some(field) = self.take_decrypted::<14>() else {
                    return Ok(false);
                };
                if field[..8] != VC {
                    return Err(MseError::BadVc);
                }
                let provided = u32::from_be_bytes([field[8], field[9], field[10], field[11]]);
                let pad = u16::from_be_bytes([field[12], field[13]]);
                let method = self
                    .policy
                    .select(provided)
                    .ok_or(MseError::NoCommonMethod {
                        provided,
                        policy: self.policy,
                    })?;
                let len = checked_pad(pad)?;
                self.state = State::ReadPadC { len, method };
                Ok(true)
            }
            State::ReadPadC { len, method } => {
                if self.buf.len() < len + 2 {
                    return Ok(false);
                }
                let field = self.take_decrypted_vec(len + 2).expect("length checked");
                let ia_len = u16::from_be_bytes([field[len], field[len + 1]]);
                self.state = State::ReadIa {
                    len: usize::from(ia_len),
                    method,
                };
                Ok(true)
            }
            State::ReadIa { len, method } => {
                let Some(ia) = self.take_decrypted_vec(len) else {
                    return Ok(false);
                };
                let mut answer = Vec::with_capacity(8 + 4 + 2);
                answer.extend_from_slice(&VC);
                answer.extend_from_slice(&method.bit().to_be_bytes());
                answer.extend_from_slice(&0u16.to_be_bytes()); // PadD, empty
                let (out, _) = self.rc4.as_mut().expect("keystreams exist after SKEY");
                out.apply_keystream(&mut answer);
                self.transmit.extend_from_slice(&answer);
                self.finish(method, ia);
                Ok(true)
            }
            State::Done | State::Failed(_) => Ok(false),
        }
    }

    /// Looks for `marker` after a pad of at most [`MAX_PAD`] bytes: once found, drops the bytes
    /// up to its end and moves to `next`; fails with `missing` once it can no longer appear.
    fn sync(&mut self, marker: &[u8], next: State, missing: MseError) -> Result<bool, MseError> {
        let end = self.buf.len().min(MAX_PAD + marker.len());
        match self.buf[..end]
            .windows(marker.len())
            .position(|w| w == marker)
        {
            Some(at) => {
                self.buf.drain(..at + marker.len());
                self.state = next;
                Ok(true)
            }
            None if self.buf.len() >= MAX_PAD + marker.len() => Err(missing),
            None => Ok(false),
        }
    }

    /// Queues our public key and its random pad.
    fn send_public_key(&mut self) {
        let public = to_key_bytes(&BigUint::from(2u32).modpow(&self.private_key, &prime()));
        self.transmit.extend_from_slice(&public);
        self.transmit.extend_from_slice(&self.pad);
        self.pad = Vec::new();
    }

    /// Computes `S` from the remote's public key.
    fn agree(&mut self, remote: &[u8; KEY_LEN]) -> Result<(), MseError> {
        let p = prime();
        let y = BigUint::from_bytes_be(remote);
        if y <= BigUint::from(1u32) || y >= &p - 1u32 {
            return Err(MseError::BadPublicKey);
        }
        self.secret = to_key_bytes(&y.modpow(&self.private_key, &p));
        Ok(())
    }

    /// Our outgoing and the remote's incoming RC4 streams, keyed `HASH(label, S, SKEY)`, with
    /// their first [`RC4_DISCARD`] bytes dropped.
    fn keystreams(&self, ours: &[u8; 4], theirs: &[u8; 4], skey: &[u8; 20]) -> (Rc4, Rc4) {
        (
            rc4_stream(ours, &self.secret, skey),
            rc4_stream(theirs, &self.secret, skey),
        )
    }

    /// Ends the handshake: what is left in the buffer is the remote's payload, and an initiator's
    /// `IA` held back from step 3 goes out first.
    fn finish(&mut self, method: Method, initial_payload: Vec<u8>) {
        let (out, inc) = self.rc4.take().expect("keystreams exist at the end");
        let mut cipher = Cipher::new(method, out, inc);
        if let Role::Initiator { ia } = &mut self.role {
            let mut ia = std::mem::take(ia);
            cipher.encrypt(&mut ia);
            self.transmit.extend_from_slice(&ia);
        }
        let mut rest = std::mem::take(&mut self.buf);
        cipher.decrypt(&mut rest);
        self.event = Some(MseEvent::Established(Established {
            method,
            info_hash: self.info_hash.expect("known at the end"),
            initial_payload,
            rest,
            cipher,
        }));
        self.state = State::Done;
    }

    fn take_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.buf.len() < N {
            return None;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[..N]);
        self.buf.drain(..N);
        Some(out)
    }

    /// The next `N` bytes, decrypted with the remote's keystream.
    fn take_decrypted<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut out = self.take_array::<N>()?;
        let (_, inc) = self.rc4.as_mut().expect("keystreams exist after S");
        inc.apply_keystream(&mut out);
        Some(out)
    }

    fn take_decrypted_vec(&mut self, len: usize) -> Option<Vec<u8>> {
        if self.buf.len() < len {
            return None;
        }
        let mut out: Vec<u8> = self.buf.drain(..len).collect();
        let (_, inc) = self.rc4.as_mut().expect("keystreams exist after S");
        inc.apply_keystream(&mut out);
        Some(out)
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Initiator { .. } => "initiator",
            Role::Responder { .. } => "responder",
        };
        f.debug_struct("Handshake")
            .field("role", &role)
            .field("policy", &self.policy)
            .field("state", &self.state)
            .field("buffered", &self.buf.len())
            .field("to_send", &self.transmit.len())
            .finish_non_exhaustive()
    }
}

fn prime() -> BigUint {
    BigUint::from_bytes_be(&P)
}

/// A number below `P` as [`KEY_LEN`] big-endian bytes.
fn to_key_bytes(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    out[KEY_LEN - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

fn xor20(a: &[u8; 20], b: &[u8; 20]) -> [u8; 20] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn rc4_stream(label: &[u8; 4], secret: &[u8; KEY_LEN], skey: &[u8; 20]) -> Rc4 {
    let key = hash(&[label, secret, skey]);
    let mut rc4 = Rc4::new_from_slice(&key).expect("a 20-byte key is valid for RC4");
    rc4.apply_keystream(&mut [0u8; RC4_DISCARD]);
    rc4
}

fn checked_pad(len: u16) -> Result<usize, MseError> {
    if usize::from(len) > MAX_PAD {
        Err(MseError::PadTooLong { len })
    } else {
        Ok(usize::from(len))
    }
}
