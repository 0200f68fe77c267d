//! What the listing commands print (`user list`, `tenant list`, `tenant members`, `tenant
//! quota`, `robot list`, `tag history`, `tag list`, `tag resolve`, `audit`, `events list`,
//! `events dead`, `events webhooks`, `policy check`, and the signatures and rules of
//! `verify`).
//!
//! For people: a table with a header row, times in RFC 3339 (UTC), absent values as `-`,
//! control characters escaped (see `output`).
//!
//! For scripts (`--json`): JSON Lines, one object per row and nothing else, with the raw
//! values (bytes as numbers, lists as arrays, absent values as `null`). Every time is
//! given twice: as Unix seconds under a key ending in `at` (`created_at`, `expires_at`,
//! or `at` for events) and as RFC 3339 text beside it (`created`, `expires`, or `time`).
//! An empty listing prints the header alone, or with `--json` nothing.

use berth_meta::{AuditRecord, TenantRow, Usage, UserRow};
use berth_registry::access::RobotInfo;
use berth_registry::events::{JobView, WebhookView};
use berth_registry::policy::{DryRun, RuleReport, SignatureReport};
use berth_registry::{HistoryEntry, VersionedTag};
use serde_json::{Value, json};

use crate::output::{self, Table};

/// One kind of row, as a table row and as a JSON object.
pub trait Row {
    const HEADER: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
    fn json(&self) -> Value;
}

/// The rows as a table, or as JSON Lines.
pub fn render<R: Row>(rows: &[R], json: bool) -> String {
    if json {
        rows.iter().map(|r| format!("{}\n", r.json())).collect()
    } else {
        let mut t = Table::new(R::HEADER);
        for r in rows {
            t.row(r.cells());
        }
        t.render()
    }
}

pub fn print<R: Row>(rows: &[R], json: bool) {
    output::print(&render(rows, json));
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Seconds from the microseconds the metadata store keeps.
fn secs(micros: i64) -> i64 {
    micros.div_euclid(1_000_000)
}

impl Row for UserRow {
    const HEADER: &'static [&'static str] = &["NAME", "ADMIN", "DISABLED", "CREATED"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            yes_no(self.admin).into(),
            yes_no(self.disabled).into(),
            output::time(secs(self.created_at)),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name, "admin": self.admin, "disabled": self.disabled,
            "created_at": secs(self.created_at), "created": output::time(secs(self.created_at)),
        })
    }
}

impl Row for TenantRow {
    const HEADER: &'static [&'static str] = &["NAME", "VISIBILITY", "CREATED"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            if self.public { "public" } else { "private" }.into(),
            output::time(secs(self.created_at)),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name, "public": self.public,
            "created_at": secs(self.created_at), "created": output::time(secs(self.created_at)),
        })
    }
}

/// A member of a tenant and its role.
pub struct Member {
    pub user: String,
    pub role: String,
}

impl Row for Member {
    const HEADER: &'static [&'static str] = &["USER", "ROLE"];

    fn cells(&self) -> Vec<String> {
        vec![self.user.clone(), self.role.clone()]
    }

    fn json(&self) -> Value {
        json!({"user": self.user, "role": self.role})
    }
}

/// A tenant's quota (`None`: none) and what it uses, in bytes.
pub struct Quota {
    pub tenant: String,
    pub quota: Option<u64>,
    pub used: Usage,
}

impl Row for Quota {
    const HEADER: &'static [&'static str] = &[
        "TENANT",
        "QUOTA",
        "USED",
        "BLOBS",
        "MANIFESTS",
        "OPEN UPLOADS",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.tenant.clone(),
            self.quota.map_or_else(|| "none".into(), |q| q.to_string()),
            self.used.total().to_string(),
            self.used.blobs.to_string(),
            self.used.manifests.to_string(),
            self.used.uploads.to_string(),
        ]
    }

    /// The fields of `GET /api/v1/tenants/T/quota`.
    fn json(&self) -> Value {
        json!({
            "tenant": self.tenant, "bytes": self.quota, "used": self.used.total(),
            "blobs": self.used.blobs, "manifests": self.used.manifests,
            "uploads": self.used.uploads,
        })
    }
}

impl Row for RobotInfo {
    const HEADER: &'static [&'static str] = &[
        "LOGIN",
        "ACTIONS",
        "REPOSITORIES",
        "DISABLED",
        "EXPIRES",
        "DESCRIPTION",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.login.clone(),
            self.actions.join(","),
            if self.repositories.is_empty() {
                "*".to_owned()
            } else {
                self.repositories.join(",")
            },
            yes_no(self.disabled).into(),
            self.expires_at.map_or_else(|| "never".into(), output::time),
            output::opt(self.description.as_deref()),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "tenant": self.tenant, "name": self.name, "login": self.login,
            "actions": self.actions, "repositories": self.repositories,
            "description": self.description, "disabled": self.disabled,
            "expires_at": self.expires_at, "expires": self.expires_at.map(output::time),
        })
    }
}

impl Row for HistoryEntry {
    const HEADER: &'static [&'static str] = &["TIME", "EVENT", "FROM", "TO", "ACTOR", "SOURCE"];

    fn cells(&self) -> Vec<String> {
        vec![
            output::time(self.at),
            self.kind.into(),
            output::opt(self.old_digest.as_deref()),
            output::opt(self.new_digest.as_deref()),
            self.actor.clone(),
            output::opt(self.source.as_deref()),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "at": self.at, "time": output::time(self.at), "kind": self.kind,
            "old_digest": self.old_digest, "new_digest": self.new_digest,
            "actor": self.actor, "source": self.source,
        })
    }
}

impl Row for VersionedTag {
    const HEADER: &'static [&'static str] = &["TAG", "DIGEST", "PRERELEASE"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.tag.clone(),
            self.digest.clone(),
            yes_no(self.prerelease).into(),
        ]
    }

    fn json(&self) -> Value {
        json!({"tag": self.tag, "digest": self.digest, "prerelease": self.prerelease})
    }
}

/// An audit row with its id (the cursor of `--before`).
impl Row for (i64, AuditRecord) {
    const HEADER: &'static [&'static str] = &[
        "ID", "TIME", "ACTOR", "SOURCE", "ACTION", "WHERE", "TARGET", "OUTCOME", "DETAIL",
    ];

    fn cells(&self) -> Vec<String> {
        let (id, r) = self;
        vec![
            id.to_string(),
            output::time(secs(r.at)),
            r.actor.clone(),
            output::opt(r.source.as_deref()),
            r.action.clone(),
            output::opt(r.repository.as_deref().or(r.tenant.as_deref())),
            output::opt(r.target.as_deref()),
            r.outcome.clone(),
            output::opt(r.detail.as_deref()),
        ]
    }

    fn json(&self) -> Value {
        let (id, r) = self;
        json!({
            "id": id, "at": secs(r.at), "time": output::time(secs(r.at)),
            "actor": r.actor, "source": r.source,
            "action": r.action, "tenant": r.tenant, "repository": r.repository,
            "target": r.target, "outcome": r.outcome, "detail": r.detail,
        })
    }
}

/// The lower-case name serde gives an enum value (`push`, `cloudevents`).
pub fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Row for JobView {
    const HEADER: &'static [&'static str] = &[
        "ID",
        "QUEUE",
        "LANE",
        "STATE",
        "ATTEMPTS",
        "QUEUED",
        "NEXT",
        "EVENTS",
        "LAST ERROR",
    ];

    fn cells(&self) -> Vec<String> {
        let events = match (&self.first_event, self.events) {
            (None, _) => "-".to_owned(),
            (Some((id, action)), 1) => format!("{} {id}", serde_name(action)),
            (Some((id, action)), n) => format!("{n} {} events from {id}", serde_name(action)),
        };
        vec![
            self.id.to_string(),
            self.queue.clone(),
            self.lane.clone(),
            self.state.to_owned(),
            self.attempts.to_string(),
            output::time(secs(self.created_at)),
            if self.state == "dead" {
                "-".to_owned()
            } else {
                output::time(secs(self.next_attempt_at))
            },
            events,
            output::opt(self.last_error.as_deref()),
        ]
    }

    fn json(&self) -> Value {
        let next = (self.state != "dead").then(|| secs(self.next_attempt_at));
        json!({
            "id": self.id, "kind": self.kind, "queue": self.queue, "lane": self.lane,
            "state": self.state, "attempts": self.attempts,
            "created_at": secs(self.created_at), "created": output::time(secs(self.created_at)),
            "next_attempt_at": next, "next_attempt": next.map(output::time),
            "last_error": self.last_error, "events": self.events,
            "first_event": self.first_event.as_ref().map(|(id, action)| json!({
                "id": id, "action": serde_name(action),
            })),
        })
    }
}

impl Row for WebhookView {
    const HEADER: &'static [&'static str] =
        &["QUEUE", "URL", "EVENTS", "FORMAT", "SIGNED", "SOURCE"];

    fn cells(&self) -> Vec<String> {
        let events: Vec<String> = self.events.iter().map(serde_name).collect();
        vec![
            self.queue.clone(),
            self.url.clone(),
            events.join(","),
            serde_name(&self.format),
            yes_no(self.signed).into(),
            if self.from_config { "config" } else { "api" }.into(),
        ]
    }

    fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A signature `berth verify` found for `image`.
pub struct Signature<'a> {
    pub image: &'a str,
    pub report: &'a SignatureReport,
}

impl Row for Signature<'_> {
    const HEADER: &'static [&'static str] = &[
        "KIND",
        "SIGNATURE",
        "FOR",
        "VALID",
        "SIGNED BY OR WHY NOT",
        "WARNINGS",
    ];

    fn cells(&self) -> Vec<String> {
        let s = self.report;
        let result = match (&s.signed_by, &s.failure) {
            (_, Some(f)) => f.to_string(),
            (Some(by), None) => by.clone(),
            (None, None) => "-".to_owned(),
        };
        vec![
            s.kind.to_owned(),
            s.manifest.clone(),
            if s.covers == self.image {
                "the image".to_owned()
            } else {
                format!("index {}", s.covers)
            },
            yes_no(s.valid).into(),
            result,
            if s.warnings.is_empty() {
                "-".to_owned()
            } else {
                s.warnings.join("; ")
            },
        ]
    }

    fn json(&self) -> Value {
        serde_json::to_value(self.report).unwrap_or(Value::Null)
    }
}

impl Row for RuleReport {
    const HEADER: &'static [&'static str] = &["RULE", "MODE", "ENFORCING WOULD"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.rule.clone(),
            serde_name(&self.mode),
            self.decision.to_owned(),
        ]
    }

    fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A dry run of one rule (`berth policy check`).
impl Row for DryRun {
    const HEADER: &'static [&'static str] = &["RULE", "MODE", "CHECKED", "WOULD REFUSE"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.rule.clone(),
            serde_name(&self.mode),
            self.checked.to_string(),
            self.refused.to_string(),
        ]
    }

    fn json(&self) -> Value {
        let examples: Vec<Value> = self
            .examples
            .iter()
            .map(|(repo, digest, why)| json!({"repository": repo, "digest": digest, "why": why}))
            .collect();
        json!({
            "rule": self.rule, "mode": serde_name(&self.mode), "checked": self.checked,
            "refused": self.refused, "examples": examples,
        })
    }
}

/// An image a dry run would refuse, for people (`--json` has them in the run's row).
pub struct Refused {
    pub rule: String,
    pub image: String,
    pub why: String,
}

impl Row for Refused {
    const HEADER: &'static [&'static str] = &["RULE", "WOULD REFUSE", "WHY"];

    fn cells(&self) -> Vec<String> {
        vec![self.rule.clone(), self.image.clone(), self.why.clone()]
    }

    fn json(&self) -> Value {
        json!({"rule": self.rule, "image": self.image, "why": self.why})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_ONE: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn user(name: &str, admin: bool) -> UserRow {
        UserRow {
            name: name.into(),
            password_hash: "$argon2id$secret".into(),
            admin,
            disabled: !admin,
            created_at: DAY_ONE * 1_000_000 + 999_999,
        }
    }

    #[test]
    fn tables_have_a_header_and_readable_times() {
        let text = render(&[user("alice", true), user("bob", false)], false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "NAME   ADMIN  DISABLED  CREATED",
                "alice  yes    no        2026-01-01T00:00:00Z",
                "bob    no     yes       2026-01-01T00:00:00Z",
            ]
        );
        assert!(!text.contains("argon2"), "no password hash: {text}");
        // Nothing listed: the header alone, or nothing at all for scripts.
        assert_eq!(
            render::<UserRow>(&[], false),
            "NAME  ADMIN  DISABLED  CREATED\n"
        );
        assert_eq!(render::<UserRow>(&[], true), "");
    }

    #[test]
    fn json_lines_carry_raw_values_and_both_times() {
        let text = render(&[user("alice", true), user("bob", false)], true);
        let rows: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["name"], "alice");
        assert_eq!(rows[0]["admin"], true);
        assert_eq!(rows[0]["created_at"], DAY_ONE);
        assert_eq!(rows[0]["created"], "2026-01-01T00:00:00Z");
        assert!(rows[0].get("password_hash").is_none());

        let robot = RobotInfo {
            tenant: "team-a".into(),
            name: "ci".into(),
            login: "team-a+ci".into(),
            actions: vec!["pull".into(), "push".into()],
            repositories: vec![],
            description: None,
            expires_at: Some(DAY_ONE + 86_400),
            disabled: false,
        };
        let v = robot.json();
        assert_eq!(v["actions"], json!(["pull", "push"]));
        assert_eq!(v["expires_at"], DAY_ONE + 86_400);
        assert_eq!(v["expires"], "2026-01-02T00:00:00Z");
        assert_eq!(v["description"], Value::Null);
        assert_eq!(
            robot.cells(),
            [
                "team-a+ci",
                "pull,push",
                "*",
                "no",
                "2026-01-02T00:00:00Z",
                "-"
            ]
        );
        let q = Quota {
            tenant: "team".into(),
            quota: None,
            used: Usage {
                blobs: 10,
                manifests: 2,
                uploads: 0,
            },
        };
        assert_eq!(q.json()["bytes"], Value::Null);
        assert_eq!(q.json()["used"], 12);
        assert_eq!(q.cells()[1], "none");
    }

    #[test]
    fn names_from_anyone_cannot_forge_rows_or_columns() {
        let entry = HistoryEntry {
            kind: "move",
            old_digest: None,
            new_digest: Some("sha256:aa".into()),
            actor: "eve\n2026-01-01T00:00:00Z  delete".into(),
            source: Some("10.0.0.1\t\u{1b}[2J".into()),
            at: DAY_ONE,
            at_micros: DAY_ONE * 1_000_000,
        };
        let text = render(std::slice::from_ref(&entry), false);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("eve\\n2026"), "{text}");
        assert!(text.contains("\\t\\u{1b}[2J"), "{text}");
        let json = render(&[entry], true);
        assert_eq!(json.lines().count(), 1, "{json}");
        let v: Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["actor"], "eve\n2026-01-01T00:00:00Z  delete");
        assert_eq!(
            (v["at"].clone(), v["time"].clone()),
            (json!(DAY_ONE), json!("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn dry_runs_and_signatures_as_rows() {
        let run = DryRun {
            rule: "signed-prod".into(),
            mode: berth_registry::policy::Mode::DryRun,
            checked: 10,
            refused: 1,
            examples: vec![("prod/app".into(), "sha256:aa".into(), "no signature".into())],
        };
        assert_eq!(run.cells(), ["signed-prod", "dry-run", "10", "1"]);
        let v: Value = serde_json::from_str(render(&[run], true).trim()).expect("one line");
        assert_eq!(v["mode"], "dry-run");
        assert_eq!(
            v["examples"],
            json!([{"repository": "prod/app", "digest": "sha256:aa", "why": "no signature"}])
        );

        // Who signed comes from certificates anyone can make: escaped like any cell.
        let sig = SignatureReport {
            manifest: "sha256:51".into(),
            kind: "notary_jws",
            covers: "sha256:1d".into(),
            valid: true,
            signed_by: Some("CN=x\nverdict: signed".into()),
            predicate_type: None,
            failure: None,
            warnings: vec!["expires soon".into(), "old".into()],
        };
        let as_image = Signature {
            image: "sha256:1d",
            report: &sig,
        };
        assert_eq!(as_image.cells()[2], "the image");
        assert_eq!(as_image.cells()[5], "expires soon; old");
        let text = render(std::slice::from_ref(&as_image), false);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("CN=x\\nverdict"), "{text}");
        let for_child = Signature {
            image: "sha256:c0",
            report: &sig,
        };
        assert_eq!(for_child.cells()[2], "index sha256:1d");
        assert_eq!(for_child.json()["signed_by"], "CN=x\nverdict: signed");
    }
}
