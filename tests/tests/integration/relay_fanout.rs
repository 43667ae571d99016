//! Live fan-out: two devices run `coalition sync --watch`; an edit made with the CLI on one
//! device's store reaches the other device's store while neither runs a sync by hand. The
//! latency is printed; the budget (under a second on loopback) is measured by `relay-bench`
//! (docs/benchmarks.md), not asserted here, where tests share two cores.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::relay_offline::coalition_with_invites;
use crate::support::{binary, coalition_json, enroll, must_sync, ChildGuard, RelayProcess};

/// How long anything here may take before the test fails: waits end as soon as their
/// condition holds.
const DEADLINE: Duration = Duration::from_secs(60);

/// `coalition sync --watch --json` on a store, with its event lines delivered to a channel
/// as they are printed.
struct Watcher {
    guard: ChildGuard,
    events: mpsc::Receiver<serde_json::Value>,
    name: &'static str,
}

impl Watcher {
    fn start(store: &Path, name: &'static str) -> Watcher {
        let mut guard = ChildGuard::new(
            Command::new(binary("coalition-core", "coalition"))
                .arg("--store")
                .arg(store)
                .args(["--json", "sync", "--watch"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sync --watch"),
        );
        let stdout = guard.child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            }
        });
        Watcher {
            guard,
            events,
            name,
        }
    }

    /// Waits (bounded) for an event of this kind; panics with what came instead.
    fn wait_for(&self, kind: &str, timeout: Duration) -> serde_json::Value {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if e["event"] == kind => return e,
                Ok(e) => seen.push(e),
                Err(_) => panic!(
                    "{}: no `{kind}` event within {timeout:?}; saw {seen:?}",
                    self.name
                ),
            }
        }
    }

    /// Drops the events printed so far.
    fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }
}

fn has_comment(store: &Path, text: &str) -> bool {
    coalition_json(store, &["comments"])
        .as_array()
        .is_some_and(|list| list.iter().any(|c| c["text"] == text))
}

#[test]
fn relay_fanout_reaches_a_watching_device() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay-data");
    let (_, invites) = coalition_with_invites(
        &data,
        &[
            ("amra", "MCA-BA", "coordinator"),
            ("dario", "BHMAC", "nmac"),
        ],
    );
    let relay = RelayProcess::start(&data);
    let a = tmp.path().join("amra");
    let b = tmp.path().join("dario");
    enroll(&a, &relay.url(), &invites[0], "laptop");
    enroll(&b, &relay.url(), &invites[1], "tablet");
    must_sync(&a);
    must_sync(&b);

    let wa = Watcher::start(&a, "A");
    let wb = Watcher::start(&b, "B");
    for w in [&wa, &wb] {
        w.wait_for("connected", DEADLINE);
        w.wait_for("in_sync", DEADLINE);
    }

    let mut latencies = Vec::new();
    for round in 0..4 {
        let (writer, reader, wr) = if round % 2 == 0 {
            (&a, &b, &wb)
        } else {
            (&b, &a, &wa)
        };
        wr.drain();
        let text = format!("fan-out round {round}");
        let edit_started = Instant::now();
        coalition_json(writer, &["comment", "--text", &text]);
        let made = Instant::now();
        // Poll the reader's store, as a person running `coalition comments` would see it.
        let seen = loop {
            if has_comment(reader, &text) {
                break Instant::now();
            }
            assert!(
                made.elapsed() < DEADLINE,
                "round {round}: the edit never reached the other device\nrelay log:\n{}",
                relay.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let event = wr.wait_for("remote_change", DEADLINE);
        let latency = seen - made;
        eprintln!(
            "fan-out round {round}: in the other store {:.0} ms after the edit was saved \
             ({:.0} ms after the edit command started); event {event}",
            latency.as_secs_f64() * 1000.0,
            (seen - edit_started).as_secs_f64() * 1000.0,
        );
        latencies.push(latency);
    }
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "fan-out latency over {} edits: worst {:.0} ms",
        latencies.len(),
        worst.as_secs_f64() * 1000.0
    );

    // Ctrl-C stops a watcher cleanly.
    for mut w in [wa, wb] {
        assert!(
            w.guard.signal_and_wait("INT", DEADLINE),
            "{}: sync --watch did not stop within {DEADLINE:?} of SIGINT",
            w.name
        );
        let status = w.guard.child.wait().expect("exit status");
        assert!(status.success(), "{}: sync --watch exited {status}", w.name);
    }
}
