//! Counters of the relay, rendered in the Prometheus text format at `/metrics`.
//!
//! Hand-rolled: a dozen atomics and one fixed-bucket histogram are all the relay needs, and
//! keeping them as plain fields lets the sync hub update them without a registry lookup.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the storage write latency buckets.
const WRITE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The relay's counters. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket sync connections open now.
    pub connections: AtomicI64,
    /// WebSocket sync connections accepted since start.
    pub connections_total: AtomicU64,
    /// Documents held in memory now.
    pub documents_loaded: AtomicI64,
    /// Protocol messages received.
    pub messages_in: AtomicU64,
    /// Protocol messages sent.
    pub messages_out: AtomicU64,
    /// Bytes of protocol messages received.
    pub bytes_in: AtomicU64,
    /// Bytes of protocol messages sent.
    pub bytes_out: AtomicU64,
    /// `sync`/`request` messages applied to a document.
    pub sync_rounds: AtomicU64,
    /// Documents written (one per document per transaction).
    pub documents_saved: AtomicU64,
    /// Documents refused (pushed for a coalition the device is not in, or not a coalition
    /// document).
    pub documents_refused: AtomicU64,
    /// Documents evicted from memory.
    pub documents_evicted: AtomicU64,
    /// Changes refused and put in quarantine.
    pub changes_refused: AtomicU64,
    /// Changes checked and applied.
    pub changes_accepted: AtomicU64,
    /// Messages or connections refused for a limit (size, rate, quota).
    pub limits_hit: AtomicU64,
    /// Times a connection's messages were held back because it was not reading them (see
    /// the hub's backpressure).
    pub connections_held: AtomicU64,
    /// Sync messages the engine made with Automerge's general path (see
    /// [`coalition_core::sync::EngineCounters`]).
    pub general_messages: AtomicU64,
    /// Sync messages the engine took with Automerge's general path.
    pub general_receives: AtomicU64,
    /// Times a document was copied whole to check changes on.
    pub screen_copies: AtomicU64,
    /// Devices enrolled since start.
    pub enrollments: AtomicU64,
    /// Frames whose handling panicked (a bug; the connection was closed).
    pub panics: AtomicU64,
    write_buckets: [AtomicU64; WRITE_BUCKETS.len()],
    write_count: AtomicU64,
    write_sum_micros: AtomicU64,
}

impl Metrics {
    /// Record one storage transaction that took `took`.
    pub fn observe_write(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, bucket) in WRITE_BUCKETS.iter().zip(&self.write_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.write_count.fetch_add(1, Ordering::Relaxed);
        self.write_sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "coalition_connections",
            "WebSocket sync connections open now.",
            self.connections.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "coalition_connections_total",
            "WebSocket sync connections accepted.",
            load(&self.connections_total),
        );
        gauge(
            &mut out,
            "coalition_documents_loaded",
            "Documents held in memory.",
            self.documents_loaded.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "coalition_messages_in_total",
            "Sync protocol messages received.",
            load(&self.messages_in),
        );
        counter(
            &mut out,
            "coalition_messages_out_total",
            "Sync protocol messages sent.",
            load(&self.messages_out),
        );
        counter(
            &mut out,
            "coalition_bytes_in_total",
            "Bytes of sync protocol messages received.",
            load(&self.bytes_in),
        );
        counter(
            &mut out,
            "coalition_bytes_out_total",
            "Bytes of sync protocol messages sent.",
            load(&self.bytes_out),
        );
        counter(
            &mut out,
            "coalition_sync_rounds_total",
            "Sync and request messages applied to a document.",
            load(&self.sync_rounds),
        );
        counter(
            &mut out,
            "coalition_documents_saved_total",
            "Document writes (one per document per transaction).",
            load(&self.documents_saved),
        );
        counter(
            &mut out,
            "coalition_documents_refused_total",
            "Documents pushed by a device that may not create them.",
            load(&self.documents_refused),
        );
        counter(
            &mut out,
            "coalition_changes_refused_total",
            "Changes refused by the relay's checks and kept in quarantine.",
            load(&self.changes_refused),
        );
        counter(
            &mut out,
            "coalition_changes_accepted_total",
            "Changes from peers checked and applied.",
            load(&self.changes_accepted),
        );
        counter(
            &mut out,
            "coalition_limits_hit_total",
            "Messages or connections refused for a limit (size, rate, quota).",
            load(&self.limits_hit),
        );
        counter(
            &mut out,
            "coalition_connections_held_total",
            "Times a connection's sync messages were held back while it read what it had queued.",
            load(&self.connections_held),
        );
        counter(
            &mut out,
            "coalition_sync_general_messages_total",
            "Sync messages made with Automerge's general path (a Bloom filter and a walk of the change graph); the others pass changes on as they arrived.",
            load(&self.general_messages),
        );
        counter(
            &mut out,
            "coalition_sync_general_receives_total",
            "Sync messages taken with Automerge's general path (a walk of the peer's heads' ancestors).",
            load(&self.general_receives),
        );
        counter(
            &mut out,
            "coalition_screen_copies_total",
            "Times a document was copied whole to check incoming changes on.",
            load(&self.screen_copies),
        );
        counter(
            &mut out,
            "coalition_documents_evicted_total",
            "Documents unloaded from memory.",
            load(&self.documents_evicted),
        );
        counter(
            &mut out,
            "coalition_enrollments_total",
            "Devices enrolled.",
            load(&self.enrollments),
        );
        counter(
            &mut out,
            "coalition_panics_total",
            "Frames whose handling panicked.",
            load(&self.panics),
        );
        let name = "coalition_storage_write_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to write one batch of documents durably.\n# TYPE {name} histogram"
        );
        for (bound, bucket) in WRITE_BUCKETS.iter().zip(&self.write_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", load(bucket));
        }
        let count = load(&self.write_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            load(&self.write_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_write(Duration::from_micros(700));
        m.observe_write(Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains("coalition_storage_write_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("coalition_storage_write_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("coalition_storage_write_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("coalition_storage_write_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("coalition_storage_write_seconds_count 2"));
    }
}
