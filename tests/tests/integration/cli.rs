//! Every entity kind added and edited through the `coalition` CLI, by the role that owns it,
//! then read back through the report, history, Article 7 forms and the plan at a date.

use crate::support::{coalition, coalition_json, coalition_raw};

const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[18.40,43.80],[18.41,43.80],[18.41,43.81],[18.40,43.81],[18.40,43.80]]]}"#;

fn saved(v: &serde_json::Value) -> String {
    v["saved"].as_str().expect("saved id").to_string()
}

/// Switch the person using the device (a shared tablet): the device's actor stays.
fn as_person(store: &std::path::Path, user: &str, org: &str) {
    coalition(
        store,
        &[
            "init",
            "--user",
            user,
            "--org",
            org,
            "--device",
            "shared-tablet",
        ],
    );
}

#[test]
fn every_entity_kind_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = tmp.path().join("store");
    let s = s.as_path();
    as_person(s, "amra", "MCA-BA");
    coalition(
        s,
        &[
            "create",
            "--state",
            "BA",
            "--name",
            "BiH",
            "--org-name",
            "Ministry of Civil Affairs",
            "--entry-into-force",
            "2011-03-01",
        ],
    );
    for (org, kind) in [
        ("BHMAC", "nmac"),
        ("NPA", "operator"),
        ("donor-DE", "donor"),
        ("AMMCO", "expertise"),
        ("CMC", "observer"),
    ] {
        coalition(
            s,
            &["member", "add", "--org", org, "--name", org, "--kind", kind],
        );
    }
    coalition(
        s,
        &[
            "rate",
            "--currency",
            "EUR",
            "--date",
            "2026-01-01",
            "--usd",
            "1.1",
            "--source",
            "ECB",
        ],
    );
    coalition(
        s,
        &[
            "narrative",
            "--section",
            "summary",
            "--text",
            "Finish by 2027.",
        ],
    );

    as_person(s, "dario", "BHMAC");
    let area = saved(&coalition_json(
        s,
        &[
            "area",
            "add",
            "--code",
            "BA-HA-0001",
            "--name",
            "Brdo",
            "--geometry",
            SQUARE,
            "--class",
            "sha",
            "--baseline",
            "10000",
        ],
    ));
    coalition(
        s,
        &[
            "area",
            "edit",
            "--id",
            &area,
            "--class",
            "cha",
            "--priority",
            "1",
            "--hazard-type",
            "submunitions",
            "--hazard-type",
            "ap_mines",
        ],
    );
    coalition(
        s,
        &[
            "area",
            "rebaseline",
            "--id",
            &area,
            "--baseline",
            "12000",
            "--date",
            "2026-02-01",
            "--reason",
            "technical survey",
        ],
    );
    let task = saved(&coalition_json(
        s,
        &[
            "task",
            "add",
            "--area",
            &area,
            "--operator",
            "NPA",
            "--method",
            "ts",
        ],
    ));
    coalition(
        s,
        &[
            "task",
            "edit",
            "--id",
            &task,
            "--method",
            "clearance",
            "--end",
            "2026-12-31",
        ],
    );
    coalition(
        s,
        &[
            "obligation",
            "--pillar",
            "clearance",
            "--legal",
            "2021-03-01",
            "--current",
            "2027-03-01",
        ],
    );
    let ext = saved(&coalition_json(
        s,
        &[
            "extension",
            "add",
            "--pillar",
            "clearance",
            "--requested",
            "2029-03-01",
            "--previous",
            "2027-03-01",
            "--submitted",
            "2026-09-01",
        ],
    ));
    coalition(
        s,
        &["extension", "decide", "--id", &ext, "--status", "granted"],
    );
    let line = saved(&coalition_json(
        s,
        &[
            "stockpile",
            "add",
            "--type",
            "KB-1",
            "--declared",
            "100",
            "--submunitions",
            "1000",
        ],
    ));
    coalition(s, &["stockpile", "edit", "--id", &line, "--retained", "5"]);
    coalition(
        s,
        &[
            "stockpile",
            "destroy",
            "--line",
            &line,
            "--date",
            "2026-03-01",
            "--quantity",
            "95",
            "--submunitions",
            "950",
        ],
    );
    coalition(
        s,
        &["va", "--year", "2026", "--killed", "0", "--injured", "2"],
    );
    let need = saved(&coalition_json(
        s,
        &[
            "need",
            "add",
            "--pillar",
            "clearance",
            "--title",
            "Teams",
            "--from",
            "2026",
            "--amount",
            "100000",
            "--currency",
            "USD",
        ],
    ));
    coalition(s, &["need", "edit", "--id", &need, "--amount", "120000"]);

    as_person(s, "opal", "NPA");
    coalition(
        s,
        &[
            "task",
            "progress",
            "--task",
            &task,
            "--status",
            "ongoing",
            "--started",
            "2026-04-01",
        ],
    );
    let e1 = saved(&coalition_json(
        s,
        &[
            "release",
            "record",
            "--area",
            &area,
            "--task",
            &task,
            "--method",
            "clearance",
            "--cleared",
            "5000",
            "--item",
            "submunitions=2",
            "--date",
            "2026-06-01",
        ],
    ));
    let e2 = saved(&coalition_json(
        s,
        &[
            "release",
            "record",
            "--area",
            &area,
            "--method",
            "clearance",
            "--cleared",
            "4000",
            "--item",
            "submunitions=2",
            "--date",
            "2026-06-02",
            "--amends",
            &e1,
            "--reason",
            "GPS track",
        ],
    ));
    // An operator cannot approve its own entries.
    let refused = coalition_raw(s, &["approve", "--entry", &e1]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("NPA (operator) may not write approvals")
    );

    as_person(s, "dario", "BHMAC");
    coalition(s, &["approve", "--entry", &e1, "--date", "2026-06-10"]);
    coalition(s, &["approve", "--entry", &e2, "--date", "2026-06-10"]);

    as_person(s, "dora", "donor-DE");
    let pledge = saved(&coalition_json(
        s,
        &[
            "pledge",
            "add",
            "--amount",
            "50000",
            "--currency",
            "EUR",
            "--pillar",
            "clearance",
            "--from",
            "2026",
            "--to",
            "2026",
            "--need",
            &need,
        ],
    ));
    coalition(s, &["pledge", "edit", "--id", &pledge, "--amount", "60000"]);
    coalition(
        s,
        &[
            "pledge",
            "status",
            "--id",
            &pledge,
            "--status",
            "committed",
            "--date",
            "2026-05-01",
        ],
    );
    coalition(
        s,
        &[
            "pledge",
            "disburse",
            "--id",
            &pledge,
            "--amount",
            "20000",
            "--date",
            "2026-07-01",
        ],
    );
    let back = coalition_raw(
        s,
        &["pledge", "status", "--id", &pledge, "--status", "announced"],
    );
    assert!(String::from_utf8_lossy(&back.stderr).contains("only moves forward"));

    as_person(s, "ilir", "AMMCO");
    let offer = saved(&coalition_json(
        s,
        &[
            "offer",
            "add",
            "--expertise",
            "QM training",
            "--days",
            "20",
            "--value",
            "10000",
            "--currency",
            "EUR",
            "--year",
            "2026",
        ],
    ));
    coalition(s, &["offer", "edit", "--id", &offer, "--days", "25"]);

    as_person(s, "sara", "CMC");
    coalition(
        s,
        &["comment", "--text", "Road open again", "--about", &area],
    );
    let refused = coalition_raw(s, &["need", "edit", "--id", &need, "--amount", "1"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("CMC (observer) may not write needs"));

    let r = coalition_json(s, &["report", "--as-of", "2026-12-31"]);
    assert_eq!(
        r["clearance"]["released_m2"], 4000,
        "the amendment replaces the first entry"
    );
    assert_eq!(
        r["clearance"]["remaining_cha_m2"], 8000,
        "12,000 re-baselined − 4,000"
    );
    assert_eq!(r["stockpile"]["destroyed"], 95);
    assert_eq!(r["stockpile"]["remaining"], 0);
    assert_eq!(
        r["deadline_risk"]["current_deadline"], "2029-03-01",
        "the granted extension moved the deadline"
    );
    let clearance = r["funding_by_pillar"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|x| x["pillar"] == "clearance")
        .expect("clearance")
        .clone();
    assert_eq!(clearance["needs_usd"], 120000.0);
    assert_eq!(
        clearance["committed_usd"], 44000.0,
        "EUR 40,000 outstanding at 1.1"
    );
    assert_eq!(clearance["disbursed_usd"], 22000.0);
    assert_eq!(clearance["in_kind_usd"], 11000.0);
    assert_eq!(clearance["gap_usd"], 54000.0);

    let history = coalition_json(s, &["history", "--entity", &area]);
    let who: Vec<&str> = history
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["user"].as_str())
        .collect();
    assert_eq!(
        who,
        vec!["dario", "dario", "dario"],
        "added, edited, re-baselined: {history}"
    );
    let comments = coalition_json(s, &["comments"]);
    assert_eq!(comments[0]["text"], "Road open again");
    let offers = coalition_json(s, &["offer", "list"]);
    assert_eq!(offers[&offer]["person_days"], 25);
    let tasks = coalition_json(s, &["task", "list"]);
    assert_eq!(tasks[&task]["method"], "clearance");

    let md = coalition(s, &["article7", "--as-of", "2026-12-31"]);
    for form in ["## Form F", "## Form G", "## Form H", "## Form I"] {
        assert!(md.contains(form), "{form} missing:\n{md}");
    }
    let past = coalition_raw(s, &["at", "--date", "2000-01-01"]);
    assert!(!past.status.success());
    let stderr = String::from_utf8_lossy(&past.stderr);
    assert!(
        stderr.contains("did not exist yet on 2000-01-01"),
        "{stderr}"
    );
}
