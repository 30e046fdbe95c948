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
//!
//! With a spool (see `spool`), every queued write is also appended to the
//! log, under the queue's lock (so a key's records are in queue order), and
//! the reply waits for its batch to be on disk. Only a key's latest record
//! is unsettled: queueing a newer write settles the previous one, and when
//! the latest lands a confirm record is written and waited for before the
//! key's queue moves on (so a write-through command that follows never
//! races a replay of what it replaced).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::clock::next_version;
use crate::item::Item;
use crate::ops::{decide, CasRule, KeyOp, Outcome, Write};
use crate::spool::{Pos, Refused, Replayed, Spool, Ticket};
use crate::stats::Counters;

/// A queued write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueuedOp {
    Put(Item),
    Delete,
}

struct QueuedWrite {
    op: QueuedOp,
    version: u64,
    bytes: usize,
    in_flight: bool,
    /// Its spool record while unsettled (only ever the key's latest).
    spool: Option<Pos>,
    /// The spool batch holding its record (replies wait for it).
    ticket: Option<Ticket>,
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
        self.last_write().map(|w| match &w.op {
            QueuedOp::Put(item) => Some(item),
            QueuedOp::Delete => None,
        })
    }

    fn last_write(&self) -> Option<&QueuedWrite> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::Write(w) => Some(w),
            Entry::Exclusive { .. } => None,
        })
    }

    fn last_write_mut(&mut self) -> Option<&mut QueuedWrite> {
        self.entries.iter_mut().rev().find_map(|e| match e {
            Entry::Write(w) => Some(w),
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
    /// Answered (and any write queued). With a spool, the reply waits for
    /// the ticket's batch: the write's record, or for an answer read from
    /// the queue, the record of the state it shows.
    Done(Outcome, Option<Ticket>),
    /// The write needs room the queue does not have.
    Full,
    /// The write needs room the spool does not have.
    SpoolFull,
    /// The spool failed (I/O error): nothing more is acknowledged.
    SpoolFailed,
    /// A plain read of a key with nothing queued: read the table.
    Read,
    /// Needs the key's current state: join the key's queue as exclusive.
    Exclusive,
}

pub struct Queue {
    state: Mutex<State>,
    /// Signalled when room is freed (backpressure waiters), by the queue
    /// or the spool.
    pub space: Arc<Notify>,
    /// Signalled when a key becomes ready to send.
    pub work: Notify,
    /// Signalled (with `state`) whenever a write lands, for drain.
    idle: Condvar,
    max_keys: usize,
    max_bytes: usize,
    spool: Option<Spool>,
}

impl Queue {
    /// `space` must be the one the spool (if any) signals.
    pub fn new(
        max_keys: usize,
        max_bytes: usize,
        space: Arc<Notify>,
        spool: Option<Spool>,
    ) -> Self {
        Queue {
            state: Mutex::new(State::default()),
            space,
            work: Notify::new(),
            idle: Condvar::new(),
            max_keys: max_keys.max(1),
            max_bytes,
            spool,
        }
    }

    pub fn spool(&self) -> Option<&Spool> {
        self.spool.as_ref()
    }

    /// The ticket, if a reply must still wait for it (see [`Local::Done`]).
    pub fn unacked(&self, ticket: Option<Ticket>) -> Option<Ticket> {
        let (spool, t) = (self.spool.as_ref()?, ticket?);
        (!spool.acked(t)).then_some(t)
    }

    /// Waits until a reply's ticket allows it to be sent (see
    /// [`Local::Done`]).
    pub async fn wait_ack(&self, ticket: Option<Ticket>) -> Result<(), Refused> {
        match (&self.spool, self.unacked(ticket)) {
            (Some(spool), Some(t)) => spool.wait_ack(t).await,
            _ => Ok(()),
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
        let key = st.keys.get(id);
        let latest = key.and_then(|k| k.latest());
        // The reply shows (or builds on) the latest queued state: it waits
        // until that state's record is on disk.
        let shown = key.and_then(|k| k.last_write()).and_then(|w| w.ticket);
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
            Write::None => return Local::Done(decision.outcome, shown),
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
        match self.enqueue(&mut st, id, queued, version, bytes, counters) {
            Ok(ticket) => {
                drop(st);
                Local::Done(decision.outcome.with_cas(version), ticket.or(shown))
            }
            Err(refused) => refused,
        }
    }

    /// Queues a write if there is room (and spools it); coalesces with a
    /// queued write of the same key that has not been sent yet. Returns
    /// the spool ticket, or why it was refused.
    fn enqueue(
        &self,
        st: &mut State,
        id: &str,
        op: QueuedOp,
        version: u64,
        bytes: usize,
        counters: &Counters,
    ) -> Result<Option<Ticket>, Local> {
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
            return Err(Local::Full);
        }
        let (spool, ticket) = match &self.spool {
            None => (None, None),
            Some(spool) => {
                let previous = st
                    .keys
                    .get(id)
                    .and_then(|k| k.last_write())
                    .and_then(|w| w.spool);
                match spool.append(id, &op, version, previous) {
                    Ok((pos, ticket)) => {
                        // The previous record is settled by this one.
                        if let Some(w) = st.keys.get_mut(id).and_then(|k| k.last_write_mut()) {
                            w.spool = None;
                        }
                        (Some(pos), Some(ticket))
                    }
                    Err(Refused::Full) => return Err(Local::SpoolFull),
                    Err(Refused::Failed) => return Err(Local::SpoolFailed),
                }
            }
        };
        counters.queued.incr();
        let write = QueuedWrite {
            op,
            version,
            bytes,
            in_flight: false,
            spool,
            ticket,
        };
        let key = st.keys.entry(id.to_owned()).or_default();
        if let Some(old) = replaced {
            if let Some(Entry::Write(last)) = key.entries.back_mut() {
                *last = write;
            }
            st.bytes = st.bytes - old + bytes;
            counters.coalesced.incr();
            return Ok(ticket);
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
        Ok(ticket)
    }

    /// Queues the writes a spool kept from an earlier process (one per
    /// key, not yet confirmed by DynamoDB), ahead of any new write and
    /// regardless of the bounds: they were acknowledged. Returns how many.
    pub fn replay(&self, writes: Vec<Replayed>) -> usize {
        let mut st = self.lock();
        let n = writes.len();
        for w in writes {
            crate::clock::observe_version(w.version);
            let bytes = match &w.op {
                QueuedOp::Put(item) => item.queue_bytes(&w.id),
                QueuedOp::Delete => w.id.len() + 64,
            };
            let key = st.keys.entry(w.id.clone()).or_default();
            let first = key.entries.is_empty();
            key.entries.push_back(Entry::Write(QueuedWrite {
                op: w.op,
                version: w.version,
                bytes,
                in_flight: false,
                spool: Some(w.pos),
                ticket: None,
            }));
            key.writes += 1;
            if key.writes == 1 {
                st.write_keys += 1;
            }
            st.bytes += bytes;
            if first {
                st.ready.push_back(w.id);
            }
        }
        drop(st);
        if n > 0 {
            self.work.notify_one();
        }
        n
    }

    /// The head write of `id` was sent (landed, superseded, or given up).
    /// Without a spool, or when a later write of the key already settled
    /// its record, it is completed now (`None`). Otherwise a confirm record
    /// is appended and its ticket returned: wait for it
    /// ([`Spool::wait_confirm`]), then [`Queue::complete`] the key.
    pub fn landed(&self, id: &str) -> Option<Ticket> {
        let Some(spool) = self.spool.as_ref() else {
            self.complete(id);
            return None;
        };
        let pos = {
            let st = self.lock();
            match st.keys.get(id).and_then(|k| k.entries.front()) {
                Some(Entry::Write(w)) if w.in_flight => w.spool,
                _ => None,
            }
        };
        // (A write queued in between settles the record itself; the
        // confirm is then merely unneeded.)
        let ticket = pos.and_then(|pos| spool.confirm(pos).ok());
        if ticket.is_none() {
            self.complete(id);
        }
        ticket
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
                    if let (Some(spool), Some(pos)) = (&self.spool, w.spool) {
                        spool.settle(pos);
                    }
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
    use crate::ops::StoreSpec;
    use bytes::Bytes;
    use memroute_proto::StoreMode;

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

    fn queue(max_keys: usize, spool: Option<Spool>) -> Queue {
        Queue::new(max_keys, 1 << 20, Arc::new(Notify::new()), spool)
    }

    #[test]
    fn coalesces_orders_and_bounds() {
        let q = queue(2, None);
        let c = Counters::default();
        let fits = |_: usize| true;
        let ok = |l: Local| matches!(l, Local::Done(Outcome::Stored { .. }, None));
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
            Local::Done(Outcome::Hit { item, .. }, None) => assert_eq!(&item.value[..], b"2"),
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

    fn stored(l: Local) -> Ticket {
        match l {
            Local::Done(Outcome::Stored { .. } | Outcome::Deleted, Some(t)) => t,
            _ => panic!("not stored with a ticket"),
        }
    }

    /// With a spool: replies wait for their record, a key's newer write
    /// settles its older record, a landed latest write is confirmed before
    /// the key moves on, and what is left is replayed in order.
    #[tokio::test]
    async fn spooled_writes_settle_confirm_and_replay() {
        use crate::spool::tests::TempDir;
        use crate::spool::{FsyncPolicy, SpoolConfig};
        let dir = TempDir::new("queue");
        let cfg = SpoolConfig {
            fsync: FsyncPolicy::Always,
            ..SpoolConfig::new(&dir.0)
        };
        let open = || Spool::open(&cfg, "test", "table", Arc::new(Notify::new())).unwrap();
        let c = Counters::default();
        let fits = |_: usize| true;
        {
            let (spool, recovered) = open();
            assert!(recovered.writes.is_empty());
            let q = queue(100, Some(spool));
            stored(q.try_local("a", &set(b"1"), 0, &fits, &c));
            let t = stored(q.try_local("a", &set(b"2"), 0, &fits, &c));
            stored(q.try_local("b", &set(b"1"), 0, &fits, &c));
            q.wait_ack(Some(t)).await.unwrap();
            // A read of queued state carries the ticket of that state.
            let read = KeyOp::Read { touch: None };
            assert!(matches!(
                q.try_local("a", &read, 0, &fits, &c),
                Local::Done(Outcome::Hit { .. }, Some(_))
            ));
            // a=2 goes out; a=3 queues behind it and settles its record,
            // so a=2 landing needs no confirm.
            let job = q.take_ready().unwrap();
            assert_eq!(job.id, "a");
            stored(q.try_local("a", &set(b"3"), 0, &fits, &c));
            assert!(q.landed("a").is_none());
            // b=1 is b's latest: confirmed before the key moves on.
            let job = q.take_ready().unwrap();
            assert_eq!(job.id, "b");
            let confirm = q.landed("b").expect("a confirm");
            assert_eq!(q.depth().2, 1, "b stays in flight until confirmed");
            q.spool().unwrap().wait_confirm(confirm).await.unwrap();
            q.complete("b");
            // c: deleted after a set.
            stored(q.try_local("c", &set(b"x"), 0, &fits, &c));
            let del = KeyOp::Delete { compare_cas: None };
            let t = stored(q.try_local("c", &del, 0, &fits, &c));
            q.wait_ack(Some(t)).await.unwrap();
            // Crash: the queue (and spool) go away with a=3 and c's delete
            // unconfirmed.
        }
        let (spool, recovered) = open();
        let left: Vec<(String, Option<Vec<u8>>)> = recovered
            .writes
            .iter()
            .map(|w| {
                let v = match &w.op {
                    QueuedOp::Put(item) => Some(item.value.to_vec()),
                    QueuedOp::Delete => None,
                };
                (w.id.clone(), v)
            })
            .collect();
        assert_eq!(
            left,
            vec![("a".into(), Some(b"3".to_vec())), ("c".into(), None)]
        );
        // Replayed into a queue: reads see them, later writes queue behind.
        let q = queue(100, Some(spool));
        assert_eq!(q.replay(recovered.writes), 2);
        let read = KeyOp::Read { touch: None };
        match q.try_local("a", &read, 0, &fits, &c) {
            Local::Done(Outcome::Hit { item, .. }, None) => assert_eq!(&item.value[..], b"3"),
            _ => panic!("replayed write not visible"),
        }
        assert!(matches!(
            q.try_local("c", &read, 0, &fits, &c),
            Local::Done(Outcome::Miss, None)
        ));
        assert_eq!(q.depth().0, 2);
        let job = q.take_ready().unwrap();
        assert_eq!(job.id, "a");
        stored(q.try_local("a", &set(b"4"), 0, &fits, &c));
        let job = q.take_ready().unwrap();
        assert_eq!(job.id, "c");
        assert!(q.landed("a").is_none());
        let t = q.landed("c").unwrap();
        q.spool().unwrap().wait_confirm(t).await.unwrap();
        q.complete("c");
        let job = q.take_ready().unwrap();
        let QueuedOp::Put(item) = job.op else {
            panic!()
        };
        assert_eq!(&item.value[..], b"4");
        let t = q.landed("a").unwrap();
        q.spool().unwrap().wait_confirm(t).await.unwrap();
        q.complete("a");
        assert_eq!(q.depth(), (0, 0, 0));
        assert!(q.spool().unwrap().flush_blocking(Duration::from_secs(5)));
        assert_eq!(q.spool().unwrap().stats().segments, 0);
    }
}
