//! A tampered, truncated or out-of-range `after` cursor is a 400 naming `after`, never a 5xx,
//! on `GET /events` and `GET /dead-letters`.

use super::common::*;
use integration_tests::{Aggregator, TestEnv};
use serde_json::Value;

/// Hex of a string: the shape of an `/events` cursor (`v1:<micros>:<id>`).
fn hex(s: &[u8]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET <path>?after=<cursor>` (the cursor URL-encoded) → (status, body).
async fn after(agg: &Aggregator, path: &str, cursor: &str) -> (u16, Value) {
    let resp = agg
        .http()
        .get(format!("{}{path}", agg.base_url()))
        .query(&[("after", cursor)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_cursors_are_400_naming_after() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let batch: Vec<Value> = (0..3)
        .map(|i| event("cursor.test", &format!("c-{i}"), &ts(i)))
        .collect();
    publish_ok(&agg, &Value::Array(batch), 3).await;
    agg.wait_until_received(3).await;
    let (page, next) = events_page(&agg, &[("limit", "1")]).await;
    assert_eq!(page.len(), 1);
    let real = next.expect("a second page");
    // The real cursor works.
    let (status, body) = after(&agg, "/events", &real).await;
    assert_eq!(status, 200, "{body}");

    let year_200000 = 6_249_223_209_600_000_000_i64; // representable, but not in Postgres
    let events_cases: Vec<String> = vec![
        String::new(),
        "dGVzdA==".into(),                                // random base64
        "zz".into(),                                      // not hex
        real[..real.len() - 1].into(),                    // truncated, odd length
        real[..real.len() - 2].into(),                    // truncated, even length
        hex(&[0xff, 0xfe, 0x00, 0x80]),                   // not UTF-8 once decoded
        hex(b"v1:99999999999999999999:1"),                // micros overflow i64
        hex(b"v1:-9223372036854775808:1"),                // before any representable time
        hex(format!("v1:{year_200000}:1").as_bytes()),    // past Postgres' range
        hex(format!("v1:-{year_200000}:1").as_bytes()),   // before Postgres' range
        hex(b"v1:1767225600000000:-5"),                   // negative ingest id
        hex(b"v1:1767225600000000:99999999999999999999"), // id overflow
        hex(b"v1:1767225600000000"),                      // id missing
        hex(b"v1:1767225600000000:1:2"),                  // extra part
        hex(b"v2:1767225600000000:1"),                    // unknown version
        "ab".repeat(100),                                 // too long
    ];
    let dead_letter_cases = [
        "",
        "dl",
        "dlx",
        "dl-1",
        "dl0",
        "dl99999999999999999999",
        "17",
        "DL17",
        "dl 1",
        "dl1.5",
        "dl+1",
        "dGVzdA==",
        "\u{fffd}",
    ];
    let cases = events_cases
        .iter()
        .map(|c| ("/events", c.as_str()))
        .chain(dead_letter_cases.iter().map(|c| ("/dead-letters", *c)));
    for (path, cursor) in cases {
        let (status, body) = after(&agg, path, cursor).await;
        assert_eq!(status, 400, "{path} after={cursor:?}: {body}");
        assert_eq!(
            details(&body),
            vec![(None, "after".to_string())],
            "{path} after={cursor:?}: {body}"
        );
    }
    // Still serving.
    let (status, body) = after(&agg, "/events", &real).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 2, "{body}");
}
