//! The sync protocol on QUIC streams, as both the device and the relay speak it.
//!
//! Streams of one connection:
//!
//! - **control**: the first bidirectional stream, opened by the device. Its first frame is the
//!   device's `hello` (the credential, UTF-8); the relay's first frame is its `welcome`
//!   (`{"ok":true}`, or `{"status":401,"error":{"code","message"}}` and a close). After that
//!   it carries the messages that name no document (`join`, `peer`, `leave`, `error`).
//! - **one unidirectional stream per document and direction**, opened by the sender with its
//!   first message about that document and kept for the connection: that document's messages,
//!   in order. Documents do not wait for each other: a lost packet of one big initial load
//!   stalls only its own stream, and the relay's answer about a small document overtakes it.
//!
//! Every message is one frame: a 4-byte big-endian header, then the CBOR bytes. The header's
//! low 31 bits are the length of what follows; on a `coalition-sync/2` connection its top bit
//! says the bytes are the message deflated ([`Framing`]). One small edit (a few hundred bytes
//! of CBOR keys, ids, the author's commit message and a JSON record) deflates to about half,
//! and a resumed connection's whole first flight then fits in its first datagram.
//!
//! A device sends document messages only after the relay's `peer` arrived, and the relay
//! answers a document only after it saw the device's `join`, which the device sent on the
//! control stream before; so the one ordering across streams the protocol needs holds
//! without waiting on the transport. A device still holds document frames that arrive
//! before `peer` (see [`super::QuicLink`]).
//!
//! [`StreamRouter`] sends frames on the right stream, [`spawn_readers`] collects frames from
//! every stream of a connection into one channel. Both run each stream in its own task, so a
//! stream blocked by flow control holds up only itself.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use quinn::{Connection, RecvStream, SendStream, TransportConfig, VarInt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::sync::{DocumentId, Message};

/// The ALPN name of sync over QUIC with frames that may be deflated ([`Framing::Deflate`]).
pub const ALPN: &[u8] = b"coalition-sync/2";

/// The ALPN name of sync over QUIC with every frame as it is ([`Framing::Plain`]): what
/// devices and relays spoke before deflated frames, and still speak to them.
pub const ALPN_PLAIN: &[u8] = b"coalition-sync/1";

/// The ALPN names both sides offer, the preferred first (the relay picks the first of its own
/// list that the device offers).
pub fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![ALPN.to_vec(), ALPN_PLAIN.to_vec()]
}

/// The top bit of a frame header: the bytes that follow are the message deflated.
const DEFLATED: u32 = 1 << 31;

/// Frames smaller than this go as they are: there is too little to gain.
const DEFLATE_MIN: usize = 64;

/// Frames larger than this go as they are: they are whole documents or pieces of them, which
/// Automerge has compressed already (a saved document gains under 1%). A reader refuses a
/// deflated frame that inflates past it: a few kilobytes of deflate can stand for megabytes,
/// and a peer must not make the other side hold a thousand times what it sent.
pub const DEFLATE_MAX: usize = 64 << 10;

/// The preset dictionary of deflated frames (raw deflate, RFC 1951, primed as zlib's
/// `deflateSetDictionary` does): the strings sync messages repeat, so that a frame of a few
/// hundred bytes, the usual size of one edit, finds them. It is part of `coalition-sync/2`:
/// another dictionary needs another ALPN name. The most frequent strings come last, where
/// matches cost the fewest bits.
pub const DICTIONARY: &[u8] = b"\
{\"entry_id\":\"\",\"decision\":\"approved\",\"decided_on\":\"\",\"note\":null}\
{\"id\":\"\",\"code\":\"\",\"area_id\":\"\",\"operator\":\"\",\"method\":\"ts\",\"planned_start\":\"\",\"planned_end\":\"\"}\
\"fields\":[\"amount\",\"channel\",\"committed_on\",\"currency\",\"donor\",\"end_year\",\"id\",\"need_id\",\"pillar\",\"start_year\",\"status\"]}\
\"fields\":[\"amount\",\"currency\",\"date\",\"id\",\"pledge_id\"]}\
{\"id\":\"\",\"area_id\":\"\",\"task_id\":\"\",\"operator\":\"\",\"method\":\"clearance\",\"cancelled_m2\":0,\"reduced_m2\":0,\"cleared_m2\":\
,\"items\":{\"submunitions\":},\"date_of_information\":\"\",\"location\":null,\"amends\":null,\"voids\":null,\"reason\":null}\
\"action\":\"record\",\"entity\":\"releases\",\"id\":\"\",\"fields\":[\"amends\",\"area_id\",\"cancelled_m2\",\"cleared_m2\",\
\"date_of_information\",\"id\",\"items\",\"location\",\"method\",\"operator\",\"reason\",\"reduced_m2\",\"task_id\",\"voids\"]}\
{\"id\":\"\",\"kind\":\"field_note\",\"about\":null,\"text\":\"\",\"org\":\"\",\"user\":\"\",\"at\":\
\"action\":\"put\",\"entity\":\"tasks\",\"id\":\"\",\"fields\":[\"status\"]}\
{\"org\":\"\",\"user\":\"\",\"device\":\"rugged-tablet\",\"action\":\"record\",\"entity\":\"comments\",\"id\":\"\",\
\"fields\":[\"about\",\"at\",\"id\",\"kind\",\"org\",\"text\",\"user\"]}\x85oJ\x83\
\xa2dtypeeerrorgmessage\xa3dtypeeleavehsenderId\
\xa5dtypedpeerhsenderIdlrelay-htargetIdjlpeerMetadata\xa2istorageIdkisEphemeral\xf4\
wselectedProtocolVersiona1fbehind\x80\
\xa5dtypedjoinhsenderIdjlpeerMetadata\xa2istorageIdx$kisEphemeral\xf4\
x\x19supportedProtocolVersions\x81a1kskipsInStep\xf5\
\xa5dtypedsynchsenderIdjhtargetIdlrelay-jdocumentIdx\x1cddataY";

/// How one connection's frames are written, from the ALPN its handshake settled on. Reading
/// needs no such choice: a plain frame's header never has its top bit set (frames are at most
/// [`super::MAX_FRAME`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `coalition-sync/1`: every frame as it is.
    Plain,
    /// `coalition-sync/2`: a frame goes deflated when that makes it smaller.
    Deflate,
}

impl Framing {
    /// The framing of an ALPN name; anything but `coalition-sync/2` is plain.
    pub fn of_protocol(protocol: Option<&[u8]>) -> Framing {
        if protocol == Some(ALPN) {
            Framing::Deflate
        } else {
            Framing::Plain
        }
    }

    /// The framing a connection's handshake settled on; `None` until the peer's choice is
    /// known (a device's connection in 0-RTT).
    pub fn of_connection(conn: &Connection) -> Option<Framing> {
        let data = conn.handshake_data()?;
        let data = data
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()?;
        Some(Framing::of_protocol(data.protocol.as_deref()))
    }

    /// `frame` with its header, ready for a stream: deflated if this framing allows it and
    /// it comes out smaller.
    pub fn encode(self, frame: &[u8]) -> Vec<u8> {
        if self == Framing::Deflate && (DEFLATE_MIN..=DEFLATE_MAX).contains(&frame.len()) {
            if let Some(deflated) = deflate(frame) {
                let mut buf = Vec::with_capacity(4 + deflated.len());
                // Under DEFLATE_MAX, so well inside 31 bits.
                let len = deflated.len() as u32;
                buf.extend_from_slice(&(len | DEFLATED).to_be_bytes());
                buf.extend_from_slice(&deflated);
                return buf;
            }
        }
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let mut buf = Vec::with_capacity(4 + frame.len());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(frame);
        buf
    }
}

/// `frame` deflated with [`DICTIONARY`], if that is smaller by at least an eighth (less is
/// not worth the peer's inflating).
fn deflate(frame: &[u8]) -> Option<Vec<u8>> {
    use flate2::{Compress, Compression, FlushCompress, Status};
    let mut deflater = Compress::new(Compression::default(), false);
    if let Err(e) = deflater.set_dictionary(DICTIONARY) {
        // Only a broken build of zlib could refuse a dictionary to a new stream.
        tracing::warn!(error = %e, "cannot prime deflate; frames go as they are");
        return None;
    }
    let worth = frame.len() - frame.len() / 8;
    let mut out = Vec::with_capacity(worth);
    match deflater.compress_vec(frame, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) if out.len() <= worth => Some(out),
        // Out of room: it would not have been worth it.
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "deflate failed; the frame goes as it is");
            None
        }
    }
}

/// Inflates the bytes of a deflated frame (those after its header); at most `max` bytes come
/// out.
pub fn inflate(deflated: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    use flate2::{Decompress, FlushDecompress, Status};
    let corrupt = |why: String| FrameError::Corrupt(why);
    let mut inflater = Decompress::new(false);
    inflater
        .set_dictionary(DICTIONARY)
        .map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::with_capacity(deflated.len().saturating_mul(4).min(max));
    loop {
        let read = usize::try_from(inflater.total_in()).unwrap_or(usize::MAX);
        let rest = deflated.get(read..).unwrap_or_default();
        if out.len() == out.capacity() {
            if out.len() >= max {
                return Err(FrameError::TooLarge {
                    len: out.len() + 1,
                    max,
                });
            }
            out.reserve_exact(out.len().max(1024).min(max - out.len()));
        }
        match inflater.decompress_vec(rest, &mut out, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) if inflater.total_in() == deflated.len() as u64 => {
                return Ok(out)
            }
            Ok(Status::StreamEnd) => {
                return Err(corrupt("bytes follow the deflated stream".to_owned()))
            }
            Ok(Status::Ok) => {}
            // No progress with room left: the input ended before the stream did.
            Ok(Status::BufError) if out.len() < out.capacity() => {
                return Err(corrupt("the deflated frame ends early".to_owned()))
            }
            Ok(Status::BufError) => {}
            Err(e) => return Err(corrupt(e.to_string())),
        }
    }
}

/// The TLS server name the device asks for. The relay's certificate is checked against the
/// pin, not a name, so the name is the same everywhere.
pub const SERVER_NAME: &str = "coalition-relay";

/// Application close code: the relay refused the credential (the welcome says why).
pub const CLOSE_REFUSED: u32 = 0x101;
/// Application close code: a normal end of the sync.
pub const CLOSE_DONE: u32 = 0;
/// Application close code: the engine closed the connection (malformed message, shutdown).
pub const CLOSE_PROTOCOL: u32 = 0x102;

/// How long a connection may stay silent before it counts as gone. Mobile links pause for
/// tens of seconds (a train in a cutting, a radio handover); keep-alives hold NAT bindings
/// well inside that.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an otherwise idle connection sends a keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream or the connection failed.
    #[error("reading a QUIC stream failed")]
    Read(#[from] quinn::ReadExactError),
    /// The frame is larger than the reader accepts.
    #[error("a frame of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// Its announced length (or, deflated, a length it inflated past).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A deflated frame does not inflate.
    #[error("a deflated frame is corrupt: {0}")]
    Corrupt(String),
}

/// Writes one frame (one write: two would let the connection send the header in a packet of
/// its own).
pub async fn write_frame(
    send: &mut SendStream,
    framing: Framing,
    frame: &[u8],
) -> Result<(), quinn::WriteError> {
    send.write_all(&framing.encode(frame)).await
}

/// Reads one frame, inflating it if it came deflated; `None` when the stream ended cleanly
/// between frames.
pub async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (len, deflated) = parse_header(header);
    // Deflated frames are at most DEFLATE_MAX before deflating (and a deflate stream is never
    // much larger than what it holds).
    let max = if deflated { max.min(DEFLATE_MAX) } else { max };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut frame = vec![0u8; len];
    recv.read_exact(&mut frame).await?;
    if deflated {
        return inflate(&frame, max).map(Some);
    }
    Ok(Some(frame))
}

/// A frame header: the length of the bytes that follow, and whether they are deflated.
fn parse_header(header: [u8; 4]) -> (usize, bool) {
    let header = u32::from_be_bytes(header);
    ((header & !DEFLATED) as usize, header & DEFLATED != 0)
}

/// The congestion controller of a QUIC connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Congestion {
    /// CUBIC (RFC 9438), with a first window of [`CUBIC_INITIAL_WINDOW`]. The default: on
    /// the benchmark's 2G link it overshoots the router's queue far less than BBR and is as
    /// fast on the satellite link (see docs/benchmarks.md).
    #[default]
    Cubic,
    /// NewReno (RFC 9002): the reference controller.
    NewReno,
    /// BBR: paces at the measured bottleneck rate and does not read random loss as
    /// congestion; quinn's first window (200 packets) floods a thin link's queue.
    Bbr,
}

/// CUBIC's first window, in bytes: a new device's first download (about 70 KB for the demo
/// coalition) goes in one round trip on a long, fast link such as a satellite's, which
/// quinn's default (14,720 B) would take three windows for; a thin link's queue absorbs it, as
/// CUBIC backs off at the first loss.
pub const CUBIC_INITIAL_WINDOW: u64 = 96_000;

impl FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "newreno" | "new-reno" => Ok(Congestion::NewReno),
            "bbr" => Ok(Congestion::Bbr),
            other => Err(format!(
                "`{other}` is not a congestion controller (cubic, newreno or bbr)"
            )),
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
        })
    }
}

/// The transport settings both sides use: keep-alive and idle timeout for mobile links, the
/// congestion controller, room for one stream per document, and no more packets than a sync
/// needs (no path MTU probes, fewer ACKs).
pub fn transport_config(congestion: Congestion) -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT).unwrap_or(VarInt::from_u32(60_000).into()),
        ))
        // One stream per document and direction, kept open: a coalition with many documents
        // must not wait for stream credit.
        .max_concurrent_uni_streams(VarInt::from_u32(4096))
        .max_concurrent_bidi_streams(VarInt::from_u32(4))
        // Long, thin links: start from a pessimistic RTT so the first loss timers do not fire
        // before a 2G or satellite answer can arrive.
        .initial_rtt(Duration::from_millis(500));
    // What a connection costs on a metered link (see docs/benchmarks.md): path MTU discovery
    // sends a handful of padded probes each way on every connection (about 12 KB, twice the
    // frames of a small sync) to grow packets from 1,200 to 1,452 bytes, which saves under 1% of
    // a large download in headers; every QUIC path carries 1,200-byte datagrams, so stay there.
    config.mtu_discovery_config(None);
    // Ask the relay (and let it ask us) to acknowledge every fifth ack-eliciting packet, not
    // every second, within 50 ms: fewer ACK-only packets on a thin uplink. A gap in packet
    // numbers (a loss, or reordering past 2) still gets an immediate ACK.
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(4))
        .max_ack_delay(Some(Duration::from_millis(50)));
    config.ack_frequency_config(Some(acks));
    match congestion {
        Congestion::Cubic => {
            let mut cubic = quinn::congestion::CubicConfig::default();
            cubic.initial_window(CUBIC_INITIAL_WINDOW);
            config.congestion_controller_factory(Arc::new(cubic))
        }
        Congestion::NewReno => config
            .congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
        Congestion::Bbr => {
            config.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    config
}

/// Runs `step`; if it cannot finish at once (it waits on the connection, whose driver `gate`
/// holds back until it is set), sets the gate first. For a connection that holds its first
/// datagram until what it sends first is queued: a step that needs the connection to run
/// must not wait for it.
pub async fn unless_held<F: std::future::Future>(
    gate: &tokio::sync::watch::Sender<bool>,
    step: F,
) -> F::Output {
    let mut step = std::pin::pin!(step);
    match std::future::poll_fn(|cx| std::task::Poll::Ready(step.as_mut().poll(cx))).await {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => {
            gate.send_replace(true);
            step.await
        }
    }
}

/// Something one of a connection's stream tasks reports.
#[derive(Debug)]
pub enum StreamEvent {
    /// A frame arrived; `control` when on the control stream.
    Frame {
        /// The bytes.
        bytes: Vec<u8>,
        /// Whether it came on the control stream.
        control: bool,
    },
    /// A stream or the connection failed, or the peer closed it.
    Ended {
        /// Why.
        reason: String,
    },
}

/// Reads every stream of `conn`: the control stream's receive half, and each document stream
/// the peer opens. Frames go to `events` in the order each stream delivers them; the bounded
/// channel pushes back on the peer through QUIC flow control when the reader is slow.
///
/// A peer that ends its sync finishes its document streams first and its control stream
/// last ([`StreamRouter::finish`]). When the control stream ends, every document stream's
/// bytes are already here (the peer waited for them to be acknowledged), but perhaps not yet
/// read: the end is reported only after every document stream was read to its end, so no
/// frame sent just before a close is lost (a sync stopped at its byte budget closes right
/// after its last frame).
pub fn spawn_readers(
    tasks: &mut JoinSet<()>,
    conn: Connection,
    control: RecvStream,
    max_frame: usize,
    events: mpsc::Sender<StreamEvent>,
) {
    tasks.spawn(async move {
        // Each accepted stream gets its own reader task, owned by this one: when the
        // connection ends, the readers end with it.
        let mut readers = JoinSet::new();
        let mut control = std::pin::pin!(read_stream(control, true, max_frame, events.clone()));
        loop {
            tokio::select! {
                accepted = conn.accept_uni() => match accepted {
                    Ok(recv) => {
                        readers.spawn(read_stream(recv, false, max_frame, events.clone()));
                    }
                    Err(e) => {
                        report(&events, describe_connection_error(&e)).await;
                        readers.shutdown().await;
                        return;
                    }
                },
                end = &mut control => {
                    if end == StreamEnd::Failed {
                        readers.shutdown().await;
                        return;
                    }
                    break;
                }
            }
        }
        // The control stream ended cleanly: take the streams that arrived with it, read
        // every one to its end, then say the peer is done.
        while let Some(accepted) = conn.accept_uni().now_or_never() {
            match accepted {
                Ok(recv) => {
                    readers.spawn(read_stream(recv, false, max_frame, events.clone()));
                }
                Err(_) => break,
            }
        }
        while readers.join_next().await.is_some() {}
        report(&events, "the peer closed the control stream".to_owned()).await;
    });
}

/// How a stream's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The peer finished it between frames.
    Clean,
    /// It failed, or the channel closed; already reported.
    Failed,
}

async fn read_stream(
    mut recv: RecvStream,
    control: bool,
    max_frame: usize,
    events: mpsc::Sender<StreamEvent>,
) -> StreamEnd {
    loop {
        match read_frame(&mut recv, max_frame).await {
            Ok(Some(bytes)) => {
                if events
                    .send(StreamEvent::Frame { bytes, control })
                    .await
                    .is_err()
                {
                    return StreamEnd::Failed;
                }
            }
            Ok(None) => return StreamEnd::Clean,
            Err(FrameError::Read(quinn::ReadExactError::ReadError(
                quinn::ReadError::ConnectionLost(e),
            ))) => {
                report(&events, describe_connection_error(&e)).await;
                return StreamEnd::Failed;
            }
            Err(e) => {
                report(&events, crate::transport::session::error_chain(&e)).await;
                return StreamEnd::Failed;
            }
        }
    }
}

async fn report(events: &mpsc::Sender<StreamEvent>, reason: String) {
    // The receiver is gone only when the connection is being torn down; nobody is left to
    // tell.
    if events.send(StreamEvent::Ended { reason }).await.is_err() {
        tracing::debug!("a QUIC stream ended after its connection was dropped");
    }
}

/// A connection error as a user reads it; a close by the peer with a reason shows the reason.
pub fn describe_connection_error(error: &quinn::ConnectionError) -> String {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            if reason.is_empty() {
                "the peer closed the connection".to_owned()
            } else {
                format!("the peer closed the connection: {reason}")
            }
        }
        quinn::ConnectionError::TimedOut => {
            format!("no packet from the peer for {}s", IDLE_TIMEOUT.as_secs())
        }
        other => crate::transport::session::error_chain(other),
    }
}

/// The priority of a stream whose next frame is `len` bytes: smaller is sooner. quinn sends
/// buffered data of higher-priority streams first; streams of equal priority take turns.
fn priority_for(len: usize) -> i32 {
    // 0 for a frame up to 1 KiB, -1 up to 2 KiB, ... : a handful of levels, as quinn asks.
    -((len.max(1024) / 1024).ilog2() as i32)
}

/// Frames handed to a [`StreamRouter`] and not yet written to their streams.
#[derive(Default)]
struct Unwritten {
    count: std::sync::atomic::AtomicUsize,
    none: tokio::sync::Notify,
}

impl Unwritten {
    fn add(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn done(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.none.notify_waiters();
        }
    }

    async fn none_left(&self) {
        loop {
            let notified = self.none.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A connection's [`Framing`], shared by its stream writers: a device that wrote its first
/// flight with the framing of its last connection sets the one the handshake settled on.
#[derive(Debug, Clone)]
struct SharedFraming(Arc<std::sync::atomic::AtomicBool>);

impl SharedFraming {
    fn new(framing: Framing) -> SharedFraming {
        SharedFraming(Arc::new((framing == Framing::Deflate).into()))
    }

    fn get(&self) -> Framing {
        if self.0.load(std::sync::atomic::Ordering::Acquire) {
            Framing::Deflate
        } else {
            Framing::Plain
        }
    }

    fn set(&self, framing: Framing) {
        self.0.store(
            framing == Framing::Deflate,
            std::sync::atomic::Ordering::Release,
        );
    }
}

/// Sends frames on the stream they belong to, each stream from its own task.
pub struct StreamRouter {
    conn: Connection,
    framing: SharedFraming,
    unwritten: Arc<Unwritten>,
    control: mpsc::UnboundedSender<Vec<u8>>,
    docs: HashMap<DocumentId, mpsc::UnboundedSender<Vec<u8>>>,
    /// The control stream's writer, finished last.
    control_writer: JoinSet<()>,
    /// The document streams' writers.
    writers: JoinSet<()>,
    events: mpsc::Sender<StreamEvent>,
}

impl StreamRouter {
    /// A router over `conn`, writing control frames to `control` and every frame with
    /// `framing`; write failures are reported to `events`.
    pub fn new(
        conn: Connection,
        control: SendStream,
        framing: Framing,
        events: mpsc::Sender<StreamEvent>,
    ) -> StreamRouter {
        let mut control_writer = JoinSet::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let unwritten = Arc::new(Unwritten::default());
        let framing = SharedFraming::new(framing);
        control_writer.spawn(write_stream(
            control,
            rx,
            framing.clone(),
            events.clone(),
            unwritten.clone(),
        ));
        StreamRouter {
            conn,
            framing,
            unwritten,
            control: tx,
            docs: HashMap::new(),
            control_writer,
            writers: JoinSet::new(),
            events,
        }
    }

    /// Queues a frame on its document's stream (opened on first use), or on the control
    /// stream for a message that names no document. Never waits.
    pub fn send(&mut self, frame: Vec<u8>) {
        let doc = Message::decode(&frame).ok().and_then(|m| m.document_id());
        let queue = match doc {
            None => &self.control,
            Some(doc) => self.docs.entry(doc).or_insert_with(|| {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let conn = self.conn.clone();
                let events = self.events.clone();
                let unwritten = self.unwritten.clone();
                let framing = self.framing.clone();
                self.writers.spawn(async move {
                    match conn.open_uni().await {
                        Ok(send) => write_stream(send, rx, framing, events, unwritten).await,
                        Err(e) => {
                            rx.close();
                            while rx.recv().await.is_some() {
                                unwritten.done();
                            }
                            report(&events, describe_connection_error(&e)).await
                        }
                    }
                });
                tx
            }),
        };
        self.unwritten.add();
        if queue.send(frame).is_err() {
            self.unwritten.done();
            // The writer ended, which it only does after reporting why; the link is going.
            tracing::debug!("a frame for a QUIC stream whose writer stopped was dropped");
        }
    }

    /// Queues a frame on the control stream, whatever it is (the credential `hello`).
    pub fn send_control(&mut self, frame: Vec<u8>) {
        self.unwritten.add();
        if self.control.send(frame).is_err() {
            self.unwritten.done();
            tracing::debug!("a frame for the QUIC control stream was dropped: its writer stopped");
        }
    }

    /// Writes the frames not yet written with `framing` (the one the handshake settled on).
    pub fn set_framing(&self, framing: Framing) {
        self.framing.set(framing);
    }

    /// Waits until every frame queued so far was written to its stream (or its stream
    /// failed): handed to the connection, which decides when it leaves.
    pub async fn written(&self) {
        self.unwritten.none_left().await;
    }

    /// Ends every stream after what is queued on it and waits up to `limit` for the peer to
    /// have received it all; then the connection can be closed without losing a frame in
    /// transit. With `ordered`, the document streams end first and the control stream only
    /// once they are acknowledged, so that the peer's reader ([`spawn_readers`]) has every
    /// document frame when the control stream ends and reads them all before reporting the
    /// end: for a close right after frames the peer has not acted on yet. It costs a round
    /// trip more.
    pub async fn finish(mut self, limit: Duration, ordered: bool) {
        let deadline = tokio::time::Instant::now() + limit;
        self.docs.clear();
        if ordered {
            let writers = async { while self.writers.join_next().await.is_some() {} };
            if tokio::time::timeout_at(deadline, writers).await.is_err() {
                tracing::debug!("the peer did not acknowledge every stream within {limit:?}");
            }
        }
        let (closed, _) = mpsc::unbounded_channel();
        self.control = closed;
        let all = async {
            while self.writers.join_next().await.is_some() {}
            while self.control_writer.join_next().await.is_some() {}
        };
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            tracing::debug!("the peer did not acknowledge every stream within {limit:?}");
        }
    }
}

async fn write_stream(
    mut send: SendStream,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    framing: SharedFraming,
    events: mpsc::Sender<StreamEvent>,
    unwritten: Arc<Unwritten>,
) {
    while let Some(frame) = frames.recv().await {
        // Only fails if the stream is already finished, which only this task does.
        let written = match send.set_priority(priority_for(frame.len())) {
            Ok(()) => write_frame(&mut send, framing.get(), &frame)
                .await
                .map_err(|e| match e {
                    quinn::WriteError::ConnectionLost(e) => describe_connection_error(&e),
                    other => crate::transport::session::error_chain(&other),
                }),
            Err(e) => Err(crate::transport::session::error_chain(&e)),
        };
        unwritten.done();
        if let Err(reason) = written {
            // What is still queued will not be written either.
            frames.close();
            while frames.recv().await.is_some() {
                unwritten.done();
            }
            report(&events, reason).await;
            return;
        }
    }
    // Sender dropped: end the stream and wait until the peer has it all (or is gone).
    if send.finish().is_ok() {
        if let Err(e) = send.stopped().await {
            tracing::debug!(error = %e, "a QUIC stream ended before the peer took it all");
        }
    }
}

// A plain frame's header must never look deflated.
const _: () = assert!(super::MAX_FRAME < DEFLATED as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coalition::Edit;
    use crate::model::{Comment, CommentKind};
    use crate::sync::message::SyncMessage;
    use crate::sync::{Message, PeerId};
    use automerge::sync::SyncDoc;

    /// A `sync` frame carrying one field note, as a device sends it: the demo coalition's
    /// comments document, one comment added, the message a peer at the heads before gets.
    fn one_edit_frame() -> Vec<u8> {
        let (mut coalition, cast) = crate::demo::bosnia().expect("demo");
        let who = cast.operators.values().next().expect("an operator").clone();
        let before: HashMap<_, _> = coalition.docs().map(|d| (d.id, d.doc.clone())).collect();
        let edit = Edit::AddComment(Comment {
            id: crate::ids::new_entity_id(),
            kind: CommentKind::FieldNote,
            about: None,
            text: "Track to the school cleared of vegetation".to_owned(),
            org: who.org.clone(),
            user: who.user.clone(),
            at: 1_790_000_000,
        });
        let committed = coalition.apply(&who, edit, 1_790_000_000).expect("edit");
        let id = committed.docs[0];
        let mut theirs = before[&id].clone();
        let mut ours = coalition.doc(&id).expect("the document").doc.clone();
        let (mut our_state, mut their_state) =
            (automerge::sync::State::new(), automerge::sync::State::new());
        // Heads and Bloom filters first; the message that carries the change comes once
        // each side knows what the other has.
        let mut carried = None;
        for _ in 0..4 {
            if let Some(m) = ours.sync().generate_sync_message(&mut our_state) {
                if !m.changes.is_empty() {
                    carried = Some(m.clone());
                }
                theirs
                    .sync()
                    .receive_sync_message(&mut their_state, m)
                    .expect("receive");
            }
            if let Some(m) = theirs.sync().generate_sync_message(&mut their_state) {
                ours.sync()
                    .receive_sync_message(&mut our_state, m)
                    .expect("receive");
            }
        }
        let data = carried.expect("a message with the change").encode();
        Message::Sync(SyncMessage {
            sender_id: PeerId::new("3a8a98c128"),
            target_id: PeerId::new("relay-04ff73"),
            document_id: id,
            data,
        })
        .encode()
    }

    fn decode(encoded: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
        let header: [u8; 4] = encoded[..4].try_into().expect("a header");
        let (len, deflated) = parse_header(header);
        assert_eq!(len, encoded.len() - 4, "the header gives the length");
        if deflated {
            inflate(&encoded[4..], max.min(DEFLATE_MAX))
        } else {
            Ok(encoded[4..].to_vec())
        }
    }

    #[test]
    fn one_edit_goes_deflated_at_about_half_its_size() {
        let frame = one_edit_frame();
        let deflated = Framing::Deflate.encode(&frame);
        let (_, flagged) = parse_header(deflated[..4].try_into().expect("header"));
        assert!(flagged);
        assert!(
            deflated.len() * 10 < frame.len() * 6,
            "{} B deflated to {} B",
            frame.len(),
            deflated.len()
        );
        assert_eq!(
            decode(&deflated, MAX_FRAME_FOR_TESTS).expect("inflates"),
            frame
        );

        let plain = Framing::Plain.encode(&frame);
        assert_eq!(&plain[4..], &frame[..]);
        assert_eq!(decode(&plain, MAX_FRAME_FOR_TESTS).expect("plain"), frame);
    }

    const MAX_FRAME_FOR_TESTS: usize = 1 << 20;

    #[test]
    fn frames_that_would_not_shrink_go_as_they_are() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let noise: Vec<u8> = (0..2_000).map(|_| rng.random()).collect();
        let tiny = b"{\"ok\":true}".to_vec();
        let huge = vec![b'a'; DEFLATE_MAX + 1];
        for frame in [noise, tiny, huge] {
            let encoded = Framing::Deflate.encode(&frame);
            assert_eq!(encoded.len(), frame.len() + 4);
            assert_eq!(decode(&encoded, 1 << 20).expect("plain"), frame);
        }
    }

    #[test]
    fn a_deflated_frame_that_inflates_past_the_limit_is_refused() {
        let bomb = deflate(&vec![0u8; 60_000]).expect("zeros deflate");
        assert!(bomb.len() < 200, "{} B", bomb.len());
        assert!(matches!(
            inflate(&bomb, 10_000),
            Err(FrameError::TooLarge { max: 10_000, .. })
        ));
        assert_eq!(inflate(&bomb, 60_000).expect("at the limit").len(), 60_000);
        // Whatever a reader's own limit, a deflated frame stands for at most DEFLATE_MAX.
        let big = deflate(&vec![0u8; DEFLATE_MAX + 1]).expect("zeros deflate");
        let mut framed = ((big.len() as u32) | DEFLATED).to_be_bytes().to_vec();
        framed.extend_from_slice(&big);
        assert!(matches!(
            decode(&framed, 64 << 20),
            Err(FrameError::TooLarge {
                max: DEFLATE_MAX,
                ..
            })
        ));
    }

    #[test]
    fn corrupt_deflated_frames_are_refused() {
        let frame = one_edit_frame();
        let deflated = deflate(&frame).expect("deflates");
        let truncated = &deflated[..deflated.len() / 2];
        let mut trailing = deflated.clone();
        trailing.extend_from_slice(b"more");
        for bad in [&b"\xff\xff\xff\xff"[..], truncated, &trailing, &[]] {
            assert!(
                matches!(
                    inflate(bad, MAX_FRAME_FOR_TESTS),
                    Err(FrameError::Corrupt(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_dictionary_is_part_of_the_protocol() {
        // Changing it breaks every `coalition-sync/2` peer: that takes a new ALPN name.
        let mut zlib = flate2::Compress::new(flate2::Compression::default(), true);
        let adler = zlib.set_dictionary(DICTIONARY).expect("a dictionary");
        assert_eq!((DICTIONARY.len(), adler), (1366, 95_803_240));
    }

    #[test]
    fn the_framing_follows_the_alpn() {
        assert_eq!(Framing::of_protocol(Some(ALPN)), Framing::Deflate);
        assert_eq!(Framing::of_protocol(Some(ALPN_PLAIN)), Framing::Plain);
        assert_eq!(Framing::of_protocol(None), Framing::Plain);
        assert_eq!(alpn_protocols()[0], ALPN);
    }

    #[test]
    fn smaller_frames_get_higher_priority() {
        assert_eq!(priority_for(10), 0);
        assert_eq!(priority_for(1024), 0);
        assert!(priority_for(4_000) < priority_for(1_000));
        assert!(priority_for(1 << 20) < priority_for(64 << 10));
        assert!(priority_for(usize::MAX) >= -64);
    }

    #[test]
    fn congestion_controllers_by_name() {
        for c in [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr] {
            assert_eq!(c.to_string().parse::<Congestion>(), Ok(c));
        }
        assert!("vegas".parse::<Congestion>().is_err());
    }
}
