//! Relay processes (ours and the JavaScript reference relay) on loopback, their memory, and
//! small helpers shared by the benchmarks.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Which relay a benchmark runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RelayKind {
    /// `coalition-server serve` (release build).
    Ours,
    /// `node tests/js/reference-relay.mjs` (automerge-repo + NodeWSServerAdapter + NodeFS).
    Js,
}

impl RelayKind {
    pub fn name(self) -> &'static str {
        match self {
            RelayKind::Ours => "ours",
            RelayKind::Js => "js",
        }
    }
}

/// A relay child process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct RelayProc {
    child: Child,
    pub addr: SocketAddr,
}

/// `tests/js`, where the reference relay and the stock clients live.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// The `coalition-server` binary: `$COALITION_SERVER`, else next to this binary.
pub fn server_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("COALITION_SERVER") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("binary has no directory")?
        .join("coalition-server");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p coalition-server`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A free loopback port (bound and released; good enough on a quiet machine).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "relay-bench-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl RelayProc {
    /// Starts a relay on a free loopback port with `data` as its data directory; waits until
    /// it accepts TCP connections (at most 30 s). Its stderr/stdout go to `data/relay.log`.
    pub fn start(kind: RelayKind, data: &Path, max_docs: usize) -> Result<RelayProc> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = File::create(data.join("relay.log"))?;
        let mut cmd = match kind {
            RelayKind::Ours => {
                let mut c = Command::new(server_bin()?);
                c.arg("serve")
                    .arg("--listen")
                    .arg(addr.to_string())
                    .arg("--data")
                    .arg(data.join("relay"))
                    .arg("--max-docs")
                    .arg(max_docs.to_string());
                c
            }
            RelayKind::Js => {
                let mut c = Command::new("node");
                c.arg(js_dir().join("reference-relay.mjs"))
                    .arg(port.to_string())
                    .arg(data.join("relay"));
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {} relay", kind.name()))?;
        let mut relay = RelayProc { child, addr };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(relay);
            }
            if let Some(status) = relay.child.try_wait()? {
                bail!(
                    "the {} relay exited early ({status}); see {}",
                    kind.name(),
                    data.join("relay.log").display()
                );
            }
            if Instant::now() > until {
                bail!("the {} relay did not listen within 30 s", kind.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resident memory now and its peak, in KiB (`VmRSS`, `VmHWM`).
    pub fn memory(&self) -> Result<(u64, u64)> {
        rss(self.pid())
    }

    /// Stops the relay: SIGTERM, up to 10 s for a graceful exit, then SIGKILL.
    pub fn stop(mut self) -> Result<()> {
        self.terminate();
        Ok(())
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `VmRSS` and `VmHWM` of a process, KiB.
pub fn rss(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// `coalition-server admin --data DIR ARGS...`, returning its stdout.
pub fn admin(data: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(server_bin()?)
        .arg("admin")
        .arg("--data")
        .arg(data)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "coalition-server admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The value at quantile `q` (0..=1) of sorted samples.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}

/// Microseconds as a human duration.
pub fn fmt_us(us: Option<u64>) -> String {
    match us {
        None => "–".into(),
        Some(us) if us < 10_000 => format!("{:.1} ms", us as f64 / 1000.0),
        Some(us) if us < 10_000_000 => format!("{:.0} ms", us as f64 / 1000.0),
        Some(us) => format!("{:.1} s", us as f64 / 1e6),
    }
}
