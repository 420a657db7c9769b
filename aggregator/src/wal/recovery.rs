//! Recovery of one segment when the WAL is opened: what it holds, what is damaged, and the
//! torn tail cut off the newest segment. See "Recovery" in the module documentation.

use super::codec::{scan, Scan};
use super::segments::{append_quarantine, segment_path};
use super::{io_err, Recovery, SegmentMeta, WalError};
use std::fs::{self, OpenOptions};
use std::path::Path;

/// Recovers one segment at open: reports damage (left in place for replay), cuts the newest
/// segment's torn tail, and returns what is left in the segment.
pub(super) fn recover_segment(
    dir: &Path,
    segment: u64,
    newest: bool,
    recovery: &mut Recovery,
) -> Result<SegmentMeta, WalError> {
    let path = segment_path(dir, segment);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let scan = scan(&bytes);
    let keep_to = if newest {
        knowable_end(&bytes, &scan)
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
    if keep_to < bytes.len() {
        cut_torn_tail(dir, segment, &bytes, keep_to)?;
        recovery.truncated_tail_bytes += (bytes.len() - keep_to) as u64;
    }
    Ok(SegmentMeta {
        bytes: keep_to as u64,
        records,
    })
}

/// Where the newest segment's torn tail starts: after the last line that holds something
/// knowable (a valid entry, or a damaged one whose header names its message, which replay
/// fetches again). What follows names nothing that could be saved.
fn knowable_end(bytes: &[u8], scan: &Scan) -> usize {
    let knowable = scan
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
    match knowable {
        None => 0,
        Some(end) => match bytes[end..].iter().position(|&b| b == b'\n') {
            Some(i) => end + i + 1,
            None => bytes.len(),
        },
    }
}

/// Copies the torn tail (bytes from `keep_to` on) to the quarantine, then cuts it off.
fn cut_torn_tail(dir: &Path, segment: u64, bytes: &[u8], keep_to: usize) -> Result<(), WalError> {
    let path = segment_path(dir, segment);
    let tail = &bytes[keep_to..];
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
        .map_err(io_err(&path))
}
