//! The asynchronous half of the audit log: pulls, logins, token issues and refused
//! requests. These change nothing, so they need not share a transaction with anything;
//! they are queued and written in batches so a busy registry pays one insert per batch,
//! not per pull. The queue is bounded: when it is full a record is dropped and counted
//! (`berth_audit_dropped`), never silently lost.

use std::time::Duration;

use berth_meta::{AuditRecord, MetaStore};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

const QUEUE: usize = 8192;
const BATCH: usize = 512;
/// How long a lone record may wait for company before it is written.
const LINGER: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct AuditSink {
    tx: Option<mpsc::Sender<AuditRecord>>,
    dropped: Counter,
}

impl AuditSink {
    /// Starts the writer task on the current runtime; outside one (benchmarks building a
    /// state by hand) records are only counted as dropped.
    pub fn start(meta: MetaStore, dropped: Counter, written: Counter) -> AuditSink {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return AuditSink { tx: None, dropped };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(write_batches(meta, rx, dropped.clone(), written));
        AuditSink {
            tx: Some(tx),
            dropped,
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
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
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
