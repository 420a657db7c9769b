//! Which nats-server the suite runs (tests/src/nats_server.rs): the pinned current one by
//! default, `NATS_SERVER_BIN` when set, and the private servers really are that binary.

use std::ffi::OsStr;
use std::path::Path;

use integration_tests::nats_server::choose;
use integration_tests::{nats_server, pinned_version, Nats};

/// The default run exercises the server users run, not Debian's 2.9.10. Fails when the
/// pinned server is missing (`scripts/install-deps.sh --test` installs it); skipped only
/// when `NATS_SERVER_BIN` deliberately selects another one (the 2.9 smoke run).
#[test]
fn without_an_override_the_suite_runs_the_pinned_current_server() {
    if std::env::var_os("NATS_SERVER_BIN").is_some() {
        eprintln!("NATS_SERVER_BIN is set: this run is not the default one");
        return;
    }
    let (bin, why) = choose(None).expect("a nats-server");
    assert_eq!(
        bin.version,
        pinned_version(),
        "the suite would run nats-server {} at {} ({why}); run scripts/install-deps.sh --test",
        bin.version,
        bin.path.display()
    );
    assert_eq!(why, "the pinned current server");
}

#[tokio::test]
async fn a_private_server_is_the_chosen_binary() {
    let nats = Nats::new().await;
    let client = nats.connect().await;
    assert_eq!(client.server_info().version, nats_server().version);
}

#[test]
fn nats_server_bin_overrides_the_choice() {
    let old = Path::new("/usr/sbin/nats-server");
    if !old.is_file() {
        eprintln!("no /usr/sbin/nats-server on this machine");
        return;
    }
    let (bin, why) = choose(Some(old.as_os_str())).expect("Debian's nats-server");
    assert_eq!(bin.path, old);
    assert_eq!(why, "NATS_SERVER_BIN");
    let out = std::process::Command::new(old)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nats-server: v{}", bin.version)
    );
}

#[test]
fn a_nats_server_bin_that_does_not_run_is_an_error_naming_the_variable() {
    let err = choose(Some(OsStr::new("/nonexistent/nats-server"))).unwrap_err();
    assert!(
        err.starts_with("NATS_SERVER_BIN=/nonexistent/nats-server: not a working nats-server"),
        "{err}"
    );
}
