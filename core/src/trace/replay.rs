//! Reading traces and replaying them against a fresh session.

use std::fmt;
use std::io::Read;

use crate::session::Input;
use crate::time::Time;
use crate::torrent::{TorrentInput, TorrentTask, TrackerInput};

use super::codec::{self, Cursor, InputRecord};
use super::{ActionPrint, EventPrint, TraceHeader};

/// Why a trace could not be read. A divergence is not an error: see [`ReplayReport::divergence`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplayError {
    /// The data does not start with the trace magic.
    NotATrace,
    /// The trace was written by a format version this build does not read.
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// The trace ends inside a record (or its header).
    Truncated {
        /// The trace's length.
        offset: u64,
    },
    /// A record cannot be decoded.
    Corrupt {
        /// Byte offset where decoding failed.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// Reading the trace failed.
    Io(std::io::Error),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::NotATrace => f.write_str("not a kp-torrent trace (bad magic)"),
            ReplayError::UnsupportedVersion { version } => write!(
                f,
                "trace format version {version} is not supported (this build reads version {})",
                codec::VERSION
            ),
            ReplayError::Truncated { offset } => {
                write!(
                    f,
                    "trace is truncated: it ends inside a record at byte {offset}"
                )
            }
            ReplayError::Corrupt { offset, what } => {
                write!(f, "trace is corrupt at byte {offset}: {what}")
            }
            ReplayError::Io(e) => write!(f, "reading the trace failed: {e}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// One decoded record of a trace, with the byte offset where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceRecord<'a> {
    /// An input given to the session at `time`.
    Input {
        /// Byte offset of the record.
        offset: u64,
        /// Its index among the trace's inputs, from 0.
        index: u64,
        /// The input's virtual time.
        time: Time,
        /// The input.
        input: InputRecord<'a>,
    },
    /// An action the session returned.
    Action {
        /// Byte offset of the record.
        offset: u64,
        /// The action's fingerprint.
        action: ActionPrint,
    },
    /// An event the session returned.
    Event {
        /// Byte offset of the record.
        offset: u64,
        /// The event.
        event: EventPrint,
    },
    /// The end record: the recording finished cleanly.
    End {
        /// Byte offset of the record.
        offset: u64,
    },
}

/// Decodes a trace record by record (for tools and tests that inspect traces).
pub struct TraceReader<'a> {
    cursor: Cursor<'a>,
    header: TraceHeader,
    prev: Time,
    inputs: u64,
    done: bool,
}

impl fmt::Debug for TraceReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceReader")
            .field("offset", &self.cursor.offset())
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

impl<'a> TraceReader<'a> {
    /// Reads the header; records follow from [`TraceReader::next_record`].
    pub fn new(trace: &'a [u8]) -> Result<TraceReader<'a>, ReplayError> {
        let mut cursor = Cursor::new(trace);
        let header = cursor.header()?;
        Ok(TraceReader {
            cursor,
            prev: header.start,
            header,
            inputs: 0,
            done: false,
        })
    }

    /// The trace's header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// The offset of the next record.
    pub fn offset(&self) -> u64 {
        self.cursor.offset()
    }

    /// The next record; `Ok(None)` at the end of the data (after the end record, or where an
    /// unfinished trace stops).
    pub fn next_record(&mut self) -> Result<Option<TraceRecord<'a>>, ReplayError> {
        if self.done {
            return Ok(None);
        }
        let offset = self.cursor.offset();
        let Some(tag) = self.cursor.peek() else {
            self.done = true;
            return Ok(None);
        };
        let c = &mut self.cursor;
        c.u8()?;
        let rec = match tag {
            codec::END => {
                self.done = true;
                if !c.at_end() {
                    return Err(ReplayError::Corrupt {
                        offset: c.offset(),
                        what: "data after the end record",
                    });
                }
                TraceRecord::End { offset }
            }
            0x01..=0x1f => {
                let (time, input) = c.input(tag, self.prev)?;
                self.prev = time;
                let index = self.inputs;
                self.inputs += 1;
                TraceRecord::Input {
                    offset,
                    index,
                    time,
                    input,
                }
            }
            0x20..=0x3f => TraceRecord::Action {
                offset,
                action: c.action(tag)?,
            },
            _ => TraceRecord::Event {
                offset,
                event: c.event(tag)?,
            },
        };
        Ok(Some(rec))
    }

    /// Reads the next record only if it is an action.
    fn next_action(&mut self) -> Result<Option<ActionPrint>, ReplayError> {
        match self.cursor.peek() {
            Some(tag @ 0x20..=0x3f) => {
                self.cursor.u8()?;
                Ok(Some(self.cursor.action(tag)?))
            }
            _ => Ok(None),
        }
    }

    /// Reads the next record only if it is an event.
    fn next_event(&mut self) -> Result<Option<EventPrint>, ReplayError> {
        match self.cursor.peek() {
            Some(tag @ 0x40..=0x7f) => {
                self.cursor.u8()?;
                Ok(Some(self.cursor.event(tag)?))
            }
            _ => Ok(None),
        }
    }
}

/// A session output in a divergence report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An action.
    Action(ActionPrint),
    /// An event.
    Event(EventPrint),
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Action(a) => a.fmt(f),
            Output::Event(e) => e.fmt(f),
        }
    }
}

/// Where and how a replay first differed from the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Index of the input after which the outputs differ (from 0); `None` for the outputs the
    /// session queued when constructed.
    pub input: Option<u64>,
    /// The input, described in one line.
    pub input_desc: String,
    /// Index of the differing output among that input's actions (or events, for an event).
    pub index: u64,
    /// Byte offset in the trace of the expected record (of the next record when the recording
    /// had no more outputs there).
    pub offset: u64,
    /// What the recording holds there (`None`: the session returned more than was recorded).
    pub expected: Option<Output>,
    /// What the replayed session returned (`None`: it returned less).
    pub actual: Option<Output>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (&self.expected, &self.actual) {
            (Some(Output::Event(_)), _) | (None, Some(Output::Event(_))) => "event",
            _ => "action",
        };
        match self.input {
            None => write!(f, "diverged at start, {kind} {}", self.index)?,
            Some(i) => write!(f, "diverged after input {i}, {kind} {}", self.index)?,
        }
        writeln!(f, " (trace byte {}): {}", self.offset, self.input_desc)?;
        match &self.expected {
            Some(o) => writeln!(f, "  expected: {o}")?,
            None => writeln!(f, "  expected: nothing more")?,
        }
        match &self.actual {
            Some(o) => write!(f, "  actual:   {o}"),
            None => write!(f, "  actual:   nothing more"),
        }
    }
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Inputs replayed.
    pub inputs: u64,
    /// Actions compared and equal.
    pub actions: u64,
    /// Events compared and equal.
    pub events: u64,
    /// Bytes of received peer traffic replayed.
    pub received_bytes: u64,
    /// Bytes of blocks read from disk (to serve peers) replayed.
    pub read_bytes: u64,
    /// True when the trace ended with its end record (not cut short by a killed recorder).
    pub finished: bool,
    /// The first difference; `None` when the replay matched the recording throughout.
    pub divergence: Option<Divergence>,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} inputs, {} actions, {} events, {} bytes received, {} bytes read{}",
            self.inputs,
            self.actions,
            self.events,
            self.received_bytes,
            self.read_bytes,
            if self.finished {
                ""
            } else {
                " (unfinished trace)"
            }
        )?;
        match &self.divergence {
            None => write!(f, "; no divergence"),
            Some(d) => write!(f, "\n{d}"),
        }
    }
}

/// Replays a trace read to its end from `r`. See [`replay`].
pub fn replay_from<R: Read>(mut r: R) -> Result<ReplayReport, ReplayError> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).map_err(ReplayError::Io)?;
    replay(&buf)
}

/// Builds a fresh session from the trace's header, feeds it every recorded input and compares
/// its outputs with the recorded ones, stopping at the first divergence.
pub fn replay(trace: &[u8]) -> Result<ReplayReport, ReplayError> {
    let mut reader = TraceReader::new(trace)?;
    let events = reader.header.events;
    let mut session = reader.header.task();
    let mut report = ReplayReport {
        inputs: 0,
        actions: 0,
        events: 0,
        received_bytes: 0,
        read_bytes: 0,
        finished: false,
        divergence: None,
    };
    let mut input: Option<(u64, InputRecord<'_>, Time)> = None;
    loop {
        // The outputs after construction, then after each input.
        if let Some(d) = compare(&mut reader, &mut session, events, &mut report)? {
            let (index, desc) = match &input {
                None => (None, "the session's construction".to_owned()),
                Some((i, rec, t)) => (Some(*i), format!("{rec} at {t}")),
            };
            report.divergence = Some(Divergence {
                input: index,
                input_desc: desc,
                ..d
            });
            return Ok(report);
        }
        match reader.next_record()? {
            None => return Ok(report),
            Some(TraceRecord::End { .. }) => {
                report.finished = true;
                return Ok(report);
            }
            Some(TraceRecord::Input {
                index,
                time,
                input: rec,
                ..
            }) => {
                match rec.as_input() {
                    TorrentInput::Session(Input::Received { bytes, .. }) => {
                        report.received_bytes += bytes.len() as u64;
                    }
                    TorrentInput::Session(Input::ReadDone { data, .. }) => {
                        report.read_bytes += data.len() as u64;
                    }
                    _ => {}
                }
                report.inputs += 1;
                session.handle_input(time, rec.as_input());
                input = Some((index, rec, time));
            }
            Some(TraceRecord::Action { offset, .. } | TraceRecord::Event { offset, .. }) => {
                // `compare` consumed every output of the previous input; this one is out of place.
                return Err(ReplayError::Corrupt {
                    offset,
                    what: "output record out of order",
                });
            }
        }
    }
}

/// Drains the session after one input and checks its outputs against the next records.
fn compare(
    reader: &mut TraceReader<'_>,
    session: &mut TorrentTask,
    events: bool,
    report: &mut ReplayReport,
) -> Result<Option<Divergence>, ReplayError> {
    let mut index = 0;
    loop {
        let offset = reader.offset();
        let expected = reader.next_action()?;
        if expected.is_none() && reader.cursor.at_end() {
            // An unfinished trace (the recorder was killed) may stop among an input's outputs.
            return Ok(None);
        }
        let actual = session.poll_action();
        match (expected, actual) {
            (None, None) => break,
            (Some(e), Some(a)) if e.matches(&a) => {
                report.actions += 1;
                index += 1;
            }
            (e, a) => {
                return Ok(Some(Divergence {
                    input: None,
                    input_desc: String::new(),
                    index,
                    offset,
                    expected: e.map(Output::Action),
                    actual: a.as_ref().map(|a| Output::Action(ActionPrint::of(a))),
                }));
            }
        }
    }
    if !events {
        while session.poll_event().is_some() {}
        return Ok(None);
    }
    let mut index = 0;
    loop {
        let offset = reader.offset();
        let expected = reader.next_event()?;
        if expected.is_none() && reader.cursor.at_end() {
            return Ok(None);
        }
        let actual = session.poll_event().map(|e| EventPrint::of(&e));
        match (expected, actual) {
            (None, None) => return Ok(None),
            (Some(e), Some(a)) if e == a => {
                report.events += 1;
                index += 1;
            }
            (e, a) => {
                return Ok(Some(Divergence {
                    input: None,
                    input_desc: String::new(),
                    index,
                    offset,
                    expected: e.map(Output::Event),
                    actual: a.map(Output::Event),
                }));
            }
        }
    }
}

impl fmt::Display for InputRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let input = match self.as_input() {
            TorrentInput::Start { files, resume } => {
                return write!(
                    f,
                    "start: {} of {} files present, {}",
                    files.iter().filter(|s| s.is_some()).count(),
                    files.len(),
                    match resume {
                        Some(b) => format!("{} bytes of resume data", b.len()),
                        None => "no resume data".to_owned(),
                    }
                );
            }
            TorrentInput::Tracker(t) => {
                return match t {
                    TrackerInput::TcpConnected { conn } => {
                        write!(f, "tracker connection {} open", conn.0)
                    }
                    TrackerInput::TcpData { conn, bytes } => write!(
                        f,
                        "received {} bytes on tracker connection {}",
                        bytes.len(),
                        conn.0
                    ),
                    TrackerInput::TcpClosed { conn, error } => match error {
                        None => write!(f, "tracker connection {} closed", conn.0),
                        Some(e) => write!(f, "tracker connection {} broke: {e}", conn.0),
                    },
                    TrackerInput::ConnectFailed { conn, why } => {
                        write!(f, "tracker connection {} failed: {why}", conn.0)
                    }
                    TrackerInput::Resolved { tracker, addrs } => write!(
                        f,
                        "tracker {} resolved to {} addresses",
                        tracker.0,
                        addrs.len()
                    ),
                    TrackerInput::Datagram { from, bytes } => {
                        write!(f, "a {}-byte datagram from {from}", bytes.len())
                    }
                };
            }
            TorrentInput::Session(i) => i,
        };
        match input {
            Input::Timeout => f.write_str("timeout"),
            Input::Incoming { addr } => write!(f, "incoming connection from {addr}"),
            Input::Connected { peer } => write!(f, "{peer} connected"),
            Input::ConnectFailed { peer } => write!(f, "{peer} failed to connect"),
            Input::Received { peer, bytes } => {
                write!(f, "received {} bytes from {peer}", bytes.len())
            }
            Input::Closed { peer } => write!(f, "{peer} closed"),
            Input::WriteDone { piece, begin } => {
                write!(f, "write of piece {piece} at {begin} done")
            }
            Input::WriteFailed {
                piece,
                begin,
                error,
            } => write!(f, "write of piece {piece} at {begin} failed: {error}"),
            Input::ReadDone {
                peer,
                piece,
                begin,
                data,
            } => write!(
                f,
                "read of piece {piece} at {begin} for {peer} done ({} bytes)",
                data.len()
            ),
            Input::ReadFailed {
                peer,
                piece,
                begin,
                error,
            } => write!(
                f,
                "read of piece {piece} at {begin} for {peer} failed: {error}"
            ),
            Input::PieceHashed { piece, digest } => {
                write!(f, "piece {piece} hashed: {}", crate::id::to_hex(&digest))
            }
            Input::HashFailed { piece, error } => {
                write!(f, "piece {piece} could not be hashed: {error}")
            }
            Input::PeersDiscovered { addrs } => {
                write!(f, "{} peer addresses discovered", addrs.len())
            }
            Input::SelectFiles { wanted } => write!(
                f,
                "{} of {} files selected",
                wanted.iter().filter(|w| **w).count(),
                wanted.len()
            ),
            Input::Shutdown => f.write_str("shutdown"),
            Input::UploadSlots { slots } => write!(f, "{slots} upload slots"),
        }
    }
}
