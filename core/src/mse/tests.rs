use super::*;

use num_bigint::BigUint;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

use crate::id::to_hex;

/// What each end sends once established, in the simulated runs.
const A_PAYLOAD: &[u8] = b"A's first messages after the handshake";
const B_PAYLOAD: &[u8] = b"B's answer: its own handshake and a bitfield";

fn ih(n: u8) -> InfoHash {
    InfoHash([n; 20])
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A plausible BitTorrent handshake to carry as `IA`.
fn bt_handshake(info_hash: InfoHash) -> Vec<u8> {
    let mut hs = PLAIN_HEADER.to_vec();
    hs.extend_from_slice(&[0; 8]);
    hs.extend_from_slice(&info_hash.0);
    hs.extend_from_slice(b"-KP0100-abcdefghijkl");
    hs
}

/// One end of a simulated connection, driven the way a driver would.
struct Peer {
    hs: Handshake,
    /// Sent through the cipher as soon as the handshake is established.
    payload: Vec<u8>,
    established: Option<Established>,
    plain: Option<Vec<u8>>,
    error: Option<MseError>,
    /// The remote's payload as this end decrypted it (`rest`, then later bytes).
    received: Vec<u8>,
    /// Every byte this end put on the wire.
    log: Vec<u8>,
}

impl Peer {
    fn new(hs: Handshake, payload: Vec<u8>) -> Peer {
        Peer {
            hs,
            payload,
            established: None,
            plain: None,
            error: None,
            received: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Puts what this end wants to send on `wire`.
    fn pump(&mut self, wire: &mut Vec<u8>) {
        let before = wire.len();
        while let Some(bytes) = self.hs.poll_transmit() {
            wire.extend_from_slice(&bytes);
        }
        match self.hs.poll_event() {
            Some(MseEvent::Established(mut e)) => {
                self.received.append(&mut e.rest);
                let mut payload = std::mem::take(&mut self.payload);
                e.cipher.encrypt(&mut payload);
                wire.extend_from_slice(&payload);
                self.established = Some(e);
            }
            Some(MseEvent::Plaintext { received }) => self.plain = Some(received),
            None => {}
        }
        self.log.extend_from_slice(&wire[before..]);
    }

    fn deliver(&mut self, chunk: &[u8]) {
        if let Some(e) = &mut self.established {
            let mut bytes = chunk.to_vec();
            e.cipher.decrypt(&mut bytes);
            self.received.extend_from_slice(&bytes);
        } else if self.error.is_none()
            && self.plain.is_none()
            && let Err(e) = self.hs.handle_input(chunk)
        {
            self.error = Some(e);
        }
    }
}

/// Runs `a` against `b` until neither has anything to send, cutting each direction into chunks
/// of 1 to `max_chunk` bytes drawn from `rng`.
fn run(a: &mut Peer, b: &mut Peer, rng: &mut ChaCha8Rng, max_chunk: usize) {
    let mut to_b = Vec::new();
    let mut to_a = Vec::new();
    for _ in 0..200_000 {
        a.pump(&mut to_b);
        b.pump(&mut to_a);
        if to_a.is_empty() && to_b.is_empty() {
            return;
        }
        if !to_b.is_empty() {
            let n = rng.random_range(1..=max_chunk.min(to_b.len()));
            let chunk: Vec<u8> = to_b.drain(..n).collect();
            b.deliver(&chunk);
        }
        if !to_a.is_empty() {
            let n = rng.random_range(1..=max_chunk.min(to_a.len()));
            let chunk: Vec<u8> = to_a.drain(..n).collect();
            a.deliver(&chunk);
        }
    }
    panic!("the connection did not settle");
}

struct Case {
    a_policy: Policy,
    b_policy: Policy,
    target: InfoHash,
    served: Vec<InfoHash>,
    ia: Vec<u8>,
    seed: u64,
    max_chunk: usize,
}

impl Case {
    fn new(a_policy: Policy, b_policy: Policy) -> Case {
        Case {
            a_policy,
            b_policy,
            target: ih(7),
            served: vec![ih(1), ih(7), ih(9)],
            ia: bt_handshake(ih(7)),
            seed: 1,
            max_chunk: 4096,
        }
    }

    fn run(&self) -> (Peer, Peer) {
        let mut r = rng(self.seed);
        let a = Handshake::initiator(self.a_policy, self.target, self.ia.clone(), &mut r);
        let b = Handshake::responder(self.b_policy, self.served.clone(), &mut r);
        let mut a = Peer::new(a, A_PAYLOAD.to_vec());
        let mut b = Peer::new(b, B_PAYLOAD.to_vec());
        run(&mut a, &mut b, &mut r, self.max_chunk);
        (a, b)
    }
}

/// Both ends established with `method`, the responder found the torrent and `IA`, and each
/// end's payload reached the other intact.
fn assert_established(case: &Case, a: &Peer, b: &Peer, method: Method) {
    assert_eq!(a.error, None, "initiator failed");
    assert_eq!(b.error, None, "responder failed");
    let ea = a.established.as_ref().expect("initiator established");
    let eb = b.established.as_ref().expect("responder established");
    assert_eq!((ea.method, eb.method), (method, method));
    assert_eq!((ea.cipher.method(), eb.cipher.method()), (method, method));
    assert_eq!(ea.info_hash, case.target);
    assert_eq!(eb.info_hash, case.target);
    assert!(ea.initial_payload.is_empty());
    assert_eq!(a.received, B_PAYLOAD);
    // IA travels in step 3 when the initiator offers RC4 alone, else first after the handshake.
    let mut ia_then_payload = case.ia.clone();
    ia_then_payload.extend_from_slice(A_PAYLOAD);
    if case.a_policy == Policy::Require {
        assert_eq!(eb.initial_payload, case.ia);
        assert_eq!(b.received, A_PAYLOAD);
    } else {
        assert!(eb.initial_payload.is_empty());
        assert_eq!(b.received, ia_then_payload);
    }
    assert!(a.hs.is_finished() && b.hs.is_finished());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn rc4_is_negotiated_and_the_streams_interoperate() {
    let case = Case::new(Policy::Require, Policy::Prefer);
    let (a, b) = case.run();
    assert_established(&case, &a, &b, Method::Rc4);
    // Nothing readable on the wire: not IA, not either payload.
    assert!(!contains(&a.log, &case.ia[..20]));
    assert!(!contains(&a.log, &A_PAYLOAD[..10]));
    assert!(!contains(&b.log, &B_PAYLOAD[..10]));
}

#[test]
fn plaintext_method_leaves_the_stream_clear_but_the_handshake_obfuscated() {
    // Offered plaintext, a responder that prefers encryption still takes it (as libtorrent
    // does with `prefer_rc4` off): RC4 only when the initiator insists.
    for initiator in [Policy::Disable, Policy::Prefer] {
        let case = Case::new(initiator, Policy::Prefer);
        let (a, b) = case.run();
        assert_established(&case, &a, &b, Method::Plaintext);
        assert!(
            !a.log.starts_with(b"\x13BitTorrent protocol"),
            "{initiator:?}: the handshake starts with Ya, not the BitTorrent header"
        );
        let mut clear = case.ia.clone();
        clear.extend_from_slice(A_PAYLOAD);
        assert!(a.log.ends_with(&clear), "{initiator:?}");
        assert!(b.log.ends_with(B_PAYLOAD), "{initiator:?}");
    }
}

#[test]
fn every_pair_of_policies_agrees_or_fails_as_documented() {
    use Method::*;
    use Policy::*;
    let expected: [(Policy, Policy, Option<Method>); 9] = [
        (Prefer, Prefer, Some(Plaintext)),
        (Prefer, Require, Some(Rc4)),
        (Prefer, Disable, Some(Plaintext)),
        (Require, Prefer, Some(Rc4)),
        (Require, Require, Some(Rc4)),
        (Require, Disable, None),
        (Disable, Prefer, Some(Plaintext)),
        (Disable, Require, None),
        (Disable, Disable, Some(Plaintext)),
    ];
    for (pa, pb, method) in expected {
        let case = Case::new(pa, pb);
        let (a, b) = case.run();
        match method {
            Some(m) => assert_established(&case, &a, &b, m),
            None => {
                assert_eq!(
                    b.error,
                    Some(MseError::NoCommonMethod {
                        provided: pa.crypto_provide(),
                        policy: pb
                    }),
                    "{pa:?} against {pb:?}"
                );
                assert!(a.established.is_none());
            }
        }
    }
}

#[test]
fn an_empty_ia_and_the_largest_ia_both_work() {
    for ia in [Vec::new(), (0..MAX_IA).map(|i| i as u8).collect()] {
        let mut case = Case::new(Policy::Require, Policy::Prefer);
        case.ia = ia;
        case.max_chunk = 1500;
        let (a, b) = case.run();
        assert_established(&case, &a, &b, Method::Rc4);
    }
}

#[test]
fn one_byte_at_a_time_works() {
    for (pa, pb) in [
        (Policy::Prefer, Policy::Prefer),
        (Policy::Disable, Policy::Prefer),
    ] {
        let mut case = Case::new(pa, pb);
        case.max_chunk = 1;
        let (a, b) = case.run();
        let method = pb.select(pa.crypto_provide()).unwrap();
        assert_established(&case, &a, &b, method);
    }
}

/// The bytes each side sends, recorded from one undisturbed run with `seed` in which the
/// initiator has `policy` (the responder prefers encryption).
fn record(seed: u64, policy: Policy, ia: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let case = Case {
        seed,
        ia: ia.to_vec(),
        ..Case::new(policy, Policy::Prefer)
    };
    let (a, b) = case.run();
    (a.log, b.log)
}

/// How [`feed`] ended.
struct Fed {
    sent: Vec<u8>,
    event: Option<MseEvent>,
    error: Option<MseError>,
    /// Input after the outcome: the driver's, not the handshake's.
    leftover: Vec<u8>,
}

/// Feeds `parts` to `hs` until it ends, collecting what it sends and how it ends.
fn feed(mut hs: Handshake, parts: &[&[u8]]) -> Fed {
    let mut fed = Fed {
        sent: Vec::new(),
        event: None,
        error: None,
        leftover: Vec::new(),
    };
    for part in parts {
        if fed.event.is_some() {
            fed.leftover.extend_from_slice(part);
            continue;
        }
        if let Err(e) = hs.handle_input(part) {
            fed.error = Some(e);
            return fed;
        }
        while let Some(bytes) = hs.poll_transmit() {
            fed.sent.extend_from_slice(&bytes);
        }
        fed.event = hs.poll_event();
    }
    fed
}

fn established(event: Option<MseEvent>) -> Established {
    match event {
        Some(MseEvent::Established(e)) => e,
        other => panic!("not established: {other:?}"),
    }
}

/// Everything the remote's payload stream delivered: `IA`, `rest`, then `leftover` decrypted.
fn delivered(e: &mut Established, leftover: &[u8]) -> Vec<u8> {
    let mut out = std::mem::take(&mut e.initial_payload);
    out.append(&mut e.rest);
    let mut later = leftover.to_vec();
    e.cipher.decrypt(&mut later);
    out.extend(later);
    out
}

/// A fresh initiator with `policy` and responder, keyed as in `record(seed, policy, ia)`.
fn fresh(seed: u64, policy: Policy, ia: &[u8]) -> (Handshake, Handshake) {
    let mut r = rng(seed);
    let a = Handshake::initiator(policy, ih(7), ia.to_vec(), &mut r);
    let b = Handshake::responder(Policy::Prefer, vec![ih(1), ih(7), ih(9)], &mut r);
    (a, b)
}

#[test]
fn every_split_point_of_either_stream_gives_the_same_handshake() {
    // The same seed gives the same keys and pads, so a fresh end fed the recorded stream
    // replays the run: cut it in two at every offset. `IA` travels in step 3 when only RC4 is
    // offered, after the handshake otherwise.
    let ia = bt_handshake(ih(7));
    for policy in [Policy::Require, Policy::Prefer] {
        let (a_log, b_log) = record(5, policy, &ia);
        let a_stream = &a_log[..a_log.len() - A_PAYLOAD.len()];
        for k in 0..=a_stream.len() {
            let fed = feed(fresh(5, policy, &ia).1, &[&a_stream[..k], &a_stream[k..]]);
            assert!(fed.error.is_none(), "{policy:?}, split at {k}");
            assert_eq!(
                fed.sent,
                b_log[..fed.sent.len()],
                "{policy:?}, split at {k}"
            );
            let mut e = established(fed.event);
            let method = if policy == Policy::Require {
                Method::Rc4
            } else {
                Method::Plaintext
            };
            assert_eq!((e.method, e.info_hash), (method, ih(7)));
            assert_eq!(
                e.initial_payload.len(),
                if policy == Policy::Require { 68 } else { 0 }
            );
            assert_eq!(
                delivered(&mut e, &fed.leftover),
                ia,
                "{policy:?}, split at {k}"
            );
        }
        for k in 0..=b_log.len() {
            let fed = feed(fresh(5, policy, &ia).0, &[&b_log[..k], &b_log[k..]]);
            assert!(fed.error.is_none(), "{policy:?}, split at {k}");
            assert_eq!(
                fed.sent,
                a_stream[..fed.sent.len()],
                "{policy:?}, split at {k}"
            );
            let mut e = established(fed.event);
            assert_eq!(
                delivered(&mut e, &fed.leftover),
                B_PAYLOAD,
                "{policy:?}, split at {k}"
            );
        }
    }
}

#[test]
fn truncated_streams_wait_without_error_or_outcome() {
    let ia = bt_handshake(ih(7));
    for policy in [Policy::Require, Policy::Prefer] {
        let (a_log, b_log) = record(6, policy, &ia);
        // Without its last byte of step 3 (its IA, for Require) or step 4.
        let mut a_end = a_log.len() - A_PAYLOAD.len();
        if policy != Policy::Require {
            a_end -= ia.len();
        }
        let b_end = b_log.len() - B_PAYLOAD.len();
        for k in 0..a_end {
            let fed = feed(fresh(6, policy, &ia).1, &[&a_log[..k]]);
            assert!(
                fed.event.is_none() && fed.error.is_none(),
                "{policy:?}, cut at {k}"
            );
        }
        for k in 0..b_end {
            let fed = feed(fresh(6, policy, &ia).0, &[&b_log[..k]]);
            assert!(
                fed.event.is_none() && fed.error.is_none(),
                "{policy:?}, cut at {k}"
            );
        }
        // One byte more and each end is through.
        assert!(
            feed(fresh(6, policy, &ia).1, &[&a_log[..a_end]])
                .event
                .is_some()
        );
        assert!(
            feed(fresh(6, policy, &ia).0, &[&b_log[..b_end]])
                .event
                .is_some()
        );
    }
}

#[test]
fn the_responder_finds_the_torrent_among_many_by_any_lookup() {
    let hashes: Vec<InfoHash> = (0..200).map(|i| InfoHash([i as u8 ^ 0x5a; 20])).collect();
    let target = hashes[137];
    let table: SkeyTable = hashes.iter().copied().collect();
    assert_eq!(table.len(), 200);
    let shared = Arc::new(table.clone());
    let closure_table = table.clone();
    type MakeResponder<'a> = Box<dyn Fn(&mut ChaCha8Rng) -> Handshake + 'a>;
    let lookups: Vec<MakeResponder<'_>> = vec![
        Box::new(|r| Handshake::responder(Policy::Prefer, hashes.clone(), r)),
        Box::new(|r| Handshake::responder(Policy::Prefer, table.clone(), r)),
        Box::new(|r| Handshake::responder(Policy::Prefer, Arc::clone(&shared), r)),
        Box::new(|r| {
            let t = closure_table.clone();
            Handshake::responder(Policy::Prefer, move |h: &[u8; 20]| t.find(h), r)
        }),
    ];
    for (i, make) in lookups.iter().enumerate() {
        let mut r = rng(i as u64);
        let a = Handshake::initiator(Policy::Require, target, b"ia".to_vec(), &mut r);
        let b = make(&mut r);
        let mut a = Peer::new(a, Vec::new());
        let mut b = Peer::new(b, Vec::new());
        run(&mut a, &mut b, &mut r, 100);
        let eb = b.established.expect("responder established");
        assert_eq!(eb.info_hash, target, "lookup {i}");
        assert_eq!(eb.initial_payload, b"ia");
    }
    let mut t = SkeyTable::new();
    t.insert(target);
    assert!(t.remove(&target) && !t.remove(&target) && t.is_empty());
}

#[test]
fn an_unknown_info_hash_is_refused() {
    let mut case = Case::new(Policy::Prefer, Policy::Prefer);
    case.target = ih(42);
    let (a, b) = case.run();
    assert_eq!(b.error, Some(MseError::UnknownInfoHash));
    assert!(
        a.established.is_none() && a.error.is_none(),
        "A waits; its driver times out"
    );
    let mut case = Case::new(Policy::Prefer, Policy::Prefer);
    case.served = Vec::new();
    assert_eq!(case.run().1.error, Some(MseError::UnknownInfoHash));
}

#[test]
fn a_plain_bittorrent_handshake_is_reported_or_refused_by_policy() {
    let mut plain = bt_handshake(ih(7));
    plain.extend_from_slice(b"\0\0\0\x01\x02"); // interested
    for policy in [Policy::Prefer, Policy::Disable] {
        let hs = Handshake::responder(policy, vec![ih(7)], &mut rng(1));
        let parts: Vec<&[u8]> = plain.chunks(3).collect();
        let fed = feed(hs, &parts);
        assert_eq!(fed.error, None);
        assert!(fed.sent.is_empty(), "nothing sent to a plain peer");
        match fed.event {
            // Known from the 20th byte: the 7th chunk of 3.
            Some(MseEvent::Plaintext { received }) => assert_eq!(received, plain[..21]),
            other => panic!("{other:?}"),
        }
    }
    let hs = Handshake::responder(Policy::Require, vec![ih(7)], &mut rng(1));
    let fed = feed(hs, &[&plain[..20]]);
    assert_eq!(fed.error, Some(MseError::PlaintextRefused));
    assert!(fed.sent.is_empty());
}

#[test]
fn garbage_fails_exactly_at_the_sync_bounds() {
    let mut r = rng(3);
    let mut garbage = vec![0u8; 1000];
    r.fill_bytes(&mut garbage);
    garbage[0] = 0x13; // like a plain handshake's first byte, but not the rest
    let mut b = Handshake::responder(Policy::Prefer, vec![ih(7)], &mut r);
    for (i, byte) in garbage.iter().enumerate() {
        let result = b.handle_input(std::slice::from_ref(byte));
        if i + 1 < REQ1_SYNC_BOUND {
            assert_eq!(result, Ok(()), "byte {i}");
        } else {
            assert_eq!(result, Err(MseError::NoReq1Sync), "byte {i}");
            break;
        }
    }
    assert_eq!(
        b.handle_input(b"more"),
        Err(MseError::NoReq1Sync),
        "errors stay"
    );
    assert_eq!(b.error(), Some(&MseError::NoReq1Sync));
    let mut a = Handshake::initiator(Policy::Prefer, ih(7), Vec::new(), &mut r);
    for (i, byte) in garbage.iter().enumerate() {
        let result = a.handle_input(std::slice::from_ref(byte));
        if i + 1 < VC_SYNC_BOUND {
            assert_eq!(result, Ok(()), "byte {i}");
        } else {
            assert_eq!(result, Err(MseError::NoVcSync), "byte {i}");
            break;
        }
    }
    // In one chunk it is the same.
    let b = Handshake::responder(Policy::Prefer, vec![ih(7)], &mut r);
    assert_eq!(feed(b, &[&garbage]).error, Some(MseError::NoReq1Sync));
}

#[test]
fn degenerate_public_keys_are_refused() {
    let p = BigUint::from_bytes_be(&P);
    let mut keys: Vec<[u8; KEY_LEN]> = [0u32, 1]
        .iter()
        .map(|&n| to_key_bytes(&BigUint::from(n)))
        .collect();
    keys.push(to_key_bytes(&(&p - 1u32)));
    keys.push(P);
    keys.push([0xff; KEY_LEN]);
    for key in keys {
        let b = Handshake::responder(Policy::Prefer, vec![ih(7)], &mut rng(1));
        assert_eq!(feed(b, &[&key]).error, Some(MseError::BadPublicKey));
        let a = Handshake::initiator(Policy::Prefer, ih(7), Vec::new(), &mut rng(1));
        assert_eq!(feed(a, &[&key]).error, Some(MseError::BadPublicKey));
    }
}

#[test]
fn input_after_the_end_is_a_driver_error() {
    let case = Case::new(Policy::Prefer, Policy::Prefer);
    let (mut a, _) = case.run();
    assert_eq!(a.hs.handle_input(b"x"), Err(MseError::Finished));
    assert_eq!(
        a.hs.poll_event().map(|_| ()),
        None,
        "the outcome comes once"
    );
}

#[test]
fn the_outcome_waits_until_the_last_handshake_bytes_are_taken() {
    let ia = bt_handshake(ih(7));
    let (a_log, _) = record(8, Policy::Prefer, &ia);
    let mut r = rng(8);
    let _ = Handshake::initiator(Policy::Prefer, ih(7), ia.clone(), &mut r);
    let mut b = Handshake::responder(Policy::Prefer, vec![ih(7)], &mut r);
    b.handle_input(&a_log[..a_log.len() - A_PAYLOAD.len()])
        .unwrap();
    assert!(b.is_finished());
    assert!(b.poll_event().is_none(), "step 4 is still to be sent");
    assert!(b.poll_transmit().is_some());
    assert!(matches!(b.poll_event(), Some(MseEvent::Established(_))));
}

// An independent peer: the same protocol written out with the crates, not the module's helpers,
// so a shared mistake (a wrong label, a missing discard, a misplaced field) cannot hide.

fn sha(parts: &[&[u8]]) -> [u8; 20] {
    parts
        .iter()
        .fold(Sha1::new(), |h, p| h.chain_update(p))
        .finalize()
        .into()
}

fn modpow_bytes(base: &BigUint, exp: &BigUint) -> [u8; 96] {
    let bytes = base.modpow(exp, &BigUint::from_bytes_be(&P)).to_bytes_be();
    let mut out = [0u8; 96];
    out[96 - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn keystream(label: &[u8], s: &[u8; 96], skey: &InfoHash, discard: usize) -> Rc4 {
    let mut c = Rc4::new_from_slice(&sha(&[label, s, &skey.0])).unwrap();
    let mut skip = vec![0u8; discard];
    c.apply_keystream(&mut skip);
    c
}

struct RefPeer {
    x: BigUint,
}

impl RefPeer {
    fn new(seed: u8) -> RefPeer {
        RefPeer {
            x: BigUint::from_bytes_be(&[seed; 20]),
        }
    }

    fn public(&self) -> [u8; 96] {
        modpow_bytes(&BigUint::from(2u32), &self.x)
    }

    fn secret(&self, remote: &[u8]) -> [u8; 96] {
        modpow_bytes(&BigUint::from_bytes_be(&remote[..96]), &self.x)
    }
}

/// What an initiator puts in step 3, field by field.
struct Step3<'a> {
    vc: [u8; 8],
    provide: u32,
    pad_c: &'a [u8],
    ia: &'a [u8],
    /// Sent right after `IA`, encrypted if RC4 is the only method offered, else clear (only
    /// sensible when one method is offered).
    payload: &'a [u8],
}

impl Step3<'_> {
    fn bytes(&self, s: &[u8; 96], skey: &InfoHash) -> Vec<u8> {
        let req3 = sha(&[b"req3", s]);
        let req2 = sha(&[b"req2", &skey.0]);
        let mut out = sha(&[b"req1", s]).to_vec();
        out.extend(req2.iter().zip(req3).map(|(x, y)| x ^ y));
        let mut enc = Vec::new();
        enc.extend_from_slice(&self.vc);
        enc.extend_from_slice(&self.provide.to_be_bytes());
        enc.extend_from_slice(&(self.pad_c.len() as u16).to_be_bytes());
        enc.extend_from_slice(self.pad_c);
        enc.extend_from_slice(&(self.ia.len() as u16).to_be_bytes());
        enc.extend_from_slice(self.ia);
        let mut rc4 = keystream(b"keyA", s, skey, 1024);
        rc4.apply_keystream(&mut enc);
        out.extend(enc);
        let mut payload = self.payload.to_vec();
        if self.provide & CRYPTO_PLAINTEXT == 0 {
            rc4.apply_keystream(&mut payload);
        }
        out.extend(payload);
        out
    }
}

/// Runs the reference initiator's `step3` against our responder (with `PadA` of `pad_a`
/// bytes); returns the responder's step-4 bytes decrypted with an independent keystream, or
/// its error.
fn against_responder(step3: &Step3<'_>, pad_a: usize) -> Result<(Vec<u8>, Established), MseError> {
    let skey = ih(7);
    let a = RefPeer::new(3);
    let mut b = Handshake::responder(Policy::Prefer, vec![ih(1), skey], &mut rng(2));
    let mut first = a.public().to_vec();
    first.extend(std::iter::repeat_n(0xee, pad_a));
    b.handle_input(&first)?;
    let yb_pad_b = b.poll_transmit().expect("Yb");
    let s = a.secret(&yb_pad_b);
    b.handle_input(&step3.bytes(&s, &skey))?;
    let mut step4 = b.poll_transmit().expect("step 4");
    keystream(b"keyB", &s, &skey, 1024).apply_keystream(&mut step4);
    Ok((step4, established(b.poll_event())))
}

#[test]
fn our_responder_answers_an_independent_initiator_with_padding_and_early_payload() {
    let step3 = Step3 {
        vc: [0; 8],
        provide: CRYPTO_RC4,
        pad_c: &[0x55; MAX_PAD],
        ia: b"initial payload",
        payload: b"sent before the answer",
    };
    let (step4, e) = against_responder(&step3, MAX_PAD).unwrap();
    assert_eq!(step4, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]);
    assert_eq!((e.method, e.info_hash), (Method::Rc4, ih(7)));
    assert_eq!(e.initial_payload, b"initial payload");
    assert_eq!(e.rest, b"sent before the answer");
    // Plaintext offered alone (an unknown bit is ignored): what follows IA is clear.
    let plain = Step3 {
        provide: CRYPTO_PLAINTEXT | 0x1_0000,
        payload: b"clear",
        ..step3
    };
    let (step4, e) = against_responder(&plain, 0).unwrap();
    assert_eq!(step4, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(e.method, Method::Plaintext);
    assert_eq!(e.initial_payload, b"initial payload");
    assert_eq!(e.rest, b"clear");
}

#[test]
fn an_independent_initiator_s_mistakes_are_caught() {
    let base = Step3 {
        vc: [0; 8],
        provide: CRYPTO_RC4,
        pad_c: &[],
        ia: &[],
        payload: &[],
    };
    let bad_vc = Step3 {
        vc: [0, 0, 0, 0, 0, 0, 0, 1],
        ..base
    };
    assert_eq!(against_responder(&bad_vc, 10).err(), Some(MseError::BadVc));
    let none = Step3 { provide: 0, ..base };
    assert_eq!(
        against_responder(&none, 10).err(),
        Some(MseError::NoCommonMethod {
            provided: 0,
            policy: Policy::Prefer
        })
    );
    let long = [0u8; MAX_PAD + 1];
    let long_pad = Step3 {
        pad_c: &long,
        ..base
    };
    assert_eq!(
        against_responder(&long_pad, 10).err(),
        Some(MseError::PadTooLong { len: 513 })
    );
    // PadA one byte too long puts HASH('req1', S) past the bound.
    assert_eq!(
        against_responder(&base, MAX_PAD + 1).err(),
        Some(MseError::NoReq1Sync)
    );
}

/// Runs our initiator (offering `policy`'s methods, `IA` = "hello") against a reference
/// responder that answers with `select`, `PadB` of `pad_b` bytes, `PadD` = `pad_d` and then
/// `payload`.
fn against_initiator(
    policy: Policy,
    select: u32,
    pad_b: usize,
    pad_d: &[u8],
    payload: &[u8],
) -> Result<Established, MseError> {
    let skey = ih(7);
    let b = RefPeer::new(9);
    let mut a = Handshake::initiator(policy, skey, b"hello".to_vec(), &mut rng(4));
    let ya = a.poll_transmit().expect("Ya");
    let s = b.secret(&ya);
    let mut answer = b.public().to_vec();
    answer.extend(std::iter::repeat_n(0x77, pad_b));
    a.handle_input(&answer)?;
    let step3 = a.poll_transmit().expect("step 3");
    // Check step 3 field by field with the independent keystream.
    assert_eq!(step3[..20], sha(&[b"req1", &s]));
    let req2: Vec<u8> = sha(&[b"req2", &skey.0])
        .iter()
        .zip(sha(&[b"req3", &s]))
        .map(|(x, y)| x ^ y)
        .collect();
    assert_eq!(step3[20..40], req2[..]);
    let mut tail = step3[40..].to_vec();
    let mut from_a = keystream(b"keyA", &s, &skey, 1024);
    from_a.apply_keystream(&mut tail);
    let mut expected = vec![0u8; 8];
    expected.extend_from_slice(&policy.crypto_provide().to_be_bytes());
    // IA in step 3 only when RC4 is the only method offered.
    let in_step3 = policy == Policy::Require;
    if in_step3 {
        expected.extend_from_slice(&[0, 0, 0, 5]);
        expected.extend_from_slice(b"hello");
    } else {
        expected.extend_from_slice(&[0, 0, 0, 0]);
    }
    assert_eq!(tail, expected);
    let mut step4 = vec![0u8; 8];
    step4.extend_from_slice(&select.to_be_bytes());
    step4.extend_from_slice(&(pad_d.len() as u16).to_be_bytes());
    step4.extend_from_slice(pad_d);
    let mut out = keystream(b"keyB", &s, &skey, 1024);
    out.apply_keystream(&mut step4);
    let mut payload = payload.to_vec();
    if select == CRYPTO_RC4 {
        out.apply_keystream(&mut payload);
    }
    step4.extend(payload);
    a.handle_input(&step4)?;
    if !in_step3 {
        let mut late = a.poll_transmit().expect("IA after the handshake");
        if select == CRYPTO_RC4 {
            from_a.apply_keystream(&mut late);
        }
        assert_eq!(late, b"hello");
    }
    Ok(established(a.poll_event()))
}

#[test]
fn our_initiator_completes_with_an_independent_responder() {
    let e = against_initiator(
        Policy::Prefer,
        CRYPTO_RC4,
        MAX_PAD,
        &[1; MAX_PAD],
        b"bitfield",
    )
    .unwrap();
    assert_eq!((e.method, e.info_hash), (Method::Rc4, ih(7)));
    assert_eq!(e.rest, b"bitfield");
    let e = against_initiator(Policy::Prefer, CRYPTO_PLAINTEXT, 0, &[], b"bitfield").unwrap();
    assert_eq!(e.method, Method::Plaintext);
    assert_eq!(e.rest, b"bitfield");
    let e = against_initiator(Policy::Require, CRYPTO_RC4, 3, &[], b"").unwrap();
    assert_eq!(e.method, Method::Rc4);
    let e = against_initiator(Policy::Disable, CRYPTO_PLAINTEXT, 3, &[], b"x").unwrap();
    assert_eq!((e.method, e.rest), (Method::Plaintext, b"x".to_vec()));
}

#[test]
fn an_independent_responder_s_mistakes_are_caught() {
    for (policy, select) in [
        (Policy::Require, CRYPTO_PLAINTEXT),
        (Policy::Disable, CRYPTO_RC4),
        (Policy::Prefer, CRYPTO_RC4 | CRYPTO_PLAINTEXT),
        (Policy::Prefer, 0),
        (Policy::Prefer, 0x04),
    ] {
        assert_eq!(
            against_initiator(policy, select, 5, &[], &[]).err(),
            Some(MseError::BadSelect {
                selected: select,
                provided: policy.crypto_provide()
            })
        );
    }
    assert_eq!(
        against_initiator(Policy::Prefer, CRYPTO_RC4, 5, &[0; MAX_PAD + 1], &[]).err(),
        Some(MseError::PadTooLong { len: 513 })
    );
    assert_eq!(
        against_initiator(Policy::Prefer, CRYPTO_RC4, MAX_PAD + 1, &[], &[]).err(),
        Some(MseError::NoVcSync)
    );
}

#[test]
fn the_keystreams_are_keyed_as_specified_and_skip_1024_bytes() {
    // Cross-checked with Python (pow() and the `cryptography` package's ARC4):
    //   xa = int.from_bytes(bytes(range(1, 21))), xb = int.from_bytes(bytes(range(21, 41)))
    //   ya = pow(2, xa, P), yb = pow(2, xb, P), s = pow(yb, xa, P), SKEY = b"\xab" * 20
    //   ARC4(sha1(b"keyA" + s + SKEY)) keystream bytes 1024..1040, and 0..8 for contrast.
    let xa: Vec<u8> = (1..=20).collect();
    let xb: Vec<u8> = (21..=40).collect();
    let skey = [0xab; 20];
    let mut b = Handshake::responder(Policy::Prefer, vec![InfoHash(skey)], &mut rng(1));
    b.private_key = BigUint::from_bytes_be(&xb);
    let ya = to_key_bytes(&BigUint::from(2u32).modpow(&BigUint::from_bytes_be(&xa), &prime()));
    assert_eq!(
        to_hex(&ya),
        "96e112dab29e8c5272accb9b17b26887ce54a144a4e3b697c7d159b7a817e556b0918db2b4c658e02a87f7e5fb14b18a553e084cbf3dad2d30f16596ccb982d406258c61b30c5c1dae2ddc60bdbd48d79896312aad63238c39e1a633821eb693"
    );
    b.handle_input(&ya).unwrap();
    let sent = b.poll_transmit().unwrap();
    assert_eq!(
        to_hex(&sent[..KEY_LEN]),
        "a3e981e821087e74b889c5bfc373ec5be9ed09c85282b9cdb6b07dbaabe0ee5138a91e6245657219d1019ce47ed3613f037c6932a69069a3928b146b354e79cbfeaad601d12598943c43b5b5529915b2c604e43fd6f9ced4efbe68f9edfaeee7"
    );
    assert_eq!(
        to_hex(&b.secret),
        "994aac6c359990cf4f678a1742b587eb1a5248ec7fcc0d0bcfcb12d2461bc1fe25417b70869697d9ca884832f1c5f2a2fd3318c22a5a6ba170d36aac91405457c1e8137b1534a776865ed353f12422ff6afc58435f8bd443f61dd051a37bcdeb"
    );
    assert_eq!(
        to_hex(&hash(&[b"req1", &b.secret])),
        "83c8d8a3d91a5bf40d723666c4258731c8427ccb"
    );
    let mut ks = [0u8; 16];
    rc4_stream(b"keyA", &b.secret, &skey).apply_keystream(&mut ks);
    assert_eq!(to_hex(&ks), "a9daa7e33accfb976e2448a1b838cb63");
    let mut ks = [0u8; 16];
    rc4_stream(b"keyB", &b.secret, &skey).apply_keystream(&mut ks);
    assert_eq!(to_hex(&ks), "549a0482af4436f46b4560037735675b");
    let mut undiscarded = [0u8; 8];
    keystream(b"keyA", &b.secret, &InfoHash(skey), 0).apply_keystream(&mut undiscarded);
    assert_eq!(to_hex(&undiscarded), "6c44ee96cc737b3a");
}

#[test]
fn prop_any_chunking_any_pads_any_torrent_agrees() {
    fn prop(seed: u64, chunking: u8, ia_len: u16, torrents: u8, which: u8, policies: u8) -> bool {
        use Policy::*;
        let all = [Prefer, Require, Disable];
        let (pa, pb) = (
            all[usize::from(policies % 3)],
            all[usize::from(policies / 3 % 3)],
        );
        let served: Vec<InfoHash> = (0..=torrents % 16).map(|i| InfoHash([i; 20])).collect();
        let target = served[usize::from(which) % served.len()];
        let case = Case {
            a_policy: pa,
            b_policy: pb,
            target,
            served,
            ia: (0..ia_len % 600).map(|i| (i * 31) as u8).collect(),
            seed,
            max_chunk: [1, 2, 7, 20, 97, 700, 5000][usize::from(chunking % 7)],
        };
        let (a, b) = case.run();
        match pb.select(pa.crypto_provide()) {
            Some(method) => assert_established(&case, &a, &b, method),
            None => assert!(matches!(b.error, Some(MseError::NoCommonMethod { .. }))),
        }
        true
    }
    quickcheck::QuickCheck::new()
        .rng(quickcheck::Gen::from_size_and_seed(100, 0x6d73_6531))
        .tests(300)
        .quickcheck(prop as fn(u64, u8, u16, u8, u8, u8) -> bool);
}

#[test]
fn prop_hostile_input_never_panics_and_ends_within_the_bound() {
    fn prop(
        seed: u64,
        garbage: Vec<u8>,
        chunking: u8,
        initiator: bool,
        plain_prefix: bool,
    ) -> bool {
        let mut r = rng(seed);
        let mut input = if plain_prefix {
            PLAIN_HEADER[..usize::from(chunking) % 21].to_vec()
        } else {
            Vec::new()
        };
        input.extend_from_slice(&garbage);
        // Long enough to cross the bound often.
        while input.len() < 700 && !garbage.is_empty() {
            input.extend_from_slice(&garbage);
        }
        let mut hs = if initiator {
            Handshake::initiator(Policy::Prefer, ih(7), Vec::new(), &mut r)
        } else {
            Handshake::responder(Policy::Prefer, vec![ih(7)], &mut r)
        };
        let bound = if initiator {
            VC_SYNC_BOUND
        } else {
            REQ1_SYNC_BOUND
        };
        let chunk = usize::from(chunking % 50) + 1;
        let mut fed = 0;
        for part in input.chunks(chunk) {
            fed += part.len();
            let _ = hs.poll_transmit();
            match hs.handle_input(part) {
                Err(_) => return fed >= KEY_LEN,
                Ok(()) if hs.is_finished() => {
                    // Only a plain handshake ends garbage without error.
                    return !initiator && input.starts_with(PLAIN_HEADER);
                }
                Ok(()) => {
                    if fed >= bound {
                        return false;
                    }
                }
            }
        }
        true
    }
    quickcheck::QuickCheck::new()
        .rng(quickcheck::Gen::from_size_and_seed(300, 0x6d73_6532))
        .tests(400)
        .quickcheck(prop as fn(u64, Vec<u8>, u8, bool, bool) -> bool);
}
