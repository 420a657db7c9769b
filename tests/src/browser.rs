//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! the browser reads commands on fd 3 and writes answers and events on fd 4, each message a
//! JSON text ended by a NUL byte). No WebSocket, no port, nothing but the browser.
//!
//! Why not `--dump-dom --virtual-time-budget`: the budget is virtual time, and Chromium does
//! not let virtual time advance while a fetch is still loading. A page that holds a
//! streaming response open (the dashboard's live tail) therefore never reaches the end of its
//! budget, and the DOM is never dumped. Here the test reads the DOM when the page itself says
//! it is ready, and can act (publish, restart the service) while the page stays open.
//!
//! Chromium is found on `PATH` (`chromium`, `chromium-browser`) or at `/usr/bin/chromium`
//! (`scripts/install-deps.sh --test` installs it): a missing browser fails the test, it never
//! skips it. Every wait has a safety net (then the test fails with the DOM), never an
//! assertion on timing.

use crate::TempDir;
use base64::Engine as _;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest wait for the answer to one command (a safety net).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Chromium on `PATH` or at `/usr/bin/chromium`.
pub fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let fixed = Path::new("/usr/bin/chromium");
    fixed.is_file().then(|| fixed.to_path_buf())
}

/// The Chromium binary; a missing browser fails the test (it never skips it). Installing it
/// is `scripts/install-deps.sh --test`'s job, never a test's.
pub fn chromium() -> PathBuf {
    find_chromium().expect(
        "chromium is not installed: run scripts/install-deps.sh --test (Debian package chromium)",
    )
}

/// A pipe whose both ends close on exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// One headless Chromium, in a fresh profile and its own process group (killed, helpers and
/// all, when dropped).
pub struct Browser {
    pgid: Pid,
    _child: tokio::process::Child,
    commands: std::fs::File,
    answers: mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    stderr: PathBuf,
    _profile: TempDir,
}

/// A tab, attached with its own DevTools session.
pub struct Page {
    session: String,
}

impl Browser {
    /// Starts `bin` headless with the usual flags plus `extra`.
    pub async fn launch(bin: &Path, extra: &[&str]) -> Browser {
        let profile = TempDir::new("chromium");
        let stderr = profile.path().join("stderr.log");
        let log = std::fs::File::create(&stderr).expect("chromium stderr file");
        let (browser_reads, commands) = pipe();
        let (answers_fd, browser_writes) = pipe();
        let (r, w) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--remote-debugging-pipe",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("data").display()
        ))
        .args(extra)
        .arg("about:blank")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true);
        // SAFETY: fcntl, dup2 and close are async-signal-safe; nothing is allocated.
        // The pipe ends are first copied above fd 10 (so that placing one on 3 or 4 never
        // overwrites the other), then onto 3 and 4 without close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                let r2 = libc::fcntl(r, libc::F_DUPFD, 10);
                let w2 = libc::fcntl(w, libc::F_DUPFD, 10);
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(r2);
                libc::close(w2);
                Ok(())
            });
        }
        crate::util::die_with_parent(cmd.as_std_mut());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let pgid = Pid::from_raw(child.id().expect("chromium pid") as i32);
        // Only the browser holds its ends now: its exit is an end of file here.
        drop((browser_reads, browser_writes));

        let (tx, answers) = mpsc::unbounded_channel();
        let mut input = std::fs::File::from(answers_fd);
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..end]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Browser {
            pgid,
            _child: child,
            commands: std::fs::File::from(commands),
            answers,
            next_id: 0,
            stderr,
            _profile: profile,
        }
    }

    fn stderr_tail(&self) -> String {
        crate::util::file_tail(&self.stderr, 30)
    }

    /// Sends one command (to the browser, or to a page's session) and returns its result, or
    /// its error as `Err`.
    async fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).expect("serialize command");
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            panic!("chromium: {method}: {e}\n{}", self.stderr_tail());
        }
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Ok(Some(answer)) if answer["id"] == id => {
                    return match answer.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(answer["result"].clone()),
                    };
                }
                // An event, or the answer to an earlier command given up on.
                Ok(Some(_)) => {}
                Ok(None) => panic!("chromium exited during {method}:\n{}", self.stderr_tail()),
                Err(_) => panic!(
                    "chromium: no answer to {method} within {CALL_TIMEOUT:?}\n{}",
                    self.stderr_tail()
                ),
            }
        }
    }

    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.try_call(session, method, params).await {
            Ok(v) => v,
            Err(e) => panic!("chromium: {method} failed: {e}"),
        }
    }

    /// Opens `url` in a new tab of `width` x `height` CSS pixels.
    pub async fn open(&mut self, url: &str, width: u32, height: u32) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        };
        let s = Some(page.session.as_str());
        self.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        let nav = self.call(s, "Page.navigate", json!({ "url": url })).await;
        if let Some(err) = nav.get("errorText") {
            panic!("chromium: navigating to {url}: {err}");
        }
        page
    }

    /// Evaluates `expr` in the page; `Err` when it throws or the page has no context yet.
    pub async fn eval(&mut self, page: &Page, expr: &str) -> Result<Value, Value> {
        let r = self
            .try_call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await?;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// The DOM as it is now, serialised (`<html>...</html>`, as `--dump-dom` prints it).
    pub async fn dom(&mut self, page: &Page) -> String {
        match self.eval(page, "document.documentElement.outerHTML").await {
            Ok(Value::String(html)) => html,
            other => panic!("chromium: no DOM: {other:?}"),
        }
    }

    /// Waits until the JavaScript expression `cond` is true in the page, then returns the
    /// DOM. Panics naming `what`, with the DOM, after `timeout` (a safety net).
    pub async fn wait_for(
        &mut self,
        page: &Page,
        what: &str,
        cond: &str,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(page, cond).await == Ok(Value::Bool(true)) {
                return self.dom(page).await;
            }
            if Instant::now() >= deadline {
                let dom = self.dom(page).await;
                panic!("page: gave up after {timeout:?} waiting for: {what}\n{dom}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page's viewport, written to `path`.
    pub async fn screenshot(&mut self, page: &Page, path: &Path) {
        let shot = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser's helpers (renderer, zygote, crashpad) share its process group: none
        // outlives it.
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}
