//! The QUIC transport: the device's side of sync over quinn, with the relay's certificate
//! checked against the pin its invite carried.
//!
//! Why QUIC for field links: a lost packet stalls only the stream of the document it belongs
//! to ([`wire`]), a connection survives the device changing networks (migration is on, and
//! the connection id, not the address, names it), a reconnect inside one process resumes
//! the TLS session and sends its `hello` and `join` in 0-RTT, and the congestion controller
//! is ours to choose (CUBIC with a first window that holds a first download, by default).
//!
//! 0-RTT data can be replayed by anyone who recorded it, so what goes early must be safe to
//! act on twice: the credential `hello`, the `join`, and the first sync message of each
//! document (a device that met the relay before offers its documents with the `join`, see
//! [`crate::sync::SyncEngine::connect_expecting`]). Applying a change twice changes nothing,
//! and a replayer cannot read the answers. A relay that no longer knows the session (it
//! restarted, or dropped it from its cache) refuses the early data; the link then sends it
//! all again, on new streams, once the handshake is done.
//!
//! - [`pin`]: the pin, the invite format that carries it, and the verifier;
//! - [`wire`]: the stream layout and framing shared with the relay;
//! - [`connect`] opens a [`QuicLink`], which the sync loop drives like a WebSocket.

pub mod pin;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, VarInt, ZeroRttAccepted};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::pin::{PinVerifier, QuicEndpoint, SpkiPin};
use self::wire::{Congestion, Framing, StreamEvent, StreamRouter};
use super::enroll::ApiErrorBody;
use super::session::error_chain;
use crate::sync::Message;

/// How long closing waits for the close frame to leave.
const CLOSE_WAIT: Duration = Duration::from_millis(20);

/// The longest a resumed connection holds its first datagram back while the first flight is
/// written to its streams (a few milliseconds of work).
const FIRST_FLIGHT_WAIT: Duration = Duration::from_millis(50);

/// The largest frame a device accepts: a whole document's first sync comes in one message.
pub const MAX_FRAME: usize = 256 << 20;

/// Why the relay could not be reached over QUIC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The relay's host name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host.
        host: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No local UDP socket could be opened.
    #[error("cannot open a UDP socket")]
    Socket(#[source] std::io::Error),
    /// The TLS configuration could not be built.
    #[error("cannot set up TLS for QUIC")]
    Tls(#[source] rustls::Error),
    /// The connection could not start (bad address or configuration).
    #[error("cannot start a QUIC connection to {addr}")]
    Start {
        /// The relay's address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: quinn::ConnectError,
    },
    /// The handshake failed: no answer, a certificate that does not match the pin, a refused
    /// protocol.
    #[error("QUIC handshake with {addr} failed")]
    Handshake {
        /// The relay's address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: quinn::ConnectionError,
    },
    /// The handshake did not finish in time (UDP blocked, or a very bad link).
    #[error("no QUIC answer from {addr} within {timeout:?}")]
    TimedOut {
        /// The relay's address.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The control stream could not be opened or written.
    #[error("cannot open the control stream to {addr}: {reason}")]
    Control {
        /// The relay's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// How the device reaches the relay over QUIC.
#[derive(Debug, Clone)]
pub struct QuicTarget {
    /// The relay's host (from its URL).
    pub host: String,
    /// Port and pin, from the invite.
    pub endpoint: QuicEndpoint,
    /// The congestion controller.
    pub congestion: Congestion,
}

/// What a device keeps of a relay between connections, for the life of the process.
#[derive(Clone)]
struct Remembered {
    /// The TLS configuration: rustls keeps the session tickets in it, so a reconnect resumes
    /// the TLS session and can send 0-RTT.
    crypto: Arc<QuicClientConfig>,
    /// The relay's address validation tokens (`NEW_TOKEN`): with one, the relay can answer
    /// a resumed connection's first flight in full before the handshake completes.
    tokens: Arc<quinn::TokenMemoryCache>,
    /// The framing of the last handshake with the relay: what a resumed connection writes its
    /// 0-RTT data with (the relay takes early data only for the ALPN of the session resumed).
    framing: Arc<Mutex<Option<Framing>>>,
}

impl Remembered {
    /// The framing to write with before the handshake says.
    fn framing(&self) -> Framing {
        // A poisoned lock still holds a whole value.
        let last = *self.framing.lock().unwrap_or_else(|p| p.into_inner());
        last.unwrap_or(Framing::Plain)
    }

    /// Notes the framing `conn`'s handshake settled on, if it did; returns it.
    fn note_framing(&self, conn: &Connection) -> Option<Framing> {
        let framing = Framing::of_connection(conn)?;
        *self.framing.lock().unwrap_or_else(|p| p.into_inner()) = Some(framing);
        Some(framing)
    }

    /// The framing to write `conn`'s first frames with: its handshake's if it is done, else
    /// (0-RTT) that of the session it resumes.
    fn framing_for(&self, conn: &Connection) -> Framing {
        self.note_framing(conn).unwrap_or_else(|| self.framing())
    }
}

/// The client configuration for a pin, and what the device keeps of that relay; see
/// [`Remembered`].
fn client_config(
    pin: SpkiPin,
    congestion: Congestion,
) -> Result<(quinn::ClientConfig, Remembered), QuicError> {
    static CONFIGS: OnceLock<Mutex<HashMap<SpkiPin, Remembered>>> = OnceLock::new();
    let configs = CONFIGS.get_or_init(Default::default);
    // A poisoned lock holds a complete map (inserts are single calls); keep using it.
    let mut configs = configs.lock().unwrap_or_else(|p| p.into_inner());
    let remembered = match configs.get(&pin) {
        Some(c) => c.clone(),
        None => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(QuicError::Tls)?
                .dangerous()
                // Not a way around verification: the pin verifier is stricter than a CA.
                .with_custom_certificate_verifier(PinVerifier::new(pin, &provider))
                .with_no_client_auth();
            tls.alpn_protocols = wire::alpn_protocols();
            tls.enable_early_data = true;
            let quic = QuicClientConfig::try_from(tls).map_err(|e| {
                QuicError::Tls(rustls::Error::General(format!("no QUIC cipher suite: {e}")))
            })?;
            let remembered = Remembered {
                crypto: Arc::new(quic),
                tokens: Arc::new(quinn::TokenMemoryCache::default()),
                framing: Arc::default(),
            };
            configs.insert(pin, remembered.clone());
            remembered
        }
    };
    let mut config = quinn::ClientConfig::new(remembered.crypto.clone());
    config.token_store(remembered.tokens.clone());
    config.transport_config(Arc::new(wire::transport_config(congestion)));
    Ok((config, remembered))
}

/// Tokio, with the tasks that drive an endpoint and its connection held until a gate opens.
///
/// quinn sends a connection's first datagram as soon as its driver first runs, with whatever
/// 0-RTT data is queued by then: the `hello` alone, and the rest of the first flight (the
/// `join` and the documents' messages, queued a few milliseconds later) in datagrams of their
/// own, while the first one is padded to 1,200 bytes (RFC 9000 §14.1). Held until the first
/// flight is written, the driver sends it all at once: the 0-RTT data fills the first
/// datagram instead of padding (on a 64 kbit/s link, about 600 bytes, 75 ms, less).
#[derive(Debug)]
struct HeldRuntime {
    gate: tokio::sync::watch::Receiver<bool>,
}

impl quinn::Runtime for HeldRuntime {
    fn new_timer(&self, at: std::time::Instant) -> std::pin::Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        let mut gate = self.gate.clone();
        tokio::spawn(async move {
            // The sender gone (the link dropped) opens the gate too: the task then finds its
            // connection closed and ends.
            if gate.wait_for(|open| *open).await.is_err() {
                tracing::trace!("a QUIC task starts without its gate");
            }
            future.await
        });
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }
}

/// An endpoint whose tasks wait for `gate` (see [`HeldRuntime`]).
fn held_endpoint(
    local: SocketAddr,
    gate: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Endpoint> {
    let runtime = Arc::new(HeldRuntime { gate });
    let socket = quinn::Runtime::wrap_udp_socket(&*runtime, std::net::UdpSocket::bind(local)?)?;
    Endpoint::new_with_abstract_socket(quinn::EndpointConfig::default(), None, socket, runtime)
}

/// Resolves the relay's QUIC address: the host of its URL, the port of its invite.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, QuicError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let mut addrs = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|source| QuicError::Resolve {
            host: host.to_owned(),
            source,
        })?;
    addrs.next().ok_or_else(|| QuicError::Resolve {
        host: host.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    })
}

/// A local socket for reaching `addr`: loopback for a loopback relay, any address otherwise.
fn local_addr_for(addr: SocketAddr) -> SocketAddr {
    match (addr.is_ipv4(), addr.ip().is_loopback()) {
        (true, true) => (Ipv4Addr::LOCALHOST, 0).into(),
        (true, false) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        (false, true) => (Ipv6Addr::LOCALHOST, 0).into(),
        (false, false) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Connects to the relay and sends the credential. Returns once the QUIC handshake is done
/// (or at once, when the TLS session resumes with 0-RTT); the relay's verdict on the
/// credential arrives as the link's first event.
pub async fn connect(
    target: &QuicTarget,
    credential: &str,
    timeout: Duration,
) -> Result<QuicLink, QuicError> {
    let addr = resolve(&target.host, target.endpoint.port).await?;
    let (config, remembered) = client_config(target.endpoint.pin, target.congestion)?;
    let (gate, held) = tokio::sync::watch::channel(false);
    let mut endpoint = held_endpoint(local_addr_for(addr), held).map_err(QuicError::Socket)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(addr, wire::SERVER_NAME)
        .map_err(|source| QuicError::Start { addr, source })?;
    let (conn, early) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Some(accepted)),
        Err(connecting) => match tokio::time::timeout(timeout, async {
            // No session to resume: nothing to send but the handshake.
            gate.send_replace(true);
            connecting.await
        })
        .await
        {
            Ok(Ok(conn)) => (conn, None),
            Ok(Err(source)) => return Err(QuicError::Handshake { addr, source }),
            Err(_) => return Err(QuicError::TimedOut { addr, timeout }),
        },
    };
    let framing = remembered.framing_for(&conn);
    let control_err = |reason: String| QuicError::Control { addr, reason };
    let (mut send, recv) = wire::unless_held(&gate, conn.open_bi())
        .await
        .map_err(|e| control_err(wire::describe_connection_error(&e)))?;
    wire::unless_held(
        &gate,
        wire::write_frame(&mut send, framing, credential.as_bytes()),
    )
    .await
    .map_err(|e| control_err(error_chain(&e)))?;
    tracing::debug!(%addr, early = early.is_some(), ?framing, "QUIC connected");
    let (router, events, tasks) = streams(&conn, send, recv, framing);
    Ok(QuicLink {
        endpoint,
        conn,
        remembered,
        gate,
        router: Some(router),
        events,
        _tasks: tasks,
        welcomed: false,
        peer_seen: false,
        held: VecDeque::new(),
        ready: VecDeque::new(),
        was_early: early.is_some(),
        early: early.map(|accepted| Early {
            accepted: Some(accepted),
            credential: credential.to_owned(),
            frames: Vec::new(),
        }),
    })
}

/// How long enrollment waits for the QUIC handshake before it falls back to HTTP: long enough
/// for a lossy 2G link to lose a flight, short enough not to keep a device behind a network
/// that drops UDP waiting.
pub const ENROLL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest enrollment answer a device reads.
const MAX_ENROLL_ANSWER: usize = 1 << 20;

/// Why an enrollment over QUIC did not bring the relay's answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicEnrollError {
    /// The relay could not be reached (see [`QuicError`]).
    #[error(transparent)]
    Connect(#[from] QuicError),
    /// The request went out but no answer came back.
    #[error("no enrollment answer from {addr}: {reason}")]
    NoAnswer {
        /// The relay's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// Sends an enrollment request (`{"enroll": {...}}`, see the relay's `quic` module) and
/// returns the relay's answer, the JSON of `POST /api/v1/enroll`'s body or error. The request
/// goes only once the handshake is complete, never as 0-RTT data: an invite is used once and
/// 0-RTT data can be replayed. The TLS session and the relay's address validation tokens stay
/// in this process, so the first sync resumes the session and sends its requests as 0-RTT
/// data.
pub async fn enroll(
    target: &QuicTarget,
    request: &[u8],
    handshake_timeout: Duration,
    answer_timeout: Duration,
) -> Result<Vec<u8>, QuicEnrollError> {
    let addr = resolve(&target.host, target.endpoint.port).await?;
    let (config, remembered) = client_config(target.endpoint.pin, target.congestion)?;
    let mut endpoint = Endpoint::client(local_addr_for(addr)).map_err(QuicError::Socket)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(addr, wire::SERVER_NAME)
        .map_err(|source| QuicError::Start { addr, source })?;
    let conn = match tokio::time::timeout(handshake_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(source)) => return Err(QuicError::Handshake { addr, source }.into()),
        Err(_) => {
            return Err(QuicError::TimedOut {
                addr,
                timeout: handshake_timeout,
            }
            .into())
        }
    };
    let framing = remembered.framing_for(&conn);
    let no_answer = |reason: String| QuicEnrollError::NoAnswer { addr, reason };
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| no_answer(wire::describe_connection_error(&e)))?;
        wire::write_frame(&mut send, framing, request)
            .await
            .map_err(|e| no_answer(error_chain(&e)))?;
        match wire::read_frame(&mut recv, MAX_ENROLL_ANSWER).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(no_answer("the relay ended the stream".to_owned())),
            Err(e) => Err(no_answer(error_chain(&e))),
        }
    };
    let answer = match tokio::time::timeout(answer_timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(no_answer(format!("no answer within {answer_timeout:?}"))),
    };
    close_sent(&conn, b"enrolled").await;
    answer
}

/// Closes `conn` and waits until the close has left (at most [`CLOSE_WAIT`]), so that the
/// relay lets the connection go at once rather than at its idle timeout.
///
/// Waiting for the endpoint to go idle would also sit out the draining period (three probe
/// timeouts: seconds on a satellite link) for nothing. A closed connection sends nothing but
/// its close, so the first datagram after the call is the close.
async fn close_sent(conn: &Connection, reason: &[u8]) {
    if conn.close_reason().is_some() {
        // The relay closed first: there is nothing to send.
        return;
    }
    let before = conn.stats().udp_tx.datagrams;
    conn.close(VarInt::from_u32(wire::CLOSE_DONE), reason);
    let sent = async {
        while conn.stats().udp_tx.datagrams == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    if tokio::time::timeout(CLOSE_WAIT, sent).await.is_err() {
        tracing::debug!("the QUIC close did not leave within {CLOSE_WAIT:?}");
    }
}

/// Readers and writers for a connection's streams, from its control stream.
fn streams(
    conn: &Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    framing: Framing,
) -> (StreamRouter, mpsc::Receiver<StreamEvent>, JoinSet<()>) {
    let (events_tx, events) = mpsc::channel(64);
    let mut tasks = JoinSet::new();
    wire::spawn_readers(&mut tasks, conn.clone(), recv, MAX_FRAME, events_tx.clone());
    let router = StreamRouter::new(conn.clone(), send, framing, events_tx);
    (router, events, tasks)
}

/// A connection whose first flight went as 0-RTT data, until the handshake says whether the
/// relay took it: what to send again if it did not.
struct Early {
    /// Until the handshake says; `None` once it refused (the answer is not asked twice).
    accepted: Option<ZeroRttAccepted>,
    credential: String,
    /// Frames sent so far, in order.
    frames: Vec<Vec<u8>>,
}

/// What a [`QuicLink`] delivers.
#[derive(Debug)]
pub enum QuicEvent {
    /// A sync message from the relay.
    Frame(Vec<u8>),
    /// The relay refused the credential.
    Refused {
        /// HTTP-like status (401 unknown, 403 revoked).
        status: u16,
        /// The relay's error code.
        code: String,
        /// The relay's message.
        message: String,
    },
    /// The connection ended.
    Closed(String),
}

/// A connection to the relay over QUIC, as the sync loop sees it: frames in, frames out.
pub struct QuicLink {
    // Dropping the endpoint while the connection lives would close the socket under it.
    endpoint: Endpoint,
    conn: Connection,
    /// What the device keeps of the relay: the framing the handshake settles on goes there.
    remembered: Remembered,
    /// Holds the connection's first datagram until the first flight is queued (see
    /// [`HeldRuntime`]); opened at the first [`Self::recv`] or close.
    gate: tokio::sync::watch::Sender<bool>,
    router: Option<StreamRouter>,
    events: mpsc::Receiver<StreamEvent>,
    _tasks: JoinSet<()>,
    welcomed: bool,
    peer_seen: bool,
    /// Document frames that overtook the relay's `peer` on their own streams.
    held: VecDeque<Vec<u8>>,
    /// Frames ready to hand out.
    ready: VecDeque<Vec<u8>>,
    /// Set while the relay has not said whether it takes the 0-RTT data.
    early: Option<Early>,
    was_early: bool,
}

impl QuicLink {
    /// Queues a frame on its stream; never waits.
    pub fn send(&mut self, frame: Vec<u8>) {
        if let Some(router) = &mut self.router {
            if let Some(early) = &mut self.early {
                early.frames.push(frame.clone());
                if early.accepted.is_none() {
                    // Refused: it goes with the rest on the new streams.
                    return;
                }
            }
            router.send(frame);
        }
    }

    /// Lets the connection send, once what the sync queued before its first receive is
    /// written to the streams (bounded by [`FIRST_FLIGHT_WAIT`]). Cancel-safe.
    async fn send_first_flight(&mut self) {
        if *self.gate.borrow() {
            return;
        }
        if let Some(router) = &self.router {
            if tokio::time::timeout(FIRST_FLIGHT_WAIT, router.written())
                .await
                .is_err()
            {
                tracing::debug!("the first flight was not written within {FIRST_FLIGHT_WAIT:?}");
            }
        }
        self.gate.send_replace(true);
    }

    /// The next event. Cancel-safe.
    pub async fn recv(&mut self) -> QuicEvent {
        self.send_first_flight().await;
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return QuicEvent::Frame(frame);
            }
            if self.early.as_ref().is_some_and(|e| e.accepted.is_none()) {
                // Refused: send it all again (a call cancelled here starts over next time).
                if let Err(reason) = self.send_again().await {
                    return QuicEvent::Closed(reason);
                }
                continue;
            }
            let event = tokio::select! {
                // First: when the relay refuses the early data, the streams it never saw fail
                // at the same moment, and those failures must not end the link.
                biased;
                accepted = async {
                    match self.early.as_mut().and_then(|e| e.accepted.as_mut()) {
                        Some(accepted) => accepted.await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let (Some(framing), Some(router)) =
                        (self.remembered.note_framing(&self.conn), &self.router)
                    {
                        router.set_framing(framing);
                    }
                    if accepted {
                        self.early = None;
                    } else if let Some(early) = self.early.as_mut() {
                        early.accepted = None;
                    }
                    continue;
                }
                event = self.events.recv() => event,
            };
            let Some(event) = event else {
                return QuicEvent::Closed("the connection ended".to_owned());
            };
            match event {
                StreamEvent::Ended { reason } => return QuicEvent::Closed(reason),
                StreamEvent::Frame { bytes, control } if control && !self.welcomed => {
                    self.welcomed = true;
                    if let Some(refused) = refusal(&bytes) {
                        return refused;
                    }
                }
                StreamEvent::Frame { bytes, control } if control => {
                    if !self.peer_seen && matches!(Message::decode(&bytes), Ok(Message::Peer(_))) {
                        self.peer_seen = true;
                        self.ready.push_back(bytes);
                        self.ready.extend(self.held.drain(..));
                    } else {
                        self.ready.push_back(bytes);
                    }
                }
                StreamEvent::Frame { bytes, .. } if self.peer_seen => self.ready.push_back(bytes),
                StreamEvent::Frame { bytes, .. } => self.held.push_back(bytes),
            }
        }
    }

    /// The relay refused the 0-RTT data: sends the `hello` and every frame since again, on
    /// new streams (the refused ones never reached it). Cancel-safe: nothing changes until the
    /// new control stream is open.
    async fn send_again(&mut self) -> Result<(), String> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| wire::describe_connection_error(&e))?;
        let Some(early) = self.early.take() else {
            return Ok(());
        };
        tracing::debug!(
            frames = early.frames.len(),
            "the relay refused the 0-RTT data; sending it again"
        );
        let framing = self
            .remembered
            .note_framing(&self.conn)
            .unwrap_or(Framing::Plain);
        let (mut router, events, tasks) = streams(&self.conn, send, recv, framing);
        router.send_control(early.credential.into_bytes());
        for frame in early.frames {
            router.send(frame);
        }
        self.router = Some(router);
        self.events = events;
        self._tasks = tasks;
        self.welcomed = false;
        self.peer_seen = false;
        self.held.clear();
        self.ready.clear();
        Ok(())
    }

    /// Whether the first flight went as 0-RTT data (the relay may still have refused it; the
    /// link then sent it again).
    pub fn was_early(&self) -> bool {
        self.was_early
    }

    /// The relay's address as the connection last saw it.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Bytes on the wire so far (UDP payloads, both ways): what a metered link bills.
    pub fn wire_bytes(&self) -> u64 {
        let stats = self.conn.stats();
        stats.udp_tx.bytes + stats.udp_rx.bytes
    }

    /// Moves the connection to a new local socket, as when the device changes networks.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.endpoint.rebind(socket)
    }

    /// A handle that moves this connection to another socket from outside the sync loop.
    pub fn migrator(&self) -> Migrator {
        Migrator {
            endpoint: self.endpoint.clone(),
            conn: self.conn.clone(),
        }
    }

    /// Sends what is queued (waiting up to `limit` for the relay to take it) and closes.
    pub async fn close(&mut self, limit: Duration) {
        self.send_first_flight().await;
        if let Some(router) = self.router.take() {
            router.finish(limit, false).await;
        }
        self.close_now().await;
    }

    /// Like [`Self::close`], for frames the relay has not acted on yet (a sync stopped at its
    /// byte budget ends right after its last frame): they could still sit unread in the
    /// relay's buffers when the connection closes. The streams end in order and the relay,
    /// having read them all, closes first; this waits for that (up to `limit`).
    pub async fn close_delivered(&mut self, limit: Duration) {
        self.send_first_flight().await;
        if let Some(router) = self.router.take() {
            router.finish(limit, true).await;
            if tokio::time::timeout(limit, self.conn.closed())
                .await
                .is_err()
            {
                tracing::debug!("the relay did not close within {limit:?}");
            }
        }
        self.close_now().await;
    }

    /// Closes once every frame the relay's answers called for is with the connection, without
    /// waiting for the relay to acknowledge the ends of the streams (a round trip): for a sync
    /// whose every document the relay answered. Waits at most `limit` for the stream writers.
    pub async fn close_answered(&mut self, limit: Duration) {
        self.send_first_flight().await;
        if let Some(router) = self.router.take() {
            if tokio::time::timeout(limit, router.written()).await.is_err() {
                tracing::debug!("frames were still being written at the close");
            }
        }
        self.close_now().await;
    }

    async fn close_now(&mut self) {
        self.gate.send_replace(true);
        tracing::debug!(stats = ?self.conn.stats(), "closing the QUIC connection");
        close_sent(&self.conn, b"sync finished").await;
    }
}

/// Moves a live [`QuicLink`] to another local socket while the sync loop owns the link: the
/// connection (named by its connection id, not its address) goes on over the new socket after
/// the relay checks the new path, without a new handshake.
#[derive(Clone)]
pub struct Migrator {
    endpoint: Endpoint,
    conn: Connection,
}

impl Migrator {
    /// Sends and receives on `socket` from now on; the old socket is closed.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.endpoint.rebind(socket)
    }

    /// The local address the connection now uses.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// How many times the relay checked that this device answers on a new path (its
    /// PATH_CHALLENGE frames this device answered): how often the relay saw the connection
    /// move.
    pub fn path_checks_answered(&self) -> u64 {
        self.conn.stats().frame_tx.path_response
    }
}

impl fmt::Debug for Migrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

/// The relay's welcome, if it refuses the credential.
fn refusal(welcome: &[u8]) -> Option<QuicEvent> {
    #[derive(serde::Deserialize)]
    struct Welcome {
        #[serde(default)]
        ok: bool,
        #[serde(default)]
        status: Option<u16>,
    }
    let text = String::from_utf8_lossy(welcome);
    match serde_json::from_str::<Welcome>(&text) {
        Ok(Welcome { ok: true, .. }) => None,
        Ok(Welcome { status, .. }) => {
            let (code, message) = match serde_json::from_str::<ApiErrorBody>(&text) {
                Ok(ApiErrorBody { error }) => (error.code, error.message),
                Err(_) => ("unauthorized".to_owned(), text.into_owned()),
            };
            Some(QuicEvent::Refused {
                status: status.unwrap_or(401),
                code,
                message,
            })
        }
        Err(_) => Some(QuicEvent::Closed(format!(
            "the relay's QUIC welcome is unreadable: {}",
            super::enroll::snippet(&text)
        ))),
    }
}
