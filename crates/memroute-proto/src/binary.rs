//! The memcached binary protocol, spoken by translating to and from meta
//! commands.
//!
//! A binary request becomes the meta request that means the same (`GET` is
//! `mg <key> v f c`, `SET` is `ms <key> <len> F.. T.. c MS`, ...), so the
//! embedded cache, Lua routes, backends and DynamoDB pools serve it with no
//! binary-specific code. [`BinaryContext::encode_reply`] turns the typed
//! reply of the embedded cache or a store into binary response packets,
//! its status code following from the reply's variant;
//! [`BinaryContext::encode`] does the same for a meta reply relayed from a
//! backend, read once into a typed reply. Meta replies carry what binary
//! replies need (the CAS of a store, flags, the value of an incr), which
//! classic text replies do not.
//!
//! Quiet opcodes (`GETQ`, `SETQ`, ...) are handled here: their nominal
//! replies are dropped when encoding, errors still go out, in order.
//! Opcodes with no meta equivalent (`NOOP`, `VERBOSITY`, SASL) are answered
//! by the decoder itself.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::errors::{ErrorClass, ErrorReply};
use crate::limits::Limits;
use crate::meta::base64_encode;
use crate::request::Request;
use crate::typed::{Reply, Status};

/// First byte of every binary request (how a connection's protocol is told).
pub const REQUEST_MAGIC: u8 = 0x80;
const RESPONSE_MAGIC: u8 = 0x81;
/// Request and response header length.
pub const HEADER_LEN: usize = 24;

/// Response status codes.
pub mod status {
    pub const OK: u16 = 0x0000;
    pub const KEY_ENOENT: u16 = 0x0001;
    pub const KEY_EEXISTS: u16 = 0x0002;
    pub const E2BIG: u16 = 0x0003;
    pub const EINVAL: u16 = 0x0004;
    pub const NOT_STORED: u16 = 0x0005;
    pub const DELTA_BADVAL: u16 = 0x0006;
    pub const UNKNOWN_COMMAND: u16 = 0x0081;
    pub const ENOMEM: u16 = 0x0082;
    pub const EINTERNAL: u16 = 0x0084;
}

/// The message memcached sends as the body of an error response.
fn status_message(status: u16) -> &'static [u8] {
    match status {
        status::KEY_ENOENT => b"Not found",
        status::KEY_EEXISTS => b"Data exists for key.",
        status::E2BIG => b"Too large.",
        status::EINVAL => b"Invalid arguments",
        status::NOT_STORED => b"Not stored.",
        status::DELTA_BADVAL => b"Non-numeric server-side value for incr or decr",
        status::UNKNOWN_COMMAND => b"Unknown command",
        status::ENOMEM => b"Out of memory",
        _ => b"Internal error",
    }
}

/// The status of an error reply, or `None` for server errors binary has
/// no code for (sent as an internal error with their text).
fn error_status(error: ErrorReply) -> Option<u16> {
    match (error, error.class()) {
        (ErrorReply::TooLarge, _) => Some(status::E2BIG),
        (ErrorReply::NoMemoryStoring, _) => Some(status::ENOMEM),
        (ErrorReply::NonNumeric, _) => Some(status::DELTA_BADVAL),
        (_, ErrorClass::Error) => Some(status::UNKNOWN_COMMAND),
        (_, ErrorClass::Client) => Some(status::EINVAL),
        (_, ErrorClass::Server) => None,
    }
}

/// Opcodes.
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// What kind of reply an opcode expects (how a meta reply maps back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// GET family: value with 4 bytes of flags; `with_key` echoes the key.
    Get {
        with_key: bool,
    },
    /// TOUCH: no value.
    Touch,
    /// SET/ADD/REPLACE/APPEND/PREPEND, with the status a refused store gets.
    Store {
        refused: u16,
    },
    Delete,
    /// INCR/DECR: the new value as 8 big-endian bytes.
    Arith,
    Flush,
    Version,
    Stat,
}

/// What the reply to one binary request needs: its header fields and how to
/// read the meta reply.
#[derive(Debug, Clone)]
pub struct BinaryContext {
    opcode: u8,
    opaque: u32,
    key: Bytes,
    kind: Kind,
    quiet: bool,
}

/// One decoded binary request. Boxing the request would cost an allocation
/// per request; the frame is moved once, straight to the executor (as
/// [`crate::Decoded`] is).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum BinaryFrame {
    /// Run `request` (a meta or text request) and encode its reply with
    /// the context.
    Request(Request, BinaryContext),
    /// Answered without running anything; `close` ends the connection
    /// after these bytes (QUIT).
    Reply { bytes: Bytes, close: bool },
    /// A store whose item would exceed the size limit: send `reply` ("too
    /// large"); memcached also drops the key's old value. The value is
    /// dropped unread.
    TooLarge { key: Bytes, reply: Bytes },
}

/// A stream that is not binary protocol (or that lies about its lengths):
/// the connection cannot continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryError {
    /// An error response to send before closing, if the request was framed
    /// well enough to answer.
    pub reply: Option<Bytes>,
}

/// The incremental decoder of binary requests.
#[derive(Debug, Clone)]
pub struct BinaryDecoder {
    limits: Limits,
    /// Bytes of a refused value still to drop.
    swallow: usize,
}

struct Header {
    opcode: u8,
    key_len: usize,
    extras_len: usize,
    body_len: usize,
    opaque: u32,
    cas: u64,
}

impl Header {
    fn parse(b: &[u8]) -> Header {
        Header {
            opcode: b[1],
            key_len: usize::from(u16::from_be_bytes([b[2], b[3]])),
            extras_len: usize::from(b[4]),
            body_len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]) as usize,
            opaque: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            cas: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
        }
    }
}

/// The header fields of a response that are not lengths.
#[derive(Clone, Copy)]
struct Head {
    opcode: u8,
    status: u16,
    opaque: u32,
    cas: u64,
}

impl Head {
    /// A response with no CAS.
    fn new(opcode: u8, opaque: u32, status: u16) -> Head {
        Head {
            opcode,
            status,
            opaque,
            cas: 0,
        }
    }
}

/// Writes one response packet.
fn packet(out: &mut BytesMut, head: Head, extras: &[u8], key: &[u8], value: &[u8]) {
    out.reserve(HEADER_LEN + extras.len() + key.len() + value.len());
    out.put_u8(RESPONSE_MAGIC);
    out.put_u8(head.opcode);
    out.put_u16(key.len() as u16);
    out.put_u8(extras.len() as u8);
    out.put_u8(0);
    out.put_u16(head.status);
    out.put_u32((extras.len() + key.len() + value.len()) as u32);
    out.put_u32(head.opaque);
    out.put_u64(head.cas);
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
}

fn error_packet(opcode: u8, opaque: u32, status: u16) -> Bytes {
    let mut out = BytesMut::new();
    let head = Head::new(opcode, opaque, status);
    packet(&mut out, head, &[], &[], status_message(status));
    out.freeze()
}

fn is_store(opcode: u8) -> bool {
    use opcode::*;
    matches!(
        opcode,
        SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ | APPEND | APPENDQ | PREPEND | PREPENDQ
    )
}

fn is_quiet(opcode: u8) -> bool {
    use opcode::*;
    matches!(
        opcode,
        GETQ | GETKQ
            | SETQ
            | ADDQ
            | REPLACEQ
            | DELETEQ
            | INCREMENTQ
            | DECREMENTQ
            | QUITQ
            | FLUSHQ
            | APPENDQ
            | PREPENDQ
            | GATQ
            | GATKQ
    )
}

/// Appends `key` as a meta key token: as is when it is printable, else
/// base64 (binary keys may hold any byte); true when the line then needs
/// the `b` flag.
fn put_key(line: &mut BytesMut, key: &[u8]) -> bool {
    line.put_u8(b' ');
    if key.iter().all(|&b| b > b' ' && b != 0x7f) {
        line.put_slice(key);
        false
    } else {
        base64_encode(key, line);
        true
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

impl BinaryDecoder {
    pub fn new(limits: Limits) -> Self {
        BinaryDecoder { limits, swallow: 0 }
    }

    /// Decodes the next request in `buf`: `Ok(None)` until a whole packet
    /// has arrived.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BinaryFrame>, BinaryError> {
        // The rest of a value refused as too large is dropped as it comes.
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            buf.advance(n);
            self.swallow -= n;
            if self.swallow > 0 {
                return Ok(None);
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != REQUEST_MAGIC {
            return Err(BinaryError { reply: None });
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let h = Header::parse(&buf[..HEADER_LEN]);
        if h.extras_len + h.key_len > h.body_len {
            return Err(BinaryError {
                reply: Some(error_packet(h.opcode, h.opaque, status::EINVAL)),
            });
        }
        let value_len = h.body_len - h.extras_len - h.key_len;
        if is_store(h.opcode) && !self.limits.item_fits(h.key_len, value_len) {
            // As memcached: answer "too large", drop the value unread, and
            // let the caller drop the key's old value.
            let head_len = HEADER_LEN + h.extras_len + h.key_len;
            if buf.len() < head_len {
                return Ok(None);
            }
            let key = Bytes::copy_from_slice(&buf[HEADER_LEN + h.extras_len..head_len]);
            buf.advance(head_len);
            self.swallow = value_len;
            return Ok(Some(BinaryFrame::TooLarge {
                key,
                reply: error_packet(h.opcode, h.opaque, status::E2BIG),
            }));
        }
        // Bound what any other request may make us buffer.
        if h.body_len > self.limits.max_item_size + 256 {
            return Err(BinaryError {
                reply: Some(error_packet(h.opcode, h.opaque, status::E2BIG)),
            });
        }
        if buf.len() < HEADER_LEN + h.body_len {
            buf.reserve(HEADER_LEN + h.body_len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let body = buf.split_to(h.body_len).freeze();
        let extras = body.slice(..h.extras_len);
        let key = body.slice(h.extras_len..h.extras_len + h.key_len);
        let value = body.slice(h.extras_len + h.key_len..);
        Ok(Some(self.translate(&h, &extras, key, &value)))
    }

    /// Whether part of a request has arrived (or a refused value is still
    /// being dropped).
    pub fn is_mid_request(&self, buf: &BytesMut) -> bool {
        self.swallow > 0 || !buf.is_empty()
    }

    fn translate(&self, h: &Header, extras: &[u8], key: Bytes, value: &[u8]) -> BinaryFrame {
        use opcode::*;
        let reply = |status: u16| BinaryFrame::Reply {
            bytes: error_packet(h.opcode, h.opaque, status),
            close: false,
        };
        let empty_reply = |close: bool| {
            let mut out = BytesMut::new();
            if !(close && h.opcode == QUITQ) {
                let head = Head::new(h.opcode, h.opaque, status::OK);
                packet(&mut out, head, &[], &[], &[]);
            }
            BinaryFrame::Reply {
                bytes: out.freeze(),
                close,
            }
        };
        // (extras length, key required, value allowed) per opcode.
        let shape = match h.opcode {
            GET | GETQ | GETK | GETKQ | DELETE | DELETEQ => (0, true, false),
            SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ => (8, true, true),
            APPEND | APPENDQ | PREPEND | PREPENDQ => (0, true, true),
            INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ => (20, true, false),
            TOUCH | GAT | GATQ | GATK | GATKQ => (4, true, false),
            QUIT | QUITQ | NOOP | VERSION => (0, false, false),
            // An expiry, or none.
            FLUSH | FLUSHQ => (if extras.len() == 4 { 4 } else { 0 }, false, false),
            VERBOSITY => (4, false, false),
            STAT => (0, false, false),
            _ => return reply(status::UNKNOWN_COMMAND),
        };
        let (extras_len, needs_key, value_ok) = shape;
        let key_ok = if needs_key {
            !key.is_empty() && key.len() <= self.limits.max_key_len
        } else {
            h.opcode == STAT || key.is_empty()
        };
        if extras.len() != extras_len || !key_ok || (!value_ok && !value.is_empty()) {
            // A packet of the wrong shape: "invalid arguments", and the
            // connection closes, as memcached's does (its binary protocol
            // error).
            return BinaryFrame::Reply {
                bytes: error_packet(h.opcode, h.opaque, status::EINVAL),
                close: true,
            };
        }
        let mut line = BytesMut::with_capacity(64 + key.len() * 2);
        let mut base64 = false;
        let kind = match h.opcode {
            NOOP | VERBOSITY => return empty_reply(false),
            QUIT | QUITQ => return empty_reply(true),
            GET | GETQ | GETK | GETKQ | GAT | GATQ | GATK | GATKQ => {
                line.put_slice(b"mg");
                base64 |= put_key(&mut line, &key);
                line.put_slice(b" v f c");
                if matches!(h.opcode, GAT | GATQ | GATK | GATKQ) {
                    line.put_slice(format!(" T{}", be_u32(extras)).as_bytes());
                }
                Kind::Get {
                    with_key: matches!(h.opcode, GETK | GETKQ | GATK | GATKQ),
                }
            }
            TOUCH => {
                // Its reply carries the item's flags and CAS, as memcached's.
                line.put_slice(b"mg");
                base64 |= put_key(&mut line, &key);
                line.put_slice(format!(" f c T{}", be_u32(extras)).as_bytes());
                Kind::Touch
            }
            op if is_store(op) => {
                line.put_slice(b"ms");
                base64 |= put_key(&mut line, &key);
                line.put_slice(format!(" {} c", value.len()).as_bytes());
                let (mode, refused) = match h.opcode {
                    SET | SETQ => ("S", status::NOT_STORED),
                    ADD | ADDQ => ("E", status::KEY_EEXISTS),
                    REPLACE | REPLACEQ => ("R", status::KEY_ENOENT),
                    APPEND | APPENDQ => ("A", status::NOT_STORED),
                    _ => ("P", status::NOT_STORED),
                };
                line.put_slice(format!(" M{mode}").as_bytes());
                if extras.len() == 8 {
                    let (flags, exptime) = (be_u32(extras), be_u32(&extras[4..]));
                    line.put_slice(format!(" F{flags} T{exptime}").as_bytes());
                }
                if h.cas != 0 {
                    line.put_slice(format!(" C{}", h.cas).as_bytes());
                }
                Kind::Store { refused }
            }
            DELETE | DELETEQ => {
                line.put_slice(b"md");
                base64 |= put_key(&mut line, &key);
                if h.cas != 0 {
                    line.put_slice(format!(" C{}", h.cas).as_bytes());
                }
                Kind::Delete
            }
            INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ => {
                let (delta, initial, exptime) =
                    (be_u64(extras), be_u64(&extras[8..]), be_u32(&extras[16..]));
                let mode = if matches!(h.opcode, INCREMENT | INCREMENTQ) {
                    "I"
                } else {
                    "D"
                };
                line.put_slice(b"ma");
                base64 |= put_key(&mut line, &key);
                line.put_slice(format!(" M{mode} D{delta} v c").as_bytes());
                // An expiry of all ones means "do not create".
                if exptime != u32::MAX {
                    line.put_slice(format!(" N{exptime} J{initial}").as_bytes());
                }
                Kind::Arith
            }
            FLUSH | FLUSHQ => {
                line.put_slice(b"flush_all");
                if extras.len() == 4 {
                    // The text `flush_all` reads its delay as an int32
                    // token (memcached 1.6.45); write the 32 bits as one.
                    let delay = be_u32(extras) as i32;
                    line.put_slice(format!(" {delay}").as_bytes());
                }
                Kind::Flush
            }
            VERSION => {
                line.put_slice(b"version");
                Kind::Version
            }
            STAT => {
                line.put_slice(b"stats");
                if !key.is_empty() {
                    line.put_u8(b' ');
                    line.put_slice(&key);
                }
                Kind::Stat
            }
            _ => return reply(status::UNKNOWN_COMMAND),
        };
        if base64 {
            line.put_slice(b" b");
        }
        match Request::parse(&line, value, &self.limits) {
            Ok(request) => BinaryFrame::Request(
                request,
                BinaryContext {
                    opcode: h.opcode,
                    opaque: h.opaque,
                    key,
                    kind,
                    quiet: is_quiet(h.opcode),
                },
            ),
            Err(line) => reply(
                ErrorReply::from_line(line.as_bytes())
                    .and_then(error_status)
                    .filter(|&s| s == status::E2BIG)
                    .unwrap_or(status::EINVAL),
            ),
        }
    }
}

impl BinaryContext {
    /// Encodes a reply relayed as text or meta bytes (a backend's, or
    /// `stats` output) as binary response packets into `out`: `STAT` lines
    /// become one packet each, anything else is read once into a
    /// [`Reply`] and encoded by [`encode_reply`](Self::encode_reply).
    pub fn encode(&self, raw: &Bytes, out: &mut BytesMut) {
        if self.kind == Kind::Stat && (raw.starts_with(b"STAT ") || raw.starts_with(b"END\r\n")) {
            return self.encode_stats(raw, out);
        }
        let reply = Reply::parse(raw);
        // `ma v` answers `VA` with the counter's digits as its data.
        let reply = match self.kind {
            Kind::Arith => reply.into_number(),
            _ => reply,
        };
        self.encode_reply(&reply, out);
    }

    /// Encodes the typed reply to this request as binary response packets
    /// into `out`. The status code follows from the variant; quiet
    /// requests add nothing on success (nor on a get's miss).
    pub fn encode_reply(&self, reply: &Reply, out: &mut BytesMut) {
        // The CAS goes out when the meta request asked for it (`c`).
        let asked_cas = matches!(
            self.kind,
            Kind::Get { .. } | Kind::Store { .. } | Kind::Arith | Kind::Touch
        );
        let cas = if asked_cas { reply.cas.unwrap_or(0) } else { 0 };
        let ok = |out: &mut BytesMut, extras: &[u8], key: &[u8], value: &[u8]| {
            let head = Head {
                cas,
                ..self.head(status::OK)
            };
            packet(out, head, extras, key, value)
        };
        let status = match (self.kind, &reply.status) {
            (Kind::Get { with_key }, Status::Hit) => {
                let flags = reply.flags.unwrap_or(0).to_be_bytes();
                let key: &[u8] = if with_key { &self.key } else { &[] };
                return ok(out, &flags, key, &reply.value);
            }
            (Kind::Arith, Status::Number(n)) => {
                if !self.quiet {
                    ok(out, &[], &[], &n.to_be_bytes());
                }
                return;
            }
            (Kind::Version, Status::Version) => return ok(out, &[], &[], &reply.value),
            // `TOUCH` is an `mg` without `v`: its hit is the success, with
            // the item's flags.
            (Kind::Touch, Status::Hit) => {
                let flags = reply.flags.unwrap_or(0).to_be_bytes();
                return ok(out, &flags, &[], &[]);
            }
            (_, Status::Stored | Status::Deleted | Status::Touched | Status::Ok) => {
                if !self.quiet {
                    ok(out, &[], &[], &[]);
                }
                return;
            }
            (_, Status::Miss | Status::NotFound) => status::KEY_ENOENT,
            (Kind::Store { refused }, Status::NotStored) => refused,
            (_, Status::NotStored) => status::NOT_STORED,
            (_, Status::Exists) => status::KEY_EEXISTS,
            (_, Status::Error(e)) => match error_status(*e) {
                Some(status) => status,
                None => return self.internal_error(e.text().as_bytes(), out),
            },
            (_, Status::OtherError(ErrorClass::Error, _)) => status::UNKNOWN_COMMAND,
            (_, Status::OtherError(ErrorClass::Client, _)) => status::EINVAL,
            (_, Status::OtherError(ErrorClass::Server, line) | Status::Other(line)) => {
                return self.internal_error(line, out)
            }
            // A reply this request cannot have (a value to a store...):
            // an internal error carrying its text.
            _ => {
                let mut text = BytesMut::new();
                reply.encode_text(&mut text);
                let line = text.strip_suffix(b"\r\n").unwrap_or(&text);
                return self.internal_error(line, out);
            }
        };
        if self.quiet && status == status::KEY_ENOENT && self.is_get() {
            return;
        }
        // A GETK miss names its key, so a client can match it, and, as
        // memcached's, carries nothing else; other errors carry their
        // message and no key.
        match self.kind {
            Kind::Get { with_key: true } if status == status::KEY_ENOENT => {
                packet(out, self.head(status), &[], &self.key, &[])
            }
            _ => packet(out, self.head(status), &[], &[], status_message(status)),
        }
    }

    /// An error packet carrying memroute's (or a backend's) error line.
    fn internal_error(&self, line: &[u8], out: &mut BytesMut) {
        packet(out, self.head(status::EINTERNAL), &[], &[], line);
    }

    fn head(&self, status: u16) -> Head {
        Head::new(self.opcode, self.opaque, status)
    }

    fn is_get(&self) -> bool {
        matches!(self.kind, Kind::Get { .. })
    }

    /// `STAT name value` lines as one packet each, then an empty one.
    fn encode_stats(&self, reply: &[u8], out: &mut BytesMut) {
        for line in reply.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(stat) = line.strip_prefix(b"STAT ") else {
                continue;
            };
            let (name, value) = match memchr::memchr(b' ', stat) {
                Some(at) => (&stat[..at], &stat[at + 1..]),
                None => (stat, &b""[..]),
            };
            packet(out, self.head(status::OK), &[], name, value);
        }
        packet(out, self.head(status::OK), &[], &[], &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(REQUEST_MAGIC);
        b.put_u8(opcode);
        b.put_u16(key.len() as u16);
        b.put_u8(extras.len() as u8);
        b.put_u8(0);
        b.put_u16(0);
        b.put_u32((extras.len() + key.len() + value.len()) as u32);
        b.put_u32(0xdead_beef);
        b.put_u64(cas);
        b.put_slice(extras);
        b.put_slice(key);
        b.put_slice(value);
        b
    }

    fn translate(buf: &mut BytesMut) -> (Request, BinaryContext) {
        match BinaryDecoder::new(Limits::default()).decode(buf) {
            Ok(Some(BinaryFrame::Request(r, c))) => (r, c),
            other => panic!("{other:?}"),
        }
    }

    /// (status, cas, extras, key, value) of a packet.
    type Packet = (u16, u64, Vec<u8>, Vec<u8>, Vec<u8>);

    fn packets(mut b: &[u8]) -> Vec<Packet> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[0], RESPONSE_MAGIC);
            assert_eq!(&b[12..16], &0xdead_beef_u32.to_be_bytes());
            let key_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
            let extras_len = usize::from(b[4]);
            let status = u16::from_be_bytes([b[6], b[7]]);
            let body = u32::from_be_bytes([b[8], b[9], b[10], b[11]]) as usize;
            let cas = be_u64(&b[16..24]);
            let body_bytes = &b[HEADER_LEN..HEADER_LEN + body];
            out.push((
                status,
                cas,
                body_bytes[..extras_len].to_vec(),
                body_bytes[extras_len..extras_len + key_len].to_vec(),
                body_bytes[extras_len + key_len..].to_vec(),
            ));
            b = &b[HEADER_LEN + body..];
        }
        out
    }

    fn encoded(ctx: &BinaryContext, reply: &[u8]) -> Vec<Packet> {
        let mut out = BytesMut::new();
        ctx.encode(&Bytes::copy_from_slice(reply), &mut out);
        packets(&out)
    }

    /// The packets `reply` becomes as the answer to a request of `opcode`.
    fn typed(opcode: u8, extras: &[u8], reply: &Reply) -> Vec<Packet> {
        let key: &[u8] = if opcode == opcode::VERSION {
            b""
        } else {
            b"key"
        };
        let value: &[u8] = if is_store(opcode) { b"v" } else { b"" };
        let mut buf = request(opcode, extras, key, value, 0);
        let (_, ctx) = translate(&mut buf);
        let mut out = BytesMut::new();
        ctx.encode_reply(reply, &mut out);
        packets(&out)
    }

    #[test]
    fn typed_replies_map_to_status_codes_by_variant() {
        use opcode::*;
        let set_extras = [0u8; 8];
        let arith_extras = [0u8; 20];
        let touch_extras = [0u8; 4];
        let hit = Reply::hit(Bytes::from_static(b"hi"), 5).with_cas(77);
        let error = |status: u16| (status, 0, vec![], vec![], status_message(status).to_vec());
        assert_eq!(
            typed(GETK, &[], &hit),
            vec![(
                0,
                77,
                5u32.to_be_bytes().to_vec(),
                b"key".to_vec(),
                b"hi".to_vec()
            )]
        );
        assert_eq!(
            typed(GETQ, &[], &hit),
            vec![(0, 77, 5u32.to_be_bytes().to_vec(), vec![], b"hi".to_vec())]
        );
        let miss = Reply::from(Status::Miss);
        assert_eq!(typed(GET, &[], &miss), vec![error(status::KEY_ENOENT)]);
        assert!(typed(GETKQ, &[], &miss).is_empty(), "quiet miss");
        // TOUCH answers with the item's flags and CAS, as memcached does.
        assert_eq!(
            typed(TOUCH, &touch_extras, &hit),
            vec![(0, 77, 5u32.to_be_bytes().to_vec(), vec![], vec![])]
        );
        let stored = Reply::from(Status::Stored).with_cas(42);
        assert_eq!(
            typed(SET, &set_extras, &stored),
            vec![(0, 42, vec![], vec![], vec![])]
        );
        assert!(
            typed(SETQ, &set_extras, &stored).is_empty(),
            "quiet success"
        );
        let not_stored = Reply::from(Status::NotStored);
        assert_eq!(
            typed(SET, &set_extras, &not_stored),
            vec![error(status::NOT_STORED)]
        );
        assert_eq!(
            typed(ADD, &set_extras, &not_stored),
            vec![error(status::KEY_EEXISTS)]
        );
        assert_eq!(
            typed(REPLACE, &set_extras, &not_stored),
            vec![error(status::KEY_ENOENT)]
        );
        let exists = Reply::from(Status::Exists);
        assert_eq!(
            typed(SET, &set_extras, &exists),
            vec![error(status::KEY_EEXISTS)]
        );
        let not_found = Reply::from(Status::NotFound);
        assert_eq!(
            typed(DELETE, &[], &not_found),
            vec![error(status::KEY_ENOENT)]
        );
        let deleted = Reply::from(Status::Deleted);
        assert_eq!(
            typed(DELETE, &[], &deleted),
            vec![(0, 0, vec![], vec![], vec![])]
        );
        let counter = Reply::number(105).with_cas(8);
        assert_eq!(
            typed(INCREMENT, &arith_extras, &counter),
            vec![(0, 8, vec![], vec![], 105u64.to_be_bytes().to_vec())]
        );
        assert!(typed(INCREMENTQ, &arith_extras, &counter).is_empty());
        assert_eq!(
            typed(VERSION, &[], &Reply::version("1.6.18")),
            vec![(0, 0, vec![], vec![], b"1.6.18".to_vec())]
        );
        for (e, status) in [
            (ErrorReply::TooLarge, status::E2BIG),
            (ErrorReply::NoMemoryStoring, status::ENOMEM),
            (ErrorReply::NonNumeric, status::DELTA_BADVAL),
            (ErrorReply::BadFormat, status::EINVAL),
            (ErrorReply::DynamoBadKey, status::EINVAL),
            (ErrorReply::Error, status::UNKNOWN_COMMAND),
        ] {
            assert_eq!(
                typed(SET, &set_extras, &Reply::from(e)),
                vec![error(status)],
                "{e:?}"
            );
        }
        // Server errors binary has no code for carry memroute's text.
        for e in [
            ErrorReply::BackendFailure,
            ErrorReply::NoMemory,
            ErrorReply::SpoolFull,
        ] {
            assert_eq!(
                typed(GET, &[], &Reply::from(e)),
                vec![(
                    status::EINTERNAL,
                    0,
                    vec![],
                    vec![],
                    e.text().as_bytes().to_vec()
                )]
            );
        }
        let other = Reply::from(Status::OtherError(
            ErrorClass::Server,
            Bytes::from_static(b"SERVER_ERROR busy"),
        ));
        assert_eq!(
            typed(GET, &[], &other),
            vec![(
                status::EINTERNAL,
                0,
                vec![],
                vec![],
                b"SERVER_ERROR busy".to_vec()
            )]
        );
        // A reply the request cannot have: an internal error with its text.
        assert_eq!(
            typed(SET, &set_extras, &Reply::from(Status::Noop)),
            vec![(status::EINTERNAL, 0, vec![], vec![], b"MN".to_vec())]
        );
    }

    #[test]
    fn set_becomes_ms_and_its_cas_comes_back() {
        let mut extras = 7u32.to_be_bytes().to_vec();
        extras.extend(60u32.to_be_bytes());
        let mut buf = request(opcode::SET, &extras, b"k", b"hello", 0);
        let (r, ctx) = translate(&mut buf);
        assert!(buf.is_empty());
        assert_eq!(&r.raw_line()[..], b"ms k 5 c MS F7 T60");
        assert_eq!(&r.value()[..], b"hello");
        assert_eq!(
            encoded(&ctx, b"HD c42\r\n"),
            vec![(0, 42, vec![], vec![], vec![])]
        );
        assert_eq!(
            encoded(&ctx, b"NS\r\n"),
            vec![(
                status::NOT_STORED,
                0,
                vec![],
                vec![],
                b"Not stored.".to_vec()
            )]
        );
        // An ADD refused: "exists"; with a CAS: C.
        let mut buf = request(opcode::ADDQ, &extras, b"k", b"v", 9);
        let (r, ctx) = translate(&mut buf);
        assert_eq!(&r.raw_line()[..], b"ms k 1 c ME F7 T60 C9");
        assert!(encoded(&ctx, b"HD c1\r\n").is_empty(), "quiet success");
        assert_eq!(encoded(&ctx, b"NS\r\n")[0].0, status::KEY_EEXISTS);
    }

    #[test]
    fn gets_echo_flags_key_and_quiet_misses() {
        let mut buf = request(opcode::GETK, &[], b"key", &[], 0);
        let (r, ctx) = translate(&mut buf);
        assert_eq!(&r.raw_line()[..], b"mg key v f c");
        assert_eq!(
            encoded(&ctx, b"VA 2 f5 c77\r\nhi\r\n"),
            vec![(
                0,
                77,
                5u32.to_be_bytes().to_vec(),
                b"key".to_vec(),
                b"hi".to_vec()
            )]
        );
        assert_eq!(
            encoded(&ctx, b"EN\r\n"),
            vec![(status::KEY_ENOENT, 0, vec![], b"key".to_vec(), vec![])]
        );
        let mut buf = request(opcode::GETQ, &[], b"key", &[], 0);
        let (_, ctx) = translate(&mut buf);
        assert!(encoded(&ctx, b"EN\r\n").is_empty());
        assert_eq!(encoded(&ctx, b"VA 0 f0 c1\r\n\r\n").len(), 1);
        // A binary key (space, newline) travels base64-encoded.
        let mut buf = request(opcode::GET, &[], b"a b\n", &[], 0);
        let (r, _) = translate(&mut buf);
        assert_eq!(&r.raw_line()[..], b"mg YSBiCg== v f c b");
        let mut buf = request(opcode::SET, &[0; 8], b"a b", b"v", 0);
        let (r, _) = translate(&mut buf);
        assert_eq!(&r.raw_line()[..], b"ms YSBi 1 c MS F0 T0 b");
        assert_eq!(r.key().map(|k| &k[..]), Some(&b"a b"[..]));
    }

    #[test]
    fn incr_creates_unless_told_not_to() {
        let mut extras = 5u64.to_be_bytes().to_vec();
        extras.extend(100u64.to_be_bytes());
        extras.extend(0u32.to_be_bytes());
        let mut buf = request(opcode::INCREMENT, &extras, b"n", &[], 0);
        let (r, ctx) = translate(&mut buf);
        assert_eq!(&r.raw_line()[..], b"ma n MI D5 v c N0 J100");
        assert_eq!(
            encoded(&ctx, b"VA 3 c8\r\n105\r\n"),
            vec![(0, 8, vec![], vec![], 105u64.to_be_bytes().to_vec())]
        );
        extras.truncate(16);
        extras.extend(u32::MAX.to_be_bytes());
        let mut buf = request(opcode::DECREMENT, &extras, b"n", &[], 0);
        let (r, ctx) = translate(&mut buf);
        assert_eq!(&r.raw_line()[..], b"ma n MD D5 v c");
        assert_eq!(encoded(&ctx, b"NF\r\n")[0].0, status::KEY_ENOENT);
        assert_eq!(
            encoded(
                &ctx,
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
            )[0]
            .0,
            status::DELTA_BADVAL
        );
    }

    #[test]
    fn flush_expiry_is_written_as_an_int32() {
        for (expiry, line) in [(60u32, &b"flush_all 60"[..]), (u32::MAX, b"flush_all -1")] {
            let mut buf = request(opcode::FLUSH, &expiry.to_be_bytes(), &[], &[], 0);
            let (r, _) = translate(&mut buf);
            assert_eq!(&r.raw_line()[..], line);
        }
    }

    #[test]
    fn stats_noop_quit_and_errors() {
        let mut buf = request(opcode::STAT, &[], &[], &[], 0);
        let (r, ctx) = translate(&mut buf);
        assert_eq!(&r.raw_line()[..], b"stats");
        let p = encoded(&ctx, b"STAT pid 12\r\nSTAT uptime 3\r\nEND\r\n");
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].3.as_slice(), p[0].4.as_slice()),
            (&b"pid"[..], &b"12"[..])
        );
        assert_eq!(p[2], (0, 0, vec![], vec![], vec![]));
        let mut decoder = BinaryDecoder::new(Limits::default());
        let mut buf = request(opcode::NOOP, &[], &[], &[], 0);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(BinaryFrame::Reply { close: false, .. }))
        ));
        let mut buf = request(opcode::QUITQ, &[], &[], &[], 0);
        match decoder.decode(&mut buf) {
            Ok(Some(BinaryFrame::Reply { bytes, close: true })) => assert!(bytes.is_empty()),
            other => panic!("{other:?}"),
        }
        // Wrong extras: invalid arguments, and the connection closes;
        // unknown opcode; SASL.
        for mut buf in [
            request(opcode::SET, &[0; 4], b"k", b"v", 0),
            request(opcode::FLUSH, &[0; 2], &[], &[], 0),
        ] {
            match decoder.decode(&mut buf) {
                Ok(Some(BinaryFrame::Reply { bytes, close: true })) => {
                    assert_eq!(packets(&bytes)[0].0, status::EINVAL)
                }
                other => panic!("{other:?}"),
            }
        }
        let mut buf = request(0x20, &[], &[], &[], 0);
        match decoder.decode(&mut buf) {
            Ok(Some(BinaryFrame::Reply { bytes, .. })) => {
                assert_eq!(packets(&bytes)[0].0, status::UNKNOWN_COMMAND)
            }
            other => panic!("{other:?}"),
        }
        // Not binary at all; lengths that do not add up.
        assert!(decoder
            .decode(&mut BytesMut::from(&b"get k\r\n"[..]))
            .is_err());
        let mut bad = request(opcode::GET, &[], b"key", &[], 0);
        bad[8..12].copy_from_slice(&1u32.to_be_bytes());
        assert!(decoder.decode(&mut bad).is_err());
        let backend = encoded(&ctx, b"SERVER_ERROR backend failure\r\n");
        assert_eq!(backend[0].0, status::EINTERNAL);
        assert_eq!(backend[0].4, b"SERVER_ERROR backend failure".to_vec());
    }

    #[test]
    fn partial_packets_wait_for_more() {
        let whole = request(opcode::GET, &[], b"key", &[], 0);
        let mut decoder = BinaryDecoder::new(Limits::default());
        for cut in 1..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(matches!(decoder.decode(&mut part), Ok(None)), "cut {cut}");
        }
        // A value past the item size limit is refused and dropped unread,
        // however it arrives, and the next request is decoded.
        let limits = Limits {
            max_item_size: 100,
            ..Limits::default()
        };
        let mut stream = request(opcode::SETQ, &[0; 8], b"big", &[b'x'; 200], 0);
        stream.extend_from_slice(&request(opcode::GET, &[], b"key", &[], 0));
        for chunk in [1, 7, 24, 35, 1000] {
            let mut decoder = BinaryDecoder::new(limits.clone());
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
            }
            assert!(!decoder.is_mid_request(&buf), "chunk {chunk}");
            match &frames[..] {
                [BinaryFrame::TooLarge { key, reply }, BinaryFrame::Request(r, _)] => {
                    assert_eq!(&key[..], b"big");
                    assert_eq!(packets(reply)[0].0, status::E2BIG);
                    assert_eq!(&r.raw_line()[..], b"mg key v f c");
                }
                other => panic!("chunk {chunk}: {other:?}"),
            }
        }
        // Any other request with a huge body ends the connection.
        let mut huge = request(opcode::GET, &[], b"k", &[], 0);
        huge[8..12].copy_from_slice(&(64u32 << 20).to_be_bytes());
        let err = decoder.decode(&mut huge).unwrap_err();
        assert_eq!(packets(&err.reply.unwrap())[0].0, status::E2BIG);
    }
}
