//! Properties of the bencode codec and the metainfo parser on arbitrary and mutated input.

use std::collections::BTreeSet;

use kp_torrent_core::bencode::{self, Owned};
use kp_torrent_core::metainfo::{Metainfo, TorrentSpec, hash_pieces, path::is_safe_component};
use quickcheck::{Arbitrary, Gen};

/// An arbitrary bencode value, nested at most `MAX_DEPTH` deep so cases stay small.
#[derive(Clone, Debug)]
struct ArbValue(Owned);

const MAX_DEPTH: usize = 4;

fn gen_value(g: &mut Gen, depth: usize) -> Owned {
    let kinds = if depth == 0 { 2 } else { 4 };
    let len = usize::arbitrary(g) % 6;
    match u8::arbitrary(g) % kinds {
        0 => Owned::Int(i64::arbitrary(g)),
        1 => Owned::Bytes(Vec::<u8>::arbitrary(g)),
        2 => Owned::List((0..len).map(|_| gen_value(g, depth - 1)).collect()),
        _ => Owned::Dict(
            (0..len)
                .map(|_| (Vec::<u8>::arbitrary(g), gen_value(g, depth - 1)))
                .collect(),
        ),
    }
}

impl Arbitrary for ArbValue {
    fn arbitrary(g: &mut Gen) -> Self {
        ArbValue(gen_value(g, MAX_DEPTH))
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        // Shrink towards the value's children, then towards smaller leaves.
        match &self.0 {
            Owned::Int(i) => Box::new(i.shrink().map(|i| ArbValue(Owned::Int(i)))),
            Owned::Bytes(b) => Box::new(b.shrink().map(|b| ArbValue(Owned::Bytes(b)))),
            Owned::List(items) => Box::new(items.clone().into_iter().map(ArbValue)),
            Owned::Dict(map) => Box::new(map.clone().into_values().map(ArbValue)),
        }
    }
}

#[test]
fn prop_encode_then_decode_round_trips() {
    fn prop(v: ArbValue) -> bool {
        let bytes = v.0.encode();
        match bencode::decode(&bytes) {
            // Canonical encoding: decoding and re-encoding gives the same bytes and value.
            Ok(decoded) => decoded.to_owned() == v.0 && decoded.to_owned().encode() == bytes,
            Err(_) => false,
        }
    }
    kp_torrent_tests::quickcheck("prop_encode_then_decode_round_trips", 500)
        .quickcheck(prop as fn(ArbValue) -> bool);
}

/// Bytes drawn mostly from bencode's own alphabet, so the decoder gets deep into its states.
#[derive(Clone, Debug)]
struct BencodeLike(Vec<u8>);

impl Arbitrary for BencodeLike {
    fn arbitrary(g: &mut Gen) -> Self {
        const ALPHABET: &[u8] = b"ildei-e0123456789:e:10:a";
        let raw = Vec::<u8>::arbitrary(g);
        BencodeLike(
            raw.iter()
                .map(|&b| {
                    if b < 200 {
                        ALPHABET[usize::from(b) % ALPHABET.len()]
                    } else {
                        b
                    }
                })
                .collect(),
        )
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        Box::new(self.0.shrink().map(BencodeLike))
    }
}

#[test]
fn prop_arbitrary_bytes_never_panic_the_decoder() {
    fn prop(raw: Vec<u8>, like: BencodeLike) -> bool {
        let _ = bencode::decode(&raw);
        let _ = bencode::decode(&like.0);
        let _ = bencode::decode_prefix(&like.0);
        true
    }
    kp_torrent_tests::quickcheck("prop_arbitrary_bytes_never_panic_the_decoder", 2000)
        .quickcheck(prop as fn(Vec<u8>, BencodeLike) -> bool);
}

/// Whatever a torrent says, a parsed one is consistent and every path is safe.
fn consistent(m: &Metainfo) -> bool {
    let i = &m.info;
    let mut offset = 0u64;
    let mut paths = BTreeSet::new();
    for f in &i.files {
        if f.offset != offset || f.path.is_empty() {
            return false;
        }
        if !f.path.iter().all(|c| is_safe_component(c)) {
            return false;
        }
        if !f.padding && !paths.insert(f.path.clone()) {
            return false;
        }
        offset += f.length;
    }
    offset == i.total_length
        && u64::from(i.piece_count()) == i.total_length.div_ceil(i.piece_length)
        && (0..i.piece_count()).map(|p| i.piece_size(p)).sum::<u64>() == i.total_length
}

#[test]
fn prop_metainfo_never_panics_on_arbitrary_bytes() {
    fn prop(raw: Vec<u8>, like: BencodeLike, v: ArbValue) -> bool {
        [raw, like.0, v.0.encode()]
            .iter()
            .all(|b| Metainfo::from_bytes(b).map_or(true, |m| consistent(&m)))
    }
    kp_torrent_tests::quickcheck("prop_metainfo_never_panics_on_arbitrary_bytes", 1000)
        .quickcheck(prop as fn(Vec<u8>, BencodeLike, ArbValue) -> bool);
}

fn sample_torrent() -> Vec<u8> {
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    TorrentSpec {
        name: "folder".into(),
        piece_length: 1024,
        files: vec![
            (vec!["a.txt".into()], 1000),
            (vec!["sub".into(), "empty".into()], 0),
            (vec!["sub".into(), "b.bin".into()], 3000),
            (vec!["c".into()], 1000),
        ],
        piece_hashes: hash_pieces(&data, 1024),
        trackers: vec![vec!["http://127.0.0.1:1/announce".into()]],
        private: true,
        comment: Some("c".into()),
        created_by: Some("kp".into()),
        creation_date: Some(1),
        url_list: vec![],
    }
    .to_bytes()
}

#[test]
fn prop_metainfo_never_panics_on_mutated_torrents() {
    fn prop(edits: Vec<(u8, u16, u8)>) -> bool {
        let mut t = sample_torrent();
        // One or two edits: more mostly break the bencode and never reach the metainfo checks.
        for (kind, pos, byte) in edits.into_iter().take(2) {
            let at = usize::from(pos) % (t.len() + 1);
            let syntax = b"ilde0123456789:-"[usize::from(byte) % 16];
            match kind % 4 {
                0 if at < t.len() => t[at] ^= byte | 1,
                1 => t.insert(at, byte),
                2 => t.insert(at, syntax),
                _ if at < t.len() => {
                    if byte % 2 == 0 {
                        t.remove(at);
                    } else {
                        t[at] = syntax;
                    }
                }
                _ => {}
            }
        }
        Metainfo::from_bytes(&t).map_or(true, |m| consistent(&m))
    }
    let original = Metainfo::from_bytes(&sample_torrent()).unwrap();
    assert!(consistent(&original));
    kp_torrent_tests::quickcheck("prop_metainfo_never_panics_on_mutated_torrents", 3000)
        .quickcheck(prop as fn(Vec<(u8, u16, u8)>) -> bool);
}

#[test]
fn prop_digit_edits_in_a_torrent_never_panic() {
    // Changing digits alters lengths and string sizes: the parser's arithmetic is what is tested.
    fn prop(edits: Vec<(u16, u8)>) -> bool {
        let mut t = sample_torrent();
        let digits: Vec<usize> = (0..t.len()).filter(|&i| t[i].is_ascii_digit()).collect();
        for (pos, d) in edits.into_iter().take(4) {
            if let Some(&at) = digits.get(usize::from(pos) % digits.len().max(1)) {
                t[at] = b"0123456789-"[usize::from(d) % 11];
            }
        }
        Metainfo::from_bytes(&t).map_or(true, |m| consistent(&m))
    }
    kp_torrent_tests::quickcheck("prop_digit_edits_in_a_torrent_never_panic", 2000)
        .quickcheck(prop as fn(Vec<(u16, u8)>) -> bool);
}

/// A torrent assembled from the keys the parser reads, each drawn from edge values (negative and
/// huge lengths, dangerous and colliding names, padding files, wrong piece counts), so most cases
/// get past the bencode and exercise the metainfo checks; about half have a consistent piece count.
#[derive(Clone, Debug)]
struct ArbTorrent(Vec<u8>);

fn pick<T: Clone>(g: &mut Gen, options: &[T]) -> T {
    g.choose(options).cloned().unwrap()
}

fn arb_name(g: &mut Gen) -> Owned {
    let long = "n".repeat(300);
    let names: [&[u8]; 14] = [
        b"..",
        b".",
        b"",
        b"a",
        b"a",
        b"A",
        b"CON",
        b"x/y",
        b"b.txt",
        b"b.txt",
        b"\0",
        b"c:",
        long.as_bytes(),
        b"\xff\xfe",
    ];
    if u8::arbitrary(g) % 8 == 0 {
        Owned::Bytes(Vec::<u8>::arbitrary(g))
    } else {
        Owned::bytes(pick(g, &names))
    }
}

impl Arbitrary for ArbTorrent {
    fn arbitrary(g: &mut Gen) -> Self {
        let piece_length = if u8::arbitrary(g) % 5 == 0 {
            pick(g, &[0, -1, i64::MAX, 1 << 31])
        } else {
            pick(g, &[1i64, 2, 3, 16, 1024])
        };
        let lengths = [
            0i64,
            1,
            5,
            100,
            4096,
            0,
            1,
            5,
            100,
            4096,
            -1,
            i64::MAX,
            i64::MAX / 2,
        ];
        let multi = bool::arbitrary(g);
        let mut info: Vec<(&str, Owned)> = vec![("piece length", Owned::Int(piece_length))];
        let mut total: i64 = 0;
        if multi {
            let files = (0..usize::arbitrary(g) % 6)
                .map(|_| {
                    let length = pick(g, &lengths);
                    total = total.saturating_add(length.max(0));
                    let path = Owned::List(
                        (0..pick(g, &[0, 1, 1, 2, 3, 4, 5]))
                            .map(|_| arb_name(g))
                            .collect(),
                    );
                    let mut f = vec![("length", Owned::Int(length)), ("path", path)];
                    if u8::arbitrary(g) % 4 == 0 {
                        f.push(("attr", Owned::bytes("p")));
                    }
                    if u8::arbitrary(g) % 6 == 0 {
                        f.push(("path.utf-8", Owned::List(vec![arb_name(g)])));
                    }
                    f.into_iter().collect::<Owned>()
                })
                .collect();
            info.push(("files", Owned::List(files)));
        } else {
            let length = pick(g, &lengths);
            total = length.max(0);
            info.push(("length", Owned::Int(length)));
        }
        if u8::arbitrary(g) % 10 != 0 {
            info.push(("name", arb_name(g)));
        }
        let right = u64::try_from(total)
            .ok()
            .zip(u64::try_from(piece_length).ok().filter(|p| *p > 0))
            .map(|(t, p)| t.div_ceil(p))
            .filter(|n| *n <= 10_000);
        let count = match right {
            Some(n) if bool::arbitrary(g) => n as usize,
            _ => usize::arbitrary(g) % 8,
        };
        let extra = usize::from(u8::arbitrary(g) % 8 == 0);
        info.push(("pieces", Owned::Bytes(vec![7; count * 20 + extra])));
        if u8::arbitrary(g) % 8 == 0 {
            info.push(("meta version", Owned::Int(2)));
        }
        if bool::arbitrary(g) {
            info.push(("private", Owned::Int(i64::from(u8::arbitrary(g) % 2))));
        }
        let root: Owned = [
            ("info", info.into_iter().collect::<Owned>()),
            ("announce", arb_name(g)),
            ("url-list", arb_name(g)),
        ]
        .into_iter()
        .collect();
        ArbTorrent(root.encode())
    }
}

#[test]
fn prop_structured_torrents_parse_consistently_or_fail_cleanly() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PARSED: AtomicUsize = AtomicUsize::new(0);
    fn prop(t: ArbTorrent) -> bool {
        match Metainfo::from_bytes(&t.0) {
            Ok(m) => {
                PARSED.fetch_add(1, Ordering::Relaxed);
                consistent(&m)
            }
            Err(e) => !e.to_string().is_empty() && !e.to_string().contains('\n'),
        }
    }
    kp_torrent_tests::quickcheck(
        "prop_structured_torrents_parse_consistently_or_fail_cleanly",
        3000,
    )
    .quickcheck(prop as fn(ArbTorrent) -> bool);
    // The generator must reach the success path, or the consistency check proves nothing.
    assert!(
        PARSED.load(Ordering::Relaxed) > 100,
        "{}",
        PARSED.load(Ordering::Relaxed)
    );
}
