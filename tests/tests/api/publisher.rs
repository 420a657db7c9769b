//! The publisher binary through `POST /publish`.

use super::common::*;
use integration_tests::{run_publisher, Aggregator, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_via_http_is_counted_exactly() {
    let env = TestEnv::start().await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    let url = agg.base_url();
    let summary = run_publisher(
        &env,
        &[
            "--via",
            "http",
            "--url",
            &url,
            "--count",
            "1000",
            "--duplicate-rate",
            "0.2",
            "--seed",
            "7",
        ],
    )
    .await;
    assert_eq!(int(&summary, "published"), 1000, "{summary}");
    assert_eq!(int(&summary, "unique"), 800, "{summary}");
    assert_eq!(int(&summary, "duplicates"), 200, "{summary}");
    assert_eq!(int(&summary, "failed"), 0, "{summary}");

    let stats = agg.wait_until_received(1000).await;
    assert_counts(&stats, 1000, 800, 200);
    assert_eq!(env.stream_messages().await, 1000);
}
