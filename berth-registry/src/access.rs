//! Access control use cases: logging in, issuing and checking tokens, and managing users,
//! tenants, members and robot accounts. The server's `/token` and `/api/v1` endpoints and
//! the CLI's `user`, `tenant`, `robot` and `secret` commands all come through here, so the
//! rules (who may manage what, which names are valid) live in one place.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_auth::password;
use berth_auth::policy::CachePull;
use berth_auth::token::new_jti;
use berth_auth::{
    AccessEntry, Actions, Claims, Grants, Keyring, LIBRARY, MANAGEMENT_SCOPE, RobotScope, Role,
    Scope, ScopeKind, SigningKey, TokenError, reserved_name, split_robot, valid_name,
};
use berth_meta::{Actor, AuditQuery, AuditRecord, MetaStore, RobotRow, UserChange};
use sha2::{Digest as _, Sha256};

use crate::login::{Lane, LoginStats, PasswordPool, Throttle, ThrottlePolicy};
use crate::{RegistryError, Result};

/// Settings of authentication and tokens.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// The `service` of challenges and the audience of tokens.
    pub service: String,
    /// The `iss` of tokens.
    pub issuer: String,
    /// Lifetime of access tokens.
    pub token_ttl: Duration,
    /// Lifetime of refresh tokens (`offline_token=true`).
    pub refresh_ttl: Duration,
    /// How long a successful password check is remembered, so Basic-auth clients do not pay
    /// for argon2 on every request.
    pub login_cache_ttl: Duration,
    /// Failed logins of one user from one client address (group) before its attempts are
    /// delayed (see `login`): never refused, only slowed.
    pub failures_before_delay: u32,
    /// Failed logins from one client address (group), whatever the user, before its
    /// attempts are delayed: against password spraying.
    pub source_failures_before_delay: u32,
    /// The longest delay: the first is 250 ms, doubling with each further failure.
    pub max_login_delay: Duration,
    /// Failures are forgotten this long after a key's last one.
    pub failure_window: Duration,
    /// Threads that check and hash passwords (argon2): at most this many checks run at
    /// once, whatever the number of logins.
    pub password_threads: usize,
    /// Password checks that may wait for a thread in the clean lane (a quarter of it in the
    /// suspect lane) before checks are refused (503); see `crate::login::PasswordPool`.
    pub password_queue: usize,
    /// Pull-through caches: the tenant named after each upstream, and who may pull from it.
    pub cache_tenants: Vec<(String, CachePull)>,
    /// Encryption at rest: token signing keys are stored sealed with this keyring.
    pub encryption: Option<Arc<berth_storage::seal::Keyring>>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            service: "berth".to_owned(),
            issuer: "berth".to_owned(),
            token_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            login_cache_ttl: Duration::from_secs(30),
            failures_before_delay: 5,
            source_failures_before_delay: 20,
            max_login_delay: Duration::from_secs(4),
            failure_window: Duration::from_secs(300),
            password_threads: default_password_threads(),
            password_queue: 32,
            cache_tenants: Vec::new(),
            encryption: None,
        }
    }
}

/// Half the cores (at least one): a login flood then leaves the other half to serve pulls.
pub fn default_password_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    Anonymous,
    User,
    Robot,
}

/// A logged-in (or anonymous) caller and everything it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The login: a user name, `tenant+robot`, or `anonymous`.
    pub name: String,
    pub kind: IdentityKind,
    pub grants: Grants,
    /// A fingerprint of the current password or secret (see `Claims::cred`).
    pub cred: String,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.grants.admin
    }

    pub fn actor(&self, source: Option<IpAddr>) -> Actor {
        Actor {
            name: self.name.clone(),
            source: source.map(|s| s.to_string()),
        }
    }
}

/// How a token request proved who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueVia {
    /// A password or robot secret, or nothing (the anonymous caller).
    Credentials,
    /// A refresh token: it renews repository access, and never mints the management
    /// scope, so a refresh token (long-lived, kept by clients) is not an account key.
    RefreshToken,
}

/// What a user change asks for (`None`: leave it).
#[derive(Debug, Clone, Default)]
pub struct UserUpdate<'a> {
    pub password: Option<&'a str>,
    /// The password being replaced: required when users change their own, so a stolen
    /// token or session cannot make itself permanent.
    pub current_password: Option<&'a str>,
    pub admin: Option<bool>,
    pub disabled: Option<bool>,
}

/// What the token endpoint returns.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    /// Seconds since the epoch.
    pub issued_at: i64,
    pub refresh_token: Option<String>,
    /// What was granted, for the audit log.
    pub granted: Vec<AccessEntry>,
}

/// A robot account as shown to managers (never its secret hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RobotInfo {
    pub tenant: String,
    pub name: String,
    /// The user name it logs in with.
    pub login: String,
    pub actions: Vec<String>,
    pub repositories: Vec<String>,
    pub description: Option<String>,
    /// Seconds since the epoch.
    pub expires_at: Option<i64>,
    pub disabled: bool,
}

/// A new robot's (or a rotated one's) credentials. The secret is shown once.
#[derive(Debug, Clone)]
pub struct RobotCredentials {
    pub robot: RobotInfo,
    pub secret: String,
}

/// What a robot may do, as asked for when it is created.
#[derive(Debug, Clone)]
pub struct NewRobot {
    pub actions: Actions,
    pub repositories: Vec<String>,
    pub description: Option<String>,
    pub expires_in: Option<Duration>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn fingerprint(stored_hash: &str) -> String {
    hex::encode(&Sha256::digest(stored_hash.as_bytes())[..8])
}

/// The one check of a set of identical logins; dropped, it lets the others look at the
/// login cache.
struct Flight<'a> {
    access: &'a Access,
    key: [u8; 32],
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        lock(&self.access.0.flights).remove(&self.key);
    }
}

/// Remembered logins: hash of name and password → identity, and when it was checked.
type LoginCache = HashMap<[u8; 32], (Arc<Identity>, Instant)>;

struct Inner {
    meta: MetaStore,
    config: AccessConfig,
    keyring: RwLock<Keyring>,
    /// A key from a file replaces the stored ones entirely.
    fixed_key: bool,
    logins: Mutex<LoginCache>,
    /// Tokens already verified, so a client reusing its token costs a lookup, not a JSON
    /// parse and an HMAC, per request. Keyed by the whole token: a changed byte misses.
    tokens: Mutex<HashMap<String, Arc<Claims>>>,
    throttle: Mutex<Throttle>,
    /// Logins being checked now, by the hash of name and password: the same credentials
    /// arriving meanwhile (fifty nodes pulling with one robot's secret at once) wait for
    /// that one check instead of each taking a place in the password queue.
    flights: Mutex<HashMap<[u8; 32], tokio::sync::watch::Receiver<()>>>,
    passwords: PasswordPool,
    stats: Arc<LoginStats>,
    anonymous: Mutex<Option<(Arc<Identity>, Instant)>>,
}

/// Authentication and management of identities. Cheap to clone.
#[derive(Clone)]
pub struct Access(Arc<Inner>);

/// Why a login failed. Whether the user exists is never told apart from a wrong password.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("invalid username or password")]
    BadCredentials,
    #[error("too many failed logins")]
    Throttled(Duration),
    /// Every password thread is busy and the queue is full.
    #[error("too many logins at once")]
    Busy,
    #[error(transparent)]
    Meta(#[from] berth_meta::MetaError),
}

impl From<LoginError> for RegistryError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::BadCredentials => {
                RegistryError::Unauthorized("invalid username or password".into())
            }
            LoginError::Throttled(d) => RegistryError::Throttled {
                retry_after_secs: d.as_secs_f64().ceil().max(1.0) as u64,
            },
            LoginError::Busy => RegistryError::Busy {
                retry_after_secs: 1,
            },
            LoginError::Meta(m) => RegistryError::Meta(m),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Access {
    /// Loads the signing keys, creating the first one if the store has none. `key_file`
    /// bytes, when given, are the only signing key (operators who keep keys out of the
    /// database).
    pub async fn new(
        meta: MetaStore,
        config: AccessConfig,
        key_file: Option<Vec<u8>>,
    ) -> Result<Access> {
        let fixed_key = key_file.is_some();
        let stats = Arc::new(LoginStats::default());
        let passwords = PasswordPool::new(
            config.password_threads,
            config.password_queue,
            Arc::clone(&stats),
        );
        let throttle = Throttle::new(ThrottlePolicy {
            pair_free: config.failures_before_delay,
            group_free: config.source_failures_before_delay,
            base: Duration::from_millis(250).min(config.max_login_delay),
            cap: config.max_login_delay,
            window: config.failure_window,
        });
        let keyring = match key_file {
            Some(secret) => {
                if secret.len() < 32 {
                    return Err(RegistryError::Invalid(
                        "the token signing key file must hold at least 32 bytes".into(),
                    ));
                }
                Keyring {
                    keys: vec![SigningKey {
                        kid: fingerprint(&hex::encode(&secret)),
                        secret,
                    }],
                }
            }
            None => Keyring::default(),
        };
        let access = Access(Arc::new(Inner {
            meta,
            config,
            keyring: RwLock::new(keyring),
            fixed_key,
            logins: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            throttle: Mutex::new(throttle),
            flights: Mutex::new(HashMap::new()),
            passwords,
            stats,
            anonymous: Mutex::new(None),
        }));
        if !fixed_key {
            let k = SigningKey::generate();
            let (stored, sealed_by) = access.seal_signing_secret(&k);
            access
                .0
                .meta
                .ensure_signing_key_as(&k.kid, &stored, sealed_by.as_deref())
                .await?;
            access.seal_stored_signing_keys().await?;
            access.reload_keys().await?;
        }
        access.sync_cache_tenants().await?;
        Ok(access)
    }

    /// Makes each pull-through cache's tenant exist, public exactly when the configuration
    /// says `pull = "anonymous"`: the configuration is the truth, so a restart undoes a
    /// change made by hand (which `set_tenant_public` refuses anyway).
    async fn sync_cache_tenants(&self) -> Result<()> {
        let system = Actor::named("system");
        for (name, pull) in &self.0.config.cache_tenants {
            check_name("upstream", name)?;
            let public = *pull == CachePull::Anonymous;
            match self.0.meta.tenant(name).await? {
                None => {
                    self.0.meta.create_tenant(name, public, &system).await?;
                }
                Some(t) if t.public != public => {
                    self.0.meta.set_tenant_public(name, public, &system).await?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A cache tenant's existence and visibility follow the configuration.
    fn refuse_cache_tenant(&self, name: &str) -> Result<()> {
        match self.cache_tenant(name) {
            Some(pull) => Err(RegistryError::Invalid(format!(
                "tenant {name} is the pull-through cache of upstream {name}; who may pull \
                 from it is set by that upstream's `pull` in the configuration (now {:?})",
                pull.as_str()
            ))),
            None => Ok(()),
        }
    }

    fn cache_tenant(&self, name: &str) -> Option<CachePull> {
        self.0
            .config
            .cache_tenants
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, p)| *p)
    }

    /// The grants every identity has on the cache tenants: never more than pull, and pull
    /// for logged-in identities where the configuration says `authenticated`.
    fn cache_grants(&self, logged_in: bool) -> (BTreeSet<String>, BTreeSet<String>) {
        let tenants = &self.0.config.cache_tenants;
        let cached = tenants.iter().map(|(t, _)| t.clone()).collect();
        let open = tenants
            .iter()
            .filter(|(_, p)| logged_in && *p == CachePull::Authenticated)
            .map(|(t, _)| t.clone())
            .collect();
        (cached, open)
    }

    pub fn config(&self) -> &AccessConfig {
        &self.0.config
    }

    pub fn meta(&self) -> &MetaStore {
        &self.0.meta
    }

    /// A signing key's secret as stored: sealed by the active key-encryption key when
    /// encryption is on.
    fn seal_signing_secret(&self, k: &SigningKey) -> (Vec<u8>, Option<String>) {
        match &self.0.config.encryption {
            None => (k.secret.clone(), None),
            Some(ring) => {
                let (by, sealed) = ring.wrap(&signing_context(&k.kid), &k.secret);
                (sealed, Some(by))
            }
        }
    }

    /// With encryption on, seals the signing keys stored before it was turned on.
    async fn seal_stored_signing_keys(&self) -> Result<()> {
        let Some(ring) = &self.0.config.encryption else {
            return Ok(());
        };
        for (kid, secret, sealed_by) in self.0.meta.stored_signing_keys().await? {
            if sealed_by.is_some() {
                continue;
            }
            let (by, sealed) = ring.wrap(&signing_context(&kid), &secret);
            self.0
                .meta
                .reseal_signing_key(&kid, &secret, None, &sealed, &by)
                .await?;
        }
        Ok(())
    }

    /// Re-wraps every sealed signing key under the active key-encryption key (`berth keys
    /// rewrap`); returns how many changed.
    pub async fn rewrap_signing_keys(&self) -> Result<u64> {
        let Some(ring) = &self.0.config.encryption else {
            return Ok(0);
        };
        self.seal_stored_signing_keys().await?;
        let mut changed = 0;
        for (kid, secret, sealed_by) in self.0.meta.stored_signing_keys().await? {
            let Some(by) = sealed_by else { continue };
            if by == ring.active_id() {
                continue;
            }
            let (new_by, sealed) = ring
                .rewrap(&by, &signing_context(&kid), &secret)
                .map_err(|e| RegistryError::Invalid(format!("token signing key {kid}: {e}")))?;
            if self
                .0
                .meta
                .reseal_signing_key(&kid, &secret, Some(&by), &sealed, &new_by)
                .await?
            {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Re-reads the signing keys, so a rotation on another replica (or by the CLI) takes
    /// effect here.
    pub async fn reload_keys(&self) -> Result<()> {
        if self.0.fixed_key {
            return Ok(());
        }
        let mut keys = Vec::new();
        for (kid, secret, sealed_by) in self.0.meta.stored_signing_keys().await? {
            let secret = match sealed_by {
                None => secret,
                Some(by) => {
                    let ring = self.0.config.encryption.as_ref().ok_or_else(|| {
                        RegistryError::Invalid(format!(
                            "token signing key {kid} is sealed by key {by}: configure [encryption]"
                        ))
                    })?;
                    ring.unwrap(&by, &signing_context(&kid), &secret)
                        .map_err(|e| {
                            RegistryError::Invalid(format!("token signing key {kid}: {e}"))
                        })?
                }
            };
            keys.push(SigningKey { kid, secret });
        }
        *self
            .0
            .keyring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Keyring { keys };
        Ok(())
    }

    /// After a management change: `NotFound` naming what is missing if nothing changed,
    /// else forget remembered logins (who may do what has changed).
    fn changed(&self, done: bool, missing: impl FnOnce() -> String) -> Result<()> {
        if !done {
            return Err(RegistryError::NotFound(missing()));
        }
        self.forget_logins();
        Ok(())
    }

    /// Forgets remembered logins, after a change to who may do what.
    pub fn forget_logins(&self) {
        lock(&self.0.logins).clear();
        *lock(&self.0.anonymous) = None;
    }

    // ---- logging in ----

    /// Checks a user name and password (or robot login and secret) from `source`.
    ///
    /// Failures count per (name, address group) pair and per address group (see
    /// `crate::login`): past their allowances an attempt waits its turn, asynchronously,
    /// and then is checked like any other, so a correct password always gets in. An
    /// attempt is refused without a check only when its pair or address already has a
    /// full delay's worth of attempts waiting (429), or when every password thread is busy
    /// and the queue is full (503).
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> Result<Arc<Identity>, LoginError> {
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(name.as_bytes());
            h.update([0]);
            h.update(password.as_bytes());
            h.finalize().into()
        };
        // No account has such a name or password: refused at once, without a check or a
        // counter (they cannot be guesses), so they cost nothing and fill nothing.
        if name.len() > 200 || password.len() > password::MAX_PASSWORD_BYTES {
            return Err(LoginError::BadCredentials);
        }
        let mut followed = false;
        let _flight = loop {
            if let Some((id, at)) = lock(&self.0.logins).get(&key)
                && at.elapsed() < self.0.config.login_cache_ttl
            {
                return Ok(Arc::clone(id));
            }
            if followed {
                // The check we waited for did not let these credentials in (or was cut
                // short): this attempt is judged on its own.
                break None;
            }
            let waiting = {
                let mut flights = lock(&self.0.flights);
                match flights.get(&key) {
                    Some(rx) => Some(rx.clone()),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(());
                        flights.insert(key, rx);
                        drop(flights);
                        break Some(Flight {
                            access: self,
                            key,
                            _done: tx,
                        });
                    }
                }
            };
            if let Some(mut rx) = waiting {
                followed = true;
                // Ends when the check's guard goes, however it went.
                let _ = rx.changed().await;
            }
        };
        let now = Instant::now();
        let group = source.map(berth_auth::address_group);
        let (keys, admitted) = {
            let mut t = lock(&self.0.throttle);
            let keys = t.keys(name, group);
            (keys, t.admit(keys, now))
        };
        let stats = &self.0.stats;
        let admission = admitted.map_err(|wait| {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
            LoginError::Throttled(wait)
        })?;
        if !admission.wait.is_zero() {
            stats.delayed.fetch_add(1, Ordering::Relaxed);
            stats.delay_micros.fetch_add(
                u64::try_from(admission.wait.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            tokio::time::sleep(admission.wait).await;
        }
        let lane = if admission.suspect {
            Lane::Suspect
        } else {
            Lane::Clean
        };
        let checked = match self.check_password(name, password, lane).await {
            Err(LoginError::Busy) => {
                // Refused unchecked because the password threads are saturated: counted
                // like a failure of its pair and address, so a flood that outruns the
                // threads turns suspect and meets its delays (spent asleep, not checking)
                // instead of retrying at full speed, and the clean lane is left to
                // addresses that have not failed. A legitimate user caught in it is
                // delayed later, never refused for it.
                lock(&self.0.throttle).fail(keys, Instant::now());
                return Err(LoginError::Busy);
            }
            other => other?,
        };
        match checked {
            Some(id) => {
                let id = Arc::new(id);
                lock(&self.0.throttle).succeed(keys);
                let mut logins = lock(&self.0.logins);
                if logins.len() > 10_000 {
                    logins.clear();
                }
                logins.insert(key, (Arc::clone(&id), Instant::now()));
                Ok(id)
            }
            None => {
                lock(&self.0.throttle).fail(keys, Instant::now());
                Err(LoginError::BadCredentials)
            }
        }
    }

    async fn check_password(
        &self,
        name: &str,
        password: &str,
        lane: Lane,
    ) -> Result<Option<Identity>, LoginError> {
        // The place first: a refused attempt then costs no query.
        let slot = self
            .0
            .passwords
            .reserve(lane)
            .map_err(|_| LoginError::Busy)?;
        let stored = match split_robot(name) {
            Some((tenant, robot)) => self
                .0
                .meta
                .robot(tenant, robot)
                .await?
                .map(|r| r.secret_hash),
            // Reserved names are never users, even one left in the store by hand.
            None if reserved_name(name) => None,
            None => self.0.meta.user(name).await?.map(|u| u.password_hash),
        };
        let pw = password.to_owned();
        let Some(stored) = stored else {
            // The same work as a real check: timing does not tell which names exist.
            slot.run(move || password::verify_dummy(&pw))
                .await
                .map_err(|_| LoginError::Busy)?;
            return Ok(None);
        };
        let ok = slot
            .run(move || password::verify(&stored, &pw))
            .await
            .map_err(|_| LoginError::Busy)?;
        if !ok {
            return Ok(None);
        }
        // Disabled or expired identities fail like a wrong password.
        Ok(self.identity(name).await?)
    }

    /// Hashes a new password or secret on the password threads.
    async fn hash(&self, secret: String) -> Result<String> {
        self.0
            .passwords
            .run(Lane::Clean, move || password::hash(&secret))
            .await
            .map_err(|_| RegistryError::Busy {
                retry_after_secs: 1,
            })?
            .map_err(|e| RegistryError::Internal(e.to_string()))
    }

    /// The login defences' counters and gauges, for `/metrics`.
    pub fn metrics(&self) -> Vec<AccessMetric> {
        let s = &self.0.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
        let counter = |name, help, label, value| AccessMetric {
            name,
            help,
            gauge: false,
            label,
            value,
        };
        vec![
            counter(
                "login_delayed",
                "Logins that waited for a delay after earlier failures of their user and address, or their address",
                None,
                get(&s.delayed),
            ),
            counter(
                "login_delay_seconds",
                "Total time logins waited for such delays, in seconds",
                None,
                get(&s.delay_micros) / 1e6,
            ),
            counter(
                "login_throttled",
                "Logins refused (429) without a check: their user and address, or address, had a full delay of attempts waiting",
                None,
                get(&s.throttled),
            ),
            counter(
                "password_checks",
                "Password checks (argon2, bcrypt) queued, by lane: clean (nothing failed recently for the pair or address) or suspect",
                Some(("lane", "clean")),
                get(&s.checks_clean),
            ),
            counter(
                "password_checks",
                "",
                Some(("lane", "suspect")),
                get(&s.checks_suspect),
            ),
            counter(
                "password_queue_full",
                "Password checks refused (503) because every password thread was busy and the lane's queue was full",
                Some(("lane", "clean")),
                get(&s.busy_clean),
            ),
            counter(
                "password_queue_full",
                "",
                Some(("lane", "suspect")),
                get(&s.busy_suspect),
            ),
            counter(
                "reserved_names_refused",
                "User creations and imports refused because the name is one Berth uses itself",
                None,
                get(&s.reserved_names_refused),
            ),
            AccessMetric {
                name: "password_checks_in_flight",
                help: "Password checks queued or running now",
                gauge: true,
                label: None,
                value: get(&s.in_flight),
            },
            AccessMetric {
                name: "login_throttle_keys",
                help: "User-and-address pairs and addresses with recent login failures held in memory",
                gauge: true,
                label: None,
                value: lock(&self.0.throttle).len() as f64,
            },
        ]
    }

    /// The current grants of `name` (a user or a robot login), or `None` if it does not
    /// exist, is disabled or has expired.
    pub async fn identity(&self, name: &str) -> Result<Option<Identity>, berth_meta::MetaError> {
        // Names Berth uses for itself never resolve to an account, even one created before
        // they were reserved (the migration renamed those) or written into the store by
        // hand: an anonymous token's `sub` must not pick up anyone's roles.
        if reserved_name(name) {
            return Ok(None);
        }
        let public = self.0.meta.public_tenants().await?.into_iter().collect();
        if let Some((tenant, robot)) = split_robot(name) {
            let Some(r) = self.0.meta.robot(tenant, robot).await? else {
                return Ok(None);
            };
            let expired = r.expires_at.is_some_and(|e| e <= berth_meta::now_micros());
            if r.disabled || expired {
                return Ok(None);
            }
            let info = robot_info(&r);
            let (cached, authenticated_pull) = self.cache_grants(true);
            return Ok(Some(Identity {
                name: name.to_owned(),
                kind: IdentityKind::Robot,
                grants: Grants {
                    robot: Some(RobotScope {
                        tenant: r.tenant.clone(),
                        actions: Actions::from_names(info.actions.iter().map(String::as_str)),
                        repositories: info.repositories,
                    }),
                    public,
                    authenticated_pull,
                    cached,
                    ..Grants::default()
                },
                cred: fingerprint(&r.secret_hash),
            }));
        }
        let Some(u) = self.0.meta.user(name).await? else {
            return Ok(None);
        };
        if u.disabled {
            return Ok(None);
        }
        let roles = self
            .0
            .meta
            .roles_of(name)
            .await?
            .into_iter()
            .filter_map(|(t, r)| Some((t, Role::parse(&r)?)))
            .collect();
        let (cached, authenticated_pull) = self.cache_grants(true);
        Ok(Some(Identity {
            name: u.name,
            kind: IdentityKind::User,
            grants: Grants {
                admin: u.admin,
                roles,
                robot: None,
                public,
                authenticated_pull,
                cached,
            },
            cred: fingerprint(&u.password_hash),
        }))
    }

    /// The identity a token speaks for, with its current grants: `None` for an anonymous
    /// token (marked as such; its `sub` is never looked up) and for a subject that no
    /// longer exists or is disabled.
    pub async fn token_identity(
        &self,
        claims: &Claims,
    ) -> Result<Option<Identity>, berth_meta::MetaError> {
        if claims.anon {
            return Ok(None);
        }
        self.identity(&claims.sub).await
    }

    /// The caller without credentials: it may pull from public tenants.
    pub async fn anonymous(&self) -> Result<Arc<Identity>, berth_meta::MetaError> {
        let now = Instant::now();
        if let Some((id, at)) = &*lock(&self.0.anonymous)
            && now.duration_since(*at) < Duration::from_secs(2)
        {
            return Ok(Arc::clone(id));
        }
        let (cached, _) = self.cache_grants(false);
        let id = Arc::new(Identity {
            name: "anonymous".to_owned(),
            kind: IdentityKind::Anonymous,
            grants: Grants {
                public: self.0.meta.public_tenants().await?.into_iter().collect(),
                cached,
                ..Grants::default()
            },
            cred: String::new(),
        });
        *lock(&self.0.anonymous) = Some((Arc::clone(&id), now));
        Ok(id)
    }

    // ---- tokens ----

    /// Issues an access token granting the intersection of `scopes` and what `who` may do;
    /// with `offline`, also a refresh token.
    ///
    /// The management scope is granted only to users (not robots, not the anonymous
    /// caller) who asked for it by name and proved themselves with a password: asked for
    /// through a refresh token, it is an error, since the point of the scope is that no
    /// long-lived or narrowly issued token opens the management API.
    pub fn issue(
        &self,
        who: &Identity,
        scopes: &[Scope],
        offline: bool,
        via: IssueVia,
    ) -> Result<IssuedToken> {
        let cfg = &self.0.config;
        let now = now_secs();
        let mut access: Vec<AccessEntry> = Vec::new();
        if via == IssueVia::RefreshToken && scopes.iter().any(|s| s.kind == ScopeKind::Management) {
            return Err(RegistryError::Invalid(format!(
                "{MANAGEMENT_SCOPE} is granted for a password only, not for a refresh token"
            )));
        }
        for s in scopes {
            let granted: Vec<String> = match s.kind {
                ScopeKind::Repository => who
                    .grants
                    .on_repository(&s.name)
                    .intersect(s.repository_actions())
                    .names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                // The catalog is filtered per caller, so anyone logged in may ask for it.
                ScopeKind::Registry if s.name == "catalog" => {
                    s.actions.iter().filter(|a| *a == "*").cloned().collect()
                }
                ScopeKind::Registry => Vec::new(),
                ScopeKind::Management if who.kind == IdentityKind::User => vec!["*".to_owned()],
                ScopeKind::Management => Vec::new(),
            };
            if granted.is_empty() {
                continue;
            }
            let kind = s.kind.as_str();
            // Merge repeated scopes for the same resource.
            match access
                .iter_mut()
                .find(|e| e.kind == kind && e.name == s.name)
            {
                Some(e) => {
                    for a in granted {
                        if !e.actions.contains(&a) {
                            e.actions.push(a);
                        }
                    }
                }
                None => access.push(AccessEntry {
                    kind: kind.to_owned(),
                    name: s.name.clone(),
                    actions: granted,
                }),
            }
        }
        let claims = Claims {
            iss: cfg.issuer.clone(),
            sub: who.name.clone(),
            aud: cfg.service.clone(),
            exp: now.saturating_add(secs(cfg.token_ttl)),
            nbf: now,
            iat: now,
            jti: new_jti(),
            access: access.clone(),
            kind: None,
            cred: None,
            anon: who.kind == IdentityKind::Anonymous,
        };
        let keyring = self
            .0
            .keyring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let token = keyring
            .sign(&claims)
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let refresh_token = if offline && who.kind != IdentityKind::Anonymous {
            let refresh = Claims {
                exp: now.saturating_add(secs(cfg.refresh_ttl)),
                access: Vec::new(),
                kind: Some("refresh".to_owned()),
                cred: Some(who.cred.clone()),
                jti: new_jti(),
                ..claims
            };
            Some(
                keyring
                    .sign(&refresh)
                    .map_err(|e| RegistryError::Internal(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(IssuedToken {
            token,
            expires_in: cfg.token_ttl.as_secs(),
            issued_at: now,
            refresh_token,
            granted: access,
        })
    }

    /// Checks an access token presented to the registry.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        if let Some(c) = lock(&self.0.tokens).get(token)
            && now_secs() < c.exp
        {
            return Ok(Arc::clone(c));
        }
        let claims = self
            .0
            .keyring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .verify(token, &self.0.config.service, now_secs())?;
        if claims.is_refresh() {
            // A refresh token opens nothing by itself.
            return Err(TokenError::Malformed);
        }
        let claims = Arc::new(claims);
        let mut cache = lock(&self.0.tokens);
        if cache.len() >= 10_000 {
            let now = now_secs();
            cache.retain(|_, c| c.exp > now);
            if cache.len() >= 10_000 {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), Arc::clone(&claims));
        Ok(claims)
    }

    /// The identity behind a refresh token, if the token verifies and its user or robot
    /// still exists with the same password or secret.
    pub async fn redeem_refresh(&self, token: &str) -> Result<Identity> {
        let claims = self
            .0
            .keyring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .verify(token, &self.0.config.service, now_secs())
            .map_err(|e| RegistryError::Unauthorized(e.to_string()))?;
        if !claims.is_refresh() {
            return Err(RegistryError::Unauthorized("not a refresh token".into()));
        }
        match self.token_identity(&claims).await? {
            Some(id) if Some(&id.cred) == claims.cred.as_ref() => Ok(id),
            _ => Err(RegistryError::Unauthorized(
                "refresh token no longer valid: its account changed".into(),
            )),
        }
    }

    /// Replaces the signing key; tokens signed by the old one stay valid until they
    /// expire.
    pub async fn rotate_key(&self, by: &Identity, source: Option<IpAddr>) -> Result<String> {
        require_admin(by)?;
        if self.0.fixed_key {
            return Err(RegistryError::Invalid(
                "the signing key comes from a file: replace the file to rotate it".into(),
            ));
        }
        let k = SigningKey::generate();
        let keep =
            secs(self.0.config.refresh_ttl.max(self.0.config.token_ttl)).saturating_mul(1_000_000);
        let (stored, sealed_by) = self.seal_signing_secret(&k);
        self.0
            .meta
            .rotate_signing_key_as(
                &k.kid,
                &stored,
                sealed_by.as_deref(),
                keep,
                &by.actor(source),
            )
            .await?;
        self.reload_keys().await?;
        Ok(k.kid)
    }

    // ---- management ----

    /// Creates the first admin when no user exists yet. Returns the password when one was
    /// generated (the caller shows it once), `None` if users exist or `password` was given.
    pub async fn bootstrap_admin(&self, password: Option<&str>) -> Result<Option<String>> {
        if self.0.meta.user_count().await? > 0 {
            return Ok(None);
        }
        let generated = password.is_none();
        let pw = password.map_or_else(password::random_secret, str::to_owned);
        let hash = self.hash(pw.clone()).await?;
        let created = self
            .0
            .meta
            .create_user("admin", &hash, true, &Actor::named("system"))
            .await?;
        Ok((created && generated).then_some(pw))
    }

    pub async fn list_users(&self, by: &Identity) -> Result<Vec<berth_meta::UserRow>> {
        require_admin(by)?;
        Ok(self.0.meta.users().await?)
    }

    pub async fn create_user(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        name: &str,
        password: &str,
        admin: bool,
    ) -> Result<()> {
        require_admin(by)?;
        self.check_user_name(name)?;
        check_password(password)?;
        let hash = self.hash(password.to_owned()).await?;
        if !self
            .0
            .meta
            .create_user(name, &hash, admin, &by.actor(source))
            .await?
        {
            return Err(RegistryError::Conflict(format!("user {name} exists")));
        }
        Ok(())
    }

    /// Imports the users of an htpasswd file (bcrypt hashes, kept as they are); returns how
    /// many were new.
    pub async fn import_htpasswd(&self, by: &Identity, text: &str) -> Result<u64> {
        require_admin(by)?;
        let users = password::parse_htpasswd(text).map_err(|e| {
            if matches!(&e, password::PasswordError::Htpasswd { reason, .. } if reason.contains("reserved"))
            {
                self.0
                    .stats
                    .reserved_names_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
            RegistryError::Invalid(e.to_string())
        })?;
        Ok(self.0.meta.import_users(&users, &by.actor(None)).await?)
    }

    /// Changes a user: admins change anything; a user may change only its own password,
    /// and (admins too) only by giving the current one.
    pub async fn update_user(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        name: &str,
        update: &UserUpdate<'_>,
    ) -> Result<()> {
        let own = by.kind == IdentityKind::User && by.name == name;
        let own_password_only = own && update.admin.is_none() && update.disabled.is_none();
        if !own_password_only {
            require_admin(by)?;
        }
        let password_hash = match update.password {
            Some(p) => {
                check_password(p)?;
                if own {
                    self.check_current_password(name, update.current_password, source)
                        .await?;
                }
                Some(self.hash(p.to_owned()).await?)
            }
            None => None,
        };
        let change = UserChange {
            password_hash,
            admin: update.admin,
            disabled: update.disabled,
        };
        let done = self
            .0
            .meta
            .update_user(name, &change, &by.actor(source))
            .await?;
        self.changed(done, || format!("no user {name}"))
    }

    /// The current password of `name`, checked like a login (throttled per user and
    /// address, so this is no way around the login defences).
    async fn check_current_password(
        &self,
        name: &str,
        current: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<()> {
        let Some(current) = current else {
            return Err(RegistryError::Invalid(
                "changing your own password needs current_password".into(),
            ));
        };
        match self.login(name, current, source).await {
            Ok(_) => Ok(()),
            Err(LoginError::BadCredentials) => Err(RegistryError::Denied(
                "current_password is not the current password".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_user(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        name: &str,
    ) -> Result<()> {
        require_admin(by)?;
        if by.name == name {
            return Err(RegistryError::Invalid(
                "an admin cannot delete itself".into(),
            ));
        }
        let done = self.0.meta.delete_user(name, &by.actor(source)).await?;
        self.changed(done, || format!("no user {name}"))
    }

    /// Tenants the caller may see: all for an admin, else those it belongs to and the
    /// public ones.
    pub async fn list_tenants(&self, by: &Identity) -> Result<Vec<berth_meta::TenantRow>> {
        let all = self.0.meta.tenants().await?;
        Ok(all
            .into_iter()
            .filter(|t| by.is_admin() || t.public || by.grants.roles.contains_key(&t.name))
            .collect())
    }

    pub async fn create_tenant(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        name: &str,
        public: bool,
    ) -> Result<()> {
        require_admin(by)?;
        check_name("tenant", name)?;
        if !self
            .0
            .meta
            .create_tenant(name, public, &by.actor(source))
            .await?
        {
            return Err(RegistryError::Conflict(format!("tenant {name} exists")));
        }
        self.forget_logins();
        Ok(())
    }

    pub async fn set_tenant_public(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        name: &str,
        public: bool,
    ) -> Result<()> {
        require_admin(by)?;
        self.refuse_cache_tenant(name)?;
        let done = self
            .0
            .meta
            .set_tenant_public(name, public, &by.actor(source))
            .await?;
        self.changed(done, || format!("no tenant {name}"))
    }

    pub async fn delete_tenant(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        name: &str,
    ) -> Result<()> {
        require_admin(by)?;
        if name == LIBRARY {
            return Err(RegistryError::Invalid(
                "the library tenant is built in".into(),
            ));
        }
        self.refuse_cache_tenant(name)?;
        let done = self.0.meta.delete_tenant(name, &by.actor(source)).await?;
        self.changed(done, || format!("no tenant {name}"))
    }

    /// A tenant's storage quota (`None`: unlimited) and usage; for its members and admins.
    pub async fn tenant_quota(
        &self,
        by: &Identity,
        tenant: &str,
    ) -> Result<(Option<u64>, berth_meta::Usage)> {
        if !by.is_admin() && !by.grants.roles.contains_key(tenant) {
            return Err(RegistryError::Denied(
                "this needs a member of the tenant or a global admin".into(),
            ));
        }
        self.0
            .meta
            .tenant_quota(tenant)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no tenant {tenant}")))
    }

    /// Sets (or with `None` removes) a tenant's storage quota.
    pub async fn set_tenant_quota(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: &str,
        bytes: Option<u64>,
    ) -> Result<()> {
        require_admin(by)?;
        let done = self
            .0
            .meta
            .set_tenant_quota(tenant, bytes, &by.actor(source))
            .await?;
        self.changed(done, || format!("no tenant {tenant}"))
    }

    pub async fn members(&self, by: &Identity, tenant: &str) -> Result<Vec<(String, String)>> {
        require_manager(by, tenant)?;
        Ok(self.0.meta.members(tenant).await?)
    }

    /// Sets a member's role, or removes the member with `None`.
    pub async fn set_member(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: &str,
        user: &str,
        role: Option<&str>,
    ) -> Result<()> {
        require_manager(by, tenant)?;
        if let Some(r) = role
            && Role::parse(r).is_none()
        {
            return Err(RegistryError::Invalid(format!(
                "unknown role {r:?}: owner, maintainer, developer or reader"
            )));
        }
        if role.is_some() && !by.is_admin() && !self.knows_user(by, user).await? {
            // The same answer whether or not the user exists: an owner must not learn
            // the names of accounts outside the tenants it owns.
            return Err(RegistryError::NotFound(format!(
                "no user {user:.64} among the members of tenants you own; a global admin \
                 adds other users"
            )));
        }
        let done = self
            .0
            .meta
            .set_member(tenant, user, role, &by.actor(source))
            .await?;
        self.changed(done, || {
            format!("no tenant {tenant}, no user {user}, or no such membership")
        })?;
        Ok(())
    }

    /// Whether `by` can already see `user`: a member of a tenant `by` owns (whose member
    /// list it reads anyway). Owners add such users to further tenants; a user they cannot
    /// see is introduced by an admin, so no answer tells an owner that a name exists.
    async fn knows_user(&self, by: &Identity, user: &str) -> Result<bool> {
        Ok(self
            .0
            .meta
            .roles_of(user)
            .await?
            .iter()
            .any(|(t, _)| by.grants.roles.get(t) == Some(&Role::Owner)))
    }

    fn check_user_name(&self, name: &str) -> Result<()> {
        check_name("user", name)?;
        if reserved_name(name) {
            self.0
                .stats
                .reserved_names_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(RegistryError::Invalid(format!(
                "user name {name:?} is reserved: Berth uses it for itself (reserved: {})",
                berth_auth::RESERVED_NAMES.join(", ")
            )));
        }
        Ok(())
    }

    pub async fn robots(&self, by: &Identity, tenant: &str) -> Result<Vec<RobotInfo>> {
        require_manager(by, tenant)?;
        Ok(self
            .0
            .meta
            .robots(Some(tenant))
            .await?
            .iter()
            .map(robot_info)
            .collect())
    }

    pub async fn create_robot(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: &str,
        name: &str,
        spec: &NewRobot,
    ) -> Result<RobotCredentials> {
        require_manager(by, tenant)?;
        check_name("robot", name)?;
        if spec.actions.is_empty() {
            return Err(RegistryError::Invalid(
                "a robot needs at least one action".into(),
            ));
        }
        for p in &spec.repositories {
            if p.is_empty() || p.len() > 255 || p.starts_with('/') || p.contains("..") {
                return Err(RegistryError::Invalid(format!(
                    "bad repository pattern {p:?}"
                )));
            }
        }
        let secret = password::random_secret();
        let row = RobotRow {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            secret_hash: self.hash(secret.clone()).await?,
            actions: spec.actions.names().join(","),
            repositories: serde_json::to_string(&spec.repositories)
                .map_err(|e| RegistryError::Internal(e.to_string()))?,
            description: spec.description.clone(),
            expires_at: spec.expires_in.map(|d| {
                berth_meta::now_micros().saturating_add(secs(d).saturating_mul(1_000_000))
            }),
            disabled: false,
            created_at: 0,
        };
        if !self.0.meta.create_robot(&row, &by.actor(source)).await? {
            return Err(match self.0.meta.tenant(tenant).await? {
                None => RegistryError::NotFound(format!("no tenant {tenant}")),
                Some(_) => RegistryError::Conflict(format!("robot {tenant}+{name} exists")),
            });
        }
        Ok(RobotCredentials {
            robot: robot_info(&row),
            secret,
        })
    }

    /// Gives a robot a new secret; the old one stops working at once on this replica and
    /// within the login cache lifetime on others.
    pub async fn rotate_robot(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: &str,
        name: &str,
    ) -> Result<RobotCredentials> {
        require_manager(by, tenant)?;
        let secret = password::random_secret();
        let hash = self.hash(secret.clone()).await?;
        let done = self
            .0
            .meta
            .set_robot_secret(tenant, name, &hash, &by.actor(source))
            .await?;
        self.changed(done, || format!("no robot {tenant}+{name}"))?;
        let row = self
            .0
            .meta
            .robot(tenant, name)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no robot {tenant}+{name}")))?;
        Ok(RobotCredentials {
            robot: robot_info(&row),
            secret,
        })
    }

    pub async fn set_robot_disabled(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: &str,
        name: &str,
        disabled: bool,
    ) -> Result<()> {
        require_manager(by, tenant)?;
        let done = self
            .0
            .meta
            .set_robot_disabled(tenant, name, disabled, &by.actor(source))
            .await?;
        self.changed(done, || format!("no robot {tenant}+{name}"))
    }

    pub async fn delete_robot(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: &str,
        name: &str,
    ) -> Result<()> {
        require_manager(by, tenant)?;
        let done = self
            .0
            .meta
            .delete_robot(tenant, name, &by.actor(source))
            .await?;
        self.changed(done, || format!("no robot {tenant}+{name}"))
    }

    /// Credentials for a pull secret: the robot's secret rotated if it exists (a secret
    /// cannot be read back), or a new pull-only robot.
    pub async fn pull_credentials(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: &str,
        robot: &str,
    ) -> Result<RobotCredentials> {
        require_manager(by, tenant)?;
        if self.0.meta.robot(tenant, robot).await?.is_some() {
            self.rotate_robot(by, source, tenant, robot).await
        } else {
            let spec = NewRobot {
                actions: Actions::PULL,
                repositories: Vec::new(),
                description: Some("image pull secret".to_owned()),
                expires_in: None,
            };
            self.create_robot(by, source, tenant, robot, &spec).await
        }
    }

    /// One pull-only robot of `tenant` per Kubernetes namespace (`namespace_robot`), for
    /// that namespace's pull secret. A missing robot is created; an existing one is left
    /// as it is (its secret cannot be read back, so none is returned: its namespace keeps
    /// the Secret it has) unless `rotate`, which gives it a new secret. Each namespace
    /// has its own robot, so rotating, disabling or deleting one never touches another
    /// namespace's pulls. An existing robot allowed more than pull is refused rather than
    /// put into a pull secret. Every namespace is checked before anything changes.
    pub async fn namespace_pull_robots(
        &self,
        by: &Identity,
        source: Option<IpAddr>,
        tenant: &str,
        namespaces: &[String],
        rotate: bool,
    ) -> Result<Vec<NamespaceRobot>> {
        require_manager(by, tenant)?;
        if namespaces.is_empty() {
            return Err(RegistryError::Invalid("no namespace given".into()));
        }
        let mut wanted: Vec<&str> = Vec::new();
        for ns in namespaces {
            if !valid_namespace(ns) {
                return Err(RegistryError::Invalid(format!(
                    "{ns:.64?} is not a Kubernetes namespace name"
                )));
            }
            if !wanted.contains(&ns.as_str()) {
                wanted.push(ns);
            }
        }
        if self.0.meta.tenant(tenant).await?.is_none() {
            return Err(RegistryError::NotFound(format!("no tenant {tenant}")));
        }
        let mut existing = Vec::new();
        for ns in &wanted {
            let name = namespace_robot(ns);
            let row = self.0.meta.robot(tenant, &name).await?;
            if let Some(r) = &row
                && r.actions != "pull"
            {
                return Err(RegistryError::Conflict(format!(
                    "robot {tenant}+{name} may {}: a pull secret gets a pull-only robot; \
                     delete or rename it",
                    r.actions
                )));
            }
            existing.push(row);
        }
        let mut out = Vec::new();
        for (ns, row) in wanted.into_iter().zip(existing) {
            let name = namespace_robot(ns);
            let outcome = match row {
                None => {
                    let spec = NewRobot {
                        actions: Actions::PULL,
                        repositories: Vec::new(),
                        description: Some(format!("pull secret of Kubernetes namespace {ns}")),
                        expires_in: None,
                    };
                    PullRobot::Created(self.create_robot(by, source, tenant, &name, &spec).await?)
                }
                Some(_) if rotate => {
                    PullRobot::Rotated(self.rotate_robot(by, source, tenant, &name).await?)
                }
                Some(r) => PullRobot::Kept(robot_info(&r)),
            };
            out.push(NamespaceRobot {
                namespace: ns.to_owned(),
                outcome,
            });
        }
        Ok(out)
    }

    /// Audit rows: admins read everything; a tenant owner reads its tenant's rows only.
    pub async fn audit(&self, by: &Identity, q: &AuditQuery) -> Result<Vec<(i64, AuditRecord)>> {
        if !by.is_admin() {
            match &q.tenant {
                Some(t) if by.grants.manages(t) => {}
                _ => {
                    return Err(RegistryError::Denied(
                        "reading the audit log needs admin, or owner with a tenant filter".into(),
                    ));
                }
            }
        }
        if let Some(a) = &q.action
            && !a.bytes().all(|c| c.is_ascii_lowercase() || c == b'.')
        {
            return Err(RegistryError::Invalid(
                "action filter: lowercase letters and dots".into(),
            ));
        }
        Ok(self.0.meta.audit_query(q).await?)
    }
}

fn robot_info(r: &RobotRow) -> RobotInfo {
    RobotInfo {
        tenant: r.tenant.clone(),
        name: r.name.clone(),
        login: format!("{}+{}", r.tenant, r.name),
        actions: r
            .actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        repositories: serde_json::from_str(&r.repositories).unwrap_or_default(),
        description: r.description.clone(),
        expires_at: r.expires_at.map(|e| e / 1_000_000),
        disabled: r.disabled,
    }
}

/// One metric of the login defences, as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct AccessMetric {
    /// Without the `berth_` prefix (and `_total` suffix for counters).
    pub name: &'static str,
    /// Empty for further label values of a name already described.
    pub help: &'static str,
    pub gauge: bool,
    pub label: Option<(&'static str, &'static str)>,
    pub value: f64,
}

/// Refuses anyone but a global admin.
pub fn require_admin(by: &Identity) -> Result<()> {
    if by.is_admin() {
        Ok(())
    } else {
        Err(RegistryError::Denied("this needs a global admin".into()))
    }
}

/// Admins, and owners of `tenant`.
pub fn require_manager(by: &Identity, tenant: &str) -> Result<()> {
    if by.grants.manages(tenant) {
        Ok(())
    } else {
        Err(RegistryError::Denied(
            "this needs an owner of the tenant or a global admin".into(),
        ))
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{what} name {name:.64?} is invalid: 1-64 lowercase letters, digits, and . _ - between them"
        )))
    }
}

fn check_password(p: &str) -> Result<()> {
    if p.len() < 8 || p.len() > password::MAX_PASSWORD_BYTES {
        return Err(RegistryError::Invalid(format!(
            "passwords are 8 to {} bytes",
            password::MAX_PASSWORD_BYTES
        )));
    }
    Ok(())
}

/// An identity for the offline CLI, which acts with the operator's file-system rights on
/// the data directory: a global admin named `cli`.
pub fn cli_identity() -> Identity {
    Identity {
        name: "cli".to_owned(),
        kind: IdentityKind::User,
        grants: Grants {
            admin: true,
            ..Grants::default()
        },
        cred: String::new(),
    }
}

/// A namespace's pull robot, and what `namespace_pull_robots` did to it.
#[derive(Debug, Clone)]
pub struct NamespaceRobot {
    pub namespace: String,
    pub outcome: PullRobot,
}

#[derive(Debug, Clone)]
pub enum PullRobot {
    /// New: its credentials belong in the namespace's Secret.
    Created(RobotCredentials),
    /// Given a new secret on request: the namespace's Secret must be replaced.
    Rotated(RobotCredentials),
    /// There already, untouched; the namespace keeps the Secret it has.
    Kept(RobotInfo),
}

/// The robot that pulls a tenant's images into Kubernetes namespace `ns`: `k8s-<ns>`, or,
/// when that is no valid robot name (a namespace over 60 characters, or with `--`), a
/// shortened one ending in a hash of the namespace, so that no two namespaces share one.
pub fn namespace_robot(ns: &str) -> String {
    let plain = format!("k8s-{ns}");
    if berth_auth::valid_name(&plain) {
        return plain;
    }
    let hash = hex::encode(&Sha256::digest(ns.as_bytes())[..4]);
    let mut short = String::from("k8s");
    for part in ns.split('-').filter(|p| !p.is_empty()) {
        if short.len() + 1 + part.len() > 64 - 9 {
            break;
        }
        short.push('-');
        short.push_str(part);
    }
    format!("{short}-{hash}")
}

/// The name of the pull Secret of `tenant`'s images: `<tenant>-pull`, if that is a
/// Kubernetes Secret name (tenant names may hold `_`, Secret names may not).
pub fn pull_secret_name(tenant: &str) -> Option<String> {
    let name = format!("{tenant}-pull");
    is_secret_name(&name).then_some(name)
}

/// Whether `name` is a Kubernetes Secret name (a DNS subdomain: lower-case labels of
/// letters, digits and `-`, joined by `.`).
pub fn is_secret_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// A `.docker/config.json` holding one registry's credentials.
pub fn docker_config(server: &str, login: &str, secret: &str) -> serde_json::Value {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{secret}"));
    serde_json::json!({
        "auths": {
            server: {"username": login, "password": secret, "auth": auth}
        }
    })
}

/// A Kubernetes Secret of type `kubernetes.io/dockerconfigjson` for `imagePullSecrets`.
pub fn pull_secret(
    name: &str,
    namespace: Option<&str>,
    server: &str,
    login: &str,
    secret: &str,
) -> serde_json::Value {
    use base64::Engine as _;
    let config = docker_config(server, login, secret).to_string();
    let mut metadata = serde_json::json!({"name": name});
    if let Some(ns) = namespace {
        metadata["namespace"] = serde_json::Value::from(ns);
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/dockerconfigjson",
        "data": {
            ".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)
        }
    })
}

/// Is `ns` a valid Kubernetes namespace (a DNS-1123 label)?
pub fn valid_namespace(ns: &str) -> bool {
    let b = ns.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// What a token signing key's sealed secret is bound to.
fn signing_context(kid: &str) -> Vec<u8> {
    let mut c = b"berth-token-signing-key\0".to_vec();
    c.extend_from_slice(kid.as_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespace_gets_its_own_valid_robot_name() {
        assert_eq!(namespace_robot("team-a-prod"), "k8s-team-a-prod");
        let long = "n".repeat(63);
        let double = "a--b";
        let mut seen = std::collections::HashSet::new();
        for ns in [
            "a",
            "a-b",
            double,
            "a---b",
            &long,
            &"x".repeat(61),
            &"x".repeat(60),
            "0",
            "9-9",
        ] {
            let name = namespace_robot(ns);
            assert!(berth_auth::valid_name(&name), "{ns} -> {name}");
            assert!(seen.insert(name.clone()), "{ns} -> {name} twice");
        }
        // Namespaces differing past the shortened prefix still differ.
        let a = format!("{}-a", "x".repeat(61));
        let b = format!("{}-b", "x".repeat(61));
        assert_ne!(namespace_robot(&a), namespace_robot(&b));
        assert!(namespace_robot(&a).len() <= 64);
    }

    #[test]
    fn pull_secret_names_are_kubernetes_names_or_none() {
        assert_eq!(pull_secret_name("team-a").as_deref(), Some("team-a-pull"));
        assert_eq!(pull_secret_name("team.a").as_deref(), Some("team.a-pull"));
        assert_eq!(pull_secret_name("team_a"), None);
    }
}
