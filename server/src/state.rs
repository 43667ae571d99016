//! [`AppState`]: what every request handler shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use coalition_core::store::Store;
use coalition_core::sync::ConnId;

use crate::auth::{AuthDb, DeviceAuth};
use crate::error::AppError;
use crate::events::FeedSender;
use crate::hub::HubHandle;
use crate::metrics::Metrics;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    auth: Mutex<AuthDb>,
    /// A second connection to the document store, for the HTTP views. Every change the relay
    /// acknowledged is in the store, so these views never lag what peers were told.
    reads: Mutex<Store>,
    hub: HubHandle,
    metrics: Arc<Metrics>,
    server_peer_id: String,
    server_storage_id: String,
    next_conn: AtomicU64,
    /// Where the hub announces saved changes (see [`crate::events`]).
    feed: FeedSender,
}

impl AppState {
    /// Assemble the state.
    pub fn new(
        auth: AuthDb,
        reads: Store,
        hub: HubHandle,
        metrics: Arc<Metrics>,
        server_peer_id: String,
        server_storage_id: String,
        feed: FeedSender,
    ) -> AppState {
        AppState {
            inner: Arc::new(Shared {
                auth: Mutex::new(auth),
                reads: Mutex::new(reads),
                hub,
                metrics,
                server_peer_id,
                server_storage_id,
                next_conn: AtomicU64::new(1),
                feed,
            }),
        }
    }

    /// The sync hub.
    pub fn hub(&self) -> &HubHandle {
        &self.inner.hub
    }

    /// The channel the hub announces saved changes on.
    pub fn feed(&self) -> &FeedSender {
        &self.inner.feed
    }

    /// The relay's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The relay's peer id in the sync protocol.
    pub fn server_peer_id(&self) -> &str {
        &self.inner.server_peer_id
    }

    /// The relay's storage id in the sync protocol.
    pub fn server_storage_id(&self) -> &str {
        &self.inner.server_storage_id
    }

    /// A fresh connection id.
    pub fn next_conn(&self) -> ConnId {
        ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Run `f` on the auth database on a blocking thread.
    pub async fn with_auth<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&mut AuthDb) -> Result<T, AppError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the database itself is still
            // consistent (SQLite transactions), so keep using it.
            let mut db = inner.auth.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut db)
        })
        .await
        .map_err(AppError::internal)?
    }

    /// Run `f` on the read connection of the document store on a blocking thread.
    pub async fn with_store<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, AppError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = inner.reads.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut store)
        })
        .await
        .map_err(AppError::internal)?
    }

    /// Check a credential.
    pub async fn authenticate(&self, credential: String) -> Result<Arc<DeviceAuth>, AppError> {
        self.with_auth(move |db| Ok(db.authenticate(&credential)?))
            .await
            .map(Arc::new)
    }
}
