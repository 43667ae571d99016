//! A writer process killed with SIGKILL at random moments never loses an edit it reported
//! as saved, and the store always opens cleanly afterwards.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use coalition_core::model::{keys, DocKind, LandReleaseEntry};
use coalition_core::store::Store;
use rand::{Rng, SeedableRng};

use crate::support::binary;

#[test]
fn edits_reported_saved_survive_sigkill() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_127);
    println!("crash test seed {seed} (set CRASH_SEED to replay)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = binary("coalition-tests", "crash-writer");
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let kills = 24;
    for round in 0..kills {
        let mut child = Command::new(&writer)
            .arg(dir.path())
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("saved ").map(str::to_string))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(30..400)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(
            !status.success(),
            "round {round}: the writer must have been killed, not exited: {status}"
        );
        let saved = reader.join().expect("reader");
        reported.extend(saved);

        let mut store = Store::open(dir.path())
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): store does not open: {e}"));
        let Some(id) = store.coalitions().expect("list").first().map(|c| c.id) else {
            assert!(
                reported.is_empty(),
                "round {round}: edits were reported but no coalition is stored"
            );
            continue;
        };
        let coalition = store
            .load(&id)
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): load failed: {e}"));
        let stored = coalition
            .collection::<LandReleaseEntry>(DocKind::Operator, keys::RELEASES)
            .expect("entries");
        let lost: Vec<&String> = reported
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}): lost {} reported edits, e.g. {:?}",
            lost.len(),
            lost.first()
        );
    }
    assert!(
        reported.len() > kills,
        "the writer saved too little to test anything: {}",
        reported.len()
    );
    println!(
        "{} edits reported saved across {kills} kills, none lost",
        reported.len()
    );
}
