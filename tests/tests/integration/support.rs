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
