use std::collections::BTreeMap;

use super::*;

const MAX: u32 = DEFAULT_MAX_MESSAGE_LEN;

fn encoded(m: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    out
}

/// Checks encoding against the hand-written bytes, and decoding them back.
fn check(m: Message<'_>, bytes: &[u8]) {
    assert_eq!(encoded(&m), bytes, "encoding {}", m.name());
    assert_eq!(m.encoded_len(), bytes.len(), "encoded_len of {}", m.name());
    assert_eq!(decode(bytes, MAX), Ok(Some((m, bytes.len()))));
    // Every proper prefix asks for more bytes rather than guessing.
    for cut in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..cut], MAX),
            Ok(None),
            "{} cut at {cut}",
            m.name()
        );
    }
}

#[test]
fn keep_alive_and_bodiless_messages() {
    check(Message::KeepAlive, &[0, 0, 0, 0]);
    check(Message::Choke, &[0, 0, 0, 1, 0]);
    check(Message::Unchoke, &[0, 0, 0, 1, 1]);
    check(Message::Interested, &[0, 0, 0, 1, 2]);
    check(Message::NotInterested, &[0, 0, 0, 1, 3]);
    check(Message::HaveAll, &[0, 0, 0, 1, 0x0e]);
    check(Message::HaveNone, &[0, 0, 0, 1, 0x0f]);
}

#[test]
fn piece_index_messages() {
    check(Message::Have(0x0102_0304), &[0, 0, 0, 5, 4, 1, 2, 3, 4]);
    check(Message::Suggest(7), &[0, 0, 0, 5, 0x0d, 0, 0, 0, 7]);
    check(
        Message::AllowedFast(0xffff_ffff),
        &[0, 0, 0, 5, 0x11, 0xff, 0xff, 0xff, 0xff],
    );
}

#[test]
fn block_messages() {
    let r = BlockRequest {
        index: 1,
        begin: 0x4000,
        length: 0x4000,
    };
    let body = [0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0];
    for (m, message_id) in [
        (Message::Request(r), 6),
        (Message::Cancel(r), 8),
        (Message::Reject(r), 0x10),
    ] {
        let mut bytes = vec![0, 0, 0, 13, message_id];
        bytes.extend_from_slice(&body);
        check(m, &bytes);
    }
}

#[test]
fn port_bitfield_piece_extended() {
    check(Message::Port(6881), &[0, 0, 0, 3, 9, 0x1a, 0xe1]);
    check(
        Message::Bitfield(&[0xff, 0x80]),
        &[0, 0, 0, 3, 5, 0xff, 0x80],
    );
    check(Message::Bitfield(&[]), &[0, 0, 0, 1, 5]);
    check(
        Message::Piece {
            index: 2,
            begin: 16,
            data: b"abc",
        },
        &[0, 0, 0, 12, 7, 0, 0, 0, 2, 0, 0, 0, 16, b'a', b'b', b'c'],
    );
    check(
        Message::Piece {
            index: 0,
            begin: 0,
            data: &[],
        },
        &[0, 0, 0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    check(
        Message::Extended {
            id: 0,
            payload: b"de",
        },
        &[0, 0, 0, 4, 20, 0, b'd', b'e'],
    );
    check(
        Message::Extended {
            id: 3,
            payload: &[],
        },
        &[0, 0, 0, 2, 20, 3],
    );
}

#[test]
fn unknown_ids_are_returned_whole_so_the_stream_goes_on() {
    let mut bytes = vec![0, 0, 0, 3, 21, 0xaa, 0xbb];
    check(
        Message::Unknown {
            id: 21,
            payload: &[0xaa, 0xbb],
        },
        &bytes,
    );
    Message::Have(9).encode(&mut bytes);
    let (_, used) = decode(&bytes, MAX).unwrap().unwrap();
    assert_eq!(decode(&bytes[used..], MAX), Ok(Some((Message::Have(9), 9))));
}

#[test]
fn piece_data_is_a_view_into_the_input() {
    let bytes = [0, 0, 0, 11, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2];
    let Some((Message::Piece { data, .. }, _)) = decode(&bytes, MAX).unwrap() else {
        panic!("not a piece");
    };
    assert_eq!(data.as_ptr(), bytes[13..].as_ptr());
}

#[test]
fn decode_takes_one_message_and_reports_used() {
    let mut bytes = Vec::new();
    Message::Interested.encode(&mut bytes);
    Message::Have(3).encode(&mut bytes);
    assert_eq!(decode(&bytes, MAX), Ok(Some((Message::Interested, 5))));
    assert_eq!(decode(&bytes[5..], MAX), Ok(Some((Message::Have(3), 9))));
}

#[test]
fn fixed_size_messages_with_wrong_length_name_the_message() {
    let cases: [(u8, &str, u32); 13] = [
        (0, "choke", 1),
        (1, "unchoke", 1),
        (2, "interested", 1),
        (3, "not interested", 1),
        (4, "have", 5),
        (6, "request", 13),
        (8, "cancel", 13),
        (9, "port", 3),
        (13, "suggest", 5),
        (14, "have all", 1),
        (15, "have none", 1),
        (16, "reject request", 13),
        (17, "allowed fast", 5),
    ];
    for (message_id, message, expected) in cases {
        for len in [expected - 1, expected + 1] {
            if len == 0 {
                continue; // a zero length is a keep-alive
            }
            // The error comes as soon as the id is seen, before the body arrives.
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.push(message_id);
            let err = decode(&bytes, MAX).unwrap_err();
            assert_eq!(
                err,
                WireError::BadLength {
                    message,
                    len,
                    expected
                }
            );
            assert_eq!(
                err.to_string(),
                format!("{message}: length {len}, expected {expected}")
            );
        }
    }
    let err = decode(&[0, 0, 0, 6, 4, 0, 0, 0, 1, 0], MAX).unwrap_err();
    assert_eq!(err.to_string(), "have: length 6, expected 5");
}

#[test]
fn variable_size_messages_too_short_for_their_header() {
    for (bytes, message, len, min) in [
        (&[0u8, 0, 0, 8, 7][..], "piece", 8, 9),
        (&[0, 0, 0, 1, 7][..], "piece", 1, 9),
        (&[0, 0, 0, 1, 20][..], "extended", 1, 2),
    ] {
        let err = decode(bytes, MAX).unwrap_err();
        assert_eq!(err, WireError::TooShort { message, len, min });
        assert_eq!(
            err.to_string(),
            format!("{message}: length {len}, expected at least {min}")
        );
    }
}

#[test]
fn length_over_the_limit_is_an_error_before_the_body_arrives() {
    let err = decode(&[0, 0, 0x40, 0x0a], 0x4009).unwrap_err();
    assert_eq!(
        err,
        WireError::MessageTooLong {
            len: 0x400a,
            max: 0x4009
        }
    );
    assert_eq!(
        err.to_string(),
        "message length 16394 over the limit of 16393 bytes"
    );
    // Exactly at the limit is fine.
    assert_eq!(decode(&[0, 0, 0x40, 0x09, 7], 0x4009), Ok(None));
    assert!(decode(&[0xff, 0xff, 0xff, 0xff], MAX).is_err());
}

#[test]
fn default_limit_takes_a_block_and_a_big_bitfield() {
    let block = vec![0u8; BLOCK_SIZE as usize];
    let bits = vec![0u8; 1 << 20];
    for m in [
        Message::Piece {
            index: 0,
            begin: 0,
            data: &block,
        },
        Message::Bitfield(&bits),
    ] {
        let bytes = encoded(&m);
        assert_eq!(decode(&bytes, MAX), Ok(Some((m, bytes.len()))));
    }
}

#[test]
fn names() {
    assert_eq!(Message::KeepAlive.name(), "keep-alive");
    assert_eq!(Message::Port(1).name(), "port");
    assert_eq!(Message::HaveAll.name(), "have all");
}

#[test]
fn piece_header_matches_full_encoding() {
    let m = Message::Piece {
        index: 5,
        begin: 32,
        data: b"xyz",
    };
    let mut header = Vec::new();
    encode_piece_header(5, 32, 3, &mut header);
    header.extend_from_slice(b"xyz");
    assert_eq!(header, encoded(&m));
}

#[test]
fn encoders_append() {
    let mut out = vec![0xee];
    Message::Choke.encode(&mut out);
    assert_eq!(out, [0xee, 0, 0, 0, 1, 0]);
}

fn handshake_bytes() -> Vec<u8> {
    let mut b = vec![19];
    b.extend_from_slice(b"BitTorrent protocol");
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x04]);
    b.extend_from_slice(&[0xaa; 20]);
    b.extend_from_slice(b"-KP0100-123456789012");
    b
}

#[test]
fn handshake_round_trip_with_extension_bits() {
    let h = Handshake::new(InfoHash([0xaa; 20]), PeerId(*b"-KP0100-123456789012"));
    assert!(h.supports_extended());
    assert!(h.supports_fast());
    let mut out = Vec::new();
    h.encode(&mut out);
    assert_eq!(out, handshake_bytes());
    assert_eq!(out.len(), Handshake::LEN);
    assert_eq!(Handshake::decode(&out), Ok(Some(h)));
    // Trailing bytes (the first messages) are left alone.
    out.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(Handshake::decode(&out), Ok(Some(h)));
}

#[test]
fn handshake_without_extension_bits() {
    let mut b = handshake_bytes();
    b[20..28].fill(0);
    let h = Handshake::decode(&b).unwrap().unwrap();
    assert!(!h.supports_extended());
    assert!(!h.supports_fast());
    assert_eq!(h.reserved, [0; 8]);
}

#[test]
fn handshake_needs_all_68_bytes() {
    let b = handshake_bytes();
    for cut in 0..Handshake::LEN {
        assert_eq!(Handshake::decode(&b[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn wrong_protocol_is_an_error_as_soon_as_seen() {
    assert_eq!(Handshake::decode(&[18]), Err(WireError::BadProtocol));
    assert_eq!(
        Handshake::decode(&[19, b'B', b'x']),
        Err(WireError::BadProtocol)
    );
    let mut b = handshake_bytes();
    b[19] = b'L';
    assert_eq!(Handshake::decode(&b[..20]), Err(WireError::BadProtocol));
    assert_eq!(Handshake::decode(&b), Err(WireError::BadProtocol));
    assert!(WireError::BadProtocol.to_string().starts_with("handshake:"));
}

fn stream() -> (Vec<u8>, Vec<Message<'static>>) {
    let messages = vec![
        Message::Bitfield(&[0xf0]),
        Message::Unchoke,
        Message::KeepAlive,
        Message::Piece {
            index: 1,
            begin: 0,
            data: b"hello world",
        },
        Message::Extended {
            id: 1,
            payload: b"d1:xi1ee",
        },
        Message::Have(4),
    ];
    let mut bytes = Vec::new();
    for m in &messages {
        m.encode(&mut bytes);
    }
    (bytes, messages)
}

fn drain(d: &mut Decoder, into: &mut Vec<String>) {
    while let Some(m) = d.next_message().unwrap() {
        into.push(format!("{m:?}"));
    }
}

#[test]
fn decoder_yields_the_same_messages_for_any_chunking() {
    let (bytes, messages) = stream();
    let want: Vec<String> = messages.iter().map(|m| format!("{m:?}")).collect();
    for chunk in 1..=bytes.len() {
        let mut d = Decoder::new(MAX);
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk) {
            d.feed(piece);
            drain(&mut d, &mut got);
        }
        assert_eq!(got, want, "chunk size {chunk}");
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn decoder_reads_into_spare_room() {
    let (bytes, messages) = stream();
    let mut d = Decoder::new(MAX);
    let mut got = Vec::new();
    for piece in bytes.chunks(7) {
        let room = d.spare(piece.len());
        assert!(room.len() >= piece.len());
        room[..piece.len()].copy_from_slice(piece);
        d.commit(piece.len());
        drain(&mut d, &mut got);
    }
    let want: Vec<String> = messages.iter().map(|m| format!("{m:?}")).collect();
    assert_eq!(got, want);
}

#[test]
fn decoder_buffered_counts_undecoded_bytes() {
    let mut d = Decoder::new(MAX);
    d.feed(&[0, 0, 0, 1, 2, 0, 0]);
    assert_eq!(d.buffered(), 7);
    assert_eq!(d.next_message(), Ok(Some(Message::Interested)));
    assert_eq!(d.buffered(), 2);
    assert_eq!(d.next_message(), Ok(None));
    d.feed(&[0, 5, 4, 0, 0]);
    assert_eq!(d.next_message(), Ok(None));
    assert_eq!(d.buffered(), 7);
    d.feed(&[0, 9]);
    assert_eq!(d.next_message(), Ok(Some(Message::Have(9))));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn decoder_takes_the_handshake_then_messages_from_one_read() {
    let mut bytes = handshake_bytes();
    Message::HaveAll.encode(&mut bytes);
    let mut d = Decoder::new(MAX);
    d.feed(&bytes[..67]);
    assert_eq!(d.next_handshake(), Ok(None));
    d.feed(&bytes[67..]);
    let h = d.next_handshake().unwrap().unwrap();
    assert_eq!(h.peer_id, PeerId(*b"-KP0100-123456789012"));
    assert_eq!(d.next_message(), Ok(Some(Message::HaveAll)));
    assert_eq!(d.next_message(), Ok(None));
}

#[test]
fn decoder_errors_stay_fatal() {
    let mut d = Decoder::new(16);
    d.feed(&[0, 0, 0, 17]);
    let err = WireError::MessageTooLong { len: 17, max: 16 };
    assert_eq!(d.next_message(), Err(err.clone()));
    d.feed(&[0, 0, 0, 0]);
    assert_eq!(d.next_message(), Err(err));

    let mut d = Decoder::new(MAX);
    d.feed(b"GET / HTTP/1.1");
    assert_eq!(d.next_handshake(), Err(WireError::BadProtocol));
    assert_eq!(d.next_handshake(), Err(WireError::BadProtocol));
}

#[test]
#[should_panic(expected = "commit past spare room")]
fn commit_past_spare_room_panics() {
    let mut d = Decoder::new(MAX);
    let n = d.spare(4).len();
    d.commit(n + 1);
}

#[test]
fn extended_handshake_encodes_canonically() {
    // The example of BEP 10, plus the BEP 9 and other optional keys, keys sorted.
    let mut m = BTreeMap::new();
    m.insert("LT_metadata".to_owned(), 1);
    m.insert("ut_pex".to_owned(), 2);
    let h = ExtendedHandshake {
        m,
        v: Some("kp-torrent 0.1.0".to_owned()),
        p: Some(6881),
        reqq: Some(250),
        metadata_size: Some(31235),
        yourip: Some(vec![127, 0, 0, 1]),
    };
    let bytes = h.encode();
    assert_eq!(
        bytes,
        b"d1:md11:LT_metadatai1e6:ut_pexi2ee13:metadata_sizei31235e1:pi6881e\
          4:reqqi250e1:v16:kp-torrent 0.1.06:yourip4:\x7f\x00\x00\x01e"
            .as_slice()
    );
    assert_eq!(ExtendedHandshake::decode(&bytes), Ok(h));
    assert_eq!(ExtendedHandshake::default().encode(), b"d1:mdee");
}

#[test]
fn extended_handshake_is_lenient() {
    let h = ExtendedHandshake::decode(
        b"d1:md6:ut_pexi1e11:ut_metadatai0e3:badi300e4:nonei-1e3:strd1:ai1eee\
          1:pi70000e4:reqqi-5e13:metadata_size3:abc1:v8:\xb5Torrent7:unknownle\
          6:yourip16:0123456789abcdefe",
    )
    .unwrap();
    assert_eq!(h.m.len(), 2);
    assert_eq!(h.id_of("ut_pex"), Some(1));
    assert_eq!(h.m.get("ut_metadata"), Some(&0));
    assert_eq!(h.id_of("ut_metadata"), None, "id 0 means disabled");
    assert_eq!(h.p, None, "port out of range");
    assert_eq!(h.reqq, None, "negative reqq");
    assert_eq!(h.metadata_size, None, "wrong type");
    assert_eq!(h.v.as_deref(), Some("\u{fffd}Torrent"));
    assert_eq!(h.yourip.as_deref(), Some(&b"0123456789abcdef"[..]));

    // No keys at all, or `m` of the wrong type: an empty handshake, not an error.
    assert_eq!(
        ExtendedHandshake::decode(b"de"),
        Ok(ExtendedHandshake::default())
    );
    assert_eq!(
        ExtendedHandshake::decode(b"d1:mi5e1:pi0ee"),
        Ok(ExtendedHandshake::default())
    );
}

#[test]
fn extended_handshake_errors() {
    assert_eq!(
        ExtendedHandshake::decode(b"li1ee"),
        Err(WireError::ExtendedHandshakeNotDict)
    );
    assert_eq!(
        WireError::ExtendedHandshakeNotDict.to_string(),
        "extended handshake: not a bencoded dictionary"
    );
    let err = ExtendedHandshake::decode(b"d1:m").unwrap_err();
    assert!(matches!(err, WireError::ExtendedHandshake(_)), "{err:?}");
    assert!(err.to_string().starts_with("extended handshake: "), "{err}");
}
