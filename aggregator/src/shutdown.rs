//! Graceful shutdown: one [`CancellationToken`] that every long-running task watches, and the
//! waits that end early when it is cancelled.
//!
//! The first SIGTERM or SIGINT cancels it. Readiness turns false, intake stops pulling and
//! closes the buffer; workers finish, commit and acknowledge what is buffered, and exit when
//! it is empty; the HTTP API keeps answering until then. A second signal cancels the `force`
//! token [`cancel_on_signal`] returns: the drain is given up and the process exits at once.

use shared::backoff::Backoff;
use std::future::Future;
use std::time::Duration;
pub use tokio_util::sync::CancellationToken;

/// Between attempts of [`retry_until`]: 200 ms doubling up to 5 s.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Cancels `token` on the first SIGTERM or SIGINT, and the returned token on the second (a
/// caller that cannot cut its shutdown short ignores it). Once this is called the signals no
/// longer end the process by themselves, hence the second one's token. Must be called inside
/// the runtime; the handlers are installed before it returns, so no signal is missed.
pub fn cancel_on_signal(token: CancellationToken) -> CancellationToken {
    let force = CancellationToken::new();
    let mut signals = Signals::install();
    let forced = force.clone();
    tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!("{first} received, shutting down");
        token.cancel();
        let second = signals.next().await;
        tracing::warn!("second signal ({second}) received");
        forced.cancel();
    });
    force
}

/// SIGTERM and SIGINT, as a stream of their names.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for {name}");
                    None
                }
            };
            Self {
                term: listen(SignalKind::terminate(), "SIGTERM"),
                int: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => "SIGTERM",
                _ = recv(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Sleeps for `d`, or less if `shutdown` is cancelled meanwhile.
pub async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// An error that retrying cannot fix (a certificate or credentials the server refuses): as the
/// error or attached as context, it makes [`retry_unless_permanent`] stop and hand the error back, so start-up
/// fails with one line instead of logging the same refusal forever.
#[derive(Debug)]
pub struct Permanent(pub String);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Permanent {}

/// Calls `f` until it succeeds (logging each failure, waiting longer after each), or
/// `shutdown` is cancelled (`None`).
pub async fn retry_until<T, F, Fut>(what: &str, shutdown: &CancellationToken, f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    retry(what, shutdown, f, false).await.ok().flatten()
}

/// [`retry_until`], except that an error carrying [`Permanent`] ends it at once (`Err`).
pub async fn retry_unless_permanent<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    f: F,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    retry(what, shutdown, f, true).await
}

async fn retry<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut f: F,
    stop_on_permanent: bool,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    for attempt in 1.. {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = f() => r,
        };
        let e = match result {
            Ok(v) => return Ok(Some(v)),
            Err(e) if stop_on_permanent && e.downcast_ref::<Permanent>().is_some() => {
                return Err(e)
            }
            Err(e) => e,
        };
        let delay = RETRY.delay(attempt);
        tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "{what} not available yet");
        pause(shutdown, delay).await;
        if shutdown.is_cancelled() {
            return Ok(None);
        }
    }
    Ok(None)
}
