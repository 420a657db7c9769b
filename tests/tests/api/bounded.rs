//! `POST /publish` with bounded memory: more events than `MAX_EVENTS_PER_REQUEST` is a 413
//! decided while parsing, and a 422 lists at most 100 details plus `details_total`.

use super::common::*;
use integration_tests::{Aggregator, TestEnv};
use serde_json::{json, Value};

/// The first 100 details are listed, at indices 0..100.
const MAX_DETAILS: usize = 100;

/// `[1,1,...]` with `n` elements: every element an invalid event.
fn ones(n: usize) -> String {
    let mut s = String::with_capacity(2 * n + 1);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push('1');
    }
    s.push(']');
    s
}

/// Peak resident memory of a process, from `/proc/<pid>/status` (kB).
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_events_are_413_and_details_are_capped() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let json_ct = [("content-type", "application/json")];
    // The body that once took gigabytes: 10 MiB of `[1,1,...]`, about five million elements.
    let huge = ones((10 * 1024 * 1024 - 2) / 2);
    assert!(huge.len() <= 10 * 1024 * 1024);
    // One event of almost 10 MiB (a payload of five million numbers): refused unbuilt.
    let mut one_huge = event("bounded.test", "huge", &ts(0));
    one_huge["payload"] = json!({ "x": "@" });
    let one_huge = serde_json::to_string(&json!([one_huge]))
        .unwrap()
        .replace("\"@\"", &ones((10 * 1024 * 1024 - 400) / 2));
    assert!(one_huge.len() <= 10 * 1024 * 1024);
    // (body, status, details listed, details_total)
    let cases: Vec<(String, u16, usize, Option<u64>)> = vec![
        (huge, 413, 0, None),
        (ones(10_001), 413, 0, None),
        (format!("{{\"events\": {}}}", ones(10_001)), 413, 0, None),
        (ones(10_000), 422, MAX_DETAILS, Some(10_000)),
        (
            format!("{{\"events\": {}}}", ones(150)),
            422,
            MAX_DETAILS,
            Some(150),
        ),
        (ones(3), 422, 3, Some(3)),
        (one_huge, 422, 1, Some(1)),
    ];
    for (body, status, listed, total) in cases {
        let what = format!("{}... ({} bytes)", &body[..body.len().min(20)], body.len());
        let (got, _, resp) = post_raw(&agg, body, &json_ct).await;
        assert_eq!(got, status, "{what}: {resp}");
        if status == 413 {
            let error = resp["error"].as_str().unwrap_or_default();
            assert!(error.contains("MAX_EVENTS_PER_REQUEST"), "{what}: {resp}");
            continue;
        }
        let got = details(&resp);
        let expected: Vec<_> = (0..listed as i64)
            .map(|i| (Some(i), "body".to_string()))
            .collect();
        assert_eq!(got, expected, "{what}: {resp}");
        assert_eq!(resp["details_total"].as_u64(), total, "{what}: {resp}");
    }
    assert_eq!(env.stream_messages().await, 0, "nothing may be published");
    // Memory stays near the body size; before the limits the first body took over 5 GB and
    // the one huge event 200 MB.
    let peak_kb = vm_hwm_kb(agg.pid());
    assert!(peak_kb < 128 * 1024, "peak RSS {peak_kb} kB");

    publish_ok(&agg, &event("bounded.test", "after", &ts(0)), 1).await;
    let stats = agg.wait_until_received(1).await;
    assert_counts(&stats, 1, 1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_events_per_request_is_a_boundary() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[("MAX_EVENTS_PER_REQUEST", "50")]).await;
    let batch = |prefix: &str, n: i64| -> Value {
        Value::Array(
            (0..n)
                .map(|i| event("bounded.limit", &format!("{prefix}-{i}"), &ts(i)))
                .collect(),
        )
    };
    let (status, body) = publish(&agg, &batch("over", 51)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("MAX_EVENTS_PER_REQUEST (50)")),
        "{body}"
    );
    let (status, body) = publish(&agg, &json!({"events": batch("over-wrapped", 51)})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(env.stream_messages().await, 0);

    publish_ok(&agg, &batch("exact", 50), 50).await;
    let stats = agg.wait_until_received(50).await;
    assert_counts(&stats, 50, 50, 0);
    assert_eq!(env.stream_messages().await, 50);
}
