use super::*;

fn single(name: &str, length: u64) -> Layout {
    Layout {
        name: name.into(),
        multi_file: false,
        files: vec![LayoutFile {
            path: Vec::new(),
            offset: 0,
            length,
            padding: false,
        }],
    }
}

/// `name/` with files of these (path, length, padding), back to back.
fn multi(name: &str, files: &[(&[&str], u64, bool)]) -> Layout {
    let mut offset = 0;
    let files = files
        .iter()
        .map(|(path, length, padding)| {
            let f = LayoutFile {
                path: path.iter().map(|p| p.to_string()).collect(),
                offset,
                length: *length,
                padding: *padding,
            };
            offset += length;
            f
        })
        .collect();
    Layout {
        name: name.into(),
        multi_file: true,
        files,
    }
}

fn url_of(base: &str, layout: &Layout, file: usize) -> String {
    file_url(base, layout, file).unwrap().to_string()
}

#[test]
fn single_file_url_rule() {
    let l = single("a b#ü.iso", 10);
    assert_eq!(url_of("http://h/f.iso", &l, 0), "http://h:80/f.iso");
    assert_eq!(
        url_of("http://h:8080/dir/", &l, 0),
        "http://h:8080/dir/a%20b%23%C3%BC.iso"
    );
    // A file URL may carry a query; a folder URL may not (the name would land in it).
    assert_eq!(
        url_of("https://h/get?id=7", &l, 0),
        "https://h:443/get?id=7"
    );
    assert!(matches!(
        file_url("http://h/dir/?x=1/", &l, 0),
        Err(WebSeedError::BadUrl(_))
    ));
}

#[test]
fn multi_file_url_rule() {
    let l = multi("My Album", &[(&["CD 1", "01 ü&x.flac"], 5, false)]);
    let want = "http://h:80/d/My%20Album/CD%201/01%20%C3%BC%26x.flac";
    assert_eq!(url_of("http://h/d/", &l, 0), want);
    // Without the trailing slash one is added.
    assert_eq!(url_of("http://h/d", &l, 0), want);
    assert!(matches!(
        file_url("http://h/d?x", &l, 0),
        Err(WebSeedError::BadUrl(_))
    ));
    assert!(matches!(
        file_url("http://h/d/", &l, 3),
        Err(WebSeedError::BadUrl(_))
    ));
    assert!(matches!(
        WebSeed::new(0, "udp://h:1/"),
        Err(WebSeedError::BadUrl(_))
    ));
    assert!(WebSeed::new(0, "ftp://h/").is_err());
    assert!(WebSeed::new(MAX_WEB_SEEDS, "http://h/").is_err());
}

#[test]
fn ranges_split_across_files_padding_and_empty_files() {
    let l = multi(
        "t",
        &[
            (&["a"], 10, false),
            (&["empty"], 0, false),
            (&["b"], 5, false),
            (&[".pad", "3"], 3, true),
            (&["c"], 20, false),
        ],
    );
    let get = |file, start, length| Segment::Get {
        file,
        start,
        length,
    };
    assert_eq!(
        split_range(&l, 8, 20),
        vec![get(0, 8, 2), get(2, 0, 5), Segment::Zeros(3), get(4, 0, 10)]
    );
    assert_eq!(split_range(&l, 0, 10), vec![get(0, 0, 10)]);
    assert_eq!(split_range(&l, 11, 2), vec![get(2, 1, 2)]);
    assert_eq!(split_range(&l, 30, 100), vec![get(4, 12, 8)]);
    assert_eq!(split_range(&l, 38, 5), vec![]);
    assert_eq!(split_range(&l, 5, 0), vec![]);
}

#[test]
fn layout_from_metadata_drops_the_name_from_paths() {
    use crate::metainfo::TorrentSpec;
    let spec = TorrentSpec {
        name: "top".into(),
        piece_length: 16384,
        files: vec![
            (vec!["d".into(), "x.bin".into()], 3),
            (vec!["y.bin".into()], 4),
        ],
        piece_hashes: vec![[0; 20]],
        trackers: Vec::new(),
        private: false,
        comment: None,
        created_by: None,
        creation_date: None,
        url_list: Vec::new(),
    };
    let l = Layout::from_metadata(&spec.info_bytes()).unwrap();
    assert_eq!(
        l,
        multi(
            "top",
            &[(&["d", "x.bin"], 3, false), (&["y.bin"], 4, false)]
        )
    );
    assert_eq!(Layout::from_metadata(b""), None);
    // The torrent's own names, not the sanitized ones the files are stored under; `..`, `.` and
    // empty components are left out, the rest is percent-encoded in the URL.
    let odd = TorrentSpec {
        name: "top?".into(),
        files: vec![
            (
                vec!["..".into(), "d:".into(), "".into(), "x?.bin".into()],
                3,
            ),
            (vec!["a/b".into()], 4),
        ],
        ..spec.clone()
    };
    let l = Layout::from_metadata(&odd.info_bytes()).unwrap();
    assert_eq!(l.name, "top?");
    assert_eq!(l.files[0].path, ["d:", "x?.bin"]);
    assert_eq!(
        url_of("http://w/", &l, 0),
        "http://w:80/top%3F/d%3A/x%3F.bin"
    );
    assert_eq!(url_of("http://w/", &l, 1), "http://w:80/top%3F/a%2Fb");
    assert_eq!(Layout::from_metadata(b"d3:fooi1ee"), None);
}

#[test]
fn conn_ids_name_their_web_seed() {
    assert_eq!(conn_owner(ConnId(7)), None);
    let mut ws = WebSeed::new(3, "http://h/f").unwrap();
    ws.start(Time::ZERO, &single("f", 10), 0, 10);
    let Some(WebSeedAction::OpenTcp { conn, .. }) = ws.poll_action() else {
        panic!("no connection opened");
    };
    assert_eq!(conn_owner(conn), Some(3));
}

/// A web seed under test and what it asked for.
struct Harness {
    ws: WebSeed,
    now: Time,
    data: Vec<u8>,
    done: u32,
    failed: Vec<(WebSeedError, bool)>,
    /// Connections opened: (id, host, port).
    opened: Vec<(ConnId, String, u16)>,
    /// Requests sent, as text, with their connection.
    sent: Vec<(ConnId, String)>,
    closed: Vec<ConnId>,
}

impl Harness {
    fn new(url: &str) -> Harness {
        Harness {
            ws: WebSeed::new(0, url).unwrap(),
            now: Time::ZERO,
            data: Vec::new(),
            done: 0,
            failed: Vec::new(),
            opened: Vec::new(),
            sent: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(a) = self.ws.poll_action() {
            match a {
                WebSeedAction::OpenTcp {
                    conn, host, port, ..
                } => self.opened.push((conn, host, port)),
                WebSeedAction::SendTcp { conn, bytes } => {
                    self.sent.push((conn, String::from_utf8(bytes).unwrap()))
                }
                WebSeedAction::CloseTcp { conn } => self.closed.push(conn),
            }
        }
        while let Some(e) = self.ws.poll_event() {
            match e {
                WebSeedEvent::Data(d) => self.data.extend(d),
                WebSeedEvent::Zeros(n) => self.data.extend(vec![0; n as usize]),
                WebSeedEvent::Done => self.done += 1,
                WebSeedEvent::Failed { error, dropped } => self.failed.push((error, dropped)),
            }
        }
    }

    fn start(&mut self, layout: &Layout, offset: u64, length: u64) {
        self.ws.start(self.now, layout, offset, length);
        self.drain();
    }

    fn input(&mut self, input: WebSeedInput<'_>) {
        self.ws.handle_input(self.now, input);
        self.drain();
    }

    fn last_conn(&self) -> ConnId {
        self.opened.last().unwrap().0
    }

    fn connect(&mut self) {
        let conn = self.last_conn();
        self.input(WebSeedInput::Connected { conn });
    }

    /// Feeds `raw` to the last connection in pieces of `step` bytes.
    fn reply(&mut self, raw: &[u8], step: usize) {
        let conn = self.last_conn();
        for part in raw.chunks(step.max(1)) {
            self.input(WebSeedInput::Data { conn, bytes: part });
        }
    }

    fn close(&mut self, error: Option<&str>) {
        let conn = self.last_conn();
        self.input(WebSeedInput::Closed {
            conn,
            error: error.map(str::to_string),
        });
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.ws.handle_timeout(self.now);
        self.drain();
    }
}

fn partial(body: &[u8], first: u64, total: u64, extra: &str) -> Vec<u8> {
    let last = first + body.len() as u64 - 1;
    let mut r = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
         Content-Range: bytes {first}-{last}/{total}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn a_range_over_two_files_is_two_gets_on_one_kept_alive_connection() {
    let l = multi("t", &[(&["a"], 10, false), (&["b c"], 10, false)]);
    for step in [1, 3, 1000] {
        let mut h = Harness::new("http://w.example:8000/seed/");
        h.start(&l, 6, 8);
        assert_eq!(h.opened.len(), 1);
        assert_eq!(h.opened[0].1, "w.example");
        assert_eq!(h.opened[0].2, 8000);
        assert!(
            h.sent.is_empty(),
            "nothing is sent before the connection opens"
        );
        h.connect();
        assert_eq!(h.sent.len(), 1);
        let req = &h.sent[0].1;
        assert!(req.starts_with("GET /seed/t/a HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nRange: bytes=6-9\r\n"), "{req}");
        h.reply(&partial(b"6789", 6, 10, ""), step);
        assert_eq!(h.sent.len(), 2, "the second file's request follows at once");
        assert_eq!(h.sent[1].0, h.sent[0].0, "on the same connection");
        assert!(h.sent[1].1.starts_with("GET /seed/t/b%20c HTTP/1.1\r\n"));
        assert!(h.sent[1].1.contains("Range: bytes=0-3\r\n"));
        assert_eq!(h.done, 0);
        h.reply(&partial(b"ABCD", 0, 10, ""), step);
        assert_eq!(h.data, b"6789ABCD");
        assert_eq!((h.done, h.failed.len()), (1, 0));
        assert!(h.closed.is_empty());
        // The next range reuses the connection.
        h.start(&l, 0, 2);
        assert_eq!(h.opened.len(), 1);
        assert_eq!(h.sent.len(), 3);
        // Nothing to do for a minute: the connection is closed.
        h.reply(&partial(b"01", 0, 10, ""), step);
        assert_eq!(h.done, 2);
        h.advance(IDLE_TIMEOUT.as_secs());
        assert_eq!(h.closed, vec![h.opened[0].0]);
        assert_eq!(h.ws.poll_timeout(), None);
        assert_eq!(h.ws.received(), 10);
    }
}

#[test]
fn connection_close_and_padding() {
    let l = multi(
        "t",
        &[(&["a"], 4, false), (&[".pad"], 4, true), (&["b"], 4, false)],
    );
    let mut h = Harness::new("http://w/");
    h.start(&l, 2, 8);
    h.connect();
    h.reply(&partial(b"cd", 2, 4, "Connection: close\r\n"), 7);
    // Not kept: closed, a new one opened for the next file; the padding came as zeros.
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.opened.len(), 2);
    assert_eq!(h.data, b"cd\0\0\0\0");
    h.connect();
    assert!(h.sent[1].1.contains("Range: bytes=0-1\r\n"));
    h.reply(&partial(b"ef", 0, 4, ""), 7);
    assert_eq!(h.data, b"cd\0\0\0\0ef");
    assert_eq!(h.done, 1);
}

#[test]
fn whole_file_may_come_as_200_but_a_part_may_not() {
    let l = single("f", 5);
    let mut h = Harness::new("http://w/f");
    h.start(&l, 0, 5);
    h.connect();
    h.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 2);
    assert_eq!((h.data.as_slice(), h.done), (&b"hello"[..], 1));

    let mut h = Harness::new("http://w/f");
    h.start(&l, 1, 3);
    h.connect();
    h.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 2);
    assert_eq!(h.failed, vec![(WebSeedError::RangeIgnored, false)]);
    assert!(
        h.data.is_empty(),
        "no byte of a wrong response is delivered"
    );
    assert_eq!(h.closed.len(), 1);
}

/// The error a response to a request for bytes 2..6 of a 10-byte file ends in.
fn error_of(raw: &[u8], close: bool) -> WebSeedError {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    h.start(&l, 2, 4);
    h.connect();
    h.reply(raw, 3);
    if close {
        h.close(None);
    }
    assert_eq!(h.done, 0, "{}", String::from_utf8_lossy(raw));
    assert_eq!(h.failed.len(), 1, "{}", String::from_utf8_lossy(raw));
    h.failed[0].0.clone()
}

#[test]
fn responses_are_checked() {
    assert_eq!(
        error_of(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!",
            false
        ),
        WebSeedError::Status(404)
    );
    assert_eq!(
        error_of(b"HTTP/1.1 503 Busy\r\n\r\n", false),
        WebSeedError::Status(503)
    );
    assert!(matches!(
        error_of(
            b"HTTP/1.1 206 P\r\nContent-Length: 4\r\nContent-Range: bytes 3-6/10\r\n\r\nabcd",
            false
        ),
        WebSeedError::WrongRange {
            asked: (2, 5, 10),
            got: Some(_)
        }
    ));
    // The file on the server is not the torrent's size.
    assert!(matches!(
        error_of(
            b"HTTP/1.1 206 P\r\nContent-Length: 4\r\nContent-Range: bytes 2-5/11\r\n\r\nabcd",
            false
        ),
        WebSeedError::WrongRange { .. }
    ));
    assert!(matches!(
        error_of(b"HTTP/1.1 206 P\r\nContent-Length: 4\r\n\r\nabcd", false),
        WebSeedError::WrongRange { got: None, .. }
    ));
    assert_eq!(
        error_of(
            b"HTTP/1.1 206 P\r\nContent-Length: 9\r\nContent-Range: bytes 2-5/10\r\n\r\nabcd",
            false
        ),
        WebSeedError::WrongLength { asked: 4, got: 9 }
    );
    // A chunked body longer than asked is cut off at once.
    assert_eq!(
        error_of(
            b"HTTP/1.1 206 P\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes 2-5/10\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n",
            false
        ),
        WebSeedError::WrongLength { asked: 4, got: 6 }
    );
    // Short bodies: chunked that ends early, a body until close that stops short, a close
    // in the middle of a Content-Length body.
    assert_eq!(
        error_of(
            b"HTTP/1.1 206 P\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes 2-5/10\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            false
        ),
        WebSeedError::WrongLength { asked: 4, got: 2 }
    );
    assert_eq!(
        error_of(
            b"HTTP/1.1 206 P\r\nConnection: close\r\nContent-Range: bytes 2-5/10\r\n\r\nab",
            true
        ),
        WebSeedError::WrongLength { asked: 4, got: 2 }
    );
    assert_eq!(
        error_of(
            b"HTTP/1.1 206 P\r\nContent-Length: 4\r\nContent-Range: bytes 2-5/10\r\n\r\nab",
            true
        ),
        WebSeedError::Closed(None)
    );
    assert!(matches!(
        error_of(b"SSH-2.0-OpenSSH\r\n\r\n", false),
        WebSeedError::Http(_)
    ));
    // Endless headers stop at the head limit.
    let mut endless = b"HTTP/1.1 206 P\r\n".to_vec();
    for _ in 0..2000 {
        endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaa\r\n");
    }
    assert!(matches!(error_of(&endless, false), WebSeedError::Http(_)));
    let text = WebSeedError::WrongRange {
        asked: (2, 5, 10),
        got: None,
    }
    .to_string();
    assert!(text.contains("2-5/10"), "{text}");
}

#[test]
fn a_body_until_close_completes_on_close() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    h.start(&l, 2, 4);
    h.connect();
    h.reply(
        b"HTTP/1.0 206 P\r\nContent-Range: bytes 2-5/10\r\n\r\nabcd",
        2,
    );
    assert_eq!(h.done, 0);
    h.close(None);
    assert_eq!((h.data.as_slice(), h.done), (&b"abcd"[..], 1));
    assert!(h.failed.is_empty());
}

#[test]
fn bytes_after_the_response_spoil_the_connection() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    h.start(&l, 2, 4);
    h.connect();
    let mut raw = partial(b"abcd", 2, 10, "");
    raw.extend_from_slice(b"junk");
    h.reply(&raw, 1000);
    assert_eq!(h.done, 1);
    assert_eq!(h.closed.len(), 1, "not reused");
    h.start(&l, 0, 1);
    assert_eq!(h.opened.len(), 2);
}

#[test]
fn redirects_are_followed_and_bounded() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    h.start(&l, 2, 4);
    h.connect();
    h.reply(
        b"HTTP/1.1 302 Found\r\nLocation: http://mirror:81/x/f\r\nContent-Length: 0\r\n\r\n",
        5,
    );
    assert_eq!(h.closed.len(), 1, "another host: another connection");
    assert_eq!(h.opened[1].1, "mirror");
    assert_eq!(h.opened[1].2, 81);
    h.connect();
    assert!(
        h.sent[1]
            .1
            .starts_with("GET /x/f HTTP/1.1\r\nHost: mirror:81\r\n")
    );
    assert!(h.sent[1].1.contains("Range: bytes=2-5\r\n"));
    // Same host, empty body: the connection carries the redirected request.
    h.reply(
        b"HTTP/1.1 307 T\r\nLocation: /y/f\r\nContent-Length: 0\r\n\r\n",
        5,
    );
    assert_eq!(h.opened.len(), 2);
    assert!(h.sent[2].1.starts_with("GET /y/f HTTP/1.1\r\n"));
    h.reply(&partial(b"abcd", 2, 10, ""), 5);
    assert_eq!((h.data.as_slice(), h.done), (&b"abcd"[..], 1));

    // A loop, too many, none.
    let mut h = Harness::new("http://w/f");
    h.start(&l, 2, 4);
    h.connect();
    h.reply(
        b"HTTP/1.1 301 M\r\nLocation: /g\r\nContent-Length: 0\r\n\r\n",
        5,
    );
    h.reply(
        b"HTTP/1.1 301 M\r\nLocation: /f\r\nContent-Length: 0\r\n\r\n",
        5,
    );
    assert!(matches!(h.failed[0].0, WebSeedError::BadRedirect(_)));
    let mut h = Harness::new("http://w/f");
    h.start(&l, 2, 4);
    h.connect();
    for i in 0..=MAX_REDIRECTS {
        let r = format!("HTTP/1.1 302 F\r\nLocation: /r{i}\r\nContent-Length: 0\r\n\r\n");
        h.reply(r.as_bytes(), 100);
    }
    assert_eq!(h.sent.len(), MAX_REDIRECTS + 1);
    assert!(matches!(h.failed[0].0, WebSeedError::BadRedirect(_)));
    assert_eq!(
        error_of(b"HTTP/1.1 302 F\r\nContent-Length: 0\r\n\r\n", false),
        WebSeedError::BadRedirect("no Location".into())
    );
    assert!(matches!(
        error_of(b"HTTP/1.1 302 F\r\nLocation: udp://t:1/\r\n\r\n", false),
        WebSeedError::BadUrl(_)
    ));
}

#[test]
fn failures_back_off_doubling_and_drop_the_seed() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    let mut waits = Vec::new();
    for round in 0..MAX_FAILURES {
        assert!(h.ws.is_ready(h.now), "round {round}");
        h.start(&l, 0, 4);
        let conn = h.last_conn();
        h.input(WebSeedInput::ConnectFailed {
            conn,
            why: "refused".into(),
        });
        let (err, dropped) = h.failed.last().cloned().unwrap();
        assert_eq!(err, WebSeedError::ConnectFailed("refused".into()));
        if round + 1 == MAX_FAILURES {
            assert!(dropped && h.ws.is_dropped());
            assert_eq!(h.ws.poll_timeout(), None);
            break;
        }
        assert!(!dropped);
        let at = h.ws.poll_timeout().unwrap();
        waits.push(at.saturating_since(h.now).as_secs());
        h.now = Time::from_nanos(at.as_nanos() - 1_000_000);
        assert!(!h.ws.is_ready(h.now));
        h.now = at;
    }
    assert_eq!(waits, [30, 60, 120, 240]);
    // A dropped seed takes nothing.
    h.start(&l, 0, 4);
    assert_eq!(h.opened.len(), MAX_FAILURES as usize);
}

#[test]
fn a_busy_server_is_waited_for_as_long_as_it_asks_within_an_hour() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    // (status, Retry-After) -> the wait: the normal backoff (30 s, then 60 s, ...) or the
    // server's wish when longer, cut at an hour; an HTTP date is not read.
    let cases: [(&str, &str, u64); 4] = [
        ("503", "Retry-After: 300\r\n", 300),
        ("429", "Retry-After: 5\r\n", 60),
        ("503", "Retry-After: 86400\r\n", 3600),
        ("503", "Retry-After: Fri, 31 Dec 1999 23:59:59 GMT\r\n", 240),
    ];
    for (round, (status, header, wait)) in cases.into_iter().enumerate() {
        assert!(h.ws.is_ready(h.now), "round {round}");
        h.start(&l, 0, 4);
        h.connect();
        h.reply(
            format!("HTTP/1.1 {status} Busy\r\n{header}Content-Length: 0\r\n\r\n").as_bytes(),
            7,
        );
        let (err, dropped) = h.failed.last().cloned().unwrap();
        assert!(!dropped);
        match (round, &err) {
            (3, WebSeedError::Status(503)) => {}
            (_, WebSeedError::Busy { retry_after, .. }) => {
                assert!(err.to_string().contains("retry after"), "{err}");
                assert!(*retry_after > 0);
            }
            other => panic!("round {round}: {other:?}"),
        }
        let at = h.ws.poll_timeout().unwrap();
        assert_eq!(at.saturating_since(h.now).as_secs(), wait, "round {round}");
        h.now = at;
    }
}

#[test]
fn a_completed_range_resets_the_count_but_hash_failures_add_up() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    for _ in 0..MAX_FAILURES - 1 {
        h.start(&l, 0, 2);
        h.connect();
        h.reply(b"HTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\n", 100);
        h.now = h.ws.poll_timeout().unwrap();
    }
    h.start(&l, 0, 2);
    h.connect();
    h.reply(&partial(b"ab", 0, 10, ""), 100);
    assert_eq!(h.done, 1);
    h.start(&l, 0, 2);
    h.reply(b"HTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\n", 100);
    assert_eq!(h.failed.last().unwrap().0, WebSeedError::Status(500));
    assert_eq!(
        h.ws.poll_timeout(),
        Some(h.now + BACKOFF_BASE),
        "counting from one again"
    );
    assert!(!h.ws.is_dropped());
    // Hash failures: dropped after MAX_FAILURES however many ranges succeed between them.
    let mut h = Harness::new("http://w/f");
    for n in 1..=MAX_FAILURES {
        h.now = h.ws.poll_timeout().unwrap_or(h.now);
        h.start(&l, 0, 2);
        h.connect();
        h.reply(&partial(b"ab", 0, 10, ""), 100);
        assert_eq!(h.done, n);
        h.ws.hash_failed(h.now, 0);
        h.drain();
        let (err, dropped) = h.failed.last().cloned().unwrap();
        assert_eq!(err, WebSeedError::HashFailed { piece: 0 });
        assert_eq!(dropped, n == MAX_FAILURES);
        assert_eq!(h.closed.len(), n as usize, "its connection is closed");
    }
}

#[test]
fn timeouts() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    h.start(&l, 0, 2);
    assert_eq!(h.ws.poll_timeout(), Some(h.now + CONNECT_TIMEOUT));
    h.advance(CONNECT_TIMEOUT.as_secs() - 1);
    assert!(h.failed.is_empty(), "an early call does nothing");
    h.advance(1);
    assert_eq!(h.failed[0].0, WebSeedError::ConnectTimeout);
    assert_eq!(h.closed.len(), 1);

    let mut h = Harness::new("http://w/f");
    h.start(&l, 0, 4);
    h.connect();
    h.advance(20);
    h.reply(
        b"HTTP/1.1 206 P\r\nContent-Length: 4\r\nContent-Range: bytes 0-3/10\r\n\r\na",
        100,
    );
    h.advance(20);
    assert!(h.failed.is_empty(), "each byte moves the deadline");
    h.advance(RECEIVE_TIMEOUT.as_secs());
    assert_eq!(h.failed[0].0, WebSeedError::ReceiveTimeout);
    assert_eq!(h.data, b"a");
}

#[test]
fn a_kept_alive_connection_closed_under_a_new_request_is_retried_once() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    h.start(&l, 0, 2);
    h.connect();
    h.reply(&partial(b"ab", 0, 10, ""), 100);
    h.start(&l, 2, 2);
    assert_eq!(h.sent.len(), 2);
    h.close(None);
    assert!(h.failed.is_empty());
    assert_eq!(h.opened.len(), 2, "a new connection for the same request");
    h.connect();
    assert!(h.sent[2].1.contains("Range: bytes=2-3\r\n"));
    // Closed again before a byte: now it is a failure.
    h.close(None);
    assert_eq!(h.failed[0].0, WebSeedError::Closed(None));
    // A connection that breaks is a failure at once.
    let mut h = Harness::new("http://w/f");
    h.start(&l, 0, 2);
    h.connect();
    h.close(Some("reset"));
    assert_eq!(h.failed[0].0, WebSeedError::Closed(Some("reset".into())));
}

#[test]
fn stale_and_unasked_input_is_harmless() {
    let l = single("f", 10);
    let mut h = Harness::new("http://w/f");
    h.input(WebSeedInput::Data {
        conn: ConnId(CONN_BASE),
        bytes: b"HTTP/1.1 200 OK\r\n\r\n",
    });
    assert!(h.data.is_empty() && h.failed.is_empty());
    h.start(&l, 0, 2);
    h.connect();
    h.reply(&partial(b"ab", 0, 10, ""), 100);
    // Bytes on the idle connection: it is closed, nothing is reported.
    h.reply(b"surprise", 100);
    assert_eq!(h.closed.len(), 1);
    assert_eq!((h.done, h.failed.len()), (1, 0));
    h.input(WebSeedInput::Connected { conn: ConnId(5) });
    h.shutdown_and_check();
}

impl Harness {
    fn shutdown_and_check(&mut self) {
        self.ws.shutdown();
        self.drain();
        assert!(self.ws.is_dropped());
        assert_eq!(self.ws.poll_timeout(), None);
    }
}

/// Whatever a server sends (a random status, headers, lengths, ranges, body, split anywhere,
/// closed or not), the machine never panics, never hands on more than the range it asked for,
/// and ends the range with exactly one `Done` (all bytes delivered) or `Failed`.
#[test]
fn garbage_from_the_server_never_panics_or_overflows_the_range() {
    fn prop(
        status: u16,
        cl: Option<u16>,
        cr: Option<(u16, u16)>,
        body: Vec<u8>,
        split: u8,
        close: bool,
        chunked: bool,
    ) -> bool {
        let l = multi("t", &[(&["a"], 700, false), (&["b"], 300, false)]);
        let mut h = Harness::new("http://w/");
        h.start(&l, 650, 100);
        h.connect();
        let status = [200, 206, 206, 301, 404, 503, status % 1000][usize::from(split % 7)];
        let mut raw = format!("HTTP/1.1 {status} X\r\n");
        if let Some(n) = cl {
            raw += &format!("Content-Length: {}\r\n", n % 200);
        }
        if let Some((a, b)) = cr {
            raw += &format!("Content-Range: bytes {}-{}/700\r\n", a % 800, b % 800);
        }
        if chunked {
            raw += "Transfer-Encoding: chunked\r\n";
        }
        if status == 301 {
            raw += "Location: /elsewhere\r\n";
        }
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&body);
        h.reply(&raw, usize::from(split).max(1));
        if close {
            h.close(None);
        }
        // Whatever is left (a redirect, the second file) times out at worst.
        for _ in 0..3 {
            h.advance(120);
        }
        let ended = h.done + h.failed.len() as u32;
        h.data.len() <= 100 && ended >= 1 && (h.done == 0 || h.data.len() == 100)
    }
    quickcheck::QuickCheck::new()
        .rng(quickcheck::Gen::from_size_and_seed(200, 0x7765_6273))
        .tests(2000)
        .quickcheck(
            prop as fn(u16, Option<u16>, Option<(u16, u16)>, Vec<u8>, u8, bool, bool) -> bool,
        );
}
