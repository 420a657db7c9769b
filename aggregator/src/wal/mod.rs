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

mod codec;
mod recovery;
mod segments;
#[cfg(test)]
mod tests;

pub use codec::WalEntry;
pub use segments::LOCK_FILE;

use codec::{encode, scan};
use recovery::recover_segment;
use segments::{
    append_quarantine, lock_dir, parse_segment_name, segment_path, sync_dir, TMP_SUFFIX,
};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Name of the file that collects damaged lines for inspection.
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";
/// Append buffers bigger than this are not kept for reuse.
const KEEP_BUFFER_BYTES: usize = 4 << 20;

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

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SegmentMeta {
    pub(super) bytes: u64,
    pub(super) records: u64,
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
