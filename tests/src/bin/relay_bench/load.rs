//! `relay-bench load`: many WebSocket clients on loopback editing shared documents through a
//! relay (ours or the JavaScript reference relay), all in this process.
//!
//! Each client is one task on a multi-threaded tokio runtime speaking the automerge-repo
//! protocol directly: `join`/`peer`, then one `automerge::sync::State` with the relay for its
//! group's document. Clients are grouped (`--group`, 10 by default) so that each document is
//! shared by a group. The first client of a group creates the document (root `doc_kind`,
//! `doc_coalition`, and a `comments` map, so that our relay accepts it as a coalition document)
//! and pushes it; the others `request` it. Then every client adds one comment to `comments` at a
//! steady rate (a record a member may add, so our relay's change screen accepts it); the
//! change's commit message carries `client:seq:nanos` (nanoseconds since an `Instant` all
//! clients share), so that the receiving client can compute the fan-out latency.
//!
//! Measured: edits made; edits the relay acknowledged to their author (its heads in a sync
//! message include the change; checked once more against its last heads at the end); every
//! arrival of an edit at another client of its document and its latency; and the relay's
//! resident memory (`VmRSS`/`VmHWM` of its process) and CPU time.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use automerge::sync;
use automerge::transaction::CommitOptions;
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ReadDoc, ROOT};
use coalition_core::model::{CoalitionInfo, Comment, CommentKind, Member, OrgKind, TreatyStatus};
use coalition_core::store::Store;
use coalition_core::sync::message::{JoinMessage, SyncMessage};
use coalition_core::sync::{DocumentId, Message, PeerId, PeerMetadata, StorageId};
use coalition_core::{Coalition, Identity};
use coalition_server::auth::{AuthDb, InviteSpec};
use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::common::{fmt_us, quantile, temp_dir, RelayKind, RelayProc};

/// The organisation of the coalition's founder and of every load client (coordinator and
/// mine action centre).
pub(super) const LOAD_ORG: &str = "MCA";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Tx = SplitSink<Ws, WsMessage>;

/// What `relay-bench load` is asked.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    pub clients: usize,
    pub duration: Duration,
    pub relay: RelayKind,
    /// Edits per second per client.
    pub rate: f64,
    /// Clients per document.
    pub group: usize,
    /// Longest wait, after the last edit, for edits still in flight.
    pub drain: Duration,
    /// Run stock JavaScript clients (`tests/js/bench/stock-clients.mjs`) instead of ours.
    pub stock_js: bool,
}

/// Phases every client follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Phase {
    Setup,
    Run,
    Drain,
    Stop,
}

/// Counters all clients share.
pub(super) struct Shared {
    pub(super) epoch: std::time::Instant,
    pub(super) created: AtomicUsize,
    pub(super) ready: AtomicUsize,
    pub(super) sent: AtomicU64,
    pub(super) delivered: AtomicU64,
    /// Sum over edits of (group size - 1): arrivals expected.
    pub(super) expected: AtomicU64,
    pub(super) failed: AtomicUsize,
}

impl Shared {
    fn nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One client's identity and document.
#[derive(Clone)]
pub(super) struct ClientSpec {
    pub(super) ix: usize,
    pub(super) url: String,
    pub(super) creator: bool,
    pub(super) group_size: usize,
    pub(super) doc_id: DocumentId,
    pub(super) coalition: String,
    pub(super) actor: ActorId,
}

/// What a client measured.
#[derive(Default)]
pub(super) struct ClientResult {
    sent: u64,
    acked: u64,
    stored: u64,
    delivered: u64,
    /// Fan-out latencies, µs.
    latencies: Vec<u64>,
    /// Acknowledgement latencies, µs.
    ack_latencies: Vec<u64>,
    /// Nanos (shared epoch) of the last arrival of someone else's edit.
    last_delivery: u64,
    last_ack: u64,
    error: Option<String>,
}

/// At most this many frames already received are applied before a client answers.
const MAX_FRAMES_PER_ANSWER: usize = 64;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20))
}

async fn send(tx: &mut Tx, message: &Message) -> Result<()> {
    tokio::time::timeout(
        Duration::from_secs(30),
        tx.send(WsMessage::Binary(message.encode().into())),
    )
    .await
    .map_err(|_| anyhow!("send timed out"))??;
    Ok(())
}

/// Sends the next sync message for the document, if automerge has one.
async fn sync_out(
    tx: &mut Tx,
    doc: &mut AutoCommit,
    state: &mut sync::State,
    me: &PeerId,
    relay: &PeerId,
    doc_id: DocumentId,
) -> Result<()> {
    let Some(message) = coalition_core::sync::generate_sync_message(doc, state) else {
        return Ok(());
    };
    let request = doc.get_heads().is_empty() && state.shared_heads.is_empty();
    let payload = SyncMessage {
        sender_id: me.clone(),
        target_id: relay.clone(),
        document_id: doc_id,
        data: message.encode(),
    };
    let m = if request {
        Message::Request(payload)
    } else {
        Message::Sync(payload)
    };
    send(tx, &m).await
}

/// The document a group's first client creates: a comments document of the coalition, which
/// any member may create and write.
fn new_doc(actor: &ActorId, coalition: &str) -> Result<AutoCommit> {
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    doc.put(ROOT, "doc_kind", "comments")?;
    doc.put(ROOT, "doc_coalition", coalition)?;
    doc.put_object(ROOT, "comments", ObjType::Map)?;
    doc.commit_with(
        CommitOptions::default()
            .with_message("load-bench: create")
            .with_time(chrono::Utc::now().timestamp()),
    );
    Ok(doc)
}

pub(super) async fn client(
    spec: ClientSpec,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    rate: f64,
    connect_gate: Arc<Semaphore>,
) -> ClientResult {
    let mut result = ClientResult::default();
    if let Err(e) = client_inner(&spec, &shared, &mut phase, rate, connect_gate, &mut result).await
    {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        result.error = Some(format!("client {}: {e:#}", spec.ix));
    }
    result
}

async fn client_inner(
    spec: &ClientSpec,
    shared: &Shared,
    phase: &mut watch::Receiver<Phase>,
    rate: f64,
    connect_gate: Arc<Semaphore>,
    result: &mut ClientResult,
) -> Result<()> {
    let ws = {
        let _permit = connect_gate.acquire().await?;
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async_with_config(
                spec.url.as_str(),
                Some(ws_config()),
                true,
            ),
        )
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
        ws
    };
    let (mut tx, mut rx) = ws.split();
    let me = PeerId::new(format!("c{}", spec.ix));
    send(
        &mut tx,
        &Message::Join(JoinMessage {
            sender_id: me.clone(),
            peer_metadata: PeerMetadata {
                storage_id: Some(StorageId::new(format!("s{}", spec.ix))),
                is_ephemeral: false,
            },
            supported_protocol_versions: vec!["1".into()],
            skips_in_step: false,
        }),
    )
    .await?;
    let relay = loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), rx.next())
            .await
            .map_err(|_| anyhow!("no `peer` within 60 s"))?;
        match frame {
            Some(Ok(WsMessage::Binary(b))) => match Message::decode(&b) {
                Ok(Message::Peer(p)) => break p.sender_id,
                Ok(Message::Error(e)) => bail!("relay error: {}", e.message),
                _ => {}
            },
            Some(Ok(WsMessage::Close(f))) => bail!("closed during handshake: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during handshake"),
        }
    };
    let mut doc = if spec.creator {
        new_doc(&spec.actor, &spec.coalition)?
    } else {
        AutoCommit::new().with_actor(spec.actor.clone())
    };
    let mut state = sync::State::new();
    sync_out(&mut tx, &mut doc, &mut state, &me, &relay, spec.doc_id).await?;
    let mut counted_ready = false;
    let mut retries = 0;
    let mut retry_at: Option<Instant> = None;
    let mut comments_obj = None;
    let mut seq: u64 = 0;
    // (hash, seq, nanos at commit)
    let mut pending: VecDeque<(ChangeHash, u64)> = VecDeque::new();
    let mut pending_at: VecDeque<u64> = VecDeque::new();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut ticker: Option<tokio::time::Interval> = None;
    let prefix = format!("{}:", spec.ix);
    loop {
        let current = *phase.borrow();
        if current == Phase::Stop {
            break;
        }
        if current == Phase::Run && ticker.is_none() {
            let offset = period.mul_f64(rand::random::<f64>());
            let mut t = tokio::time::interval_at(Instant::now() + offset, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            ticker = Some(t);
        }
        let editing = current == Phase::Run && ticker.is_some();
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tick(&mut ticker), if editing => {
                let obj = match &comments_obj {
                    Some(o) => o,
                    None => {
                        let Some((_, o)) = doc.get(ROOT, "comments")? else {
                            bail!("the document has no `comments` map");
                        };
                        comments_obj = Some(o);
                        comments_obj.as_ref().context("just set")?
                    }
                };
                seq += 1;
                let nanos = shared.nanos();
                let id = format!("load-{}-{seq}", spec.ix);
                let comment = Comment {
                    id: id.clone(),
                    kind: CommentKind::Comment,
                    about: None,
                    text: format!("edit {seq} of client {}", spec.ix),
                    org: LOAD_ORG.into(),
                    user: format!("load{}", spec.ix),
                    at: (nanos / 1_000_000_000) as i64,
                };
                doc.put(obj, id, serde_json::to_string(&comment)?)?;
                let hash = doc.commit_with(
                    CommitOptions::default()
                        .with_message(format!("{}{seq}:{nanos}", prefix))
                        .with_time((nanos / 1_000_000_000) as i64),
                );
                if let Some(hash) = hash {
                    pending.push_back((hash, seq));
                    pending_at.push_back(nanos);
                }
                result.sent += 1;
                shared.sent.fetch_add(1, Ordering::Relaxed);
                shared
                    .expected
                    .fetch_add(spec.group_size as u64 - 1, Ordering::Relaxed);
                sync_out(&mut tx, &mut doc, &mut state, &me, &relay, spec.doc_id).await?;
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                state = sync::State::new();
                sync_out(&mut tx, &mut doc, &mut state, &me, &relay, spec.doc_id).await?;
            }
            frame = rx.next() => {
                // Everything that already arrived is applied before answering once, as a
                // client under load would rather than answering each message in turn.
                let mut frames = vec![frame];
                while frames.len() < MAX_FRAMES_PER_ANSWER {
                    match rx.next().now_or_never() {
                        Some(frame) => frames.push(frame),
                        None => break,
                    }
                }
                let mut answer = false;
                for frame in frames {
                let bytes = match frame {
                    Some(Ok(WsMessage::Binary(b))) => b,
                    Some(Ok(WsMessage::Close(f))) => bail!("the relay closed the connection: {f:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the relay closed the connection"),
                };
                let message = match Message::decode(&bytes) {
                    Ok(m) => m,
                    // Unknown types (heads gossip the JS relay may send) are ignored.
                    Err(_) => continue,
                };
                match message {
                    Message::Sync(m) | Message::Request(m) if m.document_id == spec.doc_id => {
                        let decoded = sync::Message::decode(&m.data)?;
                        let their_heads = decoded.heads.clone();
                        // Other clients' edits this message brings: "client:seq:nanos" in the
                        // commit message of each change the document did not hold. Read from
                        // the message when each chunk is a change; a relay may also send the
                        // whole document in one chunk, and then the document says what is new.
                        let parsed: Option<Vec<automerge::Change>> = decoded
                            .changes
                            .iter()
                            .map(|bytes| automerge::Change::try_from(bytes).ok())
                            .collect();
                        let mut arrivals = Vec::new();
                        let mut edit_of = |message: Option<&str>| {
                            let mut parts = message?.split(':');
                            let (from, _seq, at) = (parts.next()?, parts.next()?, parts.next()?);
                            let (from, at) = (from.parse::<usize>().ok()?, at.parse::<u64>().ok()?);
                            if from != spec.ix {
                                arrivals.push(at);
                            }
                            Some(())
                        };
                        let before = doc.get_heads();
                        if let Some(changes) = &parsed {
                            for change in changes {
                                let hash = change.hash();
                                if doc.get_missing_deps(&[hash]).contains(&hash) {
                                    edit_of(change.message());
                                }
                            }
                        }
                        coalition_core::sync::receive_sync_message(&mut doc, &mut state, decoded)?;
                        if parsed.is_none() && doc.get_heads() != before {
                            for c in doc.get_changes_meta(&before) {
                                edit_of(c.message.as_deref());
                            }
                        }
                        let now = shared.nanos();
                        for at in arrivals {
                            result.delivered += 1;
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                            result.latencies.push(now.saturating_sub(at) / 1000);
                            result.last_delivery = now;
                        }
                        // The relay has our edits whose hashes are among its heads (and every
                        // earlier edit of ours, which they depend on).
                        if let Some(pos) = pending.iter().rposition(|(h, _)| their_heads.contains(h)) {
                            for _ in 0..=pos {
                                pending.pop_front();
                                if let Some(at) = pending_at.pop_front() {
                                    result.ack_latencies.push(now.saturating_sub(at) / 1000);
                                }
                                result.acked += 1;
                            }
                            result.last_ack = now;
                        }
                        if !counted_ready {
                            let have = !doc.get_heads().is_empty();
                            let relay_has = spec.creator && their_heads == doc.get_heads();
                            if (spec.creator && relay_has) || (!spec.creator && have) {
                                counted_ready = true;
                                if spec.creator {
                                    shared.created.fetch_add(1, Ordering::Relaxed);
                                }
                                shared.ready.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        answer = true;
                    }
                    Message::DocUnavailable(_) if !spec.creator && doc.get_heads().is_empty() => {
                        retries += 1;
                        if retries > 40 {
                            bail!("the relay says document {} is unavailable", spec.doc_id);
                        }
                        retry_at = Some(Instant::now() + Duration::from_millis(250));
                    }
                    Message::Error(e) => bail!("relay error: {}", e.message),
                    _ => {}
                }
                }
                if answer {
                    sync_out(&mut tx, &mut doc, &mut state, &me, &relay, spec.doc_id).await?;
                }
            }
        }
    }
    // What the relay still lacks of our edits, by its last heads.
    result.stored = result.acked;
    if let Some(theirs) = state.their_heads.clone() {
        let missing = doc
            .get_changes_meta(&theirs)
            .iter()
            .filter(|c| {
                c.actor.as_ref() == &spec.actor
                    && c.message.as_deref().is_some_and(|m| m.starts_with(&prefix))
            })
            .count() as u64;
        result.stored = result.sent.saturating_sub(missing).max(result.acked);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(WsMessage::Close(None))).await;
    Ok(())
}

/// The next tick of the edit timer, or never.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One line of the results table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub relay: String,
    pub clients: usize,
    pub documents: usize,
    pub offered: f64,
    pub stored_per_s: f64,
    pub stored_pct: f64,
    pub fanout_per_s: f64,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub ack_p50: Option<u64>,
    pub ack_p99: Option<u64>,
    pub delivered_pct: f64,
    pub rss_idle_kib: u64,
    pub rss_peak_kib: u64,
    pub relay_cpu_s: f64,
    pub failed_clients: usize,
    pub setup_s: f64,
}

impl Row {
    pub fn header() -> &'static str {
        "| relay | clients | docs | offered edits/s | edits/s stored | fan-out edits/s | fan-out p50 | fan-out p99 | delivered | ack p50 / p99 | relay RSS idle → peak | relay CPU | failed clients |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    }

    pub fn markdown(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {} | {:.0} | {} | {} | {:.2} % | {} / {} | {:.0} → {:.0} MiB | {:.1} s | {} |",
            self.relay,
            self.clients,
            self.documents,
            self.offered,
            if self.stored_pct < 0.0 {
                "–".to_string()
            } else {
                format!("{:.0} ({:.1} %)", self.stored_per_s, self.stored_pct)
            },
            self.fanout_per_s,
            fmt_us(self.p50),
            fmt_us(self.p99),
            self.delivered_pct,
            fmt_us(self.ack_p50),
            fmt_us(self.ack_p99),
            self.rss_idle_kib as f64 / 1024.0,
            self.rss_peak_kib as f64 / 1024.0,
            self.relay_cpu_s,
            self.failed_clients,
        )
    }
}

/// User + system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 (index 0 here); utime 14, stime 15.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small coalition in our relay's store, and `devices` enrolled devices (credential, actor),
/// made through `auth.db` as a library: the same rows `admin invite` + `POST /api/v1/enroll`
/// write, without a process and an HTTP request per device.
pub fn setup_ours(
    relay_data: &Path,
    devices: usize,
) -> Result<(DocumentId, Vec<(String, ActorId)>)> {
    std::fs::create_dir_all(relay_data)?;
    let now = chrono::Utc::now().timestamp();
    let coord = Identity {
        user: "cora".into(),
        org: LOAD_ORG.into(),
        device: "bench".into(),
        actor: "01".repeat(16),
    };
    let mut c = Coalition::create(
        &coord,
        CoalitionInfo {
            name: "Load".into(),
            affected_state: "XK".into(),
            treaty_status: TreatyStatus::VoluntaryReporting,
            entry_into_force: None,
        },
        Member {
            org: LOAD_ORG.into(),
            name: "Ministry".into(),
            kind: OrgKind::AffectedState,
            roles: Default::default(),
            country: None,
        },
        now,
    )?;
    let id = *c.id();
    let mut store = Store::open(relay_data)?;
    store.save_all(&mut c)?;
    store.close()?;
    let mut auth = AuthDb::open(relay_data)?;
    let mut out = Vec::with_capacity(devices);
    for i in 0..devices {
        let invite = auth.create_invite(
            &InviteSpec {
                coalition: id,
                user: format!("load{i}"),
                org: LOAD_ORG.into(),
                role: "coordinator".into(),
            },
            now + 3600,
        )?;
        let actor: [u8; 16] = rand::random();
        let enrolled = auth.enroll_with(&invite.code, &format!("load-{i}"), &hex(&actor), true)?;
        out.push((enrolled.credential, ActorId::from(&actor[..])));
    }
    Ok((id, out))
}

/// `relay-bench load`.
pub fn run(args: &LoadArgs) -> Result<Row> {
    if args.stock_js {
        return super::stock::run(args);
    }
    let dir = temp_dir(&format!("load-{}-{}", args.relay.name(), args.clients))?;
    let relay_data = dir.join("relay");
    std::fs::create_dir_all(&relay_data)?;
    let groups = args.clients.div_ceil(args.group);
    let started = std::time::Instant::now();
    let (coalition, creds) = match args.relay {
        RelayKind::Ours => {
            eprintln!("enrolling {} devices…", args.clients);
            let (id, creds) = setup_ours(&relay_data, args.clients)?;
            (
                id.to_string(),
                creds.into_iter().map(|(c, a)| (Some(c), a)).collect(),
            )
        }
        RelayKind::Js => (
            DocumentId::new_random().to_string(),
            (0..args.clients)
                .map(|_| (None, ActorId::random()))
                .collect::<Vec<_>>(),
        ),
    };
    eprintln!("devices ready in {:.1} s", started.elapsed().as_secs_f64());
    let relay = RelayProc::start(args.relay, &dir, groups + 1000)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let row = runtime.block_on(drive(args, &relay, coalition, creds, |_| {}));
    runtime.shutdown_timeout(Duration::from_secs(5));
    relay.stop()?;
    if std::env::var_os("RELAY_BENCH_KEEP").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        eprintln!("kept {}", dir.display());
    }
    row
}

pub(super) async fn wait_for(
    what: &str,
    limit: Duration,
    shared: &Shared,
    check: impl Fn() -> bool,
) -> Result<()> {
    let until = Instant::now() + limit;
    while !check() {
        if Instant::now() > until {
            bail!(
                "timed out waiting for {what} ({} clients failed)",
                shared.failed.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the clients against `relay` and measures them. `beside` is called once, just before
/// editing starts, with the phase the clients follow: other load (see `hostile`) starts there
/// and stops with them.
pub(super) async fn drive(
    args: &LoadArgs,
    relay: &RelayProc,
    coalition: String,
    creds: Vec<(Option<String>, ActorId)>,
    beside: impl FnOnce(watch::Receiver<Phase>),
) -> Result<Row> {
    let pid = relay.pid();
    let groups = args.clients.div_ceil(args.group);
    let docs: Vec<DocumentId> = (0..groups).map(|_| DocumentId::new_random()).collect();
    let shared = Arc::new(Shared {
        epoch: std::time::Instant::now(),
        created: AtomicUsize::new(0),
        ready: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        failed: AtomicUsize::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let gate = Arc::new(Semaphore::new(32));
    let specs: Vec<ClientSpec> = creds
        .into_iter()
        .enumerate()
        .map(|(ix, (cred, actor))| {
            let g = ix / args.group;
            let group_size = args.group.min(args.clients - g * args.group);
            ClientSpec {
                ix,
                url: match cred {
                    Some(c) => format!("ws://{}/sync?token={c}", relay.addr),
                    None => format!("ws://{}/sync", relay.addr),
                },
                creator: ix % args.group == 0,
                group_size,
                doc_id: docs[g],
                coalition: coalition.clone(),
                actor,
            }
        })
        .collect();
    let (rss_idle, _) = relay.memory()?;
    let cpu0 = cpu_seconds(pid);
    let setup = Instant::now();
    let mut handles = Vec::new();
    for spec in specs.iter().filter(|s| s.creator) {
        handles.push(tokio::spawn(client(
            spec.clone(),
            shared.clone(),
            phase_rx.clone(),
            args.rate,
            gate.clone(),
        )));
    }
    wait_for(
        "every document to be created",
        Duration::from_secs(120),
        &shared,
        || {
            shared.created.load(Ordering::Relaxed) >= groups
                || shared.failed.load(Ordering::Relaxed) > 0
        },
    )
    .await?;
    for spec in specs.iter().filter(|s| !s.creator) {
        handles.push(tokio::spawn(client(
            spec.clone(),
            shared.clone(),
            phase_rx.clone(),
            args.rate,
            gate.clone(),
        )));
    }
    wait_for(
        "every client to have its document",
        Duration::from_secs(300),
        &shared,
        || {
            shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
                >= args.clients
        },
    )
    .await?;
    let setup_s = setup.elapsed().as_secs_f64();
    eprintln!(
        "{} clients on {groups} documents ready in {setup_s:.1} s ({} failed); editing for {:?} at {} edits/s each",
        args.clients,
        shared.failed.load(Ordering::Relaxed),
        args.duration,
        args.rate
    );
    let mut peak = rss_idle;
    let run_start = shared.nanos();
    beside(phase_rx.clone());
    phase_tx.send(Phase::Run)?;
    let end = Instant::now() + args.duration;
    let mut next_log = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(relay.memory().map(|m| m.0).unwrap_or(0));
        if Instant::now() >= next_log {
            next_log += Duration::from_secs(10);
            eprintln!(
                "  {:>4.0} s: {} edits, {} of {} arrivals, relay RSS {} MiB",
                (shared.nanos() - run_start) as f64 / 1e9,
                shared.sent.load(Ordering::Relaxed),
                shared.delivered.load(Ordering::Relaxed),
                shared.expected.load(Ordering::Relaxed),
                relay.memory().map(|m| m.0 / 1024).unwrap_or(0)
            );
        }
    }
    phase_tx.send(Phase::Drain)?;
    let run_s = (shared.nanos() - run_start) as f64 / 1e9;
    let drain_end = Instant::now() + args.drain;
    while Instant::now() < drain_end
        && shared.delivered.load(Ordering::Relaxed) < shared.expected.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(relay.memory().map(|m| m.0).unwrap_or(0));
    }
    // A moment more for the last acknowledgements.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_now, hwm) = relay.memory()?;
    peak = peak.max(rss_now).max(hwm);
    let cpu = cpu_seconds(pid) - cpu0;
    phase_tx.send(Phase::Stop)?;
    let mut results = Vec::new();
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(30), h).await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => eprintln!("a client task failed: {e}"),
            Err(_) => eprintln!("a client task did not stop within 30 s"),
        }
    }
    let mut errors: Vec<&str> = results.iter().filter_map(|r| r.error.as_deref()).collect();
    errors.sort();
    for e in errors.iter().take(5) {
        eprintln!("  {e}");
    }
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let stored: u64 = results.iter().map(|r| r.stored).sum();
    let delivered: u64 = results.iter().map(|r| r.delivered).sum();
    let expected: u64 = results
        .iter()
        .zip(&specs)
        .map(|(r, s)| r.sent * (s.group_size as u64 - 1))
        .sum();
    let mut lat: Vec<u64> = results
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    lat.sort_unstable();
    let mut ack: Vec<u64> = results
        .iter()
        .flat_map(|r| r.ack_latencies.iter().copied())
        .collect();
    ack.sort_unstable();
    let last_delivery = results.iter().map(|r| r.last_delivery).max().unwrap_or(0);
    let last_ack = results.iter().map(|r| r.last_ack).max().unwrap_or(0);
    let span = |last: u64| ((last.saturating_sub(run_start)) as f64 / 1e9).max(run_s);
    Ok(Row {
        relay: args.relay.name().into(),
        clients: args.clients,
        documents: groups,
        offered: sent as f64 / run_s,
        stored_per_s: stored as f64 / span(last_ack),
        stored_pct: if sent == 0 {
            0.0
        } else {
            stored as f64 * 100.0 / sent as f64
        },
        fanout_per_s: delivered as f64 / span(last_delivery),
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        ack_p50: quantile(&ack, 0.5),
        ack_p99: quantile(&ack, 0.99),
        delivered_pct: if expected == 0 {
            0.0
        } else {
            delivered as f64 * 100.0 / expected as f64
        },
        rss_idle_kib: rss_idle,
        rss_peak_kib: peak,
        relay_cpu_s: cpu,
        failed_clients: shared.failed.load(Ordering::Relaxed),
        setup_s,
    })
}
