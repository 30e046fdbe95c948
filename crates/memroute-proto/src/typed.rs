//! Typed replies: memcached's answer to one request as a value, and its
//! three encodings.
//!
//! The embedded cache and the DynamoDB pool answer with a [`Reply`]: a
//! [`Status`] and the item data the request may ask to see (value, client
//! flags, CAS, TTL, ...). One value is encoded for whichever protocol the
//! client speaks:
//!
//! - text ([`Reply::encode`] on a classic request): `STORED`, `VALUE ...`,
//!   a number, an error line;
//! - meta ([`Reply::encode_meta`]): `HD`/`VA`/`EN`/... with the return flags
//!   the client asked for, in its order, echoing `O`, `k` (and `b`);
//! - binary ([`BinaryContext::encode_reply`](crate::binary::BinaryContext::encode_reply)):
//!   a response packet whose status code follows from the variant.
//!
//! Which item data a reply carries is the producer's to say: a meta return
//! flag is written only when the client asked for it *and* the reply
//! carries it. The echoed tokens (`O`, `k`) are the request's, so they are
//! taken from it at encode time rather than copied into the reply.
//!
//! Replies relayed from memcached backends stay raw bytes; only when one
//! must be re-encoded (to binary) is its first line read once into a
//! `Reply` ([`Reply::parse`]).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::errors::{ErrorClass, ErrorReply};
use crate::number::parse_u64;
use crate::reply::{self, MetaReply};
use crate::request::{Command, MetaCommand, MetaOp, Request};
use crate::response::{Response, ResponseCode};

/// What happened, in memcached's vocabulary. Each variant is one reply
/// code per protocol (text / meta / binary status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// An item was found: `VALUE` / `VA` or `HD` / OK with the value.
    Hit,
    /// No item: nothing before `END` / `EN` / key not found.
    Miss,
    /// `STORED` / `HD`.
    Stored,
    /// `NOT_STORED` / `NS`: the add/replace/append condition failed.
    NotStored,
    /// `EXISTS` / `EX`: the CAS did not match.
    Exists,
    /// `NOT_FOUND` / `NF`.
    NotFound,
    /// `DELETED` / `HD`.
    Deleted,
    /// `TOUCHED` / `HD`.
    Touched,
    /// A counter's new value: the number / `VA` with its digits or `HD`.
    Number(u64),
    /// `OK` (`flush_all`, `verbosity`) / `HD`.
    Ok,
    /// `MN`.
    Noop,
    /// `VERSION <value>`.
    Version,
    /// An error line of the table.
    Error(ErrorReply),
    /// An error line not in the table (a backend's own wording), kept
    /// verbatim, without `\r\n`.
    OtherError(ErrorClass, Bytes),
    /// A reply line outside this vocabulary (`ME ...`, `STAT ...`), as a
    /// backend sent it, without `\r\n`.
    Other(Bytes),
}

/// One reply, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    /// The data of a hit; the text of `Version`.
    pub value: Bytes,
    /// Client flags (`VALUE` line, meta `f`, binary extras).
    pub flags: Option<u32>,
    /// CAS unique (`gets`, meta `c`, binary header).
    pub cas: Option<u64>,
    /// Remaining TTL in seconds, -1 = never (meta `t`).
    pub ttl: Option<i64>,
    /// The TTL before this request's `T` touch: a `t` the client placed
    /// before `T` shows it, as memcached applies flags in order.
    pub ttl_before_touch: Option<i64>,
    /// Item size (meta `s`).
    pub size: Option<u64>,
    /// Seconds since the previous access (meta `l`).
    pub last_access: Option<i64>,
    /// Whether the item had been fetched before (meta `h`).
    pub fetched: Option<bool>,
    /// Meta `W`: the client won the right to recache the item.
    pub won: bool,
    /// Meta `X`: the item is stale.
    pub stale: bool,
    /// Meta `Z`: a win token was already handed out.
    pub win_token_sent: bool,
    /// The item was made by this request (an `ma` with `N` on a miss):
    /// memcached shows that reply even under `q`.
    pub created: bool,
}

impl From<Status> for Reply {
    fn from(status: Status) -> Reply {
        Reply {
            status,
            value: Bytes::new(),
            flags: None,
            cas: None,
            ttl: None,
            ttl_before_touch: None,
            size: None,
            last_access: None,
            fetched: None,
            won: false,
            stale: false,
            win_token_sent: false,
            created: false,
        }
    }
}

impl From<ErrorReply> for Reply {
    fn from(error: ErrorReply) -> Reply {
        Reply::from(Status::Error(error))
    }
}

/// Digits of a counter, written without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn new(mut n: u64) -> Digits {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Digits { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl Reply {
    /// A hit on an item with this data and client flags.
    pub fn hit(value: Bytes, flags: u32) -> Reply {
        Reply {
            // A hit's item is as long as its value (meta `s`).
            size: Some(value.len() as u64),
            value,
            flags: Some(flags),
            ..Reply::from(Status::Hit)
        }
    }

    /// A counter's new value.
    pub fn number(value: u64) -> Reply {
        Reply::from(Status::Number(value))
    }

    /// `VERSION <version>`.
    pub fn version(version: &'static str) -> Reply {
        Reply {
            value: Bytes::from_static(version.as_bytes()),
            ..Reply::from(Status::Version)
        }
    }

    /// The same reply carrying a CAS unique.
    pub fn with_cas(mut self, cas: u64) -> Reply {
        self.cas = Some(cas);
        self
    }

    /// The same reply carrying a remaining TTL.
    pub fn with_ttl(mut self, ttl: i64) -> Reply {
        self.ttl = Some(ttl);
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        matches!(self.status, Status::Error(_) | Status::OtherError(..))
    }

    /// Whether the meta `q` flag hides this reply: the nominal outcomes
    /// (`EN` of `mg`, `HD` of `ms`/`md`, the result of `ma` on an item that
    /// was there); failures, hits and an item `ma` created are still sent.
    pub fn quiet_hides(&self) -> bool {
        !self.created
            && matches!(
                self.status,
                Status::Miss
                    | Status::Stored
                    | Status::Deleted
                    | Status::Touched
                    | Status::Number(_)
            )
    }

    /// Whether `request` asked not to see this reply (text `noreply`
    /// hides every reply, errors too; meta `q` see [`Reply::quiet_hides`]).
    pub fn hidden_from(&self, request: &Request) -> bool {
        match request.command() {
            Command::Meta(meta) => meta.flags.quiet() && self.quiet_hides(),
            _ => request.noreply(),
        }
    }

    /// Appends the reply to `request` in its protocol: meta for meta
    /// commands, text otherwise (a retrieval's hit for its first key, then
    /// `END`).
    pub fn encode(&self, request: &Request, out: &mut BytesMut) {
        match request.command() {
            Command::Meta(meta) => self.encode_meta(meta, out),
            Command::Get(get) if !self.is_error() => {
                if let Some(key) = get.keys.first() {
                    self.encode_value(key, get.op.returns_cas(), out);
                }
                reply::end(out);
            }
            _ => self.encode_text(out),
        }
    }

    /// Text: the `VALUE` block of a hit on `key` (with the CAS for
    /// `gets`/`gats`); nothing for anything else. The caller ends the
    /// retrieval with `END`.
    pub fn encode_value(&self, key: &[u8], with_cas: bool, out: &mut BytesMut) {
        if self.status == Status::Hit {
            let cas = with_cas.then(|| self.cas.unwrap_or(0));
            reply::value(out, key, self.flags.unwrap_or(0), &self.value, cas);
        }
    }

    /// Text: the one-line reply. A retrieval's hits are written by
    /// [`Reply::encode_value`], which knows the key; here a hit or a miss
    /// is the `END` that closes a retrieval.
    pub fn encode_text(&self, out: &mut BytesMut) {
        let line: &[u8] = match &self.status {
            Status::Hit | Status::Miss => b"END",
            Status::Stored => b"STORED",
            Status::NotStored => b"NOT_STORED",
            Status::Exists => b"EXISTS",
            Status::NotFound => b"NOT_FOUND",
            Status::Deleted => b"DELETED",
            Status::Touched => b"TOUCHED",
            Status::Number(n) => {
                return line_bytes(out, &[Digits::new(*n).as_bytes()]);
            }
            Status::Ok => b"OK",
            Status::Noop => b"MN",
            Status::Version => return line_bytes(out, &[b"VERSION ", &self.value]),
            Status::Error(e) => e.text().as_bytes(),
            Status::OtherError(_, line) | Status::Other(line) => line,
        };
        line_bytes(out, &[line]);
    }

    /// Meta: the reply line with the return flags `meta` asked for (those
    /// this reply carries), in the client's order, then `VA`'s data.
    pub fn encode_meta(&self, meta: &MetaCommand, out: &mut BytesMut) {
        let f = &meta.flags;
        let digits;
        let data: Option<&[u8]> = match &self.status {
            Status::Hit if f.return_value() => Some(&self.value),
            Status::Number(n) if f.return_value() => {
                digits = Digits::new(*n);
                Some(digits.as_bytes())
            }
            _ => None,
        };
        let code = match &self.status {
            Status::Hit | Status::Number(_) => "HD",
            Status::Stored | Status::Deleted | Status::Touched | Status::Ok => "HD",
            Status::Miss => "EN",
            Status::NotFound => "NF",
            Status::NotStored => "NS",
            Status::Exists => "EX",
            Status::Noop => "MN",
            Status::Version | Status::Error(_) | Status::OtherError(..) | Status::Other(_) => {
                return self.encode_text(out);
            }
        };
        let mut r = match data {
            Some(data) => MetaReply::value(out, data.len()),
            None => MetaReply::new(out, code),
        };
        let touching = f.ttl.is_some();
        let mut touched_yet = false;
        for flag in f.iter() {
            r = match flag.letter {
                b'O' => r.flag_bytes(b'O', flag.token),
                b'k' if f.base64_key() => r.key(&meta.key, true).flag(b'b'),
                b'k' => r.flag_bytes(b'k', &meta.wire_key),
                b'T' => {
                    touched_yet = true;
                    r
                }
                b't' => {
                    let before = (touching && !touched_yet)
                        .then_some(self.ttl_before_touch)
                        .flatten();
                    match before.or(self.ttl) {
                        Some(ttl) => r.flag_i64(b't', ttl),
                        None => r,
                    }
                }
                b'c' => opt(r, b'c', self.cas),
                b'f' => opt(r, b'f', self.flags.map(u64::from)),
                b's' => opt(r, b's', self.size),
                b'h' => opt(r, b'h', self.fetched.map(u64::from)),
                b'l' => match self.last_access {
                    Some(l) => r.flag_i64(b'l', l),
                    None => r,
                },
                _ => r,
            };
        }
        if self.win_token_sent {
            r = r.flag(b'Z');
        }
        if self.stale {
            r = r.flag(b'X');
        }
        if self.won {
            r = r.flag(b'W');
        }
        r.finish();
        if let Some(data) = data {
            reply::data(out, data);
        }
    }

    /// The reply to `request` as a framed [`Response`], encoded once: its
    /// code and where its value lies follow from the variant, not from
    /// reading the bytes back.
    pub fn to_response(&self, request: &Request) -> Response {
        let mut raw = BytesMut::with_capacity(64 + self.value.len());
        self.encode(request, &mut raw);
        let code = self.response_code(request);
        let meta_get = matches!(request.command(), Command::Meta(m) if m.op == MetaOp::Get);
        // Bytes after the value: its `\r\n`, and a retrieval's `END\r\n`.
        let value_tail = match code {
            ResponseCode::Va => Some(2),
            ResponseCode::Value => Some(7),
            _ => None,
        };
        let (line_len, value) = match value_tail {
            Some(tail) => {
                let end = raw.len() - tail;
                let start = end - self.data_len();
                (start - 2, Some(start..end))
            }
            None => (raw.len() - 2, None),
        };
        let hit = matches!(code, ResponseCode::Value | ResponseCode::Va)
            || (meta_get && code == ResponseCode::Hd);
        Response::encoded(raw.freeze(), code, line_len, value, hit)
    }

    /// The whole reply to a text retrieval over `keys` (`replies[i]`
    /// answers `keys[i]`): each hit's `VALUE` block in key order, then
    /// `END`; or the first error alone.
    pub fn retrieval_response(keys: &[Bytes], replies: &[Reply], with_cas: bool) -> Response {
        if let Some(error) = replies.iter().find(|r| r.is_error()) {
            let mut raw = BytesMut::new();
            error.encode_text(&mut raw);
            let line_len = raw.len() - 2;
            return Response::encoded(
                raw.freeze(),
                error.response_code_alone(),
                line_len,
                None,
                false,
            );
        }
        let mut raw = BytesMut::new();
        let mut first: Option<(usize, Range<usize>)> = None;
        for (key, reply) in keys.iter().zip(replies) {
            let start = raw.len();
            reply.encode_value(key, with_cas, &mut raw);
            if first.is_none() && raw.len() > start {
                let end = raw.len() - 2;
                let value = end - reply.value.len()..end;
                first = Some((value.start - 2 - start, value));
            }
        }
        reply::end(&mut raw);
        match first {
            Some((line_len, value)) => Response::encoded(
                raw.freeze(),
                ResponseCode::Value,
                line_len,
                Some(value),
                true,
            ),
            None => Response::encoded(raw.freeze(), ResponseCode::End, 3, None, false),
        }
    }

    /// Length of the data block this reply writes (a hit's value, a
    /// counter's digits).
    fn data_len(&self) -> usize {
        match self.status {
            Status::Number(n) => Digits::new(n).as_bytes().len(),
            _ => self.value.len(),
        }
    }

    /// The [`ResponseCode`] of this reply's encoding for `request`.
    fn response_code(&self, request: &Request) -> ResponseCode {
        use ResponseCode as C;
        match request.command() {
            Command::Meta(meta) => match self.status {
                Status::Hit | Status::Number(_) if meta.flags.return_value() => C::Va,
                Status::Hit | Status::Number(_) => C::Hd,
                Status::Stored | Status::Deleted | Status::Touched | Status::Ok => C::Hd,
                Status::Miss => C::En,
                Status::NotFound => C::Nf,
                Status::NotStored => C::Ns,
                Status::Exists => C::Ex,
                Status::Noop => C::Mn,
                _ => self.response_code_alone(),
            },
            Command::Get(_) if self.status == Status::Hit => C::Value,
            _ => self.response_code_alone(),
        }
    }

    /// The [`ResponseCode`] of this reply's text line.
    fn response_code_alone(&self) -> ResponseCode {
        use ResponseCode as C;
        let class_code = |class| match class {
            ErrorClass::Error => C::Error,
            ErrorClass::Client => C::ClientError,
            ErrorClass::Server => C::ServerError,
        };
        match &self.status {
            Status::Hit => C::Value,
            Status::Miss => C::End,
            Status::Stored => C::Stored,
            Status::NotStored => C::NotStored,
            Status::Exists => C::Exists,
            Status::NotFound => C::NotFound,
            Status::Deleted => C::Deleted,
            Status::Touched => C::Touched,
            Status::Number(_) => C::Number,
            Status::Ok => C::Ok,
            Status::Noop => C::Mn,
            Status::Version => C::Version,
            Status::Error(e) => class_code(e.class()),
            Status::OtherError(class, _) => class_code(*class),
            // Only read from backends, never produced for a Response.
            Status::Other(_) => C::ServerError,
        }
    }

    /// Reads a text or meta reply (as a backend sent it) into a `Reply`,
    /// from its first line and, for `VA`/`VALUE`, its data block; the
    /// value is a slice of `raw`, not a copy. Meta `HD` does not say which
    /// success it was, so it reads as [`Status::Ok`].
    pub fn parse(raw: &Bytes) -> Reply {
        let (line_end, data_start) = match memchr::memmem::find(raw, b"\r\n") {
            Some(at) => (at, at + 2),
            None => (raw.len(), raw.len()),
        };
        let line = &raw[..line_end];
        let mut tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
        let code = tokens.next().unwrap_or(b"");
        let data = |size: Option<&[u8]>| {
            let size = size.and_then(parse_u64).unwrap_or(0) as usize;
            raw.slice(data_start..data_start.saturating_add(size).min(raw.len()))
        };
        let status = match code {
            b"VA" => {
                let value = data(tokens.next());
                let mut reply = Reply {
                    value,
                    ..Reply::from(Status::Hit)
                };
                for flag in tokens {
                    let number = parse_u64(&flag[1..]);
                    match flag[0] {
                        b'f' => reply.flags = number.map(|n| n as u32),
                        b'c' => reply.cas = number,
                        // `t-1`: no expiry.
                        b't' => {
                            reply.ttl = std::str::from_utf8(&flag[1..])
                                .ok()
                                .and_then(|t| t.parse::<i64>().ok())
                        }
                        _ => {}
                    }
                }
                return reply;
            }
            b"VALUE" => {
                let _key = tokens.next();
                let flags = tokens.next().and_then(parse_u64).unwrap_or(0) as u32;
                let value = data(tokens.next());
                let cas = tokens.next().and_then(parse_u64);
                return Reply {
                    cas,
                    ..Reply::hit(value, flags)
                };
            }
            b"HD" => {
                let cas = tokens
                    .find(|t| t[0] == b'c')
                    .and_then(|t| parse_u64(&t[1..]));
                return Reply {
                    cas,
                    ..Reply::from(Status::Ok)
                };
            }
            b"VERSION" => {
                let start = (b"VERSION ".len()).min(line_end);
                return Reply {
                    value: raw.slice(start..line_end),
                    ..Reply::from(Status::Version)
                };
            }
            b"EN" | b"END" => Status::Miss,
            b"NF" | b"NOT_FOUND" => Status::NotFound,
            b"NS" | b"NOT_STORED" => Status::NotStored,
            b"EX" | b"EXISTS" => Status::Exists,
            b"STORED" => Status::Stored,
            b"DELETED" => Status::Deleted,
            b"TOUCHED" => Status::Touched,
            b"OK" => Status::Ok,
            b"MN" => Status::Noop,
            _ => match ErrorReply::from_line(line) {
                Some(e) => Status::Error(e),
                None => match ErrorClass::of_line(line) {
                    Some(class) => Status::OtherError(class, raw.slice(..line_end)),
                    None => match parse_u64(line) {
                        Some(n) if line.iter().all(u8::is_ascii_digit) => Status::Number(n),
                        _ => Status::Other(raw.slice(..line_end)),
                    },
                },
            },
        };
        Reply::from(status)
    }

    /// The same reply with a hit's data read as a counter's digits (what a
    /// meta `VA` to `ma v` carries).
    pub fn into_number(self) -> Reply {
        match self.status {
            Status::Hit => {
                let digits = self.value.split(|&b| b == b'\r').next().unwrap_or(b"");
                Reply {
                    status: Status::Number(parse_u64(digits).unwrap_or(0)),
                    value: Bytes::new(),
                    ..self
                }
            }
            _ => self,
        }
    }
}

/// Writes one line made of `parts`, then `\r\n`.
fn line_bytes(out: &mut BytesMut, parts: &[&[u8]]) {
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// Adds ` <letter><n>` when the reply carries `n`.
fn opt(r: MetaReply<'_>, letter: u8, n: Option<u64>) -> MetaReply<'_> {
    match n {
        Some(n) => r.flag_u64(letter, n),
        None => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, ResponseDecoder};

    fn request(line: &str, value: &str) -> Request {
        Request::parse(line.as_bytes(), value.as_bytes(), &Limits::default()).unwrap()
    }

    fn encoded(reply: &Reply, line: &str) -> String {
        let mut out = BytesMut::new();
        reply.encode(&request(line, "v"), &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn item() -> Reply {
        Reply {
            ttl: Some(30),
            ttl_before_touch: Some(-1),
            size: Some(2),
            last_access: Some(4),
            fetched: Some(true),
            ..Reply::hit(Bytes::from_static(b"hi"), 5).with_cas(77)
        }
    }

    #[test]
    fn text_encoding_of_each_variant() {
        let cases: Vec<(Reply, &str, &str)> = vec![
            (item(), "get k", "VALUE k 5 2\r\nhi\r\nEND\r\n"),
            (item(), "gets k", "VALUE k 5 2 77\r\nhi\r\nEND\r\n"),
            (Reply::from(Status::Miss), "get k", "END\r\n"),
            (Reply::from(Status::Miss), "stats", "END\r\n"),
            (
                Reply::from(Status::Stored).with_cas(9),
                "set k 0 0 1",
                "STORED\r\n",
            ),
            (
                Reply::from(Status::NotStored),
                "add k 0 0 1",
                "NOT_STORED\r\n",
            ),
            (Reply::from(Status::Exists), "cas k 0 0 1 3", "EXISTS\r\n"),
            (Reply::from(Status::NotFound), "delete k", "NOT_FOUND\r\n"),
            (Reply::from(Status::Deleted), "delete k", "DELETED\r\n"),
            (Reply::from(Status::Touched), "touch k 10", "TOUCHED\r\n"),
            (
                Reply::number(18446744073709551615),
                "incr k 1",
                "18446744073709551615\r\n",
            ),
            (Reply::number(0).with_cas(3), "decr k 1", "0\r\n"),
            (Reply::from(Status::Ok), "flush_all", "OK\r\n"),
            (Reply::from(Status::Noop), "mn", "MN\r\n"),
            (Reply::version("1.6.18"), "version", "VERSION 1.6.18\r\n"),
            (
                Reply::from(ErrorReply::TooLarge),
                "set k 0 0 1",
                "SERVER_ERROR object too large for cache\r\n",
            ),
            (
                Reply::from(ErrorReply::BackendFailure),
                "get k",
                "SERVER_ERROR backend failure\r\n",
            ),
            (
                Reply::from(Status::OtherError(
                    ErrorClass::Server,
                    Bytes::from_static(b"SERVER_ERROR busy"),
                )),
                "incr k 1",
                "SERVER_ERROR busy\r\n",
            ),
        ];
        for (reply, line, want) in cases {
            assert_eq!(encoded(&reply, line), want, "{line}: {reply:?}");
        }
    }

    #[test]
    fn meta_encoding_writes_asked_flags_in_client_order() {
        // `t` before `T` is the TTL before the touch; after it, the new one.
        assert_eq!(
            encoded(&item(), "mg k s t T30 c f l h O123 k v"),
            "VA 2 s2 t-1 c77 f5 l4 h1 O123 kk\r\nhi\r\n"
        );
        assert_eq!(encoded(&item(), "mg k T30 t"), "HD t30\r\n");
        // Without `v`: `HD`; a base64 key is echoed re-encoded, then `b`.
        assert_eq!(encoded(&item(), "mg YWI= b k c"), "HD kYWI= b c77\r\n");
        let won = Reply {
            won: true,
            stale: true,
            win_token_sent: true,
            ..item()
        };
        assert_eq!(encoded(&won, "mg k"), "HD Z X W\r\n");
        assert_eq!(
            encoded(&Reply::from(Status::Miss), "mg k O9 k v c"),
            "EN O9 kk\r\n"
        );
        // A flag is written only when the reply carries it.
        let stored = Reply::from(Status::Stored).with_cas(12);
        assert_eq!(encoded(&stored, "ms k 1 c s O1 t"), "HD c12 O1\r\n");
        let refused = Reply::from(Status::NotStored).with_cas(0);
        assert_eq!(encoded(&refused, "ms k 1 c ME"), "NS c0\r\n");
        assert_eq!(encoded(&Reply::from(Status::Exists), "ms k 1 c"), "EX\r\n");
        assert_eq!(
            encoded(&Reply::from(Status::NotFound), "md k k"),
            "NF kk\r\n"
        );
        assert_eq!(
            encoded(&Reply::from(Status::Deleted), "md k O1"),
            "HD O1\r\n"
        );
        let counter = Reply::number(105).with_cas(8).with_ttl(-1);
        assert_eq!(encoded(&counter, "ma k v t c"), "VA 3 t-1 c8\r\n105\r\n");
        assert_eq!(encoded(&counter, "ma k c"), "HD c8\r\n");
        assert_eq!(
            encoded(&Reply::from(ErrorReply::NonNumeric), "ma k O1"),
            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        );
    }

    #[test]
    fn quiet_and_noreply_hide_only_what_memcached_hides() {
        let hidden = |reply: &Reply, line: &str| reply.hidden_from(&request(line, "v"));
        assert!(hidden(&Reply::from(Status::Miss), "mg k q"));
        assert!(!hidden(&item(), "mg k q v"));
        assert!(hidden(&Reply::from(Status::Stored), "ms k 1 q"));
        assert!(!hidden(&Reply::from(Status::NotStored), "ms k 1 q"));
        assert!(hidden(&Reply::number(1), "ma k q"));
        assert!(!hidden(&Reply::from(Status::NotFound), "ma k q"));
        assert!(!hidden(&Reply::from(ErrorReply::TooLarge), "ms k 1 q"));
        assert!(hidden(
            &Reply::from(ErrorReply::TooLarge),
            "set k 0 0 1 noreply"
        ));
        assert!(!hidden(&Reply::from(Status::Stored), "set k 0 0 1"));
    }

    #[test]
    fn responses_are_framed_as_the_decoder_frames_them() {
        let hit2 = Reply::hit(Bytes::from_static(b"xyz"), 1).with_cas(2);
        let cases: Vec<(Reply, &str)> = vec![
            (item(), "get k"),
            (item(), "gets k"),
            (Reply::from(Status::Miss), "get k"),
            (item(), "mg k v f c"),
            (item(), "mg k c"),
            (Reply::from(Status::Miss), "mg k O1"),
            (Reply::number(42).with_cas(1), "ma k v c"),
            (Reply::number(42), "incr k 3"),
            (Reply::from(Status::Stored).with_cas(3), "ms k 1 c"),
            (Reply::from(Status::Deleted), "delete k"),
            (Reply::from(Status::Miss), "stats"),
            (Reply::from(Status::Noop), "mn"),
            (Reply::version("x"), "version"),
            (Reply::from(ErrorReply::NonNumeric), "incr k 1"),
            (Reply::from(ErrorReply::BackendFailure), "mg k v"),
            (Reply::from(ErrorReply::Error), "get k"),
        ];
        for (reply, line) in cases {
            let req = request(line, "v");
            let mut raw = BytesMut::new();
            reply.encode(&req, &mut raw);
            let decoded = ResponseDecoder::for_request(&req)
                .decode(&mut raw)
                .unwrap()
                .unwrap();
            assert_eq!(reply.to_response(&req), decoded, "{line}: {reply:?}");
        }
        // A retrieval over several keys, misses among them.
        let req = request("gets a b c", "");
        let keys = [&b"a"[..], b"b", b"c"].map(Bytes::from_static);
        let replies = [Reply::from(Status::Miss), item(), hit2];
        let response = Reply::retrieval_response(&keys, &replies, true);
        let mut raw = BytesMut::from(&response.raw()[..]);
        assert_eq!(
            &raw[..],
            b"VALUE b 5 2 77\r\nhi\r\nVALUE c 1 3 2\r\nxyz\r\nEND\r\n"
        );
        let decoded = ResponseDecoder::for_request(&req).decode(&mut raw);
        assert_eq!(response, decoded.unwrap().unwrap());
        let failed = [item(), Reply::from(ErrorReply::SpoolFailed)];
        let response = Reply::retrieval_response(&keys[..2], &failed, false);
        assert_eq!(response.code(), ResponseCode::ServerError);
        assert_eq!(
            &response.raw()[..],
            b"SERVER_ERROR write-behind spool failed\r\n"
        );
        let none = Reply::retrieval_response(&keys[..1], &[Reply::from(Status::Miss)], false);
        assert_eq!(none, Response::miss());
    }

    proptest::proptest! {
        /// A relayed reply is whatever a backend sent: reading any bytes
        /// after any reply code never panics (sizes past the end, huge
        /// numbers, flags without values), and a value is never read past
        /// the bytes there are.
        #[test]
        fn any_reply_parses(
            code in proptest::sample::select(vec!["VA ", "VALUE k 1 ", "HD ", "VERSION ", "", "1"]),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
        ) {
            let mut raw = code.as_bytes().to_vec();
            raw.extend_from_slice(&rest);
            let len = raw.len();
            let reply = Reply::parse(&Bytes::from(raw));
            proptest::prop_assert!(reply.value.len() <= len);
            let _ = reply.into_number();
        }
    }

    #[test]
    fn relayed_replies_parse_into_typed_replies() {
        let parse = |raw: &'static [u8]| Reply::parse(&Bytes::from_static(raw));
        let va = parse(b"VA 2 f5 c77 t3\r\nhi\r\n");
        assert_eq!(
            (va.status, &va.value[..], va.flags, va.cas, va.ttl),
            (Status::Hit, &b"hi"[..], Some(5), Some(77), Some(3))
        );
        assert_eq!(parse(b"VA 1 t-1\r\nx\r\n").ttl, Some(-1));
        let value = parse(b"VALUE k 7 3 9\r\nabc\r\nEND\r\n");
        assert_eq!(
            (value.status, &value.value[..], value.flags, value.cas),
            (Status::Hit, &b"abc"[..], Some(7), Some(9))
        );
        // A size past the bytes there are (or past usize) reads what is there.
        assert_eq!(
            &parse(b"VA 18446744073709551615\r\nhi\r\n").value[..],
            b"hi\r\n"
        );
        assert_eq!(parse(b"HD c42\r\n").cas, Some(42));
        assert_eq!(parse(b"HD c42\r\n").status, Status::Ok);
        assert_eq!(
            parse(b"VA 3\r\n105\r\n").into_number().status,
            Status::Number(105)
        );
        assert_eq!(parse(b"105\r\n").status, Status::Number(105));
        for (raw, status) in [
            (&b"EN\r\n"[..], Status::Miss),
            (b"END\r\n", Status::Miss),
            (b"NF\r\n", Status::NotFound),
            (b"NOT_FOUND\r\n", Status::NotFound),
            (b"NS\r\n", Status::NotStored),
            (b"EX\r\n", Status::Exists),
            (b"STORED\r\n", Status::Stored),
            (b"DELETED\r\n", Status::Deleted),
            (b"TOUCHED\r\n", Status::Touched),
            (b"OK\r\n", Status::Ok),
            (b"MN\r\n", Status::Noop),
            (b"ERROR\r\n", Status::Error(ErrorReply::Error)),
            (
                b"SERVER_ERROR object too large for cache\r\n",
                Status::Error(ErrorReply::TooLarge),
            ),
            (
                b"CLIENT_ERROR what\r\n",
                Status::OtherError(ErrorClass::Client, Bytes::from_static(b"CLIENT_ERROR what")),
            ),
            (
                b"ME k exp=1\r\n",
                Status::Other(Bytes::from_static(b"ME k exp=1")),
            ),
        ] {
            assert_eq!(
                parse(raw).status,
                status,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let version = parse(b"VERSION 1.6.18\r\n");
        assert_eq!(
            (version.status, &version.value[..]),
            (Status::Version, &b"1.6.18"[..])
        );
    }
}
