//! `GET /events`: pages, order, filters, bad parameters.

use super::common::*;
use chrono::{DateTime, FixedOffset};
use integration_tests::{Aggregator, TestEnv};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_paginated_with_default_and_explicit_limits() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let batch: Vec<Value> = (0..105)
        .map(|i| event("page.test", &format!("p-{i:03}"), &ts(i)))
        .collect();
    publish_ok(&agg, &Value::Array(batch), 105).await;
    agg.wait_until_received(105).await;
    let newest_first: Vec<String> = (0..105).rev().map(|i| format!("p-{i:03}")).collect();

    // Default limit: 100.
    let (first, next) = events_page(&agg, &[]).await;
    assert_eq!(first.len(), 100);
    let next = next.expect("a second page");
    let (second, last) = events_page(&agg, &[("after", &next)]).await;
    assert_eq!(second.len(), 5);
    assert_eq!(last, None);
    let mut got = ids(&first);
    got.extend(ids(&second));
    assert_eq!(got, newest_first);

    // limit=10: 10 pages of 10 and one of 5.
    let (sizes, all) = all_pages(&agg, &[("limit", "10")]).await;
    assert_eq!(sizes, [10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5]);
    assert_eq!(ids(&all), newest_first);

    // An exact multiple: the last full page already says there is no more.
    let (sizes, all) = all_pages(&agg, &[("limit", "35")]).await;
    assert_eq!(sizes, [35, 35, 35]);
    assert_eq!(ids(&all), newest_first);
    let (events, next) = events_page(&agg, &[("limit", "1000")]).await;
    assert_eq!(events.len(), 105);
    assert_eq!(next, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pagination_visits_250_events_once_in_timestamp_order() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    // Distinct timestamps, published in an order unrelated to them (i -> 97 i mod 250 is
    // a permutation), in 5 requests.
    let order: Vec<i64> = (0..250).map(|i| (i * 97) % 250).collect();
    for chunk in order.chunks(50) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|&i| event("keyset.test", &format!("k-{i:03}"), &ts(i * 60)))
            .collect();
        publish_ok(&agg, &Value::Array(batch), 50).await;
    }
    agg.wait_until_received(250).await;

    let (page1, next1) = events_page(&agg, &[("limit", "100")]).await;
    assert_eq!(page1.len(), 100);
    let next1 = next1.expect("page 2");

    // Newer events arriving between page requests neither shift nor repeat later pages.
    let newer: Vec<Value> = (0..10)
        .map(|i| event("keyset.test", &format!("new-{i}"), &ts(1_000_000 + i)))
        .collect();
    publish_ok(&agg, &Value::Array(newer), 10).await;
    agg.wait_until_received(260).await;

    let (page2, next2) = events_page(&agg, &[("limit", "100"), ("after", &next1)]).await;
    assert_eq!(page2.len(), 100);
    let next2 = next2.expect("page 3");
    let (page3, next3) = events_page(&agg, &[("limit", "100"), ("after", &next2)]).await;
    assert_eq!(page3.len(), 50);
    assert_eq!(next3, None, "next must be null on the last page");

    let all: Vec<Value> = page1.into_iter().chain(page2).chain(page3).collect();
    let expected: Vec<String> = (0..250).rev().map(|i| format!("k-{i:03}")).collect();
    assert_eq!(ids(&all), expected);
    let times: Vec<DateTime<FixedOffset>> = all
        .iter()
        .map(|e| instant(e["timestamp"].as_str().unwrap()))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] > w[1]),
        "timestamps must strictly decrease"
    );
    for (i, e) in all.iter().enumerate() {
        let n: i64 = e["event_id"].as_str().unwrap()[2..].parse().unwrap();
        assert_eq!(times[i], instant(&ts(n * 60)), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_timestamps_are_ordered_newest_ingested_first() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let same = ts(100);
    // One at a time, each counted before the next is sent: a definite ingest order.
    for (n, id) in ["first", "second", "third"].iter().enumerate() {
        publish_ok(&agg, &event("tie.test", id, &same), 1).await;
        agg.wait_until_received(n as i64 + 1).await;
    }
    publish_ok(&agg, &event("tie.test", "older", &ts(50)), 1).await;
    publish_ok(&agg, &event("tie.test", "newer", &ts(150)), 1).await;
    agg.wait_until_received(5).await;

    let expected = ["newer", "third", "second", "first", "older"];
    let (events, next) = events_page(&agg, &[]).await;
    assert_eq!(ids(&events), expected);
    assert_eq!(next, None);
    // The cursor breaks ties too: limit=1 visits each exactly once.
    let (sizes, all) = all_pages(&agg, &[("limit", "1")]).await;
    assert_eq!(sizes, [1, 1, 1, 1, 1]);
    assert_eq!(ids(&all), expected);
    let (sizes, all) = all_pages(&agg, &[("limit", "2")]).await;
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(ids(&all), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filter_by_topic_and_source() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let mut batch = Vec::new();
    for (topic, n) in [("filter.a", 3), ("filter.b", 5), ("filter.c", 7)] {
        for i in 0..n {
            let source = if i % 2 == 0 { "SAT-EVEN" } else { "SAT-ODD" };
            batch.push(event_from(topic, &format!("{topic}-{i}"), &ts(i), source));
        }
    }
    publish_ok(&agg, &Value::Array(batch), 15).await;
    agg.wait_until_received(15).await;

    let (_, all) = all_pages(&agg, &[]).await;
    assert_eq!(all.len(), 15);
    let (_, b) = all_pages(&agg, &[("topic", "filter.b")]).await;
    assert_eq!(b.len(), 5);
    assert!(b.iter().all(|e| e["topic"] == "filter.b"), "{b:?}");
    let (_, odd) = all_pages(&agg, &[("source", "SAT-ODD")]).await;
    assert_eq!(odd.len(), 1 + 2 + 3);
    assert!(odd.iter().all(|e| e["source"] == "SAT-ODD"), "{odd:?}");
    let (_, c_even) = all_pages(&agg, &[("topic", "filter.c"), ("source", "SAT-EVEN")]).await;
    assert_eq!(
        ids(&c_even),
        ["filter.c-6", "filter.c-4", "filter.c-2", "filter.c-0"]
    );
    // A prefix of a topic is not a match, nor is an unknown topic.
    let (none, next) = events_page(&agg, &[("topic", "filter")]).await;
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(next, None);
    let (none, _) = events_page(&agg, &[("topic", "filter.zzz")]).await;
    assert!(none.is_empty(), "{none:?}");
    // Filters and pagination combine.
    let (sizes, c) = all_pages(&agg, &[("topic", "filter.c"), ("limit", "3")]).await;
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(
        ids(&c),
        (0..7)
            .rev()
            .map(|i| format!("filter.c-{i}"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_since_is_inclusive_and_until_exclusive() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    // e0..e9 at 00:00..00:09 on 2026-03-01 (UTC), and "late" at 05:00Z written as +02:00.
    let t = |m: u32| format!("2026-03-01T00:{m:02}:00Z");
    let mut batch: Vec<Value> = (0..10)
        .map(|m| event("window.test", &format!("e{m}"), &t(m)))
        .collect();
    batch.push(event("window.test", "late", "2026-03-01T07:00:00+02:00"));
    publish_ok(&agg, &Value::Array(batch), 11).await;
    agg.wait_until_received(11).await;

    let query = |params: Vec<(&'static str, String)>| {
        let agg = &agg;
        async move {
            let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (events, next) = events_page(agg, &p).await;
            assert_eq!(next, None);
            ids(&events)
        }
    };
    assert_eq!(
        query(vec![("since", t(3)), ("until", t(7))]).await,
        ["e6", "e5", "e4", "e3"]
    );
    assert_eq!(
        query(vec![("since", t(3))]).await,
        ["late", "e9", "e8", "e7", "e6", "e5", "e4", "e3"]
    );
    assert_eq!(query(vec![("until", t(3))]).await, ["e2", "e1", "e0"]);
    assert_eq!(
        query(vec![("since", t(3)), ("until", t(3))]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        query(vec![("since", "2026-03-01T00:03:00.001Z".into())]).await,
        ["late", "e9", "e8", "e7", "e6", "e5", "e4"]
    );
    // Offsets denote instants: 07:00+02:00 is 05:00Z.
    assert_eq!(
        query(vec![("since", "2026-03-01T05:00:00Z".into())]).await,
        ["late"]
    );
    assert_eq!(
        query(vec![("since", "2026-03-01T07:00:00+02:00".into())]).await,
        ["late"]
    );
    assert_eq!(
        query(vec![
            ("since", t(8)),
            ("until", "2026-03-01T07:00:00+02:00".into())
        ])
        .await,
        ["e9", "e8"]
    );
    assert_eq!(
        query(vec![
            ("since", t(0)),
            ("until", t(10)),
            ("topic", "window.test".into())
        ])
        .await,
        ["e9", "e8", "e7", "e6", "e5", "e4", "e3", "e2", "e1", "e0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_query_parameters_are_400_naming_them() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    publish_ok(&agg, &event("query.test", "q-1", &ts(0)), 1).await;
    agg.wait_until_received(1).await;

    let cases: &[(&str, &str, &str)] = &[
        ("limit", "0", "limit"),
        ("limit", "1001", "limit"),
        ("limit", "-1", "limit"),
        ("limit", "abc", "limit"),
        ("limit", "1.5", "limit"),
        ("limit", "99999999999999999999", "limit"),
        ("since", "yesterday", "since"),
        ("since", "2026-13-01T00:00:00Z", "since"),
        ("until", "tomorrow", "until"),
        ("until", "2026-01-01", "until"),
        ("after", "garbage", "after"),
        ("after", "!!!", "after"),
        ("foo", "1", "foo"),
        ("offset", "10", "offset"),
    ];
    for (param, value, field) in cases {
        let (status, body) = get_events(&agg, &[(param, value)]).await;
        assert_eq!(status, 400, "{param}={value}: {body}");
        let fields: Vec<String> = details(&body).into_iter().map(|(_, f)| f).collect();
        assert!(
            fields.iter().any(|f| f == field),
            "{param}={value}: details must name {field}: {body}"
        );
    }

    // The limits of the valid range are accepted.
    for limit in ["1", "1000", "100"] {
        let (events, next) = events_page(&agg, &[("limit", limit)]).await;
        assert_eq!(ids(&events), ["q-1"]);
        assert_eq!(next, None);
    }
    let (events, _) = events_page(
        &agg,
        &[
            ("topic", "query.test"),
            ("source", "SAT-0001"),
            ("since", "2025-01-01T00:00:00Z"),
            ("until", "2027-01-01T00:00:00+01:00"),
            ("limit", "5"),
        ],
    )
    .await;
    assert_eq!(ids(&events), ["q-1"]);
}
