//! The BEP 10 extended handshake: the payload of `Message::Extended { id: 0, .. }`.

use std::collections::BTreeMap;

use super::WireError;
use crate::bencode::{self, Owned};

/// The dictionary peers exchange right after the handshake when both set the BEP 10 bit: which
/// extensions each supports, under which message id, and a few facts about the sender.
///
/// Decoding is lenient, as real clients are: unknown keys are ignored, and an optional key with
/// the wrong type or an out-of-range value is treated as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// Extension name to the message id the sender wants to receive it under; id 0 means the
    /// sender disables that extension.
    pub m: BTreeMap<String, u8>,
    /// The sender's client name and version, such as `kp-torrent 0.1.0`.
    pub v: Option<String>,
    /// The sender's listening TCP port.
    pub p: Option<u16>,
    /// How many outstanding requests the sender accepts.
    pub reqq: Option<u32>,
    /// BEP 9: the size of the info dictionary, for fetching it from peers (magnet links).
    pub metadata_size: Option<u64>,
    /// Our IP address as the sender sees it: 4 bytes (IPv4) or 16 (IPv6).
    pub yourip: Option<Vec<u8>>,
}

impl ExtendedHandshake {
    /// The bencoded payload, to send as `Message::Extended { id: 0, payload }`.
    pub fn encode(&self) -> Vec<u8> {
        let m: Owned = self
            .m
            .iter()
            .map(|(name, &id)| (name.as_bytes(), Owned::Int(i64::from(id))))
            .collect();
        let mut dict = vec![(b"m".as_slice(), m)];
        if let Some(size) = self.metadata_size {
            // Sizes over i64::MAX cannot be bencoded; no info dictionary is that large.
            dict.push((
                b"metadata_size".as_slice(),
                Owned::Int(i64::try_from(size).unwrap_or(i64::MAX)),
            ));
        }
        if let Some(p) = self.p {
            dict.push((b"p".as_slice(), Owned::Int(i64::from(p))));
        }
        if let Some(reqq) = self.reqq {
            dict.push((b"reqq".as_slice(), Owned::Int(i64::from(reqq))));
        }
        if let Some(v) = &self.v {
            dict.push((b"v".as_slice(), Owned::bytes(v)));
        }
        if let Some(ip) = &self.yourip {
            dict.push((b"yourip".as_slice(), Owned::bytes(ip)));
        }
        dict.into_iter().collect::<Owned>().encode()
    }

    /// Decodes an extended handshake payload. Only bytes that are not bencode, or a bencoded value
    /// that is not a dictionary, are errors.
    pub fn decode(payload: &[u8]) -> Result<ExtendedHandshake, WireError> {
        let value = bencode::decode(payload).map_err(WireError::ExtendedHandshake)?;
        let dict = value.as_dict().ok_or(WireError::ExtendedHandshakeNotDict)?;
        let mut m = BTreeMap::new();
        if let Some(entries) = dict.get_dict(b"m") {
            for (name, id) in entries.entries() {
                let name = std::str::from_utf8(name).ok();
                let id = id.as_int().and_then(|i| u8::try_from(i).ok());
                if let (Some(name), Some(id)) = (name, id) {
                    m.insert(name.to_owned(), id);
                }
            }
        }
        let int = |key: &[u8]| dict.get_int(key);
        Ok(ExtendedHandshake {
            m,
            // Some clients send Latin-1 names ("µTorrent"); a lossy name beats none.
            v: dict
                .get_bytes(b"v")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            p: int(b"p")
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0),
            reqq: int(b"reqq").and_then(|r| u32::try_from(r).ok()),
            metadata_size: int(b"metadata_size").and_then(|s| u64::try_from(s).ok()),
            yourip: dict.get_bytes(b"yourip").map(<[u8]>::to_vec),
        })
    }

    /// The message id the sender wants for extension `name`, if it supports it (id 0 means
    /// disabled, so it is `None` too).
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.m.get(name).copied().filter(|&id| id != 0)
    }
}
