//! A private PostgreSQL cluster on a free port with its own data directory, which tests
//! may kill, stop, pause and restart freely. Never the shared server on 5432.
//!
//! `initdb` runs once per machine into a cached template directory
//! (`/tmp/it-pg-template-<major>-v1`, built under a file lock and published by an atomic
//! rename); every cluster is a `cp -a` of it. The server runs as the `postgres` OS user
//! (initdb and postgres refuse root) with the postmaster as our direct child, so we can
//! signal it.

use crate::util::spawn_service;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::util::{
    self, children_of, file_tail, free_port, kill_and_reap, log_marker, wait_dead, TempDir,
};

const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const TEMPLATE_VERSION: &str = "v1";

/// Where the PostgreSQL server binaries live and which major version they are.
#[derive(Debug, Clone)]
struct PgInstall {
    bindir: PathBuf,
    major: String,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
}

fn pg_install() -> &'static PgInstall {
    static INSTALL: OnceLock<PgInstall> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let bindir = find_bindir();
        let out = Command::new(bindir.join("postgres"))
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{}/postgres --version: {e}", bindir.display()));
        // "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let major = text
            .split(')')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.split('.').next())
            .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or_else(|| panic!("cannot parse postgres version from {text:?}"))
            .to_string();
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("OS user `postgres` not found (needed to run initdb/postgres as non-root)");
        PgInstall {
            bindir,
            major,
            uid: user.uid,
            gid: user.gid,
        }
    })
}

fn find_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("postgres").is_file() && dir.join("initdb").is_file() {
                return dir;
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return dir;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("postgres").is_file() && dir.join("initdb").is_file() {
                return dir;
            }
        }
    }
    panic!("PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH)");
}

fn chown_to_postgres(path: &Path) {
    let inst = pg_install();
    std::os::unix::fs::chown(path, Some(inst.uid.as_raw()), Some(inst.gid.as_raw()))
        .unwrap_or_else(|e| panic!("chown postgres {}: {e}", path.display()));
}

/// Returns the cached initdb template directory, creating it if needed (blocking).
fn ensure_template() -> PathBuf {
    let inst = pg_install();
    let base = PathBuf::from("/tmp");
    let name = format!("it-pg-template-{}-{TEMPLATE_VERSION}", inst.major);
    let final_dir = base.join(&name);
    if final_dir.join("PG_VERSION").is_file() {
        return final_dir;
    }
    let lock_path = base.join(format!("{name}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    // SAFETY: plain flock on an fd we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    if final_dir.join("PG_VERSION").is_file() {
        return final_dir;
    }
    let tmp = base.join(format!(
        "{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir(&tmp).unwrap_or_else(|e| panic!("mkdir {}: {e}", tmp.display()));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
    chown_to_postgres(&tmp);
    let out = Command::new(inst.bindir.join("initdb"))
        .arg("-D")
        .arg(&tmp)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .current_dir(&tmp)
        .uid(inst.uid.as_raw())
        .gid(inst.gid.as_raw())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn initdb: {e}"));
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        panic!(
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Err(e) = fs::rename(&tmp, &final_dir) {
        let _ = fs::remove_dir_all(&tmp);
        if !final_dir.join("PG_VERSION").is_file() {
            panic!("rename {} -> {}: {e}", tmp.display(), final_dir.display());
        }
    }
    drop(lock);
    final_dir
}

/// TLS of a private cluster: PEM contents of the server's certificate and key and of the CA
/// it trusts for client certificates, and the whole `pg_hba.conf` (e.g. only `hostssl`
/// lines, so that plaintext TCP connections are refused).
#[derive(Debug, Clone)]
pub struct PgTls {
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub ca_pem: String,
    pub hba: String,
}

impl PgTls {
    /// Writes the files into `dir` (owned by `postgres`, the key 0600 as the server demands)
    /// and `pg_hba.conf` into `data`; returns the server settings that use them.
    fn install(&self, dir: &Path, data: &Path) -> Vec<String> {
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            chown_to_postgres(&path);
            path.display().to_string()
        };
        let cert = write("server.crt", &self.server_cert_pem, 0o644);
        let key = write("server.key", &self.server_key_pem, 0o600);
        let ca = write("ca.crt", &self.ca_pem, 0o644);
        let hba = data.join("pg_hba.conf");
        fs::write(&hba, &self.hba).unwrap_or_else(|e| panic!("write {}: {e}", hba.display()));
        chown_to_postgres(&hba);
        vec![
            "ssl=on".into(),
            format!("ssl_cert_file={cert}"),
            format!("ssl_key_file={key}"),
            format!("ssl_ca_file={ca}"),
        ]
    }
}

/// Why a start attempt failed.
#[derive(Debug)]
enum StartError {
    PortInUse(String),
    StaleLockFile(String),
    Other(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::PortInUse(m) => write!(f, "{m} (port in use)"),
            StartError::StaleLockFile(m) => write!(f, "{m} (stale postmaster.pid)"),
            StartError::Other(m) => write!(f, "{m}"),
        }
    }
}

/// A private PostgreSQL cluster (user `postgres`, trust auth, listening on 127.0.0.1).
///
/// Dropping it SIGKILLs the postmaster and all its children (paused or not), removes
/// its SysV shared-memory segment and deletes its directory.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    child: Option<Child>,
    paused: bool,
    /// `-c` settings of a cluster started by [`Postgres::with_tls`].
    tls_settings: Vec<String>,
    // Declared last: removed after the processes are dead.
    dir: TempDir,
}

impl Postgres {
    /// Creates a cluster from the cached template, starts it on a free port and waits
    /// until a connection to database `postgres` succeeds.
    pub async fn new() -> Postgres {
        Postgres::create(None).await
    }

    /// Like [`Postgres::new`], with TLS on (`ssl=on` with `tls`'s certificate, key and CA)
    /// and `tls.hba` as `pg_hba.conf`. The harness's own connections (`url`, `pool`) use
    /// `sslmode=prefer`, so they go over TLS too.
    pub async fn with_tls(tls: PgTls) -> Postgres {
        Postgres::create(Some(tls)).await
    }

    async fn create(tls: Option<PgTls>) -> Postgres {
        let template = tokio::task::spawn_blocking(ensure_template)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let dir = TempDir::new("pg");
        chown_to_postgres(dir.path());
        let data = dir.path().join("data");
        let out = tokio::process::Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .output()
            .await
            .expect("spawn cp");
        assert!(
            out.status.success(),
            "cp -a {} {}: {}",
            template.display(),
            data.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = tokio::process::Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&data)
            .output()
            .await
            .expect("spawn chown");
        assert!(
            out.status.success(),
            "chown -R postgres {}: {}",
            data.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod data");

        let tls_settings = match &tls {
            Some(tls) => tls.install(dir.path(), &data),
            None => Vec::new(),
        };
        let mut pg = Postgres {
            port: 0,
            child: None,
            paused: false,
            tls_settings,
            dir,
        };
        for attempt in 1..=5 {
            pg.port = free_port();
            match pg.start_once().await {
                Ok(()) => return pg,
                Err(e @ StartError::PortInUse(_)) if attempt < 5 => {
                    log_marker(&pg.log_path(), &format!("{e}; retrying on another port"));
                }
                Err(e) => {
                    pg.kill();
                    panic!("postgres did not start: {e}\n{}", pg.log_tail());
                }
            }
        }
        unreachable!()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let inst = pg_install();
        let mut cmd = Command::new(inst.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args([
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
            ])
            .args(self.tls_settings.iter().flat_map(|c| ["-c", c.as_str()]))
            .current_dir(self.dir.path())
            .uid(inst.uid.as_raw())
            .gid(inst.gid.as_raw());
        let child = spawn_service(&mut cmd, &self.log_path());
        self.child = Some(child);
        self.paused = false;
    }

    async fn start_once(&mut self) -> Result<(), StartError> {
        self.spawn();
        let url = self.url("postgres");
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err: String;
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => return Err(StartError::Other("not running".into())),
            };
            if let Some(status) = exited {
                self.child = None;
                let tail = self.log_tail();
                let msg = format!("postgres exited early with {status}");
                return Err(
                    if tail.contains("Address already in use")
                        || tail.contains("could not create any TCP/IP sockets")
                    {
                        StartError::PortInUse(msg)
                    } else if tail.contains("lock file \"postmaster.pid\" already exists") {
                        StartError::StaleLockFile(msg)
                    } else {
                        StartError::Other(msg)
                    },
                );
            }
            match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "connect timed out".into(),
            }
            if Instant::now() >= deadline {
                return Err(StartError::Other(format!(
                    "not ready after {START_TIMEOUT:?} (last error: {last_err})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the cluster again on the same port and data directory (after
    /// [`Postgres::kill`] this performs crash recovery) and waits until it accepts
    /// connections. Panics if it is already running.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "Postgres::start: already running");
        log_marker(&self.log_path(), "start");
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.start_once().await {
                Ok(()) => return,
                // The pid recorded in a killed cluster's postmaster.pid may have been
                // reused by another postgres process; all of ours are dead, so drop it.
                Err(e @ StartError::StaleLockFile(_)) if attempts < 3 => {
                    log_marker(&self.log_path(), &format!("{e}; removing it"));
                    let _ = fs::remove_file(self.data_dir().join("postmaster.pid"));
                }
                Err(e @ StartError::PortInUse(_)) if attempts < 20 => {
                    log_marker(&self.log_path(), &format!("{e}; retrying"));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    self.kill();
                    panic!("postgres did not (re)start: {e}\n{}", self.log_tail());
                }
            }
        }
    }

    /// The server's TCP port (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection pool to `db` (max 10 connections, 30 s acquire timeout).
    pub async fn pool(&self, db: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.url(db))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.url(db), self.log_tail()))
    }

    /// Creates database `db` unless it exists (safe against concurrent creators).
    pub async fn create_database(&self, db: &str) {
        let mut conn = PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap_or_else(|e| panic!("connect to postgres db: {e}\n{}", self.log_tail()));
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(db)
                .fetch_one(&mut conn)
                .await
                .expect("query pg_database");
        if !exists {
            let sql = format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""));
            if let Err(e) = sqlx::query(&sql).execute(&mut conn).await {
                // 42P04 duplicate_database / 23505 unique_violation: created concurrently.
                let code = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .map(|c| c.to_string());
                if !matches!(code.as_deref(), Some("42P04") | Some("23505")) {
                    panic!("CREATE DATABASE {db}: {e}");
                }
            }
        }
        let _ = conn.close().await;
    }

    /// SIGKILLs the postmaster and every backend/auxiliary process (so a restart can
    /// reuse the port and shared memory), then reaps it. Works on a paused cluster.
    /// No-op when it is not running.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.paused = false;
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pm = child.id();
        // Freeze the postmaster so it cannot fork replacements while we kill its
        // children; SIGKILL works on stopped processes.
        util::signal(pm, Signal::SIGSTOP);
        let kids = children_of(pm);
        for &kid in &kids {
            util::signal(kid, Signal::SIGKILL);
        }
        kill_and_reap(&mut child);
        let survivors = wait_dead(&kids, Duration::from_secs(10));
        if !survivors.is_empty() {
            eprintln!(
                "integration-tests: postgres children still alive after SIGKILL: {survivors:?}"
            );
        }
    }

    /// Fast shutdown (SIGINT) and wait for it (blocking, up to 60 s; then SIGKILL and
    /// panic). Resumes a paused cluster first. No-op when it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pm = child.id();
        if self.paused {
            self.signal_all(pm, Signal::SIGCONT);
            self.paused = false;
        }
        let kids = children_of(pm);
        util::signal(pm, Signal::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    self.child = Some(child);
                    self.kill();
                    panic!(
                        "postgres did not shut down within {STOP_TIMEOUT:?}\n{}",
                        self.log_tail()
                    );
                }
            }
        }
        let survivors = wait_dead(&kids, Duration::from_secs(10));
        for &kid in &survivors {
            util::signal(kid, Signal::SIGKILL);
        }
    }

    fn signal_all(&self, pm: u32, sig: Signal) {
        for kid in children_of(pm) {
            util::signal(kid, sig);
        }
        util::signal(pm, sig);
    }

    /// Freezes the cluster: SIGSTOP to the postmaster, then to all its children.
    /// Connections stay open but queries hang until [`Postgres::resume`].
    pub fn pause(&mut self) {
        let Some(child) = &self.child else {
            return;
        };
        let pm = child.id();
        util::signal(pm, Signal::SIGSTOP);
        for kid in children_of(pm) {
            util::signal(kid, Signal::SIGSTOP);
        }
        self.paused = true;
    }

    /// Undoes [`Postgres::pause`] (SIGCONT to the children, then the postmaster).
    pub fn resume(&mut self) {
        let Some(child) = &self.child else {
            return;
        };
        self.signal_all(child.id(), Signal::SIGCONT);
        self.paused = false;
    }

    /// True while the cluster is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The server log file (stdout and stderr of the postmaster).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The last lines of the server log, for panic messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path(), 60)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        util::remove_pg_shm(&self.data_dir());
    }
}
