//! Read caches of several replicas kept honest: on PostgreSQL every change that a cache
//! could hold stale (a tag moved or deleted, a manifest deleted, a blob unlinked) sends a
//! `NOTIFY` inside its own transaction, so it is delivered exactly when the change commits;
//! every replica `LISTEN`s and drops the entry. SQLite has one writer process, so nothing is
//! sent there.

use sqlx::Transaction;
use sqlx::postgres::PgListener;

use crate::{Backend, MetaStore, Result};

const CHANNEL: &str = "berth_cache";

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
    pub async fn listen_invalidations(
        &self,
        apply: impl Fn(Invalidation) + Send + 'static,
    ) -> Result<Option<tokio::task::JoinHandle<()>>> {
        let Some(url) = self.url.clone() else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(&url).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if let Some(inv) = Invalidation::decode(n.payload()) {
                            apply(inv);
                        }
                    }
                    // The connection dropped and is being re-established: whatever was
                    // sent meanwhile is lost.
                    Ok(None) => apply(Invalidation::All),
                    Err(e) => {
                        tracing::warn!(error = %e, "cache invalidation listener failed; retrying");
                        apply(Invalidation::All);
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        })))
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
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::decode(&inv.encode()), Some(inv));
        }
        assert_eq!(Invalidation::decode("q a b"), None);
        assert_eq!(Invalidation::decode("t a"), None);
    }
}
