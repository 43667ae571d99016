//! `relay-bench wire`: bytes on the wire between a device and our relay, frame by frame.
//!
//! The relay (the release `coalition-server`) starts with a coalition of 5,000 land release
//! entries in its store and an invite for an operator; a device enrolls over HTTP, syncs
//! everything once, then:
//! (a) reconnects with nothing new, and (b) records one land release entry and reconnects.
//! Each exchange drives a [`Session`] (the device's engine + store) over our own WebSocket
//! loop, so that every frame is logged with its direction, time, type, document and size.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coalition_core::model::{LandReleaseEntry, Method};
use coalition_core::store::Store;
use coalition_core::sync::{DocumentId, EngineConfig, Message, PeerId, PeerMetadata};
use coalition_core::transport::ws::{self as device_ws, SyncOptions};
use coalition_core::transport::{enroll, Session};
use coalition_core::Edit;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::common::{admin, temp_dir, RelayKind, RelayProc};
use coalition_tests::fixture::large;

/// One frame of an exchange.
#[derive(Clone, Debug)]
struct Frame {
    at: Duration,
    sent: bool,
    len: usize,
    message: Option<Message>,
}

impl Frame {
    fn kind(&self) -> &'static str {
        self.message
            .as_ref()
            .map_or("undecodable", Message::type_name)
    }

    /// Bytes of the Automerge sync message inside a `sync`/`request`.
    fn data_len(&self) -> usize {
        match &self.message {
            Some(Message::Sync(m) | Message::Request(m)) => m.data.len(),
            _ => 0,
        }
    }
}

/// What one connection exchanged.
struct Exchange {
    frames: Vec<Frame>,
    documents: usize,
    unsent: usize,
}

impl Exchange {
    fn bytes(&self, sent: bool) -> usize {
        self.frames
            .iter()
            .filter(|f| f.sent == sent)
            .map(|f| f.len)
            .sum()
    }

    fn count(&self, sent: bool) -> usize {
        self.frames.iter().filter(|f| f.sent == sent).count()
    }

    /// Round trips: pairs of a burst of frames sent followed by a burst received.
    fn round_trips(&self) -> usize {
        let mut trips = 0;
        let mut last_sent: Option<bool> = None;
        for f in &self.frames {
            if last_sent == Some(true) && !f.sent {
                trips += 1;
            }
            last_sent = Some(f.sent);
        }
        trips
    }

    /// Bytes the frames would take with other ids in `senderId`/`targetId` (re-encoded).
    fn bytes_with_ids(&self, sent: bool, device: &str, relay: &str) -> usize {
        self.frames
            .iter()
            .filter(|f| f.sent == sent)
            .map(|f| match &f.message {
                Some(m) => with_ids(m, device, relay, f.sent).encode().len(),
                None => f.len,
            })
            .sum()
    }
}

/// The message with the device's and the relay's peer ids replaced.
fn with_ids(m: &Message, device: &str, relay: &str, from_device: bool) -> Message {
    let (me, them) = if from_device {
        (PeerId::new(device), PeerId::new(relay))
    } else {
        (PeerId::new(relay), PeerId::new(device))
    };
    let mut m = m.clone();
    match &mut m {
        Message::Join(j) => j.sender_id = me,
        Message::Peer(p) => {
            p.sender_id = me;
            p.target_id = them;
        }
        Message::Sync(s) | Message::Request(s) => {
            s.sender_id = me;
            s.target_id = them;
        }
        Message::DocUnavailable(d) => {
            d.sender_id = me;
            d.target_id = them;
        }
        _ => {}
    }
    m
}

/// Connects with the device's credential and syncs until every document is answered and the
/// link has been quiet for 300 ms (at most 120 s).
async fn exchange(store: &mut Store, options: &SyncOptions) -> Result<Exchange> {
    let ws = device_ws::connect(
        &options.server,
        &options.credential,
        Duration::from_secs(15),
    )
    .await
    .context("connecting to the relay")?;
    let mut config = EngineConfig::new(options.peer_id.clone());
    config.metadata = PeerMetadata {
        storage_id: Some(options.storage_id.clone()),
        is_ephemeral: false,
    };
    let mut session = Session::new(store, config, &options.coalitions)?;
    let (mut tx, mut rx) = ws.split();
    let t0 = Instant::now();
    let settle = Duration::from_millis(300);
    let deadline = t0 + Duration::from_secs(120);
    let mut frames = Vec::new();
    session.connect(std::time::Instant::now())?;
    let mut last = Instant::now();
    loop {
        while let Some(bytes) = session.poll_transmit() {
            frames.push(Frame {
                at: t0.elapsed(),
                sent: true,
                len: bytes.len(),
                message: Message::decode(&bytes).ok(),
            });
            tx.send(WsMessage::Binary(bytes.into())).await?;
            last = Instant::now();
        }
        if session.all_answered() && last.elapsed() >= settle {
            break;
        }
        tokio::select! {
            frame = rx.next() => match frame {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    frames.push(Frame {
                        at: t0.elapsed(),
                        sent: false,
                        len: bytes.len(),
                        message: Message::decode(&bytes).ok(),
                    });
                    session.receive(&bytes, std::time::Instant::now())?;
                    last = Instant::now();
                }
                Some(Ok(WsMessage::Close(f))) => bail!("the relay closed the connection: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the relay closed the connection"),
            },
            _ = tokio::time::sleep_until(last + settle) => {}
            _ = tokio::time::sleep_until(deadline) => bail!("the exchange did not settle within 120 s"),
        }
    }
    session.checkpoint()?;
    let _ = tx.send(WsMessage::Close(None)).await;
    let unsent = session.unsent().len();
    Ok(Exchange {
        frames,
        documents: session.documents(),
        unsent,
    })
}

fn print_exchange(title: &str, x: &Exchange, device_id_len: usize, relay_id_len: usize) {
    let docs = x.documents.max(1);
    println!("### {title}\n");
    println!(
        "{} documents; {} round trips (including the join/peer handshake); {:.0} ms; {} documents with local changes not on the relay afterwards",
        x.documents,
        x.round_trips(),
        x.frames.last().map_or(0.0, |f| f.at.as_secs_f64() * 1000.0),
        x.unsent
    );
    println!();
    println!("| direction | frames | bytes | bytes per document | with 8-character peer ids |");
    println!("|---|---|---|---|---|");
    for sent in [true, false] {
        let bytes = x.bytes(sent);
        println!(
            "| {} | {} | {} | {:.0} | {} |",
            if sent {
                "device → relay"
            } else {
                "relay → device"
            },
            x.count(sent),
            bytes,
            bytes as f64 / docs as f64,
            x.bytes_with_ids(sent, "dev12345", "relay123"),
        );
    }
    println!();
    // Per message type and direction.
    let mut by: BTreeMap<(bool, &'static str), (usize, usize, usize)> = BTreeMap::new();
    for f in &x.frames {
        let e = by.entry((!f.sent, f.kind())).or_default();
        e.0 += 1;
        e.1 += f.len;
        e.2 += f.data_len();
    }
    println!(
        "| direction | type | frames | bytes | of which Automerge `data` | envelope per frame |"
    );
    println!("|---|---|---|---|---|---|");
    for ((recv, kind), (n, bytes, data)) in by {
        println!(
            "| {} | {kind} | {n} | {bytes} | {data} | {:.0} |",
            if recv {
                "relay → device"
            } else {
                "device → relay"
            },
            (bytes - data) as f64 / n as f64
        );
    }
    println!();
    println!(
        "Peer ids: device `senderId` {device_id_len} characters, relay {relay_id_len} characters; a `documentId` is 27–28 characters of bs58check."
    );
    println!();
    println!("Frame log (t, direction, type, document, frame bytes, Automerge data bytes, changes, heads, have):");
    println!();
    println!("```");
    for f in &x.frames {
        let (doc, detail) = match &f.message {
            Some(Message::Sync(m) | Message::Request(m)) => {
                let detail = match automerge::sync::Message::decode(&m.data) {
                    Ok(s) => format!(
                        "changes {} heads {} need {} have {}",
                        s.changes.len(),
                        s.heads.len(),
                        s.need.len(),
                        s.have.len()
                    ),
                    Err(_) => "undecodable data".into(),
                };
                (m.document_id.to_string(), detail)
            }
            Some(m) => (
                m.document_id().map(|d| d.to_string()).unwrap_or_default(),
                String::new(),
            ),
            None => (String::new(), String::new()),
        };
        println!(
            "{:>8.1} ms {} {:<16} {:<24} {:>6} B data {:>5} B {}",
            f.at.as_secs_f64() * 1000.0,
            if f.sent { "→" } else { "←" },
            f.kind(),
            doc,
            f.len,
            f.data_len(),
            detail
        );
    }
    println!("```");
    println!();
}

/// `relay-bench wire [--entries N]`.
pub fn run(entries: usize) -> Result<()> {
    let dir = temp_dir("wire")?;
    let relay_data = dir.join("relay");
    eprintln!("building a coalition with {entries} land release entries…");
    let mut big = large(entries)?;
    let coalition = *big.id();
    {
        let mut store = Store::open(&relay_data)?;
        store.save_all(&mut big)?;
        store.compact(1)?;
        store.close()?;
    }
    let invite = admin(
        &relay_data,
        &[
            "invite",
            "--coalition",
            &coalition.to_string(),
            "--user",
            "field",
            "--org",
            "HALO",
            "--role",
            "operator",
        ],
    )?;
    let relay = RelayProc::start(RelayKind::Ours, &dir, 1000)?;
    let server = relay.http();
    let device_dir = dir.join("device");
    let mut store = Store::open(&device_dir)?;
    let enrolled = enroll(&store, &server, &invite, Some("bench-device"))?;
    eprintln!(
        "enrolled device {} ({} of {})",
        enrolled.device_id, enrolled.identity.user, enrolled.identity.org
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let relay_id_len = runtime.block_on(async {
        let options = SyncOptions::from_store(&store, None)?;
        let first = exchange(&mut store, &options).await?;
        let relay_id = first
            .frames
            .iter()
            .find_map(|f| match &f.message {
                Some(Message::Peer(p)) => Some(p.sender_id.as_str().len()),
                _ => None,
            })
            .unwrap_or(0);
        println!("## Sync on the wire: {entries} land release entries\n");
        print_exchange(
            "First sync of an empty device",
            &first,
            options.peer_id.as_str().len(),
            relay_id,
        );
        Ok::<_, anyhow::Error>(relay_id)
    })?;

    // (a) nothing new
    runtime.block_on(async {
        let options = SyncOptions::from_store(&store, None)?;
        let x = exchange(&mut store, &options).await?;
        print_exchange(
            "(a) Reconnect with nothing new",
            &x,
            options.peer_id.as_str().len(),
            relay_id_len,
        );
        Ok::<_, anyhow::Error>(())
    })?;

    // (b) one new land release entry
    let who = store.identity()?.context("the device has no identity")?;
    let mut c = store.load(&coalition)?;
    let entry = LandReleaseEntry {
        id: "entry-bench-new".into(),
        area_id: "area-7".into(),
        task_id: None,
        operator: "HALO".into(),
        method: Method::Clearance,
        cancelled_m2: 0,
        reduced_m2: 0,
        cleared_m2: 1_234,
        items: BTreeMap::new(),
        date_of_information: "2024-05-01".into(),
        location: Some("42.20000,20.70000".into()),
        amends: None,
        voids: None,
        reason: None,
    };
    let committed = c.apply(
        &who,
        Edit::RecordRelease(entry),
        chrono::Utc::now().timestamp(),
    )?;
    store.save(&mut c, &committed.docs)?;
    let edited: Vec<DocumentId> = committed.docs.clone();
    runtime.block_on(async {
        let options = SyncOptions::from_store(&store, None)?;
        let x = exchange(&mut store, &options).await?;
        print_exchange(
            &format!(
                "(b) One new land release entry (document {}), then reconnect",
                edited
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &x,
            options.peer_id.as_str().len(),
            relay_id_len,
        );
        if x.unsent != 0 {
            bail!("the edit did not reach the relay");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    store.close()?;
    relay.stop()?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
