//! `publisher`: the command-line front of the [`publisher`] library.
//!
//! Parses the flags, sets up logging on stderr (`RUST_LOG`, default `warn`; JSON lines with
//! `--log-format json` or `LOG_FORMAT=json`), runs one publishing session and prints its summary on stdout. Exits
//! non-zero, with one `error: ...` line on stderr, when any send failed or the target could
//! not be reached.

use clap::Parser;
use publisher::{Config, SummaryFormat};
use std::io::Write;
use std::process::ExitCode;

/// Secrets that may also be given as `<NAME>_FILE` (a mounted secret).
const SECRETS_FROM_FILES: &[&str] = &["NATS_PASSWORD", "NATS_TOKEN"];

fn main() -> ExitCode {
    // Before the runtime starts threads: setting variables is only safe single-threaded.
    if let Err(e) = shared::secrets::load(SECRETS_FROM_FILES) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let config = Config::parse();
    init_tracing(config.log_format);
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(publish(config)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One publishing session: its summary on stdout, failures as one line on stderr.
async fn publish(config: Config) -> ExitCode {
    let format = config.summary;
    let summary = match publisher::run(config).await {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };

    let out = match format {
        SummaryFormat::Json => summary.to_json(),
        SummaryFormat::Text => summary.to_text(),
    };
    if let Err(e) = writeln!(std::io::stdout().lock(), "{out}") {
        eprintln!("error: cannot write the summary to stdout: {e}");
        return ExitCode::FAILURE;
    }

    if let Some(reason) = &summary.aborted {
        eprintln!(
            "error: {reason} ({} of {} sends failed)",
            summary.failed, summary.count
        );
        ExitCode::FAILURE
    } else if summary.failed > 0 {
        eprintln!(
            "error: {} of {} sends failed",
            summary.failed, summary.count
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Levels when `RUST_LOG` is unset: the publisher's summary is its output, so only problems.
const DEFAULT_LOG_FILTER: &str = "warn";

fn init_tracing(format: shared::logging::LogFormat) {
    // Like std::io::stderr, but steps around the progress bar when one is on screen.
    shared::logging::init(format, DEFAULT_LOG_FILTER, publisher::progress::stderr);
}
