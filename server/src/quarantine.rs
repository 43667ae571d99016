//! The quarantine: changes the relay refused, for a coordinator to review.
//!
//! A refused change is stored whole with its author, document, reason and time (see
//! [`coalition_core::store::HeldChange`]); nothing is dropped. A coordinator lists them,
//! looks at one, and accepts it (it is applied to its document as it was made, with any
//! refused change of the same document it builds on, and reaches every device through sync)
//! or discards it (it stays on record, never applied).
//!
//! The same decisions are reachable from `coalition-server admin quarantine` (on the data
//! directory, whether or not the relay runs: the relay picks up what another process wrote)
//! and from the HTTP API, where they go through the hub like any other change:
//!
//! - `GET  /api/v1/coalitions/{id}/quarantine[?status=held|accepted|discarded]`
//! - `GET  /api/v1/coalitions/{id}/quarantine/{n}`
//! - `POST /api/v1/coalitions/{id}/quarantine/{n}/accept`
//! - `POST /api/v1/coalitions/{id}/quarantine/{n}/discard`

use std::collections::{BTreeMap, HashSet};

use automerge::{AutoCommit, Change, ChangeHash};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use coalition_core::store::{DocRecord, HeldChange, HeldStatus, Store, StoreError};
use coalition_core::sync::DocumentId;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::api::Device;
use crate::error::AppError;
use crate::hub::Event;
use crate::state::AppState;

/// What a coordinator decides about a held change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply it.
    Accept,
    /// Keep it on record, never applied.
    Discard,
}

/// Why a decision could not be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuarantineError {
    /// No held change with this number (in this coalition).
    #[error("no change {0} in quarantine")]
    NotFound(i64),
    /// It was decided already.
    #[error("change {id} was already {status}")]
    AlreadyDecided {
        /// The change's number.
        id: i64,
        /// What was decided.
        status: HeldStatus,
    },
    /// It builds on a change the relay has neither applied nor held.
    #[error("change {id} depends on change {dep}, which this relay does not have")]
    MissingDependency {
        /// The change's number.
        id: i64,
        /// The missing dependency.
        dep: ChangeHash,
    },
    /// Its document is not stored here.
    #[error("document {0} of the held change is not stored on this relay")]
    NoDocument(String),
    /// The stored change bytes do not load.
    #[error("held change {id} is unreadable")]
    Unreadable {
        /// The change's number.
        id: i64,
    },
    /// Applying it failed.
    #[error("applying change {id} failed")]
    Apply {
        /// The change's number.
        id: i64,
        /// The cause.
        #[source]
        source: automerge::AutomergeError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QuarantineError> for AppError {
    fn from(e: QuarantineError) -> Self {
        match e {
            QuarantineError::NotFound(_) => AppError::NotFound(e.to_string()),
            QuarantineError::AlreadyDecided { .. } | QuarantineError::MissingDependency { .. } => {
                AppError::Conflict(e.to_string())
            }
            QuarantineError::Store(s) => AppError::internal(s),
            other => AppError::internal(other),
        }
    }
}

/// Apply held change `id` to `doc`, with the held changes of the same document it builds on.
/// Returns the numbers of every held change applied (to mark them accepted once the document
/// is saved). `doc` is left unchanged on error.
pub fn apply_held(
    store: &Store,
    doc: &mut AutoCommit,
    doc_id: &str,
    id: i64,
) -> Result<Vec<i64>, QuarantineError> {
    let (held, bytes) = store
        .held_change(id)?
        .ok_or(QuarantineError::NotFound(id))?;
    if held.doc_id != doc_id {
        return Err(QuarantineError::NotFound(id));
    }
    if held.status != HeldStatus::Held {
        return Err(QuarantineError::AlreadyDecided {
            id,
            status: held.status,
        });
    }
    let mut chain: BTreeMap<i64, Change> = BTreeMap::new();
    let mut queued: HashSet<ChangeHash> = HashSet::new();
    let mut stack = vec![(id, bytes)];
    while let Some((n, bytes)) = stack.pop() {
        let change =
            Change::from_bytes(bytes).map_err(|_| QuarantineError::Unreadable { id: n })?;
        queued.insert(change.hash());
        for dep in change.deps() {
            if doc.get_change_by_hash(dep).is_some() || queued.contains(dep) {
                continue;
            }
            match store.held_by_hash(doc_id, &dep.to_string())? {
                Some((h, b)) => stack.push((h.id, b)),
                None => return Err(QuarantineError::MissingDependency { id: n, dep: *dep }),
            }
        }
        chain.insert(n, change);
    }
    let ids: Vec<i64> = chain.keys().copied().collect();
    let mut fork = doc.fork();
    fork.apply_changes(chain.into_values().collect::<Vec<_>>())
        .map_err(|source| QuarantineError::Apply { id, source })?;
    let before = doc.get_heads();
    let new = fork.get_changes(&before);
    doc.apply_changes(new)
        .map_err(|source| QuarantineError::Apply { id, source })?;
    Ok(ids)
}

/// Accept or discard a held change on a store directly (the `admin` command). An accepted
/// change is saved into its document before it is marked accepted; a relay running on the
/// same data picks it up and sends it to its peers.
pub fn decide_offline(
    store: &mut Store,
    id: i64,
    decision: Decision,
    by: &str,
) -> Result<Vec<i64>, QuarantineError> {
    let now = chrono::Utc::now().timestamp();
    let (held, _) = store
        .held_change(id)?
        .ok_or(QuarantineError::NotFound(id))?;
    let ids = match decision {
        Decision::Discard => vec![id],
        Decision::Accept => {
            let doc_id: DocumentId = held
                .doc_id
                .parse()
                .map_err(|_| QuarantineError::NoDocument(held.doc_id.clone()))?;
            let mut stored = store
                .load_doc(&doc_id)?
                .ok_or_else(|| QuarantineError::NoDocument(held.doc_id.clone()))?;
            let ids = apply_held(store, &mut stored.doc, &held.doc_id, id)?;
            store.save_docs(vec![DocRecord {
                id: doc_id,
                coalition: &stored.coalition,
                kind: stored.kind,
                owner: stored.owner.as_deref(),
                doc: &mut stored.doc,
            }])?;
            ids
        }
    };
    let status = match decision {
        Decision::Accept => HeldStatus::Accepted,
        Decision::Discard => HeldStatus::Discarded,
    };
    for n in &ids {
        if !store.decide_held(*n, status, by, now)? && *n == id {
            return Err(QuarantineError::AlreadyDecided {
                id,
                status: held.status,
            });
        }
    }
    Ok(ids)
}

/// The quarantine's HTTP routes (coordinators only).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/coalitions/{id}/quarantine", get(list))
        .route("/api/v1/coalitions/{id}/quarantine/{n}", get(show))
        .route(
            "/api/v1/coalitions/{id}/quarantine/{n}/accept",
            post(accept),
        )
        .route(
            "/api/v1/coalitions/{id}/quarantine/{n}/discard",
            post(discard),
        )
}

/// The role that reviews the quarantine.
const COORDINATOR: &str = "coordinator";

/// The coalition of a request, if the device is a coordinator of it.
fn coordinator_of(device: &Device, id: &str) -> Result<DocumentId, AppError> {
    let coalition = crate::api::visible(&device.0, id)?;
    if device.0.role != COORDINATOR {
        return Err(AppError::Forbidden(format!(
            "only a coordinator may review the quarantine; this device's role is {}",
            device.0.role
        )));
    }
    Ok(coalition)
}

/// `?status=` of the list.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// `held` (default), `accepted`, `discarded` or `all`.
    pub status: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    device: Device,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<HeldChange>>, AppError> {
    let coalition = coordinator_of(&device, &id)?.to_string();
    let status = match q.status.as_deref() {
        None | Some("held") => Some(HeldStatus::Held),
        Some("accepted") => Some(HeldStatus::Accepted),
        Some("discarded") => Some(HeldStatus::Discarded),
        Some("all") => None,
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "`status` must be held, accepted, discarded or all, not `{other}`"
            )))
        }
    };
    let rows = state
        .with_store(move |store| {
            store
                .held_changes(Some(&coalition), status)
                .map_err(AppError::internal)
        })
        .await?;
    Ok(Json(rows))
}

async fn show(
    State(state): State<AppState>,
    device: Device,
    Path((id, n)): Path<(String, i64)>,
) -> Result<Json<HeldChange>, AppError> {
    let coalition = coordinator_of(&device, &id)?.to_string();
    let row = state
        .with_store(move |store| store.held_change(n).map_err(AppError::internal))
        .await?;
    match row {
        Some((held, _)) if held.coalition == coalition => Ok(Json(held)),
        _ => Err(QuarantineError::NotFound(n).into()),
    }
}

/// What a decision did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Decided {
    /// The numbers of the held changes decided (an accepted change brings the refused changes
    /// it builds on).
    pub decided: Vec<i64>,
    /// `accepted` or `discarded`.
    pub status: String,
}

async fn accept(
    state: State<AppState>,
    device: Device,
    path: Path<(String, i64)>,
) -> Result<Json<Decided>, AppError> {
    decide(state, device, path, Decision::Accept).await
}

async fn discard(
    state: State<AppState>,
    device: Device,
    path: Path<(String, i64)>,
) -> Result<Json<Decided>, AppError> {
    decide(state, device, path, Decision::Discard).await
}

async fn decide(
    State(state): State<AppState>,
    device: Device,
    Path((id, n)): Path<(String, i64)>,
    decision: Decision,
) -> Result<Json<Decided>, AppError> {
    let coalition = coordinator_of(&device, &id)?;
    let by = format!(
        "{} ({}), device {}",
        device.0.user, device.0.org, device.0.device_id
    );
    let (reply, answer) = oneshot::channel();
    let sent = state
        .hub()
        .send(Event::Quarantine {
            coalition,
            id: n,
            decision,
            by,
            reply,
        })
        .await;
    if !sent {
        return Err(AppError::internal(anyhow::anyhow!("the sync hub stopped")));
    }
    let decided = answer
        .await
        .map_err(|_| AppError::internal(anyhow::anyhow!("the sync hub stopped")))??;
    tracing::info!(device = %device.0.device_id, change = n, ?decision, "quarantine decision");
    Ok(Json(Decided {
        decided,
        status: match decision {
            Decision::Accept => "accepted".into(),
            Decision::Discard => "discarded".into(),
        },
    }))
}

/// `coalition-server admin quarantine …`.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// List quarantined changes (newest first).
    List {
        /// Only this coalition's.
        #[arg(long)]
        coalition: Option<String>,
        /// held (default), accepted, discarded or all.
        #[arg(long, default_value = "held")]
        status: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one quarantined change, with its raw bytes (hex).
    Show {
        /// Its number.
        id: i64,
    },
    /// Apply a quarantined change (and the refused changes of its document it builds on).
    Accept {
        /// Its number.
        id: i64,
        /// Who decides (recorded).
        #[arg(long, default_value = "administrator")]
        by: String,
    },
    /// Keep a quarantined change on record without applying it.
    Discard {
        /// Its number.
        id: i64,
        /// Who decides (recorded).
        #[arg(long, default_value = "administrator")]
        by: String,
    },
}

/// Run an `admin quarantine` command on the relay's data directory.
pub fn admin(data: &std::path::Path, command: AdminCommand) -> anyhow::Result<()> {
    let mut store = Store::open(data)?;
    match command {
        AdminCommand::List {
            coalition,
            status,
            json,
        } => {
            let status = match status.as_str() {
                "held" => Some(HeldStatus::Held),
                "accepted" => Some(HeldStatus::Accepted),
                "discarded" => Some(HeldStatus::Discarded),
                "all" => None,
                other => anyhow::bail!(
                    "--status must be held, accepted, discarded or all, not `{other}`"
                ),
            };
            let rows = store.held_changes(coalition.as_deref(), status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no changes in quarantine");
            } else {
                for r in rows {
                    println!(
                        "#{} {} doc {} change {} by {}: {}",
                        r.id,
                        r.status,
                        r.doc_id,
                        &r.hash[..12.min(r.hash.len())],
                        r.author.as_deref().unwrap_or(&r.actor),
                        r.reason
                    );
                }
            }
        }
        AdminCommand::Show { id } => {
            let (held, _) = store
                .held_change(id)?
                .ok_or(QuarantineError::NotFound(id))?;
            println!("{}", serde_json::to_string_pretty(&held)?);
        }
        AdminCommand::Accept { id, by } => {
            let ids = decide_offline(&mut store, id, Decision::Accept, &by)?;
            println!(
                "accepted {}; a running relay sends it to devices within a second",
                list_ids(&ids)
            );
        }
        AdminCommand::Discard { id, by } => {
            let ids = decide_offline(&mut store, id, Decision::Discard, &by)?;
            println!("discarded {}", list_ids(&ids));
        }
    }
    Ok(())
}

fn list_ids(ids: &[i64]) -> String {
    ids.iter()
        .map(|n| format!("#{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
