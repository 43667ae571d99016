//! The router, through `oneshot`: enrollment, credentials, the JSON views, health, metrics.

use anyhow::Result;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::NaiveDate;
use coalition_core::report::{conflicts, history, HistoryFilter, Report};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;
use coalition_server::admin;
use coalition_server::auth::AuthDb;

use crate::common::*;

#[tokio::test]
async fn healthz_needs_no_credential() -> Result<()> {
    let (relay, _) = TestRelay::with_coalition().await?;
    let (status, body) = call(
        &relay.state(),
        Request::get("/healthz").body(Body::empty())?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    within(relay.relay.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn enroll_returns_a_credential_that_opens_the_api() -> Result<()> {
    let (relay, id) = TestRelay::with_coalition().await?;
    let state = relay.state();
    let code = invite(&state, id, "MCA-BA", "coordinator").await?;
    let actor = actor();
    let (status, body) = enroll(&state, &code, &actor).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["org"], "MCA-BA");
    assert_eq!(body["role"], "coordinator");
    assert_eq!(body["coalitions"], serde_json::json!([id.to_string()]));
    assert_eq!(body["server_peer_id"], state.server_peer_id());
    let credential = body["credential"].as_str().unwrap_or_default().to_string();
    assert!(credential.len() >= 64);

    let (status, list) = get(&state, "/api/v1/coalitions", &credential).await?;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list[0]["id"], id.to_string());
    assert_eq!(list[0]["name"], "Test coalition");

    // The token query parameter works as well as the header (browsers).
    let (status, _) = call(
        &state,
        Request::get(format!("/api/v1/coalitions?token={credential}")).body(Body::empty())?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);

    // The actor was registered to the device.
    let dir = relay.dir.path().to_path_buf();
    let devices = within(tokio::task::spawn_blocking(move || {
        AuthDb::open(&dir)?.devices(None)
    }))
    .await???;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].actors, vec![actor]);
    within(relay.relay.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_replayed_invite_is_refused_with_invite_used() -> Result<()> {
    let (relay, id) = TestRelay::with_coalition().await?;
    let state = relay.state();
    let code = invite(&state, id, "MCA-BA", "coordinator").await?;
    let (status, _) = enroll(&state, &code, &actor()).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = enroll(&state, &code, &actor()).await?;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "invite_used");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    within(relay.relay.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn an_expired_invite_is_refused_with_invite_expired() -> Result<()> {
    let (relay, id) = TestRelay::with_coalition().await?;
    let state = relay.state();
    let code = invite_at(
        &state,
        id,
        "MCA-BA",
        "coordinator",
        chrono::Utc::now().timestamp() - 10,
    )
    .await?;
    let (status, body) = enroll(&state, &code, &actor()).await?;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(body["error"]["code"], "invite_expired");
    within(relay.relay.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn malformed_enrollments_get_stable_codes() -> Result<()> {
    let (relay, id) = TestRelay::with_coalition().await?;
    let state = relay.state();
    let (status, body) = enroll(&state, "inv-nothing", &actor()).await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &"invalid_invite".into())
    );

    let code = invite(&state, id, "MCA-BA", "coordinator").await?;
    let (status, body) = enroll(&state, &code, "not-an-actor").await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &"bad_request".into())
    );

    let (status, body) = call(
        &state,
        Request::post("/api/v1/enroll")
            .header("content-type", "application/json")
            .body(Body::from("{\"invite\": 3}"))?,
    )
    .await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &"bad_request".into())
    );
    within(relay.relay.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_token_is_401_everywhere() -> Result<()> {
    let (relay, id) = TestRelay::with_coalition().await?;
    let state = relay.state();
    for path in [
        "/api/v1/coalitions".to_string(),
        format!("/api/v1/coalitions/{id}/report"),
        "/sync".to_string(),
    ] {
        let (status, body) = get(&state, &path, "cred-0000").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}");
        // No credential at all is the same.
        let (status, body) = call(&state, Request::get(&path).body(Body::empty())?).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}");
    }
    within(relay.relay.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_revoked_device_is_403_device_revoked() -> Result<()> {
    let (relay, id) = TestRelay::with_coalition().await?;
    let state = relay.state();
    let code = invite(&state, id, "MCA-BA", "coordinator").await?;
    let (_, body) = enroll(&state, &code, &actor()).await?;
    let credential = body["credential"].as_str().unwrap_or_default().to_string();
    let device = body["device_id"].as_str().unwrap_or_default().to_string();
    within(state.with_auth(move |db| Ok(db.revoke(&device)?))).await??;
    for path in ["/api/v1/coalitions", "/sync"] {
        let (status, body) = get(&state, path, &credential).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body["error"]["code"], "device_revoked", "{path}");
    }
    within(relay.relay.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn metrics_are_prometheus_text() -> Result<()> {
    let (relay, _) = TestRelay::with_coalition().await?;
    let response = within(tower::ServiceExt::oneshot(
        coalition_server::app(relay.state()),
        Request::get("/metrics").body(Body::empty())?,
    ))
    .await??;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()?
        .starts_with("text/plain"));
    let bytes = within(http_body_util::BodyExt::collect(response.into_body()))
        .await??
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec())?;
    for name in [
        "coalition_connections ",
        "coalition_documents_loaded ",
        "coalition_messages_in_total ",
        "coalition_bytes_out_total ",
        "coalition_sync_rounds_total ",
        "coalition_storage_write_seconds_count ",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    within(relay.relay.shutdown()).await?;
    Ok(())
}

/// The demo coalition on a relay, with a coordinator's credential.
async fn demo_relay() -> Result<(TestRelay, DocumentId, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    let setup = within(tokio::task::spawn_blocking(move || -> Result<_> {
        let mut store = Store::open(&path)?;
        let mut auth = AuthDb::open(&path)?;
        let now = chrono::Utc::now().timestamp();
        Ok(admin::setup_demo(&mut store, &mut auth, now + 3600, now)?)
    }))
    .await???;
    assert!(setup.created);
    assert_eq!(setup.invites.len(), 6);
    let relay = TestRelay::start(dir).await?;
    let state = relay.state();
    let (status, body) = enroll(&state, &setup.invites[0].1.code, &actor()).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Enrollment names the relay in the sync protocol and every document of the coalition
    // (16 in the demo), so that the device's first flight asks for all of them.
    assert_eq!(body["server_storage_id"], state.server_storage_id());
    let coalition = setup.coalition;
    let path = relay.dir.path().to_path_buf();
    let stored = within(tokio::task::spawn_blocking(move || -> Result<_> {
        Ok(Store::open(&path)?.doc_infos(&coalition)?)
    }))
    .await???;
    assert_eq!(stored.len(), 16);
    let listed: Vec<(String, String)> = body["documents"]
        .as_array()
        .map(|docs| {
            docs.iter()
                .map(|d| (d["id"].to_string(), d["kind"].to_string()))
                .collect()
        })
        .unwrap_or_default();
    let expected: Vec<(String, String)> = stored
        .iter()
        .map(|(doc, kind, _)| (format!("\"{doc}\""), format!("\"{kind}\"")))
        .collect();
    assert_eq!(listed, expected);
    let credential = body["credential"].as_str().unwrap_or_default().to_string();
    Ok((relay, setup.coalition, credential))
}

#[tokio::test]
async fn views_equal_the_core_views_on_the_same_documents() -> Result<()> {
    let (relay, id, credential) = demo_relay().await?;
    let state = relay.state();
    let path = relay.dir.path().to_path_buf();
    let expected = within(tokio::task::spawn_blocking(move || -> Result<_> {
        let mut coalition = Store::open(&path)?.load(&id)?;
        let as_of = NaiveDate::from_ymd_opt(2021, 12, 31).unwrap_or_default();
        let report = serde_json::to_value(Report::build(&coalition, as_of)?)?;
        let conflicts = serde_json::to_value(conflicts(&mut coalition)?)?;
        let filter = HistoryFilter {
            org: Some("BHMAC".into()),
            ..HistoryFilter::default()
        };
        let history = serde_json::to_value(history(&mut coalition, &filter)?)?;
        let day = NaiveDate::from_ymd_opt(2019, 6, 30).unwrap_or_default();
        let end = day
            .and_hms_opt(23, 59, 59)
            .unwrap_or_default()
            .and_utc()
            .timestamp();
        let at = serde_json::to_value(Report::build(&coalition.at_time(end)?, day)?)?;
        Ok((report, conflicts, history, at))
    }))
    .await???;

    let (status, report) = get(
        &state,
        &format!("/api/v1/coalitions/{id}/report?as_of=2021-12-31"),
        &credential,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report, expected.0);
    assert!(
        report["hazard_areas"].as_u64().unwrap_or(0) > 0,
        "the demo has hazard areas"
    );

    let (status, list) = get(
        &state,
        &format!("/api/v1/coalitions/{id}/conflicts"),
        &credential,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, expected.1);
    assert!(
        list.as_array().is_some_and(|l| !l.is_empty()),
        "the demo has conflicts"
    );

    let (status, list) = get(
        &state,
        &format!("/api/v1/coalitions/{id}/history?org=BHMAC"),
        &credential,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, expected.2);

    let (status, at) = get(
        &state,
        &format!("/api/v1/coalitions/{id}/at?date=2019-06-30"),
        &credential,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(at, expected.3);
    assert_ne!(
        at, report,
        "the plan in 2019 differs from the one at the end"
    );

    let (status, body) = get(
        &state,
        &format!("/api/v1/coalitions/{id}/report?as_of=31/12/2021"),
        &credential,
    )
    .await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &"bad_request".into())
    );

    // Another coalition (or none at all) is not found, whether or not it exists.
    let other = DocumentId::new_random();
    let (status, body) = get(
        &state,
        &format!("/api/v1/coalitions/{other}/report"),
        &credential,
    )
    .await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &"not_found".into())
    );
    within(relay.relay.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn demo_invites_work_on_the_next_start_too() -> Result<()> {
    let (relay, id, _) = demo_relay().await?;
    let TestRelay { dir, relay } = relay;
    within(relay.shutdown()).await?;
    let path = dir.path().to_path_buf();
    let setup = within(tokio::task::spawn_blocking(move || -> Result<_> {
        let mut store = Store::open(&path)?;
        let mut auth = AuthDb::open(&path)?;
        let now = chrono::Utc::now().timestamp();
        Ok(admin::setup_demo(&mut store, &mut auth, now + 3600, now)?)
    }))
    .await???;
    assert!(!setup.created);
    assert_eq!(setup.coalition, id);
    let relay = TestRelay::start(dir).await?;
    for (person, invite) in &setup.invites {
        let (status, body) = enroll(&relay.state(), &invite.code, &actor()).await?;
        assert_eq!(status, StatusCode::OK, "{} {body}", person.role);
        assert_eq!(body["role"], person.role);
        assert_eq!(body["org"], person.org);
    }
    within(relay.relay.shutdown()).await?;
    Ok(())
}
