//! The spool on its own: append, wait, settle, confirm, trim, reopen.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::item::Item;

/// A fresh directory, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "memroute-spool-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &TempDir, fsync: FsyncPolicy) -> SpoolConfig {
    SpoolConfig {
        fsync,
        ..SpoolConfig::new(&dir.0)
    }
}

fn open(config: &SpoolConfig) -> (Spool, Recovered) {
    Spool::open(config, "test pool", "table", Arc::new(Notify::new())).expect("open spool")
}

fn put(value: &str) -> QueuedOp {
    QueuedOp::Put(Item {
        value: Bytes::copy_from_slice(value.as_bytes()),
        flags: 3,
        expires: 0,
        cas: 0,
    })
}

fn value(op: &QueuedOp) -> Option<String> {
    match op {
        QueuedOp::Put(item) => Some(String::from_utf8_lossy(&item.value).into_owned()),
        QueuedOp::Delete => None,
    }
}

/// (key, value or None for a delete) of each replayed write, in order.
fn replayed(r: &Recovered) -> Vec<(String, Option<String>)> {
    r.writes
        .iter()
        .map(|w| (w.id.clone(), value(&w.op)))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| segment_id(e.ok()?.file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    ids
}

/// Appends like the queue does: each key's new record settles its last.
struct Keys<'a> {
    spool: &'a Spool,
    latest: HashMap<String, Pos>,
    version: u64,
}

impl<'a> Keys<'a> {
    fn new(spool: &'a Spool) -> Self {
        Keys {
            spool,
            latest: HashMap::new(),
            version: 1000,
        }
    }

    fn write(&mut self, key: &str, op: QueuedOp) -> Ticket {
        self.version += 1;
        let previous = self.latest.get(key).copied();
        let (pos, ticket) = self
            .spool
            .append(key, &op, self.version, previous)
            .expect("append");
        self.latest.insert(key.to_owned(), pos);
        ticket
    }

    /// DynamoDB has the key's latest write: confirm, wait, settle.
    async fn land(&mut self, key: &str) {
        let pos = self.latest.remove(key).expect("a write to land");
        let ticket = self.spool.confirm(pos).expect("confirm");
        self.spool
            .wait_confirm(ticket)
            .await
            .expect("confirm on disk");
        self.spool.settle(pos);
    }
}

#[tokio::test]
async fn replays_each_keys_last_unconfirmed_write() {
    let dir = TempDir::new("replay");
    let cfg = config(&dir, FsyncPolicy::Always);
    {
        let (spool, recovered) = open(&cfg);
        assert!(recovered.writes.is_empty());
        let mut keys = Keys::new(&spool);
        let mut last = None;
        for (k, v) in [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")] {
            last = Some(keys.write(k, put(v)));
        }
        keys.write("b", QueuedOp::Delete);
        let t = keys.write("d", put("1"));
        assert!(Some(t) >= last);
        spool.wait_ack(t).await.unwrap();
        // c landed: nothing to replay for it.
        keys.land("c").await;
        let s = spool.stats();
        assert_eq!((s.records, s.confirms), (6, 1));
        assert!(s.syncs >= 1, "{s:?}");
        // Dropped without confirming the rest: as if the process died
        // (the records were written and acknowledged).
    }
    let (spool, recovered) = open(&cfg);
    assert_eq!(
        replayed(&recovered),
        vec![
            ("a".into(), Some("2".into())),
            ("b".into(), None),
            ("d".into(), Some("1".into())),
        ]
    );
    assert!(recovered.damage.is_empty());
    assert_eq!(spool.stats().replayed, 3);
    // Versions and positions survive.
    assert!(recovered.writes.iter().all(|w| w.version > 1000));
    // The replayed writes land this time; a clean flush leaves nothing.
    for w in &recovered.writes {
        let t = spool.confirm(w.pos).unwrap();
        spool.wait_confirm(t).await.unwrap();
        spool.settle(w.pos);
    }
    assert!(spool.flush_blocking(Duration::from_secs(5)));
    assert_eq!(segment_files(&dir.0), Vec::<u64>::new());
    assert_eq!(spool.stats().bytes, 0);
    drop(spool);
    let (_spool, recovered) = open(&cfg);
    assert!(recovered.writes.is_empty());
    assert_eq!(recovered.segments, 0);
}

#[tokio::test]
async fn segments_roll_over_and_are_trimmed_once_settled() {
    let dir = TempDir::new("roll");
    let cfg = SpoolConfig {
        segment_bytes: 200,
        ..config(&dir, FsyncPolicy::Always)
    };
    let (spool, _) = open(&cfg);
    let mut keys = Keys::new(&spool);
    // One key rewritten: every record settles the one before.
    let mut t = None;
    for i in 0..100 {
        t = Some(keys.write("hot", put(&format!("value-{i:04}"))));
    }
    spool.wait_ack(t.unwrap()).await.unwrap();
    // (Settled segments are deleted after the batch that settled them is
    // synced: the flush waits for that.)
    assert!(spool.flush_blocking(Duration::from_secs(5)));
    // A record is 52 bytes: three per 200-byte segment.
    let files = segment_files(&dir.0);
    assert!(spool.stats().trimmed > 10, "{:?}", spool.stats());
    assert!(files.len() <= 3, "settled segments were kept: {files:?}");
    // A key never rewritten pins its segment (and every later one: the
    // spool is trimmed from the front).
    let t = keys.write("cold", put("pinned"));
    for i in 0..40 {
        keys.write("hot", put(&format!("again-{i:04}")));
    }
    spool.wait_ack(t).await.unwrap();
    assert!(spool.flush_blocking(Duration::from_secs(5)));
    let pinned = segment_files(&dir.0);
    assert!(pinned.len() >= 10, "{pinned:?}");
    keys.land("cold").await;
    keys.land("hot").await;
    assert!(spool.flush_blocking(Duration::from_secs(5)));
    assert_eq!(segment_files(&dir.0), Vec::<u64>::new());
    let s = spool.stats();
    assert_eq!((s.bytes, s.segments), (0, 0), "{s:?}");
}

#[tokio::test]
async fn torn_tail_is_reported_and_not_replayed() {
    let dir = TempDir::new("torn");
    let cfg = config(&dir, FsyncPolicy::Never);
    {
        let (spool, _) = open(&cfg);
        let mut keys = Keys::new(&spool);
        keys.write("a", put("kept"));
        let t = keys.write("b", put("cut short"));
        spool.wait_ack(t).await.unwrap();
    }
    let files = segment_files(&dir.0);
    assert_eq!(files.len(), 1);
    let path = segment_path(&dir.0, files[0]);
    let len = std::fs::metadata(&path).unwrap().len();
    // The process died in the middle of writing b's record.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (spool, recovered) = open(&cfg);
    assert_eq!(
        replayed(&recovered),
        vec![("a".into(), Some("kept".into()))]
    );
    assert_eq!(recovered.damage.len(), 1, "{:?}", recovered.damage);
    assert!(
        recovered.damage[0].contains("torn record"),
        "{:?}",
        recovered.damage
    );
    assert_eq!(spool.stats().corrupt, 1);
    // New writes go to a new segment, not after the torn tail.
    let mut keys = Keys::new(&spool);
    let t = keys.write("c", put("new"));
    spool.wait_ack(t).await.unwrap();
    assert_eq!(segment_files(&dir.0), vec![files[0], files[0] + 1]);
}

#[tokio::test]
async fn bit_flip_stops_its_segment_only() {
    let dir = TempDir::new("flip");
    let cfg = SpoolConfig {
        segment_bytes: 120,
        ..config(&dir, FsyncPolicy::Never)
    };
    {
        let (spool, _) = open(&cfg);
        let mut keys = Keys::new(&spool);
        let mut t = None;
        for k in ["k1", "k2", "k3", "k4", "k5", "k6"] {
            t = Some(keys.write(k, put(&format!("{k}-value"))));
        }
        spool.wait_ack(t.unwrap()).await.unwrap();
    }
    let files = segment_files(&dir.0);
    assert_eq!(files.len(), 3, "two records per segment: {files:?}");
    // Damage the second record of the first segment (its value).
    let path = segment_path(&dir.0, files[0]);
    let mut data = std::fs::read(&path).unwrap();
    let n = data.len();
    data[n - 2] ^= 0x10;
    std::fs::write(&path, data).unwrap();
    let (spool, recovered) = open(&cfg);
    let keys: Vec<String> = recovered.writes.iter().map(|w| w.id.clone()).collect();
    assert_eq!(keys, ["k1", "k3", "k4", "k5", "k6"]);
    assert!(recovered.damage[0].contains("checksum mismatch"));
    assert_eq!(spool.stats().corrupt, 1);
}

#[tokio::test]
async fn empty_and_foreign_files() {
    let dir = TempDir::new("empty");
    std::fs::create_dir_all(&dir.0).unwrap();
    // A segment created but never written, and files that are not ours.
    std::fs::write(segment_path(&dir.0, 7), b"").unwrap();
    std::fs::write(dir.0.join("notes.txt"), b"hello").unwrap();
    let (spool, recovered) = open(&config(&dir, FsyncPolicy::Always));
    assert!(recovered.writes.is_empty() && recovered.damage.is_empty());
    // The empty segment is trimmed; new ones are numbered after it.
    let mut keys = Keys::new(&spool);
    let t = keys.write("a", put("1"));
    spool.wait_ack(t).await.unwrap();
    assert_eq!(segment_files(&dir.0), vec![8]);
    assert!(dir.0.join("notes.txt").exists());
}

#[tokio::test]
async fn full_spool_refuses_until_segments_are_trimmed() {
    let dir = TempDir::new("full");
    let cfg = SpoolConfig {
        max_bytes: MIN_SPOOL_MAX_BYTES,
        segment_bytes: 64 << 10,
        ..config(&dir, FsyncPolicy::Always)
    };
    let space = Arc::new(Notify::new());
    let (spool, _) = Spool::open(&cfg, "test pool", "table", Arc::clone(&space)).unwrap();
    let mut keys = Keys::new(&spool);
    let big = "x".repeat(10_000);
    let mut n = 0;
    let refused = loop {
        let key = format!("k{n}");
        match spool.append(&key, &put(&big), 1, None) {
            Ok((pos, _)) => {
                keys.latest.insert(key, pos);
                n += 1;
            }
            Err(e) => break e,
        }
        assert!(n < 200, "never full");
    };
    assert_eq!(refused, Refused::Full);
    assert!((90..=105).contains(&n), "{n} records of 10 KB in 1 MiB");
    // Confirms are never refused for room.
    let first = keys.latest["k0"];
    spool.confirm(first).unwrap();
    let freed = space.notified();
    tokio::pin!(freed);
    freed.as_mut().enable();
    for i in 0..n {
        keys.land(&format!("k{i}")).await;
    }
    tokio::time::timeout(Duration::from_secs(5), freed)
        .await
        .expect("room freed");
    assert!(spool.append("again", &put(&big), 2, None).is_ok());
}

#[test]
fn one_spool_per_directory() {
    let dir = TempDir::new("lock");
    let cfg = config(&dir, FsyncPolicy::Always);
    let (spool, _) = open(&cfg);
    let err = Spool::open(&cfg, "another pool", "table", Arc::new(Notify::new())).unwrap_err();
    assert!(err.contains("already used by test pool"), "{err}");
    // The same directory by another name.
    let other = SpoolConfig::new(dir.0.join("../").join(dir.0.file_name().unwrap()));
    let err = Spool::open(&other, "another pool", "table", Arc::new(Notify::new())).unwrap_err();
    assert!(err.contains("already used"), "{err}");
    drop(spool);
    let (spool, _) = open(&cfg);
    drop(spool);
    // A LOCK held by another live process (pid 1, with its start time).
    let one = std::fs::read_to_string("/proc/1/stat").unwrap();
    let started = one[one.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_owned();
    std::fs::write(dir.0.join("LOCK"), format!("1 {started}\n")).unwrap();
    let err = Spool::open(&cfg, "test pool", "table", Arc::new(Notify::new())).unwrap_err();
    assert!(err.contains("in use by process 1"), "{err}");
    // A LOCK left by a process that is gone is taken over.
    std::fs::write(dir.0.join("LOCK"), "1 0\n").unwrap();
    let (spool, _) = open(&cfg);
    drop(spool);
    assert!(!dir.0.join("LOCK").exists(), "LOCK removed on close");
}

#[test]
fn bad_directories_are_refused() {
    let dir = TempDir::new("bad");
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let space = || Arc::new(Notify::new());
    let err = Spool::open(&SpoolConfig::new(&file), "p", "table", space()).unwrap_err();
    assert!(err.contains("is not a directory"), "{err}");
    let err = Spool::open(&SpoolConfig::new(file.join("sub")), "p", "table", space()).unwrap_err();
    assert!(err.contains("cannot create spool directory"), "{err}");
    let err = Spool::open(
        &SpoolConfig::new("/proc/memroute-spool"),
        "p",
        "table",
        space(),
    )
    .unwrap_err();
    assert!(err.contains("cannot create spool directory"), "{err}");
    let err = Spool::open(&SpoolConfig::new(""), "p", "table", space()).unwrap_err();
    assert!(err.contains("must not be empty"), "{err}");
    let small = SpoolConfig {
        max_bytes: 1000,
        ..SpoolConfig::new(&dir.0)
    };
    let err = Spool::open(&small, "p", "table", space()).unwrap_err();
    assert!(err.contains("at least"), "{err}");
}

#[tokio::test]
async fn interval_policy_acks_before_the_sync() {
    let dir = TempDir::new("interval");
    let cfg = config(&dir, FsyncPolicy::Interval(Duration::from_millis(300)));
    let (spool, _) = open(&cfg);
    let mut keys = Keys::new(&spool);
    let start = Instant::now();
    let t = keys.write("a", put("1"));
    spool.wait_ack(t).await.unwrap();
    let acked = start.elapsed();
    let pos = keys.latest["a"];
    let c = spool.confirm(pos).unwrap();
    spool.wait_confirm(c).await.unwrap();
    let confirmed = start.elapsed();
    assert!(acked < Duration::from_millis(200), "{acked:?}");
    assert!(confirmed >= Duration::from_millis(250), "{confirmed:?}");
    assert!(spool.stats().syncs >= 1);
}

#[tokio::test]
async fn a_failed_write_refuses_everything_after() {
    let dir = TempDir::new("fail");
    let cfg = config(&dir, FsyncPolicy::Always);
    let (spool, _) = open(&cfg);
    // The first segment's file cannot be created.
    std::fs::create_dir(segment_path(&spool.shared.dir, 1)).unwrap();
    let mut keys = Keys::new(&spool);
    let t = keys.write("a", put("1"));
    assert_eq!(spool.wait_ack(t).await, Err(Refused::Failed));
    assert_eq!(
        spool.append("b", &put("2"), 5, None).unwrap_err(),
        Refused::Failed
    );
    assert_eq!(spool.stats().errors, 1);
    assert!(!spool.flush_blocking(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_spool_is_replayed_into_its_own_table_only() {
    let dir = TempDir::new("table");
    let cfg = config(&dir, FsyncPolicy::Always);
    let open_for = |table: &str| Spool::open(&cfg, "test pool", table, Arc::new(Notify::new()));
    {
        let (spool, _) = open_for("first").unwrap();
        let t = Keys::new(&spool).write("a", put("1"));
        spool.wait_ack(t).await.unwrap();
    }
    let err = open_for("second").unwrap_err();
    assert!(
        err.contains("holds writes for table \"first\", not \"second\""),
        "{err}"
    );
    // Once nothing is left to replay, the directory can serve another
    // table.
    {
        let (spool, recovered) = open_for("first").unwrap();
        let w = &recovered.writes[0];
        let t = spool.confirm(w.pos).unwrap();
        spool.wait_confirm(t).await.unwrap();
        spool.settle(w.pos);
    }
    let (_spool, recovered) = open_for("second").unwrap();
    assert!(recovered.writes.is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.0.join("TABLE")).unwrap(),
        "second\n"
    );
}
