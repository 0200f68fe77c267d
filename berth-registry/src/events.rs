//! Events and webhooks: what happened in the registry (a manifest pushed, a tag moved or
//! rolled back, a manifest or tag deleted, a manifest pulled, a signature or attestation
//! added to an image, a pull refused by a policy rule), told to other systems over HTTP.
//!
//! * **Endpoints** come from the configuration file (`[[webhook]]`, global, trusted) and
//!   from the management API (global ones by admins, a tenant's by its owners), stored in
//!   the metadata store and re-read every few seconds. Each endpoint is a queue of the job
//!   queue (`webhook:<name>` or `webhook:<tenant>/<name>`), so one replica at a time
//!   delivers to it, in order per repository (its lanes).
//! * **Events** are created in the transaction of the change (the metadata store calls
//!   [`Events::jobs_for`] through the guard's hook), one job per matching endpoint, all
//!   carrying the same event id. Pulls change nothing: they are queued in memory and
//!   written in batches, one job per endpoint and repository per batch, and only while
//!   some endpoint subscribes to pulls. A signature added is an event of the push that
//!   stored it (written in its transaction, once per push, carrying the subject's digest).
//!   Policy refusals are frequent (every node retrying an unsigned image): each replica
//!   queues the first refusal of a (repository, digest, rule) at once, then at most one per
//!   [`REFUSAL_EVERY`], which counts the refusals withheld since the previous one.
//! * **Payloads**, per endpoint: CNCF Distribution's notification envelope (`{"events":
//!   [...]}`, actions push/pull/delete; a rollback is a push of the tag with the digest it
//!   now names; a signature added is a push whose target is the subject, with the
//!   signature's media type and the signature manifest in `references`; a refusal has the
//!   Berth action `berth.policy.refused` and a `policy` object) or CloudEvents 1.0 in
//!   structured mode (a batch of pulls in batched mode).
//!   Signed with HMAC-SHA256 over `<timestamp>.<body>` when the endpoint has a secret.
//! * **Addresses**: an endpoint set through the API is called only at addresses the
//!   allowlist admits (public ones, and the networks and hosts an admin listed), judged
//!   when connecting (see `berth_upstream::webhook`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use berth_auth::net::IpNet;
use berth_auth::policy::glob;
use berth_meta::{Change, ChangeKind, Job, JobQuery, JobState, NewJob};
use berth_oci::RepoName;
use berth_upstream::webhook::{Delivery, DeliveryError, WebhookClient, url_host};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::access::{Identity, require_admin, require_manager};
use crate::{Registry, RegistryError, Result};

/// The media type of Distribution's notification envelope (v3 names it v2; the fields
/// are those of v1, which Distribution 2.x sent).
pub const DISTRIBUTION_EVENTS: &str = "application/vnd.docker.distribution.events.v2+json";
const CLOUDEVENT: &str = "application/cloudevents+json; charset=utf-8";
const CLOUDEVENTS_BATCH: &str = "application/cloudevents-batch+json; charset=utf-8";
/// The job kind of a webhook delivery.
pub const WEBHOOK_JOB: &str = "webhook";
/// Pull events per job (so one delivery's body stays a few hundred KiB), the most written
/// per transaction (whatever waits is taken: under load each commit carries more, so the
/// writer keeps up however slow commits are), and how long a lone one waits for company.
const PULLS_PER_JOB: usize = 512;
const PULLS_PER_TX: usize = 8192;
const PULL_LINGER: Duration = Duration::from_millis(200);
/// The longest a receiver may take to answer.
pub const MAX_TIMEOUT_SECS: u64 = 60;
/// At most one policy-refusal event per (repository, digest, rule) this often, per replica.
pub const REFUSAL_EVERY: Duration = Duration::from_secs(60);
/// (repository, digest, rule) keys remembered for that; past it, stale ones are dropped,
/// and while every one is fresh a new key's refusals are withheld (and counted).
const REFUSAL_KEYS: usize = 65_536;

/// What an endpoint subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Every manifest push (with its tag, if pushed by tag).
    Push,
    /// A tag now names another manifest: a push that moved it, or a rollback.
    TagMove,
    /// A tag rolled back to an earlier manifest.
    Rollback,
    /// A manifest or a tag deleted.
    Delete,
    /// A manifest pulled.
    Pull,
    /// A signature or attestation pushed for an image (the event names the image).
    Signature,
    /// A manifest GET or HEAD refused by an enforcing policy rule (rate-limited per
    /// replica, see the module notes).
    PolicyRefusal,
}

/// The body a receiver gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// CNCF Distribution's notification envelope.
    #[default]
    Distribution,
    /// CloudEvents 1.0, JSON.
    Cloudevents,
}

fn default_events() -> Vec<EventKind> {
    vec![
        EventKind::Push,
        EventKind::TagMove,
        EventKind::Rollback,
        EventKind::Delete,
    ]
}

fn default_timeout() -> u64 {
    10
}

/// One webhook, as configured (`[[webhook]]`) or set through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    /// Default: every change (push, tag_move, rollback, delete), not pulls.
    #[serde(default = "default_events")]
    pub events: Vec<EventKind>,
    /// Globs over full repository names; empty: every repository (of the tenant).
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Signs each delivery (`X-Berth-Signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// Seconds the receiver has to answer.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

/// Settings of events and webhooks (`[events]` and the `[[webhook]]` tables).
#[derive(Debug, Clone, Default)]
pub struct EventSettings {
    /// The configuration file's webhooks: global, and trusted (not judged by the allowlist).
    pub webhooks: Vec<WebhookSpec>,
    /// Host names (`hooks.internal`, `*.svc.cluster.local`) webhooks set through the API may
    /// call whatever they resolve to.
    pub allow_hosts: Vec<String>,
    /// Networks webhooks set through the API may call although they are internal.
    pub allow_networks: Vec<IpNet>,
    /// The registry's external URL: links in Distribution events, the CloudEvents source.
    pub public_url: Option<String>,
    /// This process as Distribution's `source.addr` names it (host:port).
    pub source_addr: String,
    /// Pull events waiting to be written; more are dropped and counted.
    pub pull_queue: usize,
}

/// A webhook endpoint in force.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Its queue: `webhook:<name>`, `webhook:<tenant>/<name>`.
    pub queue: String,
    pub tenant: Option<String>,
    pub spec: WebhookSpec,
    /// From the configuration file: its address is not judged.
    pub from_config: bool,
}

impl Endpoint {
    fn matches(&self, kinds: &[EventKind], repo: &str) -> bool {
        kinds.iter().any(|k| self.spec.events.contains(k))
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| berth_auth::tenant_of(repo) == t)
            && (self.spec.repositories.is_empty()
                || self.spec.repositories.iter().any(|g| glob(g, repo)))
    }
}

fn queue_name(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        Some(t) => format!("webhook:{t}/{name}"),
        None => format!("webhook:{name}"),
    }
}

/// Which addresses webhooks set through the API may reach.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    hosts: Vec<String>,
    networks: Vec<IpNet>,
}

impl Allowlist {
    pub fn new(hosts: &[String], networks: &[IpNet]) -> Allowlist {
        Allowlist {
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            networks: networks.to_vec(),
        }
    }

    /// A public address; an internal one in an allowed network; any address of an
    /// allowed host name.
    pub fn allows(&self, host: Option<&str>, ip: IpAddr) -> bool {
        if let Some(h) = host {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            let listed = self.hosts.iter().any(|p| match p.strip_prefix("*.") {
                Some(suffix) => h.len() > suffix.len() && h.ends_with(&format!(".{suffix}")),
                None => *p == h,
            });
            if listed {
                return true;
            }
        }
        self.networks.iter().any(|n| n.contains(ip)) || !berth_auth::net::is_internal(ip)
    }
}

/// One event, as queued. Every endpoint that gets it gets the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// Microseconds since the epoch.
    pub at: i64,
    pub action: Action,
    pub repository: String,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The digest the tag named before (a push that moved it, a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The tags a manifest deletion took with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A signature added: the manifest that carries it (`digest` is its subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Attached>,
    /// A policy refusal: which rule, why, how often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The process that made the change.
    pub instance: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Push,
    Rollback,
    DeleteManifest,
    DeleteTag,
    Pull,
    Signature,
    PolicyRefusal,
}

/// The signature or attestation manifest of a signature-added event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attached {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// `cosign_signature`, `notary_signature` or `attestation`.
    pub kind: String,
}

/// What a policy-refusal event says beyond the manifest refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub rule: String,
    pub reason: String,
    /// Refusals of this manifest by this rule on this replica since its previous event
    /// for them, this one included.
    pub count: u64,
    /// The refused request's method (`GET` or `HEAD`).
    pub method: String,
}

/// A signature or attestation just pushed for `subject`.
#[derive(Debug, Clone)]
pub struct SignatureAdded {
    pub subject: String,
    pub kind: berth_verify::Kind,
}

impl SignatureAdded {
    /// What a signature-added event names as the signature's media type: the type of its
    /// envelopes.
    fn media_type(&self) -> &'static str {
        use berth_verify::artifact::{COSIGN_SIMPLE_SIGNING, DSSE_ENVELOPE, NOTARY_SIGNATURE};
        match self.kind {
            berth_verify::Kind::Attestation => DSSE_ENVELOPE,
            berth_verify::Kind::NotarySignature => NOTARY_SIGNATURE,
            _ => COSIGN_SIMPLE_SIGNING,
        }
    }
}

/// A refused pull, as the server saw it.
#[derive(Debug, Clone, Copy)]
pub struct RefusedPull<'a> {
    pub repository: &'a str,
    pub digest: &'a str,
    pub media_type: &'a str,
    pub size: u64,
    /// The tag asked for, when it was asked by tag.
    pub tag: Option<&'a str>,
    pub rule: &'a str,
    pub reason: &'a str,
    pub method: &'static str,
    pub actor: &'a str,
    pub source: Option<IpAddr>,
}

/// When a (repository, digest, rule) last had a refusal event here, and how many of its
/// refusals were withheld since.
struct RefusalWindow {
    sent: Instant,
    withheld: u64,
}

impl Event {
    /// The subscriptions it answers to.
    pub fn kinds(&self) -> Vec<EventKind> {
        match self.action {
            Action::Push if self.previous.is_some() => vec![EventKind::Push, EventKind::TagMove],
            Action::Push => vec![EventKind::Push],
            Action::Rollback => vec![EventKind::Rollback, EventKind::TagMove],
            Action::DeleteManifest | Action::DeleteTag => vec![EventKind::Delete],
            Action::Pull => vec![EventKind::Pull],
            Action::Signature => vec![EventKind::Signature],
            Action::PolicyRefusal => vec![EventKind::PolicyRefusal],
        }
    }
}

/// A webhook job's payload: events of changes, or a batch of pulls.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WebhookJob {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulls: Option<PullBatch>,
}

impl WebhookJob {
    fn views(&self) -> Vec<View<'_>> {
        let mut out: Vec<View<'_>> = self.events.iter().map(View::from).collect();
        if let Some(p) = &self.pulls {
            out.extend(p.views());
        }
        out
    }
}

/// Pulls of one repository, stored compactly: a batch is thousands of pulls of a few
/// manifests by a few clients, so a pull is a handful of numbers indexing the batch's
/// tables, and its id is made from the process half and its counter when it is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullBatch {
    repository: String,
    instance: String,
    /// The process half of the pulls' event ids.
    ids: u64,
    /// (digest, media type, size)
    manifests: Vec<(String, String, u64)>,
    /// Tags, actors and addresses.
    names: Vec<String>,
    /// (id counter, at, manifest, tag or -1, actor, address or -1)
    pulls: Vec<(u64, i64, u32, i32, u32, i32)>,
}

impl PullBatch {
    fn views(&self) -> impl Iterator<Item = View<'_>> {
        let name = |i: i32| {
            usize::try_from(i)
                .ok()
                .and_then(|i| self.names.get(i))
                .map(String::as_str)
        };
        self.pulls
            .iter()
            .filter_map(move |&(n, at, m, tag, actor, addr)| {
                let (digest, media_type, size) = self.manifests.get(m as usize)?;
                Some(View {
                    id: std::borrow::Cow::Owned(Ids::format(self.ids, n)),
                    at,
                    action: Action::Pull,
                    repository: &self.repository,
                    digest,
                    media_type: Some(media_type),
                    size: Some(*size),
                    tag: name(tag),
                    previous: None,
                    tags: &[],
                    signature: None,
                    refusal: None,
                    actor: name(actor as i32).unwrap_or_default(),
                    addr: name(addr),
                    instance: &self.instance,
                })
            })
    }

    fn len(&self) -> usize {
        self.pulls.len()
    }

    fn first_id(&self) -> Option<String> {
        self.pulls.first().map(|p| Ids::format(self.ids, p.0))
    }
}

/// Strings of a pull batch, each stored once.
#[derive(Default)]
struct Intern<'a> {
    index: std::collections::HashMap<&'a str, u32>,
    list: Vec<String>,
}

impl<'a> Intern<'a> {
    fn index(&mut self, s: &'a str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.index.insert(s, i);
        self.list.push(s.to_owned());
        i
    }

    fn signed(&mut self, s: &'a str) -> i32 {
        i32::try_from(self.index(s)).unwrap_or(-1)
    }
}

/// A pull on its way to the batch writer.
#[derive(Debug)]
pub(crate) struct Pull {
    counter: u64,
    at: i64,
    repository: String,
    digest: String,
    media_type: String,
    size: u64,
    tag: Option<String>,
    actor: String,
    addr: Option<String>,
}

/// An event as rendered, borrowed from a stored event or a pull batch.
struct View<'a> {
    id: std::borrow::Cow<'a, str>,
    at: i64,
    action: Action,
    repository: &'a str,
    digest: &'a str,
    media_type: Option<&'a str>,
    size: Option<u64>,
    tag: Option<&'a str>,
    previous: Option<&'a str>,
    tags: &'a [String],
    signature: Option<&'a Attached>,
    refusal: Option<&'a Refusal>,
    actor: &'a str,
    addr: Option<&'a str>,
    instance: &'a str,
}

impl<'a> From<&'a Event> for View<'a> {
    fn from(e: &'a Event) -> View<'a> {
        View {
            id: std::borrow::Cow::Borrowed(&e.id),
            at: e.at,
            action: e.action,
            repository: &e.repository,
            digest: &e.digest,
            media_type: e.media_type.as_deref(),
            size: e.size,
            tag: e.tag.as_deref(),
            previous: e.previous.as_deref(),
            tags: &e.tags,
            signature: e.signature.as_ref(),
            refusal: e.refusal.as_ref(),
            actor: &e.actor,
            addr: e.addr.as_deref(),
            instance: &e.instance,
        }
    }
}

impl View<'_> {
    fn cloudevents_type(&self) -> &'static str {
        match self.action {
            Action::Push => "io.berth.manifest.pushed",
            Action::Rollback => "io.berth.tag.rolledback",
            Action::DeleteManifest => "io.berth.manifest.deleted",
            Action::DeleteTag => "io.berth.tag.deleted",
            Action::Pull => "io.berth.manifest.pulled",
            Action::Signature => "io.berth.signature.added",
            Action::PolicyRefusal => "io.berth.policy.refused",
        }
    }
}

/// RFC 3339 with microseconds, in UTC.
fn timestamp(micros: i64) -> String {
    let base = berth_oci::time::rfc3339(micros.div_euclid(1_000_000));
    let frac = micros.rem_euclid(1_000_000);
    format!("{}.{frac:06}Z", base.trim_end_matches('Z'))
}

/// The endpoints in force: the configuration's, then those stored.
#[derive(Debug, Default)]
pub(crate) struct EndpointSet {
    pub list: Vec<Endpoint>,
}

impl EndpointSet {
    pub fn get(&self, queue: &str) -> Option<&Endpoint> {
        self.list.iter().find(|e| e.queue == queue)
    }
}

/// Counters of the event machinery itself (per process).
#[derive(Debug, Default)]
pub struct EventStats {
    /// Pull events dropped because the in-memory queue was full.
    pub pulls_dropped: AtomicU64,
    /// Deliveries refused because the receiver's address is not allowed.
    pub address_refused: AtomicU64,
    /// Webhooks refused at creation for their address.
    pub webhooks_refused: AtomicU64,
    /// Policy refusals not sent as an event of their own (counted in a later one's
    /// `count`, or lost if no later one comes).
    pub refusals_withheld: AtomicU64,
}

/// Event ids: UUIDs (version 4 layout) made of a random per-process half and a counter,
/// unique without asking the system for randomness per event (a pull can be one).
struct Ids {
    process: u64,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Ids {
        let (process, start) = uuid::Uuid::new_v4().as_u64_pair();
        Ids {
            process,
            next: AtomicU64::new(start >> 2),
        }
    }

    fn counter(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn next(&self) -> String {
        Ids::format(self.process, self.counter())
    }

    fn format(process: u64, n: u64) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&process.to_be_bytes());
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

pub(crate) struct Events {
    settings: EventSettings,
    ids: Ids,
    allowlist: Arc<Allowlist>,
    endpoints: RwLock<Arc<EndpointSet>>,
    wants_pulls: AtomicBool,
    wants_refusals: AtomicBool,
    /// Per (repository, digest, rule): when its last refusal event was queued here.
    refusals: Mutex<HashMap<(String, String, String), RefusalWindow>>,
    /// Identifies this process in the events it makes.
    instance: String,
    client: Option<WebhookClient>,
    pub stats: EventStats,
    /// Pull events on their way to the batch writer; set when the jobs are started.
    pulls: RwLock<Option<tokio::sync::mpsc::Sender<Pull>>>,
}

impl Events {
    pub fn new(settings: EventSettings) -> Result<Events> {
        let allowlist = Arc::new(Allowlist::new(
            &settings.allow_hosts,
            &settings.allow_networks,
        ));
        let policy = {
            let a = Arc::clone(&allowlist);
            Arc::new(move |host: Option<&str>, ip: IpAddr| a.allows(host, ip))
        };
        let client = WebhookClient::new(policy, concat!("berth/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let mut names = std::collections::HashSet::new();
        for w in &settings.webhooks {
            check_spec(w)?;
            if !names.insert(&w.name) {
                return Err(RegistryError::Invalid(format!(
                    "[[webhook]] {} appears twice",
                    w.name
                )));
            }
        }
        let events = Events {
            ids: Ids::new(),
            allowlist,
            endpoints: RwLock::default(),
            wants_pulls: AtomicBool::new(false),
            wants_refusals: AtomicBool::new(false),
            refusals: Mutex::default(),
            instance: uuid::Uuid::new_v4().to_string(),
            client: Some(client),
            stats: EventStats::default(),
            pulls: RwLock::default(),
            settings,
        };
        events.install(Vec::new());
        Ok(events)
    }

    /// Without webhooks (and without an HTTP client: nothing will be sent).
    pub fn none() -> Events {
        Events {
            settings: EventSettings::default(),
            ids: Ids::new(),
            allowlist: Arc::default(),
            endpoints: RwLock::default(),
            wants_pulls: AtomicBool::new(false),
            wants_refusals: AtomicBool::new(false),
            refusals: Mutex::default(),
            instance: uuid::Uuid::new_v4().to_string(),
            client: None,
            stats: EventStats::default(),
            pulls: RwLock::default(),
        }
    }

    /// Puts the configuration's endpoints and `stored` in force.
    fn install(&self, stored: Vec<Endpoint>) {
        let mut list: Vec<Endpoint> = self
            .settings
            .webhooks
            .iter()
            .map(|spec| Endpoint {
                queue: queue_name(None, &spec.name),
                tenant: None,
                spec: spec.clone(),
                from_config: true,
            })
            .collect();
        // A stored global webhook cannot take a configured one's name (the API refuses
        // it); should one exist anyway, the configuration's wins.
        list.extend(stored.into_iter().filter(|e| {
            !(e.tenant.is_none() && self.settings.webhooks.iter().any(|w| w.name == e.spec.name))
        }));
        let wants = |k| list.iter().any(|e| e.spec.events.contains(&k));
        self.wants_pulls
            .store(wants(EventKind::Pull), Ordering::Relaxed);
        self.wants_refusals
            .store(wants(EventKind::PolicyRefusal), Ordering::Relaxed);
        *self
            .endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(EndpointSet { list });
    }

    pub fn endpoints(&self) -> Arc<EndpointSet> {
        Arc::clone(
            &self
                .endpoints
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The jobs a change causes: one per matching endpoint, all with one event.
    pub fn jobs_for(&self, c: &Change<'_>) -> Vec<NewJob> {
        if self.endpoints().list.is_empty() {
            return Vec::new();
        }
        let action = match c.kind {
            ChangeKind::Push => Action::Push,
            ChangeKind::Rollback => Action::Rollback,
            ChangeKind::DeleteManifest => Action::DeleteManifest,
            ChangeKind::DeleteTag => Action::DeleteTag,
        };
        self.jobs_of(&Event {
            id: self.ids.next(),
            at: c.at,
            action,
            repository: c.repo.to_owned(),
            digest: c.digest.to_owned(),
            media_type: c.media_type.map(str::to_owned),
            size: c.size,
            tag: c.tag.map(str::to_owned),
            previous: c.previous.map(str::to_owned),
            tags: c.tags.to_vec(),
            signature: None,
            refusal: None,
            actor: c.actor.name.clone(),
            addr: c.actor.source.clone(),
            instance: self.instance.clone(),
        })
    }

    /// The jobs of a signature added by the push `c`: the event names the subject.
    pub fn signature_jobs(&self, c: &Change<'_>, added: &SignatureAdded) -> Vec<NewJob> {
        if self.endpoints().list.is_empty() {
            return Vec::new();
        }
        self.jobs_of(&Event {
            id: self.ids.next(),
            at: c.at,
            action: Action::Signature,
            repository: c.repo.to_owned(),
            digest: added.subject.clone(),
            media_type: Some(added.media_type().to_owned()),
            size: None,
            tag: None,
            previous: None,
            tags: Vec::new(),
            signature: Some(Attached {
                digest: c.digest.to_owned(),
                media_type: c.media_type.unwrap_or_default().to_owned(),
                size: c.size.unwrap_or_default(),
                kind: added.kind.as_str().to_owned(),
            }),
            refusal: None,
            actor: c.actor.name.clone(),
            addr: c.actor.source.clone(),
            instance: self.instance.clone(),
        })
    }

    /// The jobs of a refused pull, unless this (repository, digest, rule) had its event
    /// here less than [`REFUSAL_EVERY`] ago (then it is only counted).
    fn refusal_jobs(&self, r: &RefusedPull<'_>, now: Instant) -> Vec<NewJob> {
        if !self.wants_refusals.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let count = {
            let mut map = self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (
                r.repository.to_owned(),
                r.digest.to_owned(),
                r.rule.to_owned(),
            );
            let fresh = |w: &RefusalWindow| now.duration_since(w.sent) < REFUSAL_EVERY;
            match map.get_mut(&key) {
                Some(w) if fresh(w) => {
                    w.withheld += 1;
                    self.stats.refusals_withheld.fetch_add(1, Ordering::Relaxed);
                    return Vec::new();
                }
                Some(w) => {
                    let count = w.withheld + 1;
                    *w = RefusalWindow {
                        sent: now,
                        withheld: 0,
                    };
                    count
                }
                None => {
                    if map.len() >= REFUSAL_KEYS {
                        map.retain(|_, w| fresh(w));
                    }
                    if map.len() >= REFUSAL_KEYS {
                        self.stats.refusals_withheld.fetch_add(1, Ordering::Relaxed);
                        return Vec::new();
                    }
                    map.insert(
                        key,
                        RefusalWindow {
                            sent: now,
                            withheld: 0,
                        },
                    );
                    1
                }
            }
        };
        self.jobs_of(&Event {
            id: self.ids.next(),
            at: berth_meta::now_micros(),
            action: Action::PolicyRefusal,
            repository: r.repository.to_owned(),
            digest: r.digest.to_owned(),
            media_type: Some(r.media_type.to_owned()),
            size: Some(r.size),
            tag: r.tag.map(str::to_owned),
            previous: None,
            tags: Vec::new(),
            signature: None,
            refusal: Some(Refusal {
                rule: r.rule.to_owned(),
                reason: r.reason.to_owned(),
                count,
                method: r.method.to_owned(),
            }),
            actor: r.actor.to_owned(),
            addr: r.source.map(|a| a.to_string()),
            instance: self.instance.clone(),
        })
    }

    /// One job per endpoint that subscribes to `event`, all with the same payload.
    fn jobs_of(&self, event: &Event) -> Vec<NewJob> {
        let set = self.endpoints();
        let kinds = event.kinds();
        let mut payload = None;
        let mut out = Vec::new();
        for ep in set
            .list
            .iter()
            .filter(|e| e.matches(&kinds, &event.repository))
        {
            let payload = payload.get_or_insert_with(|| {
                serde_json::to_string(&WebhookJob {
                    events: vec![event.clone()],
                    pulls: None,
                })
                .unwrap_or_default()
            });
            out.push(NewJob {
                kind: WEBHOOK_JOB.to_owned(),
                queue: ep.queue.clone(),
                lane: event.repository.clone(),
                payload: payload.clone(),
            });
        }
        out
    }

    /// The jobs of a batch of pulls: per endpoint and repository, in order, at most
    /// [`PULLS_PER_JOB`] pulls each.
    fn pull_jobs(&self, batch: &[Pull]) -> Vec<NewJob> {
        let set = self.endpoints();
        let mut by_repo: BTreeMap<&str, Vec<&Pull>> = BTreeMap::new();
        for p in batch {
            by_repo.entry(&p.repository).or_default().push(p);
        }
        let mut out = Vec::new();
        for (repo, pulls) in by_repo {
            let endpoints: Vec<&Endpoint> = set
                .list
                .iter()
                .filter(|e| e.matches(&[EventKind::Pull], repo))
                .collect();
            if endpoints.is_empty() {
                continue;
            }
            for chunk in pulls.chunks(PULLS_PER_JOB) {
                let payload = serde_json::to_string(&WebhookJob {
                    events: Vec::new(),
                    pulls: Some(self.pull_batch(repo, chunk)),
                })
                .unwrap_or_default();
                for ep in &endpoints {
                    out.push(NewJob {
                        kind: WEBHOOK_JOB.to_owned(),
                        queue: ep.queue.clone(),
                        lane: repo.to_owned(),
                        payload: payload.clone(),
                    });
                }
            }
        }
        out
    }

    fn pull_batch(&self, repo: &str, pulls: &[&Pull]) -> PullBatch {
        let mut manifests = Intern::default();
        let mut sizes: Vec<(String, u64)> = Vec::new();
        let mut names = Intern::default();
        let mut rows = Vec::with_capacity(pulls.len());
        for p in pulls {
            let known = manifests.list.len();
            let m = manifests.index(&p.digest);
            if manifests.list.len() > known {
                sizes.push((p.media_type.clone(), p.size));
            }
            let tag = p.tag.as_deref().map_or(-1, |t| names.signed(t));
            let actor = names.index(&p.actor);
            let addr = p.addr.as_deref().map_or(-1, |a| names.signed(a));
            rows.push((p.counter, p.at, m, tag, actor, addr));
        }
        PullBatch {
            repository: repo.to_owned(),
            instance: self.instance.clone(),
            ids: self.ids.process,
            manifests: manifests
                .list
                .into_iter()
                .zip(sizes)
                .map(|(d, (mt, size))| (d, mt, size))
                .collect(),
            names: names.list,
            pulls: rows,
        }
    }

    fn source_uri(&self) -> String {
        match &self.settings.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("berth://{}", self.settings.source_addr),
        }
    }

    fn manifest_url(&self, repo: &str, digest: &str) -> Option<String> {
        self.settings
            .public_url
            .as_ref()
            .map(|u| format!("{}/v2/{repo}/manifests/{digest}", u.trim_end_matches('/')))
    }

    /// One event in Distribution's shape.
    fn distribution_event<'a>(&'a self, e: &'a View<'a>) -> DistEvent<'a> {
        let (action, method) = match e.action {
            Action::Push => ("push", "PUT"),
            // A rollback is, for a consumer of these events, the tag now naming another
            // manifest: a push of the tag with the digest it names now.
            Action::Rollback => ("push", "POST"),
            Action::DeleteManifest | Action::DeleteTag => ("delete", "DELETE"),
            Action::Pull => ("pull", "GET"),
            // A push concerning the subject: its target is the image signed, typed as the
            // signature (what consumers filter on), the signature manifest in
            // `references` (Distribution 3's field for related descriptors).
            Action::Signature => ("push", "PUT"),
            // Distribution has no refusal: a Berth action, namespaced so it cannot clash
            // with one Distribution may add.
            Action::PolicyRefusal => (
                "berth.policy.refused",
                e.refusal.map_or("GET", |r| r.method.as_str()),
            ),
        };
        let deleted = matches!(e.action, Action::DeleteManifest | Action::DeleteTag);
        DistEvent {
            id: &e.id,
            timestamp: timestamp(e.at),
            action,
            target: DistTarget {
                media_type: e.media_type,
                size: e.size,
                length: e.size,
                digest: e.digest,
                repository: e.repository,
                url: (!deleted)
                    .then(|| self.manifest_url(e.repository, e.digest))
                    .flatten(),
                tag: e.tag,
                references: e
                    .signature
                    .map(|s| {
                        vec![DistDescriptor {
                            media_type: &s.media_type,
                            digest: &s.digest,
                            size: s.size,
                        }]
                    })
                    .unwrap_or_default(),
            },
            request: DistRequest {
                id: &e.id,
                addr: e.addr,
                method,
            },
            actor: DistActor { name: e.actor },
            source: DistSource {
                addr: &self.settings.source_addr,
                instance_id: e.instance,
            },
            policy: e.refusal,
        }
    }

    /// One event as a CloudEvent.
    fn cloudevent<'a>(&'a self, e: &'a View<'a>, source: &'a str) -> CloudEvent<'a> {
        let deleted = matches!(e.action, Action::DeleteManifest | Action::DeleteTag);
        CloudEvent {
            specversion: "1.0",
            id: &e.id,
            source,
            kind: e.cloudevents_type(),
            subject: e.repository,
            time: timestamp(e.at),
            datacontenttype: "application/json",
            data: CloudData {
                repository: e.repository,
                digest: e.digest,
                media_type: e.media_type,
                size: e.size,
                tag: e.tag,
                previous_digest: e.previous,
                tags: e.tags,
                signature: e.signature,
                policy: e.refusal,
                url: (!deleted)
                    .then(|| self.manifest_url(e.repository, e.digest))
                    .flatten(),
                actor: CloudActor {
                    name: e.actor,
                    addr: e.addr,
                },
            },
        }
    }

    /// The body and content type an endpoint gets for `events`.
    fn render(&self, format: Format, events: &[View<'_>]) -> (Vec<u8>, &'static str) {
        let body = match format {
            Format::Distribution => {
                let events: Vec<DistEvent<'_>> =
                    events.iter().map(|e| self.distribution_event(e)).collect();
                serde_json::to_vec(&DistEnvelope { events })
            }
            Format::Cloudevents => {
                let source = self.source_uri();
                if let [one] = events {
                    return (
                        serde_json::to_vec(&self.cloudevent(one, &source)).unwrap_or_default(),
                        CLOUDEVENT,
                    );
                }
                let list: Vec<CloudEvent<'_>> =
                    events.iter().map(|e| self.cloudevent(e, &source)).collect();
                return (
                    serde_json::to_vec(&list).unwrap_or_default(),
                    CLOUDEVENTS_BATCH,
                );
            }
        };
        (body.unwrap_or_default(), DISTRIBUTION_EVENTS)
    }

    /// Delivers a webhook job to its endpoint.
    pub async fn deliver(&self, job: &Job) -> std::result::Result<(), DeliveryFailure> {
        let set = self.endpoints();
        let Some(ep) = set.get(&job.queue) else {
            return Err(DeliveryFailure::permanent(format!(
                "webhook {} is no longer configured",
                job.queue
            )));
        };
        let Some(client) = &self.client else {
            return Err(DeliveryFailure::permanent(
                "events are not configured".into(),
            ));
        };
        let payload: WebhookJob = serde_json::from_str(&job.payload)
            .map_err(|e| DeliveryFailure::permanent(format!("unreadable job: {e}")))?;
        let (body, content_type) = self.render(ep.spec.format, &payload.views());
        let now = berth_meta::now_micros() / 1_000_000;
        let mut headers = vec![
            ("content-type", content_type.to_owned()),
            ("x-berth-delivery", job.id.to_string()),
            ("x-berth-timestamp", now.to_string()),
        ];
        if let Some(secret) = &ep.spec.secret {
            headers.push(("x-berth-signature", sign(secret, now, &body)));
        }
        let sent = client
            .post(Delivery {
                url: &ep.spec.url,
                headers: &headers,
                body: Bytes::from(body),
                timeout: Duration::from_secs(ep.spec.timeout_secs.clamp(1, MAX_TIMEOUT_SECS)),
                checked: !ep.from_config,
            })
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(DeliveryError::Refused(why)) => {
                self.stats.address_refused.fetch_add(1, Ordering::Relaxed);
                Err(DeliveryFailure::permanent(why))
            }
            Err(e @ DeliveryError::Invalid(_)) => Err(DeliveryFailure::permanent(e.to_string())),
            Err(DeliveryError::Status {
                status,
                retry_after,
            }) => Err(DeliveryFailure {
                error: format!("the receiver answered {status}"),
                permanent: false,
                retry_after,
            }),
            Err(e) => Err(DeliveryFailure {
                error: e.to_string(),
                permanent: false,
                retry_after: None,
            }),
        }
    }

    /// Queues a pull event for the batch writer, if anyone listens.
    fn pull(&self, make: impl FnOnce(u64) -> Pull) {
        if !self.wants_pulls.load(Ordering::Relaxed) {
            return;
        }
        let guard = self
            .pulls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tx) = guard.as_ref() else {
            return;
        };
        if tx.try_send(make(self.ids.counter())).is_err() {
            self.stats.pulls_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// What receivers get, borrowed from the stored events: rendering is per delivered event,
// so it builds no intermediate JSON values.

#[derive(Serialize)]
struct DistEnvelope<'a> {
    events: Vec<DistEvent<'a>>,
}

#[derive(Serialize)]
struct DistEvent<'a> {
    id: &'a str,
    timestamp: String,
    action: &'static str,
    target: DistTarget<'a>,
    request: DistRequest<'a>,
    actor: DistActor<'a>,
    source: DistSource<'a>,
    /// `berth.policy.refused` only: the rule, the reason, the count and the method.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a Refusal>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DistTarget<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    digest: &'a str,
    repository: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    references: Vec<DistDescriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DistDescriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
}

#[derive(Serialize)]
struct DistRequest<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<&'a str>,
    method: &'a str,
}

#[derive(Serialize)]
struct DistActor<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct DistSource<'a> {
    addr: &'a str,
    #[serde(rename = "instanceID")]
    instance_id: &'a str,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: CloudData<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CloudData<'a> {
    repository: &'a str,
    digest: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_digest: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a Attached>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a Refusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    actor: CloudActor<'a>,
}

#[derive(Serialize)]
struct CloudActor<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<&'a str>,
}

/// Why a job failed, and whether trying again can help.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryFailure {
    pub error: String,
    /// Nothing changes by retrying (an address refused, an endpoint gone).
    pub permanent: bool,
    /// The receiver asked to wait this long.
    pub retry_after: Option<Duration>,
}

impl DeliveryFailure {
    pub fn permanent(error: String) -> DeliveryFailure {
        DeliveryFailure {
            error,
            permanent: true,
            retry_after: None,
        }
    }

    pub fn transient(error: String) -> DeliveryFailure {
        DeliveryFailure {
            error,
            permanent: false,
            retry_after: None,
        }
    }
}

/// How a webhook secret set through the API is stored with encryption on:
/// `sealed:v1:<key id>:<base64 of the wrapped secret>`, the wrap bound to the webhook.
pub(crate) const SEALED_SECRET: &str = "sealed:v1:";

/// What a webhook's sealed secret is bound to: copied to another webhook's row, it does
/// not open.
pub(crate) fn webhook_secret_context(tenant: Option<&str>, name: &str) -> Vec<u8> {
    format!("webhook-secret\0{}\0{name}", tenant.unwrap_or("")).into_bytes()
}

/// The key id and wrapped bytes of a stored sealed secret, if it is one.
pub(crate) fn parse_sealed_secret(stored: &str) -> Option<(&str, Vec<u8>)> {
    use base64::Engine as _;
    let rest = stored.strip_prefix(SEALED_SECRET)?;
    let (id, b64) = rest.split_once(':')?;
    let wrapped = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((id, wrapped))
}

pub(crate) fn format_sealed_secret(id: &str, wrapped: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "{SEALED_SECRET}{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(wrapped)
    )
}

/// `sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>` with the endpoint's secret.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn check_spec(w: &WebhookSpec) -> Result<()> {
    if !berth_auth::valid_name(&w.name) {
        return Err(RegistryError::Invalid(format!(
            "webhook name {:.64?} is invalid: 1-64 lowercase letters, digits, and . _ - between them",
            w.name
        )));
    }
    url_host(&w.url).map_err(|e| RegistryError::Invalid(format!("webhook {}: {e}", w.name)))?;
    if w.events.is_empty() {
        return Err(RegistryError::Invalid(format!(
            "webhook {}: events is empty (push, tag_move, rollback, delete, pull, signature, policy_refusal)",
            w.name
        )));
    }
    if w.timeout_secs == 0 || w.timeout_secs > MAX_TIMEOUT_SECS {
        return Err(RegistryError::Invalid(format!(
            "webhook {}: timeout_secs must be 1 to {MAX_TIMEOUT_SECS}",
            w.name
        )));
    }
    if w.secret
        .as_deref()
        .is_some_and(|s| s.starts_with(SEALED_SECRET))
    {
        return Err(RegistryError::Invalid(format!(
            "webhook {}: a secret may not begin with {SEALED_SECRET:?} (the form sealed secrets are stored in)",
            w.name
        )));
    }
    if w.secret.as_deref().is_some_and(str::is_empty) {
        return Err(RegistryError::Invalid(format!(
            "webhook {}: an empty secret signs nothing; leave it out",
            w.name
        )));
    }
    Ok(())
}

/// A webhook as the API and CLI show it: never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    pub name: String,
    pub tenant: Option<String>,
    pub url: String,
    pub events: Vec<EventKind>,
    pub repositories: Vec<String>,
    pub format: Format,
    pub timeout_secs: u64,
    pub signed: bool,
    /// Set in the configuration file (changed only there).
    pub from_config: bool,
    /// Its queue, as `berth events` and the metrics name it.
    pub queue: String,
}

impl From<&Endpoint> for WebhookView {
    fn from(e: &Endpoint) -> WebhookView {
        WebhookView {
            name: e.spec.name.clone(),
            tenant: e.tenant.clone(),
            url: e.spec.url.clone(),
            events: e.spec.events.clone(),
            repositories: e.spec.repositories.clone(),
            format: e.spec.format,
            timeout_secs: e.spec.timeout_secs,
            signed: e.spec.secret.is_some(),
            from_config: e.from_config,
            queue: e.queue.clone(),
        }
    }
}

/// A job as the API and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub lane: String,
    pub state: &'static str,
    pub attempts: u32,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    /// How many events a webhook job carries, and the first one (id, action).
    pub events: usize,
    pub first_event: Option<(String, Action)>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> JobView {
        let (events, first_event) = if j.kind == WEBHOOK_JOB {
            match serde_json::from_str::<WebhookJob>(&j.payload) {
                Ok(p) => match (p.events.first(), &p.pulls) {
                    (Some(e), _) => (p.events.len(), Some((e.id.clone(), e.action))),
                    (None, Some(b)) => (b.len(), b.first_id().map(|id| (id, Action::Pull))),
                    (None, None) => (0, None),
                },
                Err(_) => (0, None),
            }
        } else {
            (0, None)
        };
        JobView {
            id: j.id,
            kind: j.kind,
            queue: j.queue,
            lane: j.lane,
            state: j.state.as_str(),
            attempts: j.attempts,
            created_at: j.created_at,
            next_attempt_at: j.next_attempt_at,
            last_error: j.last_error,
            events,
            first_event,
        }
    }
}

impl Registry {
    /// Webhooks and the allowlist; checks the configuration's webhooks.
    pub fn with_events(mut self, settings: EventSettings) -> Result<Registry> {
        self.events = Arc::new(Events::new(settings)?);
        Ok(self)
    }

    /// Re-reads the webhooks set through the API (every replica does, every few seconds).
    pub async fn reload_webhooks(&self) -> Result<()> {
        let rows = self.meta.webhooks().await?;
        let mut stored = Vec::new();
        for (tenant, name, spec) in rows {
            match serde_json::from_str::<WebhookSpec>(&spec) {
                Ok(mut spec) => {
                    if let Some(secret) = spec.secret.as_deref()
                        && let Some((id, wrapped)) = parse_sealed_secret(secret)
                    {
                        let context = webhook_secret_context(tenant.as_deref(), &name);
                        let opened = match &self.encryption {
                            Some(ring) => ring
                                .unwrap(id, &context, &wrapped)
                                .map_err(|e| e.to_string())
                                .and_then(|raw| String::from_utf8(raw).map_err(|e| e.to_string())),
                            None => Err("encryption is not configured".to_owned()),
                        };
                        match opened {
                            Ok(secret) => spec.secret = Some(secret),
                            Err(e) => {
                                tracing::warn!(webhook = %name, error = %e, "stored webhook's sealed secret does not open; webhook ignored");
                                continue;
                            }
                        }
                    }
                    stored.push(Endpoint {
                        queue: queue_name(tenant.as_deref(), &name),
                        tenant,
                        spec,
                        from_config: false,
                    })
                }
                Err(e) => {
                    tracing::warn!(webhook = %name, error = %e, "stored webhook unreadable; ignored")
                }
            }
        }
        self.events.install(stored);
        Ok(())
    }

    /// Notes a manifest pull for the webhooks that subscribe to pulls (none: nothing is
    /// done). Batched: see the module notes.
    pub fn record_pull(
        &self,
        repo: &RepoName,
        tag: Option<&str>,
        digest: &str,
        media_type: &str,
        size: u64,
        actor: &berth_meta::Actor,
    ) {
        self.events.pull(|counter| Pull {
            counter,
            at: berth_meta::now_micros(),
            repository: repo.to_string(),
            digest: digest.to_owned(),
            media_type: media_type.to_owned(),
            size,
            tag: tag.map(str::to_owned),
            actor: actor.name.clone(),
            addr: actor.source.clone(),
        });
    }

    /// Notes a pull an enforcing policy rule refused, for the webhooks that subscribe to
    /// refusals: queued at once for a (repository, digest, rule) new here, else at most
    /// once per [`REFUSAL_EVERY`] (see the module notes). Written off the request path.
    pub(crate) fn record_refusal(&self, refused: &RefusedPull<'_>) {
        let jobs = self.events.refusal_jobs(refused, Instant::now());
        if jobs.is_empty() {
            return;
        }
        let registry = self.clone();
        tokio::spawn(async move {
            match registry.meta.enqueue_jobs(&jobs).await {
                Ok(()) => registry.wake_jobs(),
                Err(e) => {
                    tracing::warn!(error = %e, "policy refusal event not written");
                    registry
                        .events
                        .stats
                        .refusals_withheld
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    /// Whether some webhook subscribes to pulls (so a pull is worth describing).
    pub fn wants_pull_events(&self) -> bool {
        self.events.wants_pulls.load(Ordering::Relaxed)
    }

    pub fn event_stats(&self) -> &EventStats {
        &self.events.stats
    }

    /// Starts the task that writes pull events in batches; returns its handle.
    pub(crate) fn start_pull_writer(&self) -> tokio::task::JoinHandle<()> {
        let capacity = match self.events.settings.pull_queue {
            0 => 8192,
            n => n,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        *self
            .events
            .pulls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        tokio::spawn(write_pulls(self.clone(), rx))
    }

    /// Stops taking pull events; the writer then writes what it holds and ends.
    pub(crate) fn stop_pull_writer(&self) {
        self.events
            .pulls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    // ---- management (API and CLI) ----

    /// The webhooks of `tenant` (its owners, admins) or the global ones (admins).
    pub fn webhooks(&self, by: &Identity, tenant: Option<&str>) -> Result<Vec<WebhookView>> {
        match tenant {
            Some(t) => require_manager(by, t)?,
            None => require_admin(by)?,
        }
        Ok(self
            .events
            .endpoints()
            .list
            .iter()
            .filter(|e| e.tenant.as_deref() == tenant)
            .map(WebhookView::from)
            .collect())
    }

    /// Every webhook in force, global and of every tenant (admins).
    pub fn all_webhooks(&self, by: &Identity) -> Result<Vec<WebhookView>> {
        require_admin(by)?;
        Ok(self
            .events
            .endpoints()
            .list
            .iter()
            .map(WebhookView::from)
            .collect())
    }

    /// Creates or replaces a webhook of `tenant` (owners, admins) or a global one (admins).
    /// Its address must be one the allowlist admits.
    pub async fn put_webhook(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: Option<&str>,
        spec: WebhookSpec,
    ) -> Result<()> {
        match tenant {
            Some(t) => require_manager(by, t)?,
            None => require_admin(by)?,
        }
        check_spec(&spec)?;
        if tenant.is_none()
            && self
                .events
                .settings
                .webhooks
                .iter()
                .any(|w| w.name == spec.name)
        {
            return Err(RegistryError::Conflict(format!(
                "webhook {} is set in the configuration file; change it there",
                spec.name
            )));
        }
        let (host, literal) =
            url_host(&spec.url).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        // A name is judged by what it resolves to each time it is called; an address
        // can be judged now.
        if let Some(ip) = literal
            && !self.events.allowlist.allows(None, ip)
        {
            self.events
                .stats
                .webhooks_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(RegistryError::Denied(format!(
                "webhook {}: {host} is an internal address (loopback, link-local, private); \
                 an admin must allow it in [events] allow_networks or allow_hosts",
                spec.name
            )));
        }
        // With encryption on, the secret is stored sealed (it signs deliveries: whoever
        // reads it can forge them).
        let mut stored = spec.clone();
        if let (Some(ring), Some(secret)) = (&self.encryption, spec.secret.as_deref()) {
            let context = webhook_secret_context(tenant, &spec.name);
            let (id, wrapped) = ring.wrap(&context, secret.as_bytes());
            stored.secret = Some(format_sealed_secret(&id, &wrapped));
        }
        let json =
            serde_json::to_string(&stored).map_err(|e| RegistryError::Internal(e.to_string()))?;
        if !self
            .meta
            .put_webhook(tenant, &spec.name, &json, &by.actor(source))
            .await?
        {
            return Err(RegistryError::NotFound(format!(
                "no tenant {}",
                tenant.unwrap_or_default()
            )));
        }
        self.reload_webhooks().await
    }

    /// Deletes a webhook and the deliveries queued for it.
    pub async fn delete_webhook(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: Option<&str>,
        name: &str,
    ) -> Result<()> {
        match tenant {
            Some(t) => require_manager(by, t)?,
            None => require_admin(by)?,
        }
        if tenant.is_none() && self.events.settings.webhooks.iter().any(|w| w.name == name) {
            return Err(RegistryError::Conflict(format!(
                "webhook {name} is set in the configuration file; remove it there"
            )));
        }
        let queue = queue_name(tenant, name);
        if !self
            .meta
            .delete_webhook(tenant, name, &queue, &by.actor(source))
            .await?
        {
            return Err(RegistryError::NotFound(format!("no webhook {name}")));
        }
        self.reload_webhooks().await
    }

    /// Queued and dead jobs, newest first: every queue's (admins, `tenant` None), or a
    /// tenant's webhooks' (its owners).
    pub async fn jobs(
        &self,
        by: &Identity,
        tenant: Option<&str>,
        state: Option<JobState>,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<JobView>> {
        let queues = self.queues_of(by, tenant)?;
        let jobs = self
            .meta
            .jobs(&JobQuery {
                state,
                queues,
                before_id: before,
                limit: limit.clamp(1, 1000),
            })
            .await?;
        Ok(jobs.into_iter().map(JobView::from).collect())
    }

    /// Sends a job again (a dead one with fresh attempts).
    pub async fn redeliver(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: Option<&str>,
        id: i64,
    ) -> Result<()> {
        let queues = self.queues_of(by, tenant)?;
        let job = self.meta.job(id).await?;
        let visible = job
            .as_ref()
            .is_some_and(|j| queues.as_ref().is_none_or(|q| q.contains(&j.queue)));
        if !visible || !self.meta.redeliver_job(id, &by.actor(source)).await? {
            return Err(RegistryError::NotFound(format!("no job {id}")));
        }
        self.wake_jobs();
        Ok(())
    }

    /// The queues a caller may look at: `None` for all (admins without a tenant).
    fn queues_of(&self, by: &Identity, tenant: Option<&str>) -> Result<Option<Vec<String>>> {
        match tenant {
            None => {
                require_admin(by)?;
                Ok(None)
            }
            Some(t) => {
                require_manager(by, t)?;
                Ok(Some(
                    self.events
                        .endpoints()
                        .list
                        .iter()
                        .filter(|e| e.tenant.as_deref() == Some(t))
                        .map(|e| e.queue.clone())
                        .collect(),
                ))
            }
        }
    }
}

/// Writes pull events in batches: one transaction per batch, one job per endpoint and
/// repository.
async fn write_pulls(registry: Registry, mut rx: tokio::sync::mpsc::Receiver<Pull>) {
    let mut batch = Vec::with_capacity(PULLS_PER_TX);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + PULL_LINGER;
        while batch.len() < PULLS_PER_TX {
            if let Ok(e) = rx.try_recv() {
                batch.push(e);
                continue;
            }
            // Nothing waiting: a small batch lingers for company, a large one goes.
            if batch.len() >= PULLS_PER_JOB {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let jobs = registry.events.pull_jobs(&batch);
        if let Err(e) = registry.meta.enqueue_jobs(&jobs).await {
            tracing::warn!(error = %e, events = batch.len(), "pull events not written");
            registry
                .events
                .stats
                .pulls_dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        } else if !jobs.is_empty() {
            registry.wake_jobs();
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_allowlist_admits_public_addresses_and_what_the_admin_listed() {
        let none = Allowlist::default();
        assert!(none.allows(Some("hooks.example"), ip("203.0.113.9")));
        for inside in ["127.0.0.1", "169.254.169.254", "10.1.2.3", "::1", "fe80::1"] {
            assert!(!none.allows(Some("hooks.example"), ip(inside)), "{inside}");
            assert!(!none.allows(None, ip(inside)), "{inside}");
        }
        let some = Allowlist::new(
            &["hooks.internal".into(), "*.svc.cluster.local".into()],
            &["10.0.0.0/8".parse().expect("net")],
        );
        assert!(some.allows(None, ip("10.9.9.9")));
        assert!(!some.allows(None, ip("192.168.1.1")));
        assert!(some.allows(Some("HOOKS.internal."), ip("192.168.1.1")));
        assert!(some.allows(Some("ci.team.svc.cluster.local"), ip("172.20.0.1")));
        assert!(!some.allows(Some("svc.cluster.local"), ip("172.20.0.1")));
        assert!(!some.allows(Some("evilsvc.cluster.local"), ip("172.20.0.1")));
    }

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        // Computed independently: Python's hmac.new(b"Jefe", b"1.what do ya want for
        // nothing?", hashlib.sha256).
        let s = sign("Jefe", 1, b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=a9049465ce89cfb8e9aac62333abda66f80e3403f51f57f6bae3c3a4485eca38"
        );
        assert_ne!(s, sign("Jefe", 2, b"what do ya want for nothing?"));
        assert_ne!(s, sign("jefe", 1, b"what do ya want for nothing?"));
    }

    #[test]
    fn event_ids_are_distinct_uuids() {
        let ids = Ids::new();
        let other = Ids::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            for id in [ids.next(), other.next()] {
                let u: uuid::Uuid = id.parse().expect("a UUID");
                assert_eq!(u.get_version_num(), 4);
                assert!(seen.insert(id));
            }
        }
    }

    #[test]
    fn timestamps_keep_microseconds() {
        assert_eq!(
            timestamp(1_795_317_266_000_042),
            "2026-11-22T03:14:26.000042Z"
        );
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
    }

    fn refused<'a>(digest: &'a str, rule: &'a str) -> RefusedPull<'a> {
        RefusedPull {
            repository: "prod/app",
            digest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            size: 512,
            tag: Some("v1"),
            rule,
            reason: "no signature",
            method: "GET",
            actor: "node",
            source: Some(ip("10.0.0.7")),
        }
    }

    fn count_of(jobs: &[NewJob]) -> Vec<u64> {
        jobs.iter()
            .map(|j| {
                let p: WebhookJob = serde_json::from_str(&j.payload).expect("payload");
                p.events[0].refusal.as_ref().expect("a refusal").count
            })
            .collect()
    }

    #[test]
    fn refusal_events_are_limited_per_key_and_count_what_they_withheld() {
        let spec = |events| WebhookSpec {
            name: "sec".into(),
            url: "http://hooks.example/r".into(),
            events,
            repositories: Vec::new(),
            secret: None,
            format: Format::Distribution,
            timeout_secs: 10,
        };
        // Nobody subscribes: nothing is made, nothing remembered.
        let quiet = Events::new(EventSettings {
            webhooks: vec![spec(default_events())],
            ..EventSettings::default()
        })
        .expect("events");
        let t0 = Instant::now();
        assert!(
            quiet
                .refusal_jobs(&refused("sha256:aa", "r"), t0)
                .is_empty()
        );
        assert!(quiet.refusals.lock().expect("lock").is_empty());

        let ev = Events::new(EventSettings {
            webhooks: vec![spec(vec![EventKind::PolicyRefusal])],
            ..EventSettings::default()
        })
        .expect("events");
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            count_of(&ev.refusal_jobs(&refused("sha256:aa", "r"), t0)),
            [1]
        );
        for s in [1, 30, 59] {
            assert!(
                ev.refusal_jobs(&refused("sha256:aa", "r"), at(s))
                    .is_empty()
            );
        }
        // Another digest or another rule is another key.
        assert_eq!(
            count_of(&ev.refusal_jobs(&refused("sha256:bb", "r"), at(1))),
            [1]
        );
        assert_eq!(
            count_of(&ev.refusal_jobs(&refused("sha256:aa", "q"), at(1))),
            [1]
        );
        // A minute after the last event, the next one carries what was withheld.
        assert_eq!(
            count_of(&ev.refusal_jobs(&refused("sha256:aa", "r"), at(60))),
            [4]
        );
        assert!(
            ev.refusal_jobs(&refused("sha256:aa", "r"), at(61))
                .is_empty()
        );
        assert_eq!(ev.stats.refusals_withheld.load(Ordering::Relaxed), 4);

        let job: WebhookJob =
            serde_json::from_str(&ev.refusal_jobs(&refused("sha256:cc", "r"), at(62))[0].payload)
                .expect("payload");
        let e = &job.events[0];
        assert_eq!(e.action, Action::PolicyRefusal);
        assert_eq!(e.kinds(), [EventKind::PolicyRefusal]);
        assert_eq!(
            (e.digest.as_str(), e.tag.as_deref(), e.actor.as_str()),
            ("sha256:cc", Some("v1"), "node")
        );
        assert_eq!(e.addr.as_deref(), Some("10.0.0.7"));
    }
}
