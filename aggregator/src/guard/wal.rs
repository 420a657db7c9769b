//! The write-ahead log: where a batch goes when Postgres cannot take it, so its messages can
//! still be acknowledged without being lost.
//!
//! When the circuit breaker is open (or a batch has used up its retries) a worker appends the
//! batch here and acknowledges the JetStream messages only after [`Wal::append`] has returned,
//! that is after the bytes are fsynced. The health monitor later replays the log through the
//! same idempotent batch write (`store::batch::write_batch`, keyed by `(stream_id, seq)`).
//!
//! # Format
//!
//! `WAL_PATH` is a directory of segment files `wal-<20-digit segment number>.jsonl`, numbered
//! upwards. Only the newest segment ("active") is appended to; the others are "sealed". Each
//! line is one entry, readable with `less`:
//!
//! ```text
//! {"crc":"1c291ca3","sid":3,"seq":1042,"hcrc":"c7bcaca4","kind":"event","rec":{...}}
//! ```
//!
//! * `rec` is the [`Record`] (`kind` `event`) or [`DeadLetter`] (`kind` `dead`) as JSON, on one
//!   line (an event payload keeps the text it was sent with; a raw newline in it, which JSON
//!   only allows as insignificant whitespace, is written as a space).
//! * `crc` is the CRC-32 of the exact bytes of `rec`, in 8 lowercase hex digits.
//! * `hcrc` is the CRC-32 of the ASCII text `"<sid>:<seq>"`. It lets recovery trust `sid` and
//!   `seq` even when the body is damaged, so the aggregator can fetch that message again from
//!   JetStream by sequence.
//!
//! `quarantine.jsonl` in the same directory receives every damaged line, verbatim, for an
//! operator to inspect. It is never read back.
//!
//! # Durability
//!
//! * One [`Wal::append`] call is one `write` of the whole batch and one `fdatasync`, never one
//!   per record: the fsync is what costs, and the caller acknowledges a batch as a whole.
//! * A new segment file is followed by an fsync of the directory, so the file's entry survives
//!   a power cut along with its data.
//! * Appends that would take the log past `max_total_bytes` write nothing and fail with
//!   [`WalError::Full`]; the caller then stops acknowledging and pulling (backpressure) rather
//!   than dropping anything.
//! * A segment is deleted only after the replayer has committed every record in it to Postgres.
//!   Deleting earlier would lose acknowledged messages if the process died before the commit;
//!   deleting later is harmless, because replaying a committed record again changes nothing.
//!
//! # One process per directory
//!
//! [`Wal::open`] takes an exclusive lock on `LOCK` in the directory and holds it for the
//! life of the [`Wal`]: a second process given the same `WAL_PATH` (a copy-pasted compose
//! file, two replicas on one volume) fails to open it instead of replaying and deleting
//! segments the first one is still appending to.
//!
//! # Recovery
//!
//! Nothing acknowledged may be dropped while a copy of it can still be had from the stream,
//! so damage is never cut away before its message is safe elsewhere:
//! * [`Wal::open`] scans every segment, oldest first, and never panics or gives up on a
//!   damaged file. It changes one thing only: the newest segment (the one being appended to
//!   when the process stopped) may end in a torn tail, what a crash during an append leaves;
//!   those bytes were never fsynced, so their messages were never acknowledged. The part of
//!   it that names no message (no intact header) is copied to the quarantine and cut off
//!   with `set_len` + fsync. Older segments were sealed with an fsync and cannot have a torn
//!   tail: damage there, even on the last line, is damage to acknowledged records.
//! * Everything else that is damaged stays in its segment until replay: [`Wal::read_segment`]
//!   reports each damaged piece (bad JSON, a checksum mismatch, a record that no longer
//!   decodes) with `sid`/`seq` when `hcrc` verifies, and the replayer fetches those messages
//!   again from the stream. Only once the segment's records (recovered ones included) are
//!   committed are its damaged lines copied to the quarantine and the segment deleted. If the
//!   stream cannot be asked right now, the segment waits; if it no longer holds the message
//!   (or the header is damaged too), the loss is reported loudly. If damage merged two lines
//!   (a flipped newline), each complete entry on the line is still kept.
//! * Appends after `open` go to a new segment, never after a repaired tail of an old one.
//!
//! All file work is blocking `std::fs`: callers run it on `spawn_blocking` behind a mutex.

use crate::store::batch::{DeadLetter, Record};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Name of the file that collects damaged lines for inspection.
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";
/// Name of the lock file held by the process using the directory.
pub const LOCK_FILE: &str = "LOCK";

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".jsonl";
const TMP_SUFFIX: &str = ".tmp";
const SEGMENT_DIGITS: usize = 20;
/// How every entry line starts; used to find entries on a line that damage merged.
const LINE_START: &[u8] = br#"{"crc":""#;
/// Append buffers bigger than this are not kept for reuse.
const KEEP_BUFFER_BYTES: usize = 4 << 20;

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

    fn kind(&self) -> &'static str {
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

/// What one [`Wal::append`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Entries written (0 for an empty append).
    pub records: usize,
    /// Bytes written.
    pub bytes: u64,
    /// The segment written to (`None` for an empty append).
    pub segment: Option<u64>,
    /// Whether the previous active segment was full and sealed first.
    pub rotated: bool,
}

/// A damaged line found while reading a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptEntry {
    pub segment: u64,
    /// 1-based line number in the segment as it was read.
    pub line_no: u64,
    /// Stream id and sequence from the line's header, only when its `hcrc` verifies.
    pub sid: Option<i32>,
    pub seq: Option<i64>,
}

/// What [`Wal::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments kept (empty ones are deleted).
    pub segments: usize,
    /// Entries to replay in them: valid ones plus damaged pieces whose header names their
    /// message.
    pub records: u64,
    /// Their total size after repair.
    pub bytes: u64,
    /// Bytes cut off the newest segment's torn tail.
    pub truncated_tail_bytes: u64,
    /// Damaged pieces left in place for replay to recover.
    pub corrupt: Vec<CorruptEntry>,
}

/// A damaged piece of a segment, as read for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// Where it is, and the message it names when its header verifies.
    pub at: CorruptEntry,
    /// The whole physical line it is on, for the quarantine.
    pub line: Vec<u8>,
}

/// The entries of one segment, for replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentRead {
    pub entries: Vec<WalEntry>,
    /// Damaged pieces, in file order.
    pub damaged: Vec<Damaged>,
}

/// Size of the log, kept in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Sum of the segment file sizes.
    pub bytes: u64,
    /// Valid entries in all segments.
    pub records: u64,
    pub segments: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("WAL is full: {bytes} bytes in use, limit {max} bytes")]
    Full { bytes: u64, max: u64 },
    #[error(
        "{} is in use by another aggregator process (each replica needs its own WAL_PATH)",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("cannot serialize a WAL entry: {0}")]
    Serialize(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct SegmentMeta {
    bytes: u64,
    records: u64,
}

#[derive(Debug)]
struct Active {
    number: u64,
    file: File,
}

/// The write-ahead log. See the module documentation.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    /// Held (exclusively locked) for the life of the value.
    _lock: File,
    segment_max_bytes: u64,
    max_total_bytes: u64,
    segments: BTreeMap<u64, SegmentMeta>,
    active: Option<Active>,
    next_segment: u64,
    bytes: u64,
    records: u64,
    /// Reused serialization buffers.
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering every segment in it.
    ///
    /// A segment reaching `segment_max_bytes` is sealed before the next append; appends that
    /// would take the log past `max_total_bytes` fail with [`WalError::Full`].
    pub fn open(
        dir: &Path,
        segment_max_bytes: u64,
        max_total_bytes: u64,
    ) -> Result<(Wal, Recovery), WalError> {
        let existed = dir.is_dir();
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if !existed {
            // Make the new directory's own entry durable, or its segments could vanish with it.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }
        let lock = lock_dir(dir)?;

        let mut numbers = Vec::new();
        let mut dir_changed = false;
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = parse_segment_name(name) {
                numbers.push(n);
            } else if name
                .strip_suffix(TMP_SUFFIX)
                .and_then(parse_segment_name)
                .is_some()
            {
                // A rewrite that crashed before its rename: the original is intact.
                let path = item.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
                dir_changed = true;
            }
        }
        numbers.sort_unstable();

        let mut recovery = Recovery::default();
        let mut segments = BTreeMap::new();
        let newest = numbers.last().copied();
        for &n in &numbers {
            let meta = recover_segment(dir, n, Some(n) == newest, &mut recovery)?;
            if meta.bytes == 0 {
                // Nothing to replay, and appends never go to an old segment.
                let path = segment_path(dir, n);
                fs::remove_file(&path).map_err(io_err(&path))?;
                dir_changed = true;
            } else {
                segments.insert(n, meta);
            }
        }
        if dir_changed {
            sync_dir(dir)?;
        }

        recovery.segments = segments.len();
        recovery.records = segments.values().map(|m| m.records).sum();
        recovery.bytes = segments.values().map(|m| m.bytes).sum();
        let wal = Wal {
            dir: dir.to_path_buf(),
            _lock: lock,
            segment_max_bytes,
            max_total_bytes,
            segments,
            active: None,
            next_segment: numbers.last().map_or(1, |n| n.saturating_add(1)),
            bytes: recovery.bytes,
            records: recovery.records,
            buf: Vec::new(),
            scratch: Vec::new(),
        };
        Ok((wal, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `entries` with one write and one fsync. When this returns `Ok`, they are
    /// durable and their messages may be acknowledged. On `Err` nothing may be acknowledged.
    pub fn append(&mut self, entries: &[WalEntry]) -> Result<AppendOutcome, WalError> {
        if entries.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = self.append_buffered(entries, &mut buf);
        if buf.capacity() <= KEEP_BUFFER_BYTES {
            self.buf = buf;
        }
        result
    }

    fn append_buffered(
        &mut self,
        entries: &[WalEntry],
        buf: &mut Vec<u8>,
    ) -> Result<AppendOutcome, WalError> {
        for entry in entries {
            encode(entry, &mut self.scratch, buf)?;
        }
        let len = buf.len() as u64;
        if self.bytes.saturating_add(len) > self.max_total_bytes {
            return Err(WalError::Full {
                bytes: self.bytes,
                max: self.max_total_bytes,
            });
        }

        let mut rotated = false;
        if let Some(active) = &self.active {
            let size = self.segments.get(&active.number).map_or(0, |m| m.bytes);
            if size >= self.segment_max_bytes {
                self.close_active()?;
                rotated = true;
            }
        }
        if self.active.is_none() {
            self.create_segment()?;
        }
        let Some(active) = self.active.as_mut() else {
            // create_segment either sets the active segment or fails.
            return Err(WalError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no active WAL segment"),
            });
        };
        let number = active.number;
        let meta = self.segments.entry(number).or_default();
        let before = meta.bytes;

        if let Err(source) = active
            .file
            .write_all(buf)
            .and_then(|()| active.file.sync_data())
        {
            // Leave no half-written batch behind, and never write to this file again: after a
            // failed fsync the page cache no longer tells what is on disk.
            let rolled_back = active
                .file
                .set_len(before)
                .and_then(|()| active.file.sync_data());
            let size = match rolled_back {
                Ok(()) => before,
                Err(_) => active.file.metadata().map_or(before, |m| m.len()),
            };
            meta.bytes = size;
            self.bytes = self.bytes - before + size;
            self.active = None;
            let path = segment_path(&self.dir, number);
            tracing::error!(segment = number, path = %path.display(), error = %source,
                "WAL append failed; the batch is not durable");
            return Err(WalError::Io { path, source });
        }
        meta.bytes += len;
        meta.records += entries.len() as u64;
        self.bytes += len;
        self.records += entries.len() as u64;
        Ok(AppendOutcome {
            records: entries.len(),
            bytes: len,
            segment: Some(number),
            rotated,
        })
    }

    /// Seals the active segment if it holds anything, so that everything written so far is in
    /// [`Wal::sealed_segments`]. The next append starts a new segment.
    pub fn seal(&mut self) -> Result<(), WalError> {
        let has_records = self.active.as_ref().is_some_and(|a| {
            self.segments
                .get(&a.number)
                .is_some_and(|m| m.records > 0 || m.bytes > 0)
        });
        if has_records {
            self.close_active()?;
        }
        Ok(())
    }

    /// Sealed segment numbers, oldest first.
    pub fn sealed_segments(&self) -> Vec<u64> {
        let active = self.active.as_ref().map(|a| a.number);
        self.segments
            .keys()
            .copied()
            .filter(|&n| Some(n) != active)
            .collect()
    }

    /// Reads a segment's entries in order. Damaged pieces are reported, not fatal.
    pub fn read_segment(&self, segment: u64) -> Result<SegmentRead, WalError> {
        let path = segment_path(&self.dir, segment);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let scan = scan(&bytes);
        Ok(SegmentRead {
            entries: scan.valid.into_iter().map(|(entry, _)| entry).collect(),
            damaged: scan
                .bad
                .iter()
                .map(|b| Damaged {
                    at: b.corrupt_entry(segment),
                    line: bytes[b.line.clone()].to_vec(),
                })
                .collect(),
        })
    }

    /// Copies damaged lines to the quarantine file (fsynced), each line once.
    pub fn quarantine(&mut self, damaged: &[Damaged]) -> Result<(), WalError> {
        let mut out = Vec::new();
        let mut last = None;
        for d in damaged {
            if last == Some((d.at.segment, d.at.line_no)) {
                continue;
            }
            last = Some((d.at.segment, d.at.line_no));
            out.extend_from_slice(&d.line);
            out.push(b'\n');
        }
        if out.is_empty() {
            return Ok(());
        }
        append_quarantine(&self.dir, &out)
    }

    /// Deletes a sealed segment. Call only once every record in it is committed.
    pub fn remove_segment(&mut self, segment: u64) -> Result<(), WalError> {
        let path = segment_path(&self.dir, segment);
        if self.active.as_ref().is_some_and(|a| a.number == segment) {
            return Err(WalError::Io {
                path,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the active WAL segment cannot be removed; seal it first",
                ),
            });
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            // Already gone: removing is idempotent.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        sync_dir(&self.dir)?;
        if let Some(meta) = self.segments.remove(&segment) {
            self.bytes -= meta.bytes;
            self.records -= meta.records;
        }
        Ok(())
    }

    pub fn stats(&self) -> WalStats {
        WalStats {
            bytes: self.bytes,
            records: self.records,
            segments: self.segments.len(),
        }
    }

    /// True when there is nothing to replay.
    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.bytes == 0
    }

    fn close_active(&mut self) -> Result<(), WalError> {
        if let Some(active) = self.active.take() {
            active
                .file
                .sync_data()
                .map_err(io_err(&segment_path(&self.dir, active.number)))?;
        }
        Ok(())
    }

    fn create_segment(&mut self) -> Result<(), WalError> {
        let number = self.next_segment;
        self.next_segment = number.saturating_add(1);
        let path = segment_path(&self.dir, number);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // Make the new file's directory entry durable before anything in it is acknowledged.
        sync_dir(&self.dir)?;
        self.segments.insert(number, SegmentMeta::default());
        self.active = Some(Active { number, file });
        Ok(())
    }
}

fn segment_name(n: u64) -> String {
    format!(
        "{SEGMENT_PREFIX}{n:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(segment_name(n))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn header_crc(sid: i32, seq: i64) -> u32 {
    crc32fast::hash(format!("{sid}:{seq}").as_bytes())
}

/// Appends one entry line to `out`.
fn encode(entry: &WalEntry, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), WalError> {
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
fn decode_prefix(bytes: &[u8]) -> Option<(WalEntry, usize)> {
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
fn salvage_header(bytes: &[u8]) -> Option<(i32, i64)> {
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
struct BadPiece {
    line_no: u64,
    /// The damaged bytes.
    range: Range<usize>,
    /// The whole physical line they are on (without its newline).
    line: Range<usize>,
    header: Option<(i32, i64)>,
}

impl BadPiece {
    fn corrupt_entry(&self, segment: u64) -> CorruptEntry {
        CorruptEntry {
            segment,
            line_no: self.line_no,
            sid: self.header.map(|h| h.0),
            seq: self.header.map(|h| h.1),
        }
    }
}

/// What a segment's bytes hold.
#[derive(Debug, Default)]
struct Scan {
    /// Valid entries, with the range of their text.
    valid: Vec<(WalEntry, Range<usize>)>,
    bad: Vec<BadPiece>,
}

fn scan(bytes: &[u8]) -> Scan {
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

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| from + i)
}

/// Recovers one segment at open: reports damage (left in place for replay), cuts the newest
/// segment's torn tail, and returns what is left in the segment.
fn recover_segment(
    dir: &Path,
    segment: u64,
    newest: bool,
    recovery: &mut Recovery,
) -> Result<SegmentMeta, WalError> {
    let path = segment_path(dir, segment);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let scan = scan(&bytes);
    // Only the newest segment can end in a torn append. Its tail is cut after the last line
    // that holds something knowable (a valid entry, or a damaged one whose header names its
    // message, which replay fetches again): what follows names nothing that could be saved.
    let keep_to = if newest {
        let knowable_end = scan
            .valid
            .iter()
            .map(|(_, r)| r.end)
            .chain(
                scan.bad
                    .iter()
                    .filter(|b| b.header.is_some())
                    .map(|b| b.range.end),
            )
            .max();
        match knowable_end {
            None => 0,
            Some(end) => match bytes[end..].iter().position(|&b| b == b'\n') {
                Some(i) => end + i + 1,
                None => bytes.len(),
            },
        }
    } else {
        bytes.len()
    };
    let mut records = scan.valid.len() as u64;
    for bad in scan.bad.iter().filter(|b| b.range.start < keep_to) {
        let at = bad.corrupt_entry(segment);
        tracing::warn!(segment, line_no = at.line_no, sid = ?at.sid, seq = ?at.seq, path = %path.display(),
            "damaged WAL line; replay will fetch its message from the stream");
        // A damaged piece that names its message is a record to replay; one that names
        // nothing is only bytes (replay reports it lost).
        records += u64::from(at.seq.is_some());
        recovery.corrupt.push(at);
    }
    let tail = &bytes[keep_to..];
    if !tail.is_empty() {
        tracing::warn!(segment, bytes = tail.len(), path = %path.display(),
            "torn WAL tail cut off (never fsynced, so never acknowledged)");
        if !tail.trim_ascii().is_empty() {
            let mut quarantined = tail.to_vec();
            if !tail.ends_with(b"\n") {
                quarantined.push(b'\n');
            }
            append_quarantine(dir, &quarantined)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(keep_to as u64)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&path))?;
        recovery.truncated_tail_bytes += tail.len() as u64;
    }
    Ok(SegmentMeta {
        bytes: keep_to as u64,
        records,
    })
}

/// Takes the directory's lock file, exclusively, without waiting.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

fn append_quarantine(dir: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let path = dir.join(QUARANTINE_FILE);
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_data())
        .map_err(io_err(&path))?;
    if !existed {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{Event, Limits};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "aggregator-wal-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const BIG: u64 = 1 << 30;

    fn event(seq: i64) -> WalEntry {
        let payload = serde_json::json!({
            "battery_charge_percent": 85.5,
            "storage_usage_mb": 45000.0 + seq as f64,
            "signal_strength_dbm": -55.0,
            "is_anomaly": seq % 7 == 0,
        });
        let event = Event::new(
            "telemetry.satellite.status",
            format!("0190f0c2-0000-7000-8000-{seq:012}"),
            "2026-11-23T10:30:45.123Z",
            "SAT-0001",
            &payload,
            &Limits::default(),
        )
        .unwrap();
        WalEntry::Event(Record {
            stream_id: 3,
            seq,
            event,
            traceparent: None,
        })
    }

    fn dead(seq: i64) -> WalEntry {
        WalEntry::Dead(DeadLetter {
            stream_id: 3,
            seq,
            subject: "events.bad".into(),
            raw: vec![0, 159, 146, 150, b'\n', b'{'],
            raw_size: 6,
            reason: "body: invalid UTF-8\nand \"quotes\"".into(),
        })
    }

    fn events(seqs: Range<i64>) -> Vec<WalEntry> {
        seqs.map(event).collect()
    }

    /// Every entry in the log, oldest first.
    fn all_entries(wal: &Wal) -> Vec<WalEntry> {
        wal.segments
            .keys()
            .flat_map(|&n| wal.read_segment(n).unwrap().entries)
            .collect()
    }

    fn segment_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                parse_segment_name(name.to_str().unwrap()).is_some()
            })
            .count()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut segs: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        assert_eq!(segs.len(), 1, "{segs:?}");
        segs.remove(0)
    }

    /// Byte offset of the start of 1-based line `line_no`.
    fn line_start(bytes: &[u8], line_no: usize) -> usize {
        if line_no == 1 {
            return 0;
        }
        bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(line_no - 2)
            .unwrap()
            .0
            + 1
    }

    fn quarantine(dir: &Path) -> Vec<u8> {
        fs::read(dir.join(QUARANTINE_FILE)).unwrap_or_default()
    }

    /// Writes 10 events in one segment, lets `damage` change the file, and reopens.
    fn damaged(name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> (TempDir, Vec<u8>, Recovery) {
        let tmp = TempDir::new(name);
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        wal.append(&events(1..11)).unwrap();
        drop(wal);
        let path = only_segment(tmp.path());
        let original = fs::read(&path).unwrap();
        let mut bytes = original.clone();
        damage(&mut bytes);
        fs::write(&path, &bytes).unwrap();
        let (_, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        (tmp, original, recovery)
    }

    #[test]
    fn append_and_reopen_round_trips_events_and_dead_letters() {
        let tmp = TempDir::new("roundtrip");
        let (mut wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery, Recovery::default());
        assert!(wal.is_empty());
        let mut written = events(1..6);
        written.push(dead(6));
        written.push(event(7));
        let outcome = wal.append(&written).unwrap();
        assert_eq!(outcome.records, 7);
        assert_eq!(outcome.segment, Some(1));
        assert!(!outcome.rotated);
        let more = vec![dead(8), event(9)];
        wal.append(&more).unwrap();
        written.extend(more);
        let stats = wal.stats();
        drop(wal);

        let (wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery.segments, 1);
        assert_eq!(recovery.records, 9);
        assert_eq!(recovery.bytes, stats.bytes);
        assert_eq!(recovery.truncated_tail_bytes, 0);
        assert!(recovery.corrupt.is_empty());
        assert_eq!(wal.stats(), stats);
        assert_eq!(all_entries(&wal), written);
        let (records, dead) = WalEntry::split(written);
        assert_eq!((records.len(), dead.len()), (7, 2));
    }

    #[test]
    fn lines_are_readable_json_with_both_checksums() {
        let tmp = TempDir::new("format");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        wal.append(&[event(42)]).unwrap();
        let path = only_segment(tmp.path());
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            "wal-00000000000000000001.jsonl"
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["sid"], 3);
        assert_eq!(v["seq"], 42);
        assert_eq!(v["kind"], "event");
        assert_eq!(v["hcrc"], format!("{:08x}", crc32fast::hash(b"3:42")));
        let rec_start = text.find(r#""rec":"#).unwrap() + 6;
        let rec = &text[rec_start..text.len() - 2];
        assert_eq!(v["crc"], format!("{:08x}", crc32fast::hash(rec.as_bytes())));
        let WalEntry::Event(record) = event(42) else {
            unreachable!()
        };
        assert_eq!(v["rec"], serde_json::to_value(&record).unwrap());
    }

    #[test]
    fn payload_with_raw_newlines_stays_on_one_line() {
        let tmp = TempDir::new("newlines");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        let sent = br#"{"topic":"a.b","event_id":"x","timestamp":"2026-11-23T10:30:45Z",
            "source":"s","payload":{
              "k": "v\nw",
              "n": [1,
                    2]}}"#;
        let sent_event = Event::from_json(sent, &Limits::default()).unwrap();
        assert!(sent_event.payload_json().contains('\n'));
        let record = Record {
            stream_id: 1,
            seq: 1,
            event: sent_event,
            traceparent: None,
        };
        wal.append(&[WalEntry::Event(record.clone()), event(2)])
            .unwrap();
        drop(wal);
        let text = fs::read_to_string(only_segment(tmp.path())).unwrap();
        assert_eq!(text.lines().count(), 2);
        let (wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery.records, 2);
        let entries = all_entries(&wal);
        let WalEntry::Event(read) = &entries[0] else {
            panic!("expected an event")
        };
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            json(read.event.payload_json()),
            json(record.event.payload_json())
        );
        assert_eq!(read.event.event_id(), "x");
        assert_eq!(entries[1], event(2));
    }

    #[test]
    fn empty_append_is_a_no_op() {
        let tmp = TempDir::new("empty");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(wal.append(&[]).unwrap(), AppendOutcome::default());
        assert_eq!(wal.stats(), WalStats::default());
        assert_eq!(segment_files(tmp.path()), 0);
    }

    #[test]
    fn segments_rotate_by_size() {
        let tmp = TempDir::new("rotate");
        // Every append after the first finds the active segment at or over 1 byte.
        let (mut wal, _) = Wal::open(tmp.path(), 1, BIG).unwrap();
        for i in 0..10 {
            let outcome = wal.append(&events(i * 5..i * 5 + 5)).unwrap();
            assert_eq!(outcome.segment, Some(i as u64 + 1));
            assert_eq!(outcome.rotated, i > 0);
        }
        let stats = wal.stats();
        assert_eq!(stats.segments, 10);
        assert_eq!(stats.records, 50);
        let on_disk: u64 = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(stats.bytes, on_disk);
        assert_eq!(wal.sealed_segments(), (1..10).collect::<Vec<_>>());
        for n in 1..=10 {
            assert_eq!(wal.read_segment(n).unwrap().entries.len(), 5);
        }
        drop(wal);

        let (wal, recovery) = Wal::open(tmp.path(), 1, BIG).unwrap();
        assert_eq!((recovery.segments, recovery.records), (10, 50));
        assert_eq!(all_entries(&wal), events(0..50));

        // A roomy limit keeps one segment.
        let tmp = TempDir::new("rotate-big");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        for i in 0..10 {
            wal.append(&events(i * 5..i * 5 + 5)).unwrap();
        }
        assert_eq!((wal.stats().segments, wal.stats().records), (1, 50));
    }

    #[test]
    fn full_wal_rejects_the_append_and_writes_nothing() {
        let tmp = TempDir::new("full");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        let batch_bytes = wal.append(&events(0..10)).unwrap().bytes;
        drop(wal);
        let max = batch_bytes * 3 / 2;
        let (mut wal, _) = Wal::open(tmp.path(), BIG, max).unwrap();
        let before = wal.stats();
        match wal.append(&events(10..20)) {
            Err(WalError::Full { bytes, max: m }) => {
                assert_eq!(bytes, batch_bytes);
                assert_eq!(m, max);
            }
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(wal.stats(), before);
        assert_eq!(segment_files(tmp.path()), 1);
        // A smaller batch still fits.
        wal.append(&events(10..11)).unwrap();
        drop(wal);
        let (wal, recovery) = Wal::open(tmp.path(), BIG, max).unwrap();
        assert_eq!(recovery.records, 11);
        assert_eq!(all_entries(&wal), events(0..11));
    }

    /// The one damaged piece `read_segment` reports for segment `n`.
    fn damaged_pieces(wal: &Wal, n: u64) -> Vec<CorruptEntry> {
        wal.read_segment(n)
            .unwrap()
            .damaged
            .into_iter()
            .map(|d| d.at)
            .collect()
    }

    #[test]
    fn torn_tail_naming_no_message_is_cut_off_and_complete_records_kept() {
        let tmp = TempDir::new("torn");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        for i in 0..3 {
            wal.append(&events(i * 10..i * 10 + 10)).unwrap();
        }
        drop(wal);
        let path = only_segment(tmp.path());
        let bytes = fs::read(&path).unwrap();
        // Cut inside the last line's header: nothing in what is left names a message.
        let last_line = line_start(&bytes, 30);
        let cut = last_line + 20;
        fs::write(&path, &bytes[..cut]).unwrap();

        let (mut wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery.records, 29);
        assert_eq!(recovery.truncated_tail_bytes, (cut - last_line) as u64);
        assert!(recovery.corrupt.is_empty());
        assert_eq!(fs::read(&path).unwrap(), &bytes[..last_line]);
        assert_eq!(
            quarantine(tmp.path()),
            [&bytes[last_line..cut], b"\n"].concat()
        );
        assert_eq!(all_entries(&wal), events(0..29));

        // Later appends go to a new segment and survive a reopen.
        let outcome = wal.append(&events(29..35)).unwrap();
        assert_eq!(outcome.segment, Some(2));
        drop(wal);
        let (wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery.truncated_tail_bytes, 0);
        assert_eq!(recovery.records, 35);
        assert_eq!(all_entries(&wal), events(0..35));
    }

    #[test]
    fn torn_tail_with_an_intact_header_is_kept_for_replay_to_fetch_again() {
        let tmp = TempDir::new("torn-header");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        wal.append(&events(1..11)).unwrap();
        drop(wal);
        let path = only_segment(tmp.path());
        let bytes = fs::read(&path).unwrap();
        let last_line = line_start(&bytes, 10);
        let cut = last_line + (bytes.len() - last_line) / 2;
        fs::write(&path, &bytes[..cut]).unwrap();

        let (wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        // Whether it was a torn append or a damaged acknowledged record cannot be told: the
        // stream is asked again (harmless either way), so the line stays.
        assert_eq!(recovery.truncated_tail_bytes, 0);
        assert_eq!(recovery.records, 10);
        let expected = CorruptEntry {
            segment: 1,
            line_no: 10,
            sid: Some(3),
            seq: Some(10),
        };
        assert_eq!(recovery.corrupt, vec![expected.clone()]);
        assert_eq!(fs::read(&path).unwrap(), &bytes[..cut]);
        assert_eq!(all_entries(&wal), events(1..10));
        assert_eq!(damaged_pieces(&wal, 1), vec![expected]);
    }

    #[test]
    fn damage_on_the_last_line_of_a_sealed_segment_is_not_a_torn_tail() {
        // Two segments: the first was sealed (fsynced) before the second was started, so the
        // end of its last line is acknowledged data, whatever happened to it.
        let tmp = TempDir::new("sealed-last");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        wal.append(&events(1..11)).unwrap();
        wal.seal().unwrap();
        wal.append(&events(11..21)).unwrap();
        drop(wal);
        let first = tmp.path().join(segment_name(1));
        let original = fs::read(&first).unwrap();
        for name in ["header", "body"] {
            let mut bytes = original.clone();
            let at = if name == "header" {
                let start = line_start(&bytes, 10);
                start + find(&bytes[start..], b"\"seq\":", 0).unwrap() + 6
            } else {
                original.len() - 10
            };
            bytes[at] ^= 0x01;
            fs::write(&first, &bytes).unwrap();
            let (wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
            assert_eq!(recovery.truncated_tail_bytes, 0, "{name}");
            assert_eq!(fs::read(&first).unwrap(), bytes, "{name}: nothing is cut");
            let header = (name == "body").then_some((3, 10));
            let expected = CorruptEntry {
                segment: 1,
                line_no: 10,
                sid: header.map(|h| h.0),
                seq: header.map(|h| h.1),
            };
            assert_eq!(recovery.corrupt, vec![expected.clone()], "{name}");
            assert_eq!(damaged_pieces(&wal, 1), vec![expected], "{name}");
            assert_eq!(
                wal.read_segment(1).unwrap().entries,
                events(1..10),
                "{name}"
            );
            assert!(quarantine(tmp.path()).is_empty(), "{name}");
        }
    }

    #[test]
    fn flipped_byte_in_body_stays_until_replay_with_sid_and_seq() {
        // One flip keeps the JSON valid (the crc catches it), one breaks the JSON.
        let cases = [
            ("body-crc", &b"SAT-0001"[..], 1),
            ("body-json", &b"\"source\""[..], 0),
        ];
        for (name, target, offset) in cases {
            let mut bad_line = Vec::new();
            let mut damaged_bytes = Vec::new();
            let (tmp, _, recovery) = damaged(name, |b| {
                let start = line_start(b, 5);
                let end = line_start(b, 6);
                let at = start + find(&b[start..end], target, 0).unwrap() + offset;
                b[at] ^= 0x01;
                bad_line = b[start..end - 1].to_vec();
                damaged_bytes = b.clone();
            });
            let expected = CorruptEntry {
                segment: 1,
                line_no: 5,
                sid: Some(3),
                seq: Some(5),
            };
            assert_eq!(recovery.records, 10, "{name}: 9 valid + 1 to fetch again");
            assert_eq!(recovery.truncated_tail_bytes, 0, "{name}");
            assert_eq!(recovery.corrupt, vec![expected.clone()], "{name}");
            // Nothing leaves the segment before replay has its message again.
            assert!(quarantine(tmp.path()).is_empty(), "{name}");
            assert_eq!(
                fs::read(only_segment(tmp.path())).unwrap(),
                damaged_bytes,
                "{name}"
            );

            let (mut wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
            assert_eq!(
                recovery.corrupt,
                vec![expected.clone()],
                "{name}: still there"
            );
            let read = wal.read_segment(1).unwrap();
            let mut expected_entries = events(1..11);
            expected_entries.remove(4);
            assert_eq!(read.entries, expected_entries, "{name}");
            assert_eq!(read.damaged.len(), 1, "{name}");
            assert_eq!(read.damaged[0].at, expected, "{name}");
            assert_eq!(read.damaged[0].line, bad_line, "{name}");
            // Replay quarantines it once the segment is committed.
            wal.quarantine(&read.damaged).unwrap();
            assert_eq!(quarantine(tmp.path()), [&bad_line[..], b"\n"].concat());
        }
    }

    #[test]
    fn flipped_byte_in_header_digits_reports_no_sid_or_seq() {
        let (tmp, _, recovery) = damaged("header", |b| {
            let start = line_start(b, 3);
            let at = start + find(&b[start..], b"\"seq\":", 0).unwrap() + 6;
            assert_eq!(b[at], b'3');
            b[at] = b'8';
        });
        let expected = CorruptEntry {
            segment: 1,
            line_no: 3,
            sid: None,
            seq: None,
        };
        assert_eq!(
            recovery.records, 9,
            "a piece naming no message is not a record"
        );
        assert_eq!(recovery.corrupt, vec![expected.clone()]);
        let (wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        let mut expected_entries = events(1..11);
        expected_entries.remove(2);
        assert_eq!(all_entries(&wal), expected_entries);
        assert_eq!(damaged_pieces(&wal, 1), vec![expected]);
    }

    #[test]
    fn flipped_newline_keeps_both_merged_records() {
        let (tmp, _, recovery) = damaged("newline", |b| {
            let at = line_start(b, 4) - 1;
            b[at] ^= 0x40; // '\n' -> 'J'
        });
        assert_eq!(recovery.records, 10);
        assert_eq!(
            recovery.corrupt,
            vec![CorruptEntry {
                segment: 1,
                line_no: 3,
                sid: None,
                seq: None,
            }]
        );
        let (wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(all_entries(&wal), events(1..11));
    }

    #[test]
    fn garbage_files_never_panic() {
        let tmp = TempDir::new("garbage");
        fs::create_dir_all(tmp.path()).unwrap();
        // Pseudo-random bytes with newlines and entry-like fragments mixed in.
        let mut garbage = Vec::new();
        let mut x: u32 = 12345;
        for i in 0..20_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            garbage.push((x >> 16) as u8);
            if i % 997 == 0 {
                garbage.extend_from_slice(br#"{"crc":"00000000","sid":1,"seq":2,"hcrc":""#);
            }
            if i % 1500 == 0 {
                garbage.push(b'\n');
            }
        }
        fs::write(tmp.path().join(segment_name(1)), &garbage).unwrap();
        let junk = b"not json at all\n{}\n[1,2\n";
        fs::write(tmp.path().join(segment_name(2)), junk).unwrap();
        fs::write(tmp.path().join(segment_name(3)), junk).unwrap();
        fs::write(tmp.path().join(segment_name(4)), b"").unwrap();
        fs::write(
            tmp.path().join(format!("{}{TMP_SUFFIX}", segment_name(5))),
            b"left by a crashed rewrite",
        )
        .unwrap();
        fs::write(tmp.path().join("README"), b"not a segment").unwrap();

        let (mut wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery.records, 0);
        // Sealed segments keep their damage for replay to report; the newest (empty) one
        // has nothing to cut.
        assert_eq!(recovery.segments, 3);
        assert_eq!(recovery.truncated_tail_bytes, 0);
        assert!(!recovery.corrupt.is_empty());
        assert!(!wal.is_empty());
        assert!(!tmp.path().join(segment_name(4)).exists());
        assert!(!tmp
            .path()
            .join(format!("{}{TMP_SUFFIX}", segment_name(5)))
            .exists());
        assert!(tmp.path().join("README").exists());

        let outcome = wal.append(&events(0..3)).unwrap();
        assert_eq!(outcome.segment, Some(5));
        drop(wal);
        let (wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery.records, 3);
        assert_eq!(recovery.truncated_tail_bytes, 0);
        assert_eq!(all_entries(&wal), events(0..3));

        // Garbage as the newest segment is a torn tail: cut.
        let tmp = TempDir::new("garbage-newest");
        fs::create_dir_all(tmp.path()).unwrap();
        fs::write(tmp.path().join(segment_name(1)), &garbage).unwrap();
        let (wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery.truncated_tail_bytes, garbage.len() as u64);
        assert!(wal.is_empty());
        assert!(!tmp.path().join(segment_name(1)).exists());
        assert!(quarantine(tmp.path()).len() > garbage.len());
    }

    #[test]
    fn garbage_between_valid_lines_is_reported() {
        let (tmp, _, recovery) = damaged("garbage-mid", |b| {
            let at = line_start(b, 2);
            b.splice(at..at, b"\x00\xff garbage \xc3\n".iter().copied());
        });
        assert_eq!(recovery.records, 10);
        assert_eq!(recovery.corrupt.len(), 1);
        assert_eq!(recovery.corrupt[0].line_no, 2);
        assert!(quarantine(tmp.path()).is_empty());
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        let read = wal.read_segment(1).unwrap();
        wal.quarantine(&read.damaged).unwrap();
        assert_eq!(quarantine(tmp.path()), b"\x00\xff garbage \xc3\n");
    }

    #[test]
    fn a_second_process_cannot_use_the_same_directory() {
        let tmp = TempDir::new("locked");
        let (wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        // flock(2) locks belong to the open file: a second open conflicts even in-process.
        match Wal::open(tmp.path(), BIG, BIG) {
            Err(e @ WalError::Locked { .. }) => {
                assert!(
                    e.to_string().contains(&tmp.path().display().to_string()),
                    "{e}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(wal);
        Wal::open(tmp.path(), BIG, BIG).expect("free again once the first is gone");
    }

    #[test]
    fn seal_read_and_remove_lifecycle_keeps_stats() {
        let tmp = TempDir::new("lifecycle");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        wal.seal().unwrap();
        assert!(wal.sealed_segments().is_empty());

        wal.append(&events(0..4)).unwrap();
        wal.append(&[dead(4)]).unwrap();
        assert!(
            wal.sealed_segments().is_empty(),
            "the active one is not sealed"
        );
        wal.seal().unwrap();
        assert_eq!(wal.sealed_segments(), vec![1]);
        wal.append(&events(5..8)).unwrap();
        wal.seal().unwrap();
        assert_eq!(wal.sealed_segments(), vec![1, 2]);
        let stats = wal.stats();
        assert_eq!((stats.records, stats.segments), (8, 2));

        let read = wal.read_segment(1).unwrap();
        assert!(read.damaged.is_empty());
        let mut expected = events(0..4);
        expected.push(dead(4));
        assert_eq!(read.entries, expected);

        let first_bytes = fs::metadata(tmp.path().join(segment_name(1)))
            .unwrap()
            .len();
        wal.remove_segment(1).unwrap();
        assert_eq!(wal.sealed_segments(), vec![2]);
        assert_eq!(
            wal.stats(),
            WalStats {
                bytes: stats.bytes - first_bytes,
                records: 3,
                segments: 1,
            }
        );
        wal.remove_segment(1).unwrap(); // idempotent
        assert!(!wal.is_empty());

        // An append while segment 2 is being replayed goes to segment 3.
        assert_eq!(wal.append(&events(8..9)).unwrap().segment, Some(3));
        assert!(wal.remove_segment(3).is_err(), "the active segment stays");
        assert_eq!(wal.read_segment(2).unwrap().entries, events(5..8));
        wal.remove_segment(2).unwrap();
        wal.seal().unwrap();
        assert_eq!(wal.read_segment(3).unwrap().entries, events(8..9));
        wal.remove_segment(3).unwrap();
        assert!(wal.is_empty());
        assert_eq!(wal.stats(), WalStats::default());
        assert!(wal.read_segment(3).is_err());
    }

    #[test]
    fn reopen_after_remove_keeps_the_rest_and_numbers_go_up() {
        let tmp = TempDir::new("reopen-remove");
        let (mut wal, _) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        wal.append(&events(0..3)).unwrap();
        wal.seal().unwrap();
        wal.append(&events(3..6)).unwrap();
        wal.seal().unwrap();
        wal.remove_segment(1).unwrap();
        let stats = wal.stats();
        drop(wal);

        let (mut wal, recovery) = Wal::open(tmp.path(), BIG, BIG).unwrap();
        assert_eq!(recovery.segments, 1);
        assert_eq!(recovery.records, 3);
        assert_eq!(wal.stats(), stats);
        assert_eq!(wal.sealed_segments(), vec![2]);
        assert_eq!(wal.append(&events(6..7)).unwrap().segment, Some(3));
        assert_eq!(all_entries(&wal), events(3..7));
    }

    #[test]
    fn open_names_the_path_it_cannot_use() {
        let tmp = TempDir::new("not-a-dir");
        fs::create_dir_all(tmp.path()).unwrap();
        let file = tmp.path().join("occupied");
        fs::write(&file, b"x").unwrap();
        let err = Wal::open(&file, BIG, BIG).unwrap_err();
        assert!(matches!(err, WalError::Io { .. }));
        assert!(err.to_string().contains("occupied"), "{err}");
    }

    #[test]
    #[ignore = "throughput figure, run with --release --ignored --nocapture"]
    fn append_throughput() {
        let tmp = TempDir::new("throughput");
        let (mut wal, _) = Wal::open(tmp.path(), 64 << 20, 4 << 30).unwrap();
        let batches: Vec<Vec<WalEntry>> =
            (0..200).map(|b| events(b * 500..b * 500 + 500)).collect();
        let start = std::time::Instant::now();
        for batch in &batches {
            wal.append(batch).unwrap();
        }
        let elapsed = start.elapsed();
        let stats = wal.stats();
        eprintln!(
            "WAL append: {} events in {} batches of 500, {:.3}s, {:.0} events/s, {:.1} MB, {} segments",
            stats.records,
            batches.len(),
            elapsed.as_secs_f64(),
            stats.records as f64 / elapsed.as_secs_f64(),
            stats.bytes as f64 / 1e6,
            stats.segments,
        );
        drop(wal);
        let start = std::time::Instant::now();
        let (_, recovery) = Wal::open(tmp.path(), 64 << 20, 4 << 30).unwrap();
        eprintln!(
            "WAL open (scan + verify): {} records in {:.3}s",
            recovery.records,
            start.elapsed().as_secs_f64()
        );
        assert_eq!(recovery.records, 100_000);
    }
}
