//! Five devices of one coalition edit while the relay is down (each its own part, two of them
//! the same field of the same hazard area); the relay comes back on the same data directory;
//! after everyone syncs, every device's report equals the relay's, and every device lists the
//! same conflicts as the relay, the same-field one with both values and both authors.

use std::path::{Path, PathBuf};

use crate::support::{
    change_of, coalition_json, credential_of, enroll, history_changes, must_sync, RelayProcess,
};

const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[18.40,43.80],[18.41,43.80],[18.41,43.81],[18.40,43.81],[18.40,43.80]]]}"#;

/// The date every report is taken as of, so that reports do not depend on the day the test
/// runs.
const AS_OF: &str = "2027-06-30";

/// One enrolled device.
struct Device {
    name: &'static str,
    store: PathBuf,
}

/// Creates a coalition on the relay's data directory and invites `people` (user, org, role);
/// returns the coalition id and the invite codes in order. Runs before the relay starts, so
/// that the scenario does not depend on when a running relay picks up admin writes (that is
/// `relay_auth::invite_while_the_relay_runs_reaches_devices`).
pub fn coalition_with_invites(data: &Path, people: &[(&str, &str, &str)]) -> (String, Vec<String>) {
    let d = data.to_str().expect("utf-8 path");
    let id = crate::support::coalition_server(&[
        "admin",
        "--data",
        d,
        "create-coalition",
        "--state",
        "BA",
        "--name",
        "BiH CCM coalition",
        "--org",
        "MCA-BA",
        "--org-name",
        "Ministry of Civil Affairs",
        "--user",
        "amra",
    ]);
    let invites = people
        .iter()
        .map(|(user, org, role)| {
            crate::support::coalition_server(&[
                "admin",
                "--data",
                d,
                "invite",
                "--coalition",
                &id,
                "--user",
                user,
                "--org",
                org,
                "--org-name",
                &format!("{org} (test)"),
                "--role",
                role,
            ])
        })
        .collect();
    (id, invites)
}

fn sorted(v: serde_json::Value) -> String {
    // serde_json's map is ordered (BTreeMap) unless preserve_order is on: re-serializing a
    // parsed value gives a canonical text to compare.
    serde_json::to_string_pretty(&v).expect("serialize")
}

#[test]
fn relay_offline_edits_converge_after_restart() {
    let started = std::time::Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay-data");
    let people = [
        ("amra", "MCA-BA", "coordinator"),
        ("dario", "BHMAC", "nmac"),
        ("kurt", "donor-DE", "donor"),
        ("opal", "NPA", "operator"),
        ("mia", "BHMAC", "nmac"),
    ];
    let (id, invites) = coalition_with_invites(&data, &people);
    let mut relay = RelayProcess::start(&data);
    let phase = |what: &str| eprintln!("[{:6.2} s] {what}", started.elapsed().as_secs_f64());
    phase("relay started");

    let devices: Vec<Device> = people
        .iter()
        .zip(&invites)
        .map(|((user, _, _), invite)| {
            let store = tmp.path().join(user);
            enroll(&store, &relay.url(), invite, &format!("{user}-device"));
            Device { name: user, store }
        })
        .collect();
    let [ministry, nmac, donor, operator, nmac2] = &devices[..] else {
        unreachable!()
    };
    for d in &devices {
        must_sync(&d.store);
    }
    // The hazard area the field teams will report on exists everywhere before the link goes.
    let area = coalition_json(
        &nmac.store,
        &[
            "area",
            "add",
            "--code",
            "BA-HA-0001",
            "--name",
            "Brdo",
            "--admin-area",
            "Tuzla",
            "--geometry",
            SQUARE,
            "--class",
            "cha",
            "--baseline",
            "12000",
            "--priority",
            "3",
        ],
    );
    let area_id = area["saved"].as_str().expect("area id").to_string();
    must_sync(&nmac.store);
    for d in &devices {
        must_sync(&d.store);
    }

    phase("enrolled and synced");
    relay.stop();
    phase("relay stopped");

    // Offline: the same field of the same area on two NMAC devices...
    let p1 = coalition_json(
        &nmac.store,
        &["area", "edit", "--id", &area_id, "--priority", "1"],
    );
    let p4 = coalition_json(
        &nmac2.store,
        &["area", "edit", "--id", &area_id, "--priority", "4"],
    );
    // ...and each in its own part.
    let mut offline = vec![change_of(&p1), change_of(&p4)];
    offline.push(change_of(&coalition_json(
        &nmac.store,
        &[
            "area",
            "add",
            "--code",
            "BA-HA-0002",
            "--name",
            "Polje",
            "--geometry",
            SQUARE,
            "--class",
            "sha",
            "--baseline",
            "3000",
        ],
    )));
    offline.push(change_of(&coalition_json(
        &donor.store,
        &[
            "pledge",
            "add",
            "--amount",
            "250000",
            "--currency",
            "EUR",
            "--pillar",
            "clearance",
            "--from",
            "2026",
            "--to",
            "2027",
        ],
    )));
    offline.push(change_of(&coalition_json(
        &operator.store,
        &[
            "release",
            "record",
            "--area",
            &area_id,
            "--method",
            "clearance",
            "--cleared",
            "4200",
            "--item",
            "submunitions=3",
            "--date",
            "2026-11-20",
        ],
    )));
    offline.push(change_of(&coalition_json(
        &ministry.store,
        &[
            "narrative",
            "--section",
            "summary",
            "--text",
            "Clear the last sites by 2027.",
        ],
    )));
    offline.push(change_of(&coalition_json(
        &ministry.store,
        &[
            "rate",
            "--currency",
            "EUR",
            "--date",
            "2026-01-01",
            "--usd",
            "1.08",
            "--source",
            "ECB",
        ],
    )));
    for d in &devices {
        let status = coalition_json(&d.store, &["status"]);
        assert!(
            status["unsent_documents"].as_u64().unwrap_or(0) > 0,
            "{}: offline edits should be listed as unsent: {status}",
            d.name
        );
    }

    relay.restart();
    phase("relay restarted");
    // Twice round: the first round carries each device's edits up, the second brings down
    // what the devices after it sent.
    for _ in 0..2 {
        for d in &devices {
            must_sync(&d.store);
        }
    }

    phase("synced twice");
    let cred = credential_of(&ministry.store);
    let relay_report = relay.api(&cred, &id, &format!("report?as_of={AS_OF}"));
    let relay_conflicts = relay.api(&cred, &id, "conflicts");
    for d in &devices {
        let report = coalition_json(&d.store, &["report", "--as-of", AS_OF]);
        assert_eq!(
            sorted(report),
            sorted(relay_report.clone()),
            "{}'s report differs from the relay's",
            d.name
        );
        let conflicts = coalition_json(&d.store, &["conflicts"]);
        assert_eq!(
            sorted(conflicts),
            sorted(relay_conflicts.clone()),
            "{}'s conflicts differ from the relay's",
            d.name
        );
        let status = coalition_json(&d.store, &["status"]);
        assert_eq!(status["unsent_documents"], 0, "{}: {status}", d.name);
    }

    // Everyone's work is in the relay's report: both areas, the operator's entry awaiting
    // approval, the donor's pledge (EUR, over two years).
    assert_eq!(relay_report["hazard_areas"], 2, "{relay_report}");
    assert_eq!(
        relay_report["clearance"]["pending_m2"], 4200,
        "{relay_report}"
    );
    let pledged: f64 = relay_report["funding_by_pillar"]
        .as_array()
        .expect("funding_by_pillar")
        .iter()
        .filter_map(|f| f["original"]["EUR"]["announced"].as_f64())
        .sum();
    assert_eq!(pledged, 250000.0, "{relay_report}");
    // Every offline edit (the narrative and the rate are not in the report) is in the
    // relay's history and in every device's, and all histories are the same.
    let relay_history = history_changes(&relay.api(&cred, &id, "history"));
    for change in &offline {
        assert!(
            relay_history.contains(change),
            "offline change {change} is not on the relay"
        );
    }
    for d in &devices {
        let history = history_changes(&coalition_json(&d.store, &["history"]));
        assert_eq!(
            history, relay_history,
            "{}'s history differs from the relay's",
            d.name
        );
    }

    // The same-field conflict, with both values and both authors.
    let list = relay_conflicts.as_array().expect("conflicts list");
    let priority = list
        .iter()
        .find(|c| c["id"] == area_id.as_str() && c["field"] == "priority")
        .unwrap_or_else(|| panic!("no priority conflict on {area_id}: {relay_conflicts}"));
    let values = priority["values"].as_array().expect("values");
    let mut got: Vec<(i64, String, String)> = values
        .iter()
        .map(|v| {
            (
                v["value"].as_i64().expect("number"),
                v["user"].as_str().unwrap_or_default().to_string(),
                v["change"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (1, "dario".to_string(), change_of(&p1)),
            (4, "mia".to_string(), change_of(&p4)),
        ],
        "the conflict should list both values with their authors and changes"
    );
    eprintln!(
        "relay_offline_edits_converge_after_restart: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
