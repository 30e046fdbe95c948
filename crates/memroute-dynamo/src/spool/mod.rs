//! The write-behind spool: an append-only log on local disk that keeps
//! acknowledged writes across a crash of the process until DynamoDB has
//! them.
//!
//! - **Append** (request path, under the queue's lock): a write is encoded
//!   into the pending in-memory batch and gets a [`Ticket`]; the client is
//!   answered once the batch holding it is written (and, with
//!   `fsync = always`, synced). One writer thread does a `write(2)` per
//!   batch and the `fdatasync`s: many writes per system call (group commit),
//!   and no tokio worker ever blocks on the disk.
//! - **Settle**: every key has at most one unsettled record, its latest.
//!   A record is settled when a later record of the same key is appended
//!   (replay only ever needs a key's last record) or when DynamoDB has it
//!   and a confirm record saying so is on disk. A segment file is deleted
//!   once it and every older segment hold only settled records (prefix
//!   trimming, so a confirm never outlives the segments before it... and
//!   no key's older record outlives its newer one).
//! - **Replay** (at open): for every key, its last record in the log,
//!   unless a confirm names it. Reading stops at the first torn or corrupt
//!   record of a segment (reported, counted, never replayed).
//!
//! Segment files are `spool-<20-digit id>.log`; the directory also holds
//! `LOCK` (the process that owns the spool) and `TABLE` (the table its
//! writes are for: a spool is never replayed into another table).

pub mod format;
mod lock;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::behind::QueuedOp;
use format::{Record, Tail};

/// Default [`SpoolConfig::max_bytes`]: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// The smallest `max_bytes` accepted.
pub const MIN_SPOOL_MAX_BYTES: u64 = 1 << 20;

/// When the spool calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// After every batch, before its writes are acknowledged: an
    /// acknowledged write survives a power loss.
    #[default]
    Always,
    /// At most this long after a batch is written; writes are acknowledged
    /// once written. A power loss can lose up to this much of the latest
    /// acknowledged writes; a process crash loses none.
    Interval(Duration),
    /// Never (the kernel writes back when it likes); writes are
    /// acknowledged once written. Survives a process crash, not a power
    /// loss.
    Never,
}

/// Configuration of a pool's spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The directory of the spool's files (created if missing). One pool
    /// per directory.
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Bound on the spool's files. A write that does not fit waits (the
    /// pool's `backpressure_timeout`) for settled segments to be deleted,
    /// then is refused with `SERVER_ERROR write-behind spool full`.
    pub max_bytes: u64,
    /// A segment file is closed and a new one started past this size;
    /// 0 = `max_bytes / 16`, within 64 KiB..64 MiB.
    pub segment_bytes: u64,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
            max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            segment_bytes: 0,
        }
    }

    fn segment_bytes(&self) -> u64 {
        if self.segment_bytes > 0 {
            return self.segment_bytes;
        }
        (self.max_bytes / 16).clamp(64 << 10, 64 << 20)
    }
}

/// Where a write record is: its segment and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub segment: u64,
    pub seq: u64,
}

/// The batch a record went into; wait on it with [`Spool::wait_ack`] or
/// [`Spool::wait_confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Why [`Spool::append`] did not take a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_bytes` reached: wait for segments to be trimmed.
    Full,
    /// A write or sync failed earlier: the spool takes nothing more.
    Failed,
}

/// A write found in the spool at open that DynamoDB has not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub id: String,
    pub op: QueuedOp,
    pub version: u64,
    pub pos: Pos,
}

/// Counters and gauges of a spool, for `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Write records appended (each acknowledged write that was spooled).
    pub records: u64,
    /// Confirm records appended (DynamoDB has the key's latest write).
    pub confirms: u64,
    /// `write(2)` batches.
    pub batches: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Writes replayed into the queue at start.
    pub replayed: u64,
    /// Segments whose end was torn or corrupt at start (their bad tail was
    /// not replayed; see the log).
    pub corrupt: u64,
    /// Write or sync errors (after one, the spool refuses writes).
    pub errors: u64,
    /// Segment files deleted.
    pub trimmed: u64,
    /// Bytes of segment files now.
    pub bytes: u64,
    /// Segment files now.
    pub segments: u64,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    confirms: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    replayed: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
    trimmed: AtomicU64,
}

/// What the writer thread has done, for waiters.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Batches up to this generation are written (`write(2)` returned).
    written: u64,
    /// ... and synced.
    synced: u64,
    /// Flush requests served.
    flushed: u64,
    /// A write or sync failed: batches after `written`/`synced` never will.
    failed: bool,
}

struct Segment {
    id: u64,
    bytes: u64,
    /// Unsettled write records in it.
    live: u64,
    /// Chosen for deletion (waits for the sync covering what settled it).
    doomed: bool,
}

struct Chunk {
    segment: u64,
    bytes: Vec<u8>,
}

struct State {
    pending: Vec<Chunk>,
    /// Generation of the pending batch (tickets handed out now).
    gen: u64,
    /// Oldest first; the active one (if any) is the last.
    segments: VecDeque<Segment>,
    active: Option<u64>,
    next_segment: u64,
    next_seq: u64,
    total_bytes: u64,
    writer_waiting: bool,
    trim: bool,
    flush_requests: u64,
    shutdown: bool,
    failed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    progress: watch::Sender<Progress>,
    /// Signalled when segments are deleted (writes waiting for room).
    space: Arc<Notify>,
    dir: PathBuf,
    fsync: FsyncPolicy,
    max_bytes: u64,
    segment_bytes: u64,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the writer thread if it sleeps.
    fn kick(&self, st: &mut State) {
        if st.writer_waiting {
            st.writer_waiting = false;
            self.wake.notify_one();
        }
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        segment_path(&self.dir, id)
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("spool-{id:020}.log"))
}

fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("spool-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Spool directories open in this process, and which pool has each.
fn open_dirs() -> &'static Mutex<HashMap<PathBuf, String>> {
    static DIRS: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    DIRS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Holds a directory in [`open_dirs`] until dropped.
struct Registered(PathBuf);

impl Registered {
    fn claim(dir: &Path, owner: &str) -> Result<Self, String> {
        let mut dirs = open_dirs().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = dirs.get(dir) {
            return Err(format!(
                "spool directory {} is already used by {other} (one pool per spool directory)",
                dir.display()
            ));
        }
        dirs.insert(dir.to_path_buf(), owner.to_owned());
        Ok(Registered(dir.to_path_buf()))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        open_dirs()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The writes to replay, oldest first (one per key).
    pub writes: Vec<Replayed>,
    /// Segment files read.
    pub segments: usize,
    /// Records read (writes and confirms).
    pub records: usize,
    /// One line per segment with a torn or corrupt tail.
    pub damage: Vec<String>,
}

/// An open spool. Dropping it writes what is pending, syncs, and stops the
/// writer thread.
pub struct Spool {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    _lock: lock::DirLock,
    _registered: Registered,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `config.dir` for `owner` (a
    /// description for errors) writing to `table`, reads what an earlier
    /// process left, deletes what needs no replay, and starts the writer
    /// thread. `space` is signalled whenever room is freed.
    pub fn open(
        config: &SpoolConfig,
        owner: &str,
        table: &str,
        space: Arc<Notify>,
    ) -> Result<(Spool, Recovered), String> {
        if config.dir.as_os_str().is_empty() {
            return Err("spool directory must not be empty".into());
        }
        if config.max_bytes < MIN_SPOOL_MAX_BYTES {
            return Err(format!(
                "spool_max_bytes must be at least {MIN_SPOOL_MAX_BYTES} (1 MiB)"
            ));
        }
        let shown = config.dir.display();
        match std::fs::metadata(&config.dir) {
            Ok(m) if !m.is_dir() => {
                return Err(format!("spool path {shown} is not a directory"));
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(&config.dir)
                .map_err(|e| format!("cannot create spool directory {shown}: {e}"))?,
        }
        let dir = std::fs::canonicalize(&config.dir)
            .map_err(|e| format!("spool directory {shown}: {e}"))?;
        let registered = Registered::claim(&dir, owner)?;
        let lock = lock::DirLock::acquire(&dir)?;
        let (state, recovered, counters) = recover(&dir)?;
        claim_table(&dir, table, !recovered.writes.is_empty())?;
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            progress,
            space,
            dir,
            fsync: config.fsync,
            max_bytes: config.max_bytes,
            segment_bytes: config.segment_bytes(),
            counters,
        });
        shared
            .counters
            .replayed
            .store(recovered.writes.len() as u64, Relaxed);
        // Segments nothing in them needs: gone now.
        trim_recovered(&shared);
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("memroute-spool".into())
                .spawn(move || Writer::new(shared).run())
                .map_err(|e| format!("cannot start the spool writer thread: {e}"))?
        };
        Ok((
            Spool {
                shared,
                writer: Some(writer),
                _lock: lock,
                _registered: registered,
            },
            recovered,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends a write record of `id` to the pending batch. `supersedes` is
    /// the key's previous unsettled record, settled by this one. Called
    /// under the queue's lock, so a key's records are in queue order.
    pub fn append(
        &self,
        id: &str,
        op: &QueuedOp,
        version: u64,
        supersedes: Option<Pos>,
    ) -> Result<(Pos, Ticket), Refused> {
        let len = format::write_len(id, op) as u64;
        let mut st = self.shared.lock();
        if st.failed {
            return Err(Refused::Failed);
        }
        let roll = self.needs_roll(&st, len);
        let grow = len + if roll { format::HEADER_LEN as u64 } else { 0 };
        if st.total_bytes > 0 && st.total_bytes + grow > self.shared.max_bytes {
            return Err(Refused::Full);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let segment = self.chunk_for(&mut st, roll);
        let chunk = st.pending.last_mut().map(|c| &mut c.bytes);
        if let Some(bytes) = chunk {
            format::encode_write(bytes, seq, version, id, op);
        }
        if let Some(seg) = st.segments.back_mut() {
            seg.bytes += len;
            seg.live += 1;
        }
        st.total_bytes += len;
        if let Some(old) = supersedes {
            settle_locked(&self.shared, &mut st, old);
        }
        let ticket = Ticket(st.gen);
        self.shared.kick(&mut st);
        drop(st);
        self.shared.counters.records.fetch_add(1, Relaxed);
        Ok((Pos { segment, seq }, ticket))
    }

    /// Appends a record saying DynamoDB has the write at `pos` (the key's
    /// latest). Never refused for room: it lets room be freed.
    pub fn confirm(&self, pos: Pos) -> Result<Ticket, Refused> {
        let len = format::CONFIRM_LEN as u64;
        let mut st = self.shared.lock();
        if st.failed {
            return Err(Refused::Failed);
        }
        let roll = self.needs_roll(&st, len);
        self.chunk_for(&mut st, roll);
        if let Some(chunk) = st.pending.last_mut() {
            format::encode_confirm(&mut chunk.bytes, pos.seq);
        }
        if let Some(seg) = st.segments.back_mut() {
            seg.bytes += len;
        }
        st.total_bytes += len;
        let ticket = Ticket(st.gen);
        self.shared.kick(&mut st);
        drop(st);
        self.shared.counters.confirms.fetch_add(1, Relaxed);
        Ok(ticket)
    }

    /// The record at `pos` needs no replay any more (DynamoDB has it and
    /// the confirm is on disk, or a later record of the key superseded it).
    pub fn settle(&self, pos: Pos) {
        let mut st = self.shared.lock();
        settle_locked(&self.shared, &mut st, pos);
    }

    fn needs_roll(&self, st: &State, len: u64) -> bool {
        match (st.active, st.segments.back()) {
            (Some(_), Some(seg)) => {
                seg.bytes > format::HEADER_LEN as u64 && seg.bytes + len > self.shared.segment_bytes
            }
            _ => true,
        }
    }

    /// Makes the last pending chunk the active segment's, starting a new
    /// segment (and its header) if `roll`. Returns the segment id.
    fn chunk_for(&self, st: &mut State, roll: bool) -> u64 {
        if roll {
            let id = st.next_segment;
            st.next_segment += 1;
            st.active = Some(id);
            let mut bytes = Vec::with_capacity(4096);
            format::header(id, &mut bytes);
            st.segments.push_back(Segment {
                id,
                bytes: format::HEADER_LEN as u64,
                live: 0,
                doomed: false,
            });
            st.total_bytes += format::HEADER_LEN as u64;
            st.pending.push(Chunk { segment: id, bytes });
            return id;
        }
        let id = st.active.unwrap_or_default();
        if st.pending.last().map(|c| c.segment) != Some(id) {
            st.pending.push(Chunk {
                segment: id,
                bytes: Vec::with_capacity(4096),
            });
        }
        id
    }

    /// Whether the batch of `ticket` is already as durable as a reply
    /// needs (see [`Spool::wait_ack`]).
    pub fn acked(&self, ticket: Ticket) -> bool {
        let p = *self.shared.progress.borrow();
        let at = match self.shared.fsync {
            FsyncPolicy::Always => p.synced,
            _ => p.written,
        };
        at >= ticket.0
    }

    /// Waits until the batch of `ticket` is as durable as the fsync policy
    /// makes a write before it is acknowledged. `Err` if the spool failed
    /// first.
    pub async fn wait_ack(&self, ticket: Ticket) -> Result<(), Refused> {
        let synced = self.shared.fsync == FsyncPolicy::Always;
        self.wait(ticket, synced).await
    }

    /// Waits until a confirm record's batch is durable enough that a key's
    /// next write (or a write-through command) may follow it: synced,
    /// unless the policy is `never`.
    pub async fn wait_confirm(&self, ticket: Ticket) -> Result<(), Refused> {
        let synced = self.shared.fsync != FsyncPolicy::Never;
        self.wait(ticket, synced).await
    }

    async fn wait(&self, ticket: Ticket, synced: bool) -> Result<(), Refused> {
        let done = move |p: &Progress| {
            let at = if synced { p.synced } else { p.written };
            at >= ticket.0
        };
        if done(&self.shared.progress.borrow()) {
            return Ok(());
        }
        let mut rx = self.shared.progress.subscribe();
        let ok = match rx.wait_for(|p| done(p) || p.failed).await {
            Ok(p) => done(&p),
            Err(_) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Refused::Failed)
        }
    }

    /// Writes and syncs everything appended so far (whatever the policy;
    /// with `never`, the segment being written), closes the active segment
    /// and deletes every settled segment; blocks up to `timeout`. For
    /// graceful shutdown.
    pub fn flush_blocking(&self, timeout: Duration) -> bool {
        let want = {
            let mut st = self.shared.lock();
            st.flush_requests += 1;
            let want = st.flush_requests;
            self.shared.kick(&mut st);
            want
        };
        let deadline = Instant::now() + timeout;
        loop {
            let p = *self.shared.progress.borrow();
            if p.flushed >= want {
                return true;
            }
            if p.failed || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn stats(&self) -> SpoolStats {
        let (bytes, segments) = {
            let st = self.shared.lock();
            (st.total_bytes, st.segments.len() as u64)
        };
        let c = &self.shared.counters;
        SpoolStats {
            records: c.records.load(Relaxed),
            confirms: c.confirms.load(Relaxed),
            batches: c.batches.load(Relaxed),
            syncs: c.syncs.load(Relaxed),
            replayed: c.replayed.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
            errors: c.errors.load(Relaxed),
            trimmed: c.trimmed.load(Relaxed),
            bytes,
            segments,
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
            self.shared.kick(&mut st);
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn settle_locked(shared: &Shared, st: &mut State, pos: Pos) {
    let Ok(i) = st.segments.binary_search_by_key(&pos.segment, |s| s.id) else {
        return;
    };
    let seg = &mut st.segments[i];
    seg.live = seg.live.saturating_sub(1);
    if seg.live == 0 && st.active != Some(seg.id) && st.segments.iter().take(i).all(|s| s.doomed) {
        // The settled prefix grew: let the writer delete it.
        st.trim = true;
        shared.kick(st);
    }
}

/// Checks that the writes left in `dir` (if `pending`) are for `table`,
/// and records `table` as the spool's.
fn claim_table(dir: &Path, table: &str, pending: bool) -> Result<(), String> {
    let path = dir.join("TABLE");
    let recorded = std::fs::read_to_string(&path).ok();
    if let Some(other) = recorded.as_deref().map(str::trim_end) {
        if other == table {
            return Ok(());
        }
        if pending {
            return Err(format!(
                "spool directory {} holds writes for table {other:?}, not {table:?}: \
                 start that table's pool on it to replay them, or move the directory away",
                dir.display()
            ));
        }
    }
    let tmp = dir.join("TABLE.tmp");
    std::fs::write(&tmp, format!("{table}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("spool directory {} is not writable: {e}", dir.display()))
}

/// Reads every segment in `dir`: the state to continue from, the writes
/// to replay, and the counters so far.
fn recover(dir: &Path) -> Result<(State, Recovered, Counters), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list spool {}: {e}", dir.display()))?;
    let mut ids: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter_map(|e| segment_id(e.file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    let counters = Counters::default();
    let mut recovered = Recovered::default();
    // Per key, its last write record: (seq, segment, version, op).
    let mut last: HashMap<String, (u64, u64, u64, QueuedOp)> = HashMap::new();
    let mut confirmed: HashSet<u64> = HashSet::new();
    let mut segments = VecDeque::new();
    let mut max_seq = 0;
    let mut total = 0;
    for &id in &ids {
        let path = segment_path(dir, id);
        let data = std::fs::read(&path)
            .map_err(|e| format!("cannot read spool segment {}: {e}", path.display()))?;
        let len = data.len() as u64;
        let read = format::read_segment(&Bytes::from(data));
        recovered.segments += 1;
        recovered.records += read.records.len();
        let damage = match read.tail {
            Tail::Clean => None,
            Tail::Torn { offset } => Some(format!("torn record at byte {offset}")),
            Tail::Corrupt { offset, why } => Some(format!("{why} at byte {offset}")),
        };
        if read.id.is_some_and(|h| h != id) {
            recovered.damage.push(format!(
                "{}: header names another segment; ignored",
                path.display()
            ));
            counters.corrupt.fetch_add(1, Relaxed);
            segments.push_back(Segment {
                id,
                bytes: len,
                live: 0,
                doomed: false,
            });
            total += len;
            continue;
        }
        if let Some(what) = damage {
            recovered.damage.push(format!(
                "{}: {what}; the {} bytes from there on are not replayed",
                path.display(),
                len - read.good_len as u64
            ));
            counters.corrupt.fetch_add(1, Relaxed);
        }
        for record in read.records {
            match record {
                Record::Write {
                    seq,
                    version,
                    id: key,
                    op,
                } => {
                    max_seq = max_seq.max(seq);
                    last.insert(key, (seq, id, version, op));
                }
                Record::Confirm { seq } => {
                    max_seq = max_seq.max(seq);
                    confirmed.insert(seq);
                }
            }
        }
        segments.push_back(Segment {
            id,
            bytes: len,
            live: 0,
            doomed: false,
        });
        total += len;
    }
    let mut writes: Vec<Replayed> = last
        .into_iter()
        .filter(|(_, (seq, ..))| !confirmed.contains(seq))
        .map(|(key, (seq, segment, version, op))| Replayed {
            id: key,
            // A copy: a slice would keep its whole segment's bytes alive.
            op: match op {
                QueuedOp::Put(mut item) => {
                    item.value = Bytes::copy_from_slice(&item.value);
                    QueuedOp::Put(item)
                }
                QueuedOp::Delete => QueuedOp::Delete,
            },
            version,
            pos: Pos { segment, seq },
        })
        .collect();
    writes.sort_unstable_by_key(|w| w.pos.seq);
    for w in &writes {
        if let Ok(i) = segments.binary_search_by_key(&w.pos.segment, |s: &Segment| s.id) {
            segments[i].live += 1;
        }
    }
    recovered.writes = writes;
    let state = State {
        pending: Vec::new(),
        gen: 1,
        next_segment: ids.last().map_or(1, |last| last + 1),
        segments,
        active: None,
        next_seq: max_seq + 1,
        total_bytes: total,
        writer_waiting: false,
        trim: false,
        flush_requests: 0,
        shutdown: false,
        failed: false,
    };
    Ok((state, recovered, counters))
}

/// Deletes the settled prefix of segments found at open.
fn trim_recovered(shared: &Shared) {
    let mut st = shared.lock();
    while let Some(seg) = st.segments.front() {
        if seg.live > 0 {
            break;
        }
        let (id, bytes) = (seg.id, seg.bytes);
        if let Err(e) = std::fs::remove_file(shared.segment_path(id)) {
            tracing::warn!(dir = %shared.dir.display(), segment = id, error = %e, "cannot delete spool segment");
            break;
        }
        st.segments.pop_front();
        st.total_bytes -= bytes;
        shared.counters.trimmed.fetch_add(1, Relaxed);
    }
}

/// The writer thread: writes pending batches, syncs per the policy,
/// publishes progress, deletes settled segments.
struct Writer {
    shared: Arc<Shared>,
    /// The segment file being appended to.
    current: Option<(u64, File)>,
    /// Files closed since the last sync that still need one.
    dirty: Vec<File>,
    /// A segment file was created since the last sync.
    dir_dirty: bool,
    last_sync: Instant,
    progress: Progress,
    /// Segments to delete once the batch generation is durable.
    deferred: VecDeque<(u64, Vec<u64>)>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Self {
        Writer {
            shared,
            current: None,
            dirty: Vec::new(),
            dir_dirty: false,
            last_sync: Instant::now(),
            progress: Progress::default(),
            deferred: VecDeque::new(),
        }
    }

    fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        loop {
            let mut st = shared.lock();
            loop {
                if st.shutdown {
                    break;
                }
                if st.failed {
                    // Nothing more is written or deleted.
                    st.writer_waiting = true;
                    st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.writer_waiting = false;
                    continue;
                }
                if !st.pending.is_empty() || st.trim || st.flush_requests > self.progress.flushed {
                    break;
                }
                let unsynced = self.progress.synced < self.progress.written;
                match shared.fsync {
                    FsyncPolicy::Interval(every) if unsynced => {
                        let due = self.last_sync + every;
                        let now = Instant::now();
                        if now >= due {
                            break;
                        }
                        st.writer_waiting = true;
                        st = shared
                            .wake
                            .wait_timeout(st, due - now)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|p| p.into_inner().0);
                    }
                    _ => {
                        st.writer_waiting = true;
                        st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                }
                st.writer_waiting = false;
            }
            let chunks = std::mem::take(&mut st.pending);
            let batch = st.gen;
            if !chunks.is_empty() {
                st.gen += 1;
            }
            st.trim = false;
            let flush = st.flush_requests;
            let flushing = flush > self.progress.flushed;
            if flushing {
                // Close the active segment: when everything is settled,
                // nothing is left on disk.
                st.active = None;
            }
            let shutdown = st.shutdown;
            let failed = st.failed;
            let doomed = if failed { Vec::new() } else { doom(&mut st) };
            drop(st);
            if failed {
                return; // (shutting down)
            }
            if !chunks.is_empty() {
                if let Err(e) = self.write(chunks) {
                    self.fail("write", &e);
                    continue;
                }
                self.progress.written = batch;
                shared.counters.batches.fetch_add(1, Relaxed);
            }
            let unsynced = self.progress.synced < self.progress.written;
            let sync = unsynced
                && (flushing
                    || shutdown
                    || match shared.fsync {
                        FsyncPolicy::Always => true,
                        FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
                        FsyncPolicy::Never => false,
                    });
            if sync {
                if let Err(e) = self.sync() {
                    self.fail("sync", &e);
                    continue;
                }
                self.progress.synced = self.progress.written;
            }
            shared.progress.send_replace(self.progress);
            if !doomed.is_empty() {
                self.deferred.push_back((self.progress.written, doomed));
            }
            self.delete_durable();
            if flushing {
                // (After the deletions: a flushed spool holds only what
                // still needs a replay.)
                self.progress.flushed = flush;
                shared.progress.send_replace(self.progress);
            }
            if shutdown {
                return;
            }
        }
    }

    /// Writes each chunk to its segment file.
    fn write(&mut self, chunks: Vec<Chunk>) -> std::io::Result<()> {
        for chunk in chunks {
            if self.current.as_ref().map(|(id, _)| *id) != Some(chunk.segment) {
                let path = self.shared.segment_path(chunk.segment);
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                if let Some((_, old)) = self.current.replace((chunk.segment, file)) {
                    if self.shared.fsync != FsyncPolicy::Never {
                        self.dirty.push(old);
                    }
                }
                self.dir_dirty = true;
            }
            if let Some((_, file)) = self.current.as_mut() {
                file.write_all(&chunk.bytes)?;
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        for file in self.dirty.drain(..) {
            file.sync_data()?;
        }
        if let Some((_, file)) = &self.current {
            file.sync_data()?;
        }
        if self.dir_dirty {
            File::open(&self.shared.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        self.last_sync = Instant::now();
        self.shared.counters.syncs.fetch_add(1, Relaxed);
        Ok(())
    }

    /// A write or sync failed: the spool takes nothing more and deletes
    /// nothing more (what is on disk stays for the next start).
    fn fail(&mut self, what: &str, e: &std::io::Error) {
        tracing::error!(
            dir = %self.shared.dir.display(),
            error = %e,
            "write-behind spool {what} failed; the pool refuses writes until restarted"
        );
        self.shared.counters.errors.fetch_add(1, Relaxed);
        self.deferred.clear();
        let mut st = self.shared.lock();
        st.failed = true;
        st.pending.clear();
        drop(st);
        self.progress.failed = true;
        self.shared.progress.send_replace(self.progress);
        self.shared.space.notify_waiters();
    }

    /// Deletes the segments whose deletion is covered by a durable batch
    /// (the records that settled them are on disk as the policy promises).
    fn delete_durable(&mut self) {
        let durable = match self.shared.fsync {
            FsyncPolicy::Never => self.progress.written,
            _ => self.progress.synced,
        };
        let mut freed = false;
        while let Some((gen, _)) = self.deferred.front() {
            if *gen > durable {
                break;
            }
            let Some((_, ids)) = self.deferred.pop_front() else {
                break;
            };
            for id in ids {
                if self.current.as_ref().is_some_and(|(cur, _)| *cur == id) {
                    self.current = None;
                }
                let path = self.shared.segment_path(id);
                if let Err(e) = std::fs::remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete spool segment");
                    }
                }
                let mut st = self.shared.lock();
                if let Ok(i) = st.segments.binary_search_by_key(&id, |s| s.id) {
                    if let Some(seg) = st.segments.remove(i) {
                        st.total_bytes -= seg.bytes;
                    }
                }
                drop(st);
                self.shared.counters.trimmed.fetch_add(1, Relaxed);
                freed = true;
            }
        }
        if freed {
            self.shared.space.notify_waiters();
        }
    }
}

/// Marks the settled prefix of closed segments for deletion.
fn doom(st: &mut State) -> Vec<u64> {
    let active = st.active;
    let mut out = Vec::new();
    for seg in st.segments.iter_mut() {
        if seg.doomed {
            continue;
        }
        if seg.live > 0 || Some(seg.id) == active {
            break;
        }
        seg.doomed = true;
        out.push(seg.id);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
