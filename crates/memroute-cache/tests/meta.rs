//! Meta-protocol item semantics: vivify / win / stale / recache, meta
//! set/delete/arith options and the `h`/`l`/`t` info.

use std::sync::Arc;

use bytes::Bytes;
use memroute_cache::{
    item_size, ArithMode, ArithOutcome, Cache, CacheConfig, DeleteOutcome, GetOutcome, ManualClock,
    MetaArithOptions, MetaDeleteOptions, MetaGetOptions, MetaGetOutcome, MetaHit, MetaSetOptions,
    StoreMode, StoreOutcome,
};

const T0: i64 = 1_700_000_000;

fn cache() -> (Cache, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    (
        Cache::with_clock(CacheConfig::default(), clock.clone()),
        clock,
    )
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn mg(c: &Cache, k: &str, opts: MetaGetOptions) -> MetaHit {
    match c.meta_get(k.as_bytes(), &opts) {
        MetaGetOutcome::Hit(h) => h,
        other => panic!("mg {k}: {other:?}"),
    }
}

fn ms(c: &Cache, k: &str, v: &str, opts: MetaSetOptions) -> StoreOutcome {
    c.meta_set(k.as_bytes(), b(v), &opts)
}

fn stored_cas(o: StoreOutcome) -> u64 {
    match o {
        StoreOutcome::Stored { cas } => cas,
        other => panic!("not stored: {other:?}"),
    }
}

#[test]
fn mg_plain_hit_miss_and_info_flags() {
    let (c, clock) = cache();
    assert_eq!(
        c.meta_get(b"k", &MetaGetOptions::default()),
        MetaGetOutcome::Miss
    );
    let cas = stored_cas(ms(
        &c,
        "k",
        "v",
        MetaSetOptions {
            flags: 9,
            ttl: 100,
            ..Default::default()
        },
    ));
    clock.advance(7);
    let h = mg(&c, "k", MetaGetOptions::default());
    assert_eq!(
        (&h.item.value[..], h.item.flags, h.item.cas),
        (&b"v"[..], 9, cas)
    );
    assert_eq!(h.item.ttl, 93, "t: remaining TTL");
    assert_eq!(
        h.item.last_access_ago, 7,
        "l: seconds since last access (the store)"
    );
    assert!(!h.item.fetched, "h: not fetched before this request");
    assert!(!h.won && !h.win_token_sent && !h.stale && !h.created);
    clock.advance(2);
    let h = mg(&c, "k", MetaGetOptions::default());
    assert!(h.item.fetched, "h: fetched before");
    assert_eq!(h.item.last_access_ago, 2);
    clock.advance(100);
    assert_eq!(
        c.meta_get(b"k", &MetaGetOptions::default()),
        MetaGetOutcome::Expired
    );
}

#[test]
fn mg_no_bump_leaves_access_state_alone() {
    let (c, clock) = cache();
    ms(&c, "k", "v", MetaSetOptions::default());
    clock.advance(5);
    let nb = MetaGetOptions {
        no_bump: true,
        ..Default::default()
    };
    mg(&c, "k", nb);
    let h = mg(&c, "k", nb);
    assert!(!h.item.fetched);
    assert_eq!(h.item.last_access_ago, 5);
    let d = c.meta_debug(b"k").unwrap();
    assert!(!d.fetched);
}

#[test]
fn mg_touch_updates_ttl() {
    let (c, clock) = cache();
    ms(
        &c,
        "k",
        "v",
        MetaSetOptions {
            ttl: 10,
            ..Default::default()
        },
    );
    let h = mg(
        &c,
        "k",
        MetaGetOptions {
            touch_ttl: Some(100),
            ..Default::default()
        },
    );
    assert_eq!(h.item.ttl, 100);
    clock.advance(50);
    assert_eq!(mg(&c, "k", MetaGetOptions::default()).item.ttl, 50);
    assert_eq!(
        c.meta_get(
            b"none",
            &MetaGetOptions {
                touch_ttl: Some(5),
                ..Default::default()
            }
        ),
        MetaGetOutcome::Miss
    );
}

#[test]
fn mg_vivify_gives_one_win_then_z() {
    let (c, _) = cache();
    let viv = MetaGetOptions {
        vivify_ttl: Some(30),
        ..Default::default()
    };
    let first = mg(&c, "k", viv);
    assert!(first.created && first.won && !first.win_token_sent);
    assert!(first.item.value.is_empty());
    assert_eq!((first.item.flags, first.item.ttl), (0, 30));
    let second = mg(&c, "k", viv);
    assert!(
        !second.created && !second.won && second.win_token_sent,
        "others see Z"
    );
    assert_eq!(second.item.cas, first.item.cas);
    // Plain get sees the empty placeholder too.
    assert!(c.get(b"k").hit().unwrap().value.is_empty());
    // The winner fills it (CAS from the placeholder), which resets the state.
    let cas = stored_cas(ms(
        &c,
        "k",
        "real",
        MetaSetOptions {
            compare_cas: Some(first.item.cas),
            ttl: 60,
            ..Default::default()
        },
    ));
    let after = mg(&c, "k", viv);
    assert!(!after.won && !after.win_token_sent && !after.stale);
    assert_eq!((&after.item.value[..], after.item.cas), (&b"real"[..], cas));
}

#[test]
fn mg_recache_wins_once_when_ttl_is_low() {
    let (c, clock) = cache();
    ms(
        &c,
        "k",
        "v",
        MetaSetOptions {
            ttl: 100,
            ..Default::default()
        },
    );
    let r = MetaGetOptions {
        recache_ttl: Some(30),
        ..Default::default()
    };
    let h = mg(&c, "k", r);
    assert!(
        !h.won && !h.win_token_sent,
        "70 s left of 100 is above the 30 s token"
    );
    clock.advance(71); // 29 s left
    let h = mg(&c, "k", r);
    assert!(h.won && !h.win_token_sent);
    let h = mg(&c, "k", r);
    assert!(!h.won && h.win_token_sent, "only one W per item");
    assert!(
        mg(&c, "k", MetaGetOptions::default()).win_token_sent,
        "Z shows on plain mg too"
    );
    // Items without a TTL never trigger R.
    ms(&c, "forever", "v", MetaSetOptions::default());
    assert!(!mg(&c, "forever", r).won);
}

#[test]
fn md_invalidate_then_stale_win_and_z() {
    let (c, clock) = cache();
    let cas = stored_cas(ms(
        &c,
        "k",
        "v",
        MetaSetOptions {
            ttl: 100,
            ..Default::default()
        },
    ));
    assert_eq!(
        c.meta_delete(
            b"k",
            &MetaDeleteOptions {
                invalidate: true,
                ttl: Some(30),
                ..Default::default()
            }
        ),
        DeleteOutcome::Deleted
    );
    let first = mg(&c, "k", MetaGetOptions::default());
    assert!(
        first.stale && first.item.stale && first.won && !first.win_token_sent,
        "X + W"
    );
    assert!(first.item.cas > cas, "invalidation bumps the CAS");
    assert_eq!(first.item.ttl, 30, "md T sets the new TTL");
    assert_eq!(&first.item.value[..], b"v", "stale value still served");
    let second = mg(&c, "k", MetaGetOptions::default());
    assert!(
        second.stale && !second.won && second.win_token_sent,
        "X + Z"
    );

    // A writer holding a pre-invalidation CAS stores with I: kept, but stale.
    let late = stored_cas(ms(
        &c,
        "k",
        "late",
        MetaSetOptions {
            compare_cas: Some(cas),
            invalidate: true,
            ttl: 999,
            ..Default::default()
        },
    ));
    let h = mg(&c, "k", MetaGetOptions::default());
    assert_eq!(&h.item.value[..], b"late");
    assert!(
        h.stale && h.win_token_sent && !h.won,
        "stays stale; win state carried over"
    );
    assert_eq!(h.item.cas, late);
    assert_eq!(h.item.ttl, 30, "stale store keeps the old TTL");
    // Without I the same old CAS is simply refused.
    assert_eq!(
        ms(
            &c,
            "k",
            "x",
            MetaSetOptions {
                compare_cas: Some(cas),
                ..Default::default()
            }
        ),
        StoreOutcome::Exists
    );
    // The winner stores with the current CAS: fresh again.
    ms(
        &c,
        "k",
        "fresh",
        MetaSetOptions {
            compare_cas: Some(late),
            ttl: 60,
            ..Default::default()
        },
    );
    let h = mg(&c, "k", MetaGetOptions::default());
    assert!(!h.stale && !h.won && !h.win_token_sent);
    clock.advance(60);
    assert!(c.get(b"k").is_miss());
}

#[test]
fn ms_invalidate_with_newer_cas_is_exists() {
    let (c, _) = cache();
    let cas = stored_cas(ms(&c, "k", "v", MetaSetOptions::default()));
    assert_eq!(
        ms(
            &c,
            "k",
            "x",
            MetaSetOptions {
                compare_cas: Some(cas + 10),
                invalidate: true,
                ..Default::default()
            }
        ),
        StoreOutcome::Exists
    );
}

#[test]
fn md_compare_cas_and_plain_delete() {
    let (c, _) = cache();
    assert_eq!(
        c.meta_delete(b"k", &MetaDeleteOptions::default()),
        DeleteOutcome::NotFound
    );
    let cas = stored_cas(ms(&c, "k", "v", MetaSetOptions::default()));
    assert_eq!(
        c.meta_delete(
            b"k",
            &MetaDeleteOptions {
                compare_cas: Some(cas + 1),
                ..Default::default()
            }
        ),
        DeleteOutcome::Exists
    );
    assert!(c.get(b"k").hit().is_some());
    assert_eq!(
        c.meta_delete(
            b"k",
            &MetaDeleteOptions {
                compare_cas: Some(cas),
                ..Default::default()
            }
        ),
        DeleteOutcome::Deleted
    );
    assert!(c.get(b"k").is_miss());
}

#[test]
fn md_remove_value_keeps_item_and_cas() {
    let (c, _) = cache();
    let cas = stored_cas(ms(
        &c,
        "k",
        "payload",
        MetaSetOptions {
            flags: 5,
            ttl: 100,
            ..Default::default()
        },
    ));
    assert_eq!(
        c.meta_delete(
            b"k",
            &MetaDeleteOptions {
                remove_value: true,
                flags: 3,
                ..Default::default()
            }
        ),
        DeleteOutcome::Deleted
    );
    let h = c.get(b"k").hit().unwrap();
    assert!(h.value.is_empty());
    assert_eq!((h.flags, h.cas, h.ttl), (3, cas, -1));
    assert_eq!(c.stats().bytes, item_size(1, 0));
    // x + I: emptied and stale with a new CAS.
    c.meta_delete(
        b"k",
        &MetaDeleteOptions {
            remove_value: true,
            invalidate: true,
            ttl: Some(9),
            ..Default::default()
        },
    );
    let h = mg(&c, "k", MetaGetOptions::default());
    assert!(h.stale && h.won && h.item.cas > cas && h.item.ttl == 9);
}

#[test]
fn ms_modes_explicit_cas_and_append_vivify() {
    let (c, _) = cache();
    let add = MetaSetOptions {
        mode: StoreMode::Add,
        ..Default::default()
    };
    assert!(matches!(ms(&c, "k", "a", add), StoreOutcome::Stored { .. }));
    assert_eq!(ms(&c, "k", "b", add), StoreOutcome::NotStored);
    assert_eq!(
        ms(
            &c,
            "k",
            "b",
            MetaSetOptions {
                compare_cas: Some(12345),
                ..add
            }
        ),
        StoreOutcome::NotStored,
        "add ignores C"
    );
    let rep = MetaSetOptions {
        mode: StoreMode::Replace,
        ..Default::default()
    };
    assert_eq!(ms(&c, "none", "x", rep), StoreOutcome::NotStored);
    assert_eq!(
        ms(
            &c,
            "none",
            "x",
            MetaSetOptions {
                compare_cas: Some(1),
                ..rep
            }
        ),
        StoreOutcome::NotFound,
        "replace + C on a miss is NF like cas"
    );
    assert_eq!(
        ms(
            &c,
            "k",
            "E",
            MetaSetOptions {
                new_cas: Some(777),
                ..Default::default()
            }
        ),
        StoreOutcome::Stored { cas: 777 }
    );
    assert_eq!(c.get(b"k").hit().unwrap().cas, 777);

    let app = MetaSetOptions {
        mode: StoreMode::Append,
        ..Default::default()
    };
    assert_eq!(
        ms(
            &c,
            "k",
            "x",
            MetaSetOptions {
                compare_cas: Some(1),
                ..app
            }
        ),
        StoreOutcome::Exists
    );
    ms(
        &c,
        "k",
        "+",
        MetaSetOptions {
            compare_cas: Some(777),
            ..app
        },
    );
    ms(
        &c,
        "k",
        "<",
        MetaSetOptions {
            mode: StoreMode::Prepend,
            ..Default::default()
        },
    );
    assert_eq!(&c.get(b"k").hit().unwrap().value[..], b"<E+");

    assert_eq!(ms(&c, "v", "x", app), StoreOutcome::NotStored);
    ms(
        &c,
        "v",
        "first",
        MetaSetOptions {
            vivify_ttl: Some(50),
            flags: 4,
            ..app
        },
    );
    let h = c.get(b"v").hit().unwrap();
    assert_eq!((&h.value[..], h.flags, h.ttl), (&b"first"[..], 4, 50));
}

#[test]
fn ma_modes_vivify_cas_and_ttl() {
    let (c, clock) = cache();
    assert_eq!(
        c.meta_arith(b"n", &MetaArithOptions::default()),
        ArithOutcome::NotFound
    );
    let viv = MetaArithOptions {
        vivify_ttl: Some(100),
        initial: 10,
        ..Default::default()
    };
    let ArithOutcome::Value {
        value,
        cas,
        ttl,
        created,
    } = c.meta_arith(b"n", &viv)
    else {
        panic!()
    };
    assert_eq!(
        (value, ttl, created),
        (10, 100, true),
        "created with J, no delta applied"
    );
    assert!(matches!(
        c.meta_arith(b"n", &viv),
        ArithOutcome::Value {
            value: 11,
            created: false,
            ..
        }
    ));
    assert_eq!(
        c.meta_arith(
            b"n",
            &MetaArithOptions {
                compare_cas: Some(cas),
                ..Default::default()
            }
        ),
        ArithOutcome::Exists
    );
    let dec = MetaArithOptions {
        mode: ArithMode::Decr,
        delta: 5,
        new_cas: Some(4242),
        ttl: Some(7),
        ..Default::default()
    };
    assert_eq!(
        c.meta_arith(b"n", &dec),
        ArithOutcome::Value {
            value: 6,
            cas: 4242,
            ttl: 7,
            created: false
        }
    );
    assert_eq!(&c.get(b"n").hit().unwrap().value[..], b"6 ");
    clock.advance(7);
    assert_eq!(c.get(b"n"), GetOutcome::Expired);
}

#[test]
fn me_reports_debug_info() {
    let (c, clock) = cache();
    assert!(c.meta_debug(b"k").is_none());
    let cas = stored_cas(c.store(StoreMode::Set, b"k", b("12345"), 0, 60));
    clock.advance(10);
    let d = c.meta_debug(b"k").unwrap();
    assert_eq!((d.exp, d.la, d.cas, d.fetched), (50, 10, cas, false));
    assert_eq!(d.size, item_size(1, 5));
    assert_eq!(d.cls, 1);
    c.get(b"k");
    assert!(c.meta_debug(b"k").unwrap().fetched);
    c.store(StoreMode::Set, b"f", b("x"), 0, 0);
    assert_eq!(c.meta_debug(b"f").unwrap().exp, -1);
}

#[test]
fn flushed_items_are_flushed_for_meta_too() {
    let (c, _) = cache();
    ms(&c, "k", "v", MetaSetOptions::default());
    c.flush_all(0);
    assert_eq!(
        c.meta_get(b"k", &MetaGetOptions::default()),
        MetaGetOutcome::Flushed
    );
    // Explicit CAS values cannot escape a flush.
    ms(
        &c,
        "e",
        "v",
        MetaSetOptions {
            new_cas: Some(u64::MAX),
            ..Default::default()
        },
    );
    c.flush_all(0);
    assert!(c.get(b"e").is_miss());
    // N after a flush vivifies.
    assert!(
        mg(
            &c,
            "e",
            MetaGetOptions {
                vivify_ttl: Some(5),
                ..Default::default()
            }
        )
        .created
    );
}
