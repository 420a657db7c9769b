//! Progress on stderr while a run is under way.
//!
//! * stderr is a terminal: an [`indicatif`] bar with position/total, rate (ev/s) and ETA.
//! * stderr is not a terminal (CI, pipes, files): a plain line about once a second,
//!   `published N/TOTAL (R ev/s)`, which reads well in a log.
//! * `--no-progress`: neither.
//!
//! Log lines written while a bar is on screen would be torn by its redraws. [`stderr`] is a
//! writer for the logger that hides the bar for the length of each write.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::{self, Write};
use std::sync::Mutex;
use std::time::Duration;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Off,
    /// A plain line about once a second.
    Lines,
    /// A progress bar.
    Bar,
}

impl Mode {
    pub(crate) fn choose(enabled: bool, stderr_is_terminal: bool) -> Self {
        match (enabled, stderr_is_terminal) {
            (false, _) => Mode::Off,
            (true, false) => Mode::Lines,
            (true, true) => Mode::Bar,
        }
    }
}

/// The bar on screen, if any, so that log writes can step around it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active() -> Option<ProgressBar> {
    ACTIVE.lock().ok().and_then(|slot| slot.clone())
}

/// The bar of one run; cleared from the screen when dropped, however the run ends.
pub(crate) struct Bar {
    bar: ProgressBar,
}

const TEMPLATE: &str = "{spinner:.green} [{elapsed_precise}] {wide_bar:.cyan/blue} \
                        {human_pos}/{human_len} {rate} ETA {eta} {msg}";

impl Bar {
    /// A bar to `total` on stderr.
    pub(crate) fn new(total: u64) -> Self {
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} ev/s", s.per_sec());
            })
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(style);
        // Keeps elapsed time and ETA moving while sends are held up (pacing, retries).
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Ok(mut slot) = ACTIVE.lock() {
            *slot = Some(bar.clone());
        }
        Self { bar }
    }

    /// Accepted sends so far, and failed ones (shown only when there are some).
    pub(crate) fn update(&self, published: u64, failed: u64) {
        self.bar.set_position(published);
        if failed > 0 {
            self.bar.set_message(format!("({failed} failed)"));
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Ok(mut slot) = ACTIVE.lock() {
            *slot = None;
        }
        self.bar.finish_and_clear();
    }
}

/// The plain progress line.
pub(crate) fn line(published: u64, total: u64, rate: f64) -> String {
    format!("published {published}/{total} ({rate:.0} ev/s)")
}

/// Standard error for the logger (`tracing_subscriber::fmt().with_writer(stderr)`): each
/// write hides the progress bar, if one is on screen, while it happens.
pub fn stderr() -> StderrWriter {
    StderrWriter
}

/// See [`stderr`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match active() {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match active() {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf)),
            None => io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_follows_the_flag_and_the_terminal() {
        assert_eq!(Mode::choose(false, true), Mode::Off);
        assert_eq!(Mode::choose(false, false), Mode::Off);
        assert_eq!(Mode::choose(true, false), Mode::Lines);
        assert_eq!(Mode::choose(true, true), Mode::Bar);
    }

    #[test]
    fn plain_line_keeps_its_format() {
        assert_eq!(
            line(1_500, 20_000, 1_499.6),
            "published 1500/20000 (1500 ev/s)"
        );
    }
}
