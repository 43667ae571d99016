//! `coalition enroll`, `sync` and `status`: the command-line face of `coalition_core::transport`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;
use coalition_core::transport::{
    self, ws::Outcome, ConnectError, SessionEvent, SyncError, SyncOptions, SyncSummary, WatchEvent,
};

use crate::args::{EnrollArgs, SyncArgs};
use crate::print_json;

pub fn enroll(store: &Store, json: bool, a: EnrollArgs) -> Result<()> {
    let enrolled = transport::enroll(store, &a.server, &a.invite, a.device.as_deref())?;
    if json {
        return print_json(&enrolled);
    }
    let who = &enrolled.identity;
    println!(
        "enrolled {} as {} of {} ({}) with {}",
        who.device,
        who.user,
        who.org,
        if enrolled.role.is_empty() {
            "no role given"
        } else {
            &enrolled.role
        },
        enrolled.server
    );
    println!(
        "{} coalition{} to sync; run `coalition sync` to fetch {}",
        enrolled.coalitions.len(),
        if enrolled.coalitions.len() == 1 {
            ""
        } else {
            "s"
        },
        if enrolled.coalitions.len() == 1 {
            "it"
        } else {
            "them"
        }
    );
    Ok(())
}

/// A runtime for one command: the session is one task, and its store writes are meant to
/// block it (a change is acknowledged only once durable), so one thread is enough.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the network runtime")
}

pub fn sync(store: &mut Store, json: bool, coalition: Option<&str>, a: SyncArgs) -> Result<()> {
    let mut options = SyncOptions::from_store(store, a.server.as_deref())?;
    if let Some(id) = coalition {
        let id = DocumentId::parse_id_or_url(id).map_err(|e| anyhow!("--coalition {id}: {e}"))?;
        // Asking to sync a coalition adds it to the device's list: a coalition created on
        // this device reaches the relay this way.
        transport::add_synced_coalitions(store, &[id])?;
        options.coalitions = transport::synced_coalitions(store)?;
    }
    if options.coalitions.is_empty() {
        bail!("no coalition to sync: enrollment gave none; name one with --coalition")
    }
    options.timeout = Duration::from_secs(a.timeout.max(1));
    options.transport = a.transport;
    options.congestion = a.congestion;
    options.budget = a.budget;
    options.quic_retry = Duration::from_secs(a.quic_retry.max(1));
    let rt = runtime()?;
    if a.watch {
        let mut on_event = |e: &WatchEvent| print_watch_event(e, json);
        if !json {
            eprintln!(
                "syncing {} coalition(s) with {} until Ctrl-C",
                options.coalitions.len(),
                options.server
            );
        }
        let stop = async {
            // If the signal cannot be listened to, run until killed rather than not at all.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let result = rt.block_on(transport::watch(store, &options, stop, &mut on_event));
        return match result {
            Ok(summary) => {
                if json {
                    print_json(&summary)
                } else {
                    println!(
                        "stopped: {} connection(s), received changes in {} document(s), sent {}, received {}{}",
                        summary.connections,
                        summary.received,
                        bytes(summary.bytes_sent),
                        bytes(summary.bytes_received),
                        on_the_wire((summary.quic_connections > 0).then_some(summary.quic_wire_bytes)),
                    );
                    Ok(())
                }
            }
            Err(e) => Err(failed(store, e)),
        };
    }
    let mut on_event = |e: &WatchEvent| {
        if let WatchEvent::Session(SessionEvent::Warning { message }) = e {
            eprintln!("warning: {message}");
        }
    };
    match rt.block_on(transport::sync_once(store, &options, &mut on_event)) {
        Ok(summary) => {
            if json {
                print_json(&summary)?;
            } else {
                print!("{}", render_summary(&summary, &options.server));
            }
            match &summary.outcome {
                Outcome::Complete => Ok(()),
                Outcome::TimedOut => {
                    let text = format!(
                        "the relay did not answer about {} document(s) within {} s",
                        summary.unanswered.len(),
                        a.timeout
                    );
                    transport::record_failure(store, &text)?;
                    bail!("{text}; local work is kept, sync again later")
                }
                Outcome::LinkLost { reason } => {
                    transport::record_failure(store, reason)?;
                    bail!("the link to the relay dropped ({reason}); what was synced is saved, local work is kept; sync again later")
                }
                Outcome::BudgetReached { budget } => {
                    let text = format!("stopped at the budget of {budget} bytes");
                    transport::record_failure(store, &text)?;
                    eprintln!("{text}; what was synced is saved, the rest goes next time");
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        Err(e) => Err(failed(store, e)),
    }
}

/// Records a failed sync for `status` and explains it; local data is never touched here.
fn failed(store: &Store, e: SyncError) -> anyhow::Error {
    let text = chain(&e);
    if let Err(record) = transport::record_failure(store, &text) {
        eprintln!("warning: could not record the error for `coalition status`: {record}");
    }
    match &e {
        SyncError::Connect(ConnectError::Refused { code, message, .. }) => anyhow!(
            "the relay refused this device's credential: {message} ({code}).\n\
             Nothing on this device was changed or deleted: your local work is kept. \
             Ask a coordinator for a new invite and run `coalition enroll` again."
        ),
        _ => anyhow!("{text}\nlocal work is kept"),
    }
}

/// An error and its causes on one line, as anyhow's `{:#}` shows them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn print_watch_event(e: &WatchEvent, json: bool) {
    let now = chrono::Local::now().format("%H:%M:%S");
    let line = match e {
        WatchEvent::Session(SessionEvent::Connected { peer_id }) => {
            serde_json::json!({"event": "connected", "relay": peer_id.as_str()})
        }
        WatchEvent::Session(SessionEvent::RemoteChange {
            doc_id,
            kind,
            owner,
            changes,
            authors,
        }) => serde_json::json!({
            "event": "remote_change", "document": doc_id, "kind": kind, "owner": owner,
            "changes": changes, "authors": authors,
        }),
        WatchEvent::Session(SessionEvent::LocalChange { doc_id }) => {
            serde_json::json!({"event": "local_change", "document": doc_id})
        }
        WatchEvent::Session(SessionEvent::Unavailable { doc_id }) => {
            serde_json::json!({"event": "unavailable", "document": doc_id})
        }
        WatchEvent::Session(SessionEvent::Warning { message }) => {
            serde_json::json!({"event": "warning", "message": message})
        }
        WatchEvent::Quiet { unsent } => serde_json::json!({"event": "in_sync", "unsent": unsent}),
        WatchEvent::Dropped { reason, retry_in } => serde_json::json!({
            "event": "disconnected", "reason": reason, "retry_in_ms": retry_in.as_millis() as u64,
        }),
        WatchEvent::Linked { transport } => {
            serde_json::json!({"event": "linked", "transport": transport})
        }
        _ => return,
    };
    if json {
        println!("{line}");
        return;
    }
    let text = match e {
        WatchEvent::Session(SessionEvent::Connected { .. }) => "connected to the relay".to_owned(),
        WatchEvent::Session(SessionEvent::RemoteChange {
            kind,
            owner,
            changes,
            authors,
            ..
        }) => format!(
            "{}{} changed by {} ({} change{})",
            kind.map(|k| k.to_string())
                .unwrap_or_else(|| "document".into()),
            owner
                .as_ref()
                .map(|o| format!(" of {o}"))
                .unwrap_or_default(),
            if authors.is_empty() {
                "unknown".to_owned()
            } else {
                authors.join(", ")
            },
            changes,
            if *changes == 1 { "" } else { "s" }
        ),
        WatchEvent::Session(SessionEvent::LocalChange { doc_id }) => {
            format!("local edits of {doc_id} offered to the relay")
        }
        WatchEvent::Session(SessionEvent::Unavailable { doc_id }) => {
            format!("{doc_id}: the relay does not have it or will not give it to this device")
        }
        WatchEvent::Session(SessionEvent::Warning { message }) => format!("warning: {message}"),
        WatchEvent::Quiet { unsent: 0 } => "in sync".to_owned(),
        WatchEvent::Quiet { unsent } => {
            format!("quiet; {unsent} document(s) with changes not on the relay")
        }
        WatchEvent::Dropped { reason, retry_in } => format!(
            "link lost: {reason}; reconnecting in {:.1} s",
            retry_in.as_secs_f64()
        ),
        WatchEvent::Linked { transport } => format!("linked over {transport}"),
        _ => return,
    };
    println!("{now}  {text}");
}

fn bytes(n: u64) -> String {
    if n < 10_000 {
        format!("{n} B")
    } else if n < 10_000_000 {
        format!("{:.1} KB", n as f64 / 1000.0)
    } else {
        format!("{:.1} MB", n as f64 / 1_000_000.0)
    }
}

/// What a sync cost on the wire, when the device could see it (QUIC).
fn on_the_wire(wire_bytes: Option<u64>) -> String {
    match wire_bytes {
        Some(n) => format!(" ({} on the wire)", bytes(n)),
        None => String::new(),
    }
}

fn render_summary(s: &SyncSummary, server: &str) -> String {
    let mut out = String::new();
    let stats = &s.stats;
    out.push_str(&format!(
        "synced {} document(s) with {server} over {}: received changes in {}; sent {}, received {}{}\n",
        s.documents,
        s.transport,
        stats.received.len(),
        bytes(stats.bytes_sent),
        bytes(stats.bytes_received),
        on_the_wire(s.wire_bytes),
    ));
    if !stats.unavailable.is_empty() {
        out.push_str(&format!(
            "refused or unavailable: {} document(s)\n",
            stats.unavailable.len()
        ));
        for id in &stats.unavailable {
            out.push_str(&format!("  {id}\n"));
        }
    }
    if !s.unanswered.is_empty() {
        out.push_str(&format!(
            "no answer from the relay: {} document(s)\n",
            s.unanswered.len()
        ));
    }
    if let Some(e) = &stats.remote_error {
        out.push_str(&format!("the relay reported: {e}\n"));
    }
    if !stats.refused.is_empty() {
        out.push_str(&format!(
            "the relay refused {} change(s); they are kept on this device (see `coalition status`):\n",
            stats.refused.len()
        ));
        for (hash, reason) in &stats.refused {
            out.push_str(&format!("  {}: {reason}\n", &hash[..12.min(hash.len())]));
        }
    }
    for w in &stats.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push_str(&match s.unsent.len() {
        0 => "everything on this device is on the relay\n".to_owned(),
        n => format!("{n} document(s) with changes not yet on the relay\n"),
    });
    out
}

/// What a commit message says was done, short.
fn commit_summary(message: &str) -> Option<String> {
    let info = coalition_core::coalition::CommitInfo::parse(Some(message))?;
    Some(format!("{} {}/{}", info.action, info.entity, info.id))
}

pub fn status(store: &Store, json: bool) -> Result<()> {
    let st = transport::status(store)?;
    if json {
        return print_json(&st);
    }
    let mut out = String::new();
    match (&st.server, st.enrolled) {
        (Some(server), true) => out.push_str(&format!(
            "relay:      {server} (device {}{})\n",
            st.device_id.as_deref().unwrap_or("?"),
            st.role
                .as_ref()
                .map(|r| format!(", role {r}"))
                .unwrap_or_default()
        )),
        _ => {
            out.push_str("relay:      not enrolled (coalition enroll --server URL --invite CODE)\n")
        }
    }
    match &st.identity {
        Some(who) => out.push_str(&format!(
            "identity:   {} of {} on {} (actor {})\n",
            who.user, who.org, who.device, who.actor
        )),
        None => out.push_str("identity:   none\n"),
    }
    out.push_str(&format!(
        "last sync:  {}\n",
        st.last_sync.as_deref().unwrap_or("never")
    ));
    if let Some(e) = &st.last_error {
        out.push_str(&format!("last error: {e}\n"));
    }
    for c in &st.coalitions {
        out.push_str(&format!(
            "coalition {}{}: {} document(s), {} with unsent changes\n",
            c.id,
            if c.synced { "" } else { " (local only)" },
            c.documents,
            c.unsent.len()
        ));
        for d in &c.unsent {
            out.push_str(&format!(
                "  {}{} {}: {} change{} ({}) not on the relay{}; last in sync: {}\n",
                d.kind.as_deref().unwrap_or("document"),
                d.owner
                    .as_ref()
                    .map(|o| format!(" of {o}"))
                    .unwrap_or_default(),
                d.id,
                d.changes,
                if d.changes == 1 { "" } else { "s" },
                bytes(d.bytes),
                if d.never_synced {
                    " (never synced)"
                } else {
                    ""
                },
                d.last_sync.as_deref().unwrap_or("never"),
            ));
            if let Some(e) = &d.last_error {
                out.push_str(&format!("    last error: {e}\n"));
            }
        }
        // Documents in sync but with an error since (the relay would not give them).
        for d in c
            .documents_sync
            .iter()
            .filter(|d| d.last_error.is_some() && !c.unsent.iter().any(|u| Some(u.id) == d.id))
        {
            if let (Some(id), Some(e)) = (&d.id, &d.last_error) {
                out.push_str(&format!("  {id}: last error: {e}\n"));
            }
        }
    }
    out.push_str(&format!(
        "{} document(s) with unsent changes\n",
        st.unsent_documents
    ));
    if !st.refused.is_empty() {
        out.push_str(&format!(
            "{} change(s) refused by the relay, kept on this device:\n",
            st.refused.len()
        ));
        for r in &st.refused {
            out.push_str(&format!(
                "  #{} {} in document {}{}: {}\n",
                r.id,
                &r.hash[..12.min(r.hash.len())],
                r.doc_id,
                r.summary
                    .as_deref()
                    .and_then(commit_summary)
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                r.reason
            ));
        }
    }
    print!("{out}");
    Ok(())
}
