//! `relay-bench load --stock-js`: stock `@automerge/automerge-repo` clients (one Node process,
//! `tests/js/bench/stock-clients.mjs`) editing shared documents through a relay.
//!
//! Our own protocol clients create one document per group first (as in `load`), then leave;
//! the Node process starts N repos with the stock WebSocket client adapter that `find` those
//! documents and edit them at a steady rate. Fan-out latency is measured inside Node (all its
//! clients share one clock); the relay's memory and CPU here.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use automerge::ActorId;
use coalition_core::sync::DocumentId;
use tokio::sync::{watch, Semaphore};

use super::common::{js_dir, temp_dir, RelayKind, RelayProc};
use super::load::{
    client, cpu_seconds, setup_ours, wait_for, ClientSpec, LoadArgs, Phase, Row, Shared,
};

/// The coalition, the stock clients' tokens (ours) and the creators' credentials and actors.
type Setup = (String, Option<Vec<String>>, Vec<(Option<String>, ActorId)>);

pub fn run(args: &LoadArgs) -> Result<Row> {
    let dir = temp_dir(&format!("stock-{}-{}", args.relay.name(), args.clients))?;
    let relay_data = dir.join("relay");
    std::fs::create_dir_all(&relay_data)?;
    let groups = args.clients.div_ceil(args.group);
    // Credentials: one per stock client, then one per document creator.
    let (coalition, tokens, creators): Setup = match args.relay {
        RelayKind::Ours => {
            let (id, mut creds) = setup_ours(&relay_data, args.clients + groups)?;
            let creators = creds
                .split_off(args.clients)
                .into_iter()
                .map(|(c, a)| (Some(c), a))
                .collect();
            (
                id.to_string(),
                Some(creds.into_iter().map(|(c, _)| c).collect()),
                creators,
            )
        }
        RelayKind::Js => (
            DocumentId::new_random().to_string(),
            None,
            (0..groups).map(|_| (None, ActorId::random())).collect(),
        ),
    };
    let relay = RelayProc::start(args.relay, &dir, groups + 1000)?;
    let pid = relay.pid();
    let docs: Vec<DocumentId> = (0..groups).map(|_| DocumentId::new_random()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shared = Arc::new(Shared {
            epoch: std::time::Instant::now(),
            created: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            failed: AtomicUsize::new(0),
        });
        let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
        let gate = Arc::new(Semaphore::new(32));
        let mut handles = Vec::new();
        for (g, (cred, actor)) in creators.into_iter().enumerate() {
            let spec = ClientSpec {
                ix: 1_000_000 + g,
                url: match cred {
                    Some(c) => format!("ws://{}/sync?token={c}", relay.addr),
                    None => format!("ws://{}/sync", relay.addr),
                },
                creator: true,
                group_size: 1,
                doc_id: docs[g],
                coalition: coalition.clone(),
                actor,
            };
            handles.push(tokio::spawn(client(
                spec,
                shared.clone(),
                phase_rx.clone(),
                1.0,
                gate.clone(),
            )));
        }
        wait_for(
            "every document to be created",
            Duration::from_secs(120),
            &shared,
            || {
                shared.created.load(Ordering::Relaxed) >= groups
                    || shared.failed.load(Ordering::Relaxed) > 0
            },
        )
        .await?;
        phase_tx.send(Phase::Stop)?;
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    let config = serde_json::json!({
        "url": format!("ws://{}/sync", relay.addr),
        "tokens": tokens,
        "docs": docs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "clients": args.clients,
        "group": args.group,
        "rate": args.rate,
        "duration": args.duration.as_secs_f64(),
        "drain": args.drain.as_secs_f64(),
    });
    let config_path = dir.join("stock.json");
    std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
    let (rss_idle, _) = relay.memory()?;
    let cpu0 = cpu_seconds(pid);
    let mut node = Command::new("node")
        .arg(js_dir().join("bench").join("stock-clients.mjs"))
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting node stock-clients.mjs")?;
    let limit = std::time::Instant::now() + args.duration + args.drain + Duration::from_secs(300);
    let mut peak = rss_idle;
    loop {
        if node.try_wait()?.is_some() {
            break;
        }
        if std::time::Instant::now() > limit {
            let _ = node.kill();
            bail!("the stock clients did not finish in time");
        }
        peak = peak.max(relay.memory().map(|m| m.0).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, hwm) = relay.memory()?;
    let cpu = cpu_seconds(pid) - cpu0;
    let out = node.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .context("no output from stock-clients.mjs")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let run_s = num("run_ms") / 1000.0;
    let ms_to_us = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .map(|m| (m * 1000.0) as u64)
    };
    relay.stop()?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(Row {
        relay: format!("{} (stock JS clients)", args.relay.name()),
        clients: num("clients") as usize,
        documents: groups,
        offered: num("sent") / run_s.max(0.001),
        stored_per_s: 0.0,
        stored_pct: -1.0,
        fanout_per_s: num("delivered") / run_s.max(0.001),
        p50: ms_to_us("p50_ms"),
        p99: ms_to_us("p99_ms"),
        ack_p50: None,
        ack_p99: None,
        delivered_pct: if num("expected") > 0.0 {
            num("delivered") * 100.0 / num("expected")
        } else {
            0.0
        },
        rss_idle_kib: rss_idle,
        rss_peak_kib: peak.max(hwm),
        relay_cpu_s: cpu,
        failed_clients: num("failed") as usize,
        setup_s: 0.0,
    })
}
