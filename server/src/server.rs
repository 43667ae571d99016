//! [`Relay`]: the relay's parts put together and run until shutdown.
//!
//! Starting opens `auth.db` and the document store in the data directory, starts the sync hub
//! thread, and three small tasks: a ticker (handshake timeouts, compaction), a revocation
//! watcher that polls `auth.db` once a second (so `admin revoke`, a separate process, closes
//! live connections within a second), and the actor recorder that binds actors first seen in
//! a device's changes to it.
//!
//! Shutdown: stop accepting, let the hub close every connection and close the store (every
//! acknowledged change is already durable; closing compacts), then return.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use axum::Router;
use coalition_core::store::{Store, StoreError};
use coalition_core::sync::{EngineConfig, PeerId, PeerMetadata, StorageId};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::app;
use crate::auth::{AuthDb, AuthError};
use crate::authors::Authors;
use crate::hub::{self, Event, HubConfig};
use crate::metrics::Metrics;
use crate::state::AppState;

/// How often revocations are picked up from `auth.db`.
const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The document store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The auth database failed to open.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A thread could not be started or a socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A startup task panicked.
    #[error("startup task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The data directory (`coalition.db`, `auth.db`).
    pub data: PathBuf,
    /// Documents kept in memory.
    pub max_docs: usize,
    /// What one peer may send and store.
    pub limits: crate::limits::Limits,
}

/// A started relay: the hub runs; [`Relay::serve`] puts it on a socket.
pub struct Relay {
    state: AppState,
    hub_thread: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Open the data directory and start the hub. Must run inside a tokio runtime.
    pub async fn start(config: RelayConfig) -> Result<Relay, ServerError> {
        let data = config.data.clone();
        let (auth, hub_auth, hub_store, reads, peer_id, storage_id) =
            tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
                let auth = AuthDb::open(&data)?;
                let peer_id = auth.meta_or_init("peer_id", || {
                    // Short: every frame to a device carries it.
                    format!("relay-{}", &crate::admin::random_actor()[..6])
                })?;
                let storage_id = auth.meta_or_init("storage_id", || {
                    // 128 random bits, short too: the `peer` answer to every connection
                    // carries it. A relay keeps the one it made first (devices key their sync
                    // states with us by it).
                    bs58::encode(uuid::Uuid::new_v4().as_bytes()).into_string()
                })?;
                let hub_store = Store::open(&data)?;
                let reads = Store::open(&data)?;
                // The hub's own connection to `auth.db`, to tell who made each change.
                let hub_auth = AuthDb::open(&data)?;
                Ok((auth, hub_auth, hub_store, reads, peer_id, storage_id))
            })
            .await??;
        let metrics = Arc::new(Metrics::default());
        let mut engine = EngineConfig::new(PeerId::new(peer_id.clone()));
        // A storage id tells peers to keep their sync state with us across reconnects.
        engine.metadata = PeerMetadata {
            storage_id: Some(StorageId::new(storage_id.clone())),
            is_ephemeral: false,
        };
        // Devices that skip documents in step are told which ones they are behind on.
        engine.lists_behind = true;
        let feed = crate::events::channel();
        let (hub, hub_thread) = hub::spawn(
            HubConfig {
                engine,
                max_docs: config.max_docs,
                feed: Some(feed.clone()),
                limits: config.limits,
            },
            hub_store,
            metrics.clone(),
            Some(Authors::new(hub_auth)),
        )?;
        let state = AppState::new(auth, reads, hub.clone(), metrics, peer_id, storage_id, feed);
        let tasks = vec![
            tokio::spawn(ticker(hub.clone())),
            tokio::spawn(watch_revocations(state.clone())),
        ];
        Ok(Relay {
            state,
            hub_thread: Some(hub_thread),
            tasks,
        })
    }

    /// The shared state.
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The router over this relay.
    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// Serve on `listener` until `shutdown` completes, then shut down.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let hub = self.state.hub().clone();
        let router = self.router();
        // Closing the WebSockets is part of the signal: upgraded connections are not tracked
        // by the HTTP server's graceful shutdown, and the hub must flush before we exit.
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: closing sync connections");
            hub.shutdown().await;
        };
        // Sync frames are small and answer each other: Nagle's algorithm would hold the
        // second of two answers until the device acknowledged the first (its delayed ACK:
        // 40 ms on Linux).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot turn Nagle's algorithm off on a connection");
            }
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await?;
        self.shutdown().await;
        Ok(())
    }

    /// Stop the hub (closing connections and the store) and the background tasks.
    pub async fn shutdown(mut self) {
        self.state.hub().shutdown().await;
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(thread) = self.hub_thread.take() {
            // The hub has answered the shutdown, so the thread is finishing: join off the
            // async workers all the same.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

async fn ticker(hub: hub::HubHandle) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        if !hub.send(Event::Tick).await {
            return;
        }
    }
}

async fn watch_revocations(state: AppState) {
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut interval = tokio::time::interval(REVOCATION_POLL);
    loop {
        interval.tick().await;
        let revoked = match state.with_auth(|db| Ok(db.revoked_devices()?)).await {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "cannot read revocations");
                continue;
            }
        };
        let new: BTreeSet<String> = revoked.difference(&known).cloned().collect();
        if !new.is_empty() {
            if !state.hub().send(Event::Revoked { devices: new }).await {
                return;
            }
            known = revoked;
        }
    }
}
