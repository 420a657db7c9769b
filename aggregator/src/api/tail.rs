//! `GET /events/stream?topic=&source=`: the live tail, as Server-Sent Events.
//!
//! Each stored event of the filter is sent once, in commit order (see
//! [`crate::store::outbox`]), with its position as the SSE `id`. A client that reconnects with
//! `Last-Event-ID` (browsers do it by themselves) gets every event after that one: no gap, no
//! repeat. Without it the tail starts at the events stored from now on, and says where (an
//! `id` without data) before the first event.
//!
//! Bounded: at most `MAX_EVENT_STREAMS` tails at once (then 503 + `Retry-After`), and each has
//! a buffer of [`BUFFER`] events; a client that lets it fill is dropped (it can resume with
//! `Last-Event-ID`) rather than buffered without limit. Tails end when the service drains.

use super::state::{AppState, SharedState};
use super::{query, ApiError};
use crate::store::outbox::{Position, TailFilter};
use crate::store::Store;
use crate::telemetry::names;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::convert::Infallible;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// Events a tail may have waiting for its client before the client is dropped.
pub const BUFFER: usize = 1024;

/// Events read per query.
const PAGE: i64 = 500;

pub async fn stream(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = parse_query(query.as_deref().unwrap_or(""))?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "not ASCII".to_owned())
                .and_then(|s| s.trim().parse::<Position>())
                .map_err(|reason| ApiError::bad_field("Last-Event-ID", reason))?,
        ),
    };
    let store = state.store()?.clone();
    let permit = state
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable(format!(
                "too many live tails open (MAX_EVENT_STREAMS = {})",
                state.settings.max_event_streams
            ))
        })?;
    let head = shared_head(&state, &store);
    let start = match resume {
        Some(p) => p,
        None => store.tail_head().await.map_err(ApiError::from_db)?,
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    // The starting position first, as an id without data: a client that loses the stream
    // before its first event still resumes exactly where it started (SSE sets the last event
    // id from an event without data, and dispatches nothing).
    let _ = tx.try_send(Event::default().id(start.to_string()).comment("tail open"));
    let tail = Tail {
        store,
        filter,
        tx,
        head,
        shutdown: state.shutdown.clone(),
        _permit: permit,
    };
    tokio::spawn(tail.run(start));
    let events = tokio_stream_of(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn parse_query(query: &str) -> Result<TailFilter, ApiError> {
    let mut f = TailFilter::default();
    for (key, value) in query::pairs(Some(query))? {
        match key.as_str() {
            "topic" => f.topic = Some(query::topic(value)?),
            "source" => f.source = Some(query::source(value)?),
            other => {
                return Err(ApiError::bad_field(
                    other,
                    "unknown parameter (the live tail takes topic and source; resume with the \
                     Last-Event-ID header)",
                ))
            }
        }
    }
    Ok(f)
}

/// One client's tail.
struct Tail {
    store: Store,
    filter: TailFilter,
    tx: mpsc::Sender<Event>,
    /// The last event below the horizon, kept by one poller for every tail.
    head: watch::Receiver<Position>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl Tail {
    async fn run(mut self, start: Position) {
        metrics::gauge!(names::EVENT_STREAMS).increment(1.0);
        self.follow(start).await;
        metrics::gauge!(names::EVENT_STREAMS).decrement(1.0);
    }

    /// Sends every event of the filter after `start`, as the head moves, until the client
    /// leaves, falls behind, or the service drains.
    async fn follow(&mut self, start: Position) {
        // Every event of the filter up to `scanned` has been sent.
        let mut scanned = start;
        loop {
            let head = *self.head.borrow_and_update();
            while head > scanned {
                let rows = match self
                    .store
                    .tail_events(scanned, head, &self.filter, PAGE)
                    .await
                {
                    Ok(rows) => rows,
                    // The database is away: try again when the head moves.
                    Err(_) => break,
                };
                let full = rows.len() as i64 == PAGE;
                for row in rows {
                    let position = row.position();
                    let event = row.event.into_item().and_then(|item| {
                        Event::default()
                            .id(position.to_string())
                            .json_data(&item)
                            .ok()
                    });
                    let Some(event) = event else {
                        // Cannot happen (jsonb text is JSON); never stop the tail on it.
                        scanned = position;
                        continue;
                    };
                    match self.tx.try_send(event) {
                        Ok(()) => scanned = position,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            metrics::counter!(names::EVENT_STREAMS_DROPPED).increment(1);
                            tracing::info!(
                                "live tail dropped: its client did not keep up ({BUFFER} events \
                                 waiting); it can resume with Last-Event-ID {scanned}"
                            );
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                if !full {
                    scanned = head;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                changed = self.head.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// The live tails' head, its poller started by the first tail.
fn shared_head(state: &AppState, store: &Store) -> watch::Receiver<Position> {
    state
        .tail_head
        .get_or_init(|| {
            let (tx, rx) = watch::channel(Position::START);
            tokio::spawn(poll_head(
                store.clone(),
                tx,
                state.settings.tail_poll_interval,
                state.shutdown.clone(),
            ));
            rx
        })
        .clone()
}

/// Keeps `head` at the last event below the horizon, every `every`, until `shutdown`.
async fn poll_head(
    store: Store,
    head: watch::Sender<Position>,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    loop {
        if let Ok(h) = store.tail_head().await {
            head.send_if_modified(|old| {
                let moved = h > *old;
                if moved {
                    *old = h;
                }
                moved
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
