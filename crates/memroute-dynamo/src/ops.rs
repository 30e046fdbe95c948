//! memcached semantics, independent of DynamoDB: requests decoded into
//! per-key operations, the pure decision "given the current item, what to
//! write and what to answer", and the typed reply to each outcome. The item
//! rules themselves (store modes, counters) are memroute-proto's
//! [`item`](memroute_proto::item), shared with the embedded cache.

use bytes::{Bytes, BytesMut};
use memroute_proto::item::{parse_counter, render_counter, ArithMode, StoreMode};
use memroute_proto::{Command, ErrorReply, MetaCommand, MetaOp, Reply, Request, Response, Status};

use crate::clock::{absolute_expiry, remaining_ttl};
use crate::item::Item;

#[derive(Debug, Clone)]
pub struct StoreSpec {
    pub mode: StoreMode,
    pub value: Bytes,
    pub flags: u32,
    /// Client exptime (memcached rules).
    pub exptime: i64,
    /// `cas` / meta `C`.
    pub compare_cas: Option<u64>,
    /// Meta `N` with append/prepend: create on a miss with this exptime.
    pub vivify: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ArithSpec {
    pub mode: ArithMode,
    pub delta: u64,
    /// Meta `N` + `J`: create on a miss with this exptime and value.
    pub vivify: Option<(i64, u64)>,
    /// Meta `T`: new exptime for an existing counter.
    pub ttl: Option<i64>,
    pub compare_cas: Option<u64>,
}

/// One operation on one key.
#[derive(Debug, Clone)]
pub enum KeyOp {
    /// A read; with `touch`, also set a new exptime (`gat`, `mg T`).
    Read {
        touch: Option<i64>,
    },
    Store(StoreSpec),
    Delete {
        compare_cas: Option<u64>,
    },
    Touch {
        exptime: i64,
    },
    Arith(ArithSpec),
}

impl KeyOp {
    /// A write whose outcome does not depend on the current item: in
    /// write-behind mode it is queued and acknowledged at once.
    pub fn is_blind_set(&self) -> bool {
        matches!(self, KeyOp::Store(s) if s.mode == StoreMode::Set && s.compare_cas.is_none())
    }

    /// Operations that write-behind mode answers from a queued item and
    /// turns into a queued write (they need no other information).
    pub fn is_queueable(&self) -> bool {
        match self {
            KeyOp::Store(_) => self.is_blind_set(),
            KeyOp::Delete { compare_cas } => compare_cas.is_none(),
            KeyOp::Touch { .. } | KeyOp::Read { .. } => true,
            KeyOp::Arith(_) => false,
        }
    }
}

/// What happened, in memcached's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read hit: the item (after any touch) and its TTL before the touch.
    Hit {
        item: Item,
        ttl_before: i64,
    },
    Miss,
    Stored {
        cas: u64,
    },
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Number {
        value: u64,
        cas: u64,
        expires: i64,
    },
    NonNumeric,
    TooLarge,
    /// The write-behind queue had no room within the backpressure timeout.
    NoMemory,
    /// The write-behind spool had no room within the backpressure timeout.
    SpoolFull,
    /// The write-behind spool could not write (an I/O error): not stored
    /// on disk, so not acknowledged.
    SpoolFailed,
    /// DynamoDB failed (after retries).
    Failed,
}

impl Outcome {
    /// Fills in the version the write was stored with.
    pub fn with_cas(self, new: u64) -> Outcome {
        match self {
            Outcome::Stored { .. } => Outcome::Stored { cas: new },
            Outcome::Number { value, expires, .. } => Outcome::Number {
                value,
                cas: new,
                expires,
            },
            Outcome::Hit {
                mut item,
                ttl_before,
            } => {
                item.cas = new;
                Outcome::Hit { item, ttl_before }
            }
            other => other,
        }
    }
}

/// The write a decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    None,
    /// Store this item (its `cas` is filled in by the caller).
    Put(Item),
    Delete,
}

/// Whether a written item gets a fresh version or keeps the current one
/// (touch keeps the CAS, as in memcached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasRule {
    New,
    Keep,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub write: Write,
    pub cas: CasRule,
    pub outcome: Outcome,
}

impl Decision {
    fn reply(outcome: Outcome) -> Decision {
        Decision {
            write: Write::None,
            cas: CasRule::New,
            outcome,
        }
    }
}

/// Decides `op` against `current` (the live item, if any) at `now`.
/// `fits(value_len)` tells whether an item with such a value fits in
/// DynamoDB. Pure: shared by read-modify-write against the table and by the
/// write-behind queue answering from a queued item.
pub fn decide(
    op: &KeyOp,
    current: Option<&Item>,
    now: i64,
    fits: &dyn Fn(usize) -> bool,
) -> Decision {
    let put = |item: Item, outcome: Outcome| {
        if fits(item.value.len()) {
            Decision {
                write: Write::Put(item),
                cas: CasRule::New,
                outcome,
            }
        } else {
            Decision::reply(Outcome::TooLarge)
        }
    };
    match op {
        KeyOp::Read { touch: None } => Decision::reply(match current {
            Some(item) => Outcome::Hit {
                item: item.clone(),
                ttl_before: remaining_ttl(item.expires, now),
            },
            None => Outcome::Miss,
        }),
        KeyOp::Read {
            touch: Some(exptime),
        }
        | KeyOp::Touch { exptime } => {
            let reading = matches!(op, KeyOp::Read { .. });
            let Some(item) = current else {
                return Decision::reply(if reading {
                    Outcome::Miss
                } else {
                    Outcome::NotFound
                });
            };
            let mut touched = item.clone();
            touched.expires = absolute_expiry(*exptime, now);
            let outcome = if reading {
                Outcome::Hit {
                    item: touched.clone(),
                    ttl_before: remaining_ttl(item.expires, now),
                }
            } else {
                Outcome::Touched
            };
            Decision {
                write: Write::Put(touched),
                cas: CasRule::Keep,
                outcome,
            }
        }
        KeyOp::Delete { compare_cas } => match current {
            None => Decision::reply(Outcome::NotFound),
            Some(item) if compare_cas.is_some_and(|c| c != item.cas) => {
                Decision::reply(Outcome::Exists)
            }
            Some(_) => Decision {
                write: Write::Delete,
                cas: CasRule::New,
                outcome: Outcome::Deleted,
            },
        },
        KeyOp::Store(s) => {
            let fresh = |value: Bytes, exptime: i64| Item {
                value,
                flags: s.flags,
                expires: absolute_expiry(exptime, now),
                cas: 0,
            };
            let stored = Outcome::Stored { cas: 0 };
            match (s.mode, current) {
                (StoreMode::Add, Some(_)) => Decision::reply(Outcome::NotStored),
                (StoreMode::Add, None) => put(fresh(s.value.clone(), s.exptime), stored),
                (StoreMode::Set | StoreMode::Replace, None) => {
                    if s.compare_cas.is_some() {
                        Decision::reply(Outcome::NotFound)
                    } else if s.mode == StoreMode::Replace {
                        Decision::reply(Outcome::NotStored)
                    } else {
                        put(fresh(s.value.clone(), s.exptime), stored)
                    }
                }
                (StoreMode::Set | StoreMode::Replace, Some(item)) => {
                    if s.compare_cas.is_some_and(|c| c != item.cas) {
                        Decision::reply(Outcome::Exists)
                    } else {
                        put(fresh(s.value.clone(), s.exptime), stored)
                    }
                }
                (StoreMode::Append | StoreMode::Prepend, None) => match s.vivify {
                    Some(exptime) => put(fresh(s.value.clone(), exptime), stored),
                    None => Decision::reply(Outcome::NotStored),
                },
                (StoreMode::Append | StoreMode::Prepend, Some(item)) => {
                    if s.compare_cas.is_some_and(|c| c != item.cas) {
                        return Decision::reply(Outcome::Exists);
                    }
                    let mut value = BytesMut::with_capacity(item.value.len() + s.value.len());
                    for part in s.mode.join_order(&item.value, &s.value) {
                        value.extend_from_slice(part);
                    }
                    let joined = Item {
                        value: value.freeze(),
                        flags: item.flags,
                        expires: item.expires,
                        cas: 0,
                    };
                    put(joined, stored)
                }
            }
        }
        KeyOp::Arith(a) => match current {
            None => match a.vivify {
                Some((exptime, initial)) => {
                    let expires = absolute_expiry(exptime, now);
                    let item = Item {
                        value: Bytes::from(initial.to_string()),
                        flags: 0,
                        expires,
                        cas: 0,
                    };
                    put(
                        item,
                        Outcome::Number {
                            value: initial,
                            cas: 0,
                            expires,
                        },
                    )
                }
                None => Decision::reply(Outcome::NotFound),
            },
            Some(item) => {
                if a.compare_cas.is_some_and(|c| c != item.cas) {
                    return Decision::reply(Outcome::Exists);
                }
                let Some(current) = parse_counter(&item.value) else {
                    return Decision::reply(Outcome::NonNumeric);
                };
                let value = a.mode.apply(current, a.delta);
                let expires = a.ttl.map_or(item.expires, |t| absolute_expiry(t, now));
                let updated = Item {
                    value: Bytes::from(render_counter(value, item.value.len())),
                    flags: item.flags,
                    expires,
                    cas: 0,
                };
                put(
                    updated,
                    Outcome::Number {
                        value,
                        cas: 0,
                        expires,
                    },
                )
            }
        },
    }
}

/// A request, decoded into what the store must do.
pub enum Plan {
    /// Answer this at once.
    Reply(Reply),
    /// `get`/`gets`/`gat`/`gats` over one or more keys (`ids[i]` is the
    /// table id of `keys[i]`).
    Get {
        ids: Vec<String>,
        touch: Option<i64>,
    },
    /// One operation on one key.
    Single { id: String, op: KeyOp },
}

/// Maps a memcached key to the table's string id.
///
/// DynamoDB string keys must be UTF-8 but memcached keys are bytes
/// (memcaslap's keys, for one, are not UTF-8), so bytes that are not valid
/// UTF-8 are written `%XX`, and `%` itself `%25`; every other key is its own
/// id, so tables shared with other programs (PHP sessions) keep plain ids.
pub fn key_to_id(key: &[u8], strip: Option<&str>) -> Option<String> {
    use std::fmt::Write;
    let key = match strip {
        Some(prefix) if key.starts_with(prefix.as_bytes()) => &key[prefix.len()..],
        _ => key,
    };
    if key.is_empty() {
        return None;
    }
    let mut id = String::with_capacity(key.len());
    for chunk in key.utf8_chunks() {
        // Copied a run at a time: this runs for every request.
        let mut valid = chunk.valid();
        while let Some(at) = valid.find('%') {
            id.push_str(&valid[..at]);
            id.push_str("%25");
            valid = &valid[at + 1..];
        }
        id.push_str(valid);
        for b in chunk.invalid() {
            let _ = write!(id, "%{b:02X}");
        }
    }
    (id.len() <= crate::item::MAX_ID_LEN).then_some(id)
}

/// The memcached key of a table id: [`key_to_id`] undone, with the stripped
/// prefix put back.
pub fn id_to_key(id: &str, strip: Option<&str>) -> Vec<u8> {
    let mut key = strip.map_or_else(Vec::new, |p| p.as_bytes().to_vec());
    let bytes = id.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                key.push(b);
                i += 3;
            }
            (b, _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    key
}

/// Whether the store can do what every flag of `meta` asks. The flags it
/// refuses ([`UNSUPPORTED`], rather than something subtly wrong) are those
/// whose effect a table has no equivalent for: LRU state (`h l`), stale
/// items and recache wins (`I N R` on mg, `I` elsewhere), explicit CAS
/// (`E`) and md's `x`/`T`. Any other flag memcached's parser accepts is
/// either done here or one memcached itself ignores for that command
/// (`ms ... f v t h`, `md ... v`, `ma ... f s`), so it is ignored here too.
fn meta_flags_supported(meta: &MetaCommand) -> bool {
    let refused: &[u8] = match meta.op {
        MetaOp::Get => b"hlNRE",
        MetaOp::Set => b"IE",
        MetaOp::Delete => b"IxTE",
        MetaOp::Arith => b"E",
        MetaOp::Debug => return false,
    };
    !meta.flags.iter().any(|f| refused.contains(&f.letter))
}

/// Decodes `request`.
pub fn plan(request: &Request, strip: Option<&str>) -> Plan {
    let error = |e: ErrorReply| Plan::Reply(Reply::from(e));
    let id_of = |key: &[u8]| key_to_id(key, strip);
    match request.command() {
        Command::Get(g) => {
            let mut ids = Vec::with_capacity(g.keys.len());
            for key in &g.keys {
                match id_of(key) {
                    Some(id) => ids.push(id),
                    None => return error(ErrorReply::DynamoBadKey),
                }
            }
            let touch = g.op.touches().then_some(i64::from(g.exptime));
            Plan::Get { ids, touch }
        }
        Command::Store(s) => {
            let Some(id) = id_of(&s.key) else {
                return error(ErrorReply::DynamoBadKey);
            };
            let (mode, compare_cas) = StoreMode::of_command(s.op, s.cas);
            let spec = StoreSpec {
                mode,
                value: request.value().clone(),
                flags: s.flags,
                exptime: i64::from(s.exptime),
                compare_cas,
                vivify: None,
            };
            Plan::Single {
                id,
                op: KeyOp::Store(spec),
            }
        }
        Command::Delete { key, .. } => match id_of(key) {
            Some(id) => Plan::Single {
                id,
                op: KeyOp::Delete { compare_cas: None },
            },
            None => error(ErrorReply::DynamoBadKey),
        },
        Command::Touch { key, exptime, .. } => match id_of(key) {
            Some(id) => Plan::Single {
                id,
                op: KeyOp::Touch {
                    exptime: i64::from(*exptime),
                },
            },
            None => error(ErrorReply::DynamoBadKey),
        },
        Command::Arith(a) => match id_of(&a.key) {
            Some(id) => Plan::Single {
                id,
                op: KeyOp::Arith(ArithSpec {
                    mode: ArithMode::of_command(a.op),
                    delta: a.delta,
                    vivify: None,
                    ttl: None,
                    compare_cas: None,
                }),
            },
            None => error(ErrorReply::DynamoBadKey),
        },
        Command::FlushAll { .. } => error(ErrorReply::DynamoFlushUnsupported),
        Command::Version => Plan::Reply(Reply::version(concat!(
            "memroute-dynamo ",
            env!("CARGO_PKG_VERSION")
        ))),
        Command::Verbosity { .. } => Plan::Reply(Reply::from(Status::Ok)),
        // No statistics of its own: an empty list, `END`.
        Command::Stats { .. } => Plan::Reply(Reply::from(Status::Miss)),
        Command::MetaNoop => Plan::Reply(Reply::from(Status::Noop)),
        Command::Quit | Command::Watch { .. } => error(ErrorReply::DynamoUnsupported),
        Command::Meta(meta) => plan_meta(meta, request, strip),
    }
}

fn plan_meta(meta: &MetaCommand, request: &Request, strip: Option<&str>) -> Plan {
    let unsupported = || Plan::Reply(Reply::from(ErrorReply::DynamoUnsupported));
    if meta.op == MetaOp::Debug || !meta_flags_supported(meta) {
        return unsupported();
    }
    let f = &meta.flags;
    let ttl = |v: Option<i32>| v.map(i64::from);
    let op = match meta.op {
        MetaOp::Get => KeyOp::Read { touch: ttl(f.ttl) },
        MetaOp::Set => {
            let mode = StoreMode::of_meta(f.mode);
            let appending = mode.joins();
            KeyOp::Store(StoreSpec {
                mode,
                value: request.value().clone(),
                flags: f.client_flags.unwrap_or(0),
                exptime: ttl(f.ttl).unwrap_or(0),
                // memcached: add ignores C.
                compare_cas: if mode == StoreMode::Add {
                    None
                } else {
                    f.compare_cas
                },
                vivify: if appending { ttl(f.vivify_ttl) } else { None },
            })
        }
        MetaOp::Delete => KeyOp::Delete {
            compare_cas: f.compare_cas,
        },
        MetaOp::Arith => KeyOp::Arith(ArithSpec {
            mode: ArithMode::of_meta(f.mode),
            delta: f.delta.unwrap_or(1),
            vivify: ttl(f.vivify_ttl).map(|t| (t, f.initial.unwrap_or(0))),
            ttl: ttl(f.ttl),
            compare_cas: f.compare_cas,
        }),
        MetaOp::Debug => return unsupported(),
    };
    match key_to_id(&meta.key, strip) {
        Some(id) => Plan::Single { id, op },
        None => Plan::Reply(Reply::from(ErrorReply::DynamoBadKey)),
    }
}

impl Outcome {
    /// The typed reply to this outcome at `now` (which turns an expiry
    /// into the remaining TTL that meta `t` shows).
    pub fn reply(&self, now: i64) -> Reply {
        match self {
            Outcome::Hit { item, ttl_before } => Reply {
                cas: Some(item.cas),
                ttl: Some(remaining_ttl(item.expires, now)),
                ttl_before_touch: Some(*ttl_before),
                ..Reply::hit(item.value.clone(), item.flags)
            },
            Outcome::Miss => Reply::from(Status::Miss),
            // `ms s` is ignored, as memcached 1.6.18 and the embedded cache
            // ignore it: memroute's stores answer alike.
            Outcome::Stored { cas, .. } => Reply::from(Status::Stored).with_cas(*cas),
            Outcome::NotStored => Reply::from(Status::NotStored),
            Outcome::Exists => Reply::from(Status::Exists),
            Outcome::NotFound => Reply::from(Status::NotFound),
            Outcome::Deleted => Reply::from(Status::Deleted),
            Outcome::Touched => Reply::from(Status::Touched),
            Outcome::Number {
                value,
                cas,
                expires,
            } => Reply::number(*value)
                .with_cas(*cas)
                .with_ttl(remaining_ttl(*expires, now)),
            Outcome::NonNumeric => Reply::from(ErrorReply::NonNumeric),
            Outcome::TooLarge => Reply::from(ErrorReply::TooLarge),
            Outcome::NoMemory => Reply::from(ErrorReply::NoMemoryStoring),
            Outcome::SpoolFull => Reply::from(ErrorReply::SpoolFull),
            Outcome::SpoolFailed => Reply::from(ErrorReply::SpoolFailed),
            Outcome::Failed => Reply::from(ErrorReply::BackendFailure),
        }
    }
}

/// The reply to a classic retrieval: every hit in key order, then `END`
/// (or the first failure alone).
pub fn render_get(request: &Request, keys: &[Bytes], outcomes: &[Outcome], now: i64) -> Response {
    let with_cas = matches!(request.command(), Command::Get(g) if g.op.returns_cas());
    let replies: Vec<Reply> = outcomes.iter().map(|o| o.reply(now)).collect();
    Reply::retrieval_response(keys, &replies, with_cas)
}

/// The reply to a single-key request.
pub fn render_single(request: &Request, outcome: &Outcome, now: i64) -> Response {
    outcome.reply(now).to_response(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters() {
        assert_eq!(parse_counter(b"12"), Some(12));
        assert_eq!(parse_counter(b" 12 x"), Some(12));
        assert_eq!(parse_counter(b"-0"), Some(0));
        assert_eq!(parse_counter(b"-1"), None);
        assert_eq!(parse_counter(b"12a"), None);
        assert_eq!(parse_counter(b""), None);
        assert_eq!(parse_counter(b"18446744073709551616"), None);
        assert_eq!(parse_counter(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(render_counter(9, 2), b"9 ".to_vec());
        // Keys that are not UTF-8 get reversible ids.
        for key in [
            &b"plain"[..],
            b"a%b",
            b"\x10\x10k",
            b"\xff\xfe%41",
            b"\xc3\xa9t\xe9",
        ] {
            let id = key_to_id(key, None).unwrap();
            assert_eq!(id_to_key(&id, None), key, "{id}");
        }
        assert_eq!(key_to_id(b"plain", None).unwrap(), "plain");
        assert_eq!(key_to_id(b"\xff", None).unwrap(), "%FF");
        assert_eq!(id_to_key("x", Some("p:")), b"p:x".to_vec());
        assert_eq!(render_counter(100, 2), b"100".to_vec());
    }

    fn item(v: &'static [u8]) -> Item {
        Item {
            value: Bytes::from_static(v),
            flags: 3,
            expires: 0,
            cas: 7,
        }
    }

    #[test]
    fn decisions() {
        let fits = |n: usize| n < 10;
        let store = |mode, value: &'static [u8], cas| {
            KeyOp::Store(StoreSpec {
                mode,
                value: Bytes::from_static(value),
                flags: 1,
                exptime: 0,
                compare_cas: cas,
                vivify: None,
            })
        };
        let cur = item(b"ab");
        let d = decide(&store(StoreMode::Add, b"x", None), Some(&cur), 0, &fits);
        assert_eq!((d.write, d.outcome), (Write::None, Outcome::NotStored));
        let d = decide(&store(StoreMode::Set, b"x", Some(8)), Some(&cur), 0, &fits);
        assert_eq!(d.outcome, Outcome::Exists);
        let d = decide(&store(StoreMode::Set, b"x", Some(8)), None, 0, &fits);
        assert_eq!(d.outcome, Outcome::NotFound);
        let d = decide(&store(StoreMode::Append, b"cd", None), Some(&cur), 0, &fits);
        let Write::Put(w) = d.write else { panic!() };
        assert_eq!((&w.value[..], w.flags), (&b"abcd"[..], 3));
        let d = decide(&store(StoreMode::Set, b"0123456789", None), None, 0, &fits);
        assert_eq!((d.write, d.outcome), (Write::None, Outcome::TooLarge));
        let incr = KeyOp::Arith(ArithSpec {
            mode: ArithMode::Incr,
            delta: 1,
            vivify: None,
            ttl: None,
            compare_cas: None,
        });
        let d = decide(&incr, Some(&item(b"99 ")), 0, &fits);
        assert!(matches!(d.outcome, Outcome::Number { value: 100, .. }));
        let d = decide(&incr, Some(&item(b"x")), 0, &fits);
        assert_eq!(d.outcome, Outcome::NonNumeric);
        let d = decide(&KeyOp::Touch { exptime: 100 }, Some(&cur), 1000, &fits);
        assert_eq!(d.cas, CasRule::Keep);
        assert_eq!(
            d.write,
            Write::Put(Item {
                expires: 1100,
                ..cur.clone()
            })
        );
    }
}
