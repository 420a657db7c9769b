//! Five hundred malformed messages among a thousand valid ones: each dead-lettered with its
//! reason, never redelivered, never blocking its batch-mates; the valid ones counted exactly.

use super::cases::*;
use super::common::*;
use bytes::Bytes;
use integration_tests::{count, create_stream, int, Aggregator, TestEnv};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_malformed_messages_are_dead_lettered_and_valid_ones_counted_exactly() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    create_stream(&js).await;

    // 1,000 valid sends (800 distinct, then 200 re-sends of earlier ones, interleaved)
    // merged at random positions with 500 malformed messages.
    let mut rng = StdRng::seed_from_u64(7);
    let mut valid_msgs: Vec<Msg> = Vec::with_capacity(1000);
    let mut originals: Vec<usize> = Vec::new();
    for j in 0..1000 {
        if j % 5 == 4 {
            let k = originals[rng.random_range(0..originals.len())];
            let m = valid(k);
            valid_msgs.push(m);
        } else {
            let k = originals.len();
            originals.push(k);
            valid_msgs.push(valid(k));
        }
    }
    assert_eq!(originals.len(), 800);
    let mut bad_msgs: Vec<Msg> = (0..500).map(malformed).collect();
    bad_msgs.reverse();
    valid_msgs.reverse();
    let mut msgs: Vec<Msg> = Vec::with_capacity(1500);
    while !valid_msgs.is_empty() || !bad_msgs.is_empty() {
        let (nv, nb) = (valid_msgs.len(), bad_msgs.len());
        let take_valid = nb == 0 || (nv > 0 && rng.random_range(0..nv + nb) < nv);
        msgs.push(if take_valid {
            valid_msgs.pop().unwrap()
        } else {
            bad_msgs.pop().unwrap()
        });
    }

    // Publish straight to the stream (pipelined), remembering each message's sequence.
    let mut seqs: Vec<u64> = Vec::with_capacity(msgs.len());
    for chunk in msgs.chunks(100) {
        let mut acks = Vec::with_capacity(chunk.len());
        for m in chunk {
            acks.push(
                js.publish(m.subject.clone(), Bytes::from(m.bytes.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("publish to {}: {e}", m.subject)),
            );
        }
        for ack in acks {
            seqs.push(ack.await.expect("PubAck").sequence);
        }
    }
    let by_seq: HashMap<u64, &Msg> = seqs.iter().copied().zip(msgs.iter()).collect();
    assert_eq!(by_seq.len(), 1500);
    let bad_seqs: BTreeSet<u64> = by_seq
        .iter()
        .filter(|(_, m)| m.dead.is_some())
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(bad_seqs.len(), 500);

    let agg = Aggregator::spawn(&env, &[("MAX_PAYLOAD_BYTES", "1024")]).await;

    // Settled: every message counted or dead-lettered, nothing pending or unacknowledged.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = agg.stats().await;
        let info = consumer_info(&env).await;
        if int(&stats, "received") + int(&stats, "dead_lettered") >= 1500
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {stats}; consumer pending {} ack-pending {}\n{}",
            info.num_pending,
            info.num_ack_pending,
            agg.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let db = env.db().await;
    // Which malformed messages were stored as events (by kind), if any.
    let stored_bad: Vec<(String, String)> = sqlx::query_as(
        "SELECT topic, event_id FROM events WHERE event_id LIKE 'bad-%' ORDER BY event_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let stats = agg.stats().await;
    let (events_status, events_body) = agg.get("/events?limit=1000").await;
    let events_text: String = events_body.to_string().chars().take(300).collect();
    assert!(
        stored_bad.is_empty(),
        "{} malformed messages were stored as events instead of dead-lettered, e.g. {:?}; \
         stats {stats}; GET /events?limit=1000 now answers {events_status} {events_text}",
        stored_bad.len(),
        &stored_bad[..stored_bad.len().min(5)]
    );
    assert_eq!(int(&stats, "dead_lettered"), 500, "{stats}");
    assert_eq!(int(&stats, "received"), 1000, "{stats}");
    assert_eq!(int(&stats, "unique_processed"), 800, "{stats}");
    assert_eq!(int(&stats, "duplicate_dropped"), 200, "{stats}");
    assert_eq!(agg.metric("aggregator_dead_letters_total").await, 500.0);
    assert_eq!(count(&db, "SELECT count(*) FROM events").await, 800);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 500);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM dead_letters WHERE btrim(reason) <> ''"
        )
        .await,
        500,
        "every dead letter has a reason"
    );

    // Nothing was redelivered and nothing waits for an ack; the stream keeps everything.
    let info = consumer_info(&env).await;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    assert_eq!(info.num_pending, 0, "{info:?}");
    assert_eq!(env.stream_messages().await, 1500);

    // The table holds exactly the malformed messages, with the right reason and bytes.
    let rows: Vec<(i64, String, Vec<u8>, i32, String)> = sqlx::query_as(
        "SELECT stream_seq, subject, raw, raw_size, reason FROM dead_letters ORDER BY stream_seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let row_seqs: BTreeSet<u64> = rows.iter().map(|r| r.0 as u64).collect();
    assert_eq!(
        row_seqs, bad_seqs,
        "dead letters are exactly the malformed messages"
    );
    let mut wrong_reasons = Vec::new();
    for (seq, subject, raw, raw_size, reason) in &rows {
        let m = by_seq[&(*seq as u64)];
        let (kind, want) = m.dead.as_ref().unwrap();
        assert_eq!(subject, &m.subject, "seq {seq}");
        assert_eq!(*raw_size as usize, m.bytes.len(), "seq {seq} ({kind})");
        assert_eq!(
            raw.as_slice(),
            &m.bytes[..m.bytes.len().min(DEAD_LETTER_KEEP)],
            "seq {seq} ({kind}): raw bytes"
        );
        if !reason.contains(want.as_str()) {
            wrong_reasons.push(format!("{kind}: want {want:?} in {reason:?}"));
        }
    }
    assert!(
        wrong_reasons.is_empty(),
        "{} reasons do not name the problem: {:#?}",
        wrong_reasons.len(),
        &wrong_reasons[..wrong_reasons.len().min(10)]
    );

    // GET /dead-letters: 500 in pages of 200, newest first, each exactly once.
    let (sizes, items) = all_dead_letters(&agg, 200, "", None).await;
    assert_eq!(sizes, vec![200, 200, 100]);
    let ids: Vec<i64> = items.iter().map(|d| int(d, "id")).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "ids must be strictly decreasing across pages"
    );
    let api_seqs: BTreeSet<u64> = items.iter().map(|d| int(d, "stream_seq") as u64).collect();
    assert_eq!(api_seqs, bad_seqs);
    let mut checked_binary = false;
    let mut checked_big = false;
    let mut checked_over_limit = 0;
    for d in &items {
        let seq = int(d, "stream_seq") as u64;
        let m = by_seq[&seq];
        let (kind, _) = m.dead.as_ref().unwrap();
        let kept = &m.bytes[..m.bytes.len().min(DEAD_LETTER_KEEP)];
        assert_eq!(d["subject"], m.subject.as_str(), "{d}");
        assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()), "{d}");
        assert!(d["redriven_at"].is_null(), "{d}");
        chrono::DateTime::parse_from_rfc3339(d["created_at"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("created_at not RFC 3339 ({e}): {d}"));
        assert_eq!(int(d, "raw_size") as usize, m.bytes.len(), "{kind}: {d}");
        assert_eq!(
            d["raw_truncated"],
            m.bytes.len() > DEAD_LETTER_KEEP,
            "{kind}: {d}"
        );
        let raw = base64_decode(d["raw_base64"].as_str().unwrap());
        assert_eq!(
            raw, kept,
            "{kind}: raw_base64 must decode to the exact bytes"
        );
        assert_eq!(
            d["raw_text"].as_str().unwrap(),
            String::from_utf8_lossy(kept),
            "{kind}"
        );
        if m.bytes.starts_with(&[0xff, 0xfe, 0x00]) {
            checked_binary = true;
        }
        if *kind == "payload over limit" {
            if m.bytes.len() == 20 * 1024 {
                assert_eq!(int(d, "raw_size"), 20 * 1024);
                assert_eq!(d["raw_truncated"], true);
                assert_eq!(raw.len(), DEAD_LETTER_KEEP);
                checked_big = true;
            } else {
                assert_eq!(d["raw_truncated"], false, "{d}");
                checked_over_limit += 1;
            }
        }
    }
    assert!(checked_binary && checked_big && checked_over_limit == 49);

    // Valid events are all there, stored with their exact (tricky) ids, and listed.
    let expected: BTreeSet<(String, String)> = msgs
        .iter()
        .filter(|m| m.dead.is_none())
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.bytes).unwrap();
            (
                v["topic"].as_str().unwrap().to_owned(),
                v["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(expected.len(), 800);
    assert_eq!(events_status, 200, "GET /events?limit=1000: {events_text}");
    assert!(events_body["next"].is_null(), "{events_text}");
    let listed: BTreeSet<(String, String)> = events_body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_owned(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed, expected,
        "GET /events lists exactly the valid events"
    );
    let sql_ids = count(
        &db,
        "SELECT count(*) FROM events WHERE event_id LIKE '''; DROP TABLE events; -- %'",
    )
    .await;
    assert_eq!(
        sql_ids, 100,
        "event ids that look like SQL are stored verbatim"
    );
}
