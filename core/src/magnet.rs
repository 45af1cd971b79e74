//! Magnet URIs: `magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<tracker>&x.pe=<host:port>&ws=<url>`.
//!
//! The info-hash may be 40 hex digits or 32 base32 characters (RFC 4648, either case). Values are
//! percent-decoded; in `dn` a `+` also stands for a space. Unknown keys are ignored. A magnet that
//! names only a v2 hash (`urn:btmh:`) is refused, as v2-only torrents are.

use std::fmt;

use crate::id::{InfoHash, from_hex20};

/// A parsed magnet URI: enough to join a swarm and fetch the metadata from peers (BEP 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info-hash from `xt=urn:btih:`.
    pub info_hash: InfoHash,
    /// `dn`: a name to show until the metadata arrives.
    pub display_name: Option<String>,
    /// Every `tr`, in order, without repeats.
    pub trackers: Vec<String>,
    /// Every `x.pe`: peers to dial, as `host:port`.
    pub peers: Vec<String>,
    /// Every `ws`: web seeds (BEP 19), http(s) only, bounded like a torrent's `url-list`.
    pub web_seeds: Vec<String>,
}

/// Why a string is not a usable magnet URI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MagnetError {
    /// It does not start with `magnet:`.
    NotAMagnet,
    /// No `xt=urn:btih:` parameter.
    MissingInfoHash,
    /// The `urn:btih:` value is neither 40 hex digits nor 32 base32 characters.
    InvalidInfoHash(String),
    /// Only a v2 hash (`xt=urn:btmh:`) is given.
    V2Only,
}

impl fmt::Display for MagnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MagnetError::NotAMagnet => {
                f.write_str("not a magnet URI: it must start with `magnet:?`")
            }
            MagnetError::MissingInfoHash => {
                f.write_str("magnet URI has no info-hash (`xt=urn:btih:...`)")
            }
            // Escaped: the text comes from the user's (or a web page's) URI and may hold newlines.
            MagnetError::InvalidInfoHash(h) => write!(
                f,
                "magnet URI info-hash `{}` is neither 40 hex digits nor 32 base32 characters",
                h.escape_debug()
            ),
            MagnetError::V2Only => f.write_str(
                "v2-only magnet not supported: it has only a `urn:btmh:` hash, no `urn:btih:`",
            ),
        }
    }
}

impl std::error::Error for MagnetError {}

/// Decodes `%XX` escapes (a malformed escape is kept as written) and, when `plus_is_space`, `+`.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|&h| (h as char).to_digit(16));
        match c {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(c),
            },
            b'+' if plus_is_space => out.push(b' '),
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes 32 RFC 4648 base32 characters (either case, no padding) into 20 bytes.
fn base32_20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut n = 0;
    for c in s.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            acc &= (1 << bits) - 1;
            n += 1;
        }
    }
    Some(out)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl Magnet {
    /// Parses a magnet URI such as one given on the command line.
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        let query =
            strip_prefix_ignore_case(uri.trim(), "magnet:").ok_or(MagnetError::NotAMagnet)?;
        let query = query.strip_prefix('?').unwrap_or(query);
        let mut info_hash = None;
        let mut v2_hash = false;
        let mut display_name = None;
        let mut trackers: Vec<String> = Vec::new();
        let mut peers = Vec::new();
        let mut web_seeds = Vec::new();
        for param in query.split('&') {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            // `xt.1`, `xt.2`, ... number several exact topics.
            let key = key
                .split_once('.')
                .filter(|(k, _)| *k == "xt")
                .map_or(key, |(k, _)| k);
            match key {
                "xt" => {
                    let topic = percent_decode(value, false);
                    if let Some(hash) = strip_prefix_ignore_case(&topic, "urn:btih:") {
                        if info_hash.is_none() {
                            let parsed = from_hex20(hash)
                                .or_else(|| base32_20(hash))
                                .ok_or_else(|| MagnetError::InvalidInfoHash(hash.to_string()))?;
                            info_hash = Some(InfoHash(parsed));
                        }
                    } else if strip_prefix_ignore_case(&topic, "urn:btmh:").is_some() {
                        v2_hash = true;
                    }
                }
                "dn" => display_name = Some(percent_decode(value, true)),
                "tr" => {
                    let tracker = percent_decode(value, false);
                    if !tracker.is_empty() && !trackers.contains(&tracker) {
                        trackers.push(tracker);
                    }
                }
                "x.pe" => {
                    let peer = percent_decode(value, false);
                    if !peer.is_empty() {
                        peers.push(peer);
                    }
                }
                "ws" => web_seeds.push(percent_decode(value, false)),
                _ => {}
            }
        }
        let info_hash = match info_hash {
            Some(h) => h,
            None if v2_hash => return Err(MagnetError::V2Only),
            None => return Err(MagnetError::MissingInfoHash),
        };
        Ok(Magnet {
            info_hash,
            display_name,
            trackers,
            peers,
            web_seeds: crate::metainfo::web_seed_urls(web_seeds),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    #[test]
    fn hex_info_hash_name_trackers_and_peers() {
        let uri = format!(
            "magnet:?xt=urn:btih:{}&dn=My+Show%20S01%2FE02&tr=http%3A%2F%2Ft1%2Fann\
             &tr=udp%3A%2F%2Ft2%3A80&tr=http%3A%2F%2Ft1%2Fann&x.pe=127.0.0.1%3A6881&x.pe=[::1]:1",
            HEX.to_uppercase()
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.info_hash.to_hex(), HEX);
        assert_eq!(m.display_name.as_deref(), Some("My Show S01/E02"));
        assert_eq!(m.trackers, ["http://t1/ann", "udp://t2:80"]);
        assert_eq!(m.peers, ["127.0.0.1:6881", "[::1]:1"]);
    }

    #[test]
    fn web_seeds_from_ws() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&ws=http%3A%2F%2Fw1%2Fdata%2F&ws=ftp://w2/&ws=https://w3/f\
             &ws=http%3A%2F%2Fw1%2Fdata%2F&ws="
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.web_seeds, ["http://w1/data/", "https://w3/f"]);
        let none = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}")).unwrap();
        assert!(none.web_seeds.is_empty());
    }

    #[test]
    fn base32_info_hash_in_either_case() {
        // RFC 4648 base32 of the 20 bytes in HEX.
        let b32 = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{b32}")).unwrap();
        assert_eq!(m.info_hash.to_hex(), HEX);
        let lower = Magnet::parse(&format!("MAGNET:?xt=URN:BTIH:{}", b32.to_lowercase())).unwrap();
        assert_eq!(lower.info_hash, m.info_hash);
        assert_eq!(m.display_name, None);
        assert!(m.trackers.is_empty() && m.peers.is_empty());
    }

    #[test]
    fn base32_decoder_matches_rfc4648_vectors() {
        // "foobar" base32 is MZXW6YTBOI; pad the bytes to 20 with zeros: 'A' is 0.
        let mut expected = [0u8; 20];
        expected[..5].copy_from_slice(b"fooba");
        assert_eq!(
            base32_20(&format!("MZXW6YTB{}", "A".repeat(24))),
            Some(expected)
        );
        assert_eq!(base32_20("MZXW6YTB"), None);
        assert_eq!(base32_20(&"1".repeat(32)), None);
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes_and_plus_outside_dn() {
        assert_eq!(percent_decode("a%2", false), "a%2");
        assert_eq!(percent_decode("a%zz+b", false), "a%zz+b");
        assert_eq!(percent_decode("a%C3%A9+b", true), "aé b");
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&tr=http://t/a+b")).unwrap();
        assert_eq!(m.trackers, ["http://t/a+b"]);
    }

    #[test]
    fn numbered_topics_and_hybrid_magnets_use_the_btih() {
        let uri = format!(
            "magnet:?xt.1=urn:btmh:1220{}&xt.2=urn:btih:{HEX}",
            "ab".repeat(32)
        );
        assert_eq!(Magnet::parse(&uri).unwrap().info_hash.to_hex(), HEX);
    }

    #[test]
    fn errors() {
        assert_eq!(Magnet::parse("http://x/"), Err(MagnetError::NotAMagnet));
        assert_eq!(
            Magnet::parse("magnet:?dn=x"),
            Err(MagnetError::MissingInfoHash)
        );
        assert_eq!(
            Magnet::parse("magnet:?xt=urn:btih:1234"),
            Err(MagnetError::InvalidInfoHash("1234".into()))
        );
        let v2 = format!("magnet:?xt=urn:btmh:1220{}&dn=x", "ab".repeat(32));
        let e = Magnet::parse(&v2).unwrap_err();
        assert_eq!(e, MagnetError::V2Only);
        assert!(e.to_string().starts_with("v2-only magnet not supported"));
        assert!(!MagnetError::MissingInfoHash.to_string().contains('\n'));
        // Found by fuzzing: the invalid hash is quoted with its control characters escaped.
        let e = Magnet::parse("magnet:?xt=urn:btih:a\nb\u{8}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "magnet URI info-hash `a\\nb\\u{8}` is neither 40 hex digits nor 32 base32 characters"
        );
    }
}
