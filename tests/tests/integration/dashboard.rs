//! The coordinator dashboard end to end: a demo relay, CLI devices, and the page in headless
//! Chromium driven by `tests/dashboard/e2e.mjs` (playwright-core).
//!
//! Needs Debian's `chromium` at `/usr/bin/chromium` (or `COALITION_CHROMIUM`) and
//! `npm ci --prefix tests/dashboard`; `.ci/run` installs both. Without them the test fails and
//! says what is missing, rather than passing without a browser.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{binary, credential_of, enroll, DemoRelay};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[test]
fn the_dashboard_signs_in_shows_the_report_resolves_conflicts_and_updates_live() {
    let root = workspace();
    let script = root.join("tests/dashboard/e2e.mjs");
    let chromium =
        std::env::var("COALITION_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install -y chromium (or set COALITION_CHROMIUM)"
    );
    assert!(
        root.join("tests/dashboard/node_modules/playwright-core")
            .exists(),
        "playwright-core is missing: npm ci --prefix tests/dashboard"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let relay = DemoRelay::start(dir.path());
    // A field device of the mine action centre, and an observer whose credential the page
    // signs in with; the coordinator enrolls in the page itself with the printed invite.
    let nmac = dir.path().join("devices/BHMAC");
    enroll(
        &nmac,
        &relay.url(),
        &relay.invite("nmac"),
        "bhmac-field-tablet",
    );
    let observer = dir.path().join("devices/CMC");
    enroll(
        &observer,
        &relay.url(),
        &relay.invite("observer"),
        "cmc-laptop",
    );

    let screenshot = root.join("target/dashboard-overview.png");
    let config = serde_json::json!({
        "base": relay.url(),
        "coalition": relay.coalition,
        "coordinator_invite": relay.invite("coordinator"),
        "observer_credential": credential_of(&observer),
        "cli": binary("coalition-core", "coalition"),
        "nmac_store": nmac,
        "chromium": chromium,
        "screenshot": screenshot,
    });
    let config_path = dir.path().join("e2e.json");
    std::fs::write(&config_path, config.to_string()).expect("write the test config");

    let out = Command::new("node")
        .arg(&script)
        .arg(&config_path)
        .output()
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the dashboard test failed:\n{stdout}\n{stderr}\nrelay log:\n{}",
        std::fs::read_to_string(&relay.log).unwrap_or_default()
    );
    assert!(stdout.contains(", 0 failed"), "no summary line:\n{stdout}");
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
}

#[test]
fn the_demo_output_is_parsed_into_invites_by_role() {
    let printed = "Demo coalition abc123 (created now)\n  sync URL: ws://x/sync\n\n\
        One invite per demo role (single use):\n\n  coordinator  MCA-BA    amra.hodzic\n    \
        invite: inv-1\n    enroll: coalition --store ./devices/MCA-BA enroll\n\n  \
        observer     CMC       sara.lind\n    invite: inv-2\n";
    let (id, invites) = crate::support::parse_demo_output(printed);
    assert_eq!(id.as_deref(), Some("abc123"));
    assert_eq!(invites["coordinator"], "inv-1");
    assert_eq!(invites["observer"], "inv-2");
    assert_eq!(invites.len(), 2);
}
