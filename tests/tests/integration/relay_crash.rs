//! The relay is killed with SIGKILL while ten devices push changes. Every change a device saw
//! acknowledged by the relay is in the relay's store after the crash; after a restart the
//! devices finish syncing (the watching ones reconnect by themselves) and all converge.
//!
//! Five devices loop `edit; coalition sync`: an edit is acknowledged when a later one-off sync
//! completes with nothing left unsent. Five run `coalition sync --watch` while they edit: an
//! edit is acknowledged when `coalition status` shows nothing unsent after it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coalition_core::report::{history, HistoryFilter};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::relay_offline::coalition_with_invites;
use crate::support::{
    binary, change_of, coalition_json, credential_of, enroll, history_changes, must_sync, seed,
    sync_once, ChildGuard, RelayProcess,
};

const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[18.40,43.80],[18.41,43.80],[18.41,43.81],[18.40,43.81],[18.40,43.80]]]}"#;

/// Edits per device.
const EDITS: usize = 5;

const PEOPLE: [(&str, &str, &str); 10] = [
    ("amra", "MCA-BA", "coordinator"),
    ("dario", "BHMAC", "nmac"),
    ("kurt", "donor-DE", "donor"),
    ("opal", "NPA", "operator"),
    ("ilir", "AMMCO", "expertise"),
    ("mia", "BHMAC", "nmac"),
    ("ola", "donor-NO", "donor"),
    ("tom", "NPA", "operator"),
    ("sara", "CMC", "observer"),
    ("ivo", "BHMAC", "nmac"),
];

/// The first five devices sync one-off; the others watch.
fn watches(device: usize) -> bool {
    device >= 5
}

/// One edit of the kind the person's role allows; returns its change hash.
fn edit(store: &Path, device: usize, n: usize, rng: &mut ChaCha8Rng) -> String {
    let (user, _, role) = PEOPLE[device];
    let out = match role {
        "nmac" => coalition_json(
            store,
            &[
                "area",
                "add",
                "--code",
                &format!("BA-HA-{device}{n:02}"),
                "--name",
                &format!("{user} area {n}"),
                "--geometry",
                SQUARE,
                "--class",
                "sha",
                "--baseline",
                &rng.random_range(1000..50_000).to_string(),
            ],
        ),
        "donor" => coalition_json(
            store,
            &[
                "pledge",
                "add",
                "--amount",
                &rng.random_range(1000..1_000_000).to_string(),
                "--currency",
                "EUR",
                "--pillar",
                "clearance",
                "--from",
                "2026",
                "--to",
                "2026",
            ],
        ),
        "coordinator" => coalition_json(
            store,
            &[
                "rate",
                "--currency",
                "EUR",
                "--date",
                &format!("2026-01-{:02}", n + 1),
                "--usd",
                &format!("1.{:02}", rng.random_range(0..20)),
            ],
        ),
        _ => coalition_json(
            store,
            &["comment", "--text", &format!("{user}: field note {n}")],
        ),
    };
    change_of(&out)
}

/// Waits (bounded) until `coalition status` shows nothing unsent; false on timeout.
fn quiet_within(store: &Path, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if coalition_json(store, &["status"])["unsent_documents"] == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// What one device did: its changes, and whether the relay acknowledged each.
struct Pushed {
    changes: Vec<(String, bool)>,
}

/// The relay's history as stored in its data directory (read while the relay is dead: no
/// device can add anything meanwhile).
fn stored_history(data: &Path, coalition: &str) -> BTreeSet<String> {
    let id: DocumentId = coalition.parse().expect("coalition id");
    let mut store = Store::open(data).expect("open the relay's store");
    let mut coalition = store.load(&id).expect("load the coalition");
    history(&mut coalition, &HistoryFilter::default())
        .expect("history")
        .into_iter()
        .map(|e| e.change)
        .collect()
}

#[test]
fn relay_crash_keeps_every_acknowledged_change() {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("[{:6.2} s] {what}", started.elapsed().as_secs_f64());
    let seed = seed("relay_crash_keeps_every_acknowledged_change");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Kill once this many edits are acknowledged: some, not all (50 in total).
    let kill_after = rng.random_range(8..=20);
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay-data");
    let (id, invites) = coalition_with_invites(&data, &PEOPLE);
    let mut relay = RelayProcess::start(&data);
    let stores: Vec<PathBuf> = PEOPLE
        .iter()
        .zip(&invites)
        .map(|((user, _, _), invite)| {
            let store = tmp.path().join(user);
            enroll(&store, &relay.url(), invite, &format!("{user}-device"));
            must_sync(&store);
            store
        })
        .collect();
    phase("ten devices enrolled and synced");

    let mut watchers: Vec<ChildGuard> = (0..PEOPLE.len())
        .filter(|&d| watches(d))
        .map(|d| {
            ChildGuard::new(
                Command::new(binary("coalition-core", "coalition"))
                    .arg("--store")
                    .arg(&stores[d])
                    .args(["sync", "--watch"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start sync --watch"),
            )
        })
        .collect();

    let acked = AtomicUsize::new(0);
    let killed = AtomicBool::new(false);
    let mut killed_at_acked = 0;
    let pushed: Vec<Pushed> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PEOPLE.len())
            .map(|device| {
                let store = &stores[device];
                let acked = &acked;
                let killed = &killed;
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (device as u64 + 1));
                s.spawn(move || {
                    let mut changes: Vec<(String, bool)> = Vec::new();
                    let mut n = 0;
                    // Keep editing until the device's share is done and it edited at least
                    // once with the relay dead.
                    let mut after_kill = 0;
                    while n < EDITS || after_kill < 1 {
                        let was_killed = killed.load(Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
                        changes.push((edit(store, device, n, &mut rng), false));
                        n += 1;
                        if was_killed {
                            after_kill += 1;
                        }
                        let ok = if watches(device) {
                            quiet_within(store, Duration::from_secs(3))
                        } else {
                            sync_once(store, 5).is_ok()
                        };
                        if ok {
                            let newly = changes.iter().filter(|(_, a)| !a).count();
                            changes.iter_mut().for_each(|(_, a)| *a = true);
                            acked.fetch_add(newly, Ordering::SeqCst);
                        }
                        if n > 4 * EDITS {
                            break;
                        }
                    }
                    Pushed { changes }
                })
            })
            .collect();
        // SIGKILL once some edits are acknowledged, while the devices keep pushing.
        let end = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < kill_after {
            assert!(
                Instant::now() < end,
                "only {} edits acknowledged in 120 s\nrelay log:\n{}",
                acked.load(Ordering::SeqCst),
                relay.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        relay.kill();
        killed_at_acked = acked.load(Ordering::SeqCst);
        killed.store(true, Ordering::SeqCst);
        phase(&format!(
            "relay killed (SIGKILL) after {killed_at_acked} acknowledged edits"
        ));
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread"))
            .collect()
    });
    let all: BTreeSet<String> = pushed
        .iter()
        .flat_map(|p| p.changes.iter().map(|(c, _)| c.clone()))
        .collect();
    let acknowledged: BTreeSet<String> = pushed
        .iter()
        .flat_map(|p| p.changes.iter().filter(|(_, a)| *a).map(|(c, _)| c.clone()))
        .collect();
    phase(&format!(
        "devices done: {} edits, {} acknowledged before the kill",
        all.len(),
        acknowledged.len()
    ));
    assert!(
        acknowledged.len() >= killed_at_acked && acknowledged.len() < all.len(),
        "the kill should fall between acknowledged and unacknowledged edits"
    );

    // Every acknowledged change is durable in the relay's store.
    let stored = stored_history(&data, &id);
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} acknowledged change(s) lost in the crash: {lost:?}\nrelay log:\n{}",
        lost.len(),
        relay.log_text()
    );

    relay.restart();
    phase("relay restarted");
    // The one-off devices sync again; the watching ones reconnect by themselves.
    for (device, store) in stores.iter().enumerate() {
        if !watches(device) {
            must_sync(store);
        }
    }
    for (device, store) in stores.iter().enumerate() {
        if watches(device) {
            assert!(
                quiet_within(store, Duration::from_secs(60)),
                "seed {seed}: {} did not resync by itself within 60 s",
                PEOPLE[device].0
            );
        }
    }
    phase("every device pushed its changes");
    let cred = credential_of(&stores[0]);
    let on_relay = history_changes(&relay.api(&cred, &id, "history"));
    let missing: Vec<&String> = all.difference(&on_relay).collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: change(s) never reached the relay: {missing:?}"
    );

    for w in &mut watchers {
        assert!(
            w.signal_and_wait("INT", Duration::from_secs(10)),
            "sync --watch did not stop on SIGINT"
        );
    }
    // Everyone converges: twice round, then the same history and report as the relay.
    for _ in 0..2 {
        for store in &stores {
            must_sync(store);
        }
    }
    let on_relay = history_changes(&relay.api(&cred, &id, "history"));
    let report = relay.api(&cred, &id, "report?as_of=2027-06-30");
    for (device, store) in stores.iter().enumerate() {
        let name = PEOPLE[device].0;
        assert_eq!(
            history_changes(&coalition_json(store, &["history"])),
            on_relay,
            "{name}'s history differs from the relay's"
        );
        assert_eq!(
            coalition_json(store, &["report", "--as-of", "2027-06-30"]),
            report,
            "{name}'s report differs from the relay's"
        );
    }
    phase("all ten devices converged with the relay");
}
