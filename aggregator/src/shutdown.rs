//! Graceful shutdown: one [`CancellationToken`] that every long-running task watches, and the
//! waits that end early when it is cancelled.
//!
//! SIGTERM or SIGINT cancels it. Intake then stops pulling and closes the buffer; workers
//! finish, commit and acknowledge what is buffered, and exit when it is empty.

use shared::backoff::Backoff;
use std::future::Future;
use std::time::Duration;
pub use tokio_util::sync::CancellationToken;

/// Between attempts of [`retry_until`]: 200 ms doubling up to 5 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
            _ = term => tracing::info!("SIGTERM received, shutting down"),
        }
        token.cancel();
    });
}

/// Sleeps for `d`, or less if `shutdown` is cancelled meanwhile.
pub async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Calls `f` until it succeeds (logging each failure, waiting longer after each), or
/// `shutdown` is cancelled (`None`).
pub async fn retry_until<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    for attempt in 1.. {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = f() => r,
        };
        let e = match result {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let delay = RETRY.delay(attempt);
        tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "{what} not available yet");
        pause(shutdown, delay).await;
        if shutdown.is_cancelled() {
            return None;
        }
    }
    None
}
