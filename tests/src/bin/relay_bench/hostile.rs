//! `relay-bench hostile`: honest clients keep syncing while hostile peers attack the relay.
//!
//! The relay screens every change and enforces limits per connection, but all of that runs on
//! the one hub thread that also forwards the honest clients' edits. What matters to users is
//! whether a few bad peers can make everyone else wait, so this runs the honest load of
//! `relay-bench load` twice against a fresh relay each time, once alone and once next to
//! hostile connections, and compares the honest clients' fan-out latency and delivery.
//!
//! Hostile connections (`--hostile`, split round-robin into the kinds `--kinds` names, all
//! three by default), each as fast as it can, reconnecting whenever the relay closes it:
//! - **garbage**: an enrolled device that joins, then floods one kind of bad frame per
//!   connection: random bytes, truncated CBOR, well-formed messages of unknown types, a frame
//!   just under the 64 MiB message limit, a frame just over it;
//! - **forbidden**: an enrolled device of an observer organisation that sends well-formed
//!   `sync` messages, each carrying a new change it may not make (to the manifest's members,
//!   the plan, the root of the comments document), every one based on the relay's heads so
//!   that the relay judges each in full and keeps each in quarantine;
//! - **bad credentials**: WebSocket upgrades of `/sync` with made-up tokens.
//!
//! They run on their own tokio runtime so that they do not take the honest clients' worker
//! threads; they still share the machine's cores with the relay and the honest clients, as a
//! real attacker on the same host would. A probe asks `GET /healthz` every 250 ms during both
//! runs. After each run the relay's `/metrics` are read, the relay is stopped, and the rows of
//! its quarantine (`held_changes`) are counted in its store.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use automerge::sync::{BloomFilter, ChunkList, Have, MessageVersion};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, Value, ROOT};
use coalition_core::model::{DocKind, Member, OrgKind, Role};
use coalition_core::store::Store;
use coalition_core::sync::message::{JoinMessage, SyncMessage};
use coalition_core::sync::{DocumentId, Message, PeerId, PeerMetadata};
use coalition_core::{Edit, Identity};
use coalition_server::auth::{AuthDb, InviteSpec};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::common::{fmt_us, quantile, temp_dir, RelayKind, RelayProc};
use super::load::{cpu_seconds, drive, setup_ours, LoadArgs, Phase, Row, LOAD_ORG};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Tx = SplitSink<Ws, WsMessage>;
/// Enrolled devices: credential and Automerge actor.
type Devices = Vec<(String, ActorId)>;

/// The relay's message size limit (`Limits::max_message`; `ws::MAX_FRAME` for a frame).
const MAX_MESSAGE: usize = coalition_server::ws::MAX_FRAME;

/// The organisation of the forbidden writers: an observer, which may read every document of
/// the coalition and write only comments.
const OBSERVER_ORG: &str = "OBS";

/// The coordinator who made the load coalition (see `load::setup_ours`).
fn founder() -> Identity {
    Identity {
        user: "cora".into(),
        org: LOAD_ORG.into(),
        device: "bench".into(),
        actor: "01".repeat(16),
    }
}

/// What `relay-bench hostile` is asked.
#[derive(Clone, Debug)]
pub struct HostileArgs {
    /// The honest load (`--relay` is always ours).
    pub load: LoadArgs,
    /// Hostile connections in the second run.
    pub hostile: usize,
    /// What they do, taken round-robin (`--kinds`; all three by default).
    pub kinds: Vec<Kind>,
}

/// What one hostile connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Floods bad frames.
    Garbage,
    /// Sends changes its author may not make.
    Forbidden,
    /// Upgrades `/sync` with made-up credentials.
    BadCredential,
}

impl Kind {
    /// `garbage,forbidden,credentials` or a part of it.
    pub fn parse_list(text: &str) -> Result<Vec<Kind>> {
        let kinds = text
            .split(',')
            .map(|k| match k.trim() {
                "garbage" => Ok(Kind::Garbage),
                "forbidden" => Ok(Kind::Forbidden),
                "credentials" => Ok(Kind::BadCredential),
                other => bail!("--kinds: `{other}` is not garbage, forbidden or credentials"),
            })
            .collect::<Result<Vec<_>>>()?;
        if kinds.is_empty() {
            bail!("--kinds names no kind");
        }
        Ok(kinds)
    }
}

/// The bad frame a garbage connection floods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Garbage {
    Random,
    Truncated,
    UnknownType,
    UnderLimit,
    OverLimit,
}

impl Garbage {
    const ALL: [Garbage; 5] = [
        Garbage::Random,
        Garbage::Truncated,
        Garbage::UnknownType,
        Garbage::UnderLimit,
        Garbage::OverLimit,
    ];

    fn name(self) -> &'static str {
        match self {
            Garbage::Random => "random bytes",
            Garbage::Truncated => "truncated CBOR",
            Garbage::UnknownType => "unknown message type",
            Garbage::UnderLimit => "64 MiB − 4 KiB of non-CBOR",
            Garbage::OverLimit => "64 MiB + 1 B (over the limit)",
        }
    }
}

/// Counters all hostile tasks share.
#[derive(Default)]
struct Stats {
    /// Garbage frames sent, per kind.
    garbage: Mutex<BTreeMap<Garbage, u64>>,
    /// Forbidden changes sent (one per `sync` message).
    forbidden: AtomicU64,
    /// Changes the relay named as refused in `error` messages.
    refused_named: AtomicU64,
    /// `error` messages received by hostile connections.
    errors: AtomicU64,
    /// Hostile WebSocket connections opened.
    connections: AtomicU64,
    /// Hostile connections that could not be opened (other than bad credentials).
    connect_failures: AtomicU64,
    /// How hostile connections ended: close code and reason, or how they broke.
    closes: Mutex<BTreeMap<String, u64>>,
    /// `/sync` upgrades with a made-up credential, by the relay's answer.
    bad_credentials: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        if let Ok(mut m) = map.lock() {
            *m.entry(key).or_default() += 1;
        }
    }

    fn garbage_sent(&self, kind: Garbage) {
        if let Ok(mut m) = self.garbage.lock() {
            *m.entry(kind).or_default() += 1;
        }
    }
}

/// A document of the coalition, as the relay stores it when it starts.
#[derive(Clone)]
struct Target {
    id: DocumentId,
    kind: DocKind,
    doc: AutoCommit,
}

/// What every hostile task needs.
struct Attack {
    addr: SocketAddr,
    /// Credentials and actors of observer devices, one per garbage or forbidden task.
    observers: Devices,
    targets: Vec<Target>,
    stats: Stats,
    stop: AtomicBool,
    /// A frame just under and one just over the message limit, made once.
    under_limit: tokio_tungstenite::tungstenite::Bytes,
    over_limit: tokio_tungstenite::tungstenite::Bytes,
}

/// Add the observer organisation to the load coalition and enroll `n` observer devices; return
/// their credentials and the coalition's documents as stored.
fn add_observers(
    relay_data: &Path,
    coalition: DocumentId,
    n: usize,
) -> Result<(Devices, Vec<Target>)> {
    let now = chrono::Utc::now().timestamp();
    let mut store = Store::open(relay_data)?;
    let mut c = store.load(&coalition)?;
    let founder = founder();
    c.set_actor(&founder);
    let committed = c.apply(
        &founder,
        Edit::PutMember(Member {
            org: OBSERVER_ORG.into(),
            name: "Observer".into(),
            kind: OrgKind::Observer,
            roles: [(Role::Observer.as_str().to_string(), true)]
                .into_iter()
                .collect(),
            country: None,
        }),
        now,
    )?;
    store.save(&mut c, &committed.docs)?;
    let targets = c
        .docs()
        .map(|d| Target {
            id: d.id,
            kind: d.kind,
            doc: d.doc.clone(),
        })
        .collect();
    store.close()?;
    let mut auth = AuthDb::open(relay_data)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let invite = auth.create_invite(
            &InviteSpec {
                coalition,
                user: format!("obs{i}"),
                org: OBSERVER_ORG.into(),
                role: Role::Observer.as_str().into(),
            },
            now + 3600,
        )?;
        let actor: [u8; 16] = rand::random();
        let hex: String = actor.iter().map(|b| format!("{b:02x}")).collect();
        let enrolled = auth.enroll_with(&invite.code, &format!("obs-{i}"), &hex, true)?;
        out.push((enrolled.credential, ActorId::from(&actor[..])));
    }
    Ok((out, targets))
}

/// One run's results.
struct Outcome {
    row: Row,
    hostile: usize,
    stats: Option<Arc<Attack>>,
    /// `/metrics` before editing and after the run.
    metrics_before: BTreeMap<String, f64>,
    metrics_after: BTreeMap<String, f64>,
    /// Rows of `held_changes` in the relay's store after it stopped.
    held: usize,
    /// Bytes of the relay's store (`coalition.db` and its WAL) after it stopped.
    store_bytes: u64,
    /// `/healthz` round trips during the run, µs; and probes that failed.
    health: Vec<u64>,
    health_failed: u64,
    /// CPU seconds of this process (honest and hostile clients) over the run.
    generator_cpu: f64,
    /// Whether the relay still answered `/healthz` after the run.
    alive_after: bool,
    /// Seconds the relay's threads ran and waited for a core over the run, by thread name.
    sched: BTreeMap<String, (f64, f64)>,
}

/// Seconds on a core and seconds runnable but waiting for one, summed per thread name, from
/// `/proc/PID/task/*/schedstat`. Tells a hub that is slow from a hub that is not let run.
fn sched_times(pid: u32) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        let mut fields = stat
            .split_whitespace()
            .map(|v| v.parse::<f64>().unwrap_or(0.0));
        let (Some(run), Some(wait)) = (fields.next(), fields.next()) else {
            continue;
        };
        let e = out.entry(name.trim().to_string()).or_default();
        e.0 += run / 1e9;
        e.1 += wait / 1e9;
    }
    out
}

/// `relay-bench hostile`: the honest load alone, then with the hostile connections; prints
/// both as Markdown.
pub fn run(args: &HostileArgs) -> Result<()> {
    let mut load = args.load.clone();
    load.relay = RelayKind::Ours;
    eprintln!("run 1: {} honest clients alone", load.clients);
    let alone = run_once(&load, 0, &args.kinds)?;
    eprintln!(
        "run 2: {} honest clients and {} hostile connections",
        load.clients, args.hostile
    );
    let attacked = run_once(&load, args.hostile, &args.kinds)?;
    print_report(&[alone, attacked]);
    Ok(())
}

fn run_once(load: &LoadArgs, hostile: usize, kinds: &[Kind]) -> Result<Outcome> {
    let dir = temp_dir(&format!("hostile-{}-{hostile}", load.clients))?;
    let relay_data = dir.join("relay");
    let (coalition, creds) = setup_ours(&relay_data, load.clients)?;
    // One observer device per garbage or forbidden task (the bad-credential ones have none).
    let (observers, targets) = add_observers(&relay_data, coalition, hostile)?;
    let groups = load.clients.div_ceil(load.group);
    let relay = RelayProc::start(RelayKind::Ours, &dir, groups + 1000)?;
    let metrics_before = metrics(relay.addr)?;
    let attack = Arc::new(Attack {
        addr: relay.addr,
        observers,
        targets,
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        under_limit: vec![0xff; MAX_MESSAGE - 4096].into(),
        over_limit: vec![0xff; MAX_MESSAGE + 1].into(),
    });
    let honest_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let hostile_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("hostile")
        .enable_all()
        .build()?;
    let health = Arc::new(Mutex::new((Vec::new(), 0u64)));
    let cpu0 = cpu_seconds(std::process::id());
    let sched0 = sched_times(relay.pid());
    let creds = creds.into_iter().map(|(c, a)| (Some(c), a)).collect();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let row = honest_rt.block_on(drive(load, &relay, coalition.to_string(), creds, |phase| {
        tasks.push(hostile_rt.spawn(probe_health(relay.addr, phase.clone(), health.clone())));
        for i in 0..hostile {
            let kind = kinds[i % kinds.len()];
            tasks.push(hostile_rt.spawn(hostile_task(i, kind, attack.clone(), phase.clone())));
        }
    }));
    attack.stop.store(true, Ordering::Relaxed);
    // A hostile task that panicked would leave its counters short: the run is not reported.
    hostile_rt.block_on(async {
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("a hostile task failed: {e}"),
                Err(_) => bail!("a hostile task did not stop within 30 s"),
            }
        }
        Ok(())
    })?;
    let generator_cpu = cpu_seconds(std::process::id()) - cpu0;
    let row = row?;
    let alive_after = health_once(relay.addr).is_ok();
    let mut sched = sched_times(relay.pid());
    for (name, (run, wait)) in sched0 {
        if let Some(e) = sched.get_mut(&name) {
            e.0 -= run;
            e.1 -= wait;
        }
    }
    let metrics_after = metrics(relay.addr)?;
    honest_rt.shutdown_timeout(Duration::from_secs(5));
    hostile_rt.shutdown_timeout(Duration::from_secs(5));
    relay.stop()?;
    let store_bytes = std::fs::read_dir(&relay_data)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("coalition.db"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let held = {
        let store = Store::open(&relay_data)?;
        store.held_changes(None, None)?.len()
    };
    if std::env::var_os("RELAY_BENCH_KEEP").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        eprintln!("kept {}", dir.display());
    }
    let (mut samples, health_failed) = health
        .lock()
        .map_err(|_| anyhow!("the health probe panicked"))?
        .clone();
    samples.sort_unstable();
    Ok(Outcome {
        row,
        hostile,
        stats: (hostile > 0).then_some(attack),
        metrics_before,
        metrics_after,
        held,
        store_bytes,
        health: samples,
        health_failed,
        generator_cpu,
        alive_after,
        sched,
    })
}

/// Whether the phase says the clients are done.
fn stopping(phase: &watch::Receiver<Phase>, attack: &Attack) -> bool {
    *phase.borrow() == Phase::Stop || attack.stop.load(Ordering::Relaxed)
}

async fn hostile_task(ix: usize, kind: Kind, attack: Arc<Attack>, phase: watch::Receiver<Phase>) {
    let observer = attack.observers.get(ix).cloned();
    let mut round = 0usize;
    while !stopping(&phase, &attack) {
        let outcome = match (kind, &observer) {
            (Kind::BadCredential, _) => bad_credential(&attack, round).await,
            (Kind::Garbage, Some((cred, _))) => {
                let g = Garbage::ALL[(ix + round) % Garbage::ALL.len()];
                garbage(&attack, &phase, cred, ix, g, round as u64).await
            }
            (Kind::Forbidden, Some((cred, actor))) => {
                forbidden(&attack, &phase, cred, actor, ix).await
            }
            (_, None) => Err(anyhow!("no observer device for hostile task {ix}")),
        };
        if let Err(e) = outcome {
            attack
                .stats
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            Stats::count(&attack.stats.closes, format!("failed: {}", first_words(&e)));
            // A relay that refuses connections outright is not hammered in a tight loop.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        round += 1;
    }
}

/// The start of an error's text, without the numbers that differ between occurrences.
fn first_words(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let short: String = text.chars().take(60).collect();
    short
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// Opens a WebSocket to `/sync` with `token`.
async fn connect(addr: SocketAddr, token: &str) -> Result<Ws> {
    let url = format!("ws://{addr}/sync?token={token}");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .map_err(|_| anyhow!("connect timed out"))??;
    Ok(ws)
}

/// `/sync` with a made-up credential.
async fn bad_credential(attack: &Attack, round: usize) -> Result<()> {
    let token = if round.is_multiple_of(2) {
        format!("dev-{:032x}", rand::random::<u128>())
    } else {
        "not a credential at all".replace(' ', "%20")
    };
    let answer = match connect(attack.addr, &token).await {
        Ok(mut ws) => {
            // Reported as a finding below; whether this close succeeds does not matter.
            let _ = ws.close(None).await;
            "upgraded (credential accepted!)".to_string()
        }
        Err(e) => match e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                format!("HTTP {}", response.status().as_u16())
            }
            _ => format!("failed: {}", first_words(&e)),
        },
    };
    Stats::count(&attack.stats.bad_credentials, answer);
    Ok(())
}

/// Opens an observer's connection and sends `join`; returns the sink and a task that reads
/// until the relay closes the connection (setting `closed`).
async fn open_observer(
    attack: &Arc<Attack>,
    cred: &str,
    me: &PeerId,
) -> Result<(Tx, SplitStream<Ws>)> {
    let ws = connect(attack.addr, cred).await?;
    attack.stats.connections.fetch_add(1, Ordering::Relaxed);
    let (mut tx, rx) = ws.split();
    let join = Message::Join(JoinMessage {
        sender_id: me.clone(),
        peer_metadata: PeerMetadata {
            storage_id: None,
            is_ephemeral: true,
        },
        supported_protocol_versions: vec!["1".into()],
        skips_in_step: false,
    });
    tx.send(WsMessage::Binary(join.encode().into())).await?;
    Ok((tx, rx))
}

/// Reads what the relay sends to a hostile connection until it closes, counting `error`s,
/// refused changes, and how the connection ended.
fn spawn_reader(
    attack: Arc<Attack>,
    mut rx: SplitStream<Ws>,
    closed: Arc<AtomicBool>,
    relay_peer: Option<watch::Sender<Option<PeerId>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let ending = loop {
            match rx.next().await {
                Some(Ok(WsMessage::Binary(b))) => match Message::decode(&b) {
                    Ok(Message::Peer(p)) => {
                        if let Some(tx) = &relay_peer {
                            tx.send_replace(Some(p.sender_id));
                        }
                    }
                    Ok(Message::Error(e)) => {
                        attack.stats.errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(r) = e.refused {
                            attack
                                .stats
                                .refused_named
                                .fetch_add(r.changes.len() as u64, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                },
                Some(Ok(WsMessage::Close(Some(f)))) => {
                    break format!("closed {} {}", u16::from(f.code), f.reason.as_str());
                }
                Some(Ok(WsMessage::Close(None))) => break "closed without a code".into(),
                Some(Ok(_)) => {}
                // The relay closed the socket with our frames still unread: the kernel resets
                // the connection and its close frame is lost.
                Some(Err(tokio_tungstenite::tungstenite::Error::Io(e))) => {
                    break format!("broken ({:?}), close frame lost", e.kind());
                }
                Some(Err(e)) => break format!("broken: {}", first_words(&e.into())),
                None => break "ended without a close frame".into(),
            }
        };
        closed.store(true, Ordering::Relaxed);
        Stats::count(&attack.stats.closes, ending);
    })
}

/// Sends one frame unless the connection is over; false once it is.
async fn push(tx: &mut Tx, frame: WsMessage, closed: &AtomicBool) -> bool {
    if closed.load(Ordering::Relaxed) {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tx.send(frame)).await,
        Ok(Ok(()))
    )
}

/// Ends a hostile connection: closes our side, and gives the reader a moment to see how the
/// relay ended it (a write usually fails before the close frame or the reset is read).
async fn finish(mut tx: Tx, mut reader: JoinHandle<()>) {
    // The connection is over either way; a failed close only means the relay was first.
    let _ = tokio::time::timeout(Duration::from_secs(2), tx.close()).await;
    if tokio::time::timeout(Duration::from_secs(2), &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

/// One garbage connection: join, then the same kind of bad frame until the relay closes it.
async fn garbage(
    attack: &Arc<Attack>,
    phase: &watch::Receiver<Phase>,
    cred: &str,
    ix: usize,
    kind: Garbage,
    seed: u64,
) -> Result<()> {
    let me = PeerId::new(format!("hostile{ix}"));
    let (mut tx, rx) = open_observer(attack, cred, &me).await?;
    let closed = Arc::new(AtomicBool::new(false));
    let reader = spawn_reader(attack.clone(), rx, closed.clone(), None);
    // Seeded per task and connection, so that a run can be repeated byte for byte.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((ix as u64) << 32 | seed);
    let mut n = 0u64;
    while !stopping(phase, attack) {
        let frame = match kind {
            Garbage::Random => {
                let mut bytes = vec![0u8; 1 + (rng.next_u32() % 512) as usize];
                rng.fill_bytes(&mut bytes);
                bytes.into()
            }
            Garbage::Truncated => {
                let target = &attack.targets[(n as usize) % attack.targets.len()];
                let whole = Message::Sync(SyncMessage {
                    sender_id: me.clone(),
                    target_id: PeerId::new("relay"),
                    document_id: target.id,
                    data: vec![0x42; 64],
                })
                .encode();
                let cut = 1 + (rng.next_u32() as usize % (whole.len() - 1));
                whole[..cut].to_vec().into()
            }
            Garbage::UnknownType => unknown_type(&me, n)?.into(),
            Garbage::UnderLimit => attack.under_limit.clone(),
            Garbage::OverLimit => attack.over_limit.clone(),
        };
        if !push(&mut tx, WsMessage::Binary(frame), &closed).await {
            break;
        }
        attack.stats.garbage_sent(kind);
        n += 1;
    }
    finish(tx, reader).await;
    Ok(())
}

/// A well-formed CBOR message of a type the protocol does not have.
fn unknown_type(me: &PeerId, n: u64) -> Result<Vec<u8>> {
    use ciborium::value::Value as Cbor;
    let message = Cbor::Map(vec![
        (
            Cbor::Text("type".into()),
            Cbor::Text(format!("x-noise-{}", n % 7)),
        ),
        (Cbor::Text("senderId".into()), Cbor::Text(me.to_string())),
        (Cbor::Text("data".into()), Cbor::Bytes(vec![0u8; 64])),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&message, &mut out)?;
    Ok(out)
}

/// One forbidden writer's connection: join, wait for `peer`, then a new forbidden change per
/// `sync` message until the relay closes the connection.
async fn forbidden(
    attack: &Arc<Attack>,
    phase: &watch::Receiver<Phase>,
    cred: &str,
    actor: &ActorId,
    ix: usize,
) -> Result<()> {
    let me = PeerId::new(format!("hostile{ix}"));
    let (mut tx, rx) = open_observer(attack, cred, &me).await?;
    let closed = Arc::new(AtomicBool::new(false));
    let (peer_tx, mut peer_rx) = watch::channel(None);
    let reader = spawn_reader(attack.clone(), rx, closed.clone(), Some(peer_tx));
    let relay = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(p) = peer_rx.borrow_and_update().clone() {
                return Some(p);
            }
            if peer_rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten();
    let Some(relay) = relay else {
        reader.abort();
        bail!("no `peer` from the relay");
    };
    let mut n = 0usize;
    while !stopping(phase, attack) {
        let target = &attack.targets[n % attack.targets.len()];
        let data = forbidden_change(target, actor, ix, n)?;
        let message = Message::Sync(SyncMessage {
            sender_id: me.clone(),
            target_id: relay.clone(),
            document_id: target.id,
            data,
        });
        if !push(&mut tx, WsMessage::Binary(message.encode().into()), &closed).await {
            break;
        }
        attack.stats.forbidden.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    finish(tx, reader).await;
    Ok(())
}

/// A sync message carrying one new change an observer may not make, made on the document as
/// the relay holds it (so the relay cannot refuse it as depending on an earlier refusal and
/// must judge it whole): a member added to the manifest, a key in the plan, a key at the root
/// of the comments document.
fn forbidden_change(target: &Target, actor: &ActorId, ix: usize, n: usize) -> Result<Vec<u8>> {
    let mut doc = target.doc.clone().with_actor(actor.clone());
    let base = doc.get_heads();
    let key = format!("hostile-{ix}-{n}");
    let collection = match target.kind {
        DocKind::Manifest => Some("members"),
        DocKind::Plan => Some("narrative"),
        _ => None,
    };
    let map = match collection.map(|c| doc.get(ROOT, c)).transpose()?.flatten() {
        Some((Value::Object(ObjType::Map), id)) => id,
        _ => ROOT,
    };
    doc.put(&map, key, "written by an observer")?;
    let hash = doc
        .commit_with(CommitOptions::default().with_time(chrono::Utc::now().timestamp()))
        .context("the forbidden change is empty")?;
    let change = doc
        .get_change_by_hash(&hash)
        .context("the change just made")?
        .raw_bytes()
        .to_vec();
    Ok(automerge::sync::Message {
        heads: vec![hash],
        need: Vec::new(),
        have: vec![Have {
            last_sync: base,
            bloom: BloomFilter::default(),
        }],
        changes: ChunkList::from(vec![change]),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode())
}

/// `GET /healthz` every 250 ms while the clients run; records round trips and failures.
async fn probe_health(
    addr: SocketAddr,
    phase: watch::Receiver<Phase>,
    out: Arc<Mutex<(Vec<u64>, u64)>>,
) {
    while *phase.borrow() != Phase::Stop {
        let started = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(10), http_get(addr, "/healthz"))
            .await
            .is_ok_and(|r| r.is_ok_and(|body| body.starts_with("HTTP/1.1 200")));
        if let Ok(mut o) = out.lock() {
            if ok {
                o.0.push(started.elapsed().as_micros() as u64);
            } else {
                o.1 += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text)
}

/// A blocking `GET`, for before and after the run.
fn http_get_blocking(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", text.lines().next().unwrap_or("no answer"));
    }
    Ok(text)
}

fn health_once(addr: SocketAddr) -> Result<()> {
    http_get_blocking(addr, "/healthz").map(|_| ())
}

/// The relay's counters, by name.
fn metrics(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let text = http_get_blocking(addr, "/metrics")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no body in the /metrics answer")?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

fn print_report(runs: &[Outcome]) {
    println!(
        "| hostile connections | honest clients | offered edits/s | fan-out edits/s | fan-out p50 | fan-out p99 | delivered | ack p50 / p99 | failed clients | relay RSS idle → peak | relay CPU | generator CPU | /healthz p50 / max (failed) | relay up after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in runs {
        let r = &o.row;
        println!(
            "| {} | {} | {:.0} | {:.0} | {} | {} | {:.2} % | {} / {} | {} | {:.0} → {:.0} MiB | {:.1} s | {:.1} s | {} / {} ({}) | {} |",
            o.hostile,
            r.clients,
            r.offered,
            r.fanout_per_s,
            fmt_us(r.p50),
            fmt_us(r.p99),
            r.delivered_pct,
            fmt_us(r.ack_p50),
            fmt_us(r.ack_p99),
            r.failed_clients,
            r.rss_idle_kib as f64 / 1024.0,
            r.rss_peak_kib as f64 / 1024.0,
            r.relay_cpu_s,
            o.generator_cpu,
            fmt_us(quantile(&o.health, 0.5)),
            fmt_us(o.health.last().copied()),
            o.health_failed,
            if o.alive_after { "yes" } else { "**no**" },
        );
    }
    println!();
    println!(
        "| relay counter (`/metrics`, over the run) | {} |",
        runs.iter()
            .map(|o| format!("{} hostile", o.hostile))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(runs.len()));
    for name in [
        "coalition_connections_total",
        "coalition_messages_in_total",
        "coalition_bytes_in_total",
        "coalition_changes_accepted_total",
        "coalition_changes_refused_total",
        "coalition_limits_hit_total",
        "coalition_documents_refused_total",
        "coalition_panics_total",
        "coalition_storage_write_seconds_count",
        "coalition_storage_write_seconds_sum",
    ] {
        let cells: Vec<String> = runs
            .iter()
            .map(|o| {
                let d = o.metrics_after.get(name).copied().unwrap_or(0.0)
                    - o.metrics_before.get(name).copied().unwrap_or(0.0);
                if d.fract() == 0.0 {
                    format!("{d:.0}")
                } else {
                    format!("{d:.2}")
                }
            })
            .collect();
        println!("| `{name}` | {} |", cells.join(" | "));
    }
    println!(
        "| quarantine rows (`held_changes`) after the run | {} |",
        runs.iter()
            .map(|o| o.held.to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!(
        "| relay store (`coalition.db` + WAL) after the run | {} |",
        runs.iter()
            .map(|o| format!("{:.1} MiB", o.store_bytes as f64 / (1024.0 * 1024.0)))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!();
    for o in runs {
        let threads: Vec<String> = o
            .sched
            .iter()
            .filter(|(_, (run, wait))| run + wait >= 0.05)
            .map(|(name, (run, wait))| {
                format!("{name} {run:.1} s on a core, {wait:.1} s waiting for one")
            })
            .collect();
        println!(
            "Relay threads over the run with {} hostile (`schedstat`): {}.",
            o.hostile,
            threads.join("; ")
        );
    }
    for o in runs {
        let Some(a) = &o.stats else { continue };
        let s = &a.stats;
        println!();
        println!("Hostile side ({} connections):", o.hostile);
        println!();
        if let Ok(g) = s.garbage.lock() {
            for (kind, n) in g.iter() {
                println!("- garbage frames sent, {}: {n}", kind.name());
            }
        }
        println!(
            "- forbidden changes sent: {}; named refused in `error` messages: {} ({} `error` messages)",
            s.forbidden.load(Ordering::Relaxed),
            s.refused_named.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
        );
        println!(
            "- hostile WebSocket connections opened: {}; attempts that failed: {}",
            s.connections.load(Ordering::Relaxed),
            s.connect_failures.load(Ordering::Relaxed),
        );
        if let Ok(c) = s.closes.lock() {
            for (how, n) in c.iter() {
                println!("- connections ended, {how}: {n}");
            }
        }
        if let Ok(b) = s.bad_credentials.lock() {
            for (answer, n) in b.iter() {
                println!("- `/sync` upgrades with a made-up credential, {answer}: {n}");
            }
        }
    }
}
