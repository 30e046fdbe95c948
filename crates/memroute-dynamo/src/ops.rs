//! memcached semantics, independent of DynamoDB: requests decoded into
//! per-key operations, the pure decision "given the current item, what to
//! write and what to answer", and the reply bytes.

use bytes::{Bytes, BytesMut};
use memroute_proto::number::{apply_delta, parse_u64 as parse_counter, render_counter};
use memroute_proto::reply::{self, MetaReply};
use memroute_proto::{
    ArithOp, Command, MetaCommand, MetaOp, Request, Response, ResponseDecoder, StoreOp,
};

use crate::clock::{absolute_expiry, remaining_ttl};
use crate::item::Item;

pub const UNSUPPORTED: &str = "CLIENT_ERROR unsupported by the DynamoDB pool";
pub const FLUSH_UNSUPPORTED: &str = "SERVER_ERROR flush_all is not supported by the DynamoDB pool";
pub const TOO_LARGE: &str = "SERVER_ERROR object too large for cache";
pub const NO_MEMORY: &str = "SERVER_ERROR out of memory storing object";
pub const BACKEND_FAILURE: &str = "SERVER_ERROR backend failure";
pub const SPOOL_FULL: &str = "SERVER_ERROR write-behind spool full";
pub const SPOOL_FAILED: &str = "SERVER_ERROR write-behind spool failed";
pub const NON_NUMERIC: &str = "CLIENT_ERROR cannot increment or decrement non-numeric value";
pub const BAD_KEY: &str = "CLIENT_ERROR key is not usable as a DynamoDB string key";

/// How a storage operation treats the current item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

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
    pub incr: bool,
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
        size: usize,
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
            Outcome::Stored { size, .. } => Outcome::Stored { cas: new, size },
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
            let stored = |len: usize| Outcome::Stored { cas: 0, size: len };
            match (s.mode, current) {
                (StoreMode::Add, Some(_)) => Decision::reply(Outcome::NotStored),
                (StoreMode::Add, None) => {
                    put(fresh(s.value.clone(), s.exptime), stored(s.value.len()))
                }
                (StoreMode::Set | StoreMode::Replace, None) => {
                    if s.compare_cas.is_some() {
                        Decision::reply(Outcome::NotFound)
                    } else if s.mode == StoreMode::Replace {
                        Decision::reply(Outcome::NotStored)
                    } else {
                        put(fresh(s.value.clone(), s.exptime), stored(s.value.len()))
                    }
                }
                (StoreMode::Set | StoreMode::Replace, Some(item)) => {
                    if s.compare_cas.is_some_and(|c| c != item.cas) {
                        Decision::reply(Outcome::Exists)
                    } else {
                        put(fresh(s.value.clone(), s.exptime), stored(s.value.len()))
                    }
                }
                (StoreMode::Append | StoreMode::Prepend, None) => match s.vivify {
                    Some(exptime) => put(fresh(s.value.clone(), exptime), stored(s.value.len())),
                    None => Decision::reply(Outcome::NotStored),
                },
                (StoreMode::Append | StoreMode::Prepend, Some(item)) => {
                    if s.compare_cas.is_some_and(|c| c != item.cas) {
                        return Decision::reply(Outcome::Exists);
                    }
                    let mut value = BytesMut::with_capacity(item.value.len() + s.value.len());
                    if s.mode == StoreMode::Append {
                        value.extend_from_slice(&item.value);
                        value.extend_from_slice(&s.value);
                    } else {
                        value.extend_from_slice(&s.value);
                        value.extend_from_slice(&item.value);
                    }
                    let len = value.len();
                    let joined = Item {
                        value: value.freeze(),
                        flags: item.flags,
                        expires: item.expires,
                        cas: 0,
                    };
                    put(joined, stored(len))
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
                let value = apply_delta(current, a.delta, a.incr);
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
    Reply(Response),
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
        for c in chunk.valid().chars() {
            if c == '%' {
                id.push_str("%25");
            } else {
                id.push(c);
            }
        }
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
    let line = |l: &str| Plan::Reply(Response::from_line(l));
    let id_of = |key: &[u8]| key_to_id(key, strip);
    match request.command() {
        Command::Get(g) => {
            let mut ids = Vec::with_capacity(g.keys.len());
            for key in &g.keys {
                match id_of(key) {
                    Some(id) => ids.push(id),
                    None => return line(BAD_KEY),
                }
            }
            let touch = g.op.touches().then_some(i64::from(g.exptime));
            Plan::Get { ids, touch }
        }
        Command::Store(s) => {
            let Some(id) = id_of(&s.key) else {
                return line(BAD_KEY);
            };
            let mode = match s.op {
                StoreOp::Set | StoreOp::Cas => StoreMode::Set,
                StoreOp::Add => StoreMode::Add,
                StoreOp::Replace => StoreMode::Replace,
                StoreOp::Append => StoreMode::Append,
                StoreOp::Prepend => StoreMode::Prepend,
            };
            let spec = StoreSpec {
                mode,
                value: request.value().clone(),
                flags: s.flags,
                exptime: i64::from(s.exptime),
                compare_cas: (s.op == StoreOp::Cas).then_some(s.cas),
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
            None => line(BAD_KEY),
        },
        Command::Touch { key, exptime, .. } => match id_of(key) {
            Some(id) => Plan::Single {
                id,
                op: KeyOp::Touch {
                    exptime: i64::from(*exptime),
                },
            },
            None => line(BAD_KEY),
        },
        Command::Arith(a) => match id_of(&a.key) {
            Some(id) => Plan::Single {
                id,
                op: KeyOp::Arith(ArithSpec {
                    incr: a.op == ArithOp::Incr,
                    delta: a.delta,
                    vivify: None,
                    ttl: None,
                    compare_cas: None,
                }),
            },
            None => line(BAD_KEY),
        },
        Command::FlushAll { .. } => line(FLUSH_UNSUPPORTED),
        Command::Version => line(concat!(
            "VERSION memroute-dynamo ",
            env!("CARGO_PKG_VERSION")
        )),
        Command::Verbosity { .. } => line("OK"),
        Command::Stats { .. } => {
            let mut buf = BytesMut::from(&b"END\r\n"[..]);
            match ResponseDecoder::for_request(request).decode(&mut buf) {
                Ok(Some(r)) => Plan::Reply(r),
                _ => line("END"),
            }
        }
        Command::MetaNoop => line("MN"),
        Command::Quit => line(UNSUPPORTED),
        Command::Meta(meta) => plan_meta(meta, request, strip),
    }
}

fn plan_meta(meta: &MetaCommand, request: &Request, strip: Option<&str>) -> Plan {
    let line = |l: &str| Plan::Reply(Response::from_line(l));
    if meta.op == MetaOp::Debug || !meta_flags_supported(meta) {
        return line(UNSUPPORTED);
    }
    let f = &meta.flags;
    let ttl = |v: Option<i32>| v.map(i64::from);
    let op = match meta.op {
        MetaOp::Get => KeyOp::Read { touch: ttl(f.ttl) },
        MetaOp::Set => {
            let mode = match f.mode {
                None | Some(b'S' | b's') => StoreMode::Set,
                Some(b'E' | b'e') => StoreMode::Add,
                Some(b'R' | b'r') => StoreMode::Replace,
                Some(b'A' | b'a') => StoreMode::Append,
                Some(b'P' | b'p') => StoreMode::Prepend,
                Some(_) => return line("CLIENT_ERROR invalid mode for ms M token"),
            };
            let appending = matches!(mode, StoreMode::Append | StoreMode::Prepend);
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
        MetaOp::Arith => {
            let incr = match f.mode {
                None | Some(b'I' | b'i' | b'+') => true,
                Some(b'D' | b'd' | b'-') => false,
                Some(_) => return line("CLIENT_ERROR invalid mode for ma M token"),
            };
            KeyOp::Arith(ArithSpec {
                incr,
                delta: f.delta.unwrap_or(1),
                vivify: ttl(f.vivify_ttl).map(|t| (t, f.initial.unwrap_or(0))),
                ttl: ttl(f.ttl),
                compare_cas: f.compare_cas,
            })
        }
        MetaOp::Debug => return line(UNSUPPORTED),
    };
    match key_to_id(&meta.key, strip) {
        Some(id) => Plan::Single { id, op },
        None => line(BAD_KEY),
    }
}

/// Frames reply bytes as the [`Response`] to `request`.
pub fn frame(request: &Request, mut wire: BytesMut) -> Response {
    match ResponseDecoder::for_request(request).decode(&mut wire) {
        Ok(Some(r)) => r,
        _ => Response::from_line("SERVER_ERROR bad response"),
    }
}

/// The reply to a classic retrieval: every hit in key order, then `END`.
pub fn render_get(request: &Request, keys: &[Bytes], outcomes: &[Outcome]) -> Response {
    let with_cas = matches!(request.command(), Command::Get(g) if g.op.returns_cas());
    let mut out = BytesMut::new();
    for (key, outcome) in keys.iter().zip(outcomes) {
        match outcome {
            Outcome::Hit { item, .. } => reply::value(
                &mut out,
                key,
                item.flags,
                &item.value,
                with_cas.then_some(item.cas),
            ),
            Outcome::Failed => return Response::from_line(BACKEND_FAILURE),
            Outcome::SpoolFailed => return Response::from_line(SPOOL_FAILED),
            _ => {}
        }
    }
    reply::end(&mut out);
    frame(request, out)
}

/// Error lines shared by every command.
fn error_line(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::TooLarge => Some(TOO_LARGE),
        Outcome::NoMemory => Some(NO_MEMORY),
        Outcome::SpoolFull => Some(SPOOL_FULL),
        Outcome::SpoolFailed => Some(SPOOL_FAILED),
        Outcome::Failed => Some(BACKEND_FAILURE),
        Outcome::NonNumeric => Some(NON_NUMERIC),
        _ => None,
    }
}

/// The reply to a single-key request.
pub fn render_single(request: &Request, outcome: &Outcome, now: i64) -> Response {
    if let Some(l) = error_line(outcome) {
        return Response::from_line(l);
    }
    match request.command() {
        Command::Meta(meta) => render_meta(request, meta, outcome, now),
        Command::Arith(_) => match outcome {
            Outcome::Number { value, .. } => {
                let mut out = BytesMut::new();
                reply::number(&mut out, *value);
                frame(request, out)
            }
            _ => Response::from_line("NOT_FOUND"),
        },
        _ => Response::from_line(match outcome {
            Outcome::Stored { .. } => "STORED",
            Outcome::NotStored => "NOT_STORED",
            Outcome::Exists => "EXISTS",
            Outcome::Deleted => "DELETED",
            Outcome::Touched => "TOUCHED",
            _ => "NOT_FOUND",
        }),
    }
}

fn echo_key<'a>(r: MetaReply<'a>, meta: &MetaCommand) -> MetaReply<'a> {
    if meta.flags.base64_key() {
        r.key(&meta.key, true).flag(b'b')
    } else {
        r.flag_bytes(b'k', &meta.wire_key)
    }
}

/// A meta reply line with just the echoed `O` and `k` flags.
fn echo_only(request: &Request, meta: &MetaCommand, code: &str) -> Response {
    let mut out = BytesMut::new();
    let mut r = MetaReply::new(&mut out, code);
    for flag in meta.flags.iter() {
        r = match flag.letter {
            b'O' => r.flag_bytes(b'O', flag.token),
            b'k' => echo_key(r, meta),
            _ => r,
        };
    }
    r.finish();
    frame(request, out)
}

fn render_meta(request: &Request, meta: &MetaCommand, outcome: &Outcome, now: i64) -> Response {
    let f = &meta.flags;
    let mut out = BytesMut::new();
    match (meta.op, outcome) {
        (MetaOp::Get, Outcome::Hit { item, ttl_before }) => {
            let mut touched_yet = false;
            let touching = f.ttl.is_some();
            let mut r = if f.return_value() {
                MetaReply::value(&mut out, item.value.len())
            } else {
                MetaReply::new(&mut out, "HD")
            };
            for flag in f.iter() {
                r = match flag.letter {
                    b's' => r.flag_u64(b's', item.value.len() as u64),
                    b't' if touching && !touched_yet => r.flag_i64(b't', *ttl_before),
                    b't' => r.flag_i64(b't', remaining_ttl(item.expires, now)),
                    b'T' => {
                        touched_yet = true;
                        r
                    }
                    b'c' => r.flag_u64(b'c', item.cas),
                    b'f' => r.flag_u64(b'f', u64::from(item.flags)),
                    b'O' => r.flag_bytes(b'O', flag.token),
                    b'k' => echo_key(r, meta),
                    _ => r,
                };
            }
            r.finish();
            if f.return_value() {
                reply::data(&mut out, &item.value);
            }
            frame(request, out)
        }
        (MetaOp::Get, _) => echo_only(request, meta, "EN"),
        (MetaOp::Set, Outcome::Stored { cas, size }) => {
            let mut r = MetaReply::new(&mut out, "HD");
            for flag in f.iter() {
                r = match flag.letter {
                    b'O' => r.flag_bytes(b'O', flag.token),
                    b'k' => echo_key(r, meta),
                    b'c' => r.flag_u64(b'c', *cas),
                    b's' => r.flag_u64(b's', *size as u64),
                    _ => r,
                };
            }
            r.finish();
            frame(request, out)
        }
        (
            MetaOp::Arith,
            Outcome::Number {
                value,
                cas,
                expires,
            },
        ) => {
            let digits = value.to_string();
            let mut r = if f.return_value() {
                MetaReply::value(&mut out, digits.len())
            } else {
                MetaReply::new(&mut out, "HD")
            };
            for flag in f.iter() {
                r = match flag.letter {
                    b'O' => r.flag_bytes(b'O', flag.token),
                    b'k' => echo_key(r, meta),
                    b't' => r.flag_i64(b't', remaining_ttl(*expires, now)),
                    b'c' => r.flag_u64(b'c', *cas),
                    _ => r,
                };
            }
            r.finish();
            if f.return_value() {
                reply::data(&mut out, digits.as_bytes());
            }
            frame(request, out)
        }
        (_, o) => {
            let code = match o {
                Outcome::Stored { .. } | Outcome::Deleted | Outcome::Touched => "HD",
                Outcome::NotStored => "NS",
                Outcome::Exists => "EX",
                _ => "NF",
            };
            echo_only(request, meta, code)
        }
    }
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
            incr: true,
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
