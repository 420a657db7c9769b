//! Small building blocks shared by the harness: free ports, temporary directories,
//! log tails, process signalling and the `eventually` polling helper.

use std::collections::HashSet;
use std::fs;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

/// Ports handed out by this process; never hand out the same port twice.
static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a TCP port on 127.0.0.1 that is free right now and has not been handed out
/// before by this process.
///
/// Ports are picked at random *below* the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`) and checked by binding them. Staying out
/// of the ephemeral range means no outgoing connection (ours or anyone's) can grab the
/// port while a server is down between a kill and a restart on the same port. If that
/// range is unusable we fall back to binding port 0.
pub fn free_port() -> u16 {
    let mut guard = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    const LOW: u16 = 15000;
    if ephemeral_low > LOW + 1000 {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let port = rng.random_range(LOW..ephemeral_low);
            if used.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                used.insert(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if used.insert(port) {
            return port;
        }
    }
    panic!("free_port: could not find a free port");
}

/// A directory under `/tmp` (mode 0755, so other users such as `postgres` can traverse
/// it), removed recursively on drop unless `IT_KEEP_DIRS=1` is set.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/it-<prefix>-<pid>-<random>`. The first call in a process also
    /// sweeps directories left by dead test processes (see [`sweep_stale_dirs`]).
    pub fn new(prefix: &str) -> TempDir {
        let base = tmp_base();
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| sweep_stale_dirs(&base));
        for _ in 0..100 {
            let name = format!(
                "it-{prefix}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            );
            let path = base.join(name);
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
                    return TempDir { path };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("create temp dir {}: {e}", path.display()),
            }
        }
        panic!("TempDir::new: could not create a unique directory");
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("IT_KEEP_DIRS").is_some_and(|v| v == "1") {
            eprintln!("IT_KEEP_DIRS=1: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn tmp_base() -> PathBuf {
    if Path::new("/tmp").is_dir() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// Removes `it-<kind>-<pid>-<hex>` directories whose test process `<pid>` is gone (it
/// was killed without unwinding, so its `Drop`s never ran; its servers died with it
/// through `PR_SET_PDEATHSIG`), including a dead Postgres cluster's SysV segment.
/// Skipped when `IT_KEEP_DIRS=1`.
pub fn sweep_stale_dirs(base: &Path) {
    if std::env::var_os("IT_KEEP_DIRS").is_some_and(|v| v == "1") {
        return;
    }
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let parts: Vec<&str> = name.split('-').collect();
        let [it, _kind, pid, hex] = parts.as_slice() else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if *it != "it" || hex.len() != 8 || pid == me || Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        let data = entry.path().join("data");
        if let Some(pm) = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        {
            // Never touch a cluster whose postmaster still runs (pid reuse aside).
            if !is_dead(pm)
                && fs::read_link(format!("/proc/{pm}/cwd")).is_ok_and(|cwd| cwd == entry.path())
            {
                continue;
            }
            remove_pg_shm(&data);
        }
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// Removes the SysV shared-memory segment recorded in `<data>/postmaster.pid` (line 7)
/// if no process is attached to it any more. A killed cluster leaves it behind; a clean
/// shutdown removes both the segment and the file.
pub(crate) fn remove_pg_shm(data_dir: &Path) {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let Some(id) = text
        .lines()
        .nth(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<libc::c_int>().ok())
    else {
        return;
    };
    // SAFETY: shmctl with a properly sized, zeroed buffer for IPC_STAT and none for
    // IPC_RMID; at worst it fails with EINVAL/EPERM.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0 && ds.shm_nattch == 0 {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

/// The last `max_lines` lines (at most the last 64 KiB) of a log file, or a note saying
/// why it could not be read.
pub fn file_tail(path: &Path, max_lines: usize) -> String {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return format!("<cannot seek {}>", path.display());
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(max_lines);
    let mut out = format!("--- last lines of {} ---\n", path.display());
    for line in &lines[from..] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("--- end ---");
    out
}

/// `line` without its ANSI colour codes (what a terminal-style log writes around fields).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until the processed-message record has compacted to `floor` (the stream's last
/// sequence) with no record left above or below it.
pub async fn wait_compacted(db: &sqlx::PgPool, floor: i64) {
    eventually(
        &format!("the processed record compacted to floor {floor} with no record left"),
        Duration::from_secs(60),
        || async {
            let (max_floor, rows): (Option<i64>, i64) = sqlx::query_as(
                "SELECT max(floor_seq), (SELECT count(*) FROM processed_messages) FROM streams",
            )
            .fetch_one(db)
            .await
            .unwrap_or((None, -1));
            (max_floor, rows) == (Some(floor), 0)
        },
    )
    .await;
}

/// Polls `f` (every 50 ms) until it returns `true`; panics naming `what` after
/// `timeout`. The timeout is a safety net, never an assertion on timing.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("eventually: gave up after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes the child receive SIGKILL when the thread that spawned it dies, so that a test
/// process killed without unwinding (e.g. a nextest timeout) leaves no servers behind.
///
/// Caveat (Linux semantics): the signal fires when the spawning *thread* exits, so
/// long-lived children must not be spawned from short-lived threads (e.g. inside
/// `tokio::task::spawn_blocking`). The harness only spawns them from the caller's task.
pub(crate) fn die_with_parent(cmd: &mut std::process::Command) {
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to `pid`, ignoring "no such process".
pub(crate) fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Pids of the live (non-zombie) processes whose parent is `parent`, read from /proc.
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((state, ppid)) = proc_state(pid) {
            if ppid == parent && state != 'Z' && state != 'X' {
                out.push(pid);
            }
        }
    }
    out
}

/// `(state, ppid)` of a process from `/proc/<pid>/stat`, or `None` if it is gone.
pub(crate) fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True when the process is gone or a zombie (it holds no ports or memory any more).
pub(crate) fn is_dead(pid: u32) -> bool {
    match proc_state(pid) {
        None => true,
        Some((state, _)) => state == 'Z' || state == 'X',
    }
}

/// Waits (blocking, up to `timeout`) until all `pids` are dead; returns the survivors.
pub(crate) fn wait_dead(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| !is_dead(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs a child (if it is still running) and reaps it. Returns its exit status if
/// known.
pub(crate) fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Waits asynchronously (polling every 20 ms) for a child to exit, up to `timeout`.
/// Returns `None` on timeout.
pub(crate) async fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens (creating/appending) a log file and returns two handles for stdout and stderr.
/// Starts a long-running service process: stdin closed, stdout and stderr appended to
/// `log`, killed when the test process dies (see [`die_with_parent`]).
pub(crate) fn spawn_service(cmd: &mut std::process::Command, log: &Path) -> std::process::Child {
    let (out, err) = log_stdio(log);
    cmd.stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    die_with_parent(cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

pub(crate) fn log_stdio(path: &Path) -> (std::process::Stdio, std::process::Stdio) {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
    let err = file
        .try_clone()
        .unwrap_or_else(|e| panic!("dup log {}: {e}", path.display()));
    (file.into(), err.into())
}

/// Appends a marker line to a log file (e.g. before a restart).
pub(crate) fn log_marker(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "===== integration-tests: {text} =====");
    }
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn tcp_accepts(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// `SELECT count(*) ...`: the single integer `sql` returns (panics naming the query).
pub async fn count(db: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `/stats` agrees with itself: received = unique + duplicates, the totals are the sums over
/// topics, and topics are sorted by name.
pub fn assert_consistent(stats: &serde_json::Value) {
    assert_eq!(
        int(stats, "received"),
        int(stats, "unique_processed") + int(stats, "duplicate_dropped"),
        "{stats}"
    );
    let topics = stats["topics"].as_array().expect("topics array");
    let sum = |f: &str| topics.iter().map(|t| int(t, f)).sum::<i64>();
    assert_eq!(sum("received"), int(stats, "received"), "{stats}");
    assert_eq!(sum("unique_processed"), int(stats, "unique_processed"));
    assert_eq!(sum("duplicate_dropped"), int(stats, "duplicate_dropped"));
    let names: Vec<&str> = topics
        .iter()
        .map(|t| t["topic"].as_str().unwrap_or_default())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "topics must be sorted by topic: {stats}");
}

/// `/stats` shows exactly these counts, no dead letters, the matching duplicate rate, and
/// agrees with itself ([`assert_consistent`]).
pub fn assert_counts(stats: &serde_json::Value, received: i64, unique: i64, duplicates: i64) {
    assert_eq!(int(stats, "received"), received, "received: {stats}");
    assert_eq!(int(stats, "unique_processed"), unique, "unique: {stats}");
    assert_eq!(
        int(stats, "duplicate_dropped"),
        duplicates,
        "duplicates: {stats}"
    );
    assert_eq!(int(stats, "dead_lettered"), 0, "dead_lettered: {stats}");
    let rate = stats["duplicate_rate"].as_f64().expect("duplicate_rate");
    let expected = if received == 0 {
        0.0
    } else {
        duplicates as f64 / received as f64
    };
    assert!((rate - expected).abs() < 1e-9, "duplicate_rate: {stats}");
    assert_consistent(stats);
}

/// An integer field of a JSON object, panicking with the object when it is missing.
pub fn int(v: &serde_json::Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("integer {field} missing in {v}"))
}

/// The value of a metric in Prometheus text, summed over all its label sets; 0 when absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Creates the stream the aggregator would create (EVENTS on `events.>`), so a test can
/// preload it before any aggregator starts.
pub async fn create_stream(js: &async_nats::jetstream::Context) {
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create stream EVENTS");
}
