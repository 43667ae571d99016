//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The path of a workspace binary, built once per test run (`cargo test` only builds the
/// binaries of the package under test, and these tests drive other packages' binaries).
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let exe = target_dir().join(name);
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--package", package, "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_string());
    }
    exe
}

/// The directory the test binary's sibling executables live in (target/debug).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/integration-<hash> → target/debug
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

/// Run the `coalition` CLI on a store and return its output; panics with stderr on failure.
pub fn coalition(store: &std::path::Path, args: &[&str]) -> String {
    let out = coalition_raw(store, args);
    assert!(
        out.status.success(),
        "coalition {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Run the `coalition` CLI and return the whole output, success or not.
pub fn coalition_raw(store: &std::path::Path, args: &[&str]) -> Output {
    Command::new(binary("coalition-core", "coalition"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run coalition")
}

/// Run a `coalition` read command with `--json` and parse it.
pub fn coalition_json(store: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&coalition(store, &all)).expect("JSON output")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a relay to listen on).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Run `coalition-server` (e.g. `admin --data DIR invite ...`) and return its trimmed stdout;
/// panics with stderr on failure.
pub fn coalition_server(args: &[&str]) -> String {
    let out = Command::new(binary("coalition-server", "coalition-server"))
        .args(args)
        .output()
        .expect("run coalition-server");
    assert!(
        out.status.success(),
        "coalition-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .trim()
        .to_string()
}

/// `GET url` with `Authorization: Bearer credential`, parsed as JSON; panics unless 200.
pub fn http_get_json(url: &str, credential: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(url)
        .header("Authorization", &format!("Bearer {credential}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
    assert_eq!(status, 200, "GET {url}: HTTP {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

// ---- Relay processes and devices (relay_* tests) ----

/// A child process that is killed (SIGKILL) and reaped when dropped, however the test ends.
pub struct ChildGuard {
    /// The process.
    pub child: std::process::Child,
}

impl ChildGuard {
    /// Guard a spawned process.
    pub fn new(child: std::process::Child) -> ChildGuard {
        ChildGuard { child }
    }

    /// Send `signal` (e.g. "STOP", "CONT"); panics if it cannot be sent.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "cannot send SIG{signal} to {}", self.child.id());
    }

    /// Send `signal` (e.g. "INT", "TERM") and wait up to `timeout` for the exit; false if it
    /// is still running then.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: std::time::Duration) -> bool {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `coalition-server serve` process on 127.0.0.1 with its data directory; killed on drop.
/// Its stderr (the log) goes to `relay.log` in the data directory's parent, appended across
/// restarts, and is shown when it fails to start.
pub struct RelayProcess {
    /// The port it listens on (kept across restarts: devices store the relay's URL).
    pub port: u16,
    /// The data directory.
    pub data: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl RelayProcess {
    /// Start a relay on a free port, retrying with another port if one was taken meanwhile.
    pub fn start(data: &std::path::Path) -> RelayProcess {
        let log = data.with_extension("relay.log");
        let mut relay = RelayProcess {
            port: 0,
            data: data.to_path_buf(),
            log,
            child: None,
        };
        for _ in 0..5 {
            relay.port = free_port();
            if relay.spawn() {
                return relay;
            }
        }
        panic!(
            "the relay did not start on any of 5 ports:\n{}",
            relay.log_text()
        );
    }

    /// Start it again on the same port and data directory (after [`kill`](Self::kill) or
    /// [`stop`](Self::stop)). The port may stay busy for a moment, so this retries for 10 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the relay is still running");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < end {
            if self.spawn() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!(
            "the relay did not restart on port {} within 10 s:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Spawn on `self.port` and wait (bounded) until `/healthz` answers; false if the process
    /// exited first (the port was taken).
    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("relay log file");
        let child = Command::new(binary("coalition-server", "coalition-server"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data",
            ])
            .arg(&self.data)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start coalition-server");
        let mut guard = ChildGuard::new(child);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = guard.child.try_wait() {
                return false;
            }
            if let Ok((200, _)) = http_get(&format!("{}/healthz", self.url()), None) {
                self.child = Some(guard);
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "the relay did not become healthy within 30 s:\n{}",
            self.log_text()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:PORT/sync`.
    pub fn sync_url(&self) -> String {
        format!("ws://127.0.0.1:{}/sync", self.port)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|g| matches!(g.child.try_wait(), Ok(None)))
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(&mut self) {
        let mut guard = self.child.take().expect("the relay is running");
        let _ = guard.child.kill();
        let _ = guard.child.wait();
    }

    /// SIGTERM, and wait (bounded) for the graceful shutdown to finish.
    pub fn stop(&mut self) {
        let mut guard = self.child.take().expect("the relay is running");
        assert!(
            guard.signal_and_wait("TERM", std::time::Duration::from_secs(15)),
            "the relay did not stop within 15 s of SIGTERM:\n{}",
            self.log_text()
        );
    }

    /// The relay's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `coalition-server admin --data DIR ARGS...` on this relay's data directory.
    pub fn admin(&self, args: &[&str]) -> String {
        let data = self.data.to_str().expect("utf-8 path");
        let mut all = vec!["admin", "--data", data];
        all.extend_from_slice(args);
        coalition_server(&all)
    }

    /// `GET /api/v1/coalitions/{id}/{view}` as the device whose credential is given; the
    /// JSON, or a panic unless 200.
    pub fn api(&self, credential: &str, coalition: &str, view: &str) -> serde_json::Value {
        http_get_json(
            &format!("{}/api/v1/coalitions/{coalition}/{view}", self.url()),
            credential,
        )
    }
}

/// `GET url`, with `Authorization: Bearer` when a credential is given: (status, body). Only
/// transport failures are errors; every HTTP status is returned.
pub fn http_get(url: &str, credential: Option<&str>) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(c) = credential {
        request = request.header("Authorization", &format!("Bearer {c}"));
    }
    let mut response = request.call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Run `coalition --store STORE ARGS...`, killing it if it runs longer than `timeout`
/// (a hang is a failure, not a stuck run).
pub fn coalition_bounded(
    store: &std::path::Path,
    args: &[&str],
    timeout: std::time::Duration,
) -> Output {
    use std::io::Read;
    let mut child = ChildGuard::new(
        Command::new(binary("coalition-core", "coalition"))
            .arg("--store")
            .arg(store)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run coalition"),
    );
    let mut out = child.child.stdout.take().expect("stdout");
    let mut err = child.child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let end = std::time::Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.child.try_wait() {
            break status;
        }
        if std::time::Instant::now() > end {
            let _ = child.child.kill();
            panic!(
                "coalition {args:?} on {} ran longer than {timeout:?}",
                store.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// One-off `coalition sync --json`: the summary when it completed with nothing left unsent,
/// else the error text (stderr). Bounded by `--timeout` and a kill 20 s later.
pub fn sync_once(store: &std::path::Path, timeout_s: u64) -> Result<serde_json::Value, String> {
    let t = timeout_s.to_string();
    let out = coalition_bounded(
        store,
        &["--json", "sync", "--timeout", &t],
        std::time::Duration::from_secs(timeout_s + 20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("sync printed no JSON ({e}): {stderr}"))?;
    let complete = summary["outcome"] == "complete"
        && summary["unsent"].as_array().is_some_and(|u| u.is_empty());
    if complete {
        Ok(summary)
    } else {
        Err(format!("incomplete sync: {summary}"))
    }
}

/// `sync_once` that must succeed.
pub fn must_sync(store: &std::path::Path) -> serde_json::Value {
    sync_once(store, 20).unwrap_or_else(|e| panic!("sync of {} failed: {e}", store.display()))
}

/// `coalition enroll` with an invite (bounded: 60 s); panics on failure.
pub fn enroll(store: &std::path::Path, server: &str, invite: &str, device: &str) {
    let out = coalition_bounded(
        store,
        &[
            "enroll", "--server", server, "--invite", invite, "--device", device,
        ],
        std::time::Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "enroll of {} failed: {}",
        store.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The device credential a store keeps.
pub fn credential_of(store: &std::path::Path) -> String {
    let s = coalition_core::store::Store::open(store).expect("open store");
    s.meta(coalition_core::transport::keys::CREDENTIAL)
        .expect("read meta")
        .expect("the store is enrolled")
}

/// The change hash an edit command printed with `--json`.
pub fn change_of(edit_output: &serde_json::Value) -> String {
    edit_output["change"]
        .as_str()
        .unwrap_or_else(|| panic!("no change hash in {edit_output}"))
        .to_string()
}

/// The change hashes of a history (CLI `history --json` or the relay's `/history`).
pub fn history_changes(history: &serde_json::Value) -> std::collections::BTreeSet<String> {
    history
        .as_array()
        .expect("history is a list")
        .iter()
        .filter_map(|e| e["change"].as_str().map(str::to_string))
        .collect()
}

/// A seed from `COALITION_TEST_SEED`, else a fresh one; printed so a failure can be re-run.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("COALITION_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (re-run with COALITION_TEST_SEED={seed})");
    seed
}

// ---- The demo relay (dashboard tests) ----

/// A `coalition-server serve --demo` process on 127.0.0.1 with what it printed: the demo
/// coalition's id and one invite per demo role. Killed on drop.
pub struct DemoRelay {
    /// The process, killed when this is dropped.
    _child: ChildGuard,
    /// The port it listens on.
    pub port: u16,
    /// The demo coalition's id.
    pub coalition: String,
    /// Invite codes by role (`coordinator`, `nmac`, `donor`, `operator`, `expertise`, `observer`).
    pub invites: std::collections::BTreeMap<String, String>,
    /// Its stderr (the log).
    pub log: PathBuf,
}

impl DemoRelay {
    /// Start `serve --demo` on a free port with a data directory inside `dir`, and wait (bounded)
    /// until it is healthy and has printed its invites.
    pub fn start(dir: &std::path::Path) -> DemoRelay {
        let data = dir.join("relay-data");
        let out = dir.join("relay.out");
        let log = dir.join("relay.log");
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(binary("coalition-server", "coalition-server"))
                .args([
                    "serve",
                    "--demo",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data",
                ])
                .arg(&data)
                .stdout(std::fs::File::create(&out).expect("relay stdout file"))
                .stderr(std::fs::File::create(&log).expect("relay log file"))
                .spawn()
                .expect("start coalition-server");
            let mut child = ChildGuard::new(child);
            let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut healthy = false;
            while std::time::Instant::now() < end {
                if let Ok(Some(_)) = child.child.try_wait() {
                    break;
                }
                if let Ok((200, _)) = http_get(&format!("http://127.0.0.1:{port}/healthz"), None) {
                    healthy = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if !healthy {
                continue;
            }
            let printed = std::fs::read_to_string(&out).unwrap_or_default();
            let (coalition, invites) = parse_demo_output(&printed);
            return DemoRelay {
                _child: child,
                port,
                coalition: coalition.unwrap_or_else(|| panic!("no demo coalition in:\n{printed}")),
                invites,
                log,
            };
        }
        panic!(
            "the demo relay did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The invite printed for a demo role.
    pub fn invite(&self, role: &str) -> String {
        self.invites
            .get(role)
            .unwrap_or_else(|| panic!("no {role} invite among {:?}", self.invites.keys()))
            .clone()
    }
}

/// The coalition id and the invites by role from what `serve --demo` prints.
pub fn parse_demo_output(
    printed: &str,
) -> (Option<String>, std::collections::BTreeMap<String, String>) {
    let mut coalition = None;
    let mut invites = std::collections::BTreeMap::new();
    let mut role: Option<String> = None;
    for line in printed.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Demo", "coalition", id, ..] => coalition = Some(id.to_string()),
            ["invite:", code] => {
                if let Some(r) = role.take() {
                    invites.insert(r, code.to_string());
                }
            }
            [r, _org, _user] if line.starts_with("  ") && !line.starts_with("    ") => {
                role = Some(r.to_string());
            }
            _ => {}
        }
    }
    (coalition, invites)
}
