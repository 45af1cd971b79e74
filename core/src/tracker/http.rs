//! HTTP trackers (BEP 3, BEP 23 compact peers, BEP 7 `peers6`): request bytes, an incremental
//! response parser that takes arbitrary chunks with bounded memory, and the reply decoders.
//!
//! [`HttpExchange`] is one request including its redirects: the manager feeds it what a TCP
//! connection receives and opens a new connection when it asks for a redirect. HTTPS uses the same
//! bytes; the driver only wraps the stream in TLS.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::url::{Scheme, TrackerUrl, percent_encode};
use super::{AnnounceParams, AnnounceReply, HttpLimits, PeerFilter, ScrapeCounts, TrackerError};
use crate::bencode::{self, Dict, Value};
use crate::id::InfoHash;

/// The query string of an announce (without `?`): raw bytes percent-encoded, `compact=1`.
pub fn announce_query(params: &AnnounceParams, tracker_id: Option<&[u8]>) -> String {
    let mut q = String::with_capacity(256);
    q.push_str("info_hash=");
    percent_encode(&params.info_hash.0, &mut q);
    q.push_str("&peer_id=");
    percent_encode(&params.peer_id.0, &mut q);
    q.push_str(&format!(
        "&port={}&uploaded={}&downloaded={}&left={}&compact=1&numwant={}&key={:08x}",
        params.port, params.uploaded, params.downloaded, params.left, params.numwant, params.key
    ));
    if let Some(event) = params.event.http_name() {
        q.push_str("&event=");
        q.push_str(event);
    }
    if let Some(id) = tracker_id {
        q.push_str("&trackerid=");
        percent_encode(id, &mut q);
    }
    q
}

/// The query string of a scrape for one torrent (without `?`).
pub fn scrape_query(info_hash: &InfoHash) -> String {
    let mut q = String::from("info_hash=");
    percent_encode(&info_hash.0, &mut q);
    q
}

/// A complete `GET` request for `url` with `query` appended to any query the URL already has.
pub fn get_request(url: &TrackerUrl, query: &str) -> Vec<u8> {
    let mut target = url.path.clone();
    if !query.is_empty() {
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(query);
    }
    request_bytes(&target, url, "Connection: close\r\n")
}

/// A `GET` for the bytes `first..=last` of the resource at `url` (a web seed's file), asking to
/// keep the connection open for the next one.
pub fn range_request(url: &TrackerUrl, first: u64, last: u64) -> Vec<u8> {
    let extra = format!("Range: bytes={first}-{last}\r\nConnection: keep-alive\r\n");
    request_bytes(&url.path, url, &extra)
}

fn request_bytes(target: &str, url: &TrackerUrl, extra_headers: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kp-torrent/{}\r\n\
         Accept-Encoding: identity\r\n{extra_headers}\r\n",
        url.host_header(),
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// The part of a response's head beyond what trackers need, for web seeds: known once the head
/// is parsed ([`ResponseParser::head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Length`, if given.
    pub content_length: Option<u64>,
    /// `Content-Range: bytes first-last/total` (`total` `None` for `*`), if given and well formed.
    pub content_range: Option<ContentRange>,
    /// True when a `Content-Range` header was present, well formed or not.
    pub has_content_range: bool,
    /// The server lets the connection carry another request: HTTP/1.1 without
    /// `Connection: close` (HTTP/1.0 only with `Connection: keep-alive`), and a body whose end
    /// is known without closing.
    pub keep_alive: bool,
    /// `Retry-After` in seconds (the delta-seconds form; an HTTP date is ignored), if given.
    pub retry_after: Option<u64>,
}

/// A `Content-Range` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte.
    pub first: u64,
    /// Last byte (inclusive).
    pub last: u64,
    /// The resource's whole length, when the server says.
    pub total: Option<u64>,
}

impl ContentRange {
    /// Parses `bytes first-last/total` (or `/*`); `None` for anything else.
    pub fn parse(v: &str) -> Option<ContentRange> {
        let rest = v.trim().strip_prefix("bytes")?.trim_start();
        let (range, total) = rest.split_once('/')?;
        let (first, last) = range.trim().split_once('-')?;
        let first = first.trim().parse::<u64>().ok()?;
        let last = last.trim().parse::<u64>().ok()?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse::<u64>().ok()?),
        };
        (first <= last && total.is_none_or(|t| last < t)).then_some(ContentRange {
            first,
            last,
            total,
        })
    }
}

/// A parsed HTTP response: what the tracker layer needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The body, de-chunked (empty for redirects).
    pub body: Vec<u8>,
}

#[derive(Debug)]
enum Chunk {
    Size {
        line: usize,
        value: Option<u64>,
        ext: bool,
    },
    Data(u64),
    DataEnd(usize),
    Trailer {
        line: usize,
        total: usize,
    },
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Length { status: u16, remaining: u64 },
    Chunked { status: u16, chunk: Chunk },
    UntilClose { status: u16 },
    Done,
}

/// Incremental HTTP/1.x response parser: feed it chunks split anywhere; memory stays within
/// [`HttpLimits::max_head`] + [`HttpLimits::max_body`].
#[derive(Debug)]
pub struct ResponseParser {
    limits: HttpLimits,
    state: State,
    location: Option<String>,
    body: Vec<u8>,
    /// Interim (1xx) responses seen; each costs a copy of the rest of the input, so they are capped.
    interim: u8,
    head: Option<Head>,
    /// Bytes followed the complete response (which a connection reused for another request
    /// cannot explain).
    trailing: bool,
}

const CHUNK_LINE_MAX: usize = 1024;
/// Interim (1xx) responses accepted before the real one; real servers send one at most.
const INTERIM_MAX: u8 = 8;
const TRAILER_MAX: usize = 16 * 1024;

impl ResponseParser {
    /// A parser for one response.
    pub fn new(limits: HttpLimits) -> ResponseParser {
        ResponseParser {
            limits,
            state: State::Head(Vec::new()),
            location: None,
            body: Vec::new(),
            interim: 0,
            head: None,
            trailing: false,
        }
    }

    /// The final response's head, once it is parsed (interim responses are skipped).
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Takes the body bytes received so far: a caller that streams the body calls it after each
    /// [`ResponseParser::feed`], and the final [`Response::body`] holds only what came after.
    /// The body limit counts the bytes held, so a streaming caller bounds the body itself.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    /// True when bytes followed the complete response in the same [`ResponseParser::feed`].
    pub fn had_trailing_bytes(&self) -> bool {
        self.trailing
    }

    /// Takes the next received bytes; `Some` once the response is complete. Errors are final.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Response>, TrackerError> {
        let mut owned: Vec<u8>;
        let mut data = data;
        loop {
            let State::Head(buf) = &mut self.state else {
                return self.feed_body(data);
            };
            if data.is_empty() {
                return Ok(None);
            }
            let room = self.limits.max_head.saturating_sub(buf.len());
            let take = data.len().min(room);
            buf.extend_from_slice(&data[..take]);
            let rest = &data[take..];
            let head = std::mem::take(buf);
            match self.parse_head(&head)? {
                None => {
                    if head.len() >= self.limits.max_head {
                        return Err(TrackerError::BadHttp("response headers too long"));
                    }
                    self.state = State::Head(head);
                    return Ok(None);
                }
                Some(used) => {
                    let mut leftover = head.get(used..).unwrap_or_default().to_vec();
                    leftover.extend_from_slice(rest);
                    owned = leftover;
                    data = &owned;
                    if let Some(r) = self.finish_if_done() {
                        self.trailing = !data.is_empty();
                        return Ok(Some(r));
                    }
                }
            }
        }
    }

    /// Parses a complete head and sets the body state; `None` while the head is incomplete.
    fn parse_head(&mut self, head: &[u8]) -> Result<Option<usize>, TrackerError> {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut resp = httparse::Response::new(&mut headers);
        let used = match resp.parse(head) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(TrackerError::BadHttp("too many headers"));
            }
            Err(_) => return Err(TrackerError::BadHttp("malformed status line or headers")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            // An interim response (100 Continue): the real one follows.
            self.interim += 1;
            if self.interim > INTERIM_MAX {
                return Err(TrackerError::BadHttp("too many interim (1xx) responses"));
            }
            self.state = State::Head(Vec::new());
            return Ok(Some(used));
        }
        let mut length = None;
        let mut chunked = false;
        let mut location = None;
        let mut retry_after = None;
        let mut content_range = None;
        let mut has_content_range = false;
        let mut close = resp.version != Some(1);
        for h in resp.headers.iter() {
            let value = std::str::from_utf8(h.value).map(str::trim);
            if h.name.eq_ignore_ascii_case("content-range") {
                has_content_range = true;
                content_range = value.ok().and_then(ContentRange::parse);
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = value.unwrap_or("");
                let has = |t: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
                if has("close") {
                    close = true;
                } else if has("keep-alive") {
                    close = false;
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or(TrackerError::BadHttp("bad Content-Length"))?;
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.is_ok_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                });
            } else if h.name.eq_ignore_ascii_case("location") {
                location = value.ok().map(str::to_string);
            } else if h.name.eq_ignore_ascii_case("retry-after") {
                retry_after = value.ok().and_then(|v| v.parse::<u64>().ok());
            }
        }
        self.location = location;
        // A redirect's body is skipped unread, so only an empty one leaves the stream in step.
        let bodiless = (300..400).contains(&status) || status == 204 || status == 304;
        let framed = if bodiless && status != 204 && status != 304 {
            length == Some(0) && !chunked
        } else {
            bodiless || chunked || length.is_some()
        };
        self.head = Some(Head {
            status,
            content_length: length,
            content_range,
            has_content_range,
            keep_alive: !close && framed,
            retry_after,
        });
        self.state = if (300..400).contains(&status) || status == 204 || status == 304 {
            // Redirects need only the head; their bodies are ignored.
            State::Length {
                status,
                remaining: 0,
            }
        } else if chunked {
            State::Chunked {
                status,
                chunk: Chunk::Size {
                    line: 0,
                    value: None,
                    ext: false,
                },
            }
        } else if let Some(n) = length {
            if n > self.limits.max_body as u64 {
                return Err(TrackerError::BodyTooLarge(n));
            }
            State::Length {
                status,
                remaining: n,
            }
        } else {
            State::UntilClose { status }
        };
        Ok(Some(used))
    }

    fn finish_if_done(&mut self) -> Option<Response> {
        if let State::Length {
            status,
            remaining: 0,
        } = self.state
        {
            self.state = State::Done;
            return Some(Response {
                status,
                location: self.location.take(),
                body: std::mem::take(&mut self.body),
            });
        }
        None
    }

    fn push_body(&mut self, bytes: &[u8]) -> Result<(), TrackerError> {
        if self.body.len().saturating_add(bytes.len()) > self.limits.max_body {
            return Err(TrackerError::BodyTooLarge(
                self.body.len().saturating_add(bytes.len()) as u64,
            ));
        }
        self.body.extend_from_slice(bytes);
        Ok(())
    }

    fn feed_body(&mut self, mut data: &[u8]) -> Result<Option<Response>, TrackerError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Length { remaining, .. } => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    *remaining -= take as u64;
                    let (now, rest) = data.split_at(take);
                    data = rest;
                    self.push_body(now)?;
                    if let Some(r) = self.finish_if_done() {
                        self.trailing = !data.is_empty();
                        return Ok(Some(r));
                    }
                }
                State::UntilClose { .. } => {
                    let d = data;
                    data = &[];
                    self.push_body(d)?;
                }
                State::Chunked { status, chunk } => {
                    let status = *status;
                    match chunk {
                        Chunk::Size { line, value, ext } => {
                            let b = data[0];
                            data = &data[1..];
                            *line += 1;
                            if *line > CHUNK_LINE_MAX {
                                return Err(TrackerError::BadHttp("chunk size line too long"));
                            }
                            match b {
                                b'\n' => {
                                    let n =
                                        value.ok_or(TrackerError::BadHttp("empty chunk size"))?;
                                    if n == 0 {
                                        *chunk = Chunk::Trailer { line: 0, total: 0 };
                                    } else {
                                        let total = (self.body.len() as u64).saturating_add(n);
                                        if total > self.limits.max_body as u64 {
                                            return Err(TrackerError::BodyTooLarge(total));
                                        }
                                        *chunk = Chunk::Data(n);
                                    }
                                }
                                b'\r' => {}
                                _ if *ext => {}
                                b';' | b' ' | b'\t' => *ext = true,
                                _ => {
                                    let digit = char::from(b)
                                        .to_digit(16)
                                        .ok_or(TrackerError::BadHttp("bad chunk size"))?;
                                    let v = value
                                        .unwrap_or(0)
                                        .checked_mul(16)
                                        .and_then(|v| v.checked_add(u64::from(digit)))
                                        .ok_or(TrackerError::BadHttp("chunk size overflows"))?;
                                    *value = Some(v);
                                }
                            }
                        }
                        Chunk::Data(n) => {
                            let take = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
                            *n -= take as u64;
                            if *n == 0 {
                                *chunk = Chunk::DataEnd(0);
                            }
                            let (now, rest) = data.split_at(take);
                            data = rest;
                            self.push_body(now)?;
                        }
                        Chunk::DataEnd(seen) => {
                            let b = data[0];
                            data = &data[1..];
                            *seen += 1;
                            match b {
                                b'\n' => {
                                    *chunk = Chunk::Size {
                                        line: 0,
                                        value: None,
                                        ext: false,
                                    }
                                }
                                b'\r' if *seen == 1 => {}
                                _ => {
                                    return Err(TrackerError::BadHttp(
                                        "chunk not followed by CRLF",
                                    ));
                                }
                            }
                        }
                        Chunk::Trailer { line, total } => {
                            let b = data[0];
                            data = &data[1..];
                            *total += 1;
                            if *total > TRAILER_MAX {
                                return Err(TrackerError::BadHttp("chunked trailer too long"));
                            }
                            match b {
                                b'\n' if *line == 0 => {
                                    self.state = State::Length {
                                        status,
                                        remaining: 0,
                                    };
                                    self.trailing = !data.is_empty();
                                    return Ok(self.finish_if_done());
                                }
                                b'\n' => *line = 0,
                                b'\r' => {}
                                _ => *line += 1,
                            }
                        }
                    }
                }
                State::Head(_) | State::Done => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The connection closed: completes a body that runs to the end of the stream, else an error.
    pub fn handle_closed(&mut self) -> Result<Response, TrackerError> {
        match self.state {
            State::UntilClose { status } => {
                self.state = State::Done;
                Ok(Response {
                    status,
                    location: self.location.take(),
                    body: std::mem::take(&mut self.body),
                })
            }
            _ => Err(TrackerError::ClosedEarly),
        }
    }
}

/// What an [`HttpExchange`] needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpStep {
    /// Open a new connection to this URL and send [`HttpExchange::request`] again.
    Redirect(TrackerUrl),
    /// The final 200 response body.
    Body(Vec<u8>),
}

/// One tracker request over HTTP(S), following redirects.
#[derive(Debug)]
pub struct HttpExchange {
    url: TrackerUrl,
    query: String,
    limits: HttpLimits,
    visited: Vec<String>,
    parser: ResponseParser,
}

impl HttpExchange {
    /// A request for `url` with `query` appended (an announce or scrape query).
    pub fn new(url: TrackerUrl, query: String, limits: HttpLimits) -> HttpExchange {
        HttpExchange {
            visited: vec![url.to_string()],
            parser: ResponseParser::new(limits.clone()),
            url,
            query,
            limits,
        }
    }

    /// Where to connect now (changes after a redirect).
    pub fn url(&self) -> &TrackerUrl {
        &self.url
    }

    /// The bytes to send once connected.
    pub fn request(&self) -> Vec<u8> {
        get_request(&self.url, &self.query)
    }

    /// Feeds received bytes; `Some` when the response is complete.
    pub fn handle_data(&mut self, data: &[u8]) -> Result<Option<HttpStep>, TrackerError> {
        match self.parser.feed(data)? {
            Some(r) => self.on_response(r).map(Some),
            None => Ok(None),
        }
    }

    /// The connection closed (cleanly) before a complete response had been reported.
    pub fn handle_closed(&mut self) -> Result<HttpStep, TrackerError> {
        let r = self.parser.handle_closed()?;
        self.on_response(r)
    }

    fn on_response(&mut self, r: Response) -> Result<HttpStep, TrackerError> {
        match r.status {
            200 => Ok(HttpStep::Body(r.body)),
            300..=399 => {
                let Some(loc) = r.location else {
                    return Err(TrackerError::HttpStatus(r.status));
                };
                if self.visited.len() > self.limits.max_redirects {
                    return Err(TrackerError::TooManyRedirects);
                }
                let next = self.url.join(&loc)?;
                if next.scheme == Scheme::Udp {
                    return Err(TrackerError::InvalidUrl(format!(
                        "HTTP redirect to a UDP URL: {next}"
                    )));
                }
                let key = next.to_string();
                if self.visited.contains(&key) {
                    return Err(TrackerError::RedirectLoop(key));
                }
                self.visited.push(key);
                // The Location carries the whole target; the original query is not re-appended.
                self.query.clear();
                self.url = next.clone();
                self.parser = ResponseParser::new(self.limits.clone());
                Ok(HttpStep::Redirect(next))
            }
            code => {
                // Some trackers explain a refusal in a bencoded body with an error status.
                if let Ok(Value::Dict(d)) = bencode::decode(&r.body)
                    && let Some(reason) = d.get_bytes(b"failure reason")
                {
                    return Err(TrackerError::Failure(tracker_text(reason)));
                }
                Err(TrackerError::HttpStatus(code))
            }
        }
    }
}

/// Text from a tracker, made printable and bounded.
pub(crate) fn tracker_text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(1024)]);
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn int_u32(d: &Dict<'_>, key: &[u8]) -> Option<u32> {
    d.get_int(key).and_then(|v| u32::try_from(v).ok())
}

fn decode_dict(body: &[u8]) -> Result<Value<'_>, TrackerError> {
    let v = bencode::decode(body).map_err(TrackerError::BadBencode)?;
    if v.as_dict().is_none() {
        return Err(TrackerError::BadReply("reply is not a dictionary"));
    }
    if let Some(reason) = v.as_dict().and_then(|d| d.get_bytes(b"failure reason")) {
        return Err(TrackerError::Failure(tracker_text(reason)));
    }
    Ok(v)
}

/// Decodes an announce reply body; bad peers are dropped, at most `filter.max_peers` kept.
pub fn parse_announce(body: &[u8], filter: &PeerFilter) -> Result<AnnounceReply, TrackerError> {
    let v = decode_dict(body)?;
    let Some(d) = v.as_dict() else {
        return Err(TrackerError::BadReply("reply is not a dictionary"));
    };
    let mut reply = AnnounceReply {
        interval: int_u32(d, b"interval"),
        min_interval: int_u32(d, b"min interval"),
        tracker_id: d.get_bytes(b"tracker id").map(<[u8]>::to_vec),
        complete: int_u32(d, b"complete"),
        incomplete: int_u32(d, b"incomplete"),
        warning: d.get_bytes(b"warning message").map(tracker_text),
        peers: Vec::new(),
    };
    match d.get(b"peers") {
        None => {}
        Some(Value::Bytes(b)) => compact_peers_v4(b, filter, &mut reply.peers),
        Some(Value::List(list)) => {
            for item in list.iter() {
                let Some(p) = item.as_dict() else { continue };
                let ip = p.get_str(b"ip").and_then(|s| s.parse::<IpAddr>().ok());
                let port = p.get_int(b"port").and_then(|v| u16::try_from(v).ok());
                if let (Some(ip), Some(port)) = (ip, port)
                    && !filter.push(&mut reply.peers, SocketAddr::new(ip, port))
                {
                    break;
                }
            }
        }
        Some(_) => {
            return Err(TrackerError::BadReply(
                "peers is neither a string nor a list",
            ));
        }
    }
    if let Some(b) = d.get_bytes(b"peers6") {
        compact_peers_v6(b, filter, &mut reply.peers);
    }
    Ok(reply)
}

/// Appends 6-byte compact IPv4 peers (a trailing partial entry is ignored).
pub(crate) fn compact_peers_v4(b: &[u8], filter: &PeerFilter, out: &mut Vec<SocketAddr>) {
    for c in b.chunks_exact(6) {
        let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
        let port = u16::from_be_bytes([c[4], c[5]]);
        if !filter.push(out, SocketAddr::new(IpAddr::V4(ip), port)) {
            break;
        }
    }
}

/// Appends 18-byte compact IPv6 peers (a trailing partial entry is ignored).
pub(crate) fn compact_peers_v6(b: &[u8], filter: &PeerFilter, out: &mut Vec<SocketAddr>) {
    for c in b.chunks_exact(18) {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&c[..16]);
        let port = u16::from_be_bytes([c[16], c[17]]);
        if !filter.push(out, SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)) {
            break;
        }
    }
}

/// Decodes a scrape reply body and picks out `info_hash`'s counts.
pub fn parse_scrape(body: &[u8], info_hash: &InfoHash) -> Result<ScrapeCounts, TrackerError> {
    let v = decode_dict(body)?;
    let files = v
        .as_dict()
        .and_then(|d| d.get_dict(b"files"))
        .ok_or(TrackerError::BadReply(
            "scrape reply has no files dictionary",
        ))?;
    let f = files.get_dict(&info_hash.0).ok_or(TrackerError::BadReply(
        "scrape reply does not list this torrent",
    ))?;
    Ok(ScrapeCounts {
        complete: int_u32(f, b"complete").unwrap_or(0),
        downloaded: int_u32(f, b"downloaded").unwrap_or(0),
        incomplete: int_u32(f, b"incomplete").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::Owned;
    use crate::id::PeerId;
    use crate::tracker::AnnounceEvent;

    fn params(event: AnnounceEvent) -> AnnounceParams {
        let mut ih = [0x41u8; 20];
        ih[0] = 0x00;
        ih[1] = 0xff;
        ih[2] = b' ';
        AnnounceParams {
            info_hash: InfoHash(ih),
            peer_id: PeerId(*b"-KP0100-abcdefghij~."),
            port: 6881,
            uploaded: 10,
            downloaded: 20,
            left: 30,
            event,
            numwant: 50,
            key: 0xdead_beef,
        }
    }

    fn filter() -> PeerFilter {
        PeerFilter {
            own_port: 6881,
            own_ips: vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))],
            max_peers: 2000,
        }
    }

    fn url(s: &str) -> TrackerUrl {
        TrackerUrl::parse(s).unwrap()
    }

    #[test]
    fn announce_request_bytes() {
        let u = url("http://t.example:8080/announce?passkey=s3cret");
        let req = get_request(
            &u,
            &announce_query(&params(AnnounceEvent::Started), Some(b"t id")),
        );
        let req = String::from_utf8(req).unwrap();
        let expected_line = "GET /announce?passkey=s3cret&info_hash=%00%FF%20AAAAAAAAAAAAAAAAA\
            &peer_id=-KP0100-abcdefghij~.&port=6881&uploaded=10&downloaded=20&left=30&compact=1\
            &numwant=50&key=deadbeef&event=started&trackerid=t%20id HTTP/1.1\r\n";
        assert!(req.starts_with(expected_line), "{req}");
        assert!(req.contains("\r\nHost: t.example:8080\r\n"));
        assert!(req.contains("\r\nConnection: close\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
        let plain = announce_query(&params(AnnounceEvent::None), None);
        assert!(!plain.contains("event=") && !plain.contains("trackerid="));
        let q = String::from_utf8(get_request(&url("http://h/announce"), "a=1")).unwrap();
        assert!(q.starts_with("GET /announce?a=1 HTTP/1.1\r\nHost: h\r\n"));
    }

    fn parse_all(chunks: &[&[u8]]) -> Result<Option<Response>, TrackerError> {
        let mut p = ResponseParser::new(HttpLimits::default());
        for c in chunks {
            if let Some(r) = p.feed(c)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Every way of splitting `raw` in three gives the same result as feeding it whole.
    fn check_splits(raw: &[u8], expected: &Response) {
        assert_eq!(parse_all(&[raw]).unwrap().as_ref(), Some(expected));
        for i in 0..=raw.len() {
            for j in (i..=raw.len()).step_by(7) {
                let got = parse_all(&[&raw[..i], &raw[i..j], &raw[j..]]).unwrap();
                assert_eq!(got.as_ref(), Some(expected), "split at {i},{j}");
            }
        }
    }

    #[test]
    fn content_length_body_any_split() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nd1:ai1ee...extra";
        let expected = Response {
            status: 200,
            location: None,
            body: b"d1:ai1ee...".to_vec(),
        };
        check_splits(raw, &expected);
    }

    #[test]
    fn chunked_body_any_split() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            4\r\nd1:a\r\n3;ext=1\r\ni1e\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        let expected = Response {
            status: 200,
            location: None,
            body: b"d1:ai1e0123456789".to_vec(),
        };
        check_splits(raw, &expected);
    }

    #[test]
    fn body_until_close() {
        let mut p = ResponseParser::new(HttpLimits::default());
        assert_eq!(p.feed(b"HTTP/1.0 200 OK\r\n\r\nde").unwrap(), None);
        assert_eq!(
            p.handle_closed().unwrap(),
            Response {
                status: 200,
                location: None,
                body: b"de".to_vec()
            }
        );
    }

    #[test]
    fn endless_interim_responses_are_refused() {
        let mut raw = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100_000);
        raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nde");
        let mut p = ResponseParser::new(HttpLimits::default());
        assert_eq!(
            p.feed(&raw),
            Err(TrackerError::BadHttp("too many interim (1xx) responses"))
        );
    }

    #[test]
    fn interim_100_continue_is_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nde";
        let r = parse_all(&[raw]).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"de"[..]));
    }

    #[test]
    fn closed_early_is_an_error() {
        let mut p = ResponseParser::new(HttpLimits::default());
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        assert_eq!(p.handle_closed(), Err(TrackerError::ClosedEarly));
        let mut p = ResponseParser::new(HttpLimits::default());
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap();
        assert_eq!(p.handle_closed(), Err(TrackerError::ClosedEarly));
        let mut p = ResponseParser::new(HttpLimits::default());
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
            .unwrap();
        assert_eq!(p.handle_closed(), Err(TrackerError::ClosedEarly));
    }

    #[test]
    fn garbage_is_an_error() {
        for garbage in [
            &b"\x00\x01\x02 hello\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(&[garbage]), Err(TrackerError::BadHttp(_))),
                "{garbage:?}"
            );
        }
        let bad_len = b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n";
        assert!(matches!(
            parse_all(&[bad_len]),
            Err(TrackerError::BadHttp(_))
        ));
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(matches!(
            parse_all(&[bad_chunk]),
            Err(TrackerError::BadHttp(_))
        ));
    }

    #[test]
    fn endless_headers_are_bounded() {
        let mut p = ResponseParser::new(HttpLimits::default());
        p.feed(b"HTTP/1.1 200 OK\r\n").unwrap();
        let line = [b"X-Filler: ".as_slice(), &[b'a'; 1000], b"\r\n"].concat();
        let err = (0..10_000).find_map(|_| p.feed(&line).err());
        assert_eq!(
            err,
            Some(TrackerError::BadHttp("response headers too long"))
        );
    }

    #[test]
    fn two_gigabyte_content_length_is_refused_at_once() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\nd";
        assert_eq!(
            parse_all(&[raw]),
            Err(TrackerError::BodyTooLarge(2_147_483_648))
        );
    }

    #[test]
    fn endless_chunked_body_is_cut_at_the_cap() {
        let limits = HttpLimits::default();
        let mut p = ResponseParser::new(limits.clone());
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let chunk = [b"1000\r\n".as_slice(), &[b'x'; 4096], b"\r\n"].concat();
        let mut fed = 0usize;
        let err = loop {
            match p.feed(&chunk) {
                Ok(None) => fed += chunk.len(),
                other => break other,
            }
            assert!(p.body.len() <= limits.max_body);
            assert!(fed < 2 * limits.max_body, "never stopped");
        };
        assert!(matches!(err, Err(TrackerError::BodyTooLarge(_))), "{err:?}");
        // A chunk that declares more than the cap fails on its size line already.
        let mut p = ResponseParser::new(limits);
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n";
        assert!(matches!(p.feed(huge), Err(TrackerError::BodyTooLarge(_))));
        // Endless trailers and size lines are bounded too.
        let mut p = ResponseParser::new(HttpLimits::default());
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
            .unwrap();
        let err = (0..10_000).find_map(|_| p.feed(b"X: y\r\n").err());
        assert_eq!(err, Some(TrackerError::BadHttp("chunked trailer too long")));
        let mut p = ResponseParser::new(HttpLimits::default());
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let err = (0..10_000).find_map(|_| p.feed(b"0000").err());
        assert_eq!(err, Some(TrackerError::BadHttp("chunk size line too long")));
    }

    #[test]
    fn body_until_close_is_capped() {
        let mut p = ResponseParser::new(HttpLimits::default());
        p.feed(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        let block = vec![b'x'; 64 * 1024];
        let err = (0..100).find_map(|_| p.feed(&block).err());
        assert!(matches!(err, Some(TrackerError::BodyTooLarge(_))));
    }

    fn exchange(u: &str) -> HttpExchange {
        HttpExchange::new(url(u), "info_hash=x".into(), HttpLimits::default())
    }

    #[test]
    fn redirect_is_followed_with_relative_location() {
        let mut x = exchange("http://a.example/announce");
        let step = x
            .handle_data(b"HTTP/1.1 302 Found\r\nLocation: /v2/announce?info_hash=x\r\n\r\n")
            .unwrap();
        let next = url("http://a.example/v2/announce?info_hash=x");
        assert_eq!(step, Some(HttpStep::Redirect(next.clone())));
        assert_eq!(x.url(), &next);
        let req = String::from_utf8(x.request()).unwrap();
        assert!(
            req.starts_with("GET /v2/announce?info_hash=x HTTP/1.1\r\n"),
            "{req}"
        );
        let step = x
            .handle_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nde")
            .unwrap();
        assert_eq!(step, Some(HttpStep::Body(b"de".to_vec())));
    }

    #[test]
    fn redirect_loop_and_limit() {
        let mut x = exchange("http://a.example/announce");
        assert!(matches!(
            x.handle_data(b"HTTP/1.1 301 Moved\r\nLocation: http://b.example/announce\r\n\r\n"),
            Ok(Some(HttpStep::Redirect(_)))
        ));
        assert_eq!(
            x.handle_data(b"HTTP/1.1 301 Moved\r\nLocation: http://a.example/announce\r\n\r\n"),
            Err(TrackerError::RedirectLoop(
                "http://a.example:80/announce".into()
            ))
        );
        let mut x = exchange("http://a.example/announce");
        let mut result = Ok(None);
        for i in 0..10 {
            let resp = format!("HTTP/1.1 307 Temporary\r\nLocation: /r{i}\r\n\r\n");
            result = x.handle_data(resp.as_bytes());
            if result.is_err() {
                assert_eq!(i, 5, "the sixth redirect is refused");
                break;
            }
        }
        assert_eq!(result, Err(TrackerError::TooManyRedirects));
        let mut x = exchange("http://a.example/announce");
        assert_eq!(
            x.handle_data(b"HTTP/1.1 302 Found\r\n\r\n"),
            Err(TrackerError::HttpStatus(302))
        );
    }

    #[test]
    fn non_200_status_is_an_error() {
        let mut x = exchange("http://a.example/announce");
        assert_eq!(
            x.handle_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnah"),
            Err(TrackerError::HttpStatus(404))
        );
        let mut x = exchange("http://a.example/announce");
        let body = b"d14:failure reason12:unregisterede";
        let resp = [
            format!("HTTP/1.1 400 Bad\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat();
        assert_eq!(
            x.handle_data(&resp),
            Err(TrackerError::Failure("unregistered".into()))
        );
    }

    fn compact(peers: &[([u8; 4], u16)]) -> Vec<u8> {
        peers
            .iter()
            .flat_map(|(ip, port)| ip.iter().copied().chain(port.to_be_bytes()))
            .collect()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn announce_reply_compact_and_fields() {
        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&51413u16.to_be_bytes());
        v6.extend_from_slice(&[1, 2, 3]); // a trailing partial entry is ignored
        let body: Owned = [
            ("interval", Owned::Int(900)),
            ("min interval", Owned::Int(300)),
            ("tracker id", Owned::bytes("tid")),
            ("complete", Owned::Int(3)),
            ("incomplete", Owned::Int(4)),
            ("warning message", Owned::bytes("be nice")),
            (
                "peers",
                Owned::Bytes(compact(&[
                    ([10, 0, 0, 1], 6881),
                    ([10, 0, 0, 2], 0),       // port 0: dropped
                    ([203, 0, 113, 9], 6881), // ourselves: dropped
                    ([127, 0, 0, 1], 6881),   // ourselves via loopback: dropped
                    ([127, 0, 0, 1], 6882),   // another client on this host: kept
                    ([10, 0, 0, 1], 6881),    // duplicate: dropped
                ])),
            ),
            ("peers6", Owned::Bytes(v6)),
        ]
        .into_iter()
        .collect();
        let r = parse_announce(&body.encode(), &filter()).unwrap();
        assert_eq!(
            r,
            AnnounceReply {
                interval: Some(900),
                min_interval: Some(300),
                tracker_id: Some(b"tid".to_vec()),
                complete: Some(3),
                incomplete: Some(4),
                warning: Some("be nice".into()),
                peers: vec![
                    sa("10.0.0.1:6881"),
                    sa("127.0.0.1:6882"),
                    sa("[2001:db8::1]:51413")
                ],
            }
        );
    }

    #[test]
    fn announce_reply_dictionary_peers() {
        let peer = |ip: &str, port: i64| -> Owned {
            [
                ("ip", Owned::bytes(ip)),
                ("peer id", Owned::bytes([7u8; 20])),
                ("port", Owned::Int(port)),
            ]
            .into_iter()
            .collect()
        };
        let body: Owned = [(
            "peers",
            Owned::List(vec![
                peer("10.1.1.1", 1000),
                peer("::2", 2000),
                peer("tracker.example", 3000), // host names are not resolved: dropped
                peer("10.1.1.2", 70000),       // port out of range: dropped
                peer("10.1.1.3", 0),           // port 0: dropped
                Owned::Int(5),                 // not a dictionary: dropped
            ]),
        )]
        .into_iter()
        .collect();
        let r = parse_announce(&body.encode(), &filter()).unwrap();
        assert_eq!(r.peers, vec![sa("10.1.1.1:1000"), sa("[::2]:2000")]);
        assert_eq!(r.interval, None);
    }

    #[test]
    fn announce_reply_errors() {
        assert_eq!(
            parse_announce(b"d14:failure reason17:torrent not founde", &filter()),
            Err(TrackerError::Failure("torrent not found".into()))
        );
        assert!(matches!(
            parse_announce(b"<html>oops</html>", &filter()),
            Err(TrackerError::BadBencode(_))
        ));
        assert!(matches!(
            parse_announce(b"li1ee", &filter()),
            Err(TrackerError::BadReply(_))
        ));
        assert!(matches!(
            parse_announce(b"d5:peersi3ee", &filter()),
            Err(TrackerError::BadReply(_))
        ));
        let text = TrackerError::Failure("torrent not found".into()).to_string();
        assert!(text.contains("torrent not found"));
    }

    #[test]
    fn a_million_peers_are_capped() {
        let n = 1_000_000u32;
        let mut peers = Vec::with_capacity(n as usize * 6);
        for i in 0..n {
            peers.extend_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            peers.extend_from_slice(&6000u16.to_be_bytes());
        }
        let body: Owned = [("interval", Owned::Int(60)), ("peers", Owned::Bytes(peers))]
            .into_iter()
            .collect();
        let body = body.encode();
        let r = parse_announce(&body, &filter()).unwrap();
        assert_eq!(r.peers.len(), filter().max_peers);
        assert_eq!(r.peers[0], sa("10.0.0.0:6000"));
        // Over HTTP the 6 MB body is refused before it is even stored.
        let mut x = exchange("http://a.example/announce");
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        assert!(matches!(
            x.handle_data(head.as_bytes()),
            Err(TrackerError::BodyTooLarge(_))
        ));
    }

    #[test]
    fn scrape_reply() {
        let ih = InfoHash([9; 20]);
        let stats: Owned = [
            ("complete", Owned::Int(5)),
            ("downloaded", Owned::Int(50)),
            ("incomplete", Owned::Int(7)),
        ]
        .into_iter()
        .collect();
        let files: Owned = [(ih.0.to_vec(), stats)].into_iter().collect();
        let body: Owned = [("files", files)].into_iter().collect();
        assert_eq!(
            parse_scrape(&body.encode(), &ih),
            Ok(ScrapeCounts {
                complete: 5,
                downloaded: 50,
                incomplete: 7
            })
        );
        assert!(matches!(
            parse_scrape(&body.encode(), &InfoHash([1; 20])),
            Err(TrackerError::BadReply(_))
        ));
        assert!(matches!(
            parse_scrape(b"de", &ih),
            Err(TrackerError::BadReply(_))
        ));
        let q = scrape_query(&ih);
        assert_eq!(q, format!("info_hash={}", "%09".repeat(20)));
    }
    #[test]
    fn range_request_bytes() {
        let req =
            String::from_utf8(range_request(&url("http://w.example:8080/d/a%20b"), 5, 99)).unwrap();
        assert!(
            req.starts_with("GET /d/a%20b HTTP/1.1\r\nHost: w.example:8080\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nRange: bytes=5-99\r\nConnection: keep-alive\r\n\r\n"));
        let get = String::from_utf8(get_request(&url("http://t/a"), "x=1")).unwrap();
        assert!(get.contains("Connection: close\r\n\r\n") && !get.contains("Range"));
    }

    #[test]
    fn content_range_values() {
        let r = |first, last, total| Some(ContentRange { first, last, total });
        assert_eq!(ContentRange::parse("bytes 0-99/1000"), r(0, 99, Some(1000)));
        assert_eq!(ContentRange::parse(" bytes 5-5/*"), r(5, 5, None));
        for bad in [
            "bytes 9-5/10",
            "bytes 0-10/10",
            "bytes */10",
            "items 0-1/2",
            "bytes 0-1",
            "",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }

    fn head_of(raw: &[u8]) -> Head {
        let mut p = ResponseParser::new(HttpLimits::default());
        let _ = p.feed(raw).unwrap();
        p.head().cloned().unwrap()
    }

    #[test]
    fn head_fields_and_keep_alive() {
        let h = head_of(
            b"HTTP/1.1 206 Partial\r\nContent-Length: 3\r\nContent-Range: bytes 2-4/9\r\n\r\n",
        );
        assert_eq!(h.status, 206);
        assert_eq!(h.content_length, Some(3));
        assert_eq!(h.content_range, ContentRange::parse("bytes 2-4/9"));
        assert!(h.has_content_range && h.keep_alive);
        assert!(
            !head_of(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n")
                .keep_alive
        );
        assert!(!head_of(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").keep_alive);
        assert!(
            head_of(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n")
                .keep_alive
        );
        // A body that ends with the connection cannot be followed by another response.
        assert!(!head_of(b"HTTP/1.1 200 OK\r\n\r\n").keep_alive);
        assert!(head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").keep_alive);
        // A redirect's body is not read: only an empty one keeps the stream usable.
        assert!(
            !head_of(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 5\r\n\r\nabcde")
                .keep_alive
        );
        assert!(
            head_of(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        let bad = head_of(
            b"HTTP/1.1 206 Partial\r\nContent-Range: bytes x-y/z\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(bad.has_content_range && bad.content_range.is_none());
        // Interim responses leave no head behind.
        let mut p = ResponseParser::new(HttpLimits::default());
        assert_eq!(p.feed(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap(), None);
        assert!(p.head().is_none());
    }

    #[test]
    fn streamed_body_any_split_and_trailing_bytes() {
        let raws: [&[u8]; 2] = [
            b"HTTP/1.1 206 P\r\nContent-Length: 10\r\n\r\n0123456789",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n",
        ];
        for raw in raws {
            for i in 0..raw.len() {
                let mut p = ResponseParser::new(HttpLimits::default());
                let mut body = Vec::new();
                let mut done = None;
                for part in [&raw[..i], &raw[i..]] {
                    if let Some(r) = p.feed(part).unwrap() {
                        done = Some(r);
                    }
                    body.extend(p.take_body());
                }
                let r = done.expect("complete");
                body.extend(r.body);
                assert_eq!(body, b"0123456789", "split at {i}");
                assert!(!p.had_trailing_bytes());
            }
            let mut p = ResponseParser::new(HttpLimits::default());
            assert!(p.feed(&[raw, b"HTTP/1.1"].concat()).unwrap().is_some());
            assert!(p.had_trailing_bytes());
        }
    }
}
