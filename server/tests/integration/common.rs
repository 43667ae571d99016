//! Helpers shared by the tests: a relay on a temporary data directory, enrollment, timeouts.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use coalition_core::model::{OrgKind, TreatyStatus};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;
use coalition_server::admin::{self, NewCoalition};
use coalition_server::auth::InviteSpec;
use coalition_server::{app, AppState, Relay, RelayConfig};
use http_body_util::BodyExt;
use tempfile::TempDir;
use tower::ServiceExt;

/// Every await in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Await `f`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(f: F) -> Result<F::Output> {
    tokio::time::timeout(TIMEOUT, f).await.context("timed out")
}

/// A relay started on a temporary data directory.
pub struct TestRelay {
    /// The data directory.
    pub dir: TempDir,
    /// The relay.
    pub relay: Relay,
}

impl TestRelay {
    /// A relay holding one coalition created by `MCA-BA` (returned).
    pub async fn with_coalition() -> Result<(TestRelay, DocumentId)> {
        TestRelay::with_coalition_and(100).await
    }

    /// Like [`TestRelay::with_coalition`], keeping at most `max_docs` documents in memory.
    pub async fn with_coalition_and(max_docs: usize) -> Result<(TestRelay, DocumentId)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_path_buf();
        let id = within(tokio::task::spawn_blocking(
            move || -> Result<DocumentId> {
                let mut store = Store::open(&path)?;
                let auth = coalition_server::auth::AuthDb::open(&path)?;
                Ok(admin::create_coalition(
                    &mut store,
                    &auth,
                    &NewCoalition {
                        state: "BA".into(),
                        name: "Test coalition".into(),
                        org: "MCA-BA".into(),
                        org_name: "Ministry of Civil Affairs".into(),
                        org_kind: OrgKind::AffectedState,
                        user: "amra".into(),
                        treaty_status: TreatyStatus::StateParty,
                    },
                    1_700_000_000,
                )?)
            },
        ))
        .await???;
        let relay = TestRelay::start_with(dir, max_docs).await?;
        Ok((relay, id))
    }

    /// Start a relay on an existing data directory.
    pub async fn start(dir: TempDir) -> Result<TestRelay> {
        TestRelay::start_with(dir, 100).await
    }

    /// Start a relay on an existing data directory, keeping at most `max_docs` in memory.
    pub async fn start_with(dir: TempDir, max_docs: usize) -> Result<TestRelay> {
        let relay = within(Relay::start(RelayConfig {
            data: dir.path().to_path_buf(),
            max_docs,
            limits: coalition_server::limits::Limits::default(),
        }))
        .await??;
        Ok(TestRelay { dir, relay })
    }

    /// The shared state.
    pub fn state(&self) -> AppState {
        self.relay.state()
    }
}

/// Create an invite directly in the auth database, expiring at unix time `expires_at`.
pub async fn invite_at(
    state: &AppState,
    coalition: DocumentId,
    org: &str,
    role: &str,
    expires_at: i64,
) -> Result<String> {
    let spec = InviteSpec {
        coalition,
        user: format!("{}-person", org.to_lowercase()),
        org: org.into(),
        role: role.into(),
    };
    let invite = within(state.with_auth(move |db| Ok(db.create_invite(&spec, expires_at)?)))
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(invite.code)
}

/// An invite valid for an hour.
pub async fn invite(
    state: &AppState,
    coalition: DocumentId,
    org: &str,
    role: &str,
) -> Result<String> {
    invite_at(
        state,
        coalition,
        org,
        role,
        chrono::Utc::now().timestamp() + 3600,
    )
    .await
}

/// A random actor id, hex.
pub fn actor() -> String {
    admin::random_actor()
}

/// Send one request through the router; returns the status and the JSON body (or the text
/// as a JSON string when the body is not JSON).
pub async fn call(
    state: &AppState,
    request: Request<Body>,
) -> Result<(StatusCode, serde_json::Value)> {
    let response = within(app(state.clone()).oneshot(request)).await??;
    let status = response.status();
    let bytes = within(response.into_body().collect()).await??.to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, value))
}

/// `POST /api/v1/enroll`, as a client that makes a new actor per document (the tests' clients
/// write with random actors, which the relay then binds to the device).
pub async fn enroll(
    state: &AppState,
    invite: &str,
    actor: &str,
) -> Result<(StatusCode, serde_json::Value)> {
    let body = serde_json::json!({
        "invite": invite,
        "device": "test tablet",
        "actor": actor,
        "random_actors": true,
    });
    call(
        state,
        Request::post("/api/v1/enroll")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))?,
    )
    .await
}

/// Enroll a device with a fresh invite and return its credential.
pub async fn credential(
    state: &AppState,
    coalition: DocumentId,
    org: &str,
    role: &str,
) -> Result<String> {
    let code = invite(state, coalition, org, role).await?;
    let (status, body) = enroll(state, &code, &actor()).await?;
    anyhow::ensure!(status == StatusCode::OK, "enroll: {status} {body}");
    body["credential"]
        .as_str()
        .map(str::to_string)
        .context("no credential")
}

/// `GET path` with a bearer credential.
pub async fn get(
    state: &AppState,
    path: &str,
    credential: &str,
) -> Result<(StatusCode, serde_json::Value)> {
    call(
        state,
        Request::get(path)
            .header("authorization", format!("Bearer {credential}"))
            .body(Body::empty())?,
    )
    .await
}
