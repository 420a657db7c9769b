//! W3C trace context: one event can be followed from publish to its stored row.

use integration_tests::{event_json, Aggregator, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_travels_from_publish_to_the_stored_row() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;

    // Straight to NATS with a traceparent header.
    let js = env.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    headers.insert("traceparent", tp);
    js.publish_with_headers(
        "events.a.b",
        headers,
        event_json("a.b", "via-nats", "SAT-0001"),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // Through POST /publish, continuing the caller's trace.
    let body = serde_json::json!([
        {"topic": "a.b", "event_id": "via-http-1", "timestamp": "2026-11-23T10:30:45Z", "source": "s", "payload": {}},
        {"topic": "a.b", "event_id": "via-http-2", "timestamp": "2026-11-23T10:30:46Z", "source": "s", "payload": {}}
    ]);
    let resp = agg
        .http()
        .post(format!("{}/publish", agg.base_url()))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    agg.wait_until_received(3).await;

    let (code, page) = agg.get("/events?topic=a.b").await;
    assert_eq!(code, 200);
    let trace_of = |id: &str| -> String {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == id)
            .and_then(|e| e["traceparent"].as_str())
            .unwrap_or_else(|| panic!("no traceparent for {id}: {page}"))
            .to_owned()
    };
    assert_eq!(trace_of("via-nats"), tp);
    let (a, b) = (trace_of("via-http-1"), trace_of("via-http-2"));
    // Same trace as the HTTP caller, a span of its own per event.
    assert_eq!(&a[3..35], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(&b[3..35], "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(a, b);
}
