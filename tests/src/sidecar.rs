//! A helper program a test runs beside the stack (Prometheus, an exporter): on a free port,
//! with its own directory and log file there, killed when dropped and when the test process
//! dies.

use crate::util::{free_port, kill_and_reap, spawn_service, TempDir};
use std::path::Path;
use std::process::{Child, Command};

pub struct Sidecar {
    child: Child,
    port: u16,
    // Declared last: removed after the process is dead.
    dir: TempDir,
}

impl Sidecar {
    /// Starts `program`, after `configure` added its arguments given the sidecar's directory
    /// and port; stdout and stderr go to `<dir>/<name>.log`.
    pub fn start(
        name: &str,
        program: &str,
        configure: impl FnOnce(&mut Command, &Path, u16),
    ) -> Sidecar {
        let dir = TempDir::new(name);
        let port = free_port();
        let mut cmd = Command::new(program);
        configure(&mut cmd, dir.path(), port);
        let child = spawn_service(&mut cmd, &dir.path().join(format!("{name}.log")));
        Sidecar { child, port, dir }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}
