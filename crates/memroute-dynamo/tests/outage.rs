//! DynamoDB Local going away: acknowledged writes survive a restart, and a
//! full queue refuses (never acknowledges) writes.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cmd, free_port, run, DdbLocal};
use memroute_dynamo::{DynamoConfig, DynamoStore, WriteMode};

/// A fresh directory for `-dbPath`, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "memroute-ddb-{tag}-{}-{}",
            std::process::id(),
            common::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn outage_config(ddb: &DdbLocal, tag: &str) -> DynamoConfig {
    DynamoConfig {
        max_attempts: 2,
        operation_timeout: Some(Duration::from_secs(2)),
        ..common::config(ddb, tag, WriteMode::Behind)
    }
}

/// A store that notices an outage quickly (2 s per operation). On a loaded
/// machine DynamoDB Local can take longer than that to create the table,
/// which is not the outage under test: creating the store is retried.
fn outage_store(config: DynamoConfig) -> Arc<DynamoStore> {
    let mut attempts = 0;
    loop {
        match DynamoStore::new(config.clone()) {
            Ok(store) => return store,
            Err(e) if attempts < 10 => {
                attempts += 1;
                eprintln!("creating the store failed ({e}); retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("creating the store: {e}"),
        }
    }
}

#[test]
fn acknowledged_writes_survive_a_dynamodb_restart() {
    let dir = TempDir::new("restart");
    let port = free_port();
    let mut ddb = DdbLocal::persistent(port, &dir.0);
    let s = outage_store(outage_config(&ddb, "restart"));
    const KEYS: usize = 150;
    let acked: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; KEYS]));
    let writer = {
        let (s, acked) = (s.clone(), acked.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            // Two rounds over every key, spread over ~3 s, so writes are
            // queued before, during and after the outage.
            for round in 0..2 {
                for k in 0..KEYS {
                    let value = format!("r{round}-{k}");
                    let line = format!("set key{k} 0 0 {}", value.len());
                    let reply = rt.block_on(run(&s, &line, value.as_bytes()));
                    assert_eq!(reply, "STORED\r\n");
                    acked.lock().unwrap()[k] = Some(value);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    ddb.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        s.stats().queue_depth > 0,
        "writes should be waiting while DynamoDB is down"
    );
    let ddb = DdbLocal::persistent(port, &dir.0);
    eprintln!("DynamoDB Local down for {:?}", down.elapsed());
    writer.join().expect("writer");
    let report = s.drain_blocking(Duration::from_secs(60));
    assert!(report.drained, "{report:?}");
    let stats = s.stats();
    eprintln!("{stats:?}");
    assert!(stats.retried > 0, "the outage should have caused retries");
    assert_eq!(stats.failed, 0);
    // Every key holds its last acknowledged value.
    let table = DynamoStore::new(DynamoConfig {
        write_mode: WriteMode::Through,
        create_table: false,
        ..s.config().clone()
    })
    .unwrap();
    let rt = runtime();
    let acked = acked.lock().unwrap();
    for (k, value) in acked.iter().enumerate() {
        let value = value.as_ref().expect("every write was acknowledged");
        let reply = rt.block_on(cmd(&table, &format!("get key{k}")));
        assert_eq!(
            reply,
            format!("VALUE key{k} 0 {}\r\n{value}\r\nEND\r\n", value.len()),
            "key{k} lost its acknowledged write"
        );
    }
    drop(ddb);
}

#[test]
fn full_queue_refuses_writes_after_backpressure_timeout() {
    let dir = TempDir::new("backpressure");
    let port = free_port();
    let mut ddb = DdbLocal::persistent(port, &dir.0);
    let s = outage_store(DynamoConfig {
        queue_max_keys: 3,
        backpressure_timeout: Duration::from_millis(300),
        ..outage_config(&ddb, "backpressure")
    });
    let rt = runtime();
    assert_eq!(rt.block_on(run(&s, "set k0 0 0 1", b"0")), "STORED\r\n");
    assert!(s.drain_blocking(Duration::from_secs(10)).drained);
    ddb.stop();
    for k in 1..=3 {
        let line = format!("set k{k} 0 0 1");
        assert_eq!(rt.block_on(run(&s, &line, b"1")), "STORED\r\n");
    }
    // A fourth key does not fit: refused after the timeout, not acked.
    let started = Instant::now();
    assert_eq!(
        rt.block_on(run(&s, "set k4 0 0 1", b"1")),
        "SERVER_ERROR out of memory storing object\r\n"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Writes to keys already queued still coalesce and are acknowledged.
    assert_eq!(rt.block_on(run(&s, "set k2 0 0 1", b"2")), "STORED\r\n");
    assert_eq!(
        rt.block_on(cmd(&s, "get k4")).as_str(),
        "SERVER_ERROR backend failure\r\n"
    );
    let stats = s.stats();
    assert_eq!(stats.rejected, 1);
    assert_eq!(stats.queue_depth, 3);
    // Nothing drains while DynamoDB is down.
    let report = s.drain_blocking(Duration::from_millis(300));
    assert!(!report.drained);
    assert_eq!(report.remaining_keys, 3);
    // Back up: the acknowledged writes land, the refused one does not.
    let ddb = DdbLocal::persistent(port, &dir.0);
    assert!(s.drain_blocking(Duration::from_secs(30)).drained);
    assert_eq!(
        rt.block_on(cmd(&s, "get k1 k2 k3 k4")),
        "VALUE k1 0 1\r\n1\r\nVALUE k2 0 1\r\n2\r\nVALUE k3 0 1\r\n1\r\nEND\r\n"
    );
    drop(ddb);
}
