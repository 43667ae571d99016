//! The sync loop and the WebSocket transport: connects to the relay (over QUIC when the
//! device has the relay's pin and UDP gets through, else over WebSocket at `/sync`) with the
//! device credential and drives a [`Session`] with the frames.
//!
//! - [`connect`] opens the WebSocket (`Authorization: Bearer`, rustls for `wss://`). A relay
//!   that refuses the credential answers 401/403 with a JSON error before the upgrade; that
//!   becomes [`ConnectError::Refused`] with the relay's code and message, and nothing is
//!   written. Over QUIC the same refusal arrives as the relay's first answer, before any
//!   document message.
//! - Choosing the transport ([`Transport`]): `auto` starts QUIC, gives it a head start
//!   ([`SyncOptions::quic_head_start`]) and then races a WebSocket against it; the first to
//!   connect carries the sync (QUIC wins a tie). A watching device that fell back to
//!   WebSocket tries QUIC again every [`SyncOptions::quic_retry`] and moves back when it
//!   answers.
//! - The loop sends the session's frames smallest first across documents (each document's
//!   own frames stay in order): one small recent change is not held behind a large initial
//!   load. With a [`SyncOptions::budget`], it stops before a frame that would pass it and
//!   leaves the rest for the next sync.
//! - [`sync_once`] runs one exchange until it is done (every shared document answered with
//!   heads equal to ours), quiet (every document answered and no frame for
//!   [`SyncOptions::settle`]: a refusal or an unavailable document leaves heads apart) or
//!   [`SyncOptions::timeout`] passes.
//! - [`watch`] stays connected, merges edits other processes write to the store, and
//!   reconnects with exponential backoff and jitter when the link drops; it stops when its
//!   `shutdown` future completes or the credential is refused.
//!
//! After every sync, per-document results go to the store for `coalition status` (see
//! [`mod@super::status`]): when each document was last in sync with the relay, and the last error
//! that left it behind.
//!
//! Every network wait is bounded: connecting by [`SyncOptions::connect_timeout`], sending by
//! [`SEND_TIMEOUT`], and a connected link that stays silent counts as dropped (three ping
//! intervals for a WebSocket, QUIC's idle timeout).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header::AUTHORIZATION, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::enroll::{snippet, ApiErrorBody};
use super::link::{Link, LinkEvent, TransportKind};
use super::priority::Outbox;
use super::quic::pin::QuicEndpoint;
use super::quic::wire::Congestion;
use super::quic::{self, QuicError, QuicLink, QuicTarget};
use super::session::{error_chain, Session, SessionError, SessionEvent, SyncStats};
use super::status::DocBook;
use super::watcher::StoreWatcher;
use super::{keys, sync_url};
use crate::store::{Store, StoreError};
use crate::sync::{DocumentId, EngineConfig, PeerId, PeerMetadata, StorageId};

/// The socket type [`connect`] returns.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one frame may take to be written before the link counts as dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest frame accepted: the first sync of a big coalition document comes in one
/// message, and tungstenite's 16 MiB frame default would refuse it.
const MAX_FRAME: usize = 256 << 20;

/// Why the relay could not be connected to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server URL is not an http(s) or ws(s) URL.
    #[error("`{0}` is not a relay URL (expected http://, https://, ws:// or wss://)")]
    InvalidServerUrl(String),
    /// The credential cannot go in a header (it has control characters).
    #[error("the stored credential is not a valid header value; enroll again")]
    InvalidCredential,
    /// The relay could not be reached (refused, unknown host, TLS failure).
    #[error("cannot reach the relay at {url}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The cause.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// Connecting took longer than [`SyncOptions::connect_timeout`].
    #[error("cannot reach the relay at {url}: no answer within {timeout:?}")]
    TimedOut {
        /// The URL tried.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// The relay refused this device's credential (401/403): unknown, or the device was
    /// revoked.
    #[error("the relay refused this device's credential: {message} ({code})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The relay's error code (`unauthorized`, `device_revoked`...).
        code: String,
        /// The relay's message.
        message: String,
    },
    /// The relay answered the upgrade with another HTTP status.
    #[error("the relay at {url} answered HTTP {status}: {body}")]
    Http {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// QUIC was asked for, but the device has no pin for the relay (its invite had none).
    #[error("this device has no QUIC pin for the relay: enroll with an invite that carries one, or sync over WebSocket")]
    NoQuicPin,
    /// The relay could not be reached over QUIC.
    #[error(transparent)]
    Quic(#[from] QuicError),
}

/// Why a sync stopped before it could report a summary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The store has no relay URL or no credential: the device was never enrolled.
    #[error("this device is not enrolled: run `coalition enroll --server URL --invite CODE`")]
    NotEnrolled,
    /// The relay could not be connected to.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The session failed (the store could not save a received change).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which transport to sync over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// QUIC when the device has the relay's pin and UDP gets through, else WebSocket; back to
    /// QUIC when it answers again.
    #[default]
    Auto,
    /// QUIC only (fails when the device has no pin for the relay).
    Quic,
    /// WebSocket only.
    WebSocket,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Transport::Auto),
            "quic" => Ok(Transport::Quic),
            "ws" | "websocket" => Ok(Transport::WebSocket),
            other => Err(format!(
                "`{other}` is not a transport (auto, quic or websocket)"
            )),
        }
    }
}

/// How to sync, and with whom.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The relay's base URL.
    pub server: String,
    /// The device credential.
    pub credential: String,
    /// The coalitions to sync (manifest ids).
    pub coalitions: Vec<DocumentId>,
    /// Our peer id in the sync protocol.
    pub peer_id: PeerId,
    /// Our storage id (stable for the life of the store).
    pub storage_id: StorageId,
    /// How long the exchange must be silent, with every document answered, to count as done
    /// when some document's heads still differ from the relay's.
    pub settle: Duration,
    /// How long [`sync_once`] may take in all before it reports what is left unanswered.
    pub timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How often [`watch`] looks for edits other processes wrote to the store.
    pub poll_interval: Duration,
    /// The longest wait between two reconnection attempts.
    pub max_backoff: Duration,
    /// Which transport to use.
    pub transport: Transport,
    /// The relay's QUIC port and certificate pin, from the invite; without it the device
    /// syncs over WebSocket.
    pub quic: Option<QuicEndpoint>,
    /// The QUIC congestion controller.
    pub congestion: Congestion,
    /// How long QUIC may try alone before a WebSocket races it (`auto`).
    pub quic_head_start: Duration,
    /// How often a watching device on WebSocket tries QUIC again (`auto`).
    pub quic_retry: Duration,
    /// The most bytes (sent and received frames) one sync may move, for metered links. The
    /// sync stops before a frame that would pass it, smallest frames first; what is left goes
    /// next time.
    pub budget: Option<u64>,
}

impl SyncOptions {
    /// Options from the device settings the store holds (see [`super::enroll()`]);
    /// `server` overrides the stored relay URL for this run.
    pub fn from_store(store: &Store, server: Option<&str>) -> Result<Self, SyncError> {
        let server = match server {
            Some(s) => s.to_owned(),
            None => store.meta(keys::SERVER)?.ok_or(SyncError::NotEnrolled)?,
        };
        let credential = store
            .meta(keys::CREDENTIAL)?
            .ok_or(SyncError::NotEnrolled)?;
        // One peer id per process: two `coalition` processes of one device (a `--watch` and a
        // one-off sync) must not replace each other's connection at the relay. Every frame
        // carries the peer ids, so they are short; the device is identified by its credential.
        let peer_id = PeerId::new(format!("{:010x}", rand::random::<u64>() & 0xff_ffff_ffff));
        Ok(SyncOptions {
            server,
            credential,
            coalitions: super::synced_coalitions(store)?,
            peer_id,
            storage_id: StorageId::new(super::storage_id(store)?),
            settle: Duration::from_millis(300),
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(15),
            poll_interval: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            transport: Transport::Auto,
            quic: super::quic_endpoint(store)?,
            congestion: Congestion::default(),
            quic_head_start: Duration::from_secs(2),
            quic_retry: Duration::from_secs(60),
            budget: None,
        })
    }

    fn engine_config(&self) -> EngineConfig {
        let mut config = EngineConfig::new(self.peer_id.clone());
        config.metadata = PeerMetadata {
            storage_id: Some(self.storage_id.clone()),
            is_ephemeral: false,
        };
        config
    }

    /// Where QUIC goes, if the device may use it.
    fn quic_target(&self) -> Result<Option<QuicTarget>, ConnectError> {
        let Some(endpoint) = self.quic else {
            return Ok(None);
        };
        let host = super::host_of(&self.server)
            .ok_or_else(|| ConnectError::InvalidServerUrl(self.server.clone()))?;
        Ok(Some(QuicTarget {
            host,
            endpoint,
            congestion: self.congestion,
        }))
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Every document was answered and the exchange went quiet.
    Complete,
    /// [`SyncOptions::timeout`] passed with documents still unanswered.
    TimedOut,
    /// The link dropped or the relay closed it.
    LinkLost {
        /// Why.
        reason: String,
    },
    /// The caller asked to stop.
    Stopped,
    /// [`SyncOptions::budget`] was reached; what was sent and received is kept, the rest goes
    /// next time.
    BudgetReached {
        /// The budget, in bytes.
        budget: u64,
    },
}

/// What one [`sync_once`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncSummary {
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The transport it used.
    pub transport: TransportKind,
    /// Documents synced (shared with the relay).
    pub documents: usize,
    /// Documents the relay has not answered about.
    pub unanswered: Vec<DocumentId>,
    /// Documents with local changes not known to be on the relay at the end.
    pub unsent: Vec<DocumentId>,
    /// Counters: bytes each way, documents received and refused, warnings.
    pub stats: SyncStats,
    /// Bytes on the wire both ways over QUIC: UDP payloads, with packet headers,
    /// acknowledgements, retransmissions and the handshake, and frames as they went (deflated
    /// or not). What a metered link bills; `None` over a WebSocket.
    pub wire_bytes: Option<u64>,
}

/// Something a running sync reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// From the session: connected, a remote change, a document unavailable, a warning.
    Session(SessionEvent),
    /// Every document is answered and the link is quiet; local changes were recorded as
    /// synced.
    Quiet {
        /// Documents whose local changes are still not on the relay.
        unsent: usize,
    },
    /// The link dropped; the next attempt is in `retry_in`.
    Dropped {
        /// Why.
        reason: String,
        /// The wait before reconnecting.
        retry_in: Duration,
    },
    /// A connection to the relay is up over this transport.
    Linked {
        /// QUIC or WebSocket.
        transport: TransportKind,
    },
}

/// The rustls client configuration for `wss://`: the `ring` provider and Mozilla's roots,
/// so no system library or certificate store is needed.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the WebSocket to `{server}/sync` with the credential.
pub async fn connect(
    server: &str,
    credential: &str,
    timeout: Duration,
) -> Result<WsStream, ConnectError> {
    let url = sync_url(server).ok_or_else(|| ConnectError::InvalidServerUrl(server.to_owned()))?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|_| ConnectError::InvalidServerUrl(server.to_owned()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {credential}"))
        .map_err(|_| ConnectError::InvalidCredential)?;
    request.headers_mut().insert(AUTHORIZATION, bearer);
    let connector = if url.starts_with("wss://") {
        let tls = tls_config().map_err(|e| ConnectError::Unreachable {
            url: url.clone(),
            source: Box::new(tungstenite::Error::Tls(e.into())),
        })?;
        Some(tokio_tungstenite::Connector::Rustls(tls))
    } else {
        Some(tokio_tungstenite::Connector::Plain)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let attempt =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(ConnectError::TimedOut { url, timeout }),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let parsed = serde_json::from_str::<ApiErrorBody>(&body).ok();
            if status == 401 || status == 403 {
                let (code, message) = match parsed {
                    Some(ApiErrorBody { error }) => (error.code, error.message),
                    None => (
                        if status == 401 {
                            "unauthorized"
                        } else {
                            "forbidden"
                        }
                        .to_owned(),
                        snippet(&body),
                    ),
                };
                return Err(ConnectError::Refused {
                    status,
                    code,
                    message,
                });
            }
            let body = match parsed {
                Some(ApiErrorBody { error }) => format!("{} ({})", error.message, error.code),
                None => snippet(&body),
            };
            Err(ConnectError::Http { url, status, body })
        }
        Ok(Err(source)) => Err(ConnectError::Unreachable {
            url,
            source: Box::new(source),
        }),
    }
}

/// A QUIC connection attempt, boxed so the loop can poll it beside everything else.
type QuicAttempt = std::pin::Pin<Box<dyn Future<Output = Result<QuicLink, QuicError>>>>;

fn quic_attempt(target: QuicTarget, credential: String, timeout: Duration) -> QuicAttempt {
    Box::pin(async move { quic::connect(&target, &credential, timeout).await })
}

/// Opens a link to the relay over the transport [`SyncOptions::transport`] asks for. In
/// `auto`, QUIC starts alone; after [`SyncOptions::quic_head_start`] a WebSocket races it
/// and the first link up wins. A refused credential ends the race at once.
pub(crate) async fn connect_link(options: &SyncOptions) -> Result<Link, ConnectError> {
    let ws = || {
        connect(
            &options.server,
            &options.credential,
            options.connect_timeout,
        )
    };
    let target = options.quic_target()?;
    let target = match (options.transport, target) {
        (Transport::WebSocket, _) | (Transport::Auto, None) => return Ok(ws().await?.into()),
        (Transport::Quic, None) => return Err(ConnectError::NoQuicPin),
        (Transport::Quic, Some(t)) => {
            return Ok(
                quic::connect(&t, &options.credential, options.connect_timeout)
                    .await?
                    .into(),
            )
        }
        (Transport::Auto, Some(t)) => t,
    };
    let mut quic = quic_attempt(target, options.credential.clone(), options.connect_timeout);
    tokio::select! {
        r = &mut quic => match r {
            Ok(link) => return Ok(link.into()),
            Err(e) => {
                tracing::info!(error = %error_chain(&e), "QUIC unavailable; using WebSocket");
                return Ok(ws().await?.into());
            }
        },
        _ = tokio::time::sleep(options.quic_head_start) => {}
    }
    let mut websocket = pin!(ws());
    let mut quic_failed: Option<QuicError> = None;
    loop {
        tokio::select! {
            // QUIC wins a tie.
            biased;
            r = &mut quic, if quic_failed.is_none() => match r {
                Ok(link) => return Ok(link.into()),
                Err(e) => quic_failed = Some(e),
            },
            r = &mut websocket => {
                return match r {
                    Ok(ws) => Ok(ws.into()),
                    Err(e) => {
                        // Both failed: say why the WebSocket did (the fallback), unless QUIC
                        // is still trying.
                        if quic_failed.is_some() || matches!(e, ConnectError::Refused { .. }) {
                            Err(e)
                        } else {
                            match quic.await {
                                Ok(link) => Ok(link.into()),
                                Err(_) => Err(e),
                            }
                        }
                    }
                };
            }
        }
    }
}

/// Whether a drive is a one-off sync (with its deadline) or a watch.
enum Mode<'w> {
    Once {
        deadline: Instant,
    },
    Watch {
        watcher: Option<&'w mut StoreWatcher>,
    },
}

/// How a drive ended: with an outcome, or by moving to a better link (back to QUIC).
enum Ended {
    Outcome(Outcome),
    SwitchTo(Link),
}

/// Runs one connection until it ends. Frames leave only after the batch of engine actions
/// that produced them was carried out (received changes saved first), smallest first across
/// documents ([`Outbox`]).
#[allow(clippy::too_many_arguments)]
async fn drive<S: Future<Output = ()>>(
    session: &mut Session<'_>,
    link: &mut Link,
    options: &SyncOptions,
    mut mode: Mode<'_>,
    mut shutdown: std::pin::Pin<&mut S>,
    on_event: &mut dyn FnMut(&WatchEvent),
    book: &mut DocBook,
) -> Result<Ended, SyncError> {
    session.connect(std::time::Instant::now())?;
    on_event(&WatchEvent::Linked {
        transport: link.kind(),
    });
    let watching = matches!(mode, Mode::Watch { .. });
    let mut last_activity = Instant::now();
    let mut last_rx = Instant::now();
    // Something happened since the last checkpoint (watch mode records after each burst).
    let mut dirty = true;
    let mut outbox = Outbox::default();
    // Bytes of frames that went to the link (the session counts frames as it hands them to
    // the outbox, and a budget is about what leaves).
    let mut sent: u64 = 0;
    let mut poll = tokio::time::interval(options.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = link.keepalive_every();
    let mut keepalive = tokio::time::interval_at(Instant::now() + every, every);
    // A watching device that fell back to WebSocket looks for QUIC again from time to time.
    let quic_target = match (watching, options.transport, link.kind()) {
        (true, Transport::Auto, TransportKind::WebSocket) => options.quic_target()?,
        _ => None,
    };
    let mut next_probe = Instant::now() + options.quic_retry;
    let mut probe: Option<QuicAttempt> = None;
    let end = |outcome| Ok(Ended::Outcome(outcome));
    loop {
        if let Some(reason) = emit(session, on_event) {
            return end(Outcome::LinkLost { reason });
        }
        while let Some(frame) = session.poll_transmit() {
            book.saw(&frame);
            outbox.push(frame);
        }
        while let Some(len) = outbox.peek_len() {
            if let Some(budget) = options.budget {
                let spent = sent + session.stats().bytes_received;
                if spent + len as u64 > budget {
                    withdraw(session, &mut outbox);
                    link.close_delivered().await;
                    return end(Outcome::BudgetReached { budget });
                }
            }
            let Some(frame) = outbox.pop() else { break };
            last_activity = Instant::now();
            sent += frame.len() as u64;
            if let Err(reason) = link.send(frame).await {
                withdraw(session, &mut outbox);
                return end(Outcome::LinkLost { reason });
            }
        }
        let settled = session.all_answered() && outbox.is_empty() && (dirty || !watching);
        // The relay's last word on every document is heads equal to ours: a one-off sync has
        // nothing left to wait for (what other devices send from now on is the next sync's).
        let in_step = settled && !watching && session.unsent().is_empty();
        let settle_at = if in_step {
            Instant::now()
        } else {
            last_activity + options.settle
        };
        let engine_at = session.poll_timeout().map(Instant::from_std);
        let deadline = match mode {
            Mode::Once { deadline } => Some(deadline),
            Mode::Watch { .. } => None,
        };
        tokio::select! {
            event = link.recv() => {
                last_rx = Instant::now();
                match event {
                    LinkEvent::Frame(bytes) => {
                        last_activity = Instant::now();
                        dirty = true;
                        book.saw(&bytes);
                        session.receive(&bytes, std::time::Instant::now())?;
                        if let Some(budget) = options.budget {
                            let spent = sent + session.stats().bytes_received;
                            if spent >= budget {
                                emit(session, on_event);
                                withdraw(session, &mut outbox);
                                link.close_delivered().await;
                                return end(Outcome::BudgetReached { budget });
                            }
                        }
                    }
                    LinkEvent::Refused { status, code, message } => {
                        return Err(ConnectError::Refused { status, code, message }.into());
                    }
                    LinkEvent::Closed(reason) => {
                        session.disconnected()?;
                        emit(session, on_event);
                        return end(Outcome::LinkLost { reason });
                    }
                }
            }
            _ = tokio::time::sleep_until(settle_at), if settled => {
                session.checkpoint()?;
                book.record_quiet(session);
                dirty = false;
                let unsent = session.unsent().len();
                on_event(&WatchEvent::Quiet { unsent });
                if !watching {
                    if in_step {
                        link.close_answered().await;
                    } else {
                        link.close().await;
                    }
                    return end(Outcome::Complete);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                link.close().await;
                return end(Outcome::TimedOut);
            }
            _ = tokio::time::sleep_until(engine_at.unwrap_or_else(Instant::now)), if engine_at.is_some() => {
                session.handle_timeout(std::time::Instant::now())?;
            }
            _ = poll.tick(), if watching => {
                if let Mode::Watch { watcher: Some(watcher), .. } = &mut mode {
                    for chunk in watcher.changes()? {
                        session.merge_from_store(chunk.doc_id, &chunk.coalition, &chunk.bytes)?;
                        dirty = true;
                    }
                }
            }
            _ = keepalive.tick(), if watching => {
                if let Err(reason) = link.keepalive(last_rx).await {
                    session.disconnected()?;
                    emit(session, on_event);
                    return end(Outcome::LinkLost { reason });
                }
            }
            _ = tokio::time::sleep_until(next_probe), if quic_target.is_some() && probe.is_none() => {
                if let Some(target) = &quic_target {
                    probe = Some(quic_attempt(target.clone(), options.credential.clone(), options.connect_timeout));
                }
            }
            r = async { match probe.as_mut() { Some(p) => p.await, None => std::future::pending().await } }, if probe.is_some() => {
                probe = None;
                match r {
                    Ok(quic) => {
                        tracing::info!("QUIC answers again; moving the sync back to it");
                        session.checkpoint()?;
                        book.record_quiet(session);
                        link.close().await;
                        session.disconnected()?;
                        emit(session, on_event);
                        return Ok(Ended::SwitchTo(quic.into()));
                    }
                    Err(e) => {
                        tracing::debug!(error = %error_chain(&e), "QUIC still unavailable");
                        next_probe = Instant::now() + options.quic_retry;
                    }
                }
            }
            _ = &mut shutdown => {
                link.close().await;
                return end(Outcome::Stopped);
            }
        }
    }
}

/// Frames still in the outbox when a drive ends were never sent: they stop counting as sent.
fn withdraw(session: &mut Session<'_>, outbox: &mut Outbox) {
    while let Some(frame) = outbox.pop() {
        session.not_sent(&frame);
    }
}

/// Hands the session's events to the caller; returns why the engine closed the connection,
/// if it did.
fn emit(session: &mut Session<'_>, on_event: &mut dyn FnMut(&WatchEvent)) -> Option<String> {
    let mut closed = None;
    while let Some(event) = session.poll_event() {
        if let SessionEvent::Closed { reason } = &event {
            closed = Some(format!("the sync engine closed the connection: {reason:?}"));
        }
        on_event(&WatchEvent::Session(event));
    }
    closed
}

/// Syncs once: connects, exchanges until quiet (or [`SyncOptions::timeout`]), and reports.
///
/// Returns an error when the relay cannot be reached or refuses the credential (nothing is
/// written to the store then) or when a received change cannot be stored. A link that drops
/// mid-way is reported in the summary's [`Outcome`], with what was synced until then.
pub async fn sync_once(
    store: &mut Store,
    options: &SyncOptions,
    on_event: &mut dyn FnMut(&WatchEvent),
) -> Result<SyncSummary, SyncError> {
    let link = connect_link(options).await?;
    sync_on(store, options, link, on_event).await
}

/// [`sync_once`] over a QUIC link the caller opened with [`quic::connect`]: the caller can
/// keep the link's [`quic::Migrator`] and move the connection to another socket while the
/// sync runs (an app that hears from its platform that the device changed networks).
pub async fn sync_once_over(
    store: &mut Store,
    options: &SyncOptions,
    link: QuicLink,
    on_event: &mut dyn FnMut(&WatchEvent),
) -> Result<SyncSummary, SyncError> {
    sync_on(store, options, link.into(), on_event).await
}

async fn sync_on(
    store: &mut Store,
    options: &SyncOptions,
    mut link: Link,
    on_event: &mut dyn FnMut(&WatchEvent),
) -> Result<SyncSummary, SyncError> {
    let transport = link.kind();
    let mut book = DocBook::new(store.path());
    // The session is made only now: until the relay accepted the credential (over QUIC: until
    // its answer arrives, before which no frame can change anything), the store is only read.
    let mut session = Session::new(store, options.engine_config(), &options.coalitions)?;
    let deadline = Instant::now() + options.timeout;
    let never = pin!(std::future::pending::<()>());
    let ended = drive(
        &mut session,
        &mut link,
        options,
        Mode::Once { deadline },
        never,
        on_event,
        &mut book,
    )
    .await?;
    let outcome = match ended {
        Ended::Outcome(outcome) => outcome,
        // Only a watch moves between links.
        Ended::SwitchTo(_) => Outcome::Complete,
    };
    book.record_end(&mut session, &outcome);
    Ok(SyncSummary {
        outcome,
        transport,
        documents: session.documents(),
        unanswered: session.unanswered(),
        unsent: session.unsent(),
        stats: session.stats().clone(),
        wire_bytes: link.wire_bytes(),
    })
}

/// What a [`watch`] did, over all its connections.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WatchSummary {
    /// Connections that completed the handshake.
    pub connections: u64,
    /// Connections over QUIC, of those.
    pub quic_connections: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes on the wire both ways of its QUIC connections (see [`SyncSummary::wire_bytes`]).
    pub quic_wire_bytes: u64,
    /// Documents that received remote changes.
    pub received: usize,
}

/// The wait before reconnection attempt `attempt` (1-based): exponential from half a second,
/// capped, with "equal jitter" (half fixed, half random) so that many devices that lost the
/// relay at once do not come back at once.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let exp = Duration::from_millis(500).saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(cap);
    let half = ceiling / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

/// Stays connected: applies remote changes as they come, pushes edits other processes write
/// to the store, and reconnects with [`backoff`] when the link drops. Returns when `shutdown`
/// completes, or with an error when the credential is refused or the store fails.
pub async fn watch<S: Future<Output = ()>>(
    store: &mut Store,
    options: &SyncOptions,
    shutdown: S,
    on_event: &mut dyn FnMut(&WatchEvent),
) -> Result<WatchSummary, SyncError> {
    let mut shutdown = pin!(shutdown);
    let mut watcher = StoreWatcher::open(store.path())?;
    let mut book = DocBook::new(store.path());
    let mut summary = WatchSummary::default();
    let mut received = std::collections::BTreeSet::new();
    let mut attempt: u32 = 0;
    let mut next: Option<Link> = None;
    loop {
        let connected = match next.take() {
            Some(link) => Ok(link),
            None => tokio::select! {
                r = connect_link(options) => r,
                _ = &mut shutdown => return Ok(summary),
            },
        };
        let reason = match connected {
            Ok(mut link) => {
                let transport = link.kind();
                // Edits written from now on reach the session through the watcher; the ones
                // before are in what the session loads.
                watcher.changes()?;
                let mut session =
                    Session::new(store, options.engine_config(), &options.coalitions)?;
                let ended = drive(
                    &mut session,
                    &mut link,
                    options,
                    Mode::Watch {
                        watcher: Some(&mut watcher),
                    },
                    shutdown.as_mut(),
                    on_event,
                    &mut book,
                )
                .await?;
                let stats = session.stats();
                summary.bytes_sent += stats.bytes_sent;
                summary.bytes_received += stats.bytes_received;
                summary.quic_wire_bytes += link.wire_bytes().unwrap_or(0);
                received.extend(stats.received.iter().copied());
                summary.received = received.len();
                if stats.frames_received > 0 {
                    summary.connections += 1;
                    if transport == TransportKind::Quic {
                        summary.quic_connections += 1;
                    }
                    attempt = 0;
                }
                let outcome = match ended {
                    Ended::SwitchTo(quic) => {
                        next = Some(quic);
                        continue;
                    }
                    Ended::Outcome(outcome) => outcome,
                };
                book.record_end(&mut session, &outcome);
                match outcome {
                    Outcome::Stopped => return Ok(summary),
                    Outcome::LinkLost { reason } => reason,
                    // A budget is for this run: reconnecting would spend it again.
                    Outcome::BudgetReached { .. } => return Ok(summary),
                    Outcome::Complete | Outcome::TimedOut => "the connection ended".to_owned(),
                }
            }
            Err(
                e @ (ConnectError::Refused { .. }
                | ConnectError::InvalidServerUrl(_)
                | ConnectError::InvalidCredential
                | ConnectError::NoQuicPin),
            ) => return Err(e.into()),
            Err(e) => error_chain(&e),
        };
        attempt = attempt.saturating_add(1);
        let retry_in = backoff(attempt, options.max_backoff);
        on_event(&WatchEvent::Dropped { reason, retry_in });
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = &mut shutdown => return Ok(summary),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use super::*;
    use crate::sync::ConnId;
    use crate::transport::test_relay::{demo_relay, device_comment, dump_documents, FakeRelay};

    /// Every test is bounded: a hang is a failure, not a stuck CI run.
    const TEST_LIMIT: Duration = Duration::from_secs(60);

    #[derive(Clone, Copy)]
    enum Behaviour {
        Serve,
        /// Answer the upgrade with 401 and a JSON error.
        Refuse,
        /// Drop the first connection (no close frame) after this many frames from the device.
        DropFirstAfter(u64),
    }

    /// A WebSocket relay on 127.0.0.1 running a [`FakeRelay`].
    async fn start(relay: FakeRelay, behaviour: Behaviour) -> (SocketAddr, Arc<Mutex<FakeRelay>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relay = Arc::new(Mutex::new(relay));
        let shared = relay.clone();
        let next = Arc::new(AtomicU64::new(1));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let relay = shared.clone();
                let conn = ConnId(next.fetch_add(1, Ordering::SeqCst));
                tokio::spawn(serve_one(tcp, relay, conn, behaviour));
            }
        });
        (addr, relay)
    }

    async fn serve_one(
        tcp: TcpStream,
        relay: Arc<Mutex<FakeRelay>>,
        conn: ConnId,
        behaviour: Behaviour,
    ) {
        let check = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let bearer = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if matches!(behaviour, Behaviour::Refuse) || bearer != Some("Bearer good") {
                let body =
                    r#"{"error":{"code":"device_revoked","message":"this device was revoked"}}"#;
                let mut refused = ErrorResponse::new(Some(body.to_owned()));
                *refused.status_mut() = tungstenite::http::StatusCode::UNAUTHORIZED;
                return Err(refused);
            }
            Ok(resp)
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
            return;
        };
        let (mut tx, mut rx) = ws.split();
        relay.lock().expect("relay").accept(conn);
        let mut frames = 0;
        while let Some(Ok(message)) = rx.next().await {
            let WsMessage::Binary(bytes) = message else {
                continue;
            };
            frames += 1;
            if let Behaviour::DropFirstAfter(n) = behaviour {
                if conn == ConnId(1) && frames > n {
                    break;
                }
            }
            let replies = relay.lock().expect("relay").receive(conn, &bytes);
            for (_, frame) in replies {
                if tx.send(WsMessage::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
        }
        relay.lock().expect("relay").disconnected(conn);
    }

    fn options(addr: SocketAddr, coalition: DocumentId) -> SyncOptions {
        SyncOptions {
            server: format!("http://{addr}"),
            credential: "good".to_owned(),
            coalitions: vec![coalition],
            peer_id: PeerId::from("device-1"),
            storage_id: StorageId::from("device-storage"),
            settle: Duration::from_millis(100),
            timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            transport: Transport::WebSocket,
            quic: None,
            congestion: Congestion::default(),
            quic_head_start: Duration::from_secs(1),
            quic_retry: Duration::from_secs(60),
            budget: None,
        }
    }

    fn heads_of(doc: &mut automerge::AutoCommit) -> Vec<automerge::ChangeHash> {
        let mut h = doc.get_heads();
        h.sort();
        h
    }

    /// Whether the device's store and the relay hold the same heads for every relay document.
    fn same_as_relay(store: &mut Store, relay: &Arc<Mutex<FakeRelay>>) -> bool {
        let mut relay = relay.lock().expect("relay");
        relay
            .store
            .docs
            .iter_mut()
            .all(|(id, theirs)| match store.load_doc(id).ok().flatten() {
                Some(mut mine) => heads_of(&mut mine.doc) == heads_of(theirs),
                None => false,
            })
    }

    #[tokio::test]
    async fn first_sync_then_a_local_edit_over_a_socket() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (relay, id, cast) = demo_relay();
            let (addr, relay) = start(relay, Behaviour::Serve).await;
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = Store::open(dir.path()).expect("store");
            let opts = options(addr, id);

            let first = sync_once(&mut store, &opts, &mut |_| {})
                .await
                .expect("sync");
            assert_eq!(first.outcome, Outcome::Complete);
            assert!(first.unsent.is_empty() && first.unanswered.is_empty());
            assert!(same_as_relay(&mut store, &relay));

            let edited = device_comment(&mut store, &id, &cast.bhmac, "bridge repaired");
            let second = sync_once(&mut store, &opts, &mut |_| {})
                .await
                .expect("sync");
            assert_eq!(second.outcome, Outcome::Complete);
            assert!(second.unsent.is_empty());
            assert!(
                second.stats.bytes_sent < 4_000,
                "{} bytes",
                second.stats.bytes_sent
            );
            assert!(same_as_relay(&mut store, &relay));
            assert!(relay
                .lock()
                .expect("relay")
                .store
                .docs
                .contains_key(&edited[0]));
            assert!(store.meta(keys::LAST_SYNC).expect("meta").is_some());
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_refused_credential_leaves_the_store_byte_for_byte_unchanged() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (relay, id, cast) = demo_relay();
            let (good, good_relay) = start(relay, Behaviour::Serve).await;
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = Store::open(dir.path()).expect("store");
            sync_once(&mut store, &options(good, id), &mut |_| {})
                .await
                .expect("first sync");
            device_comment(&mut store, &id, &cast.bhmac, "queued offline");
            let before = dump_documents(store.path());

            let (refusing, _) = start(FakeRelay::new(), Behaviour::Refuse).await;
            let err = sync_once(&mut store, &options(refusing, id), &mut |_| {})
                .await
                .expect_err("refused");
            match err {
                SyncError::Connect(ConnectError::Refused {
                    status,
                    code,
                    message,
                }) => {
                    assert_eq!(status, 401);
                    assert_eq!(code, "device_revoked");
                    assert_eq!(message, "this device was revoked");
                }
                other => panic!("unexpected error: {other:?}"),
            }
            assert_eq!(dump_documents(store.path()), before);
            // The queued edit is still there, and still counts as unsent.
            assert_eq!(
                crate::transport::status(&store)
                    .expect("status")
                    .unsent_documents,
                1
            );
            drop(good_relay);
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_dropped_link_loses_nothing_and_the_next_sync_finishes() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (relay, id, _cast) = demo_relay();
            let (addr, relay) = start(relay, Behaviour::DropFirstAfter(3)).await;
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = Store::open(dir.path()).expect("store");
            let opts = options(addr, id);

            let cut = sync_once(&mut store, &opts, &mut |_| {})
                .await
                .expect("sync");
            assert!(
                matches!(cut.outcome, Outcome::LinkLost { .. }),
                "{:?}",
                cut.outcome
            );
            // What arrived before the drop was stored and loads.
            let partial = cut.stats.received.len();
            assert!(partial > 0);
            for doc in &cut.stats.received {
                assert!(store.load_doc(doc).expect("load").is_some());
            }

            let done = sync_once(&mut store, &opts, &mut |_| {})
                .await
                .expect("sync");
            assert_eq!(done.outcome, Outcome::Complete);
            assert!(same_as_relay(&mut store, &relay));
            store.load(&id).expect("the whole coalition loads");
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn watch_reconnects_and_pushes_edits_from_another_process() {
        tokio::time::timeout(TEST_LIMIT, async {
            let (relay, id, cast) = demo_relay();
            let (addr, relay) = start(relay, Behaviour::DropFirstAfter(3)).await;
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = Store::open(dir.path()).expect("store");
            let opts = options(addr, id);

            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let mut stop_tx = Some(stop_tx);
            let mut dropped = 0;
            let mut edited: Option<DocumentId> = None;
            let mut pushed = false;
            let path = dir.path().to_path_buf();
            let mut on_event = |e: &WatchEvent| match e {
                WatchEvent::Dropped { .. } => dropped += 1,
                WatchEvent::Session(SessionEvent::LocalChange { .. }) => pushed = true,
                WatchEvent::Quiet { unsent: 0 } if dropped > 0 => {
                    if edited.is_none() {
                        // Another `coalition` process edits the same store.
                        let mut other = Store::open(&path).expect("second handle");
                        let docs =
                            device_comment(&mut other, &id, &cast.bhmac, "from another process");
                        edited = docs.first().copied();
                    } else if pushed {
                        if let Some(tx) = stop_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                _ => {}
            };
            let stop = async {
                let _ = stop_rx.await;
            };
            let summary = watch(&mut store, &opts, stop, &mut on_event)
                .await
                .expect("watch");
            assert!(dropped >= 1, "the first link was cut");
            assert!(summary.connections >= 2);
            let edited = edited.expect("edited");
            assert!(pushed);
            assert!(same_as_relay(&mut store, &relay));
            let mut mine = store.load_doc(&edited).expect("load").expect("doc");
            let mut relay = relay.lock().expect("relay");
            let theirs = relay.store.docs.get_mut(&edited).expect("on the relay");
            assert_eq!(heads_of(&mut mine.doc), heads_of(theirs));
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn an_unreachable_relay_is_reported() {
        tokio::time::timeout(TEST_LIMIT, async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            drop(listener);
            let err = connect(&format!("http://{addr}"), "good", Duration::from_secs(5))
                .await
                .expect_err("nothing listens");
            assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
            assert!(err
                .to_string()
                .starts_with("cannot reach the relay at ws://127.0.0.1:"));
        })
        .await
        .expect("test timed out");
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(30);
        for attempt in 1..40 {
            let d = backoff(attempt, cap);
            let ceiling = (Duration::from_millis(500) * 2u32.pow((attempt - 1).min(16))).min(cap);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
    }
}
