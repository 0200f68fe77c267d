//! Storage quotas as the registry applies them: no byte is written for a tenant that has
//! no room for it.
//!
//! The metadata store decides (under the tenant's row lock, so replicas agree) and counts
//! open upload sessions; this module makes the bytes wait for those decisions:
//! - an append streams only bytes its session has reserved. It reserves the body's
//!   announced length up front (so an oversized body is refused before a byte is read),
//!   and otherwise in growing steps while it streams; a chunk that does not fit is never
//!   handed to storage, the session is cancelled, and the caller gets `DENIED`. Two
//!   appends of one tenant cannot both use the same room: each reservation counts
//!   towards the tenant's usage as soon as it is granted.
//! - a finished upload is checked against the quota before its bytes move into `blobs/`
//!   (`admit_blob`); the link checks again in its own transaction.
//! - a monolithic upload of a tenant with a quota gets a session row of its own, so its
//!   bytes are reserved the same way.
//! - an upload that names a digest its tenant already links (a monolithic upload, or the
//!   last chunk of a completion) needs no room up to that blob's size: pushing a shared
//!   layer again into another repository brings nothing new. Its bytes stream unreserved
//!   only while the request runs, and never past that size. A PATCH cannot know its
//!   digest: a full tenant is refused there, and mounts the blob instead.

use std::sync::Arc;

use berth_meta::{QuotaExceeded, Reservation};
use berth_storage::HashState;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::stats::bump;
use crate::{Registry, RegistryError, Result};

/// The first reservation of a body of unknown length; each further one doubles, up to
/// [`MAX_STEP`]. Each step is one metadata write (about 20 for 1 GB). Room reserved and not
/// written is held only while the append runs, but near the quota's edge it can refuse a
/// concurrent upload of the same tenant that would have fitted; small steps keep that
/// window small. Announced lengths reserve exactly.
const FIRST_STEP: u64 = 1 << 20;
const MAX_STEP: u64 = 64 << 20;

/// What a quota refused, by request: `berth_quota_refusals_total{what}`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refused {
    /// A blob: a monolithic upload, the request completing an upload (its last chunk or
    /// the blob it makes), a mount.
    Blob,
    /// A `PATCH` of an upload session.
    Chunk,
    Manifest,
}

/// A body's error, or the quota's refusal to take more of it.
#[derive(Debug, thiserror::Error)]
enum Gated<E> {
    #[error(transparent)]
    Body(E),
    #[error("storage quota exceeded")]
    Quota,
    #[error("upload session is gone")]
    Gone,
    #[error("reserving room for the upload failed")]
    Failed,
}

/// Room reserved for one append, and why it stopped, if it did.
#[derive(Default)]
struct Room {
    /// Bytes that need no room: the upload claims a blob its tenant already counts, so up
    /// to that blob's size its bytes bring nothing new.
    free: u64,
    /// Bytes reserved so far.
    reserved: u64,
    /// The quota went away while the body streamed.
    unlimited: bool,
    refused: Option<QuotaExceeded>,
    gone: bool,
    /// The metadata store failed to answer a reservation.
    failed: Option<berth_meta::MetaError>,
}

impl Registry {
    /// The error a refusal is answered with, counted in `berth_quota_refusals_total`.
    pub(crate) fn over_quota(&self, what: Refused, q: QuotaExceeded) -> RegistryError {
        self.refuse(what, q, "")
    }

    /// [`Registry::over_quota`] for a refusal that ended the upload session.
    pub(crate) fn over_quota_cancelled(&self, what: Refused, q: QuotaExceeded) -> RegistryError {
        self.refuse(what, q, "; the upload session was cancelled")
    }

    fn refuse(&self, what: Refused, q: QuotaExceeded, note: &str) -> RegistryError {
        let s = self.stats();
        let (counter, thing) = match what {
            Refused::Blob => (&s.quota_refused_blobs, "this blob needs"),
            Refused::Chunk => (&s.quota_refused_chunks, "this chunk needs"),
            Refused::Manifest => (&s.quota_refused_manifests, "this manifest needs"),
        };
        bump(counter, 1);
        let QuotaExceeded {
            tenant,
            quota,
            used,
            size,
        } = q;
        RegistryError::OverQuota(format!(
            "storage quota of tenant {tenant} exceeded: {used} of {quota} bytes used, {thing} {size} more{note}"
        ))
    }

    /// Appends `body` to session `id` (at its acknowledged `offset`) within its tenant's
    /// quota; `announced` is the body's length as the client announced it, and the first
    /// `free` bytes need no room (see [`Room::free`]). Returns the new size and the bytes
    /// reserved, which the caller gives back when it acknowledges (or fails to). A refusal
    /// cancels the session.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn append_within_quota<S, E>(
        &self,
        id: &str,
        offset: u64,
        state: &mut HashState,
        body: S,
        announced: Option<u64>,
        free: u64,
        what: Refused,
    ) -> Result<(u64, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut room = Room {
            free,
            ..Room::default()
        };
        // What the client says it sends (Content-Range or Content-Length); the body may
        // not be longer, and a shorter one fails anyway, so asking exactly this much room
        // up front refuses nothing that could have fitted.
        let need = announced.unwrap_or(0).saturating_sub(free);
        if need > 0 {
            match self.meta.reserve_upload(id, need, need).await? {
                Reservation::Granted(n) => room.reserved = n,
                Reservation::Unlimited => room.unlimited = true,
                Reservation::Refused(q) => {
                    self.discard_upload(id).await;
                    return Err(self.over_quota_cancelled(what, q));
                }
                Reservation::UnknownUpload => return Err(RegistryError::UploadUnknown),
            }
        }
        let room = Arc::new(std::sync::Mutex::new(room));
        let gated = gate(self.clone(), id.to_owned(), Arc::clone(&room), body);
        let appended = self
            .append_upload(id, offset, state, gated, self.config.max_blob_bytes)
            .await;
        let (reserved, refused, gone, failed) = {
            let mut r = room.lock().unwrap_or_else(|e| e.into_inner());
            (r.reserved, r.refused.take(), r.gone, r.failed.take())
        };
        match appended {
            Ok(size) => Ok((size, reserved)),
            Err(e) => {
                if let Some(q) = refused {
                    self.discard_upload(id).await;
                    return Err(self.over_quota_cancelled(what, q));
                }
                self.release(id, reserved).await;
                if gone {
                    return Err(RegistryError::UploadUnknown);
                }
                if let Some(failed) = failed {
                    return Err(failed.into());
                }
                Err(e.into())
            }
        }
    }

    /// Gives back reserved room; a failure leaves it counted until the session ends.
    pub(crate) async fn release(&self, id: &str, reserved: u64) {
        if let Err(e) = self.meta.release_upload(id, reserved).await {
            tracing::warn!(upload = id, error = %e, "could not release an upload's reserved room");
        }
    }

    /// Removes a session and its bytes, best effort: what is left, the stale-upload sweep
    /// removes.
    pub(crate) async fn discard_upload(&self, id: &str) {
        if let Err(e) = self.meta.delete_upload(id).await {
            tracing::warn!(upload = id, error = %e, "could not delete an upload session");
        }
        if let Err(e) = self.blobs.delete_upload(id).await {
            tracing::warn!(upload = id, error = %e, "could not delete an upload's data");
        }
    }
}

/// `body`, passing on only bytes reserved for session `id`: before a chunk that would go
/// past the reservation, it reserves more; if the quota refuses, the chunk is not passed on
/// and the stream ends in an error, so storage discards the append.
fn gate<S, E>(
    reg: Registry,
    id: String,
    room: Arc<std::sync::Mutex<Room>>,
    body: S,
) -> impl Stream<Item = std::result::Result<Bytes, Gated<E>>> + Send
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    struct St<S> {
        body: std::pin::Pin<Box<S>>,
        reg: Registry,
        id: String,
        room: Arc<std::sync::Mutex<Room>>,
        passed: u64,
        step: u64,
        done: bool,
    }
    let st = St {
        body: Box::pin(body),
        reg,
        id,
        room,
        passed: 0,
        step: FIRST_STEP,
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let chunk = match st.body.next().await? {
            Ok(c) => c,
            Err(e) => {
                st.done = true;
                return Some((Err(Gated::Body(e)), st));
            }
        };
        st.passed += chunk.len() as u64;
        let (allowed, unlimited) = {
            let r = st.room.lock().unwrap_or_else(|e| e.into_inner());
            (r.free.saturating_add(r.reserved), r.unlimited)
        };
        if unlimited || st.passed <= allowed {
            return Some((Ok(chunk), st));
        }
        let need = st.passed - allowed;
        let want = need.max(st.step);
        st.step = (st.step * 2).min(MAX_STEP);
        let answer = st.reg.meta.reserve_upload(&st.id, need, want).await;
        let mut r = st.room.lock().unwrap_or_else(|e| e.into_inner());
        let stop = match answer {
            Ok(Reservation::Granted(n)) => {
                r.reserved += n;
                None
            }
            Ok(Reservation::Unlimited) => {
                r.unlimited = true;
                None
            }
            Ok(Reservation::Refused(q)) => {
                r.refused = Some(q);
                Some(Gated::Quota)
            }
            Ok(Reservation::UnknownUpload) => {
                r.gone = true;
                Some(Gated::Gone)
            }
            Err(e) => {
                r.failed = Some(e);
                Some(Gated::Failed)
            }
        };
        drop(r);
        match stop {
            None => Some((Ok(chunk), st)),
            Some(err) => {
                st.done = true;
                Some((Err(err), st))
            }
        }
    })
}
