//! Unit tests of the WAL: format, appends, rotation, recovery from damage, the lock.

use super::codec::find;
use super::segments::{parse_segment_name, segment_name, TMP_SUFFIX};
use super::*;
use crate::message::{DeadLetter, Record};
use shared::{Event, Limits};
use std::ops::Range;
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
    let batches: Vec<Vec<WalEntry>> = (0..200).map(|b| events(b * 500..b * 500 + 500)).collect();
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
