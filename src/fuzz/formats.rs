//! Bodies for the file and URI formats: bencode, `.torrent` metainfo, magnet URIs.

use kp_torrent_core::bencode::{self, DecodeError, Limits, Value};
use kp_torrent_core::id::InfoHash;
use kp_torrent_core::magnet::Magnet;
use kp_torrent_core::metainfo::{Metainfo, TorrentSpec, path};
use kp_torrent_core::tracker::url::{TrackerUrl, percent_encode};

/// An error a user reads: one non-empty line.
pub(crate) fn check_message(e: &impl std::fmt::Display) {
    let text = e.to_string();
    assert!(!text.is_empty(), "empty error message");
    assert!(!text.contains('\n'), "error message spans lines: {text:?}");
}

/// Bencode: decoding never panics and agrees with itself; whatever decodes re-encodes
/// canonically, and canonical input re-encodes to exactly its own bytes.
pub fn bencode(data: &[u8]) {
    let whole = bencode::decode(data);
    let prefix = bencode::decode_prefix(data);
    match (&prefix, &whole) {
        (Ok((v, used)), _) => {
            assert!(
                *used > 0 && *used <= data.len(),
                "used {used} of {}",
                data.len()
            );
            if *used == data.len() {
                assert_eq!(
                    whole.as_ref().ok(),
                    Some(v),
                    "decode and decode_prefix differ"
                );
            } else {
                assert_eq!(
                    whole.as_ref().err(),
                    Some(&DecodeError::TrailingBytes { pos: *used })
                );
            }
        }
        (Err(pe), Err(we)) => {
            assert_eq!(pe, we, "decode and decode_prefix fail differently");
            check_message(pe);
        }
        (Err(e), Ok(_)) => panic!("decode_prefix failed ({e}) where decode succeeded"),
    }
    let Ok((value, used)) = prefix else { return };
    let input = &data[..used];
    check_spans(&value);

    let owned = value.to_owned();
    let encoded = owned.encode();
    let again = bencode::decode(&encoded).expect("the canonical encoding decodes");
    assert_eq!(again.to_owned(), owned, "decode(encode(v)) != v");
    if is_canonical(&value) {
        assert_eq!(encoded, input, "canonical input re-encodes differently");
    }

    // The limits are exact: a document needs exactly its nesting and item count.
    let (depth, items) = shape(&value);
    let fits = Limits {
        max_depth: depth,
        max_items: items,
    };
    assert_eq!(
        bencode::decode_prefix_with(data, fits).ok(),
        Some((value.clone(), used))
    );
    if depth > 0 {
        let shallow = Limits {
            max_depth: depth - 1,
            ..fits
        };
        assert!(matches!(
            bencode::decode_prefix_with(data, shallow),
            Err(DecodeError::TooDeep { .. })
        ));
    }
    let fewer = Limits {
        max_items: items - 1,
        ..fits
    };
    assert!(matches!(
        bencode::decode_prefix_with(data, fewer),
        Err(DecodeError::TooManyItems { .. })
    ));
}

/// Every list and dictionary's raw span decodes, on its own, to the same value.
fn check_spans(v: &Value<'_>) {
    match v {
        Value::Int(_) | Value::Bytes(_) => {}
        Value::List(l) => {
            assert_eq!(bencode::decode(l.raw()).as_ref(), Ok(v), "list span");
            l.iter().for_each(check_spans);
        }
        Value::Dict(d) => {
            assert_eq!(bencode::decode(d.raw()).as_ref(), Ok(v), "dictionary span");
            d.entries().iter().for_each(|(_, v)| check_spans(v));
        }
    }
}

/// True when every dictionary's keys are strictly increasing (the decoder enforces the rest).
fn is_canonical(v: &Value<'_>) -> bool {
    match v {
        Value::Int(_) | Value::Bytes(_) => true,
        Value::List(l) => l.iter().all(is_canonical),
        Value::Dict(d) => {
            d.entries().windows(2).all(|w| w[0].0 < w[1].0)
                && d.entries().iter().all(|(_, v)| is_canonical(v))
        }
    }
}

/// (containers nested, values counted) as [`Limits`] counts them.
fn shape(v: &Value<'_>) -> (usize, usize) {
    let children: Vec<(usize, usize)> = match v {
        Value::Int(_) | Value::Bytes(_) => return (0, 1),
        Value::List(l) => l.iter().map(shape).collect(),
        Value::Dict(d) => d.entries().iter().map(|(_, v)| shape(v)).collect(),
    };
    let depth = children.iter().map(|c| c.0).max().unwrap_or(0) + 1;
    let items = children.iter().map(|c| c.1).sum::<usize>() + 1;
    (depth, items)
}

/// Metainfo: parsing never panics, errors are one line, and an accepted torrent is consistent
/// (info-hash, lengths, pieces, safe and distinct paths) and survives being written and read back.
pub fn metainfo(data: &[u8]) {
    let m = match Metainfo::from_bytes(data) {
        Ok(m) => m,
        Err(e) => {
            check_message(&e);
            return;
        }
    };
    let info = &m.info;
    assert_eq!(
        m.info_hash,
        InfoHash::of(&info.raw),
        "info-hash is not SHA-1 of the info span"
    );
    assert!(matches!(bencode::decode(&info.raw), Ok(Value::Dict(_))));
    assert!(
        path::is_safe_component(&info.name),
        "unsafe name {:?}",
        info.name
    );
    assert!(info.piece_length > 0 && info.total_length > 0);

    let mut offset = 0u64;
    for f in &info.files {
        assert_eq!(f.offset, offset, "files are not contiguous");
        offset += f.length;
        assert_eq!(
            f.path.first(),
            Some(&info.name),
            "file outside the torrent's name"
        );
        assert!(info.multi_file || f.path.len() == 1);
        assert!(!info.multi_file || f.path.len() >= 2);
        for c in &f.path {
            assert!(path::is_safe_component(c), "unsafe component {c:?}");
        }
    }
    assert_eq!(offset, info.total_length, "file lengths do not add up");
    let count = info.piece_count();
    assert_eq!(
        u64::from(count),
        info.total_length.div_ceil(info.piece_length)
    );
    assert_eq!(info.piece_size(count), 0);
    let sum: u64 = (0..count).map(|i| info.piece_size(i)).sum();
    assert_eq!(sum, info.total_length, "piece sizes do not add up");
    for i in 0..count.min(64) {
        let piece = info.piece_range(i);
        let files = info.files_in_piece(i);
        for (k, f) in info.files.iter().enumerate() {
            let overlaps =
                f.length > 0 && f.offset < piece.end && piece.start < f.offset + f.length;
            assert!(!overlaps || files.contains(&k), "piece {i} misses file {k}");
        }
    }

    // No two created files share a path, and no file sits where another needs a folder.
    let mut created: Vec<&[String]> = info
        .files
        .iter()
        .filter(|f| !f.padding)
        .map(|f| f.path.as_slice())
        .collect();
    created.sort_unstable();
    for w in created.windows(2) {
        assert!(
            !w[1].starts_with(w[0]),
            "path conflict: {:?} and {:?}",
            w[0],
            w[1]
        );
    }

    if info.files.iter().any(|f| f.padding) {
        // `TorrentSpec` writes no `attr`, so padding files would come back as ordinary files.
        return;
    }
    let spec = TorrentSpec {
        name: info.name.clone(),
        piece_length: info.piece_length,
        files: info
            .files
            .iter()
            .map(|f| {
                (
                    if info.multi_file {
                        f.path[1..].to_vec()
                    } else {
                        Vec::new()
                    },
                    f.length,
                )
            })
            .collect(),
        piece_hashes: info.pieces.clone(),
        trackers: m.trackers.clone(),
        private: info.private,
        comment: m.comment.clone(),
        created_by: m.created_by.clone(),
        creation_date: m.creation_date,
        url_list: m.url_list.clone(),
    };
    let written = spec.to_bytes();
    let back = Metainfo::from_bytes(&written).expect("a torrent we wrote parses");
    assert_eq!(back.info.name, info.name);
    assert_eq!(back.info.piece_length, info.piece_length);
    assert_eq!(back.info.pieces, info.pieces);
    assert_eq!(
        back.info.files, info.files,
        "files change when written and read back"
    );
    assert_eq!(back.info.private, info.private);
    assert_eq!(back.info.multi_file, info.multi_file);
    assert_eq!(back.trackers, m.trackers);
    assert_eq!(back.url_list, m.url_list);
    assert_eq!(back.comment, m.comment);
    assert_eq!(back.created_by, m.created_by);
    assert_eq!(back.creation_date, m.creation_date);
    assert_eq!(back.info.raw, spec.info_bytes());
}

/// Magnet URIs: parsing never panics, and a parsed magnet written back with every value
/// percent-encoded (and its hash in hex or base32) parses to the same magnet.
pub fn magnet(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let m = match Magnet::parse(&text) {
        Ok(m) => m,
        Err(e) => {
            check_message(&e);
            return;
        }
    };
    for t in &m.trackers {
        tracker_url(t);
    }
    let base32 = data.first().is_some_and(|b| b & 1 == 1);
    let mut uri = String::from("magnet:?xt=urn:btih:");
    if base32 {
        uri.push_str(&base32_20(&m.info_hash.0));
    } else {
        uri.push_str(&m.info_hash.to_hex());
    }
    if let Some(dn) = &m.display_name {
        uri.push_str("&dn=");
        percent_encode(dn.as_bytes(), &mut uri);
    }
    for t in &m.trackers {
        uri.push_str("&tr=");
        percent_encode(t.as_bytes(), &mut uri);
    }
    for p in &m.peers {
        uri.push_str("&x.pe=");
        percent_encode(p.as_bytes(), &mut uri);
    }
    for w in &m.web_seeds {
        uri.push_str("&ws=");
        percent_encode(w.as_bytes(), &mut uri);
    }
    assert_eq!(
        Magnet::parse(&uri).as_ref(),
        Ok(&m),
        "magnet changes when written back: {uri}"
    );
}

/// RFC 4648 base32 of 20 bytes (32 characters, no padding).
fn base32_20(bytes: &[u8; 20]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(32);
    for group in bytes.chunks_exact(5) {
        let n = group.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        for k in (0..8).rev() {
            out.push(char::from(ALPHABET[((n >> (k * 5)) & 31) as usize]));
        }
    }
    out
}

/// A tracker URL from untrusted input: parsing never panics, and an accepted URL prints in a form
/// that parses back to itself (the form redirect-loop detection compares).
pub(crate) fn tracker_url(s: &str) {
    let url = match TrackerUrl::parse(s) {
        Ok(u) => u,
        Err(e) => {
            check_message(&e);
            return;
        }
    };
    let printed = url.to_string();
    assert_eq!(
        TrackerUrl::parse(&printed).as_ref(),
        Ok(&url),
        "URL does not survive printing"
    );
    let _ = url.host_header();
    if let Ok(scrape) = url.scrape_url() {
        assert_eq!(
            (&scrape.host, scrape.port, scrape.scheme),
            (&url.host, url.port, url.scheme)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648() {
        let mut b = [0u8; 20];
        b[..5].copy_from_slice(b"fooba");
        assert_eq!(base32_20(&b), format!("MZXW6YTB{}", "A".repeat(24)));
    }
}
