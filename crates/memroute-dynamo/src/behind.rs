//! The write-behind queue: per-key ordered, coalescing, bounded.
//!
//! Every key with queued work has a small FIFO of entries:
//! - `Write`: an acknowledged blind write (put or delete) with its version.
//!   A new blind write replaces the last entry when that entry is a write
//!   not yet sent (coalescing); otherwise it is appended.
//! - `Exclusive`: a request that needs the key's current state (add, cas,
//!   incr, ...). It waits until it is at the head (every earlier write of
//!   the key has landed), then runs write-through while later entries wait
//!   behind it. Its version is reserved when it joins the queue, so writes
//!   queued after it always carry higher versions.
//!
//! Only the head entry of a key is ever in flight, so at most one write per
//! key is in flight and writes land in queue order. Each write is also
//! conditional on the stored version not being higher than its own, so
//! nothing older can overwrite something newer even across processes.
//!
//! The latest write entry of a key is the key's current state as clients
//! were told it (read-your-writes): reads, and blind writes that depend on
//! it only trivially (delete, touch), are answered from it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::clock::next_version;
use crate::item::Item;
use crate::ops::{decide, CasRule, KeyOp, Outcome, Write};
use crate::stats::Counters;

/// A queued write.
#[derive(Debug, Clone)]
pub enum QueuedOp {
    Put(Item),
    Delete,
}

struct QueuedWrite {
    op: QueuedOp,
    version: u64,
    bytes: usize,
    in_flight: bool,
}

enum Entry {
    Write(QueuedWrite),
    Exclusive {
        ticket: u64,
        grant: Option<oneshot::Sender<()>>,
    },
}

#[derive(Default)]
struct KeyQueue {
    entries: VecDeque<Entry>,
    writes: usize,
}

impl KeyQueue {
    /// The key's state as acknowledged to clients, if a write is queued:
    /// `Some(Some(item))` for a put, `Some(None)` for a delete.
    fn latest(&self) -> Option<Option<&Item>> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::Write(w) => Some(match &w.op {
                QueuedOp::Put(item) => Some(item),
                QueuedOp::Delete => None,
            }),
            Entry::Exclusive { .. } => None,
        })
    }
}

#[derive(Default)]
struct State {
    keys: HashMap<String, KeyQueue>,
    /// Keys whose head entry is a write not yet sent.
    ready: VecDeque<String>,
    /// Keys with at least one queued write (the `queue_max_keys` bound).
    write_keys: usize,
    bytes: usize,
    in_flight: usize,
    next_ticket: u64,
}

/// A write taken from the queue, to be sent.
pub struct Job {
    pub id: String,
    pub op: QueuedOp,
    pub version: u64,
}

/// What the queue could do for a request without DynamoDB.
pub enum Local {
    /// Answered (and any write queued).
    Done(Outcome),
    /// The write needs room the queue does not have.
    Full,
    /// A plain read of a key with nothing queued: read the table.
    Read,
    /// Needs the key's current state: join the key's queue as exclusive.
    Exclusive,
}

pub struct Queue {
    state: Mutex<State>,
    /// Signalled when room is freed (backpressure waiters).
    pub space: Notify,
    /// Signalled when a key becomes ready to send.
    pub work: Notify,
    /// Signalled (with `state`) whenever a write lands, for drain.
    idle: Condvar,
    max_keys: usize,
    max_bytes: usize,
}

impl Queue {
    pub fn new(max_keys: usize, max_bytes: usize) -> Self {
        Queue {
            state: Mutex::new(State::default()),
            space: Notify::new(),
            work: Notify::new(),
            idle: Condvar::new(),
            max_keys: max_keys.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state
        // (every mutation is a few field updates); keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tries to answer `op` on `id` from the queue, queueing its write.
    pub fn try_local(
        &self,
        id: &str,
        op: &KeyOp,
        now: i64,
        fits: &dyn Fn(usize) -> bool,
        counters: &Counters,
    ) -> Local {
        let mut st = self.lock();
        let latest = st.keys.get(id).and_then(|k| k.latest());
        let current: Option<Option<Item>> = latest.map(|l| l.filter(|i| i.is_live(now)).cloned());
        let decision = match (&current, op) {
            (Some(cur), op) if op.is_queueable() => decide(op, cur.as_ref(), now, fits),
            (None, op) if op.is_blind_set() => decide(op, None, now, fits),
            (None, KeyOp::Read { touch: None }) => return Local::Read,
            _ => return Local::Exclusive,
        };
        if matches!(op, KeyOp::Read { touch: None }) {
            counters.queue_hits.incr();
        }
        let (queued, version) = match decision.write {
            Write::None => return Local::Done(decision.outcome),
            Write::Put(mut item) => {
                let version = match (decision.cas, &current) {
                    (CasRule::Keep, Some(Some(cur))) if cur.cas != 0 => cur.cas,
                    _ => next_version(),
                };
                item.cas = version;
                (QueuedOp::Put(item), version)
            }
            Write::Delete => (QueuedOp::Delete, next_version()),
        };
        let bytes = match &queued {
            QueuedOp::Put(item) => item.queue_bytes(id),
            QueuedOp::Delete => id.len() + 64,
        };
        if !self.enqueue(&mut st, id, queued, version, bytes, counters) {
            return Local::Full;
        }
        drop(st);
        Local::Done(decision.outcome.with_cas(version))
    }

    /// Queues a write if there is room; coalesces with a queued write of
    /// the same key that has not been sent yet.
    fn enqueue(
        &self,
        st: &mut State,
        id: &str,
        op: QueuedOp,
        version: u64,
        bytes: usize,
        counters: &Counters,
    ) -> bool {
        let (has_writes, replaced) = match st.keys.get(id) {
            Some(k) => (
                k.writes > 0,
                match k.entries.back() {
                    Some(Entry::Write(w)) if !w.in_flight => Some(w.bytes),
                    _ => None,
                },
            ),
            None => (false, None),
        };
        let room = match replaced {
            Some(old) => bytes <= old || st.bytes - old + bytes <= self.max_bytes,
            None => {
                let keys = st.write_keys + usize::from(!has_writes);
                keys <= self.max_keys && (st.bytes == 0 || st.bytes + bytes <= self.max_bytes)
            }
        };
        if !room {
            return false;
        }
        counters.queued.incr();
        let write = QueuedWrite {
            op,
            version,
            bytes,
            in_flight: false,
        };
        let key = st.keys.entry(id.to_owned()).or_default();
        if let Some(old) = replaced {
            if let Some(Entry::Write(last)) = key.entries.back_mut() {
                *last = write;
            }
            st.bytes = st.bytes - old + bytes;
            counters.coalesced.incr();
            return true;
        }
        key.entries.push_back(Entry::Write(write));
        key.writes += 1;
        let first = key.entries.len() == 1;
        if key.writes == 1 {
            st.write_keys += 1;
        }
        st.bytes += bytes;
        if first {
            st.ready.push_back(id.to_owned());
            self.work.notify_one();
        }
        true
    }

    /// Takes the next write to send, marking it in flight.
    pub fn take_ready(&self) -> Option<Job> {
        let mut st = self.lock();
        while let Some(id) = st.ready.pop_front() {
            let Some(key) = st.keys.get_mut(&id) else {
                continue;
            };
            let Some(Entry::Write(w)) = key.entries.front_mut() else {
                continue;
            };
            if w.in_flight {
                continue;
            }
            w.in_flight = true;
            let job = Job {
                op: w.op.clone(),
                version: w.version,
                id,
            };
            st.in_flight += 1;
            return Some(job);
        }
        None
    }

    /// Removes the head write of `id` after it landed (or was given up).
    pub fn complete(&self, id: &str) {
        let mut st = self.lock();
        let mut freed = 0;
        if let Some(key) = st.keys.get_mut(id) {
            if let Some(Entry::Write(w)) = key.entries.front() {
                if w.in_flight {
                    freed = w.bytes;
                    key.entries.pop_front();
                    key.writes -= 1;
                    let now_empty = key.writes == 0;
                    st.in_flight -= 1;
                    st.bytes -= freed;
                    if now_empty {
                        st.write_keys -= 1;
                    }
                }
            }
        }
        self.advance(&mut st, id);
        drop(st);
        if freed > 0 {
            self.space.notify_waiters();
            self.idle.notify_all();
        }
    }

    /// Starts whatever is now at the head of `id`'s queue.
    fn advance(&self, st: &mut State, id: &str) {
        loop {
            let Some(key) = st.keys.get_mut(id) else {
                return;
            };
            match key.entries.front_mut() {
                None => {
                    st.keys.remove(id);
                    return;
                }
                Some(Entry::Write(w)) => {
                    if !w.in_flight {
                        st.ready.push_back(id.to_owned());
                        self.work.notify_one();
                    }
                    return;
                }
                Some(Entry::Exclusive { grant, .. }) => {
                    let Some(tx) = grant.take() else {
                        return; // already granted: running
                    };
                    if tx.send(()).is_ok() {
                        return;
                    }
                    // The waiter is gone: drop its entry and go on.
                    key.entries.pop_front();
                }
            }
        }
    }

    /// Joins `id`'s queue as an exclusive entry. Returns the ticket, the
    /// grant to wait for, and the version reserved for its write.
    pub fn register_exclusive(&self, id: &str) -> (u64, oneshot::Receiver<()>, u64) {
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        st.next_ticket += 1;
        let ticket = st.next_ticket;
        let version = next_version();
        let key = st.keys.entry(id.to_owned()).or_default();
        key.entries.push_back(Entry::Exclusive {
            ticket,
            grant: Some(tx),
        });
        if key.entries.len() == 1 {
            self.advance(&mut st, id);
        }
        (ticket, rx, version)
    }

    /// Leaves `id`'s queue (the exclusive request finished, or gave up
    /// waiting), starting whatever comes next.
    pub fn release_exclusive(&self, id: &str, ticket: u64) {
        let mut st = self.lock();
        let Some(key) = st.keys.get_mut(id) else {
            return;
        };
        let Some(pos) = key
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Exclusive { ticket: t, .. } if *t == ticket))
        else {
            return;
        };
        key.entries.remove(pos);
        if pos == 0 {
            self.advance(&mut st, id);
        } else if key.entries.is_empty() {
            st.keys.remove(id);
        }
    }

    /// (keys with queued writes, queued bytes, writes in flight).
    pub fn depth(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.write_keys, st.bytes, st.in_flight)
    }

    /// Blocks until no write is queued or `timeout` passes; returns the
    /// depth left.
    pub fn wait_empty(&self, timeout: Duration) -> (usize, usize) {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.write_keys > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            st = match self.idle.wait_timeout(st, wait) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
        (st.write_keys, st.bytes)
    }
}

/// Leaves the key's queue when dropped, whatever happens to the request.
pub struct ExclusiveGuard<'a> {
    pub queue: &'a Queue,
    pub id: &'a str,
    pub ticket: u64,
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        self.queue.release_exclusive(self.id, self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{StoreMode, StoreSpec};
    use bytes::Bytes;

    fn set(v: &'static [u8]) -> KeyOp {
        KeyOp::Store(StoreSpec {
            mode: StoreMode::Set,
            value: Bytes::from_static(v),
            flags: 0,
            exptime: 0,
            compare_cas: None,
            vivify: None,
        })
    }

    #[test]
    fn coalesces_orders_and_bounds() {
        let q = Queue::new(2, 1 << 20);
        let c = Counters::default();
        let fits = |_: usize| true;
        let ok = |l: Local| matches!(l, Local::Done(Outcome::Stored { .. }));
        assert!(ok(q.try_local("a", &set(b"1"), 0, &fits, &c)));
        assert!(ok(q.try_local("a", &set(b"2"), 0, &fits, &c)));
        assert_eq!(c.coalesced.get(), 1);
        assert!(ok(q.try_local("b", &set(b"1"), 0, &fits, &c)));
        // A third key does not fit.
        assert!(matches!(
            q.try_local("c", &set(b"1"), 0, &fits, &c),
            Local::Full
        ));
        // Read-your-writes.
        let read = KeyOp::Read { touch: None };
        match q.try_local("a", &read, 0, &fits, &c) {
            Local::Done(Outcome::Hit { item, .. }) => assert_eq!(&item.value[..], b"2"),
            _ => panic!(),
        }
        assert!(matches!(q.try_local("c", &read, 0, &fits, &c), Local::Read));
        // In flight: a new write queues behind instead of coalescing.
        let job = q.take_ready().unwrap();
        assert_eq!(job.id, "a");
        assert!(ok(q.try_local("a", &set(b"3"), 0, &fits, &c)));
        assert_eq!(q.depth().2, 1);
        // An exclusive request waits for every write queued before it.
        let (ticket, mut rx, _) = q.register_exclusive("a");
        assert!(rx.try_recv().is_err());
        let b = q.take_ready().unwrap();
        assert_eq!(b.id, "b");
        q.complete("b");
        q.complete("a");
        let job = q.take_ready().unwrap();
        let QueuedOp::Put(item) = job.op else {
            panic!()
        };
        assert_eq!(&item.value[..], b"3");
        assert!(rx.try_recv().is_err());
        q.complete("a");
        assert!(rx.try_recv().is_ok());
        q.release_exclusive("a", ticket);
        assert!(q.take_ready().is_none());
        assert_eq!(q.depth(), (0, 0, 0));
    }
}
