//! The hub's store writer: a thread with its own connection to the database that commits the
//! batches the hub prepares, so that the hub handles the next events while the last batch is
//! being made durable.
//!
//! Batches are written in the order they were handed over, and whatever is queued when the
//! writer gets to it goes into one transaction: under load many batches share one fsync. The
//! hub releases a batch's frames only once its result has come back, and only after the
//! batches before it (see the hub's module docs), so nothing that reflects a change leaves
//! before the change is durable.
//!
//! A batch holds each document's changes after the previous batch's, so once a write fails,
//! the batches queued behind it cannot be written either: every batch of the same epoch fails
//! unwritten, and the hub, having dropped what those batches would have released and unloaded
//! their documents, starts a new epoch.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coalition_core::store::{PreparedBatch, Store};

use super::Event;

/// One batch to write.
pub(super) struct Job {
    /// The hub's number for it.
    pub seq: u64,
    /// The epoch it was prepared in (see the module docs).
    pub epoch: u64,
    /// What to write.
    pub batch: PreparedBatch,
}

/// What became of one batch.
pub(super) struct Done {
    /// The job's number.
    pub seq: u64,
    /// The chunks written, or why nothing was.
    pub result: Result<Vec<i64>, String>,
    /// How long its transaction took.
    pub took: Duration,
}

/// The writer thread and its two channels.
pub(super) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    /// Results, in the order of the jobs.
    pub done: mpsc::Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Start the writer on `store` (a connection of its own). `wake` is the hub's event
    /// channel, nudged after every result so that an idle hub picks it up at once; it is weak
    /// so that the hub still stops when every other sender is gone.
    pub fn spawn(
        store: Store,
        wake: tokio::sync::mpsc::WeakSender<Event>,
    ) -> std::io::Result<Self> {
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("coalition-store-writer".into())
            .spawn(move || run(store, jobs_rx, done_tx, wake))?;
        Ok(Writer {
            jobs: Some(jobs_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    /// Hand over a batch; gives it back if the writer has stopped.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Write what is queued, then stop the thread and close its connection.
    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the store writer panicked");
            }
        }
    }
}

fn run(
    mut store: Store,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    wake: tokio::sync::mpsc::WeakSender<Event>,
) {
    let mut failed_epoch: Option<u64> = None;
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        group.extend(jobs.try_iter());
        let (doomed, live): (Vec<Job>, Vec<Job>) = group
            .into_iter()
            .partition(|j| failed_epoch.is_some_and(|f| j.epoch <= f));
        let started = Instant::now();
        let result = if live.is_empty() {
            Ok(Vec::new())
        } else {
            let batches: Vec<&PreparedBatch> = live.iter().map(|j| &j.batch).collect();
            store
                .write_batches(&batches)
                .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
        };
        let took = started.elapsed();
        if result.is_err() {
            failed_epoch = live.iter().map(|j| j.epoch).max().or(failed_epoch);
        }
        let mut results: Vec<Done> = doomed
            .iter()
            .map(|j| Done {
                seq: j.seq,
                result: Err("a batch written before it in the same epoch failed".into()),
                took: Duration::ZERO,
            })
            .collect();
        // The chunk ids go with the first batch of the transaction: the hub only records them.
        let mut chunks = Some(result.clone());
        for j in &live {
            let result = match chunks.take() {
                Some(r) => r,
                None => result.clone().map(|_| Vec::new()),
            };
            results.push(Done {
                seq: j.seq,
                result,
                took,
            });
        }
        results.sort_by_key(|d| d.seq);
        for d in results {
            if done.send(d).is_err() {
                return; // the hub is gone
            }
        }
        if let Some(events) = wake.upgrade() {
            // A full channel wakes the hub anyway.
            let _ = events.try_send(Event::Saved);
        }
    }
    if let Err(error) = store.close() {
        tracing::error!(%error, "closing the store writer's connection");
    }
}
