//! An in-test link simulator: UDP and TCP proxies on 127.0.0.1 that give a loopback
//! connection the loss, delay, jitter, bandwidth and outages of a field link.
//!
//! Each direction is one FIFO line: a packet (UDP datagram, or TCP segment of at most
//! [`SEGMENT`] bytes) waits for the line to be free, takes `len × 8 / bandwidth` to go on
//! it, then half the RTT plus a random jitter to arrive, and never arrives before the
//! packet in front of it, so the simulator does not reorder by accident. A full line (more
//! than [`LinkSpec::queue`] of waiting) drops at its tail, like a router buffer. Every
//! random choice comes from one seeded generator per line: a failure re-runs with its seed.
//!
//! UDP loss drops the datagram. TCP cannot lose bytes (the kernel retransmits below us), so
//! a lost segment is modelled as TCP's fast retransmit: it goes on the line a second time
//! and arrives one RTT later, holding up everything behind it (head-of-line blocking). TCP's
//! congestion window is not modelled, so TCP numbers are, if anything, optimistic.
//!
//! An outage ([`Outage`]) drops every UDP datagram and holds every TCP segment while the
//! link is down. [`LinkSim::set_blocked`] drops UDP entirely (a network that blocks UDP) or,
//! on TCP, refuses connections and cuts the open ones. [`LinkSim::cut_after`] blocks the
//! link once a number of bytes went through it, to cut a transfer part way.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The largest TCP segment the proxy carries at once.
pub const SEGMENT: usize = 1400;

/// A link that goes down for `down` at the end of every `every`, starting `offset` after the
/// proxy starts.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// The period.
    pub every: Duration,
    /// How long the link is down in each period.
    pub down: Duration,
    /// When the first outage starts, from the proxy's start.
    pub offset: Duration,
}

/// What the link does to traffic.
#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    /// Probability that a packet is lost, per direction.
    pub loss: f64,
    /// Round-trip time (half each way).
    pub rtt: Duration,
    /// Up to this much random extra delay per packet.
    pub jitter: Duration,
    /// Bits per second each way; `None` for no cap.
    pub bandwidth: Option<u64>,
    /// The most queueing delay a line holds before it drops at its tail.
    pub queue: Duration,
    /// Periodic outages.
    pub outage: Option<Outage>,
}

impl LinkSpec {
    /// A clean link: no loss, no delay, no cap.
    pub fn clean() -> LinkSpec {
        LinkSpec {
            loss: 0.0,
            rtt: Duration::ZERO,
            jitter: Duration::ZERO,
            bandwidth: None,
            queue: Duration::from_secs(2),
            outage: None,
        }
    }

    /// A 2G-like link: 64 kbit/s, 600 ms RTT, 5% loss, 50 ms jitter.
    pub fn two_g() -> LinkSpec {
        LinkSpec {
            loss: 0.05,
            rtt: Duration::from_millis(600),
            jitter: Duration::from_millis(50),
            bandwidth: Some(64_000),
            ..LinkSpec::clean()
        }
    }

    /// A satellite-like link: 1 Mbit/s, 700 ms RTT, 1% loss, 20 ms jitter.
    pub fn satellite() -> LinkSpec {
        LinkSpec {
            loss: 0.01,
            rtt: Duration::from_millis(700),
            jitter: Duration::from_millis(20),
            bandwidth: Some(1_000_000),
            queue: Duration::from_millis(500),
            ..LinkSpec::clean()
        }
    }

    /// The least time `bytes` can take over this link: its serialization plus one RTT.
    pub fn floor(&self, bytes: u64) -> Duration {
        let serialization = match self.bandwidth {
            Some(bps) => Duration::from_secs_f64(bytes as f64 * 8.0 / bps as f64),
            None => Duration::ZERO,
        };
        serialization + self.rtt
    }
}

/// Bytes and packets that went through a proxy.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes offered by the client side (sent toward the server), lost ones included.
    pub up_bytes: AtomicU64,
    /// Bytes offered by the server side.
    pub down_bytes: AtomicU64,
    /// Packets (or segments) dropped: loss, outage, full queue, blocked.
    pub dropped: AtomicU64,
}

impl Counters {
    /// Bytes offered both ways.
    pub fn total(&self) -> u64 {
        self.up_bytes.load(Ordering::Relaxed) + self.down_bytes.load(Ordering::Relaxed)
    }
}

/// Shared switches of a proxy.
#[derive(Debug)]
struct Control {
    blocked: AtomicBool,
    /// Block once this many bytes went through (0: never).
    cut_after: AtomicU64,
    counters: Counters,
    started: Instant,
    /// UDP: every client address seen, in order.
    clients: Mutex<Vec<SocketAddr>>,
    /// UDP: what [`LinkSim::record`] keeps, while it is on.
    log: Mutex<Option<Vec<Datagram>>>,
    /// Datagrams toward the client still to drop ([`LinkSim::lose_next_down`]).
    lose_down: AtomicU64,
}

/// One datagram offered to a UDP link, as [`LinkSim::record`] keeps it.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// When it was offered, from the proxy's start.
    pub sent: Duration,
    /// From the client toward the server.
    pub up: bool,
    /// When it arrived, from the proxy's start; `None` if the link dropped it.
    pub arrived: Option<Duration>,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Control {
    fn new() -> Arc<Control> {
        Arc::new(Control {
            blocked: AtomicBool::new(false),
            cut_after: AtomicU64::new(0),
            counters: Counters::default(),
            started: Instant::now(),
            clients: Mutex::new(Vec::new()),
            log: Mutex::new(None),
            lose_down: AtomicU64::new(0),
        })
    }

    fn blocked(&self) -> bool {
        if self.blocked.load(Ordering::Relaxed) {
            return true;
        }
        let cut = self.cut_after.load(Ordering::Relaxed);
        if cut > 0 && self.counters.total() >= cut {
            self.blocked.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn count(&self, up: bool, len: usize) {
        let c = if up {
            &self.counters.up_bytes
        } else {
            &self.counters.down_bytes
        };
        c.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// What happens to one packet on a line.
enum Fate {
    /// It arrives at this time.
    Arrives(Instant),
    /// It is lost.
    Lost,
}

/// One direction of the link.
struct Line {
    spec: LinkSpec,
    rng: ChaCha8Rng,
    free_at: Instant,
    last_arrival: Instant,
    /// TCP: a lost segment is sent again (fast retransmit) rather than dropped.
    retransmits: bool,
    started: Instant,
}

impl Line {
    fn new(spec: LinkSpec, seed: u64, retransmits: bool, started: Instant) -> Line {
        let now = Instant::now();
        Line {
            spec,
            rng: ChaCha8Rng::seed_from_u64(seed),
            free_at: now,
            last_arrival: now,
            retransmits,
            started,
        }
    }

    /// When the link is next up at or after `t`, if an outage holds it down at `t`.
    fn up_again(&self, t: Instant) -> Option<Instant> {
        let o = self.spec.outage?;
        let since = t.checked_duration_since(self.started + o.offset)?;
        let into = Duration::from_nanos((since.as_nanos() % o.every.as_nanos().max(1)) as u64);
        (into < o.down).then(|| t + (o.down - into))
    }

    fn transmit_time(&self, len: usize) -> Duration {
        match self.spec.bandwidth {
            Some(bps) => Duration::from_secs_f64(len as f64 * 8.0 / bps as f64),
            None => Duration::ZERO,
        }
    }

    fn send(&mut self, len: usize) -> Fate {
        let now = Instant::now();
        let mut start = self.free_at.max(now);
        if let Some(up) = self.up_again(start) {
            if !self.retransmits {
                return Fate::Lost;
            }
            // TCP holds the segment and sends it when the link is back (its RTO).
            start = up;
        }
        if start.saturating_duration_since(now) > self.spec.queue && !self.retransmits {
            return Fate::Lost;
        }
        let mut done = start + self.transmit_time(len);
        let lost = self.spec.loss > 0.0 && self.rng.random_bool(self.spec.loss.min(1.0));
        if lost {
            if !self.retransmits {
                self.free_at = done;
                return Fate::Lost;
            }
            // Sent again one RTT later, taking the line a second time.
            done = done + self.spec.rtt + self.transmit_time(len);
        }
        self.free_at = done;
        let jitter = if self.spec.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.spec.jitter.mul_f64(self.rng.random::<f64>())
        };
        let arrival = (done + self.spec.rtt / 2 + jitter).max(self.last_arrival);
        self.last_arrival = arrival;
        Fate::Arrives(arrival)
    }
}

/// A running proxy. Dropping it stops it.
pub struct LinkSim {
    addr: SocketAddr,
    control: Arc<Control>,
    tasks: Vec<JoinHandle<()>>,
}

impl LinkSim {
    /// Where clients connect (or send datagrams) to reach the server through the link.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes that went through.
    pub fn counters(&self) -> &Counters {
        &self.control.counters
    }

    /// Blocks the link (drops every packet; TCP: refuses and cuts connections) or opens it.
    pub fn set_blocked(&self, blocked: bool) {
        self.control.blocked.store(blocked, Ordering::Relaxed);
    }

    /// Blocks the link once `bytes` (both ways) went through.
    pub fn cut_after(&self, bytes: u64) {
        self.control.cut_after.store(bytes, Ordering::Relaxed);
    }

    /// UDP: every address a client sent from, in the order first seen (a client that moved
    /// to a new socket shows up twice).
    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.control
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// UDP: starts keeping every datagram offered to the link (with its fate), or stops and
    /// returns those kept. Recording changes nothing about what the link does.
    pub fn record(&self, on: bool) -> Vec<Datagram> {
        let mut log = self.control.log.lock().unwrap_or_else(|e| e.into_inner());
        let kept = log.take().unwrap_or_default();
        if on {
            *log = Some(Vec::new());
        }
        kept
    }

    /// UDP: drops the next `n` datagrams toward the client, as if the link lost them (to
    /// lose a given packet, such as a server's first answer).
    pub fn lose_next_down(&self, n: u64) {
        self.control.lose_down.store(n, Ordering::Relaxed);
    }

    /// Time since the proxy started.
    pub fn elapsed(&self) -> Duration {
        self.control.started.elapsed()
    }
}

impl Drop for LinkSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A FIFO delivery queue: packets leave at their arrival times, in order.
fn delivery<T, F>(mut deliver: F) -> (mpsc::UnboundedSender<(Instant, T)>, JoinHandle<()>)
where
    T: Send + 'static,
    F: FnMut(T) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, T)>();
    let task = tokio::spawn(async move {
        while let Some((at, packet)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if !deliver(packet).await {
                return;
            }
        }
    });
    (tx, task)
}

/// A UDP proxy to `target`. It behaves like a NAT: each client address gets its own outside
/// socket, so a client that moves to a new socket (as a migrating QUIC client does) reaches
/// the server from a new address, and the server's answers to that address go to it. Both
/// directions keep one line each, whatever the number of client addresses.
pub async fn udp_proxy(target: SocketAddr, spec: LinkSpec, seed: u64) -> io::Result<LinkSim> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let addr = front.local_addr()?;
    let control = Control::new();

    let (up_tx, up_task) = delivery(move |(back, p): (Arc<UdpSocket>, Vec<u8>)| {
        Box::pin(async move { back.send_to(&p, target).await.is_ok() })
    });
    let down_socket = front.clone();
    let (down_tx, down_task) = delivery(move |(to, p): (SocketAddr, Vec<u8>)| {
        let s = down_socket.clone();
        Box::pin(async move { s.send_to(&p, to).await.is_ok() })
    });
    let down_line = Arc::new(Mutex::new(Line::new(
        spec,
        seed ^ 0x5eed,
        false,
        control.started,
    )));

    let mut up_line = Line::new(spec, seed, false, control.started);
    let c = control.clone();
    let up_reader = tokio::spawn(async move {
        // Outside sockets by client address; the tasks that read the server's answers on
        // them end with this one (a JoinSet aborts its tasks when dropped).
        let mut outside: Vec<(SocketAddr, Arc<UdpSocket>)> = Vec::new();
        let mut readers = tokio::task::JoinSet::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = front.recv_from(&mut buf).await {
            let back = match outside.iter().find(|(a, _)| *a == from) {
                Some((_, back)) => back.clone(),
                None => {
                    let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                        c.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let back = Arc::new(back);
                    c.clients
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(from);
                    readers.spawn(read_answers(
                        back.clone(),
                        from,
                        c.clone(),
                        down_line.clone(),
                        down_tx.clone(),
                    ));
                    outside.push((from, back.clone()));
                    back
                }
            };
            forward(&c, &mut up_line, true, (back, buf[..n].to_vec()), &up_tx);
        }
        readers.shutdown().await;
    });
    Ok(LinkSim {
        addr,
        control,
        tasks: vec![up_task, down_task, up_reader],
    })
}

/// Carries what the server sends to one outside socket back to the client it belongs to.
async fn read_answers(
    back: Arc<UdpSocket>,
    client: SocketAddr,
    control: Arc<Control>,
    line: Arc<Mutex<Line>>,
    out: mpsc::UnboundedSender<(Instant, (SocketAddr, Vec<u8>))>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, _)) = back.recv_from(&mut buf).await {
        let mut line = line.lock().unwrap_or_else(|e| e.into_inner());
        forward(
            &control,
            &mut line,
            false,
            (client, buf[..n].to_vec()),
            &out,
        );
    }
}

fn forward<T>(
    control: &Control,
    line: &mut Line,
    up: bool,
    packet: (T, Vec<u8>),
    out: &mpsc::UnboundedSender<(Instant, (T, Vec<u8>))>,
) {
    if control.blocked() {
        control.counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let len = packet.1.len();
    control.count(up, len);
    let chosen = !up
        && control
            .lose_down
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
    let fate = if chosen { Fate::Lost } else { line.send(len) };
    if let Some(log) = control
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        log.push(Datagram {
            sent: control.started.elapsed(),
            up,
            arrived: match fate {
                Fate::Arrives(at) => Some(at.saturating_duration_since(control.started)),
                Fate::Lost => None,
            },
            bytes: packet.1.clone(),
        });
    }
    match fate {
        Fate::Arrives(at) => {
            // The delivery task only ends with the proxy.
            if out.send((at, packet)).is_err() {
                control.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Fate::Lost => {
            control.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A TCP proxy to `target`: every accepted connection gets its own pair of lines.
pub async fn tcp_proxy(target: SocketAddr, spec: LinkSpec, seed: u64) -> io::Result<LinkSim> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let control = Control::new();
    let c = control.clone();
    let acceptor = tokio::spawn(async move {
        let mut n: u64 = 0;
        while let Ok((client, _)) = listener.accept().await {
            if c.blocked() {
                drop(client);
                continue;
            }
            n += 1;
            let c = c.clone();
            let conn_seed = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9));
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                relay_tcp(client, server, spec, conn_seed, c).await;
            });
        }
    });
    Ok(LinkSim {
        addr,
        control,
        tasks: vec![acceptor],
    })
}

async fn relay_tcp(
    client: TcpStream,
    server: TcpStream,
    spec: LinkSpec,
    seed: u64,
    control: Arc<Control>,
) {
    // The line models every delay; the proxy's own sockets must not add Nagle's (a small
    // write held until the previous one is acknowledged: up to 40 ms of delayed ACK).
    for socket in [&client, &server] {
        if let Err(e) = socket.set_nodelay(true) {
            eprintln!("link simulator: cannot set TCP_NODELAY: {e}");
        }
    }
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let up = tokio::spawn(pump_tcp(
        client_r,
        server_w,
        Line::new(spec, seed, true, control.started),
        true,
        control.clone(),
    ));
    let down = tokio::spawn(pump_tcp(
        server_r,
        client_w,
        Line::new(spec, seed ^ 0x5eed, true, control.started),
        false,
        control,
    ));
    // Either direction ending (or a cut) ends both: a cut link resets the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn pump_tcp(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut line: Line,
    up: bool,
    control: Arc<Control>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let c = control.clone();
    let writer = tokio::spawn(async move {
        while let Some((at, seg)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if c.blocked() || to.write_all(&seg).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; SEGMENT];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = writer_gone(&tx) => break,
        };
        if control.blocked() {
            break;
        }
        control.count(up, n);
        if let Fate::Arrives(at) = line.send(n) {
            if tx.send((at, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    }
    drop(tx);
    if writer.await.is_err() {
        control.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Completes when the writer side of a pump stopped (its receiver closed).
async fn writer_gone(tx: &mpsc::UnboundedSender<(Instant, Vec<u8>)>) {
    tx.closed().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_fifo_and_paced_by_its_bandwidth() {
        let spec = LinkSpec {
            loss: 0.0,
            rtt: Duration::from_millis(100),
            jitter: Duration::from_millis(80),
            bandwidth: Some(8_000),
            queue: Duration::from_secs(60),
            outage: None,
        };
        let mut line = Line::new(spec, 7, false, Instant::now());
        let mut last = Instant::now();
        let start = Instant::now();
        for _ in 0..20 {
            match line.send(100) {
                Fate::Arrives(at) => {
                    assert!(at >= last, "reordered");
                    last = at;
                }
                Fate::Lost => panic!("no loss configured"),
            }
        }
        // 20 × 100 bytes at 1000 bytes/s: at least 2 s, plus half the RTT.
        assert!(
            last - start >= Duration::from_millis(2050),
            "{:?}",
            last - start
        );
    }

    #[test]
    fn loss_drops_about_the_configured_share_and_tcp_retransmits_instead() {
        let spec = LinkSpec {
            loss: 0.1,
            ..LinkSpec::clean()
        };
        let mut udp = Line::new(spec, 42, false, Instant::now());
        let lost = (0..10_000)
            .filter(|_| matches!(udp.send(10), Fate::Lost))
            .count();
        assert!((800..1200).contains(&lost), "{lost}");
        let mut tcp = Line::new(spec, 42, true, Instant::now());
        assert!((0..1000).all(|_| matches!(tcp.send(10), Fate::Arrives(_))));
    }

    #[test]
    fn an_outage_drops_datagrams_while_down() {
        let started = Instant::now() - Duration::from_secs(16);
        let spec = LinkSpec {
            outage: Some(Outage {
                every: Duration::from_secs(20),
                down: Duration::from_secs(5),
                offset: Duration::from_secs(15),
            }),
            ..LinkSpec::clean()
        };
        let mut down = Line::new(spec, 1, false, started);
        assert!(matches!(down.send(10), Fate::Lost));
        let mut held = Line::new(spec, 1, true, started);
        match held.send(10) {
            Fate::Arrives(at) => assert!(at >= Instant::now() + Duration::from_secs(3)),
            Fate::Lost => panic!("TCP holds, not drops"),
        }
    }
}
