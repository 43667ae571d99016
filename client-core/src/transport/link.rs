//! [`Link`]: one connection to the relay, over WebSocket or QUIC, as the sync loop sees it.
//!
//! The loop in [`super::ws`] only sends frames, receives frames and keeps the link alive; what
//! differs between the transports stays here: a WebSocket is one ordered pipe with pings, a
//! QUIC connection is a stream per document with keep-alives and an idle timeout of its own.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::quic::{QuicEvent, QuicLink};
use super::session::error_chain;
use super::ws::{WsStream, SEND_TIMEOUT};

/// How often a WebSocket link pings a silent relay; three silent intervals drop the link.
const PING_EVERY: Duration = Duration::from_secs(15);

/// Which transport a sync used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TransportKind {
    /// QUIC (UDP).
    Quic,
    /// WebSocket (TCP).
    #[serde(rename = "websocket")]
    WebSocket,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Quic => "quic",
            TransportKind::WebSocket => "websocket",
        })
    }
}

/// What a link delivers.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A frame from the relay.
    Frame(Vec<u8>),
    /// The relay refused the credential (QUIC tells after connecting).
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The link ended.
    Closed(String),
}

/// A WebSocket, split so that reading and writing do not wait for each other.
pub(crate) struct WsLink {
    tx: SplitSink<WsStream, WsMessage>,
    rx: SplitStream<WsStream>,
}

/// One connection to the relay.
pub(crate) enum Link {
    Ws(WsLink),
    Quic(Box<QuicLink>),
}

impl From<WsStream> for Link {
    fn from(ws: WsStream) -> Link {
        let (tx, rx) = ws.split();
        Link::Ws(WsLink { tx, rx })
    }
}

impl From<QuicLink> for Link {
    fn from(quic: QuicLink) -> Link {
        Link::Quic(Box::new(quic))
    }
}

impl Link {
    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            Link::Ws(_) => TransportKind::WebSocket,
            Link::Quic(_) => TransportKind::Quic,
        }
    }

    /// Bytes on the wire so far, both ways, over QUIC (see [`QuicLink::wire_bytes`]); `None`
    /// over a WebSocket, whose TCP segments the device does not see.
    pub(crate) fn wire_bytes(&self) -> Option<u64> {
        match self {
            Link::Ws(_) => None,
            Link::Quic(quic) => Some(quic.wire_bytes()),
        }
    }

    /// Sends a frame. A WebSocket waits for the socket (up to [`SEND_TIMEOUT`]); QUIC queues
    /// it on its document's stream and returns.
    pub(crate) async fn send(&mut self, frame: Vec<u8>) -> Result<(), String> {
        match self {
            Link::Ws(ws) => {
                match tokio::time::timeout(
                    SEND_TIMEOUT,
                    ws.tx.send(WsMessage::Binary(frame.into())),
                )
                .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(error_chain(&e)),
                    Err(_) => Err("sending to the relay timed out".to_owned()),
                }
            }
            Link::Quic(quic) => {
                quic.send(frame);
                Ok(())
            }
        }
    }

    /// The next event. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> LinkEvent {
        match self {
            Link::Ws(ws) => loop {
                match ws.rx.next().await {
                    Some(Ok(WsMessage::Binary(bytes))) => return LinkEvent::Frame(bytes.to_vec()),
                    Some(Ok(WsMessage::Close(frame))) => {
                        return LinkEvent::Closed(
                            frame
                                .map(|f| {
                                    format!(
                                        "the relay closed the connection: {} {}",
                                        f.code, f.reason
                                    )
                                })
                                .unwrap_or_else(|| "the relay closed the connection".to_owned()),
                        )
                    }
                    // Pings are answered by tungstenite; text frames are not part of the
                    // protocol.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return LinkEvent::Closed(error_chain(&e)),
                    None => return LinkEvent::Closed("the relay closed the connection".to_owned()),
                }
            },
            Link::Quic(quic) => match quic.recv().await {
                QuicEvent::Frame(bytes) => LinkEvent::Frame(bytes),
                QuicEvent::Refused {
                    status,
                    code,
                    message,
                } => LinkEvent::Refused {
                    status,
                    code,
                    message,
                },
                QuicEvent::Closed(reason) => LinkEvent::Closed(reason),
            },
        }
    }

    /// How often [`Self::keepalive`] wants to run.
    pub(crate) fn keepalive_every(&self) -> Duration {
        PING_EVERY
    }

    /// Keeps a quiet link alive: a WebSocket pings, and counts as dropped after three silent
    /// intervals; QUIC sends its own keep-alives and ends itself after its idle timeout.
    pub(crate) async fn keepalive(&mut self, last_rx: Instant) -> Result<(), String> {
        match self {
            Link::Ws(ws) => {
                if last_rx.elapsed() > PING_EVERY * 3 {
                    return Err("the relay stopped answering".to_owned());
                }
                let ping = tokio::time::timeout(
                    SEND_TIMEOUT,
                    ws.tx.send(WsMessage::Ping(Default::default())),
                );
                match ping.await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err("cannot send to the relay".to_owned()),
                }
            }
            Link::Quic(_) => Ok(()),
        }
    }

    /// Ends the link politely: what is queued is sent first (within a bound).
    pub(crate) async fn close(&mut self) {
        match self {
            Link::Ws(ws) => {
                let close = ws.tx.send(WsMessage::Close(None));
                match tokio::time::timeout(Duration::from_secs(2), close).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "closing the WebSocket failed"),
                    Err(_) => tracing::debug!("closing the WebSocket timed out"),
                }
            }
            Link::Quic(quic) => quic.close(Duration::from_secs(2)).await,
        }
    }

    /// Ends a link on which the relay has answered everything with heads equal to ours: what
    /// is still in flight is at most an acknowledgement of its last answer, which the next
    /// sync makes up for, so nothing waits for the relay to confirm receipt (over QUIC that
    /// would be one more round trip, for the ends of the streams): the stream writers only
    /// get a moment to hand what they hold to the connection.
    pub(crate) async fn close_answered(&mut self) {
        match self {
            Link::Ws(_) => self.close().await,
            Link::Quic(quic) => quic.close_answered(Duration::from_millis(10)).await,
        }
    }

    /// Ends the link right after frames the relay has not acted on yet, making sure it reads
    /// them first. A WebSocket is one ordered pipe, so its close already comes after them.
    pub(crate) async fn close_delivered(&mut self) {
        match self {
            Link::Ws(_) => self.close().await,
            Link::Quic(quic) => quic.close_delivered(Duration::from_secs(5)).await,
        }
    }
}
