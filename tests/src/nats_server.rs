//! Which `nats-server` binary the suite runs, chosen once per test process:
//!
//! 1. `NATS_SERVER_BIN`, when set (e.g. `/usr/sbin/nats-server` for the 2.9 smoke run);
//! 2. else the pinned current server ([`PINNED_VERSION`], installed by
//!    `scripts/install-deps.sh --test` with pip), wherever pip put it or on PATH;
//! 3. else the first `nats-server` on PATH;
//! 4. else Debian's `/usr/sbin/nats-server`.
//!
//! The choice is explicit because the machines carry Debian's 2.9.10 next to the current
//! server, and the two differ in behaviour the suite depends on (stream metadata, error
//! codes, the file store's layout): a test run must say which one it exercised.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The nats-server version the suite, `scripts/install-deps.sh` and the compose files are
/// pinned to (one file, so they cannot drift apart; `scripts/validate-compose.sh` checks the
/// compose images against it).
pub fn pinned_version() -> &'static str {
    include_str!("../../scripts/lib/nats-server-version").trim()
}

/// The chosen binary and its version (`2.15.1`), e.g. for tests whose expectations differ
/// between server versions.
#[derive(Debug, Clone)]
pub struct NatsServerBin {
    pub path: PathBuf,
    pub version: String,
}

/// The binary every private server and cluster node is started from.
pub fn nats_server() -> &'static NatsServerBin {
    static CHOSEN: OnceLock<NatsServerBin> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let (bin, why) = choose(std::env::var_os("NATS_SERVER_BIN").as_deref())
            .unwrap_or_else(|e| panic!("{e}"));
        // Logged once per test process: the captured output of a failing test says which
        // server it ran against.
        eprintln!(
            "integration tests: nats-server {} at {} ({why})",
            bin.version,
            bin.path.display()
        );
        bin
    })
}

/// The path of [`nats_server`].
pub(crate) fn nats_server_bin() -> PathBuf {
    nats_server().path.clone()
}

/// The choice [`nats_server`] makes, with `override_bin` as the value of `NATS_SERVER_BIN`,
/// and why it was made; an error names the variable or says what to install.
pub fn choose(override_bin: Option<&OsStr>) -> Result<(NatsServerBin, &'static str), String> {
    if let Some(path) = override_bin.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        let version = version_of(&path).map_err(|e| {
            format!(
                "NATS_SERVER_BIN={}: not a working nats-server: {e}",
                path.display()
            )
        })?;
        return Ok((NatsServerBin { path, version }, "NATS_SERVER_BIN"));
    }
    let pinned = pinned_version();
    for path in pinned_candidates() {
        if let Ok(version) = version_of(&path) {
            if version == pinned {
                return Ok((NatsServerBin { path, version }, "the pinned current server"));
            }
        }
    }
    let fallback = on_path()
        .into_iter()
        .map(|p| (p, "first on PATH; the pinned server is not installed"))
        .chain(
            ["/usr/sbin/nats-server", "/usr/local/sbin/nats-server"]
                .into_iter()
                .map(PathBuf::from)
                .filter(|p| p.is_file())
                .map(|p| (p, "from /usr/sbin; the pinned server is not installed")),
        )
        .find_map(|(path, why)| {
            version_of(&path)
                .ok()
                .map(|version| (NatsServerBin { path, version }, why))
        });
    fallback.ok_or_else(|| {
        format!(
            "no nats-server found: set NATS_SERVER_BIN, or run scripts/install-deps.sh --test \
             (installs nats-server {pinned}), or install Debian's nats-server"
        )
    })
}

/// Where the pinned server may be: pip's scripts directories (the real binary, not a
/// pyenv shim that starts a shell per server start), then every `nats-server` on PATH.
fn pinned_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for code in [
        "import sysconfig; print(sysconfig.get_path('scripts'))",
        "import site; print(site.getuserbase() + '/bin')",
    ] {
        if let Ok(out) = Command::new("python3").arg("-c").arg(code).output() {
            if out.status.success() {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !dir.is_empty() {
                    dirs.push(PathBuf::from(dir).join("nats-server"));
                }
            }
        }
    }
    dirs.retain(|p| p.is_file());
    dirs.extend(on_path());
    dirs
}

/// Every `nats-server` on PATH, in PATH order.
fn on_path() -> Vec<PathBuf> {
    let Some(path) = std::env::var_os("PATH") else {
        return Vec::new();
    };
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .filter(|p| p.is_file())
        .collect()
}

/// `2.15.1` from `nats-server: v2.15.1`.
fn version_of(path: &Path) -> Result<String, String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("--version exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit(' ')
        .next()
        .map(|v| v.trim_start_matches('v').to_string())
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .ok_or_else(|| format!("unexpected --version output {:?}", text.trim()))
}
