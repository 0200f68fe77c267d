//! Single flight: when many requests miss the same object at once, one of them (the
//! leader) does the work and the others wait for its outcome, so an upstream sees one
//! fetch per object however many clients asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Map<V> = Arc<Mutex<HashMap<String, watch::Receiver<Option<V>>>>>;

pub(crate) struct Flights<V> {
    map: Map<V>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Where a request stands in the flight for its key.
pub(crate) enum Seat<V> {
    /// Do the work, then `land` with the outcome.
    Leader(Lead<V>),
    /// Someone else is doing it: `wait`.
    Follower(watch::Receiver<Option<V>>),
}

/// The leader's ticket. Dropping it without `land` (the leader was cancelled) releases
/// the followers, who then try again, one of them as the new leader.
pub(crate) struct Lead<V> {
    map: Map<V>,
    key: String,
    tx: watch::Sender<Option<V>>,
}

impl<V: Clone> Flights<V> {
    pub(crate) fn join(&self, key: &str) -> Seat<V> {
        let mut map = lock(&self.map);
        if let Some(rx) = map.get(key) {
            return Seat::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), rx);
        Seat::Leader(Lead {
            map: self.map.clone(),
            key: key.to_owned(),
            tx,
        })
    }
}

impl<V: Clone> Lead<V> {
    /// Publishes the outcome. The key is released first, so a request arriving after this
    /// starts a new flight (and finds the stored object) instead of reading a stale one.
    pub(crate) fn land(self, outcome: V) {
        self.release();
        self.tx.send_replace(Some(outcome));
    }
}

impl<V> Lead<V> {
    fn release(&self) {
        let mut map = lock(&self.map);
        // Only our own entry: a new flight may hold the key already.
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

impl<V> Drop for Lead<V> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The leader's outcome, or `None` if the leader went away without one.
pub(crate) async fn wait<V: Clone>(mut rx: watch::Receiver<Option<V>>) -> Option<V> {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|v| v.clone())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the map leaves it consistent (single inserts and
    // removes), so keep using it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_outcome_and_the_key_is_released() {
        let f: Flights<u32> = Flights::default();
        let Seat::Leader(lead) = f.join("k") else {
            panic!("first is the leader");
        };
        let Seat::Follower(rx) = f.join("k") else {
            panic!("second follows");
        };
        let waiter = tokio::spawn(wait(rx));
        lead.land(7);
        assert_eq!(waiter.await.ok().flatten(), Some(7));
        assert!(matches!(f.join("k"), Seat::Leader(_)), "key released");
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers() {
        let f: Flights<u32> = Flights::default();
        let lead = f.join("k");
        let Seat::Follower(rx) = f.join("k") else {
            panic!("second follows");
        };
        drop(lead);
        assert_eq!(wait(rx).await, None);
        assert!(matches!(f.join("k"), Seat::Leader(_)));
    }
}
