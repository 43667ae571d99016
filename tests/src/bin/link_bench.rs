//! Sync over simulated field links: the demo coalition's initial sync and one small edit,
//! over QUIC and WebSocket, on a clean loopback, a 2G-like and a satellite-like link.
//!
//! ```text
//! link-bench [--runs 3] [--seed 1] [--links clean,2g,satellite] [--transports quic,websocket]
//!            [--trace]
//! ```
//!
//! The relay is the release `coalition-server` next to this binary (or `$COALITION_SERVER`),
//! run with `serve --demo` on 127.0.0.1; every device reaches it through the link simulator
//! (`coalition_tests::linksim`), one proxy per transport, and syncs with
//! `coalition_core::transport::sync_once` in this process. Each run is a fresh device (a new
//! invite) that enrolls through the same link (over QUIC for the QUIC rows, which leaves a TLS
//! session to resume; over HTTP for the WebSocket rows), reported on a row of its own:
//! "initial" is its first sync, "edit" the sync after it adds one comment.
//!
//! Columns: wall time of the sync (connecting included); bytes through the proxy both ways
//! (UDP payloads with QUIC's and TLS's overhead and every retransmission; TCP payloads with
//! the modelled retransmissions; no IP, UDP or TCP headers); the sync's own frame bytes; the
//! physical floor = the larger direction's frame bytes ÷ bandwidth + one RTT; time ÷ floor;
//! and "RTTs", (time − serialization) ÷ RTT, the round trips the time is worth. Medians of
//! `--runs` runs. Output is Markdown on stdout; progress on stderr, and with `--trace` every
//! datagram of every QUIC sync: when it was offered and arrived (or was lost), its size and
//! the QUIC packets coalesced in it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use coalition_core::store::Store;
use coalition_core::transport::{self, SyncOptions, Transport};
use coalition_tests::linksim::{tcp_proxy, udp_proxy, Datagram, LinkSim, LinkSpec};

struct Relay {
    child: Child,
    http: String,
    udp: std::net::SocketAddr,
    data: PathBuf,
    coalition: String,
    pin: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("cannot stop the relay: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("cannot reap the relay: {e}");
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no binary directory")?;
    Ok(dir.join(name))
}

fn server_binary() -> Result<PathBuf> {
    match std::env::var_os("COALITION_SERVER") {
        Some(p) => Ok(PathBuf::from(p)),
        None => sibling("coalition-server"),
    }
}

fn start_relay(dir: &Path) -> Result<Relay> {
    let data = dir.join("relay-data");
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let out = dir.join("relay.out");
    let child = Command::new(server_binary()?)
        .args([
            "serve",
            "--demo",
            "--listen",
            &format!("127.0.0.1:{http_port}"),
        ])
        .args(["--quic-listen", &udp.to_string(), "--data"])
        .arg(&data)
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(dir.join("relay.log"))?)
        .spawn()
        .context("starting coalition-server (build it with --release)")?;
    let http = format!("http://127.0.0.1:{http_port}");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let printed = std::fs::read_to_string(&out).unwrap_or_default();
        let coalition = printed
            .lines()
            .find_map(|l| l.strip_prefix("Demo coalition "))
            .and_then(|l| l.split_whitespace().next());
        let pin = printed
            .lines()
            .find_map(|l| l.split("public key): ").nth(1))
            .map(str::trim);
        let healthy = ureq_ok(&format!("{http}/healthz"));
        if let (Some(coalition), Some(pin), true) = (coalition, pin, healthy) {
            return Ok(Relay {
                child,
                http,
                udp,
                data,
                coalition: coalition.to_owned(),
                pin: pin.to_owned(),
            });
        }
        if Instant::now() > end {
            bail!("the relay did not start:\n{printed}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ureq_ok(url: &str) -> bool {
    std::net::TcpStream::connect(
        url.trim_start_matches("http://")
            .trim_end_matches("/healthz"),
    )
    .is_ok()
}

/// A new invite's code (`inv-…`, without the QUIC port and pin).
fn invite_code(relay: &Relay, n: usize) -> Result<String> {
    let out = Command::new(server_binary()?)
        .args(["admin", "--data"])
        .arg(&relay.data)
        .args(["invite", "--coalition", &relay.coalition, "--no-quic"])
        .args([
            "--user",
            &format!("bench{n}"),
            "--org",
            "BHMAC",
            "--role",
            "nmac",
        ])
        .output()?;
    if !out.status.success() {
        bail!("admin invite: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A new device on `store`, enrolled through the simulated link as the app would: with an
/// invite carrying the QUIC port (the link's) and pin, over QUIC, so that its first sync in
/// this process resumes the TLS session; without them, over HTTP. Time and bytes both links
/// carried, and whether the enrollment went over QUIC.
fn new_device(
    relay: &Relay,
    store: &Path,
    http_via: &str,
    quic_port: Option<u16>,
    links: [&LinkSim; 2],
    n: usize,
) -> Result<(Measure, bool)> {
    let code = invite_code(relay, n)?;
    let invite = match quic_port {
        Some(port) => format!("{code}.{port}.{}", relay.pin),
        None => code,
    };
    let db = Store::open(store)?;
    let udp_before = links[0].counters().total();
    let tcp_before = links[1].counters().total();
    let started = Instant::now();
    transport::enroll(&db, http_via, &invite, Some(&format!("bench-{n}")))?;
    let time = started.elapsed();
    let udp = links[0].counters().total() - udp_before;
    let tcp = links[1].counters().total() - tcp_before;
    Ok((
        Measure {
            time,
            wire: udp + tcp,
            up: 0,
            down: 0,
        },
        tcp == 0,
    ))
}

/// One comment, written with the `coalition` CLI as a user would.
fn add_comment(store: &Path, text: &str) -> Result<()> {
    let out = Command::new(sibling("coalition")?)
        .arg("--store")
        .arg(store)
        .args(["comment", "--text", text])
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("comment: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

struct Measure {
    time: Duration,
    wire: u64,
    up: u64,
    down: u64,
}

async fn sync_through(
    store: &Path,
    transport: Transport,
    http_via: &str,
    link: &LinkSim,
    trace: bool,
) -> Result<Measure> {
    let mut db = Store::open(store)?;
    let mut options = SyncOptions::from_store(&db, Some(http_via))?;
    options.transport = transport;
    options.timeout = Duration::from_secs(600);
    options.connect_timeout = Duration::from_secs(60);
    let before = link.counters().total();
    link.record(trace);
    let started = Instant::now();
    let began = link.elapsed();
    let summary = transport::sync_once(&mut db, &options, &mut |_| {}).await?;
    let time = started.elapsed();
    if trace {
        print_trace(&link.record(false), began, began + time);
    }
    if summary.outcome != transport::ws::Outcome::Complete || !summary.unsent.is_empty() {
        bail!("sync did not complete: {:?}", summary.outcome);
    }
    Ok(Measure {
        time,
        wire: link.counters().total() - before,
        up: summary.stats.bytes_sent,
        down: summary.stats.bytes_received,
    })
}

/// Every datagram of a sync on stderr: offset from the first, direction, fate, size and
/// the QUIC packets in it (long-header packets coalesced, then a short-header one).
fn print_trace(datagrams: &[Datagram], began: Duration, ended: Duration) {
    let Some(start) = datagrams.first().map(|d| d.sent) else {
        return;
    };
    let ms = |d: Duration| (d.as_secs_f64() - start.as_secs_f64()) * 1000.0;
    eprintln!(
        "  the sync: {:.1} ms to {:.1} ms (from the first datagram)",
        ms(began),
        ms(ended)
    );
    for d in datagrams {
        let fate = match d.arrived {
            Some(at) => format!("→ {:7.1}", ms(at)),
            None => "  lost   ".to_owned(),
        };
        eprintln!(
            "  {:7.1} ms {} {fate} {:5} B  {}",
            ms(d.sent),
            if d.up { "up  " } else { "down" },
            d.bytes.len(),
            quic_packets(&d.bytes).join(" + "),
        );
    }
}

/// The QUIC packets in a datagram, as `kind(bytes)`.
fn quic_packets(mut bytes: &[u8]) -> Vec<String> {
    let mut packets = Vec::new();
    while let Some(&first) = bytes.first() {
        if first & 0x80 == 0 {
            packets.push(format!("1-RTT({})", bytes.len()));
            break;
        }
        let kind = ["Initial", "0-RTT", "Handshake", "Retry"][usize::from((first >> 4) & 3)];
        match long_packet_len(bytes, kind == "Initial") {
            Some(len) if len <= bytes.len() => {
                packets.push(format!("{kind}({len})"));
                bytes = &bytes[len..];
            }
            _ => {
                packets.push(format!("{kind}(?{})", bytes.len()));
                break;
            }
        }
    }
    packets
}

/// The length of the long-header packet at the start of `b` (RFC 9000 §17.2).
fn long_packet_len(b: &[u8], initial: bool) -> Option<usize> {
    let mut at = 5;
    let dcid = usize::from(*b.get(at)?);
    at += 1 + dcid;
    let scid = usize::from(*b.get(at)?);
    at += 1 + scid;
    if initial {
        let (token, n) = varint(b.get(at..)?)?;
        at += n + token;
    }
    let (len, n) = varint(b.get(at..)?)?;
    Some(at + n + len)
}

fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.first()?;
    let n = 1usize << (first >> 6);
    let mut v = u64::from(first & 0x3f);
    for byte in b.get(1..n)? {
        v = (v << 8) | u64::from(*byte);
    }
    Some((usize::try_from(v).ok()?, n))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn value<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|t| t.parse().ok())
            .with_context(|| format!("{name} needs a number")),
    }
}

/// The comma-separated names given to `name`, or every one of `all`.
fn chosen(args: &[String], name: &str, all: &[&str]) -> Result<Vec<String>> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(all.iter().map(|s| s.to_string()).collect());
    };
    let list = args
        .get(i + 1)
        .with_context(|| format!("{name} needs a list"))?;
    let names: Vec<String> = list.split(',').map(str::to_owned).collect();
    if let Some(bad) = names.iter().find(|n| !all.contains(&n.as_str())) {
        bail!("{name}: `{bad}` is not one of {}", all.join(", "));
    }
    Ok(names)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = value(&args, "--runs", 3)?;
    let seed: u64 = value(&args, "--seed", 1)?;
    let only_links = chosen(&args, "--links", &["clean", "2g", "satellite"])?;
    let only_transports = chosen(&args, "--transports", &["quic", "websocket"])?;
    let trace = args.iter().any(|a| a == "--trace");
    let tmp = tempfile_dir()?;
    let relay = start_relay(&tmp)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let links = [
        ("clean", "clean loopback", LinkSpec::clean()),
        (
            "2g",
            "2G: 64 kbit/s, 600 ms RTT, 5% loss",
            LinkSpec::two_g(),
        ),
        (
            "satellite",
            "satellite: 1 Mbit/s, 700 ms RTT, 1% loss",
            LinkSpec::satellite(),
        ),
    ];
    println!("| link | transport | sync | time | bytes on the link | frame bytes up / down | floor | time ÷ floor | RTTs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut n = 0;
    for (key, name, spec) in links {
        for (tkey, tname, transport) in [
            ("quic", "QUIC", Transport::Quic),
            ("websocket", "WebSocket", Transport::WebSocket),
        ] {
            if !only_links.iter().any(|l| l == key) || !only_transports.iter().any(|t| t == tkey) {
                // Skipped rows still use up their seeds, so a row's seed does not depend on
                // which others run.
                n += runs;
                continue;
            }
            let mut rows: [Vec<Measure>; 2] = [Vec::new(), Vec::new()];
            let mut enrollments: Vec<Measure> = Vec::new();
            let mut enrolled_over_quic = true;
            for run in 0..runs {
                n += 1;
                let s = seed + n as u64;
                let (udp, tcp) = rt.block_on(async {
                    Ok::<_, std::io::Error>((
                        udp_proxy(relay.udp, spec, s).await?,
                        tcp_proxy(
                            relay.http.trim_start_matches("http://").parse().map_err(
                                |e: std::net::AddrParseError| std::io::Error::other(e.to_string()),
                            )?,
                            spec,
                            s,
                        )
                        .await?,
                    ))
                })?;
                let store = tmp.join(format!("dev{n}"));
                let via = format!("http://{}", tcp.addr());
                let quic = transport == Transport::Quic;
                eprintln!("{name} / {tname} run {}: enrollment", run + 1);
                let (enrollment, over_quic) = new_device(
                    &relay,
                    &store,
                    &via,
                    quic.then(|| udp.addr().port()),
                    [&udp, &tcp],
                    n,
                )?;
                enrollments.push(enrollment);
                enrolled_over_quic &= over_quic;
                let link = if quic { &udp } else { &tcp };
                eprintln!("{name} / {tname} run {}: initial sync", run + 1);
                rows[0].push(rt.block_on(sync_through(&store, transport, &via, link, trace))?);
                add_comment(&store, &format!("bench edit {n}"))?;
                eprintln!("{name} / {tname} run {}: one edit", run + 1);
                rows[1].push(rt.block_on(sync_through(&store, transport, &via, link, trace))?);
            }
            {
                let time = median(enrollments.iter().map(|m| m.time.as_secs_f64()).collect());
                let wire = median(enrollments.iter().map(|m| m.wire as f64).collect());
                let rtts = if spec.rtt.is_zero() {
                    "–".to_owned()
                } else {
                    format!("{:.1}", time / spec.rtt.as_secs_f64())
                };
                let over = if enrolled_over_quic { "QUIC" } else { "HTTP" };
                println!(
                    "| {name} | {tname} | enrollment ({over}) | {time:.2} s | {wire:.0} B | – | – | – | {rtts} |"
                );
            }
            for (kind, measures) in ["initial", "one edit"].iter().zip(rows) {
                let time = median(measures.iter().map(|m| m.time.as_secs_f64()).collect());
                let wire = median(measures.iter().map(|m| m.wire as f64).collect());
                let up = median(measures.iter().map(|m| m.up as f64).collect());
                let down = median(measures.iter().map(|m| m.down as f64).collect());
                let floor = spec.floor(up.max(down) as u64).as_secs_f64();
                let serial = floor - spec.rtt.as_secs_f64();
                let rtts = if spec.rtt.is_zero() {
                    "–".to_owned()
                } else {
                    format!("{:.1}", (time - serial) / spec.rtt.as_secs_f64())
                };
                println!(
                    "| {name} | {tname} | {kind} | {time:.2} s | {:.0} B | {up:.0} / {down:.0} B | {floor:.2} s | {} | {rtts} |",
                    wire,
                    if floor > 0.0 { format!("{:.2}×", time / floor) } else { "–".to_owned() },
                );
            }
        }
    }
    drop(relay);
    if let Err(e) = std::fs::remove_dir_all(&tmp) {
        eprintln!("cannot remove {}: {e}", tmp.display());
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("link-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
