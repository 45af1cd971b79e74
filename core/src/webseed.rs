//! Web seeds (BEP 19, "GetRight style"): an HTTP server that holds the torrent's files, fetched
//! with ranged `GET`s. Pure like the rest of the core: [`WebSeed`] is one URL's state machine,
//! fed socket news as [`WebSeedInput`]s and drained with [`WebSeed::poll_action`] (open, send,
//! close a TCP connection, TLS for `https`: the same bytes, the driver wraps the stream) and
//! [`WebSeed::poll_event`] (body bytes in torrent order, done, failed), then
//! [`WebSeed::poll_timeout`].
//!
//! The session decides what to fetch: [`WebSeed::start`] takes a byte range of the torrent
//! (whole blocks, usually whole pieces or runs of them); the machine splits it into one `GET` per
//! file ([`split_range`], padding files are zeros and never asked for), builds each file's URL by
//! the BEP 19 rule ([`file_url`]) and checks every response: `206` with the `Content-Range` asked
//! for, or `200` only when the range is the whole file; `Content-Length` when given must match,
//! the body must be complete; redirects are followed (at most [`MAX_REDIRECTS`], no loops). One
//! request is in flight at a time and the connection is kept open for the next when the server
//! allows. HTTP is parsed by the trackers' bounded parser ([`ResponseParser`]), its body drained
//! after every chunk, so what one response can make us hold is one received chunk.
//!
//! A web seed that fails (connect error, timeout, bad status, short or mismatched body, a piece
//! of its data failing the hash check, reported with [`WebSeed::hash_failed`]) waits
//! [`BACKOFF_BASE`], doubling, before the next range, and is dropped after [`MAX_FAILURES`]
//! failures in a row (a completed range resets the count) or [`MAX_FAILURES`] hash failures in
//! all.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::metainfo::{Info, Metainfo};
use crate::time::Time;
use crate::tracker::http::{ContentRange, Head, ResponseParser};
use crate::tracker::manager::ConnId;
use crate::tracker::url::{Scheme, TrackerUrl, percent_encode};
use crate::tracker::{HttpLimits, TrackerError};

/// Web seeds per torrent at most (the `url-list` and `--web-seed` together).
pub const MAX_WEB_SEEDS: usize = 32;
/// Web seed connection ids start here, far above the tracker manager's (which count from 0),
/// so the driver keeps both in one table and [`conn_owner`] tells them apart.
pub const CONN_BASE: usize = 1 << 30;
/// First wait after a failure; doubles with each failure in a row.
pub const BACKOFF_BASE: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured (a busy server's 503 or 429 asks for its wait; a longer
/// one is cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Failures in a row (or hash failures in all) after which a web seed is dropped.
pub const MAX_FAILURES: u32 = 5;
/// Redirects followed for one file request at most.
pub const MAX_REDIRECTS: usize = 5;
/// Lookup and TCP (and TLS) connect must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A request whose server sends nothing for this long fails.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// A kept-alive connection with nothing to do is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of a response head.
const MAX_HEAD: usize = 16 * 1024;

/// The web seed (its index in the session's list) a connection id belongs to, or `None` for a
/// tracker's connection.
pub fn conn_owner(conn: ConnId) -> Option<usize> {
    conn.0.checked_sub(CONN_BASE).map(|n| n % MAX_WEB_SEEDS)
}

/// One file of the torrent as a web seed names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutFile {
    /// Path components below the torrent's name (empty for a single-file torrent).
    pub path: Vec<String>,
    /// Offset of its first byte in the torrent's data.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// BEP 47 padding: zeros that no server holds.
    pub padding: bool,
}

/// What the BEP 19 URL rule needs to know about a torrent: its name and its files in order,
/// named as the torrent names them ([`Layout::from_metadata`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The torrent's name: the file of a single-file torrent, the folder of a multi-file one.
    pub name: String,
    /// True for a torrent with a `files` list.
    pub multi_file: bool,
    /// The files, in torrent order.
    pub files: Vec<LayoutFile>,
}

impl Layout {
    /// The layout of a parsed info dictionary.
    pub fn from_info(info: &Info) -> Layout {
        Layout {
            name: info.name.clone(),
            multi_file: info.multi_file,
            files: info
                .files
                .iter()
                .map(|f| LayoutFile {
                    // A multi-file entry's path starts with the torrent's name.
                    path: if info.multi_file {
                        f.path.iter().skip(1).cloned().collect()
                    } else {
                        Vec::new()
                    },
                    offset: f.offset,
                    length: f.length,
                    padding: f.padding,
                })
                .collect(),
        }
    }

    /// The layout of a bencoded info dictionary (a session's `Torrent::metadata`); `None` when
    /// it does not parse. Names are the torrent's own (`name.utf-8`/`path.utf-8` when present,
    /// as the metainfo parser prefers them), not the sanitized ones kp-torrent stores the files
    /// under: the server holds the files as the torrent names them. Components that are empty,
    /// `.` or `..` are left out (they would move the URL's path); whatever else a name holds is
    /// percent-encoded when the URL is built. A name that is not UTF-8 falls back to the
    /// sanitized one.
    pub fn from_metadata(info: &[u8]) -> Option<Layout> {
        if info.is_empty() {
            return None;
        }
        let mut file = Vec::with_capacity(info.len() + 8);
        file.extend_from_slice(b"d4:info");
        file.extend_from_slice(info);
        file.push(b'e');
        let m = Metainfo::from_bytes(&file).ok()?;
        let mut layout = Layout::from_info(&m.info);
        if let Some((name, paths)) = raw_names(info)
            && (!layout.multi_file || paths.len() == layout.files.len())
        {
            if !name.is_empty() {
                layout.name = name;
            }
            if layout.multi_file {
                for (f, p) in layout.files.iter_mut().zip(paths) {
                    if !p.is_empty() {
                        f.path = p;
                    }
                }
            }
        }
        Some(layout)
    }
}

/// The torrent's own name and, for a multi-file torrent, each file's path (empty where it is
/// unusable), from the bencoded info dictionary.
fn raw_names(info: &[u8]) -> Option<(String, Vec<Vec<String>>)> {
    let v = crate::bencode::decode(info).ok()?;
    let d = v.as_dict()?;
    let utf8 = |d: &crate::bencode::Dict<'_>, key: &str| -> Option<String> {
        let pref = format!("{key}.utf-8");
        let bytes = d
            .get_bytes(pref.as_bytes())
            .or_else(|| d.get_bytes(key.as_bytes()))?;
        std::str::from_utf8(bytes).ok().map(str::to_string)
    };
    let name = utf8(d, "name")
        .filter(|n| usable_component(n))
        .unwrap_or_default();
    let mut paths = Vec::new();
    if let Some(files) = d.get_list(b"files") {
        for entry in files.iter() {
            let list = entry.as_dict().and_then(|e| match e.get(b"path.utf-8") {
                Some(crate::bencode::Value::List(l)) => Some(l),
                _ => e.get_list(b"path"),
            });
            let mut path = Vec::new();
            for c in list.map(|l| l.iter()).into_iter().flatten() {
                match c.as_bytes().map(std::str::from_utf8) {
                    Some(Ok(c)) if usable_component(c) => path.push(c.to_string()),
                    Some(Ok(_)) => {}
                    // Not UTF-8: the sanitized path is used instead.
                    _ => {
                        path.clear();
                        break;
                    }
                }
            }
            paths.push(path);
        }
    }
    Some((name, paths))
}

/// A path component a URL can carry as it is (percent-encoded): not empty, `.` or `..`.
fn usable_component(c: &str) -> bool {
    !matches!(c, "" | "." | "..")
}

/// Why a web seed request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebSeedError {
    /// The URL (or a redirect's) is not an http(s) URL we can use.
    BadUrl(String),
    /// The connection could not be made (text from the driver).
    ConnectFailed(String),
    /// Lookup and connect took longer than [`CONNECT_TIMEOUT`].
    ConnectTimeout,
    /// The server sent nothing for [`RECEIVE_TIMEOUT`].
    ReceiveTimeout,
    /// The connection ended before the response did (the driver's reason, if it broke).
    Closed(Option<String>),
    /// The response is not valid HTTP, or breaks a limit.
    Http(TrackerError),
    /// A status other than 206, 200 for a whole file, or a redirect.
    Status(u16),
    /// 503 or 429 with `Retry-After`: the server is busy; the next try waits at least that
    /// long (at most [`MAX_RETRY_AFTER`]).
    Busy {
        /// The status.
        status: u16,
        /// Seconds the server asked for.
        retry_after: u64,
    },
    /// The server sent the whole file (200) where a part was asked for: it ignores ranges.
    RangeIgnored,
    /// The `Content-Range` is missing or is not the range asked for (or the file's size differs
    /// from the torrent's).
    WrongRange {
        /// First and last byte asked for, and the file's length.
        asked: (u64, u64, u64),
        /// What the server said (`None`: no usable header).
        got: Option<ContentRange>,
    },
    /// `Content-Length` or the body's length is not what was asked for.
    WrongLength {
        /// Bytes asked for.
        asked: u64,
        /// Bytes the server declared or sent.
        got: u64,
    },
    /// More than [`MAX_REDIRECTS`] redirects, or a redirect without `Location`.
    BadRedirect(String),
    /// Data from this web seed failed a piece's hash check.
    HashFailed {
        /// The piece.
        piece: u32,
    },
}

impl fmt::Display for WebSeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebSeedError::BadUrl(why) => write!(f, "bad web seed URL: {why}"),
            WebSeedError::ConnectFailed(why) => write!(f, "cannot connect: {why}"),
            WebSeedError::ConnectTimeout => {
                write!(f, "no connection within {} s", CONNECT_TIMEOUT.as_secs())
            }
            WebSeedError::ReceiveTimeout => {
                write!(f, "no answer for {} s", RECEIVE_TIMEOUT.as_secs())
            }
            WebSeedError::Closed(None) => {
                f.write_str("connection closed before the response ended")
            }
            WebSeedError::Closed(Some(why)) => write!(f, "connection broke: {why}"),
            WebSeedError::Http(e) => e.fmt(f),
            WebSeedError::Status(code) => write!(f, "HTTP status {code}"),
            WebSeedError::Busy {
                status,
                retry_after,
            } => {
                write!(f, "HTTP status {status}, retry after {retry_after} s")
            }
            WebSeedError::RangeIgnored => {
                f.write_str("the server ignores byte ranges (it sent the whole file)")
            }
            WebSeedError::WrongRange {
                asked: (first, last, len),
                got,
            } => match got {
                Some(r) => write!(
                    f,
                    "asked for bytes {first}-{last}/{len}, got {}-{}/{}",
                    r.first,
                    r.last,
                    r.total.map_or("*".to_string(), |t| t.to_string())
                ),
                None => write!(
                    f,
                    "asked for bytes {first}-{last}/{len}, got no usable Content-Range"
                ),
            },
            WebSeedError::WrongLength { asked, got } => {
                write!(f, "asked for {asked} bytes, the server sent {got}")
            }
            WebSeedError::BadRedirect(why) => write!(f, "redirect: {why}"),
            WebSeedError::HashFailed { piece } => {
                write!(f, "its data for piece {piece} failed the hash check")
            }
        }
    }
}

impl std::error::Error for WebSeedError {}

/// The URL of file `file` of `layout` on the web seed `base`, by the BEP 19 rule: a single-file
/// torrent's URL is the file itself unless it ends in `/`, when the name is appended; a
/// multi-file torrent's files are `base/name/dir/.../file` (a `/` added after `base` when it has
/// none). Names are percent-encoded (all but unreserved characters).
pub fn file_url(base: &str, layout: &Layout, file: usize) -> Result<TrackerUrl, WebSeedError> {
    let mut url = base.trim().to_string();
    if url.contains('?') || url.contains('#') {
        // Names appended after a query would land in the query: only a plain path works.
        if layout.multi_file || url.ends_with('/') {
            return Err(WebSeedError::BadUrl(format!(
                "{base:?}: a query or fragment cannot take file names"
            )));
        }
    }
    if layout.multi_file {
        let entry = layout
            .files
            .get(file)
            .ok_or_else(|| WebSeedError::BadUrl(format!("no file {file}")))?;
        if !url.ends_with('/') {
            url.push('/');
        }
        percent_encode(layout.name.as_bytes(), &mut url);
        for part in &entry.path {
            url.push('/');
            percent_encode(part.as_bytes(), &mut url);
        }
    } else if url.ends_with('/') {
        percent_encode(layout.name.as_bytes(), &mut url);
    }
    parse_url(&url)
}

fn parse_url(s: &str) -> Result<TrackerUrl, WebSeedError> {
    let u = TrackerUrl::parse(s).map_err(|e| WebSeedError::BadUrl(e.to_string()))?;
    if u.scheme == Scheme::Udp {
        return Err(WebSeedError::BadUrl(format!("{s:?} is not http(s)")));
    }
    Ok(u)
}

/// One part of a range of the torrent's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes `start..start + length` of file `file`.
    Get {
        /// The file's index in the layout.
        file: usize,
        /// First byte, in the file.
        start: u64,
        /// Bytes.
        length: u64,
    },
    /// Padding: this many zeros.
    Zeros(u64),
}

/// Splits `length` bytes of the torrent's data from `offset` into one part per file it touches,
/// in order (empty files touch nothing). Bytes past the last file are left out.
pub fn split_range(layout: &Layout, offset: u64, length: u64) -> Vec<Segment> {
    let end = offset.saturating_add(length);
    let mut out = Vec::new();
    for (i, f) in layout.files.iter().enumerate() {
        let f_end = f.offset.saturating_add(f.length);
        if f.length == 0 || f_end <= offset || f.offset >= end {
            continue;
        }
        let start = offset.max(f.offset);
        let stop = end.min(f_end);
        if stop <= start {
            continue;
        }
        out.push(if f.padding {
            Segment::Zeros(stop - start)
        } else {
            Segment::Get {
                file: i,
                start: start - f.offset,
                length: stop - start,
            }
        });
    }
    out
}

/// What a web seed asks the driver to do. Answer with [`WebSeedInput`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum WebSeedAction {
    /// Open a TCP connection to `host:port` (resolving it first); with `tls`, wrap it in TLS for
    /// `host`. Answer [`WebSeedInput::Connected`] or [`WebSeedInput::ConnectFailed`].
    OpenTcp {
        /// The connection's id (see [`conn_owner`]).
        conn: ConnId,
        /// Host name or IP literal (also the TLS server name).
        host: String,
        /// Port.
        port: u16,
        /// True for `https`.
        tls: bool,
    },
    /// Write these bytes to the connection (inside TLS for a TLS connection).
    SendTcp {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Close the connection; no more input is expected for it.
    CloseTcp {
        /// The connection.
        conn: ConnId,
    },
}

/// What a web seed connection did, as plain data a trace records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSeedInput<'a> {
    /// The connection asked for with [`WebSeedAction::OpenTcp`] is open.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// The connection could not be made (lookup, TCP or TLS).
    ConnectFailed {
        /// The connection.
        conn: ConnId,
        /// Why, for the user.
        why: String,
    },
    /// Bytes arrived (after TLS), split anywhere.
    Data {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// The server closed the connection (`error: None`), or it broke.
    Closed {
        /// The connection.
        conn: ConnId,
        /// What broke, if it broke.
        error: Option<String>,
    },
}

impl WebSeedInput<'_> {
    /// The connection this input is about.
    pub fn conn(&self) -> ConnId {
        match self {
            WebSeedInput::Connected { conn }
            | WebSeedInput::ConnectFailed { conn, .. }
            | WebSeedInput::Data { conn, .. }
            | WebSeedInput::Closed { conn, .. } => *conn,
        }
    }
}

/// What happened to the range being fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSeedEvent {
    /// The next bytes of the range, in order.
    Data(Vec<u8>),
    /// The next bytes of the range are this many zeros (a BEP 47 padding file, which no server
    /// holds).
    Zeros(u64),
    /// The whole range arrived.
    Done,
    /// The range is abandoned (the bytes delivered before stay delivered); the web seed waits
    /// before its next range, or is dropped for good.
    Failed {
        /// What went wrong.
        error: WebSeedError,
        /// True when the web seed is given up: it takes no more ranges.
        dropped: bool,
    },
}

/// A part still to fetch, its URL built.
#[derive(Debug)]
enum Part {
    Get {
        url: TrackerUrl,
        start: u64,
        length: u64,
        file_length: u64,
    },
    Zeros(u64),
}

/// One file request, through its redirects.
#[derive(Debug)]
struct Exchange {
    url: TrackerUrl,
    start: u64,
    length: u64,
    file_length: u64,
    parser: ResponseParser,
    visited: Vec<String>,
    sent: bool,
    head_checked: bool,
    got_bytes: bool,
    delivered: u64,
    /// Sent on a connection that had served a request before (the server may have closed it
    /// meanwhile): one retry on a new connection if it closes before any byte.
    reused: bool,
    retried: bool,
}

impl Exchange {
    fn parser() -> ResponseParser {
        // The body is drained after every chunk and checked against the range asked for, so
        // the parser's own cap would only count a chunk.
        ResponseParser::new(HttpLimits {
            max_head: MAX_HEAD,
            max_body: usize::MAX,
            max_redirects: MAX_REDIRECTS,
        })
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    host: String,
    port: u16,
    tls: bool,
    connected: bool,
    busy: bool,
    served: u32,
}

impl Conn {
    fn serves(&self, url: &TrackerUrl) -> bool {
        self.host == url.host && self.port == url.port && self.tls == (url.scheme == Scheme::Https)
    }
}

/// One web seed URL's state machine. See the [module documentation](self).
#[derive(Debug)]
pub struct WebSeed {
    index: usize,
    url: String,
    conn: Option<Conn>,
    parts: VecDeque<Part>,
    exchange: Option<Exchange>,
    running: bool,
    failures: u32,
    hash_failures: u32,
    retry_at: Time,
    dropped: bool,
    next_conn: usize,
    deadline: Option<Time>,
    now: Time,
    received: u64,
    actions: VecDeque<WebSeedAction>,
    events: VecDeque<WebSeedEvent>,
}

impl WebSeed {
    /// The web seed at `url`, number `index` (below [`MAX_WEB_SEEDS`]) of its session, whose
    /// connection ids it takes. Fails for a URL that is not http(s).
    pub fn new(index: usize, url: &str) -> Result<WebSeed, WebSeedError> {
        if index >= MAX_WEB_SEEDS {
            return Err(WebSeedError::BadUrl(format!(
                "more than {MAX_WEB_SEEDS} web seeds"
            )));
        }
        parse_url(url)?;
        Ok(WebSeed {
            index,
            url: url.trim().to_string(),
            conn: None,
            parts: VecDeque::new(),
            exchange: None,
            running: false,
            failures: 0,
            hash_failures: 0,
            retry_at: Time::ZERO,
            dropped: false,
            next_conn: 0,
            deadline: None,
            now: Time::ZERO,
            received: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    // ---- getters ----

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True when it takes a range now: not dropped, not waiting after a failure, not busy.
    pub fn is_ready(&self, now: Time) -> bool {
        !self.dropped && !self.running && now >= self.retry_at
    }

    /// True while a range is being fetched.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// True once it was given up.
    pub fn is_dropped(&self) -> bool {
        self.dropped
    }

    /// Body bytes received in all (payload, not HTTP heads).
    pub fn received(&self) -> u64 {
        self.received
    }

    // ---- outputs ----

    /// The next socket action, until `None`.
    pub fn poll_action(&mut self) -> Option<WebSeedAction> {
        self.actions.pop_front()
    }

    /// The next event about the range, until `None`.
    pub fn poll_event(&mut self) -> Option<WebSeedEvent> {
        self.events.pop_front()
    }

    /// When to call [`WebSeed::handle_timeout`]: a connect, receive or idle deadline, or the
    /// end of the wait after a failure (when it can take a range again).
    pub fn poll_timeout(&self) -> Option<Time> {
        let retry =
            (!self.dropped && !self.running && self.retry_at > self.now).then_some(self.retry_at);
        match (self.deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- inputs ----

    /// Fetches `length` bytes of the torrent's data from `offset` (within `layout`); call only
    /// while [`WebSeed::is_ready`]. Its bytes come as [`WebSeedEvent::Data`], then
    /// [`WebSeedEvent::Done`] or [`WebSeedEvent::Failed`].
    pub fn start(&mut self, now: Time, layout: &Layout, offset: u64, length: u64) {
        self.now = self.now.max(now);
        if !self.is_ready(self.now) {
            return;
        }
        self.running = true;
        self.parts.clear();
        for seg in split_range(layout, offset, length) {
            match seg {
                Segment::Zeros(n) => self.parts.push_back(Part::Zeros(n)),
                Segment::Get {
                    file,
                    start,
                    length,
                } => match file_url(&self.url, layout, file) {
                    Ok(url) => self.parts.push_back(Part::Get {
                        url,
                        start,
                        length,
                        file_length: layout.files[file].length,
                    }),
                    Err(e) => {
                        // A URL that cannot name this torrent's files never will.
                        self.failures = MAX_FAILURES;
                        self.fail(e);
                        return;
                    }
                },
            }
        }
        self.advance();
    }

    /// A socket input for one of its connections (others' are ignored).
    pub fn handle_input(&mut self, now: Time, input: WebSeedInput<'_>) {
        self.now = self.now.max(now);
        if self.conn.as_ref().map(|c| c.id) != Some(input.conn()) {
            return;
        }
        match input {
            WebSeedInput::Connected { .. } => {
                if let Some(c) = self.conn.as_mut() {
                    c.connected = true;
                }
                self.advance();
            }
            WebSeedInput::ConnectFailed { why, .. } => {
                self.conn = None;
                if self.running {
                    self.fail(WebSeedError::ConnectFailed(why));
                }
            }
            WebSeedInput::Data { bytes, .. } => self.on_data(bytes),
            WebSeedInput::Closed { error, .. } => self.on_closed(error),
        }
    }

    /// Fires a due deadline; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        if self.deadline.is_none_or(|d| d > self.now) {
            return;
        }
        self.deadline = None;
        let connecting = self.conn.as_ref().is_some_and(|c| !c.connected);
        if self.exchange.as_ref().is_some_and(|x| x.sent) {
            self.fail(WebSeedError::ReceiveTimeout);
        } else if connecting && self.running {
            self.fail(WebSeedError::ConnectTimeout);
        } else if !self.running {
            self.close_conn();
        }
    }

    /// Data it sent failed `piece`'s hash check: counts as a failure (abandoning a range under
    /// way).
    pub fn hash_failed(&mut self, now: Time, piece: u32) {
        self.now = self.now.max(now);
        if self.dropped {
            return;
        }
        self.hash_failures += 1;
        self.fail(WebSeedError::HashFailed { piece });
    }

    /// Closes its connection when it has nothing to fetch (the download is complete).
    pub fn close_idle(&mut self) {
        if !self.running {
            self.deadline = None;
            self.close_conn();
        }
    }

    /// Stops everything: the range is abandoned without an event, the connection closed.
    pub fn shutdown(&mut self) {
        self.running = false;
        self.parts.clear();
        self.exchange = None;
        self.deadline = None;
        self.dropped = true;
        self.close_conn();
    }

    // ---- internals ----

    fn close_conn(&mut self) {
        if let Some(c) = self.conn.take() {
            self.actions
                .push_back(WebSeedAction::CloseTcp { conn: c.id });
        }
    }

    fn fail(&mut self, error: WebSeedError) {
        self.close_conn();
        self.parts.clear();
        self.exchange = None;
        self.deadline = None;
        self.running = false;
        self.failures += 1;
        self.dropped = self.failures >= MAX_FAILURES || self.hash_failures >= MAX_FAILURES;
        let doublings = self.failures.saturating_sub(1).min(10);
        let mut wait = BACKOFF_BASE * (1u32 << doublings);
        if let WebSeedError::Busy { retry_after, .. } = error {
            wait = wait.max(Duration::from_secs(retry_after).min(MAX_RETRY_AFTER));
        }
        self.retry_at = self.now + wait;
        self.events.push_back(WebSeedEvent::Failed {
            error,
            dropped: self.dropped,
        });
    }

    /// Moves the range on as far as it can go without the network.
    fn advance(&mut self) {
        while self.running {
            if self.exchange.is_none() {
                match self.parts.pop_front() {
                    None => {
                        self.running = false;
                        self.failures = 0;
                        self.deadline = self.conn.as_ref().map(|_| self.now + IDLE_TIMEOUT);
                        self.events.push_back(WebSeedEvent::Done);
                        return;
                    }
                    Some(Part::Zeros(n)) => {
                        self.events.push_back(WebSeedEvent::Zeros(n));
                        continue;
                    }
                    Some(Part::Get {
                        url,
                        start,
                        length,
                        file_length,
                    }) => {
                        self.exchange = Some(Exchange {
                            visited: vec![url.to_string()],
                            url,
                            start,
                            length,
                            file_length,
                            parser: Exchange::parser(),
                            sent: false,
                            head_checked: false,
                            got_bytes: false,
                            delivered: 0,
                            reused: false,
                            retried: false,
                        });
                    }
                }
            }
            let Some(x) = self.exchange.as_mut() else {
                return;
            };
            if x.sent {
                return;
            }
            match self.conn.as_mut() {
                Some(c) if c.serves(&x.url) && c.connected && !c.busy => {
                    c.busy = true;
                    x.sent = true;
                    x.reused = c.served > 0;
                    let last = x.start + x.length - 1;
                    let bytes = crate::tracker::http::range_request(&x.url, x.start, last);
                    self.actions
                        .push_back(WebSeedAction::SendTcp { conn: c.id, bytes });
                    self.deadline = Some(self.now + RECEIVE_TIMEOUT);
                    return;
                }
                Some(c) if c.serves(&x.url) && !c.connected => return,
                Some(_) => self.close_conn(),
                None => {
                    let id = ConnId(CONN_BASE + self.next_conn * MAX_WEB_SEEDS + self.index);
                    self.next_conn += 1;
                    let tls = x.url.scheme == Scheme::Https;
                    self.actions.push_back(WebSeedAction::OpenTcp {
                        conn: id,
                        host: x.url.host.clone(),
                        port: x.url.port,
                        tls,
                    });
                    self.conn = Some(Conn {
                        id,
                        host: x.url.host.clone(),
                        port: x.url.port,
                        tls,
                        connected: false,
                        busy: false,
                        served: 0,
                    });
                    self.deadline = Some(self.now + CONNECT_TIMEOUT);
                    return;
                }
            }
        }
    }

    fn on_data(&mut self, bytes: &[u8]) {
        let Some(x) = self.exchange.as_mut().filter(|x| x.sent) else {
            // Bytes nobody asked for on an idle connection: it is out of step, drop it.
            self.close_conn();
            self.deadline = None;
            return;
        };
        x.got_bytes = true;
        self.deadline = Some(self.now + RECEIVE_TIMEOUT);
        let fed = x.parser.feed(bytes);
        if let Err(e) = self.check_and_stream() {
            self.fail(e);
            return;
        }
        match fed {
            Err(e) => self.fail(WebSeedError::Http(e)),
            Ok(None) => {}
            Ok(Some(r)) => {
                let trailing = self
                    .exchange
                    .as_ref()
                    .is_some_and(|x| x.parser.had_trailing_bytes());
                self.on_response(r.status, r.location, r.body, !trailing);
            }
        }
    }

    /// Checks the head once it is known and hands on the body received so far.
    fn check_and_stream(&mut self) -> Result<(), WebSeedError> {
        let Some(x) = self.exchange.as_mut() else {
            return Ok(());
        };
        let Some(head) = x.parser.head().cloned() else {
            return Ok(());
        };
        if !x.head_checked {
            x.head_checked = true;
            check_head(&head, x.start, x.length, x.file_length)?;
        }
        if matches!(head.status, 200 | 206) {
            let body = x.parser.take_body();
            deliver(x, body, &mut self.received, &mut self.events)?;
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        status: u16,
        location: Option<String>,
        body: Vec<u8>,
        stream_in_step: bool,
    ) {
        let Some(x) = self.exchange.as_mut() else {
            return;
        };
        let keep = stream_in_step && x.parser.head().is_some_and(|h| h.keep_alive);
        if (300..400).contains(&status) {
            match redirect(x, location) {
                Ok(()) => {
                    let next = x.url.clone();
                    self.release_conn(keep && self.conn.as_ref().is_some_and(|c| c.serves(&next)));
                    self.advance();
                }
                Err(e) => self.fail(e),
            }
            return;
        }
        if let Err(e) = deliver(x, body, &mut self.received, &mut self.events) {
            self.fail(e);
            return;
        }
        if x.delivered != x.length {
            let e = WebSeedError::WrongLength {
                asked: x.length,
                got: x.delivered,
            };
            self.fail(e);
            return;
        }
        self.exchange = None;
        self.release_conn(keep);
        self.advance();
    }

    /// The request on the connection is over: keep the connection for the next, or close it.
    fn release_conn(&mut self, keep: bool) {
        if keep {
            if let Some(c) = self.conn.as_mut() {
                c.busy = false;
                c.served += 1;
            }
        } else {
            self.close_conn();
        }
    }

    fn on_closed(&mut self, error: Option<String>) {
        self.conn = None;
        let Some(x) = self.exchange.as_mut().filter(|x| x.sent) else {
            if !self.running {
                self.deadline = None;
            }
            // A connection closed while being opened for a part: open another.
            self.advance();
            return;
        };
        if error.is_none() && !x.got_bytes && x.reused && !x.retried {
            // The server closed the kept-alive connection as the request went out: once more.
            x.retried = true;
            x.sent = false;
            self.advance();
            return;
        }
        if error.is_some() {
            self.fail(WebSeedError::Closed(error));
            return;
        }
        match x.parser.handle_closed() {
            Ok(r) => {
                if let Err(e) = self.check_and_stream() {
                    self.fail(e);
                    return;
                }
                self.on_response(r.status, r.location, r.body, false);
            }
            Err(_) => self.fail(WebSeedError::Closed(None)),
        }
    }
}

/// The status and framing a web seed's response may have for bytes `start..start + length` of
/// a file of `file_length` bytes.
fn check_head(head: &Head, start: u64, length: u64, file_length: u64) -> Result<(), WebSeedError> {
    let last = start + length - 1;
    match head.status {
        206 => {
            let r = head.content_range;
            let right = r.is_some_and(|r| {
                r.first == start && r.last == last && r.total.is_none_or(|t| t == file_length)
            });
            if !right {
                return Err(WebSeedError::WrongRange {
                    asked: (start, last, file_length),
                    got: r,
                });
            }
        }
        200 if start == 0 && length == file_length => {}
        200 => return Err(WebSeedError::RangeIgnored),
        300..=399 => return Ok(()),
        code @ (429 | 503) if head.retry_after.is_some() => {
            return Err(WebSeedError::Busy {
                status: code,
                retry_after: head.retry_after.unwrap_or(0),
            });
        }
        code => return Err(WebSeedError::Status(code)),
    }
    match head.content_length {
        Some(n) if n != length => Err(WebSeedError::WrongLength {
            asked: length,
            got: n,
        }),
        _ => Ok(()),
    }
}

/// Hands on body bytes, refusing any beyond the range.
fn deliver(
    x: &mut Exchange,
    body: Vec<u8>,
    received: &mut u64,
    events: &mut VecDeque<WebSeedEvent>,
) -> Result<(), WebSeedError> {
    if body.is_empty() {
        return Ok(());
    }
    let total = x.delivered + body.len() as u64;
    if total > x.length {
        return Err(WebSeedError::WrongLength {
            asked: x.length,
            got: total,
        });
    }
    x.delivered = total;
    *received += body.len() as u64;
    events.push_back(WebSeedEvent::Data(body));
    Ok(())
}

/// Points the exchange at a redirect's target.
fn redirect(x: &mut Exchange, location: Option<String>) -> Result<(), WebSeedError> {
    let loc = location.ok_or_else(|| WebSeedError::BadRedirect("no Location".into()))?;
    if x.visited.len() > MAX_REDIRECTS {
        return Err(WebSeedError::BadRedirect(format!(
            "more than {MAX_REDIRECTS}"
        )));
    }
    let next = x
        .url
        .join(&loc)
        .map_err(|e| WebSeedError::BadUrl(e.to_string()))?;
    if next.scheme == Scheme::Udp {
        return Err(WebSeedError::BadUrl(format!("redirect to {next}")));
    }
    let key = next.to_string();
    if x.visited.contains(&key) {
        return Err(WebSeedError::BadRedirect(format!("loop at {key}")));
    }
    x.visited.push(key);
    x.url = next;
    x.parser = Exchange::parser();
    x.sent = false;
    x.head_checked = false;
    x.got_bytes = false;
    x.retried = false;
    Ok(())
}

#[cfg(test)]
mod tests;
