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
//! Every message is one frame: a 4-byte big-endian length, then the CBOR bytes.
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

/// The ALPN protocol name of sync over QUIC.
pub const ALPN: &[u8] = b"coalition-sync/1";

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
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Writes one frame.
pub async fn write_frame(send: &mut SendStream, frame: &[u8]) -> Result<(), quinn::WriteError> {
    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    // One write: two would let the connection send the length prefix in a packet of its own.
    let mut buf = Vec::with_capacity(4 + frame.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(frame);
    send.write_all(&buf).await
}

/// Reads one frame; `None` when the stream ended cleanly between frames.
pub async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut frame = vec![0u8; len];
    recv.read_exact(&mut frame).await?;
    Ok(Some(frame))
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

/// Sends frames on the stream they belong to, each stream from its own task.
pub struct StreamRouter {
    conn: Connection,
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
    /// A router over `conn`, writing control frames to `control`; write failures are reported
    /// to `events`.
    pub fn new(
        conn: Connection,
        control: SendStream,
        events: mpsc::Sender<StreamEvent>,
    ) -> StreamRouter {
        let mut control_writer = JoinSet::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let unwritten = Arc::new(Unwritten::default());
        control_writer.spawn(write_stream(control, rx, events.clone(), unwritten.clone()));
        StreamRouter {
            conn,
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
                self.writers.spawn(async move {
                    match conn.open_uni().await {
                        Ok(send) => write_stream(send, rx, events, unwritten).await,
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
    events: mpsc::Sender<StreamEvent>,
    unwritten: Arc<Unwritten>,
) {
    while let Some(frame) = frames.recv().await {
        // Only fails if the stream is already finished, which only this task does.
        let written = match send.set_priority(priority_for(frame.len())) {
            Ok(()) => write_frame(&mut send, &frame).await.map_err(|e| match e {
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

#[cfg(test)]
mod tests {
    use super::*;

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
