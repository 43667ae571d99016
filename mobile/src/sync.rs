//! Sync on threads the library owns: the tokio runtime, `sync_now`, background sync and the
//! listener that hears about it.
//!
//! The core's transport ([`transport::sync_once`], [`transport::watch`]) writes received
//! changes to the store synchronously, inside its futures: a change is acknowledged only
//! once it is durable. Those futures therefore run with [`Handle::block_on`] on a thread of
//! their own (a blocking-pool thread for `sync_now`, a named thread for background sync),
//! never on the app's UI thread and never on a runtime worker; the runtime's workers drive
//! the sockets and timers.
//!
//! Each sync opens its own connection to the store (SQLite in WAL mode: readers never wait,
//! writers queue for a moment). Edits made through the client meanwhile are picked up by the
//! background sync's store watcher and pushed to the relay within half a second.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use coalition_core::store::Store;
use coalition_core::transport::{self, ws::Outcome, SessionEvent, SyncOptions, WatchEvent};
use tokio::runtime::{Handle, Runtime};

use crate::error::{chain, CoalitionError, Result};
use crate::types::{count, DocumentChange, SyncState, SyncStatus, SyncSummary};

/// What an app implements to hear about sync: document changes and status changes.
///
/// Called on a thread of the library, never the UI thread: hand the work over to the UI
/// thread (Android `Handler`/`Dispatchers.Main`, iOS `DispatchQueue.main`) before touching
/// views. Keep the calls short; sync waits for them.
#[uniffi::export(with_foreign)]
pub trait SyncListener: Send + Sync {
    /// Documents changed: from the relay (`remote`), or by an edit on this device.
    fn on_document_changed(&self, change: DocumentChange);
    /// The sync status changed.
    fn on_sync_status(&self, status: SyncStatus);
}

/// The library's runtime, started on first use and shared by every client of the process.
/// Two workers: they only drive sockets and timers, the store work runs on its own threads.
pub(crate) fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("coalition-rt")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| CoalitionError::internal(format!("cannot start the sync runtime: {e}")))
}

/// Runs blocking work (store I/O, a blocking HTTP call) on the runtime's blocking pool and
/// waits for it without blocking the caller: the returned future can be polled by any
/// executor (the foreign language's, through UniFFI).
pub(crate) async fn blocking<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    runtime()?.spawn_blocking(work).await?
}

/// Sync options from the store, checked to have something to sync.
fn options(store: &Store) -> Result<SyncOptions> {
    let options = SyncOptions::from_store(store, None)?;
    if options.coalitions.is_empty() {
        return Err(CoalitionError::NotEnrolled {
            detail: "this device has no coalition to sync: enroll with an invite first".into(),
        });
    }
    Ok(options)
}

/// Hands the transport's events to a listener, as the API's records.
pub(crate) struct Forwarder {
    listener: Option<Arc<dyn SyncListener>>,
    /// A store connection of its own, to tell which coalition a changed document is of.
    lookup: Option<Store>,
}

impl Forwarder {
    /// A forwarder to `listener` (if any) that looks documents up in the store at `dir`.
    pub(crate) fn new(listener: Option<Arc<dyn SyncListener>>, dir: &Path) -> Self {
        // Without the lookup, changes are still reported, only without their coalition.
        let lookup = listener.as_ref().and_then(|_| Store::open(dir).ok());
        Forwarder { listener, lookup }
    }

    fn status(&self, state: SyncState) -> SyncStatus {
        SyncStatus {
            state,
            unsent_documents: None,
            retry_in_ms: None,
            detail: None,
        }
    }

    /// Reports a status.
    pub(crate) fn send_status(&self, status: SyncStatus) {
        if let Some(listener) = &self.listener {
            listener.on_sync_status(status);
        }
    }

    fn coalition_of(&mut self, doc: &coalition_core::sync::DocumentId) -> Option<String> {
        let store = self.lookup.as_mut()?;
        let found = store.load_doc(doc).ok().flatten().map(|d| d.coalition);
        // The lookup only reads; forget what it loaded so it holds no document state.
        store.forget(doc);
        found
    }

    /// Reports one event of the transport.
    pub(crate) fn event(&mut self, event: &WatchEvent) {
        let Some(listener) = self.listener.clone() else {
            return;
        };
        match event {
            WatchEvent::Session(SessionEvent::Connected { .. }) => {
                listener.on_sync_status(self.status(SyncState::Connected));
            }
            WatchEvent::Session(SessionEvent::RemoteChange {
                doc_id,
                kind,
                owner,
                changes,
                authors,
            }) => listener.on_document_changed(DocumentChange {
                coalition_id: self.coalition_of(doc_id),
                document_id: doc_id.to_string(),
                kind: kind.map(|k| k.to_string()),
                owner: owner.clone(),
                changes: count(*changes),
                authors: authors.clone(),
                remote: true,
            }),
            WatchEvent::Session(SessionEvent::Warning { message }) => {
                listener.on_sync_status(SyncStatus {
                    detail: Some(message.clone()),
                    ..self.status(SyncState::Connected)
                });
            }
            WatchEvent::Quiet { unsent } => listener.on_sync_status(SyncStatus {
                unsent_documents: Some(count(*unsent)),
                ..self.status(SyncState::InSync)
            }),
            WatchEvent::Dropped { reason, retry_in } => listener.on_sync_status(SyncStatus {
                retry_in_ms: Some(i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX)),
                detail: Some(reason.clone()),
                ..self.status(SyncState::Offline)
            }),
            // Local edits picked up from the store were reported when they were saved;
            // unavailable documents show in the summary and in `status`.
            _ => {}
        }
    }
}

/// Records a failed sync where `status` shows it; the store is only written a setting.
fn record_failure(store: &Store, error: &CoalitionError) {
    // Failing to record the failure must not hide the failure itself.
    let _ = transport::record_failure(store, &error.to_string());
}

/// One sync with the relay until every document is answered and the link is quiet.
/// Runs on a blocking-pool thread; see the [module documentation](self).
pub(crate) async fn sync_now(
    dir: PathBuf,
    listener: Option<Arc<dyn SyncListener>>,
) -> Result<SyncSummary> {
    let handle = runtime()?.handle().clone();
    blocking(move || {
        let mut store = Store::open(&dir)?;
        let options = options(&store)?;
        let mut forward = Forwarder::new(listener, &dir);
        let mut on_event = |e: &WatchEvent| forward.event(e);
        let result = handle.block_on(transport::sync_once(&mut store, &options, &mut on_event));
        let summary = match result {
            Ok(summary) => summary,
            Err(e) => {
                let error = CoalitionError::from(e);
                record_failure(&store, &error);
                return Err(error);
            }
        };
        let failure = match &summary.outcome {
            Outcome::Complete | Outcome::Stopped => None,
            Outcome::TimedOut => Some(format!(
                "the relay did not answer about {} document(s) in time; what was synced is saved, local work is kept",
                summary.unanswered.len()
            )),
            Outcome::LinkLost { reason } => Some(format!(
                "the link to the relay dropped ({reason}); what was synced is saved, local work is kept"
            )),
            other => Some(format!("the sync ended early: {other:?}")),
        };
        if let Some(detail) = failure {
            let error = CoalitionError::Network { detail };
            record_failure(&store, &error);
            return Err(error);
        }
        Ok(SyncSummary::from(&summary))
    })
    .await
}

/// A running background sync.
pub(crate) struct Background {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    /// The listener it reports to; `sync_now` and edits report to it too.
    pub(crate) listener: Arc<dyn SyncListener>,
}

impl Background {
    /// Starts syncing in the background: stays connected, applies remote changes as they
    /// come, pushes local edits, reconnects with backoff. Reports to `listener`.
    pub(crate) fn start(dir: PathBuf, listener: Arc<dyn SyncListener>) -> Result<Background> {
        let handle = runtime()?.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let reporter = listener.clone();
        let thread = std::thread::Builder::new()
            .name("coalition-sync".into())
            .spawn(move || run(&handle, &dir, reporter, stopped))
            .map_err(|e| CoalitionError::internal(format!("cannot start the sync thread: {e}")))?;
        Ok(Background {
            stop,
            thread,
            listener,
        })
    }

    /// Whether the sync thread has ended (stopped, or failed and reported why).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Asks background sync to stop; it closes the connection and reports `Stopped`.
    /// Returns at once, with the thread to join for whoever must wait for it.
    pub(crate) fn stop(self) -> std::thread::JoinHandle<()> {
        // The thread may have ended already (a refused credential): nothing to stop then.
        let _ = self.stop.send(());
        self.thread
    }
}

/// The background sync thread: watch until stopped, then report how it ended.
fn run(
    handle: &Handle,
    dir: &Path,
    listener: Arc<dyn SyncListener>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut forward = Forwarder::new(Some(listener), dir);
    forward.send_status(forward.status(SyncState::Connecting));
    let result = (|| -> Result<()> {
        let mut store = Store::open(dir)?;
        let options = options(&store)?;
        let mut on_event = |e: &WatchEvent| forward.event(e);
        let shutdown = async {
            // A dropped sender (the client went away) stops sync as well.
            let _ = stopped.await;
        };
        let result = handle.block_on(transport::watch(
            &mut store,
            &options,
            shutdown,
            &mut on_event,
        ));
        result.map(|_| ()).map_err(|e| {
            let error = CoalitionError::from(e);
            record_failure(&store, &error);
            error
        })
    })();
    if let Err(error) = result {
        forward.send_status(SyncStatus {
            detail: Some(chain(&error)),
            ..forward.status(SyncState::Failed)
        });
    }
    forward.send_status(forward.status(SyncState::Stopped));
}
