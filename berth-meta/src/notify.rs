//! Read caches of several replicas kept honest: on PostgreSQL every change that a cache
//! could hold stale (a tag moved or deleted, a manifest deleted, a blob unlinked) sends a
//! `NOTIFY` inside its own transaction, so it is delivered exactly when the change commits;
//! every replica `LISTEN`s and drops the entry. SQLite has one writer process, so nothing is
//! sent there.

use sqlx::Transaction;
use sqlx::postgres::PgListener;

use crate::{Backend, MetaStore, Result};

const CHANNEL: &str = "berth_cache";

/// How often the listening connection is checked (alive, and not on a read-only server).
const LISTENER_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the listening connection is on a server that takes no writes. If so, the pool's
/// connections are likely on it too: they are checked and replaced before their next use,
/// so that reads do not go on answering from a fenced old primary.
async fn listener_read_only(l: &mut PgListener) -> Result<bool> {
    let v: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(l)
        .await?;
    if v == "on" {
        crate::note_read_only();
    }
    Ok(v == "on")
}

/// What another replica changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A tag moved or was deleted.
    Tag { repo: String, tag: String },
    /// A manifest was deleted, and its tags with it.
    Manifest { repo: String, digest: String },
    /// A blob was unlinked from a repository.
    Blob { repo: String, digest: String },
    /// Signature verdicts of a repository may have changed (a signature or index came or
    /// went) or, with no repository, the policy itself changed.
    Verdicts { repo: Option<String> },
    /// A manifest pull was recorded for the node at `addr`: its agent's waiting grants
    /// request is answered now rather than at its next look at the store.
    Granted { addr: String },
    /// Notifications may have been missed (the listening connection was lost): drop
    /// everything.
    All,
}

impl Invalidation {
    // Repository names, tags and digests never contain a space.
    fn encode(&self) -> String {
        match self {
            Invalidation::Tag { repo, tag } => format!("t {repo} {tag}"),
            Invalidation::Manifest { repo, digest } => format!("m {repo} {digest}"),
            Invalidation::Blob { repo, digest } => format!("b {repo} {digest}"),
            Invalidation::Verdicts { repo: Some(repo) } => format!("v {repo}"),
            Invalidation::Verdicts { repo: None } => "v".to_owned(),
            Invalidation::Granted { addr } => format!("g {addr}"),
            Invalidation::All => "*".to_owned(),
        }
    }

    fn decode(s: &str) -> Option<Invalidation> {
        if s == "*" {
            return Some(Invalidation::All);
        }
        if s == "v" {
            return Some(Invalidation::Verdicts { repo: None });
        }
        if let Some(addr) = s.strip_prefix("g ") {
            return Some(Invalidation::Granted {
                addr: addr.to_owned(),
            });
        }
        if let Some(repo) = s.strip_prefix("v ") {
            return Some(Invalidation::Verdicts {
                repo: Some(repo.to_owned()),
            });
        }
        let mut parts = s.splitn(3, ' ');
        let (kind, repo, item) = (parts.next()?, parts.next()?, parts.next()?);
        let (repo, item) = (repo.to_owned(), item.to_owned());
        Some(match kind {
            "t" => Invalidation::Tag { repo, tag: item },
            "m" => Invalidation::Manifest { repo, digest: item },
            "b" => Invalidation::Blob { repo, digest: item },
            _ => return None,
        })
    }
}

impl MetaStore {
    /// Queues `inv` for the other replicas; sent when `tx` commits, dropped if it rolls
    /// back.
    pub(crate) async fn notify(
        &self,
        tx: &mut Transaction<'static, sqlx::Any>,
        inv: Invalidation,
    ) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(inv.encode())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Calls `apply` for every change another replica commits, until the store is dropped.
    /// `None` on SQLite, where there are no other replicas to hear from.
    ///
    /// When the listening connection is lost, `apply` gets [`Invalidation::All`] at once
    /// and again once `LISTEN` is back in place: changes committed while nobody listened
    /// are unknown, so everything cached before that moment must be asked for again.
    /// Reconnection is retried every second, each attempt bounded by the pool's acquire
    /// timeout.
    pub async fn listen_invalidations(
        &self,
        apply: impl Fn(Invalidation) + Send + 'static,
    ) -> Result<Option<tokio::task::JoinHandle<()>>> {
        let Some(url) = self.url.clone() else {
            return Ok(None);
        };
        let timeout = self.pool.options().get_acquire_timeout();
        let first = Self::listener(&url, timeout).await?;
        Ok(Some(tokio::spawn(async move {
            let mut listener = Some(first);
            loop {
                let mut l = match listener.take() {
                    Some(l) => l,
                    None => match Self::listener(&url, timeout).await {
                        Ok(l) => {
                            tracing::info!("cache invalidation listener reconnected");
                            apply(Invalidation::All);
                            l
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "cache invalidation listener still down");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                };
                let mut check = tokio::time::interval(LISTENER_CHECK);
                check.tick().await;
                loop {
                    let received = tokio::select! {
                        r = l.try_recv() => r,
                        _ = check.tick() => {
                            // A connection left on a server that stopped taking writes
                            // (a failover moved the primary elsewhere) hears nothing the
                            // new primary sends; one that is silently gone hears nothing
                            // at all. Both are found here.
                            match tokio::time::timeout(timeout, listener_read_only(&mut l)).await {
                                Ok(Ok(false)) => continue,
                                Ok(Ok(true)) => {
                                    tracing::warn!("cache invalidation listener is on a read-only server; reconnecting");
                                    break;
                                }
                                Ok(Err(e)) => {
                                    tracing::warn!(error = %e, "cache invalidation listener failed its check");
                                    break;
                                }
                                Err(_) => {
                                    tracing::warn!("cache invalidation listener did not answer its check");
                                    break;
                                }
                            }
                        }
                    };
                    match received {
                        Ok(Some(n)) => {
                            if let Some(inv) = Invalidation::decode(n.payload()) {
                                apply(inv);
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("cache invalidation listener lost its connection");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cache invalidation listener failed");
                            break;
                        }
                    }
                }
                apply(Invalidation::All);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })))
    }

    /// A listening connection of its own (not from the request pool), `LISTEN`ing.
    async fn listener(url: &str, timeout: std::time::Duration) -> Result<PgListener> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(timeout)
            .connect(url)
            .await?;
        let mut l = PgListener::connect_with(&pool).await?;
        // A lost connection is reported at once rather than re-established silently: the
        // caller must learn that notifications were missed.
        l.eager_reconnect(false);
        l.listen(CHANNEL).await?;
        // The new primary's notifications do not reach a standby or a fenced old primary.
        if listener_read_only(&mut l).await? {
            return Err(crate::MetaError::Unavailable(
                "the server only accepts read-only transactions".into(),
            ));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for inv in [
            Invalidation::Tag {
                repo: "a/b".into(),
                tag: "v1".into(),
            },
            Invalidation::Manifest {
                repo: "a".into(),
                digest: "sha256:00".into(),
            },
            Invalidation::Blob {
                repo: "x/y/z".into(),
                digest: "sha256:11".into(),
            },
            Invalidation::Verdicts {
                repo: Some("a/b".into()),
            },
            Invalidation::Verdicts { repo: None },
            Invalidation::Granted {
                addr: "10.0.0.7".into(),
            },
            Invalidation::Granted {
                addr: "fd00::1".into(),
            },
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::decode(&inv.encode()), Some(inv));
        }
        assert_eq!(Invalidation::decode("q a b"), None);
        assert_eq!(Invalidation::decode("t a"), None);
    }
}
