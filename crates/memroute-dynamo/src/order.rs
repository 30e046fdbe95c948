//! The order in which a store runs the requests of one key.
//!
//! memroute keeps many requests of a client connection in flight at once
//! (pipelining), and the store runs each as its own task. A memcached
//! backend still executes a connection's requests in order, because they
//! share its socket; DynamoDB calls do not, so `set k` then `get k` sent
//! together could read the table before the set reached it.
//!
//! So every request takes a turn on each of its keys the moment it starts
//! (the first poll of [`DynamoStore::execute`](crate::DynamoStore::execute),
//! which memroute's connections give in request order) and runs once the
//! requests that took turns on those keys before it are done: reads of a key
//! run together, anything else waits for every earlier request of the key
//! and holds off every later one. tokio's `RwLock` queues waiters fairly, in
//! the order they first asked, which is what keeps the order.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// One lock per key that has a request running or waiting.
#[derive(Default)]
pub struct KeyOrder {
    keys: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

/// What a request does to its keys.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Leaves the item as it is: may run beside other reads.
    Read,
    /// May change the item (a touch included).
    Write,
}

/// A guard kept for its `Drop`, which gives the turn up.
#[allow(dead_code)]
enum Held {
    Read(OwnedRwLockReadGuard<()>),
    Write(OwnedRwLockWriteGuard<()>),
}

type Waiting = Pin<Box<dyn Future<Output = Held> + Send>>;

/// The wait for one key's lock, which queues at its first poll.
fn acquire(lock: Arc<RwLock<()>>, access: Access) -> Waiting {
    match access {
        Access::Read => Box::pin(async move { Held::Read(lock.read_owned().await) }),
        Access::Write => Box::pin(async move { Held::Write(lock.write_owned().await) }),
    }
}

/// The turns a request holds; dropping it lets the next requests run.
pub struct Turns<'a> {
    order: &'a KeyOrder,
    held: Vec<(String, Option<Held>)>,
}

impl KeyOrder {
    /// Waits for the turn of a request on `ids`. Every key's place in line
    /// is taken in the first poll, all at once and under the map's lock, so
    /// two requests sharing keys are in the same order on each of them (no
    /// deadlock). The lock matters: requests start on several threads, and
    /// a request that took its place on `a` and then on `b` while another
    /// took `b` in between would wait for it on `b` while it waits on `a`.
    pub async fn turns(&self, ids: &[String], access: Access) -> Turns<'_> {
        let mut wanted: Vec<&String> = ids.iter().collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut waiting: Vec<(String, Waiting)> = Vec::with_capacity(wanted.len());
        let mut held: Vec<(String, Option<Held>)> = Vec::with_capacity(wanted.len());
        let mut placed = false;
        std::future::poll_fn(|cx| {
            // The first poll queues the request on every key's lock with
            // the map's lock held, and keeps holding it until those polls
            // are done.
            let map = (!placed).then(|| {
                let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
                for id in &wanted {
                    let lock = match keys.get(*id) {
                        Some(lock) => Arc::clone(lock),
                        None => Arc::clone(keys.entry((*id).clone()).or_default()),
                    };
                    waiting.push(((*id).clone(), acquire(lock, access)));
                }
                keys
            });
            placed = true;
            let mut i = 0;
            while i < waiting.len() {
                if let Poll::Ready(h) = waiting[i].1.as_mut().poll(cx) {
                    let (id, _) = waiting.swap_remove(i);
                    held.push((id, Some(h)));
                } else {
                    i += 1;
                }
            }
            drop(map);
            if waiting.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        Turns { order: self, held }
    }

    /// Runs `work` as a request of `id` that needs no turn, if no request
    /// of `id` is running or waiting; `None` (and `work` not run) if one
    /// is. `work` runs under the map's lock, so no request can take a turn
    /// on `id` while it runs: exactly as if it had taken its turn at once
    /// and given it up when done, minus the lock's bookkeeping. For
    /// synchronous work only (write-behind answers from the queue).
    pub fn run_if_idle<T>(&self, id: &str, work: impl FnOnce() -> T) -> Option<T> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.contains_key(id) {
            return None;
        }
        let done = work();
        drop(keys);
        Some(done)
    }

    /// Keys with a request running or waiting (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().unwrap().len()
    }
}

impl Drop for Turns<'_> {
    fn drop(&mut self) {
        for (id, held) in &mut self.held {
            drop(held.take());
            let mut keys = self.order.keys.lock().unwrap_or_else(|e| e.into_inner());
            // Only the map still knows the lock: nobody runs or waits.
            if keys
                .get(id)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                keys.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn idle_keys_run_without_a_turn() {
        let order = KeyOrder::default();
        assert_eq!(order.run_if_idle("k", || 1), Some(1));
        assert_eq!(order.len(), 0, "no turn left behind");
        let busy = order.turns(&ids(&["k"]), Access::Read).await;
        assert_eq!(
            order.run_if_idle("k", || 2),
            None,
            "k has a request running"
        );
        assert_eq!(order.run_if_idle("other", || 3), Some(3));
        drop(busy);
        assert_eq!(order.run_if_idle("k", || 4), Some(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_of_a_key_run_in_the_order_they_started() {
        let order = Arc::new(KeyOrder::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = order.turns(&ids(&["k"]), Access::Write).await;
        // Started in this order while the key is busy: each takes its place
        // at its first poll, before it is spawned to run anywhere.
        let mut tasks = Vec::new();
        for (n, access) in [(1, Access::Write), (2, Access::Read), (3, Access::Write)] {
            let (order, log) = (Arc::clone(&order), Arc::clone(&log));
            let mut fut = Box::pin(async move {
                let _t = order.turns(&ids(&["k"]), access).await;
                log.lock().unwrap().push(n);
            });
            let waker = std::task::Waker::noop();
            assert!(fut
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending());
            tasks.push(tokio::spawn(fut));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            log.lock().unwrap().is_empty(),
            "nothing runs before the first"
        );
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 3]);
        assert_eq!(order.len(), 0, "idle keys are forgotten");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_share_and_overlapping_key_sets_do_not_deadlock() {
        let order = Arc::new(KeyOrder::default());
        let a = order.turns(&ids(&["a", "b"]), Access::Read).await;
        let b = order.turns(&ids(&["b", "a", "a"]), Access::Read).await;
        drop((a, b));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let (order, done) = (Arc::clone(&order), Arc::clone(&done));
            let keys = if i % 2 == 0 {
                ids(&["a", "b"])
            } else {
                ids(&["b", "a"])
            };
            tasks.push(tokio::spawn(async move {
                let _t = order.turns(&keys, Access::Write).await;
                tokio::task::yield_now().await;
                done.fetch_add(1, Ordering::Relaxed);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(done.load(Ordering::Relaxed), 64);
        assert_eq!(order.len(), 0);
    }

    /// Regression: two requests on the same keys, started on two threads
    /// at once, could each take its place on one key before the other's
    /// and then wait for each other forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn turns_taken_on_two_threads_at_once_never_deadlock() {
        let order = Arc::new(KeyOrder::default());
        let rounds = async {
            for _ in 0..3000 {
                let mut tasks = Vec::new();
                for i in 0..4 {
                    let order = Arc::clone(&order);
                    let keys = if i % 2 == 0 {
                        ids(&["a", "b"])
                    } else {
                        ids(&["b", "a"])
                    };
                    tasks.push(tokio::spawn(async move {
                        let _t = order.turns(&keys, Access::Write).await;
                        tokio::task::yield_now().await;
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), rounds)
            .await
            .expect("requests sharing keys waited for each other");
        assert_eq!(order.len(), 0);
    }
}
