//! Two devices edit the same plan offline, including the same field, exchange export files
//! both ways and end with the same plan; the conflicting field is listed with both values and
//! their authors.

use crate::support::{coalition, coalition_json, coalition_raw};

const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[18.40,43.80],[18.41,43.80],[18.41,43.81],[18.40,43.81],[18.40,43.80]]]}"#;

#[test]
fn two_devices_merge_by_export_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("ministry"), tmp.path().join("bhmac"));
    let a_to_b = tmp.path().join("a.coalition");
    let b_to_a = tmp.path().join("b.coalition");

    coalition(
        &a,
        &[
            "init",
            "--user",
            "amra",
            "--org",
            "MCA-BA",
            "--device",
            "ministry-laptop",
        ],
    );
    coalition(
        &a,
        &[
            "create",
            "--state",
            "BA",
            "--name",
            "BiH coalition",
            "--org-name",
            "Ministry of Civil Affairs",
        ],
    );
    coalition(
        &a,
        &[
            "member",
            "add",
            "--org",
            "BHMAC",
            "--name",
            "BH Mine Action Centre",
            "--kind",
            "nmac",
        ],
    );
    coalition(
        &a,
        &[
            "member",
            "add",
            "--org",
            "NPA",
            "--name",
            "Norwegian People's Aid",
            "--kind",
            "operator",
        ],
    );
    let area = coalition_json(
        &a,
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
        ],
    );
    let area_id = area["saved"].as_str().expect("area id").to_string();
    coalition(&a, &["export", "--out", a_to_b.to_str().expect("path")]);

    coalition(
        &b,
        &[
            "init",
            "--user",
            "dario",
            "--org",
            "BHMAC",
            "--device",
            "bhmac-tablet",
        ],
    );
    coalition(&b, &["import", a_to_b.to_str().expect("path")]);

    // Offline on both: the same field, and each its own part.
    coalition(&a, &["area", "edit", "--id", &area_id, "--priority", "1"]);
    coalition(&b, &["area", "edit", "--id", &area_id, "--priority", "4"]);
    coalition(
        &a,
        &[
            "need",
            "add",
            "--pillar",
            "clearance",
            "--title",
            "Survey teams",
            "--from",
            "2026",
            "--to",
            "2027",
            "--amount",
            "500000",
            "--currency",
            "EUR",
        ],
    );
    coalition(
        &b,
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
    );
    coalition(
        &b,
        &[
            "narrative",
            "--section",
            "summary",
            "--text",
            "Clear the last sites by 2027.",
        ],
    );

    coalition(&a, &["export", "--out", a_to_b.to_str().expect("path")]);
    coalition(&b, &["export", "--out", b_to_a.to_str().expect("path")]);
    coalition(&a, &["import", b_to_a.to_str().expect("path")]);
    coalition(&b, &["import", a_to_b.to_str().expect("path")]);
    // Importing the same file again changes nothing.
    let again = coalition_json(&b, &["import", a_to_b.to_str().expect("path")]);
    assert_eq!(again["changed"], 0, "{again}");

    let report_a = coalition_json(&a, &["report", "--as-of", "2026-11-27"]);
    let report_b = coalition_json(&b, &["report", "--as-of", "2026-11-27"]);
    assert_eq!(report_a, report_b);
    assert_eq!(report_a["hazard_areas"], 2);
    assert_eq!(
        coalition_json(&a, &["area", "list"]),
        coalition_json(&b, &["area", "list"])
    );

    let conflicts_a = coalition_json(&a, &["conflicts"]);
    assert_eq!(conflicts_a, coalition_json(&b, &["conflicts"]));
    let list = conflicts_a.as_array().expect("array");
    assert_eq!(list.len(), 1, "{conflicts_a}");
    assert_eq!(list[0]["id"], area_id.as_str());
    assert_eq!(list[0]["field"], "priority");
    let mut values: Vec<(i64, String, String)> = list[0]["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| {
            (
                v["value"].as_i64().expect("int"),
                v["user"].as_str().expect("user").into(),
                v["org"].as_str().expect("org").into(),
            )
        })
        .collect();
    values.sort();
    assert_eq!(
        values,
        vec![
            (1, "amra".into(), "MCA-BA".into()),
            (4, "dario".into(), "BHMAC".into())
        ]
    );

    // Writing the field again resolves the conflict everywhere once exchanged.
    coalition(&a, &["area", "edit", "--id", &area_id, "--priority", "2"]);
    coalition(&a, &["export", "--out", a_to_b.to_str().expect("path")]);
    coalition(&b, &["import", a_to_b.to_str().expect("path")]);
    assert_eq!(coalition_json(&b, &["conflicts"]), serde_json::json!([]));
}

#[test]
fn a_damaged_export_file_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    coalition(
        &a,
        &[
            "init", "--user", "amra", "--org", "MCA-BA", "--device", "laptop",
        ],
    );
    coalition(
        &a,
        &[
            "create",
            "--state",
            "BA",
            "--name",
            "BiH",
            "--org-name",
            "Ministry",
        ],
    );
    let file = tmp.path().join("x.coalition");
    coalition(&a, &["export", "--out", file.to_str().expect("path")]);
    let before = coalition_json(&a, &["report", "--as-of", "2026-01-01"]);
    let mut bytes = std::fs::read(&file).expect("read");
    let cut = bytes.len() / 2;
    bytes.truncate(cut);
    std::fs::write(&file, &bytes).expect("write");
    let out = coalition_raw(&a, &["import", file.to_str().expect("path")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("damaged"), "{stderr}");
    std::fs::write(&file, b"hello").expect("write");
    let out = coalition_raw(&a, &["import", file.to_str().expect("path")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a coalition export file"));
    assert_eq!(
        before,
        coalition_json(&a, &["report", "--as-of", "2026-01-01"])
    );
}
