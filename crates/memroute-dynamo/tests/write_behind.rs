//! Write-behind semantics and the per-key ordering torture (both modes).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cmd, config, run, shared, store};
use memroute_dynamo::sdk_client;
use memroute_dynamo::{BehindWriter, DynamoConfig, DynamoStore, WriteMode};

/// A write-through store on the same table, to see what DynamoDB holds.
fn reader(of: &DynamoStore) -> Arc<DynamoStore> {
    DynamoStore::new(DynamoConfig {
        write_mode: WriteMode::Through,
        batch_writes: false,
        create_table: false,
        ..of.config().clone()
    })
    .unwrap()
}

#[tokio::test]
async fn queued_writes_read_your_writes_and_land() {
    let s = store(shared(), "wb", WriteMode::Behind);
    let table = reader(&s);
    assert_eq!(run(&s, "set a 4 0 2", b"v1").await, "STORED\r\n");
    // Answered from the queue, before or after it lands.
    assert_eq!(cmd(&s, "get a").await, "VALUE a 4 2\r\nv1\r\nEND\r\n");
    assert_eq!(run(&s, "set a 4 0 2", b"v2").await, "STORED\r\n");
    assert_eq!(
        cmd(&s, "get a nope a").await,
        "VALUE a 4 2\r\nv2\r\nVALUE a 4 2\r\nv2\r\nEND\r\n"
    );
    // delete of a queued item is answered from the queue.
    assert_eq!(cmd(&s, "delete a").await, "DELETED\r\n");
    assert_eq!(cmd(&s, "get a").await, "END\r\n");
    assert_eq!(cmd(&s, "delete a").await, "NOT_FOUND\r\n");
    assert_eq!(run(&s, "set a 4 0 2", b"v3").await, "STORED\r\n");
    assert_eq!(cmd(&s, "touch a 1000").await, "TOUCHED\r\n");
    let mg = cmd(&s, "mg a t v").await;
    assert!(
        mg.starts_with("VA 2 t1000") || mg.starts_with("VA 2 t999"),
        "{mg}"
    );
    // State-dependent commands wait for the key's queued writes, then run
    // against the table.
    assert_eq!(run(&s, "add a 0 0 1", b"x").await, "NOT_STORED\r\n");
    assert_eq!(run(&s, "append a 0 0 1", b"!").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get a").await, "VALUE a 4 3\r\nv3!\r\nEND\r\n");
    assert_eq!(cmd(&table, "get a").await, "VALUE a 4 3\r\nv3!\r\nEND\r\n");
    assert_eq!(run(&s, "set n 0 0 1", b"5").await, "STORED\r\n");
    assert_eq!(cmd(&s, "incr n 10").await, "15\r\n");
    let gets = cmd(&s, "gets n").await;
    let cas: u64 = gets
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        run(&s, &format!("cas n 0 0 1 {cas}"), b"7").await,
        "STORED\r\n"
    );
    // A set right after a state-dependent command is ordered after it.
    assert_eq!(run(&s, "set n 0 0 1", b"9").await, "STORED\r\n");
    // delete / touch of a key with nothing queued go to the table.
    assert_eq!(cmd(&s, "delete cold").await, "NOT_FOUND\r\n");
    assert_eq!(cmd(&s, "touch cold 10").await, "NOT_FOUND\r\n");
    assert_eq!(cmd(&s, "gat 10 cold").await, "END\r\n");
    // Oversized values are refused before queueing.
    let huge = common::filler(400 * 1024);
    assert_eq!(
        run(&s, &format!("set a 0 0 {}", huge.len()), &huge).await,
        "SERVER_ERROR object too large for cache\r\n"
    );
    let report = s.drain_blocking(Duration::from_secs(20));
    assert!(report.drained, "{report:?}");
    assert_eq!(
        cmd(&table, "get a n").await,
        "VALUE a 4 3\r\nv3!\r\nVALUE n 0 1\r\n9\r\nEND\r\n"
    );
    let stats = s.stats();
    assert_eq!(
        (stats.queue_depth, stats.queue_bytes, stats.in_flight),
        (0, 0, 0)
    );
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.written + stats.coalesced, stats.queued, "{stats:?}");
    assert!(stats.queue_hits >= 3);
    // Meta set in set mode is queued too; with C it is write-through.
    assert_eq!(
        run(&s, "ms m 1 F2 c", b"m").await.split(' ').next(),
        Some("HD")
    );
    assert_eq!(cmd(&s, "mg m v f").await, "VA 1 f2\r\nm\r\n");
    assert_eq!(run(&s, "ms m 1 C1", b"x").await, "EX\r\n");
    assert_eq!(cmd(&s, "md m").await, "HD\r\n");
    assert_eq!(cmd(&s, "mg m").await, "EN\r\n");
    assert!(s.drain_blocking(Duration::from_secs(20)).drained);
    assert_eq!(cmd(&table, "mg m").await, "EN\r\n");
}

/// One acknowledged write of the torture: when it started, when it was
/// acknowledged (both from one global sequence), and its value.
#[derive(Clone, Debug)]
struct Acked {
    start: u64,
    ack: u64,
    value: String,
}

/// Many tasks on several threads, each with its own runtime, set a few keys
/// with increasing values. Afterwards the table must hold, for every key,
/// a value that no acknowledged write of that key followed: the final
/// value's write must not have been acknowledged before any other write of
/// the key started. (With no overlap that is exactly the last acknowledged
/// write; overlapping writes may land in either order.)
fn torture(config: DynamoConfig, threads: usize, tasks: usize, writes: usize) {
    const KEYS: usize = 8;
    let (mode, batched) = (config.write_mode, config.batch_writes);
    let s = DynamoStore::new(config).expect("store");
    let seq = Arc::new(AtomicU64::new(0));
    let log: Arc<Mutex<HashMap<String, Vec<Acked>>>> = Arc::default();
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (s, seq, log) = (s.clone(), seq.clone(), log.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for task in 0..tasks {
                        let (s, seq, log) = (s.clone(), seq.clone(), log.clone());
                        set.spawn(async move {
                            for i in 0..writes {
                                let key = format!("k{}", (t * 7 + task * 3 + i) % KEYS);
                                let value = format!("t{t}-{task}-{i}");
                                let line = format!("set {key} 0 0 {}", value.len());
                                let start = seq.fetch_add(1, Ordering::SeqCst);
                                let reply = run(&s, &line, value.as_bytes()).await;
                                let ack = seq.fetch_add(1, Ordering::SeqCst);
                                assert_eq!(reply, "STORED\r\n");
                                log.lock().unwrap().entry(key).or_default().push(Acked {
                                    start,
                                    ack,
                                    value,
                                });
                                // Spread the writes so that many land (rather
                                // than all coalescing) while others queue.
                                if i % 2 == 0 {
                                    tokio::time::sleep(Duration::from_millis(15)).await;
                                } else {
                                    tokio::task::yield_now().await;
                                }
                            }
                        });
                    }
                    while let Some(r) = set.join_next().await {
                        r.expect("torture task");
                    }
                });
            })
        })
        .collect();
    for h in handles {
        h.join().expect("torture thread");
    }
    let report = s.drain_blocking(Duration::from_secs(60));
    assert!(report.drained, "{report:?}");
    let elapsed = started.elapsed();
    let table = reader(&s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = log.lock().unwrap();
    let total: usize = log.values().map(Vec::len).sum();
    assert_eq!(total, threads * tasks * writes);
    for (key, writes) in log.iter() {
        let reply = rt.block_on(cmd(&table, &format!("get {key}")));
        let stored = reply
            .lines()
            .nth(1)
            .unwrap_or_else(|| panic!("{key} lost: {reply:?}"));
        let last = writes.iter().max_by_key(|w| w.ack).unwrap();
        let winner = writes
            .iter()
            .find(|w| w.value == stored)
            .unwrap_or_else(|| panic!("{key}: {stored} was never acknowledged"));
        let later: Vec<&Acked> = writes.iter().filter(|w| w.start > winner.ack).collect();
        assert!(
            later.is_empty(),
            "{key}: table holds {winner:?} but {} writes started after it was acknowledged \
             (last acknowledged: {last:?}, first later: {:?})",
            later.len(),
            later[0]
        );
        // The store's own view agrees with the table.
        let own = rt.block_on(cmd(&s, &format!("get {key}")));
        assert_eq!(own, reply);
    }
    let stats = s.stats();
    eprintln!("{mode:?}: {total} writes in {elapsed:?}: {stats:?}");
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.superseded, 0);
    if mode == WriteMode::Behind {
        assert!(stats.written > 20, "too few writes landed to test ordering");
        assert_eq!(stats.queued as usize, total);
        assert_eq!(stats.written + stats.coalesced, stats.queued);
        assert_eq!(batched, stats.batches > 0, "{stats:?}");
    }
}

#[test]
fn ordering_torture_write_behind() {
    torture(config(shared(), "torture", WriteMode::Behind), 4, 8, 60);
}

#[test]
fn ordering_torture_write_behind_batched() {
    let batched = DynamoConfig {
        batch_writes: true,
        ..config(shared(), "torture_batch", WriteMode::Behind)
    };
    torture(batched, 4, 8, 60);
}

#[test]
fn ordering_torture_write_through() {
    torture(config(shared(), "torture", WriteMode::Through), 3, 6, 25);
}

/// With `batch_writes`, a burst of writes to many keys goes out in
/// BatchWriteItem calls, and every write lands: puts and deletes, with
/// their flags and expiry.
/// Waits (off the test's runtime) until the store's queue has drained.
async fn drain(s: &Arc<DynamoStore>) -> memroute_dynamo::DrainReport {
    let s = Arc::clone(s);
    tokio::task::spawn_blocking(move || s.drain_blocking(Duration::from_secs(60)))
        .await
        .unwrap()
}

/// Writes that trickle in slower than DynamoDB answers still share calls:
/// the writer waits `batch_linger` to fill a batch.
#[tokio::test]
async fn batch_linger_fills_batches() {
    const KEYS: usize = 50;
    let s = DynamoStore::new(DynamoConfig {
        batch_writes: true,
        batch_linger: Duration::from_secs(2),
        ..config(shared(), "linger", WriteMode::Behind)
    })
    .expect("store");
    for i in 0..KEYS {
        assert_eq!(
            run(&s, &format!("set k{i} 0 0 1"), b"v").await,
            "STORED\r\n"
        );
        // Much slower than a DynamoDB Local round trip: without the
        // linger, nearly every write would go out alone.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = drain(&s).await;
    assert!(drained.drained, "{drained:?}");
    let stats = s.stats();
    assert_eq!(stats.written, KEYS as u64, "{stats:?}");
    // 50 writes over ~1 s, each batch waiting up to 2 s: two full
    // batches of 25 (a third if a call's timing splits one), where without
    // the linger most writes go alone (a lone write is no batch).
    assert!(
        (2..=3).contains(&stats.batches),
        "writes were not lingered into batches: {stats:?}"
    );
    let table = reader(&s);
    for i in 0..KEYS {
        assert_eq!(
            cmd(&table, &format!("get k{i}")).await,
            format!("VALUE k{i} 0 1\r\nv\r\nEND\r\n")
        );
    }
}

#[tokio::test]
async fn batched_writes_land() {
    const KEYS: usize = 300;
    let s = DynamoStore::new(DynamoConfig {
        batch_writes: true,
        ..config(shared(), "batch", WriteMode::Behind)
    })
    .expect("store");
    for i in 0..KEYS {
        let value = format!("value-{i}");
        let line = format!("set key{i} {i} 3600 {}", value.len());
        assert_eq!(run(&s, &line, value.as_bytes()).await, "STORED\r\n");
    }
    for i in (0..KEYS).step_by(3) {
        assert_eq!(cmd(&s, &format!("delete key{i}")).await, "DELETED\r\n");
    }
    let drained = drain(&s).await;
    assert!(drained.drained, "{drained:?}");
    let stats = s.stats();
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.written + stats.coalesced, stats.queued, "{stats:?}");
    assert!(stats.batches > 0, "no BatchWriteItem call: {stats:?}");
    assert!(
        stats.batches * 2 < stats.written,
        "writes were not grouped: {stats:?}"
    );
    let table = reader(&s);
    for i in 0..KEYS {
        let reply = cmd(&table, &format!("get key{i}")).await;
        if i % 3 == 0 {
            assert_eq!(reply, "END\r\n", "key{i} should be deleted");
        } else {
            let value = format!("value-{i}");
            assert_eq!(
                reply,
                format!("VALUE key{i} {i} {}\r\n{value}\r\nEND\r\n", value.len())
            );
        }
    }
    let ttl = cmd(&table, "mg key1 t").await;
    assert!(ttl.starts_with("HD t3"), "expiry lost in a batch: {ttl:?}");
}

#[test]
fn batch_writes_need_write_behind() {
    let Err(error) = DynamoStore::new(DynamoConfig {
        batch_writes: true,
        ..config(shared(), "batch_through", WriteMode::Through)
    }) else {
        panic!("batch_writes with write-through must be refused");
    };
    assert!(error.to_string().contains("batch_writes"), "{error}");
}

/// Mixed traffic on one key from many tasks: blind sets, deletes and
/// state-dependent commands interleave; the queue must keep every
/// acknowledged write and end consistent with the table.
#[test]
fn mixed_commands_stay_consistent() {
    let s = store(shared(), "mixed", WriteMode::Behind);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for task in 0..8u64 {
            let s = s.clone();
            set.spawn(async move {
                for i in 0..30u64 {
                    let r = match (task + i) % 6 {
                        0 => cmd(&s, "delete k").await,
                        1 => run(&s, "add k 0 0 1", b"0").await,
                        2 => cmd(&s, "incr k 1").await,
                        3 => run(&s, "append k 0 0 1", b"1").await,
                        4 => cmd(&s, "touch k 1000").await,
                        _ => run(&s, "set k 0 0 1", b"5").await,
                    };
                    assert!(!r.starts_with("SERVER_ERROR"), "{r}");
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        let final_view = cmd(&s, "get k").await;
        assert!(s.drain_blocking(Duration::from_secs(30)).drained);
        let table = reader(&s);
        assert_eq!(cmd(&table, "get k").await, final_view);
        assert_eq!(s.stats().failed, 0);
    });
}

/// The writer's own requests (src/direct.rs), and the SDK's (`writer =
/// "sdk"`), against DynamoDB Local: keys
/// that need JSON escaping, binary values of every byte, expiries, deletes,
/// each stored exactly as a write-through store reads it back, one at a
/// time and batched; and a queued write older than the table's version
/// (written by "another process") is refused by its condition, not stored.
#[tokio::test]
async fn queued_writes_land_exactly_and_keep_their_condition() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let cases = [
        (false, BehindWriter::Direct, "exact"),
        (true, BehindWriter::Direct, "exact_batch"),
        (false, BehindWriter::Sdk, "exact_sdk"),
        (true, BehindWriter::Sdk, "exact_batch_sdk"),
    ];
    for (batched, writer, tag) in cases {
        let c = DynamoConfig {
            batch_writes: batched,
            writer,
            ..config(shared(), tag, WriteMode::Behind)
        };
        let s = DynamoStore::new(c.clone()).unwrap();
        let table = reader(&s);
        let every_byte: Vec<u8> = (0..=255u8).collect();
        let keys = ["q\"uo\\te", "ünï/cødé", "plain", "{\"json\":1}"];
        for (n, key) in keys.iter().enumerate() {
            let exptime = if n % 2 == 0 { 0 } else { 3600 };
            let line = format!("set {key} {n} {exptime} {}", every_byte.len());
            assert_eq!(run(&s, &line, &every_byte).await, "STORED\r\n");
        }
        assert_eq!(run(&s, "set doomed 0 0 1", b"x").await, "STORED\r\n");
        assert!(s.drain_blocking(Duration::from_secs(20)).drained);
        assert_eq!(cmd(&s, "delete doomed").await, "DELETED\r\n");
        // Queued behind nothing: a delete of a key that landed goes through
        // the table, so queue a write and delete it to send a DeleteItem.
        assert_eq!(run(&s, "set doomed 0 0 1", b"y").await, "STORED\r\n");
        assert_eq!(cmd(&s, "delete doomed").await, "DELETED\r\n");
        assert!(s.drain_blocking(Duration::from_secs(20)).drained);
        // Another writer stored a newer version of "theirs".
        sdk_client(&c)
            .await
            .put_item()
            .table_name(&c.table)
            .item("id", AttributeValue::S("theirs".into()))
            .item("value", AttributeValue::B(b"newer".to_vec().into()))
            .item("flags", AttributeValue::N("0".into()))
            .item("cas", AttributeValue::N("9000000000000000000".into()))
            .send()
            .await
            .expect("PutItem");
        assert_eq!(run(&s, "set theirs 0 0 5", b"older").await, "STORED\r\n");
        assert!(s.drain_blocking(Duration::from_secs(20)).drained);
        for (n, key) in keys.iter().enumerate() {
            let mg = cmd(&table, &format!("mg {key} f v t")).await;
            let mut lines = mg.split("\r\n");
            let head = lines.next().unwrap();
            assert!(head.starts_with(&format!("VA 256 f{n} t")), "{key}: {head}");
            if n % 2 == 0 {
                assert!(head.ends_with("t-1"), "{key}: {head}");
            } else {
                let ttl: i64 = head.rsplit('t').next().unwrap().parse().unwrap();
                assert!((3590..=3600).contains(&ttl), "{key}: {head}");
            }
            let get = table
                .execute(&common::request(&format!("get {key}"), b""))
                .await
                .raw()
                .to_vec();
            let header = format!("VALUE {key} {n} 256\r\n");
            assert!(get.starts_with(header.as_bytes()), "{key}");
            assert_eq!(
                &get[header.len()..header.len() + 256],
                &every_byte[..],
                "{key}"
            );
        }
        assert_eq!(cmd(&table, "get doomed").await, "END\r\n");
        assert_eq!(
            cmd(&table, "get theirs").await,
            "VALUE theirs 0 5\r\nnewer\r\nEND\r\n"
        );
        let stats = s.stats();
        assert_eq!(stats.failed, 0, "{stats:?}");
        // Alone in the queue, the write of "theirs" goes alone in batched
        // mode too, with its condition.
        assert_eq!(stats.superseded, 1, "{stats:?}");
        assert_eq!(batched, stats.batches > 0, "{stats:?}");
    }
}
