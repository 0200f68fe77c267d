//! Whether the metadata store answers, as this replica last saw it: for readiness, and so
//! that reads of recently served content can be answered from the read cache (stale) while
//! it does not.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_meta::MetaError;

use crate::{Registry, RegistryError};

/// How a readiness probe should see this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The metadata store answers.
    Ready,
    /// The metadata store has not answered for `down_for`, less than the stale-on-error
    /// bound: pulls of recently served content are still answered (stale), everything else
    /// gets a 503. Still ready: every replica shares the database, so taking them all out
    /// of the Service would only turn those answers into refused connections.
    Degraded { down_for: Duration },
    /// The metadata store has not answered for longer than the stale-on-error bound:
    /// nothing useful can be served.
    Unavailable { down_for: Duration },
}

/// Since when the metadata store fails, as requests and probes see it.
#[derive(Debug, Default)]
pub(crate) struct MetaHealth {
    down_since: Mutex<Option<Instant>>,
    last_failure: Mutex<Option<Instant>>,
}

/// After a failure, reads that have a stale answer give it without asking the store for
/// this long.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// How long the readiness check waits for the database.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl MetaHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn failed(&self) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let mut d = self.lock();
        if d.is_none() {
            tracing::warn!("metadata store unavailable");
            *d = Some(Instant::now());
        }
    }

    /// Whether a request found the store unavailable within the last second.
    pub(crate) fn failed_lately(&self) -> bool {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < SKIP_AFTER_FAILURE)
    }

    pub(crate) fn answered(&self) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut d = self.lock();
        if let Some(since) = d.take() {
            tracing::info!(
                down_ms = since.elapsed().as_millis() as u64,
                "metadata store answers again"
            );
        }
    }

    pub(crate) fn down_for(&self) -> Option<Duration> {
        self.lock().map(|s| s.elapsed())
    }
}

impl Registry {
    /// Notes the outcome of a metadata call for [`Registry::readiness`]; `true` when the
    /// error means the store is unavailable (and a stale answer may be given instead).
    pub(crate) fn meta_failed(&self, e: &RegistryError) -> bool {
        match e {
            RegistryError::Meta(m) if m.is_unavailable() => {
                self.health.failed();
                true
            }
            _ => false,
        }
    }

    /// Asks the metadata store whether it answers (within 2 s) and says how a readiness
    /// probe should see this replica.
    pub async fn readiness(&self) -> Readiness {
        match tokio::time::timeout(PROBE_TIMEOUT, self.meta.ping()).await {
            Ok(Ok(())) => {
                self.health.answered();
                return Readiness::Ready;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: metadata store unreachable");
                if !MetaError::is_unavailable(&e) {
                    // Some other failure (a broken schema...): not a reason to keep
                    // serving.
                    return Readiness::Unavailable {
                        down_for: Duration::ZERO,
                    };
                }
            }
            Err(_) => tracing::warn!("readiness: metadata store did not answer in time"),
        }
        self.health.failed();
        let down_for = self.health.down_for().unwrap_or_default();
        if down_for < self.config.stale_on_error {
            Readiness::Degraded { down_for }
        } else {
            Readiness::Unavailable { down_for }
        }
    }
}
