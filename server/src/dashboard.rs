//! The coordinators' dashboard: a web page served at `/`, and the JSON views it reads besides
//! the `/api/v1` ones of [`crate::api`].
//!
//! Every asset is compiled into the binary (`server/assets/`): the relay works with no internet
//! access, so there is no CDN, web font or map tile. The page is plain HTML, CSS and a
//! hand-written script that draws its charts and the hazard map as inline SVG and never puts
//! data into markup (text nodes only). It signs in with a device credential, or enrolls with an
//! invite through `POST /api/v1/enroll`, and then has exactly the rights of that device in the
//! API: the same coalitions, and conflict resolution only for the `coordinator` role.
//!
//! Routes added here:
//! - `GET /`, `GET /assets/{file}`: the page;
//! - `GET /api/v1/me`: who the credential belongs to;
//! - `GET /api/v1/coalitions/{id}/areas`: hazard areas with their polygons;
//! - `GET /api/v1/coalitions/{id}/health`: devices, last seen, pending approvals, conflicts;
//! - `GET /api/v1/coalitions/{id}/article7?as_of=&format=json|md|html`: forms F–I;
//! - `POST /api/v1/coalitions/{id}/conflicts/resolve`: keep one value of a conflict;
//! - `GET /api/v1/coalitions/{id}/events`: live updates (see [`crate::events`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coalition_core::geo::parse_area_geometry;
use coalition_core::model::{AreaStatus, HazardClass};
use coalition_core::report::{conflicts, Article7, Report, State as PlanState};
use coalition_core::resolve::Choice;
use coalition_core::sync::DocumentId;
use coalition_core::Identity;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::api::{load, parse_date, visible, Device};
use crate::error::AppError;
use crate::hub::Event;
use crate::state::AppState;

/// The role that may resolve conflicts from the dashboard.
pub const COORDINATOR: &str = "coordinator";

/// The device name the dashboard's changes are attributed to.
pub const DASHBOARD_DEVICE: &str = "dashboard";

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const ICON_SVG: &str = include_str!("../assets/icon.svg");

/// The page's content security policy: nothing but this relay, no inline script or style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The dashboard's routes, merged into [`crate::api::app`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/v1/me", get(me))
        .route("/api/v1/coalitions/{id}/areas", get(areas))
        .route("/api/v1/coalitions/{id}/health", get(health))
        .route("/api/v1/coalitions/{id}/article7", get(article7))
        .route(
            "/api/v1/coalitions/{id}/conflicts/resolve",
            post(resolve_conflict),
        )
        .route("/api/v1/coalitions/{id}/events", get(crate::events::events))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("content-security-policy"), CSP),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(Path(file): Path<String>) -> Result<Response, AppError> {
    match file.as_str() {
        "app.js" => Ok(page("text/javascript; charset=utf-8", APP_JS)),
        "app.css" => Ok(page("text/css; charset=utf-8", APP_CSS)),
        "icon.svg" => Ok(page("image/svg+xml", ICON_SVG)),
        _ => Err(AppError::NotFound(format!("no asset {file}"))),
    }
}

/// `GET /api/v1/me`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Me {
    /// The device id.
    pub device_id: String,
    /// The person.
    pub user: String,
    /// The organisation.
    pub org: String,
    /// The role the device was invited with.
    pub role: String,
    /// Whether the dashboard offers conflict resolution (coordinators only).
    pub can_resolve: bool,
    /// The coalitions (manifest ids).
    pub coalitions: Vec<String>,
}

async fn me(Device(device): Device) -> Json<Me> {
    Json(Me {
        device_id: device.device_id.clone(),
        user: device.user.clone(),
        org: device.org.clone(),
        role: device.role.clone(),
        can_resolve: device.role == COORDINATOR,
        coalitions: device.coalitions.iter().map(|c| c.to_string()).collect(),
    })
}

/// One hazard area with its polygons, for the map.
#[derive(Debug, Serialize, Deserialize)]
pub struct AreaView {
    /// Entity id.
    pub id: String,
    /// Display code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Administrative area.
    pub admin_area: String,
    /// SHA or CHA.
    pub class: HazardClass,
    /// Status.
    pub status: AreaStatus,
    /// Priority, 1 (highest) to 5.
    pub priority: i64,
    /// Baseline m².
    pub baseline_m2: i64,
    /// Baseline less approved releases, m².
    pub remaining_m2: i64,
    /// Hazard types.
    pub hazard_types: Vec<String>,
    /// Every ring (exteriors and holes), `[lon, lat]` positions; empty when the geometry is
    /// not valid.
    pub rings: Vec<Vec<[f64; 2]>>,
    /// Why the geometry cannot be drawn, when it cannot.
    pub geometry_error: Option<String>,
}

/// `GET /api/v1/coalitions/{id}/areas`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AreasView {
    /// `[min_lon, min_lat, max_lon, max_lat]` of every drawable area, if any.
    pub bbox: Option<[f64; 4]>,
    /// The areas, by code.
    pub areas: Vec<AreaView>,
}

fn areas_of(state: &PlanState) -> AreasView {
    let mut released: BTreeMap<&str, i64> = BTreeMap::new();
    for e in state.effective_releases().values() {
        *released.entry(e.area_id.as_str()).or_default() += e.released_m2();
    }
    let mut bbox: Option<[f64; 4]> = None;
    let mut areas: Vec<AreaView> = state
        .hazard_areas
        .values()
        .map(|a| {
            let (rings, geometry_error) = match parse_area_geometry(&a.geometry) {
                Ok(g) => {
                    let b = g.bbox();
                    bbox = Some(match bbox {
                        None => b,
                        Some(o) => [
                            o[0].min(b[0]),
                            o[1].min(b[1]),
                            o[2].max(b[2]),
                            o[3].max(b[3]),
                        ],
                    });
                    (g.rings().map(<[[f64; 2]]>::to_vec).collect(), None)
                }
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            AreaView {
                id: a.id.clone(),
                code: a.code.clone(),
                name: a.name.clone(),
                admin_area: a.admin_area.clone(),
                class: a.class,
                status: a.status,
                priority: a.priority,
                baseline_m2: a.baseline_m2,
                remaining_m2: (a.baseline_m2 - released.get(a.id.as_str()).copied().unwrap_or(0))
                    .max(0),
                hazard_types: a.hazard_types.clone(),
                rings,
                geometry_error,
            }
        })
        .collect();
    areas.sort_by(|a, b| (&a.code, &a.id).cmp(&(&b.code, &b.id)));
    AreasView { bbox, areas }
}

async fn areas(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
) -> Result<Json<AreasView>, AppError> {
    let id = visible(&device, &id)?;
    let view = state
        .with_store(move |store| {
            let coalition = load(store, &id)?;
            let plan = PlanState::of(&coalition).map_err(AppError::internal)?;
            Ok(areas_of(&plan))
        })
        .await?;
    Ok(Json(view))
}

/// A device as sync health shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceHealth {
    /// The device id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The person.
    pub user: String,
    /// The organisation.
    pub org: String,
    /// The role.
    pub role: String,
    /// Unix time of enrollment.
    pub enrolled_at: i64,
    /// Unix time of its last authenticated request or sync connection.
    pub last_seen_at: Option<i64>,
    /// Unix time of revocation.
    pub revoked_at: Option<i64>,
}

/// `GET /api/v1/coalitions/{id}/health`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Health {
    /// Devices enrolled in the coalition.
    pub devices: Vec<DeviceHealth>,
    /// Land release entries awaiting approval.
    pub pending_approvals: usize,
    /// m² in those entries.
    pub pending_m2: i64,
    /// Fields in conflict.
    pub open_conflicts: usize,
    /// Documents the relay refused since it started (pushed for a coalition the device is not
    /// in); relay-wide.
    pub refused_documents: u64,
    /// Documents the relay saved since it started; relay-wide.
    pub saved_documents: u64,
    /// Open sync connections; relay-wide.
    pub connections: i64,
}

async fn health(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
) -> Result<Json<Health>, AppError> {
    let id = visible(&device, &id)?;
    let devices = state
        .with_auth(move |db| Ok(db.devices(Some(&id))?))
        .await?
        .into_iter()
        .map(|d| DeviceHealth {
            id: d.id,
            name: d.name,
            user: d.user,
            org: d.org,
            role: d.role,
            enrolled_at: d.enrolled_at,
            last_seen_at: d.last_seen_at,
            revoked_at: d.revoked_at,
        })
        .collect();
    let (pending_approvals, pending_m2, open_conflicts) = state
        .with_store(move |store| {
            let mut coalition = load(store, &id)?;
            let report = Report::build(&coalition, chrono::Utc::now().date_naive())
                .map_err(AppError::internal)?;
            let open = conflicts(&mut coalition).map_err(AppError::internal)?.len();
            Ok((
                report.clearance.pending_entries,
                report.clearance.pending_m2,
                open,
            ))
        })
        .await?;
    let metrics = state.metrics();
    Ok(Json(Health {
        devices,
        pending_approvals,
        pending_m2,
        open_conflicts,
        refused_documents: metrics.documents_refused.load(Ordering::Relaxed),
        saved_documents: metrics.documents_saved.load(Ordering::Relaxed),
        connections: metrics.connections.load(Ordering::Relaxed),
    }))
}

/// Query of `/article7`.
#[derive(Debug, Deserialize)]
pub struct Article7Query {
    /// The date the forms are drafted as of (default today).
    pub as_of: Option<String>,
    /// `json` (default), `md` or `html`.
    pub format: Option<String>,
}

async fn article7(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
    query: Result<Query<Article7Query>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = query.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let id = visible(&device, &id)?;
    let as_of = parse_date("as_of", q.as_of.as_deref())?;
    let format = q.format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "md" | "html") {
        return Err(AppError::BadRequest(
            "`format` must be json, md or html".into(),
        ));
    }
    let forms = state
        .with_store(move |store| {
            let coalition = load(store, &id)?;
            let plan = PlanState::of(&coalition).map_err(AppError::internal)?;
            let report = Report::from_state(coalition.id().to_string(), &plan, as_of);
            Ok(Article7::draft(&plan, &report, as_of))
        })
        .await?;
    let file = format!("article7-{}-{}", safe_name(&forms.state), forms.year);
    Ok(match format.as_str() {
        "md" => (
            [
                (CONTENT_TYPE, "text/markdown; charset=utf-8".to_string()),
                (
                    CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}.md\""),
                ),
            ],
            forms.to_markdown(),
        )
            .into_response(),
        "html" => (
            [
                (CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
                (
                    CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}.html\""),
                ),
                (
                    HeaderName::from_static("content-security-policy"),
                    "default-src 'none'; style-src 'unsafe-inline'".to_string(),
                ),
            ],
            article7_html(&forms, as_of),
        )
            .into_response(),
        _ => Json(forms).into_response(),
    })
}

/// Letters, digits and dashes only: the value goes into a header.
fn safe_name(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// Escape text for HTML content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn num(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn row(html: &mut String, cells: &[String], numeric_from: usize) {
    html.push_str("<tr>");
    for (i, c) in cells.iter().enumerate() {
        if i >= numeric_from {
            let _ = write!(html, "<td class=\"n\">{}</td>", escape_html(c));
        } else {
            let _ = write!(html, "<td>{}</td>", escape_html(c));
        }
    }
    html.push_str("</tr>\n");
}

fn head(html: &mut String, cells: &[&str]) {
    html.push_str("<thead><tr>");
    for c in cells {
        let _ = write!(html, "<th scope=\"col\">{}</th>", escape_html(c));
    }
    html.push_str("</tr></thead>\n");
}

/// The forms as a self-contained printable HTML page; every text is escaped.
pub fn article7_html(forms: &Article7, as_of: chrono::NaiveDate) -> String {
    let title = format!(
        "Article 7 report (draft) — {} — {}",
        forms.state, forms.year
    );
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>\
         body{{font:11pt/1.4 system-ui,sans-serif;margin:2em;color:#111}}\
         h1{{font-size:16pt}}h2{{font-size:13pt;margin-top:1.6em;border-bottom:1px solid #999}}\
         table{{border-collapse:collapse;width:100%;margin:.6em 0}}\
         th,td{{border:1px solid #bbb;padding:.25em .4em;text-align:left;vertical-align:top}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
         .meta{{color:#444}}@media print{{body{{margin:0}}h2{{break-after:avoid}}tr{{break-inside:avoid}}}}\
         </style></head><body>\n<h1>{t}</h1>\n<p class=\"meta\">Drafted from the coalition's plan as of {d}. For review by the national authority.</p>\n",
        t = escape_html(&title),
        d = as_of
    );
    let f = &forms.form_f;
    h.push_str("<h2>Form F — Cluster munition contaminated areas and clearance</h2>\n");
    let _ = writeln!(
        h,
        "<p>Remaining: {} m² suspected (SHA), {} m² confirmed (CHA). Deadline in force: {}. Projected completion: {}.</p>",
        num(f.remaining_sha_m2),
        num(f.remaining_cha_m2),
        escape_html(f.deadline.as_deref().unwrap_or("not set")),
        escape_html(
            f.projected_completion
                .as_deref()
                .unwrap_or("no release in the last 12 months")
        )
    );
    h.push_str("<table>");
    head(
        &mut h,
        &[
            "Code",
            "Name",
            "Area",
            "Class",
            "Baseline m²",
            "Remaining m²",
            "Status",
        ],
    );
    h.push_str("<tbody>\n");
    for a in &f.areas {
        row(
            &mut h,
            &[
                a.code.clone(),
                a.name.clone(),
                a.admin_area.clone(),
                a.class.as_str().to_uppercase(),
                num(a.baseline_m2),
                num(a.remaining_m2),
                a.status.to_string(),
            ],
            usize::MAX,
        );
    }
    h.push_str("</tbody></table>\n<table>");
    head(
        &mut h,
        &[
            "Year",
            "Cancelled m²",
            "Reduced m²",
            "Cleared m²",
            "Items destroyed",
        ],
    );
    h.push_str("<tbody>\n");
    for y in &f.released_by_year {
        row(
            &mut h,
            &[
                y.year.to_string(),
                num(y.cancelled_m2),
                num(y.reduced_m2),
                num(y.cleared_m2),
                num(y.items),
            ],
            1,
        );
    }
    h.push_str("</tbody></table>\n");
    if !f.items_by_type.is_empty() {
        let items: Vec<String> = f
            .items_by_type
            .iter()
            .map(|(k, v)| format!("{k} {}", num(*v)))
            .collect();
        let _ = writeln!(
            h,
            "<p>Items destroyed by type: {}.</p>",
            escape_html(&items.join(", "))
        );
    }
    h.push_str("<h2>Form G — Risk reduction education</h2>\n");
    let narrative = forms.form_g.narrative.trim();
    if narrative.is_empty() {
        h.push_str("<p>(no narrative yet)</p>\n");
    } else {
        for para in narrative.split("\n\n") {
            let _ = writeln!(h, "<p>{}</p>", escape_html(para));
        }
    }
    h.push_str("<h2>Form H — Victim assistance</h2>\n<table>");
    head(
        &mut h,
        &["Year", "Killed", "Injured", "Survivors", "Assisted"],
    );
    h.push_str("<tbody>\n");
    let cell = |v: Option<i64>| v.map(num).unwrap_or_else(|| "–".into());
    for y in &forms.form_h.years {
        row(
            &mut h,
            &[
                y.year.to_string(),
                cell(y.killed),
                cell(y.injured),
                cell(y.survivors),
                cell(y.assisted),
            ],
            1,
        );
    }
    h.push_str("</tbody></table>\n<h2>Form I — Resources and cooperation</h2>\n<table>");
    head(
        &mut h,
        &["Source", "Pillar", "Years", "Amount", "Currency", "Status"],
    );
    h.push_str("<tbody>\n");
    for l in &forms.form_i.lines {
        row(
            &mut h,
            &[
                l.source.clone(),
                l.pillar.clone(),
                l.years.clone(),
                num(l.amount),
                l.currency.clone(),
                l.status.clone(),
            ],
            3,
        );
    }
    h.push_str("</tbody></table>\n");
    let gaps: Vec<String> = forms
        .form_i
        .gap_by_pillar_usd
        .iter()
        .map(|(p, g)| format!("{p} {}", num(g.round() as i64)))
        .collect();
    let _ = writeln!(
        h,
        "<p>Unfunded needs (USD): {}.</p>\n</body></html>",
        escape_html(&gaps.join(", "))
    );
    h
}

/// `POST /api/v1/coalitions/{id}/conflicts/resolve` body: the conflict as
/// `GET /conflicts` lists it, and the change that wrote the value to keep.
#[derive(Debug, Deserialize)]
pub struct ResolveRequest {
    /// The document id holding the conflict.
    pub doc: String,
    /// The collection.
    pub collection: String,
    /// The entity id.
    pub id: String,
    /// The field (`*` for a whole entity).
    pub field: String,
    /// The change hash of the value to keep.
    pub change: String,
}

/// `POST /api/v1/coalitions/{id}/conflicts/resolve` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResolveResponse {
    /// The change that resolved it, hex.
    pub change: String,
}

/// The actor the dashboard writes with for a device: derived from the device id, so each
/// device's decisions are attributable to it and never share an actor with a device's own
/// changes (two writers on one actor would reuse sequence numbers).
pub fn dashboard_actor(device_id: &str) -> String {
    let digest = Sha256::digest(format!("coalition-dashboard:{device_id}").as_bytes());
    hex::encode(&digest[..16])
}

async fn resolve_conflict(
    State(state): State<AppState>,
    Device(device): Device,
    Path(id): Path<String>,
    body: Result<Json<ResolveRequest>, JsonRejection>,
) -> Result<Json<ResolveResponse>, AppError> {
    let coalition = visible(&device, &id)?;
    if device.role != COORDINATOR {
        return Err(AppError::Forbidden(format!(
            "only a coordinator may resolve conflicts; this device's role is {}",
            device.role
        )));
    }
    let Json(req) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let doc = DocumentId::parse_id_or_url(&req.doc)
        .map_err(|e| AppError::BadRequest(format!("`doc` is not a document id: {e}")))?;
    let is_hash = req.change.len() == 64 && req.change.chars().all(|c| c.is_ascii_hexdigit());
    if !is_hash {
        return Err(AppError::BadRequest(
            "`change` must be a change hash (64 hex digits)".into(),
        ));
    }
    let actor = dashboard_actor(&device.device_id);
    let who = Identity {
        user: device.user.clone(),
        org: device.org.clone(),
        device: DASHBOARD_DEVICE.into(),
        actor: actor.clone(),
    };
    let (reply, answer) = oneshot::channel();
    let sent = state
        .hub()
        .send(Event::Resolve {
            coalition,
            doc,
            who,
            choice: Choice {
                collection: req.collection,
                id: req.id,
                field: req.field,
                change: req.change,
            },
            reply,
        })
        .await;
    if !sent {
        return Err(AppError::internal(anyhow::anyhow!("the sync hub stopped")));
    }
    let change = answer
        .await
        .map_err(|_| AppError::internal(anyhow::anyhow!("the sync hub stopped")))??;
    // Record the actor as the device's, as for actors seen in a device's own changes.
    let device_id = device.device_id.clone();
    if let Err(error) = state
        .with_auth(move |db| Ok(db.bind_actor(&actor, &device_id)?))
        .await
    {
        tracing::warn!(%error, "cannot record the dashboard's actor");
    }
    tracing::info!(device = %device.device_id, user = %device.user, %change, "conflict resolved from the dashboard");
    Ok(Json(ResolveResponse { change }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape_html(r#"<img src=x onerror="a">&'"#),
            "&lt;img src=x onerror=&quot;a&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(num(0), "0");
        assert_eq!(num(1234567), "1,234,567");
        assert_eq!(num(-1000), "-1,000");
        assert_eq!(num(999), "999");
    }

    #[test]
    fn the_dashboard_actor_is_stable_and_per_device() {
        assert_eq!(dashboard_actor("a"), dashboard_actor("a"));
        assert_ne!(dashboard_actor("a"), dashboard_actor("b"));
        assert_eq!(dashboard_actor("a").len(), 32);
    }
}
