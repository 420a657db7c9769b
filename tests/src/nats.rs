//! A private `nats-server -js` instance on a free port with its own store directory,
//! which tests may kill, stop, pause and restart freely. Never the shared server on 4222.

use crate::nats_server::nats_server_bin;
use crate::secure::Security;
use crate::util::spawn_service;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{
    self, file_tail, free_port, kill_and_reap, log_marker, tcp_accepts, wait_child, TempDir,
};

/// How long a (re)start may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A private NATS server with JetStream (file store under its temp dir).
///
/// Dropping it SIGKILLs the server and removes its directory.
#[derive(Debug)]
pub struct Nats {
    port: u16,
    child: Option<Child>,
    paused: bool,
    bin: PathBuf,
    /// TLS and authorization (`-c <config>`), when the server is secured.
    security: Option<Arc<Security>>,
    // Declared last: removed after the process is dead.
    dir: TempDir,
}

/// The options the harness connects with: those of `security`, else none.
pub(crate) async fn harness_options(security: Option<&Security>) -> async_nats::ConnectOptions {
    match security {
        Some(sec) => sec.client_options().await,
        None => async_nats::ConnectOptions::new(),
    }
}

impl Nats {
    /// Starts a fresh server (`-a 127.0.0.1 -p <free port> -js -sd <tmp>/nats`) and waits
    /// until it accepts TCP and JetStream answers.
    pub async fn new() -> Nats {
        Nats::start(None).await
    }

    /// Like [`Nats::new`], with the TLS and authorization of `security` (its configuration
    /// file); the harness's own connections authenticate as [`crate::secure::HARNESS_USER`].
    pub async fn secured(security: Arc<Security>) -> Nats {
        Nats::start(Some(security)).await
    }

    async fn start(security: Option<Arc<Security>>) -> Nats {
        let dir = TempDir::new("nats");
        let mut nats = Nats {
            port: 0,
            child: None,
            paused: false,
            bin: nats_server_bin(),
            security,
            dir,
        };
        // A port can be taken between picking and binding (other processes): retry.
        for attempt in 1..=5 {
            nats.port = free_port();
            nats.spawn();
            match nats.wait_ready().await {
                Ok(()) => return nats,
                Err(msg) if attempt < 5 && msg.contains("address already in use") => {
                    log_marker(&nats.log_path(), "port in use, retrying on another port");
                    continue;
                }
                Err(msg) => {
                    nats.kill();
                    panic!("nats-server did not start: {msg}\n{}", nats.log_tail());
                }
            }
        }
        unreachable!()
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("nats");
        let mut cmd = Command::new(&self.bin);
        if let Some(sec) = &self.security {
            // The flags below override the file, which only adds TLS and authorization.
            cmd.arg("-c").arg(sec.config_path());
        }
        cmd.arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(&store)
            .current_dir(self.dir.path());
        let child = spawn_service(&mut cmd, &self.log_path());
        self.child = Some(child);
        self.paused = false;
    }

    /// Waits until the port accepts TCP and JetStream answers an account-info request.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err: String;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let tail = self.log_tail();
                    let in_use = tail.to_lowercase().contains("address already in use");
                    return Err(format!(
                        "nats-server exited early with {status}{}",
                        if in_use {
                            " (address already in use)"
                        } else {
                            ""
                        }
                    ));
                }
            } else {
                return Err("nats-server is not running".into());
            }
            if tcp_accepts(self.port).await {
                match self.try_jetstream().await {
                    Ok(()) => return Ok(()),
                    Err(e) => last_err = e,
                }
            } else {
                last_err = "port does not accept TCP yet".into();
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {START_TIMEOUT:?} (last error: {last_err})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_jetstream(&self) -> Result<(), String> {
        let client = harness_options(self.security.as_deref())
            .await
            .connection_timeout(Duration::from_secs(2))
            .connect(self.url())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // A raw `$JS.API.INFO` request rather than `query_account()`: async-nats 0.42
        // cannot parse the account info of older servers (e.g. 2.9.x lacks
        // `reserved_memory`), and all we need is an answer without an error.
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request("$JS.API.INFO", bytes::Bytes::new()),
        )
        .await
        .map_err(|_| "jetstream account info timed out".to_string())?
        .map_err(|e| format!("jetstream account info: {e}"))?;
        let value: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| format!("jetstream account info is not JSON: {e}"))?;
        if value.get("error").is_some() {
            return Err(format!("jetstream account info: {value}"));
        }
        if value.get("type").and_then(|t| t.as_str())
            != Some("io.nats.jetstream.api.v1.account_info_response")
        {
            return Err(format!("unexpected jetstream account info: {value}"));
        }
        Ok(())
    }

    /// `nats://127.0.0.1:<port>` (`tls://` when the server is secured with TLS).
    pub fn url(&self) -> String {
        let scheme = self.security.as_ref().map_or("nats", |s| s.scheme());
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's security, when it is secured.
    pub fn security(&self) -> Option<&Security> {
        self.security.as_deref()
    }

    /// The server's port (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("nats")
    }

    /// A new client connection to this server.
    pub async fn connect(&self) -> async_nats::Client {
        harness_options(self.security.as_deref())
            .await
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.url(), self.log_tail()))
    }

    /// A JetStream context on a new connection.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.connect().await)
    }

    /// SIGKILLs the server and reaps it. No-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
        self.paused = false;
    }

    /// Graceful shutdown (SIGTERM), waiting up to 60 s (then SIGKILL and panic).
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.paused {
            util::signal(child.id(), Signal::SIGCONT);
            self.paused = false;
        }
        util::signal(child.id(), Signal::SIGTERM);
        if wait_child(&mut child, Duration::from_secs(60))
            .await
            .is_none()
        {
            kill_and_reap(&mut child);
            panic!("nats-server did not stop within 60s\n{}", self.log_tail());
        }
    }

    /// Starts the server again on the same port and store directory (data persists) and
    /// waits until JetStream answers. Kills the running server first, if any.
    pub async fn restart(&mut self) {
        self.kill();
        log_marker(&self.log_path(), "restart");
        self.spawn();
        if let Err(msg) = self.wait_ready().await {
            self.kill();
            panic!("nats-server did not restart: {msg}\n{}", self.log_tail());
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            util::signal(child.id(), Signal::SIGSTOP);
            self.paused = true;
        }
    }

    /// Undoes [`Nats::pause`] (SIGCONT).
    pub fn resume(&mut self) {
        if let Some(child) = &self.child {
            util::signal(child.id(), Signal::SIGCONT);
        }
        self.paused = false;
    }

    /// The server's combined stdout/stderr log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The last lines of the server log, for panic messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path(), 40)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
