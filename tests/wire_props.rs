//! Properties of the peer-wire codec: round trips for every message kind, chunking-independence
//! of the incremental decoder, and no panic on any input.

use kp_torrent_core::id::{InfoHash, PeerId};
use kp_torrent_core::wire::{
    self, BlockRequest, DEFAULT_MAX_MESSAGE_LEN, Decoder, ExtendedHandshake, Handshake, Message,
};
use quickcheck::{Arbitrary, Gen};
use std::collections::BTreeMap;

/// The number of message kinds `AnyMessage` draws from: one per `Message` variant.
const KINDS: u8 = 18;

/// An owned stand-in for a `Message` of any kind, since `Message` borrows its payloads.
#[derive(Clone, Debug)]
struct AnyMessage {
    kind: u8,
    a: u32,
    b: u32,
    c: u32,
    small: u16,
    id: u8,
    payload: Vec<u8>,
}

impl AnyMessage {
    fn message(&self) -> Message<'_> {
        let r = BlockRequest {
            index: self.a,
            begin: self.b,
            length: self.c,
        };
        match self.kind % KINDS {
            0 => Message::KeepAlive,
            1 => Message::Choke,
            2 => Message::Unchoke,
            3 => Message::Interested,
            4 => Message::NotInterested,
            5 => Message::Have(self.a),
            6 => Message::Bitfield(&self.payload),
            7 => Message::Request(r),
            8 => Message::Piece {
                index: self.a,
                begin: self.b,
                data: &self.payload,
            },
            9 => Message::Cancel(r),
            10 => Message::Port(self.small),
            11 => Message::Suggest(self.a),
            12 => Message::HaveAll,
            13 => Message::HaveNone,
            14 => Message::Reject(r),
            15 => Message::AllowedFast(self.a),
            16 => Message::Extended {
                id: self.id,
                payload: &self.payload,
            },
            // Only ids that no known message uses, so the bytes decode back to `Unknown`.
            _ => Message::Unknown {
                id: [10, 11, 12, 18, 19, 21, 22, 23, 255][usize::from(self.id % 9)],
                payload: &self.payload,
            },
        }
    }

    fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.message().encode(&mut out);
        out
    }
}

impl Arbitrary for AnyMessage {
    fn arbitrary(g: &mut Gen) -> Self {
        // Mostly short payloads; sometimes a whole block, as real piece messages carry.
        let len = if u8::arbitrary(g) < 16 {
            wire::BLOCK_SIZE as usize
        } else {
            usize::from(u8::arbitrary(g))
        };
        AnyMessage {
            kind: u8::arbitrary(g) % KINDS,
            a: u32::arbitrary(g),
            b: u32::arbitrary(g),
            c: u32::arbitrary(g),
            small: u16::arbitrary(g),
            id: u8::arbitrary(g),
            payload: (0..len).map(|_| u8::arbitrary(g)).collect(),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let this = self.clone();
        Box::new(self.payload.shrink().map(move |payload| AnyMessage {
            payload,
            ..this.clone()
        }))
    }
}

fn prop_round_trip(m: AnyMessage) -> bool {
    let message = m.message();
    let bytes = m.encoded();
    bytes.len() == message.encoded_len()
        && wire::decode(&bytes, DEFAULT_MAX_MESSAGE_LEN) == Ok(Some((message, bytes.len())))
}

#[test]
fn wire_round_trip_every_message_kind() {
    kp_torrent_tests::quickcheck("wire_round_trip_every_message_kind", 500)
        .quickcheck(prop_round_trip as fn(AnyMessage) -> bool);
}

#[test]
fn every_message_kind_is_generated() {
    // Guards the generator above: a kind it never draws would never be round-tripped.
    let mut seen = [false; KINDS as usize];
    let mut g = Gen::from_size_and_seed(100, 1);
    for _ in 0..2000 {
        seen[usize::from(AnyMessage::arbitrary(&mut g).kind)] = true;
    }
    assert_eq!(seen, [true; KINDS as usize]);
}

/// Feeds `stream` to a decoder in chunks whose sizes cycle through `sizes` (each 1..=64, or a
/// whole 16 KiB block for a size of 0), alternating `feed` and reading into spare room, and
/// returns each decoded message re-encoded.
fn decode_chunked(stream: &[u8], sizes: &[u16]) -> Result<Vec<Vec<u8>>, wire::WireError> {
    let mut d = Decoder::new(DEFAULT_MAX_MESSAGE_LEN);
    let mut out = Vec::new();
    let mut rest = stream;
    let mut turn = 0usize;
    while !rest.is_empty() {
        let size = match sizes.get(turn % sizes.len().max(1)).copied().unwrap_or(1) {
            0 => wire::BLOCK_SIZE as usize,
            s => usize::from(s % 64 + 1),
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        if turn.is_multiple_of(2) {
            d.feed(chunk);
        } else {
            d.spare(chunk.len())[..chunk.len()].copy_from_slice(chunk);
            d.commit(chunk.len());
        }
        rest = tail;
        turn += 1;
        while let Some(m) = d.next_message()? {
            let mut bytes = Vec::new();
            m.encode(&mut bytes);
            out.push(bytes);
        }
    }
    assert_eq!(d.buffered(), 0, "bytes left after whole messages");
    Ok(out)
}

fn prop_any_split(messages: Vec<AnyMessage>, sizes: Vec<u16>) -> bool {
    let want: Vec<Vec<u8>> = messages.iter().map(AnyMessage::encoded).collect();
    let stream = want.concat();
    decode_chunked(&stream, &sizes) == Ok(want.clone())
        && decode_chunked(&stream, &[1]) == Ok(want.clone())
        && decode_chunked(&stream, &[0]) == Ok(want)
}

#[test]
fn wire_decoder_same_messages_however_split() {
    kp_torrent_tests::quickcheck("wire_decoder_same_messages_however_split", 200)
        .quickcheck(prop_any_split as fn(Vec<AnyMessage>, Vec<u16>) -> bool);
}

/// Runs every decoder over `bytes`; the property is only that nothing panics or loops.
fn decode_everything(bytes: &[u8], max_len: u32, chunk: usize) {
    let mut rest = bytes;
    while let Ok(Some((_, used))) = wire::decode(rest, max_len) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
    let mut d = Decoder::new(max_len);
    let _ = d.next_handshake();
    for piece in bytes.chunks(chunk.max(1)) {
        d.feed(piece);
        while let Ok(Some(_)) = d.next_message() {}
    }
    let _ = Handshake::decode(bytes);
    let _ = ExtendedHandshake::decode(bytes);
}

fn prop_arbitrary_bytes_never_panic(bytes: Vec<u8>, max_len: u32, chunk: u8) -> bool {
    decode_everything(&bytes, max_len, usize::from(chunk));
    decode_everything(&bytes, DEFAULT_MAX_MESSAGE_LEN, usize::from(chunk));
    true
}

#[test]
fn wire_arbitrary_bytes_never_panic() {
    kp_torrent_tests::quickcheck("wire_arbitrary_bytes_never_panic", 1000)
        .quickcheck(prop_arbitrary_bytes_never_panic as fn(Vec<u8>, u32, u8) -> bool);
}

/// Random bytes rarely look like a message; damaged valid streams reach the deeper paths.
fn prop_damaged_streams_never_panic(
    messages: Vec<AnyMessage>,
    damage: Vec<(u16, u8)>,
    chunk: u8,
) -> bool {
    let mut stream = Vec::new();
    Handshake::new(InfoHash([1; 20]), PeerId([2; 20])).encode(&mut stream);
    for m in &messages {
        m.message().encode(&mut stream);
    }
    let mut ext = ExtendedHandshake {
        m: BTreeMap::from([("ut_metadata".to_owned(), 3), ("ut_pex".to_owned(), 1)]),
        v: Some("kp".to_owned()),
        p: Some(6881),
        reqq: Some(250),
        metadata_size: Some(1234),
        yourip: Some(vec![127, 0, 0, 1]),
    }
    .encode();
    for &(at, byte) in &damage {
        if let Some(len) = std::num::NonZeroUsize::new(stream.len()) {
            stream[usize::from(at) % len] = byte;
        }
        let len = ext.len();
        ext[usize::from(at) % len] = byte;
    }
    decode_everything(&stream, DEFAULT_MAX_MESSAGE_LEN, usize::from(chunk));
    decode_everything(&stream[Handshake::LEN..], 64, usize::from(chunk));
    let _ = ExtendedHandshake::decode(&ext);
    true
}

#[test]
fn wire_damaged_streams_never_panic() {
    kp_torrent_tests::quickcheck("wire_damaged_streams_never_panic", 300).quickcheck(
        prop_damaged_streams_never_panic as fn(Vec<AnyMessage>, Vec<(u16, u8)>, u8) -> bool,
    );
}

fn prop_extended_handshake_round_trip(
    m: Vec<(String, u8)>,
    v: Option<String>,
    p: Option<u16>,
    reqq: Option<u32>,
    metadata_size: Option<u32>,
    yourip: Option<Vec<u8>>,
) -> bool {
    let h = ExtendedHandshake {
        m: m.into_iter().collect(),
        v,
        p: p.filter(|&p| p != 0),
        reqq,
        metadata_size: metadata_size.map(u64::from),
        yourip,
    };
    ExtendedHandshake::decode(&h.encode()) == Ok(h)
}

#[test]
fn wire_extended_handshake_round_trip() {
    type Prop = fn(
        Vec<(String, u8)>,
        Option<String>,
        Option<u16>,
        Option<u32>,
        Option<u32>,
        Option<Vec<u8>>,
    ) -> bool;
    kp_torrent_tests::quickcheck("wire_extended_handshake_round_trip", 300)
        .quickcheck(prop_extended_handshake_round_trip as Prop);
}

fn prop_handshake_round_trip(reserved: Vec<u8>, hash: Vec<u8>, peer: Vec<u8>) -> bool {
    let fill = |v: &[u8]| {
        let mut a = [0u8; 20];
        for (x, y) in a.iter_mut().zip(v) {
            *x = *y;
        }
        a
    };
    let mut h = Handshake::new(InfoHash(fill(&hash)), PeerId(fill(&peer)));
    h.reserved.copy_from_slice(&fill(&reserved)[..8]);
    let mut out = Vec::new();
    h.encode(&mut out);
    out.len() == Handshake::LEN && Handshake::decode(&out) == Ok(Some(h))
}

#[test]
fn wire_handshake_round_trip() {
    kp_torrent_tests::quickcheck("wire_handshake_round_trip", 200)
        .quickcheck(prop_handshake_round_trip as fn(Vec<u8>, Vec<u8>, Vec<u8>) -> bool);
}
