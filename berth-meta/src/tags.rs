//! Tag changes under tag rules, and the tag history.
//!
//! Which tags are immutable is the registry's decision (its rules look at names only); this
//! module applies that decision inside the transaction that changes the tag, against the
//! tag row as it stands there. That is what makes immutability hold across replicas and
//! concurrent pushes: a check in memory before the write would let two pushes of different
//! digests to a new tag both see "absent" and both win.

use sqlx::{Row, Transaction};

use crate::jobs::{Change, ChangeKind, JobsHook};
use crate::{Actor, MetaStore, Removal, Result, now_micros, to_i64, to_u64};

/// What the registry's rules say about a change, applied inside its transaction: which
/// tags are immutable, and which jobs (events, replication) the change queues.
#[derive(Clone, Copy)]
pub struct TagGuard<'a> {
    /// Names the rule that makes a tag immutable, or `None` for a mutable tag.
    pub immutable: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// Acting as an admin: may delete immutable tags (and manifests they point at) and
    /// roll them back. Pushes never move an immutable tag, admin or not.
    pub admin: bool,
    /// The jobs the change causes, written in its transaction (see [`crate::jobs`]).
    pub jobs: &'a JobsHook<'a>,
}

fn no_rule(_: &str) -> Option<String> {
    None
}

impl TagGuard<'static> {
    /// No rules: every tag is mutable.
    pub const NONE: TagGuard<'static> = TagGuard {
        immutable: &no_rule,
        admin: false,
        jobs: &crate::jobs::no_jobs,
    };
}

/// How a tag changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagChange {
    Create,
    Move,
    Delete,
    Rollback,
}

impl TagChange {
    pub fn as_str(self) -> &'static str {
        match self {
            TagChange::Create => "create",
            TagChange::Move => "move",
            TagChange::Delete => "delete",
            TagChange::Rollback => "rollback",
        }
    }

    fn parse(s: &str) -> Option<TagChange> {
        Some(match s {
            "create" => TagChange::Create,
            "move" => TagChange::Move,
            "delete" => TagChange::Delete,
            "rollback" => TagChange::Rollback,
            _ => return None,
        })
    }
}

/// One row of a tag's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEvent {
    pub id: i64,
    pub kind: TagChange,
    /// `None` for a creation.
    pub old_digest: Option<String>,
    /// `None` for a deletion.
    pub new_digest: Option<String>,
    pub actor: String,
    pub source: Option<String>,
    /// Microseconds since the epoch.
    pub at: i64,
}

/// The outcome of [`MetaStore::rollback_tag`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetTag {
    /// The tag now points at the digest (possibly it already did).
    Set,
    /// The manifest is not (or no longer) in the repository.
    ManifestUnknown,
    /// The tag no longer points where the caller expected; nothing was written.
    Moved { current: Option<String> },
    /// The tag is immutable and the caller may not move it.
    Immutable { rule: String },
}

pub(crate) struct TagWrite<'a> {
    pub repo_id: i64,
    pub tag: &'a str,
    pub digest: &'a str,
    /// Recorded kind when the tag changes; `None` = create or move, as it turns out.
    pub kind: Option<TagChange>,
    /// `Some(current)`: write only if the tag still points there (`None` = absent).
    pub expected: Option<Option<&'a str>>,
    /// The rule making this tag immutable, if any.
    pub immutable: Option<&'a str>,
    pub override_immutable: bool,
    pub actor: &'a Actor,
}

pub(crate) enum Written {
    /// The tag was written; it named `previous` before (`None`: it was created).
    Changed {
        previous: Option<String>,
    },
    Unchanged,
    /// Immutable, pointing at this other digest.
    Immutable(String),
    Moved(Option<String>),
}

type Tx = Transaction<'static, sqlx::Any>;

impl MetaStore {
    /// The tag's digest, locking its row on PostgreSQL (a no-op UPDATE, as `put_manifest`
    /// locks references) so nobody moves it before this transaction ends. SQLite's write
    /// transactions are serial already.
    pub(crate) async fn lock_tag(tx: &mut Tx, repo_id: i64, tag: &str) -> Result<Option<String>> {
        let locked =
            sqlx::query("UPDATE tags SET updated_at = updated_at WHERE repo_id = $1 AND name = $2")
                .bind(repo_id)
                .bind(tag)
                .execute(&mut **tx)
                .await?;
        if locked.rows_affected() == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT digest FROM tags WHERE repo_id = $1 AND name = $2")
            .bind(repo_id)
            .bind(tag)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Points a tag at a digest whose manifest is in the repository, applying the rule and
    /// recording the change.
    pub(crate) async fn write_tag(tx: &mut Tx, w: &TagWrite<'_>) -> Result<Written> {
        // A concurrent creator can commit between our look and our insert; then look
        // again. Twice is enough unless the tag is also being deleted over and over.
        for _ in 0..4 {
            let current = Self::lock_tag(tx, w.repo_id, w.tag).await?;
            if let Some(expected) = w.expected
                && expected != current.as_deref()
            {
                return Ok(Written::Moved(current));
            }
            let now = now_micros();
            match current {
                Some(c) if c == w.digest => return Ok(Written::Unchanged),
                Some(c) => {
                    if w.immutable.is_some() && !w.override_immutable {
                        return Ok(Written::Immutable(c));
                    }
                    sqlx::query(
                        "UPDATE tags SET digest = $1, updated_at = $2 WHERE repo_id = $3 AND name = $4",
                    )
                    .bind(w.digest)
                    .bind(now)
                    .bind(w.repo_id)
                    .bind(w.tag)
                    .execute(&mut **tx)
                    .await?;
                    let kind = w.kind.unwrap_or(TagChange::Move);
                    Self::record_tag(
                        tx,
                        w.repo_id,
                        w.tag,
                        kind,
                        Some(&c),
                        Some(w.digest),
                        w.actor,
                    )
                    .await?;
                    return Ok(Written::Changed { previous: Some(c) });
                }
                None => {
                    let inserted = sqlx::query(
                        "INSERT INTO tags (repo_id, name, sort_key, digest, updated_at, version_key) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (repo_id, name) DO NOTHING",
                    )
                    .bind(w.repo_id)
                    .bind(w.tag)
                    .bind(berth_oci::tag_sort_key(w.tag))
                    .bind(w.digest)
                    .bind(now)
                    .bind(berth_oci::semver::version_key(w.tag))
                    .execute(&mut **tx)
                    .await?;
                    if inserted.rows_affected() == 1 {
                        let kind = w.kind.unwrap_or(TagChange::Create);
                        Self::record_tag(tx, w.repo_id, w.tag, kind, None, Some(w.digest), w.actor)
                            .await?;
                        return Ok(Written::Changed { previous: None });
                    }
                }
            }
        }
        Err(crate::MetaError::Contended(format!(
            "tag {} kept changing while being written",
            w.tag
        )))
    }

    pub(crate) async fn record_tag(
        tx: &mut Tx,
        repo_id: i64,
        tag: &str,
        kind: TagChange,
        old: Option<&str>,
        new: Option<&str>,
        actor: &Actor,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tag_history (repo_id, tag, kind, old_digest, new_digest, actor, source, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(repo_id)
        .bind(tag)
        .bind(kind.as_str())
        .bind(old)
        .bind(new)
        .bind(&actor.name)
        .bind(actor.source.as_deref())
        .bind(now_micros())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Removes every tag on a manifest that is being deleted, recording each, and returns
    /// their names; or, if one of them is immutable and the guard is not an admin's, names
    /// it and changes nothing.
    pub(crate) async fn remove_tags_of(
        tx: &mut Tx,
        repo_id: i64,
        digest: &str,
        actor: &Actor,
        guard: TagGuard<'_>,
    ) -> Result<Result<Vec<String>, Removal>> {
        let rows = sqlx::query(
            "SELECT name FROM tags WHERE repo_id = $1 AND digest = $2 ORDER BY sort_key",
        )
        .bind(repo_id)
        .bind(digest)
        .fetch_all(&mut **tx)
        .await?;
        let names: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if !guard.admin {
            for name in &names {
                if let Some(rule) = (guard.immutable)(name) {
                    return Ok(Err(Removal::Immutable {
                        tag: name.clone(),
                        rule,
                    }));
                }
            }
        }
        sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest)
            .execute(&mut **tx)
            .await?;
        for name in &names {
            Self::record_tag(
                tx,
                repo_id,
                name,
                TagChange::Delete,
                Some(digest),
                None,
                actor,
            )
            .await?;
        }
        Ok(Ok(names))
    }

    /// Rolls `tag` back to a manifest already in the repository, if it still points at
    /// `expected` (`None` = absent), recorded as a rollback. An immutable tag (per the
    /// guard) moves only for an admin.
    pub async fn rollback_tag(
        &self,
        repo: &str,
        tag: &str,
        digest: &str,
        expected: Option<&str>,
        actor: &Actor,
        guard: TagGuard<'_>,
    ) -> Result<SetTag> {
        let mut tx = self.write().await?;
        let Some(repo_id) = Self::repo_id_in(&mut *tx, repo).await? else {
            return Ok(SetTag::ManifestUnknown);
        };
        let rule = (guard.immutable)(tag);
        if let Some(rule) = &rule
            && !guard.admin
        {
            tx.rollback().await?;
            return Ok(SetTag::Immutable { rule: rule.clone() });
        }
        // Locks the manifest row on PostgreSQL, so a concurrent delete waits for this.
        let found = sqlx::query(
            "UPDATE manifests SET created_at = created_at WHERE repo_id = $1 AND digest = $2",
        )
        .bind(repo_id)
        .bind(digest)
        .execute(&mut *tx)
        .await?;
        if found.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(SetTag::ManifestUnknown);
        }
        let written = Self::write_tag(
            &mut tx,
            &TagWrite {
                repo_id,
                tag,
                digest,
                kind: Some(TagChange::Rollback),
                expected: Some(expected),
                immutable: rule.as_deref(),
                override_immutable: guard.admin,
                actor,
            },
        )
        .await?;
        match written {
            Written::Changed { previous } => {
                let target = format!("{tag}@{digest}");
                Self::audit(&mut tx, actor, "tag.rollback", Some(repo), Some(&target)).await?;
                let row = sqlx::query(
                    "SELECT media_type, length(content) FROM manifests WHERE repo_id = $1 AND digest = $2",
                )
                .bind(repo_id)
                .bind(digest)
                .fetch_one(&mut *tx)
                .await?;
                let media_type: String = row.try_get(0)?;
                let change = Change {
                    kind: ChangeKind::Rollback,
                    repo,
                    digest,
                    media_type: Some(&media_type),
                    size: Some(to_u64(row.try_get(1)?)),
                    tag: Some(tag),
                    previous: previous.as_deref(),
                    tags: &[],
                    actor,
                    at: now_micros(),
                };
                Self::queue_jobs_for(&mut tx, guard.jobs, &change).await?;
                let inv = crate::Invalidation::Tag {
                    repo: repo.to_owned(),
                    tag: tag.to_owned(),
                };
                self.notify(&mut tx, inv).await?;
                tx.commit().await?;
                Ok(SetTag::Set)
            }
            Written::Unchanged => {
                tx.rollback().await?;
                Ok(SetTag::Set)
            }
            Written::Immutable(_) => {
                tx.rollback().await?;
                Ok(SetTag::Immutable {
                    rule: rule.unwrap_or_default(),
                })
            }
            Written::Moved(current) => {
                tx.rollback().await?;
                Ok(SetTag::Moved { current })
            }
        }
    }

    /// A tag's history, newest first, at most `limit` rows.
    pub async fn tag_history(&self, repo: &str, tag: &str, limit: u64) -> Result<Vec<TagEvent>> {
        let Some(repo_id) = Self::repo_id_in(&self.pool, repo).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT id, kind, old_digest, new_digest, actor, source, at FROM tag_history \
             WHERE repo_id = $1 AND tag = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(repo_id)
        .bind(tag)
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(1)?;
                Ok(TagEvent {
                    id: r.try_get(0)?,
                    kind: TagChange::parse(&kind).ok_or_else(|| {
                        crate::MetaError::Corrupt(format!("tag history kind {kind:?}"))
                    })?,
                    old_digest: r.try_get(2)?,
                    new_digest: r.try_get(3)?,
                    actor: r.try_get(4)?,
                    source: r.try_get(5)?,
                    at: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Every tag of a repository with its digest, in the one tag order; `None` if the
    /// repository is unknown.
    pub async fn tag_digests(&self, repo: &str) -> Result<Option<Vec<(String, String)>>> {
        let Some(repo_id) = Self::repo_id_in(&self.pool, repo).await? else {
            return Ok(None);
        };
        let rows =
            sqlx::query("SELECT name, digest FROM tags WHERE repo_id = $1 ORDER BY sort_key")
                .bind(repo_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(Some(
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_>>()?,
        ))
    }
}
