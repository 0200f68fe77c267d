//! The pages, as maud templates: checked when the binary compiles, and every `(value)`
//! HTML-escaped (tag names, labels and annotations are whatever a pusher wrote). Nothing
//! here uses `PreEscaped`; no inline script or style (the CSP forbids both).

use berth_meta::{AuditRecord, TagRow, TenantRow};
use berth_registry::HistoryEntry;
use berth_registry::Manifest;
use berth_registry::access::{self, NamespaceRobot, PullRobot, RobotInfo, pull_secret_name};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::Viewer;
use super::assets::{css_url, js_url};

/// What the header shows of the viewer.
pub struct Nav {
    name: Option<String>,
    csrf: String,
}

impl Nav {
    pub fn of(v: &Viewer) -> Nav {
        Nav {
            name: v.name().map(str::to_owned),
            csrf: v.csrf.clone(),
        }
    }
}

fn url(path: &str, q: &[(&str, &str)]) -> String {
    match serde_urlencoded::to_string(q) {
        Ok(s) if !s.is_empty() => format!("{path}?{s}"),
        _ => path.to_owned(),
    }
}

fn image_url(repo: &str, reference: &str) -> String {
    url(
        "/ui/image",
        &[("repository", repo), ("reference", reference)],
    )
}

/// `sha256:0123456789ab`: enough to tell digests apart on screen.
fn short(d: &str) -> &str {
    d.get(..19).unwrap_or(d)
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A time in microseconds since the epoch, in UTC to the minute.
pub fn when(micros: i64) -> String {
    let t = berth_oci::time::rfc3339_micros(micros);
    match t.split_once('T') {
        Some((date, time)) => format!("{date} {} UTC", time.get(..5).unwrap_or(time)),
        None => t,
    }
}

/// Microseconds at the start (or, with `end`, the end) of a UTC day written `YYYY-MM-DD`.
pub fn day_micros(d: &str, end: bool) -> Option<i64> {
    let mut parts = d.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some()
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&y)
    {
        return None;
    }
    // Days since 1970-01-01 of a civil date (the inverse of `when`'s conversion).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let start = days * 86_400 * 1_000_000;
    Some(if end {
        start + 86_400 * 1_000_000 - 1
    } else {
        start
    })
}

pub fn audit(
    v: &Viewer,
    q: &std::collections::HashMap<String, String>,
    rows: &[(i64, AuditRecord)],
    more: bool,
    notice: Option<&str>,
) -> Markup {
    let val = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let fields = [
        ("user", "User", "alice"),
        ("tenant", "Tenant", "team-a"),
        ("repository", "Repository", "team-a/app"),
        ("action", "Action", "manifest.put or user"),
        ("from", "From day", "2026-12-01"),
        ("to", "To day", "2026-12-06"),
    ];
    let mut next: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, _, _)| (*k, val(k)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let before = rows
        .last()
        .map(|(id, _)| id.to_string())
        .unwrap_or_default();
    next.push(("before", &before));
    layout(
        Some(Nav::of(v)),
        "Audit log",
        html! {
            form.search method="get" action="/ui/audit" aria-label="Filter the audit log" {
                @for (k, label, hint) in fields {
                    div.field {
                        label for=(format!("audit-{k}")) { (label) }
                        input type="text" id=(format!("audit-{k}")) name=(k) value=(val(k)) placeholder=(hint);
                    }
                }
                div.field { button type="submit" id="audit-filter" { "Filter" } }
            }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            @if rows.is_empty() { p.muted { "No entry matches." } } @else {
                div.table-wrap { table.stack id="audit" {
                    thead { tr {
                        th scope="col" { "When" } th scope="col" { "User" } th scope="col" { "Action" }
                        th scope="col" { "Tenant" } th scope="col" { "Target" } th scope="col" { "Outcome" }
                    } }
                    tbody { @for (_, r) in rows { tr {
                        td data-label="When" { (when(r.at)) }
                        td data-label="User" { (r.actor) @if let Some(s) = &r.source { span.muted { " from " (s) } } }
                        td data-label="Action" { code { (r.action) } }
                        td data-label="Tenant" { (r.tenant.as_deref().unwrap_or("—")) }
                        td data-label="Target" { (r.repository.as_deref().or(r.target.as_deref()).unwrap_or("—")) @if let Some(d) = &r.detail { br; span.muted { (d) } } }
                        td data-label="Outcome" { @if r.outcome == "ok" { span.badge.ok { "ok" } } @else { span.badge.bad { (r.outcome) } } }
                    } } }
                } }
            }
            @if more {
                nav.pager aria-label="Pages" { a href=(url("/ui/audit", &next)) rel="next" { "Older entries" } }
            }
        },
    )
}

/// What the operations page shows.
pub struct OpsView {
    pub readiness: (String, bool),
    pub upstreams: Vec<berth_registry::UpstreamStatus>,
    /// `None` with authentication off (jobs and dry runs are for admins).
    pub queues: Option<Vec<berth_registry::maintenance::QueueStatus>>,
    pub runs: Option<Vec<berth_meta::MaintenanceRun>>,
    pub dead: Option<Vec<berth_registry::events::JobView>>,
    pub counters: Vec<berth_registry::stats::Counter>,
}

/// What a queue is for, from its name.
fn queue_kind(queue: &str) -> &'static str {
    match queue.split_once(':').map_or(queue, |(k, _)| k) {
        "webhook" => "event delivery",
        "replicate" => "replication",
        "catalog" => "catalog and scans",
        "maintenance" => "dry runs",
        _ => "other",
    }
}

fn ratio(hits: u64, fills: u64) -> String {
    match hits + fills {
        0 => "—".to_owned(),
        n => format!("{:.1} %", hits as f64 * 100.0 / n as f64),
    }
}

/// A finished dry run's report, in words.
fn run_report(run: &berth_meta::MaintenanceRun) -> Markup {
    use berth_registry::maintenance::{GcDryRun, RetentionDryRun};
    let report = run.report.as_deref().unwrap_or("");
    match run.task.as_str() {
        "gc" => match serde_json::from_str::<GcDryRun>(report) {
            Ok(r) => html! {
                (r.manifests_deleted) " manifests and " (r.blobs_deleted) " blobs would go, freeing "
                (bytes(r.bytes_freed)) "; " (r.manifests_kept) " manifests kept in "
                (r.repositories) " repositories; " (r.uploads_purged) " stale uploads ("
                (r.elapsed_ms) " ms)."
            },
            Err(_) => html! { "unreadable report" },
        },
        "retention" => match serde_json::from_str::<RetentionDryRun>(report) {
            Ok(r) => html! {
                (r.tags_expired) " tags would expire and " (r.manifests_evicted)
                " cached manifests be evicted (" (bytes(r.bytes)) " for the next collection); "
                (r.tags_kept) " tags kept (" (r.elapsed_ms) " ms)."
                @if !r.sample.is_empty() {
                    br; span.muted { "For example: " }
                    @for (i, t) in r.sample.iter().enumerate() { @if i > 0 { ", " } code { (t) } }
                }
            },
            Err(_) => html! { "unreadable report" },
        },
        _ => html! { "unknown task" },
    }
}

pub fn operations(v: &Viewer, o: &OpsView) -> Markup {
    let dead_jobs: u64 = o.queues.iter().flatten().map(|q| q.dead).sum();
    let pending: u64 = o.queues.iter().flatten().map(|q| q.pending).sum();
    let failing: Vec<&berth_registry::UpstreamStatus> = o
        .upstreams
        .iter()
        .filter(|u| u.last_failure.is_some())
        .collect();
    layout(
        Some(Nav::of(v)),
        "Operations",
        html! {
            h2 { "Health" }
            ul id="health" {
                li { "Metadata store: " @if o.readiness.1 { span.badge.ok { (o.readiness.0) } } @else { span.badge.bad { (o.readiness.0) } } }
                @if o.queues.is_some() {
                    li { "Job queues: " (pending) " pending, "
                        @if dead_jobs == 0 { span.badge.ok { "no dead job" } } @else { span.badge.bad { (dead_jobs) " dead" } } }
                }
                li { "Upstreams: "
                    @if o.upstreams.is_empty() { "none configured" }
                    @else if failing.is_empty() { span.badge.ok { "no failure on this replica" } }
                    @else { span.badge.warn { (failing.len()) " of " (o.upstreams.len()) " failed at least once on this replica" } } }
            }
            h2 { "Upstream caches" }
            @if o.upstreams.is_empty() { p.muted { "No upstream is configured." } } @else {
                p.muted { "Manifest requests on this replica since it started: a hit is answered from the cache (a tag the upstream confirmed unchanged included), a fill fetched the manifest." }
                div.table-wrap { table.stack id="upstreams" {
                    thead { tr {
                        th scope="col" { "Upstream" } th scope="col" { "Hit ratio" } th scope="col" { "Hits" }
                        th scope="col" { "Fills" } th scope="col" { "Stale serves" } th scope="col" { "Failures" } th scope="col" { "Last failure" }
                    } }
                    tbody { @for u in &o.upstreams { tr {
                        td data-label="Upstream" { (u.name) @if !u.cache { " " span.muted { "(pass-through)" } } }
                        td data-label="Hit ratio" { (ratio(u.hits, u.fills)) }
                        td data-label="Hits" { (u.hits) }
                        td data-label="Fills" { (u.fills) }
                        td data-label="Stale serves" { (u.stale) }
                        td data-label="Failures" { (u.failures) }
                        td data-label="Last failure" { @match &u.last_failure { Some((at, why)) => { (when(*at)) br; span.muted { (why) } }, None => "—" } }
                    } } }
                } }
            }
            h2 { "Replication and event delivery" }
            @match &o.queues {
                None => p.muted { "Queues are shown to admins; authentication is off." },
                Some(qs) => div.table-wrap { table.stack id="queues" {
                    thead { tr {
                        th scope="col" { "Queue" } th scope="col" { "For" } th scope="col" { "Pending" } th scope="col" { "Oldest pending" }
                        th scope="col" { "Dead" } th scope="col" { "Done here" } th scope="col" { "Failed here" }
                    } }
                    tbody { @for q in qs { tr {
                        td data-label="Queue" { code { (q.queue) } }
                        td data-label="For" { (queue_kind(&q.queue)) }
                        td data-label="Pending" { (q.pending) }
                        td data-label="Oldest pending" { @match q.oldest_pending { Some(t) => (when(t)), None => "—" } }
                        td data-label="Dead" { @if q.dead == 0 { "0" } @else { span.badge.bad { (q.dead) } } }
                        td data-label="Done here" { (q.done_here) }
                        td data-label="Failed here" { (q.failed_here) }
                    } } }
                } },
            }
            h2 id="dry-runs" { "Dry runs" }
            @match &o.runs {
                None => p.muted { "Dry runs are for admins; authentication is off." },
                Some(runs) => {
                    p.muted { "A dry run reports what the garbage collection or the retention policies would remove now, and removes nothing. It runs as a background job; its report appears here when ready." }
                    div.actions {
                        @for (task, label) in [("gc", "Dry-run the garbage collection"), ("retention", "Dry-run the retention policies")] {
                            form.inline method="post" action="/ui/dry-run" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                input type="hidden" name="task" value=(task);
                                button type="submit" id=(format!("dry-run-{task}")) { (label) }
                            }
                            " "
                        }
                    }
                    @if runs.is_empty() { p.muted { "None yet." } } @else {
                        div.table-wrap { table.stack id="runs" {
                            thead { tr { th scope="col" { "Run" } th scope="col" { "Task" } th scope="col" { "Asked by" } th scope="col" { "Asked at" } th scope="col" { "Result" } } }
                            tbody { @for r in runs {
                                @let state = if r.finished_at.is_none() { "waiting" } else if r.error.is_some() { "failed" } else { "done" };
                                tr id=(format!("run-{}", r.id)) data-state=(state) {
                                    td data-label="Run" { (r.id) }
                                    td data-label="Task" { @if r.task == "gc" { "garbage collection" } @else { (r.task) } }
                                    td data-label="Asked by" { (r.requested_by) }
                                    td data-label="Asked at" { (when(r.requested_at)) }
                                    td data-label="Result" {
                                        @match (state, &r.error) {
                                            ("waiting", _) => span.muted data-refresh="2" { "Waiting for the job queue…" },
                                            (_, Some(e)) => { span.badge.bad { "failed" } " " (e) },
                                            _ => (run_report(r)),
                                        }
                                    }
                                }
                            } }
                        } }
                    }
                }
            }
            h2 { "Dead jobs" }
            @match &o.dead {
                None => p.muted { "Jobs are shown to admins; authentication is off." },
                Some(jobs) if jobs.is_empty() => p.muted { "None: every webhook delivery, replication copy and scan went through or is still being retried." },
                Some(jobs) => div.table-wrap { table.stack id="dead-jobs" {
                    thead { tr { th scope="col" { "Id" } th scope="col" { "Kind" } th scope="col" { "Queue" } th scope="col" { "Attempts" } th scope="col" { "Last error" } } }
                    tbody { @for j in jobs { tr {
                        td data-label="Id" { (j.id) }
                        td data-label="Kind" { (j.kind) }
                        td data-label="Queue" { (j.queue) " / " (j.lane) }
                        td data-label="Attempts" { (j.attempts) }
                        td data-label="Last error" { (j.last_error.as_deref().unwrap_or("—")) }
                    } } }
                } },
            }
            h2 { "This replica's counters" }
            p.muted { "Since this process started; each replica counts its own (see /metrics)." }
            div.table-wrap { table.stack id="counters" {
                thead { tr { th scope="col" { "Counter" } th scope="col" { "Value" } } }
                tbody { @for c in &o.counters { tr {
                    td data-label="Counter" { code { (c.name) @if let Some((k, val)) = c.label { "{" (k) "=" (val) "}" } } br; span.muted { (c.help) } }
                    td data-label="Value" { (c.value) }
                } } }
            } }
        },
    )
}

pub fn layout(nav: Option<Nav>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Berth" }
                link rel="stylesheet" href=(css_url());
                script src=(js_url()) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/repositories" { "Berth" }
                    @if let Some(nav) = &nav {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/ui/repositories" { "Repositories" } }
                                li { a href="/ui/tenants" { "Tenants" } }
                                li { a href="/ui/audit" { "Audit log" } }
                                li { a href="/ui/operations" { "Operations" } }
                            }
                        }
                        div.who {
                            @if let Some(name) = &nav.name {
                                span { "Signed in as " strong { (name) } }
                                form.inline method="post" action="/ui/logout" {
                                    input type="hidden" name="csrf" value=(nav.csrf);
                                    button.link type="submit" id="logout" { "Log out" }
                                }
                            } @else {
                                span { "Read-only: authentication is off" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn message_body(msg: &str) -> Markup {
    html! { p.notice.error role="alert" { (msg) } }
}

/// A page without navigation (refusals before anyone is known).
pub fn message(title: &str, msg: &str) -> Markup {
    layout(None, title, message_body(msg))
}

pub fn login(token: &str, next: Option<&str>, error: Option<&str>) -> Markup {
    layout(
        None,
        "Log in",
        html! {
            div.card.login {
                @if let Some(e) = error { p.notice.error role="alert" { (e) } }
                form method="post" action="/ui/login" {
                    input type="hidden" name="csrf" value=(token);
                    @if let Some(n) = next { input type="hidden" name="next" value=(n); }
                    div.field {
                        label for="user" { "User name" }
                        input type="text" id="user" name="user" autocomplete="username" required autofocus;
                    }
                    div.field {
                        label for="password" { "Password" }
                        input type="password" id="password" name="password" autocomplete="current-password" required;
                    }
                    button type="submit" id="login" { "Log in" }
                }
            }
        },
    )
}

pub fn tenants(v: &Viewer, rows: Option<&[TenantRow]>) -> Markup {
    layout(
        Some(Nav::of(v)),
        "Tenants",
        html! {
            @match rows {
                None => p.notice { "Tenants exist when authentication is on." },
                Some([]) => p.muted { "No tenant is visible to you." },
                Some(rows) => div.table-wrap { table.stack {
                    thead { tr { th scope="col" { "Tenant" } th scope="col" { "Visibility" } th scope="col" { "Created" } } }
                    tbody { @for t in rows { tr {
                        td data-label="Tenant" { a href=(url("/ui/tenant", &[("name", &t.name)])) { (t.name) } }
                        td data-label="Visibility" { @if t.public { span.badge { "public" } } @else { span.badge { "private" } } }
                        td data-label="Created" { (when(t.created_at)) }
                    } } }
                } },
            }
        },
    )
}

pub fn tenant(
    v: &Viewer,
    t: &TenantRow,
    quota: Option<&(Option<u64>, berth_meta::Usage)>,
    members: Option<&[(String, String)]>,
    robots: Option<&[RobotInfo]>,
) -> Markup {
    layout(
        Some(Nav::of(v)),
        &format!("Tenant {}", t.name),
        html! {
            p {
                @if t.public { span.badge { "public" } } @else { span.badge { "private" } }
                " · "
                a href=(url("/ui/repositories", &[("q", &format!("{}/", t.name))])) { "Its repositories" }
            }
            @if let Some((limit, used)) = quota {
                h2 { "Quota and usage" }
                div.card { dl.facts id="quota" {
                    dt { "Used" } dd { (bytes(used.total())) }
                    dt { "Quota" } dd { @match limit { Some(l) => (bytes(*l)), None => "none" } }
                    dt { "Blobs" } dd { (bytes(used.blobs)) }
                    dt { "Manifests" } dd { (bytes(used.manifests)) }
                    dt { "Uploads in progress" } dd { (bytes(used.uploads)) }
                } }
            }
            @match (members, robots) {
                (Some(members), Some(robots)) => {
                    h2 { "Members" }
                    @if members.is_empty() { p.muted { "None." } } @else {
                        div.table-wrap { table.stack id="members" {
                            thead { tr { th scope="col" { "User" } th scope="col" { "Role" } } }
                            tbody { @for (u, r) in members { tr { td data-label="User" { (u) } td data-label="Role" { (r) } } } }
                        } }
                    }
                    h2 { "Robot accounts" }
                    @if robots.is_empty() { p.muted { "None." } } @else {
                        div.table-wrap { table.stack id="robots" {
                            thead { tr { th scope="col" { "Login" } th scope="col" { "May" } th scope="col" { "Repositories" } th scope="col" { "State" } th scope="col" { "Actions" } } }
                            tbody { @for r in robots { tr {
                                td data-label="Login" { code { (r.login) } @if let Some(d) = &r.description { br; span.muted { (d) } } }
                                td data-label="May" { (r.actions.join(", ")) }
                                td data-label="Repositories" { @if r.repositories.is_empty() { "all of the tenant" } @else { (r.repositories.join(", ")) } }
                                td data-label="State" { @if r.disabled { span.badge.bad { "disabled" } } @else { span.badge.ok { "active" } } }
                                td data-label="Actions" {
                                    (robot_button(v, &t.name, &r.name, "rotate", "Rotate secret"))
                                    " "
                                    @if r.disabled { (robot_button(v, &t.name, &r.name, "enable", "Enable")) }
                                    @else { (robot_button(v, &t.name, &r.name, "disable", "Disable")) }
                                }
                            } } }
                        } }
                    }
                    details.card {
                        summary { "Create a robot account" }
                        form method="post" action="/ui/robot" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            input type="hidden" name="tenant" value=(t.name);
                            input type="hidden" name="op" value="create";
                            div.field { label for="robot-name" { "Name" } input type="text" id="robot-name" name="name" required maxlength="64"; }
                            fieldset.field {
                                legend { "May" }
                                @for a in ["pull", "push", "delete"] {
                                    label { input type="checkbox" name=(format!("action_{a}")) value="yes" checked[a == "pull"]; " " (a) }
                                }
                            }
                            div.field { label for="robot-repos" { "Repositories (patterns within the tenant, comma-separated; empty: all of it)" } input type="text" id="robot-repos" name="repositories" placeholder="app, tools/*"; }
                            div.field { label for="robot-description" { "Description" } input type="text" id="robot-description" name="description"; }
                            button type="submit" id="create-robot" { "Create" }
                        }
                    }
                    h2 { "Pull secret for a Kubernetes namespace" }
                    div.card {
                        p.muted { "Each namespace gets a pull-only robot of its own, so rotating one breaks no other namespace. The secret is shown once." }
                        form method="post" action="/ui/pull-secret" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            input type="hidden" name="tenant" value=(t.name);
                            div.field {
                                label for="namespace" { "Namespace" }
                                input type="text" id="namespace" name="namespace" required pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?" maxlength="63";
                            }
                            div.field {
                                label { input type="checkbox" name="rotate" value="yes"; " Rotate its secret if the robot exists (its current Secret stops working)" }
                            }
                            button type="submit" id="make-pull-secret" { "Make the pull secret" }
                        }
                    }
                },
                _ => p.muted { "Members, robot accounts and pull secrets are shown to the tenant's owners and to admins." },
            }
        },
    )
}

fn robot_button(v: &Viewer, tenant: &str, name: &str, op: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action="/ui/robot" {
            input type="hidden" name="csrf" value=(v.csrf);
            input type="hidden" name="tenant" value=(tenant);
            input type="hidden" name="name" value=(name);
            input type="hidden" name="op" value=(op);
            button.link type="submit" aria-label=(format!("{label}: {name}")) { (label) }
        }
    }
}

/// A robot's new secret, shown once.
pub fn robot_secret(v: &Viewer, tenant: &str, c: &access::RobotCredentials) -> Markup {
    layout(
        Some(Nav::of(v)),
        &format!("Robot {}", c.robot.login),
        html! {
            p.notice role="status" { strong { "This secret is shown once." } " Store it now; it cannot be read back, only rotated." }
            div.card { dl.facts {
                dt { "Login" } dd { code id="robot-login" { (c.robot.login) } }
                dt { "Secret" } dd { code id="robot-secret" { (c.secret) } " " button type="button" data-copy=(c.secret) { "Copy" } }
                dt { "May" } dd { (c.robot.actions.join(", ")) }
            } }
            p { a href=(url("/ui/tenant", &[("name", tenant)])) { "Back to the tenant" } }
        },
    )
}

pub fn pull_secret(v: &Viewer, tenant: &str, server: &str, robot: &NamespaceRobot) -> Markup {
    let creds = match &robot.outcome {
        PullRobot::Created(c) | PullRobot::Rotated(c) => Some(c),
        PullRobot::Kept(_) => None,
    };
    layout(
        Some(Nav::of(v)),
        &format!("Pull secret for namespace {}", robot.namespace),
        html! {
            @match creds {
                Some(c) => {
                    @let name = pull_secret_name(tenant).unwrap_or_else(|| "berth-pull".to_owned());
                    @let secret = access::pull_secret(&name, Some(&robot.namespace), server, &c.robot.login, &c.secret);
                    @let text = serde_json::to_string_pretty(&secret).unwrap_or_default();
                    p.notice role="status" {
                        "Robot " code { (c.robot.login) } " may pull from tenant " (tenant) ". "
                        strong { "This secret is shown once." }
                    }
                    p { "Apply it with " code { "kubectl apply -f secret.json" } " (JSON is YAML: the file works either way), and name "
                        code { (name) } " in the pods' " code { "imagePullSecrets" } "." }
                    pre.card id="pull-secret" { (text) }
                    button type="button" data-copy=(text) { "Copy" }
                },
                None => p.notice {
                    "The namespace's robot already exists; its secret cannot be shown again. "
                    "Tick “rotate” to give it a new one (only this namespace's Secret stops working)."
                },
            }
            p { a href=(url("/ui/tenant", &[("name", tenant)])) { "Back to the tenant" } }
        },
    )
}

pub fn repositories(v: &Viewer, search: &str, repos: &[String], more: bool) -> Markup {
    layout(
        Some(Nav::of(v)),
        "Repositories",
        html! {
            form.search method="get" action="/ui/repositories" role="search" {
                label for="q" { "Find a repository" }
                input type="search" id="q" name="q" value=(search) placeholder="name contains…";
                button type="submit" { "Search" }
            }
            @if repos.is_empty() {
                p.muted { "No repository matches." }
            } @else {
                ul.card aria-label="Repositories" id="repositories" {
                    @for r in repos { li { a href=(url("/ui/repository", &[("repository", r)])) { (r) } } }
                }
            }
            @if more { @if let Some(last) = repos.last() {
                nav.pager aria-label="Pages" {
                    a href=(url("/ui/repositories", &[("q", search), ("after", last)])) rel="next" { "Next page" }
                }
            } }
        },
    )
}

/// What a tag's manifest says at a glance.
#[derive(Debug, Default)]
pub struct Summary {
    pub kind: &'static str,
    /// Config and layers of an image; `None` for an index (its children are elsewhere).
    pub size: Option<u64>,
    pub platforms: Vec<String>,
}

fn platform_of(p: &Value) -> Option<String> {
    let os = p.get("os")?.as_str()?;
    let arch = p.get("architecture")?.as_str()?;
    if os == "unknown" {
        return None;
    }
    Some(match p.get("variant").and_then(Value::as_str) {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

pub fn summarize(content: &[u8]) -> Summary {
    let Ok(v) = serde_json::from_slice::<Value>(content) else {
        return Summary::default();
    };
    if let Some(children) = v.get("manifests").and_then(Value::as_array) {
        return Summary {
            kind: "index",
            size: None,
            platforms: children
                .iter()
                .filter_map(|c| c.get("platform").and_then(platform_of))
                .collect(),
        };
    }
    let size = |d: &Value| d.get("size").and_then(Value::as_u64).unwrap_or(0);
    let layers = v.get("layers").and_then(Value::as_array);
    let config = v.get("config");
    let image_config = config
        .and_then(|c| c.get("mediaType"))
        .and_then(Value::as_str)
        .is_some_and(|t| t.contains("image.config") || t.contains("container.image"));
    Summary {
        kind: if image_config { "image" } else { "artifact" },
        size: Some(config.map_or(0, size) + layers.map_or(0, |l| l.iter().map(size).sum())),
        platforms: Vec::new(),
    }
}

pub fn repository(
    v: &Viewer,
    repo: &str,
    by_name: bool,
    tags: &[(TagRow, Summary)],
    immutable: &[bool],
    more: bool,
) -> Markup {
    let order = if by_name { "name" } else { "version" };
    layout(
        Some(Nav::of(v)),
        repo,
        html! {
            nav aria-label="Tag order" {
                ul.tabs {
                    li { a href=(url("/ui/repository", &[("repository", repo)])) aria-current=[(!by_name).then_some("page")] { "Versions, newest first" } }
                    li { a href=(url("/ui/repository", &[("repository", repo), ("order", "name")])) aria-current=[by_name.then_some("page")] { "All tags by name" } }
                }
            }
            @if tags.is_empty() {
                p.muted { @if by_name { "No tags." } @else { "No tag is a version (like 1.4.2 or v1.4.2-rc.1)." } }
            } @else {
                div.table-wrap { table.stack id="tags" {
                    thead { tr {
                        th scope="col" { "Tag" } th scope="col" { "Digest" } th scope="col" { "Kind" }
                        th scope="col" { "Size" } th scope="col" { "Platforms" } th scope="col" { "Pushed" }
                        th scope="col" { "Last pulled" } th scope="col" { "History" }
                    } }
                    tbody { @for (i, (t, s)) in tags.iter().enumerate() { tr {
                        td data-label="Tag" {
                            a.tag href=(image_url(repo, &t.name)) { (t.name) }
                            @if immutable.get(i).copied().unwrap_or(false) { " " span.badge.warn { "immutable" } }
                        }
                        td data-label="Digest" { code title=(t.digest) { (short(&t.digest)) } }
                        td data-label="Kind" { (s.kind) }
                        td data-label="Size" { @match s.size { Some(n) => (bytes(n)), None => "—" } }
                        td data-label="Platforms" { @if s.platforms.is_empty() { "—" } @else { (s.platforms.join(", ")) } }
                        td data-label="Pushed" { (when(t.updated_at)) }
                        td data-label="Last pulled" { @match t.pulled_at { Some(p) => (when(p)), None => "never" } }
                        td data-label="History" { a href=(url("/ui/history", &[("repository", repo), ("tag", &t.name)])) { "History" } }
                    } } }
                } }
            }
            @if more { @if let Some((last, _)) = tags.last() {
                nav.pager aria-label="Pages" {
                    a href=(url("/ui/repository", &[("repository", repo), ("order", order), ("after", &last.name)])) rel="next" { "Next page" }
                }
            } }
        },
    )
}

pub struct ImageView<'a> {
    pub viewer: &'a Viewer,
    pub repo: &'a str,
    pub reference: &'a str,
    pub manifest: &'a Manifest,
    pub parsed: Option<&'a berth_oci::manifest::ParsedManifest>,
    pub config: Option<&'a [u8]>,
    pub referrers: &'a [u8],
    pub verify: Option<Value>,
    pub vulns: Option<Value>,
    /// Uncompressed layer sizes, by digest, where the catalog knows them.
    pub uncompressed: &'a std::collections::HashMap<String, u64>,
    /// The image's catalog (`CatalogView` as JSON), once cataloged.
    pub packages: Option<Value>,
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn kv_table(caption: &str, rows: Vec<(&str, &str)>) -> Markup {
    html! {
        @if rows.is_empty() { p.muted { "None." } } @else {
            div.table-wrap { table.stack aria-label=(caption) {
                thead { tr { th scope="col" { "Key" } th scope="col" { "Value" } } }
                tbody { @for (k, v) in rows { tr { td data-label="Key" { code { (k) } } td data-label="Value" { (v) } } } }
            } }
        }
    }
}

pub fn image(iv: &ImageView) -> Markup {
    let m = iv.manifest;
    let doc: Value = serde_json::from_slice(&m.content).unwrap_or(Value::Null);
    let config: Value = iv
        .config
        .and_then(|c| serde_json::from_slice(c).ok())
        .unwrap_or(Value::Null);
    let annotations: Vec<(&str, &str)> = iv
        .parsed
        .map(|p| {
            p.annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let labels: Vec<(&str, &str)> = config
        .get("config")
        .and_then(|c| c.get("Labels"))
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    let referrers: Value = serde_json::from_slice(iv.referrers).unwrap_or(Value::Null);
    let title = format!("{}:{}", iv.repo, iv.reference);
    let title = if iv.reference.contains(':') {
        format!("{}@{}", iv.repo, iv.reference)
    } else {
        title
    };
    layout(
        Some(Nav::of(iv.viewer)),
        &title,
        html! {
            div.card { dl.facts {
                dt { "Repository" } dd { a href=(url("/ui/repository", &[("repository", iv.repo)])) { (iv.repo) } }
                dt { "Digest" } dd { code id="digest" { (m.digest.as_str()) } " " button type="button" data-copy=(m.digest.as_str()) { "Copy" } }
                dt { "Media type" } dd { code { (m.media_type) } }
                dt { "Manifest size" } dd { (bytes(m.content.len() as u64)) }
                @if let Some(a) = iv.parsed.and_then(|p| p.artifact_type.as_deref()) { dt { "Artifact type" } dd { code { (a) } } }
            } }
            @if let Some(children) = doc.get("manifests").and_then(Value::as_array) {
                h2 { "Platforms" }
                div.table-wrap { table.stack id="platforms" {
                    thead { tr { th scope="col" { "Platform" } th scope="col" { "Digest" } th scope="col" { "Media type" } th scope="col" { "Size" } } }
                    tbody { @for c in children { tr {
                        td data-label="Platform" { (c.get("platform").and_then(platform_of).unwrap_or_else(|| "—".into())) }
                        td data-label="Digest" { a href=(image_url(iv.repo, str_of(c, "digest"))) { code { (short(str_of(c, "digest"))) } } }
                        td data-label="Media type" { code { (str_of(c, "mediaType")) } }
                        td data-label="Size" { (bytes(c.get("size").and_then(Value::as_u64).unwrap_or(0))) }
                    } } }
                } }
            } @else {
                @if let Some(c) = doc.get("config") {
                    h2 { "Config" }
                    div.card { dl.facts {
                        dt { "Digest" } dd { code { (str_of(c, "digest")) } }
                        dt { "Media type" } dd { code { (str_of(c, "mediaType")) } }
                        dt { "Size" } dd { (bytes(c.get("size").and_then(Value::as_u64).unwrap_or(0))) }
                        @if !config.is_null() {
                            dt { "Platform" } dd { (str_of(&config, "os")) "/" (str_of(&config, "architecture")) }
                            dt { "Created" } dd { (str_of(&config, "created")) }
                        }
                    } }
                }
                h2 { "Layers" }
                @if let Some(layers) = doc.get("layers").and_then(Value::as_array) {
                    div.table-wrap { table.stack id="layers" {
                        thead { tr { th scope="col" { "#" } th scope="col" { "Digest" } th scope="col" { "Media type" } th scope="col" { "Compressed" } th scope="col" { "Uncompressed" } } }
                        tbody { @for (i, l) in layers.iter().enumerate() { tr {
                            td data-label="#" { (i + 1) }
                            td data-label="Digest" { code title=(str_of(l, "digest")) { (short(str_of(l, "digest"))) } }
                            td data-label="Media type" { code { (str_of(l, "mediaType")) } }
                            td data-label="Compressed" { (bytes(l.get("size").and_then(Value::as_u64).unwrap_or(0))) }
                            td data-label="Uncompressed" { @match iv.uncompressed.get(str_of(l, "digest")) {
                                // The tar stream to its end-of-archive marker: the trailing
                                // zero blocks (a few KiB at most) are not read.
                                Some(n) => span title="The layer's tar archive as the cataloger read it, to its end-of-archive marker" { "≈ " (bytes(*n)) },
                                None => span.muted title="Known once the catalog has read the whole layer" { "not known" },
                            } }
                        } } }
                    } }
                } @else { p.muted { "None." } }
                h2 { "Labels" }
                div id="labels" { (kv_table("Labels", labels)) }
                h2 { "History" }
                @match config.get("history").and_then(Value::as_array) {
                    Some(h) if !h.is_empty() => div.table-wrap { table.stack id="history" {
                        thead { tr { th scope="col" { "Created" } th scope="col" { "Step" } th scope="col" { "Layer" } } }
                        tbody { @for e in h { tr {
                            td data-label="Created" { (str_of(e, "created")) }
                            td data-label="Step" { code { (str_of(e, "created_by")) } @if !str_of(e, "comment").is_empty() { br; span.muted { (str_of(e, "comment")) } } }
                            td data-label="Layer" { @if e.get("empty_layer").and_then(Value::as_bool).unwrap_or(false) { "empty" } @else { "yes" } }
                        } } }
                    } },
                    _ => p.muted { "No history in the config." },
                }
            }
            h2 { "Annotations" }
            div id="annotations" { (kv_table("Annotations", annotations)) }
            h2 { "Signatures" }
            @match &iv.verify {
                None => p.muted { "Not available yet." },
                Some(r) => {
                    p { "Verdict: " span.badge.(verdict_class(str_of(r, "outcome"))) { (str_of(r, "outcome")) } " " span.muted { (str_of(r, "detail")) } }
                    @if let Some(sigs) = r.get("signatures").and_then(Value::as_array) { @if !sigs.is_empty() {
                        div.table-wrap { table.stack id="signatures" {
                            thead { tr { th scope="col" { "Signature" } th scope="col" { "Kind" } th scope="col" { "Status" } th scope="col" { "Signed by" } } }
                            tbody { @for s in sigs { tr {
                                td data-label="Signature" { code { (short(str_of(s, "manifest"))) } }
                                td data-label="Kind" { (str_of(s, "kind")) }
                                td data-label="Status" { @if s.get("valid").and_then(Value::as_bool).unwrap_or(false) { span.badge.ok { "valid" } } @else { span.badge.bad { "not valid" } " " (s.get("failure").map(|f| f.to_string()).unwrap_or_default()) } }
                                td data-label="Signed by" { (str_of(s, "signed_by")) }
                            } } }
                        } }
                    } }
                },
            }
            h2 { "Referrers" }
            @match referrers.get("manifests").and_then(Value::as_array) {
                Some(list) if !list.is_empty() => div.table-wrap { table.stack id="referrers" {
                    thead { tr { th scope="col" { "Artifact type" } th scope="col" { "Digest" } th scope="col" { "Size" } } }
                    tbody { @for r in list { tr {
                        td data-label="Artifact type" { code { (str_of(r, "artifactType")) } }
                        td data-label="Digest" { a href=(image_url(iv.repo, str_of(r, "digest"))) { code { (short(str_of(r, "digest"))) } } }
                        td data-label="Size" { (bytes(r.get("size").and_then(Value::as_u64).unwrap_or(0))) }
                    } } }
                } },
                _ => p.muted { "None." },
            }
            @if doc.get("manifests").is_none() {
                h2 { "Packages" }
                @match &iv.packages {
                    None => p.muted { "Not available yet: this image has not been cataloged." },
                    Some(c) => {
                        @let list = c.get("packages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                        p id="catalog-summary" {
                            (list.len()) " packages"
                            @if let Some(os) = c.get("os").filter(|o| !o.is_null()) { " on " (str_of(os, "id")) " " (str_of(os, "version_id")) }
                            "; catalog " (str_of(c, "status"))
                            @if list.len() > 200 { " (the first 200 shown)" }
                            "."
                        }
                        @if !list.is_empty() {
                            div.table-wrap { table.stack id="packages" {
                                thead { tr { th scope="col" { "Package" } th scope="col" { "Version" } th scope="col" { "Ecosystem" } th scope="col" { "Found in" } } }
                                tbody { @for pk in list.iter().take(200) { tr {
                                    td data-label="Package" { (str_of(pk, "name")) }
                                    td data-label="Version" { (str_of(pk, "version")) }
                                    td data-label="Ecosystem" { (pk.get("ecosystem").map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned)).unwrap_or_default()) }
                                    td data-label="Found in" { code { (str_of(pk, "path")) } }
                                } } }
                            } }
                        }
                    },
                }
                h2 { "Vulnerabilities" }
                @match &iv.vulns {
                    None => p.muted { "Not available yet: this image has not been cataloged." },
                    Some(r) => {
                        @if let Some(counts) = r.get("counts").and_then(Value::as_object) {
                            p id="severity-counts" { @for (sev, n) in counts { span.badge { (sev) ": " (n.to_string()) } " " } @if counts.is_empty() { "No known vulnerability." } }
                        }
                        @if let Some(fs) = r.get("findings").and_then(Value::as_array) { @if !fs.is_empty() {
                            div.table-wrap { table.stack id="vulnerabilities" {
                                thead { tr { th scope="col" { "Id" } th scope="col" { "Severity" } th scope="col" { "Package" } th scope="col" { "Fixed in" } } }
                                tbody { @for f in fs.iter().take(200) { tr {
                                    td data-label="Id" { (str_of(f, "id")) }
                                    td data-label="Severity" { (f.get("severity").map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned)).unwrap_or_default()) }
                                    td data-label="Package" { (str_of(f, "package")) " " (str_of(f, "version")) }
                                    td data-label="Fixed in" { (f.get("fixed").map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned)).unwrap_or_default()) }
                                } } }
                            } }
                        } }
                    },
                }
            }
        },
    )
}

fn verdict_class(outcome: &str) -> &'static str {
    match outcome {
        "signed" | "exempt" => "ok",
        "unsigned" => "bad",
        _ => "warn",
    }
}

pub struct HistoryView<'a> {
    pub viewer: &'a Viewer,
    pub repo: &'a str,
    pub tag: &'a str,
    pub entries: &'a [HistoryEntry],
    pub immutable: Option<&'a str>,
    pub may_roll_back: bool,
    pub done: Option<&'a str>,
}

pub fn history(h: &HistoryView) -> Markup {
    let current = h.entries.first().and_then(|e| e.new_digest.as_deref());
    layout(
        Some(Nav::of(h.viewer)),
        &format!("History of {}:{}", h.repo, h.tag),
        html! {
            @if let Some(d) = h.done { p.notice role="status" id="done" { "Rolled back: the tag now points at " code { (d) } "." } }
            p {
                a href=(image_url(h.repo, h.tag)) { "Open the image" } " · "
                a href=(url("/ui/repository", &[("repository", h.repo)])) { "All tags" }
                @if let Some(rule) = h.immutable { " " span.badge.warn { "immutable (rule: " (rule) ")" } }
            }
            @if h.entries.is_empty() { p.muted { "No history." } } @else {
                div.table-wrap { table.stack id="tag-history" {
                    thead { tr {
                        th scope="col" { "When" } th scope="col" { "Change" } th scope="col" { "From" } th scope="col" { "To" }
                        th scope="col" { "By" } @if h.may_roll_back { th scope="col" { "Action" } }
                    } }
                    tbody { @for e in h.entries { tr {
                        td data-label="When" { (when(e.at_micros)) }
                        td data-label="Change" { (e.kind) }
                        td data-label="From" { @match &e.old_digest { Some(d) => a href=(image_url(h.repo, d)) { code { (short(d)) } }, None => "—" } }
                        td data-label="To" { @match &e.new_digest { Some(d) => a href=(image_url(h.repo, d)) { code { (short(d)) } }, None => "—" } }
                        td data-label="By" { (e.actor) @if let Some(s) = &e.source { span.muted { " from " (s) } } }
                        @if h.may_roll_back { td data-label="Action" {
                            @if let Some(d) = e.new_digest.as_deref() { @if Some(d) != current {
                                a.button.rollback href=(url("/ui/rollback", &[("repository", h.repo), ("tag", h.tag), ("to", d)])) { "Roll back to this" }
                            } }
                        } }
                    } } }
                } }
            }
        },
    )
}

pub fn rollback_confirm(v: &Viewer, repo: &str, tag: &str, to: &str) -> Markup {
    layout(
        Some(Nav::of(v)),
        "Roll back a tag",
        html! {
            div.card {
                p { "Move " strong { (repo) ":" (tag) } " back to " code { (to) } "?" }
                p.muted { "Clients pulling this tag get that image from now on. The change is recorded in the tag's history and can itself be rolled back." }
                form method="post" action="/ui/rollback" {
                    input type="hidden" name="csrf" value=(v.csrf);
                    input type="hidden" name="repository" value=(repo);
                    input type="hidden" name="tag" value=(tag);
                    input type="hidden" name="to" value=(to);
                    button.danger type="submit" id="confirm-rollback" { "Roll back" }
                    " "
                    a href=(url("/ui/history", &[("repository", repo), ("tag", tag)])) { "Cancel" }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(when(1_780_000_000 * 1_000_000), "2026-05-28 20:26 UTC");
    }

    #[test]
    fn days_are_utc_ranges() {
        assert_eq!(day_micros("1970-01-01", false), Some(0));
        assert_eq!(day_micros("1970-01-01", true), Some(86_400_000_000 - 1));
        let d = day_micros("2026-05-28", false).expect("day");
        assert_eq!(when(d), "2026-05-28 00:00 UTC");
        assert_eq!(day_micros("2026-13-01", false), None);
        assert_eq!(day_micros("yesterday", false), None);
    }

    #[test]
    fn sizes_are_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
