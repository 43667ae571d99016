//! Sync over bad links (issue 5): a relay with its QUIC endpoint, devices that reach it only
//! through the link simulator (`coalition_tests::linksim`), real `coalition` processes.
//!
//! The coalition is the small one `admin create-coalition` makes, so that a 64 kbit/s link
//! with 600 ms RTT still finishes in seconds; the long runs are in `link-bench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coalition_tests::linksim::{tcp_proxy, udp_proxy, LinkSim, LinkSpec, Outage};

use crate::relay_offline::coalition_with_invites;
use crate::support::{
    binary, coalition_bounded, coalition_json, enroll, free_port, http_get, seed, ChildGuard,
};

/// A relay process serving WebSocket and QUIC on 127.0.0.1, with a small coalition.
struct QuicRelay {
    _child: ChildGuard,
    http: SocketAddr,
    udp: SocketAddr,
    pin: String,
    invites: Vec<String>,
    log: PathBuf,
    data: PathBuf,
}

impl QuicRelay {
    fn start(dir: &Path, people: &[(&str, &str, &str)]) -> QuicRelay {
        let data = dir.join("relay-data");
        let (_, invites) = coalition_with_invites(&data, people);
        QuicRelay::spawn(data, dir.join("relay.log"), invites)
    }

    /// Stops the relay (SIGKILL) and starts it again on the same data, on new ports.
    fn restart(self) -> QuicRelay {
        let QuicRelay {
            _child,
            invites,
            log,
            data,
            ..
        } = self;
        drop(_child);
        QuicRelay::spawn(data, log, invites)
    }

    fn spawn(data: PathBuf, log: PathBuf, invites: Vec<String>) -> QuicRelay {
        for _ in 0..5 {
            let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let udp = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .expect("a free UDP port");
            let child = Command::new(binary("coalition-server", "coalition-server"))
                .args(["serve", "--listen", &http.to_string()])
                .args(["--quic-listen", &udp.to_string(), "--data"])
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("start coalition-server");
            let mut child = ChildGuard::new(child);
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.child.try_wait() {
                    break;
                }
                if let Ok((200, _)) = http_get(&format!("http://{http}/healthz"), None) {
                    let pin =
                        coalition_server::quic::QuicIdentity::load_or_create(&data, None, &[])
                            .expect("the relay's certificate")
                            .pin()
                            .to_string();
                    return QuicRelay {
                        _child: child,
                        http,
                        udp,
                        pin,
                        invites,
                        log,
                        data,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "the relay did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Enrolls a device (over the clean loopback: QUIC, as the invite carries the relay's
    /// port and pin) with invite `n`, then points its QUIC at `quic_port` (a proxy in front of
    /// the relay's UDP port).
    fn enroll(&self, store: &Path, n: usize, quic_port: u16, device: &str) {
        let invite = format!("{}.{}.{}", self.invites[n], self.udp.port(), self.pin);
        enroll(store, &format!("http://{}", self.http), &invite, device);
        point_quic_at(store, quic_port, &self.pin);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A runtime for the proxies; the test thread runs the `coalition` processes.
fn proxies() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `coalition sync --json` through `server` with extra arguments; the summary, or the error.
fn sync_via(
    store: &Path,
    server: &str,
    extra: &[&str],
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let t = timeout.as_secs().to_string();
    let mut args = vec!["--json", "sync", "--server", server, "--timeout", &t];
    args.extend_from_slice(extra);
    let out = coalition_bounded(store, &args, timeout + Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("no JSON summary ({e}); status {}: {stderr}", out.status))?;
    if out.status.success() {
        Ok(summary)
    } else {
        Err(format!("{summary} {stderr}"))
    }
}

fn complete(summary: &serde_json::Value) -> bool {
    summary["outcome"] == "complete" && summary["unsent"].as_array().is_some_and(|u| u.is_empty())
}

fn has_comment(store: &Path, text: &str) -> bool {
    coalition_json(store, &["comments"])
        .as_array()
        .is_some_and(|list| list.iter().any(|c| c["text"] == text))
}

/// Points a device's QUIC at another port (a new link to the relay).
fn point_quic_at(store: &Path, port: u16, pin: &str) {
    let db = coalition_core::store::Store::open(store).expect("store");
    coalition_core::transport::set_quic_endpoint(
        &db,
        Some(&coalition_core::transport::QuicEndpoint {
            port,
            pin: coalition_core::transport::SpkiPin::parse(pin).expect("pin"),
        }),
    )
    .expect("point QUIC at the new link");
}

/// A device enrolled with invite `n` in `dir/other`, synced once on the clean loopback.
fn new_device_synced(relay: &QuicRelay, dir: &Path, n: usize) -> PathBuf {
    let other = dir.join("other");
    relay.enroll(&other, n, relay.udp.port(), "other");
    let s = sync_via(
        &other,
        &format!("http://{}", relay.http),
        &[],
        Duration::from_secs(30),
    )
    .expect("the other device's sync");
    assert!(complete(&s), "{s}");
    other
}

/// The issue's bad link: 10% loss, 600 ms RTT, 64 kbit/s.
fn lossy() -> LinkSpec {
    LinkSpec {
        loss: 0.10,
        rtt: Duration::from_millis(600),
        jitter: Duration::from_millis(40),
        bandwidth: Some(64_000),
        ..LinkSpec::clean()
    }
}

/// Two devices exchange an edit each through their own lossy links, over `transport`.
fn converge_over(transport: &str) {
    let seed = seed(&format!("bad_links::converge_over_{transport}"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(
        tmp.path(),
        &[("dario", "BHMAC", "nmac"), ("opal", "NPA", "operator")],
    );
    let rt = proxies();
    let links: Vec<(LinkSim, LinkSim)> = (0..2u64)
        .map(|i| {
            rt.block_on(async {
                let udp = udp_proxy(relay.udp, lossy(), seed + i)
                    .await
                    .expect("udp proxy");
                let tcp = tcp_proxy(relay.http, lossy(), seed + 100 + i)
                    .await
                    .expect("tcp proxy");
                (udp, tcp)
            })
        })
        .collect();
    let stores: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("dev{i}"))).collect();
    for (i, store) in stores.iter().enumerate() {
        relay.enroll(store, i, links[i].0.addr().port(), &format!("dev{i}"));
    }
    let via = |i: usize| format!("http://{}", links[i].1.addr());
    let flag = ["--transport", transport];
    let limit = Duration::from_secs(90);
    // Both fetch the coalition, each adds a comment, both sync again (twice: the second
    // brings what the other pushed after the first).
    for (i, store) in stores.iter().enumerate() {
        let s = sync_via(store, &via(i), &flag, limit)
            .unwrap_or_else(|e| panic!("first sync of dev{i}: {e}\n{}", relay.log_text()));
        assert!(complete(&s), "{s}");
        assert_eq!(s["transport"], transport.replace("ws", "websocket"), "{s}");
        coalition_json(
            store,
            &["comment", "--text", &format!("from dev{i} {seed}")],
        );
    }
    // dev0 pushes; dev1 pushes and gets dev0's; dev0 gets dev1's.
    for i in [0, 1, 0] {
        let started = Instant::now();
        let on_link_before = links[i].0.counters().total();
        let s = sync_via(&stores[i], &via(i), &flag, limit)
            .unwrap_or_else(|e| panic!("sync of dev{i}: {e}\n{}", relay.log_text()));
        assert!(complete(&s), "{s}");
        eprintln!("dev{i} synced over {transport} in {:?}", started.elapsed());
        // Over QUIC the summary says what went over the wire, as the link counted it (the
        // link also counts what it lost on the way to the device, and late packets).
        if transport == "quic" {
            let on_link = links[i].0.counters().total() - on_link_before;
            let wire = s["wire_bytes"].as_u64().expect("wire bytes over QUIC");
            assert!(
                wire <= on_link + 2_000 && wire * 2 >= on_link,
                "{wire} B on the wire by the summary, {on_link} B by the link (seed {seed})"
            );
        } else {
            assert!(s["wire_bytes"].is_null(), "{s}");
        }
    }
    for store in &stores {
        for i in 0..2 {
            assert!(
                has_comment(store, &format!("from dev{i} {seed}")),
                "{} lacks dev{i}'s comment (seed {seed})",
                store.display()
            );
        }
    }
    for (i, (udp, tcp)) in links.iter().enumerate() {
        let (used, unused) = if transport == "quic" {
            (udp, tcp)
        } else {
            (tcp, udp)
        };
        assert!(
            used.counters().total() > 0,
            "dev{i} sent nothing over {transport}"
        );
        assert_eq!(
            unused.counters().total(),
            0,
            "dev{i} used the other transport"
        );
    }
}

#[test]
fn bad_links_converge_over_quic_at_10_percent_loss_600ms_64kbit() {
    converge_over("quic");
}

#[test]
fn bad_links_converge_over_websocket_at_10_percent_loss_600ms_64kbit() {
    converge_over("websocket");
}

#[test]
fn bad_links_a_link_down_5s_in_every_20s_still_converges() {
    let seed = seed("bad_links::outage");
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(
        tmp.path(),
        &[("dario", "BHMAC", "nmac"), ("opal", "NPA", "operator")],
    );
    let rt = proxies();
    let spec = LinkSpec {
        rtt: Duration::from_millis(200),
        bandwidth: Some(64_000),
        // Down from 0.3 s to 5.3 s, 20.3 s to 25.3 s...: the first sync is cut at once.
        outage: Some(Outage {
            every: Duration::from_secs(20),
            down: Duration::from_secs(5),
            offset: Duration::from_millis(300),
        }),
        ..LinkSpec::clean()
    };
    let store = tmp.path().join("dev");
    relay.enroll(&store, 0, relay.udp.port(), "dev");
    let http = format!("http://{}", relay.http);
    let s = sync_via(
        &store,
        &http,
        &["--transport", "websocket"],
        Duration::from_secs(30),
    )
    .expect("first sync over the clean loopback");
    assert!(complete(&s), "{s}");
    coalition_json(&store, &["comment", "--text", "written before the outage"]);
    let udp = rt
        .block_on(udp_proxy(relay.udp, spec, seed))
        .expect("udp proxy");
    point_quic_at(&store, udp.addr().port(), &relay.pin);
    let started = Instant::now();
    let s = sync_via(
        &store,
        &http,
        &["--transport", "quic"],
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("sync across the outage: {e}\n{}", relay.log_text()));
    assert!(complete(&s), "{s}");
    // It went through the outage (the link was down for most of 5 s of it) on one connection.
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        udp.counters()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // Another device, on a clean link, gets the comment from the relay.
    let other = new_device_synced(&relay, tmp.path(), 1);
    assert!(has_comment(&other, "written before the outage"));
}

/// A device enrolled with the relay's second invite (in `dir/writer`) writes `n` field notes
/// of `len` characters and syncs them, so that the coalition has that weight to download.
/// Returns the relay's HTTP address.
fn writer_with_field_notes(
    relay: &QuicRelay,
    dir: &Path,
    n: usize,
    len: usize,
    seed: u64,
) -> String {
    let writer = dir.join("writer");
    relay.enroll(&writer, 1, relay.udp.port(), "writer");
    let http = format!("http://{}", relay.http);
    let s = sync_via(&writer, &http, &[], Duration::from_secs(30)).expect("writer's first sync");
    assert!(complete(&s), "{s}");
    field_notes(&writer, n, len, seed);
    let s = sync_via(&writer, &http, &[], Duration::from_secs(60)).expect("writer sync");
    assert!(complete(&s), "{s}");
    http
}

/// Writes `n` field notes of `len` characters each on a device, in process (a `coalition`
/// process per note would take most of the test's time). The text is seeded noise: nothing
/// for a compressor to take out, so the bytes on the link are the bytes of the notes.
fn field_notes(store: &Path, n: usize, len: usize, seed: u64) {
    use coalition_core::coalition::Edit;
    use coalition_core::model::{Comment, CommentKind};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut db = coalition_core::store::Store::open(store).expect("store");
    let who = db
        .identity()
        .expect("identity")
        .expect("an enrolled device");
    let id = db.coalitions().expect("coalitions")[0].id;
    for i in 0..n {
        let noise: String = (0..len)
            .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
            .collect();
        let mut c = db.load(&id).expect("load");
        let committed = c
            .apply(
                &who,
                Edit::AddComment(Comment {
                    id: coalition_core::ids::new_entity_id(),
                    kind: CommentKind::FieldNote,
                    about: None,
                    text: format!("field note {i}: {noise}"),
                    org: who.org.clone(),
                    user: who.user.clone(),
                    at: 1_700_000_000 + i as i64,
                }),
                1_700_000_000 + i as i64,
            )
            .expect("a field note");
        db.save(&mut c, &committed.docs).expect("save");
    }
}

/// Bytes a fresh device moves for the whole coalition over QUIC, uninterrupted, and with the
/// link cut once half of that went through and a second sync on a fresh link (issue 5).
///
/// What arrived before the cut is stored and not sent again: the relay sends a large
/// catch-up in pieces of bounded size (`EngineConfig::max_message_changes`), each applied and
/// stored on arrival. What the second sync costs beyond the rest of the download is a new QUIC
/// handshake, the session's first messages, and the piece cut in the middle.
#[test]
fn bad_links_a_transfer_cut_at_half_resumes_without_resending() {
    let seed = seed("bad_links::cut");
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(
        tmp.path(),
        &[
            ("dario", "BHMAC", "nmac"),
            ("opal", "NPA", "operator"),
            ("sara", "BHMAC", "nmac"),
        ],
    );
    // Give the coalition weight (about 300 KB of field notes) from a writer device.
    let http = writer_with_field_notes(&relay, tmp.path(), 60, 5_000, seed);

    let rt = proxies();
    let spec = LinkSpec {
        rtt: Duration::from_millis(100),
        bandwidth: Some(2_000_000),
        ..LinkSpec::clean()
    };
    let whole = rt
        .block_on(udp_proxy(relay.udp, spec, seed))
        .expect("proxy");
    let reference = tmp.path().join("reference");
    relay.enroll(&reference, 0, whole.addr().port(), "reference");
    let s = sync_via(
        &reference,
        &http,
        &["--transport", "quic"],
        Duration::from_secs(30),
    )
    .expect("uninterrupted sync");
    assert!(complete(&s), "{s}");
    let uninterrupted = whole.counters().total();

    // The same download on a link that dies half way; the sync gives up after 3 s.
    let cut = rt
        .block_on(udp_proxy(relay.udp, spec, seed + 1))
        .expect("proxy");
    cut.cut_after(uninterrupted / 2);
    let store = tmp.path().join("resumed");
    relay.enroll(&store, 2, cut.addr().port(), "resumed");
    let first = sync_via(
        &store,
        &http,
        &["--transport", "quic"],
        Duration::from_secs(3),
    );
    assert!(
        !first.as_ref().is_ok_and(complete),
        "the cut did not cut: {first:?}"
    );
    let before_cut = cut.counters().total();
    // A new network: a fresh link to the relay.
    let again = rt
        .block_on(udp_proxy(relay.udp, spec, seed + 2))
        .expect("proxy");
    point_quic_at(&store, again.addr().port(), &relay.pin);
    let s = sync_via(
        &store,
        &http,
        &["--transport", "quic"],
        Duration::from_secs(30),
    )
    .expect("resumed sync");
    assert!(complete(&s), "{s}");
    let notes = coalition_json(&store, &["comments"]);
    let notes = notes.as_array().expect("comments");
    assert_eq!(
        notes
            .iter()
            .filter(|c| c["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("field note ")))
            .count(),
        60
    );
    let total = before_cut + again.counters().total();
    // What any new connection costs with nothing to fetch (handshakes, first messages): the
    // part of the second sync that is not the rest of the download.
    let idle = rt
        .block_on(udp_proxy(relay.udp, spec, seed + 3))
        .expect("proxy");
    point_quic_at(&store, idle.addr().port(), &relay.pin);
    let s = sync_via(
        &store,
        &http,
        &["--transport", "quic"],
        Duration::from_secs(30),
    )
    .expect("a sync with nothing new");
    assert!(complete(&s), "{s}");
    eprintln!(
        "uninterrupted {uninterrupted} B; cut after {before_cut} B, then {} B: {total} B \
         ({:.1}%); a connection with nothing new: {} B",
        again.counters().total(),
        100.0 * total as f64 / uninterrupted as f64,
        idle.counters().total(),
    );
    assert!(
        total as f64 <= uninterrupted as f64 * 1.10,
        "resuming sent {total} B against {uninterrupted} B uninterrupted (seed {seed})"
    );
}

#[test]
fn bad_links_udp_blocked_falls_back_to_websocket_and_back() {
    let seed = seed("bad_links::fallback");
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(tmp.path(), &[("dario", "BHMAC", "nmac")]);
    let rt = proxies();
    let udp = rt
        .block_on(udp_proxy(relay.udp, LinkSpec::clean(), seed))
        .expect("proxy");
    udp.set_blocked(true);
    let store = tmp.path().join("dev");
    relay.enroll(&store, 0, udp.addr().port(), "dev");
    let http = format!("http://{}", relay.http);
    let started = Instant::now();
    let s = sync_via(&store, &http, &[], Duration::from_secs(30)).expect("fallback sync");
    assert!(complete(&s), "{s}");
    assert_eq!(s["transport"], "websocket", "{s}");
    // QUIC's head start, then WebSocket: seconds, not the connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        udp.counters()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    // A watching device on WebSocket moves to QUIC once UDP gets through again.
    let mut watch = ChildGuard::new(
        Command::new(binary("coalition-core", "coalition"))
            .arg("--store")
            .arg(&store)
            .args(["--json", "sync", "--watch", "--quic-retry", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sync --watch"),
    );
    let stdout = watch.child.stdout.take().expect("stdout");
    let (tx, events) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(e) = serde_json::from_str(&line) {
                if tx.send(e).is_err() {
                    break;
                }
            }
        }
    });
    let linked = |transport: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Ok(e) = events.recv_timeout(end.saturating_duration_since(Instant::now())) {
            if e["event"] == "linked" && e["transport"] == transport {
                return;
            }
            seen.push(e);
        }
        panic!("never linked over {transport}; saw {seen:?}");
    };
    linked("websocket");
    udp.set_blocked(false);
    linked("quic");
}

/// A counter or gauge from the relay's `/metrics`.
fn relay_metric(relay: &QuicRelay, name: &str) -> i64 {
    let (status, text) =
        http_get(&format!("http://{}/metrics", relay.http), None).expect("the relay's metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The sync connections the relay has open now (both transports).
fn open_connections(relay: &QuicRelay) -> i64 {
    relay_metric(relay, "coalition_connections")
}

/// The sync connections the relay accepted since it started (both transports).
fn relay_connections(relay: &QuicRelay) -> i64 {
    relay_metric(relay, "coalition_connections_total")
}

/// Field notes in a store's comments.
fn field_note_count(store: &Path) -> usize {
    coalition_json(store, &["comments"])
        .as_array()
        .expect("comments")
        .iter()
        .filter(|c| {
            c["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("field note "))
        })
        .count()
}

/// A device that changes networks in the middle of a sync keeps its QUIC connection (issue 5).
/// Its UDP socket is replaced while a download is under way; the link simulator, like a NAT,
/// gives the new socket a new address toward the relay, so the relay sees the device move,
/// checks the new path, and the sync finishes on the same connection: no new handshake, no
/// second connection at the relay.
#[test]
fn bad_links_a_device_that_changes_networks_mid_sync_keeps_its_connection() {
    use coalition_core::transport::sync_once_over;

    let seed = seed("bad_links::migration");
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(
        tmp.path(),
        &[("dario", "BHMAC", "nmac"), ("opal", "NPA", "operator")],
    );
    // About 200 KB of field notes to download.
    let http = writer_with_field_notes(&relay, tmp.path(), 40, 5_000, seed);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let spec = LinkSpec {
        rtt: Duration::from_millis(100),
        bandwidth: Some(1_000_000),
        ..LinkSpec::clean()
    };
    let link = rt
        .block_on(udp_proxy(relay.udp, spec, seed))
        .expect("proxy");
    let store = tmp.path().join("mover");
    relay.enroll(&store, 0, link.addr().port(), "mover");
    let connections_before = relay_connections(&relay);

    let move_after = 50_000;
    let (summary, migrator, moved_at, new_addr) = rt.block_on(async {
        let mut db = coalition_core::store::Store::open(&store).expect("store");
        let (options, conn) = connect_quic(&db, &http, None).await;
        let migrator = conn.migrator();
        let old_addr = migrator.local_addr().expect("local address");
        let mut on_event = |_: &coalition_core::transport::WatchEvent| {};
        let mut sync = std::pin::pin!(sync_once_over(&mut db, &options, conn, &mut on_event));
        // Run the sync until `move_after` bytes went through, then move to a new socket.
        let started = Instant::now();
        loop {
            tokio::select! {
                done = &mut sync => panic!(
                    "the sync ended before the move, after {} B: {done:?}",
                    link.counters().total()
                ),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            if link.counters().total() >= move_after {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no download");
        }
        let moved_at = link.counters().total();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a new socket");
        let new_addr = socket.local_addr().expect("address");
        assert_ne!(new_addr, old_addr);
        migrator.rebind(socket).expect("rebind");
        let summary = tokio::time::timeout(Duration::from_secs(90), sync)
            .await
            .expect("the sync ends")
            .expect("the sync");
        (summary, migrator, moved_at, new_addr)
    });
    assert_eq!(
        summary.outcome,
        coalition_core::transport::ws::Outcome::Complete,
        "{summary:?} (seed {seed})"
    );
    assert_eq!(field_note_count(&store), 40, "seed {seed}");
    let total = link.counters().total();
    eprintln!(
        "moved after {moved_at} B of {total} B; relay path checks answered: {}",
        migrator.path_checks_answered()
    );
    // Most of the download came after the move, from the new address.
    assert!(
        total - moved_at > 100_000,
        "only {} B after the move (seed {seed})",
        total - moved_at
    );
    let clients = link.client_addresses();
    assert_eq!(clients.len(), 2, "{clients:?}");
    assert_eq!(clients[1], new_addr);
    // The relay saw the connection move and checked the new path...
    assert!(migrator.path_checks_answered() >= 1, "seed {seed}");
    // ...and it stayed one connection.
    assert_eq!(relay_connections(&relay), connections_before + 1);
}

/// A sync bounded by a byte budget (`coalition sync --budget`, for metered links) stops
/// before a frame that would pass it, keeps what went through, says what still waits, and a
/// later sync sends the rest (issue 5).
#[test]
fn bad_links_a_budgeted_sync_stops_within_it_and_a_later_sync_sends_the_rest() {
    let seed = seed("bad_links::budget");
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(
        tmp.path(),
        &[("dario", "BHMAC", "nmac"), ("opal", "NPA", "operator")],
    );
    let http = format!("http://{}", relay.http);
    let writer = tmp.path().join("writer");
    relay.enroll(&writer, 0, relay.udp.port(), "writer");
    let reader = tmp.path().join("reader");
    relay.enroll(&reader, 1, relay.udp.port(), "reader");
    for store in [&writer, &reader] {
        let s = sync_via(store, &http, &[], Duration::from_secs(30)).expect("first sync");
        assert!(complete(&s), "{s}");
    }
    // About 120 KB of field notes written offline.
    field_notes(&writer, 30, 4_000, seed);
    let waiting = |store: &Path| -> u64 {
        let status = coalition_json(store, &["status"]);
        status["coalitions"]
            .as_array()
            .expect("coalitions")
            .iter()
            .flat_map(|c| c["unsent"].as_array().cloned().unwrap_or_default())
            .map(|d| d["changes"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(waiting(&writer) >= 30);

    let budget: u64 = 40_000;
    let s = sync_via(
        &writer,
        &http,
        &["--budget", &budget.to_string()],
        Duration::from_secs(60),
    )
    .expect("a budgeted sync ends normally");
    eprintln!("budgeted sync: {s}");
    assert_eq!(s["outcome"], "budget_reached", "{s}");
    let spent = s["stats"]["bytes_sent"].as_u64().expect("bytes sent")
        + s["stats"]["bytes_received"]
            .as_u64()
            .expect("bytes received");
    assert!(
        spent <= budget,
        "spent {spent} B of a {budget} B budget: {s}"
    );
    // It used the budget (most of it), and says what is still waiting.
    assert!(spent > budget / 2, "spent only {spent} B: {s}");
    assert!(s["unsent"].as_array().is_some_and(|u| !u.is_empty()), "{s}");
    assert!(waiting(&writer) > 0, "status shows nothing waiting");
    let status = coalition_json(&writer, &["status"]);
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("budget")),
        "{status}"
    );
    // What went through is on the relay: another device gets part of the notes.
    let s = sync_via(&reader, &http, &[], Duration::from_secs(30)).expect("reader sync");
    assert!(complete(&s), "{s}");
    let partial = field_note_count(&reader);
    assert!(
        partial > 0 && partial < 30,
        "{partial} of 30 notes after the budgeted sync\n{}",
        relay.log_text()
    );

    // The next sync without a budget sends the rest.
    let s = sync_via(&writer, &http, &[], Duration::from_secs(60)).expect("the rest");
    assert!(complete(&s), "{s}");
    assert_eq!(waiting(&writer), 0);
    let s = sync_via(&reader, &http, &[], Duration::from_secs(30)).expect("reader sync");
    assert!(complete(&s), "{s}");
    assert_eq!(field_note_count(&reader), 30);
}

/// A device that syncs again within one process (the mobile library, `sync --watch`) resumes
/// its QUIC session: its `hello`, `join` and the offer of its new edit go in 0-RTT data, and
/// the sync is one round trip (issue 5). A relay that restarted no longer knows the session
/// and refuses that early data; the link sends it all again once the handshake is done, and
/// the sync still completes on that connection.
#[test]
fn bad_links_a_resumed_session_sends_its_edit_early_even_to_a_restarted_relay() {
    use coalition_core::transport::quic::{self, QuicTarget};
    use coalition_core::transport::{sync_once_over, Congestion, SyncOptions, SyncSummary};

    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(
        tmp.path(),
        &[("dario", "BHMAC", "nmac"), ("mira", "BHMAC", "nmac")],
    );
    let store = tmp.path().join("device");
    relay.enroll(&store, 0, relay.udp.port(), "device");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sync = |relay: &QuicRelay| -> (SyncSummary, bool) {
        rt.block_on(async {
            let mut db = coalition_core::store::Store::open(&store).expect("store");
            let http = format!("http://{}", relay.http);
            let mut options = SyncOptions::from_store(&db, Some(&http)).expect("options");
            options.timeout = Duration::from_secs(60);
            let target = QuicTarget {
                host: "127.0.0.1".to_owned(),
                endpoint: options.quic.expect("the invite's QUIC endpoint"),
                congestion: Congestion::default(),
            };
            let link = quic::connect(&target, &options.credential, Duration::from_secs(30))
                .await
                .expect("a QUIC connection");
            let early = link.was_early();
            let mut on_event = |_: &coalition_core::transport::WatchEvent| {};
            let summary = sync_once_over(&mut db, &options, link, &mut on_event)
                .await
                .expect("the sync");
            (summary, early)
        })
    };
    let done = |summary: &SyncSummary| {
        summary.outcome == coalition_core::transport::ws::Outcome::Complete
            && summary.unsent.is_empty()
            && summary.stats.refused.is_empty()
    };

    let (first, early) = sync(&relay);
    assert!(done(&first), "{first:?}");
    assert!(!early, "no session to resume yet");

    coalition_json(&store, &["comment", "--text", "sent early"]);
    let (second, early) = sync(&relay);
    assert!(early, "the session resumes");
    // `unsent` is empty: the relay answered with heads that include the edit.
    assert!(done(&second), "{second:?}");
    // The `join` and the edited document: the documents in step with the relay were left
    // out, and the relay's `peer` said it had nothing newer of them.
    assert_eq!(second.stats.frames_sent, 2, "{second:?}");
    // The device's close reached the relay: the connection is gone long before the idle
    // timeout.
    let end = Instant::now() + Duration::from_secs(3);
    while open_connections(&relay) != 0 {
        assert!(Instant::now() < end, "the relay still holds the connection");
        std::thread::sleep(Duration::from_millis(20));
    }

    let relay = relay.restart();
    point_quic_at(&store, relay.udp.port(), &relay.pin);
    coalition_json(&store, &["comment", "--text", "sent again after a refusal"]);
    let (third, early) = sync(&relay);
    assert!(early, "the device still holds the old session's ticket");
    assert!(done(&third), "{third:?}");
    assert_eq!(third.stats.frames_sent, 2, "{third:?}");

    // A new device sees both edits on the relay.
    let other = new_device_synced(&relay, tmp.path(), 1);
    assert!(has_comment(&other, "sent early"));
    assert!(has_comment(&other, "sent again after a refusal"));
}

/// A device that enrolls over the relay's QUIC endpoint keeps the TLS session, so its first
/// sync in the same process resumes it and sends its requests as 0-RTT data: one round trip
/// less for a new device on a long link (issue 5). The HTTP endpoint is unreachable here, so
/// the enrollment can only have gone over QUIC; a used invite is refused over QUIC as over
/// HTTP, with the relay's reason.
/// Connects over QUIC, to the device's QUIC endpoint or (with `port`) to that port with the
/// endpoint's pin; returns the options a sync on it takes (60 s) and the link.
async fn connect_quic(
    db: &coalition_core::store::Store,
    http: &str,
    port: Option<u16>,
) -> (
    coalition_core::transport::SyncOptions,
    coalition_core::transport::quic::QuicLink,
) {
    use coalition_core::transport::quic::{self, QuicTarget};
    use coalition_core::transport::{Congestion, SyncOptions};

    let mut options = SyncOptions::from_store(db, Some(http)).expect("options");
    options.timeout = Duration::from_secs(60);
    let mut endpoint = options.quic.expect("the invite's QUIC endpoint");
    if let Some(port) = port {
        endpoint.port = port;
    }
    let target = QuicTarget {
        host: "127.0.0.1".to_owned(),
        endpoint,
        congestion: Congestion::default(),
    };
    let link = tokio::time::timeout(
        Duration::from_secs(30),
        quic::connect(&target, &options.credential, Duration::from_secs(30)),
    )
    .await
    .expect("connecting within 30 s")
    .expect("a QUIC connection");
    (options, link)
}

/// [`connect_quic`], then one sync on that connection; says whether the first flight went as
/// 0-RTT data.
async fn sync_over_quic(
    mut db: coalition_core::store::Store,
    http: &str,
    port: Option<u16>,
) -> (coalition_core::transport::SyncSummary, bool) {
    let (options, link) = connect_quic(&db, http, port).await;
    let early = link.was_early();
    let mut on_event = |_: &coalition_core::transport::WatchEvent| {};
    let summary = tokio::time::timeout(
        Duration::from_secs(90),
        coalition_core::transport::sync_once_over(&mut db, &options, link, &mut on_event),
    )
    .await
    .expect("the sync within 90 s")
    .expect("the sync");
    (summary, early)
}

#[test]
fn bad_links_a_device_enrolled_over_quic_sends_its_first_sync_early() {
    use coalition_core::transport::EnrollError;

    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(
        tmp.path(),
        &[("dario", "BHMAC", "nmac"), ("mira", "BHMAC", "nmac")],
    );
    let rt = proxies();
    let http = rt
        .block_on(tcp_proxy(relay.http, LinkSpec::clean(), 1))
        .expect("proxy");
    http.set_blocked(true);
    let blocked_http = format!("http://{}", http.addr());
    let invite = format!("{}.{}.{}", relay.invites[0], relay.udp.port(), relay.pin);

    let store = tmp.path().join("device");
    let db = coalition_core::store::Store::open(&store).expect("store");
    let enrolled = coalition_core::transport::enroll(&db, &blocked_http, &invite, Some("device"))
        .expect("enrollment over QUIC while the relay's HTTP endpoint cannot be reached");
    assert_eq!(enrolled.identity.user, "dario");
    assert_eq!(
        http.counters().total(),
        0,
        "nothing went to the HTTP endpoint"
    );

    let again = tmp.path().join("again");
    let db_again = coalition_core::store::Store::open(&again).expect("store");
    match coalition_core::transport::enroll(&db_again, &blocked_http, &invite, Some("again")) {
        Err(EnrollError::Refused { code, .. }) => assert_eq!(code, "invite_used"),
        other => panic!("a used invite must be refused over QUIC: {other:?}"),
    }
    assert!(db_again.identity().expect("read").is_none());

    // Where UDP does not get through, the enrollment goes over HTTP after the handshake's
    // time limit.
    let udp_blocked = rt
        .block_on(udp_proxy(relay.udp, LinkSpec::clean(), 2))
        .expect("proxy");
    udp_blocked.set_blocked(true);
    let fallback = tmp.path().join("fallback");
    let db_fallback = coalition_core::store::Store::open(&fallback).expect("store");
    let started = Instant::now();
    let enrolled = coalition_core::transport::enroll(
        &db_fallback,
        &format!("http://{}", relay.http),
        &format!(
            "{}.{}.{}",
            relay.invites[1],
            udp_blocked.addr().port(),
            relay.pin
        ),
        Some("fallback"),
    )
    .expect("enrollment over HTTP when UDP is blocked");
    assert_eq!(enrolled.identity.user, "mira");
    assert!(
        udp_blocked
            .counters()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert!(
        started.elapsed() < coalition_core::transport::quic::ENROLL_HANDSHAKE_TIMEOUT * 3,
        "{:?}",
        started.elapsed()
    );

    let (summary, early) = rt.block_on(sync_over_quic(db, &format!("http://{}", relay.http), None));
    assert!(early, "the first sync resumes the enrollment's session");
    assert_eq!(
        summary.outcome,
        coalition_core::transport::ws::Outcome::Complete,
        "{summary:?}"
    );
    assert!(summary.unsent.is_empty(), "{summary:?}");
    let db = coalition_core::store::Store::open(&store).expect("store");
    assert_eq!(
        db.coalitions().expect("coalitions").len(),
        1,
        "the first sync brought the coalition"
    );
}

/// A new device's first sync (0-RTT data, after enrolling over QUIC) whose relay handshake
/// flight is lost still completes, with every document, in a few round trips more than the
/// transfer (issue 5). The relay answers 0-RTT data at once, which the device cannot read
/// until the handshake flight comes again, and holds answers beyond a part of its first window
/// until the handshake completes (`EARLY_ANSWER_BYTES` in the relay's `quic` module); here
/// the download (about 120 KB of field notes) is larger than that, the link is the
/// benchmark's 2G link without random loss (what does not fit its 2-second queue is lost),
/// and the relay's first datagram is dropped. (The stall that hold prevents, seen in about 2%
/// of the benchmark's 2G first syncs, needs more losses than this test makes.)
#[test]
fn bad_links_a_first_sync_whose_handshake_answer_is_lost_does_not_stall() {
    let seed = seed("bad_links::lost_handshake_answer");
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(
        tmp.path(),
        &[("dario", "BHMAC", "nmac"), ("opal", "NPA", "operator")],
    );
    let http = writer_with_field_notes(&relay, tmp.path(), 40, 3_000, seed);

    // Enrolled over QUIC in this process, on the clean loopback: the first sync resumes.
    let store = tmp.path().join("device");
    let db = coalition_core::store::Store::open(&store).expect("store");
    let invite = format!("{}.{}.{}", relay.invites[0], relay.udp.port(), relay.pin);
    coalition_core::transport::enroll(&db, &http, &invite, Some("device")).expect("enrollment");

    let rt = proxies();
    // The benchmark's 2G link without its random loss: only the relay's first datagram and
    // what does not fit the 2-second queue (16 KB) is lost.
    let spec = LinkSpec {
        loss: 0.0,
        ..LinkSpec::two_g()
    };
    let link = rt
        .block_on(udp_proxy(relay.udp, spec, seed))
        .expect("proxy");
    link.lose_next_down(1);
    let started = Instant::now();
    let (summary, early) = rt.block_on(sync_over_quic(db, &http, Some(link.addr().port())));
    let took = started.elapsed();
    assert!(early, "the first sync resumes the enrollment's session");
    assert_eq!(
        summary.outcome,
        coalition_core::transport::ws::Outcome::Complete,
        "{summary:?} (seed {seed})"
    );
    assert_eq!(field_note_count(&store), 40, "seed {seed}");
    // About 15 s of transfer and a few lost round trips; a stall waits out probe timeouts of
    // tens of seconds (and the engine gives up on the relay's `peer` after 30 s).
    assert!(took < Duration::from_secs(45), "{took:?} (seed {seed})");
    eprintln!(
        "first sync with the relay's first datagram lost: {took:?}, {} B on the link",
        link.counters().total()
    );
}

/// The relay's first answers to a device that speaks `alpn` over QUIC, read by hand: for each
/// frame, whether it came deflated, and the message.
async fn first_answers_over(relay: &QuicRelay, store: &Path, alpn: &[u8]) -> Vec<(bool, Vec<u8>)> {
    use coalition_core::sync::message::JoinMessage;
    use coalition_core::sync::{Message, PeerId, PeerMetadata};
    use coalition_core::transport::quic::pin::{PinVerifier, SpkiPin};
    use coalition_core::transport::quic::wire::{self, Framing};

    let options = coalition_core::transport::SyncOptions::from_store(
        &coalition_core::store::Store::open(store).expect("store"),
        Some(&format!("http://{}", relay.http)),
    )
    .expect("options");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let pin = SpkiPin::parse(&relay.pin).expect("pin");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(PinVerifier::new(pin, &provider))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("UDP");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let conn = endpoint
        .connect(relay.udp, wire::SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let join = Message::Join(JoinMessage {
        sender_id: PeerId::new("oldtablet1"),
        peer_metadata: PeerMetadata {
            storage_id: None,
            is_ephemeral: true,
        },
        supported_protocol_versions: vec!["1".to_owned()],
        skips_in_step: false,
    });
    for frame in [options.credential.into_bytes(), join.encode()] {
        wire::write_frame(&mut send, Framing::Plain, &frame)
            .await
            .expect("write");
    }
    let mut answers = Vec::new();
    // The welcome, then the `peer`.
    for _ in 0..2 {
        let mut header = [0u8; 4];
        recv.read_exact(&mut header).await.expect("a header");
        let header = u32::from_be_bytes(header);
        let mut bytes = vec![0u8; (header & 0x7fff_ffff) as usize];
        recv.read_exact(&mut bytes).await.expect("a frame");
        answers.push((header >> 31 == 1, bytes));
    }
    conn.close(0u32.into(), b"");
    answers
}

/// A device from before deflated frames offers only `coalition-sync/1` and gets every frame
/// as it is; one that offers `coalition-sync/2` gets the same answers, the larger deflated.
#[test]
fn quic_frames_are_deflated_only_for_devices_that_offer_it() {
    use coalition_core::sync::Message;
    use coalition_core::transport::quic::wire;

    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = QuicRelay::start(tmp.path(), &[("dario", "BHMAC", "nmac")]);
    let store = tmp.path().join("tablet");
    relay.enroll(&store, 0, relay.udp.port(), "tablet");
    let rt = proxies();
    let plain = rt.block_on(first_answers_over(&relay, &store, wire::ALPN_PLAIN));
    let deflating = rt.block_on(first_answers_over(&relay, &store, wire::ALPN));

    assert!(plain.iter().all(|(deflated, _)| !deflated), "{plain:?}");
    assert_eq!(plain[0].1, br#"{"ok":true}"#);
    assert!(matches!(Message::decode(&plain[1].1), Ok(Message::Peer(_))));

    // The welcome is too small to deflate; the `peer` is not.
    assert!(!deflating[0].0 && deflating[1].0, "{deflating:?}");
    assert!(deflating[1].1.len() < plain[1].1.len());
    let peer = wire::inflate(&deflating[1].1, 1 << 20).expect("the peer frame inflates");
    assert_eq!(peer, plain[1].1, "the same answer either way");
}
