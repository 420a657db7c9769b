//! NATS secured with TLS and authorization (issue 13, "NATS"): the whole pipeline, the
//! aggregator and the publisher binaries, through a private nats-server that enforces
//! mutual TLS with users and an nkey, a token over TLS, or operator-mode JWTs with a
//! credentials file, and through a secured 3-node cluster: exact counts every time. Refused
//! credentials and untrusted certificates stop both binaries at start-up with one line
//! naming the variable; a server that is not up yet is waited for.
//!
//! Certificates, nkeys and JWTs are made by the harness (`integration_tests::secure`).

use integration_tests::secure::{AGG_USER, PUB_USER};
use integration_tests::{
    assert_counts, int, publisher_output, run_publisher, run_publisher_with, Aggregator, AuthMode,
    Nats, NatsCluster, Security, TestEnv,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

type Vars = Vec<(String, String)>;

fn refs(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `vars` with `key` set to `value` (added when missing).
fn with(mut vars: Vars, key: &str, value: &str) -> Vars {
    vars.retain(|(k, _)| k != key);
    vars.push((key.to_owned(), value.to_owned()));
    vars
}

/// `vars` without `keys`.
fn without(mut vars: Vars, keys: &[&str]) -> Vars {
    vars.retain(|(k, _)| !keys.contains(&k.as_str()));
    vars
}

fn file(sec: &Security, name: &str) -> String {
    sec.path(name).to_string_lossy().into_owned()
}

/// Publishes `count` sends with 30% duplicates and checks the publisher's exact summary.
async fn publish(url: &str, vars: &[(String, String)], count: u32, seed: u32) {
    let (count_s, seed_s) = (count.to_string(), seed.to_string());
    let args = [
        "--count",
        &count_s,
        "--duplicate-rate",
        "0.3",
        "--topics",
        "5",
        "--seed",
        &seed_s,
        "--no-progress",
    ];
    let summary = run_publisher_with(url, &refs(vars), &args).await;
    assert_summary(&summary, count);
}

fn assert_summary(summary: &Value, count: u32) {
    let count = i64::from(count);
    assert_eq!(int(summary, "published"), count, "{summary}");
    assert_eq!(int(summary, "duplicates"), count * 3 / 10, "{summary}");
    assert_eq!(int(summary, "unique"), count - count * 3 / 10, "{summary}");
    assert_eq!(int(summary, "failed"), 0, "{summary}");
}

/// The aggregator counted exactly `received` messages, 30% of them duplicates, and stored
/// each unique event once.
async fn assert_counted(env: &TestEnv, agg: &mut Aggregator, received: i64) {
    let unique = received - received * 3 / 10;
    let stats = agg.wait_until_received(received).await;
    assert_counts(&stats, received, unique, received - unique);
    assert_eq!(env.event_rows().await, unique);
}

/// `tls://user:password@127.0.0.1:<port>` (or `nats://`) of `nats`.
fn url_with_userinfo(nats: &Nats, userinfo: &str) -> String {
    nats.url().replacen("://", &format!("://{userinfo}@"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_password_an_nkey_and_url_credentials_counts_exactly() {
    let sec = Arc::new(Security::new(AuthMode::Users, Some(true)));
    let env = TestEnv::start_secured(sec.clone()).await;
    assert!(env.nats.url().starts_with("tls://"), "{}", env.nats.url());
    // NATS_USER/NATS_PASSWORD + NATS_TLS_CA/CERT/KEY (the harness's defaults).
    let mut agg = Aggregator::spawn(&env, &[]).await;

    // The publisher: NATS_USER/NATS_PASSWORD, then an nkey, then user:password in the URL.
    let summary = run_publisher(&env, &["--count", "1000", "--seed", "1", "--topics", "5"]).await;
    assert_summary(&summary, 1000);
    let nkey = with(sec.tls_env(), "NATS_NKEY", &file(&sec, "nkey.seed"));
    publish(&env.nats.url(), &nkey, 1000, 2).await;
    let userinfo = format!("{PUB_USER}:{}", sec.password(PUB_USER));
    publish(
        &url_with_userinfo(&env.nats, &userinfo),
        &sec.tls_env(),
        1000,
        3,
    )
    .await;

    assert_counted(&env, &mut agg, 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_tls_counts_exactly() {
    let sec = Arc::new(Security::new(AuthMode::Token, Some(false)));
    let env = TestEnv::start_secured(sec.clone()).await;
    // The aggregator reads its token from a file (a mounted secret), not the environment.
    let token_file = sec.path("token.secret");
    std::fs::write(&token_file, format!("{}\n", sec.token())).unwrap();
    let token_file = token_file.to_string_lossy().into_owned();
    let mut agg =
        Aggregator::spawn_without(&env, &["NATS_TOKEN"], &[("NATS_TOKEN_FILE", &token_file)]).await;
    agg.wait_ready().await;
    publish(&env.nats.url(), &sec.env_for(PUB_USER), 1000, 4).await;
    // The token as the URL's user part, as NATS clients accept it.
    publish(
        &url_with_userinfo(&env.nats, sec.token()),
        &sec.tls_env(),
        1000,
        5,
    )
    .await;
    // The publisher's token from the same file.
    let from_file = with(sec.tls_env(), "NATS_TOKEN_FILE", &token_file);
    publish(&env.nats.url(), &from_file, 1000, 8).await;
    assert_counted(&env, &mut agg, 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file_in_operator_mode_counts_exactly() {
    // Operator, account (JetStream enabled) and user JWTs signed by the harness; the server
    // resolves the account from memory.
    let sec = Arc::new(Security::new(AuthMode::Operator, Some(false)));
    let env = TestEnv::start_secured(sec.clone()).await;
    let mut agg = Aggregator::spawn(&env, &[]).await;
    publish(&env.nats.url(), &sec.env_for(PUB_USER), 2000, 6).await;
    assert_counted(&env, &mut agg, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_three_node_cluster_counts_exactly() {
    let sec = Arc::new(Security::new(AuthMode::Users, Some(true)));
    let (cluster, env) = tokio::join!(NatsCluster::start_secured(3, sec.clone()), TestEnv::start());
    // The env's own (plain) NATS server is not used: every client gets the cluster's URLs.
    let urls = cluster.urls();
    assert!(urls.starts_with("tls://"), "{urls}");
    let vars = with(
        with(sec.env_for(AGG_USER), "NATS_URL", &urls),
        "STREAM_REPLICAS",
        "3",
    );
    let mut agg = Aggregator::spawn(&env, &refs(&vars)).await;
    publish(&urls, &sec.env_for(PUB_USER), 2000, 7).await;
    assert_counted(&env, &mut agg, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_started_before_the_secured_server_waits_for_it() {
    let sec = Arc::new(Security::new(AuthMode::Users, Some(true)));
    let mut env = TestEnv::start_secured(sec.clone()).await;
    env.nats.stop().await;
    let mut agg = Aggregator::spawn_no_wait(&env, &[]).await;
    // Connection refused is transient: the aggregator says so and keeps trying.
    integration_tests::eventually(
        "the aggregator reports NATS not available yet",
        Duration::from_secs(60),
        || async {
            std::fs::read_to_string(agg.log_path())
                .is_ok_and(|l| l.contains("NATS not available yet"))
        },
    )
    .await;
    assert!(agg.is_running(), "{}", agg.log_tail());
    env.nats.restart().await;
    agg.wait_ready().await;
    publish(&env.nats.url(), &sec.env_for(PUB_USER), 500, 8).await;
    assert_counted(&env, &mut agg, 500).await;
}

/// Runs the aggregator with exactly `vars` (plus the database, a WAL directory and a free
/// HTTP port) until it exits by itself; its stderr.
async fn aggregator_refused(env: &TestEnv, vars: &[(String, String)], n: usize) -> String {
    let wal = env.work_dir().join(format!("wal-refused-{n}"));
    let mut all = vec![
        ("DATABASE_URL".to_owned(), env.database_url()),
        ("WAL_PATH".to_owned(), wal.to_string_lossy().into_owned()),
        ("HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    all.extend(vars.iter().cloned());
    let bin = integration_tests::aggregator_bin().await;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.env_clear()
        .envs(all)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    // Safety net only: a retry loop instead of an exit fails here.
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the aggregator kept running with {vars:?}"))
        .expect("run the aggregator");
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "{vars:?}: must exit non-zero by itself, got {}",
        out.status
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one `error` line of `stderr`, which must name `var`.
fn one_error_line(who: &str, stderr: &str, var: &str) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().to_ascii_lowercase().starts_with("error"))
        .collect();
    assert_eq!(lines.len(), 1, "{who}: one error line expected\n{stderr}");
    assert!(!stderr.contains("panicked"), "{who}: panic\n{stderr}");
    assert!(
        lines[0].contains(var),
        "{who}: the error line must name {var}: {:?}",
        lines[0]
    );
    eprintln!("{who} -> {}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_untrusted_certificates_exit_with_one_line_naming_the_variable() {
    let users = Arc::new(Security::new(AuthMode::Users, Some(true)));
    let token = Arc::new(Security::new(AuthMode::Token, Some(false)));
    let operator = Arc::new(Security::new(AuthMode::Operator, None));
    let (env, token_nats, operator_nats) = tokio::join!(
        TestEnv::start_secured(users.clone()),
        Nats::secured(token.clone()),
        Nats::secured(operator.clone())
    );
    let agg = users.env_for(AGG_USER);
    let client_cert = ["NATS_TLS_CERT", "NATS_TLS_KEY"];
    // (server URL, variables, the variable the error must name)
    let cases: Vec<(String, Vars, &str)> = vec![
        (
            env.nats.url(),
            with(agg.clone(), "NATS_PASSWORD", "wrong"),
            "NATS_PASSWORD",
        ),
        (
            env.nats.url(),
            with(agg.clone(), "NATS_TLS_CA", &file(&users, "other-ca.pem")),
            "NATS_TLS_CA",
        ),
        (
            env.nats.url(),
            without(agg.clone(), &client_cert),
            "NATS_TLS_CERT",
        ),
        (
            env.nats.url(),
            with(
                with(agg.clone(), "NATS_TLS_CERT", &file(&users, "stranger.pem")),
                "NATS_TLS_KEY",
                &file(&users, "stranger-key.pem"),
            ),
            "NATS_TLS_CERT",
        ),
        (
            env.nats.url(),
            with(users.tls_env(), "NATS_NKEY", &file(&users, "wrong.seed")),
            "NATS_NKEY",
        ),
        (env.nats.url(), users.tls_env(), "NATS_USER"),
        (
            token_nats.url(),
            with(token.env_for(""), "NATS_TOKEN", "wrong"),
            "NATS_TOKEN",
        ),
        (
            token_nats.url(),
            without(token.env_for(""), &["NATS_TLS_CA"]),
            "NATS_TLS_CA",
        ),
        (
            operator_nats.url(),
            vec![("NATS_CREDS".into(), file(&operator, "wrong.creds"))],
            "NATS_CREDS",
        ),
    ];
    for (n, (url, vars, var)) in cases.into_iter().enumerate() {
        let vars = with(vars, "NATS_URL", &url);
        let stderr = aggregator_refused(&env, &vars, n).await;
        one_error_line(&format!("aggregator {vars:?}"), &stderr, var);

        let out = publisher_output(&url, &refs(&vars), &["--count", "10", "--no-progress"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "publisher {vars:?}: must fail\n{stderr}"
        );
        one_error_line(&format!("publisher {vars:?}"), &stderr, var);
    }
}
