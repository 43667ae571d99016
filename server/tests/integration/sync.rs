//! Real sockets: in-process sync clients (the core's `SyncEngine` over tokio-tungstenite)
//! syncing through a relay listening on 127.0.0.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ReadDoc, ROOT};
use coalition_core::store::Store;
use coalition_core::sync::{
    Action, ConnId, DocumentId, EngineConfig, Message, PeerId, PeerMetadata, SyncEngine,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::*;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const CONN: ConnId = ConnId(1);

/// A relay serving on 127.0.0.1:0, with one coalition.
struct Served {
    relay: TestRelay,
    addr: SocketAddr,
    coalition: DocumentId,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    state: coalition_server::AppState,
}

impl Served {
    async fn start() -> Result<Served> {
        Served::start_with(100).await
    }

    async fn start_with(max_docs: usize) -> Result<Served> {
        let (mut relay, coalition) = TestRelay::with_coalition_and(max_docs).await?;
        let state = relay.state();
        let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await??;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        // `serve` takes the relay; the test keeps the data directory and the shared state.
        let placeholder = TestRelay::start(tempfile::tempdir()?).await?;
        let inner = std::mem::replace(&mut relay.relay, placeholder.relay);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = inner.serve(listener, shutdown).await {
                tracing::error!(error = %e, "relay failed");
            }
        });
        Ok(Served {
            relay,
            addr,
            coalition,
            stop: Some(stop),
            task,
            state,
        })
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(&mut self.task).await??;
        within(self.relay.relay.shutdown()).await?;
        Ok(())
    }

    async fn connect(&self, credential: &str) -> Result<Socket> {
        let mut request = format!("ws://{}/sync", self.addr).into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {credential}").parse()?);
        let (socket, _) = within(tokio_tungstenite::connect_async(request)).await??;
        Ok(socket)
    }
}

/// A minimal device: the core's sync engine over one WebSocket.
struct Client {
    engine: SyncEngine,
    docs: HashMap<DocumentId, AutoCommit>,
    socket: Socket,
    connected: bool,
    unavailable: Vec<DocumentId>,
    /// Documents the relay answered `doc-unavailable` about, whatever this client holds.
    told_unavailable: Vec<DocumentId>,
    errors: Vec<String>,
    closed: bool,
}

impl Client {
    async fn connect(served: &Served, credential: &str, name: &str) -> Result<Client> {
        let socket = served.connect(credential).await?;
        let mut config = EngineConfig::new(PeerId::from(name));
        config.metadata = PeerMetadata {
            storage_id: Some(format!("{name}-storage").as_str().into()),
            is_ephemeral: false,
        };
        let mut client = Client {
            engine: SyncEngine::new(config),
            docs: HashMap::new(),
            socket,
            connected: false,
            unavailable: Vec::new(),
            told_unavailable: Vec::new(),
            errors: Vec::new(),
            closed: false,
        };
        let actions = client.engine.connect(CONN, Instant::now());
        client.perform(actions).await?;
        client.pump_until(|c| c.connected).await?;
        Ok(client)
    }

    async fn perform(&mut self, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::Send { message, .. } => {
                    within(self.socket.send(WsMessage::Binary(message.encode().into()))).await??;
                }
                Action::PeerConnected { .. } => self.connected = true,
                Action::DocumentUnavailable { doc_id } => self.unavailable.push(doc_id),
                Action::Disconnect { reason, .. } => {
                    self.closed = true;
                    self.errors.push(format!("disconnected: {reason:?}"));
                }
                Action::Error { error, .. } => self.errors.push(error.to_string()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Hand a frame from the relay to the engine.
    async fn receive(&mut self, bytes: &[u8]) -> Result<()> {
        if let Ok(Message::DocUnavailable(m)) = Message::decode(bytes) {
            // The engine reports only documents it asked for and has nothing of.
            self.told_unavailable.push(m.document_id);
        }
        let actions = self
            .engine
            .receive_bytes(CONN, bytes, Instant::now(), &mut self.docs);
        self.perform(actions).await
    }

    /// Share a document (an empty one asks the relay for it).
    async fn share(&mut self, id: DocumentId, doc: AutoCommit) -> Result<()> {
        self.docs.insert(id, doc);
        let actions = self.engine.share_doc(id, &mut self.docs);
        self.perform(actions).await
    }

    /// Write a section of the plan's narrative (which a coordinator may write).
    async fn edit(&mut self, id: DocumentId, key: &str, value: &str) -> Result<()> {
        let doc = self.docs.get_mut(&id).context("no such doc")?;
        let narrative = match doc.get(ROOT, "narrative")? {
            Some((_, obj)) => obj,
            None => doc.put_object(ROOT, "narrative", automerge::ObjType::Map)?,
        };
        doc.put(&narrative, key, value)?;
        doc.commit_with(CommitOptions::default().with_time(1_700_000_100));
        let actions = self.engine.local_change(id, &mut self.docs);
        self.perform(actions).await
    }

    fn value(&self, id: &DocumentId, key: &str) -> Option<String> {
        let (value, _) = self.docs.get(id)?.get(ROOT, key).ok()??;
        value.as_str().map(str::to_string)
    }

    /// A section of the plan's narrative.
    fn section(&self, id: &DocumentId, key: &str) -> Option<String> {
        let doc = self.docs.get(id)?;
        let (_, narrative) = doc.get(ROOT, "narrative").ok()??;
        let (value, _) = doc.get(&narrative, key).ok()??;
        value.as_str().map(str::to_string)
    }

    /// Handle frames until `done` holds (or fail after the timeout).
    async fn pump_until(&mut self, done: impl Fn(&Client) -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !done(self) {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .context("timed out waiting for the relay")?;
            match frame {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    self.receive(&bytes).await?;
                }
                Some(Ok(WsMessage::Close(_))) | None => {
                    self.closed = true;
                    if !done(self) {
                        bail!("the relay closed the connection");
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("socket error: {e}"),
            }
        }
        Ok(())
    }

    /// Handle frames for a short while (to let a round trip settle).
    async fn pump_for(&mut self, time: Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + time;
        loop {
            match tokio::time::timeout_at(until, self.socket.next()).await {
                Err(_) => return Ok(()),
                Ok(Some(Ok(WsMessage::Binary(bytes)))) => {
                    self.receive(&bytes).await?;
                }
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) => {
                    self.closed = true;
                    return Ok(());
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => bail!("socket error: {e}"),
            }
        }
    }

    /// Handle frames until the relay's stored copy of `id` satisfies `stored`: a change reaches
    /// the relay only through the sync rounds this client takes part in, so it must keep
    /// reading until then.
    async fn pump_until_stored(
        &mut self,
        served: &Served,
        id: DocumentId,
        stored: impl Fn(&AutoCommit) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if stored_doc(served, id)
                .await?
                .is_some_and(|doc| stored(&doc))
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the relay never stored the expected state of {id}"
            );
            self.pump_for(Duration::from_millis(100)).await?;
        }
    }
}

/// A document as the relay stored it.
async fn stored_doc(served: &Served, id: DocumentId) -> Result<Option<AutoCommit>> {
    let path = served.relay.dir.path().to_path_buf();
    within(tokio::task::spawn_blocking(move || -> Result<_> {
        Ok(Store::open(&path)?.load_doc(&id)?.map(|stored| stored.doc))
    }))
    .await??
}

/// A section of a plan's narrative in `doc`.
fn section_of(doc: &AutoCommit, key: &str) -> Option<String> {
    let (_, narrative) = doc.get(ROOT, "narrative").ok()??;
    let (value, _) = doc.get(&narrative, key).ok()??;
    value.as_str().map(str::to_string)
}

/// The coalition's plan document, as stored.
async fn plan_of(served: &Served) -> Result<(DocumentId, AutoCommit)> {
    let path = served.relay.dir.path().to_path_buf();
    let id = served.coalition;
    within(tokio::task::spawn_blocking(move || -> Result<_> {
        let coalition = Store::open(&path)?.load(&id)?;
        let plan = coalition
            .find_doc(coalition_core::model::DocKind::Plan, None)
            .context("no plan")?;
        Ok((plan.id, plan.doc.clone()))
    }))
    .await??
}

/// A section of a stored plan's narrative.
async fn stored_section(served: &Served, id: DocumentId, key: &str) -> Result<Option<String>> {
    Ok(stored_doc(served, id)
        .await?
        .and_then(|doc| section_of(&doc, key)))
}

/// A string at the root of a stored document.
async fn stored_value(served: &Served, id: DocumentId, key: &str) -> Result<Option<String>> {
    let Some(doc) = stored_doc(served, id).await? else {
        return Ok(None);
    };
    Ok(doc
        .get(ROOT, key)?
        .and_then(|(v, _)| v.as_str().map(str::to_string)))
}

#[tokio::test]
async fn two_clients_sync_a_document_through_the_relay() -> Result<()> {
    let served = Served::start().await?;
    let state = served.state.clone();
    let coordinator = credential(&state, served.coalition, "MCA-BA", "coordinator").await?;
    let (plan_id, mut plan) = plan_of(&served).await?;

    let mut a = Client::connect(&served, &coordinator, "device-a").await?;
    let mut a_plan = plan.fork();
    a_plan.set_actor(automerge::ActorId::random());
    a.share(plan_id, a_plan).await?;
    a.edit(plan_id, "from_a", "hello").await?;
    a.pump_until_stored(&served, plan_id, |doc| section_of(doc, "from_a").is_some())
        .await?;

    // B has nothing of the plan: it asks, and gets A's edit.
    let second = credential(&state, served.coalition, "MCA-BA", "coordinator").await?;
    let mut b = Client::connect(&served, &second, "device-b").await?;
    let mut empty = AutoCommit::new();
    empty.set_actor(automerge::ActorId::random());
    b.share(plan_id, empty).await?;
    b.pump_until(|c| c.section(&plan_id, "from_a").is_some())
        .await?;
    assert_eq!(b.section(&plan_id, "from_a").as_deref(), Some("hello"));

    // A change on one live client reaches the other without it asking: A only answers what
    // arrives. How fast is measured by the benchmarks (`relay-bench`), not here.
    b.edit(plan_id, "from_b", "hi").await?;
    a.pump_until(|c| c.section(&plan_id, "from_b").is_some())
        .await?;

    // What the relay forwarded is in its store.
    assert_eq!(
        stored_section(&served, plan_id, "from_a").await?.as_deref(),
        Some("hello")
    );
    assert_eq!(
        stored_section(&served, plan_id, "from_b").await?.as_deref(),
        Some("hi")
    );
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "{:?} {:?}",
        a.errors,
        b.errors
    );
    served.stop().await
}

#[tokio::test]
async fn documents_outside_the_devices_coalitions_are_unavailable() -> Result<()> {
    let served = Served::start().await?;
    let state = served.state.clone();
    let coordinator = credential(&state, served.coalition, "MCA-BA", "coordinator").await?;
    let (plan_id, mut plan) = plan_of(&served).await?;

    // A device of another coalition asks for this coalition's plan: unavailable, as if missing.
    let other = DocumentId::new_random();
    let outsider = credential(&state, other, "MCA-BA", "coordinator").await?;
    let mut c = Client::connect(&served, &outsider, "outsider").await?;
    c.share(plan_id, AutoCommit::new()).await?;
    c.pump_until(|c| c.unavailable.contains(&plan_id)).await?;
    assert!(c.value(&plan_id, "doc_kind").is_none());

    // Pushing data into it is refused too, and nothing is stored.
    let mut forged = plan.fork();
    forged.set_actor(automerge::ActorId::random());
    forged.put(ROOT, "forged", "yes")?;
    forged.commit_with(CommitOptions::default().with_time(1_700_000_200));
    let mut d = Client::connect(&served, &outsider, "outsider-2").await?;
    d.share(plan_id, forged).await?;
    d.pump_until(|c| c.told_unavailable.contains(&plan_id))
        .await?;
    assert_eq!(stored_value(&served, plan_id, "forged").await?, None);

    // A member creates a new document of its coalition: stored with it. A document that
    // names another coalition is refused and not stored.
    let mut a = Client::connect(&served, &coordinator, "member").await?;
    let new_id = DocumentId::new_random();
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "doc_kind", "partner")?;
    doc.put(ROOT, "doc_owner", "MCA-BA")?;
    doc.put(ROOT, "doc_coalition", served.coalition.to_string())?;
    doc.commit_with(CommitOptions::default().with_time(1_700_000_300));
    a.share(new_id, doc).await?;
    let foreign_id = DocumentId::new_random();
    let mut foreign = AutoCommit::new();
    foreign.put(ROOT, "doc_kind", "partner")?;
    foreign.put(ROOT, "doc_coalition", other.to_string())?;
    foreign.commit_with(CommitOptions::default().with_time(1_700_000_300));
    a.share(foreign_id, foreign).await?;
    a.pump_until_stored(&served, new_id, |doc| {
        doc.get(ROOT, "doc_owner").is_ok_and(|v| v.is_some())
    })
    .await?;
    assert_eq!(
        stored_value(&served, new_id, "doc_owner").await?.as_deref(),
        Some("MCA-BA")
    );
    assert_eq!(stored_value(&served, foreign_id, "doc_kind").await?, None);
    served.stop().await
}

#[tokio::test]
async fn a_malformed_first_frame_gets_an_error_and_others_keep_syncing() -> Result<()> {
    let served = Served::start().await?;
    let state = served.state.clone();
    let coordinator = credential(&state, served.coalition, "MCA-BA", "coordinator").await?;

    let mut bad = served.connect(&coordinator).await?;
    within(bad.send(WsMessage::Binary(vec![0xff, 0x00, 0x13].into()))).await??;
    let mut got_error = false;
    let mut got_close = false;
    while let Some(frame) = within(bad.next()).await? {
        match frame {
            Ok(WsMessage::Binary(bytes)) => {
                if let Ok(Message::Error(e)) = Message::decode(&bytes) {
                    assert!(!e.message.is_empty());
                    got_error = true;
                }
            }
            Ok(WsMessage::Close(_)) => got_close = true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(got_error, "the peer is told what was wrong");
    assert!(got_close, "and the connection is closed");

    // A text frame is no better, and is answered the same way.
    let mut text = served.connect(&coordinator).await?;
    within(text.send(WsMessage::Text("hello".into()))).await??;
    let mut text_error = false;
    while let Some(Ok(frame)) = within(text.next()).await? {
        if let WsMessage::Binary(bytes) = frame {
            text_error |= matches!(Message::decode(&bytes), Ok(Message::Error(_)));
        }
    }
    assert!(text_error);

    // Everyone else is still served.
    let (plan_id, _) = plan_of(&served).await?;
    let mut good = Client::connect(&served, &coordinator, "good").await?;
    good.share(plan_id, AutoCommit::new()).await?;
    good.pump_until(|c| c.value(&plan_id, "doc_kind").is_some())
        .await?;
    let (status, body) = get(&state, "/healthz", "").await?;
    assert_eq!((status.as_u16(), &body["status"]), (200, &"ok".into()));
    served.stop().await
}

#[tokio::test]
async fn bad_credentials_are_refused_before_the_upgrade() -> Result<()> {
    let served = Served::start().await?;
    let mut request =
        format!("ws://{}/sync?token=cred-wrong", served.addr).into_client_request()?;
    request.headers_mut().remove("authorization");
    match within(tokio_tungstenite::connect_async(request)).await? {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())?;
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        other => bail!("expected a 401, got {other:?}"),
    }
    served.stop().await
}

#[tokio::test]
async fn revocation_closes_live_connections() -> Result<()> {
    let served = Served::start().await?;
    let state = served.state.clone();
    let code = invite(&state, served.coalition, "MCA-BA", "coordinator").await?;
    let (_, body) = enroll(&state, &code, &actor()).await?;
    let credential = body["credential"].as_str().unwrap_or_default().to_string();
    let device = body["device_id"].as_str().unwrap_or_default().to_string();
    let mut client = Client::connect(&served, &credential, "doomed").await?;
    within(state.with_auth(move |db| Ok(db.revoke(&device)?))).await??;
    client.pump_until(|c| c.closed).await?;
    assert!(
        client.errors.iter().any(|e| e.contains("device_revoked")),
        "the device is told why: {:?}",
        client.errors
    );
    served.stop().await
}

#[tokio::test]
async fn shutdown_closes_connections_and_keeps_what_was_acknowledged() -> Result<()> {
    let served = Served::start().await?;
    let state = served.state.clone();
    let coordinator = credential(&state, served.coalition, "MCA-BA", "coordinator").await?;
    let (plan_id, mut plan) = plan_of(&served).await?;
    let mut a = Client::connect(&served, &coordinator, "device-a").await?;
    let mut doc = plan.fork();
    doc.set_actor(automerge::ActorId::random());
    a.share(plan_id, doc).await?;
    a.edit(plan_id, "before_shutdown", "kept").await?;
    a.pump_until_stored(&served, plan_id, |doc| {
        section_of(doc, "before_shutdown").is_some()
    })
    .await?;
    let addr = served.addr;
    let dir_path = served.relay.dir.path().to_path_buf();
    let Served {
        relay, stop, task, ..
    } = served;
    if let Some(stop) = stop {
        let _ = stop.send(());
    }
    a.pump_until(|c| c.closed).await?;
    within(task).await??;
    assert!(
        within(TcpStream::connect(addr)).await?.is_err(),
        "no longer accepting"
    );
    let value = within(tokio::task::spawn_blocking(move || -> Result<_> {
        let stored = Store::open(&dir_path)?
            .load_doc(&plan_id)?
            .context("plan")?;
        let (_, narrative) = stored.doc.get(ROOT, "narrative")?.context("narrative")?;
        Ok(stored
            .doc
            .get(&narrative, "before_shutdown")?
            .and_then(|(v, _)| v.as_str().map(str::to_string)))
    }))
    .await???;
    assert_eq!(value.as_deref(), Some("kept"));
    within(relay.relay.shutdown()).await?;
    Ok(())
}

/// All documents of the served coalition, as stored.
async fn stored_docs(served: &Served) -> Result<Vec<(DocumentId, AutoCommit)>> {
    let path = served.relay.dir.path().to_path_buf();
    let id = served.coalition;
    within(tokio::task::spawn_blocking(move || -> Result<_> {
        Ok(Store::open(&path)?.load_docs(&id)?)
    }))
    .await??
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn idle_documents_are_evicted_and_reloaded_on_demand() -> Result<()> {
    let served = Served::start_with(1).await?;
    let state = served.state.clone();
    let coordinator = credential(&state, served.coalition, "MCA-BA", "coordinator").await?;
    let docs = stored_docs(&served).await?;
    assert!(docs.len() >= 3, "manifest, plan, comments");

    // One client syncs every document: all stay loaded while it is connected.
    let mut a = Client::connect(&served, &coordinator, "device-a").await?;
    for (id, _) in &docs {
        a.share(*id, AutoCommit::new()).await?;
    }
    a.pump_until(|c| docs.iter().all(|(id, _)| c.value(id, "doc_kind").is_some()))
        .await?;
    let (_, text) = get(&state, "/metrics", "").await?;
    let loaded = metric(
        text.as_str().unwrap_or_default(),
        "coalition_documents_loaded",
    );
    assert_eq!(loaded, Some(docs.len() as f64), "documents in use are kept");
    drop(a);

    // Once it is gone they are idle: the next batches unload all but one.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, text) = get(&state, "/metrics", "").await?;
        let text = text.as_str().unwrap_or_default().to_string();
        if metric(&text, "coalition_documents_loaded") == Some(1.0) {
            assert!(metric(&text, "coalition_documents_evicted_total").unwrap_or(0.0) >= 2.0);
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not evicted:\n{text}");
        within(tokio::time::sleep(Duration::from_millis(200))).await?;
    }

    // An unloaded document comes back from storage when asked for.
    let mut b = Client::connect(&served, &coordinator, "device-b").await?;
    for (id, _) in &docs {
        b.share(*id, AutoCommit::new()).await?;
    }
    b.pump_until(|c| docs.iter().all(|(id, _)| c.value(id, "doc_kind").is_some()))
        .await?;
    served.stop().await
}

#[tokio::test]
async fn an_organisation_removed_from_the_coalition_is_disconnected_at_once() -> Result<()> {
    let served = Served::start().await?;
    let state = served.state.clone();
    let coordinator = credential(&state, served.coalition, "MCA-BA", "coordinator").await?;
    let donor = credential(&state, served.coalition, "donor-DE", "donor").await?;
    let manifest_id = served.coalition;
    let path = served.relay.dir.path().to_path_buf();
    let mut manifest = within(tokio::task::spawn_blocking(move || -> Result<_> {
        Ok(Store::open(&path)?
            .load_doc(&manifest_id)?
            .context("manifest")?
            .doc)
    }))
    .await???;

    // The coordinator adds the donor's organisation as a member.
    let mut a = Client::connect(&served, &coordinator, "coordinator").await?;
    let mut copy = manifest.fork();
    copy.set_actor(automerge::ActorId::random());
    a.share(manifest_id, copy).await?;
    {
        let doc = a.docs.get_mut(&manifest_id).context("manifest")?;
        let (_, members) = doc.get(ROOT, "members")?.context("members")?;
        let m = doc.put_object(&members, "donor-DE", automerge::ObjType::Map)?;
        doc.put(&m, "org", "donor-DE")?;
        doc.put(&m, "name", "Germany")?;
        doc.put(&m, "kind", "donor")?;
        let roles = doc.put_object(&m, "roles", automerge::ObjType::Map)?;
        doc.put(&roles, "donor", true)?;
        doc.put(&m, "country", automerge::ScalarValue::Null)?;
        doc.commit_with(CommitOptions::default().with_time(1_700_000_400));
        let actions = a.engine.local_change(manifest_id, &mut a.docs);
        a.perform(actions).await?;
    }
    a.pump_until_stored(&served, manifest_id, |doc| {
        doc.get(ROOT, "members")
            .ok()
            .flatten()
            .is_some_and(|(_, members)| doc.get(&members, "donor-DE").is_ok_and(|m| m.is_some()))
    })
    .await?;

    // The donor reads the coalition.
    let mut d = Client::connect(&served, &donor, "donor").await?;
    d.share(manifest_id, AutoCommit::new()).await?;
    d.pump_until(|c| c.value(&manifest_id, "doc_kind").is_some())
        .await?;

    // The coordinator removes it again.
    {
        let doc = a.docs.get_mut(&manifest_id).context("manifest")?;
        let (_, members) = doc.get(ROOT, "members")?.context("members")?;
        doc.delete(&members, "donor-DE")?;
        doc.commit_with(CommitOptions::default().with_time(1_700_000_500));
        let actions = a.engine.local_change(manifest_id, &mut a.docs);
        a.perform(actions).await?;
    }

    // The donor's live connection is told and closed; a new one sees nothing of the coalition.
    d.pump_until(|c| c.closed).await?;
    assert!(
        d.errors.iter().any(|e| e.contains("not_a_member")),
        "the device is told why: {:?}",
        d.errors
    );
    let mut again = Client::connect(&served, &donor, "donor-again").await?;
    again.share(manifest_id, AutoCommit::new()).await?;
    again
        .pump_until(|c| c.unavailable.contains(&manifest_id))
        .await?;
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    served.stop().await
}
