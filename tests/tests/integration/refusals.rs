//! Forbidden and invalid changes that reach the relay anyway (a tampered or buggy client
//! writes them straight into its store, past the client's own checks) are refused by the
//! relay, kept in its quarantine, named to the device, and set aside on the device without
//! being lost; a coordinator then accepts one (it reaches the devices) and discards another.
//!
//! A table: each row is a device of the demo coalition, a raw write, and the exact reason the
//! relay must give; then a revoked device's change carried to the relay by another device. After each row: the sync completes, the device's `status` lists the change
//! as refused with that reason, the device's own view is back to what it was, the relay's
//! quarantine holds the change with the same reason, and the relay's report did not move.

use std::path::{Path, PathBuf};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ObjType, ReadDoc, ROOT};
use coalition_core::coalition::{CommitInfo, Identity};
use coalition_core::model::{keys, DocKind};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;

use crate::support::{
    coalition_json, coalition_server, credential_of, enroll, must_sync, DemoRelay,
};

/// A device of the demo coalition.
struct Device {
    store: PathBuf,
}

impl Device {
    fn new(dir: &Path, relay: &DemoRelay, role: &str) -> Device {
        let store = dir.join(role);
        enroll(
            &store,
            &relay.url(),
            &relay.invite(role),
            &format!("{role}-tablet"),
        );
        must_sync(&store);
        Device { store }
    }

    /// What the device shows: the report and the plan's entities, to compare before and after.
    fn view(&self) -> String {
        let report = coalition_json(&self.store, &["report", "--as-of", "2027-06-30"]);
        format!("{report}")
    }

    fn status(&self) -> serde_json::Value {
        coalition_json(&self.store, &["status"])
    }
}

/// Write into one document of the device's store directly, as a tampered client would: with
/// `actor` (the device's own unless given), a real time and a commit message like the
/// client's. Returns the new change's hash.
fn tamper(
    store_dir: &Path,
    coalition: &str,
    pick: impl Fn(&DocKind, Option<&str>) -> bool,
    actor: Option<ActorId>,
    write: impl FnOnce(&mut AutoCommit),
) -> String {
    let mut store = Store::open(store_dir).expect("open store");
    let id: DocumentId = coalition.parse().expect("coalition id");
    let who: Identity = store.identity().expect("identity").expect("an identity");
    let mut c = store.load(&id).expect("load coalition");
    let doc_id = c
        .docs()
        .find(|d| pick(&d.kind, d.owner.as_deref()))
        .map(|d| d.id)
        .expect("a document to tamper with");
    let d = c.docs_mut().find(|d| d.id == doc_id).expect("the document");
    d.doc.set_actor(actor.unwrap_or_else(|| who.actor_id()));
    write(&mut d.doc);
    let info = CommitInfo {
        org: who.org.clone(),
        user: who.user.clone(),
        device: who.device.clone(),
        action: "put".into(),
        entity: "tampered".into(),
        id: "x".into(),
        fields: vec![],
    };
    let hash = d
        .doc
        .commit_with(
            CommitOptions::default()
                .with_time(chrono::Utc::now().timestamp())
                .with_message(serde_json::to_string(&info).expect("json")),
        )
        .expect("a change was made");
    store.save(&mut c, &[doc_id]).expect("save");
    hash.to_string()
}

/// The key of the first entry of a collection in a document.
fn first_key(doc: &AutoCommit, collection: &str) -> String {
    let (_, coll) = doc
        .get(ROOT, collection)
        .expect("get")
        .unwrap_or_else(|| panic!("no {collection}"));
    doc.keys(&coll)
        .next()
        .unwrap_or_else(|| panic!("{collection} is empty"))
}

/// Set a scalar field of an entity stored as a map.
fn put_field(
    doc: &mut AutoCommit,
    collection: &str,
    key: &str,
    field: &str,
    value: impl Into<automerge::ScalarValue>,
) {
    let (_, coll) = doc.get(ROOT, collection).expect("get").expect("collection");
    let (_, entity) = doc.get(&coll, key).expect("get").expect("entity");
    doc.put(&entity, field, value.into()).expect("put");
}

/// A record (a JSON string) of a collection, parsed.
fn record(doc: &AutoCommit, collection: &str, key: &str) -> serde_json::Value {
    let (_, coll) = doc.get(ROOT, collection).expect("get").expect("collection");
    let (value, _) = doc.get(&coll, key).expect("get").expect("record");
    let text = value.into_string().expect("a record is a string");
    serde_json::from_str(&text).expect("record JSON")
}

fn put_record(doc: &mut AutoCommit, collection: &str, key: &str, json: &serde_json::Value) {
    let (_, coll) = doc.get(ROOT, collection).expect("get").expect("collection");
    doc.put(&coll, key, json.to_string()).expect("put");
}

fn read_doc(
    store_dir: &Path,
    coalition: &str,
    pick: impl Fn(&DocKind, Option<&str>) -> bool,
) -> AutoCommit {
    let mut store = Store::open(store_dir).expect("open store");
    let c = store.load(&coalition.parse().expect("id")).expect("load");
    let doc = c
        .docs()
        .find(|d| pick(&d.kind, d.owner.as_deref()))
        .map(|d| d.doc.clone())
        .expect("document");
    doc
}

/// `POST url` with a bearer credential: (status, body).
fn http_post(url: &str, credential: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(url)
        .header("Authorization", &format!("Bearer {credential}"))
        .send_empty()
        .expect("POST");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("body");
    (status, body)
}

/// Writes a row's bad change into a device's store (directory, coalition id); returns the
/// change's hash and the start of the reason the relay must give.
type Tamper = Box<dyn Fn(&Path, &str) -> (String, String)>;

struct Row {
    name: &'static str,
    role: &'static str,
    /// Writes the bad change; returns the reason the relay must give.
    write: Tamper,
}

#[test]
fn refused_changes_are_quarantined_named_to_the_device_and_kept_aside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = DemoRelay::start(tmp.path());
    let data = tmp.path().join("relay-data");
    let data_arg = data.to_str().expect("utf-8").to_string();
    let coalition = relay.coalition.clone();
    let roles = ["coordinator", "nmac", "donor", "operator", "observer"];
    let devices: std::collections::BTreeMap<&str, Device> = roles
        .iter()
        .map(|r| (*r, Device::new(tmp.path(), &relay, r)))
        .collect();
    let coordinator = credential_of(&devices["coordinator"].store);
    let report = || {
        crate::support::http_get(
            &format!("{}/api/v1/coalitions/{coalition}/report", relay.url()),
            Some(&coordinator),
        )
        .expect("report")
        .1
    };

    let plan = |k: &DocKind, _: Option<&str>| *k == DocKind::Plan;
    let rows: Vec<Row> = vec![
        Row {
            name: "an observer writes a need",
            role: "observer",
            write: Box::new(move |s, c| {
                let need = first_key(&read_doc(s, c, plan), keys::NEEDS);
                let hash = tamper(s, c, plan, None, |d| {
                    put_field(d, keys::NEEDS, &need, "amount", 1i64)
                });
                (
                    hash,
                    "CMC (observer) may not write needs in the plan document".into(),
                )
            }),
        },
        Row {
            name: "a donor edits another donor's pledge",
            role: "donor",
            write: Box::new(|s, c| {
                let other = |k: &DocKind, o: Option<&str>| {
                    *k == DocKind::Partner
                        && o.is_some_and(|o| o != "donor-DE" && o.starts_with("donor-"))
                };
                let doc = read_doc(s, c, other);
                let owner = coalition_core::coalition::describe(&doc)
                    .expect("describe")
                    .1
                    .expect("owner");
                let pledge = first_key(&doc, keys::PLEDGES);
                let hash = tamper(s, c, other, None, |d| {
                    put_field(d, keys::PLEDGES, &pledge, "amount", 1i64)
                });
                (
                    hash,
                    format!(
                        "donor-DE (donor) may not write pledges in the partner document of {owner}"
                    ),
                )
            }),
        },
        Row {
            name: "an operator approves its own entry",
            role: "operator",
            write: Box::new(move |s, c| {
                let ops =
                    |k: &DocKind, o: Option<&str>| *k == DocKind::Operator && o == Some("NPA");
                let entry = first_key(&read_doc(s, c, ops), keys::RELEASES);
                let hash = tamper(s, c, plan, None, |d| {
                    let approvals = match d.get(ROOT, keys::APPROVALS).expect("get") {
                        Some((_, id)) => id,
                        None => d
                            .put_object(ROOT, keys::APPROVALS, ObjType::Map)
                            .expect("map"),
                    };
                    let approval = serde_json::json!({"entry_id": entry, "approved": true, "by": "NPA", "at": 1});
                    d.put(&approvals, entry.as_str(), approval.to_string())
                        .expect("put");
                });
                (
                    hash,
                    "NPA (operator) may not write approvals in the plan document".into(),
                )
            }),
        },
        Row {
            name: "a negative baseline area",
            role: "nmac",
            write: Box::new(move |s, c| {
                let area = first_key(&read_doc(s, c, plan), keys::HAZARD_AREAS);
                let hash = tamper(s, c, plan, None, |d| {
                    put_field(d, keys::HAZARD_AREAS, &area, "baseline_m2", -5i64)
                });
                (hash, format!("hazard_areas/{area}/baseline_m2: "))
            }),
        },
        Row {
            name: "an unknown currency code",
            role: "donor",
            write: Box::new(|s, c| {
                let own =
                    |k: &DocKind, o: Option<&str>| *k == DocKind::Partner && o == Some("donor-DE");
                let pledge = first_key(&read_doc(s, c, own), keys::PLEDGES);
                let hash = tamper(s, c, own, None, |d| {
                    put_field(d, keys::PLEDGES, &pledge, "currency", "ZZZ")
                });
                (hash, format!("pledges/{pledge}/currency: "))
            }),
        },
        Row {
            name: "a release category that does not match its method",
            role: "operator",
            write: Box::new(|s, c| {
                let ops =
                    |k: &DocKind, o: Option<&str>| *k == DocKind::Operator && o == Some("NPA");
                let doc = read_doc(s, c, ops);
                let mut entry = record(&doc, keys::RELEASES, &first_key(&doc, keys::RELEASES));
                let id = "01a00000-0000-7000-8000-00000000bad1".to_string();
                entry["id"] = serde_json::json!(id);
                entry["method"] = serde_json::json!("nts");
                entry["cancelled_m2"] = serde_json::json!(0);
                entry["reduced_m2"] = serde_json::json!(0);
                entry["cleared_m2"] = serde_json::json!(500);
                let hash = tamper(s, c, ops, None, |d| {
                    put_record(d, keys::RELEASES, &id, &entry)
                });
                (hash, format!("releases/{id}/"))
            }),
        },
        Row {
            name: "a land release record rewritten",
            role: "operator",
            write: Box::new(|s, c| {
                let ops =
                    |k: &DocKind, o: Option<&str>| *k == DocKind::Operator && o == Some("NPA");
                let doc = read_doc(s, c, ops);
                let key = first_key(&doc, keys::RELEASES);
                let mut entry = record(&doc, keys::RELEASES, &key);
                entry["location"] = serde_json::json!("moved");
                let hash = tamper(s, c, ops, None, |d| {
                    put_record(d, keys::RELEASES, &key, &entry)
                });
                (
                    hash,
                    format!("releases/{key} is an immutable record and cannot be changed"),
                )
            }),
        },
        Row {
            name: "a hazard area deleted",
            role: "nmac",
            write: Box::new(move |s, c| {
                let area = first_key(&read_doc(s, c, plan), keys::HAZARD_AREAS);
                let hash = tamper(s, c, plan, None, |d| {
                    let (_, coll) = d
                        .get(ROOT, keys::HAZARD_AREAS)
                        .expect("get")
                        .expect("areas");
                    d.delete(&coll, area.as_str()).expect("delete");
                });
                (hash, format!("hazard_areas/{area} cannot be deleted"))
            }),
        },
        Row {
            name: "a change by an actor no device registered",
            role: "observer",
            write: Box::new(|s, c| {
                let comments = |k: &DocKind, _: Option<&str>| *k == DocKind::Comments;
                let stranger = ActorId::from([0x5a; 16]);
                let hash = tamper(s, c, comments, Some(stranger.clone()), |d| {
                    let (_, coll) = d.get(ROOT, keys::COMMENTS).expect("get").expect("comments");
                    let note = serde_json::json!({"id": "c-stranger", "kind": "comment", "about": null,
                        "text": "who am I", "org": "CMC", "user": "sara.lind", "at": 1});
                    d.put(&coll, "c-stranger", note.to_string()).expect("put");
                });
                (
                    hash,
                    format!(
                        "actor {} is not registered to any device of this coalition",
                        stranger.to_hex_string()
                    ),
                )
            }),
        },
        Row {
            name: "the plan's kind rewritten",
            role: "nmac",
            write: Box::new(move |s, c| {
                let hash = tamper(s, c, plan, None, |d| {
                    d.put(ROOT, coalition_core::coalition::META_KIND, "partner")
                        .expect("put")
                });
                (
                    hash,
                    "the change writes `doc_kind` at the root of the plan document".into(),
                )
            }),
        },
    ];

    let mut quarantined: Vec<(String, i64)> = Vec::new();
    for row in &rows {
        let device = &devices[row.role];
        let before_local = device.view();
        let before_relay = report();
        let (hash, reason) = (row.write)(&device.store, &coalition);
        let summary = must_sync(&device.store);
        let refused = summary["stats"]["refused"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            refused
                .iter()
                .any(|r| r[0] == hash.as_str()
                    && r[1].as_str().is_some_and(|t| t.starts_with(&reason))),
            "{}: the sync summary does not name {hash} with `{reason}`: {summary:#}",
            row.name
        );
        let status = device.status();
        let held = status["refused"]
            .as_array()
            .and_then(|list| list.iter().find(|h| h["hash"] == hash.as_str()).cloned())
            .unwrap_or_else(|| panic!("{}: `status` does not list {hash}: {status:#}", row.name));
        assert!(
            held["reason"]
                .as_str()
                .is_some_and(|t| t.starts_with(&reason)),
            "{}: {held:#}",
            row.name
        );
        assert_eq!(
            device.view(),
            before_local,
            "{}: the device's view kept the refused change",
            row.name
        );
        assert_eq!(
            report(),
            before_relay,
            "{}: the relay's report moved",
            row.name
        );
        let list: serde_json::Value = serde_json::from_str(&coalition_server(&[
            "admin",
            "--data",
            &data_arg,
            "quarantine",
            "list",
            "--json",
        ]))
        .expect("quarantine list JSON");
        let entry = list
            .as_array()
            .and_then(|l| l.iter().find(|e| e["hash"] == hash.as_str()).cloned())
            .unwrap_or_else(|| panic!("{}: the quarantine lacks {hash}: {list:#}", row.name));
        assert!(
            entry["reason"]
                .as_str()
                .is_some_and(|t| t.starts_with(&reason)),
            "{}: {entry:#}",
            row.name
        );
        assert_eq!(entry["status"], "held");
        assert!(
            entry["sent_by"].is_string() && entry["held_at"].is_i64(),
            "{entry:#}"
        );
        quarantined.push((row.name.to_string(), entry["id"].as_i64().expect("id")));
    }

    // A revoked device's change, carried to the relay by another device (an export file
    // imported there), is refused whoever brings it.
    let invite = coalition_server(&[
        "admin",
        "--data",
        &data_arg,
        "invite",
        "--coalition",
        &coalition,
        "--user",
        "mia",
        "--org",
        "BHMAC",
        "--role",
        "nmac",
    ]);
    let lost = tmp.path().join("lost-tablet");
    enroll(&lost, &relay.url(), invite.trim(), "lost-tablet");
    must_sync(&lost);
    let written = coalition_json(
        &lost,
        &["comment", "--text", "written before the tablet was lost"],
    );
    let lost_change = crate::support::change_of(&written);
    let file = tmp.path().join("lost.coalition");
    coalition_json(&lost, &["export", "--out", file.to_str().expect("path")]);
    let lost_device = coalition_json(&lost, &["status"])["device_id"]
        .as_str()
        .expect("device id")
        .to_string();
    coalition_server(&[
        "admin",
        "--data",
        &data_arg,
        "revoke",
        "--device",
        &lost_device,
    ]);
    let carrier = &devices["nmac"];
    coalition_json(&carrier.store, &["import", file.to_str().expect("path")]);
    let summary = must_sync(&carrier.store);
    let refused = summary["stats"]["refused"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let reason = refused
        .iter()
        .find(|r| r[0] == lost_change.as_str())
        .and_then(|r| r[1].as_str())
        .unwrap_or_else(|| panic!("the revoked device's change was not refused: {summary:#}"));
    assert!(
        reason.starts_with("actor ")
            && reason.ends_with(&format!(
                "belongs to device {lost_device}, which was revoked"
            )),
        "{reason}"
    );

    // Honest work still flows.
    let honest = &devices["nmac"];
    coalition_json(&honest.store, &["comment", "--text", "after the refusals"]);
    must_sync(&honest.store);

    // The quarantine over HTTP: a coordinator sees it, others may not.
    let url = |path: &str| {
        format!(
            "{}/api/v1/coalitions/{coalition}/quarantine{path}",
            relay.url()
        )
    };
    let (status, body) = crate::support::http_get(&url(""), Some(&coordinator)).expect("list");
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(rows.len() + 1),
        "{listed:#}"
    );
    let observer = credential_of(&devices["observer"].store);
    let (status, body) = crate::support::http_get(&url(""), Some(&observer)).expect("list");
    assert_eq!(status, 403, "{body}");

    // Accept the observer's need edit: the relay applies it and the observer gets it back.
    let (_, need_row) = &quarantined[0];
    let (status, body) = http_post(&url(&format!("/{need_row}/accept")), &coordinator);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_post(&url(&format!("/{need_row}/accept")), &coordinator);
    assert_eq!(status, 409, "accepting twice: {body}");
    let nmac = &devices["nmac"];
    must_sync(&nmac.store);
    let plan_doc = read_doc(&nmac.store, &coalition, plan);
    let need = first_key(&plan_doc, keys::NEEDS);
    let (_, coll) = plan_doc
        .get(ROOT, keys::NEEDS)
        .expect("get")
        .expect("needs");
    let (_, entity) = plan_doc
        .get(&coll, need.as_str())
        .expect("get")
        .expect("need");
    let (amount, _) = plan_doc
        .get(&entity, "amount")
        .expect("get")
        .expect("amount");
    assert_eq!(
        amount.as_i64(),
        Some(1),
        "the accepted change reached another device"
    );
    let observer_device = &devices["observer"];
    must_sync(&observer_device.store);
    let status = observer_device.status();
    let still = status["refused"]
        .as_array()
        .map(|l| l.len())
        .unwrap_or_default();
    assert_eq!(still, 1, "the accepted change is no longer listed as refused on its device (the stranger's comment still is): {status:#}");

    // Discard another with the admin command.
    let (_, kind_row) = quarantined.last().expect("rows");
    let out = coalition_server(&[
        "admin",
        "--data",
        &data_arg,
        "quarantine",
        "discard",
        &kind_row.to_string(),
        "--by",
        "amra",
    ]);
    assert!(out.contains("discarded"), "{out}");
    let (status, body) =
        crate::support::http_get(&url(&format!("/{kind_row}")), Some(&coordinator)).expect("show");
    assert_eq!(status, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(shown["status"], "discarded", "{shown:#}");
    assert_eq!(shown["decided_by"], "amra", "{shown:#}");
}
