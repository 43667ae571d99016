//! The QUIC endpoint of the sync protocol (quinn): another thin adapter to the hub, exactly
//! like [`crate::ws`].
//!
//! A device opens the control stream and sends its credential first; the relay checks it as
//! the WebSocket endpoint does, answers with a `welcome` (or the same JSON error and status a
//! WebSocket client would get, then closes), and from then on moves frames between the hub
//! and the streams laid out in [`coalition_core::transport::quic::wire`]: one stream per
//! document and direction, so one large document does not hold up the others.
//!
//! TLS: the relay's certificate is made at first start (`rcgen`, ECDSA P-256, names
//! `localhost`, the listening address and any given) and kept in the data directory
//! (`quic-cert.pem`, `quic-key.pem`, the key readable by the owner only), unless one is
//! configured. Devices check it against the SHA-256 pin of its public key that their invite
//! carries; [`QuicIdentity::pin`] is what `serve --demo` and `admin invite` print.
//!
//! A connection whose first frame is `{"enroll": {...}}` (a credential never starts with `{`)
//! enrolls a new device instead: the relay answers with the body `POST /api/v1/enroll` would
//! give (or its JSON error with the status) and closes. A device that enrolls this way keeps
//! the TLS session, so its first sync resumes it and sends its requests as 0-RTT data. An
//! invite is used once, so an enrollment is acted on only once the handshake is complete,
//! never on 0-RTT data. Address validation tokens (`NEW_TOKEN`) let the relay answer a
//! resumed connection's first flight before the handshake completes without the threefold
//! anti-amplification limit of an address it has not checked yet, up to
//! `EARLY_ANSWER_BYTES`; the rest waits for the handshake.
//!
//! 0-RTT is accepted, and what a device may send in it is safe to act on when replayed: the
//! `hello`, the `join`, and its first sync message for each document. Applying a change the
//! relay already holds changes nothing, a replayed sync message only makes the relay answer
//! on a connection whose keys the replayer does not have, and every change is screened
//! against its author's rights whatever connection brings it. Connection migration is on (a device that changes networks keeps its
//! connection); keep-alive, idle timeout and congestion controller are the device's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::Json;
use coalition_core::sync::ConnId;
use coalition_core::transport::quic::pin::SpkiPin;
use coalition_core::transport::quic::wire::{self, Congestion, StreamEvent, StreamRouter};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, VarInt, ZeroRttAccepted};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::AppError;
use crate::hub::{Event, HubHandle, Outgoing, OUTBOX_CAPACITY};
use crate::state::AppState;
use crate::ws::MAX_FRAME;

/// The certificate file the relay makes at first start, in the data directory.
pub const CERT_FILE: &str = "quic-cert.pem";
/// Its private key.
pub const KEY_FILE: &str = "quic-key.pem";

/// How long a device has to send its credential after the handshake: as long as the idle
/// timeout, since on a lossy 2G link a lost first flight is sent again only after probe
/// timeouts that double each time (0.5, 1, 2, 4, 8 s...).
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);

/// TLS sessions kept for resumption.
const SESSION_CACHE: usize = 8192;

/// The largest `hello` (a credential is 69 bytes; an enrollment request a few hundred).
const MAX_HELLO: usize = 4096;

/// Address validation tokens remembered as used, at most: beyond it a token is refused (the
/// device's first flight then waits for the handshake, as without a token).
const MAX_USED_TOKENS: usize = 1 << 20;

/// Why the QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicSetupError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file is not PEM of the right kind.
    #[error("{path} is not a PEM {what}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Certificate or private key.
        what: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// The certificate could not be made.
    #[error("cannot make the relay's certificate")]
    Generate(#[from] rcgen::Error),
    /// The certificate's public key could not be read.
    #[error("cannot read the public key of the relay's certificate")]
    Pin(#[from] coalition_core::transport::quic::pin::PinError),
    /// rustls refused the certificate and key.
    #[error("the certificate and key do not make a TLS configuration")]
    Tls(#[from] rustls::Error),
    /// The UDP socket could not be bound.
    #[error("cannot listen for QUIC on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The relay's certificate chain and key.
pub struct QuicIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pin: SpkiPin,
}

impl QuicIdentity {
    /// The certificate in `data` (made now if there is none, naming `localhost`, `listen`'s
    /// address and `names`).
    pub fn load_or_create(
        data: &Path,
        listen: Option<SocketAddr>,
        names: &[String],
    ) -> Result<QuicIdentity, QuicSetupError> {
        let cert = data.join(CERT_FILE);
        let key = data.join(KEY_FILE);
        if !cert.exists() || !key.exists() {
            create(&cert, &key, listen, names)?;
        }
        QuicIdentity::load(&cert, &key)
    }

    /// A configured certificate chain and key (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<QuicIdentity, QuicSetupError> {
        let pem_err = |path: &Path, what, e: rustls::pki_types::pem::Error| QuicSetupError::Pem {
            path: path.to_path_buf(),
            what,
            detail: e.to_string(),
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_err(cert, "certificate", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(cert, "certificate", e))?;
        let Some(first) = chain.first() else {
            return Err(QuicSetupError::Pem {
                path: cert.to_path_buf(),
                what: "certificate",
                detail: "no certificate in the file".to_owned(),
            });
        };
        let pin = SpkiPin::of_certificate(first)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, "private key", e))?;
        Ok(QuicIdentity { chain, key, pin })
    }

    /// The pin devices check the certificate against.
    pub fn pin(&self) -> SpkiPin {
        self.pin
    }

    /// The quinn server configuration: TLS 1.3 with this certificate, 0-RTT accepted,
    /// migration on, the given congestion controller.
    pub fn server_config(
        &self,
        congestion: Congestion,
    ) -> Result<quinn::ServerConfig, QuicSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = wire::alpn_protocols();
        // QUIC allows only 0 or u32::MAX here (RFC 9001, section 4.6.1).
        tls.max_early_data_size = u32::MAX;
        // Sessions a device can resume (with 0-RTT) are kept in memory, each taken once (so a
        // recorded first flight cannot be replayed into a second connection). rustls keeps
        // 256 by default; a relay serves thousands of devices (a few hundred bytes each).
        tls.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        let quic = QuicServerConfig::try_from(tls).map_err(|e| {
            QuicSetupError::Tls(rustls::Error::General(format!("no QUIC cipher suite: {e}")))
        })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(Arc::new(wire::transport_config(congestion)));
        config.migration(true);
        // A device that connected before presents a token from it, so the relay knows its
        // address answers and can send a resumed connection's answers (a new device's whole
        // first download) before the handshake completes, rather than three times what it
        // received.
        let mut tokens = quinn::ValidationTokenConfig::default();
        tokens.log(Arc::new(UsedTokens::default())).sent(2);
        config.validation_token_config(tokens);
        Ok(config)
    }
}

/// The address validation tokens devices used, each accepted once (a token can be read off
/// the wire and replayed to make the relay send to an address that did not ask).
#[derive(Default)]
struct UsedTokens(Mutex<HashMap<u128, SystemTime>>);

impl quinn::TokenLog for UsedTokens {
    fn check_and_insert(
        &self,
        nonce: u128,
        issued: SystemTime,
        lifetime: Duration,
    ) -> Result<(), quinn::TokenReuseError> {
        let mut used = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if used.len() >= MAX_USED_TOKENS {
            // quinn refuses expired tokens itself: those can go.
            let now = SystemTime::now();
            used.retain(|_, issued| *issued + lifetime > now);
            if used.len() >= MAX_USED_TOKENS {
                return Err(quinn::TokenReuseError);
            }
        }
        match used.insert(nonce, issued) {
            None => Ok(()),
            Some(_) => Err(quinn::TokenReuseError),
        }
    }
}

/// Makes a self-signed certificate and writes it, the key readable by the owner only.
fn create(
    cert: &Path,
    key: &Path,
    listen: Option<SocketAddr>,
    names: &[String],
) -> Result<(), QuicSetupError> {
    let mut sans = vec!["localhost".to_owned()];
    if let Some(addr) = listen {
        if !addr.ip().is_unspecified() {
            sans.push(addr.ip().to_string());
        }
    }
    sans.extend(names.iter().cloned());
    let made = rcgen::generate_simple_self_signed(sans)?;
    write_private(key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, made.cert.pem()).map_err(|source| QuicSetupError::File {
        path: cert.to_path_buf(),
        source,
    })?;
    tracing::info!(cert = %cert.display(), "made the relay's QUIC certificate");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), QuicSetupError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file_err = |source| QuicSetupError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut file = options.open(path).map_err(file_err)?;
    file.write_all(bytes).map_err(file_err)?;
    file.sync_all().map_err(file_err)
}

/// The longest a resumed connection's handshake flight waits for the answers to the 0-RTT
/// data that came with the device's first datagram.
const FIRST_ANSWER_WAIT: Duration = Duration::from_millis(20);

thread_local! {
    /// The gate [`Held::spawn`] gives the next task it starts on this thread: set around
    /// `Incoming::accept`, which starts the new connection's driver.
    static NEXT_GATE: std::cell::RefCell<Option<tokio::sync::watch::Receiver<bool>>> =
        const { std::cell::RefCell::new(None) };
}

/// Tokio, with a new connection's driver held back until its gate opens.
///
/// A device that resumes its session sends its `hello`, `join` and first document messages
/// as 0-RTT data with its Initial packet. quinn answers that datagram at once with the
/// handshake flight, padded to 1,200 bytes (RFC 9000 §14.1), and the relay's `welcome` and
/// `peer`, ready a few milliseconds later, follow in datagrams of their own. Held until they
/// are written (at most [`FIRST_ANSWER_WAIT`]), they fill the padding instead: on a 64 kbit/s
/// link the answers arrive 40–50 ms sooner.
#[derive(Debug)]
struct Held;

impl quinn::Runtime for Held {
    fn new_timer(&self, at: std::time::Instant) -> std::pin::Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        match NEXT_GATE.with(|g| g.borrow_mut().take()) {
            Some(mut gate) => {
                tokio::spawn(async move {
                    // A dropped sender opens the gate too.
                    if gate.wait_for(|open| *open).await.is_err() {
                        tracing::trace!("a QUIC connection starts without its gate");
                    }
                    future.await
                });
            }
            None => {
                tokio::spawn(future);
            }
        }
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }
}

/// Binds the QUIC endpoint.
pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> Result<Endpoint, QuicSetupError> {
    let bind_err = |source| QuicSetupError::Bind { addr, source };
    let runtime = Arc::new(Held);
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
    let socket = quinn::Runtime::wrap_udp_socket(&*runtime, socket).map_err(bind_err)?;
    Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
    .map_err(bind_err)
}

/// Opens a held connection's gate (see [`Held`]).
#[derive(Clone)]
struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    fn open(&self) {
        self.0.send_replace(true);
    }

    fn is_open(&self) -> bool {
        *self.0.borrow()
    }
}

/// Accepts connections until the endpoint closes; each runs in its own task.
pub async fn serve(endpoint: Endpoint, state: AppState) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let (gate, held) = tokio::sync::watch::channel(false);
            let gate = Gate(Arc::new(gate));
            NEXT_GATE.with(|g| *g.borrow_mut() = Some(held));
            let accepted = incoming.accept();
            NEXT_GATE.with(|g| g.borrow_mut().take());
            // However the first answers go, the handshake flight waits no longer than this.
            let deadline = gate.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FIRST_ANSWER_WAIT).await;
                deadline.open();
            });
            match accepted {
                // A server's 0.5-RTT conversion always succeeds; see the module docs for why
                // what a device may send early is safe to act on.
                Ok(connecting) => match connecting.into_0rtt() {
                    Ok((conn, handshake)) => supervise(conn, Some(handshake), gate, state).await,
                    Err(connecting) => match connecting.await {
                        Ok(conn) => supervise(conn, None, gate, state).await,
                        Err(e) => tracing::debug!(%remote, error = %e, "QUIC handshake failed"),
                    },
                },
                Err(e) => tracing::debug!(%remote, error = %e, "QUIC connection refused"),
            }
        });
    }
}

/// Runs one connection in its own task, so that a panic in it is caught here and the hub
/// still learns that the connection is gone. `handshake` completes with the handshake, if the
/// connection started before it did.
async fn supervise(
    conn: Connection,
    handshake: Option<ZeroRttAccepted>,
    gate: Gate,
    state: AppState,
) {
    let metrics_state = state.clone();
    let metrics = metrics_state.metrics();
    metrics.connections.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let id = state.next_conn();
    let hub = state.hub().clone();
    let task = tokio::spawn(run(conn, handshake, gate, id, state));
    match task.await {
        Ok(_) => {}
        Err(e) => {
            tracing::error!(conn = %id, error = %e, "QUIC connection task failed");
            hub.send(Event::Closed { conn: id }).await;
        }
    }
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Authenticates, then moves frames (or enrolls a device). Returns whether the hub knew the
/// connection.
async fn run(
    conn: Connection,
    handshake: Option<ZeroRttAccepted>,
    gate: Gate,
    id: ConnId,
    state: AppState,
) -> bool {
    let remote = conn.remote_address();
    // Without 0-RTT data there is nothing to answer early: the handshake goes at once.
    let accepted =
        tokio::time::timeout(HELLO_TIMEOUT, wire::unless_held(&gate.0, conn.accept_bi())).await;
    let (mut send, mut recv) = match accepted {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "QUIC connection closed before its hello");
            return false;
        }
        Err(_) => {
            conn.close(VarInt::from_u32(wire::CLOSE_PROTOCOL), b"no hello");
            return false;
        }
    };
    let hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        wire::unless_held(&gate.0, wire::read_frame(&mut recv, MAX_HELLO)),
    )
    .await;
    let credential = match hello {
        Ok(Ok(Some(bytes))) if bytes.first() == Some(&b'{') => {
            gate.open();
            enroll(&conn, handshake, &mut send, &bytes, state).await;
            return false;
        }
        Ok(Ok(Some(bytes))) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Ok(Ok(None)) | Err(_) => {
            conn.close(VarInt::from_u32(wire::CLOSE_PROTOCOL), b"no hello");
            return false;
        }
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "unreadable QUIC hello");
            conn.close(VarInt::from_u32(wire::CLOSE_PROTOCOL), b"bad hello");
            return false;
        }
    };
    let device = match state.authenticate(credential).await {
        Ok(device) => device,
        Err(error) => {
            gate.open();
            refuse(&conn, &mut send, &error).await;
            return false;
        }
    };
    let framing = wire::Framing::of_connection(&conn).unwrap_or(wire::Framing::Plain);
    if let Err(e) = wire::write_frame(&mut send, framing, br#"{"ok":true}"#).await {
        tracing::debug!(%remote, error = %e, "cannot welcome a QUIC device");
        return false;
    }
    tracing::info!(conn = %id, %remote, device = %device.device_id, user = %device.user, org = %device.org, "sync connection (QUIC)");
    let hub = state.hub().clone();
    let (outbox, frames) = mpsc::channel(OUTBOX_CAPACITY);
    if !hub
        .send(Event::Open {
            conn: id,
            device,
            outbox,
        })
        .await
    {
        return false;
    }
    let early = Early {
        handshake,
        sent: 0,
        waiting: std::collections::VecDeque::new(),
    };
    pump(
        conn,
        id,
        send,
        recv,
        framing,
        gate,
        early,
        hub.clone(),
        frames,
    )
    .await;
    hub.send(Event::Closed { conn: id }).await;
    true
}

/// The first frame of a connection that enrolls a device.
#[derive(serde::Deserialize)]
struct EnrollHello {
    enroll: crate::api::EnrollRequest,
}

/// Enrolls a device as `POST /api/v1/enroll` would, answers on the control stream, and closes.
async fn enroll(
    conn: &Connection,
    handshake: Option<ZeroRttAccepted>,
    send: &mut quinn::SendStream,
    hello: &[u8],
    state: AppState,
) {
    // 0-RTT data can be replayed: an invite is used only on a complete handshake.
    if let Some(handshake) = handshake {
        if tokio::time::timeout(HELLO_TIMEOUT, handshake)
            .await
            .is_err()
        {
            conn.close(VarInt::from_u32(wire::CLOSE_PROTOCOL), b"no handshake");
            return;
        }
    }
    let answer = match serde_json::from_slice::<EnrollHello>(hello) {
        Ok(EnrollHello { enroll }) => crate::api::enroll(State(state), Ok(Json(enroll)))
            .await
            .map(|Json(answer)| answer),
        Err(e) => Err(AppError::BadRequest(format!(
            "not an enrollment request: {e}"
        ))),
    };
    let answer = answer.and_then(|answer| serde_json::to_vec(&answer).map_err(AppError::internal));
    match answer {
        Ok(body) => answer_and_close(conn, send, &body, wire::CLOSE_DONE, b"enrolled").await,
        Err(error) => {
            tracing::info!(remote = %conn.remote_address(), code = error.code(), "QUIC enrollment refused");
            answer_refusal(conn, send, &error).await;
        }
    }
}

/// An API error as the HTTP endpoints write it, with the status.
fn error_body(error: &AppError) -> Vec<u8> {
    serde_json::json!({
        "status": error.status().as_u16(),
        "error": { "code": error.code(), "message": error.to_string() },
    })
    .to_string()
    .into_bytes()
}

/// Tells a device why its credential was refused, as the HTTP endpoints would, and closes.
async fn refuse(conn: &Connection, send: &mut quinn::SendStream, error: &AppError) {
    tracing::info!(remote = %conn.remote_address(), code = error.code(), "QUIC credential refused");
    answer_refusal(conn, send, error).await;
}

/// Answers with an API error as the HTTP endpoints write it, and closes.
async fn answer_refusal(conn: &Connection, send: &mut quinn::SendStream, error: &AppError) {
    let body = error_body(error);
    answer_and_close(
        conn,
        send,
        &body,
        wire::CLOSE_REFUSED,
        error.code().as_bytes(),
    )
    .await;
}

/// Writes the last frame of a connection, waits (bounded) until the device has it, so the
/// close does not overtake it, and closes.
async fn answer_and_close(
    conn: &Connection,
    send: &mut quinn::SendStream,
    body: &[u8],
    code: u32,
    reason: &[u8],
) {
    let framing = wire::Framing::of_connection(conn).unwrap_or(wire::Framing::Plain);
    match wire::write_frame(send, framing, body).await {
        Ok(()) => {
            if send.finish().is_ok() {
                // Wait (bounded) until the device has the answer, so the close does not
                // overtake it.
                if tokio::time::timeout(Duration::from_secs(5), send.stopped())
                    .await
                    .is_err()
                {
                    tracing::debug!("the device did not read its answer");
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot send a device its answer"),
    }
    conn.close(VarInt::from_u32(code), reason);
}

/// How many bytes of answers a connection sends before its handshake completes. A resumed
/// connection's answers go at once (0.5-RTT data), but if the handshake flight in front of
/// them is lost, the device cannot read them and acknowledges none. When every answer went
/// that way, nothing new is left to send once the handshake completes, and only probes, whose
/// timeout has backed off by then, find out what was lost: a new device's first sync on a
/// lossy 2G link waited more than 30 s for the relay's `peer` that way. Kept under CUBIC's
/// first window, the answers beyond it go once the handshake completes, and the device's
/// acknowledgements of them show at once what was lost. Two thirds of the window: most of a
/// first download (about 70 KB for the demo coalition) still goes in the first round trip.
const EARLY_ANSWER_BYTES: usize = (wire::CUBIC_INITIAL_WINDOW * 2 / 3) as usize;

/// Answers held back until the handshake completes, beyond [`EARLY_ANSWER_BYTES`].
struct Early {
    /// Completes with the handshake; `None` once it has (or for a connection that started
    /// after it).
    handshake: Option<ZeroRttAccepted>,
    /// Bytes of frames sent before the handshake completed.
    sent: usize,
    /// Frames waiting for the handshake, in order.
    waiting: std::collections::VecDeque<Vec<u8>>,
}

impl Early {
    /// Sends a frame, or keeps it (and every later one, so that each stream keeps its order)
    /// until the handshake completes.
    fn route(&mut self, router: &mut StreamRouter, bytes: Vec<u8>) {
        if self.handshake.is_some()
            && (!self.waiting.is_empty() || self.sent + bytes.len() > EARLY_ANSWER_BYTES)
        {
            self.waiting.push_back(bytes);
            return;
        }
        if self.handshake.is_some() {
            self.sent += bytes.len();
        }
        router.send(bytes);
    }

    /// Sends what is waiting (before a close).
    fn flush(&mut self, router: &mut StreamRouter) {
        for bytes in self.waiting.drain(..) {
            router.send(bytes);
        }
    }
}

/// The hub's first answer (the `peer`, and whatever it answered with it) goes with the
/// handshake flight: takes every frame already waiting, lets the connection send once they
/// are written (see [`Held`]), and returns a close that was waiting behind them.
async fn first_answer(
    router: &mut StreamRouter,
    early: &mut Early,
    frames: &mut mpsc::Receiver<Outgoing>,
    gate: &Gate,
    id: ConnId,
) -> Option<Outgoing> {
    let mut close = None;
    while let Ok(outgoing) = frames.try_recv() {
        match outgoing {
            Outgoing::Frame(bytes) => early.route(router, bytes),
            other => {
                close = Some(other);
                break;
            }
        }
    }
    if tokio::time::timeout(FIRST_ANSWER_WAIT, router.written())
        .await
        .is_err()
    {
        tracing::debug!(conn = %id, "the first answer was not written in time");
    }
    gate.open();
    close
}

/// Moves frames between the streams and the hub until either side ends.
#[allow(clippy::too_many_arguments)]
async fn pump(
    conn: Connection,
    id: ConnId,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    framing: wire::Framing,
    gate: Gate,
    mut early: Early,
    hub: HubHandle,
    mut frames: mpsc::Receiver<Outgoing>,
) {
    let (events_tx, mut events) = mpsc::channel(64);
    let mut tasks = JoinSet::new();
    wire::spawn_readers(&mut tasks, conn.clone(), recv, MAX_FRAME, events_tx.clone());
    let mut router = StreamRouter::new(conn.clone(), send, framing, events_tx);
    // A device sends its `join` on the control stream and its first document messages on
    // their own streams in the same flight; they can be read in any order, and the hub must
    // see the `join` first. Held frames are bounded by the streams' flow control.
    let mut joined = false;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        tokio::select! {
            done = async {
                match early.handshake.as_mut() {
                    Some(handshake) => handshake.await,
                    None => std::future::pending().await,
                }
            }, if early.handshake.is_some() => {
                tracing::trace!(conn = %id, done, "QUIC handshake complete");
                early.handshake = None;
                for bytes in early.waiting.drain(..) {
                    router.send(bytes);
                }
            }
            event = events.recv() => match event {
                Some(StreamEvent::Frame { bytes, control }) => {
                    if !joined && !control {
                        held.push(bytes);
                        continue;
                    }
                    joined = true;
                    let mut ok = hub.send(Event::Frame { conn: id, bytes }).await;
                    for bytes in held.drain(..) {
                        ok = ok && hub.send(Event::Frame { conn: id, bytes }).await;
                    }
                    if !ok {
                        break;
                    }
                }
                Some(StreamEvent::Ended { reason }) => {
                    tracing::debug!(conn = %id, %reason, "QUIC connection ended");
                    break;
                }
                None => break,
            },
            outgoing = frames.recv() => match outgoing {
                Some(Outgoing::Frame(bytes)) => {
                    early.route(&mut router, bytes);
                    if !gate.is_open() {
                        if let Some(Outgoing::Close { code, reason }) =
                            first_answer(&mut router, &mut early, &mut frames, &gate, id).await
                        {
                            early.flush(&mut router);
                            router.finish(Duration::from_secs(2), false).await;
                            conn.close(VarInt::from_u32(u32::from(code)), reason.as_bytes());
                            return;
                        }
                    }
                }
                Some(Outgoing::Close { code, reason }) => {
                    early.flush(&mut router);
                    // The engine's last words (an `error`) go out before the close.
                    router.finish(Duration::from_secs(2), false).await;
                    conn.close(VarInt::from_u32(u32::from(code)), reason.as_bytes());
                    return;
                }
                // The hub dropped us (slow peer) or stopped.
                None => break,
            },
        }
    }
    conn.close(VarInt::from_u32(wire::CLOSE_DONE), b"");
}
