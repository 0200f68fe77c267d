//! Audit log retention: rows older than `[audit] keep_days` are deleted, in small batches
//! so a large backlog never holds the metadata store's write lock for long.

use std::time::Duration;

use berth_meta::MetaStore;

use crate::{Registry, Result};

/// Rows deleted per transaction.
const BATCH: u64 = 5000;

/// Deletes audit rows older than `keep`; returns how many. Safe on several replicas at
/// once: each batch deletes what is still there.
pub async fn prune(meta: &MetaStore, keep: Duration) -> Result<u64> {
    let keep = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
    let before = berth_meta::now_micros().saturating_sub(keep);
    let mut total = 0;
    loop {
        let n = meta.prune_audit(before, BATCH).await?;
        total += n;
        if n < BATCH {
            return Ok(total);
        }
    }
}

impl Registry {
    /// [`prune`], counted in `berth_audit_records_pruned_total`.
    pub async fn prune_audit(&self, keep: Duration) -> Result<u64> {
        let n = prune(self.meta(), keep).await?;
        crate::stats::bump(&self.stats().audit_pruned, n);
        Ok(n)
    }
}
