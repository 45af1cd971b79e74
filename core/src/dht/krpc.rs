//! KRPC, the DHT's message format (BEP 5, with BEP 32's IPv6 fields): one bencoded dictionary
//! per UDP datagram, a query (`y` = `q`), a response (`r`) or an error (`e`).
//!
//! [`Message::decode`] is bounded (at most [`MAX_MESSAGE_LEN`] bytes and a few hundred bencode
//! values, a transaction id of at most [`MAX_TID_LEN`] bytes, a token of at most
//! [`MAX_TOKEN_LEN`]) and tolerant the way deployed nodes need: keys it does not know are ignored,
//! `v` (the sender's client), `ip` (BEP 42: our address as the responder saw it), `ro` (BEP 43:
//! a read-only node) and `want` (BEP 32) are read when present and well formed and ignored when
//! not, and a query with an unknown method that carries a `target` or an `info_hash` is read as
//! `find_node` for that id, as libtorrent does, so a newer query is still routed. Everything else
//! that is wrong is a [`KrpcError`]; when the broken message was a query with a usable
//! transaction id, [`Malformed::query_tid`] lets the node answer with an error.
//!
//! [`Message::encode`] writes canonical bencode (keys sorted). A response's nodes go to `nodes`
//! (26-byte IPv4 entries) or `nodes6` (38-byte IPv6 entries) by address family; `values` are
//! compact peers, 6 or 18 bytes each.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::fmt;

use super::node_id::NodeId;
use crate::bencode::{self, Dict, Limits, Owned};
use crate::id::InfoHash;

/// Longest datagram [`Message::decode`] accepts. Real KRPC messages stay under a typical MTU
/// (1,500 bytes); the margin is for `get_peers` replies with many values.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Longest transaction id accepted (and echoed). Deployed clients use 2 to 8 bytes.
pub const MAX_TID_LEN: usize = 16;

/// Longest announce token accepted from another node.
pub const MAX_TOKEN_LEN: usize = 64;

/// Longest `v` (client version) kept; a longer one is ignored.
pub const MAX_VERSION_LEN: usize = 16;

/// Bytes of a compact IPv4 node (`nodes`): id, address, port.
pub const NODE_V4_LEN: usize = 26;

/// Bytes of a compact IPv6 node (`nodes6`).
pub const NODE_V6_LEN: usize = 38;

/// Depth: the message, `a`/`r`/`e`, `values`/`want`, their strings. Items: a response of a
/// 4 KiB datagram holds at most a few hundred values.
const LIMITS: Limits = Limits {
    max_depth: 4,
    max_items: 600,
};

/// Longest unknown method name kept for the error message.
const MAX_METHOD_SHOWN: usize = 32;

/// A transaction id: opaque bytes chosen by the querier and echoed in the reply.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TransactionId {
    bytes: [u8; MAX_TID_LEN],
    len: u8,
}

impl TransactionId {
    /// The id made of `bytes`, when it is at most [`MAX_TID_LEN`] bytes long.
    pub fn new(bytes: &[u8]) -> Option<TransactionId> {
        if bytes.len() > MAX_TID_LEN {
            return None;
        }
        let mut b = [0u8; MAX_TID_LEN];
        b[..bytes.len()].copy_from_slice(bytes);
        Some(TransactionId {
            bytes: b,
            len: bytes.len() as u8,
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId({})", crate::id::to_hex(self.as_bytes()))
    }
}

/// A node's id and UDP address, as compact node info carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// BEP 32 `want`: which address families of nodes the querier asks for. Neither set means the
/// querier did not say, and the reply carries nodes of the query's own family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    /// `n4`: IPv4 nodes (`nodes`).
    pub n4: bool,
    /// `n6`: IPv6 nodes (`nodes6`).
    pub n6: bool,
}

impl Want {
    /// True when the querier did not ask for a family.
    pub fn is_unspecified(&self) -> bool {
        !self.n4 && !self.n6
    }
}

/// What a query asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `ping`: are you there?
    Ping,
    /// `find_node`: the nodes you know closest to `target` (also any unknown method carrying
    /// `target` or `info_hash`).
    FindNode {
        /// The id looked up.
        target: NodeId,
    },
    /// `get_peers`: peers of `info_hash`, or the nodes closest to it, and a token.
    GetPeers {
        /// The torrent.
        info_hash: InfoHash,
    },
    /// `announce_peer`: the querier's peer takes part in `info_hash`.
    AnnouncePeer {
        /// The torrent.
        info_hash: InfoHash,
        /// The peer's TCP port (ignored when `implied_port` is set).
        port: u16,
        /// `implied_port`: use the UDP source port of this query instead of `port`.
        implied_port: bool,
        /// The token our `get_peers` reply gave the querier.
        token: Vec<u8>,
    },
}

impl Method {
    /// The method's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Ping => "ping",
            Method::FindNode { .. } => "find_node",
            Method::GetPeers { .. } => "get_peers",
            Method::AnnouncePeer { .. } => "announce_peer",
        }
    }
}

/// A query's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The querier's node id.
    pub id: NodeId,
    /// What it asks.
    pub method: Method,
    /// BEP 32 `want` (find_node and get_peers).
    pub want: Want,
}

/// A response's fields. Responses do not name their method: the querier knows it from the
/// transaction id, and checks the fields it needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The responder's node id.
    pub id: NodeId,
    /// Nodes from `nodes` (IPv4) then `nodes6` (IPv6).
    pub nodes: Vec<NodeInfo>,
    /// Peers from `values`.
    pub values: Vec<SocketAddr>,
    /// The token to announce with (get_peers).
    pub token: Option<Vec<u8>>,
}

/// An error reply (`e`: code and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// 201 generic, 202 server, 203 protocol, 204 method unknown, or another.
    pub code: i64,
    /// The text (lossily decoded as UTF-8).
    pub message: String,
}

impl ErrorReply {
    /// Generic error.
    pub const GENERIC: i64 = 201;
    /// Server error.
    pub const SERVER: i64 = 202;
    /// Protocol error: a malformed packet, invalid arguments or a bad token.
    pub const PROTOCOL: i64 = 203;
    /// Method unknown.
    pub const METHOD_UNKNOWN: i64 = 204;
}

/// A message's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `y` = `q`.
    Query(Query),
    /// `y` = `r`.
    Response(Response),
    /// `y` = `e`.
    Error(ErrorReply),
}

/// One KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `t`: the transaction id.
    pub tid: TransactionId,
    /// The query, response or error.
    pub body: Body,
    /// `v`: the sender's client and version, when present and at most [`MAX_VERSION_LEN`] bytes.
    pub version: Option<Vec<u8>>,
    /// `ip` (BEP 42): in a reply, the querier's address as the responder saw it.
    pub ip: Option<SocketAddr>,
    /// `ro` (BEP 43): the sender is read-only and must not be put in routing tables.
    pub read_only: bool,
}

/// Why a datagram is not a usable KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KrpcError {
    /// Longer than [`MAX_MESSAGE_LEN`].
    TooLong {
        /// The datagram's length.
        len: usize,
    },
    /// Not bencode (or over the decoder's limits).
    Bencode(bencode::DecodeError),
    /// The value is not a dictionary.
    NotDict,
    /// `t` is missing, not a string or longer than [`MAX_TID_LEN`].
    BadTransactionId,
    /// `y` is missing or not `q`, `r` or `e`.
    BadType,
    /// A query without a string `q`.
    MissingMethod,
    /// A query with an unknown method and neither `target` nor `info_hash`.
    UnknownMethod(String),
    /// A query without an `a` dictionary, or a response without an `r` dictionary.
    MissingBody,
    /// `id` is missing or not 20 bytes.
    BadId,
    /// `target` is missing or not 20 bytes.
    BadTarget,
    /// `info_hash` is missing or not 20 bytes.
    BadInfoHash,
    /// announce_peer without a `port` from 0 to 65535 and without `implied_port`.
    BadPort,
    /// announce_peer without a string `token`, or one over [`MAX_TOKEN_LEN`] bytes; or a
    /// response's `token` that is not a string or is too long.
    BadToken,
    /// `nodes` or `nodes6` is not a string whose length is a multiple of the entry size.
    BadNodes {
        /// `nodes` or `nodes6`.
        key: &'static str,
        /// The string's length (0 when it was not a string).
        len: usize,
    },
    /// `values` is not a list of 6- or 18-byte strings.
    BadValues,
    /// An error message without an `e` list starting with an integer code.
    BadError,
}

impl fmt::Display for KrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KrpcError::TooLong { len } => write!(
                f,
                "KRPC datagram of {len} bytes, over the limit of {MAX_MESSAGE_LEN}"
            ),
            KrpcError::Bencode(e) => write!(f, "KRPC: {e}"),
            KrpcError::NotDict => f.write_str("KRPC: the message is not a bencoded dictionary"),
            KrpcError::BadTransactionId => write!(
                f,
                "KRPC: missing transaction id `t`, or not a string of at most {MAX_TID_LEN} bytes"
            ),
            KrpcError::BadType => {
                f.write_str("KRPC: message type `y` missing or not \"q\", \"r\" or \"e\"")
            }
            KrpcError::MissingMethod => f.write_str("KRPC query without a method name `q`"),
            KrpcError::UnknownMethod(m) => write!(
                f,
                "KRPC query with unknown method {m:?} and neither target nor info_hash"
            ),
            KrpcError::MissingBody => f.write_str(
                "KRPC: query without an argument dictionary `a`, or response without `r`",
            ),
            KrpcError::BadId => f.write_str("KRPC: node id `id` missing or not 20 bytes"),
            KrpcError::BadTarget => f.write_str("KRPC find_node: `target` missing or not 20 bytes"),
            KrpcError::BadInfoHash => f.write_str("KRPC: `info_hash` missing or not 20 bytes"),
            KrpcError::BadPort => {
                f.write_str("KRPC announce_peer: no `port` from 0 to 65535 and no `implied_port`")
            }
            KrpcError::BadToken => write!(
                f,
                "KRPC: `token` missing, not a string, or over {MAX_TOKEN_LEN} bytes"
            ),
            KrpcError::BadNodes { key, len } => write!(
                f,
                "KRPC response: `{key}` of {len} bytes is not a whole number of {}-byte entries",
                if *key == "nodes" {
                    NODE_V4_LEN
                } else {
                    NODE_V6_LEN
                }
            ),
            KrpcError::BadValues => {
                f.write_str("KRPC response: `values` is not a list of 6- or 18-byte peers")
            }
            KrpcError::BadError => {
                f.write_str("KRPC error message without an `e` list of a code and a message")
            }
        }
    }
}

impl std::error::Error for KrpcError {}

/// A datagram that [`Message::decode`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What was wrong.
    pub error: KrpcError,
    /// The transaction id, when the datagram was a query that had a usable one: the node may
    /// answer it with an [`ErrorReply`] (203, or 204 for an unknown method).
    pub query_tid: Option<TransactionId>,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Malformed {}

impl Message {
    /// Decodes one datagram (see the module doc for what is tolerated).
    pub fn decode(datagram: &[u8]) -> Result<Message, Malformed> {
        let plain = |error| Malformed {
            error,
            query_tid: None,
        };
        if datagram.len() > MAX_MESSAGE_LEN {
            return Err(plain(KrpcError::TooLong {
                len: datagram.len(),
            }));
        }
        let value =
            bencode::decode_with(datagram, LIMITS).map_err(|e| plain(KrpcError::Bencode(e)))?;
        let dict = value.as_dict().ok_or(plain(KrpcError::NotDict))?;
        let tid = dict
            .get_bytes(b"t")
            .and_then(TransactionId::new)
            .ok_or(plain(KrpcError::BadTransactionId))?;
        let version = dict
            .get_bytes(b"v")
            .filter(|v| v.len() <= MAX_VERSION_LEN)
            .map(<[u8]>::to_vec);
        let ip = dict.get_bytes(b"ip").and_then(read_addr);
        let read_only = dict.get_int(b"ro") == Some(1);
        let body = match dict.get_bytes(b"y") {
            Some(b"q") => Body::Query(decode_query(dict).map_err(|error| Malformed {
                error,
                query_tid: Some(tid),
            })?),
            Some(b"r") => Body::Response(decode_response(dict).map_err(plain)?),
            Some(b"e") => Body::Error(decode_error(dict).map_err(plain)?),
            _ => return Err(plain(KrpcError::BadType)),
        };
        Ok(Message {
            tid,
            body,
            version,
            ip,
            read_only,
        })
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut top: Vec<(&[u8], Owned)> = vec![(b"t", Owned::bytes(self.tid.as_bytes()))];
        match &self.body {
            Body::Query(q) => {
                top.push((b"y", Owned::bytes(b"q")));
                top.push((b"q", Owned::bytes(q.method.name())));
                top.push((b"a", encode_args(q)));
            }
            Body::Response(r) => {
                top.push((b"y", Owned::bytes(b"r")));
                top.push((b"r", encode_response(r)));
            }
            Body::Error(e) => {
                top.push((b"y", Owned::bytes(b"e")));
                top.push((
                    b"e",
                    Owned::List(vec![Owned::Int(e.code), Owned::bytes(e.message.as_bytes())]),
                ));
            }
        }
        if let Some(v) = &self.version {
            top.push((b"v", Owned::bytes(v)));
        }
        if let Some(ip) = &self.ip {
            let mut b = Vec::with_capacity(18);
            put_addr(ip, &mut b);
            top.push((b"ip", Owned::Bytes(b)));
        }
        if self.read_only {
            top.push((b"ro", Owned::Int(1)));
        }
        top.into_iter().collect::<Owned>().encode_into(out);
    }

    /// The canonical encoding as a new vector.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

fn get_id(dict: &Dict<'_>, key: &[u8], error: KrpcError) -> Result<[u8; 20], KrpcError> {
    dict.get_bytes(key)
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
        .ok_or(error)
}

fn decode_query(dict: &Dict<'_>) -> Result<Query, KrpcError> {
    let method = dict.get_bytes(b"q").ok_or(KrpcError::MissingMethod)?;
    let args = dict.get_dict(b"a").ok_or(KrpcError::MissingBody)?;
    let id = NodeId(get_id(args, b"id", KrpcError::BadId)?);
    let method = match method {
        b"ping" => Method::Ping,
        b"find_node" => Method::FindNode {
            target: NodeId(get_id(args, b"target", KrpcError::BadTarget)?),
        },
        b"get_peers" => Method::GetPeers {
            info_hash: InfoHash(get_id(args, b"info_hash", KrpcError::BadInfoHash)?),
        },
        b"announce_peer" => {
            let info_hash = InfoHash(get_id(args, b"info_hash", KrpcError::BadInfoHash)?);
            let implied_port = args.get_int(b"implied_port").is_some_and(|i| i != 0);
            let port = match args.get_int(b"port").map(u16::try_from) {
                Some(Ok(p)) => p,
                None if implied_port => 0,
                _ => return Err(KrpcError::BadPort),
            };
            let token = args
                .get_bytes(b"token")
                .filter(|t| t.len() <= MAX_TOKEN_LEN)
                .ok_or(KrpcError::BadToken)?
                .to_vec();
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            }
        }
        other => {
            // libtorrent's forward compatibility: route what we do not know as find_node.
            let target = get_id(args, b"target", KrpcError::BadTarget)
                .or_else(|_| get_id(args, b"info_hash", KrpcError::BadInfoHash));
            match target {
                Ok(t) => Method::FindNode { target: NodeId(t) },
                Err(_) => {
                    let shown = &other[..other.len().min(MAX_METHOD_SHOWN)];
                    return Err(KrpcError::UnknownMethod(
                        String::from_utf8_lossy(shown).into_owned(),
                    ));
                }
            }
        }
    };
    let mut want = Want::default();
    if let Some(list) = args.get_list(b"want") {
        for item in list.iter() {
            match item.as_bytes() {
                Some(b"n4") => want.n4 = true,
                Some(b"n6") => want.n6 = true,
                _ => {}
            }
        }
    }
    Ok(Query { id, method, want })
}

fn decode_response(dict: &Dict<'_>) -> Result<Response, KrpcError> {
    let r = dict.get_dict(b"r").ok_or(KrpcError::MissingBody)?;
    let id = NodeId(get_id(r, b"id", KrpcError::BadId)?);
    let mut nodes = Vec::new();
    for (key, entry_len) in [("nodes", NODE_V4_LEN), ("nodes6", NODE_V6_LEN)] {
        let Some(v) = r.get(key.as_bytes()) else {
            continue;
        };
        let b = v.as_bytes().ok_or(KrpcError::BadNodes { key, len: 0 })?;
        if b.len() % entry_len != 0 {
            return Err(KrpcError::BadNodes { key, len: b.len() });
        }
        for c in b.chunks_exact(entry_len) {
            let id = NodeId::from_slice(&c[..20]).ok_or(KrpcError::BadNodes { key, len: 0 })?;
            // The entry length fixes the family, so this cannot fail.
            let addr = read_addr(&c[20..]).ok_or(KrpcError::BadNodes { key, len: b.len() })?;
            nodes.push(NodeInfo { id, addr });
        }
    }
    let mut values = Vec::new();
    if let Some(v) = r.get(b"values") {
        let list = v.as_list().ok_or(KrpcError::BadValues)?;
        for item in list.iter() {
            let addr = item
                .as_bytes()
                .and_then(read_addr)
                .ok_or(KrpcError::BadValues)?;
            values.push(addr);
        }
    }
    let token = match r.get(b"token") {
        None => None,
        Some(v) => Some(
            v.as_bytes()
                .filter(|t| t.len() <= MAX_TOKEN_LEN)
                .ok_or(KrpcError::BadToken)?
                .to_vec(),
        ),
    };
    Ok(Response {
        id,
        nodes,
        values,
        token,
    })
}

fn decode_error(dict: &Dict<'_>) -> Result<ErrorReply, KrpcError> {
    let e = dict.get_list(b"e").ok_or(KrpcError::BadError)?;
    let code = e
        .items()
        .first()
        .and_then(|v| v.as_int())
        .ok_or(KrpcError::BadError)?;
    let message = e
        .items()
        .get(1)
        .and_then(|v| v.as_bytes())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    Ok(ErrorReply { code, message })
}

fn encode_args(q: &Query) -> Owned {
    let mut a: Vec<(&[u8], Owned)> = vec![(b"id", Owned::bytes(q.id.0))];
    match &q.method {
        Method::Ping => {}
        Method::FindNode { target } => a.push((b"target", Owned::bytes(target.0))),
        Method::GetPeers { info_hash } => a.push((b"info_hash", Owned::bytes(info_hash.0))),
        Method::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
        } => {
            a.push((b"info_hash", Owned::bytes(info_hash.0)));
            a.push((b"port", Owned::Int(i64::from(*port))));
            a.push((b"token", Owned::bytes(token)));
            if *implied_port {
                a.push((b"implied_port", Owned::Int(1)));
            }
        }
    }
    if !q.want.is_unspecified() {
        let mut list = Vec::new();
        if q.want.n4 {
            list.push(Owned::bytes(b"n4"));
        }
        if q.want.n6 {
            list.push(Owned::bytes(b"n6"));
        }
        a.push((b"want", Owned::List(list)));
    }
    a.into_iter().collect()
}

fn encode_response(r: &Response) -> Owned {
    let mut d: Vec<(&[u8], Owned)> = vec![(b"id", Owned::bytes(r.id.0))];
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for n in &r.nodes {
        let out = if n.addr.is_ipv4() { &mut v4 } else { &mut v6 };
        out.extend_from_slice(&n.id.0);
        put_addr(&n.addr, out);
    }
    if !v4.is_empty() {
        d.push((b"nodes", Owned::Bytes(v4)));
    }
    if !v6.is_empty() {
        d.push((b"nodes6", Owned::Bytes(v6)));
    }
    if !r.values.is_empty() {
        let values = r
            .values
            .iter()
            .map(|a| {
                let mut b = Vec::with_capacity(18);
                put_addr(a, &mut b);
                Owned::Bytes(b)
            })
            .collect();
        d.push((b"values", Owned::List(values)));
    }
    if let Some(t) = &r.token {
        d.push((b"token", Owned::bytes(t)));
    }
    d.into_iter().collect()
}

/// Appends a compact address: 4 or 16 address bytes, then the port, big-endian.
pub(crate) fn put_addr(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Reads a compact address of 6 (IPv4) or 18 (IPv6) bytes.
pub(crate) fn read_addr(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            u16::from_be_bytes([b[4], b[5]]),
        )),
        18 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes([b[16], b[17]]),
            ))
        }
        _ => None,
    }
}
