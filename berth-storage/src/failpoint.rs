//! Named failpoints in the write path, for crash and fault tests of the real binary.
//!
//! `BERTH_FAILPOINTS=after_temp_write=abort,before_rename=1*error` arms points by name. An
//! action is `error` (the operation fails with an I/O error, so the request gets a 5xx) or
//! `abort` (`std::process::abort()`: the process dies at that exact point, as in a crash);
//! `N*` in front limits it to the first N hits, after which the point is inert again.
//!
//! The variable is read once. Unset, a point costs one initialised-`OnceLock` load and a
//! `None` check, so the points stay compiled into release builds: the binary that is
//! tested is the binary that ships.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms failpoints.
pub const ENV: &str = "BERTH_FAILPOINTS";

/// Upload bytes were written (and flushed to the OS) but not yet fsynced or acknowledged.
pub const AFTER_TEMP_WRITE: &str = "after_temp_write";
/// An append cut an upload's file back to where it starts, dropping stored bytes (the
/// partial last segment a sealed append or completion seals again, or an unacknowledged
/// append's), before writing anything.
pub const AFTER_UPLOAD_CUT: &str = "after_upload_cut";
/// A finished upload was verified and fsynced, but not yet renamed under `blobs/`.
pub const BEFORE_RENAME: &str = "before_rename";
/// A blob is in place under `blobs/`, but its metadata row and link are not committed.
pub const BEFORE_BLOB_LINK: &str = "before_blob_link";
/// A blob's link is committed, but the client has not been answered.
pub const AFTER_BLOB_LINK: &str = "after_blob_link";
/// A manifest was validated, but its metadata transaction has not run.
pub const BEFORE_MANIFEST_COMMIT: &str = "before_manifest_commit";
/// A manifest is committed, but the client has not been answered.
pub const AFTER_MANIFEST_COMMIT: &str = "after_manifest_commit";
/// `berth keys rewrap` computed a batch of re-wrapped data keys but has not committed it.
pub const REWRAP_BATCH: &str = "rewrap_batch";
/// `berth encrypt` sealed a blob in place but has not switched its state to sealed.
pub const BEFORE_SEAL_SWITCH: &str = "before_seal_switch";
/// `berth migrate-storage` sealed a plaintext blob into the encrypted target but has not
/// switched its data key's state to sealed.
pub const MIGRATE_SEAL_SWITCH: &str = "migrate_seal_switch";

/// Every point there is; a name outside this list is a typo and refused.
pub const ALL: &[&str] = &[
    REWRAP_BATCH,
    BEFORE_SEAL_SWITCH,
    MIGRATE_SEAL_SWITCH,
    AFTER_TEMP_WRITE,
    AFTER_UPLOAD_CUT,
    BEFORE_RENAME,
    BEFORE_BLOB_LINK,
    AFTER_BLOB_LINK,
    BEFORE_MANIFEST_COMMIT,
    AFTER_MANIFEST_COMMIT,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Error,
    Abort,
}

#[derive(Debug)]
struct Point {
    action: Action,
    /// Hits left before the point goes inert; `None` fires every time.
    remaining: Option<AtomicU64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FailpointError {
    #[error("{ENV}: {0:?} is not NAME=ACTION")]
    Syntax(String),
    #[error("{ENV}: unknown failpoint {0:?} (known: {known})", known = ALL.join(", "))]
    UnknownPoint(String),
    #[error("{ENV}: unknown action {0:?} (use error, abort, or N*error / N*abort)")]
    UnknownAction(String),
}

type Points = HashMap<&'static str, Point>;

static POINTS: OnceLock<Result<Option<Points>, FailpointError>> = OnceLock::new();

fn parse(spec: &str) -> Result<Option<Points>, FailpointError> {
    let mut points = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item
            .split_once('=')
            .ok_or_else(|| FailpointError::Syntax(item.to_owned()))?;
        let name = ALL
            .iter()
            .copied()
            .find(|p| *p == name.trim())
            .ok_or_else(|| FailpointError::UnknownPoint(name.trim().to_owned()))?;
        let action = action.trim();
        let (count, verb) = match action.split_once('*') {
            Some((n, verb)) => {
                let n = n
                    .parse::<u64>()
                    .map_err(|_| FailpointError::UnknownAction(action.to_owned()))?;
                (Some(n), verb)
            }
            None => (None, action),
        };
        let action = match verb {
            "error" => Action::Error,
            "abort" => Action::Abort,
            _ => return Err(FailpointError::UnknownAction(action.to_owned())),
        };
        points.insert(
            name,
            Point {
                action,
                remaining: count.map(AtomicU64::new),
            },
        );
    }
    Ok((!points.is_empty()).then_some(points))
}

fn points() -> &'static Result<Option<Points>, FailpointError> {
    POINTS.get_or_init(|| match std::env::var(ENV) {
        Ok(spec) => parse(&spec),
        Err(_) => Ok(None),
    })
}

/// Reads and checks `BERTH_FAILPOINTS`; returns the armed point names. The server calls
/// this at startup so a typo stops it instead of silently testing nothing.
pub fn init() -> Result<Vec<&'static str>, FailpointError> {
    match points() {
        Ok(None) => Ok(Vec::new()),
        Ok(Some(p)) => {
            let mut names: Vec<_> = p.keys().copied().collect();
            names.sort_unstable();
            Ok(names)
        }
        Err(e) => Err(e.clone()),
    }
}

/// Passes through the point `name`: does nothing unless it is armed.
pub fn hit(name: &'static str) -> std::io::Result<()> {
    let Ok(Some(points)) = points() else {
        return Ok(());
    };
    let Some(point) = points.get(name) else {
        return Ok(());
    };
    if let Some(left) = &point.remaining
        && left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
    {
        return Ok(());
    }
    match point.action {
        Action::Error => {
            tracing::warn!(failpoint = name, "failpoint: failing the operation");
            Err(std::io::Error::other(format!("failpoint {name} triggered")))
        }
        Action::Abort => {
            // Straight to stderr: the process dies before a buffered log line would drain.
            eprintln!("berth: failpoint {name}: aborting");
            std::process::abort()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_and_counts() {
        let p = parse(" after_temp_write=abort, before_rename=2*error ,")
            .expect("valid")
            .expect("armed");
        assert_eq!(p[AFTER_TEMP_WRITE].action, Action::Abort);
        assert!(p[AFTER_TEMP_WRITE].remaining.is_none());
        assert_eq!(p[BEFORE_RENAME].action, Action::Error);
        assert_eq!(
            p[BEFORE_RENAME]
                .remaining
                .as_ref()
                .map(|n| n.load(Ordering::SeqCst)),
            Some(2)
        );
        assert!(parse("").expect("empty is fine").is_none());
    }

    #[test]
    fn refuses_typos() {
        assert!(matches!(
            parse("before_renam=error"),
            Err(FailpointError::UnknownPoint(_))
        ));
        assert!(matches!(
            parse("before_rename=explode"),
            Err(FailpointError::UnknownAction(_))
        ));
        assert!(matches!(
            parse("before_rename=x*error"),
            Err(FailpointError::UnknownAction(_))
        ));
        assert!(matches!(
            parse("before_rename"),
            Err(FailpointError::Syntax(_))
        ));
    }
}
