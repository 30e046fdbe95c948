//! Every command mapping and its exact reply, against DynamoDB Local
//! (write-through mode; tests/write_behind.rs repeats the core in
//! write-behind mode).

mod common;

use std::time::Duration;

use common::{cmd, filler, run, shared, store};
use memroute_dynamo::{DynamoConfig, DynamoStore, WriteMode};

fn cas_of(reply: &str) -> u64 {
    // "VALUE k f n cas\r\n..."
    reply
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(4))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no cas in {reply:?}"))
}

#[tokio::test]
async fn classic_storage_commands() {
    let s = store(shared(), "classic", WriteMode::Through);
    assert_eq!(cmd(&s, "get a").await, "END\r\n");
    assert_eq!(run(&s, "set a 5 0 2", b"hi").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get a").await, "VALUE a 5 2\r\nhi\r\nEND\r\n");
    assert_eq!(run(&s, "add a 0 0 1", b"x").await, "NOT_STORED\r\n");
    assert_eq!(run(&s, "add b 7 0 1", b"x").await, "STORED\r\n");
    assert_eq!(run(&s, "replace c 0 0 1", b"x").await, "NOT_STORED\r\n");
    assert_eq!(cmd(&s, "get c").await, "END\r\n");
    assert_eq!(run(&s, "replace b 8 0 1", b"y").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get b").await, "VALUE b 8 1\r\ny\r\nEND\r\n");
    // append/prepend keep the item's flags.
    assert_eq!(run(&s, "append a 9 0 2", b"!!").await, "STORED\r\n");
    assert_eq!(run(&s, "prepend a 9 0 2", b"<<").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get a").await, "VALUE a 5 6\r\n<<hi!!\r\nEND\r\n");
    assert_eq!(run(&s, "append nope 0 0 1", b"x").await, "NOT_STORED\r\n");
    assert_eq!(run(&s, "prepend nope 0 0 1", b"x").await, "NOT_STORED\r\n");
    assert_eq!(cmd(&s, "get nope").await, "END\r\n");
    // cas
    let gets = cmd(&s, "gets a").await;
    let cas = cas_of(&gets);
    assert!(gets.starts_with("VALUE a 5 6 "), "{gets}");
    assert_eq!(
        run(&s, &format!("cas a 1 0 3 {}", cas + 1), b"new").await,
        "EXISTS\r\n"
    );
    assert_eq!(
        run(&s, &format!("cas a 1 0 3 {cas}"), b"new").await,
        "STORED\r\n"
    );
    assert_eq!(
        run(&s, &format!("cas a 1 0 5 {cas}"), b"again").await,
        "EXISTS\r\n"
    );
    assert_eq!(run(&s, "cas nope 1 0 3 5", b"new").await, "NOT_FOUND\r\n");
    let after = cmd(&s, "gets a").await;
    assert!(cas_of(&after) > cas);
    assert!(after.contains("\r\nnew\r\n"));
    // delete
    assert_eq!(cmd(&s, "delete a").await, "DELETED\r\n");
    assert_eq!(cmd(&s, "delete a").await, "NOT_FOUND\r\n");
    assert_eq!(cmd(&s, "get a").await, "END\r\n");
    // empty values are values
    assert_eq!(run(&s, "set empty 3 0 0", b"").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get empty").await, "VALUE empty 3 0\r\n\r\nEND\r\n");
    // binary-safe values
    let bin: Vec<u8> = (0..=255u8).collect();
    assert_eq!(run(&s, "set bin 0 0 256", &bin).await, "STORED\r\n");
    let r = s.execute(&common::request("get bin", b"")).await;
    assert_eq!(r.value(), Some(&bin[..]));
    // flags are 32-bit
    assert_eq!(run(&s, "set f 4294967295 0 1", b"x").await, "STORED\r\n");
    assert_eq!(
        cmd(&s, "get f").await,
        "VALUE f 4294967295 1\r\nx\r\nEND\r\n"
    );
}

#[tokio::test]
async fn multi_get_in_key_order() {
    let s = store(shared(), "multiget", WriteMode::Through);
    assert_eq!(run(&s, "set x 1 0 2", b"xx").await, "STORED\r\n");
    assert_eq!(run(&s, "set y 2 0 1", b"y").await, "STORED\r\n");
    assert_eq!(
        cmd(&s, "get x nope y x").await,
        "VALUE x 1 2\r\nxx\r\nVALUE y 2 1\r\ny\r\nVALUE x 1 2\r\nxx\r\nEND\r\n"
    );
    let gets = cmd(&s, "gets y x").await;
    assert!(gets.starts_with("VALUE y 2 1 "), "{gets}");
    assert_eq!(cmd(&s, "get n1 n2").await, "END\r\n");
    // More than one BatchGetItem (100 keys) worth, with duplicates.
    for i in 0..130 {
        let v = format!("v{i}");
        let line = format!("set k{i} {i} 0 {}", v.len());
        assert_eq!(run(&s, &line, v.as_bytes()).await, "STORED\r\n");
    }
    let mut line = String::from("get");
    let mut expected = String::new();
    for i in (0..140).rev().chain([5, 5]) {
        line.push_str(&format!(" k{i}"));
        if i < 130 {
            let v = format!("v{i}");
            expected.push_str(&format!("VALUE k{i} {i} {}\r\n{v}\r\n", v.len()));
        }
    }
    expected.push_str("END\r\n");
    assert_eq!(cmd(&s, &line).await, expected);
    assert!(s.stats().reads >= 140);
}

#[tokio::test]
async fn arithmetic() {
    let s = store(shared(), "arith", WriteMode::Through);
    assert_eq!(cmd(&s, "incr n 1").await, "NOT_FOUND\r\n");
    assert_eq!(cmd(&s, "decr n 1").await, "NOT_FOUND\r\n");
    assert_eq!(run(&s, "set n 3 0 2", b"10").await, "STORED\r\n");
    assert_eq!(cmd(&s, "incr n 5").await, "15\r\n");
    assert_eq!(cmd(&s, "decr n 6").await, "9\r\n");
    // memcached pads a shorter number with spaces, keeping the length.
    assert_eq!(cmd(&s, "get n").await, "VALUE n 3 2\r\n9 \r\nEND\r\n");
    assert_eq!(cmd(&s, "decr n 100").await, "0\r\n");
    assert_eq!(
        run(&s, "set big 0 0 20", b"18446744073709551615").await,
        "STORED\r\n"
    );
    assert_eq!(cmd(&s, "incr big 2").await, "1\r\n");
    assert_eq!(run(&s, "set text 0 0 3", b"abc").await, "STORED\r\n");
    assert_eq!(
        cmd(&s, "incr text 1").await,
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    );
    assert_eq!(
        cmd(&s, "get text").await,
        "VALUE text 0 3\r\nabc\r\nEND\r\n"
    );
    // Concurrent increments from several tasks are all counted.
    assert_eq!(run(&s, "set c 0 0 1", b"0").await, "STORED\r\n");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let r = cmd(&s, "incr c 1").await;
                assert!(r.trim().parse::<u64>().is_ok(), "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(cmd(&s, "get c").await, "VALUE c 0 2\r\n40\r\nEND\r\n");
}

#[tokio::test]
async fn expiry_and_touch() {
    let s = store(shared(), "expiry", WriteMode::Through);
    // Negative: expired at once. Absolute in the past: expired.
    assert_eq!(run(&s, "set neg 0 -1 1", b"x").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get neg").await, "END\r\n");
    assert_eq!(run(&s, "set past 0 2678400 1", b"x").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get past").await, "END\r\n");
    // An expired item counts as absent for add, replace, touch, delete.
    assert_eq!(run(&s, "replace past 0 0 1", b"y").await, "NOT_STORED\r\n");
    assert_eq!(cmd(&s, "touch past 10").await, "NOT_FOUND\r\n");
    assert_eq!(cmd(&s, "delete past").await, "NOT_FOUND\r\n");
    assert_eq!(run(&s, "add past 0 0 1", b"y").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get past").await, "VALUE past 0 1\r\ny\r\nEND\r\n");
    // The PHP session "exists" probe: add with an absolute 1970 expiry
    // stores nothing live and answers STORED if there is no live item.
    assert_eq!(run(&s, "add probe 0 2678400 0", b"").await, "STORED\r\n");
    assert_eq!(cmd(&s, "get probe").await, "END\r\n");
    assert_eq!(run(&s, "add past 0 2678400 0", b"").await, "NOT_STORED\r\n");
    // Relative expiry, touch and gat. Expiry has whole-second resolution, so
    // a 2 s TTL is the shortest that surely outlives the next few requests.
    assert_eq!(run(&s, "set t 0 2 1", b"x").await, "STORED\r\n");
    assert_eq!(run(&s, "set keep 0 2 1", b"k").await, "STORED\r\n");
    assert_eq!(cmd(&s, "touch keep 100").await, "TOUCHED\r\n");
    assert_eq!(cmd(&s, "touch nope 100").await, "NOT_FOUND\r\n");
    assert_eq!(run(&s, "set g 0 2 1", b"g").await, "STORED\r\n");
    let gat = cmd(&s, "gats 100 g nope").await;
    assert!(
        gat.starts_with("VALUE g 0 1 ") && gat.ends_with("\r\ng\r\nEND\r\n"),
        "{gat}"
    );
    let mg = cmd(&s, "mg keep t v").await;
    assert!(
        mg == "VA 1 t100\r\nk\r\n" || mg == "VA 1 t99\r\nk\r\n",
        "{mg}"
    );
    assert_eq!(cmd(&s, "mg t t").await.split(' ').next(), Some("HD"));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(cmd(&s, "get t").await, "END\r\n");
    assert_eq!(cmd(&s, "get keep").await, "VALUE keep 0 1\r\nk\r\nEND\r\n");
    assert_eq!(cmd(&s, "get g").await, "VALUE g 0 1\r\ng\r\nEND\r\n");
    // touch to 0: never expires.
    assert_eq!(cmd(&s, "touch keep 0").await, "TOUCHED\r\n");
    assert_eq!(cmd(&s, "mg keep t").await, "HD t-1\r\n");
    // gat with a negative time returns the item and expires it.
    assert_eq!(
        cmd(&s, "gat -1 keep").await,
        "VALUE keep 0 1\r\nk\r\nEND\r\n"
    );
    assert_eq!(cmd(&s, "get keep").await, "END\r\n");
}

#[tokio::test]
async fn meta_commands() {
    let s = store(shared(), "meta", WriteMode::Through);
    assert_eq!(cmd(&s, "mg m v").await, "EN\r\n");
    assert_eq!(cmd(&s, "mg m v k O123").await, "EN km O123\r\n");
    assert_eq!(run(&s, "ms m 2 F5 T0", b"hi").await, "HD\r\n");
    assert_eq!(
        cmd(&s, "mg m v f s t k O9").await,
        "VA 2 f5 s2 t-1 km O9\r\nhi\r\n"
    );
    assert_eq!(cmd(&s, "mg m").await, "HD\r\n");
    let with_cas = cmd(&s, "mg m c").await;
    let cas: u64 = with_cas
        .trim()
        .strip_prefix("HD c")
        .unwrap()
        .parse()
        .unwrap();
    // ms with C: cas semantics.
    assert_eq!(
        run(&s, &format!("ms m 1 C{} O1", cas + 1), b"x").await,
        "EX O1\r\n"
    );
    let stored = run(&s, &format!("ms m 1 C{cas} c k"), b"y").await;
    assert!(
        stored.starts_with("HD c") && stored.ends_with(" km\r\n"),
        "{stored}"
    );
    assert_eq!(run(&s, "ms nope 1 C5", b"x").await, "NF\r\n");
    // Modes.
    assert_eq!(run(&s, "ms m 1 ME", b"z").await, "NS\r\n");
    assert_eq!(run(&s, "ms m2 1 ME F3", b"z").await, "HD\r\n");
    assert_eq!(run(&s, "ms m3 1 MR", b"z").await, "NS\r\n");
    assert_eq!(run(&s, "ms m2 1 MR", b"r").await, "HD\r\n");
    // (`s` is ignored on ms, as memcached 1.6.18 and the embedded cache
    // ignore it; the append shows in the mg below.)
    assert_eq!(run(&s, "ms m2 2 MA s", b"ap").await, "HD\r\n");
    assert_eq!(run(&s, "ms m2 2 MP", b"pp").await, "HD\r\n");
    assert_eq!(cmd(&s, "mg m2 v f").await, "VA 5 f0\r\npprap\r\n");
    assert_eq!(run(&s, "ms m4 2 MA", b"ap").await, "NS\r\n");
    assert_eq!(run(&s, "ms m4 2 MA N0 F4", b"ap").await, "HD\r\n");
    assert_eq!(cmd(&s, "mg m4 v f").await, "VA 2 f4\r\nap\r\n");
    // Base64 keys.
    assert_eq!(run(&s, "ms Ymlu 1 b", b"b").await, "HD\r\n");
    assert_eq!(cmd(&s, "mg Ymlu b v k").await, "VA 1 kYmlu b\r\nb\r\n");
    assert_eq!(cmd(&s, "mg bin v").await, "VA 1\r\nb\r\n");
    // md
    assert_eq!(cmd(&s, "md nope").await, "NF\r\n");
    assert_eq!(cmd(&s, "md m C1 O7").await, "EX O7\r\n");
    let cas = cmd(&s, "mg m c").await;
    let cas: u64 = cas.trim().strip_prefix("HD c").unwrap().parse().unwrap();
    assert_eq!(cmd(&s, &format!("md m C{cas} k")).await, "HD km\r\n");
    assert_eq!(cmd(&s, "mg m").await, "EN\r\n");
    // ma
    assert_eq!(cmd(&s, "ma cnt").await, "NF\r\n");
    assert_eq!(cmd(&s, "ma cnt N0 J10 v").await, "VA 2\r\n10\r\n");
    assert_eq!(cmd(&s, "ma cnt D5 v t").await, "VA 2 t-1\r\n15\r\n");
    assert_eq!(cmd(&s, "ma cnt MD D20 v").await, "VA 1\r\n0\r\n");
    assert_eq!(cmd(&s, "ma cnt M+ D3").await, "HD\r\n");
    assert_eq!(cmd(&s, "ma cnt M- O5 k").await, "HD O5 kcnt\r\n");
    // (memcached keeps a shrinking counter's length, padding with spaces)
    assert_eq!(cmd(&s, "mg cnt v").await, "VA 2\r\n2 \r\n");
    assert_eq!(cmd(&s, "ma cnt C1").await, "EX\r\n");
    assert_eq!(run(&s, "ms txt 1", b"a").await, "HD\r\n");
    assert_eq!(
        cmd(&s, "ma txt").await,
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    );
    let c = cmd(&s, "ma cnt T100 t c").await;
    assert!(
        c.starts_with("HD t100 c") || c.starts_with("HD t99 c"),
        "{c}"
    );
    // mg with T touches.
    assert_eq!(cmd(&s, "mg cnt T0 t").await, "HD t-1\r\n");
    // (the ma above also incremented)
    assert_eq!(cmd(&s, "mg cnt t T50 v").await, "VA 2 t-1\r\n3 \r\n");
    assert_eq!(cmd(&s, "mn").await, "MN\r\n");
}

#[tokio::test]
async fn unsupported_and_errors() {
    let s = store(shared(), "errors", WriteMode::Through);
    assert_eq!(
        cmd(&s, "flush_all").await,
        "SERVER_ERROR flush_all is not supported by the DynamoDB pool\r\n"
    );
    let unsupported = "CLIENT_ERROR unsupported by the DynamoDB pool\r\n";
    assert_eq!(cmd(&s, "mg k h").await, unsupported);
    assert_eq!(cmd(&s, "mg k N30").await, unsupported);
    assert_eq!(cmd(&s, "mg k R30").await, unsupported);
    assert_eq!(run(&s, "ms k 1 I", b"x").await, unsupported);
    assert_eq!(run(&s, "ms k 1 E5", b"x").await, unsupported);
    assert_eq!(cmd(&s, "md k I").await, unsupported);
    assert_eq!(cmd(&s, "md k x").await, unsupported);
    assert_eq!(cmd(&s, "me k").await, unsupported);
    // A key that is not UTF-8 (0xff here) is stored under an escaped id.
    assert_eq!(run(&s, "ms /w== 2 b", b"hi").await, "HD\r\n");
    assert_eq!(cmd(&s, "mg /w== b v").await, "VA 2\r\nhi\r\n");
    assert_eq!(cmd(&s, "md /w== b").await, "HD\r\n");
    assert!(cmd(&s, "version").await.starts_with("VERSION "));
    assert_eq!(cmd(&s, "verbosity 1").await, "OK\r\n");
    // Nothing above wrote k (only the binary key's set and delete wrote).
    assert_eq!(cmd(&s, "get k").await, "END\r\n");
    assert_eq!(s.stats().sync_writes, 2);
    // Flags memcached 1.6.18 accepts and ignores for a command are ignored
    // here too (a refused one would answer `unsupported`).
    assert_eq!(cmd(&s, "md k v f s t h").await, "NF\r\n");
    assert_eq!(cmd(&s, "ma k f s h l u").await, "NF\r\n");
    assert_eq!(run(&s, "ms k 1 MR f v t h l u", b"x").await, "NS\r\n");
}

#[tokio::test]
async fn oversized_values_are_refused_before_writing() {
    let s = store(shared(), "big", WriteMode::Through);
    let too_large = "SERVER_ERROR object too large for cache\r\n";
    assert_eq!(run(&s, "set big 0 0 3", b"old").await, "STORED\r\n");
    let huge = filler(400 * 1024);
    assert_eq!(
        run(&s, &format!("set big 0 0 {}", huge.len()), &huge).await,
        too_large
    );
    assert_eq!(
        run(&s, &format!("ms big {} T0", huge.len()), &huge).await,
        too_large
    );
    assert_eq!(
        run(&s, &format!("add other 0 0 {}", huge.len()), &huge).await,
        too_large
    );
    // Nothing was written: the old value is intact, the other key absent.
    assert_eq!(cmd(&s, "get big").await, "VALUE big 0 3\r\nold\r\nEND\r\n");
    assert_eq!(cmd(&s, "get other").await, "END\r\n");
    // The largest value that fits is stored and read back whole.
    let fits = filler(400 * 1024 - 200);
    assert_eq!(
        run(&s, &format!("set big 0 0 {}", fits.len()), &fits).await,
        "STORED\r\n"
    );
    let r = s.execute(&common::request("get big", b"")).await;
    assert_eq!(r.value().map(<[u8]>::len), Some(fits.len()));
    // An append that would overflow is refused; the value is unchanged.
    assert_eq!(run(&s, "append big 0 0 300", &filler(300)).await, too_large);
    let r = s.execute(&common::request("get big", b"")).await;
    assert_eq!(r.value().map(<[u8]>::len), Some(fits.len()));
    assert_eq!(s.stats().too_large, 4);
}

#[tokio::test]
async fn key_prefix_strip_and_shared_table() {
    let ddb = shared();
    let config = DynamoConfig {
        key_prefix_strip: Some("memc.sess.key.".into()),
        ..common::config(ddb, "prefix", WriteMode::Through)
    };
    let s = DynamoStore::new(config.clone()).unwrap();
    assert_eq!(
        run(&s, "set memc.sess.key.abc 0 0 1", b"1").await,
        "STORED\r\n"
    );
    // The id is the stripped key: a store without the prefix rule sees it
    // under "abc" (and the reply echoes the key as the client sent it).
    let plain = DynamoStore::new(DynamoConfig {
        key_prefix_strip: None,
        create_table: false,
        ..config
    })
    .unwrap();
    assert_eq!(
        cmd(&plain, "get abc").await,
        "VALUE abc 0 1\r\n1\r\nEND\r\n"
    );
    assert_eq!(
        cmd(&s, "get memc.sess.key.abc").await,
        "VALUE memc.sess.key.abc 0 1\r\n1\r\nEND\r\n"
    );
}

#[test]
fn new_outside_and_inside_a_runtime() {
    // new() may be called from plain threads and from async contexts; the
    // store may be dropped in either.
    let ddb = shared();
    let s = store(ddb, "ctx", WriteMode::Through);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let inner = store(ddb, "ctx2", WriteMode::Behind);
        assert_eq!(run(&inner, "set a 0 0 1", b"1").await, "STORED\r\n");
        assert_eq!(run(&s, "set a 0 0 1", b"1").await, "STORED\r\n");
        assert!(inner.drain_blocking(Duration::from_secs(10)).drained);
        drop(inner);
    });
    drop(s);
    // A missing table without create_table is an error, not a panic later.
    let cfg = DynamoConfig {
        create_table: false,
        ..common::config(ddb, "absent", WriteMode::Through)
    };
    let s = DynamoStore::new(cfg).unwrap();
    let r = rt.block_on(cmd(&s, "get a"));
    assert_eq!(r, "SERVER_ERROR backend failure\r\n");
    assert_eq!(s.stats().errors, 1);
}
