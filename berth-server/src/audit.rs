//! The asynchronous half of the audit log: pulls, logins, token issues and refused
//! requests. These change nothing, so they need not share a transaction with anything;
//! they are queued and written in batches so a busy registry pays one insert per batch,
//! not per pull. The queue is bounded: when it is full a record is dropped and counted
//! (`berth_audit_dropped`), never silently lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_meta::{AuditRecord, MetaStore};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

const QUEUE: usize = 8192;
const BATCH: usize = 512;
/// How long a lone record may wait for company before it is written.
const LINGER: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct AuditSink {
    tx: Option<mpsc::Sender<AuditRecord>>,
    dropped: Counter,
    stop: Arc<Notify>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl AuditSink {
    /// Starts the writer task on the current runtime; outside one (benchmarks building a
    /// state by hand) records are only counted as dropped.
    pub fn start(meta: MetaStore, dropped: Counter, written: Counter) -> AuditSink {
        let stop = Arc::new(Notify::new());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return AuditSink {
                tx: None,
                dropped,
                stop,
                task: Arc::default(),
            };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = rt.spawn(write_batches(
            meta,
            rx,
            dropped.clone(),
            written,
            stop.clone(),
        ));
        AuditSink {
            tx: Some(tx),
            dropped,
            stop,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Writes what is queued and stops the writer; called on shutdown before the metadata
    /// store closes, so the last pulls and logins are not lost.
    pub async fn flush(&self) {
        self.stop.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = task
            && tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
        {
            tracing::warn!("audit queue not drained within 10 s");
        }
    }

    pub fn record(&self, r: AuditRecord) {
        let queued = self.tx.as_ref().is_some_and(|tx| tx.try_send(r).is_ok());
        if !queued {
            self.dropped.inc();
        }
    }
}

async fn write_batches(
    meta: MetaStore,
    mut rx: mpsc::Receiver<AuditRecord>,
    dropped: Counter,
    written: Counter,
    stop: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            () = stop.notified() => {
                // Refuse new records, then write the ones already queued.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        match meta.append_audit(&batch).await {
            Ok(()) => {
                written.inc_by(batch.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "audit batch not written");
                dropped.inc_by(batch.len() as u64);
            }
        }
        batch.clear();
    }
}
