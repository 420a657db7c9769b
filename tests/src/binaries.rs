//! Locating (and if needed building) the workspace binaries `aggregator` and
//! `publisher` that the tests run as child processes.
//!
//! The binaries live next to the test executable's profile directory:
//! `<target>/<profile>/deps/<test-exe>` -> `<target>/<profile>/<name>`. `cargo test`
//! does not build other packages' binaries, so each test process runs
//! `cargo build -p <pkg> --bin <name> --profile <profile>` once when the binary is
//! missing or older than its sources (so tests never run a stale binary). Set
//! `IT_SKIP_BUILD=1` to never build (the binary must then exist).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

static RESOLVED: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// The workspace root (parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `<target>/<profile>` derived from the running test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn newest_mtime(path: &Path, newest: &mut Option<SystemTime>) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                newest_mtime(&e.path(), newest);
            }
        }
    } else if let Ok(m) = meta.modified() {
        match newest {
            Some(n) if *n >= m => {}
            _ => *newest = Some(m),
        }
    }
}

/// True when some source of `package` (or of `shared`, the migrations or the workspace
/// manifests) is newer than `bin`.
fn is_stale(bin: &Path, package: &str) -> bool {
    let Ok(bin_mtime) = fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    let mut newest = None;
    for p in [
        root.join(package).join("src"),
        root.join(package).join("assets"),
        root.join(package).join("Cargo.toml"),
        root.join(package).join("build.rs"),
        root.join("shared").join("src"),
        root.join("shared").join("Cargo.toml"),
        root.join("migrations"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
    ] {
        newest_mtime(&p, &mut newest);
    }
    newest.is_some_and(|n| n > bin_mtime)
}

fn build(package: &str, bin: &str, profile_dir: &Path) {
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    // The aggregator's test-only fault injection (AGGREGATOR_FAILPOINT) is a cargo feature.
    let features: &[&str] = if package == "aggregator" {
        &["--features", "failpoints"]
    } else {
        &[]
    };
    eprintln!(
        "integration-tests: cargo build -p {package} --bin {bin} --profile {profile} {features:?}"
    );
    let out = Command::new(&cargo)
        .args(["build", "-p", package, "--bin", bin, "--profile", &profile])
        .args(features)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cargo}: {e}"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "cargo build -p {package} --bin {bin} failed ({}):\n{}",
            out.status,
            tail.join("\n")
        );
    }
}

/// True for an aggregator binary built without the `failpoints` feature, which some tests
/// need (`aggregator --version` says whether it has them).
fn lacks_failpoints(bin: &Path, package: &str) -> bool {
    if package != "aggregator" || !bin.is_file() {
        return false;
    }
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|out| !String::from_utf8_lossy(&out.stdout).contains("failpoints"))
        .unwrap_or(true)
}

/// Path of workspace binary `bin` from package `package`, building it first (once per
/// test process) when it is missing or stale. Blocking.
pub fn binary_path(package: &str, bin: &str) -> PathBuf {
    let mut guard = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(bin) {
        return p.clone();
    }
    let dir = profile_dir();
    let path = dir.join(bin);
    let skip_build = std::env::var_os("IT_SKIP_BUILD").is_some_and(|v| v == "1");
    if !skip_build && (is_stale(&path, package) || lacks_failpoints(&path, package)) {
        build(package, bin, &dir);
    }
    assert!(
        path.is_file(),
        "binary {} not found (IT_SKIP_BUILD={skip_build}); build it with \
         `cargo build --workspace --bins --features aggregator/failpoints`",
        path.display()
    );
    assert!(
        !lacks_failpoints(&path, package),
        "{} was built without its test-only failpoints (another cargo command rebuilt it); \
         build it with `cargo build --workspace --bins --features aggregator/failpoints`",
        path.display()
    );
    map.insert(bin.to_string(), path.clone());
    path
}

/// Async wrapper of [`binary_path`] (builds on a blocking thread).
pub async fn binary(package: &'static str, bin: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || binary_path(package, bin))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Path of the `aggregator` binary (built if missing or stale).
pub async fn aggregator_bin() -> PathBuf {
    binary("aggregator", "aggregator").await
}

/// Path of the `publisher` binary (built if missing or stale).
pub async fn publisher_bin() -> PathBuf {
    binary("publisher", "publisher").await
}
