//! Body for the trace reader and replayer (`kp-torrent replay` on an untrusted file).

use kp_torrent_core::time::Time;
use kp_torrent_core::trace::{
    EventPrint, InputRecord, TraceReader, TraceRecord, TraceWriter, replay,
};

use super::formats::check_message;

/// Input: a trace file (seeds are real recordings and their prefixes).
///
/// Checks: reading never panics and record offsets only grow; every record prints; the header,
/// inputs and events re-written with [`TraceWriter`] read back equal; replaying the trace (a
/// fresh session fed every recorded input) never panics, and its errors and report print as one
/// line or a well-formed report.
pub fn trace(data: &[u8]) {
    let mut reader = match TraceReader::new(data) {
        Ok(r) => r,
        Err(e) => {
            check_message(&e);
            assert!(
                replay(data).is_err(),
                "replay accepts a header the reader refuses"
            );
            return;
        }
    };
    let header = reader.header().clone();
    let mut writer = TraceWriter::new(Vec::new(), &header);
    let mut kept: Vec<Kept<'_>> = Vec::new();
    let mut last = None;
    let mut clean_end = false;
    loop {
        let offset = reader.offset();
        assert!(
            last.is_none_or(|l| offset > l),
            "offset went from {last:?} to {offset}"
        );
        last = Some(offset);
        match reader.next_record() {
            Ok(None) => {
                clean_end = true;
                break;
            }
            Ok(Some(rec)) => match rec {
                TraceRecord::Input { time, input, .. } => {
                    let _ = input.to_string();
                    writer.input(time, &input.as_input());
                    kept.push(Kept::Input(time, input));
                }
                TraceRecord::Action { action, .. } => {
                    let _ = action.to_string();
                }
                TraceRecord::Event { event, .. } => {
                    let _ = event.to_string();
                    if header.events {
                        writer.event_print(&event);
                        kept.push(Kept::Event(event));
                    }
                }
                TraceRecord::End { offset: at } => {
                    assert!(at < data.len() as u64);
                }
            },
            Err(e) => {
                check_message(&e);
                break;
            }
        }
    }
    if clean_end {
        assert!(
            matches!(reader.next_record(), Ok(None)),
            "records after the end"
        );
    }

    let written = writer.finish().expect("writing to a Vec cannot fail");
    let mut back = TraceReader::new(&written).expect("a trace we wrote reads back");
    assert_eq!(
        format!("{:?}", back.header()),
        format!("{header:?}"),
        "the header changes when re-written"
    );
    for k in &kept {
        match (back.next_record(), k) {
            (Ok(Some(TraceRecord::Input { time, input, .. })), Kept::Input(t, i)) => {
                assert_eq!((time, &input), (*t, i), "an input changes when re-written");
            }
            (Ok(Some(TraceRecord::Event { event, .. })), Kept::Event(e)) => {
                assert_eq!(&event, e, "an event changes when re-written");
            }
            (got, want) => panic!("re-written trace gives {got:?}, expected {want:?}"),
        }
    }
    assert!(matches!(
        back.next_record(),
        Ok(Some(TraceRecord::End { .. }))
    ));
    assert!(matches!(back.next_record(), Ok(None)));

    match replay(data) {
        Ok(report) => {
            let _ = report.to_string();
            if let Some(d) = &report.divergence {
                let _ = d.to_string();
            }
        }
        Err(e) => check_message(&e),
    }
}

#[derive(Debug)]
enum Kept<'a> {
    Input(Time, InputRecord<'a>),
    Event(EventPrint),
}
