//! The write-behind spool through the store: writes land and the spool
//! empties, a full spool refuses with a clear error, and bad options are
//! refused. (The kill -9 test is tests/test_spool_crash.py: a crash needs a
//! process to kill.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{cmd, config, free_port, run, shared};
use memroute_dynamo::{DynamoConfig, DynamoStore, FsyncPolicy, SpoolConfig, WriteMode};

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "memroute-spool-it-{tag}-{}-{}",
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

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("spool-"))
                .count()
        })
        .unwrap_or(0)
}

fn spooled(tag: &str, dir: &TempDir, fsync: FsyncPolicy) -> DynamoConfig {
    DynamoConfig {
        spool: Some(SpoolConfig {
            fsync,
            ..SpoolConfig::new(&dir.0)
        }),
        ..config(shared(), tag, WriteMode::Behind)
    }
}

#[tokio::test]
async fn spooled_writes_land_and_the_spool_empties() {
    for fsync in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval(Duration::from_millis(20)),
        FsyncPolicy::Never,
    ] {
        let dir = TempDir::new("land");
        let s = DynamoStore::new(spooled("spool_land", &dir, fsync)).unwrap();
        for i in 0..50 {
            let v = format!("v{i}");
            assert_eq!(
                run(
                    &s,
                    &format!("set k{} 0 0 {}", i % 10, v.len()),
                    v.as_bytes()
                )
                .await,
                "STORED\r\n"
            );
        }
        assert_eq!(cmd(&s, "delete k0").await, "DELETED\r\n");
        assert_eq!(cmd(&s, "get k1").await, "VALUE k1 0 3\r\nv41\r\nEND\r\n");
        let report = {
            let s = s.clone();
            tokio::task::spawn_blocking(move || s.drain_blocking(Duration::from_secs(30)))
                .await
                .unwrap()
        };
        assert!(report.drained && report.spooled, "{report:?}");
        let stats = s.stats();
        let spool = stats.spool.clone().unwrap();
        assert_eq!(spool.records, 51, "{fsync:?} {stats:?}");
        assert!(spool.confirms >= 10, "{fsync:?} {stats:?}");
        assert_eq!((spool.bytes, spool.segments), (0, 0), "{fsync:?} {stats:?}");
        assert_eq!(segments(&dir.0), 0);
        let names: Vec<&str> = stats.fields().iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"spool_replayed") && names.contains(&"spool_corrupt"));
        let table = DynamoStore::new(DynamoConfig {
            write_mode: WriteMode::Through,
            spool: None,
            create_table: false,
            ..s.config().clone()
        })
        .unwrap();
        assert_eq!(cmd(&table, "get k0").await, "END\r\n");
        assert_eq!(
            cmd(&table, "get k9").await,
            "VALUE k9 0 3\r\nv49\r\nEND\r\n"
        );
    }
}

/// Nothing lands (no DynamoDB at the endpoint) and the spool fills: writes
/// wait for the backpressure timeout, then are refused, never acknowledged.
#[tokio::test]
async fn a_full_spool_refuses_writes() {
    let dir = TempDir::new("full");
    let s = DynamoStore::new(DynamoConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", free_port())),
        create_table: false,
        max_attempts: 1,
        backpressure_timeout: Duration::from_millis(200),
        spool: Some(SpoolConfig {
            max_bytes: memroute_dynamo::MIN_SPOOL_MAX_BYTES,
            ..SpoolConfig::new(&dir.0)
        }),
        ..config(shared(), "spool_full", WriteMode::Behind)
    })
    .unwrap();
    let value = vec![b'x'; 20_000];
    let mut stored = 0;
    let refusal = loop {
        let reply = run(&s, &format!("set k{stored} 0 0 {}", value.len()), &value).await;
        if reply != "STORED\r\n" {
            break reply;
        }
        stored += 1;
        assert!(stored < 100, "the spool never filled");
    };
    assert_eq!(refusal, "SERVER_ERROR write-behind spool full\r\n");
    assert!(
        (45..=52).contains(&stored),
        "{stored} writes of 20 KB in 1 MiB"
    );
    assert_eq!(s.stats().spool_rejected, 1);
    // Refused means not queued either.
    assert_eq!(s.stats().queue_depth, stored as u64);
}

#[test]
fn bad_spool_options_are_refused() {
    let dir = TempDir::new("bad");
    let through = DynamoConfig {
        spool: Some(SpoolConfig::new(&dir.0)),
        ..config(shared(), "spool_through", WriteMode::Through)
    };
    let err = DynamoStore::new(through).unwrap_err().to_string();
    assert!(err.contains("spool needs write = \"behind\""), "{err}");
    let a = DynamoStore::new(spooled("spool_a", &dir, FsyncPolicy::Always)).unwrap();
    let err = DynamoStore::new(spooled("spool_b", &dir, FsyncPolicy::Always))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is already used by the DynamoDB pool of table t_spool_a"),
        "{err}"
    );
    drop(a);
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    let on_file = DynamoConfig {
        spool: Some(SpoolConfig::new(&file)),
        ..config(shared(), "spool_file", WriteMode::Behind)
    };
    let err = DynamoStore::new(on_file).unwrap_err().to_string();
    assert!(err.contains("is not a directory"), "{err}");
    let interval = DynamoConfig {
        spool: Some(SpoolConfig {
            fsync: FsyncPolicy::Interval(Duration::ZERO),
            ..SpoolConfig::new(&dir.0)
        }),
        ..config(shared(), "spool_interval", WriteMode::Behind)
    };
    let err = DynamoStore::new(interval).unwrap_err().to_string();
    assert!(err.contains("spool_fsync interval"), "{err}");
}
