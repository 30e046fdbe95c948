//! PHP sessions in the table format of the AWS SDK for PHP.
//!
//! php-memcached's session handler talks to memroute as to a memcached: it
//! reads and writes `<prefix><sid>` and locks with `add`/`delete` of
//! `<prefix>lock.<sid>`. Here both keys map onto one item per session laid
//! out as `Aws\DynamoDb\SessionHandler` lays it out: hash key
//! `<session name>_<sid>`, `data` (string, or binary), `expires` (epoch
//! seconds) and `lock` (the number 1 while locked). PHP applications on
//! either library then share sessions, and the table's TTL can remove old
//! sessions by `expires`.
//!
//! memcached locks expire (php-memcached sets the lock's exptime to
//! `sess_lock_expire` or `max_execution_time`), so that a crashed request
//! cannot lock a session forever; the SDK's locks never expire. The lock's
//! expiry is kept in one more attribute, `lock_expires`, which the SDK
//! ignores: an SDK lock has none and so never expires here either.
//!
//! Perl's CGI::Session with its memcached driver (through Cache::Memcached)
//! fits the same mapping: it sends `get <sid>`, `set <sid> 0 0 <len>` and
//! `delete <sid>`, with the Cache::Memcached `namespace` (often none) as the
//! key prefix, so a pool with `session_name = "CGISESSID"` and that prefix
//! stores its sessions as `CGISESSID_<sid>` items. CGI::Session keeps its
//! own expiry inside the data and always stores with exptime 0, so
//! `lifetime` gives such writes an `expires` (as the SDK's
//! `session_lifetime` does) for the table's TTL to act on. It has no lock of
//! its own; an application lock taken with `add lock.<sid>` is the same
//! `lock` attribute.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use bytes::Bytes;
use memroute_proto::{Command, ErrorReply, Reply, Request, Response, StoreMode};

use crate::clock::{absolute_expiry, is_expired, now_secs, remaining_ttl};
use crate::item::{Item, MAX_ID_LEN, MAX_ITEM_SIZE};
use crate::ops::{self, KeyOp, Outcome, Plan};
use crate::table::{Attrs, DdbError, Expr};
use crate::Inner;

/// The lock attribute (its name is fixed in the SDK's format).
pub const LOCK_ATTR: &str = "lock";
/// memroute's addition: when the lock expires (absent: never).
pub const LOCK_EXPIRES_ATTR: &str = "lock_expires";

/// What follows the key prefix in a lock key, before the session id.
const LOCK_INFIX: &str = "lock.";

/// The `expires` of data stored with exptime 0 ("never"): the SDK reads a
/// session without `expires` as gone, so "never" is the last second of
/// year 9999.
pub const NEVER_EXPIRES: i64 = 253_402_300_799;

/// The value a lock key reads as while the lock is held.
const LOCKED_VALUE: &[u8] = b"1";

/// How sessions are named and stored (`mcp.dynamo_pool{format="php_session"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhpSessionFormat {
    /// PHP's `session.name`: ids are `<session_name>_<sid>`, as the SDK
    /// writes them (the memcached keys never carry the name).
    pub session_name: String,
    /// php-memcached's `memcached.sess_prefix`.
    pub key_prefix: String,
    /// Store `data` as binary instead of string (the SDK's
    /// `data_attribute_type = 'binary'`).
    pub binary_data: bool,
    /// Seconds: data stored or touched with exptime 0 expires this long
    /// after the write (the SDK's `session_lifetime`) instead of never.
    /// For clients that store with no exptime, such as CGI::Session.
    pub lifetime: Option<u32>,
}

impl Default for PhpSessionFormat {
    fn default() -> Self {
        PhpSessionFormat {
            session_name: "PHPSESSID".into(),
            key_prefix: "memc.sess.key.".into(),
            binary_data: false,
            lifetime: None,
        }
    }
}

/// Which memcached key of a session a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Data,
    Lock,
}

/// A session item and the part of it a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    id: String,
    part: Part,
}

/// A request, checked and decoded for the session store.
pub(crate) enum SessionPlan {
    Reply(Reply),
    Single(Target, KeyOp),
    Get(Vec<Target>, Option<i64>),
}

impl PhpSessionFormat {
    /// The session item and part `id` (a table id from [`ops::plan`])
    /// names, if it is a session key.
    fn target(&self, id: &str) -> Option<Target> {
        let key = String::from_utf8(ops::id_to_key(id, None)).ok()?;
        let rest = key.strip_prefix(self.key_prefix.as_str())?;
        let (part, sid) = match rest.strip_prefix(LOCK_INFIX) {
            Some(sid) => (Part::Lock, sid),
            None => (Part::Data, rest),
        };
        if sid.is_empty() {
            return None;
        }
        let id = format!("{}_{}", self.session_name, sid);
        (id.len() <= MAX_ID_LEN).then_some(Target { id, part })
    }

    /// Decodes `request`; what the store cannot do faithfully is answered
    /// at once with an error naming why.
    pub(crate) fn plan(&self, request: &Request) -> SessionPlan {
        let reply = |error: ErrorReply| SessionPlan::Reply(Reply::from(error));
        match ops::plan(request, None) {
            Plan::Reply(answer) => SessionPlan::Reply(answer),
            Plan::Get { ids, touch } => {
                let mut targets = Vec::with_capacity(ids.len());
                for id in &ids {
                    match self.target(id) {
                        Some(t) => targets.push(t),
                        None => return reply(ErrorReply::NotSessionKey),
                    }
                }
                SessionPlan::Get(targets, touch)
            }
            Plan::Single { id, op } => {
                let Some(target) = self.target(&id) else {
                    return reply(ErrorReply::NotSessionKey);
                };
                match &op {
                    KeyOp::Read { .. } | KeyOp::Touch { .. } => {}
                    KeyOp::Delete { compare_cas: None } => {}
                    KeyOp::Store(s)
                        if s.compare_cas.is_none()
                            && matches!(
                                s.mode,
                                StoreMode::Set | StoreMode::Add | StoreMode::Replace
                            ) =>
                    {
                        if s.flags != 0 {
                            return reply(ErrorReply::SessionFlags);
                        }
                        let text_data = target.part == Part::Data && !self.binary_data;
                        if text_data && std::str::from_utf8(&s.value).is_err() {
                            return reply(ErrorReply::SessionNotUtf8);
                        }
                    }
                    _ => return reply(ErrorReply::SessionUnsupported),
                }
                SessionPlan::Single(target, op)
            }
        }
    }
}

fn number(attrs: &Attrs, name: &str) -> Option<i64> {
    match attrs.get(name)? {
        AttributeValue::N(n) => n.split('.').next()?.parse().ok(),
        _ => None,
    }
}

fn bytes(attrs: &Attrs, name: &str) -> Option<Bytes> {
    match attrs.get(name)? {
        AttributeValue::S(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        AttributeValue::B(b) => Some(Bytes::copy_from_slice(b.as_ref())),
        _ => None,
    }
}

impl Inner {
    /// The attribute names of the session table: hash key, data, expires.
    fn session_names(&self) -> (&str, &str, &str) {
        let c = &self.config;
        (&c.key_attr, &c.value_attr, &c.expires_attr)
    }

    /// Expression placeholders for every session attribute (the table drops
    /// those an expression does not use).
    fn session_expr(&self, now: i64) -> Expr {
        let (_, data, expires) = self.session_names();
        let mut e = Expr::default();
        e.name("#d", data)
            .name("#e", expires)
            .name("#l", LOCK_ATTR)
            .name("#lx", LOCK_EXPIRES_ATTR)
            .num(":now", now);
        e
    }

    /// `expires` for session data stored with a memcached exptime.
    fn data_expiry(&self, exptime: i64, now: i64) -> i64 {
        let lifetime = self.config.php_session.as_ref().and_then(|f| f.lifetime);
        data_expiry(exptime, now, lifetime)
    }

    /// The session's data as memcached sees it: present only with both
    /// `data` and a future `expires`, as the SDK reads it.
    fn live_data(&self, attrs: &Attrs, now: i64) -> Option<Item> {
        let (_, data, expires) = self.session_names();
        let expires = number(attrs, expires)?;
        let value = bytes(attrs, data)?;
        (!is_expired(expires, now)).then_some(Item {
            value,
            flags: 0,
            expires,
            cas: 0,
        })
    }

    /// The lock as memcached sees it: held, with its expiry (0 = never).
    fn live_lock(&self, attrs: &Attrs, now: i64) -> Option<Item> {
        attrs.get(LOCK_ATTR)?;
        let expires = number(attrs, LOCK_EXPIRES_ATTR).unwrap_or(0);
        (!is_expired(expires, now)).then_some(Item {
            value: Bytes::from_static(LOCKED_VALUE),
            flags: 0,
            expires,
            cas: 0,
        })
    }

    fn live_part(&self, part: Part, attrs: &Attrs, now: i64) -> Option<Item> {
        match part {
            Part::Data => self.live_data(attrs, now),
            Part::Lock => self.live_lock(attrs, now),
        }
    }

    /// Runs a planned session request and renders memcached's reply.
    pub(crate) async fn run_session(&self, request: &Request, plan: SessionPlan) -> Response {
        match plan {
            SessionPlan::Reply(answer) => answer.to_response(request),
            SessionPlan::Single(target, op) => {
                let outcome = self.session_op(&target, &op).await;
                self.render_single(request, &outcome)
            }
            SessionPlan::Get(targets, touch) => {
                let Command::Get(get) = request.command() else {
                    return Reply::from(ErrorReply::BackendFailure).to_response(request);
                };
                let op = KeyOp::Read { touch };
                let mut outcomes = Vec::with_capacity(targets.len());
                for target in &targets {
                    outcomes.push(self.session_op(target, &op).await);
                }
                if outcomes.contains(&Outcome::Failed) {
                    self.counters.errors.incr();
                }
                ops::render_get(request, &get.keys, &outcomes, now_secs())
            }
        }
    }

    /// One operation on one part of a session item.
    async fn session_op(&self, t: &Target, op: &KeyOp) -> Outcome {
        let now = now_secs();
        let result = match op {
            KeyOp::Read { touch: None } => self.session_read(t, now).await,
            KeyOp::Read {
                touch: Some(exptime),
            }
            | KeyOp::Touch { exptime } => self.session_touch(t, op, *exptime, now).await,
            KeyOp::Store(s) => self.session_store(t, s, now).await,
            KeyOp::Delete { .. } => self.session_delete(t, now).await,
            // Refused by `plan`.
            KeyOp::Arith(_) => Ok(Outcome::Failed),
        };
        match result {
            Ok(outcome) => outcome,
            Err(DdbError::TooLarge) => Outcome::TooLarge,
            Err(e) => self.failed(&t.id, "session", &e),
        }
    }

    async fn session_read(&self, t: &Target, now: i64) -> Result<Outcome, DdbError> {
        self.counters.reads.incr();
        let attrs = self.table.get_attrs(&t.id).await?;
        let item = attrs.and_then(|a| self.live_part(t.part, &a, now));
        Ok(match item {
            Some(item) => {
                self.counters.read_hits.incr();
                Outcome::Hit {
                    ttl_before: remaining_ttl(item.expires, now),
                    item,
                }
            }
            None => {
                self.counters.read_misses.incr();
                Outcome::Miss
            }
        })
    }

    /// `touch`, `gat` and `mg T`: a new expiry for a live part.
    async fn session_touch(
        &self,
        t: &Target,
        op: &KeyOp,
        exptime: i64,
        now: i64,
    ) -> Result<Outcome, DdbError> {
        let mut e = self.session_expr(now);
        let (update, cond) = match t.part {
            Part::Data => {
                e.num(":x", self.data_expiry(exptime, now));
                ("SET #e = :x", LIVE_DATA)
            }
            Part::Lock => match absolute_expiry(exptime, now) {
                0 => ("REMOVE #lx", LIVE_LOCK),
                x => {
                    e.num(":x", x);
                    ("SET #lx = :x", LIVE_LOCK)
                }
            },
        };
        e.text = cond.into();
        self.counters.sync_writes.incr();
        let Some(old) = self
            .table
            .update_attrs(&t.id, update, e, ReturnValue::AllOld)
            .await?
        else {
            return Ok(match op {
                KeyOp::Touch { .. } => Outcome::NotFound,
                _ => Outcome::Miss,
            });
        };
        if let KeyOp::Touch { .. } = op {
            return Ok(Outcome::Touched);
        }
        let Some(item) = self.live_part(t.part, &old, now) else {
            return Ok(Outcome::Miss);
        };
        let expires = match t.part {
            Part::Data => self.data_expiry(exptime, now),
            Part::Lock => absolute_expiry(exptime, now),
        };
        Ok(Outcome::Hit {
            ttl_before: remaining_ttl(item.expires, now),
            item: Item { expires, ..item },
        })
    }

    /// set / add / replace of the data or of the lock.
    async fn session_store(
        &self,
        t: &Target,
        s: &ops::StoreSpec,
        now: i64,
    ) -> Result<Outcome, DdbError> {
        if t.part == Part::Data && is_expired(self.data_expiry(s.exptime, now), now) {
            return self.store_expired(t, s, now).await;
        }
        let mut e = self.session_expr(now);
        let update = match t.part {
            Part::Data => {
                if !self.session_fits(&t.id, s.value.len()) {
                    return Ok(Outcome::TooLarge);
                }
                let data = if self
                    .config
                    .php_session
                    .as_ref()
                    .is_some_and(|f| f.binary_data)
                {
                    AttributeValue::B(Blob::new(s.value.to_vec()))
                } else {
                    // `plan` refused data that is not UTF-8.
                    AttributeValue::S(String::from_utf8_lossy(&s.value).into_owned())
                };
                e.value(":d", data)
                    .num(":x", self.data_expiry(s.exptime, now));
                e.text = match s.mode {
                    StoreMode::Add => format!("NOT ({LIVE_DATA})"),
                    StoreMode::Replace => LIVE_DATA.into(),
                    _ => String::new(),
                };
                "SET #d = :d, #e = :x"
            }
            Part::Lock => {
                e.num(":one", 1);
                e.text = match s.mode {
                    StoreMode::Add => format!("NOT ({LIVE_LOCK})"),
                    StoreMode::Replace => LIVE_LOCK.into(),
                    _ => String::new(),
                };
                match absolute_expiry(s.exptime, now) {
                    0 => "SET #l = :one REMOVE #lx",
                    x => {
                        e.num(":x", x);
                        "SET #l = :one, #lx = :x"
                    }
                }
            }
        };
        self.counters.sync_writes.incr();
        let stored = self
            .table
            .update_attrs(&t.id, update, e, ReturnValue::None)
            .await?;
        Ok(match stored {
            Some(_) => Outcome::Stored { cas: 0 },
            None => Outcome::NotStored,
        })
    }

    /// Data stored already expired (a negative exptime, or an absolute one
    /// in the past): memcached stores an item nobody can read, so the
    /// outcome is that of the store, and the effect that of a delete. Like
    /// memcached, nothing is left behind; php-memcached's session-id probe
    /// (an `add` with expiry 2678400, a time in 1970) relies on that.
    async fn store_expired(
        &self,
        t: &Target,
        s: &ops::StoreSpec,
        now: i64,
    ) -> Result<Outcome, DdbError> {
        let live = match s.mode {
            StoreMode::Set => None,
            _ => Some(matches!(
                self.session_read(t, now).await?,
                Outcome::Hit { .. }
            )),
        };
        let stored = Outcome::Stored { cas: 0 };
        Ok(match (s.mode, live) {
            (StoreMode::Add, Some(true)) | (StoreMode::Replace, Some(false)) => Outcome::NotStored,
            (StoreMode::Add, _) => stored,
            _ => {
                self.session_delete(t, now).await?;
                stored
            }
        })
    }

    /// `delete` of the data (the session is destroyed; a lock stays until
    /// its own delete) or of the lock (unlock). An item left with neither
    /// is removed.
    async fn session_delete(&self, t: &Target, now: i64) -> Result<Outcome, DdbError> {
        let mut e = self.session_expr(now);
        // Unlocking removes an expired lock too (else the SDK, which knows
        // no lock expiry, would see the session locked forever), but only a
        // live one answers DELETED.
        let (update, cond) = match t.part {
            Part::Data => ("REMOVE #d, #e", LIVE_DATA),
            Part::Lock => ("REMOVE #l, #lx", "attribute_exists(#l)"),
        };
        e.text = cond.into();
        self.counters.sync_writes.incr();
        let Some(old) = self
            .table
            .update_attrs(&t.id, update, e, ReturnValue::AllOld)
            .await?
        else {
            return Ok(Outcome::NotFound);
        };
        let (_, data, _) = self.session_names();
        let other_part_left = match t.part {
            Part::Data => old.contains_key(LOCK_ATTR),
            Part::Lock => old.contains_key(data),
        };
        if !other_part_left {
            let mut gone = self.session_expr(now);
            gone.text = "attribute_not_exists(#d) AND attribute_not_exists(#l)".into();
            // A failed condition means it was written again in between.
            if let Err(e) = self.table.delete_if(&t.id, gone).await {
                tracing::debug!(id = t.id, error = %e.describe(), "empty session item left");
            }
        }
        Ok(if self.live_part(t.part, &old, now).is_some() {
            Outcome::Deleted
        } else {
            Outcome::NotFound
        })
    }

    /// Whether session data of `len` bytes fits in one item, with every
    /// other attribute at its largest.
    fn session_fits(&self, id: &str, len: usize) -> bool {
        let (key, data, expires) = self.session_names();
        let number = 21;
        let size = key.len()
            + id.len()
            + data.len()
            + len
            + expires.len()
            + number
            + LOCK_ATTR.len()
            + number
            + LOCK_EXPIRES_ATTR.len()
            + number;
        size <= MAX_ITEM_SIZE
    }
}

/// Data with live `expires` (the SDK's rule: data and a future expiry).
const LIVE_DATA: &str = "attribute_exists(#d) AND #e > :now";

/// A held lock that has not expired.
const LIVE_LOCK: &str = "attribute_exists(#l) AND (attribute_not_exists(#lx) OR #lx > :now)";

/// `expires` for data stored with a memcached exptime: exptime 0 is
/// `lifetime` seconds from now if the format has one, else never.
fn data_expiry(exptime: i64, now: i64, lifetime: Option<u32>) -> i64 {
    match (absolute_expiry(exptime, now), lifetime) {
        (0, Some(lifetime)) => now + i64::from(lifetime),
        (0, None) => NEVER_EXPIRES,
        (x, _) => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(f: &PhpSessionFormat, key: &str) -> Option<(String, Part)> {
        f.target(&ops::key_to_id(key.as_bytes(), None)?)
            .map(|t| (t.id, t.part))
    }

    #[test]
    fn keys_name_session_items() {
        let f = PhpSessionFormat::default();
        assert_eq!(
            target(&f, "memc.sess.key.abc123"),
            Some(("PHPSESSID_abc123".into(), Part::Data))
        );
        assert_eq!(
            target(&f, "memc.sess.key.lock.abc123"),
            Some(("PHPSESSID_abc123".into(), Part::Lock))
        );
        assert_eq!(target(&f, "memc.sess.key."), None);
        assert_eq!(target(&f, "memc.sess.key.lock."), None);
        assert_eq!(target(&f, "other.abc"), None);
        // A session id with the escape character survives the id mapping.
        assert_eq!(
            target(&f, "memc.sess.key.a%b"),
            Some(("PHPSESSID_a%b".into(), Part::Data))
        );
        let custom = PhpSessionFormat {
            session_name: "APP".into(),
            key_prefix: String::new(),
            binary_data: false,
            lifetime: None,
        };
        assert_eq!(target(&custom, "xyz"), Some(("APP_xyz".into(), Part::Data)));
        assert_eq!(
            target(&custom, "lock.xyz"),
            Some(("APP_xyz".into(), Part::Lock))
        );
    }

    #[test]
    fn non_utf8_keys_are_not_session_keys() {
        let f = PhpSessionFormat::default();
        let id = ops::key_to_id(b"memc.sess.key.\xff", None).unwrap();
        assert_eq!(f.target(&id), None);
    }

    #[test]
    fn never_is_far_future() {
        assert_eq!(data_expiry(0, 1000, None), NEVER_EXPIRES);
        assert_eq!(data_expiry(60, 1000, None), 1060);
        // Negative: already expired (stored as now).
        assert_eq!(data_expiry(-1, 1000, None), 1000);
        assert!(is_expired(data_expiry(-1, 1000, None), 1000));
    }

    #[test]
    fn a_lifetime_replaces_never_only() {
        // CGI::Session stores with exptime 0: the lifetime gives it one.
        assert_eq!(data_expiry(0, 1000, Some(3600)), 4600);
        // An exptime the client gave wins, expired or not.
        assert_eq!(data_expiry(60, 1000, Some(3600)), 1060);
        assert_eq!(data_expiry(-1, 1000, Some(3600)), 1000);
    }

    #[test]
    fn cgi_session_keys_name_session_items() {
        // Cache::Memcached without a namespace: the bare CGI::Session id.
        let bare = PhpSessionFormat {
            session_name: "CGISESSID".into(),
            key_prefix: String::new(),
            binary_data: false,
            lifetime: Some(86400),
        };
        let sid = "3f1c0e9a5b7d4e2f8a6c1b0d9e8f7a6b";
        let id = format!("CGISESSID_{sid}");
        assert_eq!(target(&bare, sid), Some((id.clone(), Part::Data)));
        assert_eq!(
            target(&bare, &format!("lock.{sid}")),
            Some((id.clone(), Part::Lock))
        );
        // With `namespace => "cgisess:"`.
        let ns = PhpSessionFormat {
            key_prefix: "cgisess:".into(),
            ..bare
        };
        assert_eq!(
            target(&ns, &format!("cgisess:{sid}")),
            Some((id.clone(), Part::Data))
        );
        assert_eq!(
            target(&ns, &format!("cgisess:lock.{sid}")),
            Some((id, Part::Lock))
        );
        assert_eq!(target(&ns, sid), None);
    }
}
