//! Live updates: the hub announces which coalitions a saved batch changed, and browsers follow
//! them as server-sent events at `GET /api/v1/coalitions/{id}/events`.
//!
//! The hub publishes on a [`tokio::sync::broadcast`] channel once a batch is durable, so a page
//! that reloads a view on an event reads what peers were acknowledged, never less. Events carry
//! no data of the coalition: the page fetches the views it shows with the same rights as
//! always. `EventSource` cannot set headers, so this route is used with `?token=`.
//!
//! A slow page that misses events (the channel keeps the last [`CAPACITY`]) gets one
//! `changed` event with `"lagged": true` and reloads; nothing is lost but intermediate steps.
//! When the relay shuts down the hub publishes [`Feed::Closing`] and every stream ends, so a
//! graceful shutdown is not held open by browsers.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use coalition_core::sync::DocumentId;
use futures_util::Stream;
use tokio::sync::broadcast;

use crate::api::{visible, Device};
use crate::error::AppError;
use crate::state::AppState;

/// Events the channel keeps for a receiver that has not read them yet.
pub const CAPACITY: usize = 256;

/// How often an idle stream sends a comment, so proxies and the browser keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the hub publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Feed {
    /// Documents of this coalition changed and are saved.
    Changed {
        /// The coalition (manifest id).
        coalition: DocumentId,
    },
    /// The relay is shutting down: streams end.
    Closing,
}

/// The sending side, shared by the hub and the HTTP handlers.
pub type FeedSender = broadcast::Sender<Feed>;

/// A new channel; receivers are made with [`broadcast::Sender::subscribe`].
pub fn channel() -> FeedSender {
    broadcast::channel(CAPACITY).0
}

/// `GET /api/v1/coalitions/{id}/events`: `ready` once, then `changed` whenever the
/// coalition's documents were saved.
pub async fn events(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let id = visible(&device, &id)?;
    let rx = state.feed().subscribe();
    let ready = Event::default()
        .event("ready")
        .data(format!(r#"{{"coalition":"{id}"}}"#));
    let stream =
        futures_util::stream::unfold((Some(ready), rx), move |(first, mut rx)| async move {
            if let Some(ready) = first {
                return Some((Ok(ready), (None, rx)));
            }
            loop {
                let lagged = match rx.recv().await {
                    Ok(Feed::Changed { coalition }) if coalition == id => false,
                    Ok(Feed::Changed { .. }) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Ok(Feed::Closing) | Err(broadcast::error::RecvError::Closed) => return None,
                };
                let event = Event::default().event("changed").data(format!(
                    r#"{{"coalition":"{id}","lagged":{lagged},"at":{}}}"#,
                    chrono::Utc::now().timestamp_millis()
                ));
                return Some((Ok(event), (None, rx)));
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_is_distinct_from_a_change() {
        let tx = channel();
        let mut rx = tx.subscribe();
        let id = DocumentId::new_random();
        let _ = tx.send(Feed::Changed { coalition: id });
        let _ = tx.send(Feed::Closing);
        assert_eq!(rx.try_recv().ok(), Some(Feed::Changed { coalition: id }));
        assert_eq!(rx.try_recv().ok(), Some(Feed::Closing));
    }
}
