//! The line format of WAL segments: encoding an entry, decoding and checking one, and
//! scanning a segment's bytes into valid entries and damaged pieces (with the message a
//! damaged piece names, when its header checksum still verifies). Pure functions over bytes:
//! no files here.

use super::WalError;
use crate::message::{DeadLetter, Record};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::Write;
use std::ops::Range;

/// How every entry line starts; used to find entries on a line that damage merged.
const LINE_START: &[u8] = br#"{"crc":""#;

/// One logged stream message: a record to store or a dead letter to record.
#[derive(Debug, Clone, PartialEq)]
pub enum WalEntry {
    Event(Record),
    Dead(DeadLetter),
}

impl WalEntry {
    pub fn stream_id(&self) -> i32 {
        match self {
            WalEntry::Event(r) => r.stream_id,
            WalEntry::Dead(d) => d.stream_id,
        }
    }

    pub fn seq(&self) -> i64 {
        match self {
            WalEntry::Event(r) => r.seq,
            WalEntry::Dead(d) => d.seq,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            WalEntry::Event(_) => "event",
            WalEntry::Dead(_) => "dead",
        }
    }

    /// Splits entries into the two lists `write_batch` takes, keeping their order.
    pub fn split(entries: impl IntoIterator<Item = WalEntry>) -> (Vec<Record>, Vec<DeadLetter>) {
        let mut records = Vec::new();
        let mut dead = Vec::new();
        for entry in entries {
            match entry {
                WalEntry::Event(r) => records.push(r),
                WalEntry::Dead(d) => dead.push(d),
            }
        }
        (records, dead)
    }
}

pub(super) fn header_crc(sid: i32, seq: i64) -> u32 {
    crc32fast::hash(format!("{sid}:{seq}").as_bytes())
}

/// Appends one entry line to `out`.
pub(super) fn encode(
    entry: &WalEntry,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), WalError> {
    scratch.clear();
    match entry {
        WalEntry::Event(r) => serde_json::to_writer(&mut *scratch, r)?,
        WalEntry::Dead(d) => serde_json::to_writer(&mut *scratch, d)?,
    }
    // A raw line break can only be whitespace between JSON tokens (strings escape theirs), so
    // it can become a space without changing the value, and the entry stays on one line.
    for b in scratch.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    let (sid, seq) = (entry.stream_id(), entry.seq());
    write!(
        out,
        r#"{{"crc":"{:08x}","sid":{sid},"seq":{seq},"hcrc":"{:08x}","kind":"{}","rec":"#,
        crc32fast::hash(scratch),
        header_crc(sid, seq),
        entry.kind(),
    )
    .map_err(serde_json::Error::io)?;
    out.extend_from_slice(scratch);
    out.extend_from_slice(b"}\n");
    Ok(())
}

#[derive(Deserialize)]
struct LineIn<'a> {
    crc: &'a str,
    sid: i32,
    seq: i64,
    hcrc: &'a str,
    kind: &'a str,
    #[serde(borrow)]
    rec: &'a RawValue,
}

fn parse_hex8(s: &[u8]) -> Option<u32> {
    if s.len() != 8 || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// Decodes the entry at the start of `bytes` if it is complete and every check passes;
/// returns it with the number of bytes it took.
pub(super) fn decode_prefix(bytes: &[u8]) -> Option<(WalEntry, usize)> {
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<LineIn<'_>>();
    let line = stream.next()?.ok()?;
    let end = stream.byte_offset();
    if parse_hex8(line.hcrc.as_bytes())? != header_crc(line.sid, line.seq) {
        return None;
    }
    let rec = line.rec.get();
    if parse_hex8(line.crc.as_bytes())? != crc32fast::hash(rec.as_bytes()) {
        return None;
    }
    let entry = match line.kind {
        "event" => WalEntry::Event(serde_json::from_str(rec).ok()?),
        "dead" => WalEntry::Dead(serde_json::from_str(rec).ok()?),
        _ => return None,
    };
    if entry.stream_id() != line.sid || entry.seq() != line.seq {
        return None;
    }
    Some((entry, end))
}

/// Reads `sid` and `seq` from the start of a damaged line, if its header checksum verifies.
/// Parsed by hand, because the rest of the line may not be JSON any more.
pub(super) fn salvage_header(bytes: &[u8]) -> Option<(i32, i64)> {
    fn int(b: &[u8]) -> Option<(i64, &[u8])> {
        let digits_from = usize::from(b.first() == Some(&b'-'));
        let len = digits_from
            + b.get(digits_from..)?
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
        let n = std::str::from_utf8(b.get(..len)?).ok()?.parse().ok()?;
        Some((n, b.get(len..)?))
    }
    let rest = bytes.trim_ascii_start().strip_prefix(LINE_START)?;
    let rest = rest.get(8..)?.strip_prefix(br#"","sid":"#)?;
    let (sid, rest) = int(rest)?;
    let (seq, rest) = int(rest.strip_prefix(br#","seq":"#)?)?;
    let rest = rest.strip_prefix(br#","hcrc":""#)?;
    let hcrc = parse_hex8(rest.get(..8)?)?;
    if rest.get(8) != Some(&b'"') {
        return None;
    }
    let sid = i32::try_from(sid).ok()?;
    (header_crc(sid, seq) == hcrc).then_some((sid, seq))
}

/// A damaged part of a line.
#[derive(Debug)]
pub(super) struct BadPiece {
    pub(super) line_no: u64,
    /// The damaged bytes.
    pub(super) range: Range<usize>,
    /// The whole physical line they are on (without its newline).
    pub(super) line: Range<usize>,
    pub(super) header: Option<(i32, i64)>,
}

impl BadPiece {
    pub(super) fn corrupt_entry(&self, segment: u64) -> super::CorruptEntry {
        super::CorruptEntry {
            segment,
            line_no: self.line_no,
            sid: self.header.map(|h| h.0),
            seq: self.header.map(|h| h.1),
        }
    }
}

/// What a segment's bytes hold.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Valid entries, with the range of their text.
    pub(super) valid: Vec<(WalEntry, Range<usize>)>,
    pub(super) bad: Vec<BadPiece>,
}

pub(super) fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut pos = 0;
    let mut line_no = 0u64;
    while pos < bytes.len() {
        line_no += 1;
        let (line_end, next) = match bytes[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (pos + i, pos + i + 1),
            None => (bytes.len(), bytes.len()),
        };
        let line = &bytes[pos..line_end];
        if next > line_end && line.starts_with(LINE_START) {
            if let Some((entry, len)) = decode_prefix(line) {
                if len == line.len() {
                    out.valid.push((entry, pos..line_end));
                    pos = next;
                    continue;
                }
            }
        }
        for fragment in salvage(line) {
            match fragment {
                Fragment::Valid(entry, r) => out.valid.push((entry, pos + r.start..pos + r.end)),
                Fragment::Bad(r) => out.bad.push(BadPiece {
                    line_no,
                    header: salvage_header(&line[r.clone()]),
                    range: pos + r.start..pos + r.end,
                    line: pos..line_end,
                }),
            }
        }
        pos = next;
    }
    out
}

enum Fragment {
    Valid(WalEntry, Range<usize>),
    Bad(Range<usize>),
}

/// Splits a line that is not one valid entry into the valid entries on it and the damaged
/// parts around them. A damaged newline merges two lines into one; both entries survive.
fn salvage(line: &[u8]) -> Vec<Fragment> {
    let mut out = Vec::new();
    let mut bad_from = 0;
    let mut search = 0;
    while let Some(c) = find(line, LINE_START, search) {
        // Inside a valid entry, `{"crc":"` can only start a nested object in a payload, which
        // JSON puts after ':', ',' or '['. Skipping those keeps a damaged entry's payload from
        // being mistaken for an entry of its own.
        let nested = line[..c]
            .trim_ascii_end()
            .last()
            .is_some_and(|b| matches!(b, b':' | b',' | b'['));
        if !nested {
            if let Some((entry, len)) = decode_prefix(&line[c..]) {
                push_bad(&mut out, line, bad_from..c);
                out.push(Fragment::Valid(entry, c..c + len));
                bad_from = c + len;
                search = c + len;
                continue;
            }
        }
        search = c + 1;
    }
    push_bad(&mut out, line, bad_from..line.len());
    out
}

fn push_bad(out: &mut Vec<Fragment>, line: &[u8], r: Range<usize>) {
    // Blank space between entries is not damage worth reporting.
    if !line[r.clone()].trim_ascii().is_empty() {
        out.push(Fragment::Bad(r));
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| from + i)
}
