//! Bad configuration stops start-up with one line naming the variable.

use super::common::*;
use integration_tests::{free_port, Aggregator, TempDir, TestEnv};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_with_one_line_naming_the_variable() {
    let env = TestEnv::start().await;
    let dir = TempDir::new("hostile-config");
    let not_a_dir = dir.path().join("wal-is-a-file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let not_a_dir = not_a_dir.to_string_lossy().into_owned();
    let cases: Vec<(&str, &str)> = vec![
        ("BATCH_TIMEOUT", "soon"),
        ("DATABASE_URL", "mysql://x"),
        ("NATS_URL", "nats://:x"),
        ("WAL_MAX_SIZE", "-5"),
        ("WORKERS", "0"),
        ("WAL_PATH", not_a_dir.as_str()),
        ("HTTP_ADDR", "nonsense"),
        ("MAX_DELIVER", "0"),
        ("REQUEST_TIMEOUT", "5 parsecs"),
        ("MAX_PAYLOAD_BYTES", "lots"),
        ("ACK_WAIT", "-1s"),
        ("MAX_CONCURRENT_PUBLISH", "0"),
        ("PUBLISH_QUEUE_TIMEOUT", "soon"),
        // Not shorter than REQUEST_TIMEOUT (30s): a waiting request would get 408, not 503.
        ("PUBLISH_QUEUE_TIMEOUT", "30s"),
        ("BATCH_SIZE", "1e3"),
        ("STREAM_NAME", "EVENTS.>"),
        ("SUBJECT_PREFIX", "events.>"),
        // Values that parse but would break the service silently.
        ("WRITE_TIMEOUT", "0"),
        ("REQUEST_TIMEOUT", "0ms"),
        ("HEALTH_CHECK_INTERVAL", "0s"),
        ("COMPACT_INTERVAL", "0"),
        ("CIRCUIT_BREAKER_TIMEOUT", "0s"),
        ("PUBLISH_TIMEOUT", "0"),
        ("ACK_WAIT", "0"),
        ("RETRY_DELAY", "0"),
        ("RETENTION", "100000000d"),
        ("WAL_MAX_SIZE", "1000"),
        ("MAX_RETRIES", "0"),
        ("API_TOKEN", ""),
        // A certificate file that cannot be read (not a retry loop at every connection).
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ),
        // Secrets from files: DATABASE_URL is set too (both set), the others unreadable.
        ("DATABASE_URL_FILE", "/nonexistent/database-url"),
        ("API_TOKEN_FILE", "/nonexistent/api-token"),
        ("API_READ_TOKEN_FILE", "/nonexistent/api-read-token"),
        // NATS authentication and TLS: half a pair, an unreadable or wrong file, an empty
        // secret (a refused one is in nats_security.rs).
        ("NATS_USER", "aggregator"),
        ("NATS_PASSWORD", "secret"),
        ("NATS_TOKEN", ""),
        ("NATS_TLS_CERT", not_a_dir.as_str()),
        ("NATS_TLS_KEY", not_a_dir.as_str()),
        ("NATS_TLS_CA", "/nonexistent/ca.pem"),
        ("NATS_TLS_CA", not_a_dir.as_str()),
        ("NATS_CREDS", "/nonexistent/user.creds"),
        ("NATS_CREDS", not_a_dir.as_str()),
        ("NATS_NKEY", not_a_dir.as_str()),
        ("API_READ_TOKEN", ""),
        ("API_READ_TOKEN", "  "),
        ("MAX_EVENTS_PER_REQUEST", "0"),
        // A typo is an error, not a silent fall back to text logs.
        ("LOG_FORMAT", "jsn"),
        // Stream limits: shorter than the duplicate window, not a size, below one event.
        ("STREAM_MAX_AGE", "90s"),
        ("STREAM_MAX_BYTES", "lots"),
        ("STREAM_MAX_MSG_SIZE", "64KiB"),
        ("STREAM_MAX_MSG_SIZE", "3GiB"),
        // The stream out: a prefix within SUBJECT_PREFIX (it would feed itself), not a
        // subject, a bad stream name, an empty round, no live tail allowed.
        ("OUTPUT_SUBJECT_PREFIX", "events.unique"),
        ("OUTPUT_SUBJECT_PREFIX", "unique.>"),
        ("OUTPUT_STREAM_NAME", "UNIQUE OUT"),
        ("OUTPUT_STREAM_MAX_AGE", "90s"),
        ("OUTBOX_BATCH", "0"),
        ("OUTBOX_POLL_INTERVAL", "0s"),
        ("MAX_EVENT_STREAMS", "0"),
    ];
    let nats = env.nats_url();
    let db = env.database_url();
    for (var, value) in cases {
        let wal = dir.path().join(format!("wal-{var}"));
        let wal = wal.to_string_lossy().into_owned();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut vars: Vec<(&str, &str)> = vec![
            ("NATS_URL", nats.as_str()),
            ("DATABASE_URL", db.as_str()),
            ("WAL_PATH", wal.as_str()),
            ("HTTP_ADDR", addr.as_str()),
        ];
        match vars.iter_mut().find(|(k, _)| *k == var) {
            Some(slot) => slot.1 = value,
            None => vars.push((var, value)),
        }
        let (status, _stdout, stderr) =
            run_aggregator_cmd(&[], &vars, Duration::from_secs(20)).await;
        assert!(
            !status.success() && status.code().is_some(),
            "{var}={value:?}: must exit non-zero by itself, got {status}\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{var}={value:?}: panic\n{stderr}"
        );
        let error_lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.trim_start().to_ascii_lowercase().starts_with("error"))
            .collect();
        assert_eq!(
            error_lines.len(),
            1,
            "{var}={value:?}: one error line expected\n{stderr}"
        );
        eprintln!("{var}={value:?} -> {status}: {}", error_lines[0]);
        assert!(
            error_lines[0].contains(var),
            "{var}={value:?}: the error line must name {var}: {:?}\n{stderr}",
            error_lines[0]
        );
    }
}

/// A combination no single value shows: the error line names both variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_queue_timeout_not_shorter_than_the_request_timeout_names_both() {
    let vars = [("PUBLISH_QUEUE_TIMEOUT", "5s"), ("REQUEST_TIMEOUT", "5s")];
    let (status, _stdout, stderr) = run_aggregator_cmd(&[], &vars, Duration::from_secs(20)).await;
    assert!(
        !status.success() && status.code().is_some(),
        "must exit non-zero by itself, got {status}\n{stderr}"
    );
    let error_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().to_ascii_lowercase().starts_with("error"))
        .collect();
    assert_eq!(error_lines.len(), 1, "one error line expected\n{stderr}");
    assert!(
        error_lines[0].contains("PUBLISH_QUEUE_TIMEOUT")
            && error_lines[0].contains("REQUEST_TIMEOUT"),
        "the error line must name both variables: {:?}",
        error_lines[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_help_nor_a_configuration_error_prints_a_password() {
    let secrets = ["s3cret-db", "s3cret-nats", "s3cret-token"];
    let vars = [
        (
            "DATABASE_URL",
            "postgres://u:s3cret-db@127.0.0.1:5/aggregator",
        ),
        ("NATS_URL", "nats://u:s3cret-nats@127.0.0.1:4"),
        ("API_TOKEN", "s3cret-token"),
    ];
    let (status, stdout, stderr) =
        run_aggregator_cmd(&["--help"], &vars, Duration::from_secs(20)).await;
    assert!(status.success(), "--help -> {status}\n{stderr}");
    assert!(stdout.contains("DATABASE_URL"), "{stdout}");
    for secret in secrets {
        assert!(!stdout.contains(secret), "--help shows {secret}:\n{stdout}");
    }
    let bad_urls = [
        (
            "DATABASE_URL",
            "postgres://u:s3cret-db@127.0.0.1:port/aggregator",
        ),
        ("NATS_URL", "nats://u:s3cret-nats@:x"),
    ];
    for (var, value) in bad_urls {
        let (status, stdout, stderr) =
            run_aggregator_cmd(&[], &[(var, value)], Duration::from_secs(20)).await;
        assert!(!status.success(), "{var}: must fail");
        assert!(stderr.contains(var), "{var}: {stderr}");
        for secret in secrets {
            let all = format!("{stdout}{stderr}");
            assert!(
                !all.contains(secret),
                "{var}: the error shows {secret}:\n{all}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_accepted_after_a_subcommand() {
    let env = TestEnv::start().await;
    let db = env.database_url();
    // The database URL only after the subcommand: the default one (port 5432) is not the
    // test's, so success proves the flag was taken.
    let (status, _stdout, stderr) = run_aggregator_cmd(
        &[
            "migrate",
            "--database-url",
            db.as_str(),
            "--log-format",
            "json",
        ],
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        status.success(),
        "migrate --database-url -> {status}\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("migrations applied"))
        .unwrap_or_else(|| panic!("no 'migrations applied' line\n{stderr}"));
    let json: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("--log-format json after the subcommand: {e}: {line}"));
    assert_eq!(json["message"], "migrations applied", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_carry_no_colour_codes_and_rust_log_selects_request_lines() {
    let env = TestEnv::start().await;
    let agg = Aggregator::spawn(&env, &[("RUST_LOG", "info,aggregator::http=debug")]).await;
    let (status, _) = agg.get("/stats").await;
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(agg.log_path()).unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log that is not a terminal:\n{}",
        agg.log_tail()
    );
    let request_lines = log
        .lines()
        .filter(|l| {
            l.contains("aggregator::http") && l.contains("path=/stats") && l.contains("status=200")
        })
        .count();
    assert_eq!(request_lines, 1, "one request line for GET /stats:\n{log}");
}
