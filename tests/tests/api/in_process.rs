//! The service run in this process through `startup::start`, which binds `HTTP_ADDR` port 0
//! and reports the address it bound: what an embedding program or a test without a child
//! process uses.

use aggregator::config::Cli;
use aggregator::settings::Settings;
use aggregator::shutdown::CancellationToken;
use clap::Parser;
use integration_tests::{eventually, int, run_publisher, TestEnv};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_started_in_process_reports_the_address_it_bound() {
    let env = TestEnv::start().await;
    let wal = env.work_dir().join("wal-in-process");
    let cli = Cli::try_parse_from([
        "aggregator",
        "--nats-url",
        &env.nats_url(),
        "--database-url",
        &env.database_url(),
        "--http-addr",
        "127.0.0.1:0",
        "--wal-path",
        &wal.to_string_lossy(),
    ])
    .expect("configuration");
    let shutdown = CancellationToken::new();
    let service =
        aggregator::startup::start(Settings::from_config(&cli.config), None, shutdown.clone())
            .await
            .expect("the service starts");
    assert_ne!(service.addr.port(), 0, "the port the system chose");

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{}", service.addr);
    eventually("ready", Duration::from_secs(60), || async {
        matches!(http.get(format!("{base}/ready")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    run_publisher(
        &env,
        &["--count", "300", "--duplicate-rate", "0.3", "--seed", "52"],
    )
    .await;
    eventually("all 300 counted", Duration::from_secs(60), || async {
        let Ok(resp) = http.get(format!("{base}/stats")).send().await else {
            return false;
        };
        let stats: serde_json::Value = resp.json().await.unwrap_or_default();
        stats["received"] == 300
    })
    .await;
    let stats: serde_json::Value = http
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(int(&stats, "unique_processed"), 210, "{stats}");

    shutdown.cancel();
    service.wait().await.expect("a clean stop");
}
