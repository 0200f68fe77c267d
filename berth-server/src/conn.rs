//! The connection table: every open connection of this process, which client group it
//! belongs to, and since when it has been idle, so that a full server makes room by
//! closing the connection idle the longest instead of turning newcomers away.
//!
//! Without it, `max_connections` idle connections (silent TCP, an HTTP/2 preface and
//! nothing more, an HTTP/2 client that answers PINGs but never asks for anything, a TLS
//! handshake and then silence) lock every later client out for as long as they are held.
//! With it, a new connection at the limit evicts the oldest idle one; only when every
//! connection is busy (a request in flight) is the newcomer refused. A per-client cap
//! (IPv4 address, IPv6 /64; trusted proxies exempt) makes a single client evict its own
//! connections first.
//!
//! "Idle" means no request in flight: an HTTP/1 connection between requests, an HTTP/2
//! connection with no open stream, and any connection that has not yet finished its TLS
//! handshake or sent its first request, which counts as idle since it was accepted. The
//! request path only touches the connection's own atomics ([`Conn::begin`] and the drop of
//! [`InFlight`]); the table's lock is taken when a connection opens or closes, and by the
//! request path only for a connection the evictor found busy and parked (see
//! [`oldest_idle`]), at most once per such finding.
//!
//! Both orderings of idle connections (all of them, and each group's) are `BTreeSet`s of
//! `(idle since, id)`, so finding the victim is O(log n). The keys are updated lazily: the
//! request path does not move a connection in the sets; the evictor, finding an entry
//! whose connection has been busy since, moves it to its current key (or parks it while it
//! is busy) and looks again. A key is never later than the connection's real idle start,
//! so the first entry whose key is current is the connection idle the longest.
//!
//! Everything here is per process: with N replicas behind a load balancer, each holds up
//! to `max_connections` and each client up to `max_connections_per_client` per replica.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::client::{self, TrustedProxies};
use crate::metrics::{Metrics, ReasonLabels};

/// Which idle ordering a parked bit refers to.
const ALL: u8 = 1;
const GROUP: u8 = 2;

/// One open connection, shared by its task, its requests and the table.
pub(crate) struct Conn {
    id: u64,
    epoch: Instant,
    in_flight: AtomicU32,
    /// Nanoseconds after `epoch` when the last request ended (or the connection was
    /// accepted). Meaningful while `in_flight` is 0.
    idle_since: AtomicU64,
    /// A request has started on this connection.
    served: AtomicBool,
    /// Orderings ([`ALL`], [`GROUP`]) the evictor took this connection out of because it
    /// was busy; the request that makes it idle puts it back.
    parked: AtomicU8,
    /// Set, then notified, when the table wants the connection closed.
    close: tokio::sync::Notify,
    table: Weak<Table>,
}

/// What a connection's task should do about idleness, from [`Conn::watch`].
pub(crate) enum Watch {
    /// Nothing yet; look again at this instant.
    At(Instant),
    /// No request started within the first-request deadline.
    NoRequest,
    /// No request in flight for the idle timeout.
    Idle,
}

impl Conn {
    /// A request starts: the connection is busy until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, SeqCst);
        if !self.served.load(Relaxed) {
            self.served.store(true, Relaxed);
        }
        InFlight(Arc::clone(self))
    }

    pub(crate) fn busy(&self) -> bool {
        self.in_flight.load(SeqCst) > 0
    }

    /// Resolves once the table wants this connection closed (eviction or shutdown).
    pub(crate) async fn closed(&self) {
        self.close.notified().await;
    }

    /// Whether the connection has been idle too long: `first_request` until it has
    /// started one, `idle` after that.
    pub(crate) fn watch(&self, first_request: Duration, idle: Duration) -> Watch {
        let now = Instant::now();
        if self.busy() {
            // It cannot become idle before now, so its deadline is at least this far off.
            return Watch::At(now + idle);
        }
        let since = self.epoch + Duration::from_nanos(self.idle_since.load(SeqCst));
        if self.served.load(Relaxed) {
            let deadline = since + idle;
            return if now >= deadline {
                Watch::Idle
            } else {
                Watch::At(deadline)
            };
        }
        let deadline = since + first_request;
        if now >= deadline {
            Watch::NoRequest
        } else {
            // A request may come and go before the first-request deadline; the idle
            // timeout then runs from its end, which is no earlier than `now`.
            Watch::At(deadline.min(now + idle))
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A request in flight on a connection; dropped when its response body has been sent
/// (or the request was abandoned).
pub(crate) struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.0;
        // Written before the count drops, so whoever sees the count at 0 sees this time.
        c.idle_since.store(nanos(c.epoch.elapsed()), Relaxed);
        if c.in_flight.fetch_sub(1, SeqCst) == 1 && c.parked.load(SeqCst) != 0 {
            let bits = c.parked.swap(0, SeqCst);
            if bits != 0
                && let Some(table) = c.table.upgrade()
            {
                table.unpark(c, bits);
            }
        }
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
pub(crate) struct Tracked<B> {
    body: B,
    _request: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `inner` with every request counted on `conn` from its start until its response body
/// is gone.
pub(crate) fn track<S, B>(
    inner: S,
    conn: Arc<Conn>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Tracked<B>>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Tracked<B>>, Infallible>> + Send + 'static,
> + Send
+ 'static
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
{
    hyper::service::service_fn(move |req| {
        let request = conn.begin();
        let response = inner.call(req);
        async move {
            let resp = response.await?;
            Ok(resp.map(|body| Tracked {
                body,
                _request: request,
            }))
        }
    })
}

/// Why a connection was refused or evicted: the server was full, or its client was.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    Capacity,
    Client,
}

impl Limit {
    fn label(self) -> ReasonLabels {
        ReasonLabels {
            reason: match self {
                Limit::Capacity => "capacity",
                Limit::Client => "per_client",
            },
        }
    }
}

struct Entry {
    conn: Arc<Conn>,
    /// `None`: not subject to the per-client cap (a trusted proxy, or no cap).
    group: Option<IpAddr>,
    /// The connection's key in the global idle ordering; `None` while parked.
    key_all: Option<u64>,
    /// Its key in its group's idle ordering; `None` while parked or without a group.
    key_group: Option<u64>,
}

impl Entry {
    fn key(&mut self, which: u8) -> &mut Option<u64> {
        if which == ALL {
            &mut self.key_all
        } else {
            &mut self.key_group
        }
    }
}

#[derive(Default)]
struct Group {
    count: usize,
    idle: BTreeSet<(u64, u64)>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    live: HashMap<u64, Entry>,
    idle: BTreeSet<(u64, u64)>,
    groups: HashMap<IpAddr, Group>,
}

/// The limits the table enforces.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max: usize,
    /// 0: no per-client cap.
    pub per_client: usize,
    pub trusted: TrustedProxies,
}

struct Counters {
    open: Gauge,
    accepted: Counter,
    refused: Family<ReasonLabels, Counter>,
    evicted: Family<ReasonLabels, Counter>,
}

pub(crate) struct Table {
    state: Mutex<State>,
    epoch: Instant,
    limits: Limits,
    counters: Counters,
}

impl Table {
    pub(crate) fn new(limits: Limits, metrics: &Metrics) -> Arc<Table> {
        Arc::new(Table {
            state: Mutex::new(State::default()),
            epoch: Instant::now(),
            limits: Limits {
                max: limits.max.max(1),
                ..limits
            },
            counters: Counters {
                open: metrics.connections_open.clone(),
                accepted: metrics.connections_accepted.clone(),
                refused: metrics.connections_refused.clone(),
                evicted: metrics.connections_evicted.clone(),
            },
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Makes room for a connection from `peer` and registers it, or says which limit
    /// refuses it. Evicted connections are told to close.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Arc<Conn>, Limit> {
        let group = (self.limits.per_client > 0 && !self.limits.trusted.contains(peer))
            .then(|| client::group(peer));
        let mut evicted = Vec::new();
        let result = {
            let mut st = self.lock();
            let st = &mut *st;
            let mut result = Ok(());
            if let Some(g) = group
                && let Some(grp) = st.groups.get_mut(&g)
                && grp.count >= self.limits.per_client
            {
                match oldest_idle(&mut grp.idle, &mut st.live, GROUP) {
                    Some(id) => evicted.extend(remove(st, id).map(|c| (c, Limit::Client))),
                    None => result = Err(Limit::Client),
                }
            }
            if result.is_ok() && st.live.len() >= self.limits.max {
                match oldest_idle(&mut st.idle, &mut st.live, ALL) {
                    Some(id) => evicted.extend(remove(st, id).map(|c| (c, Limit::Capacity))),
                    None => result = Err(Limit::Capacity),
                }
            }
            let result = result.map(|()| self.insert(st, group));
            self.counters.open.set(gauge(st.live.len()));
            result
        };
        for (conn, why) in evicted {
            self.counters.evicted.get_or_create(&why.label()).inc();
            conn.close.notify_one();
        }
        match &result {
            Ok(_) => {
                self.counters.accepted.inc();
            }
            Err(why) => {
                self.counters.refused.get_or_create(&why.label()).inc();
            }
        }
        result
    }

    fn insert(self: &Arc<Self>, st: &mut State, group: Option<IpAddr>) -> Arc<Conn> {
        let id = st.next_id;
        st.next_id += 1;
        let now = nanos(self.epoch.elapsed());
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            served: AtomicBool::new(false),
            parked: AtomicU8::new(0),
            close: tokio::sync::Notify::new(),
            table: Arc::downgrade(self),
        });
        st.idle.insert((now, id));
        if let Some(g) = group {
            let grp = st.groups.entry(g).or_default();
            grp.count += 1;
            grp.idle.insert((now, id));
        }
        st.live.insert(
            id,
            Entry {
                conn: Arc::clone(&conn),
                group,
                key_all: Some(now),
                key_group: group.map(|_| now),
            },
        );
        conn
    }

    /// The connection's task ended (or it was evicted already: then nothing happens).
    pub(crate) fn leave(&self, conn: &Conn) {
        let mut st = self.lock();
        remove(&mut st, conn.id);
        self.counters.open.set(gauge(st.live.len()));
    }

    /// Asks every connection to close (server shutdown).
    pub(crate) fn close_all(&self) {
        let st = self.lock();
        for e in st.live.values() {
            e.conn.close.notify_one();
        }
    }

    /// A parked connection became idle: it is evictable again.
    fn unpark(&self, conn: &Conn, bits: u8) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(entry) = st.live.get_mut(&conn.id) else {
            return;
        };
        let since = conn.idle_since.load(SeqCst);
        if bits & ALL != 0 && entry.key_all.is_none() {
            st.idle.insert((since, conn.id));
            entry.key_all = Some(since);
        }
        if bits & GROUP != 0
            && entry.key_group.is_none()
            && let Some(grp) = entry.group.and_then(|g| st.groups.get_mut(&g))
        {
            grp.idle.insert((since, conn.id));
            entry.key_group = Some(since);
        }
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().live.len()
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Takes a connection out of the table; its task will find nothing when it leaves.
fn remove(st: &mut State, id: u64) -> Option<Arc<Conn>> {
    let entry = st.live.remove(&id)?;
    if let Some(k) = entry.key_all {
        st.idle.remove(&(k, id));
    }
    if let Some(g) = entry.group
        && let Some(grp) = st.groups.get_mut(&g)
    {
        if let Some(k) = entry.key_group {
            grp.idle.remove(&(k, id));
        }
        grp.count -= 1;
        if grp.count == 0 {
            st.groups.remove(&g);
        }
    }
    Some(entry.conn)
}

/// The id of the connection in `set` that has been idle the longest, taken out of `set`;
/// `None` if every connection in it is busy.
///
/// Entries are `(key, id)` with a key no later than the connection's real idle start.
/// The first entry is the victim if its connection is idle and its key is current.
/// Otherwise it is moved to its current key, or, if the connection is busy, parked: taken
/// out of `set` with a bit set that makes the request which next leaves the connection
/// idle put it back. Each move or park follows at least one request on that connection,
/// so the work is bounded by the traffic, not repeated per accept.
fn oldest_idle(
    set: &mut BTreeSet<(u64, u64)>,
    live: &mut HashMap<u64, Entry>,
    which: u8,
) -> Option<u64> {
    loop {
        let (key, id) = set.pop_first()?;
        let Some(entry) = live.get_mut(&id) else {
            continue;
        };
        let c = Arc::clone(&entry.conn);
        if c.busy() {
            // Park, then look again: the request may have ended in between, and either it
            // saw the bit (and will put the connection back once we release the lock) or
            // we see it idle and take the bit back ourselves.
            c.parked.fetch_or(which, SeqCst);
            if c.busy() || c.parked.fetch_and(!which, SeqCst) & which == 0 {
                *entry.key(which) = None;
                continue;
            }
        }
        let since = c.idle_since.load(SeqCst);
        if since > key {
            set.insert((since, id));
            *entry.key(which) = Some(since);
            continue;
        }
        *entry.key(which) = None;
        return Some(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, per_client: usize) -> Arc<Table> {
        Table::new(
            Limits {
                max,
                per_client,
                trusted: TrustedProxies::parse(&["10.9.0.0/16"]).expect("net"),
            },
            &Metrics::default(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn closing(c: &Conn) -> bool {
        // A stored permit means the table asked the connection to close.
        let notified = c.close.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable()
    }

    #[test]
    fn a_full_table_evicts_the_connection_idle_longest_never_a_busy_one() {
        let t = table(3, 0);
        let a = t.admit(ip("192.0.2.1")).expect("a");
        let b = t.admit(ip("192.0.2.2")).expect("b");
        let c = t.admit(ip("192.0.2.3")).expect("c");
        // a is busy; b finished a request after c was accepted, so c is idle longer.
        let busy = a.begin();
        std::thread::sleep(Duration::from_millis(2));
        drop(b.begin());
        let d = t.admit(ip("192.0.2.4")).expect("d evicts c");
        assert!(closing(&c) && !closing(&a) && !closing(&b));
        let e = t.admit(ip("192.0.2.5")).expect("e evicts b");
        assert!(closing(&b) && !closing(&a));
        assert_eq!(t.open(), 3);
        // a (busy), d, e: d then e go; with three busy connections the next is refused.
        let _d = d.begin();
        let _e = e.begin();
        assert!(matches!(t.admit(ip("192.0.2.6")), Err(Limit::Capacity)));
        // a's request ends: it is evictable again, though the evictor had parked it.
        drop(busy);
        let _f = t.admit(ip("192.0.2.6")).expect("f evicts a");
        assert!(closing(&a));
        assert_eq!(t.open(), 3);
    }

    #[test]
    fn a_client_at_its_cap_evicts_its_own_idle_connection() {
        let t = table(100, 2);
        let a1 = t.admit(ip("2001:db8:1:2::1")).expect("a1");
        let a2 = t.admit(ip("2001:db8:1:2::2")).expect("same /64");
        let other = t.admit(ip("2001:db8:1:3::1")).expect("other /64");
        let a3 = t.admit(ip("2001:db8:1:2::3")).expect("a3 evicts a1");
        assert!(closing(&a1) && !closing(&a2) && !closing(&other));
        let _b2 = a2.begin();
        let _b3 = a3.begin();
        assert!(matches!(t.admit(ip("2001:db8:1:2::4")), Err(Limit::Client)));
        // Trusted proxies are not capped.
        let proxied: Vec<_> = (0..5)
            .map(|_| t.admit(ip("10.9.1.1")).expect("trusted proxy"))
            .collect();
        assert!(proxied.iter().all(|c| !closing(c)));
        // Leaving frees the group's slot.
        t.leave(&a3);
        let _a4 = t.admit(ip("2001:db8:1:2::4")).expect("room again");
    }

    #[test]
    fn connections_that_leave_are_forgotten() {
        let t = table(2, 0);
        for _ in 0..1000 {
            let c = t.admit(ip("192.0.2.1")).expect("admit");
            drop(c.begin());
            t.leave(&c);
        }
        assert_eq!(t.open(), 0);
        let st = t.lock();
        assert!(st.idle.is_empty() && st.groups.is_empty());
    }

    #[test]
    fn watch_uses_the_first_request_deadline_then_the_idle_timeout() {
        let t = table(10, 0);
        let c = t.admit(ip("192.0.2.1")).expect("admit");
        let short = Duration::from_millis(1);
        let long = Duration::from_secs(60);
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(c.watch(short, long), Watch::NoRequest));
        let r = c.begin();
        assert!(matches!(c.watch(short, short), Watch::At(_)), "busy");
        drop(r);
        assert!(matches!(c.watch(short, long), Watch::At(_)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(c.watch(long, short), Watch::Idle));
    }
}
