//! Body for the peer-wire codec: the one-shot decoder, the incremental [`Decoder`] and the BEP 10
//! extended handshake.

use kp_torrent_core::wire::{
    self, DEFAULT_MAX_MESSAGE_LEN, Decoder, ExtendedHandshake, Handshake, Message, WireError,
};

use super::formats::check_message;
use super::{Bytes, chunks};

/// What decoding a stream gave: each frame re-encoded, then how it stopped.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Vec<u8>>,
    error: Option<WireError>,
    /// Bytes left undecoded (only meaningful without an error).
    left: usize,
}

/// Input: a mode byte (handshake first or not, which length limit), up to 31 chunk sizes, then the
/// stream. Checks that the one-shot decoder never uses more than it was given, re-encodes every
/// message to exactly the bytes it came from, reports a truncated message as incomplete rather than
/// as something else, and that the incremental decoder fed the stream in chunks (through `feed`
/// and `spare`/`commit`) yields the same messages and the same error.
pub fn wire(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let handshake_first = mode & 1 == 1;
    let max_len = match (mode >> 1) & 3 {
        0 => DEFAULT_MAX_MESSAGE_LEN,
        1 => 0,
        2 => u32::from(b.u16()),
        _ => u32::MAX,
    };
    let n = usize::from(b.u8() % 32);
    let sizes = b.take(n);
    let stream = b.rest();

    let whole = decode_whole(stream, handshake_first, max_len);
    let incremental = decode_incremental(stream, sizes, handshake_first, max_len);
    assert_eq!(
        whole, incremental,
        "incremental decoder disagrees with one-shot decoding"
    );
}

fn decode_whole(stream: &[u8], handshake_first: bool, max_len: u32) -> Decoded {
    let mut out = Decoded {
        frames: Vec::new(),
        error: None,
        left: 0,
    };
    let mut pos = 0;
    if handshake_first {
        match Handshake::decode(stream) {
            Ok(Some(h)) => {
                let mut enc = Vec::new();
                h.encode(&mut enc);
                assert_eq!(
                    enc,
                    stream[..Handshake::LEN],
                    "handshake re-encodes differently"
                );
                out.frames.push(enc);
                pos = Handshake::LEN;
            }
            Ok(None) => {
                assert!(stream.len() < Handshake::LEN);
                out.left = stream.len();
                return out;
            }
            Err(e) => {
                check_message(&e);
                out.error = Some(e);
                return out;
            }
        }
    }
    loop {
        let rest = &stream[pos..];
        match wire::decode(rest, max_len) {
            Ok(Some((msg, used))) => {
                assert!(
                    used >= 4 && used <= rest.len(),
                    "used {used} of {}",
                    rest.len()
                );
                let frame = &rest[..used];
                check_message_frame(&msg, frame, max_len);
                out.frames.push(frame.to_vec());
                pos += used;
            }
            Ok(None) => {
                out.left = rest.len();
                return out;
            }
            Err(e) => {
                check_message(&e);
                out.error = Some(e);
                return out;
            }
        }
    }
}

/// A decoded message re-encodes to its frame, and any strict prefix of the frame is incomplete.
fn check_message_frame(msg: &Message<'_>, frame: &[u8], max_len: u32) {
    let mut enc = Vec::new();
    msg.encode(&mut enc);
    assert_eq!(enc, frame, "{} re-encodes differently", msg.name());
    assert_eq!(msg.encoded_len(), frame.len());
    for cut in [0, 3, 4, 5, frame.len() / 2, frame.len() - 1] {
        if cut < frame.len() {
            assert_eq!(
                wire::decode(&frame[..cut], max_len),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
    }
    if let Message::Extended { id: 0, payload } = msg {
        match ExtendedHandshake::decode(payload) {
            Ok(h) => assert_eq!(
                ExtendedHandshake::decode(&h.encode()),
                Ok(h),
                "extended handshake changes when re-encoded"
            ),
            Err(e) => check_message(&e),
        }
    }
}

fn decode_incremental(stream: &[u8], sizes: &[u8], handshake_first: bool, max_len: u32) -> Decoded {
    let mut out = Decoded {
        frames: Vec::new(),
        error: None,
        left: 0,
    };
    let mut d = Decoder::new(max_len);
    let mut need_handshake = handshake_first;
    let mut fed = 0usize;
    let mut taken = 0usize;
    for (i, chunk) in chunks(stream, sizes).into_iter().enumerate() {
        if i % 2 == 0 {
            d.feed(chunk);
        } else {
            let spare = d.spare(chunk.len());
            assert!(spare.len() >= chunk.len());
            spare[..chunk.len()].copy_from_slice(chunk);
            d.commit(chunk.len());
        }
        fed += chunk.len();
        assert_eq!(d.buffered(), fed - taken, "buffered bytes are miscounted");
        if need_handshake {
            match d.next_handshake() {
                Ok(Some(h)) => {
                    let mut enc = Vec::new();
                    h.encode(&mut enc);
                    out.frames.push(enc);
                    taken += Handshake::LEN;
                    need_handshake = false;
                }
                Ok(None) => continue,
                Err(e) => {
                    assert_eq!(
                        d.next_handshake(),
                        Err(e.clone()),
                        "the error is not sticky"
                    );
                    out.error = Some(e);
                    return out;
                }
            }
        }
        loop {
            match d.next_message() {
                Ok(Some(msg)) => {
                    let mut enc = Vec::new();
                    msg.encode(&mut enc);
                    taken += enc.len();
                    out.frames.push(enc);
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(
                        d.next_message().err(),
                        Some(e.clone()),
                        "the error is not sticky"
                    );
                    out.error = Some(e);
                    return out;
                }
            }
        }
        assert!(taken <= fed, "took {taken} bytes out of {fed}");
    }
    out.left = d.buffered();
    assert_eq!(out.left, fed - taken);
    out
}
