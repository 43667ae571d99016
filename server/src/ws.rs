//! `GET /sync`: the WebSocket transport of the sync protocol, a thin adapter to the hub.
//!
//! The credential is checked before the upgrade, so a bad one gets a JSON 401 (or 403 for a
//! revoked device) that any HTTP client can read. After the upgrade each binary frame goes to
//! the hub as one message, and the hub's frames come back through the connection's outbox.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use coalition_core::sync::ConnId;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::api::credential;
use crate::auth::DeviceAuth;
use crate::error::AppError;
use crate::hub::{Event, HubHandle, Outgoing, OUTBOX_CAPACITY};
use crate::state::AppState;

/// Largest frame accepted from a peer. A whole document with years of a coalition's history
/// fits; a peer cannot make the relay buffer more than this for one message.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What each connection's reader allocates up front (it grows for a larger frame). Most sync
/// frames are a few hundred bytes; the default of 128 KiB, resident once touched, made idle
/// connections the largest part of a busy relay's memory.
const READ_BUFFER: usize = 8 * 1024;

/// How long a closing connection waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// WebSocket close code for a message over the size limit.
const CLOSE_TOO_BIG: u16 = 1009;

/// Whether a read failed because the peer's message is over [`MAX_FRAME`]. The WebSocket
/// library reports it only as text ("Space limit exceeded: Message too long: …").
fn is_too_long(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Message too long") || text.contains("Space limit exceeded")
}

/// A peer that does not take a frame within this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /sync`.
pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    // Authenticate first: a client must learn that its credential is refused (and keep its
    // data) rather than see a failed upgrade.
    let token = credential(&headers, &uri).ok_or(AppError::Unauthorized)?;
    let device = state.authenticate(token).await?;
    let upgrade = upgrade.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let conn = state.next_conn();
    tracing::info!(%conn, device = %device.device_id, user = %device.user, org = %device.org, "sync connection");
    Ok(upgrade
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| supervise(socket, conn, device, state)))
}

/// Runs the connection in its own task, so that a panic in it is caught here and the hub
/// still learns that the connection is gone.
async fn supervise(socket: WebSocket, conn: ConnId, device: Arc<DeviceAuth>, state: AppState) {
    let metrics_state = state.clone();
    let metrics = metrics_state.metrics();
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let hub = state.hub().clone();
    let task = tokio::spawn(run(socket, conn, device, hub.clone()));
    if let Err(e) = task.await {
        tracing::error!(%conn, error = %e, "connection task failed");
        hub.send(Event::Closed { conn }).await;
    }
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
}

/// After our close frame: read (and drop) what the peer still sends until its own close, for a
/// short while. Dropping the socket with its frames unread would reset the TCP connection, and
/// a peer that was sending fast (the one a rate limit closes) would lose our close frame and
/// never learn why.
async fn finish_closing(stream: &mut futures_util::stream::SplitStream<WebSocket>) {
    // A peer that has not closed by then is cut off all the same: the timeout is the answer.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn run(socket: WebSocket, conn: ConnId, device: Arc<DeviceAuth>, hub: HubHandle) {
    let (outbox, mut frames) = mpsc::channel(OUTBOX_CAPACITY);
    if !hub
        .send(Event::Open {
            conn,
            device,
            outbox,
        })
        .await
    {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    if !hub.send(Event::Frame { conn, bytes: bytes.to_vec() }).await {
                        break;
                    }
                }
                // The protocol is binary CBOR; a text frame goes to the engine like any other
                // bytes, which answers a malformed message with an `error` and a close.
                Some(Ok(WsMessage::Text(text))) => {
                    if !hub.send(Event::Frame { conn, bytes: text.as_bytes().to_vec() }).await {
                        break;
                    }
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Err(error)) => {
                    if is_too_long(&error) {
                        // Say why instead of dropping the socket: the peer must learn it hit a
                        // limit, not retry the same frame forever.
                        tracing::warn!(%conn, %error, "a frame over the size limit; closing");
                        let frame = CloseFrame {
                            code: CLOSE_TOO_BIG,
                            reason: format!("message too large: the limit is {MAX_FRAME} bytes").into(),
                        };
                        if tokio::time::timeout(SEND_TIMEOUT, sink.send(WsMessage::Close(Some(frame)))).await.is_err() {
                            tracing::debug!(%conn, "the close frame could not be sent in time");
                        }
                    } else {
                        tracing::debug!(%conn, %error, "websocket read failed");
                    }
                    break;
                }
            },
            outgoing = frames.recv() => match outgoing {
                Some(Outgoing::Frame(bytes)) => {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(WsMessage::Binary(bytes.into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        tracing::debug!(%conn, "websocket write failed or timed out");
                        break;
                    }
                }
                Some(Outgoing::Close { code, reason }) => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(WsMessage::Close(Some(frame)))).await;
                    if matches!(sent, Ok(Ok(()))) {
                        finish_closing(&mut stream).await;
                    } else {
                        tracing::debug!(%conn, "the close frame could not be sent");
                    }
                    break;
                }
                // The hub dropped us (slow peer) or stopped.
                None => break,
            },
        }
    }
    hub.send(Event::Closed { conn }).await;
}
