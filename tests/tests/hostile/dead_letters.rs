//! `GET /dead-letters`: the token and the parameters.

use super::common::*;
use bytes::Bytes;
use integration_tests::{eventually, int, publish_raw, Aggregator, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_endpoint_requires_the_token_and_rejects_bad_parameters() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[("API_TOKEN", "secret")]).await;
    let js = env.jetstream().await;
    publish_raw(
        &js,
        "events.token.test",
        Bytes::from_static(b"{\"not\": \"an event\""),
    )
    .await;
    eventually("one dead letter", PATIENCE, || async {
        int(&agg.stats().await, "dead_lettered") >= 1
    })
    .await;

    for token in [None, Some("wrong"), Some("secret-and-more"), Some("")] {
        let (status, body) = get_with_token(&agg, "/dead-letters", token).await;
        assert_eq!(status, 401, "token {token:?}: {body}");
        assert!(body["error"].is_string(), "token {token:?}: {body}");
        assert!(body.get("dead_letters").is_none(), "{body}");
    }
    // Not "Bearer": still refused.
    let resp = agg
        .http()
        .get(format!("{}/dead-letters", agg.base_url()))
        .header("authorization", "Basic secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The token is checked before the parameters.
    let (status, body) = get_with_token(&agg, "/dead-letters?foo=1", None).await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = get_with_token(&agg, "/dead-letters", Some("secret")).await;
    assert_eq!(status, 200, "{body}");
    let items = body["dead_letters"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["subject"], "events.token.test");
    assert!(body["next"].is_null(), "{body}");

    let cases: &[(&str, &str)] = &[
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("after=zzz", "after"),
        ("after=", "after"),
        ("foo=1", "foo"),
        ("include_redriven=maybe", "include_redriven"),
        ("limit=1&limit=2", "limit"),
    ];
    for (query, field) in cases {
        let path = format!("/dead-letters?{query}");
        let (status, body) = get_with_token(&agg, &path, Some("secret")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
        let fields: Vec<&str> = body["details"]
            .as_array()
            .unwrap_or_else(|| panic!("{query}: details missing: {body}"))
            .iter()
            .filter_map(|d| d["field"].as_str())
            .collect();
        assert!(
            fields.contains(field),
            "{query}: details must name {field}: {body}"
        );
    }
    for ok in [
        "limit=1",
        "limit=1000",
        "include_redriven=true",
        "include_redriven=false",
    ] {
        let (status, body) =
            get_with_token(&agg, &format!("/dead-letters?{ok}"), Some("secret")).await;
        assert_eq!(status, 200, "{ok}: {body}");
    }
    // The token protects this endpoint, not the read-only ones.
    assert_eq!(agg.get("/stats").await.0, 200);
    assert_eq!(agg.get("/events").await.0, 200);
}
