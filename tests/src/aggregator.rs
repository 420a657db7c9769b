//! The `aggregator` binary run as a child process against a [`TestEnv`], with helpers
//! for its HTTP API (`/ready`, `/stats`, `/health`, ...) and for crash/restart tests.

use crate::util::spawn_service;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::binaries::aggregator_bin;
use crate::env::TestEnv;
use crate::util::{self, file_tail, kill_and_reap, log_marker, strip_ansi, wait_child};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
const RECEIVED_TIMEOUT: Duration = Duration::from_secs(120);

/// Configuration variables of the aggregator (DESIGN.md) that are removed from the
/// inherited environment, so a developer's shell cannot change what a test runs.
const KEPT_VARS: &[&str] = &["PATH", "HOME", "LANG", "TMPDIR", "RUST_BACKTRACE"];

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A running (or exited) aggregator process. Dropping it SIGKILLs the process.
///
/// Defaults: `NATS_URL`/`DATABASE_URL` of the env, `HTTP_ADDR=127.0.0.1:<free port>`,
/// `WAL_PATH=<env work dir>/wal-<n>` (unique per `Aggregator`, kept by
/// [`Aggregator::restart`]), `RUST_LOG=info`; `extra_env` overrides any of them.
/// Output goes to `<env work dir>/aggregator-<n>.log`.
#[derive(Debug)]
pub struct Aggregator {
    bin: PathBuf,
    vars: Vec<(String, String)>,
    addr: String,
    wal_path: PathBuf,
    log_path: PathBuf,
    pid: u32,
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
    /// Length of the log before the latest start (its lines come after).
    log_offset: u64,
    http: reqwest::Client,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

fn as_i64(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

impl Aggregator {
    /// Spawns the aggregator and waits until `GET /ready` returns 200 (panics with the
    /// log tail if it exits or is not ready within 60 s).
    pub async fn spawn(env: &TestEnv, extra_env: &[(&str, &str)]) -> Aggregator {
        let mut agg = Aggregator::spawn_no_wait(env, extra_env).await;
        agg.wait_ready().await;
        agg
    }

    /// Spawns the aggregator without waiting for readiness (e.g. to test start-up
    /// failures with [`Aggregator::wait_exit`]).
    pub async fn spawn_no_wait(env: &TestEnv, extra_env: &[(&str, &str)]) -> Aggregator {
        Aggregator::spawn_without(env, &[], extra_env).await
    }

    /// [`Aggregator::spawn_no_wait`] without the default variables named in `unset` (e.g.
    /// `DATABASE_URL`, to give it as `DATABASE_URL_FILE` instead).
    pub async fn spawn_without(
        env: &TestEnv,
        unset: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Aggregator {
        let bin = aggregator_bin().await;
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let work = env.work_dir();
        let default_wal = work.join(format!("wal-{n}"));
        let log_path = work.join(format!("aggregator-{n}.log"));
        let mut vars: Vec<(String, String)> = Vec::new();
        set_var(&mut vars, "NATS_URL", &env.nats.url());
        set_var(&mut vars, "DATABASE_URL", &env.database_url());
        // Port 0: the aggregator binds a free port and logs it (see `discover_addr`), so two
        // tests never race for one.
        set_var(&mut vars, "HTTP_ADDR", "127.0.0.1:0");
        set_var(&mut vars, "WAL_PATH", &default_wal.to_string_lossy());
        set_var(&mut vars, "RUST_LOG", "info");
        // A secured server: the aggregator's own credentials and TLS files.
        if let Some(sec) = env.nats.security() {
            for (k, v) in sec.env_for(crate::secure::AGG_USER) {
                set_var(&mut vars, &k, &v);
            }
        }
        vars.retain(|(k, _)| !unset.contains(&k.as_str()));
        for (k, v) in extra_env {
            set_var(&mut vars, k, v);
        }
        let addr = get_var(&vars, "HTTP_ADDR")
            .filter(|a| !a.ends_with(":0"))
            .unwrap_or_default();
        let wal_path = PathBuf::from(get_var(&vars, "WAL_PATH").unwrap_or_default());
        let mut agg = Aggregator {
            bin,
            vars,
            addr,
            wal_path,
            log_path,
            pid: 0,
            child: None,
            exit_status: None,
            log_offset: 0,
            http: http_client(),
        };
        agg.start_process();
        agg
    }

    fn start_process(&mut self) {
        let mut cmd = Command::new(&self.bin);
        // Hermetic: nothing from the developer's shell (any config variable, RUST_LOG, ...)
        // leaks into the aggregator; only PATH-like basics are kept.
        cmd.env_clear();
        for var in KEPT_VARS {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.log_offset = std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
        let child = spawn_service(&mut cmd, &self.log_path);
        self.pid = child.id();
        self.child = Some(child);
        self.exit_status = None;
    }

    async fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("the HTTP address is not logged yet");
        loop {
            if let Some(status) = self.poll_exit() {
                return Err(format!("aggregator exited with {status}"));
            }
            if self.addr.is_empty() {
                self.discover_addr();
            }
            if !self.addr.is_empty() {
                let url = format!("{}/ready", self.base_url());
                match self
                    .http
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(resp) if resp.status().as_u16() == 200 => return Ok(()),
                    Ok(resp) => last = format!("GET /ready -> {}", resp.status()),
                    Err(e) => last = format!("GET /ready: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after {READY_TIMEOUT:?} (last: {last})"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads the address the process bound from its log (`HTTP API listening addr=...`,
    /// text or JSON) and keeps it, also for restarts: a restarted aggregator comes back on
    /// the same address, where clients expect it.
    fn discover_addr(&mut self) {
        if let Some(addr) = self.logged_addr() {
            set_var(&mut self.vars, "HTTP_ADDR", &addr);
            self.addr = addr;
        }
    }

    /// The address the latest process logged that it listens on.
    fn logged_addr(&self) -> Option<String> {
        let log = std::fs::read(&self.log_path).ok()?;
        let start = usize::try_from(self.log_offset).unwrap_or(0).min(log.len());
        let text = String::from_utf8_lossy(&log[start..]);
        text.lines()
            .map(strip_ansi)
            .filter(|l| l.contains("HTTP API listening"))
            .find_map(|l| listening_addr(&l))
    }

    /// Waits until `GET /ready` returns 200; panics with the log tail if the process
    /// exits or 60 s pass.
    pub async fn wait_ready(&mut self) {
        if let Err(msg) = self.try_wait_ready().await {
            self.kill();
            panic!("aggregator not ready: {msg}\n{}", self.log_tail());
        }
    }

    /// Starts the process again with the same environment (same HTTP port and WAL
    /// directory), SIGKILLing it first if it is still running, and waits until ready.
    pub async fn restart(&mut self) {
        self.restart_no_wait();
        self.wait_ready().await;
    }

    /// Sets (or with `None` removes) a variable for the next [`Aggregator::restart`].
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => set_var(&mut self.vars, key, v),
            None => self.vars.retain(|(k, _)| k != key),
        }
    }

    /// Like [`Aggregator::restart`] without waiting for readiness.
    pub fn restart_no_wait(&mut self) {
        self.kill();
        log_marker(&self.log_path, "restart");
        self.start_process();
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            self.exit_status = Some(status);
            self.child = None;
            return Some(status);
        }
        None
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.poll_exit().is_none()
    }

    /// `http://<address it listens on>` (empty host while a process started with port 0 has
    /// not logged its address yet).
    pub fn base_url(&self) -> String {
        if self.addr.is_empty() {
            return format!("http://{}", self.logged_addr().unwrap_or_default());
        }
        format!("http://{}", self.addr)
    }

    /// The pid of the (latest) process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `GET <path>` that never panics: `None` when the request fails or takes over 5 s
    /// (process down, paused, ...). A body that is not JSON is returned as `Value::String`.
    pub async fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        self.fetch(path, Some(Duration::from_secs(5))).await.ok()
    }

    /// Sends `sig` while the process runs. Once it has exited and been reaped its pid may
    /// belong to any process on the machine (`pid_max` can be 32768), such as another test's
    /// paused server that a stray SIGCONT would wake, so then nothing is sent.
    pub fn signal(&mut self, sig: Signal) -> Result<(), String> {
        if !self.is_running() {
            return Err("not running".into());
        }
        util::signal(self.pid, sig);
        Ok(())
    }

    /// The WAL directory (`WAL_PATH`) of this aggregator.
    pub fn wal_path(&self) -> &Path {
        &self.wal_path
    }

    /// The log file (stdout + stderr of every run, restarts appended).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of the log, for panic messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path, 80)
    }

    /// The HTTP client used by the helpers (no proxy, 30 s timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// SIGKILLs the process and reaps it. No-op when it has exited.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(status) = kill_and_reap(&mut child) {
                self.exit_status = Some(status);
            }
        }
    }

    /// Sends SIGTERM and waits up to 60 s for the exit (then SIGKILL and panic).
    pub async fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.poll_exit() {
            return status;
        }
        util::signal(self.pid, Signal::SIGTERM);
        self.await_exit(TERMINATE_TIMEOUT, "after SIGTERM").await
    }

    /// Waits for the process to exit by itself (safety net 120 s, then SIGKILL and
    /// panic).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.poll_exit() {
            return status;
        }
        self.await_exit(EXIT_TIMEOUT, "").await
    }

    /// Waits up to `limit` for the running child to exit; SIGKILL and panic after that.
    async fn await_exit(&mut self, limit: Duration, context: &str) -> ExitStatus {
        let child = self.child.as_mut().expect("child");
        match wait_child(child, limit).await {
            Some(status) => {
                self.exit_status = Some(status);
                self.child = None;
                status
            }
            None => {
                self.kill();
                panic!(
                    "aggregator did not exit within {limit:?} {context}\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// `GET <path>` → (status, body). A body that is not JSON is returned as
    /// `Value::String`. Panics (with the log tail) when the request itself fails.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        match self.fetch(path, None).await {
            Ok(r) => r,
            Err(e) => panic!("GET {path}: {e}\n{}", self.log_tail()),
        }
    }

    async fn fetch(
        &self,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self.http.get(format!("{}{path}", self.base_url()));
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let resp = request.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, parse_body(text)))
    }

    /// `POST <path>` with a JSON body → (status, body). A body that is not JSON is
    /// returned as `Value::String`. Panics (with the log tail) when the request fails.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base_url()))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_tail()));
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("POST {path} body: {e}"));
        (status, parse_body(text))
    }

    /// `GET /stats`; panics with the body on a non-200 answer.
    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        self.http()
            .get(format!("{}/metrics", self.base_url()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("GET /metrics body")
    }

    /// A metric of `GET /metrics`, summed over its label sets (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        crate::util::metric_sum(&self.metrics_text().await, name)
    }

    /// Waits (60 s safety net) until [`Aggregator::metric`] `name` is `value`.
    pub async fn wait_metric(&self, name: &str, value: f64) {
        crate::util::eventually(
            &format!("{name} == {value}"),
            Duration::from_secs(60),
            || async { self.metric(name).await == value },
        )
        .await;
    }

    pub async fn stats(&self) -> Value {
        let (status, body) = self.get("/stats").await;
        assert!(
            status == 200,
            "GET /stats -> {status}: {body}\n{}",
            self.log_tail()
        );
        body
    }

    /// `GET /health` → (status, body).
    pub async fn health(&self) -> (u16, Value) {
        self.get("/health").await
    }

    /// `received` from `/stats`, or `None` when the aggregator does not answer 200 right now
    /// (stopped, restarting, database down).
    pub async fn received(&self) -> Option<i64> {
        let resp = self
            .http
            .get(format!("{}/stats", self.base_url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if resp.status().as_u16() != 200 {
            return None;
        }
        parse_body(resp.text().await.ok()?)["received"].as_i64()
    }

    /// Waits (90 s safety net) until `received >= n`, riding out moments it does not answer.
    pub async fn wait_received_at_least(&self, n: i64) {
        crate::util::eventually(
            &format!("received >= {n}"),
            Duration::from_secs(90),
            || async { self.received().await.is_some_and(|r| r >= n) },
        )
        .await;
    }

    /// Polls `/stats` until `received >= n` and
    /// `received == unique_processed + duplicate_dropped`; returns those stats.
    /// Panics with the last stats and the log tail after a 120 s safety timeout, or at
    /// once if the process exits.
    pub async fn wait_until_received(&mut self, n: i64) -> Value {
        let deadline = Instant::now() + RECEIVED_TIMEOUT;
        let mut last = String::from("none yet");
        loop {
            if let Some(status) = self.poll_exit() {
                panic!(
                    "aggregator exited ({status}) while waiting for received >= {n} \
                     (last stats: {last})\n{}",
                    self.log_tail()
                );
            }
            match self.fetch("/stats", None).await {
                Ok((200, stats)) => {
                    let received = as_i64(&stats, "received");
                    let unique = as_i64(&stats, "unique_processed");
                    let dups = as_i64(&stats, "duplicate_dropped");
                    if let (Some(r), Some(u), Some(d)) = (received, unique, dups) {
                        if r >= n && r == u + d {
                            return stats;
                        }
                    }
                    last = stats.to_string();
                }
                Ok((status, body)) => last = format!("GET /stats -> {status}: {body}"),
                Err(e) => last = format!("GET /stats: {e}"),
            }
            if Instant::now() >= deadline {
                panic!(
                    "received >= {n} (with received == unique_processed + duplicate_dropped) \
                     not reached within {RECEIVED_TIMEOUT:?}; last stats: {last}\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `ip:port` after `addr` on a log line (`addr=127.0.0.1:41234` or
/// `"addr":"127.0.0.1:41234"`, possibly with colour codes around).
fn listening_addr(line: &str) -> Option<String> {
    let after = &line[line.find("addr")? + 4..];
    let start = after.find(|c: char| c.is_ascii_digit())?;
    let addr: String = after[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.rsplit_once(':')
        .is_some_and(|(ip, port)| !ip.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        .then_some(addr)
}

fn parse_body(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

fn set_var(vars: &mut Vec<(String, String)>, key: &str, value: &str) {
    if let Some(slot) = vars.iter_mut().find(|(k, _)| k == key) {
        slot.1 = value.to_string();
    } else {
        vars.push((key.to_string(), value.to_string()));
    }
}

fn get_var(vars: &[(String, String)], key: &str) -> Option<String> {
    vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// Settings that make outages play out in seconds (retries, breaker, health checks, write
/// timeout), for the suites that kill, stop and pause Postgres.
pub const FAST_FAULTS: &[(&str, &str)] = &[
    ("RETRY_DELAY", "100ms"),
    ("MAX_RETRIES", "3"),
    ("CIRCUIT_BREAKER_THRESHOLD", "3"),
    ("CIRCUIT_BREAKER_TIMEOUT", "2s"),
    ("HEALTH_CHECK_INTERVAL", "300ms"),
    ("WRITE_TIMEOUT", "2s"),
];
