//! The PHP session format against DynamoDB Local: php-memcached's session
//! conversation (text protocol) through the store, and the items it leaves
//! read exactly as the AWS SDK for PHP's session handler lays them out.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use common::{cmd, config, run, shared};
use memroute_dynamo::{sdk_client, DynamoConfig, DynamoStore, PhpSessionFormat, WriteMode};

type Attrs = HashMap<String, AttributeValue>;

fn session_config(tag: &str, format: PhpSessionFormat) -> DynamoConfig {
    DynamoConfig {
        value_attr: "data".into(),
        php_session: Some(format),
        ..config(shared(), tag, WriteMode::Through)
    }
}

fn session_store(tag: &str) -> (Arc<DynamoStore>, DynamoConfig) {
    let c = session_config(tag, PhpSessionFormat::default());
    (DynamoStore::new(c.clone()).expect("store"), c)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The item as stored, read straight from the table.
async fn item(c: &DynamoConfig, id: &str) -> Option<Attrs> {
    sdk_client(c)
        .await
        .get_item()
        .table_name(&c.table)
        .key("id", AttributeValue::S(id.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
}

/// Writes an item as another program (the AWS SDK for PHP) would.
async fn put(c: &DynamoConfig, attrs: &[(&str, AttributeValue)]) {
    let mut put = sdk_client(c).await.put_item().table_name(&c.table);
    for (name, value) in attrs {
        put = put.item(*name, value.clone());
    }
    put.send().await.expect("PutItem");
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn num(attrs: &Attrs, name: &str) -> i64 {
    match attrs.get(name) {
        Some(AttributeValue::N(v)) => v.parse().unwrap(),
        other => panic!("{name} is {other:?} in {attrs:?}"),
    }
}

#[tokio::test]
async fn php_memcached_session_conversation() {
    let (st, c) = session_store("sess_conv");
    let id = "PHPSESSID_abc123";
    // session_start(): lock, then read (a new session reads as a miss).
    let lock = "add memc.sess.key.lock.abc123 0 30 1";
    assert_eq!(run(&st, lock, b"1").await, "STORED\r\n");
    assert_eq!(run(&st, lock, b"1").await, "NOT_STORED\r\n");
    assert_eq!(
        cmd(&st, "get memc.sess.key.lock.abc123").await,
        "VALUE memc.sess.key.lock.abc123 0 1\r\n1\r\nEND\r\n"
    );
    assert_eq!(cmd(&st, "get memc.sess.key.abc123").await, "END\r\n");
    let held = item(&c, id).await.expect("the lock makes the item");
    assert_eq!(num(&held, "lock"), 1);
    let lock_expires = num(&held, "lock_expires");
    assert!((now() + 28..=now() + 31).contains(&lock_expires));
    assert!(!held.contains_key("data") && !held.contains_key("expires"));

    // session_write_close(): write with gc_maxlifetime, then unlock.
    let data = b"count|i:1;name|s:3:\"bob\";";
    let set = format!("set memc.sess.key.abc123 0 1440 {}", data.len());
    assert_eq!(run(&st, &set, data).await, "STORED\r\n");
    let written = item(&c, id).await.unwrap();
    assert_eq!(written.get("id"), Some(&s(id)));
    assert_eq!(
        written.get("data"),
        Some(&s(std::str::from_utf8(data).unwrap()))
    );
    let expires = num(&written, "expires");
    assert!((now() + 1438..=now() + 1441).contains(&expires));
    assert_eq!(num(&written, "lock"), 1, "writing data leaves the lock");
    assert_eq!(
        cmd(&st, "delete memc.sess.key.lock.abc123").await,
        "DELETED\r\n"
    );
    let unlocked = item(&c, id).await.unwrap();
    assert!(!unlocked.contains_key("lock") && !unlocked.contains_key("lock_expires"));
    assert_eq!(
        cmd(&st, "delete memc.sess.key.lock.abc123").await,
        "NOT_FOUND\r\n"
    );

    // The next request reads it back; lazy_write touches unchanged data.
    assert_eq!(
        cmd(&st, "get memc.sess.key.abc123").await,
        format!(
            "VALUE memc.sess.key.abc123 0 {}\r\n{}\r\nEND\r\n",
            data.len(),
            std::str::from_utf8(data).unwrap()
        )
    );
    assert_eq!(
        cmd(&st, "touch memc.sess.key.abc123 60").await,
        "TOUCHED\r\n"
    );
    let touched = num(&item(&c, id).await.unwrap(), "expires");
    assert!((now() + 58..=now() + 61).contains(&touched));
    assert_eq!(
        cmd(&st, "touch memc.sess.key.nope 60").await,
        "NOT_FOUND\r\n"
    );

    // session_destroy() while locked: delete data, then unlock; the item
    // goes with the lock.
    assert_eq!(run(&st, lock, b"1").await, "STORED\r\n");
    assert_eq!(cmd(&st, "delete memc.sess.key.abc123").await, "DELETED\r\n");
    assert_eq!(cmd(&st, "get memc.sess.key.abc123").await, "END\r\n");
    assert!(item(&c, id).await.unwrap().contains_key("lock"));
    assert_eq!(
        cmd(&st, "delete memc.sess.key.abc123").await,
        "NOT_FOUND\r\n"
    );
    assert_eq!(
        cmd(&st, "delete memc.sess.key.lock.abc123").await,
        "DELETED\r\n"
    );
    assert_eq!(item(&c, id).await, None, "an empty session item is removed");

    // create_sid: add of the new id with an empty value.
    assert_eq!(
        run(&st, "add memc.sess.key.new1 0 1440 0", b"").await,
        "STORED\r\n"
    );
    assert_eq!(
        run(&st, "add memc.sess.key.new1 0 1440 0", b"").await,
        "NOT_STORED\r\n"
    );
    assert_eq!(
        cmd(&st, "get memc.sess.key.new1").await,
        "VALUE memc.sess.key.new1 0 0\r\n\r\nEND\r\n"
    );
    assert_eq!(
        run(&st, "replace memc.sess.key.none 0 0 1", b"x").await,
        "NOT_STORED\r\n"
    );
    assert_eq!(
        run(&st, "replace memc.sess.key.new1 0 0 1", b"x").await,
        "STORED\r\n"
    );
    // Stored already expired: nothing is written, and what was there goes
    // (php-memcached probes a session id with an add expiring in 1970).
    let probe = "add memc.sess.key.new1 0 2678400 0";
    assert_eq!(
        run(&st, probe, b"").await,
        "NOT_STORED\r\n",
        "a live session exists"
    );
    let probe = "add memc.sess.key.unused 0 2678400 0";
    assert_eq!(run(&st, probe, b"").await, "STORED\r\n");
    assert_eq!(
        item(&c, "PHPSESSID_unused").await,
        None,
        "the probe persists nothing"
    );
    assert_eq!(
        run(&st, "replace memc.sess.key.unused 0 -1 1", b"x").await,
        "NOT_STORED\r\n"
    );
    assert_eq!(
        run(&st, "set memc.sess.key.gone 0 60 1", b"x").await,
        "STORED\r\n"
    );
    assert_eq!(
        run(&st, "set memc.sess.key.gone 0 -1 1", b"y").await,
        "STORED\r\n"
    );
    assert_eq!(cmd(&st, "get memc.sess.key.gone").await, "END\r\n");
    assert_eq!(item(&c, "PHPSESSID_gone").await, None);
    // exptime 0 is stored as a far-future expiry, which the SDK reads live.
    assert_eq!(
        num(&item(&c, "PHPSESSID_new1").await.unwrap(), "expires"),
        253_402_300_799
    );
}

#[tokio::test]
async fn sessions_written_by_the_aws_sdk_read_back() {
    let (st, c) = session_store("sess_sdk");
    let t = now();
    put(
        &c,
        &[
            ("id", s("PHPSESSID_live")),
            ("data", s("a|i:5;")),
            ("expires", n(t + 100)),
        ],
    )
    .await;
    put(
        &c,
        &[
            ("id", s("PHPSESSID_old")),
            ("data", s("a|i:5;")),
            ("expires", n(t - 1)),
        ],
    )
    .await;
    put(&c, &[("id", s("PHPSESSID_noexp")), ("data", s("a|i:5;"))]).await;
    put(&c, &[("id", s("PHPSESSID_locked")), ("lock", n(1))]).await;
    put(
        &c,
        &[
            ("id", s("PHPSESSID_stale")),
            ("lock", n(1)),
            ("lock_expires", n(t - 5)),
        ],
    )
    .await;
    assert_eq!(
        cmd(&st, "get memc.sess.key.live").await,
        "VALUE memc.sess.key.live 0 6\r\na|i:5;\r\nEND\r\n"
    );
    // The SDK's rule: expired, or without expires, is gone.
    assert_eq!(cmd(&st, "get memc.sess.key.old").await, "END\r\n");
    assert_eq!(cmd(&st, "get memc.sess.key.noexp").await, "END\r\n");
    // Several keys in one get, in order, misses skipped.
    assert_eq!(
        cmd(&st, "get memc.sess.key.old memc.sess.key.live memc.sess.key.live").await,
        "VALUE memc.sess.key.live 0 6\r\na|i:5;\r\nVALUE memc.sess.key.live 0 6\r\na|i:5;\r\nEND\r\n"
    );
    // An expired session's data may be replaced by add.
    assert_eq!(
        run(&st, "add memc.sess.key.old 0 60 1", b"x").await,
        "STORED\r\n"
    );
    // An SDK lock never expires; an expired memcached lock is free.
    let add_lock = |sid: &str| format!("add memc.sess.key.lock.{sid} 0 30 1");
    assert_eq!(run(&st, &add_lock("locked"), b"1").await, "NOT_STORED\r\n");
    assert_eq!(cmd(&st, "get memc.sess.key.lock.stale").await, "END\r\n");
    assert_eq!(run(&st, &add_lock("stale"), b"1").await, "STORED\r\n");
    // Unlocking an expired lock answers NOT_FOUND but clears it (the SDK
    // would otherwise see it held forever).
    put(
        &c,
        &[
            ("id", s("PHPSESSID_stale2")),
            ("data", s("x")),
            ("expires", n(t + 100)),
            ("lock", n(1)),
            ("lock_expires", n(t - 5)),
        ],
    )
    .await;
    assert_eq!(
        cmd(&st, "delete memc.sess.key.lock.stale2").await,
        "NOT_FOUND\r\n"
    );
    let left = item(&c, "PHPSESSID_stale2").await.unwrap();
    assert!(!left.contains_key("lock") && left.contains_key("data"));
    // A lock that never expires (exptime 0) has no lock_expires, like an
    // SDK lock.
    assert_eq!(
        run(&st, "set memc.sess.key.lock.forever 0 0 1", b"1").await,
        "STORED\r\n"
    );
    let forever = item(&c, "PHPSESSID_forever").await.unwrap();
    assert_eq!(num(&forever, "lock"), 1);
    assert!(!forever.contains_key("lock_expires"));
}

#[tokio::test]
async fn session_meta_commands_and_errors() {
    let (st, _) = session_store("sess_err");
    assert_eq!(run(&st, "ms memc.sess.key.m 2 T60", b"hi").await, "HD\r\n");
    assert_eq!(cmd(&st, "mg memc.sess.key.m v").await, "VA 2\r\nhi\r\n");
    assert_eq!(cmd(&st, "mg memc.sess.key.zz v").await, "EN\r\n");
    assert_eq!(cmd(&st, "md memc.sess.key.m").await, "HD\r\n");
    assert_eq!(
        cmd(&st, "get other").await,
        "CLIENT_ERROR not a PHP session key\r\n"
    );
    assert_eq!(
        run(&st, "set memc.sess.key. 0 0 1", b"x").await,
        "CLIENT_ERROR not a PHP session key\r\n"
    );
    assert_eq!(
        run(&st, "set memc.sess.key.f 1 0 1", b"x").await,
        "CLIENT_ERROR the PHP session store keeps no client flags\r\n"
    );
    assert_eq!(
        run(&st, "set memc.sess.key.b 0 0 2", b"\xff\xfe").await,
        "SERVER_ERROR session data is not UTF-8 (the table stores it as a string)\r\n"
    );
    for line in ["incr memc.sess.key.m 1", "cas memc.sess.key.m 0 0 1 5"] {
        assert_eq!(
            run(&st, line, b"x").await,
            "CLIENT_ERROR unsupported by the PHP session store\r\n",
            "{line}"
        );
    }
    assert_eq!(
        run(&st, "append memc.sess.key.m 0 0 1", b"x").await,
        "CLIENT_ERROR unsupported by the PHP session store\r\n"
    );
    // Over DynamoDB's 400 KB item limit: refused, nothing written.
    let big = vec![b'x'; 400 * 1024];
    let line = format!("set memc.sess.key.big 0 0 {}", big.len());
    assert_eq!(
        run(&st, &line, &big).await,
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(cmd(&st, "get memc.sess.key.big").await, "END\r\n");
    let fits = vec![b'y'; 399 * 1024];
    let line = format!("set memc.sess.key.big 0 0 {}", fits.len());
    assert_eq!(run(&st, &line, &fits).await, "STORED\r\n");
    let got = st
        .execute(&common::request("get memc.sess.key.big", b""))
        .await;
    assert_eq!(got.value(), Some(&fits[..]));
}

#[tokio::test]
async fn binary_data_and_custom_names() {
    let format = PhpSessionFormat {
        session_name: "APPSESS".into(),
        key_prefix: "s:".into(),
        binary_data: true,
        lifetime: None,
    };
    let c = session_config("sess_bin", format);
    let st = DynamoStore::new(c.clone()).expect("store");
    let data: Vec<u8> = (0..=255u8).collect();
    assert_eq!(run(&st, "set s:xyz 0 100 256", &data).await, "STORED\r\n");
    let stored = item(&c, "APPSESS_xyz").await.unwrap();
    match stored.get("data") {
        Some(AttributeValue::B(b)) => assert_eq!(b.as_ref(), &data[..]),
        other => panic!("data is {other:?}"),
    }
    let got = st.execute(&common::request("get s:xyz", b"")).await;
    assert_eq!(got.value(), Some(&data[..]));
    assert_eq!(run(&st, "add s:lock.xyz 0 5 1", b"1").await, "STORED\r\n");
    assert_eq!(num(&item(&c, "APPSESS_xyz").await.unwrap(), "lock"), 1);
}

#[test]
fn session_format_refuses_what_it_cannot_keep() {
    let mut behind = session_config("sess_cfg", PhpSessionFormat::default());
    behind.write_mode = WriteMode::Behind;
    let err = DynamoStore::new(behind).unwrap_err().to_string();
    assert!(err.contains("needs write = \"through\""), "{err}");
    let mut named = session_config("sess_cfg", PhpSessionFormat::default());
    named.php_session.as_mut().unwrap().session_name = "PHP SESS".into();
    let err = DynamoStore::new(named).unwrap_err().to_string();
    assert!(err.contains("session_name"), "{err}");
    let mut lock = session_config("sess_cfg", PhpSessionFormat::default());
    lock.value_attr = "lock".into();
    let err = DynamoStore::new(lock).unwrap_err().to_string();
    assert!(err.contains("lock_expires"), "{err}");
}
