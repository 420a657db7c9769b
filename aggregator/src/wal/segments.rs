//! The files of a WAL directory: segment names, the directory lock, the quarantine file and
//! directory fsyncs. Blocking `std::fs`.

use super::{io_err, WalError, QUARANTINE_FILE};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the lock file held by the process using the directory.
pub const LOCK_FILE: &str = "LOCK";

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".jsonl";
/// Suffix of a segment rewrite left by an earlier version that crashed before its rename.
pub(super) const TMP_SUFFIX: &str = ".tmp";
const SEGMENT_DIGITS: usize = 20;

pub(super) fn segment_name(n: u64) -> String {
    format!(
        "{SEGMENT_PREFIX}{n:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(segment_name(n))
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Takes the directory's lock file, exclusively, without waiting.
pub(super) fn lock_dir(dir: &Path) -> Result<File, WalError> {
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

pub(super) fn append_quarantine(dir: &Path, bytes: &[u8]) -> Result<(), WalError> {
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
