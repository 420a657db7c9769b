//! PostgreSQL over TLS: a private cluster that accepts only `hostssl` connections, with a CA
//! and server certificate made here (SANs `localhost` and `127.0.0.1`). The aggregator
//! verifies the server (`sslmode=verify-full`) and counts exactly over it; a certificate from
//! another CA, or a plaintext connection the server refuses, stops start-up with one line
//! naming `DATABASE_URL` instead of a retry loop.

use integration_tests::pki::{Ca, Usage};
use integration_tests::{
    assert_consistent, eventually, int, run_publisher, strip_ansi, Aggregator, PgTls, Postgres,
    TestEnv,
};
use sqlx::{Connection, PgConnection};
use std::path::Path;
use std::time::Duration;

/// Only TLS over TCP: a plaintext `host` connection matches no line and is refused.
const HOSTSSL_ONLY: &str = "local all all trust\n\
                            hostssl all all 127.0.0.1/32 trust\n\
                            hostssl all all ::1/128 trust\n";

/// A cluster serving a certificate of `ca` for `localhost` / `127.0.0.1`, with `hba`.
async fn tls_env(ca: &Ca, hba: &str) -> TestEnv {
    let (cert, key) = ca.issue(
        "localhost",
        &["localhost", "127.0.0.1"],
        &[Usage::ServerAuth],
    );
    let pg = Postgres::with_tls(PgTls {
        server_cert_pem: cert,
        server_key_pem: key,
        ca_pem: ca.pem().to_owned(),
        hba: hba.into(),
    })
    .await;
    TestEnv::with_postgres(pg).await
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// `postgres://postgres@<host>:<port>/aggregator?<tls>`.
fn url(env: &TestEnv, host: &str, tls: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/aggregator?{tls}",
        env.pg.port()
    )
}

/// Whether every session of `application_name` uses TLS, and how many there are.
async fn tls_sessions(env: &TestEnv, application_name: &str) -> (i64, bool) {
    let db = env.db().await;
    sqlx::query_as(
        "SELECT count(*), coalesce(bool_and(s.ssl), false)
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = $1",
    )
    .bind(application_name)
    .fetch_one(&db)
    .await
    .unwrap()
}

/// Publishes 2000 events (500 intentional duplicates) and asserts the exact counts.
async fn publish_and_count(env: &TestEnv, agg: &mut Aggregator) {
    let args = [
        "--count",
        "2000",
        "--duplicate-rate",
        "0.25",
        "--topics",
        "4",
        "--seed",
        "13",
    ];
    let summary = run_publisher(env, &args).await;
    assert_eq!(int(&summary, "published"), 2000);
    assert_eq!(int(&summary, "unique"), 1500);
    assert_eq!(int(&summary, "duplicates"), 500);
    assert_eq!(int(&summary, "failed"), 0);
    let stats = agg.wait_until_received(2000).await;
    assert_eq!(int(&stats, "received"), 2000);
    assert_eq!(int(&stats, "unique_processed"), 1500);
    assert_eq!(int(&stats, "duplicate_dropped"), 500);
    assert_eq!(int(&stats, "dead_lettered"), 0);
    assert_consistent(&stats);
    assert_eq!(env.event_rows().await, 1500);
}

/// Starts the aggregator, expects it to exit by itself, and returns its error lines.
async fn start_up_errors(env: &TestEnv, vars: &[(&str, &str)]) -> Vec<String> {
    let mut agg = Aggregator::spawn_no_wait(env, vars).await;
    let status = agg.wait_exit().await;
    let log = std::fs::read_to_string(agg.log_path()).unwrap();
    assert!(
        !status.success() && status.code().is_some(),
        "{vars:?}: must exit non-zero by itself, got {status}\n{log}"
    );
    assert!(!log.contains("panicked"), "{vars:?}: panic\n{log}");
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.trim_start().to_ascii_lowercase().starts_with("error"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_against_a_hostssl_only_server_counts_exactly_over_tls() {
    let ca = Ca::new("aggregator test CA");
    let env = tls_env(&ca, HOSTSSL_ONLY).await;
    let ca_file = write(env.work_dir(), "ca.pem", ca.pem());

    // The server really refuses plaintext (else this test would prove nothing).
    let plain = PgConnection::connect(&url(&env, "127.0.0.1", "sslmode=disable")).await;
    let code = plain.err().and_then(|e| {
        e.as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned())
    });
    assert_eq!(code.as_deref(), Some("28000"), "plaintext must be refused");

    // The URL comes from a file, as a mounted container secret (newline and all).
    let database_url = url(
        &env,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    let url_file = write(env.work_dir(), "database-url", &format!("{database_url}\n"));
    let mut agg = Aggregator::spawn_without(
        &env,
        &["DATABASE_URL"],
        &[("DATABASE_URL_FILE", url_file.as_str())],
    )
    .await;
    agg.wait_ready().await;
    publish_and_count(&env, &mut agg).await;

    let (sessions, all_tls) = tls_sessions(&env, "aggregator").await;
    assert!(sessions >= 1, "the aggregator has no session");
    assert!(all_tls, "every aggregator session must use TLS");
    agg.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_by_ip_address_works_and_refusals_stop_start_up_naming_database_url() {
    let ca = Ca::new("aggregator test CA");
    let env = tls_env(&ca, HOSTSSL_ONLY).await;
    let ca_file = write(env.work_dir(), "ca.pem", ca.pem());
    let other_ca = write(
        env.work_dir(),
        "other-ca.pem",
        Ca::new("someone else's CA").pem(),
    );

    let by_ip = url(
        &env,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    let mut agg = Aggregator::spawn(&env, &[("DATABASE_URL", by_ip.as_str())]).await;
    assert_eq!(agg.terminate().await.code(), Some(0));

    let cases = [
        // A server certificate this CA did not sign.
        format!("sslmode=verify-full&sslrootcert={other_ca}"),
        format!("sslmode=verify-ca&sslrootcert={other_ca}"),
        // Plaintext where pg_hba.conf allows only hostssl.
        "sslmode=disable".to_string(),
    ];
    for tls in cases {
        let database_url = url(&env, "localhost", &tls);
        let errors = start_up_errors(&env, &[("DATABASE_URL", database_url.as_str())]).await;
        eprintln!("{tls} -> {errors:?}");
        assert_eq!(
            errors.len(),
            1,
            "{tls}: one error line expected: {errors:?}"
        );
        assert!(
            errors[0].contains("DATABASE_URL"),
            "{tls}: the error must name DATABASE_URL: {errors:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_not_up_yet_is_waited_for_not_a_start_up_error() {
    let ca = Ca::new("aggregator test CA");
    let mut env = tls_env(&ca, HOSTSSL_ONLY).await;
    let ca_file = write(env.work_dir(), "ca.pem", ca.pem());
    env.pg.stop();
    let database_url = url(
        &env,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    let mut agg = Aggregator::spawn_no_wait(&env, &[("DATABASE_URL", database_url.as_str())]).await;
    // A refused connection is transient: logged and retried, the process stays up.
    let log = agg.log_path().to_path_buf();
    eventually("a retried connection", Duration::from_secs(60), || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.matches("PostgreSQL not available yet").count() >= 2)
        }
    })
    .await;
    assert!(agg.is_running(), "{}", agg.log_tail());
    env.pg.start().await;
    agg.wait_ready().await;
    assert_eq!(agg.terminate().await.code(), Some(0));
}

/// `postgres` may connect over TLS (the harness); `certuser` only with a client certificate
/// whose common name is its name, signed by the server's CA.
const CLIENT_CERT_HBA: &str = "local all all trust\n\
                               hostssl all postgres 127.0.0.1/32 trust\n\
                               hostssl all postgres ::1/128 trust\n\
                               hostssl all certuser 127.0.0.1/32 cert\n\
                               hostssl all certuser ::1/128 cert\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authentication_counts_exactly_and_without_it_start_up_fails() {
    let ca = Ca::new("aggregator test CA");
    let env = tls_env(&ca, CLIENT_CERT_HBA).await;
    let admin = env.pg.pool("postgres").await;
    sqlx::query("CREATE ROLE certuser LOGIN CREATEDB")
        .execute(&admin)
        .await
        .unwrap();
    let dir = env.work_dir();
    let ca_file = write(dir, "ca.pem", ca.pem());
    let (cert, key) = ca.issue("certuser", &[], &[Usage::ClientAuth]);
    let (cert, key) = (
        write(dir, "client.crt", &cert),
        write(dir, "client.key", &key),
    );
    let other = Ca::new("someone else's CA");
    let (bad_cert, bad_key) = other.issue("certuser", &[], &[Usage::ClientAuth]);
    let bad_cert = write(dir, "other-client.crt", &bad_cert);
    let bad_key = write(dir, "other-client.key", &bad_key);
    let verify = format!("sslmode=verify-full&sslrootcert={ca_file}");
    let as_certuser = |tls: &str| {
        format!(
            "postgres://certuser@localhost:{}/aggregator?{tls}",
            env.pg.port()
        )
    };

    let cases = [
        // No client certificate: pg_hba.conf's `cert` refuses the login.
        verify.clone(),
        // A client certificate from a CA the server does not trust: the handshake fails.
        format!("{verify}&sslcert={bad_cert}&sslkey={bad_key}"),
    ];
    for tls in cases {
        let database_url = as_certuser(&tls);
        let errors = start_up_errors(&env, &[("DATABASE_URL", database_url.as_str())]).await;
        eprintln!("{tls} -> {errors:?}");
        assert_eq!(
            errors.len(),
            1,
            "{tls}: one error line expected: {errors:?}"
        );
        assert!(errors[0].contains("DATABASE_URL"), "{tls}: {errors:?}");
    }

    let database_url = as_certuser(&format!("{verify}&sslcert={cert}&sslkey={key}"));
    let mut agg = Aggregator::spawn(&env, &[("DATABASE_URL", database_url.as_str())]).await;
    publish_and_count(&env, &mut agg).await;
    let (sessions, all_tls): (i64, bool) = sqlx::query_as(
        "SELECT count(*), coalesce(bool_and(s.ssl AND s.client_dn = '/CN=certuser'), false)
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.usename = 'certuser'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(sessions >= 1, "certuser has no session");
    assert!(
        all_tls,
        "every certuser session must use TLS with its certificate"
    );
    agg.terminate().await;
}
