//! The HTTP routes: enrollment, the JSON views under `/api/v1`, health, metrics and `/sync`.
//!
//! Every route but `/healthz`, `/metrics` and `/api/v1/enroll` takes the device credential in
//! `Authorization: Bearer <credential>` or, for browsers that cannot set headers on a
//! WebSocket, in `?token=<credential>`. A device sees only its coalitions: any other id is
//! `not_found`, exactly as a missing one.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDate;
use coalition_core::report::{conflicts, history, HistoryFilter, Report};
use coalition_core::store::{Store, StoreError};
use coalition_core::sync::DocumentId;
use coalition_core::transport::enroll::KnownDocument;
use coalition_core::Coalition;
use serde::{Deserialize, Serialize};

use crate::auth::DeviceAuth;
use crate::error::AppError;
use crate::state::AppState;
use crate::ws;

/// Build the relay's router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/sync", get(ws::sync))
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/coalitions", get(list_coalitions))
        .route("/api/v1/coalitions/{id}/report", get(report))
        .route("/api/v1/coalitions/{id}/conflicts", get(list_conflicts))
        .route("/api/v1/coalitions/{id}/history", get(list_history))
        .route("/api/v1/coalitions/{id}/at", get(at_date))
        .merge(crate::dashboard::routes())
        .merge(crate::quarantine::routes())
        .fallback(|| async { AppError::NotFound("no such route".into()) })
        .with_state(state)
}

/// The authenticated device of a request.
#[derive(Debug, Clone)]
pub struct Device(pub Arc<DeviceAuth>);

/// The credential of a request: the bearer header, else the `token` query parameter.
pub fn credential(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .ok()
        .and_then(|Query(q)| q.get("token").cloned())
}

impl FromRequestParts<AppState> for Device {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let credential = credential(&parts.headers, &parts.uri).ok_or(AppError::Unauthorized)?;
        Ok(Device(state.authenticate(credential).await?))
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics().render(),
    )
}

/// `POST /api/v1/enroll` body.
#[derive(Debug, Deserialize)]
pub struct EnrollRequest {
    /// The invite code.
    pub invite: String,
    /// The device's name.
    pub device: String,
    /// The device's automerge actor id, 32 hex digits.
    pub actor: String,
    /// True for a client that makes a new actor per document (a stock automerge-repo
    /// client): actors first seen on its connections are then bound to it. Without it, the
    /// device must make every change with `actor`, and changes by unknown actors are refused.
    #[serde(default)]
    pub random_actors: bool,
}

/// `POST /api/v1/enroll` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device credential.
    pub credential: String,
    /// The device id.
    pub device_id: String,
    /// The person.
    pub user: String,
    /// The organisation.
    pub org: String,
    /// The role.
    pub role: String,
    /// Manifest ids of the coalitions the device may sync.
    pub coalitions: Vec<String>,
    /// The relay's peer id in the sync protocol.
    pub server_peer_id: String,
    /// The relay's storage id in the sync protocol: with it (and the peer id) a device offers
    /// its documents along with its first `join`, without waiting for the relay's `peer`.
    pub server_storage_id: String,
    /// The documents held for those coalitions (any member may read them all): a new device
    /// asks for every one in its first flight.
    pub documents: Vec<KnownDocument>,
}

/// `POST /api/v1/enroll`; also what [`crate::quic`] answers an enrollment with.
pub(crate) async fn enroll(
    State(state): State<AppState>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<EnrollResponse>, AppError> {
    let Json(req) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let enrolled = state
        .with_auth(move |db| {
            Ok(db.enroll_with(&req.invite, &req.device, &req.actor, req.random_actors)?)
        })
        .await?;
    state
        .metrics()
        .enrollments
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(device = %enrolled.device_id, user = %enrolled.user, org = %enrolled.org, "device enrolled");
    let coalitions = enrolled.coalitions.clone();
    let documents = state
        .with_store(move |store| {
            let mut out = Vec::new();
            for coalition in &coalitions {
                // The device learns the documents from the manifest a round trip later.
                let Ok(id) = coalition.parse::<DocumentId>() else {
                    tracing::warn!(%coalition, "an enrollment names a coalition id that does not parse");
                    continue;
                };
                for (doc, kind, owner) in store.doc_infos(&id).map_err(AppError::internal)? {
                    out.push(KnownDocument {
                        id: doc.to_string(),
                        coalition: coalition.clone(),
                        kind,
                        owner,
                    });
                }
            }
            Ok(out)
        })
        .await?;
    Ok(Json(EnrollResponse {
        credential: enrolled.credential,
        device_id: enrolled.device_id,
        user: enrolled.user,
        org: enrolled.org,
        role: enrolled.role,
        coalitions: enrolled.coalitions,
        server_peer_id: state.server_peer_id().to_string(),
        server_storage_id: state.server_storage_id().to_string(),
        documents,
    }))
}

/// One coalition in `GET /api/v1/coalitions`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct CoalitionSummary {
    /// The manifest id.
    pub id: String,
    /// Its `automerge:` URL.
    pub url: String,
    /// The name.
    pub name: String,
    /// The affected state.
    pub affected_state: String,
    /// Documents the relay stores for it.
    pub documents: usize,
}

async fn list_coalitions(
    State(state): State<AppState>,
    Device(device): Device,
) -> Result<Json<Vec<CoalitionSummary>>, AppError> {
    let ids: Vec<DocumentId> = device.coalitions.iter().copied().collect();
    let list = state
        .with_store(move |store| {
            let mut out = Vec::new();
            for id in ids {
                let coalition = match store.load(&id) {
                    Ok(c) => c,
                    // Enrolled for a coalition the relay does not hold (yet): nothing to show.
                    Err(StoreError::UnknownCoalition(_)) => continue,
                    Err(e) => return Err(AppError::internal(e)),
                };
                let info = coalition.info().map_err(AppError::internal)?;
                out.push(CoalitionSummary {
                    id: id.to_string(),
                    url: id.to_url(),
                    name: info.name,
                    affected_state: info.affected_state,
                    documents: coalition.docs().count(),
                });
            }
            Ok(out)
        })
        .await?;
    Ok(Json(list))
}

/// Parse a coalition id the device may see.
pub(crate) fn visible(device: &DeviceAuth, id: &str) -> Result<DocumentId, AppError> {
    let id = DocumentId::parse_id_or_url(id)
        .map_err(|e| AppError::BadRequest(format!("`{id}` is not a coalition id: {e}")))?;
    if !device.coalitions.contains(&id) {
        return Err(AppError::NotFound(format!("no coalition {id}")));
    }
    Ok(id)
}

pub(crate) fn load(store: &mut Store, id: &DocumentId) -> Result<Coalition, AppError> {
    store.load(id).map_err(|e| match e {
        StoreError::UnknownCoalition(_) => AppError::NotFound(format!("no coalition {id}")),
        other => AppError::internal(other),
    })
}

pub(crate) fn parse_date(field: &str, text: Option<&str>) -> Result<NaiveDate, AppError> {
    match text {
        None | Some("") => Ok(chrono::Utc::now().date_naive()),
        Some(t) => NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .map_err(|_| AppError::BadRequest(format!("`{field}` must be a date YYYY-MM-DD"))),
    }
}

/// Query of `/report`.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    /// The date the report is as of (default today).
    pub as_of: Option<String>,
}

async fn report(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Report>, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let id = visible(&device, &id)?;
    let as_of = parse_date("as_of", q.as_of.as_deref())?;
    let report = state
        .with_store(move |store| {
            let coalition = load(store, &id)?;
            Report::build(&coalition, as_of).map_err(AppError::internal)
        })
        .await?;
    Ok(Json(report))
}

async fn list_conflicts(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
) -> Result<Json<Vec<coalition_core::report::Conflict>>, AppError> {
    let id = visible(&device, &id)?;
    let list = state
        .with_store(move |store| {
            let mut coalition = load(store, &id)?;
            conflicts(&mut coalition).map_err(AppError::internal)
        })
        .await?;
    Ok(Json(list))
}

/// Query of `/history`; empty fields match everything.
#[derive(Debug, Deserialize, Default)]
pub struct HistoryQuery {
    /// Only this entity id.
    pub entity: Option<String>,
    /// Only this organisation.
    pub org: Option<String>,
    /// Only this person.
    pub user: Option<String>,
    /// Only this entity kind (collection).
    pub kind: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

async fn list_history(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<coalition_core::report::HistoryEntry>>, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let id = visible(&device, &id)?;
    let filter = HistoryFilter {
        entity_id: non_empty(q.entity),
        org: non_empty(q.org),
        user: non_empty(q.user),
        entity: non_empty(q.kind),
        since: None,
        until: None,
    };
    let list = state
        .with_store(move |store| {
            let mut coalition = load(store, &id)?;
            history(&mut coalition, &filter).map_err(AppError::internal)
        })
        .await?;
    Ok(Json(list))
}

/// Query of `/at`.
#[derive(Debug, Deserialize)]
pub struct AtQuery {
    /// The date, YYYY-MM-DD.
    pub date: Option<String>,
}

async fn at_date(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
    query: Result<Query<AtQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Report>, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let id = visible(&device, &id)?;
    let Some(date) = q.date.as_deref().filter(|d| !d.is_empty()) else {
        return Err(AppError::BadRequest(
            "`date` (YYYY-MM-DD) is required".into(),
        ));
    };
    let date = parse_date("date", Some(date))?;
    // The plan as it was at the end of that day, as `coalition at` shows it.
    let end_of_day = date
        .and_hms_opt(23, 59, 59)
        .map(|d| d.and_utc().timestamp())
        .unwrap_or(0);
    let report = state
        .with_store(move |store| {
            let mut coalition = load(store, &id)?;
            let past = coalition.at_time(end_of_day).map_err(|e| match e {
                coalition_core::EditError::NotYetCreated { .. } => {
                    AppError::NotFound(format!("coalition {id} did not exist on {date}"))
                }
                other => AppError::internal(other),
            })?;
            Report::build(&past, date).map_err(AppError::internal)
        })
        .await?;
    Ok(Json(report))
}
